//! The standard FD001 protocol on the real NASA file: window count, and a short
//! federated run (CNN, 3 edges, 3 rounds of 1 local epoch) that must improve the
//! validation RMSE on held-out engines.
//!
//! Reads `train_FD001.txt` from `GOSSIPFED_CMAPSS_DIR` or `../shared/data/cmapss`
//! (relative to the workspace root) and fails with a clear message if it is missing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use model::cmapss::{INFORMATIVE_SENSORS, load_trajectories};
use model::data::{WindowConfig, count_windows};
use model::fedsim::{FedConfig, FedStrategy, Layout, Schedule, Split, prepare, run_federated};
use model::net::{Arch, ModelSpec, init_params};
use model::train::evaluate;

fn train_file() -> PathBuf {
    let dir = std::env::var_os("GOSSIPFED_CMAPSS_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/cmapss"),
        PathBuf::from,
    );
    let path = dir.join("train_FD001.txt");
    assert!(
        path.exists(),
        "C-MAPSS file {} not found: put the NASA FD001 files in ../shared/data/cmapss \
         (relative to the workspace root) or set GOSSIPFED_CMAPSS_DIR",
        path.display()
    );
    path
}

#[test]
fn fd001_window_count_and_short_federated_run() {
    let trajs = load_trajectories(&train_file(), &INFORMATIVE_SENSORS).unwrap();
    let window = WindowConfig::default();
    assert_eq!(count_windows(&trajs, &window), 17_731);

    let layout = Layout::Federated {
        edges: 3,
        split: Split::Iid,
    };
    let data = prepare(&trajs, 20, 0, layout, 1, &window).unwrap();
    assert_eq!(data.val_engines.len(), 20);
    assert_eq!(
        data.train_windows() + data.val.len(),
        17_731,
        "every window is either training or validation"
    );
    let spec = ModelSpec {
        arch: Arch::Cnn,
        window: window.window,
        features: INFORMATIVE_SENSORS.len(),
    };
    let cfg = FedConfig {
        rounds: 3,
        local_epochs: 1,
        strategy: FedStrategy::FedAvg,
        schedule: Schedule {
            seed: 1,
            ..Schedule::default()
        },
    };
    let before = evaluate(&spec, &init_params(&spec, 1), &data.val)
        .unwrap()
        .rmse;
    let mut rounds = Vec::new();
    let out = run_federated(
        &spec,
        &data.edges,
        &data.val,
        &cfg,
        &AtomicBool::new(false),
        &mut |r| rounds.push(r.val.rmse),
    )
    .unwrap();
    eprintln!("FD001 federated CNN: init {before:.2}, per round {rounds:.2?}");
    assert_eq!(rounds.len(), 3);
    // Training helps, and keeps helping round over round.
    assert!(rounds[0] < before, "{before} -> {rounds:?}");
    assert!(rounds[2] < rounds[0], "{rounds:?}");
    assert!(
        out.best_val.rmse < 0.6 * before,
        "{before} -> {}",
        out.best_val.rmse
    );
}
