//! Benchmark: seconds per local training epoch and per evaluation pass, per architecture.
//!
//! Run with `cargo bench -p model --bench train_epoch [-- MACHINES [EPOCHS [cnn|lstm]]]`.
//! Prints one JSON object per line (machine-readable), e.g.
//! `{"arch":"cnn","windows":2004,"params":45373,"epoch_s":0.61,"eval_s":0.05,"rmse":15.2}`.

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use model::data::{Scaler, WindowConfig, make_windows};
use model::net::{Arch, ModelSpec, init_params};
use model::synthetic::{SyntheticConfig, generate};
use model::train::{TrainConfig, evaluate, train_local};

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let machines: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(12);
    let epochs: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(3);
    let trajs = generate(&SyntheticConfig {
        machines,
        seed: 1,
        ..SyntheticConfig::default()
    });
    let Some(scaler) = Scaler::fit(&trajs) else {
        eprintln!("no data");
        return;
    };
    let data = make_windows(&trajs, &scaler, &WindowConfig::default());
    let archs = match args.get(2).map(String::as_str) {
        Some("cnn") => vec![Arch::Cnn],
        Some("lstm") => vec![Arch::Lstm],
        _ => vec![Arch::Cnn, Arch::Lstm],
    };
    for arch in archs {
        let spec = ModelSpec {
            arch,
            window: 30,
            features: 14,
        };
        let base = init_params(&spec, 0);
        let cfg = TrainConfig {
            epochs,
            ..TrainConfig::default()
        };
        let start = Instant::now();
        let Ok(out) = train_local(&spec, &base, &data, &cfg, &AtomicBool::new(false)) else {
            eprintln!("training failed");
            return;
        };
        let epoch_s = start.elapsed().as_secs_f64() / epochs as f64;
        let start = Instant::now();
        let Ok(metrics) = evaluate(&spec, &out.params, &data) else {
            eprintln!("evaluation failed");
            return;
        };
        let eval_s = start.elapsed().as_secs_f64();
        println!(
            "{{\"arch\":\"{}\",\"windows\":{},\"params\":{},\"batch\":{},\"epochs\":{},\"epoch_s\":{:.4},\"eval_s\":{:.4},\"train_rmse\":{:.3}}}",
            match arch {
                Arch::Cnn => "cnn",
                Arch::Lstm => "lstm",
            },
            data.len(),
            base.len(),
            cfg.batch_size,
            epochs,
            epoch_s,
            eval_s,
            metrics.rmse
        );
    }
}
