//! Wire types and the bounded codec.
//!
//! Two planes travel between nodes:
//! - the **control plane** ([`Envelope`] carrying a [`Message`]): small, gossiped or sent
//!   directly, postcard-encoded and at most [`MAX_CONTROL_MESSAGE`] bytes;
//! - the **data plane** ([`DataRequest`] / [`DataResponse`]): model weights in chunks of at
//!   most [`MAX_CHUNK`] raw bytes, framed as a postcard header followed by the raw payload so
//!   that parameters are never serialized element by element.
//!
//! Every decoder here takes untrusted bytes and returns a typed [`CodecError`]; none panics.

use serde::{Deserialize, Serialize};

/// Version of the wire protocol; an envelope with another version is rejected.
pub const PROTOCOL_VERSION: u16 = 1;
/// Upper bound of an encoded control envelope (gossipsub's default message limit).
pub const MAX_CONTROL_MESSAGE: usize = 64 * 1024;
/// Upper bound of the raw payload of one data-plane chunk.
pub const MAX_CHUNK: usize = 4 * 1024 * 1024;
/// Upper bound of the postcard header of one data-plane frame.
pub const MAX_DATA_HEADER: usize = 4 * 1024;
/// Upper bound of a whole data-plane frame (header length prefix, header, payload).
pub const MAX_DATA_FRAME: usize = 4 + MAX_DATA_HEADER + MAX_CHUNK;
/// Largest update chunk an edge pushes in one request: the anchor holds at most one such
/// chunk per upload in memory, so this (times the upload slots) bounds its upload memory.
pub const MAX_PUSH_CHUNK: usize = 1024 * 1024;
/// Largest data-plane request on the wire (a pushed update chunk with its header).
pub const MAX_DATA_REQUEST: usize = 4 + MAX_DATA_HEADER + MAX_PUSH_CHUNK;
/// Upper bound of the participants of one round.
pub const MAX_PARTICIPANTS: usize = 1024;
/// Upper bound of the number of features a scaler may describe.
pub const MAX_FEATURES: usize = 256;

/// A 32-byte content digest (BLAKE3) of a model or payload.
pub type Digest = [u8; 32];

/// Identity of a node: the libp2p peer id in its text form (or a simulated name in simnet).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub String);

impl NodeId {
    /// Creates a node id from anything string-like.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// How much labelled data an edge holds: complete run-to-failure recordings and the
/// training windows they yield.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleCounts {
    /// Machines recorded until failure.
    pub failures: u64,
    /// Training windows those recordings yield.
    pub windows: u64,
}

/// The sample criterion: only edges with at least this much data take part in rounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Criterion {
    /// Minimum number of run-to-failure recordings.
    pub min_failures: u64,
    /// Minimum number of training windows.
    pub min_windows: u64,
}

impl Default for Criterion {
    fn default() -> Self {
        Self {
            min_failures: 3,
            min_windows: 500,
        }
    }
}

impl Criterion {
    /// Whether `counts` meets this criterion.
    pub fn is_met(&self, counts: &SampleCounts) -> bool {
        counts.failures >= self.min_failures && counts.windows >= self.min_windows
    }
}

/// Per-feature minimum and maximum, combined across edges into the federation's scaler.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeatureRanges {
    /// Per-feature minimum.
    pub min: Vec<f32>,
    /// Per-feature maximum.
    pub max: Vec<f32>,
}

impl FeatureRanges {
    /// Elementwise union of two ranges; `None` when their widths differ.
    pub fn merge(&self, other: &FeatureRanges) -> Option<FeatureRanges> {
        if self.min.len() != other.min.len() || self.max.len() != other.max.len() {
            return None;
        }
        Some(FeatureRanges {
            min: self
                .min
                .iter()
                .zip(&other.min)
                .map(|(a, b)| a.min(*b))
                .collect(),
            max: self
                .max
                .iter()
                .zip(&other.max)
                .map(|(a, b)| a.max(*b))
                .collect(),
        })
    }

    /// Whether the ranges are well formed: equal widths, bounded, finite, min <= max.
    pub fn is_valid(&self) -> bool {
        self.min.len() == self.max.len()
            && self.min.len() <= MAX_FEATURES
            && self
                .min
                .iter()
                .zip(&self.max)
                .all(|(a, b)| a.is_finite() && b.is_finite() && a <= b)
    }
}

/// Local-training hyper-parameters a round plan hands to its participants.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hyper {
    /// Local epochs per round.
    pub local_epochs: u32,
    /// Mini-batch size.
    pub batch_size: u32,
    /// Adam learning rate.
    pub lr: f32,
    /// FedProx proximal coefficient (0 = FedAvg).
    pub prox_mu: f32,
}

impl Default for Hyper {
    fn default() -> Self {
        Self {
            local_epochs: 2,
            batch_size: 64,
            lr: 2e-3,
            prox_mu: 0.0,
        }
    }
}

/// A presence record, gossiped periodically by every edge. Never carries raw data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Presence {
    /// Sample counts of the edge.
    pub samples: SampleCounts,
    /// Global model version the edge holds.
    pub model_version: u64,
    /// Highest term the edge has seen.
    pub term: u64,
    /// The edge's per-feature ranges, for the federated scaler.
    pub ranges: Option<FeatureRanges>,
}

/// The anchor's periodic announcement of the federation state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnchorStatus {
    /// Current term.
    pub term: u64,
    /// Holder of the coordinator lease of `term`, if any.
    pub coordinator: Option<NodeId>,
    /// Milliseconds left on the coordinator lease.
    pub lease_remaining_ms: u64,
    /// Latest committed global model version.
    pub version: u64,
    /// Digest of that version.
    pub digest: Digest,
    /// The round currently open, if any.
    pub active_round: Option<u64>,
    /// The federation's scaler, once fixed by the first committed round.
    pub scaler: Option<FeatureRanges>,
}

/// A coordinator's proposal for the next round; the anchor turns it into a [`RoundPlan`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    /// Term of the proposing coordinator (fencing token).
    pub term: u64,
    /// Selected edges, all meeting the sample criterion.
    pub participants: Vec<NodeId>,
    /// Global version the round starts from.
    pub base_version: u64,
    /// Training hyper-parameters.
    pub hyper: Hyper,
    /// Scaler for the round, merged from the participants' ranges when none is fixed yet.
    pub scaler: Option<FeatureRanges>,
}

/// An open round, as announced by the anchor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoundPlan {
    /// Round number (assigned by the anchor, strictly increasing).
    pub round: u64,
    /// Term under which the round was opened (fencing token).
    pub term: u64,
    /// The coordinator that proposed it.
    pub coordinator: NodeId,
    /// Edges expected to train and push an update.
    pub participants: Vec<NodeId>,
    /// Global version the round starts from.
    pub base_version: u64,
    /// Digest of that version: edges fetch the base model by this digest.
    pub base_digest: Digest,
    /// Training hyper-parameters.
    pub hyper: Hyper,
    /// Milliseconds after opening at which the anchor stops collecting.
    pub deadline_ms: u64,
    /// Scaler to apply to the inputs.
    pub scaler: Option<FeatureRanges>,
}

/// The outcome of a committed round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Commit {
    /// Round that committed.
    pub round: u64,
    /// Its term.
    pub term: u64,
    /// New global version.
    pub version: u64,
    /// Digest of the new global model.
    pub digest: Digest,
    /// Participants whose updates were aggregated.
    pub included: Vec<NodeId>,
    /// Total samples behind the aggregate.
    pub samples: u64,
    /// Sample-weighted mean training loss of the included updates.
    pub train_loss: f32,
}

/// Control-plane message bodies. The enum variant is the message kind.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// Edge → all: presence record.
    Presence(Presence),
    /// Anchor → all: federation status.
    Status(AnchorStatus),
    /// Edge → anchor: asks for (or, as holder, renews) the coordinator lease of `term`.
    Claim {
        /// Requested term.
        term: u64,
    },
    /// Anchor → all (or to the holder, on renewal): the lease of `term` belongs to `coordinator`.
    TermGranted {
        /// Granted term.
        term: u64,
        /// Lease holder.
        coordinator: NodeId,
        /// Lease length from now.
        lease_ms: u64,
    },
    /// Anchor → claimant: the claim was refused.
    ClaimRejected {
        /// Current term at the anchor.
        term: u64,
        /// Current lease holder.
        coordinator: Option<NodeId>,
        /// Milliseconds left on its lease.
        lease_remaining_ms: u64,
    },
    /// Coordinator → anchor: proposes the next round.
    Propose(Proposal),
    /// Anchor → coordinator: the proposal was refused.
    ProposalRejected {
        /// Term of the refused proposal.
        term: u64,
        /// Why.
        reason: String,
    },
    /// Anchor → all: a round is open.
    RoundOpened(RoundPlan),
    /// Anchor → all: a round committed a new global version.
    RoundCommitted(Commit),
    /// Anchor → all: a round ended without a new version.
    RoundAbandoned {
        /// Round.
        round: u64,
        /// Its term.
        term: u64,
        /// Why.
        reason: String,
    },
    /// Edge → anchor: evaluation of a global version on the edge's own data.
    EvalReport {
        /// Evaluated version.
        version: u64,
        /// Number of evaluation windows.
        samples: u64,
        /// RMSE on them.
        rmse: f64,
    },
}

impl Message {
    /// Short name of the message kind, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Presence(_) => "presence",
            Message::Status(_) => "status",
            Message::Claim { .. } => "claim",
            Message::TermGranted { .. } => "term_granted",
            Message::ClaimRejected { .. } => "claim_rejected",
            Message::Propose(_) => "propose",
            Message::ProposalRejected { .. } => "proposal_rejected",
            Message::RoundOpened(_) => "round_opened",
            Message::RoundCommitted(_) => "round_committed",
            Message::RoundAbandoned { .. } => "round_abandoned",
            Message::EvalReport { .. } => "eval_report",
        }
    }
}

/// The control-plane envelope.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Wire protocol version ([`PROTOCOL_VERSION`]).
    pub version: u16,
    /// Federation the message belongs to; other federations' messages are dropped.
    pub federation: String,
    /// Sending node (checked against the transport's authenticated peer id by the daemon).
    pub sender: NodeId,
    /// W3C trace context (`traceparent`) of the span that caused this message.
    pub trace: Option<String>,
    /// The message; its variant is the message kind.
    pub message: Message,
}

/// Errors of the codecs.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    /// The input exceeds the limit for its plane.
    #[error("message of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Size of the input.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The bytes are not a valid message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The message decoded but left unread bytes.
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    /// The envelope is of another protocol version.
    #[error("unsupported protocol version {0} (this node speaks {PROTOCOL_VERSION})")]
    Version(u16),
    /// A field is outside its bounds.
    #[error("field out of bounds: {0}")]
    Bounds(&'static str),
}

impl Envelope {
    /// Wraps a message of `sender` in federation `federation`.
    pub fn new(federation: &str, sender: &NodeId, message: Message) -> Self {
        Self {
            version: PROTOCOL_VERSION,
            federation: federation.to_owned(),
            sender: sender.clone(),
            trace: None,
            message,
        }
    }

    /// Encodes the envelope, refusing to produce more than [`MAX_CONTROL_MESSAGE`] bytes.
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        let bytes =
            postcard::to_allocvec(self).map_err(|e| CodecError::Malformed(e.to_string()))?;
        if bytes.len() > MAX_CONTROL_MESSAGE {
            return Err(CodecError::TooLarge {
                len: bytes.len(),
                limit: MAX_CONTROL_MESSAGE,
            });
        }
        Ok(bytes)
    }

    /// Decodes untrusted bytes: size-checked before parsing, version- and bounds-checked after.
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        if bytes.len() > MAX_CONTROL_MESSAGE {
            return Err(CodecError::TooLarge {
                len: bytes.len(),
                limit: MAX_CONTROL_MESSAGE,
            });
        }
        let (env, rest): (Envelope, &[u8]) =
            postcard::take_from_bytes(bytes).map_err(|e| CodecError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(CodecError::TrailingBytes(rest.len()));
        }
        if env.version != PROTOCOL_VERSION {
            return Err(CodecError::Version(env.version));
        }
        env.check_bounds()?;
        Ok(env)
    }

    fn check_bounds(&self) -> Result<(), CodecError> {
        let ranges_ok = |r: &Option<FeatureRanges>| r.as_ref().is_none_or(FeatureRanges::is_valid);
        match &self.message {
            Message::Presence(p) if !ranges_ok(&p.ranges) => Err(CodecError::Bounds("ranges")),
            Message::Status(s) if !ranges_ok(&s.scaler) => Err(CodecError::Bounds("scaler")),
            Message::Propose(p)
                if p.participants.len() > MAX_PARTICIPANTS || !ranges_ok(&p.scaler) =>
            {
                Err(CodecError::Bounds("proposal"))
            }
            Message::RoundOpened(p)
                if p.participants.len() > MAX_PARTICIPANTS || !ranges_ok(&p.scaler) =>
            {
                Err(CodecError::Bounds("round plan"))
            }
            Message::RoundCommitted(c) if c.included.len() > MAX_PARTICIPANTS => {
                Err(CodecError::Bounds("commit"))
            }
            _ => Ok(()),
        }
    }
}

/// Data-plane requests: fetch a model chunk by digest, or push a chunk of an update.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum DataRequest {
    /// Asks for `max_len` bytes of the model with `digest`, starting at `offset`.
    FetchModel {
        /// Content digest of the model.
        digest: Digest,
        /// First byte wanted (resumption point).
        offset: u64,
        /// Most bytes wanted (capped at [`MAX_CHUNK`]).
        max_len: u32,
    },
    /// One chunk of an edge's update for a round; the payload follows the header. The
    /// first frame of an upload has offset 0 and no payload: it reserves an upload slot.
    PushUpdate(UpdateHeader),
}

/// Header of one chunk of an update push.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpdateHeader {
    /// Round the update belongs to.
    pub round: u64,
    /// Term of that round.
    pub term: u64,
    /// Training samples behind the update (FedAvg weight).
    pub samples: u64,
    /// Mean training loss.
    pub train_loss: f32,
    /// Total size of the encoded update.
    pub total_len: u64,
    /// Offset of this chunk's payload. (No digest of the whole update: Noise
    /// authenticates every byte, and the anchor accepts chunks only in sequence.)
    pub offset: u64,
    /// W3C trace context of the pushing span.
    pub trace: Option<String>,
}

/// Data-plane responses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum DataResponse {
    /// A chunk of a model; the payload follows the header.
    ModelChunk {
        /// Content digest of the model.
        digest: Digest,
        /// Total model size in bytes.
        total_len: u64,
        /// Offset of this chunk.
        offset: u64,
    },
    /// The responder does not hold that model.
    NotFound,
    /// Answer to an update chunk.
    UpdateAck {
        /// Bytes received so far.
        received: u64,
        /// Whether the update is complete and was accepted into the aggregate.
        accepted: bool,
        /// Empty when fine; otherwise why it was refused (the push stops).
        error: String,
        /// Non-zero: every upload slot is taken; ask again after this many milliseconds.
        retry_after_ms: u32,
    },
}

/// A data-plane frame: a postcard header followed by a raw payload.
#[derive(Clone, Debug, PartialEq)]
pub struct Frame<H> {
    /// The header.
    pub header: H,
    /// The raw payload (model bytes), at most [`MAX_CHUNK`].
    pub payload: Vec<u8>,
}

impl<H: Serialize + serde::de::DeserializeOwned> Frame<H> {
    /// A payload buffer holding `bytes` with room for the trailer, so that
    /// [`Frame::into_bytes`] appends the header without moving the payload.
    pub fn payload_from(bytes: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(bytes.len() + MAX_DATA_HEADER + 4);
        v.extend_from_slice(bytes);
        v
    }

    /// Encodes as `payload | header | u32 LE header length`: the header goes *after* the
    /// payload so that both directions reuse the payload's buffer (no copy of the
    /// model bytes): [`Frame::into_bytes`] appends to it, [`Frame::from_bytes`]
    /// truncates it.
    pub fn into_bytes(self) -> Result<Vec<u8>, CodecError> {
        let header = postcard::to_allocvec(&self.header)
            .map_err(|e| CodecError::Malformed(e.to_string()))?;
        if header.len() > MAX_DATA_HEADER {
            return Err(CodecError::TooLarge {
                len: header.len(),
                limit: MAX_DATA_HEADER,
            });
        }
        if self.payload.len() > MAX_CHUNK {
            return Err(CodecError::TooLarge {
                len: self.payload.len(),
                limit: MAX_CHUNK,
            });
        }
        let mut out = self.payload;
        out.reserve_exact(header.len() + 4);
        out.extend_from_slice(&header);
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        Ok(out)
    }

    /// Encodes a copy (see [`Frame::into_bytes`] for the layout).
    pub fn encode(&self) -> Result<Vec<u8>, CodecError>
    where
        H: Clone,
    {
        Frame {
            header: self.header.clone(),
            payload: Self::payload_from(&self.payload),
        }
        .into_bytes()
    }

    /// Decodes untrusted bytes, bounded by [`MAX_DATA_FRAME`], keeping the buffer as the
    /// payload.
    pub fn from_bytes(mut bytes: Vec<u8>) -> Result<Self, CodecError> {
        if bytes.len() > MAX_DATA_FRAME {
            return Err(CodecError::TooLarge {
                len: bytes.len(),
                limit: MAX_DATA_FRAME,
            });
        }
        let (rest, len_bytes) = bytes
            .split_last_chunk::<4>()
            .ok_or_else(|| CodecError::Malformed("frame shorter than its length trailer".into()))?;
        let header_len = u32::from_le_bytes(*len_bytes) as usize;
        if header_len > MAX_DATA_HEADER || header_len > rest.len() {
            return Err(CodecError::Malformed(format!(
                "header length {header_len} out of bounds"
            )));
        }
        let payload_len = rest.len() - header_len;
        let header: H = postcard::from_bytes(&rest[payload_len..])
            .map_err(|e| CodecError::Malformed(e.to_string()))?;
        if payload_len > MAX_CHUNK {
            return Err(CodecError::TooLarge {
                len: payload_len,
                limit: MAX_CHUNK,
            });
        }
        bytes.truncate(payload_len);
        Ok(Self {
            header,
            payload: bytes,
        })
    }

    /// Decodes a copy of untrusted bytes (see [`Frame::from_bytes`]).
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        if bytes.len() > MAX_DATA_FRAME {
            return Err(CodecError::TooLarge {
                len: bytes.len(),
                limit: MAX_DATA_FRAME,
            });
        }
        Self::from_bytes(bytes.to_vec())
    }
}

/// BLAKE3 digest of a byte string.
pub fn digest_of(bytes: &[u8]) -> Digest {
    *blake3::hash(bytes).as_bytes()
}

/// Short hex prefix of a digest, for logs.
pub fn short_hex(d: &Digest) -> String {
    d[..6].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node() -> impl Strategy<Value = NodeId> {
        "[a-zA-Z0-9]{1,52}".prop_map(NodeId)
    }

    fn ranges() -> impl Strategy<Value = Option<FeatureRanges>> {
        proptest::option::of(
            proptest::collection::vec((-1e6f32..1e6, 0f32..1e6), 0..20).prop_map(|v| {
                FeatureRanges {
                    min: v.iter().map(|(a, _)| *a).collect(),
                    max: v.iter().map(|(a, w)| a + w).collect(),
                }
            }),
        )
    }

    fn message() -> impl Strategy<Value = Message> {
        prop_oneof![
            (
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
                ranges()
            )
                .prop_map(|(f, w, v, t, r)| Message::Presence(Presence {
                    samples: SampleCounts {
                        failures: f,
                        windows: w
                    },
                    model_version: v,
                    term: t,
                    ranges: r,
                })),
            any::<u64>().prop_map(|term| Message::Claim { term }),
            (any::<u64>(), node(), any::<u64>()).prop_map(|(term, coordinator, lease_ms)| {
                Message::TermGranted {
                    term,
                    coordinator,
                    lease_ms,
                }
            }),
            (
                any::<u64>(),
                any::<u64>(),
                node(),
                proptest::collection::vec(node(), 0..20),
                any::<[u8; 32]>(),
                ranges()
            )
                .prop_map(
                    |(round, term, coordinator, participants, base_digest, scaler)| {
                        Message::RoundOpened(RoundPlan {
                            round,
                            term,
                            coordinator,
                            participants,
                            base_version: round,
                            base_digest,
                            hyper: Hyper::default(),
                            deadline_ms: 1000,
                            scaler,
                        })
                    }
                ),
            (any::<u64>(), any::<u64>(), ".{0,40}").prop_map(|(round, term, reason)| {
                Message::RoundAbandoned {
                    round,
                    term,
                    reason,
                }
            }),
        ]
    }

    proptest! {
        #[test]
        fn envelope_round_trips(msg in message(), sender in node(), fed in "[a-z]{0,16}", trace in proptest::option::of("[0-9a-f-]{55}")) {
            let mut env = Envelope::new(&fed, &sender, msg);
            env.trace = trace;
            let bytes = env.encode().unwrap();
            prop_assert_eq!(Envelope::decode(&bytes).unwrap(), env);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = Envelope::decode(&bytes);
            let _ = Frame::<DataRequest>::decode(&bytes);
            let _ = Frame::<DataResponse>::decode(&bytes);
        }

        #[test]
        fn truncated_envelopes_are_errors(msg in message(), cut in 0usize..64) {
            let bytes = Envelope::new("f", &NodeId::new("a"), msg).encode().unwrap();
            let cut = cut.min(bytes.len().saturating_sub(1));
            prop_assert!(Envelope::decode(&bytes[..cut]).is_err());
        }

        #[test]
        fn frames_round_trip(round in any::<u64>(), payload in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let frame = Frame {
                header: DataRequest::PushUpdate(UpdateHeader {
                    round, term: 1, samples: 10, train_loss: 0.5, total_len: payload.len() as u64,
                    offset: 0, trace: None,
                }),
                payload,
            };
            prop_assert_eq!(Frame::decode(&frame.encode().unwrap()).unwrap(), frame);
        }
    }

    #[test]
    fn oversized_input_is_rejected_before_parsing() {
        let big = vec![0u8; MAX_CONTROL_MESSAGE + 1];
        assert!(matches!(
            Envelope::decode(&big),
            Err(CodecError::TooLarge { .. })
        ));
        let big = vec![0u8; MAX_DATA_FRAME + 1];
        assert!(matches!(
            Frame::<DataRequest>::decode(&big),
            Err(CodecError::TooLarge { .. })
        ));
    }

    #[test]
    fn oversized_message_is_not_encoded() {
        let participants = (0..5000).map(|i| NodeId(format!("peer-{i:040}"))).collect();
        let env = Envelope::new(
            "f",
            &NodeId::new("a"),
            Message::Propose(Proposal {
                term: 1,
                participants,
                base_version: 0,
                hyper: Hyper::default(),
                scaler: None,
            }),
        );
        assert!(matches!(env.encode(), Err(CodecError::TooLarge { .. })));
    }

    #[test]
    fn other_versions_and_trailing_bytes_are_rejected() {
        let mut env = Envelope::new("f", &NodeId::new("a"), Message::Claim { term: 3 });
        env.version = 9;
        let bytes = postcard::to_allocvec(&env).unwrap();
        assert_eq!(Envelope::decode(&bytes), Err(CodecError::Version(9)));
        env.version = PROTOCOL_VERSION;
        let mut bytes = env.encode().unwrap();
        bytes.push(0);
        assert_eq!(Envelope::decode(&bytes), Err(CodecError::TrailingBytes(1)));
    }

    #[test]
    fn invalid_ranges_are_rejected() {
        let env = Envelope::new(
            "f",
            &NodeId::new("a"),
            Message::Presence(Presence {
                samples: SampleCounts::default(),
                model_version: 0,
                term: 0,
                ranges: Some(FeatureRanges {
                    min: vec![1.0],
                    max: vec![f32::NAN],
                }),
            }),
        );
        let bytes = postcard::to_allocvec(&env).unwrap();
        assert_eq!(Envelope::decode(&bytes), Err(CodecError::Bounds("ranges")));
    }

    #[test]
    fn criterion_needs_both_counts() {
        let c = Criterion {
            min_failures: 3,
            min_windows: 500,
        };
        assert!(c.is_met(&SampleCounts {
            failures: 3,
            windows: 500
        }));
        assert!(!c.is_met(&SampleCounts {
            failures: 2,
            windows: 5000
        }));
        assert!(!c.is_met(&SampleCounts {
            failures: 30,
            windows: 499
        }));
    }
}
