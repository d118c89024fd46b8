//! In-process federated learning simulation, and centralized training with the same
//! validation and model-selection rules, for studying RUL models on one machine.
//!
//! The simulation uses the real aggregation code ([`fedavg`]) and the real client
//! step ([`train_local`], with the FedProx proximal term when asked):
//!
//! 1. [`prepare`] holds out whole engines for validation, deals the remaining engines
//!    to `K` simulated edges by a [`Split`], and builds the **federated scaler**: each
//!    edge fits min/max on its own engines and the scaler is their
//!    [`Scaler::merge`] (never one edge's own fit, and never fitted on validation
//!    engines).
//! 2. [`run_federated`] runs rounds: every edge trains `local_epochs` from the
//!    current global model, the server averages the updates weighted by window
//!    count, and the new global model is validated on the held-out engines.
//! 3. [`run_centralized`] trains one model on all training engines, validating after
//!    every epoch.
//!
//! Both keep the parameters with the lowest validation RMSE (model selection) and
//! stop after `patience` steps without improvement (early stopping); validation data
//! never reaches training. Everything random derives from one seed, so a run is
//! reproducible bit for bit on the same machine.

use std::sync::atomic::AtomicBool;

use serde::{Deserialize, Serialize};

use crate::aggregate::{AggregateError, fedavg};
use crate::data::{Dataset, Scaler, Trajectory, WindowConfig, make_windows, split_machines};
use crate::metrics::Metrics;
use crate::net::{ModelSpec, try_init_params};
use crate::params::ParamSet;
use crate::rng::SplitMix64;
use crate::train::{
    EpochControl, EpochEnd, TrainConfig, TrainError, evaluate, train_local, train_with_hook,
};

/// Errors of a simulation run.
#[derive(Debug, thiserror::Error)]
pub enum FedSimError {
    /// A setting is out of range (the message says which).
    #[error("invalid simulation config: {0}")]
    InvalidConfig(String),
    /// Training, evaluation or model construction failed.
    #[error(transparent)]
    Train(#[from] TrainError),
    /// Aggregation failed.
    #[error(transparent)]
    Aggregate(#[from] AggregateError),
}

/// How training engines are dealt to the simulated edges. Engines are never cut:
/// each edge holds whole run-to-failure trajectories.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// Engines shuffled (seeded) and dealt evenly; edge sizes differ by at most one.
    #[default]
    Iid,
    /// Engines shuffled and dealt in uneven shares ([`quantity_shares`]).
    Quantity,
    /// Engines sorted by lifetime and cut into contiguous blocks of equal size:
    /// edge 0 holds the shortest-lived engines, the last edge the longest-lived.
    Lifetime,
}

impl Split {
    /// All splits, in a fixed order.
    pub const ALL: [Split; 3] = [Split::Iid, Split::Quantity, Split::Lifetime];

    /// The name used on command lines and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Split::Iid => "iid",
            Split::Quantity => "quantity",
            Split::Lifetime => "lifetime",
        }
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Split {
    type Err = FedSimError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Split::ALL
            .into_iter()
            .find(|v| v.name() == s)
            .ok_or_else(|| {
                FedSimError::InvalidConfig(format!(
                    "unknown split {s:?} (iid, quantity or lifetime)"
                ))
            })
    }
}

/// Shares of the engines per edge for [`Split::Quantity`]: `40/25/15/10/10 %` for five
/// edges (the usual example), otherwise proportional to `1 / (i + 1)` (Zipf), which
/// is close to it. The shares sum to 1.
pub fn quantity_shares(edges: usize) -> Vec<f64> {
    if edges == 5 {
        return vec![0.40, 0.25, 0.15, 0.10, 0.10];
    }
    let raw: Vec<f64> = (0..edges).map(|i| 1.0 / (i as f64 + 1.0)).collect();
    let total: f64 = raw.iter().sum();
    raw.into_iter().map(|w| w / total).collect()
}

/// Engine counts for `shares` of `n` engines: largest remainder, at least one each
/// (needs `n >= shares.len()`).
fn counts_for(shares: &[f64], n: usize) -> Vec<usize> {
    let k = shares.len();
    let spare = n - k;
    let exact: Vec<f64> = shares.iter().map(|s| s * spare as f64).collect();
    let mut counts: Vec<usize> = exact.iter().map(|e| e.floor() as usize).collect();
    let mut left = spare - counts.iter().sum::<usize>();
    let mut by_remainder: Vec<usize> = (0..k).collect();
    by_remainder.sort_by(|&a, &b| {
        let (ra, rb) = (exact[a] - exact[a].floor(), exact[b] - exact[b].floor());
        rb.total_cmp(&ra).then(a.cmp(&b))
    });
    for &i in by_remainder.iter().cycle().take(k * 2) {
        if left == 0 {
            break;
        }
        counts[i] += 1;
        left -= 1;
    }
    counts.iter().map(|c| c + 1).collect()
}

/// Deals whole engines to `edges` simulated edges according to `split` (see
/// [`Split`]); deterministic in `seed`. Every edge gets at least one engine.
pub fn split_clients(
    trajs: &[Trajectory],
    edges: usize,
    split: Split,
    seed: u64,
) -> Result<Vec<Vec<Trajectory>>, FedSimError> {
    if edges == 0 || edges > trajs.len() {
        return Err(FedSimError::InvalidConfig(format!(
            "{edges} edges for {} engines: need 1 to {} edges",
            trajs.len(),
            trajs.len()
        )));
    }
    let mut order: Vec<usize> = (0..trajs.len()).collect();
    let counts = match split {
        Split::Iid | Split::Quantity => {
            SplitMix64::derive(seed, 0xc11e).shuffle(&mut order);
            if split == Split::Iid {
                // Round-robin-equivalent sizes: the first `n % k` edges get one more.
                let (base, extra) = (trajs.len() / edges, trajs.len() % edges);
                (0..edges).map(|i| base + usize::from(i < extra)).collect()
            } else {
                counts_for(&quantity_shares(edges), trajs.len())
            }
        }
        Split::Lifetime => {
            order.sort_by_key(|&i| (trajs[i].len(), trajs[i].machine));
            let (base, extra) = (trajs.len() / edges, trajs.len() % edges);
            (0..edges).map(|i| base + usize::from(i < extra)).collect()
        }
    };
    let mut out = Vec::with_capacity(edges);
    let mut next = order.into_iter();
    for c in counts {
        out.push(next.by_ref().take(c).map(|i| trajs[i].clone()).collect());
    }
    Ok(out)
}

/// The federated scaler: each edge's own min/max, merged; `None` if no edge has rows.
pub fn federated_scaler(edges: &[Vec<Trajectory>]) -> Option<Scaler> {
    edges
        .iter()
        .filter_map(|e| Scaler::fit(e))
        .reduce(|a, b| a.merge(&b))
}

/// Where the training engines go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// All training engines in one place.
    Centralized,
    /// Dealt to simulated edges.
    Federated {
        /// Number of edges.
        edges: usize,
        /// How engines are dealt.
        split: Split,
    },
}

/// Data ready for [`run_centralized`] or [`run_federated`].
#[derive(Clone, Debug)]
pub struct Prepared {
    /// The scaler fitted on the training engines (merged over the edges when federated).
    pub scaler: Scaler,
    /// Training windows per edge (one entry when centralized).
    pub edges: Vec<Dataset>,
    /// Engine ids per edge.
    pub edge_engines: Vec<Vec<u32>>,
    /// Windows of the held-out validation engines (capped targets).
    pub val: Dataset,
    /// The held-out engine ids.
    pub val_engines: Vec<u32>,
}

impl Prepared {
    /// All training windows, over all edges.
    pub fn train_windows(&self) -> usize {
        self.edges.iter().map(Dataset::len).sum()
    }
}

/// Holds out `val_engines` whole engines (chosen by `val_seed`), deals the rest
/// according to `layout` (dealing seeded by `seed`), fits the scaler on the training
/// engines only (per edge, merged) and cuts windows.
pub fn prepare(
    trajs: &[Trajectory],
    val_engines: usize,
    val_seed: u64,
    layout: Layout,
    seed: u64,
    window: &WindowConfig,
) -> Result<Prepared, FedSimError> {
    if val_engines == 0 || val_engines >= trajs.len() {
        return Err(FedSimError::InvalidConfig(format!(
            "{val_engines} validation engines out of {}: need at least one for validation and one for training",
            trajs.len()
        )));
    }
    let (train, val) = split_machines(trajs, val_engines, val_seed);
    let groups = match layout {
        Layout::Centralized => vec![train],
        Layout::Federated { edges, split } => split_clients(&train, edges, split, seed)?,
    };
    let scaler = federated_scaler(&groups)
        .ok_or_else(|| FedSimError::InvalidConfig("no training rows".into()))?;
    let edges: Vec<Dataset> = groups
        .iter()
        .map(|g| make_windows(g, &scaler, window))
        .collect();
    if let Some(i) = edges.iter().position(Dataset::is_empty) {
        return Err(FedSimError::InvalidConfig(format!(
            "edge {i} has no engine of at least {} cycles",
            window.window
        )));
    }
    let val_ds = make_windows(&val, &scaler, window);
    if val_ds.is_empty() {
        return Err(FedSimError::InvalidConfig(
            "no validation engine is as long as the window".into(),
        ));
    }
    Ok(Prepared {
        scaler,
        edges,
        edge_engines: groups
            .iter()
            .map(|g| g.iter().map(|t| t.machine).collect())
            .collect(),
        val: val_ds,
        val_engines: val.iter().map(|t| t.machine).collect(),
    })
}

/// The server strategy of a simulation.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FedStrategy {
    /// FedAvg: plain local training, window-weighted average.
    #[default]
    FedAvg,
    /// FedProx: local loss plus `mu/2 · ||w - w_global||²`, window-weighted average.
    FedProx {
        /// Proximal weight.
        mu: f32,
    },
}

impl std::fmt::Display for FedStrategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FedStrategy::FedAvg => f.write_str("fedavg"),
            FedStrategy::FedProx { mu } => write!(f, "fedprox(mu={mu})"),
        }
    }
}

/// Optimisation settings shared by centralized and federated runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// Adam learning rate of the first epoch or round.
    pub lr: f64,
    /// Multiplier of the learning rate after each epoch or round (1 = constant).
    pub lr_decay: f64,
    /// Windows per mini-batch.
    pub batch_size: usize,
    /// Stop after this many epochs or rounds without a better validation RMSE
    /// (`None`: run them all). The best model is kept either way.
    pub patience: Option<usize>,
    /// Seed of initialisation and shuffling (and of the client dealing in [`prepare`]).
    pub seed: u64,
}

impl Default for Schedule {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            lr_decay: 1.0,
            batch_size: 64,
            patience: None,
            seed: 0,
        }
    }
}

impl Schedule {
    fn validate(&self) -> Result<(), FedSimError> {
        if !(self.lr_decay.is_finite() && self.lr_decay > 0.0 && self.lr_decay <= 1.0) {
            return Err(FedSimError::InvalidConfig(format!(
                "lr_decay {} must be in (0, 1]",
                self.lr_decay
            )));
        }
        if self.patience == Some(0) {
            return Err(FedSimError::InvalidConfig(
                "patience must be at least 1".into(),
            ));
        }
        Ok(())
    }

    fn lr_at(&self, step: usize) -> f64 {
        self.lr * self.lr_decay.powi(i32::try_from(step).unwrap_or(i32::MAX))
    }
}

/// Settings of [`run_federated`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FedConfig {
    /// Number of rounds (upper bound when early stopping).
    pub rounds: usize,
    /// Local epochs per round.
    pub local_epochs: usize,
    /// Server strategy.
    pub strategy: FedStrategy,
    /// Learning rate, batch size, early stopping, seed.
    pub schedule: Schedule,
}

/// One epoch (centralized) or round (federated) as seen on the validation engines.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    /// 1-based epoch or round number.
    pub step: usize,
    /// Mean training loss (MSE on `RUL / 125`; window-weighted over edges).
    pub train_loss: f32,
    /// Learning rate used in this step.
    pub lr: f64,
    /// Metrics of the model after this step on the validation windows.
    pub val: Metrics,
    /// Whether this is the best validation RMSE so far (the kept model).
    pub best: bool,
}

/// Result of a run: the selected model and the history.
#[derive(Clone, Debug)]
pub struct FitOutcome {
    /// Parameters with the lowest validation RMSE.
    pub params: ParamSet,
    /// The step those parameters come from.
    pub best_step: usize,
    /// Their validation metrics.
    pub best_val: Metrics,
    /// One report per step run.
    pub history: Vec<StepReport>,
    /// Whether patience ran out before the last step.
    pub stopped_early: bool,
}

/// Tracks the best model and the patience counter.
struct Selector {
    best: Option<(usize, Metrics, ParamSet)>,
    since_best: usize,
    patience: Option<usize>,
}

impl Selector {
    /// Records a step; returns (is best, should stop).
    fn record(&mut self, step: usize, val: &Metrics, params: &ParamSet) -> (bool, bool) {
        let better = self.best.as_ref().is_none_or(|(_, m, _)| val.rmse < m.rmse);
        if better {
            self.best = Some((step, val.clone(), params.clone()));
            self.since_best = 0;
        } else {
            self.since_best += 1;
        }
        let stop = self.patience.is_some_and(|p| self.since_best >= p);
        (better, stop)
    }

    fn finish(
        self,
        history: Vec<StepReport>,
        stopped_early: bool,
    ) -> Result<FitOutcome, FedSimError> {
        let (best_step, best_val, params) = self
            .best
            .ok_or_else(|| FedSimError::InvalidConfig("no step was run".into()))?;
        Ok(FitOutcome {
            params,
            best_step,
            best_val,
            history,
            stopped_early,
        })
    }
}

/// Centralized training of `spec` on `train` for up to `epochs` epochs (one Adam
/// state throughout), validating on `val` after each epoch; `on_epoch` sees every
/// report (for progress output).
pub fn run_centralized(
    spec: &ModelSpec,
    train: &Dataset,
    val: &Dataset,
    epochs: usize,
    schedule: &Schedule,
    cancel: &AtomicBool,
    on_epoch: &mut dyn FnMut(&StepReport),
) -> Result<FitOutcome, FedSimError> {
    schedule.validate()?;
    let init = try_init_params(spec, schedule.seed)?;
    let cfg = TrainConfig {
        epochs,
        batch_size: schedule.batch_size,
        lr: schedule.lr,
        prox_mu: None,
        seed: schedule.seed,
    };
    let mut selector = Selector {
        best: None,
        since_best: 0,
        patience: schedule.patience,
    };
    let mut history = Vec::new();
    let mut failure: Option<TrainError> = None;
    let mut stopped_early = false;
    let mut hook = |end: EpochEnd<'_>| -> EpochControl {
        let val_metrics = match evaluate(spec, end.params, val) {
            Ok(m) => m,
            Err(e) => {
                failure = Some(e);
                return EpochControl::Stop;
            }
        };
        let (best, stop) = selector.record(end.epoch, &val_metrics, end.params);
        let report = StepReport {
            step: end.epoch,
            train_loss: end.loss,
            lr: schedule.lr_at(end.epoch - 1),
            val: val_metrics,
            best,
        };
        on_epoch(&report);
        history.push(report);
        if stop && end.epoch < epochs {
            stopped_early = true;
            return EpochControl::Stop;
        }
        EpochControl::SetLr(schedule.lr_at(end.epoch))
    };
    train_with_hook(spec, &init, train, &cfg, cancel, &mut hook)?;
    if let Some(e) = failure {
        return Err(e.into());
    }
    selector.finish(history, stopped_early)
}

/// Federated simulation: `edges[k]` is edge `k`'s training data; the global model is
/// validated on `val` after every round; `on_round` sees every report.
pub fn run_federated(
    spec: &ModelSpec,
    edges: &[Dataset],
    val: &Dataset,
    cfg: &FedConfig,
    cancel: &AtomicBool,
    on_round: &mut dyn FnMut(&StepReport),
) -> Result<FitOutcome, FedSimError> {
    cfg.schedule.validate()?;
    if cfg.rounds == 0 || cfg.local_epochs == 0 || edges.is_empty() {
        return Err(FedSimError::InvalidConfig(
            "rounds, local epochs and edges must each be at least 1".into(),
        ));
    }
    let prox_mu = match cfg.strategy {
        FedStrategy::FedAvg => None,
        FedStrategy::FedProx { mu } => Some(mu),
    };
    let mut global = try_init_params(spec, cfg.schedule.seed)?;
    let mut selector = Selector {
        best: None,
        since_best: 0,
        patience: cfg.schedule.patience,
    };
    let mut history = Vec::new();
    let mut stopped_early = false;
    for round in 1..=cfg.rounds {
        let lr = cfg.schedule.lr_at(round - 1);
        let mut updates = Vec::with_capacity(edges.len());
        for (k, data) in edges.iter().enumerate() {
            let local = TrainConfig {
                epochs: cfg.local_epochs,
                batch_size: cfg.schedule.batch_size,
                lr,
                prox_mu,
                seed: SplitMix64::derive(cfg.schedule.seed, (round as u64) << 20 | k as u64)
                    .next_u64(),
            };
            updates.push(train_local(spec, &global, data, &local, cancel)?);
        }
        let weighted: Vec<(&ParamSet, u64)> =
            updates.iter().map(|u| (&u.params, u.samples)).collect();
        global = fedavg(&weighted)?;
        let total: u64 = updates.iter().map(|u| u.samples).sum();
        let train_loss = updates
            .iter()
            .map(|u| f64::from(u.loss) * u.samples as f64)
            .sum::<f64>()
            / total.max(1) as f64;
        let val_metrics = evaluate(spec, &global, val)?;
        let (best, stop) = selector.record(round, &val_metrics, &global);
        let report = StepReport {
            step: round,
            train_loss: train_loss as f32,
            lr,
            val: val_metrics,
            best,
        };
        on_round(&report);
        history.push(report);
        if stop && round < cfg.rounds {
            stopped_early = true;
            break;
        }
    }
    selector.finish(history, stopped_early)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::net::Arch;
    use crate::synthetic::{SyntheticConfig, generate};

    fn engines(n: usize) -> Vec<Trajectory> {
        (0..n)
            .map(|m| Trajectory {
                machine: m as u32 + 1,
                // Lifetimes 40, 47, 54, ... in a scrambled order.
                rows: (0..40 + (m * 7) % (n * 7))
                    .map(|c| vec![c as f32, m as f32])
                    .collect(),
            })
            .collect()
    }

    fn ids(groups: &[Vec<Trajectory>]) -> Vec<Vec<u32>> {
        groups
            .iter()
            .map(|g| g.iter().map(|t| t.machine).collect())
            .collect()
    }

    #[test]
    fn splits_keep_engines_whole_and_disjoint() {
        let trajs = engines(80);
        for split in Split::ALL {
            let groups = split_clients(&trajs, 5, split, 3).unwrap();
            assert_eq!(groups.len(), 5);
            let mut all: Vec<u32> = groups.iter().flatten().map(|t| t.machine).collect();
            all.sort_unstable();
            assert_eq!(all, (1..=80).collect::<Vec<_>>(), "{split}");
            assert!(groups.iter().all(|g| !g.is_empty()));
            // Reproducible in the seed.
            assert_eq!(
                ids(&groups),
                ids(&split_clients(&trajs, 5, split, 3).unwrap())
            );
            assert_eq!(split.name().parse::<Split>().unwrap(), split);
        }
        assert!("zipf".parse::<Split>().is_err());
        assert!(split_clients(&trajs, 0, Split::Iid, 0).is_err());
        assert!(split_clients(&trajs, 81, Split::Iid, 0).is_err());
    }

    #[test]
    fn iid_split_is_even_and_shuffled() {
        let trajs = engines(82);
        let groups = split_clients(&trajs, 5, Split::Iid, 1).unwrap();
        let sizes: Vec<usize> = groups.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![17, 17, 16, 16, 16]);
        assert_ne!(ids(&groups)[0], (1..=17).collect::<Vec<_>>());
        assert_ne!(
            ids(&groups),
            ids(&split_clients(&trajs, 5, Split::Iid, 2).unwrap())
        );
    }

    #[test]
    fn quantity_split_follows_the_shares() {
        let shares = quantity_shares(5);
        assert_eq!(shares, vec![0.40, 0.25, 0.15, 0.10, 0.10]);
        for k in [1, 2, 3, 7] {
            let s = quantity_shares(k);
            assert!((s.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            assert!(s.windows(2).all(|w| w[0] >= w[1]));
        }
        let groups = split_clients(&engines(80), 5, Split::Quantity, 1).unwrap();
        let sizes: Vec<usize> = groups.iter().map(Vec::len).collect();
        assert_eq!(sizes.iter().sum::<usize>(), 80);
        // 75 spare engines shared 40/25/15/10/10 (30, 18.75, 11.25, 7.5, 7.5) plus one each.
        assert_eq!(sizes, vec![31, 20, 12, 9, 8]);
        // Five engines for five edges: one each.
        let tiny = split_clients(&engines(5), 5, Split::Quantity, 1).unwrap();
        assert!(tiny.iter().all(|g| g.len() == 1));
    }

    #[test]
    fn lifetime_split_is_sorted_blocks() {
        let trajs = engines(20);
        let groups = split_clients(&trajs, 4, Split::Lifetime, 9).unwrap();
        assert!(groups.iter().all(|g| g.len() == 5));
        for pair in groups.windows(2) {
            let longest = pair[0].iter().map(Trajectory::len).max().unwrap();
            let shortest = pair[1].iter().map(Trajectory::len).min().unwrap();
            assert!(longest <= shortest, "{longest} > {shortest}");
        }
        // Independent of the seed.
        assert_eq!(
            ids(&groups),
            ids(&split_clients(&trajs, 4, Split::Lifetime, 10).unwrap())
        );
    }

    #[test]
    fn federated_scaler_is_the_merge_of_edge_scalers() {
        let trajs = engines(12);
        let groups = split_clients(&trajs, 3, Split::Lifetime, 0).unwrap();
        let merged = federated_scaler(&groups).unwrap();
        assert_eq!(merged, Scaler::fit(&trajs).unwrap());
        // No edge's own fit is the global one (the lifetime split differs per edge).
        for g in &groups {
            assert_ne!(Scaler::fit(g).unwrap(), merged);
        }
        assert_eq!(federated_scaler(&[]), None);
    }

    #[test]
    fn prepare_holds_out_whole_engines_and_scales_on_training_only() {
        let trajs = engines(30);
        let layout = Layout::Federated {
            edges: 3,
            split: Split::Iid,
        };
        let p = prepare(&trajs, 6, 0, layout, 1, &WindowConfig::default()).unwrap();
        assert_eq!(p.val_engines.len(), 6);
        assert_eq!(p.edges.len(), 3);
        let mut all: Vec<u32> = p.edge_engines.iter().flatten().copied().collect();
        all.extend(&p.val_engines);
        all.sort_unstable();
        assert_eq!(all, (1..=30).collect::<Vec<_>>());
        let train: Vec<Trajectory> = trajs
            .iter()
            .filter(|t| !p.val_engines.contains(&t.machine))
            .cloned()
            .collect();
        assert_eq!(p.scaler, Scaler::fit(&train).unwrap());
        let windows = crate::data::count_windows(&train, &WindowConfig::default());
        assert_eq!(p.train_windows() as u64, windows);
        let central = prepare(
            &trajs,
            6,
            0,
            Layout::Centralized,
            1,
            &WindowConfig::default(),
        )
        .unwrap();
        assert_eq!(central.edges.len(), 1);
        assert_eq!(central.scaler, p.scaler);
        assert_eq!(central.val, p.val);
        assert!(
            prepare(
                &trajs,
                0,
                0,
                Layout::Centralized,
                1,
                &WindowConfig::default()
            )
            .is_err()
        );
        assert!(
            prepare(
                &trajs,
                30,
                0,
                Layout::Centralized,
                1,
                &WindowConfig::default()
            )
            .is_err()
        );
    }

    fn synthetic_prepared(layout: Layout) -> Prepared {
        let trajs = generate(&SyntheticConfig {
            machines: 16,
            seed: 5,
            ..SyntheticConfig::default()
        });
        prepare(&trajs, 4, 0, layout, 2, &WindowConfig::default()).unwrap()
    }

    fn cnn() -> ModelSpec {
        ModelSpec {
            arch: Arch::Cnn,
            window: 30,
            features: 14,
        }
    }

    #[test]
    fn federated_run_improves_validation_and_is_reproducible() {
        let p = synthetic_prepared(Layout::Federated {
            edges: 3,
            split: Split::Iid,
        });
        let spec = cnn();
        let init = crate::net::init_params(&spec, 7);
        let before = evaluate(&spec, &init, &p.val).unwrap().rmse;
        let cfg = FedConfig {
            rounds: 3,
            local_epochs: 1,
            strategy: FedStrategy::FedAvg,
            schedule: Schedule {
                seed: 7,
                lr: 2e-3,
                ..Schedule::default()
            },
        };
        let never = AtomicBool::new(false);
        let mut seen = Vec::new();
        let out = run_federated(&spec, &p.edges, &p.val, &cfg, &never, &mut |r| {
            seen.push(r.val.rmse)
        })
        .unwrap();
        assert_eq!(out.history.len(), 3);
        assert_eq!(seen.len(), 3);
        let best = seen.iter().copied().fold(f64::INFINITY, f64::min);
        assert_eq!(out.best_val.rmse, best);
        assert!(out.history[out.best_step - 1].best);
        assert!(best < 0.7 * before, "{before} -> {best}");
        assert_eq!(
            evaluate(&spec, &out.params, &p.val).unwrap().rmse,
            out.best_val.rmse
        );
        let again = run_federated(&spec, &p.edges, &p.val, &cfg, &never, &mut |_| {}).unwrap();
        assert_eq!(again.params.digest(), out.params.digest());

        // FedProx runs through the same loop.
        let prox = FedConfig {
            rounds: 1,
            strategy: FedStrategy::FedProx { mu: 0.1 },
            ..cfg.clone()
        };
        let one = run_federated(&spec, &p.edges, &p.val, &prox, &never, &mut |_| {}).unwrap();
        assert_eq!(one.history.len(), 1);
        assert_ne!(one.params.digest(), out.params.digest());
    }

    #[test]
    fn centralized_run_selects_the_best_epoch_and_stops_early() {
        let p = synthetic_prepared(Layout::Centralized);
        let spec = cnn();
        let never = AtomicBool::new(false);
        let schedule = Schedule {
            seed: 1,
            lr: 2e-3,
            lr_decay: 0.9,
            ..Schedule::default()
        };
        let out = run_centralized(
            &spec,
            &p.edges[0],
            &p.val,
            3,
            &schedule,
            &never,
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(out.history.len(), 3);
        assert!((out.history[1].lr - 2e-3 * 0.9).abs() < 1e-12);
        let best = out
            .history
            .iter()
            .map(|r| r.val.rmse)
            .fold(f64::INFINITY, f64::min);
        assert_eq!(best, out.best_val.rmse);
        assert_eq!(
            evaluate(&spec, &out.params, &p.val).unwrap().rmse,
            out.best_val.rmse
        );

        // Early stopping: the selector stops after `patience` steps without progress.
        let mut sel = Selector {
            best: None,
            since_best: 0,
            patience: Some(2),
        };
        let m = |rmse| Metrics {
            rmse,
            mae: 0.0,
            score: 0.0,
            late: 0,
            n: 1,
        };
        let params = crate::net::init_params(&spec, 0);
        assert_eq!(sel.record(1, &m(10.0), &params), (true, false));
        assert_eq!(sel.record(2, &m(11.0), &params), (false, false));
        assert_eq!(sel.record(3, &m(9.0), &params), (true, false));
        assert_eq!(sel.record(4, &m(9.5), &params), (false, false));
        assert_eq!(sel.record(5, &m(9.0), &params), (false, true));
        let bad = Schedule {
            patience: Some(0),
            ..Schedule::default()
        };
        assert!(run_centralized(&spec, &p.edges[0], &p.val, 1, &bad, &never, &mut |_| {}).is_err());
    }
}
