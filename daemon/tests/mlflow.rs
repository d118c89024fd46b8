//! The MLflow bridge against a real MLflow tracking server.
//!
//! Each test starts `mlflow server` itself (on a free port on 127.0.0.1, SQLite backend
//! and artifact store in a temporary directory, `--serve-artifacts`), runs a federation
//! in-process, reads everything back through MLflow's REST API and stops the server it
//! started (SIGTERM to its process group, SIGKILL after 15 s, in a `Drop` guard).
//!
//! The `mlflow` executable comes from `GOSSIPFED_MLFLOW_BIN`, else from
//! `<repo>/.venv/bin/mlflow`, the virtual environment that `scripts/setup.sh` creates
//! (`pip install mlflow==3.17.2`). Without it the tests fail and say so. The tests take
//! turns (one MLflow server at a time: each is a few hundred MB).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use fedd::config::{MlflowSection, NodeConfig, Role};
use fedd::demo::{DemoOptions, demo_protocol, run_demo};
use fedd::node::{NodeStatus, read_status};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// One MLflow server at a time.
static SERVER_LOCK: Mutex<()> = Mutex::new(());

/// How long `mlflow server` may take to answer `/health` (about 15 s when idle).
const HEALTH_TIMEOUT: Duration = Duration::from_secs(120);

/// Metrics the anchor logs once per committed round.
const ROUND_METRICS: &[&str] = &[
    "train_loss",
    "participants",
    "rejected_updates",
    "round_duration_ms",
    "bytes_in",
    "bytes_out_total",
    "samples",
    "eval_rmse",
    "edge_eval_rmse",
    "edge_eval_samples",
];

/// Session parameters the anchor logs at start.
const PARAMS: &[&str] = &[
    "strategy",
    "federation_id",
    "model.arch",
    "model.window",
    "model.features",
    "model.params",
    "criterion.min_failures",
    "criterion.min_windows",
    "local_epochs",
    "batch_size",
    "lr",
    "prox_mu",
    "min_fit_fraction",
    "round_deadline_ms",
    "max_update_norm",
    "code_version",
];

fn mlflow_bin() -> PathBuf {
    let bin = std::env::var_os("GOSSIPFED_MLFLOW_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/mlflow"));
    assert!(
        bin.is_file(),
        "MLflow is not installed: {} does not exist. Run scripts/setup.sh (it creates \
         .venv with `pip install mlflow==3.17.2`) or point GOSSIPFED_MLFLOW_BIN at an \
         `mlflow` executable.",
        bin.display()
    );
    bin
}

/// A running `mlflow server`, stopped with its whole process group when dropped.
struct MlflowServer {
    child: Child,
    url: String,
    log: PathBuf,
}

impl MlflowServer {
    /// Starts `mlflow server` on 127.0.0.1:`port` with its stores under `dir`; does not
    /// wait for it (see [`MlflowServer::wait_healthy`]).
    fn spawn(port: u16, dir: &Path) -> MlflowServer {
        std::fs::create_dir_all(dir).unwrap();
        let log = dir.join("mlflow-server.log");
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let child = Command::new(mlflow_bin())
            .args(["server", "--host", "127.0.0.1", "--port", &port.to_string()])
            .arg("--backend-store-uri")
            .arg(format!("sqlite:///{}", dir.join("mlflow.db").display()))
            .arg("--serve-artifacts")
            .arg("--artifacts-destination")
            .arg(dir.join("artifacts"))
            .args(["--workers", "1"])
            // No job runner (huey consumers): not needed for tracking, and it would
            // multiply the server's memory.
            .env("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
            .env_remove("MLFLOW_TRACKING_URI")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Its own process group, so that stopping it stops uvicorn's workers too.
            .process_group(0)
            .spawn()
            .expect("spawning mlflow server");
        MlflowServer {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Waits until `GET /health` answers 200.
    async fn wait_healthy(&mut self, client: &reqwest::Client) {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "mlflow server exited with {status} before it was healthy:\n{}",
                    self.log_tail()
                );
            }
            let ok = client
                .get(format!("{}/health", self.url))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                eprintln!("mlflow server healthy after {:?}", start.elapsed());
                return;
            }
            assert!(
                start.elapsed() < HEALTH_TIMEOUT,
                "mlflow server did not answer /health within {HEALTH_TIMEOUT:?}:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

fn signal_group(pgid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, "--", &format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

impl Drop for MlflowServer {
    fn drop(&mut self) {
        let pgid = self.child.id();
        if matches!(self.child.try_wait(), Ok(None)) {
            signal_group(pgid, "-TERM");
            let deadline = Instant::now() + Duration::from_secs(15);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        // Whatever is left of the group (workers outliving their parent).
        signal_group(pgid, "-KILL");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A small reader of MLflow's REST API.
struct Rest {
    client: reqwest::Client,
    base: String,
}

impl Rest {
    async fn get(&self, endpoint: &str, query: &[(&str, &str)]) -> Value {
        let resp = self
            .client
            .get(format!("{}/api/2.0/mlflow/{endpoint}", self.base))
            .query(query)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let body: Value = resp.json().await.unwrap();
        assert!(status.is_success(), "GET {endpoint}: {status} {body}");
        body
    }

    async fn post(&self, endpoint: &str, body: &Value) -> Value {
        let resp = self
            .client
            .post(format!("{}/api/2.0/mlflow/{endpoint}", self.base))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let answer: Value = resp.json().await.unwrap();
        assert!(status.is_success(), "POST {endpoint}: {status} {answer}");
        answer
    }

    /// The runs of `experiment` (none if the experiment does not exist yet).
    async fn runs(&self, experiment: &str) -> Vec<Value> {
        let resp = self
            .client
            .get(format!(
                "{}/api/2.0/mlflow/experiments/get-by-name",
                self.base
            ))
            .query(&[("experiment_name", experiment)])
            .send()
            .await
            .unwrap();
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return vec![];
        }
        let exp: Value = resp.json().await.unwrap();
        let id = exp["experiment"]["experiment_id"].as_str().unwrap();
        let found = self
            .post("runs/search", &json!({"experiment_ids": [id]}))
            .await;
        found["runs"].as_array().cloned().unwrap_or_default()
    }

    /// (step, value) of every logged value of `key`, by step.
    async fn history(&self, run_id: &str, key: &str) -> Vec<(u64, f64)> {
        let h = self
            .get(
                "metrics/get-history",
                &[("run_id", run_id), ("metric_key", key)],
            )
            .await;
        let mut points: Vec<(u64, f64)> = h["metrics"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|m| (m["step"].as_u64().unwrap(), m["value"].as_f64().unwrap()))
            .collect();
        points.sort_by_key(|p| p.0);
        points
    }
}

/// `{key: value}` of a run's `data.params` or `data.tags`.
fn key_values(run: &Value, field: &str) -> BTreeMap<String, String> {
    run["data"][field]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|kv| {
            (
                kv["key"].as_str().unwrap().to_string(),
                kv["value"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The rounds the anchor committed, in order.
fn committed_rounds(status: &NodeStatus) -> Vec<u64> {
    status
        .rounds
        .iter()
        .filter(|r| r.version.is_some())
        .map(|r| r.round)
        .collect()
}

/// Checks that every per-round metric has exactly one value per committed round, at
/// step = round number, and that the learning-curve values match the anchor's status.
async fn assert_one_value_per_round(rest: &Rest, run_id: &str, status: &NodeStatus) {
    let rounds = committed_rounds(status);
    for key in ROUND_METRICS {
        let history = rest.history(run_id, key).await;
        let steps: Vec<u64> = history.iter().map(|p| p.0).collect();
        assert_eq!(
            steps, rounds,
            "metric {key}: steps {steps:?}, committed rounds {rounds:?}"
        );
        assert!(
            history.iter().all(|p| p.1.is_finite()),
            "{key}: {history:?}"
        );
    }
    let by_round: BTreeMap<u64, &fedd::node::RoundSummary> =
        status.rounds.iter().map(|r| (r.round, r)).collect();
    for (step, value) in rest.history(run_id, "eval_rmse").await {
        let want = by_round[&step]
            .eval_rmse
            .expect("anchor evaluated the round");
        assert!(
            (value - want).abs() < 1e-9,
            "eval_rmse@{step}: {value} vs {want}"
        );
    }
    for (step, value) in rest.history(run_id, "edge_eval_rmse").await {
        let want = by_round[&step]
            .edge_eval_rmse
            .expect("edges evaluated the round");
        assert!(
            (value - want).abs() < 1e-9,
            "edge_eval_rmse@{step}: {value} vs {want}"
        );
    }
    for (step, value) in rest.history(run_id, "participants").await {
        assert_eq!(
            value, by_round[&step].included as f64,
            "participants@{step}"
        );
    }
}

fn run_sync<F: std::future::Future<Output = ()>>(f: F) {
    let _turn = SERVER_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(f);
}

/// A demo federation (anchor + 3 edges, 3 rounds) logs to a real MLflow server: one
/// FINISHED run with the session params, one value per round of every metric at step =
/// round, and the final global model as an artifact.
#[test]
fn demo_federation_logs_run_metrics_params_and_model_to_real_mlflow() {
    run_sync(async {
        let tmp = tempfile::tempdir().unwrap();
        let port = common::free_port();
        let mut server = MlflowServer::spawn(port, &tmp.path().join("mlflow"));
        let client = client();
        server.wait_healthy(&client).await;
        let experiment = "itest-demo";
        let data_dir = tmp.path().join("demo");
        let summary = run_demo(DemoOptions {
            edges: 3,
            rounds: 3,
            data_dir: Some(data_dir.clone()),
            mlflow_url: Some(server.url.clone()),
            mlflow_experiment: Some(experiment.into()),
            otlp_endpoint: None,
            machines_per_edge: 8,
            timeout: Duration::from_secs(180),
        })
        .await
        .expect("the demo federation completes");
        eprintln!("{summary}");
        let status = read_status(&data_dir.join("anchor")).unwrap();
        let rounds = committed_rounds(&status);
        assert_eq!(rounds.len(), 3, "committed rounds {rounds:?}");
        assert_eq!(status.version, 3);

        let rest = Rest {
            client: client.clone(),
            base: server.url.clone(),
        };
        let runs = rest.runs(experiment).await;
        assert_eq!(runs.len(), 1, "one run per federation session: {runs:?}");
        let run = &runs[0];
        let run_id = run["info"]["run_id"].as_str().unwrap().to_string();
        assert_eq!(run["info"]["status"], "FINISHED", "{run}");
        assert!(
            run["info"]["end_time"].as_u64().unwrap()
                >= run["info"]["start_time"].as_u64().unwrap()
        );

        let params = key_values(run, "params");
        for p in PARAMS {
            assert!(params.contains_key(*p), "param {p} missing: {params:?}");
        }
        assert_eq!(params["strategy"], "fedavg");
        assert_eq!(params["federation_id"], "demo");
        assert_eq!(params["code_version"], env!("CARGO_PKG_VERSION"));
        let tags = key_values(run, "tags");
        assert_eq!(tags.get("federation").map(String::as_str), Some("demo"));
        assert_eq!(
            tags.get("anchor.peer_id").map(String::as_str),
            Some(status.peer_id.as_str())
        );

        // No metric other than the per-round ones.
        let latest: BTreeSet<String> = run["data"]["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["key"].as_str().unwrap().to_string())
            .collect();
        let want: BTreeSet<String> = ROUND_METRICS.iter().map(|s| s.to_string()).collect();
        assert_eq!(latest, want);
        assert_one_value_per_round(&rest, &run_id, &status).await;

        // The committed global model, through the artifact proxy.
        let listing = rest.get("artifacts/list", &[("run_id", &run_id)]).await;
        let files = listing["files"].as_array().cloned().unwrap_or_default();
        let model = files
            .iter()
            .find(|f| f["path"] == "global_model.bin")
            .unwrap_or_else(|| panic!("global_model.bin not among the artifacts: {listing}"));
        let local = std::fs::read(data_dir.join("anchor/global_model.bin")).unwrap();
        assert_eq!(model["file_size"].as_u64(), Some(local.len() as u64));
        let root = listing["root_uri"].as_str().unwrap();
        let path = root.strip_prefix("mlflow-artifacts:/").unwrap();
        let downloaded = client
            .get(format!(
                "{}/api/2.0/mlflow-artifacts/artifacts/{path}/global_model.bin",
                server.url
            ))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(downloaded.as_ref(), local.as_slice());
        assert_eq!(
            hex::encode(netproto::wire::digest_of(&downloaded)),
            status.digest,
            "the artifact is the last committed global version"
        );
        drop(server);
    });
}

fn node_config(role: Role, dir: PathBuf, protocol: &netproto::core::Config) -> NodeConfig {
    NodeConfig {
        role,
        data_dir: dir,
        protocol: protocol.clone(),
        ..NodeConfig::default()
    }
}

/// MLflow is down while the federation starts and commits its first rounds, then comes
/// up on the configured address: the rounds go on regardless, and the metrics of the
/// rounds committed during the outage reach MLflow once it is reachable.
#[test]
fn mlflow_down_at_first_then_up_receives_every_round() {
    run_sync(async {
        let tmp = tempfile::tempdir().unwrap();
        let port = common::free_port();
        let url = format!("http://127.0.0.1:{port}");
        let experiment = "itest-outage";
        let mut protocol = demo_protocol(u64::MAX, 3);
        protocol.max_version = None;
        // A round every second or so: enough rounds during the outage, few afterwards.
        protocol.round_gap_ms = 1_000;
        let anchor_stop = CancellationToken::new();
        let edges_stop = CancellationToken::new();
        let mut anchor_cfg = node_config(Role::Anchor, tmp.path().join("anchor"), &protocol);
        anchor_cfg.mlflow = MlflowSection {
            tracking_uri: Some(url.clone()),
            experiment: experiment.into(),
        };
        let anchor = fedd::node::start(anchor_cfg, anchor_stop.clone())
            .await
            .unwrap();
        let mut edges = vec![];
        for i in 0..3 {
            let mut cfg = node_config(Role::Edge, tmp.path().join(format!("edge-{i}")), &protocol);
            cfg.anchor = Some(anchor.addr.to_string());
            cfg.seed = i + 1;
            cfg.data.synthetic_machines = 8;
            cfg.data.synthetic_seed = 700 + i;
            edges.push(fedd::node::start(cfg, edges_stop.clone()).await.unwrap());
        }
        let mut st = anchor.status.clone();
        let committed = |s: &NodeStatus| committed_rounds(s).len();
        tokio::time::timeout(Duration::from_secs(120), st.wait_for(|s| committed(s) >= 3))
            .await
            .expect("3 rounds committed while MLflow is down")
            .unwrap();
        let during_outage = committed_rounds(&anchor.status.borrow());
        // Nothing has reached MLflow, everything is in metrics.jsonl.
        let jsonl = std::fs::read_to_string(tmp.path().join("anchor/metrics.jsonl")).unwrap();
        let logged: BTreeSet<u64> = jsonl
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|v| v["kind"] == "metric" && v["key"] == "train_loss")
            .map(|v| v["step"].as_u64().unwrap())
            .collect();
        for r in &during_outage {
            assert!(logged.contains(r), "round {r} not in metrics.jsonl");
        }

        let mut server = MlflowServer::spawn(port, &tmp.path().join("mlflow"));
        let client = client();
        server.wait_healthy(&client).await;
        let rest = Rest {
            client: client.clone(),
            base: url.clone(),
        };
        // The bridge retries with backoff (at most 5 s apart) and delivers the backlog.
        let deadline = Instant::now() + Duration::from_secs(60);
        let run_id = loop {
            let runs = rest.runs(experiment).await;
            if let Some(run) = runs.first() {
                let id = run["info"]["run_id"].as_str().unwrap().to_string();
                let steps: Vec<u64> = rest
                    .history(&id, "train_loss")
                    .await
                    .iter()
                    .map(|p| p.0)
                    .collect();
                if during_outage.iter().all(|r| steps.contains(r)) {
                    break id;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the outage's metrics did not reach MLflow within 60 s of it coming up"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let more = during_outage.len() + 1;
        tokio::time::timeout(
            Duration::from_secs(60),
            st.wait_for(|s| committed(s) >= more),
        )
        .await
        .expect("rounds continue once MLflow is up")
        .unwrap();

        // Stop the anchor first (it waits for the edges' last evaluations), then the edges.
        anchor_stop.cancel();
        tokio::time::timeout(Duration::from_secs(60), anchor.task)
            .await
            .expect("the anchor stops")
            .unwrap()
            .unwrap();
        edges_stop.cancel();
        for e in edges {
            tokio::time::timeout(Duration::from_secs(30), e.task)
                .await
                .expect("an edge stops")
                .unwrap()
                .unwrap();
        }
        let status = read_status(&tmp.path().join("anchor")).unwrap();
        let runs = rest.runs(experiment).await;
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0]["info"]["run_id"], run_id.as_str());
        assert_eq!(runs[0]["info"]["status"], "FINISHED");
        let params = key_values(&runs[0], "params");
        assert!(PARAMS.iter().all(|p| params.contains_key(*p)), "{params:?}");
        assert_one_value_per_round(&rest, &run_id, &status).await;
        eprintln!(
            "rounds committed during the outage: {during_outage:?}; in total: {:?}",
            committed_rounds(&status)
        );
        drop(server);
    });
}
