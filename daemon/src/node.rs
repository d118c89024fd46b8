//! Starting a node: shared plumbing of both roles (clock, status, start-up), in the style of
//! mini-redis: `start(config, shutdown)` runs a node in-process, so the demo and tests can
//! start several in one process, and `main` stays thin.

use crate::config::{NodeConfig, Role};
use crate::net::Net;
use anyhow::{Context, Result};
use libp2p::Multiaddr;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Milliseconds since the node started: the protocol core's clock.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    start: Instant,
}

impl Clock {
    /// A clock starting now.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
        }
    }

    /// Milliseconds since start.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// The instant of core time `t`.
    pub fn instant(&self, t: u64) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.start + Duration::from_millis(t))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// One committed or abandoned round, as the anchor saw it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RoundSummary {
    /// Round number.
    pub round: u64,
    /// Version it committed (None: abandoned).
    pub version: Option<u64>,
    /// Participants included in the aggregate.
    pub included: usize,
    /// Participants planned.
    pub participants: usize,
    /// Updates refused.
    pub rejected: u32,
    /// Sample-weighted training loss.
    pub train_loss: f32,
    /// RMSE of the new global model on the anchor's held-out set, once evaluated.
    pub eval_rmse: Option<f64>,
    /// Sample-weighted RMSE of the new global model on the edges' validation machines,
    /// once the edges have reported.
    #[serde(default)]
    pub edge_eval_rmse: Option<f64>,
    /// Wall time from opening to commit.
    pub duration_ms: u64,
    /// Update bytes received in the round.
    pub bytes_in: u64,
    /// When the round committed, in milliseconds since the anchor started.
    #[serde(default)]
    pub committed_at_ms: u64,
    /// Model bytes the anchor had sent in all, when the round committed.
    #[serde(default)]
    pub bytes_out_at_commit: u64,
}

/// What a node shows about itself: `status.json` in its data dir, and a watch channel
/// in-process (used by `fedd demo`, `fedctl status` and the tests).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Role.
    pub role: Role,
    /// libp2p peer id.
    pub peer_id: String,
    /// Dialable addresses (with `/p2p/<id>`).
    pub listen: Vec<String>,
    /// Federation id.
    pub federation: String,
    /// Current term as known here.
    pub term: u64,
    /// Current coordinator as known here.
    pub coordinator: Option<String>,
    /// Whether this node holds the coordinator lease.
    pub is_coordinator: bool,
    /// Latest global version known here.
    pub version: u64,
    /// Its digest (hex).
    pub digest: String,
    /// Edge: whether the sample criterion is met.
    pub eligible: bool,
    /// Edge: the sample criterion verdict in words.
    pub eligibility: String,
    /// Edge: run-to-failure recordings.
    pub failures: u64,
    /// Edge: training windows.
    pub windows: u64,
    /// Edge: rounds this edge trained for.
    pub rounds_trained: u64,
    /// Edge: rounds it was not selected for, with the latest reason.
    pub not_selected: u64,
    /// Edge: RMSE of the latest global version on its validation machines.
    pub local_eval_rmse: Option<f64>,
    /// Anchor: the last rounds (bounded).
    pub rounds: Vec<RoundSummary>,
    /// Anchor: held-out RMSE of the genesis (untrained) model, the learning curve's start.
    #[serde(default)]
    pub genesis_eval_rmse: Option<f64>,
    /// Connected peers.
    pub peers: usize,
    /// Latest notable event.
    pub last_event: String,
    /// Model bytes this node sent on the data plane (served models, pushed updates).
    #[serde(default)]
    pub bytes_out: u64,
}

/// Most round summaries kept in a status.
pub const MAX_STATUS_ROUNDS: usize = 1_000;

/// Writes `status` to `dir/status.json` atomically (temp file + rename).
pub fn write_status(dir: &Path, status: &NodeStatus) {
    let tmp = dir.join("status.json.tmp");
    let Ok(json) = serde_json::to_vec_pretty(status) else {
        return;
    };
    if std::fs::write(&tmp, json).is_ok() {
        let _ = std::fs::rename(&tmp, dir.join("status.json"));
    }
}

/// How often at most `status.json` is rewritten.
pub const STATUS_WRITE_EVERY: Duration = Duration::from_millis(250);

/// Publishes a node's status: in-process through a watch channel at every change, and to
/// `status.json` at most every [`STATUS_WRITE_EVERY`] (a node in a fast federation changes
/// its status several times per round; the file trails by at most that long, provided
/// [`StatusPublisher::flush_due`] is called that often).
#[derive(Debug)]
pub struct StatusPublisher {
    dir: std::path::PathBuf,
    tx: watch::Sender<NodeStatus>,
    written_at: Option<Instant>,
    /// The file lags the channel.
    behind: bool,
}

impl StatusPublisher {
    /// A publisher writing to `dir/status.json` and `tx`.
    pub fn new(dir: &Path, tx: watch::Sender<NodeStatus>) -> Self {
        Self {
            dir: dir.to_owned(),
            tx,
            written_at: None,
            behind: false,
        }
    }

    /// The status last published.
    pub fn current(&self) -> NodeStatus {
        self.tx.borrow().clone()
    }

    /// Publishes `status` if it changed: to the channel now, to the file now or later.
    pub fn publish(&mut self, status: &NodeStatus) {
        if *self.tx.borrow() != *status {
            self.tx.send_replace(status.clone());
            self.behind = true;
        }
        self.flush_due();
    }

    /// Writes the file if it lags and the last write is [`STATUS_WRITE_EVERY`] old.
    pub fn flush_due(&mut self) {
        if self.behind
            && self
                .written_at
                .is_none_or(|t| t.elapsed() >= STATUS_WRITE_EVERY)
        {
            self.flush();
        }
    }

    /// Writes the file now if it lags (at shutdown).
    pub fn flush(&mut self) {
        if self.behind {
            write_status(&self.dir, &self.tx.borrow());
            self.written_at = Some(Instant::now());
            self.behind = false;
        }
    }
}

/// Reads a node's `status.json`.
pub fn read_status(dir: &Path) -> Result<NodeStatus> {
    let path = dir.join("status.json");
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}

/// A running node.
pub struct NodeHandle {
    /// Its status, updated as it changes.
    pub status: watch::Receiver<NodeStatus>,
    /// Its peer id.
    pub peer_id: String,
    /// Its first listen address, with `/p2p/<id>`.
    pub addr: Multiaddr,
    /// The event loop; ends after `shutdown` is cancelled.
    pub task: tokio::task::JoinHandle<Result<()>>,
}

/// Starts a node: opens its store, identity and swarm, waits for its listen address, then
/// runs its event loop as a task until `shutdown` is cancelled.
pub async fn start(cfg: NodeConfig, shutdown: CancellationToken) -> Result<NodeHandle> {
    cfg.validate()?;
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    let key = crate::net::load_or_create_identity(&cfg.data_dir)?;
    let peer_id = key.public().to_peer_id();
    let mut net = Net::new(
        key,
        &cfg.protocol.federation,
        &cfg.listen,
        &cfg.allow,
        cfg.mdns,
    )?;
    let listen = net.first_listen_addr(Duration::from_secs(10)).await?;
    let addr = listen.with(libp2p::multiaddr::Protocol::P2p(peer_id));
    let status = NodeStatus {
        role: cfg.role,
        peer_id: peer_id.to_string(),
        listen: vec![addr.to_string()],
        federation: cfg.protocol.federation.clone(),
        ..NodeStatus::default()
    };
    write_status(&cfg.data_dir, &status);
    let (tx, rx) = watch::channel(status);
    let task = match cfg.role {
        Role::Anchor => {
            let node = crate::anchor::AnchorNode::open(cfg, net, tx)?;
            tokio::spawn(node.run(shutdown))
        }
        Role::Edge => {
            let node = crate::edge::EdgeNode::open(cfg, net, tx)?;
            tokio::spawn(node.run(shutdown))
        }
    };
    Ok(NodeHandle {
        status: rx,
        peer_id: peer_id.to_string(),
        addr,
        task,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn status_file_trails_the_channel_by_at_most_the_write_interval() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = watch::channel(NodeStatus::default());
        let mut out = StatusPublisher::new(dir.path(), tx);
        // The first change is written at once; a burst right after reaches the channel
        // at once and the file only when due.
        let mut status = NodeStatus {
            version: 1,
            ..NodeStatus::default()
        };
        out.publish(&status);
        assert_eq!(read_status(dir.path()).unwrap().version, 1);
        for v in 2..=5 {
            status.version = v;
            out.publish(&status);
            assert_eq!(rx.borrow().version, v);
        }
        assert_eq!(read_status(dir.path()).unwrap().version, 1);
        std::thread::sleep(STATUS_WRITE_EVERY);
        out.flush_due();
        assert_eq!(read_status(dir.path()).unwrap().version, 5);
        // Nothing new: nothing written; a last change is written by `flush`.
        std::fs::remove_file(dir.path().join("status.json")).unwrap();
        out.flush_due();
        assert!(read_status(dir.path()).is_err());
        status.bytes_out = 42;
        out.publish(&status);
        out.flush();
        assert_eq!(read_status(dir.path()).unwrap().bytes_out, 42);
    }
}
