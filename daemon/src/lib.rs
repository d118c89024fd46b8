//! `fedd`: the gossipfed daemon. A tokio shell around the sans-IO protocol core in
//! `netproto`, with libp2p networking, RocksDB persistence, burn training, the MLflow
//! bridge and OpenTelemetry.
//!
//! - [`node::start`] runs one node (anchor or edge) in-process until its shutdown token is
//!   cancelled; `fedd anchor`, `fedd edge` and `fedd demo` are thin wrappers around it.
//! - [`anchor`] and [`edge`] are the two role drivers; [`net`] is the swarm; [`store`] is
//!   RocksDB (machine data, state, logs); [`models`] holds model versions as
//!   content-addressed files; [`mlflow`] and [`telemetry`] are observability.

pub mod aggregator;
pub mod anchor;
pub mod config;
pub mod demo;
pub mod edge;
pub mod mlflow;
pub mod models;
pub mod net;
pub mod node;
pub mod store;
pub mod telemetry;
pub mod workload;
