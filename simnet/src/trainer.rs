//! Local trainers for simulated edges: a fast fake one whose convergence is easy to see,
//! and the real burn trainer on synthetic run-to-failure data.

use model::{
    Arch, Dataset, ModelSpec, ParamSet, Scaler, SyntheticConfig, TensorSpec, TrainConfig,
    WindowConfig, generate, make_windows,
};
use netproto::core::SplitMix64;
use netproto::wire::{FeatureRanges, Hyper, SampleCounts};
use std::sync::atomic::AtomicBool;

use crate::scenario::{Scenario, TrainerKind};

/// Why a trainer could not be built or a training run failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainerError {
    /// Building the model or data failed.
    #[error("trainer setup: {0}")]
    Setup(String),
    /// A local training run failed.
    #[error("training: {0}")]
    Train(String),
}

/// A trained update.
#[derive(Clone, Debug)]
pub struct LocalUpdate {
    /// The new parameters.
    pub params: ParamSet,
    /// Training samples behind them (the FedAvg weight).
    pub samples: u64,
    /// Local training loss.
    pub loss: f32,
}

/// Fake trainer: each edge pulls the parameters toward its own target; the sample-weighted
/// mean of the eligible edges' targets is the optimum, and the global loss is the L2
/// distance of a model to it, so FedAvg visibly converges.
#[derive(Debug)]
pub struct FakeTrainer {
    targets: Vec<Vec<f32>>,
    optimum: Vec<f64>,
    specs: Vec<TensorSpec>,
}

/// Burn trainer: per-edge synthetic trajectories, the fleet scaler merged from every
/// edge's ranges (as the federation does), the real `model::train_local`, and the RMSE on
/// a held-out synthetic fleet as the global loss.
#[derive(Debug)]
pub struct BurnTrainer {
    spec: ModelSpec,
    data: Vec<Dataset>,
    ranges: Vec<FeatureRanges>,
    test: Dataset,
    genesis: ParamSet,
}

/// The trainer of a run.
#[derive(Debug)]
pub enum Trainer {
    /// See [`FakeTrainer`].
    Fake(FakeTrainer),
    /// See [`BurnTrainer`].
    Burn(Box<BurnTrainer>),
}

/// Sample counts for a fake edge: comfortably above the criterion when `eligible`, below
/// it otherwise.
fn fake_samples(sc: &Scenario, eligible: bool, rng: &mut SplitMix64) -> SampleCounts {
    let c = sc.criterion;
    if eligible {
        SampleCounts {
            failures: c.min_failures + rng.below(10),
            windows: c.min_windows + 100 + rng.below(5_000),
        }
    } else if c.min_failures > 0 && rng.below(2) == 0 {
        SampleCounts {
            failures: rng.below(c.min_failures),
            windows: c.min_windows + rng.below(5_000),
        }
    } else {
        SampleCounts {
            failures: c.min_failures + rng.below(10),
            windows: rng.below(c.min_windows.max(1)),
        }
    }
}

impl Trainer {
    /// Builds the trainer for edges `0..eligible.len()` (index = edge number) and returns
    /// it with each edge's sample counts.
    pub fn new(
        sc: &Scenario,
        seed: u64,
        eligible: &[bool],
    ) -> Result<(Self, Vec<SampleCounts>), TrainerError> {
        let mut rng = SplitMix64::new(seed ^ 0x7ea1_7ea1_7ea1_7ea1);
        match sc.trainer {
            TrainerKind::Fake => {
                let d = sc.training.fake_params;
                let samples: Vec<SampleCounts> = eligible
                    .iter()
                    .map(|&e| fake_samples(sc, e, &mut rng))
                    .collect();
                let centre: Vec<f64> = (0..d).map(|_| 2.0 + 2.0 * rng.unit()).collect();
                let targets: Vec<Vec<f32>> = eligible
                    .iter()
                    .map(|_| {
                        centre
                            .iter()
                            .map(|c| (c + 2.0 * (rng.unit() - 0.5)) as f32)
                            .collect()
                    })
                    .collect();
                let mut optimum = vec![0.0f64; d];
                let mut total = 0.0f64;
                for ((t, s), e) in targets.iter().zip(&samples).zip(eligible) {
                    if *e {
                        let w = s.windows as f64;
                        total += w;
                        for (o, v) in optimum.iter_mut().zip(t) {
                            *o += w * f64::from(*v);
                        }
                    }
                }
                if total > 0.0 {
                    optimum.iter_mut().for_each(|o| *o /= total);
                }
                let specs = vec![TensorSpec::new("w", vec![d])];
                Ok((
                    Trainer::Fake(FakeTrainer {
                        targets,
                        optimum,
                        specs,
                    }),
                    samples,
                ))
            }
            TrainerKind::Burn => {
                let spec = ModelSpec {
                    arch: Arch::Cnn,
                    window: 30,
                    features: 14,
                };
                let wcfg = WindowConfig::default();
                let fleets: Vec<_> = eligible
                    .iter()
                    .enumerate()
                    .map(|(i, &e)| {
                        generate(&SyntheticConfig {
                            machines: if e {
                                sc.training.burn_machines.max(1)
                            } else {
                                1
                            },
                            seed: seed.wrapping_mul(1_000_003).wrapping_add(i as u64),
                            ..SyntheticConfig::default()
                        })
                    })
                    .collect();
                let fits: Vec<Scaler> = fleets
                    .iter()
                    .map(|f| {
                        Scaler::fit(f).ok_or_else(|| TrainerError::Setup("empty fleet".into()))
                    })
                    .collect::<Result<_, _>>()?;
                let scaler = fits
                    .iter()
                    .cloned()
                    .reduce(|a, b| a.merge(&b))
                    .ok_or_else(|| TrainerError::Setup("no edges".into()))?;
                let test_fleet = generate(&SyntheticConfig {
                    machines: 4,
                    seed: seed ^ 0x7e57,
                    ..SyntheticConfig::default()
                });
                let test = make_windows(&test_fleet, &scaler, &wcfg);
                let data: Vec<Dataset> = fleets
                    .iter()
                    .map(|f| make_windows(f, &scaler, &wcfg))
                    .collect();
                let samples = fleets
                    .iter()
                    .zip(&data)
                    .map(|(f, d)| SampleCounts {
                        failures: f.len() as u64,
                        windows: d.len() as u64,
                    })
                    .collect();
                let ranges = fits
                    .into_iter()
                    .map(|s| FeatureRanges {
                        min: s.min,
                        max: s.max,
                    })
                    .collect();
                let genesis = model::try_init_params(&spec, seed)
                    .map_err(|e| TrainerError::Setup(e.to_string()))?;
                Ok((
                    Trainer::Burn(Box::new(BurnTrainer {
                        spec,
                        data,
                        ranges,
                        test,
                        genesis,
                    })),
                    samples,
                ))
            }
        }
    }

    /// The version-0 model.
    pub fn genesis(&self) -> ParamSet {
        match self {
            Trainer::Fake(f) => ParamSet::zeros(f.specs.clone()),
            Trainer::Burn(b) => b.genesis.clone(),
        }
    }

    /// The feature ranges edge `edge` gossips (burn only).
    pub fn ranges(&self, edge: usize) -> Option<FeatureRanges> {
        match self {
            Trainer::Fake(_) => None,
            Trainer::Burn(b) => b.ranges.get(edge).cloned(),
        }
    }

    /// One local training run of edge `edge` from `base`.
    pub fn train(
        &self,
        edge: usize,
        base: &ParamSet,
        hyper: &Hyper,
        seed: u64,
        samples: u64,
    ) -> Result<LocalUpdate, TrainerError> {
        match self {
            Trainer::Fake(f) => {
                let target = f
                    .targets
                    .get(edge)
                    .ok_or_else(|| TrainerError::Train(format!("no edge {edge}")))?;
                let step = f64::from(hyper.lr).clamp(0.0, 1.0);
                let mut w: Vec<f64> = base.values().iter().map(|v| f64::from(*v)).collect();
                for _ in 0..hyper.local_epochs.max(1) {
                    for (x, t) in w.iter_mut().zip(target) {
                        *x += step * (f64::from(*t) - *x);
                    }
                }
                let loss = w
                    .iter()
                    .zip(target)
                    .map(|(x, t)| (x - f64::from(*t)).powi(2))
                    .sum::<f64>()
                    / w.len().max(1) as f64;
                let params = ParamSet::new(f.specs.clone(), w.iter().map(|v| *v as f32).collect())
                    .map_err(|e| TrainerError::Train(e.to_string()))?;
                Ok(LocalUpdate {
                    params,
                    samples,
                    loss: loss as f32,
                })
            }
            Trainer::Burn(b) => {
                let data = b
                    .data
                    .get(edge)
                    .ok_or_else(|| TrainerError::Train(format!("no edge {edge}")))?;
                let cfg = TrainConfig {
                    epochs: hyper.local_epochs.max(1) as usize,
                    batch_size: hyper.batch_size.max(1) as usize,
                    lr: f64::from(hyper.lr),
                    prox_mu: (hyper.prox_mu > 0.0).then_some(hyper.prox_mu),
                    seed,
                };
                let out = model::train_local(&b.spec, base, data, &cfg, &AtomicBool::new(false))
                    .map_err(|e| TrainerError::Train(e.to_string()))?;
                Ok(LocalUpdate {
                    params: out.params,
                    samples: out.samples,
                    loss: out.loss,
                })
            }
        }
    }

    /// The global loss of `params`: distance to the optimum (fake) or held-out RMSE (burn).
    pub fn global_loss(&self, params: &ParamSet) -> f64 {
        match self {
            Trainer::Fake(f) => params
                .values()
                .iter()
                .zip(&f.optimum)
                .map(|(v, o)| (f64::from(*v) - o).powi(2))
                .sum::<f64>()
                .sqrt(),
            Trainer::Burn(b) => model::evaluate(&b.spec, params, &b.test)
                .map(|m| m.rmse)
                .unwrap_or(f64::NAN),
        }
    }
}
