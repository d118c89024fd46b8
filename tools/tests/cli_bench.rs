//! `fedctl bench rounds` and `fedctl bench aggregate` as a user runs them: the summary
//! lines keep their documented shape, the final global model is checked exactly, and the
//! model travels down the distribution tree (the anchor sends each version twice; the
//! model spans several fetch chunks, as large models do).
//! No timing is asserted: speed is what the benchmarks print, not what tests check.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

fn fedctl(args: &[&str]) -> String {
    common::ok(common::fedctl(args))
}

/// The `key=value` fields of the line starting with `prefix`.
fn fields(text: &str, prefix: &str) -> Vec<(String, String)> {
    let line = text
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line in {text}"));
    line[prefix.len()..]
        .split_whitespace()
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

fn num(fields: &[(String, String)], key: &str) -> f64 {
    fields
        .iter()
        .find(|(k, _)| k == key)
        .unwrap_or_else(|| panic!("no {key}"))
        .1
        .parse()
        .unwrap()
}

#[test]
fn bench_rounds_checks_the_model_and_distributes_it_through_the_tree() {
    // 600,000 parameters = 2.4 MB: three 1 MiB fetch chunks per model.
    let params = 600_000u64;
    let out = fedctl(&[
        "bench", "rounds", "--edges", "6", "--params", "600000", "--rounds", "3",
    ]);
    let f = fields(&out, "bench: ");
    let keys: Vec<&str> = f.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "edges",
            "params",
            "rounds",
            "per_round_ms_median",
            "per_round_ms_p90",
            "anchor_peak_rss_mb",
            "edge_peak_rss_mb",
            "anchor_egress_mb_per_round",
            "check"
        ],
        "{out}"
    );
    assert_eq!(f.last().unwrap().1, "ok", "{out}");
    assert_eq!(num(&f, "edges"), 6.0);
    assert_eq!(num(&f, "rounds"), 3.0);
    // Each round's base model leaves the anchor twice (to the two roots of the tree);
    // the four other edges get it from their parents. Model bytes: 4 per parameter plus
    // a small layout header.
    let model_mb = (params * 4) as f64 / 1e6;
    let egress = num(&f, "anchor_egress_mb_per_round");
    assert!(
        egress >= 2.0 * model_mb && egress <= 2.0 * model_mb * 1.01,
        "anchor egress {egress} MB per round for a {model_mb} MB model: {out}"
    );
}

#[test]
fn bench_aggregate_reports_throughput_next_to_its_memory_reference() {
    let out = fedctl(&["bench", "aggregate", "--clients", "3", "--params", "200000"]);
    let f = fields(&out, "aggregate: ");
    for key in ["copy_gbs", "sum_gbs", "fedavg_gbs", "streaming_f64_gbs"] {
        let v = num(&f, key);
        assert!(v.is_finite() && v > 0.0, "{key}={v}: {out}");
    }
    assert!(f.iter().any(|(k, _)| k == "fedavg_vs_reference"), "{out}");
}
