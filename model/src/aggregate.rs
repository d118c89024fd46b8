//! Aggregation strategies: pure functions from client updates to a new global model.
//!
//! * [`fedavg`] / [`StreamingFedAvg`]: sample-weighted mean (McMahan et al. 2017).
//!   The streaming form keeps one `f64` accumulator per parameter, so the anchor's
//!   memory is O(model), independent of the number of clients.
//! * [`coordinate_median`] and [`trimmed_mean`]: robust, unweighted aggregates
//!   (Yin et al. 2018). They **buffer every update** (memory O(clients × model))
//!   because each coordinate needs all clients' values at once.
//! * [`validate_update`]: the anchor's admission check before any of the above.
//!
//! Every function rejects layout mismatches and non-finite values, so a single
//! malformed update can never poison the global model silently.

use serde::{Deserialize, Serialize};

use crate::params::{ParamSet, TensorSpec};

/// Errors from aggregation.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AggregateError {
    /// No updates were given.
    #[error("no updates to aggregate")]
    Empty,
    /// The updates' weights sum to zero, so a weighted mean is undefined.
    #[error("total weight of the updates is zero")]
    ZeroWeight,
    /// The total weight does not fit in a `u64`.
    #[error("total weight overflows u64")]
    WeightOverflow,
    /// An update's layout differs from the expected one.
    #[error("update {index} has a different parameter layout")]
    LayoutMismatch {
        /// Position of the offending update (in call order for [`StreamingFedAvg`]).
        index: usize,
    },
    /// An update contains NaN or infinity.
    #[error("update {index} contains non-finite values")]
    NonFinite {
        /// Position of the offending update.
        index: usize,
    },
    /// A strategy parameter is out of range.
    #[error("invalid aggregation parameter: {0}")]
    InvalidParameter(String),
}

/// Why an update was rejected by [`validate_update`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValidationError {
    /// Names or shapes differ from the base model.
    #[error("update layout does not match the base model")]
    LayoutMismatch,
    /// The update contains NaN or infinity at `index`.
    #[error("update value {index} is not finite")]
    NonFinite {
        /// Index of the first non-finite value.
        index: usize,
    },
    /// The update moved further from the base model than allowed.
    #[error("update norm {norm} exceeds the bound {max_norm}")]
    NormExceeded {
        /// `||update - base||`.
        norm: f64,
        /// The configured bound.
        max_norm: f64,
    },
}

/// Checks an update against the round's base model: same layout, all values finite
/// and `||update - base||₂ <= max_norm`. A NaN `max_norm` rejects everything.
pub fn validate_update(
    base: &ParamSet,
    update: &ParamSet,
    max_norm: f64,
) -> Result<(), ValidationError> {
    if !base.same_layout(update) {
        return Err(ValidationError::LayoutMismatch);
    }
    if let Some(index) = update.values().iter().position(|v| !v.is_finite()) {
        return Err(ValidationError::NonFinite { index });
    }
    let norm = update
        .l2_distance(base)
        .ok_or(ValidationError::LayoutMismatch)?;
    // Written so that a NaN norm or bound is a rejection.
    if norm <= max_norm {
        Ok(())
    } else {
        Err(ValidationError::NormExceeded { norm, max_norm })
    }
}

/// Sample-weighted FedAvg of `(update, sample_count)` pairs, accumulated in `f64`.
///
/// Errors: no updates, zero total weight, a layout different from the first
/// update's, non-finite values.
pub fn fedavg(updates: &[(&ParamSet, u64)]) -> Result<ParamSet, AggregateError> {
    let (first, _) = updates.first().ok_or(AggregateError::Empty)?;
    let mut acc = StreamingFedAvg::new(first.specs().to_vec());
    for (update, weight) in updates {
        acc.add(update, *weight)?;
    }
    acc.finish()
}

/// Running FedAvg: add updates one by one as they arrive, then [`finish`](Self::finish).
///
/// Holds one `f64` per parameter (memory O(model)); the result equals [`fedavg`]
/// over the same updates in any order, up to `f64` rounding.
#[derive(Clone, Debug)]
pub struct StreamingFedAvg {
    specs: Vec<TensorSpec>,
    sum: Vec<f64>,
    count: usize,
    total_weight: u64,
}

impl StreamingFedAvg {
    /// An empty accumulator for updates with layout `specs`.
    ///
    /// # Panics
    /// If `specs` exceeds the [`crate::params`] limits (see [`ParamSet::zeros`]).
    pub fn new(specs: Vec<TensorSpec>) -> Self {
        let zeros = ParamSet::zeros(specs);
        let n = zeros.len();
        let (specs, _) = zeros.into_parts();
        Self {
            specs,
            sum: vec![0.0; n],
            count: 0,
            total_weight: 0,
        }
    }

    /// Adds `update` with `weight` (its sample count). On error the accumulator is unchanged.
    pub fn add(&mut self, update: &ParamSet, weight: u64) -> Result<(), AggregateError> {
        let index = self.count;
        if update.specs() != self.specs.as_slice() {
            return Err(AggregateError::LayoutMismatch { index });
        }
        if !update.all_finite() {
            return Err(AggregateError::NonFinite { index });
        }
        let total = self
            .total_weight
            .checked_add(weight)
            .ok_or(AggregateError::WeightOverflow)?;
        let w = weight as f64;
        if weight > 0 {
            for (s, &v) in self.sum.iter_mut().zip(update.values()) {
                *s += w * f64::from(v);
            }
        }
        self.total_weight = total;
        self.count += 1;
        Ok(())
    }

    /// Number of updates added so far.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Sum of the weights added so far.
    pub fn total_weight(&self) -> u64 {
        self.total_weight
    }

    /// The layout this accumulator expects.
    pub fn specs(&self) -> &[TensorSpec] {
        &self.specs
    }

    /// The weighted mean of everything added.
    pub fn finish(self) -> Result<ParamSet, AggregateError> {
        if self.count == 0 {
            return Err(AggregateError::Empty);
        }
        if self.total_weight == 0 {
            return Err(AggregateError::ZeroWeight);
        }
        let total = self.total_weight as f64;
        let values = self.sum.iter().map(|&s| (s / total) as f32).collect();
        ParamSet::new(self.specs, values)
            .map_err(|e| AggregateError::InvalidParameter(format!("internal layout error: {e}")))
    }
}

/// Checks that `updates` is non-empty, uniform in layout and finite.
fn check_buffered(updates: &[&ParamSet]) -> Result<(), AggregateError> {
    let first = updates.first().ok_or(AggregateError::Empty)?;
    for (index, u) in updates.iter().enumerate() {
        if !first.same_layout(u) {
            return Err(AggregateError::LayoutMismatch { index });
        }
        if !u.all_finite() {
            return Err(AggregateError::NonFinite { index });
        }
    }
    Ok(())
}

/// Applies `reduce` to each coordinate's sorted column of client values.
fn per_coordinate(
    updates: &[&ParamSet],
    mut reduce: impl FnMut(&[f32]) -> f32,
) -> Result<ParamSet, AggregateError> {
    check_buffered(updates)?;
    let first = updates[0];
    let mut column = Vec::with_capacity(updates.len());
    let mut values = Vec::with_capacity(first.len());
    for i in 0..first.len() {
        column.clear();
        column.extend(updates.iter().map(|u| u.values()[i]));
        column.sort_unstable_by(f32::total_cmp);
        values.push(reduce(&column));
    }
    ParamSet::new(first.specs().to_vec(), values)
        .map_err(|e| AggregateError::InvalidParameter(format!("internal layout error: {e}")))
}

/// Coordinate-wise median (unweighted; the mean of the two middle values for an
/// even number of updates). Robust to fewer than half of the clients being arbitrary.
///
/// Buffers all updates: memory O(clients × model).
pub fn coordinate_median(updates: &[&ParamSet]) -> Result<ParamSet, AggregateError> {
    per_coordinate(updates, |col| {
        let k = col.len();
        if k % 2 == 1 {
            col[k / 2]
        } else {
            ((f64::from(col[k / 2 - 1]) + f64::from(col[k / 2])) / 2.0) as f32
        }
    })
}

/// Coordinate-wise trimmed mean (unweighted): per coordinate, drops the
/// `floor(trim_fraction · k)` smallest and largest of the `k` values and averages the rest.
///
/// `trim_fraction` must be in `[0, 0.5)` and leave at least one value.
/// Buffers all updates: memory O(clients × model).
pub fn trimmed_mean(updates: &[&ParamSet], trim_fraction: f64) -> Result<ParamSet, AggregateError> {
    if !(0.0..0.5).contains(&trim_fraction) {
        return Err(AggregateError::InvalidParameter(format!(
            "trim_fraction {trim_fraction} not in [0, 0.5)"
        )));
    }
    let k = updates.len();
    let trim = (trim_fraction * k as f64).floor() as usize;
    if k > 0 && 2 * trim >= k {
        return Err(AggregateError::InvalidParameter(format!(
            "trimming {trim} of {k} from each side leaves nothing"
        )));
    }
    per_coordinate(updates, |col| {
        let kept = &col[trim..col.len() - trim];
        (kept.iter().map(|&v| f64::from(v)).sum::<f64>() / kept.len() as f64) as f32
    })
}

/// A server-side aggregation strategy, as configured in a round's hyper-parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Strategy {
    /// Sample-weighted mean ([`fedavg`]); streaming-capable.
    #[default]
    FedAvg,
    /// Unweighted coordinate-wise median ([`coordinate_median`]); buffers updates.
    Median,
    /// Unweighted coordinate-wise trimmed mean ([`trimmed_mean`]); buffers updates.
    TrimmedMean {
        /// Fraction trimmed from each side, in `[0, 0.5)`.
        trim_fraction: f64,
    },
}

impl Strategy {
    /// Aggregates `(update, sample_count)` pairs; robust strategies ignore the weights.
    pub fn aggregate(&self, updates: &[(&ParamSet, u64)]) -> Result<ParamSet, AggregateError> {
        match self {
            Strategy::FedAvg => fedavg(updates),
            Strategy::Median => {
                let sets: Vec<&ParamSet> = updates.iter().map(|(p, _)| *p).collect();
                coordinate_median(&sets)
            }
            Strategy::TrimmedMean { trim_fraction } => {
                let sets: Vec<&ParamSet> = updates.iter().map(|(p, _)| *p).collect();
                trimmed_mean(&sets, *trim_fraction)
            }
        }
    }

    /// Whether the strategy can aggregate incrementally in O(model) memory.
    pub fn is_streaming(&self) -> bool {
        matches!(self, Strategy::FedAvg)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::{any, prop, prop_assert, prop_assert_eq, proptest};
    use proptest::strategy::Strategy as _;

    fn specs() -> Vec<TensorSpec> {
        vec![TensorSpec::new("w", vec![2]), TensorSpec::new("b", vec![1])]
    }

    fn ps(v: &[f32]) -> ParamSet {
        ParamSet::new(specs(), v.to_vec()).unwrap()
    }

    #[test]
    fn fedavg_hand_computed() {
        let a = ps(&[1.0, 2.0, 3.0]);
        let b = ps(&[3.0, 6.0, -1.0]);
        // weights 1 and 3: (1*a + 3*b) / 4
        let avg = fedavg(&[(&a, 1), (&b, 3)]).unwrap();
        assert_eq!(avg.values(), &[2.5, 5.0, 0.0]);
        assert_eq!(avg.specs(), a.specs());
        // equal weights: plain mean
        let avg = fedavg(&[(&a, 10), (&b, 10)]).unwrap();
        assert_eq!(avg.values(), &[2.0, 4.0, 1.0]);
        // a zero-weight update contributes nothing
        let avg = fedavg(&[(&a, 0), (&b, 5)]).unwrap();
        assert_eq!(avg.values(), b.values());
    }

    #[test]
    fn fedavg_errors() {
        let a = ps(&[1.0, 2.0, 3.0]);
        assert_eq!(fedavg(&[]), Err(AggregateError::Empty));
        assert_eq!(fedavg(&[(&a, 0), (&a, 0)]), Err(AggregateError::ZeroWeight));
        let other = ParamSet::new(vec![TensorSpec::new("w", vec![3])], vec![0.0; 3]).unwrap();
        assert_eq!(
            fedavg(&[(&a, 1), (&other, 1)]),
            Err(AggregateError::LayoutMismatch { index: 1 })
        );
        let nan = ps(&[1.0, f32::NAN, 0.0]);
        assert_eq!(
            fedavg(&[(&a, 1), (&nan, 1)]),
            Err(AggregateError::NonFinite { index: 1 })
        );
        assert_eq!(
            fedavg(&[(&a, u64::MAX), (&a, 1)]),
            Err(AggregateError::WeightOverflow)
        );
    }

    #[test]
    fn streaming_counts_and_rejects_without_state_change() {
        let mut acc = StreamingFedAvg::new(specs());
        assert_eq!(acc.clone().finish(), Err(AggregateError::Empty));
        acc.add(&ps(&[1.0, 1.0, 1.0]), 2).unwrap();
        let bad = ParamSet::zeros(vec![TensorSpec::new("w", vec![3])]);
        assert_eq!(
            acc.add(&bad, 5),
            Err(AggregateError::LayoutMismatch { index: 1 })
        );
        acc.add(&ps(&[4.0, 4.0, 4.0]), 1).unwrap();
        assert_eq!(acc.count(), 2);
        assert_eq!(acc.total_weight(), 3);
        assert_eq!(acc.finish().unwrap().values(), &[2.0, 2.0, 2.0]);
    }

    #[test]
    fn validate_update_checks() {
        let base = ps(&[0.0, 0.0, 0.0]);
        let up = ps(&[3.0, 4.0, 0.0]);
        assert_eq!(validate_update(&base, &up, 5.0), Ok(()));
        assert_eq!(
            validate_update(&base, &up, 4.9),
            Err(ValidationError::NormExceeded {
                norm: 5.0,
                max_norm: 4.9
            })
        );
        assert!(validate_update(&base, &up, f64::NAN).is_err());
        let nan = ps(&[0.0, f32::INFINITY, 0.0]);
        assert_eq!(
            validate_update(&base, &nan, 1e9),
            Err(ValidationError::NonFinite { index: 1 })
        );
        let other = ParamSet::zeros(vec![TensorSpec::new("x", vec![3])]);
        assert_eq!(
            validate_update(&base, &other, 1e9),
            Err(ValidationError::LayoutMismatch)
        );
    }

    #[test]
    fn median_examples() {
        let a = ps(&[1.0, 10.0, -5.0]);
        let b = ps(&[2.0, 20.0, 5.0]);
        let c = ps(&[100.0, 30.0, 0.0]);
        assert_eq!(
            coordinate_median(&[&a, &b, &c]).unwrap().values(),
            &[2.0, 20.0, 0.0]
        );
        // even count: mean of the middle two
        let d = ps(&[3.0, 40.0, 1.0]);
        assert_eq!(
            coordinate_median(&[&a, &b, &c, &d]).unwrap().values(),
            &[2.5, 25.0, 0.5]
        );
        assert_eq!(coordinate_median(&[]), Err(AggregateError::Empty));
    }

    #[test]
    fn trimmed_mean_examples() {
        let sets: Vec<ParamSet> = [1.0f32, 2.0, 3.0, 4.0, 1000.0]
            .iter()
            .map(|&x| ps(&[x, -x, 0.0]))
            .collect();
        let refs: Vec<&ParamSet> = sets.iter().collect();
        // trim 1 of 5 each side: mean of 2, 3, 4
        assert_eq!(
            trimmed_mean(&refs, 0.2).unwrap().values(),
            &[3.0, -3.0, 0.0]
        );
        // no trimming: plain mean
        assert_eq!(
            trimmed_mean(&refs, 0.0).unwrap().values(),
            &[202.0, -202.0, 0.0]
        );
        assert!(matches!(
            trimmed_mean(&refs, 0.5),
            Err(AggregateError::InvalidParameter(_))
        ));
        // floor(0.49 * 2) = 0: nothing trimmed, mean of 1 and 2.
        assert_eq!(trimmed_mean(&refs[..2], 0.49).unwrap().values()[0], 1.5);
        // floor(0.49 * 4) = 1 from each side of 1, 2, 3, 4: mean of 2 and 3.
        assert_eq!(trimmed_mean(&refs[..4], 0.49).unwrap().values()[0], 2.5);
    }

    #[test]
    fn strategy_dispatch_and_serde_names() {
        let a = ps(&[1.0, 1.0, 1.0]);
        let b = ps(&[3.0, 3.0, 3.0]);
        let c = ps(&[8.0, 8.0, 8.0]);
        let ups = [(&a, 1), (&b, 1), (&c, 2)];
        assert_eq!(
            Strategy::FedAvg.aggregate(&ups).unwrap().values(),
            &[5.0; 3]
        );
        assert_eq!(
            Strategy::Median.aggregate(&ups).unwrap().values(),
            &[3.0; 3]
        );
        let tm = Strategy::TrimmedMean {
            trim_fraction: 0.34,
        };
        assert_eq!(tm.aggregate(&ups).unwrap().values(), &[3.0; 3]);
        assert!(Strategy::FedAvg.is_streaming() && !Strategy::Median.is_streaming());
    }

    fn arb_updates() -> impl proptest::strategy::Strategy<Value = Vec<(Vec<f32>, u64)>> {
        (1usize..20).prop_flat_map(|n| {
            prop::collection::vec(
                (prop::collection::vec(-1000.0f32..1000.0, n), 0u64..10_000),
                1..12,
            )
        })
    }

    proptest! {
        #[test]
        fn streaming_equals_fedavg_in_any_order(
            ups in arb_updates(),
            seed in any::<u64>(),
        ) {
            let n = ups[0].0.len();
            let specs = vec![TensorSpec::new("w", vec![n])];
            let sets: Vec<(ParamSet, u64)> = ups
                .iter()
                .map(|(v, w)| (ParamSet::new(specs.clone(), v.clone()).unwrap(), *w))
                .collect();
            let refs: Vec<(&ParamSet, u64)> = sets.iter().map(|(p, w)| (p, *w)).collect();
            let total: u64 = refs.iter().map(|(_, w)| w).sum();
            let batch = fedavg(&refs);
            if total == 0 {
                prop_assert_eq!(batch, Err(AggregateError::ZeroWeight));
                return Ok(());
            }
            let batch = batch.unwrap();
            let mut order: Vec<usize> = (0..refs.len()).collect();
            crate::rng::SplitMix64::new(seed).shuffle(&mut order);
            let mut acc = StreamingFedAvg::new(specs);
            for &i in &order {
                acc.add(refs[i].0, refs[i].1).unwrap();
            }
            prop_assert_eq!(acc.count(), refs.len());
            prop_assert_eq!(acc.total_weight(), total);
            let streamed = acc.finish().unwrap();
            for (x, y) in batch.values().iter().zip(streamed.values()) {
                prop_assert!((x - y).abs() <= 1e-5 * (1.0 + x.abs()), "{} vs {}", x, y);
            }
            // The mean lies within the range of the weighted inputs.
            for i in 0..n {
                let (lo, hi) = refs.iter().filter(|(_, w)| *w > 0).fold(
                    (f32::INFINITY, f32::NEG_INFINITY),
                    |(lo, hi), (p, _)| (lo.min(p.values()[i]), hi.max(p.values()[i])),
                );
                let v = batch.values()[i];
                prop_assert!(v >= lo - 1e-3 && v <= hi + 1e-3);
            }
        }

        #[test]
        fn robust_aggregates_are_bounded_and_order_free(
            ups in arb_updates(),
            trim in 0.0f64..0.49,
            seed in any::<u64>(),
        ) {
            let n = ups[0].0.len();
            let specs = vec![TensorSpec::new("w", vec![n])];
            let sets: Vec<ParamSet> = ups
                .iter()
                .map(|(v, _)| ParamSet::new(specs.clone(), v.clone()).unwrap())
                .collect();
            let mut refs: Vec<&ParamSet> = sets.iter().collect();
            let med = coordinate_median(&refs).unwrap();
            let tm = trimmed_mean(&refs, trim).unwrap();
            for i in 0..n {
                let col: Vec<f32> = refs.iter().map(|p| p.values()[i]).collect();
                let lo = col.iter().copied().fold(f32::INFINITY, f32::min);
                let hi = col.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                for v in [med.values()[i], tm.values()[i]] {
                    prop_assert!(v >= lo - 1e-3 && v <= hi + 1e-3);
                }
                // At least half of the values are <= the median and at least half >=.
                let m = med.values()[i];
                let le = col.iter().filter(|&&x| x <= m).count();
                let ge = col.iter().filter(|&&x| x >= m).count();
                prop_assert!(2 * le >= col.len() && 2 * ge >= col.len());
            }
            crate::rng::SplitMix64::new(seed).shuffle(&mut refs);
            prop_assert_eq!(coordinate_median(&refs).unwrap(), med);
            let tm2 = trimmed_mean(&refs, trim).unwrap();
            for (x, y) in tm.values().iter().zip(tm2.values()) {
                prop_assert!((x - y).abs() <= 1e-4 * (1.0 + x.abs()));
            }
        }
    }
}

/// Elements per block of [`fedavg_blocked`]: the block's accumulator (64 KiB) stays in
/// the L1/L2 cache while every update streams through it once.
const FEDAVG_BLOCK: usize = 64 * 1024;

/// FedAvg over updates that are all in memory, cache-blocked: each input byte is read
/// exactly once and the accumulator never leaves the cache, so it runs at close to the
/// memory's read bandwidth. Accumulates `f32` products with normalised weights (relative
/// error about `n_updates × 2⁻²⁴`); the result equals [`fedavg`] within that tolerance.
pub fn fedavg_blocked(updates: &[(&ParamSet, u64)]) -> Result<ParamSet, AggregateError> {
    let (first, _) = updates.first().ok_or(AggregateError::Empty)?;
    let mut total: u64 = 0;
    for (index, (u, w)) in updates.iter().enumerate() {
        if !first.same_layout(u) {
            return Err(AggregateError::LayoutMismatch { index });
        }
        total = total
            .checked_add(*w)
            .ok_or(AggregateError::WeightOverflow)?;
    }
    if total == 0 {
        return Err(AggregateError::ZeroWeight);
    }
    let scale: Vec<f32> = updates
        .iter()
        .map(|(_, w)| (*w as f64 / total as f64) as f32)
        .collect();
    let n = first.len();
    let mut out = vec![0f32; n];
    fold_blocked(updates, &scale, &mut out);
    // A non-finite input makes its outputs non-finite (weights are >= 0): one check at
    // the end instead of one per input element; the slow scan only runs on error.
    if !out.iter().all(|v| v.is_finite()) {
        let index = updates
            .iter()
            .position(|(u, _)| !u.all_finite())
            .unwrap_or(0);
        return Err(AggregateError::NonFinite { index });
    }
    ParamSet::new(first.specs().to_vec(), out)
        .map_err(|e| AggregateError::InvalidParameter(format!("internal layout error: {e}")))
}

/// `out += Σ scale[i] · updates[i]`, block by block (the kernel of [`fedavg_blocked`]).
/// Every update must have `out.len()` values.
///
/// Each pass over an output block folds a group of up to [`MAX_GROUP`] updates, and the
/// groups are balanced (10 updates: 5 + 5, not 8 + 2), since a pass that folds only one
/// or two updates pays the block's read and write for little input.
pub fn fold_blocked(updates: &[(&ParamSet, u64)], scale: &[f32], out: &mut [f32]) {
    let n = out.len();
    let groups = updates.len().div_ceil(MAX_GROUP).max(1);
    let per_group = updates.len().div_ceil(groups);
    for (start, out_block) in (0..n)
        .step_by(FEDAVG_BLOCK)
        .zip(out.chunks_mut(FEDAVG_BLOCK))
    {
        let end = start + out_block.len();
        for (group, k) in updates.chunks(per_group).zip(scale.chunks(per_group)) {
            match group.len() {
                1 => fold_group::<1>(group, k, start..end, out_block),
                2 => fold_group::<2>(group, k, start..end, out_block),
                3 => fold_group::<3>(group, k, start..end, out_block),
                4 => fold_group::<4>(group, k, start..end, out_block),
                5 => fold_group::<5>(group, k, start..end, out_block),
                6 => fold_group::<6>(group, k, start..end, out_block),
                7 => fold_group::<7>(group, k, start..end, out_block),
                _ => fold_group::<8>(group, k, start..end, out_block),
            }
        }
    }
}

/// Most updates folded in one pass over an output block.
const MAX_GROUP: usize = 8;

/// `out_block += Σ k[j] · group[j][range]` for exactly `K` updates, in one pass.
fn fold_group<const K: usize>(
    group: &[(&ParamSet, u64)],
    k: &[f32],
    range: std::ops::Range<usize>,
    out_block: &mut [f32],
) {
    let len = out_block.len();
    let inputs: [&[f32]; K] = std::array::from_fn(|j| &group[j].0.values()[range.clone()][..len]);
    let weights: [f32; K] = std::array::from_fn(|j| k[j]);
    for (idx, o) in out_block.iter_mut().enumerate() {
        let mut acc = *o;
        for j in 0..K {
            acc += weights[j] * inputs[j][idx];
        }
        *o = acc;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod blocked_tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn blocked_equals_fedavg(n in 1usize..100_000, clients in 1usize..5, seed in any::<u32>()) {
            let specs = vec![TensorSpec::new("w", vec![n])];
            let sets: Vec<ParamSet> = (0..clients)
                .map(|c| ParamSet::new(specs.clone(), (0..n).map(|i| ((i as u32 ^ seed).wrapping_mul(c as u32 + 7) % 1000) as f32 * 0.001 - 0.5).collect()).unwrap())
                .collect();
            let pairs: Vec<(&ParamSet, u64)> = sets.iter().enumerate().map(|(i, s)| (s, i as u64 + 1)).collect();
            let a = fedavg_blocked(&pairs).unwrap();
            let b = fedavg(&pairs).unwrap();
            for (x, y) in a.values().iter().zip(b.values()) {
                prop_assert!((x - y).abs() <= 1e-5, "{x} vs {y}");
            }
        }
    }

    #[test]
    fn blocked_rejects_bad_input() {
        let specs = vec![TensorSpec::new("w", vec![3])];
        let a = ParamSet::new(specs.clone(), vec![1.0, 2.0, 3.0]).unwrap();
        let bad = ParamSet::new(specs, vec![1.0, f32::NAN, 3.0]).unwrap();
        assert!(matches!(fedavg_blocked(&[]), Err(AggregateError::Empty)));
        assert!(matches!(
            fedavg_blocked(&[(&a, 0)]),
            Err(AggregateError::ZeroWeight)
        ));
        assert!(matches!(
            fedavg_blocked(&[(&a, 1), (&bad, 1)]),
            Err(AggregateError::NonFinite { index: 1 })
        ));
        let avg = fedavg_blocked(&[(&a, 1), (&a, 3)]).unwrap();
        assert_eq!(avg.values(), &[1.0, 2.0, 3.0]);
    }
}
