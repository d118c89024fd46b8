//! The stream multiplexer: Yamux (`/yamux/1.0.0`, wire-compatible with every libp2p
//! Yamux peer) with a larger write size for bulk data.
//!
//! libp2p's own Yamux upgrade fixes the `yamux` crate's default of cutting writes into
//! 16 KiB frames, and the connection flushes the socket after every frame: a 40 MB model
//! costs some 2,500 `send` calls, each with the full loopback/TCP path behind it, which
//! dominated the kernel time of a federated round. This upgrade drives the same `yamux`
//! connection with 256 KiB frames (the initial stream window; the receiver's flow
//! control is unchanged), so bulk transfers take 16× fewer frames and syscalls.
//! The number of streams and the connection's receive window are bounded (yamux
//! defaults: 512 streams, 1 GiB).

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::{io, iter};

use futures::{AsyncRead, AsyncWrite};
use libp2p::core::muxing::{StreamMuxer, StreamMuxerEvent};
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo};

/// Largest Yamux data frame this node writes.
pub const SPLIT_SEND_SIZE: usize = 256 * 1024;
/// Concurrent streams per connection (yamux's default is 512).
pub const MAX_STREAMS: usize = 128;
/// Receive window of a whole connection: yamux requires at least 256 KiB per stream.
pub const MAX_CONNECTION_WINDOW: usize = MAX_STREAMS * 256 * 1024;
/// Inbound streams kept while nobody asks for them; later ones are dropped (the remote
/// sees a reset), so a peer opening streams faster than we accept them costs bounded memory.
const MAX_PENDING_INBOUND: usize = 256;

/// The Yamux upgrade (see the module documentation).
#[derive(Clone, Debug)]
pub struct YamuxUpgrade {
    cfg: yamux::Config,
}

impl Default for YamuxUpgrade {
    fn default() -> Self {
        let mut cfg = yamux::Config::default();
        cfg.set_split_send_size(SPLIT_SEND_SIZE);
        // Bounded buffering: at most MAX_STREAMS streams, and what a peer can make us hold
        // for streams nobody reads is capped per connection (yamux's default is 1 GiB).
        cfg.set_max_num_streams(MAX_STREAMS);
        cfg.set_max_connection_receive_window(Some(MAX_CONNECTION_WINDOW));
        Self { cfg }
    }
}

impl UpgradeInfo for YamuxUpgrade {
    type Info = &'static str;
    type InfoIter = iter::Once<Self::Info>;

    fn protocol_info(&self) -> Self::InfoIter {
        iter::once("/yamux/1.0.0")
    }
}

impl<C> InboundConnectionUpgrade<C> for YamuxUpgrade
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = YamuxMuxer<C>;
    type Error = io::Error;
    type Future = futures::future::Ready<Result<Self::Output, Self::Error>>;

    fn upgrade_inbound(self, io: C, _: Self::Info) -> Self::Future {
        futures::future::ready(Ok(YamuxMuxer::new(yamux::Connection::new(
            io,
            self.cfg,
            yamux::Mode::Server,
        ))))
    }
}

impl<C> OutboundConnectionUpgrade<C> for YamuxUpgrade
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = YamuxMuxer<C>;
    type Error = io::Error;
    type Future = futures::future::Ready<Result<Self::Output, Self::Error>>;

    fn upgrade_outbound(self, io: C, _: Self::Info) -> Self::Future {
        futures::future::ready(Ok(YamuxMuxer::new(yamux::Connection::new(
            io,
            self.cfg,
            yamux::Mode::Client,
        ))))
    }
}

/// One multiplexed connection.
#[derive(Debug)]
pub struct YamuxMuxer<C> {
    conn: yamux::Connection<C>,
    /// Inbound streams that arrived while the swarm polled for other progress.
    pending: VecDeque<yamux::Stream>,
    /// Who to wake when an inbound stream is queued.
    inbound_waker: Option<Waker>,
}

impl<C> YamuxMuxer<C> {
    fn new(conn: yamux::Connection<C>) -> Self {
        Self {
            conn,
            pending: VecDeque::new(),
            inbound_waker: None,
        }
    }
}

impl<C> YamuxMuxer<C>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    /// Drives the connection until it yields an inbound stream (or fails or closes).
    fn next_inbound(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<yamux::Stream, yamux::ConnectionError>> {
        match self.conn.poll_next_inbound(cx) {
            Poll::Ready(Some(r)) => Poll::Ready(r),
            Poll::Ready(None) => Poll::Ready(Err(yamux::ConnectionError::Closed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<C> StreamMuxer for YamuxMuxer<C>
where
    C: AsyncRead + AsyncWrite + Unpin + 'static,
{
    type Substream = yamux::Stream;
    type Error = yamux::ConnectionError;

    fn poll_inbound(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        let this = self.get_mut();
        if let Some(stream) = this.pending.pop_front() {
            return Poll::Ready(Ok(stream));
        }
        match this.next_inbound(cx) {
            Poll::Ready(r) => Poll::Ready(r),
            Poll::Pending => {
                this.inbound_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    fn poll_outbound(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        self.get_mut().conn.poll_new_outbound(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.get_mut().conn.poll_close(cx)
    }

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<StreamMuxerEvent, Self::Error>> {
        let this = self.get_mut();
        // Only polling the connection makes progress on its streams; an inbound stream
        // found here is queued for `poll_inbound`.
        let stream = match this.next_inbound(cx) {
            Poll::Ready(Ok(stream)) => stream,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        if this.pending.len() < MAX_PENDING_INBOUND {
            this.pending.push_back(stream);
            if let Some(w) = this.inbound_waker.take() {
                w.wake();
            }
        } else {
            // The queue is full: the stream is dropped and the remote sees it reset.
            drop(stream);
        }
        // More may be ready: come back at once, after other tasks had their turn.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
