//! The anchor's driver: runs the [`netproto::core::Anchor`] state machine over the swarm,
//! validates and folds updates into a streaming FedAvg, commits global versions to RocksDB,
//! evaluates them on a held-out set, and reports rounds to MLflow and OpenTelemetry.

use crate::aggregator::{BaseModel, StreamingAggregator, UploadError};
use crate::config::NodeConfig;
use crate::mlflow::{MlflowBridge, MlflowConfig};
use crate::models::model_path;
use crate::net::{Net, NetEvent};
use crate::node::{Clock, MAX_STATUS_ROUNDS, NodeStatus, RoundSummary, StatusPublisher};
use crate::store::{AnchorStore, RoundLogEntry, VersionRecord};
use crate::telemetry::{NodeSpan, NodeTracer};
use crate::workload::WorkloadKind;
use anyhow::{Context, Result, bail};
use libp2p::PeerId;
use libp2p::request_response::ResponseChannel;
use model::{ModelSpec, ParamSet};
use netproto::core::{Anchor, AnchorDurable, Event, Output};
use netproto::wire::{
    DataRequest, DataResponse, Digest, Frame, Message, NodeId, UpdateHeader, digest_of, short_hex,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How long a stopping anchor keeps waiting for the evaluations of committed versions
/// that are still under way (its own held-out evaluation, the edges' reports), so the
/// last round's evaluation metrics reach MLflow before the run is finished.
const EVAL_DRAIN: Duration = Duration::from_secs(5);

/// Memory the anchor may spend on update chunks in flight (one data frame per upload;
/// uploads spill to temporary files), which bounds the number of concurrent uploads:
/// see [`StreamingAggregator::slots_for`].
const UPLOAD_BUDGET: u64 = 12 << 20;
/// How long an edge waits before asking again for an upload slot.
const BUSY_RETRY_MS: u32 = 20;

/// The edges' evaluations of one committed version, gathered until they are logged.
///
/// Each version's sample-weighted RMSE is logged once, at the step of the round that
/// committed it: as soon as `expected` distinct edges have reported, else when the next
/// round commits or the anchor stops (with whatever arrived). Later reports are ignored,
/// so MLflow gets exactly one `edge_eval_rmse` per round.
struct EdgeEvals {
    round: u64,
    expected: usize,
    reporters: BTreeSet<NodeId>,
    samples: u64,
    /// Sum of samples × rmse².
    weighted_sq: f64,
}

/// The round being collected.
struct OpenRound {
    round: u64,
    participants: usize,
    agg: StreamingAggregator,
    opened_ms: u64,
    trace: Option<String>,
    span: Option<NodeSpan>,
    bytes_in: u64,
}

/// The anchor node.
pub struct AnchorNode {
    cfg: NodeConfig,
    net: Net,
    core: Anchor,
    store: AnchorStore,
    clock: Clock,
    spec: ModelSpec,
    /// The current global model, on disk (content-addressed file).
    global: BaseModel,
    /// Directory of the content-addressed model files.
    models_dir: std::path::PathBuf,
    /// The genesis model, to evaluate once the scaler is fixed (new federations only).
    genesis: Option<std::path::PathBuf>,
    open: Option<OpenRound>,
    /// Trace context of the latest proposal: the coordinator's round span.
    proposal_trace: Option<String>,
    holdout: Option<Arc<Vec<model::Trajectory>>>,
    eval_tx: mpsc::Sender<(u64, u64, Result<f64, String>)>,
    eval_rx: mpsc::Receiver<(u64, u64, Result<f64, String>)>,
    /// Per committed version whose edge evaluations are not logged yet.
    edge_evals: BTreeMap<u64, EdgeEvals>,
    /// Held-out evaluations running on the blocking pool.
    evals_in_flight: usize,
    /// Per version: the round that produced it.
    version_round: BTreeMap<u64, u64>,
    mlflow: MlflowBridge,
    mlflow_task: tokio::task::JoinHandle<crate::mlflow::MlflowSummary>,
    tracer: NodeTracer,
    status: NodeStatus,
    status_out: StatusPublisher,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl AnchorNode {
    /// Opens the store, restoring the last committed version (or creating the genesis model).
    pub fn open(cfg: NodeConfig, net: Net, status_tx: watch::Sender<NodeStatus>) -> Result<Self> {
        let store = AnchorStore::open(&cfg.data_dir.join("db"))?;
        let models_dir = cfg.data_dir.join("models");
        std::fs::create_dir_all(&models_dir)
            .with_context(|| format!("creating {}", models_dir.display()))?;
        let spec = cfg.model.spec();
        let clock = Clock::new();
        let durable = match store.durable()? {
            Some(bytes) => postcard::from_bytes::<AnchorDurable>(&bytes)
                .context("the anchor's durable state is corrupt")?,
            None => {
                let genesis = match cfg.model.kind {
                    WorkloadKind::Rul => model::try_init_params(&spec, cfg.model.init_seed)?,
                    WorkloadKind::Bench => crate::workload::bench_genesis(cfg.model.bench_params),
                };
                let bytes = genesis.to_bytes();
                let digest = digest_of(&bytes);
                let durable = AnchorDurable::genesis(digest);
                write_model_file(&models_dir, &digest, &bytes)?;
                store.put_durable(&postcard::to_allocvec(&durable)?)?;
                info!(
                    digest = short_hex(&digest),
                    "created genesis model (version 0)"
                );
                durable
            }
        };
        let path = model_path(&models_dir, &durable.digest);
        if !path.exists() {
            // Stores written before models moved to files keep them in RocksDB.
            let bytes = store.model(&durable.digest)?.with_context(|| {
                format!("global model {} is missing", short_hex(&durable.digest))
            })?;
            write_model_file(&models_dir, &durable.digest, &bytes)?;
        }
        let global = BaseModel::open(&path).context("the stored global model is corrupt")?;
        if cfg.model.kind == WorkloadKind::Rul {
            let specs = spec.param_specs()?;
            let expected: usize = specs.iter().filter_map(model::TensorSpec::numel).sum();
            if expected != global.values {
                bail!("the stored global model does not match the configured model architecture");
            }
        }
        info!(
            version = durable.version,
            term = durable.term,
            next_round = durable.next_round,
            "anchor state restored"
        );
        let me = net.me().clone();
        let genesis = (durable.version == 0).then(|| global.path.clone());
        let core = Anchor::new(cfg.protocol.clone(), me.clone(), durable, clock.now());
        let holdout =
            (cfg.holdout.machines > 0 && cfg.model.kind == WorkloadKind::Rul).then(|| {
                Arc::new(model::generate(&model::SyntheticConfig {
                    machines: cfg.holdout.machines,
                    features: cfg.model.features,
                    seed: cfg.holdout.seed,
                    ..model::SyntheticConfig::default()
                }))
            });
        let (eval_tx, eval_rx) = mpsc::channel(64);
        let (mlflow, mlflow_task) = MlflowBridge::start(MlflowConfig {
            tracking_uri: cfg.mlflow.tracking_uri.clone(),
            experiment: cfg.mlflow.experiment.clone(),
            run_name: format!("{}-{}", cfg.protocol.federation, unix_ms() / 1000),
            local_dir: cfg.data_dir.clone(),
            queue_capacity: 4096,
            tags: vec![
                ("federation".into(), cfg.protocol.federation.clone()),
                ("anchor.peer_id".into(), me.to_string()),
            ],
        });
        let tracer = NodeTracer::new(
            cfg.service_name.as_deref().unwrap_or("fedd-anchor"),
            cfg.otlp_endpoint.as_deref(),
            vec![
                ("peer.id".into(), me.to_string()),
                ("federation.id".into(), cfg.protocol.federation.clone()),
            ],
        )?;
        let status_out = StatusPublisher::new(&cfg.data_dir, status_tx);
        let mut status = status_out.current();
        status.version = core.durable().version;
        status.digest = hex::encode(core.durable().digest);
        status.term = core.durable().term;
        Ok(Self {
            cfg,
            net,
            core,
            store,
            clock,
            spec,
            genesis,
            global,
            models_dir,
            open: None,
            proposal_trace: None,
            holdout,
            eval_tx,
            eval_rx,
            edge_evals: BTreeMap::new(),
            evals_in_flight: 0,
            version_round: BTreeMap::new(),
            mlflow,
            mlflow_task,
            tracer,
            status,
            status_out,
        })
    }

    fn log_session_params(&self) {
        let p = &self.cfg.protocol;
        self.mlflow.log_params(vec![
            ("strategy".into(), "fedavg".into()),
            ("federation_id".into(), p.federation.clone()),
            (
                "model.arch".into(),
                format!("{:?}", self.spec.arch).to_lowercase(),
            ),
            ("model.window".into(), self.spec.window.to_string()),
            ("model.features".into(), self.spec.features.to_string()),
            ("model.params".into(), self.global.values.to_string()),
            (
                "criterion.min_failures".into(),
                p.criterion.min_failures.to_string(),
            ),
            (
                "criterion.min_windows".into(),
                p.criterion.min_windows.to_string(),
            ),
            ("local_epochs".into(), p.hyper.local_epochs.to_string()),
            ("batch_size".into(), p.hyper.batch_size.to_string()),
            ("lr".into(), p.hyper.lr.to_string()),
            ("prox_mu".into(), p.hyper.prox_mu.to_string()),
            ("min_fit_fraction".into(), p.min_fit_fraction.to_string()),
            ("round_deadline_ms".into(), p.round_deadline_ms.to_string()),
            (
                "max_update_norm".into(),
                self.cfg.model.max_update_norm.to_string(),
            ),
            ("code_version".into(), env!("CARGO_PKG_VERSION").into()),
        ]);
    }

    /// Runs until `shutdown` is cancelled; then uploads the global model to MLflow and
    /// flushes telemetry.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<()> {
        self.log_session_params();
        for addr in self.cfg.bootstrap.clone() {
            let (peer, addr) = crate::net::parse_peer_addr(&addr)?;
            self.net.add_bootstrap(peer, addr);
        }
        let mut kad_tick = tokio::time::interval(Duration::from_secs(30));
        let mut status_tick = tokio::time::interval(crate::node::STATUS_WRITE_EVERY);
        status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let result = loop {
            let wake = self.clock.instant(self.core.poll_timeout());
            tokio::select! {
                () = shutdown.cancelled() => break Ok(()),
                ev = self.net.next() => self.on_net(ev),
                () = tokio::time::sleep_until(wake) => self.core.handle_timeout(self.clock.now()),
                Some((version, round, r)) = self.eval_rx.recv() => self.on_eval(version, round, r),
                _ = kad_tick.tick() => self.net.kad_bootstrap(),
                _ = status_tick.tick() => self.status_out.flush_due(),
            }
            if let Err(e) = self.drain() {
                break Err(e);
            }
        };
        self.drain_evaluations().await;
        self.status_out.flush();
        match std::fs::read(&self.global.path) {
            Ok(bytes) => self.mlflow.log_artifact("global_model.bin", bytes),
            Err(e) => warn!("reading the global model for MLflow: {e}"),
        }
        self.mlflow
            .finish(if result.is_ok() { "FINISHED" } else { "FAILED" });
        let summary = tokio::time::timeout(Duration::from_secs(15), &mut self.mlflow_task).await;
        if let Ok(Ok(s)) = summary {
            info!(
                delivered = s.delivered_metrics,
                pending = s.pending_metrics,
                "MLflow bridge finished"
            );
        }
        let tracer = self.tracer.clone();
        let _ = tokio::task::spawn_blocking(move || tracer.shutdown()).await;
        result
    }

    fn now(&self) -> u64 {
        self.clock.now()
    }

    /// After shutdown: waits at most [`EVAL_DRAIN`] for running held-out evaluations and
    /// for edge reports on committed versions (only `EvalReport` messages are handled;
    /// no new round starts), then logs what arrived.
    async fn drain_evaluations(&mut self) {
        let deadline = tokio::time::Instant::now() + EVAL_DRAIN;
        while self.evals_in_flight > 0 || !self.edge_evals.is_empty() {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => break,
                Some((version, round, r)) = self.eval_rx.recv() => self.on_eval(version, round, r),
                ev = self.net.next() => {
                    if let NetEvent::Control { from, env } = ev
                        && matches!(env.message, Message::EvalReport { .. })
                    {
                        let now = self.now();
                        self.core.handle_message(now, &from, env.message);
                        if let Err(e) = self.drain() {
                            warn!("while stopping: {e:#}");
                        }
                    }
                }
            }
        }
        if self.evals_in_flight > 0 {
            warn!(
                running = self.evals_in_flight,
                "stopping before the held-out evaluation of the last version finished"
            );
        }
        for (version, evals) in std::mem::take(&mut self.edge_evals) {
            self.log_edge_evals(version, evals);
        }
    }

    /// Logs the sample-weighted RMSE of the edges' evaluations of `version` at the step
    /// of the round that committed it (nothing if no edge reported).
    fn log_edge_evals(&mut self, version: u64, evals: EdgeEvals) {
        if evals.samples == 0 {
            debug!(
                version,
                round = evals.round,
                "no edge evaluated this version"
            );
            return;
        }
        let rmse = (evals.weighted_sq / evals.samples as f64).sqrt();
        info!(
            version,
            round = evals.round,
            edges = evals.reporters.len(),
            rmse = format!("{rmse:.3}"),
            "edges' evaluation of the global model"
        );
        self.mlflow.log_metrics(
            evals.round,
            vec![
                ("edge_eval_rmse".into(), rmse),
                ("edge_eval_samples".into(), evals.samples as f64),
            ],
        );
        if let Some(s) = self.round_summary(version) {
            s.edge_eval_rmse = Some(rmse);
        }
        self.publish_status();
    }

    /// The status entry of the round that committed `version`.
    fn round_summary(&mut self, version: u64) -> Option<&mut RoundSummary> {
        self.status
            .rounds
            .iter_mut()
            .rev()
            .find(|s| s.version == Some(version))
    }

    fn on_net(&mut self, ev: NetEvent) {
        match ev {
            NetEvent::Control { from, env } => {
                if matches!(env.message, Message::Propose(_)) {
                    self.proposal_trace = env.trace.clone();
                }
                let now = self.now();
                self.core.handle_message(now, &from, env.message);
            }
            NetEvent::DataRequest {
                peer,
                frame,
                channel,
            } => self.on_data_request(peer, frame, channel),
            NetEvent::Peers => {
                self.status.peers = self.net.connected();
                self.publish_status();
            }
            NetEvent::DataResponse { .. } | NetEvent::Nothing => {}
        }
    }

    fn on_data_request(
        &mut self,
        peer: PeerId,
        frame: Frame<DataRequest>,
        channel: ResponseChannel<Vec<u8>>,
    ) {
        let response = match frame.header {
            DataRequest::FetchModel {
                digest,
                offset,
                max_len,
            } => self.serve_model(digest, offset, max_len),
            DataRequest::PushUpdate(header) => {
                let (received, accepted, error, retry_after_ms) =
                    self.on_update_chunk(peer, header, frame.payload);
                Frame {
                    header: DataResponse::UpdateAck {
                        received,
                        accepted,
                        error,
                        retry_after_ms,
                    },
                    payload: vec![],
                }
            }
        };
        self.net.data_respond(channel, response);
    }

    fn serve_model(&self, digest: Digest, offset: u64, max_len: u32) -> Frame<DataResponse> {
        // The current model, when small, is in memory already.
        if let Some(bytes) = self.global.resident.as_ref()
            && digest == self.core.durable().digest
        {
            return crate::net::model_chunk_of(digest, bytes.len() as u64, bytes, offset, max_len);
        }
        // Others are served straight from their content-addressed files.
        let file = std::fs::File::open(model_path(&self.models_dir, &digest)).ok();
        let total = file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map(|m| m.len());
        crate::net::model_chunk(digest, total, offset, max_len, |at, len| {
            // Room for the frame's trailer, so encoding does not move the payload.
            let mut payload = Vec::with_capacity(len + netproto::wire::MAX_DATA_HEADER + 4);
            payload.resize(len, 0);
            let file = file?;
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut payload, at).ok()?;
            Some(payload)
        })
    }

    /// Handles one frame of an update push: an empty frame at offset 0 reserves an upload
    /// slot (or is told to retry), data frames are validated and folded into the running
    /// sum as they arrive. Returns (bytes received, accepted, error, retry after ms).
    fn on_update_chunk(
        &mut self,
        peer: PeerId,
        h: UpdateHeader,
        payload: Vec<u8>,
    ) -> (u64, bool, String, u32) {
        let from = NodeId(peer.to_string());
        let now = self.now();
        if let Err(reject) = self.core.check_update(&from, h.round, h.term) {
            if h.offset == 0 && payload.is_empty() {
                // Goes through the core so the refusal is counted and logged.
                let _ =
                    self.core
                        .handle_update(now, &from, h.round, h.term, h.samples, h.train_loss);
            }
            if let Some(open) = self.open.as_mut() {
                open.agg.abort(from.as_str());
            }
            return (0, false, reject.to_string(), 0);
        }
        let Some(open) = self.open.as_mut().filter(|o| o.round == h.round) else {
            return (0, false, "no round is being collected".into(), 0);
        };
        if h.samples == 0 || !h.train_loss.is_finite() {
            let reason = "update claims no samples or a non-finite loss".to_owned();
            open.agg.abort(from.as_str());
            self.core
                .handle_invalid_update(&from, h.round, reason.clone());
            return (0, false, reason, 0);
        }
        if h.offset == 0 && payload.is_empty() {
            return match open.agg.begin(from.as_str(), h.total_len, h.samples) {
                Ok(()) => (0, false, String::new(), 0),
                Err(UploadError::Busy(_)) => (0, false, String::new(), BUSY_RETRY_MS),
                Err(e) => {
                    self.core
                        .handle_invalid_update(&from, h.round, e.to_string());
                    (0, false, e.to_string(), 0)
                }
            };
        }
        open.bytes_in += payload.len() as u64;
        let received = h.offset + payload.len() as u64;
        match open.agg.chunk(from.as_str(), h.offset, payload) {
            Ok(false) => (received, false, String::new(), 0),
            Ok(true) => match self.finish_update(&from, &h) {
                Ok(()) => (received, true, String::new(), 0),
                Err(e) => (received, false, e, 0),
            },
            Err(e) => {
                self.core
                    .handle_invalid_update(&from, h.round, e.to_string());
                (received, false, e.to_string(), 0)
            }
        }
    }

    /// The last chunk arrived: checks digest and norm, asks the core to admit the update,
    /// and keeps it in the sum or rolls it back.
    fn finish_update(&mut self, from: &NodeId, h: &UpdateHeader) -> Result<(), String> {
        let parent = self.open.as_ref().and_then(|o| o.trace.clone());
        let mut span = self.tracer.start_span(
            "anchor.validate",
            parent.as_deref(),
            vec![("round", h.round.to_string()), ("edge", from.to_string())],
        );
        let now = self.now();
        let core = &mut self.core;
        let Some(open) = self.open.as_mut() else {
            return Err("no round is being collected".into());
        };
        let mut fenced = false;
        let result = open.agg.finish(from.as_str(), || {
            fenced = true;
            core.handle_update(now, from, h.round, h.term, h.samples, h.train_loss)
                .map_err(|r| r.to_string())
        });
        match &result {
            Ok(()) => span.set_attr("accepted", "true".into()),
            Err(reason) => {
                span.set_attr("rejected", reason.clone());
                if !fenced {
                    // Content failures are counted here; the core counted fencing refusals.
                    self.core
                        .handle_invalid_update(from, h.round, reason.clone());
                }
            }
        }
        result
    }

    fn drain(&mut self) -> Result<()> {
        while let Some(out) = self.core.poll_output() {
            match out {
                Output::Broadcast(msg) => {
                    let trace = self.open.as_ref().and_then(|o| o.trace.clone());
                    self.net.broadcast(msg, trace);
                }
                Output::Send { to, message } => self.net.send(&to, message, None),
                Output::Persist(durable) => {
                    self.store
                        .put_durable(&postcard::to_allocvec(&durable)?)
                        .context("persisting the anchor state")?;
                }
                Output::Aggregate {
                    round,
                    term,
                    version,
                    included,
                } => self.aggregate(round, term, version, included.len())?,
                Output::DiscardRound { round } => {
                    if self.open.as_ref().is_some_and(|o| o.round == round) {
                        self.open = None;
                    }
                }
                Output::Event(ev) => self.on_event(ev)?,
                Output::Train(_)
                | Output::CancelTraining { .. }
                | Output::PushUpdate { .. }
                | Output::NewGlobal(_) => {}
            }
        }
        let d = self.core.durable();
        self.status.term = d.term;
        self.status.coordinator = d.coordinator.as_ref().map(ToString::to_string);
        self.status.version = d.version;
        self.status.digest = hex::encode(d.digest);
        self.status.bytes_out = self.net.bytes_out;
        self.publish_status();
        Ok(())
    }

    fn publish_status(&mut self) {
        self.status_out.publish(&self.status);
    }

    fn aggregate(&mut self, round: u64, term: u64, version: u64, included: usize) -> Result<()> {
        let Some(open) = self.open.take().filter(|o| o.round == round) else {
            self.core
                .handle_aggregation_failed(round, "no aggregate for this round".into());
            return Ok(());
        };
        let mut span = self.tracer.start_span(
            "anchor.aggregate",
            open.trace.as_deref(),
            vec![
                ("round", round.to_string()),
                ("updates", included.to_string()),
            ],
        );
        // The mean goes straight from the running sum to its content-addressed file.
        let (digest, next) = match open.agg.write_mean(&self.models_dir) {
            Ok(r) => r,
            Err(e) => {
                span.set_attr("error", e.to_string());
                self.core.handle_aggregation_failed(round, e.to_string());
                return Ok(());
            }
        };
        span.end();
        let commit_span = self.tracer.start_span(
            "anchor.commit",
            open.trace.as_deref(),
            vec![
                ("round", round.to_string()),
                ("version", version.to_string()),
            ],
        );
        let now = self.now();
        let rejected = self.core.rejected_in_round();
        let durable = match self.core.handle_committed(now, round, digest) {
            Ok(d) => d,
            Err(e) => {
                warn!(round, "commit refused by the core: {e}");
                return Ok(());
            }
        };
        let rec = VersionRecord {
            version,
            digest,
            round,
            term,
            committed_at_ms: unix_ms(),
            participants: included as u32,
            samples: 0,
            train_loss: f32::NAN,
            eval_rmse: None,
        };
        // The model file is already durable (fsynced, renamed); the version record and the
        // new durable state land in one atomic batch: a crash leaves either the old or the
        // new version, never a mix (at worst an unreferenced model file).
        self.store
            .commit_version_record(&rec, &postcard::to_allocvec(&durable)?)
            .context("committing the global model")?;
        drop(commit_span);
        self.global = next;
        self.version_round.insert(version, round);
        while self.version_round.len() > 64 {
            self.version_round.pop_first();
        }
        let duration_ms = now.saturating_sub(open.opened_ms);
        self.status.rounds.push(RoundSummary {
            round,
            version: Some(version),
            included,
            participants: open.participants,
            rejected,
            train_loss: f32::NAN,
            eval_rmse: None,
            edge_eval_rmse: None,
            duration_ms,
            bytes_in: open.bytes_in,
            committed_at_ms: now,
            bytes_out_at_commit: self.net.bytes_out,
        });
        if self.status.rounds.len() > MAX_STATUS_ROUNDS {
            self.status.rounds.remove(0);
        }
        if let Some(genesis) = self.genesis.take() {
            // The baseline of the learning curve: the untrained model, same scaler.
            self.spawn_eval(0, 0, genesis, None);
        }
        let path = self.global.path.clone();
        self.spawn_eval(version, round, path, open.trace.as_deref());
        Ok(())
    }

    fn spawn_eval(
        &mut self,
        version: u64,
        round: u64,
        path: std::path::PathBuf,
        trace: Option<&str>,
    ) {
        let (Some(holdout), Some(scaler)) =
            (self.holdout.clone(), self.core.durable().scaler.clone())
        else {
            return;
        };
        let spec = self.spec.clone();
        let tx = self.eval_tx.clone();
        let span = self.tracer.start_span(
            "anchor.evaluate",
            trace,
            vec![
                ("round", round.to_string()),
                ("version", version.to_string()),
                ("machines", holdout.len().to_string()),
            ],
        );
        self.evals_in_flight += 1;
        tokio::task::spawn_blocking(move || {
            let scaler = model::Scaler {
                min: scaler.min,
                max: scaler.max,
            };
            let data = model::make_windows(
                &holdout,
                &scaler,
                &model::WindowConfig {
                    window: spec.window,
                    ..model::WindowConfig::default()
                },
            );
            let r = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| ParamSet::from_bytes(&b).map_err(|e| e.to_string()))
                .and_then(|params| {
                    model::evaluate(&spec, &params, &data)
                        .map(|m| m.rmse)
                        .map_err(|e| e.to_string())
                });
            drop(span);
            let _ = tx.blocking_send((version, round, r));
        });
    }

    fn on_eval(&mut self, version: u64, round: u64, r: Result<f64, String>) {
        self.evals_in_flight = self.evals_in_flight.saturating_sub(1);
        match r {
            Ok(rmse) if version == 0 => {
                info!(
                    rmse = format!("{rmse:.3}"),
                    "genesis model evaluated on the held-out set"
                );
                self.status.genesis_eval_rmse = Some(rmse);
                self.publish_status();
            }
            Ok(rmse) => {
                info!(
                    version,
                    round,
                    rmse = format!("{rmse:.3}"),
                    "global model evaluated on the held-out set"
                );
                self.mlflow
                    .log_metrics(round, vec![("eval_rmse".into(), rmse)]);
                if let Some(s) = self.round_summary(version) {
                    s.eval_rmse = Some(rmse);
                }
                self.publish_status();
            }
            Err(e) => warn!(version, "evaluation failed: {e}"),
        }
    }

    fn on_event(&mut self, ev: Event) -> Result<()> {
        let now = self.now();
        match &ev {
            Event::RoundOpened(plan) => {
                let trace = self.proposal_trace.take();
                let span = self.tracer.start_span(
                    "anchor.collect",
                    trace.as_deref(),
                    vec![
                        ("round", plan.round.to_string()),
                        ("term", plan.term.to_string()),
                        ("participants", plan.participants.len().to_string()),
                    ],
                );
                info!(
                    round = plan.round,
                    term = plan.term,
                    participants = plan.participants.len(),
                    coordinator = %plan.coordinator,
                    "round opened"
                );
                self.open = Some(OpenRound {
                    round: plan.round,
                    participants: plan.participants.len(),
                    agg: StreamingAggregator::new(
                        self.global.clone(),
                        StreamingAggregator::slots_for(
                            netproto::wire::MAX_PUSH_CHUNK as u64,
                            UPLOAD_BUDGET,
                        ),
                        self.cfg.model.max_update_norm,
                    )
                    .context("preparing the round's aggregate")?,
                    opened_ms: now,
                    trace,
                    span: Some(span),
                    bytes_in: 0,
                });
            }
            Event::RoundCommitted(c) => {
                info!(
                    round = c.round,
                    version = c.version,
                    included = c.included.len(),
                    train_loss = format!("{:.4}", c.train_loss),
                    digest = short_hex(&c.digest),
                    "round committed"
                );
                let rejected = self.status.rounds.last().map_or(0, |s| s.rejected);
                if let Some(s) = self.status.rounds.last_mut() {
                    s.train_loss = c.train_loss;
                }
                let last = self.status.rounds.last().cloned().unwrap_or_default();
                let metrics = vec![
                    ("train_loss".into(), f64::from(c.train_loss)),
                    ("participants".into(), c.included.len() as f64),
                    ("rejected_updates".into(), f64::from(rejected)),
                    ("round_duration_ms".into(), last.duration_ms as f64),
                    ("bytes_in".into(), last.bytes_in as f64),
                    ("bytes_out_total".into(), self.net.bytes_out as f64),
                    ("samples".into(), c.samples as f64),
                ];
                self.mlflow.log_metrics(c.round, metrics);
                // Edge evaluations of older versions that are still incomplete are logged
                // now with what arrived; this version's wait for the edges' reports.
                let older: Vec<u64> = self
                    .edge_evals
                    .range(..c.version)
                    .map(|(v, _)| *v)
                    .collect();
                for v in older {
                    if let Some(evals) = self.edge_evals.remove(&v) {
                        self.log_edge_evals(v, evals);
                    }
                }
                self.edge_evals.insert(
                    c.version,
                    EdgeEvals {
                        round: c.round,
                        expected: last.participants.max(c.included.len()).max(1),
                        reporters: BTreeSet::new(),
                        samples: 0,
                        weighted_sq: 0.0,
                    },
                );
                self.status.last_event =
                    format!("round {} committed version {}", c.round, c.version);
                if let Some(o) = self.open.as_mut() {
                    o.span.take();
                }
                let _ = self.store.append_round(&RoundLogEntry {
                    round: c.round,
                    term: c.term,
                    outcome: "committed".into(),
                    participants: vec![],
                    included: c.included.iter().map(ToString::to_string).collect(),
                    rejected,
                    started_at_ms: 0,
                    ended_at_ms: unix_ms(),
                    version: Some(c.version),
                });
            }
            Event::RoundAbandoned { round, reason } => {
                warn!(round, "round abandoned: {reason}");
                self.status.last_event = format!("round {round} abandoned: {reason}");
                self.status.rounds.push(RoundSummary {
                    round: *round,
                    ..RoundSummary::default()
                });
                let _ = self.store.append_round(&RoundLogEntry {
                    round: *round,
                    term: self.core.durable().term,
                    outcome: format!("abandoned: {reason}"),
                    participants: vec![],
                    included: vec![],
                    rejected: 0,
                    started_at_ms: 0,
                    ended_at_ms: unix_ms(),
                    version: None,
                });
            }
            Event::UpdateAccepted {
                round,
                from,
                samples,
            } => {
                info!(round, %from, samples, "update accepted");
            }
            Event::UpdateRejected {
                round,
                from,
                reason,
            } => {
                warn!(round, %from, "update rejected: {reason}");
                self.status.last_event = format!("update from {from} rejected: {reason}");
            }
            Event::TermGranted { term, coordinator } => {
                info!(term, %coordinator, "coordinator lease granted");
            }
            Event::EvalReported {
                from,
                version,
                samples,
                rmse,
            } => {
                let Some(e) = self.edge_evals.get_mut(version) else {
                    debug!(%from, version, "evaluation report for a version already logged or unknown; ignored");
                    return Ok(());
                };
                if e.reporters.insert(from.clone()) {
                    e.samples += samples;
                    e.weighted_sq += *samples as f64 * rmse * rmse;
                }
                if e.reporters.len() >= e.expected
                    && let Some(evals) = self.edge_evals.remove(version)
                {
                    self.log_edge_evals(*version, evals);
                }
            }
            Event::ProposalRejected { reason } => info!("proposal rejected: {reason}"),
            _ => {}
        }
        Ok(())
    }
}

/// Writes a model file durably (fsync before the rename).
fn write_model_file(dir: &std::path::Path, digest: &Digest, bytes: &[u8]) -> Result<()> {
    crate::models::write_model_file(dir, digest, bytes, true)
        .with_context(|| format!("writing model {} to {}", short_hex(digest), dir.display()))
}
