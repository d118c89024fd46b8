//! Local training, evaluation and inference on burn's flex CPU backend.
//!
//! [`train_local`] is one federated client step: load the round's base model, run
//! `epochs` of Adam over shuffled mini-batches (optionally with the FedProx proximal
//! term), and return the new flat parameters. It checks a cancellation flag between
//! batches so a round that is abandoned stops training promptly.
//!
//! Training uses `Device::flex().autodiff()`; evaluation and prediction use the plain
//! `Device::flex()` in batches of [`EVAL_BATCH`] windows. Everything random (shuffling)
//! comes from [`TrainConfig::seed`], so a run is reproducible.

use std::sync::atomic::{AtomicBool, Ordering};

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{AdamConfig, GradientsParams};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::Dataset;
pub use crate::metrics::Metrics;
use crate::net::{ModelSpec, RUL_SCALE, RulNet, flatten_model, load_model};
use crate::params::ParamSet;
use crate::rng::SplitMix64;

/// Windows per forward pass in [`evaluate`] and [`predict`].
pub const EVAL_BATCH: usize = 1024;

/// Errors from training, evaluation and inference.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The model spec is unusable (zero or oversized input shape).
    #[error("invalid model spec: {0}")]
    InvalidSpec(String),
    /// A training hyper-parameter is out of range.
    #[error("invalid training config: {0}")]
    InvalidConfig(String),
    /// The parameter set does not have the layout of the spec's model.
    #[error("parameter layout does not match the model spec")]
    LayoutMismatch,
    /// The data set's shape differs from the model's input shape, or is inconsistent.
    #[error(
        "data set shape (window {window}, features {features}) does not fit the model (window {expected_window}, features {expected_features}) or is inconsistent"
    )]
    DataMismatch {
        /// Data set window.
        window: usize,
        /// Data set features.
        features: usize,
        /// Model window.
        expected_window: usize,
        /// Model features.
        expected_features: usize,
    },
    /// Training needs at least one sample.
    #[error("empty data set")]
    EmptyDataset,
    /// The cancellation flag was raised.
    #[error("training cancelled")]
    Cancelled,
    /// The loss or the parameters became NaN or infinite.
    #[error("training diverged (non-finite loss or parameters)")]
    Diverged,
    /// The tensor backend returned unexpected data.
    #[error("tensor backend error: {0}")]
    Backend(String),
}

/// Hyper-parameters of one local training run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    /// Passes over the local data (at least 1).
    pub epochs: usize,
    /// Windows per mini-batch (at least 1).
    pub batch_size: usize,
    /// Adam learning rate (positive, finite).
    pub lr: f64,
    /// FedProx: adds `mu/2 · ||w - w_base||²` to the loss when set and positive.
    pub prox_mu: Option<f32>,
    /// Seed of the mini-batch shuffling.
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 1,
            batch_size: 64,
            lr: 1e-3,
            prox_mu: None,
            seed: 0,
        }
    }
}

impl TrainConfig {
    /// Checks ranges.
    pub fn validate(&self) -> Result<(), TrainError> {
        if self.epochs == 0 {
            return Err(TrainError::InvalidConfig(
                "epochs must be at least 1".into(),
            ));
        }
        if self.batch_size == 0 {
            return Err(TrainError::InvalidConfig(
                "batch_size must be at least 1".into(),
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(TrainError::InvalidConfig(format!(
                "lr {} must be positive",
                self.lr
            )));
        }
        if let Some(mu) = self.prox_mu
            && !(mu.is_finite() && mu >= 0.0)
        {
            return Err(TrainError::InvalidConfig(format!(
                "prox_mu {mu} must be >= 0"
            )));
        }
        Ok(())
    }
}

/// Result of [`train_local`].
#[derive(Clone, Debug)]
pub struct TrainOutcome {
    /// The locally trained parameters (same layout as the base).
    pub params: ParamSet,
    /// Number of training windows (the FedAvg weight).
    pub samples: u64,
    /// Mean training MSE of the last epoch on `RUL / RUL_SCALE` (without the proximal term).
    pub loss: f32,
}

fn check_data(spec: &ModelSpec, data: &Dataset) -> Result<(), TrainError> {
    if data.window != spec.window || data.features != spec.features || !data.is_consistent() {
        return Err(TrainError::DataMismatch {
            window: data.window,
            features: data.features,
            expected_window: spec.window,
            expected_features: spec.features,
        });
    }
    if data.is_empty() {
        return Err(TrainError::EmptyDataset);
    }
    Ok(())
}

/// Sums `||w - w_base||²` over the model's parameters as a differentiable tensor.
struct ProximalTerm<'a> {
    bases: &'a [Tensor<1>],
    index: usize,
    sum: Option<Tensor<1>>,
}

impl ModuleVisitor for ProximalTerm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let Some(base) = self.bases.get(self.index) else {
            return;
        };
        self.index += 1;
        let n = param.lazy_shape().num_elements();
        let diff = param.val().reshape([n]) - base.clone();
        let sq = (diff.clone() * diff).sum();
        self.sum = Some(match self.sum.take() {
            Some(acc) => acc + sq,
            None => sq,
        });
    }
}

/// One local training run (a federated client update); see the [module docs](self).
pub fn train_local(
    spec: &ModelSpec,
    base: &ParamSet,
    data: &Dataset,
    cfg: &TrainConfig,
    cancel: &AtomicBool,
) -> Result<TrainOutcome, TrainError> {
    train_inner(spec, base, data, cfg, cancel, None)
}

/// What the hook of [`train_with_hook`] decides at the end of an epoch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum EpochControl {
    /// Go on with the current learning rate.
    Continue,
    /// Go on with this learning rate from the next epoch (a schedule).
    SetLr(f64),
    /// Stop now; the outcome holds the parameters of the epoch just finished.
    Stop,
}

/// The state [`train_with_hook`] shows its hook after each epoch.
#[derive(Debug)]
pub struct EpochEnd<'a> {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Mean training MSE of this epoch on `RUL / RUL_SCALE` (without the proximal term).
    pub loss: f32,
    /// The parameters after this epoch.
    pub params: &'a ParamSet,
}

/// [`train_local`] for centralized training: one optimizer state across all epochs,
/// and a hook after each epoch that sees the parameters (e.g. to validate them and
/// keep the best) and may change the learning rate or stop early.
pub fn train_with_hook(
    spec: &ModelSpec,
    base: &ParamSet,
    data: &Dataset,
    cfg: &TrainConfig,
    cancel: &AtomicBool,
    hook: &mut dyn FnMut(EpochEnd<'_>) -> EpochControl,
) -> Result<TrainOutcome, TrainError> {
    train_inner(spec, base, data, cfg, cancel, Some(hook))
}

fn train_inner(
    spec: &ModelSpec,
    base: &ParamSet,
    data: &Dataset,
    cfg: &TrainConfig,
    cancel: &AtomicBool,
    mut hook: Option<&mut dyn FnMut(EpochEnd<'_>) -> EpochControl>,
) -> Result<TrainOutcome, TrainError> {
    cfg.validate()?;
    check_data(spec, data)?;
    let device = Device::flex().autodiff();
    let mut model = load_model(spec, base, &device)?;
    let mut optim = AdamConfig::new().init();

    // FedProx anchors: the base model's tensors, constants on the autodiff device.
    let prox = match cfg.prox_mu {
        Some(mu) if mu > 0.0 => {
            let bases: Vec<Tensor<1>> = base
                .tensors()
                .map(|(_, v)| {
                    Tensor::<1>::from_data(TensorData::new(v.to_vec(), [v.len()]), &device)
                })
                .collect();
            Some((mu, bases))
        }
        _ => None,
    };

    let n = data.len();
    let sample_len = spec.window * spec.features;
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = SplitMix64::derive(cfg.seed, 0x7a1a);
    let mut xs = Vec::with_capacity(cfg.batch_size.min(n) * sample_len);
    let mut ys = Vec::with_capacity(cfg.batch_size.min(n));
    let mut last_epoch_loss = 0.0f64;
    let mut lr = cfg.lr;
    for epoch in 1..=cfg.epochs {
        rng.shuffle(&mut order);
        let mut loss_sum = 0.0f64;
        for batch in order.chunks(cfg.batch_size) {
            if cancel.load(Ordering::Relaxed) {
                return Err(TrainError::Cancelled);
            }
            xs.clear();
            ys.clear();
            for &i in batch {
                xs.extend_from_slice(&data.inputs[i * sample_len..(i + 1) * sample_len]);
                ys.push(data.targets[i] / RUL_SCALE);
            }
            let b = batch.len();
            let x = Tensor::<3>::from_data(
                TensorData::new(xs.clone(), [b, spec.window, spec.features]),
                &device,
            );
            let y = Tensor::<1>::from_data(TensorData::new(ys.clone(), [b]), &device);
            let err = model.forward(x) - y;
            let mse = (err.clone() * err).mean();
            let mse_value = f64::from(mse.clone().into_scalar::<f32>());
            if !mse_value.is_finite() {
                return Err(TrainError::Diverged);
            }
            loss_sum += mse_value * b as f64;
            let loss = match &prox {
                Some((mu, bases)) => {
                    let mut term = ProximalTerm {
                        bases,
                        index: 0,
                        sum: None,
                    };
                    model.visit(&mut term);
                    match term.sum {
                        Some(s) => mse + s.mul_scalar(*mu / 2.0),
                        None => mse,
                    }
                }
                None => mse,
            };
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(lr, model, grads);
        }
        last_epoch_loss = loss_sum / n as f64;
        if let Some(hook) = hook.as_mut() {
            let params = flatten_model(&model, base.specs())?;
            if !params.all_finite() {
                return Err(TrainError::Diverged);
            }
            let end = EpochEnd {
                epoch,
                loss: last_epoch_loss as f32,
                params: &params,
            };
            match hook(end) {
                EpochControl::Continue => {}
                EpochControl::SetLr(next) if next.is_finite() && next > 0.0 => lr = next,
                EpochControl::SetLr(_) => {
                    return Err(TrainError::InvalidConfig(
                        "a learning-rate schedule must stay positive".into(),
                    ));
                }
                EpochControl::Stop => {
                    return Ok(TrainOutcome {
                        params,
                        samples: n as u64,
                        loss: last_epoch_loss as f32,
                    });
                }
            }
        }
    }
    let params = flatten_model(&model, base.specs())?;
    if !params.all_finite() {
        return Err(TrainError::Diverged);
    }
    Ok(TrainOutcome {
        params,
        samples: n as u64,
        loss: last_epoch_loss as f32,
    })
}

/// Predicted RUL (in cycles) for every window of `data`, in order.
///
/// These are the model's raw outputs, not clipped: an untrained model can predict
/// negative or very large values.
pub fn predict(
    spec: &ModelSpec,
    params: &ParamSet,
    data: &Dataset,
) -> Result<Vec<f32>, TrainError> {
    check_data(spec, data)?;
    let device = Device::flex();
    let model = load_model(spec, params, &device)?;
    predict_with(&model, spec, data, &device)
}

fn predict_with(
    model: &RulNet,
    spec: &ModelSpec,
    data: &Dataset,
    device: &Device,
) -> Result<Vec<f32>, TrainError> {
    let sample_len = spec.window * spec.features;
    let mut out = Vec::with_capacity(data.len());
    for (chunk, targets) in data
        .inputs
        .chunks(EVAL_BATCH * sample_len)
        .zip(data.targets.chunks(EVAL_BATCH))
    {
        let b = targets.len();
        let x = Tensor::<3>::from_data(
            TensorData::new(chunk.to_vec(), [b, spec.window, spec.features]),
            device,
        );
        let y = model
            .forward(x)
            .mul_scalar(RUL_SCALE)
            .into_data()
            .convert::<f32>();
        let values = y
            .as_slice::<f32>()
            .map_err(|e| TrainError::Backend(format!("{e:?}")))?;
        out.extend_from_slice(values);
    }
    Ok(out)
}

/// RMSE, MAE, PHM08 score and late count of `params` on `data` (targets as stored,
/// i.e. capped for [`crate::data::make_windows`], raw for [`crate::data::last_windows`]).
pub fn evaluate(
    spec: &ModelSpec,
    params: &ParamSet,
    data: &Dataset,
) -> Result<Metrics, TrainError> {
    let pred = predict(spec, params, data)?;
    Ok(Metrics::compute(&pred, &data.targets))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::aggregate::fedavg;
    use crate::data::{Scaler, WindowConfig, make_windows};
    use crate::metrics::rmse;
    use crate::net::{Arch, init_params};
    use crate::synthetic::{SyntheticConfig, generate};
    use std::time::Instant;

    fn synthetic(machines: usize, seed: u64) -> Vec<crate::data::Trajectory> {
        generate(&SyntheticConfig {
            machines,
            seed,
            ..SyntheticConfig::default()
        })
    }

    /// Train and held-out sets with the scaler fitted on the union of the edges' training data.
    fn datasets(train_seeds: &[u64], machines: usize) -> (Vec<Dataset>, Dataset) {
        let cfg = WindowConfig::default();
        let trains: Vec<_> = train_seeds
            .iter()
            .map(|&s| synthetic(machines, s))
            .collect();
        let scaler = trains
            .iter()
            .filter_map(|t| Scaler::fit(t))
            .reduce(|a, b| a.merge(&b))
            .unwrap();
        let test = make_windows(&synthetic(6, 999), &scaler, &cfg);
        let trains = trains
            .iter()
            .map(|t| make_windows(t, &scaler, &cfg))
            .collect();
        (trains, test)
    }

    fn spec(arch: Arch) -> ModelSpec {
        ModelSpec {
            arch,
            window: 30,
            features: 14,
        }
    }

    fn mean_predictor_rmse(train: &Dataset, test: &Dataset) -> f64 {
        let mean = train.targets.iter().sum::<f32>() / train.len() as f32;
        rmse(&vec![mean; test.len()], &test.targets)
    }

    #[test]
    fn cnn_training_reduces_held_out_rmse() {
        let (trains, test) = datasets(&[1], 12);
        let train = &trains[0];
        let s = spec(Arch::Cnn);
        let base = init_params(&s, 42);
        let before = evaluate(&s, &base, &test).unwrap();
        let cfg = TrainConfig {
            epochs: 5,
            ..TrainConfig::default()
        };
        let start = Instant::now();
        let out = train_local(&s, &base, train, &cfg, &AtomicBool::new(false)).unwrap();
        let secs = start.elapsed().as_secs_f64();
        let after = evaluate(&s, &out.params, &test).unwrap();
        let naive = mean_predictor_rmse(train, &test);
        eprintln!(
            "cnn: {} windows, {:.3} s/epoch; rmse {:.2} -> {:.2} (mean predictor {:.2}), loss {:.4}",
            train.len(),
            secs / cfg.epochs as f64,
            before.rmse,
            after.rmse,
            naive,
            out.loss
        );
        assert_eq!(out.samples, train.len() as u64);
        assert!(out.params.same_layout(&base));
        assert_ne!(out.params.digest(), base.digest());
        assert!(
            after.rmse < 0.7 * before.rmse,
            "{} -> {}",
            before.rmse,
            after.rmse
        );
        assert!(
            after.rmse < 0.7 * naive,
            "rmse {} vs mean predictor {naive}",
            after.rmse
        );
        assert_eq!(after.n, test.len() as u64);
        assert!(out.loss.is_finite() && out.loss > 0.0);
    }

    #[test]
    fn lstm_training_reduces_held_out_rmse() {
        let (trains, test) = datasets(&[2], 6);
        let s = spec(Arch::Lstm);
        let base = init_params(&s, 1);
        let before = evaluate(&s, &base, &test).unwrap();
        let cfg = TrainConfig {
            epochs: 3,
            lr: 3e-3,
            ..TrainConfig::default()
        };
        let start = Instant::now();
        let out = train_local(&s, &base, &trains[0], &cfg, &AtomicBool::new(false)).unwrap();
        let secs = start.elapsed().as_secs_f64();
        let after = evaluate(&s, &out.params, &test).unwrap();
        eprintln!(
            "lstm: {} windows, {:.3} s/epoch; rmse {:.2} -> {:.2}",
            trains[0].len(),
            secs / cfg.epochs as f64,
            before.rmse,
            after.rmse
        );
        assert!(
            after.rmse < 0.8 * before.rmse,
            "{} -> {}",
            before.rmse,
            after.rmse
        );
    }

    #[test]
    fn fedavg_of_two_local_models_evaluates_sensibly() {
        let (trains, test) = datasets(&[10, 11], 6);
        let s = spec(Arch::Cnn);
        let mut global = init_params(&s, 5);
        let before = evaluate(&s, &global, &test).unwrap().rmse;
        let naive = mean_predictor_rmse(&trains[0], &test);
        let never = AtomicBool::new(false);
        let mut history = Vec::new();
        for round in 0..4u64 {
            let cfg = TrainConfig {
                epochs: 1,
                seed: round,
                ..TrainConfig::default()
            };
            let a = train_local(&s, &global, &trains[0], &cfg, &never).unwrap();
            let b = train_local(&s, &global, &trains[1], &cfg, &never).unwrap();
            let next = fedavg(&[(&a.params, a.samples), (&b.params, b.samples)]).unwrap();
            let ra = evaluate(&s, &a.params, &test).unwrap().rmse;
            let rb = evaluate(&s, &b.params, &test).unwrap().rmse;
            let rg = evaluate(&s, &next, &test).unwrap().rmse;
            // The average lies between the clients, coordinate by coordinate.
            for ((g, x), y) in next
                .values()
                .iter()
                .zip(a.params.values())
                .zip(b.params.values())
            {
                assert!(*g >= x.min(*y) - 1e-6 && *g <= x.max(*y) + 1e-6);
            }
            // Averaging models trained from one base must not be much worse than its
            // parts (it would be, were the flattening order inconsistent).
            assert!(
                rg < 1.5 * ra.max(rb),
                "round {round}: global {rg} vs {ra}, {rb}"
            );
            history.push(rg);
            global = next;
        }
        eprintln!(
            "fedavg: init {before:.2}, mean predictor {naive:.2}, global per round {history:.2?}"
        );
        let last = *history.last().unwrap();
        assert!(last < 0.5 * before, "global {last} vs init {before}");
        assert!(
            last < 0.7 * naive,
            "global {last} vs mean predictor {naive}"
        );
    }

    #[test]
    fn training_is_deterministic_in_the_seed() {
        let (trains, _) = datasets(&[3], 2);
        let s = spec(Arch::Cnn);
        let base = init_params(&s, 0);
        let cfg = TrainConfig::default();
        let never = AtomicBool::new(false);
        let a = train_local(&s, &base, &trains[0], &cfg, &never).unwrap();
        let b = train_local(&s, &base, &trains[0], &cfg, &never).unwrap();
        assert_eq!(a.params.digest(), b.params.digest());
        let c = train_local(
            &s,
            &base,
            &trains[0],
            &TrainConfig { seed: 9, ..cfg },
            &never,
        )
        .unwrap();
        assert_ne!(a.params.digest(), c.params.digest());
    }

    #[test]
    fn fedprox_keeps_the_update_closer_to_the_base() {
        let (trains, _) = datasets(&[4], 2);
        let s = spec(Arch::Cnn);
        let base = init_params(&s, 0);
        let never = AtomicBool::new(false);
        let cfg = TrainConfig {
            epochs: 2,
            lr: 3e-3,
            ..TrainConfig::default()
        };
        let plain = train_local(&s, &base, &trains[0], &cfg, &never).unwrap();
        let prox_cfg = TrainConfig {
            prox_mu: Some(10.0),
            ..cfg
        };
        let prox = train_local(&s, &base, &trains[0], &prox_cfg, &never).unwrap();
        let d_plain = plain.params.l2_distance(&base).unwrap();
        let d_prox = prox.params.l2_distance(&base).unwrap();
        eprintln!("fedprox: distance {d_plain:.4} plain, {d_prox:.4} with mu=10");
        assert!(d_prox < 0.8 * d_plain, "{d_prox} vs {d_plain}");
    }

    #[test]
    fn cancellation_stops_training() {
        let (trains, _) = datasets(&[5], 4);
        let s = spec(Arch::Cnn);
        let base = init_params(&s, 0);
        let raised = AtomicBool::new(true);
        assert!(matches!(
            train_local(&s, &base, &trains[0], &TrainConfig::default(), &raised),
            Err(TrainError::Cancelled)
        ));
        // Raised from another thread in the middle of a long run.
        let cancel = AtomicBool::new(false);
        let cfg = TrainConfig {
            epochs: 10_000,
            ..TrainConfig::default()
        };
        let start = Instant::now();
        let result = std::thread::scope(|scope| {
            scope.spawn(|| {
                std::thread::sleep(std::time::Duration::from_millis(200));
                cancel.store(true, Ordering::Relaxed);
            });
            train_local(&s, &base, &trains[0], &cfg, &cancel)
        });
        assert!(matches!(result, Err(TrainError::Cancelled)));
        assert!(start.elapsed().as_secs_f64() < 10.0);
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        let (trains, test) = datasets(&[6], 1);
        let s = spec(Arch::Cnn);
        let base = init_params(&s, 0);
        let never = AtomicBool::new(false);
        let bad_cfgs = [
            TrainConfig {
                epochs: 0,
                ..TrainConfig::default()
            },
            TrainConfig {
                batch_size: 0,
                ..TrainConfig::default()
            },
            TrainConfig {
                lr: f64::NAN,
                ..TrainConfig::default()
            },
            TrainConfig {
                prox_mu: Some(-1.0),
                ..TrainConfig::default()
            },
        ];
        for cfg in &bad_cfgs {
            assert!(matches!(
                train_local(&s, &base, &trains[0], cfg, &never),
                Err(TrainError::InvalidConfig(_))
            ));
        }
        let empty = Dataset {
            window: 30,
            features: 14,
            ..Dataset::default()
        };
        assert!(matches!(
            train_local(&s, &base, &empty, &TrainConfig::default(), &never),
            Err(TrainError::EmptyDataset)
        ));
        let mut ragged = test.clone();
        ragged.inputs.pop();
        assert!(matches!(
            predict(&s, &base, &ragged),
            Err(TrainError::DataMismatch { .. })
        ));
        let narrow = ModelSpec {
            features: 13,
            ..s.clone()
        };
        assert!(matches!(
            evaluate(&narrow, &base, &test),
            Err(TrainError::DataMismatch { .. })
        ));
        let lstm = init_params(&spec(Arch::Lstm), 0);
        assert!(matches!(
            evaluate(&s, &lstm, &test),
            Err(TrainError::LayoutMismatch)
        ));
    }

    #[test]
    fn predict_matches_evaluate_and_batches_consistently() {
        let (_, test) = datasets(&[7], 1);
        let s = spec(Arch::Cnn);
        let p = init_params(&s, 3);
        let pred = predict(&s, &p, &test).unwrap();
        assert_eq!(pred.len(), test.len());
        let m = evaluate(&s, &p, &test).unwrap();
        assert!((m.rmse - rmse(&pred, &test.targets)).abs() < 1e-9);
        // A window predicts the same alone as inside a large batch.
        let one = test.subset(&[test.len() - 1]);
        let alone = predict(&s, &p, &one).unwrap();
        assert!((alone[0] - pred[test.len() - 1]).abs() < 1e-3);
    }
}
