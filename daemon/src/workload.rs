//! What a federation trains: the RUL model (burn), or a synthetic parameter vector with a
//! deterministic no-op trainer, used by `fedctl bench rounds` to measure the cost of the
//! federation machinery itself (transport, validation, aggregation, persistence).

use model::{ParamError, ParamSet, TensorSpec};
use serde::{Deserialize, Serialize};

/// The kind of model a federation trains.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkloadKind {
    /// The remaining-useful-life model of `[model]`.
    #[default]
    Rul,
    /// `bench_params` float32 parameters; training adds a deterministic delta.
    Bench,
}

/// Sample weight every bench edge reports (equal weights keep the expected average simple).
pub const BENCH_SAMPLES: u64 = 1;

/// The genesis model of a bench federation: `params` zeros in one tensor.
pub fn bench_genesis(params: usize) -> ParamSet {
    ParamSet::zeros(vec![TensorSpec::new("w", vec![params])])
}

/// The delta bench edge `edge_seed` adds to element `i`: small multiples of 2⁻¹², so sums
/// of a few hundred of them are exact in `f64`.
pub fn bench_delta(edge_seed: u64, i: usize) -> f32 {
    ((edge_seed as usize + i) % 8) as f32 / 4096.0
}

/// The bench "training": `base + delta(edge_seed)`, from the encoded base model to the
/// encoded update (what the edge pushes), without decoding to a [`ParamSet`]: the bench
/// measures the federation, not the codec.
pub fn bench_train(base: &[u8], edge_seed: u64) -> Result<Vec<u8>, ParamError> {
    let start = model::params::values_offset(base)?;
    let mut out = base.to_vec();
    for (i, c) in out[start..].chunks_exact_mut(4).enumerate() {
        let v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]) + bench_delta(edge_seed, i);
        c.copy_from_slice(&v.to_le_bytes());
    }
    Ok(out)
}

/// The global model after one bench round in which every edge of `edge_seeds` reported:
/// the f64 mean of the `f32` updates, rounded once to `f32`, exactly as the anchor's
/// streaming FedAvg computes it (f64 sums of these values are exact, so arrival order
/// does not matter).
pub fn bench_expected_round(base: &[f32], edge_seeds: &[u64]) -> Vec<f32> {
    let n = edge_seeds.len() as f64;
    base.iter()
        .enumerate()
        .map(|(i, &b)| {
            let sum: f64 = edge_seeds
                .iter()
                .map(|&e| f64::from(b + bench_delta(e, i)) * BENCH_SAMPLES as f64)
                .sum();
            (sum / (n * BENCH_SAMPLES as f64)) as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_fedavg_reproduces_the_expected_bench_average_exactly() {
        let base = bench_genesis(1000);
        let seeds = [0u64, 1, 2, 5, 9];
        let mut expected = base.values().to_vec();
        let mut global = base;
        for _round in 0..3 {
            let mut acc = model::StreamingFedAvg::new(global.specs().to_vec());
            // Arrival order differs from the seeds' order.
            for &s in seeds.iter().rev() {
                let out =
                    ParamSet::from_bytes(&bench_train(&global.to_bytes(), s).unwrap()).unwrap();
                acc.add(&out, BENCH_SAMPLES).unwrap();
            }
            global = acc.finish().unwrap();
            expected = bench_expected_round(&expected, &seeds);
            assert_eq!(global.values(), expected.as_slice());
        }
    }
}
