//! `fedctl bench aggregate`: aggregation throughput next to a memory-bandwidth reference
//! measured in the same run, on the same buffers.

use anyhow::{Result, bail};
use model::{ParamSet, StreamingFedAvg, TensorSpec};
use std::hint::black_box;
use std::time::Instant;

/// Best-of-`reps` wall time of `f`, in seconds.
fn best_of(reps: usize, mut f: impl FnMut()) -> f64 {
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// A sum that the compiler can vectorize: eight independent accumulators.
fn sum8(xs: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = xs.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

/// Runs the aggregation benchmark and prints one machine-readable line per measurement.
pub fn aggregate(clients: usize, params: usize, reps: usize) -> Result<()> {
    if clients == 0 || params == 0 {
        bail!("--clients and --params must be positive");
    }
    let specs = vec![TensorSpec::new("w", vec![params])];
    let updates: Vec<ParamSet> = (0..clients)
        .map(|c| {
            let values = (0..params).map(|i| ((i + c) % 97) as f32 * 0.01).collect();
            ParamSet::new(specs.clone(), values)
        })
        .collect::<Result<_, _>>()?;
    let weights: Vec<u64> = (0..clients as u64).map(|c| 100 + c).collect();
    let input_bytes = (clients * params * 4) as f64;
    let gbs = |secs: f64| input_bytes / secs / 1e9;

    // Reference 1: copy every update once (reads and writes each byte).
    let mut dst = vec![0f32; params];
    let copy = best_of(reps, || {
        for u in &updates {
            dst.copy_from_slice(u.values());
            black_box(&dst);
        }
    });
    // Reference 2: sum every update once (reads each byte once: the floor of any aggregation).
    let sum = best_of(reps, || {
        for u in &updates {
            black_box(sum8(u.values()));
        }
    });
    let pairs: Vec<(&ParamSet, u64)> = updates.iter().zip(weights.iter().copied()).collect();
    let streaming = best_of(reps, || {
        let mut acc = StreamingFedAvg::new(specs.clone());
        for (u, w) in &pairs {
            let _ = acc.add(u, *w);
        }
        black_box(acc.finish().ok());
    });
    let batch = best_of(reps, || {
        black_box(model::aggregate::fedavg_blocked(&pairs).ok());
    });
    let total: u64 = weights.iter().sum();
    let scale: Vec<f32> = weights
        .iter()
        .map(|w| (*w as f64 / total as f64) as f32)
        .collect();
    let mut out = vec![0f32; params];
    let kernel = best_of(reps, || {
        out.fill(0.0);
        model::aggregate::fold_blocked(&pairs, &scale, &mut out);
        black_box(&out);
    });
    // The two paths must agree.
    let a = model::aggregate::fedavg_blocked(&pairs)?;
    let b = model::fedavg(&pairs)?;
    let max_diff = a
        .values()
        .iter()
        .zip(b.values())
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    if max_diff > 1e-4 {
        bail!("blocked and reference FedAvg disagree by {max_diff}");
    }
    let reference = gbs(copy).max(gbs(sum));
    // `fedavg_gbs` folds into an accumulator allocated once (what a long-running anchor
    // does); `fedavg_alloc_gbs` also allocates and page-faults a fresh output each time.
    println!(
        "aggregate: clients={clients} params={params} input_mb={:.1} copy_gbs={:.2} sum_gbs={:.2} fedavg_gbs={:.2} fedavg_vs_reference={:.0}% fedavg_alloc_gbs={:.2} streaming_f64_gbs={:.2}",
        input_bytes / 1e6,
        gbs(copy),
        gbs(sum),
        gbs(kernel),
        100.0 * gbs(kernel) / reference,
        gbs(batch),
        gbs(streaming),
    );
    Ok(())
}

/// Options of `fedctl bench rounds`.
#[derive(Clone, Debug)]
pub struct RoundsOptions {
    /// Edges.
    pub edges: usize,
    /// Float32 parameters of the synthetic model.
    pub params: usize,
    /// Rounds.
    pub rounds: u64,
    /// Run every node as its own `fedd` process (for per-node peak RSS).
    pub processes: bool,
}

fn bench_config(
    role: fedd::config::Role,
    dir: &std::path::Path,
    opts: &RoundsOptions,
    seed: u64,
) -> fedd::config::NodeConfig {
    let mut cfg = fedd::config::NodeConfig {
        role,
        data_dir: dir.to_owned(),
        seed,
        ..fedd::config::NodeConfig::default()
    };
    cfg.model.kind = fedd::workload::WorkloadKind::Bench;
    cfg.model.bench_params = opts.params;
    cfg.holdout.machines = 0;
    let p = &mut cfg.protocol;
    p.federation = "bench".into();
    p.heartbeat_ms = 2_000;
    p.member_timeout_ms = 10_000;
    p.lease_ms = 10_000;
    p.election_stagger_ms = 100;
    p.round_gap_ms = 0;
    p.round_deadline_ms = 600_000;
    p.min_participants = opts.edges;
    p.max_participants = opts.edges;
    p.min_fit_fraction = 1.0;
    p.max_version = Some(opts.rounds);
    p.criterion = netproto::wire::Criterion {
        min_failures: 0,
        min_windows: 0,
    };
    cfg
}

/// The configuration of bench edge `i` (seed `i + 1`), bootstrapping from `anchor`.
fn edge_config(
    opts: &RoundsOptions,
    root: &std::path::Path,
    i: usize,
    anchor: &str,
) -> fedd::config::NodeConfig {
    let mut cfg = bench_config(
        fedd::config::Role::Edge,
        &root.join(format!("edge-{i}")),
        opts,
        i as u64 + 1,
    );
    cfg.anchor = Some(anchor.to_owned());
    cfg
}

/// Peak resident set size (VmHWM) of process `pid`, in MB.
fn peak_rss_mb(pid: u32) -> f64 {
    let path = format!("/proc/{pid}/status");
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Runs `fedctl bench rounds` and prints its one summary line.
pub fn rounds(opts: RoundsOptions) -> Result<()> {
    use fedd::config::Role;
    if opts.edges == 0 || opts.params == 0 || opts.rounds == 0 {
        bail!("--edges, --params and --rounds must be positive");
    }
    let root = tempfile::tempdir()?;
    let anchor_dir = root.path().join("anchor");
    let anchor_cfg = bench_config(Role::Anchor, &anchor_dir, &opts, 0);
    let deadline = std::time::Duration::from_secs(120 + 180 * opts.rounds);
    let (status, anchor_rss, edge_rss) = if opts.processes {
        run_processes(&opts, root.path(), anchor_cfg, deadline)?
    } else {
        let rt = tokio::runtime::Runtime::new()?;
        let st = rt.block_on(run_in_process(&opts, root.path(), anchor_cfg, deadline))?;
        let rss = peak_rss_mb(std::process::id());
        (st, rss, rss)
    };
    // Verify the final global model against the expected average, bit for bit.
    let store = fedd::store::AnchorStore::open(&anchor_dir.join("db"))?;
    let latest = store
        .latest_version()?
        .ok_or_else(|| anyhow::anyhow!("the anchor committed nothing"))?;
    let bytes = std::fs::read(fedd::models::model_path(
        &anchor_dir.join("models"),
        &latest.digest,
    ))?;
    let global = model::ParamSet::from_bytes(&bytes)?;
    let seeds: Vec<u64> = (1..=opts.edges as u64).collect();
    let mut expected = fedd::workload::bench_genesis(opts.params).values().to_vec();
    for _ in 0..latest.version {
        expected = fedd::workload::bench_expected_round(&expected, &seeds);
    }
    let check = if latest.version == opts.rounds && global.values() == expected.as_slice() {
        "ok"
    } else {
        "mismatch"
    };
    let mut commits: Vec<u64> = status
        .rounds
        .iter()
        .filter(|r| r.version.is_some())
        .map(|r| r.committed_at_ms)
        .collect();
    commits.sort_unstable();
    let first = status
        .rounds
        .iter()
        .find(|r| r.version.is_some())
        .map_or(0, |r| r.committed_at_ms.saturating_sub(r.duration_ms));
    let mut per_round: Vec<f64> = std::iter::once(first)
        .chain(commits.iter().copied())
        .collect::<Vec<_>>()
        .windows(2)
        .map(|w| w[1].saturating_sub(w[0]) as f64)
        .collect();
    per_round.sort_by(f64::total_cmp);
    // Egress during the measured rounds: up to the last commit (the final version's
    // distribution after it belongs to a next round). It covers R model distributions:
    // the genesis model's for round 1 and each commit's but the last.
    let egress_bytes = status
        .rounds
        .iter()
        .filter(|r| r.version.is_some())
        .map(|r| r.bytes_out_at_commit)
        .max()
        .unwrap_or(status.bytes_out);
    let egress = egress_bytes as f64 / 1e6 / opts.rounds as f64;
    println!(
        "bench: edges={} params={} rounds={} per_round_ms_median={:.1} per_round_ms_p90={:.1} anchor_peak_rss_mb={:.1} edge_peak_rss_mb={:.1} anchor_egress_mb_per_round={:.2} check={check}",
        opts.edges,
        opts.params,
        opts.rounds,
        percentile(&per_round, 0.5),
        percentile(&per_round, 0.9),
        anchor_rss,
        edge_rss,
        egress,
    );
    if check != "ok" {
        bail!(
            "the final global model (version {}) differs from the expected average",
            latest.version
        );
    }
    Ok(())
}

async fn wait_version(
    mut status: tokio::sync::watch::Receiver<fedd::node::NodeStatus>,
    version: u64,
) -> Result<fedd::node::NodeStatus> {
    loop {
        let st = status.borrow_and_update().clone();
        if st.version >= version {
            return Ok(st);
        }
        status.changed().await?;
    }
}

async fn run_in_process(
    opts: &RoundsOptions,
    root: &std::path::Path,
    anchor_cfg: fedd::config::NodeConfig,
    deadline: std::time::Duration,
) -> Result<fedd::node::NodeStatus> {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let anchor = fedd::node::start(anchor_cfg, shutdown.clone()).await?;
    let mut edges = vec![];
    for i in 0..opts.edges {
        let cfg = edge_config(opts, root, i, &anchor.addr.to_string());
        edges.push(fedd::node::start(cfg, shutdown.clone()).await?);
    }
    let waited =
        tokio::time::timeout(deadline, wait_version(anchor.status.clone(), opts.rounds)).await;
    // Let the final status (with bytes_out) settle before stopping.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let status = anchor.status.borrow().clone();
    shutdown.cancel();
    for h in std::iter::once(anchor).chain(edges) {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(30), h.task).await;
    }
    waited.map_err(|_| anyhow::anyhow!("the federation did not finish within {deadline:?}"))??;
    Ok(status)
}

fn run_processes(
    opts: &RoundsOptions,
    root: &std::path::Path,
    anchor_cfg: fedd::config::NodeConfig,
    deadline: std::time::Duration,
) -> Result<(fedd::node::NodeStatus, f64, f64)> {
    use std::process::{Command, Stdio};
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let fedd_bin = std::env::current_exe()?
        .parent()
        .map(|d| d.join("fedd"))
        .filter(|p| p.exists())
        .ok_or_else(|| {
            anyhow::anyhow!("the fedd binary must sit next to fedctl (cargo build --release)")
        })?;
    let spawn = |cfg: &fedd::config::NodeConfig, role: &str| -> Result<Kill> {
        std::fs::create_dir_all(&cfg.data_dir)?;
        let path = cfg.data_dir.join("node.toml");
        std::fs::write(&path, toml::to_string(cfg)?)?;
        let log = std::fs::File::create(cfg.data_dir.join("node.log"))?;
        Ok(Kill(
            Command::new(&fedd_bin)
                .arg(role)
                .arg("--config")
                .arg(&path)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()?,
        ))
    };
    let anchor_dir = anchor_cfg.data_dir.clone();
    let anchor = spawn(&anchor_cfg, "anchor")?;
    let start = std::time::Instant::now();
    let addr = loop {
        if let Ok(s) = fedd::node::read_status(&anchor_dir)
            && let Some(a) = s.listen.first()
        {
            break a.clone();
        }
        if start.elapsed() > std::time::Duration::from_secs(30) {
            bail!("the anchor did not start");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut edges = vec![];
    for i in 0..opts.edges {
        let cfg = edge_config(opts, root, i, &addr);
        edges.push(spawn(&cfg, "edge")?);
    }
    let status = loop {
        if let Ok(s) = fedd::node::read_status(&anchor_dir)
            && s.version >= opts.rounds
        {
            std::thread::sleep(std::time::Duration::from_millis(300));
            break fedd::node::read_status(&anchor_dir)?;
        }
        if start.elapsed() > deadline {
            bail!("the federation did not finish within {deadline:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let anchor_rss = peak_rss_mb(anchor.0.id());
    let edge_rss = edges
        .iter()
        .map(|e| peak_rss_mb(e.0.id()))
        .fold(0f64, f64::max);
    drop(edges);
    // SIGKILL is fine: the final version is committed; the store is reopened afterwards.
    drop(anchor);
    Ok((status, anchor_rss, edge_rss))
}
