//! Many seeds in parallel: every core runs whole simulations (one seed each) on its own
//! thread; results are collected in seed order, so the summary does not depend on timing.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::scenario::Scenario;
use crate::sim::{RunOptions, SimError, run};

/// The result of one seed of a sweep.
#[derive(Clone, Debug)]
pub struct SeedResult {
    /// The seed.
    pub seed: u64,
    /// Safety violations.
    pub safety_violations: u64,
    /// First violation, if any.
    pub first_violation: Option<String>,
    /// Liveness failures.
    pub liveness_failures: Vec<String>,
    /// Rounds committed.
    pub rounds_committed: u64,
    /// Failover times after coordinator crashes (ms).
    pub failover_ms: Vec<u64>,
    /// The run's trace hash.
    pub trace_hash: String,
}

impl SeedResult {
    /// Whether the seed failed (a violation or a liveness failure).
    pub fn failed(&self) -> bool {
        self.safety_violations > 0 || !self.liveness_failures.is_empty()
    }
}

/// The result of a sweep.
#[derive(Clone, Debug, Default)]
pub struct SweepSummary {
    /// Per seed, in seed order.
    pub results: Vec<SeedResult>,
}

impl SweepSummary {
    /// Seeds run.
    pub fn seeds(&self) -> usize {
        self.results.len()
    }
    /// Seeds that failed.
    pub fn failed(&self) -> usize {
        self.results.iter().filter(|r| r.failed()).count()
    }
    /// Safety violations over all seeds.
    pub fn safety_violations(&self) -> u64 {
        self.results.iter().map(|r| r.safety_violations).sum()
    }
    /// Seeds with a liveness failure.
    pub fn liveness_failures(&self) -> usize {
        self.results
            .iter()
            .filter(|r| !r.liveness_failures.is_empty())
            .count()
    }
    /// All failover times after coordinator crashes (ms), sorted.
    pub fn failover_ms(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .results
            .iter()
            .flat_map(|r| r.failover_ms.clone())
            .collect();
        v.sort_unstable();
        v
    }
}

/// Parses `A..B` (inclusive) or `A..=B` into the seeds it names.
pub fn parse_seeds(s: &str) -> Result<std::ops::RangeInclusive<u64>, String> {
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| format!("seed range {s:?} must look like 1..200"))?;
    let b = b.strip_prefix('=').unwrap_or(b);
    let a: u64 = a
        .trim()
        .parse()
        .map_err(|e| format!("seed range start {a:?}: {e}"))?;
    let b: u64 = b
        .trim()
        .parse()
        .map_err(|e| format!("seed range end {b:?}: {e}"))?;
    if b < a {
        return Err(format!("empty seed range {s:?}"));
    }
    Ok(a..=b)
}

/// Runs `sc` for every seed of `seeds` on `jobs` threads.
pub fn sweep(
    sc: &Scenario,
    seeds: std::ops::RangeInclusive<u64>,
    jobs: usize,
    break_fencing: bool,
) -> Result<SweepSummary, SimError> {
    sc.validate()?;
    let list: Vec<u64> = seeds.collect();
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<SeedResult>>> = Mutex::new(vec![None; list.len()]);
    let error: Mutex<Option<SimError>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1).min(list.len().max(1)) {
            s.spawn(|| {
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&seed) = list.get(k) else { break };
                    let opts = RunOptions {
                        seed,
                        break_fencing,
                        verbose: false,
                    };
                    match run(sc, opts) {
                        Ok(o) => {
                            let r = SeedResult {
                                seed,
                                safety_violations: o.safety_violations,
                                first_violation: o.violations.first().cloned(),
                                liveness_failures: o.liveness_failures,
                                rounds_committed: o.rounds_committed,
                                failover_ms: o
                                    .failovers
                                    .iter()
                                    .filter_map(|f| f.after_crash_ms)
                                    .collect(),
                                trace_hash: o.trace_hash,
                            };
                            if let Ok(mut v) = results.lock() {
                                v[k] = Some(r);
                            }
                        }
                        Err(e) => {
                            if let Ok(mut slot) = error.lock() {
                                slot.get_or_insert(e);
                            }
                            break;
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = error.into_inner().ok().flatten() {
        return Err(e);
    }
    let results = results
        .into_inner()
        .unwrap_or_default()
        .into_iter()
        .flatten()
        .collect();
    Ok(SweepSummary { results })
}
