//! `fedctl`: gossipfed's operator CLI.

mod bench;
mod learn;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "fedctl", version, about = "gossipfed operator CLI")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show a node's status (reads `status.json` in its data directory).
    Status {
        /// The node's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Train an RUL model on a C-MAPSS training file, centrally or in a simulated federation.
    Train(learn::TrainArgs),
    /// Predict the RUL of every engine of a C-MAPSS test file; writes `unit,rul` CSV.
    Predict {
        /// Model file written by `fedctl train`.
        #[arg(long)]
        model: PathBuf,
        /// C-MAPSS test file (e.g. test_FD001.txt).
        #[arg(long)]
        data: PathBuf,
        /// Output CSV.
        #[arg(long)]
        out: PathBuf,
    },
    /// Evaluate a model on a C-MAPSS test file against its true RUL file, or (`--holdout`)
    /// on its held-out training engines cut test-style.
    Evaluate {
        /// Model file written by `fedctl train`.
        #[arg(long)]
        model: PathBuf,
        /// C-MAPSS test file (e.g. test_FD001.txt).
        #[arg(long)]
        data: PathBuf,
        /// True RUL per test engine (e.g. RUL_FD001.txt).
        #[arg(long, required_unless_present = "holdout")]
        truth: Option<PathBuf>,
        /// Score on the model's held-out validation engines of the training file given
        /// as `--data`, cut test-style at every raw RUL from 7 to 145 cycles.
        #[arg(long, conflicts_with = "truth")]
        holdout: bool,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        which: BenchCommand,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Aggregation throughput (GB/s of input) next to a memory-bandwidth reference.
    Aggregate {
        /// Number of client updates.
        #[arg(long, default_value_t = 10)]
        clients: usize,
        /// Parameters per update (float32).
        #[arg(long, default_value_t = 10_000_000)]
        params: usize,
        /// Repetitions (best of).
        #[arg(long, default_value_t = 5)]
        reps: usize,
    },
    /// Whole federated rounds on 127.0.0.1 with a synthetic model and a no-op trainer.
    Rounds {
        /// Edges.
        #[arg(long, default_value_t = 10)]
        edges: usize,
        /// Float32 parameters of the synthetic model.
        #[arg(long, default_value_t = 1_000_000)]
        params: usize,
        /// Rounds.
        #[arg(long, default_value_t = 20)]
        rounds: u64,
        /// Run every node as its own `fedd` process (measures per-node peak RSS).
        #[arg(long)]
        processes: bool,
    },
}

fn status(data_dir: PathBuf, json: bool) -> Result<()> {
    let s = fedd::node::read_status(&data_dir)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    println!("role:         {:?}", s.role);
    println!("peer id:      {}", s.peer_id);
    println!("listen:       {}", s.listen.join(" "));
    println!("federation:   {}", s.federation);
    println!(
        "term:         {} (coordinator: {}{})",
        s.term,
        s.coordinator.as_deref().unwrap_or("none"),
        if s.is_coordinator { ", this node" } else { "" }
    );
    println!(
        "version:      {} ({})",
        s.version,
        s.digest.get(..12).unwrap_or("")
    );
    println!("peers:        {}", s.peers);
    if s.role == fedd::config::Role::Edge {
        println!(
            "data:         {} run-to-failure machines, {} windows",
            s.failures, s.windows
        );
        println!("eligibility:  {}", s.eligibility);
        println!(
            "trained:      {} rounds; not selected: {}",
            s.rounds_trained, s.not_selected
        );
        if let Some(r) = s.local_eval_rmse {
            println!("local RMSE:   {r:.3}");
        }
    } else {
        for r in s.rounds.iter().rev().take(10).rev() {
            match r.version {
                Some(v) => println!(
                    "round {:>4}: version {v} from {}/{} updates, loss {:.4}, rmse {}, {} ms",
                    r.round,
                    r.included,
                    r.participants,
                    r.train_loss,
                    r.eval_rmse.map_or("-".into(), |x| format!("{x:.3}")),
                    r.duration_ms
                ),
                None => println!("round {:>4}: abandoned", r.round),
            }
        }
    }
    println!("last event:   {}", s.last_event);
    Ok(())
}

fn main() -> Result<()> {
    fedd::telemetry::init_logging("warn");
    match Cli::parse().command {
        Command::Status { data_dir, json } => status(data_dir, json),
        Command::Train(args) => learn::train(&args),
        Command::Predict { model, data, out } => learn::predict(&model, &data, &out),
        Command::Evaluate {
            model,
            data,
            truth,
            holdout,
        } => {
            let truth = match (&truth, holdout) {
                (Some(path), _) => learn::Truth::RulFile(path),
                (None, true) => learn::Truth::Holdout,
                (None, false) => anyhow::bail!("evaluate needs --truth <RUL file> or --holdout"),
            };
            learn::evaluate(&model, &data, truth)
        }
        Command::Bench { which } => match which {
            BenchCommand::Aggregate {
                clients,
                params,
                reps,
            } => bench::aggregate(clients, params, reps),
            BenchCommand::Rounds {
                edges,
                params,
                rounds,
                processes,
            } => bench::rounds(bench::RoundsOptions {
                edges,
                params,
                rounds,
                processes,
            }),
        },
    }
}
