//! Helpers of the multi-process tests: start `fedd` processes on 127.0.0.1 with their own
//! data directories and read their `status.json`.

#![allow(dead_code, missing_docs, clippy::expect_used, clippy::unwrap_used)]

use fedd::node::{NodeStatus, read_status};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `fedd` child process, killed (SIGKILL) when dropped.
pub struct Proc {
    pub child: Child,
    pub dir: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    pub fn status(&self) -> Option<NodeStatus> {
        read_status(&self.dir).ok()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// Protocol and model settings shared by every node of a test federation: fast timers and
/// one short local epoch, so rounds take seconds on two cores.
pub fn common_toml(min_participants: usize) -> String {
    format!(
        r#"
[protocol]
federation = "itest"
heartbeat_ms = 300
member_timeout_ms = 3000
lease_ms = 3000
election_stagger_ms = 200
round_deadline_ms = 90000
round_gap_ms = 50
min_participants = {min_participants}
min_fit_fraction = 1.0

[protocol.criterion]
min_failures = 3
min_windows = 300

[protocol.hyper]
local_epochs = 2
batch_size = 64
lr = 0.002
prox_mu = 0.0

[holdout]
machines = 6
seed = 99
"#
    )
}

pub fn fedd() -> &'static str {
    env!("CARGO_BIN_EXE_fedd")
}

fn spawn(args: &[&str], dir: &Path, log: &str) -> Proc {
    std::fs::create_dir_all(dir).expect("mkdir");
    let log = std::fs::File::create(dir.join(log)).expect("log file");
    let child = Command::new(fedd())
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("MLFLOW_TRACKING_URI")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn fedd");
    Proc {
        child,
        dir: dir.to_owned(),
    }
}

/// Starts an anchor listening on `port`.
pub fn anchor(root: &Path, port: u16, min_participants: usize) -> Proc {
    let dir = root.join("anchor");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let cfg = dir.join("anchor.toml");
    std::fs::write(&cfg, common_toml(min_participants)).expect("write config");
    let listen = format!("/ip4/127.0.0.1/tcp/{port}");
    spawn(
        &[
            "anchor",
            "--config",
            cfg.to_str().expect("utf-8 path"),
            "--data-dir",
            dir.to_str().expect("utf-8 path"),
            "--listen",
            &listen,
        ],
        &dir,
        "anchor.log",
    )
}

/// Starts edge `i` with `machines` synthetic machines, bootstrapping from `anchor_addr`.
pub fn edge(
    root: &Path,
    i: usize,
    anchor_addr: &str,
    machines: usize,
    min_participants: usize,
) -> Proc {
    let dir = root.join(format!("edge-{i}"));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let cfg = dir.join("edge.toml");
    std::fs::write(&cfg, common_toml(min_participants)).expect("write config");
    spawn(
        &[
            "edge",
            "--config",
            cfg.to_str().expect("utf-8 path"),
            "--data-dir",
            dir.to_str().expect("utf-8 path"),
            "--anchor",
            anchor_addr,
            "--synthetic-machines",
            &machines.to_string(),
            "--synthetic-seed",
            &(500 + i).to_string(),
            "--seed",
            &i.to_string(),
        ],
        &dir,
        "edge.log",
    )
}

/// Polls `f` every 200 ms until it returns `Some`, panicking with `what` and the logs of
/// `procs` after `timeout`.
pub fn wait_for<T>(
    timeout: Duration,
    what: &str,
    procs: &[&Proc],
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            for p in procs {
                for log in ["anchor.log", "edge.log"] {
                    if let Ok(text) = std::fs::read_to_string(p.dir.join(log)) {
                        let tail: Vec<&str> = text.lines().rev().take(30).collect();
                        eprintln!("--- {} ---", p.dir.join(log).display());
                        for l in tail.into_iter().rev() {
                            eprintln!("{l}");
                        }
                    }
                }
            }
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The anchor's dialable address, once it has written its status.
pub fn anchor_addr(anchor: &Proc) -> String {
    wait_for(
        Duration::from_secs(30),
        "the anchor's status.json",
        &[anchor],
        || anchor.status().and_then(|s| s.listen.first().cloned()),
    )
}
