//! [`serve`]: run a guarded app on a listener, configured the way a server
//! facing the network needs, with every connection bounded.

mod connections;
mod deadline;

use std::convert::Infallible;
use std::future::{Future, IntoFuture};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tower_service::Service;

use connections::{Admission, Busy, Conn, Connections};
use deadline::DeadlineBody;

/// Defaults of [`Serve`]; each setter's doc repeats its own.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request body may take to arrive, from its head.
const REQUEST_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// The read buffer of a connection, which bounds a request head: a bearer
/// token is at most 64 KiB (8 KiB by default), so 96 KiB leaves room for it
/// and the other headers, where hyper's own ~400 KiB let every connection
/// slow to send its head hold that much (700 such connections: 263 MB).
const MAX_HEADER_BYTES: usize = 96 * 1024;
/// hyper's floor for the read buffer.
const MIN_HEADER_BYTES: usize = 8192;
/// The connection cap never goes above this by default, whatever the
/// open-files limit (each connection holds buffers; this many is plenty for
/// one MCP server).
const MAX_CONNECTIONS_CEILING: usize = 16_384;
/// The open-files limit assumed where it cannot be read.
const ASSUMED_OPEN_FILES: u64 = 1024;

/// Serve `app` on `listener`; see the [type docs](Serve). Await the result
/// (it runs until the shutdown signal, or forever).
///
/// ```no_run
/// # async fn run(app: axum::Router) -> std::io::Result<()> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// rmcp_guard::serve(listener, app)
///     .with_graceful_shutdown(async { let _ = tokio::signal::ctrl_c().await; })
///     .await
/// # }
/// ```
pub fn serve(listener: TcpListener, app: axum::Router) -> Serve {
    Serve {
        listener,
        app,
        header_read_timeout: HEADER_READ_TIMEOUT,
        idle_timeout: IDLE_TIMEOUT,
        max_connections: default_max_connections(),
        shutdown_timeout: SHUTDOWN_TIMEOUT,
        max_header_bytes: MAX_HEADER_BYTES,
        request_body_timeout: REQUEST_BODY_TIMEOUT,
        signal: Box::pin(std::future::pending()),
    }
}

/// A server being configured; `.await` it to run. From [`serve`].
///
/// HTTP/1.1 (hyper), with these bounds on every connection:
///
/// - **`TCP_NODELAY`** on every accepted socket. Without it, every MCP call
///   after the first on a keep-alive connection waits for Nagle's algorithm
///   and the peer's delayed ACK (measured here: ~44 ms a call, 33 calls/s on
///   one session instead of 4,500).
/// - **A request head limit** (default 96 KiB, see
///   [`max_header_bytes`](Self::max_header_bytes)): `431` over it.
/// - **A header-read timeout** (default 10 s): a client that does not send a
///   whole request head within it is disconnected. It counts from when the
///   connection starts waiting for a request head: when it was accepted, and
///   when a keep-alive connection is done with its previous request, so it
///   is the keep-alive idle timeout too. The connection's own timer keeps
///   it (a connection is waiting for a head exactly when it is idle, below),
///   so a request costs no timer of its own.
/// - **A request body timeout** (default 30 s, see
///   [`request_body_timeout`](Self::request_body_timeout)): `408` and the
///   connection closed when a body has not arrived whole within it.
/// - **An idle timeout** (default 60 s): a connection with no request in
///   flight and no response being sent for this long is closed, whatever
///   the header-read timeout is set to.
/// - **A connection cap** (default from the process's open-files limit, see
///   [`max_connections`](Self::max_connections)). At the cap, a new
///   connection takes the place of the longest-idle one (idle, half-open or
///   slow to send its head), which is closed; when every connection has a
///   request in flight or a response open, the new one is answered `503`
///   and closed at once. New connections never wait in the accept queue, so
///   a few hundred sockets that send half a request line cannot keep a
///   valid caller out.
/// - **Graceful shutdown**: on the signal, stop accepting, let requests in
///   flight finish, and close what is still open after a bound (default
///   10 s; SSE streams would otherwise hold the process forever).
///
/// The request body limit is rmcp's (`max_request_body_bytes` of
/// [`Guard::http_config`](crate::Guard::http_config), 4 MiB by default:
/// `413` over it); request checks (`Host`, `Origin`) are the
/// [`EdgeLayer`](crate::edge::EdgeLayer) that [`Guard::router`](crate::Guard::router)
/// installs.
#[must_use = "a Serve does nothing until it is awaited"]
pub struct Serve {
    listener: TcpListener,
    app: axum::Router,
    header_read_timeout: Duration,
    idle_timeout: Duration,
    max_connections: usize,
    shutdown_timeout: Duration,
    max_header_bytes: usize,
    request_body_timeout: Duration,
    signal: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl std::fmt::Debug for Serve {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serve")
            .field("local_addr", &self.listener.local_addr().ok())
            .field("header_read_timeout", &self.header_read_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_connections", &self.max_connections)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("max_header_bytes", &self.max_header_bytes)
            .field("request_body_timeout", &self.request_body_timeout)
            .finish_non_exhaustive()
    }
}

impl Serve {
    /// How long a client may take to send a request head, counted from when
    /// the connection starts waiting for it (accepted, or done with its
    /// previous request). Defaults to 10 seconds.
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout;
        self
    }

    /// How long a connection may stay without a request in flight or a
    /// response being sent before it is closed. The header-read timeout,
    /// when shorter, closes such a connection first. Defaults to 60 seconds.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// The most connections open at once (at least 1); at the cap a new
    /// connection takes the place of the longest-idle one, or gets 503 when
    /// every connection is busy. Defaults to `min(16384, n - min(n/2,
    /// max(64, n/4)))` for the process's open-files soft limit `n`
    /// (`RLIMIT_NOFILE`, read at [`serve`]; 1,024 where it cannot be read):
    /// a quarter of the descriptors, at least 64 and at most half, stay free
    /// for upstream sockets, policy files and the runtime; 192 for 256 open
    /// files, 768 for 1,024.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// The largest request head (request line and headers) a connection
    /// reads, in bytes (hyper's read buffer, at least 8,192); `431` over it.
    /// hyper checks it between reads, so a head a little over it may still
    /// be read whole (up to about twice the limit). Each connection slow to
    /// send its head may hold that much until the header-read timeout, so it
    /// multiplies by the connection cap.
    /// Defaults to 96 KiB.
    pub fn max_header_bytes(mut self, bytes: usize) -> Self {
        self.max_header_bytes = bytes.max(MIN_HEADER_BYTES);
        self
    }

    /// How long a request body may take to arrive whole, counted from when
    /// its head was read; past it the request is answered `408` and its
    /// connection closed. Without it a caller with a valid token could
    /// trickle a body (up to the 4 MiB body limit) for as long as it likes,
    /// holding a connection and one of its requests in flight. Defaults to
    /// 30 seconds.
    pub fn request_body_timeout(mut self, timeout: Duration) -> Self {
        self.request_body_timeout = timeout;
        self
    }

    /// How long open connections may keep running after the shutdown
    /// signal. Defaults to 10 seconds.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Stop when `signal` completes: no new connections, requests in flight
    /// finish (within [`shutdown_timeout`](Self::shutdown_timeout)).
    /// Defaults to never.
    pub fn with_graceful_shutdown<F>(mut self, signal: F) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.signal = Box::pin(signal);
        self
    }

    async fn run(self) -> io::Result<()> {
        let Serve {
            listener,
            app,
            header_read_timeout,
            idle_timeout,
            max_connections,
            shutdown_timeout,
            max_header_bytes,
            request_body_timeout,
            mut signal,
        } = self;
        tracing::info!(
            max_connections,
            ?header_read_timeout,
            ?idle_timeout,
            "accepting connections"
        );
        let table = Connections::new(max_connections);
        #[cfg(feature = "telemetry")]
        {
            let table = Arc::downgrade(&table);
            crate::telemetry::gauge_in_use(crate::telemetry::names::CONNECTIONS, "Open connections", move || {
                table.upgrade().map(|t| t.len() as u64)
            });
        }
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        // An idle connection is one waiting for a request head (see
        // `connections`): the header-read timeout and the idle timeout
        // measure the same wait, and the shorter one closes it.
        let idle_limit = header_read_timeout.min(idle_timeout);
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = &mut signal => break,
            };
            let (tcp, _peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead
                    // of spinning, and keep serving what is open.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let registration = match table.admit() {
                Admission::Admitted(registration) => registration,
                Admission::Replaced(registration) => {
                    tracing::debug!(
                        max_connections,
                        "connection cap reached; closed the longest-idle connection"
                    );
                    registration
                }
                Admission::Full => {
                    // Not a warning: any client can cause it at will.
                    tracing::debug!(
                        max_connections,
                        "connection cap reached and every connection busy; refused one"
                    );
                    refuse(tcp);
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let conn = registration.conn().clone();
            let service = Tracked {
                app: app.clone(),
                conn: conn.clone(),
                request_body_timeout,
            };
            // No hyper timer: the header-read timeout is kept below, where
            // a connection waiting for a head is an idle one.
            let connection = hyper::server::conn::http1::Builder::new()
                .header_read_timeout(None)
                .max_buf_size(max_header_bytes)
                .serve_connection(TokioIo::new(tcp), service);
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                let _registration = registration;
                let mut connection = std::pin::pin!(connection);
                loop {
                    let deadline = conn.idle_deadline(idle_limit);
                    tokio::select! {
                        result = &mut connection => {
                            if let Err(error) = result {
                                tracing::debug!(%error, "connection closed with an error");
                            }
                            break;
                        }
                        // Dropping the connection closes the socket; it had
                        // no request in flight (the close was refused
                        // otherwise).
                        () = conn.shed() => break,
                        () = tokio::time::sleep_until(deadline) => {
                            if conn.close_if_idle(idle_limit) {
                                tracing::debug!("idle connection closed");
                                break;
                            }
                        }
                    }
                }
            });
        }
        drop(listener);
        if tokio::time::timeout(shutdown_timeout, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::info!("shutdown timeout reached; closing the remaining connections");
        }
        Ok(())
    }
}

impl IntoFuture for Serve {
    type Output = io::Result<()>;
    type IntoFuture = Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}

/// No room for a connection: answer 503 if the socket takes it at once,
/// and close it.
fn refuse(tcp: TcpStream) {
    const BUSY: &[u8] =
        b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
    let _ = tcp.try_write(BUSY);
}

/// The default connection cap for an open-files soft limit; see
/// [`Serve::max_connections`].
fn max_connections_for(open_files: u64) -> usize {
    let reserve = (open_files / 4).max(64).min(open_files / 2);
    let cap = usize::try_from(open_files - reserve).unwrap_or(usize::MAX);
    cap.clamp(1, MAX_CONNECTIONS_CEILING)
}

fn default_max_connections() -> usize {
    max_connections_for(open_files_limit().unwrap_or(ASSUMED_OPEN_FILES))
}

/// This process's open-files soft limit.
#[cfg(unix)]
fn open_files_limit() -> Option<u64> {
    rlimit::Resource::NOFILE.get().ok().map(|(soft, _hard)| soft)
}

#[cfg(not(unix))]
fn open_files_limit() -> Option<u64> {
    None
}

/// The app, with each request counted on its connection until its response
/// body has been sent (or dropped).
#[derive(Clone)]
struct Tracked {
    app: axum::Router,
    conn: Arc<Conn>,
    request_body_timeout: Duration,
}

type Answer = Pin<Box<dyn Future<Output = Result<Response<axum::body::Body>, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for Tracked {
    type Response = Response<axum::body::Body>;
    type Error = Infallible;
    type Future = Answer;

    fn call(&self, request: Request<Incoming>) -> Answer {
        let Some(busy) = self.conn.begin() else {
            // The connection was shed between reading this head and here.
            return Box::pin(std::future::ready(Ok(closing(StatusCode::SERVICE_UNAVAILABLE))));
        };
        let mut app = self.app.clone();
        let timeout = self.request_body_timeout;
        Box::pin(async move {
            let timed_out = (!http_body::Body::is_end_stream(request.body())).then(|| Arc::new(AtomicBool::new(false)));
            let request = match &timed_out {
                Some(flag) => request.map(|body| axum::body::Body::new(DeadlineBody::new(body, timeout, flag.clone()))),
                None => request.map(axum::body::Body::new),
            };
            std::future::poll_fn(|cx| Service::<Request<axum::body::Body>>::poll_ready(&mut app, cx)).await?;
            let response = app.call(request).await?;
            if timed_out.is_some_and(|flag| flag.load(Ordering::Acquire)) {
                // Whatever the app made of the failed body (rmcp says 500),
                // the client was too slow: 408, and the connection closes.
                return Ok(closing(StatusCode::REQUEST_TIMEOUT));
            }
            Ok(response.map(|body| keep_busy(body, busy)))
        })
    }
}

/// The body, holding `busy` until it is done.
fn keep_busy(body: axum::body::Body, busy: Busy) -> axum::body::Body {
    axum::body::Body::new(body.map_frame(move |frame| {
        let _busy = &busy;
        frame
    }))
}

/// An empty answer with `status` that closes the connection (503 with
/// `Retry-After: 1`).
fn closing(status: StatusCode) -> Response<axum::body::Body> {
    let mut response = Response::new(axum::body::Body::empty());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, http::HeaderValue::from_static("close"));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        headers.insert(header::RETRY_AFTER, http::HeaderValue::from_static("1"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Notified when a `/slow` request reaches the app.
    static SLOW_STARTED: tokio::sync::Notify = tokio::sync::Notify::const_new();

    type Running = (
        std::net::SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<io::Result<()>>,
    );

    async fn start_with(configure: impl FnOnce(Serve) -> Serve) -> Running {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route("/", axum::routing::get(|| async { "ok" }))
            .route("/echo", axum::routing::post(|body: String| async move { body }))
            .route(
                "/slow",
                axum::routing::get(|| async {
                    SLOW_STARTED.notify_one();
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    "late"
                }),
            );
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = configure(serve(listener, app))
            .shutdown_timeout(Duration::from_secs(1))
            .with_graceful_shutdown(async move {
                let _ = rx.await;
            });
        (addr, tx, tokio::spawn(server.into_future()))
    }

    async fn start(timeout: Duration) -> Running {
        start_with(|s| s.header_read_timeout(timeout)).await
    }

    /// Bounded: true if the server closed the connection within 5 s.
    async fn closed_by_server(tcp: &mut TcpStream) -> bool {
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut rest))
            .await
            .is_ok()
    }

    /// One keep-alive request and its whole (short) response.
    async fn get_keep_alive(tcp: &mut TcpStream) -> String {
        tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        let mut answer = Vec::new();
        let mut buf = [0u8; 1024];
        while !answer.ends_with(b"ok") {
            let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
                .await
                .expect("answered in time")
                .unwrap();
            assert!(n > 0, "closed before the answer");
            answer.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(answer).unwrap()
    }

    #[test]
    fn defaults_are_pinned() {
        let (header, idle, shutdown) = (HEADER_READ_TIMEOUT, IDLE_TIMEOUT, SHUTDOWN_TIMEOUT);
        assert_eq!(header, Duration::from_secs(10));
        assert_eq!(idle, Duration::from_secs(60));
        assert_eq!(shutdown, Duration::from_secs(10));
        assert_eq!(MAX_HEADER_BYTES, 96 * 1024);
        assert_eq!(REQUEST_BODY_TIMEOUT, Duration::from_secs(30));
        assert_eq!(ASSUMED_OPEN_FILES, 1024);
        let limit = open_files_limit().expect("readable on unix");
        assert_eq!(default_max_connections(), max_connections_for(limit));
    }

    #[test]
    fn the_connection_cap_leaves_room_below_the_open_files_limit() {
        for (open_files, cap) in [
            (0, 1),
            (1, 1),
            (64, 32),
            (100, 50),
            (256, 192),
            (1024, 768),
            (4096, 3072),
            (1 << 20, 16_384),
            (u64::MAX, 16_384),
        ] {
            assert_eq!(max_connections_for(open_files), cap, "{open_files}");
        }
    }

    #[tokio::test]
    async fn answers_and_stops_on_the_signal() {
        let (addr, stop, handle) = start(Duration::from_secs(10)).await;
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("ok"), "{answer}");
        stop.send(()).unwrap();
        handle.await.unwrap().unwrap();
        assert!(TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn a_request_head_over_the_limit_is_431() {
        let (addr, stop, handle) = start_with(|s| s.max_header_bytes(16 * 1024)).await;
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let pad = "a".repeat(8000);
        let head = format!("GET / HTTP/1.1\r\nhost: x\r\nx-a: {pad}\r\nx-b: {pad}\r\nx-c: {pad}\r\n\r\n");
        // The server may close before reading all of it.
        let _ = tcp.write_all(head.as_bytes()).await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
        // A head within the limit is served.
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        assert!(get_keep_alive(&mut tcp).await.starts_with("HTTP/1.1 200"));
        stop.send(()).unwrap();
        handle.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_client_that_never_finishes_its_headers_is_disconnected() {
        let (addr, stop, handle) = start(Duration::from_millis(200)).await;
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET / HT").await.unwrap();
        assert!(
            closed_by_server(&mut tcp).await,
            "the half-open connection was not closed"
        );
        stop.send(()).unwrap();
        handle.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_head_trickled_byte_by_byte_is_cut_at_the_header_read_timeout() {
        // Bytes arriving do not restart the timer: the whole head must be
        // in within it.
        let (addr, stop, handle) = start(Duration::from_millis(300)).await;
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let head = b"GET / HTTP/1.1\r\nhost: x\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        let mut cut = false;
        for byte in head {
            tokio::time::sleep(Duration::from_millis(25)).await;
            if tcp.write_all(std::slice::from_ref(byte)).await.is_err() {
                cut = true;
                break;
            }
        }
        // 97 bytes at 25 ms each take 2.4 s; the server cut the connection
        // long before, and answered nothing.
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut rest)).await;
        assert!(
            cut || matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "the trickled head was answered or kept"
        );
        assert!(rest.is_empty(), "answered: {:?}", String::from_utf8_lossy(&rest));
        stop.send(()).unwrap();
        handle.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn the_header_read_timeout_also_closes_an_idle_keep_alive_connection() {
        // The header timer starts when a keep-alive connection waits for
        // its next request, not at its first byte.
        let (addr, stop, handle) = start_with(|s| {
            s.header_read_timeout(Duration::from_millis(200))
                .idle_timeout(Duration::from_secs(60))
        })
        .await;
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        assert!(get_keep_alive(&mut tcp).await.starts_with("HTTP/1.1 200"));
        assert!(
            closed_by_server(&mut tcp).await,
            "the idle keep-alive connection was not closed"
        );
        stop.send(()).unwrap();
        handle.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn the_idle_timeout_closes_an_idle_connection_whatever_the_header_timeout() {
        let (addr, stop, handle) = start_with(|s| {
            s.header_read_timeout(Duration::from_secs(60))
                .idle_timeout(Duration::from_millis(200))
        })
        .await;
        let mut keep_alive = TcpStream::connect(addr).await.unwrap();
        assert!(get_keep_alive(&mut keep_alive).await.starts_with("HTTP/1.1 200"));
        let mut half_open = TcpStream::connect(addr).await.unwrap();
        half_open.write_all(b"GET / HT").await.unwrap();
        assert!(
            closed_by_server(&mut keep_alive).await,
            "keep-alive connection not closed"
        );
        assert!(
            closed_by_server(&mut half_open).await,
            "half-open connection not closed"
        );
        stop.send(()).unwrap();
        handle.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn at_the_cap_a_new_connection_takes_the_place_of_the_longest_idle_one() {
        let (addr, stop, handle) = start_with(|s| s.max_connections(2)).await;
        let mut first = TcpStream::connect(addr).await.unwrap();
        first.write_all(b"GET / HT").await.unwrap();
        let mut second = TcpStream::connect(addr).await.unwrap();
        second.write_all(b"GET / HT").await.unwrap();
        let mut third = TcpStream::connect(addr).await.unwrap();
        assert!(get_keep_alive(&mut third).await.starts_with("HTTP/1.1 200"));
        assert!(
            closed_by_server(&mut first).await,
            "the oldest half-open connection was kept"
        );
        stop.send(()).unwrap();
        handle.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn at_the_cap_with_every_connection_busy_a_new_one_is_refused_at_once() {
        let (addr, stop, handle) = start_with(|s| s.max_connections(1)).await;
        let mut busy = TcpStream::connect(addr).await.unwrap();
        busy.write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        // In flight once the handler runs.
        tokio::time::timeout(Duration::from_secs(5), SLOW_STARTED.notified())
            .await
            .expect("the slow request reached the app");
        let mut refused = TcpStream::connect(addr).await.unwrap();
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(5), refused.read_to_string(&mut answer))
            .await
            .expect("refused in time")
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        drop(busy);
        stop.send(()).unwrap();
        handle.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_body_that_trickles_past_its_deadline_gets_408_and_the_connection_closes() {
        let (addr, stop, handle) = start_with(|s| s.request_body_timeout(Duration::from_millis(300))).await;
        // A whole body is served.
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello")
            .await
            .unwrap();
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("hello"), "{answer}");
        // A body that stops half way is answered 408 and closed.
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nhel")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer)).await;
        assert!(read.is_ok(), "the stalled request was not answered and closed");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        stop.send(()).unwrap();
        handle.await.unwrap().unwrap();
    }
}
