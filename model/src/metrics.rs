//! Regression metrics for remaining-useful-life prediction.
//!
//! All functions take `(predicted, true)` slices of equal length; extra elements of
//! the longer slice are ignored. `d = predicted - true`: a positive `d` is a *late*
//! prediction (the model thinks the machine lives longer than it does), which the
//! PHM08 score punishes harder than an early one.

use serde::{Deserialize, Serialize};

/// Root mean squared error; `0.0` for empty input.
pub fn rmse(pred: &[f32], truth: &[f32]) -> f64 {
    let n = pred.len().min(truth.len());
    if n == 0 {
        return 0.0;
    }
    let sse: f64 = pred
        .iter()
        .zip(truth)
        .map(|(&p, &t)| (f64::from(p) - f64::from(t)).powi(2))
        .sum();
    (sse / n as f64).sqrt()
}

/// Mean absolute error; `0.0` for empty input.
pub fn mae(pred: &[f32], truth: &[f32]) -> f64 {
    let n = pred.len().min(truth.len());
    if n == 0 {
        return 0.0;
    }
    let sae: f64 = pred
        .iter()
        .zip(truth)
        .map(|(&p, &t)| (f64::from(p) - f64::from(t)).abs())
        .sum();
    sae / n as f64
}

/// The PHM08 challenge score `Σ (exp(-d/13) - 1 if d < 0 else exp(d/10) - 1)`, lower is better.
pub fn phm08_score(pred: &[f32], truth: &[f32]) -> f64 {
    pred.iter()
        .zip(truth)
        .map(|(&p, &t)| {
            let d = f64::from(p) - f64::from(t);
            if d < 0.0 {
                (-d / 13.0).exp() - 1.0
            } else {
                (d / 10.0).exp() - 1.0
            }
        })
        .sum()
}

/// Number of late predictions (`d > 0`).
pub fn late_count(pred: &[f32], truth: &[f32]) -> u64 {
    pred.iter().zip(truth).filter(|(p, t)| p > t).count() as u64
}

/// Evaluation summary of a model on a data set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Root mean squared error, in cycles.
    pub rmse: f64,
    /// Mean absolute error, in cycles.
    pub mae: f64,
    /// PHM08 score (a sum, so it grows with `n`).
    pub score: f64,
    /// Number of late predictions.
    pub late: u64,
    /// Number of predictions.
    pub n: u64,
}

impl Metrics {
    /// All metrics of `pred` against `truth`.
    pub fn compute(pred: &[f32], truth: &[f32]) -> Self {
        Self {
            rmse: rmse(pred, truth),
            mae: mae(pred, truth),
            score: phm08_score(pred, truth),
            late: late_count(pred, truth),
            n: pred.len().min(truth.len()) as u64,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9 * (1.0 + b.abs())
    }

    #[test]
    fn hand_computed_values() {
        let pred = [10.0, 20.0, 30.0, 40.0];
        let truth = [10.0, 30.0, 20.0, 53.0];
        // d = 0, -10, +10, -13
        assert!(close(
            rmse(&pred, &truth),
            ((0.0 + 100.0 + 100.0 + 169.0) / 4.0f64).sqrt()
        ));
        assert!(close(mae(&pred, &truth), (0.0 + 10.0 + 10.0 + 13.0) / 4.0));
        let expected =
            0.0 + ((10.0f64 / 13.0).exp() - 1.0) + (1.0f64.exp() - 1.0) + (1.0f64.exp() - 1.0);
        assert!(close(phm08_score(&pred, &truth), expected));
        assert_eq!(late_count(&pred, &truth), 1);
        let m = Metrics::compute(&pred, &truth);
        assert_eq!(m.n, 4);
        assert_eq!(m.late, 1);
        assert!(close(m.score, expected));
    }

    #[test]
    fn late_predictions_cost_more_than_early_ones() {
        assert!(phm08_score(&[60.0], &[50.0]) > phm08_score(&[40.0], &[50.0]));
        assert_eq!(phm08_score(&[5.0], &[5.0]), 0.0);
    }

    #[test]
    fn empty_input_is_zero() {
        let m = Metrics::compute(&[], &[]);
        assert_eq!(
            m,
            Metrics {
                rmse: 0.0,
                mae: 0.0,
                score: 0.0,
                late: 0,
                n: 0
            }
        );
    }
}
