//! MLflow bridge: params, metrics, tags and artifacts of one federation session go to
//! one MLflow run over MLflow's REST API, without ever blocking a round.
//!
//! [`MlflowBridge`] is a cheap, cloneable handle. Its methods never wait: each call
//! first appends a line to `local_dir/metrics.jsonl` (the record that exists with or
//! without MLflow), then hands the item to a worker task through a bounded queue with
//! `try_send`; when the queue is full the item is counted as dropped (it is still in
//! `metrics.jsonl`).
//!
//! The worker (spawned by [`MlflowBridge::start`]) gets or creates the experiment by
//! name, creates the run, and delivers items in order with `runs/log-batch` (at most
//! 1000 metrics, 100 params, 100 tags, 1000 items per batch) and artifacts with
//! `PUT /api/2.0/mlflow-artifacts/artifacts/<exp>/<run>/artifacts/<file>` (the artifact
//! proxy of `mlflow server --serve-artifacts`). While MLflow is unreachable, items wait
//! in a bounded buffer (the oldest are dropped with a warning when it overflows) and
//! delivery is retried with capped exponential backoff (200 ms → 5 s). Every HTTP
//! request has a 5 s timeout. [`MlflowBridge::finish`] flushes within 10 s, then sets the
//! run's status and end time.
//!
//! `metrics.jsonl` lines are JSON objects with a `kind` field:
//! `{"kind":"metric","step":3,"key":"loss","value":0.1,"timestamp_ms":..}`,
//! `{"kind":"param","key":..,"value":"..","timestamp_ms":..}`,
//! `{"kind":"tag","key":..,"value":"..","timestamp_ms":..}`,
//! `{"kind":"artifact","file":..,"bytes":123,"timestamp_ms":..}` (the artifact itself is
//! written next to it, as `local_dir/<file>`),
//! `{"kind":"finish","status":"FINISHED","timestamp_ms":..}`.

use std::collections::{HashSet, VecDeque};
use std::fs::File;
use std::io::{LineWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Timeout of every HTTP request to MLflow.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connect timeout of every HTTP request to MLflow.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// First retry delay after a failed delivery.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
/// Largest retry delay.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long `finish` keeps trying to deliver pending items.
const FINISH_DEADLINE: Duration = Duration::from_secs(10);
/// `runs/log-batch` limits (MLflow REST API).
const MAX_BATCH_METRICS: usize = 1000;
const MAX_BATCH_PARAMS: usize = 100;
const MAX_BATCH_TAGS: usize = 100;
const MAX_BATCH_ITEMS: usize = 1000;
/// MLflow's limits on key and param value lengths.
const MAX_KEY_LEN: usize = 250;
const MAX_PARAM_VALUE_LEN: usize = 6000;
const MAX_TAG_VALUE_LEN: usize = 5000;

/// Errors of the MLflow REST client (the bridge logs them and retries; they never reach
/// the callers of [`MlflowBridge`]).
#[derive(Debug, thiserror::Error)]
pub enum MlflowError {
    /// The request did not complete (connection refused, timeout, ...). Retried.
    #[error("HTTP request to MLflow failed: {0}")]
    Http(#[from] reqwest::Error),
    /// MLflow answered with an error status.
    #[error("MLflow answered HTTP {status} {error_code}: {message}")]
    Api {
        /// HTTP status code.
        status: u16,
        /// MLflow's `error_code` (e.g. `RESOURCE_ALREADY_EXISTS`), empty if absent.
        error_code: String,
        /// MLflow's `message`, or the start of the body.
        message: String,
    },
    /// MLflow answered 2xx with a body that is not what the API documents.
    #[error("unexpected MLflow response: {0}")]
    BadResponse(String),
}

impl MlflowError {
    /// Whether retrying the same request later may succeed (transport errors, 5xx, 408,
    /// 429, malformed answers); 4xx answers are permanent.
    pub fn is_retryable(&self) -> bool {
        match self {
            MlflowError::Http(_) | MlflowError::BadResponse(_) => true,
            MlflowError::Api { status, .. } => *status >= 500 || *status == 408 || *status == 429,
        }
    }

    fn error_code(&self) -> Option<&str> {
        match self {
            MlflowError::Api { error_code, .. } => Some(error_code),
            _ => None,
        }
    }
}

/// Configuration of the MLflow bridge.
#[derive(Clone, Debug)]
pub struct MlflowConfig {
    /// MLflow tracking server, e.g. `http://127.0.0.1:5055`; `None` writes locally only.
    pub tracking_uri: Option<String>,
    /// Experiment name (created if missing).
    pub experiment: String,
    /// Run name (`mlflow.runName`).
    pub run_name: String,
    /// Directory of `metrics.jsonl` and local artifact copies (created if missing).
    pub local_dir: PathBuf,
    /// Capacity of the event queue and of the pending buffer (items), e.g. 4096.
    pub queue_capacity: usize,
    /// Extra tags set on the run at creation.
    pub tags: Vec<(String, String)>,
}

/// What the worker achieved, returned by its join handle when it exits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MlflowSummary {
    /// The MLflow run id, if a run was created.
    pub run_id: Option<String>,
    /// Metrics MLflow accepted.
    pub delivered_metrics: u64,
    /// Metrics still waiting for delivery when the worker exited (they are in
    /// `metrics.jsonl`).
    pub pending_metrics: u64,
    /// Items (metrics, params, tags, artifacts) that will never reach MLflow: queue full,
    /// pending buffer overflow, or rejected by MLflow with a 4xx answer.
    pub dropped: u64,
}

enum Event {
    Params(Vec<(String, String)>),
    Metrics(Vec<Metric>),
    Tag(String, String),
    Artifact(String, Vec<u8>),
}

#[derive(Clone, Debug)]
struct Metric {
    key: String,
    value: f64,
    step: u64,
    timestamp_ms: u64,
}

enum Item {
    Metric(Metric),
    Param(String, String),
    Tag(String, String),
    Artifact(String, Vec<u8>),
}

struct Shared {
    local: Mutex<Option<LineWriter<File>>>,
    local_dir: PathBuf,
    dropped: AtomicU64,
    delivery: bool,
}

impl Shared {
    fn write_line(&self, v: &Value) {
        let mut guard = self
            .local
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(w) = guard.as_mut() {
            let mut line = v.to_string();
            line.push('\n');
            if let Err(e) = w.write_all(line.as_bytes()) {
                warn!(error = %e, "mlflow bridge: cannot append to metrics.jsonl; local log disabled");
                *guard = None;
            }
        }
    }
}

/// Handle of the MLflow bridge; cheap to clone, every method returns immediately.
#[derive(Clone)]
pub struct MlflowBridge {
    tx: mpsc::Sender<Event>,
    finish_tx: mpsc::Sender<String>,
    shared: Arc<Shared>,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for MlflowBridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MlflowBridge")
            .field("local_dir", &self.shared.local_dir)
            .field("delivery", &self.shared.delivery)
            .finish()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// MLflow accepts keys of alphanumerics, `_ - . / space`, at most 250 characters.
fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= MAX_KEY_LEN
        && !k.starts_with('/')
        && !k.split('/').any(|part| part == "..")
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | ' '))
}

/// An artifact file name: one path component of `[A-Za-z0-9._-]`, not starting with `.`.
fn valid_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_KEY_LEN
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn truncate_chars(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

impl MlflowBridge {
    /// Starts the bridge: opens `local_dir/metrics.jsonl` (append) and spawns the worker
    /// task on the current tokio runtime. Must be called from within a tokio runtime.
    /// The join handle yields the [`MlflowSummary`] once the worker exits (after
    /// [`Self::finish`], or when every handle is dropped; the run is then marked
    /// `KILLED`).
    pub fn start(cfg: MlflowConfig) -> (MlflowBridge, tokio::task::JoinHandle<MlflowSummary>) {
        let capacity = cfg.queue_capacity.max(1);
        let local = match std::fs::create_dir_all(&cfg.local_dir).and_then(|()| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(cfg.local_dir.join("metrics.jsonl"))
        }) {
            Ok(f) => Some(LineWriter::new(f)),
            Err(e) => {
                warn!(dir = %cfg.local_dir.display(), error = %e,
                    "mlflow bridge: cannot open metrics.jsonl; metrics are not recorded locally");
                None
            }
        };
        let api = cfg.tracking_uri.as_deref().and_then(|uri| match Api::new(uri) {
            Ok(api) => Some(api),
            Err(e) => {
                warn!(uri, error = %e, "mlflow bridge: cannot build the HTTP client; local only");
                None
            }
        });
        let shared = Arc::new(Shared {
            local: Mutex::new(local),
            local_dir: cfg.local_dir.clone(),
            dropped: AtomicU64::new(0),
            delivery: api.is_some(),
        });
        let (tx, rx) = mpsc::channel(capacity);
        let (finish_tx, finish_rx) = mpsc::channel(1);
        let worker = Worker {
            api,
            experiment: cfg.experiment,
            run_name: cfg.run_name,
            tags: cfg.tags,
            start_time_ms: now_ms(),
            shared: Arc::clone(&shared),
            capacity,
            pending: VecDeque::new(),
            pending_metrics: 0,
            delivered_metrics: 0,
            experiment_id: None,
            run: None,
            backoff: BACKOFF_MIN,
            next_attempt: Instant::now(),
            overflow_warned: 0,
        };
        let handle = tokio::spawn(worker.run(rx, finish_rx));
        let bridge = MlflowBridge {
            tx,
            finish_tx,
            shared,
            runtime: tokio::runtime::Handle::current(),
        };
        (bridge, handle)
    }

    fn send(&self, ev: Event, items: u64, what: &str) {
        match self.tx.try_send(ev) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(ev)) => {
                if let Event::Artifact(name, bytes) = ev {
                    // Still keep the local copy, off the caller's thread.
                    let path = self.shared.local_dir.join(&name);
                    self.runtime.spawn(async move {
                        if let Err(e) = tokio::fs::write(&path, bytes).await {
                            warn!(path = %path.display(), error = %e, "mlflow bridge: cannot write artifact");
                        }
                    });
                }
                if self.shared.delivery {
                    self.shared.dropped.fetch_add(items, Ordering::Relaxed);
                    warn!(
                        what,
                        items,
                        "mlflow bridge: queue full, not sent to MLflow (kept in metrics.jsonl)"
                    );
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                if self.shared.delivery {
                    self.shared.dropped.fetch_add(items, Ordering::Relaxed);
                }
                warn!(what, "mlflow bridge: already finished, not sent to MLflow");
            }
        }
    }

    /// Logs run parameters (MLflow params are write-once: re-logging a key with another
    /// value is rejected by MLflow and counted as dropped). Never blocks.
    pub fn log_params(&self, params: Vec<(String, String)>) {
        let ts = now_ms();
        let mut ok = Vec::with_capacity(params.len());
        for (k, v) in params {
            if !valid_key(&k) {
                warn!(key = %k, "mlflow bridge: invalid param key skipped");
                continue;
            }
            let v = if v.chars().count() > MAX_PARAM_VALUE_LEN {
                warn!(key = %k, "mlflow bridge: param value truncated to {MAX_PARAM_VALUE_LEN} chars");
                truncate_chars(&v, MAX_PARAM_VALUE_LEN)
            } else {
                v
            };
            self.shared
                .write_line(&json!({"kind": "param", "key": k, "value": v, "timestamp_ms": ts}));
            ok.push((k, v));
        }
        if !ok.is_empty() {
            let n = ok.len() as u64;
            self.send(Event::Params(ok), n, "params");
        }
    }

    /// Logs metrics at `step` (the round number), timestamped now. Non-finite values and
    /// invalid keys are skipped with a warning. Never blocks.
    pub fn log_metrics(&self, step: u64, metrics: Vec<(String, f64)>) {
        let ts = now_ms();
        let mut ok = Vec::with_capacity(metrics.len());
        for (key, value) in metrics {
            if !value.is_finite() {
                warn!(key = %key, step, value, "mlflow bridge: non-finite metric skipped");
                continue;
            }
            if !valid_key(&key) {
                warn!(key = %key, "mlflow bridge: invalid metric key skipped");
                continue;
            }
            self.shared.write_line(&json!({
                "kind": "metric", "step": step, "key": key, "value": value, "timestamp_ms": ts
            }));
            ok.push(Metric {
                key,
                value,
                step,
                timestamp_ms: ts,
            });
        }
        if !ok.is_empty() {
            let n = ok.len() as u64;
            self.send(Event::Metrics(ok), n, "metrics");
        }
    }

    /// Sets a run tag (values are truncated to 5000 characters). Never blocks.
    pub fn set_tag(&self, key: &str, value: &str) {
        if !valid_key(key) {
            warn!(key, "mlflow bridge: invalid tag key skipped");
            return;
        }
        let value = truncate_chars(value, MAX_TAG_VALUE_LEN);
        self.shared.write_line(
            &json!({"kind": "tag", "key": key, "value": value, "timestamp_ms": now_ms()}),
        );
        self.send(Event::Tag(key.to_string(), value), 1, "tag");
    }

    /// Uploads `bytes` as run artifact `file_name` (a single file name of
    /// `[A-Za-z0-9._-]`), and writes it to `local_dir/file_name`. Never blocks.
    pub fn log_artifact(&self, file_name: &str, bytes: Vec<u8>) {
        if !valid_file_name(file_name) {
            warn!(
                file_name,
                "mlflow bridge: invalid artifact file name skipped"
            );
            return;
        }
        self.shared.write_line(&json!({
            "kind": "artifact", "file": file_name, "bytes": bytes.len(), "timestamp_ms": now_ms()
        }));
        self.send(Event::Artifact(file_name.to_string(), bytes), 1, "artifact");
    }

    /// Ends the session with `status` (`FINISHED`, `FAILED` or `KILLED`; anything else is
    /// sent as `FAILED`). The worker delivers what is pending for at most 10 s, updates
    /// the run and exits; await its join handle for the summary. Never blocks; items
    /// logged after `finish` are not delivered.
    pub fn finish(&self, status: &str) {
        let status = match status {
            "FINISHED" | "FAILED" | "KILLED" => status.to_string(),
            other => {
                warn!(
                    status = other,
                    "mlflow bridge: unknown run status, using FAILED"
                );
                "FAILED".to_string()
            }
        };
        self.shared
            .write_line(&json!({"kind": "finish", "status": status, "timestamp_ms": now_ms()}));
        if self.finish_tx.try_send(status).is_err() {
            debug!("mlflow bridge: finish already requested");
        }
    }
}

/// Minimal async client of MLflow's REST API.
struct Api {
    client: reqwest::Client,
    base: String,
}

fn is_loopback_uri(uri: &str) -> bool {
    let rest = uri.split_once("://").map_or(uri, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or("");
    let host = if let Some(h) = authority.strip_prefix('[') {
        h.split(']').next().unwrap_or("")
    } else {
        authority.split(':').next().unwrap_or("")
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Api {
    fn new(tracking_uri: &str) -> Result<Self, MlflowError> {
        let mut builder = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT);
        if is_loopback_uri(tracking_uri) {
            builder = builder.no_proxy();
        }
        Ok(Self {
            client: builder.build()?,
            base: tracking_uri.trim_end_matches('/').to_string(),
        })
    }

    fn url(&self, endpoint: &str) -> String {
        format!("{}/api/2.0/mlflow/{endpoint}", self.base)
    }

    async fn answer(resp: reqwest::Response) -> Result<Value, MlflowError> {
        let status = resp.status();
        let text = resp.text().await?;
        if status.is_success() {
            if text.trim().is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_str(&text)
                .map_err(|e| MlflowError::BadResponse(format!("invalid JSON ({e})")));
        }
        let parsed: Option<Value> = serde_json::from_str(&text).ok();
        let field = |name: &str| {
            parsed
                .as_ref()
                .and_then(|v| v.get(name))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        Err(MlflowError::Api {
            status: status.as_u16(),
            error_code: field("error_code").unwrap_or_default(),
            message: field("message").unwrap_or_else(|| truncate_chars(&text, 200)),
        })
    }

    async fn get(&self, endpoint: &str, query: &[(&str, &str)]) -> Result<Value, MlflowError> {
        let resp = self
            .client
            .get(self.url(endpoint))
            .query(query)
            .send()
            .await?;
        Self::answer(resp).await
    }

    async fn post(&self, endpoint: &str, body: &Value) -> Result<Value, MlflowError> {
        let resp = self
            .client
            .post(self.url(endpoint))
            .json(body)
            .send()
            .await?;
        Self::answer(resp).await
    }

    async fn put_artifact(&self, path: &str, bytes: Vec<u8>) -> Result<(), MlflowError> {
        let url = format!("{}/api/2.0/mlflow-artifacts/artifacts/{path}", self.base);
        let resp = self
            .client
            .put(url)
            .header("Content-Type", "application/octet-stream")
            .body(bytes)
            .send()
            .await?;
        Self::answer(resp).await.map(|_| ())
    }
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

struct Run {
    run_id: String,
    /// Artifact root relative to the artifact proxy, e.g. `7/<run_id>/artifacts`.
    artifact_path: String,
}

/// The run's artifact root relative to `/api/2.0/mlflow-artifacts/artifacts/`: the path
/// of an `mlflow-artifacts:` URI (host part ignored), else `<exp>/<run>/artifacts`.
fn artifact_path(artifact_uri: Option<&str>, experiment_id: &str, run_id: &str) -> String {
    if let Some(rest) = artifact_uri.and_then(|u| u.strip_prefix("mlflow-artifacts:")) {
        let path = match rest.strip_prefix("//") {
            Some(with_host) => with_host.split_once('/').map_or("", |(_, p)| p),
            None => rest,
        };
        let path = path.trim_matches('/');
        if !path.is_empty() {
            return path.to_string();
        }
    }
    format!("{experiment_id}/{run_id}/artifacts")
}

struct Worker {
    api: Option<Api>,
    experiment: String,
    run_name: String,
    tags: Vec<(String, String)>,
    start_time_ms: u64,
    shared: Arc<Shared>,
    capacity: usize,
    pending: VecDeque<Item>,
    pending_metrics: u64,
    delivered_metrics: u64,
    experiment_id: Option<String>,
    run: Option<Run>,
    backoff: Duration,
    next_attempt: Instant,
    overflow_warned: u64,
}

impl Worker {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Event>,
        mut finish_rx: mpsc::Receiver<String>,
    ) -> MlflowSummary {
        let status = loop {
            let wants_delivery =
                self.api.is_some() && (self.run.is_none() || !self.pending.is_empty());
            let retry_at = self.next_attempt;
            tokio::select! {
                biased;
                ev = rx.recv() => match ev {
                    Some(ev) => {
                        self.accept(ev).await;
                        // Take whatever else is queued, so it goes out in few batches.
                        for _ in 0..self.capacity {
                            match rx.try_recv() {
                                Ok(ev) => self.accept(ev).await,
                                Err(_) => break,
                            }
                        }
                    }
                    None => break "KILLED".to_string(),
                },
                st = finish_rx.recv() => break st.unwrap_or_else(|| "KILLED".to_string()),
                () = tokio::time::sleep_until(retry_at), if wants_delivery => {}
            }
            if self.api.is_some() && Instant::now() >= self.next_attempt {
                self.attempt(None).await;
            }
        };
        // Everything sent before `finish` is already in the queue.
        while let Ok(ev) = rx.try_recv() {
            self.accept(ev).await;
        }
        rx.close();
        self.finish(&status).await
    }

    /// Records one event: artifacts are written locally; with MLflow, items are queued.
    async fn accept(&mut self, ev: Event) {
        if let Event::Artifact(name, bytes) = &ev {
            let path = self.shared.local_dir.join(name);
            if let Err(e) = tokio::fs::write(&path, bytes).await {
                warn!(path = %path.display(), error = %e, "mlflow bridge: cannot write artifact");
            }
        }
        if self.api.is_none() {
            return;
        }
        match ev {
            Event::Params(ps) => ps
                .into_iter()
                .for_each(|(k, v)| self.push(Item::Param(k, v))),
            Event::Metrics(ms) => ms.into_iter().for_each(|m| self.push(Item::Metric(m))),
            Event::Tag(k, v) => self.push(Item::Tag(k, v)),
            Event::Artifact(n, b) => self.push(Item::Artifact(n, b)),
        }
    }

    fn push(&mut self, item: Item) {
        if matches!(item, Item::Metric(_)) {
            self.pending_metrics += 1;
        }
        self.pending.push_back(item);
        while self.pending.len() > self.capacity {
            if let Some(old) = self.pending.pop_front() {
                if matches!(old, Item::Metric(_)) {
                    self.pending_metrics -= 1;
                }
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                if self.overflow_warned.is_multiple_of(1000) {
                    warn!(
                        capacity = self.capacity,
                        "mlflow bridge: MLflow unreachable and pending buffer full; dropping oldest items (kept in metrics.jsonl)"
                    );
                }
                self.overflow_warned += 1;
            }
        }
    }

    /// One delivery attempt; on failure schedules the next one with backoff.
    async fn attempt(&mut self, deadline: Option<Instant>) {
        match self.deliver(deadline).await {
            Ok(()) => {
                self.backoff = BACKOFF_MIN;
                self.next_attempt = Instant::now();
            }
            Err(e) => {
                warn!(error = %e, retry_in_ms = self.backoff.as_millis() as u64,
                    pending = self.pending.len(), "mlflow bridge: MLflow unavailable, will retry");
                self.next_attempt = Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
            }
        }
    }

    async fn ensure_run(&mut self) -> Result<(), MlflowError> {
        if self.run.is_some() {
            return Ok(());
        }
        let Some(api) = &self.api else {
            return Ok(());
        };
        let experiment_id = match &self.experiment_id {
            Some(id) => id.clone(),
            None => {
                let id = get_or_create_experiment(api, &self.experiment).await?;
                self.experiment_id = Some(id.clone());
                id
            }
        };
        let mut tags = vec![json!({"key": "mlflow.runName", "value": self.run_name})];
        tags.extend(
            self.tags
                .iter()
                .filter(|(k, _)| k != "mlflow.runName")
                .map(|(k, v)| json!({"key": k, "value": v})),
        );
        let body = json!({
            "experiment_id": experiment_id,
            "run_name": self.run_name,
            "start_time": self.start_time_ms,
            "tags": tags,
        });
        let resp = api.post("runs/create", &body).await?;
        let run_id = str_at(&resp, &["run", "info", "run_id"])
            .or_else(|| str_at(&resp, &["run", "info", "run_uuid"]))
            .ok_or_else(|| MlflowError::BadResponse("runs/create without run.info.run_id".into()))?
            .to_string();
        let artifact_uri = str_at(&resp, &["run", "info", "artifact_uri"]);
        let artifact_path = artifact_path(artifact_uri, &experiment_id, &run_id);
        info!(experiment = %self.experiment, experiment_id = %experiment_id, run_id = %run_id,
            "mlflow bridge: run created");
        self.run = Some(Run {
            run_id,
            artifact_path,
        });
        Ok(())
    }

    /// Delivers pending items in order until done, an error, or `deadline`.
    async fn deliver(&mut self, deadline: Option<Instant>) -> Result<(), MlflowError> {
        self.ensure_run().await?;
        let (Some(api), Some(run)) = (&self.api, &self.run) else {
            return Ok(());
        };
        while !self.pending.is_empty() {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(());
            }
            if let Some(Item::Artifact(name, bytes)) = self.pending.front() {
                let path = format!("{}/{name}", run.artifact_path);
                let result = api.put_artifact(&path, bytes.clone()).await;
                match result {
                    Ok(()) => debug!(file = %name, "mlflow bridge: artifact uploaded"),
                    Err(e) if e.is_retryable() => return Err(e),
                    Err(e) => {
                        warn!(file = %name, error = %e, "mlflow bridge: artifact rejected, dropped");
                        self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                self.pending.pop_front();
                continue;
            }
            let (body, n, metrics) = build_batch(&run.run_id, &self.pending);
            match api.post("runs/log-batch", &body).await {
                Ok(_) => self.delivered_metrics += metrics,
                Err(e) if e.is_retryable() => return Err(e),
                Err(e) => {
                    warn!(error = %e, items = n, "mlflow bridge: batch rejected by MLflow, dropped");
                    self.shared.dropped.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
            self.pending.drain(..n);
            self.pending_metrics -= metrics;
        }
        Ok(())
    }

    async fn finish(mut self, status: &str) -> MlflowSummary {
        if self.api.is_some() {
            let deadline = Instant::now() + FINISH_DEADLINE;
            loop {
                self.attempt(Some(deadline)).await;
                let done = self.run.is_some() && self.pending.is_empty();
                let now = Instant::now();
                if done || now >= deadline {
                    break;
                }
                tokio::time::sleep_until(self.next_attempt.min(deadline)).await;
            }
            if let (Some(api), Some(run)) = (&self.api, &self.run) {
                let body = json!({"run_id": run.run_id, "status": status, "end_time": now_ms()});
                match api.post("runs/update", &body).await {
                    Ok(_) => info!(run_id = %run.run_id, status, "mlflow bridge: run ended"),
                    Err(e) => {
                        warn!(run_id = %run.run_id, error = %e, "mlflow bridge: cannot end the run")
                    }
                }
            }
            if !self.pending.is_empty() {
                warn!(
                    pending = self.pending.len(),
                    "mlflow bridge: items not delivered before the deadline (they are in metrics.jsonl)"
                );
            }
        }
        MlflowSummary {
            run_id: self.run.as_ref().map(|r| r.run_id.clone()),
            delivered_metrics: self.delivered_metrics,
            pending_metrics: self.pending_metrics,
            dropped: self.shared.dropped.load(Ordering::Relaxed),
        }
    }
}

async fn get_or_create_experiment(api: &Api, name: &str) -> Result<String, MlflowError> {
    let lookup = || async {
        let resp = api
            .get("experiments/get-by-name", &[("experiment_name", name)])
            .await?;
        str_at(&resp, &["experiment", "experiment_id"])
            .map(str::to_string)
            .ok_or_else(|| MlflowError::BadResponse("get-by-name without experiment_id".into()))
    };
    match lookup().await {
        Ok(id) => return Ok(id),
        Err(e) if e.error_code() == Some("RESOURCE_DOES_NOT_EXIST") => {}
        Err(e) => return Err(e),
    }
    match api.post("experiments/create", &json!({"name": name})).await {
        Ok(resp) => {
            let id = str_at(&resp, &["experiment_id"])
                .ok_or_else(|| MlflowError::BadResponse("experiments/create without id".into()))?;
            info!(
                experiment = name,
                experiment_id = id,
                "mlflow bridge: experiment created"
            );
            Ok(id.to_string())
        }
        // Another peer created it between our GET and POST.
        Err(e) if e.error_code() == Some("RESOURCE_ALREADY_EXISTS") => lookup().await,
        Err(e) => Err(e),
    }
}

/// The next `runs/log-batch` body from the front of `pending` (which must not start with
/// an artifact): a contiguous run of items within MLflow's limits. Params are never
/// mixed with metrics or tags (a rejected param must not take metrics down with it),
/// and a param or tag key appears at most once per batch. Returns (body, items taken,
/// metrics taken).
fn build_batch(run_id: &str, pending: &VecDeque<Item>) -> (Value, usize, u64) {
    let mut metrics = Vec::new();
    let mut params = Vec::new();
    let mut tags = Vec::new();
    let mut param_keys = HashSet::new();
    let mut tag_keys = HashSet::new();
    let params_batch = matches!(pending.front(), Some(Item::Param(..)));
    let mut n = 0;
    for item in pending {
        if n >= MAX_BATCH_ITEMS {
            break;
        }
        match item {
            Item::Artifact(..) => break,
            Item::Param(k, v) => {
                if !params_batch || params.len() >= MAX_BATCH_PARAMS || !param_keys.insert(k) {
                    break;
                }
                params.push(json!({"key": k, "value": v}));
            }
            Item::Metric(m) => {
                if params_batch || metrics.len() >= MAX_BATCH_METRICS {
                    break;
                }
                metrics.push(json!({
                    "key": m.key, "value": m.value, "timestamp": m.timestamp_ms, "step": m.step
                }));
            }
            Item::Tag(k, v) => {
                if params_batch || tags.len() >= MAX_BATCH_TAGS || !tag_keys.insert(k) {
                    break;
                }
                tags.push(json!({"key": k, "value": v}));
            }
        }
        n += 1;
    }
    let metric_count = metrics.len() as u64;
    let body = json!({"run_id": run_id, "metrics": metrics, "params": params, "tags": tags});
    (body, n, metric_count)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[derive(Clone, Debug)]
    struct Req {
        method: String,
        path: String,
        body: Vec<u8>,
    }

    impl Req {
        fn json(&self) -> Value {
            serde_json::from_slice(&self.body).unwrap()
        }
    }

    #[derive(Default)]
    struct ServerState {
        requests: Vec<Req>,
        experiment_exists: bool,
    }

    /// A minimal MLflow-shaped HTTP/1.1 server on 127.0.0.1 (one request per connection).
    /// With `race`, experiments/create answers RESOURCE_ALREADY_EXISTS (another peer won).
    struct FakeMlflow {
        state: Arc<Mutex<ServerState>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl FakeMlflow {
        async fn start(listener: TcpListener, race: bool) -> FakeMlflow {
            let state = Arc::new(Mutex::new(ServerState::default()));
            let st = Arc::clone(&state);
            let task = tokio::spawn(async move {
                loop {
                    let Ok((sock, _)) = listener.accept().await else {
                        return;
                    };
                    let st = Arc::clone(&st);
                    tokio::spawn(async move {
                        let _ = serve(sock, st, race).await;
                    });
                }
            });
            FakeMlflow { state, task }
        }

        fn requests(&self) -> Vec<Req> {
            self.state.lock().unwrap().requests.clone()
        }

        fn batches(&self) -> Vec<Value> {
            self.requests()
                .iter()
                .filter(|r| r.path == "/api/2.0/mlflow/runs/log-batch")
                .map(Req::json)
                .collect()
        }

        /// (key, step, value) of all delivered metrics, in delivery order.
        fn metrics(&self) -> Vec<(String, u64, f64)> {
            self.batches()
                .iter()
                .flat_map(|b| b["metrics"].as_array().unwrap().clone())
                .map(|m| {
                    (
                        m["key"].as_str().unwrap().to_string(),
                        m["step"].as_u64().unwrap(),
                        m["value"].as_f64().unwrap(),
                    )
                })
                .collect()
        }
    }

    impl Drop for FakeMlflow {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn serve(
        mut sock: tokio::net::TcpStream,
        st: Arc<Mutex<ServerState>>,
        race: bool,
    ) -> std::io::Result<()> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        let header_end = loop {
            let n = sock.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..header_end]).to_string();
        let mut lines = head.lines();
        let mut first = lines.next().unwrap_or("").split_whitespace();
        let method = first.next().unwrap_or("").to_string();
        let path = first.next().unwrap_or("").to_string();
        let content_length: usize = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < header_end + content_length {
            let n = sock.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body = buf[header_end..].to_vec();
        let route = path.split('?').next().unwrap_or("").to_string();
        let (status, answer) = {
            let mut s = st.lock().unwrap();
            s.requests.push(Req {
                method: method.clone(),
                path: route.clone(),
                body,
            });
            match (method.as_str(), route.as_str()) {
                ("GET", "/api/2.0/mlflow/experiments/get-by-name") => {
                    if s.experiment_exists {
                        (
                            200,
                            json!({"experiment": {"experiment_id": "7", "name": "fl"}}),
                        )
                    } else {
                        (
                            404,
                            json!({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no"}),
                        )
                    }
                }
                ("POST", "/api/2.0/mlflow/experiments/create") => {
                    let existed = s.experiment_exists;
                    s.experiment_exists = true;
                    if race || existed {
                        (
                            400,
                            json!({"error_code": "RESOURCE_ALREADY_EXISTS", "message": "dup"}),
                        )
                    } else {
                        (200, json!({"experiment_id": "7"}))
                    }
                }
                ("POST", "/api/2.0/mlflow/runs/create") => (
                    200,
                    json!({"run": {"info": {"run_id": "run-1", "run_uuid": "run-1",
                        "experiment_id": "7", "status": "RUNNING",
                        "artifact_uri": "mlflow-artifacts:/7/run-1/artifacts"}}}),
                ),
                ("POST", "/api/2.0/mlflow/runs/log-batch") => (200, json!({})),
                ("POST", "/api/2.0/mlflow/runs/update") => (
                    200,
                    json!({"run_info": {"run_id": "run-1", "status": "FINISHED"}}),
                ),
                ("PUT", p) if p.starts_with("/api/2.0/mlflow-artifacts/artifacts/") => {
                    (200, json!({}))
                }
                _ => (
                    404,
                    json!({"error_code": "ENDPOINT_NOT_FOUND", "message": route}),
                ),
            }
        };
        let body = answer.to_string();
        let resp = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        sock.write_all(resp.as_bytes()).await?;
        sock.shutdown().await
    }

    fn config(uri: Option<String>, dir: &std::path::Path, capacity: usize) -> MlflowConfig {
        MlflowConfig {
            tracking_uri: uri,
            experiment: "fl".into(),
            run_name: "anchor-1".into(),
            local_dir: dir.to_path_buf(),
            queue_capacity: capacity,
            tags: vec![("federation.id".into(), "fed-a".into())],
        }
    }

    async fn wait(handle: tokio::task::JoinHandle<MlflowSummary>) -> MlflowSummary {
        tokio::time::timeout(Duration::from_secs(30), handle)
            .await
            .expect("worker must exit within its finish deadline")
            .unwrap()
    }

    fn jsonl(dir: &std::path::Path) -> Vec<Value> {
        std::fs::read_to_string(dir.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delivers_experiment_run_metrics_tags_artifact() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri = format!("http://{}", listener.local_addr().unwrap());
        let server = FakeMlflow::start(listener, false).await;
        let dir = tempfile::tempdir().unwrap();
        let (bridge, handle) = MlflowBridge::start(config(Some(uri), dir.path(), 4096));
        bridge.log_params(vec![
            ("lr".into(), "0.001".into()),
            ("peers".into(), "3".into()),
        ]);
        bridge.log_metrics(
            1,
            vec![
                ("loss".into(), 0.5),
                ("nan_metric".into(), f64::NAN),
                ("inf_metric".into(), f64::INFINITY),
                ("rmse".into(), 30.0),
            ],
        );
        bridge.set_tag("phase", "train");
        bridge.log_metrics(2, vec![("loss".into(), 0.25)]);
        bridge.log_artifact("model.bin", vec![1, 2, 3, 4]);
        bridge.log_metrics(3, vec![("loss".into(), f64::NEG_INFINITY)]);
        bridge.finish("FINISHED");
        let summary = wait(handle).await;
        assert_eq!(
            summary,
            MlflowSummary {
                run_id: Some("run-1".into()),
                delivered_metrics: 3,
                pending_metrics: 0,
                dropped: 0
            }
        );

        let reqs = server.requests();
        let create = reqs
            .iter()
            .find(|r| r.path == "/api/2.0/mlflow/experiments/create")
            .expect("experiment created");
        assert_eq!(create.json()["name"], "fl");
        let run = reqs
            .iter()
            .find(|r| r.path == "/api/2.0/mlflow/runs/create")
            .expect("run created")
            .json();
        assert_eq!(run["experiment_id"], "7");
        assert_eq!(run["run_name"], "anchor-1");
        let tags = run["tags"].as_array().unwrap();
        assert!(tags.contains(&json!({"key": "mlflow.runName", "value": "anchor-1"})));
        assert!(tags.contains(&json!({"key": "federation.id", "value": "fed-a"})));

        assert_eq!(
            server.metrics(),
            vec![
                ("loss".to_string(), 1, 0.5),
                ("rmse".to_string(), 1, 30.0),
                ("loss".to_string(), 2, 0.25)
            ]
        );
        let batches = server.batches();
        assert!(batches.iter().all(|b| b["run_id"] == "run-1"));
        let params: Vec<Value> = batches
            .iter()
            .flat_map(|b| b["params"].as_array().unwrap().clone())
            .collect();
        assert_eq!(
            params,
            vec![
                json!({"key": "lr", "value": "0.001"}),
                json!({"key": "peers", "value": "3"})
            ]
        );
        assert!(batches.iter().any(|b| {
            b["tags"]
                .as_array()
                .unwrap()
                .contains(&json!({"key": "phase", "value": "train"}))
        }));
        for b in &batches {
            for m in b["metrics"].as_array().unwrap() {
                assert!(
                    m["timestamp"].as_u64().unwrap() > 1_600_000_000_000,
                    "ms timestamps"
                );
            }
        }
        let put = reqs
            .iter()
            .find(|r| r.method == "PUT")
            .expect("artifact uploaded");
        assert_eq!(
            put.path,
            "/api/2.0/mlflow-artifacts/artifacts/7/run-1/artifacts/model.bin"
        );
        assert_eq!(put.body, vec![1, 2, 3, 4]);
        let last = reqs.last().unwrap();
        assert_eq!(last.path, "/api/2.0/mlflow/runs/update");
        assert_eq!(last.json()["status"], "FINISHED");
        assert_eq!(last.json()["run_id"], "run-1");
        assert!(last.json()["end_time"].as_u64().unwrap() > 1_600_000_000_000);

        // Local copies.
        assert_eq!(
            std::fs::read(dir.path().join("model.bin")).unwrap(),
            vec![1, 2, 3, 4]
        );
        let lines = jsonl(dir.path());
        let metric_lines: Vec<&Value> = lines.iter().filter(|l| l["kind"] == "metric").collect();
        assert_eq!(metric_lines.len(), 3);
        assert_eq!(metric_lines[2]["step"], 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_respect_limits_and_race_on_experiment_creation() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri = format!("http://{}/", listener.local_addr().unwrap());
        let server = FakeMlflow::start(listener, true).await;
        let dir = tempfile::tempdir().unwrap();
        let (bridge, handle) = MlflowBridge::start(config(Some(uri), dir.path(), 10_000));
        let params: Vec<(String, String)> =
            (0..150).map(|i| (format!("p{i}"), i.to_string())).collect();
        bridge.log_params(params);
        let metrics: Vec<(String, f64)> = (0..2500).map(|i| (format!("m{i}"), i as f64)).collect();
        bridge.log_metrics(5, metrics);
        for i in 0..120 {
            bridge.set_tag(&format!("t{i}"), "v");
        }
        bridge.finish("FAILED");
        let summary = wait(handle).await;
        assert_eq!(summary.run_id.as_deref(), Some("run-1"));
        assert_eq!(summary.delivered_metrics, 2500);
        assert_eq!(summary.dropped, 0);

        // The lost creation race was resolved with a second lookup.
        let paths: Vec<String> = server.requests().iter().map(|r| r.path.clone()).collect();
        let lookups = paths
            .iter()
            .filter(|p| p.ends_with("experiments/get-by-name"))
            .count();
        assert_eq!(lookups, 2);
        let batches = server.batches();
        let mut n_params = 0;
        let mut n_tags = 0;
        for b in &batches {
            let m = b["metrics"].as_array().unwrap().len();
            let p = b["params"].as_array().unwrap().len();
            let t = b["tags"].as_array().unwrap().len();
            assert!(
                m <= 1000 && p <= 100 && t <= 100 && m + p + t <= 1000,
                "{m} {p} {t}"
            );
            n_params += p;
            n_tags += t;
        }
        assert_eq!(n_params, 150);
        assert_eq!(n_tags, 120);
        let got: Vec<String> = server.metrics().into_iter().map(|(k, _, _)| k).collect();
        let want: Vec<String> = (0..2500).map(|i| format!("m{i}")).collect();
        assert_eq!(got, want, "metrics delivered once each, in order");
        assert_eq!(server.requests().last().unwrap().json()["status"], "FAILED");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn server_down_at_start_then_up_delivers_everything() {
        // Reserve a port, then free it: nothing listens there at first.
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let dir = tempfile::tempdir().unwrap();
        let (bridge, handle) =
            MlflowBridge::start(config(Some(format!("http://{addr}")), dir.path(), 4096));
        for step in 1..=5u64 {
            bridge.log_metrics(step, vec![("loss".into(), 1.0 / step as f64)]);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let server = FakeMlflow::start(TcpListener::bind(addr).await.unwrap(), false).await;
        bridge.log_metrics(6, vec![("loss".into(), 0.1)]);
        // Delivery resumes on its own, before finish.
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.metrics().len() < 6 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bridge.finish("FINISHED");
        let summary = wait(handle).await;
        assert_eq!(summary.run_id.as_deref(), Some("run-1"));
        assert_eq!(summary.delivered_metrics, 6);
        assert_eq!(summary.pending_metrics, 0);
        let steps: Vec<u64> = server.metrics().iter().map(|(_, s, _)| *s).collect();
        assert_eq!(steps, vec![1, 2, 3, 4, 5, 6]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unreachable_server_finish_is_bounded_and_buffer_is_bounded() {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let dir = tempfile::tempdir().unwrap();
        let (bridge, handle) =
            MlflowBridge::start(config(Some(format!("http://{addr}")), dir.path(), 4));
        for step in 0..10u64 {
            bridge.log_metrics(step, vec![("loss".into(), step as f64)]);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let t0 = std::time::Instant::now();
        bridge.finish("FINISHED");
        let summary = wait(handle).await;
        assert!(t0.elapsed() < Duration::from_secs(20));
        assert_eq!(summary.run_id, None);
        assert_eq!(summary.delivered_metrics, 0);
        assert_eq!(summary.pending_metrics, 4);
        assert_eq!(summary.dropped, 6);
        // Everything is still recorded locally.
        assert_eq!(
            jsonl(dir.path())
                .iter()
                .filter(|l| l["kind"] == "metric")
                .count(),
            10
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_tracking_uri_metrics_go_to_jsonl() {
        let dir = tempfile::tempdir().unwrap();
        let local = dir.path().join("nested/run");
        let (bridge, handle) = MlflowBridge::start(config(None, &local, 16));
        bridge.log_params(vec![("lr".into(), "0.01".into())]);
        for step in 1..=3u64 {
            bridge.log_metrics(
                step,
                vec![("loss".into(), step as f64), ("bad".into(), f64::NAN)],
            );
        }
        bridge.log_artifact("summary.json", b"{}".to_vec());
        bridge.log_artifact("../escape", b"x".to_vec());
        bridge.finish("FINISHED");
        let summary = wait(handle).await;
        assert_eq!(summary, MlflowSummary::default());
        let lines = jsonl(&local);
        let metrics: Vec<(u64, String, f64)> = lines
            .iter()
            .filter(|l| l["kind"] == "metric")
            .map(|l| {
                assert!(l["timestamp_ms"].as_u64().unwrap() > 1_600_000_000_000);
                (
                    l["step"].as_u64().unwrap(),
                    l["key"].as_str().unwrap().to_string(),
                    l["value"].as_f64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            metrics,
            vec![
                (1, "loss".to_string(), 1.0),
                (2, "loss".to_string(), 2.0),
                (3, "loss".to_string(), 3.0)
            ]
        );
        assert!(
            lines
                .iter()
                .any(|l| l["kind"] == "param" && l["key"] == "lr")
        );
        assert_eq!(std::fs::read(local.join("summary.json")).unwrap(), b"{}");
        assert!(!dir.path().join("nested/escape").exists());
    }

    #[test]
    fn artifact_path_from_run_uri() {
        assert_eq!(
            artifact_path(Some("mlflow-artifacts:/7/r/artifacts"), "7", "r"),
            "7/r/artifacts"
        );
        assert_eq!(
            artifact_path(Some("mlflow-artifacts://h:5000/1/r/artifacts/"), "1", "r"),
            "1/r/artifacts"
        );
        assert_eq!(
            artifact_path(Some("/tmp/mlruns/1/r/artifacts"), "1", "r"),
            "1/r/artifacts"
        );
        assert_eq!(artifact_path(None, "2", "x"), "2/x/artifacts");
        assert!(valid_key("eval/rmse round.1-x_y"));
        assert!(!valid_key("a/../b") && !valid_key("") && !valid_key("é"));
        assert!(is_loopback_uri("http://127.0.0.1:5055") && is_loopback_uri("http://[::1]:1"));
        assert!(!is_loopback_uri("http://mlflow.example:5000"));
    }
}
