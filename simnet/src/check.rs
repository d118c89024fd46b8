//! Global invariant checkers, run after every simulation step.
//!
//! The simulator reports what each node did (`on_*` methods) and the checker keeps the
//! global truth the protocol must respect: who was granted which term, which rounds the
//! anchor opened and what it admitted into them, which digest every version has, and the
//! last durable state of the anchor. Checks are incremental (O(log N) per step), so they can
//! run after every event even with a thousand peers.

use netproto::core::AnchorDurable;
use netproto::wire::{Commit, Digest, NodeId, RoundPlan};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Most violation messages kept (all are counted).
const MAX_KEPT: usize = 64;

#[derive(Debug)]
struct RoundInfo {
    term: u64,
    participants: BTreeSet<NodeId>,
    admitted: BTreeSet<NodeId>,
    closed: bool,
}

/// The global invariant checker of one run.
#[derive(Debug, Default)]
pub struct Checker {
    violations: Vec<String>,
    count: u64,
    eligible: HashMap<NodeId, bool>,
    grants: BTreeMap<u64, NodeId>,
    rounds: BTreeMap<u64, RoundInfo>,
    open_round: Option<u64>,
    commits: BTreeMap<u64, Digest>,
    last_version: u64,
    persisted: Option<AnchorDurable>,
    coord_by_term: BTreeMap<u64, BTreeSet<usize>>,
    node_coord: Vec<Option<u64>>,
    node_version: Vec<u64>,
}

impl Checker {
    /// A checker for nodes `0..n` whose criterion eligibility is `eligible`, starting from
    /// the genesis model `digest`.
    pub fn new(eligible: HashMap<NodeId, bool>, n: usize, genesis: Digest) -> Self {
        let mut commits = BTreeMap::new();
        commits.insert(0, genesis);
        Self {
            eligible,
            commits,
            node_coord: vec![None; n],
            node_version: vec![0; n],
            ..Self::default()
        }
    }

    /// Violations so far (the first [`MAX_KEPT`]).
    pub fn violations(&self) -> &[String] {
        &self.violations
    }

    /// Number of violations so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Highest committed version.
    pub fn committed(&self) -> u64 {
        self.last_version
    }

    /// The node granted `term`, if any.
    pub fn grantee(&self, term: u64) -> Option<&NodeId> {
        self.grants.get(&term)
    }

    fn fail(&mut self, now: u64, msg: String) {
        self.count += 1;
        if self.violations.len() < MAX_KEPT {
            self.violations.push(format!("t={now}ms: {msg}"));
        }
    }

    fn is_eligible(&self, id: &NodeId) -> bool {
        self.eligible.get(id).copied().unwrap_or(false)
    }

    /// A violation found by the driver itself (e.g. a message the codec refuses).
    pub fn on_external_violation(&mut self, now: u64, msg: String) {
        self.fail(now, msg);
    }

    /// The anchor granted `term` to `coordinator`.
    pub fn on_term_granted(&mut self, now: u64, term: u64, coordinator: &NodeId) {
        let max = self.grants.keys().next_back().copied().unwrap_or(0);
        if let Some(prev) = self.grants.get(&term) {
            if prev != coordinator {
                let msg = format!("term {term} granted to {prev} and to {coordinator}");
                self.fail(now, msg);
            }
        } else if term <= max {
            self.fail(now, format!("term {term} granted after term {max}"));
        }
        if !self.is_eligible(coordinator) {
            self.fail(now, format!("ineligible {coordinator} granted term {term}"));
        }
        self.grants.insert(term, coordinator.clone());
    }

    /// The anchor opened `plan` while its durable term is `anchor_term`.
    pub fn on_round_opened(&mut self, now: u64, plan: &RoundPlan, anchor_term: u64) {
        if let Some(r) = self.open_round
            && self.rounds.get(&r).is_some_and(|i| !i.closed)
        {
            self.fail(
                now,
                format!("round {} opened while round {r} is active", plan.round),
            );
        }
        if let Some((&last, _)) = self.rounds.iter().next_back()
            && plan.round <= last
        {
            self.fail(
                now,
                format!("round number {} reused (last {last})", plan.round),
            );
        }
        if plan.term != anchor_term {
            let msg = format!(
                "round {} opened under term {} but the anchor's term is {anchor_term}",
                plan.round, plan.term
            );
            self.fail(now, msg);
        }
        if self.grants.get(&plan.term) != Some(&plan.coordinator) {
            let msg = format!(
                "round {} proposed by {} which was not granted term {}",
                plan.round, plan.coordinator, plan.term
            );
            self.fail(now, msg);
        }
        let bad: Vec<String> = plan
            .participants
            .iter()
            .filter(|p| !self.is_eligible(p))
            .map(|p| p.to_string())
            .collect();
        if !bad.is_empty() {
            let msg = format!(
                "round {} selected peers below the criterion: {}",
                plan.round,
                bad.join(",")
            );
            self.fail(now, msg);
        }
        self.rounds.insert(
            plan.round,
            RoundInfo {
                term: plan.term,
                participants: plan.participants.iter().cloned().collect(),
                admitted: BTreeSet::new(),
                closed: false,
            },
        );
        self.open_round = Some(plan.round);
    }

    /// The anchor admitted an update of `from` that claimed (`round`, `term`).
    pub fn on_update_admitted(&mut self, now: u64, from: &NodeId, round: u64, term: u64) {
        let Some(open) = self
            .open_round
            .filter(|r| self.rounds.get(r).is_some_and(|i| !i.closed))
        else {
            self.fail(
                now,
                format!("update of {from} for round {round} admitted with no round open"),
            );
            return;
        };
        let mut problems = Vec::new();
        if round != open {
            problems.push(format!("stale round {round} admitted into round {open}"));
        }
        if let Some(info) = self.rounds.get_mut(&open) {
            if term != info.term {
                problems.push(format!(
                    "stale term {term} admitted into round {open} of term {}",
                    info.term
                ));
            }
            if !info.participants.contains(from) {
                problems.push(format!(
                    "update of non-participant {from} admitted into round {open}"
                ));
            }
            if !info.admitted.insert(from.clone()) {
                problems.push(format!("update of {from} admitted twice into round {open}"));
            }
        }
        for p in problems {
            self.fail(now, p);
        }
    }

    /// The anchor asked to aggregate `included` into `version` for `round`.
    pub fn on_aggregate(&mut self, now: u64, round: u64, version: u64, included: &[NodeId]) {
        if self.open_round != Some(round) {
            self.fail(
                now,
                format!("aggregation of round {round} which is not the open round"),
            );
        }
        if version != self.last_version + 1 {
            let msg = format!(
                "aggregation into version {version} after version {}",
                self.last_version
            );
            self.fail(now, msg);
        }
        let admitted = self
            .rounds
            .get(&round)
            .map(|i| i.admitted.clone())
            .unwrap_or_default();
        let inc: BTreeSet<NodeId> = included.iter().cloned().collect();
        if inc != admitted || inc.len() != included.len() {
            self.fail(
                now,
                format!("round {round} aggregates {inc:?} but admitted {admitted:?}"),
            );
        }
    }

    /// The anchor committed `c`.
    pub fn on_commit(&mut self, now: u64, c: &Commit) {
        if c.version != self.last_version + 1 {
            let msg = format!(
                "version {} committed after version {}",
                c.version, self.last_version
            );
            self.fail(now, msg);
        }
        if let Some(d) = self.commits.get(&c.version)
            && *d != c.digest
        {
            self.fail(now, format!("version {} forked: two digests", c.version));
        }
        if self.open_round != Some(c.round) {
            self.fail(
                now,
                format!("round {} committed but it is not the open round", c.round),
            );
        }
        self.commits.insert(c.version, c.digest);
        self.last_version = self.last_version.max(c.version);
        if let Some(info) = self.rounds.get_mut(&c.round) {
            info.closed = true;
        }
    }

    /// The anchor abandoned `round`.
    pub fn on_abandon(&mut self, _now: u64, round: u64) {
        if let Some(info) = self.rounds.get_mut(&round) {
            info.closed = true;
        }
    }

    /// The anchor durably wrote `d` (a `Persist` output or a commit).
    pub fn on_persist(&mut self, now: u64, d: &AnchorDurable) {
        if let Some(p) = &self.persisted {
            let mut problems = Vec::new();
            if d.term < p.term {
                problems.push(format!("durable term regressed {} -> {}", p.term, d.term));
            }
            if d.next_round < p.next_round {
                problems.push(format!(
                    "durable next_round regressed {} -> {}",
                    p.next_round, d.next_round
                ));
            }
            if d.version < p.version || (d.version == p.version && d.digest != p.digest) {
                problems.push(format!(
                    "durable version regressed or forked {} -> {}",
                    p.version, d.version
                ));
            }
            for m in problems {
                self.fail(now, m);
            }
        }
        if self.commits.get(&d.version).is_some_and(|x| *x != d.digest) {
            self.fail(
                now,
                format!("durable version {} has a digest never committed", d.version),
            );
        }
        self.persisted = Some(d.clone());
    }

    /// The anchor crashed: its open round died with it.
    pub fn on_anchor_crash(&mut self) {
        if let Some(r) = self.open_round.take()
            && let Some(info) = self.rounds.get_mut(&r)
        {
            info.closed = true;
        }
    }

    /// The anchor restarted from `d`: it must be exactly the last persisted state.
    pub fn on_anchor_restart(&mut self, now: u64, d: &AnchorDurable) {
        if self.persisted.as_ref().is_some_and(|p| p != d) {
            self.fail(
                now,
                "anchor restarted from a state other than the last persisted one".into(),
            );
        }
    }

    /// Edge `node` (id `id`) was asked to train for `plan`.
    pub fn on_train(&mut self, now: u64, id: &NodeId, plan: &RoundPlan) {
        if !self.is_eligible(id) {
            self.fail(
                now,
                format!("{id} below the criterion trains round {}", plan.round),
            );
        }
        if !self
            .rounds
            .get(&plan.round)
            .is_some_and(|i| i.participants.contains(id))
        {
            self.fail(
                now,
                format!("{id} trains round {} it was not selected for", plan.round),
            );
        }
    }

    /// Node `node` crashed or restarted: forget its volatile view.
    pub fn on_node_reset(&mut self, node: usize) {
        if let Some(Some(t)) = self.node_coord.get(node).cloned()
            && let Some(s) = self.coord_by_term.get_mut(&t)
        {
            s.remove(&node);
        }
        if let Some(c) = self.node_coord.get_mut(node) {
            *c = None;
        }
        if let Some(v) = self.node_version.get_mut(node) {
            *v = 0;
        }
    }

    /// After a step of edge `node` (`id`): its coordinator belief and its global version.
    pub fn after_edge_step(
        &mut self,
        now: u64,
        node: usize,
        id: &NodeId,
        coordinating: Option<u64>,
        global: (u64, Option<Digest>),
    ) {
        let before = self.node_coord.get(node).copied().flatten();
        if before != coordinating {
            if let Some(t) = before
                && let Some(s) = self.coord_by_term.get_mut(&t)
            {
                s.remove(&node);
            }
            if let Some(t) = coordinating {
                let s = self.coord_by_term.entry(t).or_default();
                s.insert(node);
                let holders = s.len();
                if holders > 1 {
                    self.fail(
                        now,
                        format!("{holders} edges believe they coordinate term {t}"),
                    );
                }
                if self.grants.get(&t) != Some(id) {
                    self.fail(
                        now,
                        format!("{id} coordinates term {t} which was not granted to it"),
                    );
                }
            }
            if let Some(c) = self.node_coord.get_mut(node) {
                *c = coordinating;
            }
        }
        let (v, d) = global;
        let prev = self.node_version.get(node).copied().unwrap_or(0);
        if v != prev {
            if v < prev {
                self.fail(
                    now,
                    format!("{id}'s global version went back {prev} -> {v}"),
                );
            }
            if let Some(n) = self.node_version.get_mut(node) {
                *n = v;
            }
            match (self.commits.get(&v), d) {
                (Some(c), Some(d)) if *c != d => {
                    self.fail(
                        now,
                        format!("{id} holds version {v} with a digest that was not committed"),
                    );
                }
                (None, _) => self.fail(
                    now,
                    format!("{id} holds version {v} which was never committed"),
                ),
                _ => {}
            }
        }
    }
}
