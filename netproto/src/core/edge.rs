//! The edge's state machine: presence, membership, campaigning for the coordinator lease,
//! coordinating rounds while holding it, and taking part in rounds.

use super::rng::{SplitMix64, seed_for};
use super::{Config, Event, Output, Time};
use crate::wire::{
    AnchorStatus, Commit, Digest, FeatureRanges, Message, NodeId, Presence, Proposal, RoundPlan,
    SampleCounts,
};
use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasherDefault;

/// The member table is hit by every presence message (N² per heartbeat across a fleet), so
/// it is a hash map, not a B-tree whose string comparisons chase a pointer per key. The
/// hasher is fixed (not randomly keyed) so that iteration order, and thus every run of the
/// state machine, depends only on its inputs; the table is bounded by `max_members` and only
/// admitted peers reach it. Every consumer that depends on order sorts first.
type MemberMap = HashMap<NodeId, Member, BuildHasherDefault<DefaultHasher>>;

#[derive(Clone, Debug)]
struct Member {
    presence: Presence,
    last_seen: Time,
}

#[derive(Clone, Debug)]
struct Coordinating {
    term: u64,
    lease_until: Time,
    next_renew: Time,
    /// A proposal is out; no other until the anchor answers or this passes.
    awaiting_until: Option<Time>,
    /// Do not propose before this.
    gap_until: Time,
}

#[derive(Clone, Debug)]
enum Phase {
    Training,
    Pushed,
}

#[derive(Clone, Debug)]
struct Participation {
    round: u64,
    term: u64,
    deadline: Time,
    phase: Phase,
}

/// The edge's protocol state machine.
#[derive(Debug)]
pub struct Edge {
    cfg: Config,
    id: NodeId,
    anchor: NodeId,
    rng: SplitMix64,
    samples: SampleCounts,
    ranges: Option<FeatureRanges>,
    eligible_reported: Option<bool>,
    members: MemberMap,
    // The anchor's view, as last heard.
    term: u64,
    coordinator: Option<NodeId>,
    lease_until: Time,
    version: u64,
    digest: Option<Digest>,
    active_round: Option<u64>,
    scaler: Option<FeatureRanges>,
    anchor_heard: bool,
    // Campaign.
    claim_at: Option<Time>,
    claim_retry_at: Time,
    coord: Option<Coordinating>,
    part: Option<Participation>,
    next_presence: Time,
    outputs: VecDeque<Output>,
}

impl Edge {
    /// A new edge `id` of the federation anchored by `anchor`, holding `samples`, at `now`.
    /// `seed` drives its jitter and sampling.
    pub fn new(
        cfg: Config,
        id: NodeId,
        anchor: NodeId,
        samples: SampleCounts,
        ranges: Option<FeatureRanges>,
        seed: u64,
        now: Time,
    ) -> Self {
        let rng = SplitMix64::new(seed_for(seed, id.as_str()));
        let mut edge = Self {
            cfg,
            id,
            anchor,
            rng,
            samples,
            ranges,
            eligible_reported: None,
            members: MemberMap::default(),
            term: 0,
            coordinator: None,
            lease_until: now,
            version: 0,
            digest: None,
            active_round: None,
            scaler: None,
            anchor_heard: false,
            claim_at: None,
            claim_retry_at: now,
            coord: None,
            part: None,
            next_presence: now,
            outputs: VecDeque::new(),
        };
        edge.report_eligibility();
        edge
    }

    /// This node's id.
    pub fn id(&self) -> &NodeId {
        &self.id
    }

    /// Whether this edge meets the sample criterion.
    pub fn is_eligible(&self) -> bool {
        self.cfg.criterion.is_met(&self.samples)
    }

    /// This edge's sample counts.
    pub fn samples(&self) -> SampleCounts {
        self.samples
    }

    /// The term and coordinator this edge believes in.
    pub fn term(&self) -> (u64, Option<&NodeId>) {
        (self.term, self.coordinator.as_ref())
    }

    /// The term whose lease this edge holds, if it coordinates.
    pub fn coordinating(&self) -> Option<u64> {
        self.coord.as_ref().map(|c| c.term)
    }

    /// The latest global version this edge knows of, and its digest.
    pub fn global(&self) -> (u64, Option<Digest>) {
        (self.version, self.digest)
    }

    /// The round this edge trains for, if any.
    pub fn participating(&self) -> Option<u64> {
        self.part.as_ref().map(|p| p.round)
    }

    /// Number of members heard from recently.
    pub fn live_members(&self, now: Time) -> usize {
        self.members
            .values()
            .filter(|m| now < m.last_seen + self.cfg.member_timeout_ms)
            .count()
    }

    /// Updates the local sample counts (after ingesting data).
    pub fn set_samples(&mut self, samples: SampleCounts, ranges: Option<FeatureRanges>) {
        self.samples = samples;
        self.ranges = ranges;
        self.report_eligibility();
    }

    fn report_eligibility(&mut self) {
        let eligible = self.is_eligible();
        if self.eligible_reported == Some(eligible) {
            return;
        }
        self.eligible_reported = Some(eligible);
        let ev = if eligible {
            Event::Eligible
        } else {
            let c = self.cfg.criterion;
            Event::NotEligible {
                reason: format!(
                    "{} run-to-failure recordings and {} windows; the sample criterion needs {} and {}",
                    self.samples.failures, self.samples.windows, c.min_failures, c.min_windows
                ),
            }
        };
        self.outputs.push_back(Output::Event(ev));
    }

    /// The next output for the driver, in order.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When `handle_timeout` must be called next.
    pub fn poll_timeout(&self) -> Time {
        let mut t = self.next_presence;
        if let Some(c) = self.claim_at {
            t = t.min(c);
        }
        if let Some(c) = &self.coord {
            t = t.min(c.next_renew).min(c.lease_until);
            match c.awaiting_until {
                Some(a) => t = t.min(a),
                // The gap only matters while a proposal could be made; during a round (or
                // once done) it lies in the past and would make the driver spin. The end of
                // the round arrives as a message, after which the driver asks again.
                None if self.active_round.is_none() && !self.done() => t = t.min(c.gap_until),
                None => {}
            }
        }
        if let Some(p) = &self.part {
            t = t.min(p.deadline);
        }
        // Campaigning starts only once the anchor was heard (see `tick_campaign`); before
        // that the retry time lies in the past and would make the driver spin.
        if self.coord.is_none()
            && self.claim_at.is_none()
            && self.anchor_heard
            && self.is_eligible()
        {
            t = t.min(self.claim_retry_at.max(self.lease_until));
        }
        t
    }

    /// Whether the federation reached `max_version` (no more proposals).
    fn done(&self) -> bool {
        self.cfg.max_version.is_some_and(|m| self.version >= m)
    }

    fn presence(&self) -> Presence {
        Presence {
            samples: self.samples,
            model_version: self.version,
            term: self.term,
            ranges: self.ranges.clone(),
        }
    }

    fn eligible_live_members(&self, now: Time) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = self
            .members
            .iter()
            .filter(|(_, m)| {
                now < m.last_seen + self.cfg.member_timeout_ms
                    && self.cfg.criterion.is_met(&m.presence.samples)
            })
            .map(|(id, _)| id.clone())
            .collect();
        // Sorted, so the result does not depend on the hash map's order.
        ids.sort();
        ids
    }

    /// Advances timers: presence gossip, campaigning, lease renewal, proposals, deadlines.
    pub fn handle_timeout(&mut self, now: Time) {
        if now >= self.next_presence {
            self.outputs
                .push_back(Output::Broadcast(Message::Presence(self.presence())));
            self.next_presence = now + self.cfg.heartbeat_ms;
        }
        if let Some(p) = &self.part
            && now >= p.deadline
        {
            let round = p.round;
            self.part = None;
            self.outputs.push_back(Output::CancelTraining { round });
        }
        self.tick_coordinator(now);
        self.tick_campaign(now);
    }

    fn tick_campaign(&mut self, now: Time) {
        let lease_valid = self.coordinator.is_some() && now < self.lease_until;
        if self.coord.is_some() || lease_valid || !self.is_eligible() || !self.anchor_heard {
            self.claim_at = None;
            return;
        }
        if self.claim_at.is_none() && now >= self.claim_retry_at {
            // Rank among live eligible edges by a per-term hash: staggered claims make
            // collisions rare, and the order rotates from term to term.
            let next = self.term + 1;
            let key = |id: &NodeId| {
                let mut h = blake3::Hasher::new();
                h.update(&next.to_le_bytes());
                h.update(id.as_str().as_bytes());
                *h.finalize().as_bytes()
            };
            let mine = key(&self.id);
            let rank = self
                .eligible_live_members(now)
                .iter()
                .filter(|id| **id != self.id && key(id) < mine)
                .count() as u64;
            let jitter = self.rng.below(self.cfg.election_stagger_ms / 2 + 1);
            self.claim_at = Some(now + rank * self.cfg.election_stagger_ms + jitter);
        }
        // Checked right after scheduling too: a claim due now (rank 0, no jitter) is sent
        // now rather than left as a timeout in the past.
        if let Some(at) = self.claim_at
            && now >= at
        {
            self.claim_at = None;
            self.claim_retry_at = now + self.cfg.lease_ms;
            let term = self.term + 1;
            self.outputs
                .push_back(Output::Event(Event::Campaigning { term }));
            self.outputs.push_back(Output::Send {
                to: self.anchor.clone(),
                message: Message::Claim { term },
            });
        }
    }

    fn tick_coordinator(&mut self, now: Time) {
        let Some(c) = self.coord.as_mut() else {
            return;
        };
        if now >= c.lease_until {
            let term = c.term;
            self.coord = None;
            self.outputs
                .push_back(Output::Event(Event::SteppedDown { term }));
            return;
        }
        if now >= c.next_renew {
            c.next_renew = now + self.cfg.lease_ms / 3;
            let term = c.term;
            self.outputs.push_back(Output::Send {
                to: self.anchor.clone(),
                message: Message::Claim { term },
            });
        }
        if c.awaiting_until.is_some_and(|t| now >= t) {
            c.awaiting_until = None;
        }
        let busy = c.awaiting_until.is_some() || now < c.gap_until;
        let done = self.done();
        if busy || self.active_round.is_some() || done {
            return;
        }
        let mut eligible = self.eligible_live_members(now);
        if self.is_eligible() && !eligible.contains(&self.id) {
            eligible.push(self.id.clone());
        }
        let needed = self.cfg.min_participants.max(1);
        if eligible.len() < needed {
            if let Some(c) = self.coord.as_mut() {
                c.gap_until = now + self.cfg.heartbeat_ms;
            }
            self.outputs
                .push_back(Output::Event(Event::WaitingForEdges {
                    eligible: eligible.len(),
                    needed,
                }));
            return;
        }
        eligible.sort();
        self.rng.shuffle(&mut eligible);
        eligible.truncate(self.cfg.max_participants);
        eligible.sort();
        let scaler = if self.scaler.is_some() {
            None
        } else {
            self.merged_ranges(&eligible)
        };
        let Some(c) = self.coord.as_mut() else {
            return;
        };
        c.awaiting_until = Some(now + self.cfg.proposal_timeout_ms);
        let proposal = Proposal {
            term: c.term,
            participants: eligible,
            base_version: self.version,
            hyper: self.cfg.hyper,
            scaler,
        };
        self.outputs.push_back(Output::Send {
            to: self.anchor.clone(),
            message: Message::Propose(proposal),
        });
    }

    fn merged_ranges(&self, ids: &[NodeId]) -> Option<FeatureRanges> {
        let mut acc: Option<FeatureRanges> = None;
        for id in ids {
            let r = if *id == self.id {
                self.ranges.as_ref()
            } else {
                self.members
                    .get(id)
                    .and_then(|m| m.presence.ranges.as_ref())
            };
            if let Some(r) = r {
                acc = match acc {
                    None => Some(r.clone()),
                    Some(a) => a.merge(r).or(Some(a)),
                };
            }
        }
        acc
    }

    fn learn_status(&mut self, now: Time, s: AnchorStatus) {
        self.anchor_heard = true;
        if s.term >= self.term {
            self.term = s.term;
            self.coordinator = s.coordinator;
            self.lease_until = now + s.lease_remaining_ms;
        }
        if s.version >= self.version {
            self.version = s.version;
            self.digest = Some(s.digest);
        }
        if self.scaler.is_none() {
            self.scaler = s.scaler;
        }
        self.active_round = s.active_round;
        if let Some(c) = self.coord.as_mut()
            && s.term > c.term
        {
            let term = c.term;
            self.coord = None;
            self.outputs
                .push_back(Output::Event(Event::SteppedDown { term }));
        }
        // A participation in a round the anchor no longer runs is over.
        if let Some(p) = &self.part
            && s.active_round != Some(p.round)
        {
            let round = p.round;
            self.part = None;
            self.outputs.push_back(Output::CancelTraining { round });
        }
    }

    /// Handles a control message from `from` (already authenticated by the driver).
    pub fn handle_message(&mut self, now: Time, from: &NodeId, msg: Message) {
        let from_anchor = *from == self.anchor;
        match msg {
            Message::Presence(p) if *from != self.id => {
                if let Some(m) = self.members.get_mut(from) {
                    m.presence = p;
                    m.last_seen = now;
                } else if self.members.len() < self.cfg.max_members {
                    self.members.insert(
                        from.clone(),
                        Member {
                            presence: p,
                            last_seen: now,
                        },
                    );
                }
            }
            Message::Status(s) if from_anchor => self.learn_status(now, s),
            Message::TermGranted {
                term,
                coordinator,
                lease_ms,
            } if from_anchor => self.learn_grant(now, term, coordinator, lease_ms),
            Message::ClaimRejected {
                term,
                coordinator,
                lease_remaining_ms,
            } if from_anchor && term >= self.term => {
                self.term = term;
                self.coordinator = coordinator;
                self.lease_until = now + lease_remaining_ms;
            }
            Message::ProposalRejected { term, reason } if from_anchor => {
                if let Some(c) = self.coord.as_mut()
                    && c.term == term
                {
                    c.awaiting_until = None;
                    c.gap_until = now + self.cfg.heartbeat_ms;
                    self.outputs
                        .push_back(Output::Event(Event::ProposalRejected { reason }));
                }
            }
            Message::RoundOpened(plan) if from_anchor => self.learn_round(now, plan),
            Message::RoundCommitted(commit) if from_anchor => self.learn_commit(now, commit),
            Message::RoundAbandoned { round, reason, .. } if from_anchor => {
                if self.active_round == Some(round) {
                    self.outputs
                        .push_back(Output::Event(Event::RoundAbandoned { round, reason }));
                }
                self.round_over(now, round);
            }
            _ => {}
        }
    }

    fn learn_grant(&mut self, now: Time, term: u64, coordinator: NodeId, lease_ms: u64) {
        if term < self.term {
            return;
        }
        self.term = term;
        self.lease_until = now + lease_ms;
        self.claim_at = None;
        if coordinator == self.id {
            match self.coord.as_mut() {
                Some(c) if c.term == term => c.lease_until = now + lease_ms,
                _ => {
                    self.coord = Some(Coordinating {
                        term,
                        lease_until: now + lease_ms,
                        next_renew: now + lease_ms / 3,
                        awaiting_until: None,
                        gap_until: now,
                    });
                    self.outputs
                        .push_back(Output::Event(Event::BecameCoordinator { term }));
                }
            }
        } else if let Some(c) = self.coord.take() {
            self.outputs
                .push_back(Output::Event(Event::SteppedDown { term: c.term }));
        }
        self.coordinator = Some(coordinator);
    }

    fn learn_round(&mut self, now: Time, plan: RoundPlan) {
        self.active_round = Some(plan.round);
        if plan.term > self.term {
            self.term = plan.term;
        }
        if let Some(c) = self.coord.as_mut()
            && c.term == plan.term
        {
            c.awaiting_until = None;
        }
        if self.scaler.is_none() {
            self.scaler.clone_from(&plan.scaler);
        }
        self.outputs
            .push_back(Output::Event(Event::RoundOpened(plan.clone())));
        if plan.participants.contains(&self.id) {
            if let Some(old) = self.part.take() {
                self.outputs
                    .push_back(Output::CancelTraining { round: old.round });
            }
            self.part = Some(Participation {
                round: plan.round,
                term: plan.term,
                deadline: now + plan.deadline_ms,
                phase: Phase::Training,
            });
            self.outputs.push_back(Output::Train(plan));
        } else {
            let reason = if self.is_eligible() {
                "eligible, but not drawn for this round".to_owned()
            } else {
                let c = self.cfg.criterion;
                format!(
                    "sample criterion not met ({} failures / {} windows; needs {} / {})",
                    self.samples.failures, self.samples.windows, c.min_failures, c.min_windows
                )
            };
            self.outputs.push_back(Output::Event(Event::NotSelected {
                round: plan.round,
                reason,
            }));
        }
    }

    fn learn_commit(&mut self, now: Time, commit: Commit) {
        if commit.version > self.version {
            self.version = commit.version;
            self.digest = Some(commit.digest);
            self.outputs.push_back(Output::NewGlobal(commit.clone()));
        }
        self.round_over(now, commit.round);
    }

    fn round_over(&mut self, now: Time, round: u64) {
        if self.active_round == Some(round) {
            self.active_round = None;
        }
        if let Some(c) = self.coord.as_mut() {
            c.gap_until = now + self.cfg.round_gap_ms;
        }
        if let Some(p) = &self.part
            && p.round == round
        {
            if matches!(p.phase, Phase::Training) {
                self.outputs.push_back(Output::CancelTraining { round });
            }
            self.part = None;
        }
    }

    /// Local training for `round` finished (`ok`) or failed. On success the edge asks its
    /// driver to push the update, unless the round is already over.
    pub fn handle_training_done(&mut self, _now: Time, round: u64, ok: bool) {
        let Some(p) = self.part.as_mut() else {
            return;
        };
        if p.round != round || !matches!(p.phase, Phase::Training) {
            return;
        }
        if ok {
            p.phase = Phase::Pushed;
            self.outputs.push_back(Output::PushUpdate {
                round,
                term: p.term,
                to: self.anchor.clone(),
            });
        } else {
            self.part = None;
        }
    }
}
