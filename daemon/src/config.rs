//! Node configuration: a TOML file, overridden by command-line flags.
//!
//! Every field has a default, so an empty file is a valid edge configuration that listens
//! on 127.0.0.1. See `docker/` and the README for complete examples.

use netproto::core::Config as ProtocolConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The role a node plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Always-on aggregator and single writer of the global model.
    Anchor,
    /// Holds machine data, trains locally, may coordinate rounds.
    #[default]
    Edge,
}

/// The model every node of the federation trains.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSection {
    /// What the federation trains: `rul` (the model below) or `bench` (a synthetic
    /// parameter vector and a no-op trainer, for `fedctl bench rounds`).
    pub kind: crate::workload::WorkloadKind,
    /// Parameters of the `bench` model.
    pub bench_params: usize,
    /// Architecture: `cnn` or `lstm`.
    pub arch: model::Arch,
    /// Cycles per input window.
    pub window: usize,
    /// Sensor features per cycle.
    pub features: usize,
    /// Seed of the genesis model (anchor).
    pub init_seed: u64,
    /// Largest accepted L2 distance between an update and its base model.
    pub max_update_norm: f64,
}

impl Default for ModelSection {
    fn default() -> Self {
        Self {
            kind: crate::workload::WorkloadKind::Rul,
            bench_params: 1_000_000,
            arch: model::Arch::Cnn,
            window: 30,
            features: 14,
            init_seed: 1,
            max_update_norm: 1_000.0,
        }
    }
}

impl ModelSection {
    /// The model spec of this section.
    pub fn spec(&self) -> model::ModelSpec {
        model::ModelSpec {
            arch: self.arch,
            window: self.window,
            features: self.features,
        }
    }
}

/// Where an edge's data comes from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataSection {
    /// When the store holds no machines yet, generate this many synthetic run-to-failure
    /// machines (0 = wait for `fedctl ingest`).
    pub synthetic_machines: usize,
    /// Seed of the synthetic machines (give each edge its own).
    pub synthetic_seed: u64,
    /// Fraction of whole machines held out for local evaluation of global models.
    pub validation_fraction: f64,
}

impl Default for DataSection {
    fn default() -> Self {
        Self {
            synthetic_machines: 0,
            synthetic_seed: 1,
            validation_fraction: 0.2,
        }
    }
}

/// The anchor's own held-out evaluation set (synthetic, never trained on).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HoldoutSection {
    /// Machines in the held-out set (0 disables the anchor's evaluation).
    pub machines: usize,
    /// Seed of the held-out machines.
    pub seed: u64,
}

impl Default for HoldoutSection {
    fn default() -> Self {
        Self {
            machines: 12,
            seed: 0x05ee_d0f4_01d0,
        }
    }
}

/// MLflow tracking (anchor).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MlflowSection {
    /// Tracking server URL (`MLFLOW_TRACKING_URI`); unset = local `metrics.jsonl` only.
    pub tracking_uri: Option<String>,
    /// Experiment name (`MLFLOW_EXPERIMENT_NAME`).
    pub experiment: String,
}

impl Default for MlflowSection {
    fn default() -> Self {
        Self {
            tracking_uri: None,
            experiment: "gossipfed".into(),
        }
    }
}

/// A node's whole configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Role of the node (set by the subcommand).
    pub role: Role,
    /// Directory of the RocksDB store, the identity key, `status.json` and `metrics.jsonl`.
    pub data_dir: PathBuf,
    /// Listen multiaddr. Keep it on 127.0.0.1 unless the node must be reachable.
    pub listen: String,
    /// Edge: multiaddr of the anchor, ending in `/p2p/<peer id>`.
    pub anchor: Option<String>,
    /// Further bootstrap peers (multiaddrs ending in `/p2p/<peer id>`) for Kademlia.
    pub bootstrap: Vec<String>,
    /// Peer ids admitted to the federation; empty admits any peer that knows the
    /// federation id (fine on 127.0.0.1, not on a WAN).
    pub allow: Vec<String>,
    /// LAN discovery with mDNS (multicasts on every interface; off by default).
    pub mdns: bool,
    /// Seed of the protocol core's randomness (jitter, sampling).
    pub seed: u64,
    /// OTLP/HTTP endpoint of a trace collector (`OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub otlp_endpoint: Option<String>,
    /// Service name in traces (default `fedd-anchor` / `fedd-edge-<short id>`).
    pub service_name: Option<String>,
    /// Protocol parameters; they must agree across the federation.
    pub protocol: ProtocolConfig,
    /// The model.
    pub model: ModelSection,
    /// Edge data.
    pub data: DataSection,
    /// Anchor evaluation.
    pub holdout: HoldoutSection,
    /// MLflow tracking.
    pub mlflow: MlflowSection,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            role: Role::Edge,
            data_dir: PathBuf::from("fedd-data"),
            listen: "/ip4/127.0.0.1/tcp/0".into(),
            anchor: None,
            bootstrap: vec![],
            allow: vec![],
            mdns: false,
            seed: 0,
            otlp_endpoint: None,
            service_name: None,
            protocol: ProtocolConfig::default(),
            model: ModelSection::default(),
            data: DataSection::default(),
            holdout: HoldoutSection::default(),
            mlflow: MlflowSection::default(),
        }
    }
}

/// Errors loading a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("invalid configuration {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: Box<toml::de::Error>,
    },
    /// A value is out of range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl NodeConfig {
    /// Loads a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    /// Checks values that would otherwise fail later, deep inside a round.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let p = &self.protocol;
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if self.role == Role::Edge && self.anchor.is_none() {
            return bad("an edge needs `anchor` (the anchor's multiaddr ending in /p2p/<id>)");
        }
        if p.heartbeat_ms == 0 || p.lease_ms == 0 || p.round_deadline_ms == 0 {
            return bad("protocol timings must be positive");
        }
        if p.member_timeout_ms <= p.heartbeat_ms {
            return bad("protocol.member_timeout_ms must exceed protocol.heartbeat_ms");
        }
        if !(0.0..=1.0).contains(&p.min_fit_fraction) {
            return bad("protocol.min_fit_fraction must be within 0..=1");
        }
        if p.max_participants == 0 || p.max_participants > netproto::wire::MAX_PARTICIPANTS {
            return bad("protocol.max_participants must be within 1..=1024");
        }
        if !(0.0..1.0).contains(&self.data.validation_fraction) {
            return bad("data.validation_fraction must be within 0..1");
        }
        if self.model.max_update_norm.is_nan() || self.model.max_update_norm <= 0.0 {
            return bad("model.max_update_norm must be positive");
        }
        self.model
            .spec()
            .validate()
            .map_err(|e| ConfigError::Invalid(format!("model: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_a_loopback_config_and_unknown_keys_are_errors() {
        let cfg: NodeConfig = toml::from_str("").unwrap();
        assert_eq!(cfg.listen, "/ip4/127.0.0.1/tcp/0");
        assert!(!cfg.mdns);
        assert!(toml::from_str::<NodeConfig>("lisen = 'x'").is_err());
        let cfg: NodeConfig =
            toml::from_str("[protocol.criterion]\nmin_failures = 4\nmin_windows = 10\n").unwrap();
        assert_eq!(cfg.protocol.criterion.min_failures, 4);
    }

    #[test]
    fn validation_names_the_problem() {
        let cfg = NodeConfig::default();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("anchor"), "{err}");
    }
}
