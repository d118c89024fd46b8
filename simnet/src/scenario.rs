//! Scenarios: what to simulate (peers, rounds, criterion, protocol knobs, network model,
//! fault profile, trainer), read from TOML. Every field has a default, so a scenario file
//! only names what it changes; `deny_unknown_fields` catches typos.

use netproto::core::Config;
use netproto::wire::{Criterion, Hyper};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Why a scenario could not be loaded or is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("cannot read scenario {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a valid scenario.
    #[error("invalid scenario {path}: {source}")]
    Parse {
        /// The file.
        path: String,
        /// The cause.
        source: Box<toml::de::Error>,
    },
    /// A value is out of range.
    #[error("invalid scenario: {0}")]
    Invalid(String),
}

/// Which local trainer the simulated edges run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainerKind {
    /// Deterministic pseudo-updates toward per-edge targets (fast; any number of peers).
    #[default]
    Fake,
    /// The real burn trainer on synthetic run-to-failure data (slow; small N only).
    Burn,
}

impl std::str::FromStr for TrainerKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fake" => Ok(Self::Fake),
            "burn" => Ok(Self::Burn),
            other => Err(format!("unknown trainer {other:?} (fake or burn)")),
        }
    }
}

/// A complete simulation scenario.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scenario {
    /// Name shown in reports.
    pub name: String,
    /// Nodes in total: one anchor and `peers - 1` edges (at least 3).
    pub peers: usize,
    /// Committed rounds (global versions) after which the run stops.
    pub rounds: u64,
    /// Seed recorded with a regression scenario (the command line's `--seed` wins).
    pub seed: Option<u64>,
    /// Local trainer.
    pub trainer: TrainerKind,
    /// The sample criterion.
    pub criterion: Criterion,
    /// Fraction of edges whose data does not meet the criterion.
    pub ineligible_fraction: f64,
    /// Protocol timing and round sizes.
    pub protocol: ProtocolSpec,
    /// Network model.
    pub network: NetworkSpec,
    /// Fault profile.
    pub faults: FaultSpec,
    /// Training and aggregation model.
    pub training: TrainingSpec,
    /// Liveness bounds.
    pub liveness: LivenessSpec,
}

impl Default for Scenario {
    fn default() -> Self {
        Self {
            name: "default".into(),
            peers: 24,
            rounds: 15,
            seed: None,
            trainer: TrainerKind::Fake,
            criterion: Criterion::default(),
            ineligible_fraction: 0.2,
            protocol: ProtocolSpec::default(),
            network: NetworkSpec::default(),
            faults: FaultSpec::default(),
            training: TrainingSpec::default(),
            liveness: LivenessSpec::default(),
        }
    }
}

/// Protocol knobs ([`netproto::core::Config`]); `None` timing fields scale with the number
/// of peers (see [`Scenario::protocol_config`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProtocolSpec {
    /// Presence/status gossip period; `None`: 1 s up to 50 peers, then 20 ms per peer, at
    /// most 20 s (presence gossip costs N² deliveries per period).
    pub heartbeat_ms: Option<u64>,
    /// Member expiry; `None`: five heartbeats.
    pub member_timeout_ms: Option<u64>,
    /// Coordinator lease.
    pub lease_ms: u64,
    /// Election back-off per rank.
    pub election_stagger_ms: u64,
    /// Round deadline at the anchor.
    pub round_deadline_ms: u64,
    /// Pause between rounds.
    pub round_gap_ms: u64,
    /// Proposal answer timeout.
    pub proposal_timeout_ms: u64,
    /// Fewest participants per round.
    pub min_participants: usize,
    /// Most participants per round.
    pub max_participants: usize,
    /// Quorum fraction at the deadline.
    pub min_fit_fraction: f64,
    /// Local epochs per round (the burn trainer; the fake trainer takes one step per epoch).
    pub local_epochs: u32,
    /// Learning rate (burn) or step fraction toward the local target (fake); `None`: 2e-3
    /// for burn, 0.5 for fake.
    pub lr: Option<f32>,
}

impl Default for ProtocolSpec {
    fn default() -> Self {
        Self {
            heartbeat_ms: None,
            member_timeout_ms: None,
            lease_ms: 4_000,
            election_stagger_ms: 300,
            round_deadline_ms: 4_000,
            round_gap_ms: 200,
            proposal_timeout_ms: 3_000,
            min_participants: 2,
            max_participants: 16,
            min_fit_fraction: 0.5,
            local_epochs: 1,
            lr: None,
        }
    }
}

/// The simulated network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkSpec {
    /// Smallest one-way latency of a node's access link (a link's base latency is the sum
    /// of its two ends).
    pub latency_min_ms: u64,
    /// Largest one-way latency of a node's access link.
    pub latency_max_ms: u64,
    /// Extra uniform jitter per message.
    pub jitter_ms: u64,
    /// Probability that a control message is lost.
    pub loss: f64,
    /// Probability that a message (control or update push) is delivered twice.
    pub duplicate: f64,
    /// Probability that a control message is held back (reordered behind later ones).
    pub reorder: f64,
    /// Most extra delay of a held-back message.
    pub reorder_delay_ms: u64,
    /// Slowest access bandwidth of a node, bytes per second (model transfers).
    pub bandwidth_min: u64,
    /// Fastest access bandwidth of a node, bytes per second.
    pub bandwidth_max: u64,
}

impl Default for NetworkSpec {
    fn default() -> Self {
        Self {
            latency_min_ms: 2,
            latency_max_ms: 40,
            jitter_ms: 20,
            loss: 0.02,
            duplicate: 0.01,
            reorder: 0.05,
            reorder_delay_ms: 300,
            bandwidth_min: 250_000,
            bandwidth_max: 10_000_000,
        }
    }
}

/// The fault profile: how many faults of each kind strike at random times in the first
/// `window_s` virtual seconds; after that the network heals, crashed nodes restart and the
/// run must make progress (liveness).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultSpec {
    /// Whether faults are injected at all (loss, duplication and reordering stay on).
    pub enabled: bool,
    /// Length of the fault phase.
    pub window_s: u64,
    /// Crashes of random edges (each restarts, losing its memory).
    pub edge_crashes: u32,
    /// Crashes of the anchor (it restarts from its last persisted state).
    pub anchor_crashes: u32,
    /// Crashes of whichever edge coordinates at the time.
    pub coordinator_crashes: u32,
    /// Shortest down time of a crashed node.
    pub restart_min_ms: u64,
    /// Longest down time of a crashed node.
    pub restart_max_ms: u64,
    /// Network partitions (random groups that cannot reach each other).
    pub partitions: u32,
    /// Shortest partition.
    pub partition_min_ms: u64,
    /// Longest partition.
    pub partition_max_ms: u64,
    /// Edges that leave for good.
    pub leaves: u32,
    /// Edges that join late (they are absent at the start).
    pub joins: u32,
    /// Fraction of edges that train slowly.
    pub straggler_fraction: f64,
    /// Largest slow-down factor of a straggler (drawn from 2 to this).
    pub straggler_factor: f64,
}

impl Default for FaultSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            window_s: 60,
            edge_crashes: 4,
            anchor_crashes: 1,
            coordinator_crashes: 2,
            restart_min_ms: 500,
            restart_max_ms: 10_000,
            partitions: 2,
            partition_min_ms: 2_000,
            partition_max_ms: 15_000,
            leaves: 1,
            joins: 2,
            straggler_fraction: 0.1,
            straggler_factor: 12.0,
        }
    }
}

/// How training and aggregation are simulated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainingSpec {
    /// Parameters of the fake trainer's model.
    pub fake_params: usize,
    /// Shortest local training time (virtual).
    pub train_min_ms: u64,
    /// Longest local training time (virtual, before the straggler factor).
    pub train_max_ms: u64,
    /// Time the anchor takes to aggregate and persist a version.
    pub aggregate_ms: u64,
    /// Update norm bound enforced by the anchor's validation.
    pub max_update_norm: f64,
    /// Machines per edge for the burn trainer (eligible edges; ineligible ones get one).
    pub burn_machines: usize,
}

impl Default for TrainingSpec {
    fn default() -> Self {
        Self {
            fake_params: 32,
            train_min_ms: 300,
            train_max_ms: 1_500,
            aggregate_ms: 50,
            max_update_norm: 1.0e6,
            burn_machines: 4,
        }
    }
}

/// Liveness bounds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LivenessSpec {
    /// After the fault phase, a round must commit within this many virtual seconds.
    pub commit_within_s: u64,
    /// The run is a liveness failure if it has not committed `rounds` by this time.
    pub max_virtual_s: u64,
}

impl Default for LivenessSpec {
    fn default() -> Self {
        Self {
            commit_within_s: 60,
            max_virtual_s: 3_600,
        }
    }
}

impl Scenario {
    /// Reads a scenario from a TOML file.
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let s: Scenario = toml::from_str(&text).map_err(|source| ScenarioError::Parse {
            path: path.display().to_string(),
            source: Box::new(source),
        })?;
        s.validate()?;
        Ok(s)
    }

    /// Checks ranges.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        let bad = |m: String| Err(ScenarioError::Invalid(m));
        if self.peers < 3 || self.peers > 100_000 {
            return bad(format!("peers {} must be in 3..=100000", self.peers));
        }
        if self.rounds == 0 {
            return bad("rounds must be at least 1".into());
        }
        for (name, p) in [
            ("ineligible_fraction", self.ineligible_fraction),
            ("network.loss", self.network.loss),
            ("network.duplicate", self.network.duplicate),
            ("network.reorder", self.network.reorder),
            ("faults.straggler_fraction", self.faults.straggler_fraction),
            ("protocol.min_fit_fraction", self.protocol.min_fit_fraction),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return bad(format!("{name} = {p} must be in [0, 1]"));
            }
        }
        if self.network.loss > 0.5 {
            return bad("network.loss above 0.5 makes liveness meaningless".into());
        }
        if self.network.latency_min_ms > self.network.latency_max_ms
            || self.faults.restart_min_ms > self.faults.restart_max_ms
            || self.faults.partition_min_ms > self.faults.partition_max_ms
            || self.training.train_min_ms > self.training.train_max_ms
            || self.network.bandwidth_min > self.network.bandwidth_max
        {
            return bad("a *_min value exceeds its *_max".into());
        }
        if self.network.bandwidth_min == 0 {
            return bad("network.bandwidth_min must be positive".into());
        }
        if self.training.fake_params == 0 || self.training.fake_params > 1 << 20 {
            return bad("training.fake_params must be in 1..=1048576".into());
        }
        if self.protocol.min_participants == 0
            || self.protocol.max_participants < self.protocol.min_participants
            || self.protocol.max_participants > netproto::wire::MAX_PARTICIPANTS
        {
            return bad("protocol participants: need 1 <= min <= max <= 1024".into());
        }
        if self.faults.straggler_factor < 1.0 || !self.faults.straggler_factor.is_finite() {
            return bad("faults.straggler_factor must be >= 1".into());
        }
        if self.protocol.local_epochs == 0
            || self
                .protocol
                .lr
                .is_some_and(|lr| !(lr > 0.0 && lr.is_finite()))
        {
            return bad("protocol.local_epochs and protocol.lr must be positive".into());
        }
        Ok(())
    }

    /// The heartbeat period in effect (see [`ProtocolSpec::heartbeat_ms`]).
    pub fn heartbeat_ms(&self) -> u64 {
        self.protocol.heartbeat_ms.unwrap_or_else(|| {
            if self.peers <= 50 {
                1_000
            } else {
                (self.peers as u64 * 20).clamp(1_000, 20_000)
            }
        })
    }

    /// The protocol configuration every simulated node runs with.
    pub fn protocol_config(&self) -> Config {
        let heartbeat_ms = self.heartbeat_ms();
        let p = &self.protocol;
        Config {
            federation: format!("simnet-{}", self.name),
            criterion: self.criterion,
            heartbeat_ms,
            member_timeout_ms: p.member_timeout_ms.unwrap_or(heartbeat_ms * 5),
            lease_ms: p.lease_ms,
            election_stagger_ms: p.election_stagger_ms,
            round_deadline_ms: p.round_deadline_ms,
            round_gap_ms: p.round_gap_ms,
            proposal_timeout_ms: p.proposal_timeout_ms,
            min_participants: p.min_participants,
            max_participants: p.max_participants,
            min_fit_fraction: p.min_fit_fraction,
            hyper: Hyper {
                local_epochs: p.local_epochs,
                lr: p.lr.unwrap_or(match self.trainer {
                    TrainerKind::Fake => 0.5,
                    TrainerKind::Burn => 2e-3,
                }),
                ..Hyper::default()
            },
            max_version: None,
            max_members: 100_000,
        }
    }
}
