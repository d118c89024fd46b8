//! A synthetic run-to-failure generator, so the demo and most tests need no external data.
//!
//! Each machine has a random life `L` and a hidden degradation state that rises to
//! 1 at its failure cycle. Every sensor channel is a baseline plus a signed, scaled
//! degradation signal plus Gaussian noise:
//!
//! ```text
//! x[c](t) = base[c] + offset[m,c] + sign[c]·gain[c]·g[m]·deg[c](t) + noise·gain[c]·N(0,1)
//! deg[c](t) = α[c]·exp(-(L-1-t)/τ[m]) + (1-α[c])·(h0[m] + (1-h0[m])·t/(L-1))²
//! ```
//!
//! The exponential part depends on the *remaining* life (so a window of recent
//! cycles carries the RUL signal, like C-MAPSS's late-life sensor drift); the
//! quadratic part depends on the life fraction, starting from a random initial wear
//! `h0`. Per-machine time constants `τ`, gains `g` and offsets make machines differ.
//!
//! The channel profile (`base`, `sign`, `gain`, `α`, magnitudes spanning three
//! orders of magnitude like real sensors) is fixed for the whole fleet, whatever the
//! seed: edges that generate their data with different seeds observe the same kind
//! of machine with different individual machines, which is what federated training
//! assumes.

use serde::{Deserialize, Serialize};

use crate::data::Trajectory;
use crate::rng::SplitMix64;

/// Seed of the fleet-wide channel profile (not configurable: see the module docs).
const FLEET_SEED: u64 = 0x6055_1bfe_d000_0001;

/// Parameters of [`generate`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SyntheticConfig {
    /// Number of machines (trajectories).
    pub machines: usize,
    /// Sensor channels per cycle.
    pub features: usize,
    /// Shortest life in cycles (at least 1).
    pub min_life: usize,
    /// Longest life in cycles (inclusive).
    pub max_life: usize,
    /// Noise standard deviation relative to each channel's degradation amplitude.
    pub noise: f32,
    /// Seed deciding the machines; the same seed gives the same trajectories.
    pub seed: u64,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self {
            machines: 8,
            features: 14,
            min_life: 120,
            max_life: 260,
            noise: 0.1,
            seed: 0,
        }
    }
}

/// A sensor channel's fleet-wide characteristics.
#[derive(Clone, Debug)]
struct Channel {
    base: f64,
    gain: f64,
    sign: f64,
    alpha: f64,
}

fn channel_profile(features: usize) -> Vec<Channel> {
    (0..features)
        .map(|c| {
            let mut g = SplitMix64::derive(FLEET_SEED, c as u64);
            let scale = 10f64.powf(g.uniform(-1.0, 2.5));
            Channel {
                base: scale * g.uniform(2.0, 10.0),
                gain: scale * g.uniform(0.5, 1.5),
                sign: if g.next_f64() < 0.65 { 1.0 } else { -1.0 },
                alpha: g.uniform(0.5, 0.9),
            }
        })
        .collect()
}

/// Generates `cfg.machines` run-to-failure trajectories; deterministic in `cfg`.
///
/// Machine ids are `0..machines`.
pub fn generate(cfg: &SyntheticConfig) -> Vec<Trajectory> {
    let channels = channel_profile(cfg.features);
    let min_life = cfg.min_life.max(1);
    let max_life = cfg.max_life.max(min_life);
    let noise = f64::from(cfg.noise).max(0.0);
    (0..cfg.machines)
        .map(|m| {
            let mut g = SplitMix64::derive(cfg.seed, m as u64);
            let life = min_life + g.below((max_life - min_life + 1) as u64) as usize;
            let tau = g.uniform(35.0, 55.0);
            let h0 = g.uniform(0.0, 0.15);
            let machine_gain = g.uniform(0.85, 1.15);
            let offsets: Vec<f64> = channels
                .iter()
                .map(|ch| 0.05 * ch.gain * g.normal())
                .collect();
            let span = (life - 1).max(1) as f64;
            let rows = (0..life)
                .map(|t| {
                    let remaining = (life - 1 - t) as f64;
                    let exp_part = (-remaining / tau).exp();
                    let frac = h0 + (1.0 - h0) * t as f64 / span;
                    channels
                        .iter()
                        .zip(&offsets)
                        .map(|(ch, off)| {
                            let deg = ch.alpha * exp_part + (1.0 - ch.alpha) * frac * frac;
                            let x = ch.base
                                + off
                                + ch.sign * ch.gain * machine_gain * deg
                                + noise * ch.gain * g.normal();
                            x as f32
                        })
                        .collect()
                })
                .collect();
            Trajectory {
                machine: m as u32,
                rows,
            }
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_per_seed_and_seeds_differ() {
        let cfg = SyntheticConfig::default();
        let a = generate(&cfg);
        assert_eq!(a, generate(&cfg));
        let b = generate(&SyntheticConfig {
            seed: 1,
            ..cfg.clone()
        });
        assert_ne!(a, b);
        assert_ne!(
            a.iter().map(|t| t.len()).collect::<Vec<_>>(),
            b.iter().map(|t| t.len()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn shapes_follow_the_config() {
        let cfg = SyntheticConfig {
            machines: 20,
            features: 5,
            min_life: 50,
            max_life: 60,
            noise: 0.0,
            seed: 9,
        };
        let trajs = generate(&cfg);
        assert_eq!(trajs.len(), 20);
        for (i, t) in trajs.iter().enumerate() {
            assert_eq!(t.machine, i as u32);
            assert!((50..=60).contains(&t.len()));
            assert!(
                t.rows
                    .iter()
                    .all(|r| r.len() == 5 && r.iter().all(|v| v.is_finite()))
            );
        }
        // Degenerate configs still produce valid, non-empty trajectories.
        let odd = generate(&SyntheticConfig {
            machines: 2,
            min_life: 0,
            max_life: 0,
            ..cfg
        });
        assert!(odd.iter().all(|t| t.len() == 1));
    }

    #[test]
    fn every_trajectory_ends_in_failure() {
        // Health index: each channel's signed deviation from its baseline in units
        // of its gain. It must start low and reach its maximum at the last cycle.
        let cfg = SyntheticConfig {
            machines: 30,
            seed: 5,
            ..SyntheticConfig::default()
        };
        let channels = channel_profile(cfg.features);
        for t in generate(&cfg) {
            let health: Vec<f64> = t
                .rows
                .iter()
                .map(|row| {
                    row.iter()
                        .zip(&channels)
                        .map(|(&x, ch)| ch.sign * (f64::from(x) - ch.base) / ch.gain)
                        .sum::<f64>()
                        / channels.len() as f64
                })
                .collect();
            let n = health.len();
            let start: f64 = health[..5].iter().sum::<f64>() / 5.0;
            let end: f64 = health[n - 5..].iter().sum::<f64>() / 5.0;
            assert!(start < 0.3, "machine {} starts worn: {start}", t.machine);
            assert!(end > 0.75, "machine {} ends healthy: {end}", t.machine);
            let max_before_end = health[..n - 10].iter().cloned().fold(f64::MIN, f64::max);
            assert!(health[n - 1] > max_before_end - 0.1);
        }
    }

    #[test]
    fn channel_profile_is_seed_independent_and_varied() {
        let a = generate(&SyntheticConfig {
            seed: 1,
            ..SyntheticConfig::default()
        });
        let b = generate(&SyntheticConfig {
            seed: 2,
            ..SyntheticConfig::default()
        });
        // Same channel semantics: first rows are close relative to channel magnitude.
        for c in 0..14 {
            let (x, y) = (a[0].rows[0][c], b[0].rows[0][c]);
            assert!(
                (x - y).abs() <= 0.5 * x.abs().max(y.abs()) + 1.0,
                "channel {c}: {x} vs {y}"
            );
        }
        let mags: Vec<f64> = channel_profile(14).iter().map(|c| c.base.abs()).collect();
        let (lo, hi) = mags
            .iter()
            .fold((f64::MAX, 0f64), |(l, h), &m| (l.min(m), h.max(m)));
        assert!(hi / lo > 10.0, "channels should span magnitudes");
    }
}
