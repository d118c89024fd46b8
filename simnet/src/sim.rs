//! The simulator: a virtual clock, an event queue, a simulated network and the drivers
//! that run the real `netproto` anchor and edge state machines.
//!
//! Everything is decided by the seed: node properties (latency, bandwidth, stragglers,
//! eligibility), the fault schedule, every loss, duplication and delay. Events are ordered
//! by (virtual time, insertion order); the queue is a map from millisecond to a FIFO of the
//! events due then, so ties keep insertion order without a sequence number and a broadcast
//! to a thousand peers costs a thousand cheap appends. Every control message is encoded
//! once with the real codec and decoded by every receiver. The [`Checker`] sees every
//! step; the run ends when enough rounds committed after the fault phase, or when a
//! liveness bound is exceeded.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use model::{ParamSet, StreamingFedAvg, validate_update};
use netproto::core::{Anchor, AnchorDurable, Config, Edge, Event, Output, SplitMix64, Time};
use netproto::wire::{Commit, Digest, Envelope, Message, NodeId, RoundPlan, SampleCounts};

use crate::check::Checker;
use crate::scenario::Scenario;
use crate::trainer::{Trainer, TrainerError};

/// Options of one run besides the scenario.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// The seed that decides everything.
    pub seed: u64,
    /// Test-only: disable the anchor's fencing to show the checkers fire.
    pub break_fencing: bool,
    /// Print every protocol event (not messages) to stderr.
    pub verbose: bool,
}

/// One committed round, for reports.
#[derive(Clone, Debug, PartialEq)]
pub struct RoundRecord {
    /// Global version created.
    pub version: u64,
    /// Round number.
    pub round: u64,
    /// Term it ran under.
    pub term: u64,
    /// Virtual time of the commit (ms).
    pub time_ms: Time,
    /// Participants selected.
    pub selected: usize,
    /// Updates aggregated.
    pub included: usize,
    /// Global loss of the new version (fake: distance to the optimum; burn: RMSE).
    pub global_loss: f64,
    /// Sample-weighted training loss reported by the commit.
    pub train_loss: f64,
}

/// A change of coordinator (a term granted after the first).
#[derive(Clone, Debug, PartialEq)]
pub struct FailoverRecord {
    /// Virtual time of the grant (ms).
    pub time_ms: Time,
    /// The new term.
    pub term: u64,
    /// Time from the crash of the previous coordinator to this grant, when a crash caused it.
    pub after_crash_ms: Option<Time>,
}

/// Counters of a run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    /// Events processed.
    pub events: u64,
    /// Control messages delivered and decoded.
    pub deliveries: u64,
    /// Control messages lost (loss, partition, receiver down).
    pub dropped: u64,
    /// Updates that reached the anchor.
    pub updates: u64,
    /// Timer wake-ups after which the state machine still wanted a timeout in the past.
    pub busy_wakes: u64,
    /// Crashes, leaves, joins and partitions injected.
    pub faults: u64,
}

/// The result of one run.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Nodes in the run (anchor included).
    pub peers: usize,
    /// The seed.
    pub seed: u64,
    /// Rounds the run aimed for.
    pub rounds_target: u64,
    /// Rounds committed (the final global version).
    pub rounds_committed: u64,
    /// Virtual time at the end (ms).
    pub virtual_ms: Time,
    /// Safety violations counted.
    pub safety_violations: u64,
    /// The first violation messages.
    pub violations: Vec<String>,
    /// Liveness failures (empty when live).
    pub liveness_failures: Vec<String>,
    /// Hex BLAKE3 of the event trace.
    pub trace_hash: String,
    /// Per-round data (version 0 = the genesis model).
    pub rounds: Vec<RoundRecord>,
    /// Coordinator changes.
    pub failovers: Vec<FailoverRecord>,
    /// When the fault phase ended (ms).
    pub faults_end_ms: Time,
    /// First commit after the fault phase (ms).
    pub first_commit_after_faults_ms: Option<Time>,
    /// Counters.
    pub stats: Stats,
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The trainer could not be built.
    #[error(transparent)]
    Trainer(#[from] TrainerError),
    /// The scenario is invalid.
    #[error(transparent)]
    Scenario(#[from] crate::scenario::ScenarioError),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Absent,
    Up,
    Down,
    Left,
}

struct Agg {
    round: u64,
    fed: StreamingFedAvg,
    base: Rc<ParamSet>,
}

struct AnchorNode {
    core: Anchor,
    agg: Option<Agg>,
    pending: Option<(u64, Digest)>,
}

struct Update {
    bytes: Rc<[u8]>,
    samples: u64,
    loss: f32,
}

struct EdgeNode {
    core: Edge,
    trained: BTreeMap<u64, Update>,
}

enum Proto {
    None,
    Anchor(Box<AnchorNode>),
    Edge(Box<EdgeNode>),
}

struct Node {
    id: NodeId,
    state: State,
    inc: u32,
    proto: Proto,
    timer_at: Option<Time>,
    group: u32,
    lat_ms: u64,
    bw: u64,
    slow: f64,
    samples: SampleCounts,
}

enum Fault {
    Crash { node: usize, down_ms: u64 },
    CrashCoordinator { down_ms: u64 },
    Restart { node: usize },
    Leave { node: usize },
    Join { node: usize },
    Partition { epoch: u32 },
    Heal { epoch: u32 },
    FaultsEnd,
}

enum Ev {
    Wake {
        node: u32,
        inc: u32,
        at: Time,
    },
    Deliver {
        to: u32,
        from: u32,
        bytes: Rc<[u8]>,
    },
    TrainDone {
        node: u32,
        inc: u32,
        plan: Rc<RoundPlan>,
    },
    UpdateArrive {
        from: u32,
        round: u64,
        term: u64,
        samples: u64,
        loss: f32,
        bytes: Rc<[u8]>,
    },
    AggregateDone {
        inc: u32,
        round: u64,
    },
    Fault(Fault),
}

/// Buffers trace records and hashes them in large blocks (BLAKE3 is fastest on big inputs).
struct Trace {
    buf: Vec<u8>,
    hasher: blake3::Hasher,
}

impl Trace {
    fn new() -> Self {
        Self {
            buf: Vec::with_capacity(1 << 16),
            hasher: blake3::Hasher::new(),
        }
    }
    fn record(&mut self, now: Time, kind: u8, a: u32, b: u64) {
        self.buf.extend_from_slice(&now.to_le_bytes());
        self.buf.push(kind);
        self.buf.extend_from_slice(&a.to_le_bytes());
        self.buf.extend_from_slice(&b.to_le_bytes());
        if self.buf.len() >= 1 << 16 {
            self.hasher.update(&self.buf);
            self.buf.clear();
        }
    }
    fn bytes(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }
    fn finish(mut self) -> String {
        self.hasher.update(&self.buf);
        self.hasher.finalize().to_hex().to_string()
    }
}

/// One simulation run.
pub struct Sim {
    sc: Scenario,
    cfg: Config,
    opts: RunOptions,
    now: Time,
    queue: BTreeMap<Time, Vec<Ev>>,
    nodes: Vec<Node>,
    index: HashMap<NodeId, usize>,
    durable: AnchorDurable,
    store: HashMap<Digest, Rc<ParamSet>>,
    trainer: Trainer,
    checker: Checker,
    net_rng: SplitMix64,
    rng: SplitMix64,
    trace: Trace,
    stats: Stats,
    partition_epoch: u32,
    faults_end: Time,
    faults_over: bool,
    first_commit_after_faults: Option<Time>,
    failover_from: Option<(Time, u64)>,
    rounds: Vec<RoundRecord>,
    failovers: Vec<FailoverRecord>,
    selected: HashMap<u64, usize>,
    liveness: Vec<String>,
    done: bool,
}

fn uniform(rng: &mut SplitMix64, lo: u64, hi: u64) -> u64 {
    lo + rng.below(hi.saturating_sub(lo) + 1)
}

impl Sim {
    /// Builds a run of `sc` with `opts` (nodes, trainer, fault schedule).
    pub fn new(sc: &Scenario, opts: RunOptions) -> Result<Self, SimError> {
        sc.validate()?;
        let seed = opts.seed;
        let cfg = sc.protocol_config();
        let n = sc.peers;
        let mut rng = SplitMix64::new(seed ^ 0x5EED_0000_0000_0001);
        let mut fault_rng = SplitMix64::new(seed ^ 0xFA17_0000_0000_0002);
        let net_rng = SplitMix64::new(seed ^ 0x0E7_0000_0000_0003);

        // Node 0 is the anchor; edges are nodes 1..n, trainer index = node - 1.
        let edges = n - 1;
        let mut eligible: Vec<bool> = (0..edges)
            .map(|_| rng.unit() >= sc.ineligible_fraction)
            .collect();
        // Keep enough eligible edges for rounds to be possible at all.
        let need = sc.protocol.min_participants + 2;
        for e in eligible.iter_mut().take(need.min(edges)) {
            *e = true;
        }
        let (trainer, samples) = Trainer::new(sc, seed, &eligible)?;
        let genesis = trainer.genesis();
        let gdigest = genesis.digest();
        let mut store = HashMap::new();
        store.insert(gdigest, Rc::new(genesis));

        let mut nodes = Vec::with_capacity(n);
        let mut index = HashMap::with_capacity(n);
        let mut elig_map = HashMap::with_capacity(n);
        for i in 0..n {
            let id = if i == 0 {
                NodeId::new("anchor")
            } else {
                NodeId(format!("edge-{i:04}"))
            };
            let s = if i == 0 {
                SampleCounts::default()
            } else {
                samples[i - 1]
            };
            elig_map.insert(id.clone(), i > 0 && sc.criterion.is_met(&s));
            index.insert(id.clone(), i);
            let straggler = i > 0 && rng.unit() < sc.faults.straggler_fraction;
            let slow = if straggler {
                2.0 + rng.unit() * (sc.faults.straggler_factor - 2.0).max(0.0)
            } else {
                1.0
            };
            nodes.push(Node {
                id,
                state: State::Absent,
                inc: 0,
                proto: Proto::None,
                timer_at: None,
                group: 0,
                lat_ms: uniform(
                    &mut rng,
                    sc.network.latency_min_ms,
                    sc.network.latency_max_ms,
                ),
                bw: uniform(&mut rng, sc.network.bandwidth_min, sc.network.bandwidth_max),
                slow,
                samples: s,
            });
        }
        let checker = Checker::new(elig_map, n, gdigest);
        let mut sim = Self {
            sc: sc.clone(),
            cfg,
            opts,
            now: 0,
            queue: BTreeMap::new(),
            nodes,
            index,
            durable: AnchorDurable::genesis(gdigest),
            store,
            trainer,
            checker,
            net_rng,
            rng,
            trace: Trace::new(),
            stats: Stats::default(),
            partition_epoch: 0,
            faults_end: 0,
            faults_over: false,
            first_commit_after_faults: None,
            failover_from: None,
            rounds: Vec::new(),
            failovers: Vec::new(),
            selected: HashMap::new(),
            liveness: Vec::new(),
            done: false,
        };
        let g0 = sim.store.get(&gdigest).map(|p| sim.trainer.global_loss(p));
        sim.rounds.push(RoundRecord {
            version: 0,
            round: 0,
            term: 0,
            time_ms: 0,
            selected: 0,
            included: 0,
            global_loss: g0.unwrap_or(f64::NAN),
            train_loss: f64::NAN,
        });
        sim.schedule_faults(&mut fault_rng);
        Ok(sim)
    }

    fn push(&mut self, at: Time, ev: Ev) {
        self.queue.entry(at.max(self.now)).or_default().push(ev);
    }

    fn schedule_faults(&mut self, r: &mut SplitMix64) {
        let n = self.nodes.len();
        let f = self.sc.faults.clone();
        let start_spread = self.cfg.heartbeat_ms.min(2_000);
        let window = if f.enabled { f.window_s * 1_000 } else { 0 };
        self.faults_end = window;
        // Late joiners are drawn first so that they never start.
        let mut late = vec![false; n];
        if f.enabled {
            for _ in 0..f.joins {
                let node = 1 + r.below(n as u64 - 1) as usize;
                if !late[node] {
                    late[node] = true;
                    let at = uniform(r, 1, window.max(1));
                    self.push(at, Ev::Fault(Fault::Join { node }));
                }
            }
        }
        self.start_node(0);
        for (node, is_late) in late.iter().enumerate().skip(1) {
            if !is_late {
                let at = r.below(start_spread);
                self.push(at, Ev::Fault(Fault::Join { node }));
            }
        }
        if f.enabled {
            let down = |r: &mut SplitMix64| uniform(r, f.restart_min_ms, f.restart_max_ms);
            for _ in 0..f.edge_crashes {
                let at = r.below(window);
                let node = 1 + r.below(n as u64 - 1) as usize;
                let down_ms = down(r);
                self.push(at, Ev::Fault(Fault::Crash { node, down_ms }));
            }
            for _ in 0..f.anchor_crashes {
                let at = r.below(window);
                let down_ms = down(r);
                self.push(at, Ev::Fault(Fault::Crash { node: 0, down_ms }));
            }
            for _ in 0..f.coordinator_crashes {
                let at = r.below(window);
                let down_ms = down(r);
                self.push(at, Ev::Fault(Fault::CrashCoordinator { down_ms }));
            }
            for epoch in 1..=f.partitions {
                let at = r.below(window);
                let len = uniform(r, f.partition_min_ms, f.partition_max_ms);
                self.push(at, Ev::Fault(Fault::Partition { epoch }));
                self.push((at + len).min(window), Ev::Fault(Fault::Heal { epoch }));
            }
            for _ in 0..f.leaves {
                let at = r.below(window);
                let node = 1 + r.below(n as u64 - 1) as usize;
                self.push(at, Ev::Fault(Fault::Leave { node }));
            }
        }
        self.push(window, Ev::Fault(Fault::FaultsEnd));
    }

    fn start_node(&mut self, i: usize) {
        let now = self.now;
        let node = &mut self.nodes[i];
        node.state = State::Up;
        node.timer_at = None;
        if i == 0 {
            let mut core =
                Anchor::new(self.cfg.clone(), node.id.clone(), self.durable.clone(), now);
            if self.opts.break_fencing {
                core.disable_fencing_for_tests();
            }
            self.checker.on_anchor_restart(now, core.durable());
            node.proto = Proto::Anchor(Box::new(AnchorNode {
                core,
                agg: None,
                pending: None,
            }));
        } else {
            let core = Edge::new(
                self.cfg.clone(),
                node.id.clone(),
                NodeId::new("anchor"),
                node.samples,
                self.trainer.ranges(i - 1),
                self.opts.seed ^ (u64::from(node.inc) << 40),
                now,
            );
            node.proto = Proto::Edge(Box::new(EdgeNode {
                core,
                trained: BTreeMap::new(),
            }));
        }
        self.trace
            .record(now, 20, i as u32, u64::from(self.nodes[i].inc));
        if self.opts.verbose {
            eprintln!("t={now} {}: up", self.nodes[i].id);
        }
        self.step_node(i);
    }

    fn stop_node(&mut self, i: usize, state: State) {
        let node = &mut self.nodes[i];
        node.state = state;
        node.proto = Proto::None;
        node.inc += 1;
        node.timer_at = None;
        if i == 0 {
            self.checker.on_anchor_crash();
        } else {
            self.checker.on_node_reset(i);
        }
        self.trace.record(self.now, 21, i as u32, state as u64);
        if self.opts.verbose {
            eprintln!("t={} {}: {state:?}", self.now, self.nodes[i].id);
        }
    }

    /// Runs to the end and returns the outcome.
    pub fn run(mut self) -> Outcome {
        let max_ms = self.sc.liveness.max_virtual_s * 1_000;
        while !self.done {
            let Some(mut entry) = self.queue.first_entry() else {
                self.liveness.push("event queue ran dry".into());
                break;
            };
            let at = *entry.key();
            if at > max_ms {
                self.now = max_ms;
                break;
            }
            let evs = std::mem::take(entry.get_mut());
            entry.remove();
            self.now = at;
            for ev in evs {
                self.stats.events += 1;
                self.handle(ev);
                if self.done {
                    break;
                }
            }
            self.check_progress();
        }
        if !self.done && self.liveness.is_empty() {
            let k = self.checker.committed();
            self.liveness.push(format!(
                "only {k} of {} rounds committed by {} s",
                self.sc.rounds, self.sc.liveness.max_virtual_s
            ));
        }
        self.finish()
    }

    fn check_progress(&mut self) {
        if !self.faults_over {
            return;
        }
        let bound = self.faults_end + self.sc.liveness.commit_within_s * 1_000;
        match self.first_commit_after_faults {
            None if self.now > bound => {
                self.liveness.push(format!(
                    "no round committed within {} s after the faults stopped at {} ms",
                    self.sc.liveness.commit_within_s, self.faults_end
                ));
                self.done = true;
            }
            Some(_) if self.checker.committed() >= self.sc.rounds => self.done = true,
            _ => {}
        }
    }

    fn finish(mut self) -> Outcome {
        if self.stats.busy_wakes > 0 {
            self.liveness.push(format!(
                "{} timer wake-ups asked for a timeout in the past (a real driver would spin)",
                self.stats.busy_wakes
            ));
        }
        Outcome {
            peers: self.nodes.len(),
            seed: self.opts.seed,
            rounds_target: self.sc.rounds,
            rounds_committed: self.checker.committed(),
            virtual_ms: self.now,
            safety_violations: self.checker.count(),
            violations: self.checker.violations().to_vec(),
            liveness_failures: self.liveness,
            trace_hash: self.trace.finish(),
            rounds: self.rounds,
            failovers: self.failovers,
            faults_end_ms: self.faults_end,
            first_commit_after_faults_ms: self.first_commit_after_faults,
            stats: self.stats,
        }
    }

    fn handle(&mut self, ev: Ev) {
        let now = self.now;
        match ev {
            Ev::Wake { node, inc, at } => {
                let i = node as usize;
                let n = &mut self.nodes[i];
                if n.state != State::Up || n.inc != inc || n.timer_at != Some(at) {
                    return;
                }
                n.timer_at = None;
                self.trace.record(now, 1, node, 0);
                match &mut n.proto {
                    Proto::Anchor(a) => a.core.handle_timeout(now),
                    Proto::Edge(e) => e.core.handle_timeout(now),
                    Proto::None => return,
                }
                self.step_node_inner(i, true);
            }
            Ev::Deliver { to, from, bytes } => self.deliver(to as usize, from as usize, &bytes),
            Ev::TrainDone { node, inc, plan } => self.train_done(node as usize, inc, &plan),
            Ev::UpdateArrive {
                from,
                round,
                term,
                samples,
                loss,
                bytes,
            } => self.update_arrive(from as usize, round, term, samples, loss, &bytes),
            Ev::AggregateDone { inc, round } => self.aggregate_done(inc, round),
            Ev::Fault(f) => self.fault(f),
        }
    }

    fn reachable(&self, a: usize, b: usize) -> bool {
        self.nodes[a].group == self.nodes[b].group
    }

    /// Puts `bytes` from `from` to `to` on the simulated network.
    fn transmit(&mut self, from: usize, to: usize, bytes: &Rc<[u8]>) {
        if self.nodes[to].state != State::Up || !self.reachable(from, to) {
            self.stats.dropped += 1;
            return;
        }
        let net = &self.sc.network;
        let r = &mut self.net_rng;
        if net.loss > 0.0 && r.unit() < net.loss {
            self.stats.dropped += 1;
            return;
        }
        let base = self.nodes[from].lat_ms + self.nodes[to].lat_ms;
        let copies = if net.duplicate > 0.0 && r.unit() < net.duplicate {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let net = &self.sc.network;
            let r = &mut self.net_rng;
            let mut delay = base + r.below(net.jitter_ms + 1);
            if net.reorder > 0.0 && r.unit() < net.reorder {
                delay += r.below(net.reorder_delay_ms + 1);
            }
            let ev = Ev::Deliver {
                to: to as u32,
                from: from as u32,
                bytes: Rc::clone(bytes),
            };
            self.push(self.now + delay.max(1), ev);
        }
    }

    fn encode(&mut self, from: usize, msg: Message) -> Option<Rc<[u8]>> {
        let env = Envelope::new(&self.cfg.federation, &self.nodes[from].id, msg);
        match env.encode() {
            Ok(b) => Some(Rc::from(b)),
            Err(e) => {
                let m = format!(
                    "{} cannot encode a {}: {e}",
                    self.nodes[from].id,
                    env.message.kind()
                );
                self.checker_fail(m);
                None
            }
        }
    }

    fn checker_fail(&mut self, msg: String) {
        // Codec failures of our own messages are protocol defects: count them as violations.
        self.checker.on_external_violation(self.now, msg);
    }

    fn deliver(&mut self, to: usize, from: usize, bytes: &[u8]) {
        let now = self.now;
        if self.nodes[to].state != State::Up || !self.reachable(from, to) {
            self.stats.dropped += 1;
            return;
        }
        let env = match Envelope::decode(bytes) {
            Ok(env) => env,
            Err(e) => {
                self.checker_fail(format!("undecodable message to {}: {e}", self.nodes[to].id));
                return;
            }
        };
        // The transport authenticates the sender; foreign federations are ignored.
        if env.sender != self.nodes[from].id || env.federation != self.cfg.federation {
            self.stats.dropped += 1;
            return;
        }
        self.stats.deliveries += 1;
        self.trace
            .record(now, 2, to as u32, from as u64 | (bytes.len() as u64) << 32);
        match &mut self.nodes[to].proto {
            Proto::Anchor(a) => a.core.handle_message(now, &env.sender, env.message),
            Proto::Edge(e) => e.core.handle_message(now, &env.sender, env.message),
            Proto::None => return,
        }
        self.step_node(to);
    }

    fn step_node(&mut self, i: usize) {
        self.step_node_inner(i, false);
    }

    /// Drains the outputs of node `i`, re-arms its timer and runs the per-node checks.
    fn step_node_inner(&mut self, i: usize, after_timeout: bool) {
        loop {
            let out = match &mut self.nodes[i].proto {
                Proto::Anchor(a) => a.core.poll_output(),
                Proto::Edge(e) => e.core.poll_output(),
                Proto::None => None,
            };
            let Some(out) = out else { break };
            if self.opts.verbose
                && let Output::Event(ev) = &out
            {
                eprintln!("t={} {}: {ev:?}", self.now, self.nodes[i].id);
            }
            if i == 0 {
                self.anchor_output(out);
            } else {
                self.edge_output(i, out);
            }
        }
        let now = self.now;
        let node = &mut self.nodes[i];
        let want = match &node.proto {
            Proto::Anchor(a) => a.core.poll_timeout(),
            Proto::Edge(e) => e.core.poll_timeout(),
            Proto::None => return,
        };
        // A timeout due now is fine right after an input; right after `handle_timeout` it
        // means the state machine would make its driver spin.
        let want = if want <= now {
            if after_timeout {
                self.stats.busy_wakes += 1;
                if self.opts.verbose {
                    eprintln!("t={now} {}: busy wake (poll_timeout {want})", node.id);
                }
            }
            now + 1
        } else {
            want
        };
        if node.timer_at.is_none_or(|t| want < t) {
            node.timer_at = Some(want);
            let ev = Ev::Wake {
                node: i as u32,
                inc: node.inc,
                at: want,
            };
            self.push(want, ev);
        }
        if let Proto::Edge(e) = &self.nodes[i].proto {
            let coordinating = e.core.coordinating();
            let global = e.core.global();
            let id = self.nodes[i].id.clone();
            self.checker
                .after_edge_step(now, i, &id, coordinating, global);
        }
    }

    fn broadcast(&mut self, from: usize, msg: Message) {
        let Some(bytes) = self.encode(from, msg) else {
            return;
        };
        for to in 0..self.nodes.len() {
            if to != from {
                self.transmit(from, to, &bytes);
            }
        }
    }

    fn send(&mut self, from: usize, to: &NodeId, msg: Message) {
        let Some(&to) = self.index.get(to) else {
            return;
        };
        if let Some(bytes) = self.encode(from, msg) {
            self.transmit(from, to, &bytes);
        }
    }

    fn anchor_output(&mut self, out: Output) {
        let now = self.now;
        match out {
            Output::Broadcast(m) => self.broadcast(0, m),
            Output::Send { to, message } => self.send(0, &to, message),
            Output::Persist(d) => {
                self.checker.on_persist(now, &d);
                self.durable = d;
            }
            Output::Aggregate {
                round,
                version,
                included,
                ..
            } => {
                self.checker.on_aggregate(now, round, version, &included);
                self.trace.record(now, 10, 0, round);
                let Proto::Anchor(a) = &mut self.nodes[0].proto else {
                    return;
                };
                let result = match a.agg.take() {
                    Some(agg) if agg.round == round => agg.fed.finish().map_err(|e| e.to_string()),
                    _ => Err(format!("no aggregate for round {round}")),
                };
                match result {
                    Ok(params) => {
                        let digest = params.digest();
                        self.store.entry(digest).or_insert_with(|| Rc::new(params));
                        a.pending = Some((round, digest));
                        let inc = self.nodes[0].inc;
                        let at = now + self.sc.training.aggregate_ms;
                        self.push(at, Ev::AggregateDone { inc, round });
                    }
                    Err(reason) => a.core.handle_aggregation_failed(round, reason),
                }
            }
            Output::DiscardRound { round } => {
                if let Proto::Anchor(a) = &mut self.nodes[0].proto
                    && a.agg.as_ref().is_some_and(|g| g.round == round)
                {
                    a.agg = None;
                }
            }
            Output::Event(ev) => self.anchor_event(ev),
            Output::Train(_)
            | Output::CancelTraining { .. }
            | Output::PushUpdate { .. }
            | Output::NewGlobal(_) => {}
        }
    }

    fn anchor_event(&mut self, ev: Event) {
        let now = self.now;
        match ev {
            Event::TermGranted { term, coordinator } => {
                self.checker.on_term_granted(now, term, &coordinator);
                self.trace.record(now, 11, 0, term);
                if term > 1 {
                    let after_crash_ms = match self.failover_from {
                        Some((t0, old)) if term > old => {
                            self.failover_from = None;
                            Some(now - t0)
                        }
                        _ => None,
                    };
                    self.failovers.push(FailoverRecord {
                        time_ms: now,
                        term,
                        after_crash_ms,
                    });
                }
            }
            Event::RoundOpened(plan) => {
                let Proto::Anchor(a) = &mut self.nodes[0].proto else {
                    return;
                };
                let term = a.core.durable().term;
                self.checker.on_round_opened(now, &plan, term);
                self.trace
                    .record(now, 12, plan.participants.len() as u32, plan.round);
                self.selected.insert(plan.round, plan.participants.len());
                match self.store.get(&plan.base_digest) {
                    Some(base) => {
                        a.agg = Some(Agg {
                            round: plan.round,
                            fed: StreamingFedAvg::new(base.specs().to_vec()),
                            base: Rc::clone(base),
                        });
                    }
                    None => {
                        let m = format!("round {} opened on an unknown base digest", plan.round);
                        self.checker.on_external_violation(now, m);
                    }
                }
            }
            Event::RoundCommitted(c) => self.on_commit(&c),
            Event::RoundAbandoned { round, .. } => {
                self.checker.on_abandon(now, round);
                self.trace.record(now, 13, 0, round);
            }
            _ => {}
        }
    }

    fn on_commit(&mut self, c: &Commit) {
        let now = self.now;
        self.checker.on_commit(now, c);
        self.trace.record(now, 14, 0, c.version);
        self.trace.bytes(&c.digest);
        if self.faults_over && self.first_commit_after_faults.is_none() {
            self.first_commit_after_faults = Some(now);
        }
        let loss = self
            .store
            .get(&c.digest)
            .map(|p| self.trainer.global_loss(p))
            .unwrap_or(f64::NAN);
        self.rounds.push(RoundRecord {
            version: c.version,
            round: c.round,
            term: c.term,
            time_ms: now,
            selected: self.selected.remove(&c.round).unwrap_or(0),
            included: c.included.len(),
            global_loss: loss,
            train_loss: f64::from(c.train_loss),
        });
    }

    fn edge_output(&mut self, i: usize, out: Output) {
        let now = self.now;
        match out {
            Output::Broadcast(m) => self.broadcast(i, m),
            Output::Send { to, message } => self.send(i, &to, message),
            Output::Train(plan) => {
                let id = self.nodes[i].id.clone();
                self.checker.on_train(now, &id, &plan);
                let size = self
                    .store
                    .get(&plan.base_digest)
                    .map_or(0, |p| p.len() as u64 * 4);
                let node = &self.nodes[i];
                let fetch =
                    2 * (node.lat_ms + self.nodes[0].lat_ms) + size * 1_000 / node.bw.max(1);
                let t = &self.sc.training;
                let train =
                    uniform(&mut self.rng, t.train_min_ms, t.train_max_ms) as f64 * node.slow;
                let ev = Ev::TrainDone {
                    node: i as u32,
                    inc: node.inc,
                    plan: Rc::new(plan),
                };
                self.push(now + fetch + train as u64, ev);
            }
            Output::PushUpdate { round, term, .. } => {
                let Proto::Edge(e) = &mut self.nodes[i].proto else {
                    return;
                };
                let Some(u) = e.trained.remove(&round) else {
                    return;
                };
                if !self.reachable(i, 0) {
                    return;
                }
                let bw = self.nodes[i].bw.min(self.nodes[0].bw).max(1);
                let transfer =
                    self.nodes[i].lat_ms + self.nodes[0].lat_ms + u.bytes.len() as u64 * 1_000 / bw;
                // A push whose acknowledgement is lost is retried: the anchor may see it twice.
                let copies = if self.net_rng.unit() < self.sc.network.duplicate {
                    2
                } else {
                    1
                };
                for c in 0..copies {
                    let ev = Ev::UpdateArrive {
                        from: i as u32,
                        round,
                        term,
                        samples: u.samples,
                        loss: u.loss,
                        bytes: Rc::clone(&u.bytes),
                    };
                    self.push(now + transfer * (c + 1) + 1, ev);
                }
            }
            Output::Event(Event::BecameCoordinator { term }) => {
                self.trace.record(now, 15, i as u32, term);
            }
            Output::CancelTraining { .. }
            | Output::NewGlobal(_)
            | Output::Event(_)
            | Output::Persist(_)
            | Output::Aggregate { .. }
            | Output::DiscardRound { .. } => {}
        }
    }

    fn train_done(&mut self, i: usize, inc: u32, plan: &RoundPlan) {
        let now = self.now;
        let node = &self.nodes[i];
        if node.state != State::Up || node.inc != inc {
            return;
        }
        let Proto::Edge(e) = &node.proto else { return };
        if e.core.participating() != Some(plan.round) {
            return;
        }
        let samples = node.samples.windows;
        let seed = self.opts.seed ^ plan.round.wrapping_mul(0x9E37_79B9) ^ i as u64;
        let result = match self.store.get(&plan.base_digest) {
            Some(base) => self
                .trainer
                .train(i - 1, base, &plan.hyper, seed, samples)
                .map_err(|e| e.to_string()),
            None => Err("base model not found".into()),
        };
        self.trace.record(now, 3, i as u32, plan.round);
        let Proto::Edge(e) = &mut self.nodes[i].proto else {
            return;
        };
        match result {
            Ok(u) => {
                let bytes: Rc<[u8]> = Rc::from(u.params.to_bytes());
                e.trained.insert(
                    plan.round,
                    Update {
                        bytes,
                        samples: u.samples,
                        loss: u.loss,
                    },
                );
                e.core.handle_training_done(now, plan.round, true);
            }
            Err(_) => e.core.handle_training_done(now, plan.round, false),
        }
        self.step_node(i);
    }

    fn update_arrive(
        &mut self,
        from: usize,
        round: u64,
        term: u64,
        samples: u64,
        loss: f32,
        bytes: &[u8],
    ) {
        let now = self.now;
        if self.nodes[0].state != State::Up || !self.reachable(from, 0) {
            return;
        }
        self.stats.updates += 1;
        self.trace.record(now, 4, from as u32, round);
        let id = self.nodes[from].id.clone();
        let max_norm = self.sc.training.max_update_norm;
        let Proto::Anchor(a) = &mut self.nodes[0].proto else {
            return;
        };
        if a.core.check_update(&id, round, term).is_err() {
            // Records the rejection (the driver drops the payload).
            let _ = a.core.handle_update(now, &id, round, term, samples, loss);
            self.step_node(0);
            return;
        }
        let params = match ParamSet::from_bytes(bytes) {
            Ok(p) => p,
            Err(e) => {
                a.core.handle_invalid_update(&id, round, e.to_string());
                self.step_node(0);
                return;
            }
        };
        let valid = match &a.agg {
            Some(agg) => validate_update(&agg.base, &params, max_norm).map_err(|e| e.to_string()),
            None => Err("no aggregate open".into()),
        };
        if let Err(reason) = valid {
            a.core.handle_invalid_update(&id, round, reason);
            self.step_node(0);
            return;
        }
        if a.core
            .handle_update(now, &id, round, term, samples, loss)
            .is_ok()
        {
            if let Some(agg) = a.agg.as_mut()
                && let Err(e) = agg.fed.add(&params, samples)
            {
                let m = format!("admitted update of {id} could not be aggregated: {e}");
                self.checker.on_external_violation(now, m);
            }
            self.checker.on_update_admitted(now, &id, round, term);
        }
        self.step_node(0);
    }

    fn aggregate_done(&mut self, inc: u32, round: u64) {
        let now = self.now;
        if self.nodes[0].state != State::Up || self.nodes[0].inc != inc {
            return;
        }
        let Proto::Anchor(a) = &mut self.nodes[0].proto else {
            return;
        };
        let Some((r, digest)) = a.pending.take() else {
            return;
        };
        if r != round {
            return;
        }
        // The model was stored under its digest; the durable state is written with it.
        if let Ok(d) = a.core.handle_committed(now, round, digest) {
            self.checker.on_persist(now, &d);
            self.durable = d;
        }
        self.step_node(0);
    }

    fn current_coordinator(&self) -> Option<usize> {
        let mut best: Option<(u64, usize)> = None;
        for (i, n) in self.nodes.iter().enumerate().skip(1) {
            if let Proto::Edge(e) = &n.proto
                && let Some(t) = e.core.coordinating()
                && best.is_none_or(|(bt, _)| t > bt)
            {
                best = Some((t, i));
            }
        }
        best.map(|(_, i)| i)
    }

    fn fault(&mut self, f: Fault) {
        let now = self.now;
        match f {
            Fault::Crash { node, down_ms } => self.crash(node, down_ms),
            Fault::CrashCoordinator { down_ms } => {
                if let Some(i) = self.current_coordinator() {
                    if let Proto::Edge(e) = &self.nodes[i].proto
                        && let Some(t) = e.core.coordinating()
                    {
                        self.failover_from = Some((now, t));
                    }
                    self.crash(i, down_ms);
                }
            }
            Fault::Restart { node } => {
                if self.nodes[node].state == State::Down {
                    self.start_node(node);
                }
            }
            Fault::Leave { node } => {
                if matches!(self.nodes[node].state, State::Up | State::Down) {
                    self.stats.faults += 1;
                    self.stop_node(node, State::Left);
                }
            }
            Fault::Join { node } => {
                if self.nodes[node].state == State::Absent {
                    self.start_node(node);
                }
            }
            Fault::Partition { epoch } => {
                self.stats.faults += 1;
                self.partition_epoch = epoch;
                let groups = 2 + self.rng.below(2) as u32;
                for n in &mut self.nodes {
                    n.group = self.rng.below(u64::from(groups)) as u32;
                }
                self.trace.record(now, 22, epoch, u64::from(groups));
                if self.opts.verbose {
                    let g: Vec<u32> = self.nodes.iter().map(|n| n.group).collect();
                    eprintln!("t={now} partition {epoch}: groups {g:?}");
                }
            }
            Fault::Heal { epoch } => {
                if self.partition_epoch == epoch {
                    self.heal();
                }
            }
            Fault::FaultsEnd => {
                self.heal();
                for i in 0..self.nodes.len() {
                    if self.nodes[i].state == State::Down {
                        self.start_node(i);
                    }
                }
                self.faults_over = true;
                self.faults_end = now;
                if self.checker.committed() >= self.sc.rounds {
                    // Keep going until one more commit shows the protocol is live again.
                    self.first_commit_after_faults = None;
                }
            }
        }
    }

    fn heal(&mut self) {
        for n in &mut self.nodes {
            n.group = 0;
        }
        self.trace.record(self.now, 23, 0, 0);
        if self.opts.verbose {
            eprintln!("t={} healed", self.now);
        }
    }

    fn crash(&mut self, node: usize, down_ms: u64) {
        if self.nodes[node].state != State::Up {
            return;
        }
        self.stats.faults += 1;
        self.stop_node(node, State::Down);
        let at = (self.now + down_ms).min(self.faults_end.max(self.now + 1));
        self.push(at, Ev::Fault(Fault::Restart { node }));
    }
}

/// Runs `sc` with `opts` to the end.
pub fn run(sc: &Scenario, opts: RunOptions) -> Result<Outcome, SimError> {
    Ok(Sim::new(sc, opts)?.run())
}
