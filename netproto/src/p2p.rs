//! The libp2p side of the protocol (cargo feature `p2p`): one composed network behaviour
//! carrying both planes, and a swarm builder for TCP + Noise + Yamux.
//!
//! - gossipsub (signed, strict validation) on one topic per federation: control broadcasts;
//! - request-response `/gossipfed/ctl/1`: direct control messages, one envelope per request
//!   (at most [`MAX_CONTROL_MESSAGE`] bytes), acknowledged with an empty response;
//! - request-response `/gossipfed/data/3`: model chunks and update chunks as
//!   [`Frame`](crate::wire::Frame)s of at most [`MAX_DATA_FRAME`] bytes;
//! - identify and ping for liveness, Kademlia for WAN discovery from bootstrap peers, and
//!   mDNS for LAN discovery, off unless enabled (it multicasts on every interface).

use crate::wire::{MAX_CONTROL_MESSAGE, MAX_DATA_FRAME, MAX_DATA_REQUEST};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::{
    StreamProtocol, Swarm, gossipsub, identify, identity::Keypair, kad, mdns, noise, ping,
    request_response, tcp,
};
use std::io;
use std::time::Duration;

/// Protocol name of direct control messages.
pub const CONTROL_PROTOCOL: StreamProtocol = StreamProtocol::new("/gossipfed/ctl/1");
/// Protocol name of the model data plane.
pub const DATA_PROTOCOL: StreamProtocol = StreamProtocol::new("/gossipfed/data/3");
/// Protocol name of gossipfed's Kademlia DHT (separate from the public IPFS DHT).
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/gossipfed/kad/1");

/// Network settings of a node.
#[derive(Clone, Debug)]
pub struct P2pConfig {
    /// Enables mDNS discovery on the LAN (multicasts on every interface: off by default).
    pub mdns: bool,
    /// Timeout of one request (a control message or one chunk).
    pub request_timeout: Duration,
    /// Gossipsub heartbeat.
    pub gossip_heartbeat: Duration,
    /// Connections without traffic are closed after this long.
    pub idle_timeout: Duration,
}

impl Default for P2pConfig {
    fn default() -> Self {
        Self {
            mdns: false,
            request_timeout: Duration::from_secs(30),
            gossip_heartbeat: Duration::from_millis(500),
            idle_timeout: Duration::from_secs(120),
        }
    }
}

/// Errors building the network stack.
#[derive(Debug, thiserror::Error)]
pub enum P2pError {
    /// Gossipsub rejected its configuration.
    #[error("gossipsub: {0}")]
    Gossipsub(String),
    /// The transport could not be built.
    #[error("transport: {0}")]
    Transport(String),
    /// mDNS could not start.
    #[error("mdns: {0}")]
    Mdns(String),
}

/// A request-response codec for length-prefixed byte strings with hard size limits, so a
/// peer cannot make us allocate more than `max_request` bytes per request it sends or
/// `max_response` bytes per response.
#[derive(Clone, Debug)]
pub struct BoundedBytes {
    max_request: usize,
    max_response: usize,
}

impl BoundedBytes {
    /// A codec refusing messages over `max` bytes.
    pub fn new(max: usize) -> Self {
        Self::asymmetric(max, max)
    }

    /// A codec refusing requests over `max_request` and responses over `max_response`
    /// bytes.
    pub fn asymmetric(max_request: usize, max_response: usize) -> Self {
        Self {
            max_request,
            max_response,
        }
    }
}

async fn read_bounded<T: AsyncRead + Unpin + Send>(io: &mut T, max: usize) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message of {len} bytes exceeds the limit of {max}"),
        ));
    }
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_bounded<T: AsyncWrite + Unpin + Send>(
    io: &mut T,
    max: usize,
    bytes: Vec<u8>,
) -> io::Result<()> {
    if bytes.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "message of {} bytes exceeds the limit of {max}",
                bytes.len()
            ),
        ));
    }
    io.write_all(&(bytes.len() as u32).to_be_bytes()).await?;
    io.write_all(&bytes).await?;
    io.flush().await
}

impl request_response::Codec for BoundedBytes {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_bounded(io, self.max_request).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_bounded(io, self.max_response).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_bounded(io, self.max_request, req).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_bounded(io, self.max_response, res).await
    }
}

pub use composed::{Behaviour, BehaviourEvent};

#[allow(missing_docs)] // the derive generates an undocumented event enum
mod composed {
    use super::BoundedBytes;
    use libp2p::swarm::{NetworkBehaviour, behaviour::toggle::Toggle};
    use libp2p::{gossipsub, identify, kad, mdns, ping, request_response};

    /// gossipfed's composed network behaviour.
    #[derive(NetworkBehaviour)]
    pub struct Behaviour {
        /// Exchanges listen addresses and protocols.
        pub identify: identify::Behaviour,
        /// Keeps connections alive and measures round-trip times.
        pub ping: ping::Behaviour,
        /// Control-plane broadcasts.
        pub gossipsub: gossipsub::Behaviour,
        /// WAN discovery from bootstrap peers.
        pub kademlia: kad::Behaviour<kad::store::MemoryStore>,
        /// LAN discovery, when enabled.
        pub mdns: Toggle<mdns::tokio::Behaviour>,
        /// Direct control messages.
        pub control: request_response::Behaviour<BoundedBytes>,
        /// Model chunks and update chunks.
        pub data: request_response::Behaviour<BoundedBytes>,
    }
}

impl Behaviour {
    /// Builds the behaviour for the node with identity `key`.
    pub fn new(key: &Keypair, cfg: &P2pConfig) -> Result<Self, P2pError> {
        let peer_id = key.public().to_peer_id();
        let gossip_cfg = gossipsub::ConfigBuilder::default()
            .heartbeat_interval(cfg.gossip_heartbeat)
            .validation_mode(gossipsub::ValidationMode::Strict)
            .max_transmit_size(MAX_CONTROL_MESSAGE + 1024)
            .build()
            .map_err(|e| P2pError::Gossipsub(e.to_string()))?;
        let gossipsub = gossipsub::Behaviour::new(
            gossipsub::MessageAuthenticity::Signed(key.clone()),
            gossip_cfg,
        )
        .map_err(|e| P2pError::Gossipsub(e.to_string()))?;
        let mut kademlia = kad::Behaviour::with_config(
            peer_id,
            kad::store::MemoryStore::new(peer_id),
            kad::Config::new(KAD_PROTOCOL),
        );
        // Private federations have no confirmed public address; serve the DHT anyway.
        kademlia.set_mode(Some(kad::Mode::Server));
        let mdns = if cfg.mdns {
            Some(
                mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id)
                    .map_err(|e| P2pError::Mdns(e.to_string()))?,
            )
        } else {
            None
        };
        let rr = |proto: StreamProtocol, codec: BoundedBytes| {
            request_response::Behaviour::with_codec(
                codec,
                [(proto, request_response::ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(cfg.request_timeout),
            )
        };
        Ok(Self {
            identify: identify::Behaviour::new(identify::Config::new(
                "/gossipfed/1".into(),
                key.public(),
            )),
            ping: ping::Behaviour::new(ping::Config::new()),
            gossipsub,
            kademlia,
            mdns: mdns.into(),
            control: rr(CONTROL_PROTOCOL, BoundedBytes::new(MAX_CONTROL_MESSAGE)),
            // Requests carry at most one update chunk; responses one model chunk.
            data: rr(
                DATA_PROTOCOL,
                BoundedBytes::asymmetric(MAX_DATA_REQUEST, MAX_DATA_FRAME),
            ),
        })
    }
}

/// The gossipsub topic of federation `federation`.
pub fn topic(federation: &str) -> gossipsub::IdentTopic {
    gossipsub::IdentTopic::new(format!("gossipfed/{federation}/control/1"))
}

/// Bytes read from a TCP connection at once (below Noise).
const READ_BUFFER: usize = 128 * 1024;
/// Deadline for a new connection's security and multiplexer handshakes.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(20);

/// Builds a tokio swarm over TCP + Noise + Yamux for identity `key`.
pub fn build_swarm(key: Keypair, cfg: &P2pConfig) -> Result<Swarm<Behaviour>, P2pError> {
    let idle = cfg.idle_timeout;
    let cfg = cfg.clone();
    let swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_other_transport(
            |key| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
                use libp2p::Transport as _;
                let noise = noise::Config::new(key)?;
                Ok(
                    tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                        // Noise reads each frame's 2-byte length and its body with separate
                        // reads; a buffer under it turns those into one read per
                        // READ_BUFFER bytes (a third of the receive syscalls for bulk data).
                        .map(|stream, _| futures::io::BufReader::with_capacity(READ_BUFFER, stream))
                        .upgrade(libp2p::core::upgrade::Version::V1Lazy)
                        .authenticate(noise)
                        .multiplex(crate::mux::YamuxUpgrade::default())
                        .timeout(UPGRADE_TIMEOUT),
                )
            },
        )
        .map_err(|e| P2pError::Transport(e.to_string()))?
        .with_behaviour(
            |key| -> Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
                Ok(Behaviour::new(key, &cfg)?)
            },
        )
        .map_err(|e| P2pError::Transport(e.to_string()))?
        .with_swarm_config(|c| {
            c.with_idle_connection_timeout(idle)
                // Substreams with a single protocol (every request of the control and data
                // planes) send the request along with the protocol proposal instead of
                // waiting a round trip for its confirmation (same wire format as V1; the
                // request fails if the peer lacks the protocol).
                .with_substream_upgrade_protocol_override(libp2p::core::upgrade::Version::V1Lazy)
        })
        .build();
    Ok(swarm)
}
