//! `fedctl train | predict | evaluate`: RUL models on NASA C-MAPSS files.
//!
//! `train` runs centralized training or the in-process federated simulation of
//! [`model::fedsim`] on a training file, selects the model by validation RMSE on
//! held-out whole engines and writes a self-contained [`ModelFile`]. `predict` and
//! `evaluate` need only that file and a test file (plus, for `evaluate`, the true
//! RUL file).
//!
//! Test engines are predicted from their last `window` cycles; an engine with fewer
//! recorded cycles is padded at the front by repeating its first row (see
//! [`model::data::final_windows_padded`]). Predictions below zero are clipped to 0
//! (a negative remaining life is never right).
//!
//! NASA's true-RUL file for the FD001 test engines is not always at hand, so
//! `train` also reports, and `evaluate --holdout` recomputes, the **test-protocol
//! metrics on the held-out validation engines**: each held-out engine is cut at every
//! raw RUL in [`TEST_RUL_RANGE`] (the range of FD001's test engines) and predicted from
//! the last window before the cut, scored against the raw RUL like the test set.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use indicatif::{ProgressBar, ProgressStyle};
use model::cmapss::{INFORMATIVE_SENSORS, load_rul, load_trajectories};
use model::data::{Trajectory, WindowConfig, cut_windows, final_windows_padded};
use model::fedsim::{
    FedConfig, FedStrategy, Layout, Schedule, Split, StepReport, prepare, run_centralized,
    run_federated,
};
use model::metrics::Metrics;
use model::modelfile::{ModelFile, ModelHeader, TrainingInfo};
use model::net::{Arch, ModelSpec};

/// Raw RULs at which held-out engines are cut for the test-protocol metrics: FD001's
/// test engines stop between 7 and 145 cycles before failure.
pub const TEST_RUL_RANGE: std::ops::RangeInclusive<usize> = 7..=145;

/// The trajectories of the engines in `ids`.
fn held_out(trajs: Vec<Trajectory>, ids: &[u32]) -> Vec<Trajectory> {
    trajs
        .into_iter()
        .filter(|t| ids.contains(&t.machine))
        .collect()
}

/// Test-protocol metrics of `params` on held-out run-to-failure engines (see the
/// module documentation); predictions are clipped at 0 like `predict`'s.
fn cut_metrics(
    spec: &ModelSpec,
    params: &model::params::ParamSet,
    engines: &[Trajectory],
    scaler: &model::data::Scaler,
    window: &WindowConfig,
) -> Result<Metrics> {
    let cuts = cut_windows(engines, scaler, window, TEST_RUL_RANGE);
    if cuts.is_empty() {
        bail!("no held-out engine is long enough for a test-style cut");
    }
    let pred: Vec<f32> = model::train::predict(spec, params, &cuts)?
        .into_iter()
        .map(|p| p.max(0.0))
        .collect();
    Ok(Metrics::compute(&pred, &cuts.targets))
}

/// Model architecture on the command line.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ArchArg {
    /// 1-D deep CNN after Li et al. 2018.
    Cnn,
    /// LSTM regressor.
    Lstm,
}

/// Client split on the command line.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum SplitArg {
    /// Engines shuffled and dealt evenly.
    Iid,
    /// Uneven engine counts (40/25/15/10/10 % for 5 edges).
    Quantity,
    /// Engines sorted by lifetime, contiguous blocks per edge.
    Lifetime,
}

/// Server strategy on the command line.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum StrategyArg {
    /// Window-weighted averaging of plain local updates.
    Fedavg,
    /// FedAvg with the proximal term `mu/2 ||w - w_global||²` in the local loss.
    Fedprox,
}

/// Arguments of `fedctl train`.
#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// C-MAPSS training file (e.g. train_FD001.txt).
    #[arg(long)]
    pub data: PathBuf,
    /// Architecture.
    #[arg(long = "model", value_enum)]
    pub arch: ArchArg,
    /// Simulate a federation instead of training centrally.
    #[arg(long)]
    pub federated: bool,
    /// Simulated edges (federated).
    #[arg(long, default_value_t = 5)]
    pub edges: usize,
    /// How engines are dealt to edges (federated).
    #[arg(long, value_enum, default_value = "iid")]
    pub split: SplitArg,
    /// Maximum number of rounds (federated).
    #[arg(long, default_value_t = 60)]
    pub rounds: usize,
    /// Local epochs per round (federated).
    #[arg(long, default_value_t = 1)]
    pub local_epochs: usize,
    /// Server strategy (federated).
    #[arg(long, value_enum, default_value = "fedavg")]
    pub strategy: StrategyArg,
    /// FedProx proximal weight.
    #[arg(long, default_value_t = 0.01)]
    pub mu: f32,
    /// Maximum number of epochs (centralized).
    #[arg(long, default_value_t = 60)]
    pub epochs: usize,
    /// Adam learning rate of the first epoch or round.
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    /// Learning-rate multiplier per epoch or round.
    #[arg(long, default_value_t = 0.95)]
    pub lr_decay: f64,
    /// Mini-batch size.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Stop after this many epochs or rounds without a better validation RMSE (0: never).
    #[arg(long, default_value_t = 12)]
    pub patience: usize,
    /// Whole training engines held out for validation (model selection).
    #[arg(long, default_value_t = 20)]
    pub val_engines: usize,
    /// Seed of the choice of validation engines (fixed across runs by default, so
    /// runs with different `--seed` are validated on the same engines).
    #[arg(long, default_value_t = 0)]
    pub val_seed: u64,
    /// Seed of initialisation, shuffling and client dealing.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where to write the model file.
    #[arg(long)]
    pub out: PathBuf,
}

/// Loads a C-MAPSS data file with `sensors` as features, naming the file on failure.
fn load(path: &Path, sensors: &[usize]) -> Result<Vec<model::data::Trajectory>> {
    let trajs = load_trajectories(path, sensors)?;
    if trajs.is_empty() {
        bail!("{}: no data rows", path.display());
    }
    Ok(trajs)
}

/// A progress bar on stderr that stays silent when stderr is not a terminal; report
/// lines go above it (or to stdout without a terminal).
struct Progress {
    bar: ProgressBar,
}

impl Progress {
    fn new(total: usize, unit: &str) -> Self {
        let bar = ProgressBar::new(total as u64);
        let template = format!("{{elapsed_precise}} [{{bar:30}}] {{pos}}/{{len}} {unit}s {{msg}}");
        if let Ok(style) = ProgressStyle::with_template(&template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.enable_steady_tick(Duration::from_millis(500));
        Self { bar }
    }

    /// Reports one epoch or round: its line, the bar's message and position.
    fn step(&self, kind: &str, total: usize, r: &StepReport) {
        self.line(&report_line(kind, total, r));
        self.bar.set_message(format!("val_rmse {:.3}", r.val.rmse));
        self.bar.inc(1);
    }

    fn line(&self, text: &str) {
        if self.bar.is_hidden() {
            println!("{text}");
        } else {
            self.bar.println(text);
        }
    }
}

fn report_line(kind: &str, total: usize, r: &StepReport) -> String {
    format!(
        "{kind} {:>3}/{total}: train_loss={:.5} val_rmse={:.3} val_score={:.1} val_mae={:.3} lr={:.2e}{}",
        r.step,
        r.train_loss,
        r.val.rmse,
        r.val.score,
        r.val.mae,
        r.lr,
        if r.best { " *" } else { "" }
    )
}

/// `fedctl train`.
pub fn train(args: &TrainArgs) -> Result<()> {
    let sensors = INFORMATIVE_SENSORS.to_vec();
    let trajs = load(&args.data, &sensors)?;
    let window = WindowConfig::default();
    let layout = if args.federated {
        Layout::Federated {
            edges: args.edges,
            split: match args.split {
                SplitArg::Iid => Split::Iid,
                SplitArg::Quantity => Split::Quantity,
                SplitArg::Lifetime => Split::Lifetime,
            },
        }
    } else {
        Layout::Centralized
    };
    let data = prepare(
        &trajs,
        args.val_engines,
        args.val_seed,
        layout,
        args.seed,
        &window,
    )?;
    let spec = ModelSpec {
        arch: match args.arch {
            ArchArg::Cnn => Arch::Cnn,
            ArchArg::Lstm => Arch::Lstm,
        },
        window: window.window,
        features: sensors.len(),
    };
    let schedule = Schedule {
        lr: args.lr,
        lr_decay: args.lr_decay,
        batch_size: args.batch_size,
        patience: (args.patience > 0).then_some(args.patience),
        seed: args.seed,
    };
    let strategy = match args.strategy {
        StrategyArg::Fedavg => FedStrategy::FedAvg,
        StrategyArg::Fedprox => FedStrategy::FedProx { mu: args.mu },
    };
    let description = match layout {
        Layout::Centralized => format!(
            "{:?} centralized, up to {} epochs, lr {} × {}/epoch, batch {}",
            spec.arch, args.epochs, args.lr, args.lr_decay, args.batch_size
        ),
        Layout::Federated { edges, split } => format!(
            "{:?} federated {edges} edges {split} {strategy}, up to {} rounds × {} local epochs, lr {} × {}/round, batch {}",
            spec.arch, args.rounds, args.local_epochs, args.lr, args.lr_decay, args.batch_size
        ),
    };
    println!("{description}");
    println!(
        "data: {} engines, {} training windows on {} site(s) ({}), {} validation windows from {} held-out engines",
        trajs.len(),
        data.train_windows(),
        data.edges.len(),
        data.edges
            .iter()
            .map(|d| d.len().to_string())
            .collect::<Vec<_>>()
            .join("/"),
        data.val.len(),
        data.val_engines.len()
    );

    let never = AtomicBool::new(false);
    let start = Instant::now();
    let outcome = match layout {
        Layout::Centralized => {
            let progress = Progress::new(args.epochs, "epoch");
            let out = run_centralized(
                &spec,
                &data.edges[0],
                &data.val,
                args.epochs,
                &schedule,
                &never,
                &mut |r| progress.step("epoch", args.epochs, r),
            );
            progress.bar.finish_and_clear();
            out?
        }
        Layout::Federated { .. } => {
            let cfg = FedConfig {
                rounds: args.rounds,
                local_epochs: args.local_epochs,
                strategy,
                schedule,
            };
            let progress = Progress::new(args.rounds, "round");
            let out = run_federated(&spec, &data.edges, &data.val, &cfg, &never, &mut |r| {
                progress.step("round", args.rounds, r);
            });
            progress.bar.finish_and_clear();
            out?
        }
    };
    let wall_s = start.elapsed().as_secs_f64();
    let held_out = held_out(trajs, &data.val_engines);
    let cut = cut_metrics(&spec, &outcome.params, &held_out, &data.scaler, &window)?;
    let best = &outcome.best_val;
    println!(
        "best: step={} val_rmse={:.3} val_score={:.1} val_mae={:.3} val_late={} val_n={} cut_rmse={:.3} cut_score={:.1} cut_n={} steps={} wall_s={:.1}{}",
        outcome.best_step,
        best.rmse,
        best.score,
        best.mae,
        best.late,
        best.n,
        cut.rmse,
        cut.score,
        cut.n,
        outcome.history.len(),
        wall_s,
        if outcome.stopped_early {
            " (stopped early)"
        } else {
            ""
        }
    );
    let file = ModelFile {
        header: ModelHeader {
            spec,
            window,
            sensors,
            scaler: data.scaler,
            training: TrainingInfo {
                description,
                seed: args.seed,
                val_engines: data.val_engines,
                best_step: outcome.best_step,
                val: Some(outcome.best_val.clone()),
                wall_s,
            },
        },
        params: outcome.params,
    };
    file.save(&args.out)?;
    println!("saved {}", args.out.display());
    Ok(())
}

/// The model's RUL predictions for every engine of a test file, in unit order.
fn predict_engines(
    model: &ModelFile,
    data: &Path,
    truth: Option<&[f32]>,
) -> Result<(Vec<u32>, Vec<f32>, Vec<f32>)> {
    let h = &model.header;
    let trajs = load(data, &h.sensors)?;
    let targets = match truth {
        Some(t) => {
            if t.len() != trajs.len() {
                bail!(
                    "{} has {} engines but the truth file has {} values",
                    data.display(),
                    trajs.len(),
                    t.len()
                );
            }
            t.to_vec()
        }
        None => vec![0.0; trajs.len()],
    };
    let windows = final_windows_padded(&trajs, &targets, &h.scaler, &h.window);
    let pred = model::train::predict(&h.spec, &model.params, &windows)
        .with_context(|| format!("predicting {}", data.display()))?;
    let pred = pred.into_iter().map(|p| p.max(0.0)).collect();
    Ok((trajs.iter().map(|t| t.machine).collect(), pred, targets))
}

/// `fedctl predict`: writes one `unit,rul` line per test engine (no header line).
pub fn predict(model_path: &Path, data: &Path, out: &Path) -> Result<()> {
    let model = ModelFile::load(model_path)?;
    let (units, pred, _) = predict_engines(&model, data, None)?;
    let mut text = String::new();
    for (u, p) in units.iter().zip(&pred) {
        text.push_str(&format!("{u},{p:.2}\n"));
    }
    let mut file =
        std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", out.display()))?;
    println!("{} engines -> {}", units.len(), out.display());
    Ok(())
}

/// What `fedctl evaluate` scores against.
#[derive(Debug)]
pub enum Truth<'a> {
    /// A C-MAPSS test file with its true-RUL file (one value per engine).
    RulFile(&'a Path),
    /// The training file the model was trained on: its held-out validation engines
    /// (recorded in the model file), cut test-style at every RUL in [`TEST_RUL_RANGE`].
    Holdout,
}

/// `fedctl evaluate`: prints `rmse=.. score=.. mae=.. late=.. n=..` against the true RUL.
pub fn evaluate(model_path: &Path, data: &Path, truth: Truth<'_>) -> Result<()> {
    let model = ModelFile::load(model_path)?;
    let m = match truth {
        Truth::RulFile(truth) => {
            let truth = load_rul(truth)?;
            let (_, pred, targets) = predict_engines(&model, data, Some(&truth))?;
            Metrics::compute(&pred, &targets)
        }
        Truth::Holdout => {
            let h = &model.header;
            let wanted = &h.training.val_engines;
            if wanted.is_empty() {
                bail!("{} records no held-out engines", model_path.display());
            }
            let held_out = held_out(load(data, &h.sensors)?, wanted);
            if held_out.len() != wanted.len() {
                bail!(
                    "{} lacks {} of the model's {} held-out engines: is it the training file?",
                    data.display(),
                    wanted.len() - held_out.len(),
                    wanted.len()
                );
            }
            cut_metrics(&h.spec, &model.params, &held_out, &h.scaler, &h.window)?
        }
    };
    println!(
        "rmse={:.3} score={:.2} mae={:.3} late={} n={}",
        m.rmse, m.score, m.mae, m.late, m.n
    );
    Ok(())
}
