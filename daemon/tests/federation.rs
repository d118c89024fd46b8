//! Multi-process federation tests: an anchor and edges as separate `fedd` processes on
//! 127.0.0.1, bootstrapped by address (no mDNS), training real burn models on synthetic
//! run-to-failure data and committing to RocksDB.

mod common;

use common::*;
use std::time::Duration;

const ROUND_WAIT: Duration = Duration::from_secs(300);

/// The committed rounds with their held-out RMSE, once `n` versions are evaluated.
fn evaluated(anchor: &Proc, n: u64) -> Option<Vec<(u64, f64)>> {
    let s = anchor.status()?;
    let v: Vec<(u64, f64)> = s
        .rounds
        .iter()
        .filter_map(|r| Some((r.version?, r.eval_rmse?)))
        .collect();
    (v.len() as u64 >= n).then_some(v)
}

#[test]
fn anchor_and_three_edge_processes_complete_rounds_and_rmse_falls() {
    let root = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let anchor = anchor(root.path(), port, 3);
    let addr = anchor_addr(&anchor);
    let edges: Vec<Proc> = (0..3).map(|i| edge(root.path(), i, &addr, 6, 3)).collect();
    let mut all: Vec<&Proc> = vec![&anchor];
    all.extend(edges.iter());
    let rounds = wait_for(ROUND_WAIT, "6 evaluated rounds", &all, || {
        evaluated(&anchor, 6)
    });
    let status = anchor.status().expect("status");
    assert!(
        status.version >= 6,
        "global version {} did not advance",
        status.version
    );
    let versions: Vec<u64> = rounds.iter().map(|(v, _)| *v).collect();
    assert!(
        versions.windows(2).all(|w| w[1] == w[0] + 1),
        "versions {versions:?}"
    );
    eprintln!("held-out RMSE per version: {rounds:?}");
    let (first, last) = (rounds[0].1, rounds[rounds.len() - 1].1);
    let genesis = status
        .genesis_eval_rmse
        .expect("the genesis model was evaluated");
    assert!(
        last < 0.5 * genesis,
        "held-out RMSE {last:.3} is not far below the untrained model's {genesis:.3}"
    );
    assert!(
        last < first,
        "held-out RMSE did not fall: first {first:.3}, last {last:.3}"
    );
    // Every edge trained and one of them coordinated.
    for e in &edges {
        let s = e.status().expect("edge status");
        assert!(s.rounds_trained >= 1, "edge {} never trained", s.peer_id);
        assert!(s.eligible);
    }
    assert_eq!(
        edges
            .iter()
            .filter(|e| e.status().is_some_and(|s| s.is_coordinator))
            .count(),
        1
    );
}

#[test]
fn an_edge_below_the_sample_criterion_is_never_selected() {
    let root = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let anchor = anchor(root.path(), port, 2);
    let addr = anchor_addr(&anchor);
    let rich: Vec<Proc> = (0..2).map(|i| edge(root.path(), i, &addr, 6, 2)).collect();
    // Two run-to-failure recordings: below min_failures = 3.
    let poor = edge(root.path(), 9, &addr, 2, 2);
    let all = [&anchor, &rich[0], &rich[1], &poor];
    wait_for(ROUND_WAIT, "3 committed rounds", &all, || {
        anchor.status().filter(|s| s.version >= 3)
    });
    wait_for(
        Duration::from_secs(10),
        "the poor edge to see a round",
        &all,
        || poor.status().filter(|s| s.not_selected >= 1),
    );
    let s = poor.status().expect("poor edge status");
    assert!(!s.eligible);
    assert_eq!(s.rounds_trained, 0, "the ineligible edge trained");
    assert!(!s.is_coordinator);
    assert!(
        s.eligibility.contains("sample criterion"),
        "{}",
        s.eligibility
    );
    assert!(
        s.last_event.contains("sample criterion"),
        "{}",
        s.last_event
    );
    let log = std::fs::read_to_string(poor.dir.join("edge.log")).expect("log");
    assert!(log.contains("does not meet the sample criterion"));
    for e in &rich {
        assert!(e.status().expect("status").rounds_trained >= 1);
    }
}

#[test]
fn a_killed_anchor_restarts_from_its_last_committed_version() {
    let root = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut anchor_proc = anchor(root.path(), port, 2);
    let addr = anchor_addr(&anchor_proc);
    let edges: Vec<Proc> = (0..2).map(|i| edge(root.path(), i, &addr, 6, 2)).collect();
    let before = wait_for(
        ROUND_WAIT,
        "2 committed rounds",
        &[&anchor_proc, &edges[0], &edges[1]],
        || anchor_proc.status().filter(|s| s.version >= 2),
    );
    // SIGKILL: no shutdown path runs.
    anchor_proc.kill();
    std::fs::remove_file(anchor_proc.dir.join("status.json")).expect("remove old status");
    let anchor_proc = anchor(root.path(), port, 2);
    let restored = wait_for(
        Duration::from_secs(30),
        "the restarted anchor's status",
        &[&anchor_proc],
        || anchor_proc.status().filter(|s| s.version > 0),
    );
    assert!(
        restored.version >= before.version,
        "restarted at version {} < {}",
        restored.version,
        before.version
    );
    assert!(
        restored.term >= before.term,
        "term went back from {} to {}",
        before.term,
        restored.term
    );
    assert_eq!(
        restored.peer_id, before.peer_id,
        "the identity must survive restarts"
    );
    let after = wait_for(
        ROUND_WAIT,
        "2 more rounds after the restart",
        &[&anchor_proc, &edges[0], &edges[1]],
        || {
            anchor_proc
                .status()
                .filter(|s| s.version >= restored.version + 2)
        },
    );
    // The rounds after the restart built on the restored version: numbering continued.
    let rounds: Vec<u64> = after.rounds.iter().filter_map(|r| r.version).collect();
    assert!(rounds.iter().all(|v| *v > restored.version), "{rounds:?}");
    assert!(after.version >= before.version + 2);
}
