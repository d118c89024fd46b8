//! The anchor's state machine: lease authority, round fencing, update admission, commits.

use super::{Config, Event, Output, Time, quorum};
use crate::wire::{
    AnchorStatus, Commit, Digest, FeatureRanges, Message, NodeId, Presence, Proposal, RoundPlan,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// What the anchor must not forget across a restart. Written on every `Output::Persist` and,
/// with the model, on every commit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnchorDurable {
    /// Highest term ever granted.
    pub term: u64,
    /// Holder of that term's lease.
    pub coordinator: Option<NodeId>,
    /// Next round number to assign (rounds opened before a crash are never reused).
    pub next_round: u64,
    /// Latest committed global version.
    pub version: u64,
    /// Its digest.
    pub digest: Digest,
    /// The federation's scaler, fixed by the first committed round.
    pub scaler: Option<FeatureRanges>,
}

impl AnchorDurable {
    /// The state of a new federation whose genesis model has `digest` (version 0).
    pub fn genesis(digest: Digest) -> Self {
        Self {
            term: 0,
            coordinator: None,
            next_round: 1,
            version: 0,
            digest,
            scaler: None,
        }
    }
}

/// Why the anchor refused an update or a request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    /// No round is open.
    #[error("no round is open")]
    NoActiveRound,
    /// The update names another round than the open one.
    #[error("stale or unknown round {got} (open: {open})")]
    WrongRound {
        /// Round named by the update.
        got: u64,
        /// Round open at the anchor.
        open: u64,
    },
    /// The update names another term than the open round's.
    #[error("stale term {got} (round term: {expected})")]
    WrongTerm {
        /// Term named by the update.
        got: u64,
        /// Term of the open round.
        expected: u64,
    },
    /// The sender is not a participant of the open round.
    #[error("sender is not a participant of this round")]
    NotParticipant,
    /// The sender's update was already admitted.
    #[error("duplicate update")]
    Duplicate,
    /// The round stopped collecting (aggregating).
    #[error("round is closed for updates")]
    Closed,
    /// The content failed validation (shape, finiteness, norm, digest).
    #[error("invalid update: {0}")]
    Invalid(String),
}

#[derive(Clone, Debug)]
struct Member {
    presence: Presence,
    last_seen: Time,
}

#[derive(Clone, Debug)]
struct ActiveRound {
    plan: RoundPlan,
    deadline: Time,
    admitted: BTreeMap<NodeId, (u64, f32)>,
    rejected: u32,
    /// Set once aggregation was requested: no more updates.
    aggregating: bool,
}

/// The anchor's protocol state machine.
#[derive(Debug)]
pub struct Anchor {
    cfg: Config,
    id: NodeId,
    durable: AnchorDurable,
    lease_until: Time,
    members: BTreeMap<NodeId, Member>,
    active: Option<ActiveRound>,
    next_status: Time,
    outputs: VecDeque<Output>,
    /// Test-only fault injection: disables round/term fencing so simnet's checkers can be
    /// shown to fire.
    fencing_disabled: bool,
}

impl Anchor {
    /// An anchor restored from `durable` (or [`AnchorDurable::genesis`] for a new federation)
    /// at time `now`. The lease of a restored coordinator is assumed valid for a full lease,
    /// so a restart never shortens a lease someone may rely on.
    pub fn new(cfg: Config, id: NodeId, durable: AnchorDurable, now: Time) -> Self {
        let lease_until = if durable.coordinator.is_some() {
            now + cfg.lease_ms
        } else {
            now
        };
        Self {
            cfg,
            id,
            durable,
            lease_until,
            members: BTreeMap::new(),
            active: None,
            next_status: now,
            outputs: VecDeque::new(),
            fencing_disabled: false,
        }
    }

    /// Disables fencing of stale rounds, terms and duplicates. Only for demonstrating that
    /// simnet's invariant checkers catch a broken core; never set in the product.
    pub fn disable_fencing_for_tests(&mut self) {
        self.fencing_disabled = true;
    }

    /// This node's id.
    pub fn id(&self) -> &NodeId {
        &self.id
    }

    /// The durable state as it stands.
    pub fn durable(&self) -> &AnchorDurable {
        &self.durable
    }

    /// The open round, if any.
    pub fn active_round(&self) -> Option<&RoundPlan> {
        self.active.as_ref().map(|a| &a.plan)
    }

    /// Members whose presence is fresh at `now`.
    pub fn live_members(&self, now: Time) -> impl Iterator<Item = (&NodeId, &Presence)> {
        self.members
            .iter()
            .filter(move |(_, m)| now < m.last_seen + self.cfg.member_timeout_ms)
            .map(|(id, m)| (id, &m.presence))
    }

    /// The next output for the driver, in order.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When `handle_timeout` must be called next.
    pub fn poll_timeout(&self) -> Time {
        let mut t = self.next_status;
        if let Some(a) = &self.active
            && !a.aggregating
        {
            t = t.min(a.deadline);
        }
        t
    }

    fn status(&self, now: Time) -> AnchorStatus {
        AnchorStatus {
            term: self.durable.term,
            coordinator: self.durable.coordinator.clone(),
            lease_remaining_ms: self.lease_until.saturating_sub(now),
            version: self.durable.version,
            digest: self.durable.digest,
            active_round: self.active.as_ref().map(|a| a.plan.round),
            scaler: self.durable.scaler.clone(),
        }
    }

    /// Advances timers: status heartbeats and round deadlines.
    pub fn handle_timeout(&mut self, now: Time) {
        if now >= self.next_status {
            self.outputs
                .push_back(Output::Broadcast(Message::Status(self.status(now))));
            self.next_status = now + self.cfg.heartbeat_ms;
        }
        let due = self
            .active
            .as_ref()
            .is_some_and(|a| !a.aggregating && now >= a.deadline);
        if due {
            self.close_round(now);
        }
    }

    /// Handles a control message from `from` (already authenticated by the driver).
    pub fn handle_message(&mut self, now: Time, from: &NodeId, msg: Message) {
        match msg {
            Message::Presence(p) => {
                if self.members.len() < self.cfg.max_members || self.members.contains_key(from) {
                    self.members.insert(
                        from.clone(),
                        Member {
                            presence: p,
                            last_seen: now,
                        },
                    );
                }
            }
            Message::Claim { term } => self.handle_claim(now, from, term),
            Message::Propose(p) => self.handle_proposal(now, from, p),
            Message::EvalReport {
                version,
                samples,
                rmse,
            } => {
                if rmse.is_finite() && version <= self.durable.version {
                    self.outputs.push_back(Output::Event(Event::EvalReported {
                        from: from.clone(),
                        version,
                        samples,
                        rmse,
                    }));
                }
            }
            // Messages only the anchor sends, or that it has no use for.
            Message::Status(_)
            | Message::TermGranted { .. }
            | Message::ClaimRejected { .. }
            | Message::ProposalRejected { .. }
            | Message::RoundOpened(_)
            | Message::RoundCommitted(_)
            | Message::RoundAbandoned { .. } => {}
        }
    }

    fn is_eligible_member(&self, now: Time, id: &NodeId) -> bool {
        self.members.get(id).is_some_and(|m| {
            now < m.last_seen + self.cfg.member_timeout_ms
                && self.cfg.criterion.is_met(&m.presence.samples)
        })
    }

    fn handle_claim(&mut self, now: Time, from: &NodeId, term: u64) {
        let holder = self.durable.coordinator.as_ref() == Some(from);
        if term == self.durable.term && holder && now < self.lease_until {
            self.lease_until = now + self.cfg.lease_ms;
            self.outputs.push_back(Output::Send {
                to: from.clone(),
                message: Message::TermGranted {
                    term,
                    coordinator: from.clone(),
                    lease_ms: self.cfg.lease_ms,
                },
            });
            return;
        }
        let lease_free = self.durable.coordinator.is_none() || now >= self.lease_until;
        if term == self.durable.term + 1 && lease_free && self.is_eligible_member(now, from) {
            self.durable.term = term;
            self.durable.coordinator = Some(from.clone());
            self.lease_until = now + self.cfg.lease_ms;
            self.outputs
                .push_back(Output::Persist(self.durable.clone()));
            self.outputs.push_back(Output::Event(Event::TermGranted {
                term,
                coordinator: from.clone(),
            }));
            self.outputs
                .push_back(Output::Broadcast(Message::TermGranted {
                    term,
                    coordinator: from.clone(),
                    lease_ms: self.cfg.lease_ms,
                }));
            return;
        }
        self.outputs.push_back(Output::Send {
            to: from.clone(),
            message: Message::ClaimRejected {
                term: self.durable.term,
                coordinator: self.durable.coordinator.clone(),
                lease_remaining_ms: self.lease_until.saturating_sub(now),
            },
        });
    }

    fn proposal_problem(&self, now: Time, from: &NodeId, p: &Proposal) -> Option<String> {
        if p.term != self.durable.term || self.durable.coordinator.as_ref() != Some(from) {
            return Some(format!(
                "term {} is not the current term {} of this coordinator",
                p.term, self.durable.term
            ));
        }
        if now >= self.lease_until {
            return Some("coordinator lease expired".into());
        }
        if let Some(a) = &self.active {
            return Some(format!("round {} is still open", a.plan.round));
        }
        if p.base_version != self.durable.version {
            return Some(format!(
                "base version {} is not the current version {}",
                p.base_version, self.durable.version
            ));
        }
        if p.participants.len() < self.cfg.min_participants.max(1)
            || p.participants.len() > self.cfg.max_participants
        {
            return Some(format!("{} participants", p.participants.len()));
        }
        let mut seen = std::collections::BTreeSet::new();
        for id in &p.participants {
            if !seen.insert(id) {
                return Some(format!("{id} listed twice"));
            }
            if !self.is_eligible_member(now, id) {
                return Some(format!(
                    "{id} is not a live edge meeting the sample criterion"
                ));
            }
        }
        None
    }

    fn handle_proposal(&mut self, now: Time, from: &NodeId, p: Proposal) {
        if let Some(reason) = self.proposal_problem(now, from, &p) {
            self.outputs
                .push_back(Output::Event(Event::ProposalRejected {
                    reason: reason.clone(),
                }));
            self.outputs.push_back(Output::Send {
                to: from.clone(),
                message: Message::ProposalRejected {
                    term: p.term,
                    reason,
                },
            });
            return;
        }
        let round = self.durable.next_round;
        self.durable.next_round += 1;
        let plan = RoundPlan {
            round,
            term: p.term,
            coordinator: from.clone(),
            participants: p.participants,
            base_version: self.durable.version,
            base_digest: self.durable.digest,
            hyper: p.hyper,
            deadline_ms: self.cfg.round_deadline_ms,
            scaler: self.durable.scaler.clone().or(p.scaler),
        };
        self.active = Some(ActiveRound {
            plan: plan.clone(),
            deadline: now + self.cfg.round_deadline_ms,
            admitted: BTreeMap::new(),
            rejected: 0,
            aggregating: false,
        });
        self.outputs
            .push_back(Output::Persist(self.durable.clone()));
        self.outputs
            .push_back(Output::Event(Event::RoundOpened(plan.clone())));
        self.outputs
            .push_back(Output::Broadcast(Message::RoundOpened(plan)));
    }

    /// Checks whether an update from `from` for (`round`, `term`) would be admitted, without
    /// changing any state. Drivers call it before buffering a payload.
    pub fn check_update(&self, from: &NodeId, round: u64, term: u64) -> Result<(), Reject> {
        let a = self.active.as_ref().ok_or(Reject::NoActiveRound)?;
        if self.fencing_disabled {
            return Ok(());
        }
        if round != a.plan.round {
            return Err(Reject::WrongRound {
                got: round,
                open: a.plan.round,
            });
        }
        if term != a.plan.term {
            return Err(Reject::WrongTerm {
                got: term,
                expected: a.plan.term,
            });
        }
        if a.aggregating {
            return Err(Reject::Closed);
        }
        if !a.plan.participants.contains(from) {
            return Err(Reject::NotParticipant);
        }
        if a.admitted.contains_key(from) {
            return Err(Reject::Duplicate);
        }
        Ok(())
    }

    /// Admits a content-validated update. On `Ok` the driver folds it into the aggregate; on
    /// `Err` it must drop it. When every participant has reported this emits `Aggregate`.
    pub fn handle_update(
        &mut self,
        now: Time,
        from: &NodeId,
        round: u64,
        term: u64,
        samples: u64,
        train_loss: f32,
    ) -> Result<(), Reject> {
        if let Err(reason) = self.check_update(from, round, term) {
            self.reject(round, from, reason.clone());
            return Err(reason);
        }
        let Some(a) = self.active.as_mut() else {
            return Err(Reject::NoActiveRound);
        };
        a.admitted.insert(from.clone(), (samples, train_loss));
        self.outputs.push_back(Output::Event(Event::UpdateAccepted {
            round,
            from: from.clone(),
            samples,
        }));
        if a.admitted.len() >= a.plan.participants.len() {
            self.close_round(now);
        }
        Ok(())
    }

    /// Records an update that failed content validation (shape, finiteness, norm, digest).
    pub fn handle_invalid_update(&mut self, from: &NodeId, round: u64, reason: String) {
        self.reject(round, from, Reject::Invalid(reason));
    }

    fn reject(&mut self, round: u64, from: &NodeId, reason: Reject) {
        if let Some(a) = self.active.as_mut() {
            a.rejected += 1;
        }
        self.outputs.push_back(Output::Event(Event::UpdateRejected {
            round,
            from: from.clone(),
            reason,
        }));
    }

    /// Number of updates refused in the open round.
    pub fn rejected_in_round(&self) -> u32 {
        self.active.as_ref().map_or(0, |a| a.rejected)
    }

    fn close_round(&mut self, _now: Time) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let n = a.plan.participants.len();
        if a.admitted.len() >= quorum(n, self.cfg.min_fit_fraction) {
            a.aggregating = true;
            self.outputs.push_back(Output::Aggregate {
                round: a.plan.round,
                term: a.plan.term,
                version: self.durable.version + 1,
                included: a.admitted.keys().cloned().collect(),
            });
        } else {
            let reason = format!(
                "{} of {} participants reported by the deadline (quorum {})",
                a.admitted.len(),
                n,
                quorum(n, self.cfg.min_fit_fraction)
            );
            self.abandon(reason);
        }
    }

    fn abandon(&mut self, reason: String) {
        let Some(a) = self.active.take() else {
            return;
        };
        let (round, term) = (a.plan.round, a.plan.term);
        self.outputs.push_back(Output::DiscardRound { round });
        self.outputs.push_back(Output::Event(Event::RoundAbandoned {
            round,
            reason: reason.clone(),
        }));
        self.outputs
            .push_back(Output::Broadcast(Message::RoundAbandoned {
                round,
                term,
                reason,
            }));
    }

    /// The driver aggregated `round` into a model with `digest`. Returns the durable state
    /// that the driver must write atomically with the model (before sending queued output);
    /// then the commit is announced.
    pub fn handle_committed(
        &mut self,
        _now: Time,
        round: u64,
        digest: Digest,
    ) -> Result<AnchorDurable, Reject> {
        let a = match self.active.take() {
            Some(a) if a.plan.round == round && a.aggregating => a,
            other => {
                self.active = other;
                return Err(Reject::Closed);
            }
        };
        let samples: u64 = a.admitted.values().map(|(s, _)| s).sum();
        let weighted: f64 = a
            .admitted
            .values()
            .map(|(s, l)| *s as f64 * f64::from(*l))
            .sum();
        let train_loss = if samples > 0 {
            (weighted / samples as f64) as f32
        } else {
            f32::NAN
        };
        self.durable.version += 1;
        self.durable.digest = digest;
        if self.durable.scaler.is_none() {
            self.durable.scaler = a.plan.scaler.clone();
        }
        let commit = Commit {
            round,
            term: a.plan.term,
            version: self.durable.version,
            digest,
            included: a.admitted.keys().cloned().collect(),
            samples,
            train_loss,
        };
        self.outputs
            .push_back(Output::Event(Event::RoundCommitted(commit.clone())));
        self.outputs
            .push_back(Output::Broadcast(Message::RoundCommitted(commit)));
        Ok(self.durable.clone())
    }

    /// The driver could not aggregate or persist `round`: the round is abandoned.
    pub fn handle_aggregation_failed(&mut self, round: u64, reason: String) {
        if self.active.as_ref().is_some_and(|a| a.plan.round == round) {
            self.abandon(format!("aggregation failed: {reason}"));
        }
    }
}
