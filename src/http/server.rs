//! The accept loop: every TCP connection served by hyper (HTTP/1.1, or HTTP/2 with prior
//! knowledge) under limits a hostile client cannot stretch: a cap on open connections, a deadline
//! for a request's header block, an idle timeout, and a cap on concurrent HTTP/2 streams.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::ConnectInfo;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use metrics::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;
use tower::ServiceExt;

use super::metrics::{CONNECTIONS, REQUESTS_IN_PROGRESS};

/// What one process allows its clients' connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// A new connection must deliver its first request's whole header block within this of being
    /// accepted; a kept-alive HTTP/1 one, each later header block within this of its first byte.
    /// (A kept-alive HTTP/2 connection's later header blocks are bounded by `idle_timeout`: hyper
    /// hands over a stream only once its headers are whole, and bytes on an idle HTTP/2
    /// connection may as well be keep-alive frames, PING or WINDOW_UPDATE.)
    pub header_timeout: Duration,
    /// A connection with no request in progress for this long is closed; an HTTP/1 one whose
    /// next header block began before then, at that block's first byte plus `header_timeout`.
    pub idle_timeout: Duration,
    /// Connections open at once; past it, new ones wait in the kernel's accept backlog.
    pub max_connections: u32,
    /// Requests one HTTP/2 connection may have in progress at once.
    pub http2_max_concurrent_streams: u32,
}

impl ConnectionLimits {
    /// A builder for one connection: its HTTP/1 header clock watches that connection's activity.
    fn builder(&self, activity: &Arc<Activity>) -> auto::Builder<TokioExecutor> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(HeaderClock {
                activity: activity.clone(),
                header_timeout: self.header_timeout,
            })
            .header_read_timeout(self.header_timeout)
            .keep_alive(true);
        // hyper's reset-flood protections (max_pending_accept_reset_streams,
        // max_local_error_reset_streams) keep their defaults: on.
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(HTTP2_MAX_HEADER_LIST)
            .max_concurrent_streams(self.http2_max_concurrent_streams);
        builder
    }
}

/// The largest HTTP/2 header block taken, as HTTP/2 counts it: names, values and 32 bytes a field,
/// pseudo-headers included. hyper's default (16 KiB) refused, with a bare 431, blocks that are
/// within the service's own limits (`limits.rs`: 16 KiB of names and values, 4 KiB of target);
/// at 64 KiB every such block reaches those limits, and one past them gets their 400 envelope.
const HTTP2_MAX_HEADER_LIST: u32 = 64 * 1024;

/// How the requests in flight at the stop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Drained {
    /// Every one was answered.
    All,
    /// The drain time ran out first.
    OutOfTime,
    /// Asked to stop again, the process did not wait for them.
    Hurried,
}

/// Serves `router` on `listener` until `shutdown` resolves; then stops accepting, lets open
/// connections finish their requests for at most `drain`, or until `hurry` resolves, and says
/// which came first.
pub(crate) async fn run(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
    hurry: impl Future<Output = ()>,
    drain: Duration,
) -> Drained {
    let slots = Arc::new(Semaphore::new(limits.max_connections as usize));
    let (stopping, stop) = watch::channel(false);
    metrics::gauge!(CONNECTIONS, "state" => "max").set(limits.max_connections as f64);
    let open_connections = metrics::gauge!(CONNECTIONS, "state" => "open");
    let requests_in_progress = metrics::gauge!(REQUESTS_IN_PROGRESS);
    let mut shutdown = pin!(shutdown);
    loop {
        // The slot is taken before accepting, so past the cap the kernel holds new
        // connections in its backlog instead of this process holding their memory.
        let slot = tokio::select! {
            biased;
            () = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    on_accept_error(error).await;
                    continue;
                }
            },
        };
        tokio::spawn(serve_connection(ConnectionTask {
            stream,
            peer,
            router: router.clone(),
            limits,
            stop: stop.clone(),
            _open: OpenConnection::new(slot, open_connections.clone()),
            requests_in_progress: requests_in_progress.clone(),
        }));
    }
    // New connections are refused from here on.
    drop(listener);
    stopping.send_replace(true);
    let open = limits.max_connections as usize - slots.available_permits();
    tracing::debug!(connections = open, "draining open connections");
    // Every connection has closed once each has given its slot back.
    let all_closed = slots.acquire_many(limits.max_connections);
    let drained = tokio::select! {
        // Biased: a drain that ends as its time runs out ended in time.
        biased;
        _ = all_closed => return Drained::All,
        () = tokio::time::sleep(drain) => {
            tracing::warn!(
                drain_ms = drain.as_millis() as u64,
                "requests still in flight after the drain time; stopping anyway"
            );
            Drained::OutOfTime
        }
        () = hurry => {
            tracing::warn!("asked to stop again; stopping without waiting for the requests in flight");
            Drained::Hurried
        }
    };
    super::metrics::stopping_unanswered();
    drained
}

/// Per-connection failures (the peer gave up before we accepted) are nothing to wait for; any
/// other (out of file descriptors) is logged and waited out, as hyper 0.14 and axum do.
async fn on_accept_error(error: io::Error) {
    if matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(%error, "cannot accept a connection; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

struct ConnectionTask {
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: ConnectionLimits,
    /// Turns `true` when the process stops.
    stop: watch::Receiver<bool>,
    /// Held for as long as the connection is open.
    _open: OpenConnection,
    requests_in_progress: Gauge,
}

/// A connection's slot under the cap, held and counted open in `/metrics` until its task ends.
struct OpenConnection {
    _slot: OwnedSemaphorePermit,
    open: Gauge,
}

impl OpenConnection {
    fn new(slot: OwnedSemaphorePermit, open: Gauge) -> Self {
        open.increment(1.0);
        Self { _slot: slot, open }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.open.decrement(1.0);
    }
}

/// What the kernel may hold of a connection's response bytes not yet sent (`TCP_NOTSENT_LOWAT`):
/// past it the socket takes no more writes. A client that stops reading (a stuck consumer of a
/// change stream whose group is busy) then holds about this much of the kernel's memory, not the
/// send buffer's autotuned maximum (4 MiB by Linux's default), beside hyper's own write queue in
/// the process (up to about 400 KiB), and is seen stuck (the idle clock) once both are full.
/// Throughput does not pay: what is in flight is still sized by TCP; only the queue behind it is
/// bounded. Linux only; elsewhere the send buffer's own limit.
const UNSENT_BYTES: u32 = 128 * 1024;

async fn serve_connection(task: ConnectionTask) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(error) = socket2::SockRef::from(&task.stream).set_tcp_notsent_lowat(UNSENT_BYTES) {
        tracing::debug!(client.address = %task.peer, %error, "cannot bound the connection's unsent bytes");
    }
    let activity = Arc::new(Activity::new(task.requests_in_progress));
    let service = ConnectionService {
        router: task.router,
        peer: task.peer,
        activity: activity.clone(),
    };
    let io = CountedIo {
        stream: task.stream,
        activity: activity.clone(),
    };
    let mut connection = pin!(
        task.limits
            .builder(&activity)
            .serve_connection(TokioIo::new(io), service)
            .into_owned()
    );
    let mut stop = task.stop;
    // Once asked to close, a connection answers what it has in progress and takes no new request:
    // HTTP/1 closes after its answer, HTTP/2 sends GOAWAY naming the last stream it took, so that
    // its client knows which requests it may send again elsewhere. Since when, if it is.
    let mut closing: Option<Instant> = None;
    loop {
        tokio::select! {
            // The connection first: a byte that arrives as the idle clock runs out is read (and
            // its request given the header timeout) rather than closed on.
            biased;
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(client.address = %task.peer, %error, "connection ended with an error");
                }
                return;
            }
            _ = stop.wait_for(|stopping| *stopping), if closing.is_none() => {
                connection.as_mut().graceful_shutdown();
                closing = Some(Instant::now());
            }
            expiry = activity.expired(task.limits, closing) => match expiry {
                Expiry::Idle if closing.is_none() => {
                    tracing::debug!(client.address = %task.peer, "closing an idle connection");
                    connection.as_mut().graceful_shutdown();
                    closing = Some(Instant::now());
                }
                // Closing, with nothing in progress for `CLOSING_GRACE` (an HTTP/2 client that
                // does not answer the GOAWAY's PING, so is never told its last stream): nothing
                // is lost by dropping it.
                Expiry::Idle => return,
                // Its answers end with it (a change stream: `client_gone`); said, since a client
                // stuck this way (a runner that stopped reading its stream) is one to find.
                Expiry::Stuck => {
                    tracing::info!(
                        client.address = %task.peer,
                        idle_timeout_ms = task.limits.idle_timeout.as_millis() as u64,
                        "closing a connection whose client stopped taking its answers"
                    );
                    return;
                }
            }
        }
    }
}

/// The router as hyper calls it for one connection: the peer address for handlers (the
/// failed-authentication limiter counts by it), and every request counted while in progress.
#[derive(Clone)]
struct ConnectionService {
    router: Router,
    peer: SocketAddr,
    activity: Arc<Activity>,
}

impl hyper::service::Service<Request<Incoming>> for ConnectionService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        if request.version() == hyper::Version::HTTP_2 {
            self.activity.http2.store(true, Ordering::Relaxed);
        }
        let in_progress = InProgress::start(self.activity.clone());
        // A HEAD's body is never sent: it owes nothing.
        let owes = request.method() != hyper::Method::HEAD;
        request.extensions_mut().insert(ConnectInfo(self.peer));
        let response = self.router.clone().oneshot(request);
        Box::pin(async move {
            let response = response.await?;
            // The request stays in progress until its body is written (or the stream reset).
            Ok(response.map(|body| Body::new(CountedBody::new(body, owes, in_progress))))
        })
    }
}

/// When a connection last had nothing to do, whether it has anything to do now, how many bytes
/// it has read, and when it last wrote.
struct Activity {
    state: Mutex<ActivityState>,
    changed: Notify,
    bytes_read: AtomicU64,
    /// When the connection first read a byte since it was last left with nothing in progress, in
    /// nanoseconds from `opened`, plus one (0: none yet): on HTTP/1, a next request's header
    /// has begun.
    first_read_since_idle: AtomicU64,
    /// The connection speaks HTTP/2 (known from its first request, before which the header
    /// timeout runs anyway): what it sends while idle (a PING, a SETTINGS acknowledgement) is no
    /// request's header.
    http2: AtomicBool,
    /// Bytes of response bodies handed to hyper and not yet written out (as far as this side
    /// can tell: a write takes its framing from it too, never below 0).
    owed: AtomicU64,
    /// When the connection last wrote what a response owed, in nanoseconds from `opened`. A
    /// request is done for the service once its body's last frame is taken, but a slow reader
    /// may not have it yet: hyper and h2 hold what the socket (or the client's flow-control
    /// window) cannot take, and while those bytes still move the connection is not idle. What
    /// no response owes (an HTTP/2 PING's answer) does not count: a client could keep an idle
    /// connection open for good with it.
    wrote_at: AtomicU64,
    /// Response bodies that hyper owes a poll: one not polled yet, or whose last poll gave a
    /// frame. hyper polls a body again as soon as it can send what it took; one that has nothing
    /// to send (a quiet change stream) answered its last poll `Pending`, and wakes hyper itself.
    /// So a body owed a poll for long is one whose client stopped taking bytes (a full socket,
    /// an HTTP/2 window left closed), and no timer of the body can run.
    bodies_owed_a_poll: AtomicUsize,
    /// When hyper last polled a response's body, or a body was made, in nanoseconds from
    /// `opened`.
    polled_at: AtomicU64,
    opened: Instant,
    /// The process's count of requests in progress, for `/metrics`.
    requests_in_progress: Gauge,
}

struct ActivityState {
    in_progress: usize,
    /// Since when nothing has been in progress (the accept, or the end of the last request).
    idle_since: Instant,
    served_any: bool,
}

impl Activity {
    fn new(requests_in_progress: Gauge) -> Self {
        Self {
            state: Mutex::new(ActivityState {
                in_progress: 0,
                idle_since: Instant::now(),
                served_any: false,
            }),
            changed: Notify::new(),
            bytes_read: AtomicU64::new(0),
            first_read_since_idle: AtomicU64::new(0),
            http2: AtomicBool::new(false),
            owed: AtomicU64::new(0),
            wrote_at: AtomicU64::new(0),
            bodies_owed_a_poll: AtomicUsize::new(0),
            polled_at: AtomicU64::new(0),
            opened: Instant::now(),
            requests_in_progress,
        }
    }

    /// Nanoseconds from `opened` to now.
    fn now(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// A body was polled (or made): its clock starts again.
    fn polled(&self) {
        self.polled_at.store(self.now(), Ordering::Relaxed);
    }

    /// A body is now owed a poll (`true`), or no longer (`false`). No wake-up: while requests
    /// are in progress the idle clock looks again every idle timeout (see [`Self::expired`]),
    /// rather than every request waking it twice more.
    fn owe_a_poll(&self, owed: bool) {
        if owed {
            self.bodies_owed_a_poll.fetch_add(1, Ordering::Relaxed);
        } else {
            self.bodies_owed_a_poll.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn last_poll(&self) -> Instant {
        self.opened + Duration::from_nanos(self.polled_at.load(Ordering::Relaxed))
    }

    /// `written` bytes went out: while a response still owed some, that is activity. A write
    /// as small as an HTTP/2 control frame's answer is not (a PING's is 17 bytes): a stream
    /// reset after its whole body was handed over leaves it owed, and pings must not draw on it.
    fn wrote(&self, written: usize) {
        const CONTROL_FRAMES: usize = 64;
        if written <= CONTROL_FRAMES {
            return;
        }
        if self.owe_less(written as u64) > 0 {
            self.wrote_at.store(self.now(), Ordering::Relaxed);
        }
    }

    /// Takes `bytes` off what responses owe (never below 0); what they owed before.
    fn owe_less(&self, bytes: u64) -> u64 {
        self.owed
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |owed| {
                Some(owed.saturating_sub(bytes))
            })
            .unwrap_or_default()
    }

    fn last_write(&self) -> Instant {
        self.opened + Duration::from_nanos(self.wrote_at.load(Ordering::Relaxed))
    }

    fn served_any(&self) -> bool {
        self.lock().served_any
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ActivityState> {
        // The state is a counter, an instant and a flag: a panic elsewhere cannot leave it torn.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Resolves once the connection has had no request in progress for too long: the header
    /// timeout before its first request (so a client that sends nothing, or never finishes the
    /// HTTP/2 preface, is dropped as fast as a slow HTTP/1 header), the idle timeout after, and
    /// after the last write of a response still on its way (on HTTP/1, or the header timeout
    /// from the first byte read since, whichever is later). A request in progress keeps its
    /// connection, however quiet (a change stream with nothing to send), except while a response
    /// body is owed a poll: then the idle timeout runs from the last poll or write, so a client
    /// that stops taking a response's bytes cannot hold its connection (and a stream its key's
    /// slot) for good, past every timer of the body. Such a connection is closed within twice the
    /// idle timeout: while requests are in progress, the clock looks every idle timeout.
    ///
    /// A connection `closing` (since then) with nothing in progress and no answer's bytes still
    /// on their way has [`CLOSING_GRACE`] from then, or from its last write, instead.
    async fn expired(&self, limits: ConnectionLimits, closing: Option<Instant>) -> Expiry {
        loop {
            let (deadline, expiry) = {
                let state = self.lock();
                match state.in_progress {
                    // Only once its answers are out: a slow reader's response, handed to hyper
                    // whole, still has the idle timeout from its last write (and the drain's).
                    0 if let Some(since) =
                        closing.filter(|_| self.owed.load(Ordering::Relaxed) == 0) =>
                    {
                        (
                            since.max(state.idle_since).max(self.last_write()) + CLOSING_GRACE,
                            Expiry::Idle,
                        )
                    }
                    0 if state.served_any => {
                        let idle = state.idle_since.max(self.last_write()) + limits.idle_timeout;
                        // An HTTP/1 request begun before then has the whole header timeout from
                        // its first byte, as hyper gives it: it was cut off at the idle deadline,
                        // unanswered. Only the first byte counts, so this extends the idle time
                        // once, by the header timeout at most.
                        let deadline = match self.first_read_since_idle.load(Ordering::Relaxed) {
                            0 => idle,
                            _ if self.http2.load(Ordering::Relaxed) => idle,
                            at => idle.max(
                                self.opened + Duration::from_nanos(at - 1) + limits.header_timeout,
                            ),
                        };
                        (deadline, Expiry::Idle)
                    }
                    0 => (state.idle_since + limits.header_timeout, Expiry::Idle),
                    _ if self.bodies_owed_a_poll.load(Ordering::Relaxed) > 0 => {
                        let polled = self.last_poll().max(self.last_write());
                        (polled + limits.idle_timeout, Expiry::Stuck)
                    }
                    // Looked at again then (a later turn of this loop, not an expiry).
                    _ => (Instant::now() + limits.idle_timeout, Expiry::Idle),
                }
            };
            if deadline <= Instant::now() {
                return expiry;
            }
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {}
                () = self.changed.notified() => {}
            }
        }
    }
}

/// How long a closing connection with nothing in progress is kept: over HTTP/2, the round trip
/// of the GOAWAY's PING, after whose answer h2 sends the GOAWAY naming the last stream it took
/// and closes. A client that never answers it is not waited for (Go's server waits 1 s too).
const CLOSING_GRACE: Duration = Duration::from_secs(1);

/// Why a connection's clock closed it.
enum Expiry {
    /// Nothing in progress for the idle timeout (or no whole first request in the header's).
    Idle,
    /// Its answers owed a poll that their client's full socket or closed window kept back for
    /// the idle timeout.
    Stuck,
}

/// One request in progress on its connection (and in the process's count), until dropped.
struct InProgress(Arc<Activity>);

impl InProgress {
    fn start(activity: Arc<Activity>) -> Self {
        activity.requests_in_progress.increment(1.0);
        {
            let mut state = activity.lock();
            state.in_progress += 1;
            state.served_any = true;
        }
        // notify_one keeps a permit when no one waits yet, so the change is never missed.
        activity.changed.notify_one();
        Self(activity)
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.requests_in_progress.decrement(1.0);
        {
            let mut state = self.0.lock();
            state.in_progress -= 1;
            if state.in_progress == 0 {
                state.idle_since = Instant::now();
                self.0.first_read_since_idle.store(0, Ordering::Relaxed);
            }
        }
        self.0.changed.notify_one();
    }
}

/// A response body that keeps its request counted as in progress until it is done.
struct CountedBody {
    body: Body,
    /// Whether its bytes are owed to the client (not a HEAD's).
    owes: bool,
    /// The bytes it handed over, counted in [`Activity::owed`].
    handed_over: u64,
    ended: bool,
    /// hyper owes it a poll ([`Activity::bodies_owed_a_poll`]).
    owed_a_poll: bool,
    in_progress: InProgress,
}

impl CountedBody {
    fn new(body: Body, owes: bool, in_progress: InProgress) -> Self {
        let activity = &in_progress.0;
        activity.polled();
        activity.owe_a_poll(true);
        Self {
            body,
            owes,
            handed_over: 0,
            ended: false,
            owed_a_poll: true,
            in_progress,
        }
    }

    fn set_owed_a_poll(&mut self, owed: bool) {
        if self.owed_a_poll != owed {
            self.owed_a_poll = owed;
            self.in_progress.0.owe_a_poll(owed);
        }
    }
}

impl HttpBody for CountedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        self.in_progress.0.polled();
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        // A frame taken: hyper polls again once it has sent it. Pending: the body wakes hyper.
        self.set_owed_a_poll(matches!(polled, Poll::Ready(Some(Ok(_)))));
        match &polled {
            Poll::Ready(Some(Ok(frame))) if self.owes => {
                if let Some(data) = frame.data_ref() {
                    let handed = data.len() as u64;
                    self.in_progress.0.owed.fetch_add(handed, Ordering::Relaxed);
                    self.handed_over += handed;
                }
            }
            Poll::Ready(None) => self.ended = true,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for CountedBody {
    fn drop(&mut self) {
        self.set_owed_a_poll(false);
        if !self.ended && !self.body.is_end_stream() {
            // Dropped before its end (the stream was reset, the connection lost): what it handed
            // over and was not sent never will be. Which of the connection's writes were its own
            // is not known, so all it handed over is taken off: the others' bytes may then be
            // counted short, never long. (Forgetting every response's bytes let one reset stream
            // close a connection still sending another's.)
            self.in_progress.0.owe_less(self.handed_over);
        }
    }
}

/// The connection's socket, counting the bytes read so the header clock can tell when a
/// kept-alive connection's next request starts, and noting each write for the idle clock.
struct CountedIo {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl CountedIo {
    fn count_written(&self, polled: &Poll<io::Result<usize>>) {
        if let Poll::Ready(Ok(written)) = polled
            && *written > 0
        {
            self.activity.wrote(*written);
        }
    }
}

impl AsyncRead for CountedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            let activity = &self.activity;
            activity
                .bytes_read
                .fetch_add(read as u64, Ordering::Relaxed);
            if activity.first_read_since_idle.load(Ordering::Relaxed) == 0 {
                let _ = activity.first_read_since_idle.compare_exchange(
                    0,
                    activity.now().saturating_add(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
        }
        polled
    }
}

impl AsyncWrite for CountedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.count_written(&polled);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.count_written(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// hyper's HTTP/1 header-read timer for one connection. hyper starts it as soon as it waits for
/// a request head, which on a kept-alive connection is right after the previous response: left
/// as is, it would close every idle connection after the header timeout, and the idle timeout
/// would mean nothing. So only the first request's clock starts at once (a new connection that
/// sends nothing is dropped after the header timeout); a later one starts with the request's
/// first byte, and until then the idle timeout watches the connection.
struct HeaderClock {
    activity: Arc<Activity>,
    header_timeout: Duration,
}

impl hyper::rt::Timer for HeaderClock {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(std::time::Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        let running = match self.activity.served_any() {
            false => Some(Box::pin(tokio::time::sleep_until(deadline.into()))),
            true => None,
        };
        Box::pin(HeaderDeadline {
            activity: self.activity.clone(),
            read_when_waiting: self.activity.bytes_read.load(Ordering::Relaxed),
            header_timeout: self.header_timeout,
            running,
        })
    }
}

/// One header block's deadline: `header_timeout` after the first byte read since hyper set it,
/// or hyper's own deadline when it is the connection's first request.
struct HeaderDeadline {
    activity: Arc<Activity>,
    read_when_waiting: u64,
    header_timeout: Duration,
    running: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Future for HeaderDeadline {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.running.is_none() {
            // hyper polls this each time a read leaves the head incomplete, so the first new
            // byte is seen here without a wake-up of our own.
            if self.activity.bytes_read.load(Ordering::Relaxed) == self.read_when_waiting {
                return Poll::Pending;
            }
            let started = Box::pin(tokio::time::sleep(self.header_timeout));
            self.running = Some(started);
        }
        match &mut self.running {
            Some(sleep) => sleep.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }
}

impl hyper::rt::Sleep for HeaderDeadline {}
