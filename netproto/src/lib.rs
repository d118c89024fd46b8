//! gossipfed's protocol.
//!
//! - [`wire`]: versioned wire types and the bounded codec for both planes.
//! - [`core`]: the sans-IO state machines (membership, election, rounds). They depend on
//!   nothing but `serde`, `postcard`, `blake3` and `thiserror`: no tokio, libp2p, rocksdb or
//!   burn. `.ci/run` checks that with `cargo tree`.
//! - `p2p` (cargo feature `p2p`): the libp2p network behaviour that carries the two planes,
//!   and `mux`, its Yamux stream multiplexer tuned for bulk transfers.

pub mod core;
pub mod wire;

#[cfg(feature = "p2p")]
pub mod mux;
#[cfg(feature = "p2p")]
pub mod p2p;
