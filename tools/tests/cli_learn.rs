//! `fedctl train → predict → evaluate` on small C-MAPSS-format fixtures written by
//! the test: centralized and federated training, a test engine shorter than the
//! window (padded), the `evaluate` output line, and errors that name file and line.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
mod common;

use common::{fedctl, ok};

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("fedctl-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// C-MAPSS text: `lives[i]` cycles for unit `i + 1`, cut after `keep[i]` cycles.
/// Every sensor drifts with the fraction of life used, plus a little deterministic noise.
fn cmapss_text(lives: &[usize], keep: &[usize]) -> String {
    let mut text = String::new();
    for (u, (&life, &kept)) in lives.iter().zip(keep).enumerate() {
        for c in 0..kept {
            let wear = c as f64 / life as f64;
            write!(text, "{} {} 0.0001 -0.0002 100.0", u + 1, c + 1).unwrap();
            for s in 1..=21 {
                let noise = (((u * 31 + c * 17 + s * 7) % 13) as f64 - 6.0) * 0.002;
                let v = 500.0 + s as f64 + (s % 5) as f64 * wear * wear + noise;
                write!(text, " {v:.4}").unwrap();
            }
            text.push('\n');
        }
    }
    text
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn train_predict_evaluate_on_fixtures() {
    let dir = Scratch::new("learn");
    let lives: Vec<usize> = (0..12).map(|i| 60 + 7 * i).collect();
    let train = dir.path("train.txt");
    std::fs::write(&train, cmapss_text(&lives, &lives)).unwrap();
    // Four test engines cut before failure; unit 3 has only 12 cycles (< window 30).
    let test_lives = [90, 80, 100, 70];
    let test_keep = [60, 55, 12, 40];
    let test = dir.path("test.txt");
    std::fs::write(&test, cmapss_text(&test_lives, &test_keep)).unwrap();
    let truth = dir.path("RUL.txt");
    let rul: Vec<usize> = test_lives
        .iter()
        .zip(&test_keep)
        .map(|(l, k)| l - k)
        .collect();
    std::fs::write(
        &truth,
        rul.iter().map(|r| format!("{r}\n")).collect::<String>(),
    )
    .unwrap();

    let model = dir.path("central.gfm");
    let out = ok(fedctl(&[
        "train",
        "--data",
        s(&train),
        "--model",
        "cnn",
        "--epochs",
        "2",
        "--val-engines",
        "3",
        "--seed",
        "1",
        "--out",
        s(&model),
    ]));
    assert!(out.contains("epoch   1/2: train_loss="), "{out}");
    assert!(out.contains("best: step="), "{out}");
    assert!(model.exists());
    // `evaluate --holdout` recomputes the test-style metrics that `train` reported on
    // its held-out engines: same RMSE, same number of cuts.
    let best = out.lines().find(|l| l.starts_with("best:")).unwrap();
    let field = |line: &str, key: &str| -> String {
        line.split(' ')
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")).map(str::to_string))
            .unwrap_or_else(|| panic!("no {key} in {line}"))
    };
    let holdout = ok(fedctl(&[
        "evaluate",
        "--model",
        s(&model),
        "--data",
        s(&train),
        "--holdout",
    ]));
    let holdout = holdout.trim();
    assert_eq!(
        field(holdout, "rmse"),
        field(best, "cut_rmse"),
        "{holdout} / {best}"
    );
    assert_eq!(field(holdout, "n"), field(best, "cut_n"));
    // Lives are 60 + 7i; a cut at raw RUL r needs 30 cycles before it, so an engine
    // of life L has min(145, L - 30) - 6 cuts: between 24 and 101 per engine.
    let n: usize = field(holdout, "n").parse().unwrap();
    assert!((3 * 24..=3 * 101).contains(&n), "{holdout}");
    // Neither --truth nor --holdout: a usage error, nothing evaluated.
    let out = fedctl(&["evaluate", "--model", s(&model), "--data", s(&train)]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--truth"));

    let fed_model = dir.path("fed.gfm");
    let out = ok(fedctl(&[
        "train",
        "--data",
        s(&train),
        "--model",
        "lstm",
        "--federated",
        "--edges",
        "3",
        "--split",
        "lifetime",
        "--rounds",
        "2",
        "--local-epochs",
        "1",
        "--strategy",
        "fedprox",
        "--seed",
        "2",
        "--val-engines",
        "3",
        "--out",
        s(&fed_model),
    ]));
    assert!(out.contains("round   2/2: train_loss="), "{out}");
    assert!(out.contains("federated 3 edges lifetime fedprox"), "{out}");

    for m in [&model, &fed_model] {
        let csv = dir.path("pred.csv");
        ok(fedctl(&[
            "predict",
            "--model",
            s(m),
            "--data",
            s(&test),
            "--out",
            s(&csv),
        ]));
        let text = std::fs::read_to_string(&csv).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "one line per test engine: {text}");
        for (i, line) in lines.iter().enumerate() {
            let (unit, rul) = line.split_once(',').unwrap();
            assert_eq!(unit, (i + 1).to_string());
            let rul: f64 = rul.parse().unwrap();
            assert!(rul.is_finite() && rul >= 0.0, "{line}");
        }

        let out = ok(fedctl(&[
            "evaluate",
            "--model",
            s(m),
            "--data",
            s(&test),
            "--truth",
            s(&truth),
        ]));
        let line = out.trim();
        let fields: Vec<(&str, &str)> = line
            .split(' ')
            .map(|kv| kv.split_once('=').unwrap())
            .collect();
        let keys: Vec<&str> = fields.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, ["rmse", "score", "mae", "late", "n"], "{line}");
        assert_eq!(fields[4].1, "4");
        assert!(fields[0].1.parse::<f64>().unwrap() >= 0.0);
    }

    // Predictions and metrics agree: evaluate on the predict output by hand.
    let csv = dir.path("pred.csv");
    ok(fedctl(&[
        "predict",
        "--model",
        s(&model),
        "--data",
        s(&test),
        "--out",
        s(&csv),
    ]));
    let pred: Vec<f64> = std::fs::read_to_string(&csv)
        .unwrap()
        .lines()
        .map(|l| l.split_once(',').unwrap().1.parse().unwrap())
        .collect();
    let mse = pred
        .iter()
        .zip(&rul)
        .map(|(p, &t)| (p - t as f64).powi(2))
        .sum::<f64>()
        / 4.0;
    let out = ok(fedctl(&[
        "evaluate",
        "--model",
        s(&model),
        "--data",
        s(&test),
        "--truth",
        s(&truth),
    ]));
    let rmse: f64 = out.trim().split(' ').next().unwrap()[5..].parse().unwrap();
    // The CSV rounds to 2 decimals.
    assert!((rmse - mse.sqrt()).abs() < 0.02, "{rmse} vs {}", mse.sqrt());

    // A truth file with the wrong number of engines is an error.
    let short_truth = dir.path("RUL_short.txt");
    std::fs::write(&short_truth, "5\n6\n").unwrap();
    let out = fedctl(&[
        "evaluate",
        "--model",
        s(&model),
        "--data",
        s(&test),
        "--truth",
        s(&short_truth),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("truth file has 2 values"));
}

#[test]
fn malformed_files_name_file_and_line() {
    let dir = Scratch::new("bad");
    let bad = dir.path("bad_train.txt");
    let mut text = cmapss_text(&[40], &[40]);
    text.push_str("2 1 0.0 0.0 100.0 1 2 3\n");
    std::fs::write(&bad, text).unwrap();
    let out = fedctl(&[
        "train",
        "--data",
        s(&bad),
        "--model",
        "cnn",
        "--out",
        s(&dir.path("m.gfm")),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}:41: expected 26 columns, found 8",
            bad.display()
        )),
        "{err}"
    );

    let not_a_model = dir.path("junk.gfm");
    std::fs::write(&not_a_model, b"hello, this is no model file").unwrap();
    let out = fedctl(&[
        "predict",
        "--model",
        s(&not_a_model),
        "--data",
        s(&bad),
        "--out",
        s(&dir.path("p.csv")),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a gossipfed model file"));
}
