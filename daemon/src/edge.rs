//! The edge's driver: runs the [`netproto::core::Edge`] state machine over the swarm, keeps
//! machine data in RocksDB, fetches global models by digest (chunked, resumable,
//! digest-checked), trains off the async runtime, and pushes updates to the anchor.

use crate::config::NodeConfig;
use crate::models::ModelCache;
use crate::net::{Net, NetEvent};
use crate::node::{Clock, NodeStatus, StatusPublisher};
use crate::store::EdgeStore;
use crate::telemetry::{NodeSpan, NodeTracer};
use crate::workload::WorkloadKind;
use anyhow::{Context, Result};
use libp2p::PeerId;
use libp2p::request_response::{OutboundRequestId, ResponseChannel};
use model::{Dataset, ModelSpec, ParamSet, Trajectory};
use netproto::core::{Edge, Event, Output};
use netproto::wire::{
    DataRequest, DataResponse, Digest, FeatureRanges, Frame, MAX_PUSH_CHUNK, Message, NodeId,
    RoundPlan, SampleCounts, UpdateHeader, digest_of, short_hex,
};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Largest model an edge accepts to download.
const MAX_MODEL_BYTES: u64 = 1 << 30;
/// Attempts per chunk before a fetch or push gives up.
const MAX_ATTEMPTS: u32 = 3;

/// What a data-plane request of ours was for.
enum Pending {
    Fetch(Digest),
    Push(u64),
}

/// A model download in progress. Its bytes so far are served to peers further down the
/// distribution tree while it runs (cut-through), so a model crosses the tree in a
/// pipeline of chunks rather than one whole-model hop per level.
struct Fetch {
    buf: Vec<u8>,
    /// The model's size, from the first chunk (0 before).
    total_len: u64,
    source: PeerId,
    /// Peers to turn to, in order, if the source stalls (then the anchor).
    fallbacks: std::collections::VecDeque<PeerId>,
    attempts: u32,
    span: Option<NodeSpan>,
    /// When waiting for a peer that does not hold the model yet: ask again at this time.
    retry_at: Option<tokio::time::Instant>,
    /// Give up on the peer source and fetch from the anchor if it has sent nothing new
    /// by then (pushed back by every chunk that arrives).
    fallback_at: tokio::time::Instant,
}

impl Fetch {
    /// Drops the bytes received so far and starts over from `source`.
    fn restart_from(&mut self, source: PeerId) {
        self.source = source;
        self.buf = Vec::new();
        self.total_len = 0;
    }
}

/// A peer's request for model bytes this edge does not have yet (it is still fetching
/// the model, or has not heard of its commit): answered as soon as the bytes are here,
/// or with `NotFound` at `until`.
struct Waiter {
    digest: Digest,
    offset: u64,
    max_len: u32,
    channel: ResponseChannel<Vec<u8>>,
    until: tokio::time::Instant,
}

/// How often a peer that does not hold a model yet is asked again.
const PEER_RETRY: Duration = Duration::from_millis(20);
/// How long to wait before asking again a peer source that could not be reached.
const PEER_REDIAL: Duration = Duration::from_millis(500);
/// How long a peer source may go without sending new bytes before the edge fetches
/// from the anchor instead.
const PEER_FALLBACK: Duration = Duration::from_secs(15);
/// How long a request for bytes not here yet is held open (well under the data
/// protocol's request timeout).
const HOLD: Duration = Duration::from_secs(1);
/// Requests held open at once; more are answered `NotFound` at once.
const MAX_WAITERS: usize = 64;
/// Bytes asked for per model-chunk request: well under [`netproto::wire::MAX_CHUNK`], so that a model
/// flows down the distribution tree in a pipeline (a peer forwards the first chunk while
/// the next is on its way to it).
const FETCH_CHUNK: u32 = 1 << 20;
/// Global models an edge keeps (the current one and its predecessor).
const KEEP_MODELS: usize = 2;

/// The peers `me` may fetch a newly committed model from, nearest first, in a binary
/// distribution tree over the edges that took part in its round (sorted by peer id),
/// rooted at the anchor: the first two edges fetch from the anchor, every other edge from
/// its parent, so the anchor sends each version twice however large the federation is;
/// edges outside the round hang below a member. Listed: the parent, the parent's parent,
/// and so on up to a child of the anchor (the anchor itself is not listed). A stalled source is replaced by the next
/// one, so a slow edge holds up only its own subtree and the anchor is the last resort.
pub fn tree_ancestors(me: &str, included: &[String]) -> Vec<String> {
    let mut all: Vec<&str> = included.iter().map(String::as_str).collect();
    all.sort_unstable();
    all.dedup();
    let mut chain = Vec::new();
    let mut k = match all.binary_search(&me) {
        Ok(k) => k,
        Err(_) if all.is_empty() => return chain,
        Err(pos) => {
            let k = pos % all.len();
            chain.push(all[k].to_owned());
            k
        }
    };
    // The anchor is the tree's root with two children (positions 0 and 1).
    while k >= 2 {
        k = (k - 2) / 2;
        chain.push(all[k].to_owned());
    }
    chain
}

/// An update upload in progress.
struct Push {
    round: u64,
    term: u64,
    bytes: Arc<Vec<u8>>,
    offset: usize,
    samples: u64,
    loss: f32,
    attempts: u32,
    span: Option<NodeSpan>,
    /// Whether the anchor granted an upload slot.
    begun: bool,
    /// The anchor was busy: ask for a slot again at this time.
    retry_at: Option<tokio::time::Instant>,
    /// Busy answers so far (exponential back-off, so waiting edges do not flood the anchor).
    busy: u32,
}

/// A trained update waiting for the core's go-ahead to push.
struct Trained {
    round: u64,
    bytes: Arc<Vec<u8>>,
    samples: u64,
    loss: f32,
}

/// A finished local training, encoded for the push (off the event loop).
struct Update {
    bytes: Vec<u8>,
    samples: u64,
    loss: f32,
}

type TrainResult = (u64, Result<Update, String>);

/// The edge node.
pub struct EdgeNode {
    cfg: NodeConfig,
    net: Net,
    core: Edge,
    /// Held open for the daemon's lifetime: RocksDB's lock keeps a second daemon off this
    /// data directory.
    _store: EdgeStore,
    clock: Clock,
    spec: ModelSpec,
    anchor: PeerId,
    train_set: Arc<Vec<Trajectory>>,
    val_set: Arc<Vec<Trajectory>>,
    datasets: Option<(FeatureRanges, Arc<Dataset>, Arc<Dataset>)>,
    models: ModelCache,
    fetches: HashMap<Digest, Fetch>,
    waiters: Vec<Waiter>,
    pending: HashMap<OutboundRequestId, Pending>,
    /// The round whose base model is being fetched.
    waiting_for_base: Option<RoundPlan>,
    /// The global version to evaluate once its model is here, with the trace context of
    /// the round that committed it.
    want_eval: Option<(u64, Digest, Option<String>)>,
    training: Option<(u64, Arc<AtomicBool>, Option<NodeSpan>)>,
    trained: Option<Trained>,
    push: Option<Push>,
    round_trace: Option<(u64, String)>,
    coordinator_span: Option<NodeSpan>,
    train_tx: mpsc::Sender<TrainResult>,
    train_rx: mpsc::Receiver<TrainResult>,
    eval_tx: mpsc::Sender<(u64, u64, Result<f64, String>)>,
    eval_rx: mpsc::Receiver<(u64, u64, Result<f64, String>)>,
    tracer: NodeTracer,
    status: NodeStatus,
    status_out: StatusPublisher,
}

/// Splits recordings into training and validation machines (whole machines, the last
/// `fraction` by machine id), so local evaluation never sees training machines.
pub fn split_machines(
    mut trajs: Vec<Trajectory>,
    fraction: f64,
) -> (Vec<Trajectory>, Vec<Trajectory>) {
    trajs.sort_by_key(|t| t.machine);
    let n_val = if trajs.len() >= 2 {
        ((trajs.len() as f64 * fraction).round() as usize)
            .clamp(usize::from(fraction > 0.0), trajs.len() - 1)
    } else {
        0
    };
    let val = trajs.split_off(trajs.len() - n_val);
    (trajs, val)
}

impl EdgeNode {
    /// Opens the store (ingesting synthetic machines if configured and empty) and
    /// computes the sample counts the criterion is judged on.
    pub fn open(cfg: NodeConfig, net: Net, status_tx: watch::Sender<NodeStatus>) -> Result<Self> {
        let store = EdgeStore::open(&cfg.data_dir.join("db"))?;
        if store.machine_count()? == 0 && cfg.data.synthetic_machines > 0 {
            let trajs = model::generate(&model::SyntheticConfig {
                machines: cfg.data.synthetic_machines,
                features: cfg.model.features,
                seed: cfg.data.synthetic_seed,
                ..model::SyntheticConfig::default()
            });
            store.ingest_trajectories(&trajs)?;
            info!(
                machines = trajs.len(),
                seed = cfg.data.synthetic_seed,
                "ingested synthetic run-to-failure data"
            );
        }
        let all = store.trajectories()?;
        let spec = cfg.model.spec();
        if let Some(t) = all
            .iter()
            .find(|t| t.rows.iter().any(|r| r.len() != spec.features))
        {
            anyhow::bail!(
                "machine {} has rows of {} features; the model expects {}",
                t.machine,
                t.rows.first().map_or(0, Vec::len),
                spec.features
            );
        }
        let ranges = model::Scaler::fit(&all).map(|s| FeatureRanges {
            min: s.min,
            max: s.max,
        });
        let failures = all.len() as u64;
        let (train, val) = split_machines(all, cfg.data.validation_fraction);
        let wcfg = model::WindowConfig {
            window: spec.window,
            ..model::WindowConfig::default()
        };
        let samples = match cfg.model.kind {
            WorkloadKind::Rul => SampleCounts {
                failures,
                windows: model::count_windows(&train, &wcfg),
            },
            // The bench trainer needs no data; its edges always meet the criterion.
            WorkloadKind::Bench => SampleCounts {
                failures: u64::from(u32::MAX),
                windows: u64::from(u32::MAX),
            },
        };
        let (_, anchor_addr) =
            crate::net::parse_peer_addr(cfg.anchor.as_deref().unwrap_or_default())?;
        let (anchor, _) = crate::net::parse_peer_addr(&anchor_addr.to_string())?;
        let clock = Clock::new();
        let me = net.me().clone();
        let core = Edge::new(
            cfg.protocol.clone(),
            me.clone(),
            NodeId(anchor.to_string()),
            samples,
            ranges,
            cfg.seed,
            clock.now(),
        );
        let models = ModelCache::open(&cfg.data_dir.join("models"), KEEP_MODELS)
            .with_context(|| format!("opening {}/models", cfg.data_dir.display()))?;
        let (train_tx, train_rx) = mpsc::channel(4);
        let (eval_tx, eval_rx) = mpsc::channel(4);
        let short = &me.as_str()[me.as_str().len().saturating_sub(6)..];
        let tracer = NodeTracer::new(
            cfg.service_name
                .as_deref()
                .unwrap_or(&format!("fedd-edge-{short}")),
            cfg.otlp_endpoint.as_deref(),
            vec![
                ("peer.id".into(), me.to_string()),
                ("federation.id".into(), cfg.protocol.federation.clone()),
            ],
        )?;
        let mut status_out = StatusPublisher::new(&cfg.data_dir, status_tx);
        let mut status = status_out.current();
        status.failures = samples.failures;
        status.windows = samples.windows;
        status.eligible = cfg.protocol.criterion.is_met(&samples);
        status_out.publish(&status);
        Ok(Self {
            cfg,
            net,
            core,
            _store: store,
            clock,
            spec,
            anchor,
            train_set: Arc::new(train),
            val_set: Arc::new(val),
            datasets: None,
            models,
            fetches: HashMap::new(),
            waiters: Vec::new(),
            pending: HashMap::new(),
            waiting_for_base: None,
            want_eval: None,
            training: None,
            trained: None,
            push: None,
            round_trace: None,
            coordinator_span: None,
            train_tx,
            train_rx,
            eval_tx,
            eval_rx,
            tracer,
            status,
            status_out,
        })
    }

    /// Runs until `shutdown` is cancelled.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<()> {
        let anchor_addr = self.cfg.anchor.clone().unwrap_or_default();
        let (peer, addr) = crate::net::parse_peer_addr(&anchor_addr)?;
        self.net.add_bootstrap(peer, addr);
        for b in self.cfg.bootstrap.clone() {
            let (peer, addr) = crate::net::parse_peer_addr(&b)?;
            self.net.add_bootstrap(peer, addr);
        }
        let mut kad_tick = tokio::time::interval(Duration::from_secs(30));
        // The anchor may restart: redial it whenever the connection is gone.
        let mut anchor_tick = tokio::time::interval(Duration::from_secs(2));
        let mut retry_tick = tokio::time::interval(PEER_RETRY);
        retry_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        // Writes of status.json and of the newest model's file, when due.
        let mut house_tick = tokio::time::interval(crate::node::STATUS_WRITE_EVERY);
        house_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let result = loop {
            let wake = self.clock.instant(self.core.poll_timeout());
            tokio::select! {
                () = shutdown.cancelled() => break Ok(()),
                ev = self.net.next() => self.on_net(ev),
                () = tokio::time::sleep_until(wake) => self.core.handle_timeout(self.clock.now()),
                Some((round, r)) = self.train_rx.recv() => self.on_trained(round, r),
                Some((version, samples, r)) = self.eval_rx.recv() => self.on_eval(version, samples, r),
                _ = kad_tick.tick() => self.net.kad_bootstrap(),
                _ = anchor_tick.tick() => self.net.ensure_connected(self.anchor, &anchor_addr),
                _ = house_tick.tick() => {
                    self.models.save_due(std::time::Instant::now());
                    self.status_out.flush_due();
                }
                _ = retry_tick.tick(), if self.fetches.values().any(|f| f.retry_at.is_some())
                    || self.push.as_ref().is_some_and(|p| p.retry_at.is_some())
                    || !self.waiters.is_empty() => {
                    self.retry_fetches();
                    self.expire_waiters();
                }
            }
            if let Err(e) = self.drain() {
                break Err(e);
            }
        };
        if let Some((_, cancel, _)) = &self.training {
            cancel.store(true, Ordering::Relaxed);
        }
        self.models.save();
        self.status_out.flush();
        let tracer = self.tracer.clone();
        let _ = tokio::task::spawn_blocking(move || tracer.shutdown()).await;
        result
    }

    fn now(&self) -> u64 {
        self.clock.now()
    }

    fn on_net(&mut self, ev: NetEvent) {
        match ev {
            NetEvent::Control { from, env } => {
                if let Message::RoundOpened(plan) = &env.message
                    && let Some(t) = &env.trace
                {
                    if let Some(span) = self.coordinator_span.as_mut()
                        && span.traceparent() == *t
                    {
                        span.set_attr("round", plan.round.to_string());
                        span.set_attr("participants", plan.participants.len().to_string());
                    }
                    self.round_trace = Some((plan.round, t.clone()));
                }
                let now = self.now();
                self.core.handle_message(now, &from, env.message);
            }
            NetEvent::DataRequest {
                peer,
                frame,
                channel,
            } => self.serve(peer, frame, channel),
            NetEvent::DataResponse { id, result } => self.on_data_response(id, result),
            NetEvent::Peers => self.status.peers = self.net.connected(),
            NetEvent::Nothing => {}
        }
    }

    /// Edges serve the global models they hold to each other, so the anchor's egress does
    /// not grow with the federation.
    fn serve(
        &mut self,
        _peer: PeerId,
        frame: Frame<DataRequest>,
        channel: ResponseChannel<Vec<u8>>,
    ) {
        let response = match frame.header {
            DataRequest::FetchModel {
                digest,
                offset,
                max_len,
            } => {
                // A model on disk but not in memory is loaded (digest-checked) to be served;
                // otherwise the held models, then the bytes of a fetch under way. The disk
                // is tried only for a model neither held nor being fetched.
                if self.models.in_memory(&digest).is_none() && !self.fetches.contains_key(&digest) {
                    let _ = self.models.get(&digest);
                }
                match self.chunk_for(digest, offset, max_len) {
                    Some(frame) => frame,
                    None if self.waiters.len() < MAX_WAITERS => {
                        self.waiters.push(Waiter {
                            digest,
                            offset,
                            max_len,
                            channel,
                            until: tokio::time::Instant::now() + HOLD,
                        });
                        return;
                    }
                    None => Frame {
                        header: DataResponse::NotFound,
                        payload: vec![],
                    },
                }
            }
            DataRequest::PushUpdate(_) => Frame {
                header: DataResponse::UpdateAck {
                    received: 0,
                    accepted: false,
                    retry_after_ms: 0,
                    error: "edges do not aggregate".into(),
                },
                payload: vec![],
            },
        };
        self.net.data_respond(channel, response);
    }

    /// The answer to a model-chunk request from what is in memory: a held model, or the
    /// received prefix of a fetch under way. `None`: not here (yet).
    fn chunk_for(&self, digest: Digest, offset: u64, max_len: u32) -> Option<Frame<DataResponse>> {
        if let Some(bytes) = self.models.in_memory(&digest) {
            return Some(crate::net::model_chunk_of(
                digest,
                bytes.len() as u64,
                bytes,
                offset,
                max_len,
            ));
        }
        let f = self.fetches.get(&digest)?;
        let have = f.buf.len() as u64;
        if f.total_len == 0 || offset >= have {
            return None;
        }
        let len = u32::try_from(have - offset)
            .unwrap_or(u32::MAX)
            .min(max_len);
        Some(crate::net::model_chunk_of(
            digest,
            f.total_len,
            &f.buf,
            offset,
            len,
        ))
    }

    /// Answers held requests that can be answered now.
    fn answer_waiters(&mut self) {
        let mut still = Vec::new();
        for w in std::mem::take(&mut self.waiters) {
            match self.chunk_for(w.digest, w.offset, w.max_len) {
                Some(frame) => self.net.data_respond(w.channel, frame),
                None => still.push(w),
            }
        }
        self.waiters = still;
    }

    /// Answers held requests whose time is up with `NotFound` (the peer asks again or
    /// turns to the anchor).
    fn expire_waiters(&mut self) {
        let now = tokio::time::Instant::now();
        let (expired, still) = std::mem::take(&mut self.waiters)
            .into_iter()
            .partition::<Vec<_>, _>(|w| w.until <= now);
        self.waiters = still;
        for w in expired {
            let frame = Frame {
                header: DataResponse::NotFound,
                payload: vec![],
            };
            self.net.data_respond(w.channel, frame);
        }
    }

    fn round_parent(&self, round: u64) -> Option<String> {
        self.round_trace
            .as_ref()
            .filter(|(r, _)| *r == round)
            .map(|(_, t)| t.clone())
    }

    fn request_chunk(&mut self, digest: Digest) {
        let Some(f) = self.fetches.get(&digest) else {
            return;
        };
        let frame = Frame {
            header: DataRequest::FetchModel {
                digest,
                offset: f.buf.len() as u64,
                max_len: FETCH_CHUNK,
            },
            payload: vec![],
        };
        let source = f.source;
        if let Some(id) = self.net.data_request(source, frame) {
            self.pending.insert(id, Pending::Fetch(digest));
        }
    }

    /// Makes sure the model `digest` is (or will be) held here, fetching it from the
    /// first of `sources` (then the next if one stalls, then the anchor) if not; returns
    /// its (digest-checked) bytes if it is here already.
    fn ensure_model_from(
        &mut self,
        digest: Digest,
        parent: Option<&str>,
        sources: Vec<String>,
    ) -> Option<Arc<Vec<u8>>> {
        if let Some(bytes) = self.models.get(&digest) {
            return Some(bytes);
        }
        if !self.fetches.contains_key(&digest) {
            let mut fallbacks: std::collections::VecDeque<PeerId> =
                sources.iter().filter_map(|p| peer_id(p).ok()).collect();
            let source = fallbacks.pop_front().unwrap_or(self.anchor);
            let span =
                self.tracer
                    .start_span("edge.fetch", parent, vec![("digest", short_hex(&digest))]);
            self.fetches.insert(
                digest,
                Fetch {
                    buf: Vec::new(),
                    total_len: 0,
                    source,
                    fallbacks,
                    attempts: 0,
                    span: Some(span),
                    retry_at: None,
                    fallback_at: tokio::time::Instant::now() + PEER_FALLBACK,
                },
            );
            self.request_chunk(digest);
        }
        None
    }

    fn on_data_response(
        &mut self,
        id: OutboundRequestId,
        result: Result<Frame<DataResponse>, String>,
    ) {
        match self.pending.remove(&id) {
            Some(Pending::Fetch(digest)) => self.on_fetch_chunk(digest, result),
            Some(Pending::Push(round)) => self.on_push_ack(round, result),
            None => {}
        }
    }

    fn on_fetch_chunk(&mut self, digest: Digest, result: Result<Frame<DataResponse>, String>) {
        let Some(f) = self.fetches.get_mut(&digest) else {
            return;
        };
        let outcome = match result {
            Ok(Frame {
                header:
                    DataResponse::ModelChunk {
                        digest: d,
                        total_len,
                        offset,
                    },
                payload,
            }) if d == digest && offset == f.buf.len() as u64 && total_len <= MAX_MODEL_BYTES => {
                if f.buf.len() as u64 + payload.len() as u64 > total_len
                    || payload.is_empty() && offset < total_len
                    || f.total_len != 0 && f.total_len != total_len
                {
                    Err("chunk overruns the model".to_owned())
                } else {
                    if f.buf.is_empty() {
                        f.total_len = total_len;
                        f.buf.reserve_exact(total_len as usize);
                    }
                    f.buf.extend_from_slice(&payload);
                    // The source is alive and sending: its deadline moves on.
                    f.fallback_at = tokio::time::Instant::now() + PEER_FALLBACK;
                    Ok(f.buf.len() as u64 == total_len)
                }
            }
            Ok(Frame {
                header: DataResponse::NotFound,
                ..
            }) => Err("source does not hold the model".to_owned()),
            Ok(_) => Err("unexpected response".to_owned()),
            Err(e) => Err(e),
        };
        match outcome {
            Ok(false) => {
                self.request_chunk(digest);
                self.answer_waiters();
            }
            Ok(true) => {
                if digest_of(&f.buf) != digest {
                    if f.source == self.anchor {
                        self.fetches.remove(&digest);
                        self.fetch_failed(digest, "digest mismatch");
                    } else {
                        warn!(
                            "model {} from a peer failed its digest check; fetching it from the anchor",
                            short_hex(&digest)
                        );
                        f.restart_from(self.anchor);
                        self.request_chunk(digest);
                    }
                    return;
                }
                let Some(f) = self.fetches.remove(&digest) else {
                    return;
                };
                drop(f.span);
                self.models.put(digest, f.buf, std::time::Instant::now());
                self.answer_waiters();
                self.model_ready(digest);
            }
            Err(e) if f.source != self.anchor => {
                // The peer source does not hold the model yet, or cannot be reached yet
                // (its address may still be being discovered): ask again shortly, until
                // it has gone PEER_FALLBACK without sending anything; then turn to the
                // next ancestor, and at last to the anchor.
                let now = tokio::time::Instant::now();
                if now < f.fallback_at {
                    let wait = if e.contains("does not hold") {
                        PEER_RETRY
                    } else {
                        PEER_REDIAL
                    };
                    f.retry_at = Some(now + wait);
                } else if let Some(next) = f.fallbacks.pop_front() {
                    info!(
                        "peer source of model {} is stalled ({e}); turning to {next}",
                        short_hex(&digest)
                    );
                    // The same bytes from a nearer-the-root peer: resume where we are
                    // (the digest check at the end catches any mix-up, and then the
                    // model is fetched whole from the anchor).
                    f.source = next;
                    f.fallback_at = now + PEER_FALLBACK;
                    self.request_chunk(digest);
                } else {
                    info!(
                        "peer source of model {} is stalled ({e}); fetching from the anchor",
                        short_hex(&digest)
                    );
                    f.restart_from(self.anchor);
                    self.request_chunk(digest);
                }
            }
            Err(e) => {
                f.attempts += 1;
                if f.attempts < MAX_ATTEMPTS {
                    // Resumes at the bytes already received.
                    self.request_chunk(digest);
                } else {
                    self.fetches.remove(&digest);
                    self.fetch_failed(digest, &e);
                }
            }
        }
    }

    fn retry_fetches(&mut self) {
        let now = tokio::time::Instant::now();
        if let Some(p) = self.push.as_mut()
            && p.retry_at.is_some_and(|t| now >= t)
        {
            p.retry_at = None;
            self.send_push_chunk();
        }
        let due: Vec<Digest> = self
            .fetches
            .iter_mut()
            .filter(|(_, f)| f.retry_at.is_some_and(|t| now >= t))
            .map(|(d, f)| {
                f.retry_at = None;
                *d
            })
            .collect();
        for d in due {
            self.request_chunk(d);
        }
    }

    fn fetch_failed(&mut self, digest: Digest, why: &str) {
        warn!("fetching model {} failed: {why}", short_hex(&digest));
        if let Some(plan) = self.waiting_for_base.take_if(|p| p.base_digest == digest) {
            let now = self.now();
            self.core.handle_training_done(now, plan.round, false);
        }
        if self
            .want_eval
            .as_ref()
            .is_some_and(|(_, d, _)| *d == digest)
        {
            self.want_eval = None;
        }
    }

    fn model_ready(&mut self, digest: Digest) {
        if let Some(plan) = self.waiting_for_base.take_if(|p| p.base_digest == digest) {
            self.start_training(plan);
        }
        if let Some((version, _, parent)) = self.want_eval.take_if(|(_, d, _)| *d == digest) {
            self.start_eval(version, digest, parent.as_deref());
        }
    }

    fn datasets(&mut self, scaler: &FeatureRanges) -> (Arc<Dataset>, Arc<Dataset>) {
        if let Some((s, t, v)) = &self.datasets
            && s == scaler
        {
            return (t.clone(), v.clone());
        }
        let sc = model::Scaler {
            min: scaler.min.clone(),
            max: scaler.max.clone(),
        };
        let wcfg = model::WindowConfig {
            window: self.spec.window,
            ..model::WindowConfig::default()
        };
        let t = Arc::new(model::make_windows(&self.train_set, &sc, &wcfg));
        let v = Arc::new(model::make_windows(&self.val_set, &sc, &wcfg));
        self.datasets = Some((scaler.clone(), t.clone(), v.clone()));
        (t, v)
    }

    fn start_training(&mut self, plan: RoundPlan) {
        // The base model comes down the same distribution tree, over the round's
        // participants, as new versions do.
        let participants: Vec<String> = plan.participants.iter().map(ToString::to_string).collect();
        let sources = tree_ancestors(self.net.me().as_str(), &participants);
        let Some(base) = self.ensure_model_from(
            plan.base_digest,
            self.round_parent(plan.round).as_deref(),
            sources,
        ) else {
            self.waiting_for_base = Some(plan);
            return;
        };
        if self.cfg.model.kind == WorkloadKind::Bench {
            let (tx, round, seed) = (self.train_tx.clone(), plan.round, self.cfg.seed);
            self.training = Some((round, Arc::new(AtomicBool::new(false)), None));
            tokio::task::spawn_blocking(move || {
                let r = crate::workload::bench_train(&base, seed)
                    .map(|bytes| Update {
                        bytes,
                        samples: crate::workload::BENCH_SAMPLES,
                        loss: 0.0,
                    })
                    .map_err(|e| e.to_string());
                let _ = tx.blocking_send((round, r));
            });
            return;
        }
        let Some(scaler) = plan.scaler.clone() else {
            warn!(round = plan.round, "round plan has no scaler; not training");
            let now = self.now();
            self.core.handle_training_done(now, plan.round, false);
            return;
        };
        let (train, _) = self.datasets(&scaler);
        let cancel = Arc::new(AtomicBool::new(false));
        let span = self.tracer.start_span(
            "edge.train",
            self.round_parent(plan.round).as_deref(),
            vec![
                ("round", plan.round.to_string()),
                ("windows", train.len().to_string()),
                ("epochs", plan.hyper.local_epochs.to_string()),
            ],
        );
        self.training = Some((plan.round, cancel.clone(), Some(span)));
        let spec = self.spec.clone();
        let tcfg = model::TrainConfig {
            epochs: plan.hyper.local_epochs.max(1) as usize,
            batch_size: plan.hyper.batch_size.max(1) as usize,
            lr: f64::from(plan.hyper.lr),
            prox_mu: (plan.hyper.prox_mu > 0.0).then_some(plan.hyper.prox_mu),
            seed: self.cfg.seed ^ plan.round,
        };
        let tx = self.train_tx.clone();
        let round = plan.round;
        info!(round, windows = train.len(), "training");
        tokio::task::spawn_blocking(move || {
            let r = ParamSet::from_bytes(&base)
                .map_err(|e| format!("the base model does not decode: {e}"))
                .and_then(|base| {
                    model::train_local(&spec, &base, &train, &tcfg, &cancel)
                        .map_err(|e| e.to_string())
                })
                .map(|o| Update {
                    bytes: o.params.to_bytes(),
                    samples: o.samples,
                    loss: o.loss,
                });
            let _ = tx.blocking_send((round, r));
        });
    }

    fn on_trained(&mut self, round: u64, r: Result<Update, String>) {
        let Some((r_round, _, span)) = self.training.take() else {
            return;
        };
        drop(span);
        if r_round != round {
            return;
        }
        let now = self.now();
        match r {
            Ok(outcome) => {
                info!(
                    round,
                    loss = format!("{:.4}", outcome.loss),
                    samples = outcome.samples,
                    "local training done"
                );
                self.status.rounds_trained += 1;
                self.trained = Some(Trained {
                    round,
                    bytes: Arc::new(outcome.bytes),
                    samples: outcome.samples,
                    loss: outcome.loss,
                });
                self.core.handle_training_done(now, round, true);
            }
            Err(e) => {
                warn!(round, "local training failed: {e}");
                self.core.handle_training_done(now, round, false);
            }
        }
    }

    fn send_push_chunk(&mut self) {
        let Some(p) = &self.push else {
            return;
        };
        // Before the slot is granted the frame carries no payload: the anchor's memory for
        // uploads stays bounded by its slots, however many edges push at once.
        let end = if p.begun {
            p.bytes.len().min(p.offset + MAX_PUSH_CHUNK)
        } else {
            p.offset
        };
        let frame = Frame {
            header: DataRequest::PushUpdate(UpdateHeader {
                round: p.round,
                term: p.term,
                samples: p.samples,
                train_loss: p.loss,
                total_len: p.bytes.len() as u64,
                offset: p.offset as u64,
                trace: p.span.as_ref().map(NodeSpan::traceparent),
            }),
            payload: Frame::<DataRequest>::payload_from(&p.bytes[p.offset..end]),
        };
        let round = p.round;
        if let Some(id) = self.net.data_request(self.anchor, frame) {
            self.pending.insert(id, Pending::Push(round));
        }
    }

    fn on_push_ack(&mut self, round: u64, result: Result<Frame<DataResponse>, String>) {
        let Some(p) = self.push.as_mut().filter(|p| p.round == round) else {
            return;
        };
        match result {
            Ok(Frame {
                header:
                    DataResponse::UpdateAck {
                        received,
                        accepted,
                        error,
                        retry_after_ms,
                    },
                ..
            }) => {
                if retry_after_ms > 0 {
                    let backoff = (u64::from(retry_after_ms) << p.busy.min(7)).min(2_000);
                    p.busy += 1;
                    p.retry_at = Some(tokio::time::Instant::now() + Duration::from_millis(backoff));
                } else if !error.is_empty() {
                    warn!(round, "anchor refused the update: {error}");
                    self.push = None;
                } else if accepted {
                    info!(round, bytes = received, "update accepted by the anchor");
                    self.push = None;
                } else {
                    p.begun = true;
                    p.offset = received as usize;
                    self.send_push_chunk();
                }
            }
            Ok(_) => {
                warn!(round, "unexpected answer to an update push");
                self.push = None;
            }
            Err(e) => {
                p.attempts += 1;
                if p.attempts < MAX_ATTEMPTS {
                    warn!(round, "update push failed ({e}); retrying");
                    // A restarted transfer starts over: the anchor drops partial uploads.
                    p.offset = 0;
                    p.begun = false;
                    self.send_push_chunk();
                } else {
                    warn!(round, "update push failed: {e}");
                    self.push = None;
                }
            }
        }
    }

    fn start_eval(&mut self, version: u64, digest: Digest, parent: Option<&str>) {
        let Some(scaler) = self.datasets.as_ref().map(|(s, _, _)| s.clone()) else {
            return;
        };
        let (_, val) = self.datasets(&scaler);
        if val.is_empty() {
            return;
        }
        let Some(bytes) = self.models.get(&digest) else {
            return;
        };
        let Ok(params) = ParamSet::from_bytes(&bytes) else {
            return;
        };
        let spec = self.spec.clone();
        let tx = self.eval_tx.clone();
        let span = self.tracer.start_span(
            "edge.evaluate",
            parent,
            vec![
                ("version", version.to_string()),
                ("windows", val.len().to_string()),
            ],
        );
        tokio::task::spawn_blocking(move || {
            let r = model::evaluate(&spec, &params, &val)
                .map(|m| m.rmse)
                .map_err(|e| e.to_string());
            drop(span);
            let _ = tx.blocking_send((version, val.len() as u64, r));
        });
    }

    fn on_eval(&mut self, version: u64, samples: u64, r: Result<f64, String>) {
        match r {
            Ok(rmse) if rmse.is_finite() => {
                self.status.local_eval_rmse = Some(rmse);
                let anchor = NodeId(self.anchor.to_string());
                self.net.send(
                    &anchor,
                    Message::EvalReport {
                        version,
                        samples,
                        rmse,
                    },
                    None,
                );
            }
            Ok(_) => {}
            Err(e) => warn!(version, "local evaluation failed: {e}"),
        }
    }

    fn drain(&mut self) -> Result<()> {
        while let Some(out) = self.core.poll_output() {
            match out {
                Output::Broadcast(msg) => self.net.broadcast(msg, None),
                Output::Send { to, message } => {
                    let trace = if matches!(message, Message::Propose(_)) {
                        // The coordinator's round span is the root of the round's trace.
                        let span = self.tracer.start_span(
                            "round",
                            None,
                            vec![("coordinator", self.net.me().to_string())],
                        );
                        let tp = span.traceparent();
                        self.coordinator_span = Some(span);
                        Some(tp)
                    } else {
                        None
                    };
                    self.net.send(&to, message, trace);
                }
                Output::Train(plan) => self.start_training(plan),
                Output::CancelTraining { round } => {
                    if let Some((r, cancel, _)) = &self.training
                        && *r == round
                    {
                        cancel.store(true, Ordering::Relaxed);
                    }
                    if self
                        .waiting_for_base
                        .as_ref()
                        .is_some_and(|p| p.round == round)
                    {
                        self.waiting_for_base = None;
                    }
                    if self.trained.as_ref().is_some_and(|t| t.round == round) {
                        self.trained = None;
                    }
                }
                Output::PushUpdate { round, term, .. } => {
                    if let Some(t) = self.trained.take().filter(|t| t.round == round) {
                        let span = self.tracer.start_span(
                            "edge.push",
                            self.round_parent(round).as_deref(),
                            vec![
                                ("round", round.to_string()),
                                ("bytes", t.bytes.len().to_string()),
                            ],
                        );
                        self.push = Some(Push {
                            round,
                            term,
                            bytes: t.bytes,
                            offset: 0,
                            samples: t.samples,
                            loss: t.loss,
                            attempts: 0,
                            span: Some(span),
                            begun: false,
                            retry_at: None,
                            busy: 0,
                        });
                        self.send_push_chunk();
                    }
                }
                Output::NewGlobal(commit) => {
                    // The round is over: the coordinator's root span ends here.
                    if let Some(mut s) = self.coordinator_span.take() {
                        s.set_attr("round", commit.round.to_string());
                        s.set_attr("version", commit.version.to_string());
                    }
                    // Fetching and evaluating the new version belong to the trace of the
                    // round that produced it.
                    let parent = self.round_parent(commit.round);
                    self.want_eval = Some((commit.version, commit.digest, parent.clone()));
                    let included: Vec<String> =
                        commit.included.iter().map(ToString::to_string).collect();
                    let sources = tree_ancestors(self.net.me().as_str(), &included);
                    if self
                        .ensure_model_from(commit.digest, parent.as_deref(), sources)
                        .is_some()
                    {
                        self.want_eval = None;
                        self.start_eval(commit.version, commit.digest, parent.as_deref());
                    }
                }
                Output::Event(ev) => self.on_event(ev),
                Output::Persist(_) | Output::Aggregate { .. } | Output::DiscardRound { .. } => {}
            }
        }
        let (term, coordinator) = self.core.term();
        self.status.term = term;
        self.status.coordinator = coordinator.map(ToString::to_string);
        self.status.is_coordinator = self.core.coordinating().is_some();
        let (version, digest) = self.core.global();
        self.status.version = version;
        self.status.digest = digest.map(hex::encode).unwrap_or_default();
        self.status.eligible = self.core.is_eligible();
        self.status_out.publish(&self.status);
        Ok(())
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Eligible => {
                self.status.eligibility = "meets the sample criterion".into();
                info!("this edge meets the sample criterion");
            }
            Event::NotEligible { reason } => {
                warn!(
                    "this edge does not meet the sample criterion and will not be selected: {reason}"
                );
                self.status.eligibility = format!("not eligible: {reason}");
            }
            Event::BecameCoordinator { term } => {
                info!(term, "became round coordinator");
                self.status.last_event = format!("coordinator of term {term}");
            }
            Event::SteppedDown { term } => info!(term, "stepped down as coordinator"),
            Event::Campaigning { term } => info!(term, "claiming the coordinator lease"),
            Event::NotSelected { round, reason } => {
                info!(round, "not selected: {reason}");
                self.status.not_selected += 1;
                self.status.last_event = format!("not selected for round {round}: {reason}");
            }
            Event::WaitingForEdges { eligible, needed } => {
                info!(eligible, needed, "waiting for eligible edges");
            }
            Event::RoundOpened(plan) => {
                self.status.last_event = format!("round {} open", plan.round);
            }
            Event::RoundAbandoned { round, reason } => {
                self.coordinator_span = None;
                info!(round, "round abandoned: {reason}");
            }
            Event::ProposalRejected { reason } => info!("proposal rejected: {reason}"),
            _ => {}
        }
    }

    /// The anchor's peer id (for tests).
    pub fn anchor(&self) -> PeerId {
        self.anchor
    }
}

/// Parses a peer id (helper for callers holding text).
pub fn peer_id(s: &str) -> Result<PeerId> {
    PeerId::from_str(s).with_context(|| format!("invalid peer id {s:?}"))
}

#[cfg(test)]
mod tests {
    use super::tree_ancestors;

    fn tree_source(me: &str, ids: &[String]) -> Option<String> {
        tree_ancestors(me, ids).into_iter().next()
    }

    #[test]
    fn the_distribution_tree_has_one_root_and_fanout_two() {
        let ids: Vec<String> = (0..7).map(|i| format!("p{i}")).collect();
        let sources: Vec<Option<String>> = ids.iter().map(|id| tree_source(id, &ids)).collect();
        assert_eq!(
            sources[0], None,
            "the first two edges fetch from the anchor"
        );
        assert_eq!(sources[1], None);
        for parent in &ids {
            let children = sources
                .iter()
                .filter(|s| s.as_ref() == Some(parent))
                .count();
            assert!(children <= 2, "{parent} serves {children} edges");
        }
        assert_eq!(sources.iter().filter(|s| s.is_some()).count(), 5);
        // An edge outside the round fetches from a member of it.
        assert!(tree_source("zz", &ids).is_some_and(|s| ids.contains(&s)));
        assert_eq!(tree_source("a", &[]), None);
    }

    #[test]
    fn fallbacks_climb_the_tree_towards_the_anchor() {
        let ids: Vec<String> = (0..15).map(|i| format!("p{i:02}")).collect();
        // Position 14: parent 6, then 2, then 0 (a child of the anchor).
        assert_eq!(tree_ancestors("p14", &ids), ["p06", "p02", "p00"]);
        assert_eq!(tree_ancestors("p03", &ids), ["p00"]);
        assert!(tree_ancestors("p01", &ids).is_empty());
        // Every chain ends at a child of the anchor and has at most log2(n) hops.
        for id in &ids[2..] {
            let chain = tree_ancestors(id, &ids);
            assert!(["p00", "p01"].contains(&chain.last().unwrap().as_str()));
            assert!(chain.len() <= 4, "{id}: {chain:?}");
        }
        // An edge outside the round: a member, then that member's ancestors.
        let outside = tree_ancestors("zz", &ids);
        assert!(ids.contains(&outside[0]));
        assert_eq!(&outside[1..], tree_ancestors(&outside[0], &ids).as_slice());
    }
}
