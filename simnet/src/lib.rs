//! simnet: a deterministic many-peer simulator that drives gossipfed's real protocol core
//! (`netproto::core`) under faults, in the spirit of turmoil, TigerBeetle's VOPR and
//! FoundationDB's simulation.
//!
//! One process runs an anchor and N−1 edges on a virtual clock and a simulated network
//! (latency, bandwidth, loss, duplication, reordering, partitions), with crashes and restarts
//! of any node, churn and stragglers. A seed decides the whole run; the event trace is hashed
//! so two runs of one seed can be compared. Global invariants are checked after every step
//! ([`check`]); liveness is checked once the fault phase is over.
//!
//! * [`scenario`]: TOML scenarios (peers, rounds, criterion, protocol knobs, network, faults).
//! * [`sim`]: the simulator and its drivers of the anchor and edge state machines.
//! * [`check`]: the invariant checkers.
//! * [`trainer`]: the fake and burn trainers.
//! * [`sweep`]: many seeds in parallel.
//! * [`report`] and [`plot`]: CSV and PNG reports.

pub mod check;
pub mod plot;
pub mod report;
pub mod scenario;
pub mod sim;
pub mod sweep;
pub mod trainer;

pub use scenario::{Scenario, TrainerKind};
pub use sim::{Outcome, RunOptions, SimError, run};
pub use sweep::{SweepSummary, parse_seeds, sweep};

/// The closing line of `simnet run` (an interface: scripts parse it).
pub fn summary_line(o: &Outcome, wall_s: f64) -> String {
    format!(
        "simnet: peers={} rounds_committed={} virtual_s={:.3} wall_s={:.3} safety_violations={} trace_hash={}",
        o.peers,
        o.rounds_committed,
        o.virtual_ms as f64 / 1e3,
        wall_s,
        o.safety_violations,
        o.trace_hash
    )
}

/// The closing line of `simnet sweep` (an interface: scripts parse it).
pub fn sweep_line(s: &SweepSummary) -> String {
    format!(
        "sweep: seeds={} failed={} safety_violations={} liveness_failures={}",
        s.seeds(),
        s.failed(),
        s.safety_violations(),
        s.liveness_failures()
    )
}
