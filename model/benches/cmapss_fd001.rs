//! Benchmark: learning curve on NASA C-MAPSS FD001 with the standard protocol
//! (14 sensors, 30-cycle windows, RUL capped at 125, min-max scaling fitted on the
//! training engines), validated on held-out whole training engines.
//!
//! Run with `cargo bench -p model --bench cmapss_fd001 [-- EPOCHS [cnn|lstm] [DIR]]`;
//! `DIR` defaults to `../shared/data/cmapss` (relative to the workspace root). Prints
//! one JSON object per epoch. Exits quietly if the data is absent.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use model::cmapss::{INFORMATIVE_SENSORS, load_trajectories};
use model::data::{Scaler, WindowConfig, make_windows, split_machines};
use model::metrics::rmse;
use model::net::{Arch, ModelSpec, init_params};
use model::train::{TrainConfig, evaluate, train_local};

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let epochs: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(10);
    let arch = match args.get(1).map(String::as_str) {
        Some("lstm") => Arch::Lstm,
        _ => Arch::Cnn,
    };
    let dir = args.get(2).map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/cmapss")
    });
    let path = dir.join("train_FD001.txt");
    let trajs = match load_trajectories(&path, &INFORMATIVE_SENSORS) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("skipping: {e}");
            return;
        }
    };
    let (train, val) = split_machines(&trajs, 20, 0);
    let Some(scaler) = Scaler::fit(&train) else {
        eprintln!("no training rows");
        return;
    };
    let wcfg = WindowConfig::default();
    let train_ds = make_windows(&train, &scaler, &wcfg);
    let val_ds = make_windows(&val, &scaler, &wcfg);
    let mean = train_ds.targets.iter().sum::<f32>() / train_ds.len() as f32;
    let naive = rmse(&vec![mean; val_ds.len()], &val_ds.targets);
    let spec = ModelSpec {
        arch,
        window: wcfg.window,
        features: INFORMATIVE_SENSORS.len(),
    };
    let mut params = init_params(&spec, 0);
    let never = AtomicBool::new(false);
    for epoch in 1..=epochs {
        let cfg = TrainConfig {
            epochs: 1,
            seed: epoch as u64,
            ..TrainConfig::default()
        };
        let start = Instant::now();
        let out = match train_local(&spec, &params, &train_ds, &cfg, &never) {
            Ok(o) => o,
            Err(e) => {
                eprintln!("training failed: {e}");
                return;
            }
        };
        let secs = start.elapsed().as_secs_f64();
        params = out.params;
        let Ok(m) = evaluate(&spec, &params, &val_ds) else {
            eprintln!("evaluation failed");
            return;
        };
        println!(
            "{{\"arch\":\"{arch:?}\",\"epoch\":{epoch},\"train_windows\":{},\"val_windows\":{},\"epoch_s\":{secs:.3},\"loss\":{:.5},\"val_rmse\":{:.3},\"val_score\":{:.1},\"mean_predictor_rmse\":{naive:.3}}}",
            train_ds.len(),
            val_ds.len(),
            out.loss,
            m.rmse,
            m.score
        );
    }
}
