//! The node configurations shipped in `docker/` (compose) and `docker/k8s/` (Kubernetes)
//! load with fedd's own loader, pass its validation, and agree on the protocol.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use fedd::config::{NodeConfig, Role};
use std::path::{Path, PathBuf};

fn tomls(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

/// Loads every config of a deployment of `edges` edges from `edge_files` edge configs;
/// the role comes from the file name, as the entrypoint's subcommand sets it.
fn check_deployment(dir: &str, edge_files: usize, edges: usize) {
    let files = tomls(dir);
    assert_eq!(files.len(), 1 + edge_files, "{dir}: {files:?}");
    let mut protocol = None;
    for path in &files {
        let mut cfg = NodeConfig::load(path).unwrap_or_else(|e| panic!("{e}"));
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        cfg.role = if name.starts_with("anchor") {
            Role::Anchor
        } else {
            assert!(name.starts_with("edge"), "{name}");
            assert!(
                cfg.anchor.is_none(),
                "{name}: the entrypoint passes --anchor"
            );
            // What docker/entrypoint.sh passes.
            cfg.anchor = Some(
                "/ip4/172.28.0.10/tcp/4001/p2p/12D3KooWKZsrYsSDtB5nAMbAXqmEuGS63MwcbBd973qmJX8CSrx8"
                    .into(),
            );
            assert!(cfg.data.synthetic_machines > 0, "{name}: edges need data");
            Role::Edge
        };
        cfg.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(cfg.data_dir, Path::new("/data"), "{name}");
        // Inside a container network nodes listen on all interfaces of their container.
        assert_eq!(cfg.listen, "/ip4/0.0.0.0/tcp/4001", "{name}");
        assert!(!cfg.mdns, "{name}: no multicast");
        assert!(
            cfg.mlflow.tracking_uri.is_none(),
            "{name}: MLflow comes from the env"
        );
        assert!(
            cfg.otlp_endpoint.is_none(),
            "{name}: OTLP comes from the env"
        );
        // Every node of a federation must run the same protocol parameters.
        match &protocol {
            None => protocol = Some(cfg.protocol.clone()),
            Some(p) => assert_eq!(*p, cfg.protocol, "{name}: protocol differs"),
        }
    }
    let p = protocol.unwrap();
    assert!(
        p.min_participants <= edges,
        "{dir}: rounds need {} edges",
        p.min_participants
    );
}

#[test]
fn compose_configs_load_validate_and_agree() {
    check_deployment("docker/config", 3, 3);
}

#[test]
fn kubernetes_configs_load_validate_and_agree() {
    // One edge config for the 3 replicas of the edge StatefulSet.
    check_deployment("docker/k8s/config", 1, 3);
}
