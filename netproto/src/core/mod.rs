//! The sans-IO protocol core: membership, coordinator election and the round lifecycle as
//! plain state machines.
//!
//! Nothing here performs I/O, reads a clock or draws OS randomness. A driver (the `fedd`
//! daemon, or simnet) feeds inputs with `handle_*` methods, passing the current [`Time`], and
//! drains [`Output`]s with `poll_output` until it returns `None`; `poll_timeout` says when
//! `handle_timeout` must be called next. Randomness comes from a seed given at construction.
//!
//! ## Election: anchor-fenced leases
//! The anchor is the single writer of the global model, so it is also the fencing authority.
//! Eligible edges campaign for a coordinator lease: when the lease of the current term has
//! expired (as seen in the anchor's status), each eligible edge waits a delay given by its
//! rank (a hash of the next term and its id, so the order rotates between terms) plus jitter,
//! then sends `Claim { term: current + 1 }` to the anchor. The anchor grants the first claim
//! for exactly `current + 1` whose lease has expired, persists the new term *before* announcing
//! it, and rejects everything else. The holder renews with `Claim { term: current }`. Terms
//! therefore increase monotonically even across anchor restarts, and at most one lease is
//! valid at any time.
//!
//! ## Rounds
//! The coordinator selects live edges that meet the [`Criterion`](crate::wire::Criterion) and
//! proposes a round. The anchor checks the proposal (current term, holder of the lease, no
//! round open, base version current, participants known and eligible), assigns the next round
//! number, persists it and announces the [`RoundPlan`](crate::wire::RoundPlan). Participants
//! train and push updates; the anchor admits an update only for the open round and term, only
//! from a participant and only once. When all participants reported, or at the deadline with
//! at least `min_fit_fraction` of them, the anchor aggregates and commits; otherwise it
//! abandons the round. At most one round is open at any time.

mod anchor;
mod edge;
mod rng;

pub use anchor::{Anchor, AnchorDurable, Reject};
pub use edge::Edge;
pub use rng::SplitMix64;

use crate::wire::{Commit, Criterion, Hyper, Message, NodeId, RoundPlan};
use serde::{Deserialize, Serialize};

/// Milliseconds on the driver's monotonic clock (virtual time in simnet).
pub type Time = u64;

/// Protocol parameters shared by every node of a federation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Federation id; messages of other federations are ignored.
    pub federation: String,
    /// The sample criterion for taking part in rounds.
    pub criterion: Criterion,
    /// How often edges gossip presence and the anchor its status.
    pub heartbeat_ms: u64,
    /// A member not heard from for this long is considered gone.
    pub member_timeout_ms: u64,
    /// Length of a coordinator lease.
    pub lease_ms: u64,
    /// Election back-off per rank.
    pub election_stagger_ms: u64,
    /// How long the anchor collects updates after opening a round.
    pub round_deadline_ms: u64,
    /// Pause between the end of a round and the next proposal.
    pub round_gap_ms: u64,
    /// How long a coordinator waits for the anchor to answer a proposal.
    pub proposal_timeout_ms: u64,
    /// Fewest participants a round may have.
    pub min_participants: usize,
    /// Most participants a round may have.
    pub max_participants: usize,
    /// Fraction of participants that must report by the deadline to aggregate.
    pub min_fit_fraction: f64,
    /// Local training hyper-parameters.
    pub hyper: Hyper,
    /// Stop proposing rounds once the global version reaches this (None = run forever).
    pub max_version: Option<u64>,
    /// Most members a node tracks (bounds memory against floods of peers).
    pub max_members: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            federation: "gossipfed".into(),
            criterion: Criterion::default(),
            heartbeat_ms: 1_000,
            member_timeout_ms: 5_000,
            lease_ms: 4_000,
            election_stagger_ms: 300,
            round_deadline_ms: 60_000,
            round_gap_ms: 200,
            proposal_timeout_ms: 3_000,
            min_participants: 1,
            max_participants: 64,
            min_fit_fraction: 0.5,
            hyper: Hyper::default(),
            max_version: None,
            max_members: 10_000,
        }
    }
}

/// What a state machine asks its driver to do.
#[derive(Clone, Debug, PartialEq)]
#[must_use]
pub enum Output {
    /// Gossip a control message to every node of the federation.
    Broadcast(Message),
    /// Send a control message to one node.
    Send {
        /// Recipient.
        to: NodeId,
        /// Message.
        message: Message,
    },
    /// Edge: fetch the base model of `plan` (by digest) and train on local data; report with
    /// [`Edge::handle_training_done`].
    Train(RoundPlan),
    /// Edge: stop the training of `round` if it is still running; its result is not wanted.
    CancelTraining {
        /// Round whose training to stop.
        round: u64,
    },
    /// Edge: push the trained update of `round` to the anchor.
    PushUpdate {
        /// Round.
        round: u64,
        /// Its term.
        term: u64,
        /// The anchor.
        to: NodeId,
    },
    /// Edge: a new global version exists; fetch it (by digest) when convenient, e.g. to
    /// evaluate it on local data and send `Message::EvalReport`.
    NewGlobal(Commit),
    /// Anchor: write this state durably before handling any later output.
    Persist(AnchorDurable),
    /// Anchor: aggregate the admitted updates of `round` into global version `version`,
    /// persist it, then call [`Anchor::handle_committed`] (or
    /// [`Anchor::handle_aggregation_failed`]).
    Aggregate {
        /// Round.
        round: u64,
        /// Its term.
        term: u64,
        /// Version number the aggregate becomes.
        version: u64,
        /// Participants whose updates were admitted.
        included: Vec<NodeId>,
    },
    /// Anchor: drop the partial aggregate of `round`.
    DiscardRound {
        /// Round.
        round: u64,
    },
    /// Something worth logging, showing in status, or checking in simnet.
    Event(Event),
}

/// Observable protocol events.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// This edge's data meets the criterion (again).
    Eligible,
    /// This edge's data does not meet the criterion; it will not be selected.
    NotEligible {
        /// Why, in words.
        reason: String,
    },
    /// This edge campaigns for the coordinator lease of `term`.
    Campaigning {
        /// Term.
        term: u64,
    },
    /// This edge holds the coordinator lease of `term`.
    BecameCoordinator {
        /// Term.
        term: u64,
    },
    /// This edge lost (or gave up) the lease of `term`.
    SteppedDown {
        /// Term.
        term: u64,
    },
    /// The anchor granted the lease of `term` to `coordinator`.
    TermGranted {
        /// Term.
        term: u64,
        /// Holder.
        coordinator: NodeId,
    },
    /// A round opened (at the anchor) or was learnt of (at an edge).
    RoundOpened(RoundPlan),
    /// This edge was not selected for an open round.
    NotSelected {
        /// Round.
        round: u64,
        /// Why, in words.
        reason: String,
    },
    /// The coordinator waits: too few eligible edges.
    WaitingForEdges {
        /// Eligible live edges.
        eligible: usize,
        /// Needed.
        needed: usize,
    },
    /// The anchor admitted an update into the aggregate.
    UpdateAccepted {
        /// Round.
        round: u64,
        /// Sender.
        from: NodeId,
        /// Sample weight.
        samples: u64,
    },
    /// The anchor refused an update.
    UpdateRejected {
        /// Round the update claimed.
        round: u64,
        /// Sender.
        from: NodeId,
        /// Why.
        reason: Reject,
    },
    /// A round committed a new global version.
    RoundCommitted(Commit),
    /// A round ended without a new version.
    RoundAbandoned {
        /// Round.
        round: u64,
        /// Why.
        reason: String,
    },
    /// An edge reported an evaluation of a global version.
    EvalReported {
        /// Reporter.
        from: NodeId,
        /// Version.
        version: u64,
        /// Windows evaluated.
        samples: u64,
        /// RMSE.
        rmse: f64,
    },
    /// A proposal was refused by the anchor.
    ProposalRejected {
        /// Why.
        reason: String,
    },
}

/// Ceil of `fraction * n`, at least 1: the quorum of a round with `n` participants.
pub fn quorum(n: usize, fraction: f64) -> usize {
    let q = (n as f64 * fraction.clamp(0.0, 1.0)).ceil() as usize;
    q.clamp(1, n.max(1))
}

#[cfg(test)]
mod tests;
