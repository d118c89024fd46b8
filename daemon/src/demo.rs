//! `fedd demo`: one anchor and N edges in one process, over real libp2p TCP on 127.0.0.1,
//! each edge with its own synthetic run-to-failure machines and its own RocksDB.

use crate::config::{NodeConfig, Role};
use crate::node::{NodeHandle, start};
use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Options of a demo federation.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Number of edges.
    pub edges: usize,
    /// Rounds to run.
    pub rounds: u64,
    /// Keep the nodes' data here instead of a temporary directory.
    pub data_dir: Option<PathBuf>,
    /// MLflow tracking URI for the anchor.
    pub mlflow_url: Option<String>,
    /// MLflow experiment name.
    pub mlflow_experiment: Option<String>,
    /// OTLP/HTTP endpoint for every node's traces.
    pub otlp_endpoint: Option<String>,
    /// Synthetic machines per edge.
    pub machines_per_edge: usize,
    /// Overall deadline.
    pub timeout: Duration,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            edges: 3,
            rounds: 10,
            data_dir: None,
            mlflow_url: None,
            mlflow_experiment: None,
            otlp_endpoint: None,
            machines_per_edge: 10,
            timeout: Duration::from_secs(600),
        }
    }
}

/// What a demo achieved.
#[derive(Clone, Debug, PartialEq)]
pub struct DemoSummary {
    /// Rounds committed.
    pub rounds: u64,
    /// Edges.
    pub edges: usize,
    /// Held-out RMSE of the global model after the first round.
    pub rmse_first: f64,
    /// Held-out RMSE after the last round.
    pub rmse_last: f64,
    /// Final global version.
    pub global_version: u64,
}

impl std::fmt::Display for DemoSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "demo: rounds={} edges={} rmse_first={:.3} rmse_last={:.3} global_version={}",
            self.rounds, self.edges, self.rmse_first, self.rmse_last, self.global_version
        )
    }
}

/// The protocol settings of the demo: short heartbeats so rounds follow each other quickly.
pub fn demo_protocol(rounds: u64, edges: usize) -> netproto::core::Config {
    netproto::core::Config {
        federation: "demo".into(),
        heartbeat_ms: 300,
        member_timeout_ms: 3_000,
        lease_ms: 3_000,
        election_stagger_ms: 200,
        round_deadline_ms: 60_000,
        round_gap_ms: 50,
        min_participants: edges,
        max_version: Some(rounds),
        ..netproto::core::Config::default()
    }
}

/// Runs a demo federation, printing one line per round; returns the summary.
pub async fn run_demo(opts: DemoOptions) -> Result<DemoSummary> {
    if opts.edges == 0 || opts.rounds == 0 {
        bail!("the demo needs at least one edge and one round");
    }
    let tmp;
    let root = match &opts.data_dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::tempdir().context("creating a temporary directory")?;
            tmp.path().to_owned()
        }
    };
    // The anchor stops first and the edges after it: a stopping anchor waits a few
    // seconds for the edges' evaluations of the last version, so they reach MLflow.
    let anchor_shutdown = CancellationToken::new();
    let edges_shutdown = CancellationToken::new();
    let protocol = demo_protocol(opts.rounds, opts.edges);
    let anchor_cfg = NodeConfig {
        role: Role::Anchor,
        data_dir: root.join("anchor"),
        otlp_endpoint: opts.otlp_endpoint.clone(),
        protocol: protocol.clone(),
        mlflow: crate::config::MlflowSection {
            tracking_uri: opts.mlflow_url.clone(),
            experiment: opts
                .mlflow_experiment
                .clone()
                .unwrap_or_else(|| "gossipfed-demo".into()),
        },
        ..NodeConfig::default()
    };
    let anchor = start(anchor_cfg, anchor_shutdown.clone()).await?;
    println!(
        "anchor {} listening on {}",
        short(&anchor.peer_id),
        anchor.addr
    );
    let mut edges: Vec<NodeHandle> = Vec::new();
    for i in 0..opts.edges {
        let cfg = NodeConfig {
            role: Role::Edge,
            data_dir: root.join(format!("edge-{i}")),
            anchor: Some(anchor.addr.to_string()),
            otlp_endpoint: opts.otlp_endpoint.clone(),
            service_name: Some(format!("fedd-edge-{i}")),
            seed: i as u64 + 1,
            protocol: protocol.clone(),
            data: crate::config::DataSection {
                synthetic_machines: opts.machines_per_edge,
                synthetic_seed: 1_000 + i as u64,
                ..crate::config::DataSection::default()
            },
            ..NodeConfig::default()
        };
        let edge = match start(cfg, edges_shutdown.clone()).await {
            Ok(e) => e,
            Err(e) => {
                anchor_shutdown.cancel();
                edges_shutdown.cancel();
                return Err(e);
            }
        };
        let st = edge.status.borrow().clone();
        println!(
            "edge {i} {} with {} run-to-failure machines, {} windows",
            short(&edge.peer_id),
            st.failures,
            st.windows
        );
        edges.push(edge);
    }
    let result = tokio::time::timeout(
        opts.timeout,
        watch_rounds(anchor.status.clone(), opts.rounds),
    )
    .await;
    anchor_shutdown.cancel();
    let mut errors = vec![];
    stop_node(anchor, &mut errors).await;
    // Only once the anchor has stopped (it waits for the edges' last evaluations).
    edges_shutdown.cancel();
    for h in edges {
        stop_node(h, &mut errors).await;
    }
    let (first, last, version) =
        result.context("the demo did not finish within its deadline")??;
    if let Some(e) = errors.first() {
        bail!("{e}");
    }
    Ok(DemoSummary {
        rounds: opts.rounds,
        edges: opts.edges,
        rmse_first: first,
        rmse_last: last,
        global_version: version,
    })
}

/// Waits (at most 30 s) for a cancelled node to stop, recording what went wrong.
async fn stop_node(h: NodeHandle, errors: &mut Vec<String>) {
    match tokio::time::timeout(Duration::from_secs(30), h.task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => errors.push(format!("node {}: {e:#}", short(&h.peer_id))),
        Ok(Err(e)) => errors.push(format!("node {}: {e}", short(&h.peer_id))),
        Err(_) => errors.push(format!(
            "node {} did not stop within 30 s",
            short(&h.peer_id)
        )),
    }
}

fn short(peer: &str) -> &str {
    &peer[peer.len().saturating_sub(8)..]
}

async fn watch_rounds(
    mut status: tokio::sync::watch::Receiver<crate::node::NodeStatus>,
    rounds: u64,
) -> Result<(f64, f64, u64)> {
    let mut printed = 0usize;
    let mut first = None;
    loop {
        let st = status.borrow_and_update().clone();
        while let Some(r) = st.rounds.get(printed) {
            let Some(version) = r.version else {
                println!("round {}: abandoned", r.round);
                printed += 1;
                continue;
            };
            let Some(rmse) = r.eval_rmse else { break };
            println!(
                "round {}: version={} participants={}/{} train_loss={:.4} rmse={:.3} ms={} bytes_in={}",
                r.round,
                version,
                r.included,
                r.participants,
                r.train_loss,
                rmse,
                r.duration_ms,
                r.bytes_in
            );
            first.get_or_insert(rmse);
            printed += 1;
            if version >= rounds {
                return Ok((first.unwrap_or(rmse), rmse, version));
            }
        }
        status.changed().await.context("the anchor stopped")?;
    }
}
