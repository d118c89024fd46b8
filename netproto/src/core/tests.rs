//! Core tests on a tiny synchronous harness: every message is delivered at once, time
//! advances in 10 ms steps, training completes instantly.

use super::*;
use crate::wire::{Digest, RoundPlan, SampleCounts};

const ANCHOR: &str = "anchor";

fn cfg() -> Config {
    Config {
        round_deadline_ms: 2_000,
        min_fit_fraction: 1.0,
        ..Config::default()
    }
}

fn rich() -> SampleCounts {
    SampleCounts {
        failures: 5,
        windows: 1_000,
    }
}

struct Harness {
    now: Time,
    anchor: Anchor,
    edges: Vec<Edge>,
    down: Vec<bool>,
    commits: Vec<crate::wire::Commit>,
    trained: Vec<(NodeId, u64)>,
}

impl Harness {
    fn new(samples: &[SampleCounts], cfg: Config) -> Self {
        let anchor = Anchor::new(
            cfg.clone(),
            NodeId::new(ANCHOR),
            AnchorDurable::genesis([0; 32]),
            0,
        );
        let edges = samples
            .iter()
            .enumerate()
            .map(|(i, s)| {
                Edge::new(
                    cfg.clone(),
                    NodeId(format!("edge-{i}")),
                    NodeId::new(ANCHOR),
                    *s,
                    None,
                    7,
                    0,
                )
            })
            .collect();
        Self {
            now: 0,
            anchor,
            down: vec![false; samples.len()],
            edges,
            commits: vec![],
            trained: vec![],
        }
    }

    fn step(&mut self) {
        self.now += 10;
        let now = self.now;
        self.anchor.handle_timeout(now);
        for (i, e) in self.edges.iter_mut().enumerate() {
            if !self.down[i] {
                e.handle_timeout(now);
                // A timeout still due right after `handle_timeout` makes a driver spin.
                assert!(
                    e.poll_timeout() > now,
                    "{} asks for a timeout in the past",
                    e.id()
                );
            }
        }
        // Drain until quiescent.
        for _ in 0..100 {
            let mut msgs: Vec<(NodeId, Option<NodeId>, Message)> = vec![];
            let aid = self.anchor.id().clone();
            while let Some(o) = self.anchor.poll_output() {
                match o {
                    Output::Broadcast(m) => msgs.push((aid.clone(), None, m)),
                    Output::Send { to, message } => msgs.push((aid.clone(), Some(to), message)),
                    Output::Aggregate { round, .. } => {
                        let digest: Digest = [round as u8; 32];
                        self.anchor.handle_committed(now, round, digest).unwrap();
                    }
                    Output::Event(Event::RoundCommitted(c)) => self.commits.push(c),
                    _ => {}
                }
            }
            let mut pushes = vec![];
            for (i, e) in self.edges.iter_mut().enumerate() {
                if self.down[i] {
                    while e.poll_output().is_some() {}
                    continue;
                }
                let id = e.id().clone();
                while let Some(o) = e.poll_output() {
                    match o {
                        Output::Broadcast(m) => msgs.push((id.clone(), None, m)),
                        Output::Send { to, message } => msgs.push((id.clone(), Some(to), message)),
                        Output::Train(plan) => {
                            self.trained.push((id.clone(), plan.round));
                            e.handle_training_done(now, plan.round, true);
                        }
                        Output::PushUpdate { round, term, .. } => {
                            pushes.push((id.clone(), round, term))
                        }
                        _ => {}
                    }
                }
            }
            for (id, round, term) in pushes {
                let _ = self.anchor.handle_update(now, &id, round, term, 100, 1.0);
            }
            if msgs.is_empty() {
                break;
            }
            for (from, to, m) in msgs {
                if to.is_none() || to.as_ref() == Some(self.anchor.id()) {
                    self.anchor.handle_message(now, &from, m.clone());
                }
                for (i, e) in self.edges.iter_mut().enumerate() {
                    if !self.down[i]
                        && (to.is_none() || to.as_ref() == Some(e.id()))
                        && *e.id() != from
                    {
                        e.handle_message(now, &from, m.clone());
                    }
                }
            }
        }
    }

    fn run_until(&mut self, limit: Time, mut done: impl FnMut(&Self) -> bool) -> bool {
        while self.now < limit {
            self.step();
            if done(self) {
                return true;
            }
        }
        false
    }
}

#[test]
fn rounds_commit_and_versions_advance() {
    let mut h = Harness::new(&[rich(), rich(), rich()], cfg());
    assert!(h.run_until(60_000, |h| h.commits.len() >= 3));
    let versions: Vec<u64> = h.commits.iter().map(|c| c.version).collect();
    assert_eq!(versions, vec![1, 2, 3]);
    assert_eq!(h.anchor.durable().version, 3);
    let coordinators = h
        .edges
        .iter()
        .filter(|e| e.coordinating().is_some())
        .count();
    assert_eq!(coordinators, 1);
}

#[test]
fn edges_below_the_criterion_are_never_selected() {
    let poor = SampleCounts {
        failures: 1,
        windows: 100,
    };
    let mut h = Harness::new(&[rich(), poor, rich()], cfg());
    assert!(h.run_until(60_000, |h| h.commits.len() >= 3));
    assert!(h.trained.iter().all(|(id, _)| id.as_str() != "edge-1"));
    assert!(h.commits.iter().all(|c| c.included.len() == 2));
    assert_eq!(h.edges[1].coordinating(), None);
}

#[test]
fn coordinator_failover_raises_the_term() {
    let mut h = Harness::new(&[rich(), rich(), rich()], cfg());
    assert!(h.run_until(60_000, |h| !h.commits.is_empty()));
    let first = h
        .edges
        .iter()
        .position(|e| e.coordinating().is_some())
        .unwrap();
    let first_term = h.edges[first].coordinating().unwrap();
    h.down[first] = true;
    let mut c = cfg();
    c.min_participants = 1;
    assert!(h.run_until(h.now + 30_000, |h| {
        h.edges
            .iter()
            .enumerate()
            .any(|(i, e)| !h.down[i] && e.coordinating().is_some_and(|t| t > first_term))
    }));
    assert!(h.anchor.durable().term > first_term);
}

fn presence(term: u64) -> Message {
    Message::Presence(crate::wire::Presence {
        samples: rich(),
        model_version: 0,
        term,
        ranges: None,
    })
}

/// An anchor with edges x and y known, x holding term 1, and round 1 open for both.
fn anchor_with_open_round() -> (Anchor, RoundPlan) {
    let mut a = Anchor::new(
        cfg(),
        NodeId::new(ANCHOR),
        AnchorDurable::genesis([0; 32]),
        0,
    );
    let (x, y) = (NodeId::new("x"), NodeId::new("y"));
    a.handle_message(0, &x, presence(0));
    a.handle_message(0, &y, presence(0));
    a.handle_message(1, &x, Message::Claim { term: 1 });
    a.handle_message(
        2,
        &x,
        Message::Propose(crate::wire::Proposal {
            term: 1,
            participants: vec![x.clone(), y],
            base_version: 0,
            hyper: Default::default(),
            scaler: None,
        }),
    );
    while a.poll_output().is_some() {}
    let plan = a.active_round().unwrap().clone();
    (a, plan)
}

#[test]
fn anchor_fences_stale_and_duplicate_updates() {
    let (mut a, plan) = anchor_with_open_round();
    let (x, y) = (NodeId::new("x"), NodeId::new("y"));
    assert_eq!(
        a.check_update(&NodeId::new("stranger"), 1, 1),
        Err(Reject::NotParticipant)
    );
    assert!(matches!(
        a.check_update(&x, 0, 1),
        Err(Reject::WrongRound { .. })
    ));
    assert!(matches!(
        a.check_update(&x, 1, 0),
        Err(Reject::WrongTerm { .. })
    ));
    assert_eq!(
        a.handle_update(3, &x, plan.round, plan.term, 10, 1.0),
        Ok(())
    );
    assert_eq!(
        a.handle_update(3, &x, plan.round, plan.term, 10, 1.0),
        Err(Reject::Duplicate)
    );
    assert_eq!(a.rejected_in_round(), 1);
    // The last participant closes the round: aggregation is requested with both included.
    assert_eq!(
        a.handle_update(4, &y, plan.round, plan.term, 30, 2.0),
        Ok(())
    );
    let outs: Vec<Output> = std::iter::from_fn(|| a.poll_output()).collect();
    assert!(outs.iter().any(|o| matches!(o, Output::Aggregate { round: 1, version: 1, included, .. } if included.len() == 2)));
    assert_eq!(a.check_update(&y, 1, 1), Err(Reject::Closed));
    let durable = a.handle_committed(5, 1, [9; 32]).unwrap();
    assert_eq!(
        (durable.version, durable.digest, durable.next_round),
        (1, [9; 32], 2)
    );
    let outs: Vec<Output> = std::iter::from_fn(|| a.poll_output()).collect();
    let commit = outs
        .iter()
        .find_map(|o| match o {
            Output::Broadcast(Message::RoundCommitted(c)) => Some(c.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(commit.samples, 40);
    assert!((commit.train_loss - 1.75).abs() < 1e-6);
    assert_eq!(a.check_update(&x, 1, 1), Err(Reject::NoActiveRound));
}

#[test]
fn deadline_without_quorum_abandons_and_round_numbers_are_not_reused() {
    let (mut a, plan) = anchor_with_open_round();
    a.handle_timeout(plan.deadline_ms + 10);
    let outs: Vec<Output> = std::iter::from_fn(|| a.poll_output()).collect();
    assert!(outs.iter().any(|o| matches!(
        o,
        Output::Broadcast(Message::RoundAbandoned { round: 1, .. })
    )));
    assert!(a.active_round().is_none());
    assert_eq!(a.durable().next_round, 2);
    assert_eq!(a.durable().version, 0);
}

#[test]
fn proposals_from_non_holders_or_with_ineligible_edges_are_refused() {
    let (mut a, _) = anchor_with_open_round();
    let x = NodeId::new("x");
    // A round is open: another proposal is refused even from the holder.
    a.handle_message(
        3,
        &x,
        Message::Propose(crate::wire::Proposal {
            term: 1,
            participants: vec![x.clone()],
            base_version: 0,
            hyper: Default::default(),
            scaler: None,
        }),
    );
    let outs: Vec<Output> = std::iter::from_fn(|| a.poll_output()).collect();
    assert!(outs.iter().any(|o| matches!(
        o,
        Output::Send {
            message: Message::ProposalRejected { .. },
            ..
        }
    )));
    assert_eq!(a.active_round().unwrap().round, 1);
}

#[test]
fn anchor_grants_one_lease_at_a_time_and_persists_terms() {
    let c = cfg();
    let mut a = Anchor::new(
        c.clone(),
        NodeId::new(ANCHOR),
        AnchorDurable::genesis([0; 32]),
        0,
    );
    for id in ["x", "y"] {
        a.handle_message(
            0,
            &NodeId::new(id),
            Message::Presence(crate::wire::Presence {
                samples: rich(),
                model_version: 0,
                term: 0,
                ranges: None,
            }),
        );
    }
    a.handle_message(1, &NodeId::new("x"), Message::Claim { term: 1 });
    a.handle_message(2, &NodeId::new("y"), Message::Claim { term: 1 });
    let outs: Vec<Output> = std::iter::from_fn(|| a.poll_output()).collect();
    let persisted: Vec<&AnchorDurable> = outs
        .iter()
        .filter_map(|o| match o {
            Output::Persist(d) => Some(d),
            _ => None,
        })
        .collect();
    assert_eq!(persisted.len(), 1);
    assert_eq!(persisted[0].term, 1);
    assert_eq!(persisted[0].coordinator, Some(NodeId::new("x")));
    // Persist comes before the announcement.
    let p = outs
        .iter()
        .position(|o| matches!(o, Output::Persist(_)))
        .unwrap();
    let b = outs
        .iter()
        .position(|o| matches!(o, Output::Broadcast(Message::TermGranted { .. })))
        .unwrap();
    assert!(p < b);
    assert!(outs.iter().any(|o| matches!(o, Output::Send { to, message: Message::ClaimRejected { term: 1, .. } } if to.as_str() == "y")));
    // After the lease expires, y may claim term 2 (x's silence lets it lapse).
    a.handle_message(
        c.lease_ms + 10,
        &NodeId::new("y"),
        Message::Presence(crate::wire::Presence {
            samples: rich(),
            model_version: 0,
            term: 1,
            ranges: None,
        }),
    );
    a.handle_message(
        c.lease_ms + 10,
        &NodeId::new("y"),
        Message::Claim { term: 2 },
    );
    assert_eq!(a.durable().term, 2);
    // A restarted anchor keeps the term and does not re-grant it before the lease runs out.
    let restored = Anchor::new(c, NodeId::new(ANCHOR), a.durable().clone(), 0);
    assert_eq!(restored.durable().term, 2);
}

#[test]
fn quorum_rounds_up() {
    assert_eq!(quorum(3, 0.5), 2);
    assert_eq!(quorum(4, 0.5), 2);
    assert_eq!(quorum(1, 0.1), 1);
    assert_eq!(quorum(5, 1.0), 5);
}

/// Regression (simnet, default scenario, seed 1): after `handle_timeout` an edge's
/// `poll_timeout` lay in the past before it heard the anchor (campaign retry) and while its
/// round ran (the coordinator's proposal gap), so a driver that sleeps until
/// `poll_timeout` spun at 100% CPU.
#[test]
fn timers_never_ask_for_the_past_after_handle_timeout() {
    let c = cfg();
    // An edge that has not heard the anchor yet.
    let mut e = Edge::new(
        c.clone(),
        NodeId::new("lonely"),
        NodeId::new(ANCHOR),
        rich(),
        None,
        1,
        0,
    );
    for now in [0, 10, 5_000, 60_000] {
        e.handle_timeout(now);
        while e.poll_output().is_some() {}
        assert!(
            e.poll_timeout() > now,
            "edge asks for {} at {now}",
            e.poll_timeout()
        );
    }
    // A federation running rounds: `Harness::step` asserts it for every edge at every step.
    let mut h = Harness::new(&[rich(), rich(), rich()], c);
    assert!(h.run_until(60_000, |h| h.commits.len() >= 3));
}
