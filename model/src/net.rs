//! The RUL regressors (burn, flex CPU backend) and the bridge between burn modules
//! and flat [`ParamSet`]s.
//!
//! * [`Arch::Cnn`]: a 1-D version of the deep CNN of Li, Ding & Sun (2018,
//!   "Remaining useful life estimation in prognostics using deep convolution neural
//!   networks"): four convolutions along time of 10 filters of size 10 (ReLU, "same"
//!   padding) with the sensors as input channels, a single-filter convolution of
//!   size 3 (`tanh`) that leaves one value per cycle, a dense layer of 100 `tanh`
//!   units and a linear output; about 7.7k parameters for 30 × 14 windows. The paper
//!   convolves each sensor separately (`10×1` kernels on the window image); on the
//!   CPU backend that costs about ten times more per epoch for no better accuracy on
//!   our data, so channels mix from the first layer. Dropout is left out: local
//!   rounds are short and averaging already regularises.
//! * [`Arch::Lstm`]: one LSTM layer ([`LSTM_HIDDEN`] units) reading the window, and a
//!   linear head on the last hidden state.
//!
//! Both predict `RUL / RUL_SCALE`; [`crate::train`] scales targets and rescales outputs.
//!
//! Weights are initialised by this crate ([`init_params`]) from its own seeded
//! generator, not burn's process-wide RNG, so initial models depend only on the seed.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::nn::conv::{Conv1d, Conv1dConfig};
use burn::nn::{Initializer, Linear, LinearConfig, Lstm, LstmConfig, PaddingConfig1d};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::params::{ParamSet, TensorSpec};
use crate::rng::SplitMix64;
use crate::train::TrainError;

/// The models predict `RUL / RUL_SCALE` (the standard cap), keeping outputs near `[0, 1]`.
pub const RUL_SCALE: f32 = 125.0;
/// Hidden units of the [`Arch::Lstm`] model.
pub const LSTM_HIDDEN: usize = 64;
/// Filters per convolution of the [`Arch::Cnn`] model.
pub const CNN_FILTERS: usize = 10;
/// Kernel size (along time) of the [`Arch::Cnn`] model's first four convolutions.
pub const CNN_KERNEL: usize = 10;
/// Kernel size of the [`Arch::Cnn`] model's last, single-filter convolution.
pub const CNN_SQUEEZE_KERNEL: usize = 3;
/// Units of the [`Arch::Cnn`] model's dense layer.
pub const CNN_DENSE: usize = 100;
/// Upper bound on `window · features`, which keeps model sizes sane.
pub const MAX_INPUT_SIZE: usize = 1 << 16;

/// Model architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    /// Deep CNN after Li, Ding & Sun (2018): temporal `10×1` convolutions, dense head.
    #[default]
    Cnn,
    /// LSTM + linear head.
    Lstm,
}

/// Everything needed to build a model: architecture and input shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ModelSpec {
    /// Architecture.
    pub arch: Arch,
    /// Cycles per input window.
    pub window: usize,
    /// Sensor features per cycle.
    pub features: usize,
}

impl ModelSpec {
    /// Checks the input shape is non-empty and within [`MAX_INPUT_SIZE`].
    pub fn validate(&self) -> Result<(), TrainError> {
        let size = self.window.checked_mul(self.features);
        match size {
            Some(s) if self.window > 0 && self.features > 0 && s <= MAX_INPUT_SIZE => Ok(()),
            _ => Err(TrainError::InvalidSpec(format!(
                "window {} × features {} must be non-zero and at most {MAX_INPUT_SIZE}",
                self.window, self.features
            ))),
        }
    }

    /// The parameter layout of this model (names in burn's visit order).
    pub fn param_specs(&self) -> Result<Vec<TensorSpec>, TrainError> {
        self.validate()?;
        Ok(collect_specs(&RulNet::new(self, &Device::flex())))
    }
}

/// The DCNN of Li et al. in 1-D form: convolutions along time with the sensors as
/// input channels, then dense layers.
#[derive(Module, Debug)]
pub(crate) struct CnnNet {
    convs: Vec<Conv1d>,
    squeeze: Conv1d,
    dense: Linear,
    head: Linear,
}

/// LSTM + linear head.
#[derive(Module, Debug)]
pub(crate) struct LstmNet {
    lstm: Lstm,
    head: Linear,
}

/// One of the architectures, as a single burn module.
// Built once per training or inference call, so the size difference is irrelevant.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub(crate) enum RulNet {
    /// [`Arch::Cnn`].
    Cnn(CnnNet),
    /// [`Arch::Lstm`].
    Lstm(LstmNet),
}

impl RulNet {
    /// An architecture with all-zero (lazy, never materialised) weights; real values
    /// come from a [`ParamSet`] through [`load_model`].
    fn new(spec: &ModelSpec, device: &Device) -> Self {
        let zeros = Initializer::Zeros;
        let linear = |i, o| {
            LinearConfig::new(i, o)
                .with_initializer(zeros.clone())
                .init(device)
        };
        match spec.arch {
            Arch::Cnn => {
                let conv = |i, o, k| {
                    Conv1dConfig::new(i, o, k)
                        .with_padding(PaddingConfig1d::Same)
                        .with_initializer(zeros.clone())
                        .init(device)
                };
                RulNet::Cnn(CnnNet {
                    convs: vec![
                        conv(spec.features, CNN_FILTERS, CNN_KERNEL),
                        conv(CNN_FILTERS, CNN_FILTERS, CNN_KERNEL),
                        conv(CNN_FILTERS, CNN_FILTERS, CNN_KERNEL),
                        conv(CNN_FILTERS, CNN_FILTERS, CNN_KERNEL),
                    ],
                    squeeze: conv(CNN_FILTERS, 1, CNN_SQUEEZE_KERNEL),
                    dense: linear(spec.window, CNN_DENSE),
                    head: linear(CNN_DENSE, 1),
                })
            }
            Arch::Lstm => RulNet::Lstm(LstmNet {
                lstm: LstmConfig::new(spec.features, LSTM_HIDDEN, true)
                    .with_initializer(zeros.clone())
                    .init(device),
                head: linear(LSTM_HIDDEN, 1),
            }),
        }
    }

    /// `[batch, window, features]` → `[batch]`, in units of [`RUL_SCALE`].
    pub(crate) fn forward(&self, x: Tensor<3>) -> Tensor<1> {
        let [batch, window, _features] = x.dims();
        let out = match self {
            RulNet::Cnn(net) => {
                // Sensors as channels: [batch, features, window].
                let mut h = x.swap_dims(1, 2);
                for conv in &net.convs {
                    h = burn::tensor::activation::relu(conv.forward(h));
                }
                let h = net.squeeze.forward(h).tanh().reshape([batch, window]);
                net.head.forward(net.dense.forward(h).tanh())
            }
            RulNet::Lstm(net) => {
                let (_, state) = net.lstm.forward(x, None);
                net.head.forward(state.hidden)
            }
        };
        out.reshape([batch])
    }
}

/// Tracks the module path during a visit or map.
#[derive(Default)]
struct PathStack(Vec<String>);

impl PathStack {
    fn enter(&mut self, name: &str) {
        self.0.push(name.to_owned());
    }
    fn exit(&mut self) {
        self.0.pop();
    }
    fn name(&self) -> String {
        self.0.join(".")
    }
}

/// Collects names and shapes of all float parameters.
#[derive(Default)]
struct SpecCollector {
    path: PathStack,
    specs: Vec<TensorSpec>,
}

impl ModuleVisitor for SpecCollector {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.specs.push(TensorSpec {
            name: self.path.name(),
            shape: param.lazy_shape().to_vec(),
        });
    }
}

fn collect_specs(model: &RulNet) -> Vec<TensorSpec> {
    let mut collector = SpecCollector::default();
    model.visit(&mut collector);
    collector.specs
}

/// Reads all float parameters into one flat vector.
#[derive(Default)]
struct Flatten {
    values: Vec<f32>,
    error: Option<String>,
}

impl ModuleVisitor for Flatten {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.error.is_some() {
            return;
        }
        let data = param
            .transform_for_save()
            .val()
            .into_data()
            .convert::<f32>();
        match data.as_slice::<f32>() {
            Ok(s) => self.values.extend_from_slice(s),
            Err(e) => self.error = Some(format!("{e:?}")),
        }
    }
}

/// Writes a flat vector into the float parameters, keeping each parameter's id and
/// gradient requirement (as burn's record loader does).
struct Unflatten<'a> {
    src: &'a [f32],
    offset: usize,
}

impl ModuleMapper for Unflatten<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (device, shape) = (param.lazy_device(), param.lazy_shape());
        let n = shape.num_elements();
        // The layout was checked against the model before mapping, so the slice exists.
        let values = self
            .src
            .get(self.offset..self.offset + n)
            .map_or_else(|| vec![0.0; n], <[f32]>::to_vec);
        self.offset += n;
        let tensor = Tensor::<D>::from_data(TensorData::new(values, shape), &device);
        let id = param.id;
        param.transform_for_load(tensor, id)
    }
}

/// Builds `spec`'s model on `device` with the values of `params`.
pub(crate) fn load_model(
    spec: &ModelSpec,
    params: &ParamSet,
    device: &Device,
) -> Result<RulNet, TrainError> {
    spec.validate()?;
    let model = RulNet::new(spec, device);
    if collect_specs(&model).as_slice() != params.specs() {
        return Err(TrainError::LayoutMismatch);
    }
    Ok(model.map(&mut Unflatten {
        src: params.values(),
        offset: 0,
    }))
}

/// The model's current parameters with the given layout.
pub(crate) fn flatten_model(model: &RulNet, specs: &[TensorSpec]) -> Result<ParamSet, TrainError> {
    let mut flatten = Flatten::default();
    model.visit(&mut flatten);
    if let Some(e) = flatten.error {
        return Err(TrainError::Backend(e));
    }
    ParamSet::new(specs.to_vec(), flatten.values).map_err(|_| TrainError::LayoutMismatch)
}

/// Initial value rule for one tensor: He-uniform weights for the CNN's ReLU
/// convolutions, Glorot-uniform for everything else (`tanh` layers, LSTM gates;
/// a tenth of it for the output layer);
/// zero biases, except the LSTM forget gate (bias 1, the usual remedy for vanishing
/// memory) and the output (0.5, i.e. a prior of RUL ≈ 62).
fn init_tensor(spec: &TensorSpec, rng: &mut SplitMix64, out: &mut Vec<f32>) {
    let n = spec.numel().unwrap_or(0);
    if spec.name.ends_with("bias") {
        let value = if spec.name.contains("forget_gate.input_transform") {
            1.0
        } else if spec.name.ends_with("head.bias") {
            0.5
        } else {
            0.0
        };
        out.extend(std::iter::repeat_n(value, n));
        return;
    }
    let (fan_in, fan_out) = match spec.shape.as_slice() {
        // Conv1d: [out, in, kernel].
        [o, i, k] => (i * k, o * k),
        // Linear (row layout): [in, out].
        [i, o] => (*i, *o),
        _ => (n, n),
    };
    let bound = if spec.name.contains(".convs.") {
        (6.0 / fan_in.max(1) as f64).sqrt()
    } else if spec.name.ends_with("head.weight") {
        // A small output layer starts every prediction near the bias prior instead
        // of ±RUL_SCALE, which saves the first federated rounds from undoing it.
        0.1 * (6.0 / (fan_in + fan_out).max(1) as f64).sqrt()
    } else {
        (6.0 / (fan_in + fan_out).max(1) as f64).sqrt()
    };
    out.extend((0..n).map(|_| rng.uniform(-bound, bound) as f32));
}

/// A freshly initialised model for `spec`, deterministic in `seed`.
///
/// # Panics
/// If `spec` is invalid (see [`ModelSpec::validate`]); use [`try_init_params`] for
/// specs from configuration files or the network.
pub fn init_params(spec: &ModelSpec, seed: u64) -> ParamSet {
    match try_init_params(spec, seed) {
        Ok(p) => p,
        Err(e) => panic!("init_params: {e}"),
    }
}

/// [`init_params`] that reports an invalid spec instead of panicking.
pub fn try_init_params(spec: &ModelSpec, seed: u64) -> Result<ParamSet, TrainError> {
    let specs = spec.param_specs()?;
    let mut rng = SplitMix64::derive(seed, 0x1417);
    let mut values = Vec::new();
    for s in &specs {
        init_tensor(s, &mut rng, &mut values);
    }
    ParamSet::new(specs, values).map_err(|_| TrainError::LayoutMismatch)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn spec(arch: Arch) -> ModelSpec {
        ModelSpec {
            arch,
            window: 30,
            features: 14,
        }
    }

    #[test]
    fn layouts_have_expected_sizes_and_names() {
        let cnn = init_params(&spec(Arch::Cnn), 1);
        // 4 convs (14->10, 3x 10->10, k10) + squeeze (10->1, k3) + dense 30->100 + head 100->1
        let expected =
            (14 * 10 * 10 + 10) + 3 * (10 * 10 * 10 + 10) + (10 * 3 + 1) + (30 * 100 + 100) + 101;
        assert_eq!(cnn.len(), expected);
        let names: Vec<&str> = cnn.specs().iter().map(|s| s.name.as_str()).collect();
        assert!(names.contains(&"Cnn.convs.0.weight"), "{names:?}");
        assert!(names.contains(&"Cnn.head.bias"), "{names:?}");
        let lstm = init_params(&spec(Arch::Lstm), 1);
        let h = LSTM_HIDDEN;
        assert_eq!(lstm.len(), 4 * (14 * h + h + h * h + h) + h + 1);
        assert_ne!(cnn.layout_digest(), lstm.layout_digest());
    }

    #[test]
    fn init_is_deterministic_and_seeded() {
        let s = spec(Arch::Cnn);
        let a = init_params(&s, 7);
        assert_eq!(a, init_params(&s, 7));
        assert_ne!(a.digest(), init_params(&s, 8).digest());
        assert!(a.all_finite());
        assert!(a.l2_norm() > 1.0);
    }

    #[test]
    fn load_then_flatten_is_identity() {
        for arch in [Arch::Cnn, Arch::Lstm] {
            let s = spec(arch);
            let p = init_params(&s, 3);
            for device in [Device::flex(), Device::flex().autodiff()] {
                let model = load_model(&s, &p, &device).unwrap();
                let q = flatten_model(&model, p.specs()).unwrap();
                assert_eq!(p, q);
            }
        }
    }

    #[test]
    fn invalid_specs_and_layouts_are_rejected() {
        let bad = ModelSpec {
            arch: Arch::Cnn,
            window: 0,
            features: 14,
        };
        assert!(matches!(
            try_init_params(&bad, 0),
            Err(TrainError::InvalidSpec(_))
        ));
        let huge = ModelSpec {
            arch: Arch::Lstm,
            window: usize::MAX,
            features: 2,
        };
        assert!(huge.validate().is_err());
        let lstm = init_params(&spec(Arch::Lstm), 0);
        assert!(matches!(
            load_model(&spec(Arch::Cnn), &lstm, &Device::flex()),
            Err(TrainError::LayoutMismatch)
        ));
        let other_window = ModelSpec {
            window: 20,
            ..spec(Arch::Cnn)
        };
        assert!(matches!(
            load_model(
                &other_window,
                &init_params(&spec(Arch::Cnn), 0),
                &Device::flex()
            ),
            Err(TrainError::LayoutMismatch)
        ));
    }
}
