//! Connection deadlines (docs/hostile-clients.md): every state a connection
//! can be in has a bound, so no client holds a connection slot forever.
//!
//! `Guarded` wraps the socket. While no request is in flight, a read that
//! waits past the state's deadline fails the connection: before the first
//! request that deadline covers protocol detection, the TLS and HTTP/2
//! handshakes and the first headers together; after it, the keep-alive
//! idle time, and on HTTP/1 the header read time once a next request has
//! begun to arrive (hyper's own header timer is off: it starts while the
//! connection is idle and so would cap keep-alive). A write that makes no
//! progress for the write timeout fails it too. Request bodies are bounded where they are read (`read_body`), and
//! HTTP/2 liveness by hyper's keep-alive pings.
//!
//! [`Wrapped`] is what every socket wrapper shares, this one and
//! `detect::Prefixed`: an inner I/O with the state that acts around its
//! reads and writes ([`Around`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::config::Config;

/// Why a connection was closed; the `reason` label of
/// `signet_connections_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Detection, handshakes and the first request's headers took too long.
    FirstRequest,
    /// A later request's headers took too long.
    Headers,
    /// A keep-alive connection sat idle too long.
    Idle,
    /// A request body stalled or took too long.
    Body,
    /// The client stopped reading responses.
    Write,
    /// An HTTP/2 client did not answer a keep-alive ping.
    Keepalive,
}

impl Reason {
    pub fn label(self) -> &'static str {
        match self {
            Reason::FirstRequest => "first_request",
            Reason::Headers => "headers",
            Reason::Idle => "idle",
            Reason::Body => "body",
            Reason::Write => "write",
            Reason::Keepalive => "keepalive",
        }
    }
}

/// The deadlines the socket wrapper enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub first_request: Duration,
    pub headers: Duration,
    pub idle: Duration,
    pub write: Duration,
}

impl Limits {
    pub fn from_config(config: &Config) -> Limits {
        let s = &config.server;
        Limits {
            first_request: Duration::from_secs(s.header_read_timeout_secs),
            headers: Duration::from_secs(s.header_read_timeout_secs),
            idle: Duration::from_secs(s.idle_timeout_secs),
            write: Duration::from_secs(s.write_timeout_secs),
        }
    }
}

/// What the service tells the socket wrapper: whether a request is in
/// flight, and since when the connection has been idle.
#[derive(Debug)]
pub struct Activity {
    opened: Instant,
    in_flight: AtomicUsize,
    served: AtomicBool,
    /// Whether the requests come over HTTP/2 (no per-request header clock).
    http2: AtomicBool,
    /// Milliseconds after `opened`, plus one, when the first bytes of the
    /// next HTTP/1 request arrived; 0 while none has.
    next_request_ms: AtomicU64,
    /// Milliseconds after `opened` when the last request finished.
    idle_since_ms: AtomicU64,
    closed_for: OnceLock<Reason>,
    /// A shorter write timeout, in milliseconds (0: the configured one):
    /// a change feed stream drops a subscriber that stops reading sooner.
    write_ms: AtomicU64,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            http2: AtomicBool::new(false),
            next_request_ms: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
            closed_for: OnceLock::new(),
            write_ms: AtomicU64::new(0),
        })
    }

    /// Fails a write that makes no progress for `timeout` from now on, if
    /// shorter than the configured write timeout.
    pub fn write_timeout(&self, timeout: Duration) {
        let ms = u64::try_from(timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        self.write_ms.store(ms, Ordering::Relaxed);
    }

    /// Marks a request in flight until the guard drops.
    pub fn begin(self: &Arc<Self>, version: hyper::Version) -> InFlight {
        self.served.store(true, Ordering::Relaxed);
        if version == hyper::Version::HTTP_2 {
            self.http2.store(true, Ordering::Relaxed);
        }
        self.next_request_ms.store(0, Ordering::Release);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone(), None)
    }

    /// Whether a request was ever received.
    pub fn served(&self) -> bool {
        self.served.load(Ordering::Relaxed)
    }

    /// The deadline a pending read must meet, or `None` while a request is
    /// in flight (its body has its own deadline).
    fn read_deadline(&self, limits: &Limits) -> Option<(Instant, Reason)> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let at = |ms: u64| self.opened + Duration::from_millis(ms);
        Some(if self.served() {
            match self.next_request_ms.load(Ordering::Acquire) {
                0 => (
                    at(self.idle_since_ms.load(Ordering::Acquire)) + limits.idle,
                    Reason::Idle,
                ),
                started => (at(started - 1) + limits.headers, Reason::Headers),
            }
        } else {
            (self.opened + limits.first_request, Reason::FirstRequest)
        })
    }

    /// Bytes arrived: on an idle HTTP/1 connection they start the next
    /// request's header clock.
    fn received(&self) {
        if self.served()
            && !self.http2.load(Ordering::Relaxed)
            && self.in_flight.load(Ordering::Acquire) == 0
            && self.next_request_ms.load(Ordering::Acquire) == 0
        {
            let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
            self.next_request_ms.store(ms + 1, Ordering::Release);
        }
    }

    /// The reason the socket wrapper cut the connection, if it did.
    pub fn closed_for(&self) -> Option<Reason> {
        self.closed_for.get().copied()
    }

    fn close(&self, reason: Reason) -> io::Error {
        let _ = self.closed_for.set(reason);
        io::Error::new(io::ErrorKind::TimedOut, reason.label())
    }
}

/// A request in flight; dropping it starts the idle clock once none is,
/// as of when [`InFlight::end_at`] says, or else of the drop.
pub struct InFlight(Arc<Activity>, Option<std::time::Instant>);

impl InFlight {
    /// Ends the request at `at`, a clock read the caller made anyway.
    pub fn end_at(mut self, at: std::time::Instant) {
        self.1 = Some(at);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        let ended = self.1.map_or_else(Instant::now, Instant::from_std);
        let since = ended.saturating_duration_since(a.opened);
        let ms = u64::try_from(since.as_millis()).unwrap_or(u64::MAX);
        a.idle_since_ms.store(ms, Ordering::Release);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A timer armed for one deadline; `None` deadline means "look again later".
struct Alarm {
    sleep: Pin<Box<Sleep>>,
    armed: Option<(Instant, Option<Reason>)>,
}

impl Alarm {
    fn new() -> Alarm {
        Alarm {
            sleep: Box::pin(tokio::time::sleep_until(Instant::now())),
            armed: None,
        }
    }

    /// Arms for `at` (if not already) and polls: `Ready(reason)` once it
    /// passed.
    fn poll_at(
        &mut self,
        cx: &mut Context<'_>,
        at: Instant,
        reason: Option<Reason>,
    ) -> Poll<Option<Reason>> {
        if self.armed != Some((at, reason)) {
            self.sleep.as_mut().reset(at);
            self.armed = Some((at, reason));
        }
        ready!(self.sleep.as_mut().poll(cx));
        self.armed = None;
        Poll::Ready(reason)
    }
}

/// A socket (or TLS stream) with the read and write deadlines above.
pub type Guarded<T> = Wrapped<T, Deadlines>;

impl<T> Guarded<T> {
    pub fn new(inner: T, activity: Arc<Activity>, limits: Limits) -> Guarded<T> {
        Wrapped::around(
            inner,
            Deadlines {
                activity,
                limits,
                read_alarm: Alarm::new(),
                write_alarm: Alarm::new(),
                write_stalled: None,
            },
        )
    }
}

/// What [`Guarded`] keeps beside the socket.
pub struct Deadlines {
    activity: Arc<Activity>,
    limits: Limits,
    read_alarm: Alarm,
    write_alarm: Alarm,
    /// When the current write started to make no progress.
    write_stalled: Option<Instant>,
}

impl Deadlines {
    /// After a pending write: fails once it has made no progress for the
    /// write timeout.
    fn write_pending<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        let since = *self.write_stalled.get_or_insert_with(Instant::now);
        let limit = match self.activity.write_ms.load(Ordering::Relaxed) {
            0 => self.limits.write,
            ms => self.limits.write.min(Duration::from_millis(ms)),
        };
        match self
            .write_alarm
            .poll_at(cx, since + limit, Some(Reason::Write))
        {
            Poll::Ready(_) => Poll::Ready(Err(self.activity.close(Reason::Write))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead> Around<T> for Deadlines {
    fn poll_read(
        &mut self,
        inner: Pin<&mut T>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        if let Poll::Ready(r) = inner.poll_read(cx, buf) {
            if buf.filled().len() > before {
                self.activity.received();
            }
            return Poll::Ready(r);
        }
        // The read is pending: how long may it be?
        loop {
            let (at, reason) = match self.activity.read_deadline(&self.limits) {
                Some((at, reason)) => (at, Some(reason)),
                // A request is in flight: look again after an idle period,
                // in case the wake-up that ends it does not reach this read.
                None => match self.read_alarm.armed {
                    Some((at, None)) => (at, None),
                    _ => (Instant::now() + self.limits.idle, None),
                },
            };
            match self.read_alarm.poll_at(cx, at, reason) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(reason)) => return Poll::Ready(Err(self.activity.close(reason))),
                Poll::Ready(None) => continue,
            }
        }
    }

    fn wrote<R>(
        &mut self,
        result: Poll<io::Result<R>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<R>> {
        match result {
            Poll::Pending => self.write_pending(cx),
            ready => {
                self.write_stalled = None;
                ready
            }
        }
    }
}

/// A socket wrapper: an inner I/O and what is done around it (deadlines,
/// bytes read ahead), so that the pinning and the forwarding each wrapper
/// needs are written once.
pub struct Wrapped<I, A> {
    inner: I,
    around: A,
}

impl<I, A> Wrapped<I, A> {
    pub fn around(inner: I, around: A) -> Wrapped<I, A> {
        Wrapped { inner, around }
    }
}

/// What a [`Wrapped`] I/O does around its inner one.
pub trait Around<I> {
    /// A read: from `inner`, or from what the wrapper holds.
    fn poll_read(
        &mut self,
        inner: Pin<&mut I>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>>;

    /// What an inner write, flush or shutdown that returned `result`
    /// returns: by default, `result`.
    fn wrote<R>(
        &mut self,
        result: Poll<io::Result<R>>,
        _cx: &mut Context<'_>,
    ) -> Poll<io::Result<R>> {
        result
    }
}

impl<I: AsyncRead + Unpin, A: Around<I> + Unpin> AsyncRead for Wrapped<I, A> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.around.poll_read(Pin::new(&mut this.inner), cx, buf)
    }
}

impl<I: AsyncWrite + Unpin, A: Around<I> + Unpin> AsyncWrite for Wrapped<I, A> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.around.wrote(result, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.around.wrote(result, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_flush(cx);
        this.around.wrote(result, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.around.wrote(result, cx)
    }
}

/// A request body that was not received in time.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time ({0})")]
pub struct BodyTimeout(&'static str);

/// Collects a body within the total body deadline, failing also when one
/// piece takes longer than the progress timeout. Other errors (a size
/// limit, a broken connection) pass through.
pub async fn read_body<B>(mut body: B, config: &Config) -> Result<Bytes, B::Error>
where
    B: hyper::body::Body + Unpin,
    B::Error: From<BodyTimeout>,
{
    let s = &config.server;
    let total = Instant::now() + Duration::from_secs(s.body_read_timeout_secs);
    let progress = Duration::from_secs(s.body_progress_timeout_secs);
    let mut out = BytesMut::new();
    loop {
        let next = (Instant::now() + progress).min(total);
        let frame = match tokio::time::timeout_at(next, body.frame()).await {
            Ok(Some(frame)) => frame?,
            Ok(None) => return Ok(out.freeze()),
            Err(_) if next == total => return Err(BodyTimeout("total time").into()),
            Err(_) => return Err(BodyTimeout("no progress").into()),
        };
        if let Ok(data) = frame.into_data() {
            out.put(data);
        }
    }
}

/// The answer to a body that timed out: 408, and the closure counted (the
/// unread rest of the body means HTTP/1 cannot reuse the connection).
pub fn body_timed_out(app: &super::ServerState, e: impl ToString) -> super::reply::ApiError {
    app.signet
        .metrics
        .connections_closed
        .get_or_create(&crate::metrics::ReasonLabel {
            reason: Reason::Body.label(),
        })
        .inc();
    super::reply::ApiError::new(
        hyper::StatusCode::REQUEST_TIMEOUT,
        super::reply::ErrorCode::RequestTimeout,
        "the request body did not arrive in time",
    )
    .cause(e)
}

/// Why hyper ended a connection, when it was the deadline it enforces
/// (HTTP/2 pings).
pub fn hyper_reason(error: &(dyn std::error::Error + 'static)) -> Option<Reason> {
    let mut source = Some(error);
    while let Some(e) = source {
        if e.to_string().contains("keep-alive timed out") {
            return Some(Reason::Keepalive);
        }
        source = e.source();
    }
    None
}
