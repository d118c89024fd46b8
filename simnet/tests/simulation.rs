//! End-to-end properties of the simulator: determinism, safety and liveness over seed
//! sweeps, checkers that fire on a broken core, regression scenarios, the burn trainer,
//! and reports.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use simnet::{RunOptions, Scenario, run, sweep};

fn scenario(name: &str) -> Scenario {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(name);
    match Scenario::load(&path) {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    }
}

fn opts(seed: u64) -> RunOptions {
    RunOptions {
        seed,
        ..RunOptions::default()
    }
}

#[test]
fn same_seed_same_trace_different_seed_different_trace() {
    let sc = Scenario::default();
    let a = run(&sc, opts(7)).unwrap();
    let b = run(&sc, opts(7)).unwrap();
    let c = run(&sc, opts(8)).unwrap();
    assert_eq!(a.trace_hash, b.trace_hash);
    assert_eq!(a.rounds_committed, b.rounds_committed);
    assert_eq!(a.virtual_ms, b.virtual_ms);
    assert_ne!(a.trace_hash, c.trace_hash);
    assert_eq!(a.trace_hash.len(), 64);
}

#[test]
fn default_sweep_is_safe_and_live() {
    let s = sweep(&Scenario::default(), 1..=50, 2, false).unwrap();
    assert_eq!(s.seeds(), 50);
    let failed: Vec<_> = s.results.iter().filter(|r| r.failed()).collect();
    assert!(failed.is_empty(), "{failed:#?}");
    assert_eq!(s.safety_violations(), 0);
    assert_eq!(s.liveness_failures(), 0);
    // Faults happened and the coordinator failed over within the liveness bound.
    let f = s.failover_ms();
    assert!(!f.is_empty());
    assert!(f.iter().all(|&ms| ms < 60_000), "{f:?}");
}

#[test]
fn harsh_sweep_is_safe_and_live() {
    let s = sweep(&scenario("harsh.toml"), 1..=30, 2, false).unwrap();
    assert_eq!(s.safety_violations(), 0);
    assert_eq!(
        s.liveness_failures(),
        0,
        "{:#?}",
        s.results.iter().filter(|r| r.failed()).collect::<Vec<_>>()
    );
}

#[test]
fn checkers_fire_when_fencing_is_disabled() {
    let s = sweep(&Scenario::default(), 1..=20, 2, true).unwrap();
    assert!(s.safety_violations() > 0);
    assert!(s.failed() > 0);
    let kinds: Vec<String> = s
        .results
        .iter()
        .filter_map(|r| r.first_violation.clone())
        .collect();
    assert!(
        kinds
            .iter()
            .any(|k| k.contains("admitted twice") || k.contains("stale")),
        "{kinds:#?}"
    );
}

#[test]
fn regression_scenarios_pass_with_their_seed() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path: PathBuf = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !name.starts_with("regression-") {
            continue;
        }
        let sc = Scenario::load(&path).unwrap();
        let seed = sc.seed.expect("a regression scenario records its seed");
        let o = run(&sc, opts(seed)).unwrap();
        assert_eq!(o.safety_violations, 0, "{name}: {:?}", o.violations);
        assert!(
            o.liveness_failures.is_empty(),
            "{name}: {:?}",
            o.liveness_failures
        );
        assert_eq!(o.stats.busy_wakes, 0, "{name}");
        n += 1;
    }
    assert!(n >= 1);
}

#[test]
fn shipped_scenarios_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            Scenario::load(&path).unwrap();
        }
    }
    assert_eq!(scenario("default.toml").peers, Scenario::default().peers);
}

#[test]
fn fake_trainer_converges_and_ineligible_edges_never_train() {
    let o = run(&Scenario::default(), opts(3)).unwrap();
    assert_eq!(o.safety_violations, 0);
    let first = o.rounds.first().unwrap().global_loss;
    let last = o.rounds.last().unwrap().global_loss;
    assert!(last < 0.1 * first, "{first} -> {last}");
}

#[test]
fn burn_trainer_converges_on_a_tiny_run() {
    let sc = scenario("burn-small.toml");
    let o = run(&sc, opts(1)).unwrap();
    assert_eq!(o.safety_violations, 0, "{:?}", o.violations);
    assert!(o.liveness_failures.is_empty(), "{:?}", o.liveness_failures);
    assert!(o.rounds_committed >= sc.rounds);
    let first = o.rounds.first().unwrap().global_loss;
    let last = o.rounds.last().unwrap().global_loss;
    assert!(last.is_finite() && last < first, "rmse {first} -> {last}");
}

#[test]
fn report_writes_csv_and_png() {
    let o = run(&Scenario::default(), opts(2)).unwrap();
    let dir = std::env::temp_dir().join(format!("simnet-report-test-{}", std::process::id()));
    let files = simnet::report::write(&o, &dir).unwrap();
    let csv = std::fs::read_to_string(dir.join("rounds.csv")).unwrap();
    assert!(csv.starts_with("version,round,term,time_s,selected,included,global_loss"));
    assert_eq!(csv.lines().count() as u64, o.rounds_committed + 2);
    let png = std::fs::read(dir.join("report.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(files.len(), 3);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn summary_lines_have_the_documented_shape() {
    let o = run(&Scenario::default(), opts(1)).unwrap();
    let line = simnet::summary_line(&o, 0.5);
    assert!(line.starts_with(&format!(
        "simnet: peers=24 rounds_committed={} virtual_s=",
        o.rounds_committed
    )));
    assert!(line.contains(" wall_s=0.500 safety_violations=0 trace_hash="));
    let s = sweep(&Scenario::default(), 1..=2, 1, false).unwrap();
    assert_eq!(
        simnet::sweep_line(&s),
        "sweep: seeds=2 failed=0 safety_violations=0 liveness_failures=0"
    );
    assert_eq!(simnet::parse_seeds("1..200").unwrap(), 1..=200);
    assert!(simnet::parse_seeds("5..1").is_err());
    assert!(simnet::parse_seeds("x").is_err());
}
