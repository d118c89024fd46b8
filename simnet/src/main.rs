//! `simnet`: run one seed, sweep many seeds, or write a report. See the crate docs.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use simnet::{Outcome, RunOptions, Scenario, TrainerKind};

/// Deterministic many-peer simulator of the gossipfed protocol.
#[derive(Parser)]
#[command(name = "simnet", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs one seed and prints a summary line.
    Run(RunArgs),
    /// Runs many seeds in parallel with the scenario's (default) fault profile.
    Sweep(SweepArgs),
    /// Runs one seed and writes rounds.csv, failovers.csv and report.png.
    Report(ReportArgs),
}

#[derive(Args)]
struct Common {
    /// Nodes in total (one anchor and N-1 edges); default: the scenario's.
    #[arg(long)]
    peers: Option<usize>,
    /// Rounds to commit; default: the scenario's.
    #[arg(long)]
    rounds: Option<u64>,
    /// Scenario file (TOML); default: the built-in default scenario.
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// Local trainer: fake or burn; default: the scenario's.
    #[arg(long)]
    trainer: Option<TrainerKind>,
    /// Test-only: disable the anchor's fencing, to see the checkers fire.
    #[arg(long, hide = true)]
    break_fencing: bool,
}

impl Common {
    fn scenario(&self) -> Result<Scenario> {
        let mut sc = match &self.scenario {
            Some(p) => Scenario::load(p)?,
            None => Scenario::default(),
        };
        if let Some(p) = self.peers {
            sc.peers = p;
        }
        if let Some(r) = self.rounds {
            sc.rounds = r;
        }
        if let Some(t) = self.trainer {
            sc.trainer = t;
        }
        sc.validate()?;
        Ok(sc)
    }

    fn repro(&self, sc: &Scenario, seed: u64) -> String {
        let mut cmd = format!(
            "simnet run --peers {} --rounds {} --seed {seed}",
            sc.peers, sc.rounds
        );
        if let Some(p) = &self.scenario {
            cmd.push_str(&format!(" --scenario {}", p.display()));
        }
        if self.break_fencing {
            cmd.push_str(" --break-fencing");
        }
        cmd
    }
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    common: Common,
    /// Seed; default: the scenario's, else 1.
    #[arg(long)]
    seed: Option<u64>,
    /// Print every protocol event to stderr.
    #[arg(long)]
    verbose: bool,
    /// Also write the report (CSV and PNG) into this directory.
    #[arg(long)]
    report: Option<PathBuf>,
}

#[derive(Args)]
struct SweepArgs {
    #[command(flatten)]
    common: Common,
    /// Seed range, inclusive: A..B.
    #[arg(long)]
    seeds: String,
    /// Worker threads; default: one per core.
    #[arg(long)]
    jobs: Option<usize>,
}

#[derive(Args)]
struct ReportArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Output directory.
    #[arg(long, default_value = "simnet-report")]
    out: PathBuf,
}

fn print_run(o: &Outcome) {
    for v in &o.violations {
        println!("violation: {v}");
    }
    for l in &o.liveness_failures {
        println!("liveness failure: {l}");
    }
    let crash_failovers: Vec<u64> = o
        .failovers
        .iter()
        .filter_map(|f| f.after_crash_ms)
        .collect();
    let (first, last) = (o.rounds.first(), o.rounds.last());
    if let (Some(a), Some(b)) = (first, last) {
        println!(
            "convergence: global_loss {:.4} at version {} -> {:.4} at version {}",
            a.global_loss, a.version, b.global_loss, b.version
        );
    }
    println!(
        "coordinator: terms_after_first={} failovers_after_crash={} failover_ms_max={} failover_ms_mean={:.0}",
        o.failovers.len(),
        crash_failovers.len(),
        crash_failovers.iter().max().copied().unwrap_or(0),
        if crash_failovers.is_empty() {
            0.0
        } else {
            crash_failovers.iter().sum::<u64>() as f64 / crash_failovers.len() as f64
        }
    );
    let after = o
        .first_commit_after_faults_ms
        .map(|t| format!("{} ms", t.saturating_sub(o.faults_end_ms)))
        .unwrap_or_else(|| "none".into());
    println!(
        "liveness: faults_end_s={:.1} first_commit_after_faults={after}",
        o.faults_end_ms as f64 / 1e3
    );
    let s = &o.stats;
    println!(
        "stats: events={} deliveries={} dropped={} updates={} faults={} busy_wakes={}",
        s.events, s.deliveries, s.dropped, s.updates, s.faults, s.busy_wakes
    );
}

fn run_one(args: &RunArgs, report: Option<&PathBuf>) -> Result<ExitCode> {
    let sc = args.common.scenario()?;
    let seed = args.seed.or(sc.seed).unwrap_or(1);
    let start = Instant::now();
    let o = simnet::run(
        &sc,
        RunOptions {
            seed,
            break_fencing: args.common.break_fencing,
            verbose: args.verbose,
        },
    )?;
    let wall = start.elapsed().as_secs_f64();
    print_run(&o);
    if let Some(dir) = report {
        for p in simnet::report::write(&o, dir)? {
            println!("wrote {}", p.display());
        }
    }
    if o.safety_violations > 0 || !o.liveness_failures.is_empty() {
        println!("reproduce: {}", args.common.repro(&sc, seed));
    }
    println!("{}", simnet::summary_line(&o, wall));
    Ok(if o.safety_violations > 0 {
        ExitCode::from(1)
    } else if !o.liveness_failures.is_empty() {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

fn run_sweep(args: &SweepArgs) -> Result<ExitCode> {
    let sc = args.common.scenario()?;
    let seeds = simnet::parse_seeds(&args.seeds).map_err(anyhow::Error::msg)?;
    let jobs = args.jobs.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let start = Instant::now();
    let s = simnet::sweep(&sc, seeds, jobs, args.common.break_fencing).context("sweep")?;
    for r in s.results.iter().filter(|r| r.failed()) {
        let why = r
            .first_violation
            .clone()
            .or_else(|| r.liveness_failures.first().cloned())
            .unwrap_or_default();
        println!(
            "failed seed {}: violations={} liveness_failures={} ({why})",
            r.seed,
            r.safety_violations,
            r.liveness_failures.len()
        );
        println!("  reproduce: {}", args.common.repro(&sc, r.seed));
    }
    let f = s.failover_ms();
    if !f.is_empty() {
        println!(
            "failover after coordinator crash: n={} median_ms={} p99_ms={} max_ms={}",
            f.len(),
            f[f.len() / 2],
            f[(f.len() * 99 / 100).min(f.len() - 1)],
            f[f.len() - 1]
        );
    }
    println!("wall_s={:.1} jobs={jobs}", start.elapsed().as_secs_f64());
    println!("{}", simnet::sweep_line(&s));
    Ok(if s.failed() > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Run(a) => run_one(a, a.report.as_ref()),
        Command::Sweep(a) => run_sweep(a),
        Command::Report(a) => run_one(&a.run, Some(&a.out)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("simnet: error: {e:#}");
            ExitCode::from(3)
        }
    }
}
