//! From run-to-failure recordings to training windows.
//!
//! A [`Trajectory`] is one machine's sensor rows from its first recorded cycle to the
//! cycle it failed. [`make_windows`] scales the rows with a [`Scaler`] and cuts every
//! run of `window` consecutive cycles (stride 1) into a sample whose target is the
//! piecewise-linear RUL at the window's last cycle, capped at `rul_cap` (the
//! standard C-MAPSS protocol).
//!
//! In a federation the scaler is never fitted on one edge alone: each edge fits its
//! own ([`Scaler::fit`]) and the extremes are combined with [`Scaler::merge`].

use serde::{Deserialize, Serialize};

/// One machine's run to failure: `rows[cycle][feature]`, the last row is the failure cycle.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trajectory {
    /// Machine identifier (unique within one data source).
    pub machine: u32,
    /// Sensor readings per operating cycle, oldest first.
    pub rows: Vec<Vec<f32>>,
}

impl Trajectory {
    /// Number of recorded cycles.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// Per-feature min-max scaling to `[0, 1]` (values outside the fitted range map outside it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scaler {
    /// Per-feature minimum.
    pub min: Vec<f32>,
    /// Per-feature maximum.
    pub max: Vec<f32>,
}

impl Scaler {
    /// Fits min and max over every finite value of every row.
    ///
    /// The number of features is the longest row's width; a feature with no finite
    /// value gets `min = max = 0`. `None` if there are no rows.
    pub fn fit(trajs: &[Trajectory]) -> Option<Scaler> {
        let features = trajs.iter().flat_map(|t| &t.rows).map(Vec::len).max()?;
        let mut min = vec![f32::INFINITY; features];
        let mut max = vec![f32::NEG_INFINITY; features];
        for row in trajs.iter().flat_map(|t| &t.rows) {
            for (j, &v) in row.iter().enumerate() {
                if v.is_finite() {
                    min[j] = min[j].min(v);
                    max[j] = max[j].max(v);
                }
            }
        }
        for (lo, hi) in min.iter_mut().zip(max.iter_mut()) {
            if lo > hi {
                *lo = 0.0;
                *hi = 0.0;
            }
        }
        Some(Scaler { min, max })
    }

    /// Number of features.
    pub fn features(&self) -> usize {
        self.min.len()
    }

    /// The federated scaler: elementwise min of the minima and max of the maxima.
    ///
    /// If the widths differ, the wider scaler's extra features are taken as they are.
    pub fn merge(&self, other: &Scaler) -> Scaler {
        fn combine(a: &[f32], b: &[f32], pick: fn(f32, f32) -> f32) -> Vec<f32> {
            let (long, short) = if a.len() >= b.len() { (a, b) } else { (b, a) };
            long.iter()
                .enumerate()
                .map(|(i, &x)| short.get(i).map_or(x, |&y| pick(x, y)))
                .collect()
        }
        Scaler {
            min: combine(&self.min, &other.min, f32::min),
            max: combine(&self.max, &other.max, f32::max),
        }
    }

    /// Scales one row to exactly [`features`](Self::features) values.
    ///
    /// Missing features and non-finite readings become `0.0`, extra features are
    /// dropped, and a constant feature (`max == min`) maps to `0.0`.
    pub fn transform(&self, row: &[f32]) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.features());
        self.transform_into(row, &mut out);
        out
    }

    /// [`transform`](Self::transform), appending to `out`.
    pub fn transform_into(&self, row: &[f32], out: &mut Vec<f32>) {
        for (j, (&lo, &hi)) in self.min.iter().zip(&self.max).enumerate() {
            let range = hi - lo;
            let v = match row.get(j) {
                Some(&x) if x.is_finite() && range > 0.0 && range.is_finite() => (x - lo) / range,
                _ => 0.0,
            };
            out.push(v);
        }
    }
}

/// How trajectories are cut into samples.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WindowConfig {
    /// Cycles per sample (C-MAPSS FD001 standard: 30).
    pub window: usize,
    /// Cap of the piecewise-linear RUL target (standard: 125).
    pub rul_cap: f32,
}

impl Default for WindowConfig {
    fn default() -> Self {
        Self {
            window: 30,
            rul_cap: 125.0,
        }
    }
}

/// Windows ready for a model: `inputs` is `[n, window, features]` row-major.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Dataset {
    /// Scaled sensor values, `n · window · features` long.
    pub inputs: Vec<f32>,
    /// Capped RUL at each window's last cycle, `n` long.
    pub targets: Vec<f32>,
    /// Cycles per sample.
    pub window: usize,
    /// Features per cycle.
    pub features: usize,
}

impl Dataset {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// Values of one sample, `window · features` long; `None` out of range.
    pub fn sample(&self, index: usize) -> Option<&[f32]> {
        let size = self.window * self.features;
        self.inputs.get(index * size..(index + 1) * size)
    }

    /// Whether `inputs` has exactly `len · window · features` values.
    pub fn is_consistent(&self) -> bool {
        self.window
            .checked_mul(self.features)
            .and_then(|s| s.checked_mul(self.targets.len()))
            == Some(self.inputs.len())
    }

    /// A data set with the samples at `indices` (out-of-range indices are skipped).
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        let mut out = Dataset {
            window: self.window,
            features: self.features,
            ..Dataset::default()
        };
        for &i in indices {
            if let (Some(x), Some(&y)) = (self.sample(i), self.targets.get(i)) {
                out.inputs.extend_from_slice(x);
                out.targets.push(y);
            }
        }
        out
    }
}

/// Piecewise-linear RUL of the cycle at `index` in a run of `len` cycles: `len - 1 - index`, capped.
pub fn capped_rul(len: usize, index: usize, cap: f32) -> f32 {
    (len.saturating_sub(index + 1) as f32).min(cap)
}

/// Number of windows [`make_windows`] yields: `L - window + 1` per trajectory of length
/// `L >= window`, none for shorter ones (and none at all for `window == 0`).
pub fn count_windows(trajs: &[Trajectory], cfg: &WindowConfig) -> u64 {
    if cfg.window == 0 {
        return 0;
    }
    trajs
        .iter()
        .map(|t| (t.rows.len() + 1).saturating_sub(cfg.window) as u64)
        .sum()
}

/// Cuts every trajectory into stride-1 windows of scaled rows with capped-RUL targets.
///
/// Each row is scaled with [`Scaler::transform`], so the data set has
/// `scaler.features()` features whatever the rows' widths.
pub fn make_windows(trajs: &[Trajectory], scaler: &Scaler, cfg: &WindowConfig) -> Dataset {
    let n = usize::try_from(count_windows(trajs, cfg)).unwrap_or(0);
    let mut data = Dataset {
        inputs: Vec::with_capacity(
            n.saturating_mul(cfg.window)
                .saturating_mul(scaler.features()),
        ),
        targets: Vec::with_capacity(n),
        ..Dataset::default()
    };
    push_windows(&mut data, trajs, scaler, cfg, |len, end| {
        Some(capped_rul(len, end, cfg.rul_cap))
    });
    data
}

/// Appends to `data` every stride-1 window of scaled rows for which `target(len, end)`
/// (trajectory length, index of the window's last row) gives a target; sets `data`'s
/// window and feature counts. Trajectories shorter than the window give none.
fn push_windows(
    data: &mut Dataset,
    trajs: &[Trajectory],
    scaler: &Scaler,
    cfg: &WindowConfig,
    mut target: impl FnMut(usize, usize) -> Option<f32>,
) {
    let features = scaler.features();
    let w = cfg.window;
    data.window = w;
    data.features = features;
    if w == 0 {
        return;
    }
    let mut scaled = Vec::new();
    for traj in trajs {
        let len = traj.rows.len();
        if len < w {
            continue;
        }
        scaled.clear();
        for row in &traj.rows {
            scaler.transform_into(row, &mut scaled);
        }
        for end in (w - 1)..len {
            let Some(t) = target(len, end) else {
                continue;
            };
            let start = end + 1 - w;
            data.inputs
                .extend_from_slice(&scaled[start * features..(end + 1) * features]);
            data.targets.push(t);
        }
    }
}

/// The last window of each trajectory, for the C-MAPSS test protocol where a
/// trajectory stops before failure and `rul_at_end[i]` is the true RUL of its last cycle.
///
/// Trajectories shorter than the window are skipped; targets are **not** capped
/// (test metrics use the raw true RUL). Pairs beyond the shorter input are ignored.
pub fn last_windows(
    trajs: &[Trajectory],
    rul_at_end: &[f32],
    scaler: &Scaler,
    cfg: &WindowConfig,
) -> Dataset {
    let features = scaler.features();
    let w = cfg.window;
    let mut data = Dataset {
        window: w,
        features,
        ..Dataset::default()
    };
    if w == 0 {
        return data;
    }
    for (traj, &rul) in trajs.iter().zip(rul_at_end) {
        if traj.rows.len() < w {
            continue;
        }
        for row in &traj.rows[traj.rows.len() - w..] {
            scaler.transform_into(row, &mut data.inputs);
        }
        data.targets.push(rul);
    }
    data
}

/// Test-style samples from run-to-failure trajectories, for validating against the
/// C-MAPSS **test protocol** on held-out engines: every trajectory is cut after each
/// cycle whose raw (uncapped) RUL lies in `rul_range`, and the last `window` cycles
/// before the cut become one sample whose target is that raw RUL.
///
/// NASA's FD001 test engines stop at true RULs between 7 and 145 cycles and are
/// scored on their last window against the raw RUL; cutting a held-out engine at
/// every RUL of that range (one sample per RUL value) measures the same quantity
/// without the test set's truth file. Cuts that leave fewer than `window` cycles are
/// skipped.
pub fn cut_windows(
    trajs: &[Trajectory],
    scaler: &Scaler,
    cfg: &WindowConfig,
    rul_range: std::ops::RangeInclusive<usize>,
) -> Dataset {
    let mut data = Dataset::default();
    push_windows(&mut data, trajs, scaler, cfg, |len, end| {
        let rul = len - 1 - end;
        rul_range.contains(&rul).then_some(rul as f32)
    });
    data
}

/// The last `window` cycles of every trajectory, one sample per trajectory in order,
/// for inference on C-MAPSS test files (`targets[i]` is stored as sample `i`'s
/// target: the true RUL when known, anything, e.g. `0`, when not).
///
/// Unlike [`last_windows`] no trajectory is skipped: one shorter than the window is
/// **padded at the front by repeating its first row** (the engine is taken to have
/// run at its first recorded state before recording began), so every engine gets a
/// prediction. An empty trajectory yields an all-zero (scaled) window. Extra
/// targets or trajectories beyond the shorter input are ignored.
pub fn final_windows_padded(
    trajs: &[Trajectory],
    targets: &[f32],
    scaler: &Scaler,
    cfg: &WindowConfig,
) -> Dataset {
    let features = scaler.features();
    let w = cfg.window;
    let mut data = Dataset {
        window: w,
        features,
        ..Dataset::default()
    };
    if w == 0 {
        return data;
    }
    for (traj, &target) in trajs.iter().zip(targets) {
        let len = traj.rows.len();
        for i in 0..w {
            // Position in the trajectory of the window's i-th row; the padding
            // positions before the first row repeat row 0.
            let pos = (len + i).saturating_sub(w);
            match traj.rows.get(pos) {
                Some(row) => scaler.transform_into(row, &mut data.inputs),
                None => scaler.transform_into(&[], &mut data.inputs),
            }
        }
        data.targets.push(target);
    }
    data
}

/// Splits whole machines into `(train, holdout)`: `holdout` trajectories chosen by
/// `seed` (all of them if fewer), the rest in their original order. Validation on
/// held-out machines, never on windows of machines seen in training.
pub fn split_machines(
    trajs: &[Trajectory],
    holdout: usize,
    seed: u64,
) -> (Vec<Trajectory>, Vec<Trajectory>) {
    let mut order: Vec<usize> = (0..trajs.len()).collect();
    crate::rng::SplitMix64::derive(seed, 0x5e1).shuffle(&mut order);
    let mut held = vec![false; trajs.len()];
    for &i in order.iter().take(holdout) {
        held[i] = true;
    }
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for (t, h) in trajs.iter().zip(held) {
        if h {
            test.push(t.clone());
        } else {
            train.push(t.clone());
        }
    }
    (train, test)
}

/// Deals whole machines to `shards` sites (e.g. simulated edges) after a seeded
/// shuffle; sizes differ by at most one. `shards == 0` yields no shards.
pub fn shard_machines(trajs: &[Trajectory], shards: usize, seed: u64) -> Vec<Vec<Trajectory>> {
    let mut out = vec![Vec::new(); shards];
    if shards == 0 {
        return out;
    }
    let mut order: Vec<usize> = (0..trajs.len()).collect();
    crate::rng::SplitMix64::derive(seed, 0x54a2d).shuffle(&mut order);
    for (k, i) in order.into_iter().enumerate() {
        out[k % shards].push(trajs[i].clone());
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn traj(machine: u32, len: usize) -> Trajectory {
        Trajectory {
            machine,
            rows: (0..len).map(|c| vec![c as f32, 2.0 * c as f32]).collect(),
        }
    }

    #[test]
    fn window_counts() {
        let cfg = WindowConfig::default();
        let trajs = vec![traj(0, 50), traj(1, 30), traj(2, 29), traj(3, 200)];
        // 50 - 30 + 1, 30 - 30 + 1, none for 29 < 30, 200 - 30 + 1
        assert_eq!(count_windows(&trajs, &cfg), 21 + 1 + 171);
        let scaler = Scaler::fit(&trajs).unwrap();
        let ds = make_windows(&trajs, &scaler, &cfg);
        assert_eq!(ds.len() as u64, count_windows(&trajs, &cfg));
        assert!(ds.is_consistent());
        assert_eq!(ds.inputs.len(), ds.len() * 30 * 2);
        assert_eq!(
            count_windows(
                &trajs,
                &WindowConfig {
                    window: 0,
                    rul_cap: 1.0
                }
            ),
            0
        );
        assert_eq!(
            count_windows(
                &trajs,
                &WindowConfig {
                    window: 1,
                    rul_cap: 1.0
                }
            ),
            50 + 30 + 29 + 200
        );
    }

    #[test]
    fn cut_windows_are_test_style_last_windows_with_raw_rul() {
        let cfg = WindowConfig {
            window: 5,
            rul_cap: 125.0,
        };
        // 200 cycles: raw RUL 195 at the first full window, 0 at the last cycle; a
        // 20-cycle engine has cuts only down to RUL 15 (windows need 5 cycles).
        let trajs = vec![traj(0, 200), traj(1, 20), traj(2, 4)];
        let scaler = Scaler::fit(&trajs).unwrap();
        let ds = cut_windows(&trajs, &scaler, &cfg, 7..=145);
        // Engine 0: RULs 7..=145 (139 cuts); engine 1: RULs 7..=15 (9 cuts); engine 2: none.
        assert_eq!(ds.len(), 139 + 9);
        assert!(ds.is_consistent());
        // Targets are raw, not capped, and descend as the cut moves towards failure.
        assert_eq!(ds.targets[0], 145.0);
        assert_eq!(ds.targets[138], 7.0);
        assert_eq!(ds.targets[139], 15.0);
        // The sample is the window ending at the cut: for RUL 145 in a 200-cycle run
        // that is cycle 54, feature 0 = 54 / 199 after min-max scaling.
        let first = ds.sample(0).unwrap();
        assert!((first[4 * 2] - 54.0 / 199.0).abs() < 1e-6);
        // It agrees with the all-window set where the cap does not bite.
        let all = make_windows(&trajs[..1], &scaler, &cfg);
        let k = all.targets.iter().position(|&t| t == 100.0).unwrap();
        let c = ds.targets.iter().position(|&t| t == 100.0).unwrap();
        assert_eq!(all.sample(k), ds.sample(c));
    }

    #[test]
    fn rul_targets_are_piecewise_linear_and_capped() {
        let cfg = WindowConfig {
            window: 5,
            rul_cap: 125.0,
        };
        let trajs = vec![traj(0, 200)];
        let ds = make_windows(&trajs, &Scaler::fit(&trajs).unwrap(), &cfg);
        assert_eq!(ds.len(), 196);
        // First window ends at cycle 4: RUL 195, capped to 125.
        assert_eq!(ds.targets[0], 125.0);
        // The last window ends at the failure cycle.
        assert_eq!(*ds.targets.last().unwrap(), 0.0);
        assert_eq!(ds.targets[ds.len() - 2], 1.0);
        // Cycle 74 (window 70) has RUL 125 exactly, cycle 75 has 124.
        assert_eq!(ds.targets[70], 125.0);
        assert_eq!(ds.targets[71], 124.0);
        // The target belongs to the window's last row: feature 0 is the cycle / 199.
        let last = ds.sample(ds.len() - 1).unwrap();
        assert_eq!(last[(5 - 1) * 2], 1.0);
        assert_eq!(capped_rul(10, 9, 125.0), 0.0);
        assert_eq!(capped_rul(10, 0, 5.0), 5.0);
    }

    #[test]
    fn windows_are_stride_one_slices() {
        let cfg = WindowConfig {
            window: 3,
            rul_cap: 125.0,
        };
        let trajs = vec![traj(0, 6)];
        let scaler = Scaler {
            min: vec![0.0, 0.0],
            max: vec![1.0, 1.0],
        };
        let ds = make_windows(&trajs, &scaler, &cfg);
        assert_eq!(ds.targets, vec![3.0, 2.0, 1.0, 0.0]);
        assert_eq!(ds.sample(1).unwrap(), &[1.0, 2.0, 2.0, 4.0, 3.0, 6.0]);
        assert_eq!(ds.sample(4), None);
        let sub = ds.subset(&[3, 0, 99]);
        assert_eq!(sub.targets, vec![0.0, 3.0]);
        assert_eq!(sub.sample(1), ds.sample(0));
    }

    #[test]
    fn scaler_fit_merge_transform() {
        let a = vec![Trajectory {
            machine: 0,
            rows: vec![vec![1.0, 10.0, 5.0], vec![3.0, 20.0, 5.0]],
        }];
        let b = vec![Trajectory {
            machine: 1,
            rows: vec![vec![0.0, 15.0, 5.0], vec![2.0, f32::NAN, 5.0]],
        }];
        let sa = Scaler::fit(&a).unwrap();
        assert_eq!(sa.min, vec![1.0, 10.0, 5.0]);
        assert_eq!(sa.max, vec![3.0, 20.0, 5.0]);
        let sb = Scaler::fit(&b).unwrap();
        assert_eq!(sb.max, vec![2.0, 15.0, 5.0]); // NaN ignored
        let merged = sa.merge(&sb);
        assert_eq!(merged.min, vec![0.0, 10.0, 5.0]);
        assert_eq!(merged.max, vec![3.0, 20.0, 5.0]);
        assert_eq!(merged, sb.merge(&sa));
        // The merged scaler equals one fitted on the union.
        let all: Vec<Trajectory> = a.iter().chain(&b).cloned().collect();
        assert_eq!(merged, Scaler::fit(&all).unwrap());
        // Constant feature -> 0, NaN -> 0, short row padded, long row truncated.
        assert_eq!(merged.transform(&[1.5, 15.0, 5.0]), vec![0.5, 0.5, 0.0]);
        assert_eq!(merged.transform(&[f32::NAN, 20.0]), vec![0.0, 1.0, 0.0]);
        assert_eq!(merged.transform(&[3.0, 10.0, 5.0, 99.0]).len(), 3);
        // Out-of-range values are not clipped.
        assert_eq!(merged.transform(&[6.0, 0.0, 0.0])[0], 2.0);
        assert_eq!(Scaler::fit(&[]), None);
        assert_eq!(
            Scaler::fit(&[Trajectory {
                machine: 0,
                rows: vec![]
            }]),
            None
        );
        let wide = Scaler {
            min: vec![0.0; 4],
            max: vec![1.0; 4],
        };
        assert_eq!(merged.merge(&wide).features(), 4);
    }

    #[test]
    fn last_windows_use_raw_rul() {
        let cfg = WindowConfig {
            window: 3,
            rul_cap: 125.0,
        };
        let trajs = vec![traj(0, 10), traj(1, 2), traj(2, 3)];
        let scaler = Scaler::fit(&trajs).unwrap();
        let ds = last_windows(&trajs, &[200.0, 5.0, 7.0], &scaler, &cfg);
        assert_eq!(ds.targets, vec![200.0, 7.0]);
        assert_eq!(ds.inputs.len(), 2 * 3 * 2);
    }

    #[test]
    fn final_windows_pad_short_engines_with_their_first_row() {
        let cfg = WindowConfig {
            window: 4,
            rul_cap: 125.0,
        };
        let trajs = vec![traj(1, 6), traj(2, 2), traj(3, 4)];
        let scaler = Scaler {
            min: vec![0.0, 0.0],
            max: vec![10.0, 10.0],
        };
        let ds = final_windows_padded(&trajs, &[7.0, 8.0, 9.0], &scaler, &cfg);
        assert_eq!(ds.len(), 3);
        assert!(ds.is_consistent());
        assert_eq!(ds.targets, vec![7.0, 8.0, 9.0]);
        let firsts =
            |i: usize| -> Vec<f32> { ds.sample(i).unwrap().iter().step_by(2).copied().collect() };
        // The last four cycles (2..=5), scaled by 1/10.
        assert_eq!(firsts(0), vec![0.2, 0.3, 0.4, 0.5]);
        // Two cycles padded at the front with cycle 0.
        assert_eq!(firsts(1), vec![0.0, 0.0, 0.0, 0.1]);
        // Exactly one window long: no padding; same as last_windows.
        assert_eq!(firsts(2), vec![0.0, 0.1, 0.2, 0.3]);
        let plain = last_windows(&trajs[2..], &[9.0], &scaler, &cfg);
        assert_eq!(plain.sample(0), ds.sample(2));
        // An empty engine still yields one (all-zero) window.
        let empty = Trajectory {
            machine: 9,
            rows: vec![],
        };
        let ds = final_windows_padded(&[empty], &[0.0], &scaler, &cfg);
        assert_eq!(ds.inputs, vec![0.0; 8]);
    }

    #[test]
    fn split_and_shard_keep_machines_whole() {
        let trajs: Vec<Trajectory> = (0..10).map(|m| traj(m, 5 + m as usize)).collect();
        let (train, test) = split_machines(&trajs, 3, 1);
        assert_eq!((train.len(), test.len()), (7, 3));
        let mut ids: Vec<u32> = train.iter().chain(&test).map(|t| t.machine).collect();
        ids.sort_unstable();
        assert_eq!(ids, (0..10).collect::<Vec<_>>());
        assert_eq!(split_machines(&trajs, 3, 1), (train.clone(), test.clone()));
        assert_ne!(split_machines(&trajs, 3, 2).1, test);
        assert_eq!(split_machines(&trajs, 99, 1).1.len(), 10);
        // Each machine's rows travel with it.
        assert!(test.iter().all(|t| t.len() == 5 + t.machine as usize));

        let shards = shard_machines(&trajs, 3, 7);
        assert_eq!(
            shards.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![4, 3, 3]
        );
        let mut ids: Vec<u32> = shards.iter().flatten().map(|t| t.machine).collect();
        ids.sort_unstable();
        assert_eq!(ids, (0..10).collect::<Vec<_>>());
        assert!(shard_machines(&trajs, 0, 7).is_empty());
    }
}
