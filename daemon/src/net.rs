//! The daemon's network layer: the libp2p swarm, identity keys, admission control and the
//! translation between swarm events and protocol inputs.

use anyhow::{Context, Result};
use futures::StreamExt;
use libp2p::gossipsub;
use libp2p::identity::Keypair;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm, identify, kad, mdns};
use netproto::p2p::{Behaviour, BehaviourEvent, P2pConfig};
use netproto::wire::{DataRequest, DataResponse, Envelope, Frame, Message, NodeId};
use std::collections::HashSet;
use std::path::Path;
use std::str::FromStr;
use tracing::{debug, warn};

/// Most peers a node dials on its own initiative after discovering them.
const MAX_DISCOVERED_DIALS: usize = 64;

/// Loads the node's Ed25519 identity from `dir/identity.key`, creating it (mode 0600) on
/// first start, so the peer id survives restarts.
pub fn load_or_create_identity(dir: &Path) -> Result<Keypair> {
    let path = dir.join("identity.key");
    if path.exists() {
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        return Keypair::from_protobuf_encoding(&bytes)
            .with_context(|| format!("{} is not a libp2p key", path.display()));
    }
    let key = Keypair::generate_ed25519();
    let bytes = key
        .to_protobuf_encoding()
        .context("encoding the new identity")?;
    write_private(&path, &bytes)?;
    Ok(key)
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("creating {}", path.display()))
}

/// Splits `/ip4/…/tcp/…/p2p/<id>` into the peer id and the address.
pub fn parse_peer_addr(s: &str) -> Result<(PeerId, Multiaddr)> {
    let addr = Multiaddr::from_str(s).with_context(|| format!("invalid multiaddr {s:?}"))?;
    let peer = addr
        .iter()
        .find_map(|p| match p {
            libp2p::multiaddr::Protocol::P2p(id) => Some(id),
            _ => None,
        })
        .with_context(|| format!("{s:?} lacks a /p2p/<peer id> suffix"))?;
    Ok((peer, addr))
}

/// The answer to a `FetchModel` request for `max_len` bytes at `offset` of the model
/// `digest` whose encoding is `total` bytes long (`None`: not held here). `read(offset,
/// len)` returns that range. Shared by the anchor (reading files) and edges (their cache).
pub fn model_chunk(
    digest: netproto::wire::Digest,
    total: Option<u64>,
    offset: u64,
    max_len: u32,
    read: impl FnOnce(u64, usize) -> Option<Vec<u8>>,
) -> Frame<DataResponse> {
    let not_found = Frame {
        header: DataResponse::NotFound,
        payload: vec![],
    };
    let Some(total) = total.filter(|t| offset <= *t) else {
        return not_found;
    };
    let len = (total - offset)
        .min(u64::from(max_len))
        .min(netproto::wire::MAX_CHUNK as u64) as usize;
    match read(offset, len) {
        Some(payload) if payload.len() == len => Frame {
            header: DataResponse::ModelChunk {
                digest,
                total_len: total,
                offset,
            },
            payload,
        },
        _ => not_found,
    }
}

/// [`model_chunk`] from a model's bytes in memory (`bytes` holds at least the requested
/// range; the payload gets room for the frame's trailer).
pub fn model_chunk_of(
    digest: netproto::wire::Digest,
    total: u64,
    bytes: &[u8],
    offset: u64,
    max_len: u32,
) -> Frame<DataResponse> {
    model_chunk(digest, Some(total), offset, max_len, |at, len| {
        let at = usize::try_from(at).ok()?;
        bytes
            .get(at..at.checked_add(len)?)
            .map(Frame::<DataResponse>::payload_from)
    })
}

/// What the network layer hands to a role's event loop.
pub enum NetEvent {
    /// An authenticated control message from `from`.
    Control {
        /// Sender, equal to the transport-authenticated peer.
        from: NodeId,
        /// The envelope.
        env: Envelope,
    },
    /// A data-plane request to answer through `channel`.
    DataRequest {
        /// Requesting peer.
        peer: PeerId,
        /// The decoded frame.
        frame: Frame<DataRequest>,
        /// Where the response goes.
        channel: ResponseChannel<Vec<u8>>,
    },
    /// The answer (or failure) of one of our data-plane requests.
    DataResponse {
        /// Which request.
        id: OutboundRequestId,
        /// The decoded response, or why there is none.
        result: Result<Frame<DataResponse>, String>,
    },
    /// A connection opened or closed.
    Peers,
    /// Nothing for the protocol.
    Nothing,
}

/// The swarm plus the federation's admission rules.
pub struct Net {
    /// The libp2p swarm.
    pub swarm: Swarm<Behaviour>,
    topic: gossipsub::IdentTopic,
    federation: String,
    me: NodeId,
    allow: HashSet<PeerId>,
    dialed: HashSet<PeerId>,
    /// Bytes of data-plane payload sent (responses and requests).
    pub bytes_out: u64,
}

impl Net {
    /// Builds the swarm, subscribes to the federation topic and starts listening.
    pub fn new(
        key: Keypair,
        federation: &str,
        listen: &str,
        allow: &[String],
        mdns: bool,
    ) -> Result<Self> {
        let me = NodeId(key.public().to_peer_id().to_string());
        let cfg = P2pConfig {
            mdns,
            ..P2pConfig::default()
        };
        let mut swarm = netproto::p2p::build_swarm(key, &cfg)?;
        let topic = netproto::p2p::topic(federation);
        swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(&topic)
            .context("subscribing to the federation topic")?;
        let addr = Multiaddr::from_str(listen)
            .with_context(|| format!("invalid listen address {listen:?}"))?;
        swarm.listen_on(addr).context("listening")?;
        let allow = allow
            .iter()
            .map(|s| PeerId::from_str(s).with_context(|| format!("invalid peer id {s:?} in allow")))
            .collect::<Result<HashSet<_>>>()?;
        Ok(Self {
            swarm,
            topic,
            federation: federation.to_owned(),
            me,
            allow,
            dialed: HashSet::new(),
            bytes_out: 0,
        })
    }

    /// This node's id.
    pub fn me(&self) -> &NodeId {
        &self.me
    }

    /// Waits (bounded) for the first listen address.
    pub async fn first_listen_addr(&mut self, deadline: std::time::Duration) -> Result<Multiaddr> {
        let fut = async {
            loop {
                if let SwarmEvent::NewListenAddr { address, .. } =
                    self.swarm.select_next_some().await
                {
                    return address;
                }
            }
        };
        tokio::time::timeout(deadline, fut)
            .await
            .context("no listen address within the deadline")
    }

    /// Adds a bootstrap peer to Kademlia and dials it.
    pub fn add_bootstrap(&mut self, peer: PeerId, addr: Multiaddr) {
        self.swarm
            .behaviour_mut()
            .kademlia
            .add_address(&peer, addr.clone());
        if let Err(e) = self.swarm.dial(addr) {
            warn!(%peer, "dialing bootstrap peer failed: {e}");
        }
        self.dialed.insert(peer);
    }

    fn admitted(&self, peer: &PeerId) -> bool {
        self.allow.is_empty() || self.allow.contains(peer)
    }

    fn envelope(&self, msg: Message, trace: Option<String>) -> Option<Vec<u8>> {
        let mut env = Envelope::new(&self.federation, &self.me, msg);
        env.trace = trace;
        match env.encode() {
            Ok(b) => Some(b),
            Err(e) => {
                warn!("not sending {}: {e}", env.message.kind());
                None
            }
        }
    }

    /// Gossips a control message to the federation.
    pub fn broadcast(&mut self, msg: Message, trace: Option<String>) {
        let kind = msg.kind();
        if let Some(bytes) = self.envelope(msg, trace)
            && let Err(e) = self
                .swarm
                .behaviour_mut()
                .gossipsub
                .publish(self.topic.clone(), bytes)
        {
            // No subscribed peer yet: heartbeats repeat, so losing one is fine.
            debug!("gossip of {kind} not sent: {e}");
        }
    }

    /// Sends a control message to one node.
    pub fn send(&mut self, to: &NodeId, msg: Message, trace: Option<String>) {
        let Ok(peer) = PeerId::from_str(to.as_str()) else {
            warn!(%to, "not a peer id; dropping {}", msg.kind());
            return;
        };
        if let Some(bytes) = self.envelope(msg, trace) {
            self.swarm
                .behaviour_mut()
                .control
                .send_request(&peer, bytes);
        }
    }

    /// Sends a data-plane request.
    pub fn data_request(
        &mut self,
        to: PeerId,
        frame: Frame<DataRequest>,
    ) -> Option<OutboundRequestId> {
        let payload = frame.payload.len() as u64;
        match frame.into_bytes() {
            Ok(bytes) => {
                self.bytes_out += payload;
                Some(self.swarm.behaviour_mut().data.send_request(&to, bytes))
            }
            Err(e) => {
                warn!("not sending data request: {e}");
                None
            }
        }
    }

    /// Answers a data-plane request.
    pub fn data_respond(&mut self, channel: ResponseChannel<Vec<u8>>, frame: Frame<DataResponse>) {
        let payload = frame.payload.len() as u64;
        match frame.into_bytes() {
            Ok(bytes) => {
                self.bytes_out += payload;
                if self
                    .swarm
                    .behaviour_mut()
                    .data
                    .send_response(channel, bytes)
                    .is_err()
                {
                    debug!("data response dropped: the requester went away");
                }
            }
            Err(e) => warn!("not sending data response: {e}"),
        }
    }

    /// Number of connected peers.
    pub fn connected(&self) -> usize {
        self.swarm.connected_peers().count()
    }

    /// Waits for the next swarm event and translates it.
    pub async fn next(&mut self) -> NetEvent {
        let event = self.swarm.select_next_some().await;
        self.translate(event)
    }

    fn control_event(&self, peer: &PeerId, bytes: &[u8]) -> NetEvent {
        self.decode_control(peer, bytes)
            .map_or(NetEvent::Nothing, |(from, env)| NetEvent::Control {
                from,
                env,
            })
    }

    fn decode_control(&self, peer: &PeerId, bytes: &[u8]) -> Option<(NodeId, Envelope)> {
        if !self.admitted(peer) {
            debug!(%peer, "control message from a peer outside the allow-list");
            return None;
        }
        let env = match Envelope::decode(bytes) {
            Ok(env) => env,
            Err(e) => {
                warn!(%peer, "undecodable control message: {e}");
                return None;
            }
        };
        if env.federation != self.federation {
            debug!(%peer, federation = env.federation, "message of another federation");
            return None;
        }
        if env.sender.as_str() != peer.to_string() {
            warn!(%peer, sender = %env.sender, "sender does not match the authenticated peer");
            return None;
        }
        Some((env.sender.clone(), env))
    }

    fn dial_discovered(&mut self, peer: PeerId, addr: Multiaddr) {
        if peer == *self.swarm.local_peer_id()
            || self.dialed.len() >= MAX_DISCOVERED_DIALS
            || !self.admitted(&peer)
        {
            return;
        }
        self.swarm
            .behaviour_mut()
            .kademlia
            .add_address(&peer, addr.clone());
        if self.dialed.insert(peer) && !self.swarm.is_connected(&peer) {
            let _ = self.swarm.dial(addr);
        }
    }

    fn translate(&mut self, event: SwarmEvent<BehaviourEvent>) -> NetEvent {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                message,
                ..
            })) => {
                let Some(source) = message.source else {
                    return NetEvent::Nothing;
                };
                self.control_event(&source, &message.data)
            }
            SwarmEvent::Behaviour(BehaviourEvent::Control(request_response::Event::Message {
                peer,
                message,
                ..
            })) => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .control
                        .send_response(channel, Vec::new());
                    self.control_event(&peer, &request)
                }
                request_response::Message::Response { .. } => NetEvent::Nothing,
            },
            SwarmEvent::Behaviour(BehaviourEvent::Data(request_response::Event::Message {
                peer,
                message,
                ..
            })) => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    if !self.admitted(&peer) {
                        return NetEvent::Nothing;
                    }
                    match Frame::<DataRequest>::from_bytes(request) {
                        Ok(frame) => NetEvent::DataRequest {
                            peer,
                            frame,
                            channel,
                        },
                        Err(e) => {
                            warn!(%peer, "undecodable data request: {e}");
                            NetEvent::Nothing
                        }
                    }
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => NetEvent::DataResponse {
                    id: request_id,
                    result: Frame::<DataResponse>::from_bytes(response).map_err(|e| e.to_string()),
                },
            },
            SwarmEvent::Behaviour(BehaviourEvent::Data(
                request_response::Event::OutboundFailure {
                    request_id, error, ..
                },
            )) => NetEvent::DataResponse {
                id: request_id,
                result: Err(error.to_string()),
            },
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                for addr in info.listen_addrs {
                    self.swarm
                        .behaviour_mut()
                        .kademlia
                        .add_address(&peer_id, addr);
                }
                NetEvent::Nothing
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kademlia(kad::Event::RoutingUpdated {
                peer,
                addresses,
                ..
            })) => {
                if let Some(addr) = addresses.iter().next().cloned() {
                    self.dial_discovered(peer, addr);
                }
                NetEvent::Nothing
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(list))) => {
                for (peer, addr) in list {
                    self.dial_discovered(peer, addr);
                }
                NetEvent::Nothing
            }
            SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                if !self.admitted(&peer_id) {
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                }
                NetEvent::Peers
            }
            SwarmEvent::ConnectionClosed { .. } => NetEvent::Peers,
            _ => NetEvent::Nothing,
        }
    }

    /// Dials `peer` at `addr` (a multiaddr ending in `/p2p/<id>`) unless connected.
    pub fn ensure_connected(&mut self, peer: PeerId, addr: &str) {
        if self.swarm.is_connected(&peer) {
            return;
        }
        if let Ok(addr) = Multiaddr::from_str(addr) {
            debug!(%peer, "redialing");
            let _ = self.swarm.dial(addr);
        }
    }

    /// Starts a Kademlia bootstrap query (a no-op without known peers).
    pub fn kad_bootstrap(&mut self) {
        let _ = self.swarm.behaviour_mut().kademlia.bootstrap();
    }
}
