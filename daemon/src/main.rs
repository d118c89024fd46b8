//! `fedd`: run an anchor, an edge, or a demo federation.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use fedd::config::{NodeConfig, Role};
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "fedd", version, about = "gossipfed federation daemon")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the anchor: validates and aggregates updates, stores global versions.
    Anchor(NodeArgs),
    /// Run an edge: holds machine data, trains locally, may coordinate rounds.
    Edge(NodeArgs),
    /// Run an anchor and N edges in one process on 127.0.0.1 with synthetic data.
    Demo {
        /// Number of edges.
        #[arg(long, default_value_t = 3)]
        edges: usize,
        /// Rounds to run.
        #[arg(long, default_value_t = 10)]
        rounds: u64,
        /// Keep the nodes' data in this directory (default: a temporary one).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// MLflow tracking server.
        #[arg(long, env = "MLFLOW_TRACKING_URI")]
        mlflow_url: Option<String>,
        /// MLflow experiment.
        #[arg(long, env = "MLFLOW_EXPERIMENT_NAME")]
        mlflow_experiment: Option<String>,
        /// OTLP/HTTP endpoint for traces (e.g. http://127.0.0.1:4318).
        #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
        otlp_endpoint: Option<String>,
    },
}

#[derive(Args)]
struct NodeArgs {
    /// TOML configuration file.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Data directory (RocksDB, identity key, status.json).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Listen multiaddr.
    #[arg(long)]
    listen: Option<String>,
    /// Edge: the anchor's multiaddr, ending in /p2p/<peer id>.
    #[arg(long)]
    anchor: Option<String>,
    /// Extra bootstrap peers (repeatable).
    #[arg(long)]
    bootstrap: Vec<String>,
    /// Edge: generate this many synthetic machines when the store is empty.
    #[arg(long)]
    synthetic_machines: Option<usize>,
    /// Edge: seed of the synthetic machines.
    #[arg(long)]
    synthetic_seed: Option<u64>,
    /// Seed of the protocol core's randomness.
    #[arg(long)]
    seed: Option<u64>,
    /// Anchor: MLflow tracking server.
    #[arg(long, env = "MLFLOW_TRACKING_URI")]
    mlflow_url: Option<String>,
    /// Anchor: MLflow experiment.
    #[arg(long, env = "MLFLOW_EXPERIMENT_NAME")]
    mlflow_experiment: Option<String>,
    /// OTLP/HTTP endpoint for traces.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
}

impl NodeArgs {
    fn into_config(self, role: Role) -> Result<NodeConfig> {
        let mut cfg = match &self.config {
            Some(path) => NodeConfig::load(path)?,
            None => NodeConfig::default(),
        };
        cfg.role = role;
        if let Some(v) = self.data_dir {
            cfg.data_dir = v;
        }
        if let Some(v) = self.listen {
            cfg.listen = v;
        }
        if self.anchor.is_some() {
            cfg.anchor = self.anchor;
        }
        cfg.bootstrap.extend(self.bootstrap);
        if let Some(v) = self.synthetic_machines {
            cfg.data.synthetic_machines = v;
        }
        if let Some(v) = self.synthetic_seed {
            cfg.data.synthetic_seed = v;
        }
        if let Some(v) = self.seed {
            cfg.seed = v;
        }
        if self.mlflow_url.is_some() {
            cfg.mlflow.tracking_uri = self.mlflow_url;
        }
        if let Some(v) = self.mlflow_experiment {
            cfg.mlflow.experiment = v;
        }
        if self.otlp_endpoint.is_some() {
            cfg.otlp_endpoint = self.otlp_endpoint;
        }
        Ok(cfg)
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = ctrl_c.await;
}

async fn run_node(cfg: NodeConfig) -> Result<()> {
    let shutdown = CancellationToken::new();
    let handle = fedd::node::start(cfg, shutdown.clone()).await?;
    println!("peer_id={} listen={}", handle.peer_id, handle.addr);
    let mut task = handle.task;
    tokio::select! {
        () = shutdown_signal() => {
            shutdown.cancel();
            tokio::time::timeout(std::time::Duration::from_secs(30), &mut task)
                .await
                .context("the node did not stop within 30 s")?
                .context("node task panicked")?
        }
        r = &mut task => r.context("node task panicked")?,
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let quiet_demo = matches!(cli.command, Command::Demo { .. });
    fedd::telemetry::init_logging(if quiet_demo { "warn" } else { "info" });
    match cli.command {
        Command::Anchor(args) => run_node(args.into_config(Role::Anchor)?).await,
        Command::Edge(args) => run_node(args.into_config(Role::Edge)?).await,
        Command::Demo {
            edges,
            rounds,
            data_dir,
            mlflow_url,
            mlflow_experiment,
            otlp_endpoint,
        } => {
            let summary = fedd::demo::run_demo(fedd::demo::DemoOptions {
                edges,
                rounds,
                data_dir,
                mlflow_url,
                mlflow_experiment,
                otlp_endpoint,
                ..fedd::demo::DemoOptions::default()
            })
            .await?;
            println!("{summary}");
            Ok(())
        }
    }
}
