//! Requests per second of one stateless rmcp tool server, three ways, side by
//! side in one run on loopback:
//!
//! 1. **plain rmcp**: no authentication;
//! 2. **rmcp + jwt-authorizer**: the same service behind jwt-authorizer's
//!    layer, keys from the issuer's JWKS, `iss`, `aud` and `exp` checked and
//!    the required scope checked by its claims checker;
//! 3. **rmcp-guard**: `Guard::new(rs).stateless()`, trusting the same issuer,
//!    requiring the same scope.
//!
//! ```text
//! cargo run --release --manifest-path compare/Cargo.toml -- [--secs 10] [--rounds 3] [--clients 32] [--callers 1000] [--client-threads 1] [--alg RS256|ES256]
//! ```
//!
//! Every server answers `tools/call` of one `echo` tool with JSON, without
//! sessions (rmcp's `legacy_session_mode(false)` and `json_response(true)`,
//! as `Guard::stateless` sets them), listens on `127.0.0.1:0` and sets
//! `TCP_NODELAY` on every connection. Plain rmcp and jwt-authorizer are
//! served by `axum::serve` (as their users would), the guarded one by
//! `rmcp_guard::serve` (as ours are told to). Each server runs on a
//! one-worker runtime of its own, whose threads' CPU time is read from
//! `/proc` (`schedstat`): CPU per request depends much less on how busy the
//! machine is than the rates do.
//!
//! The clients (one HTTP/1.1 keep-alive connection each, hyper's own client,
//! calls one after the other on it, every answer parsed and checked) send
//! the same bytes to every server, bearer token included. Two scenarios, in
//! turn within every round so that a drift in machine load hits all three
//! servers alike:
//!
//! - **one token**: every request carries the same token;
//! - **many callers**: `--callers` distinct tokens (distinct `sub`), each
//!   client cycling through its share, so that every token is seen again
//!   only after the others (a cache has to hold them all).
//!
//! Tokens are RS256 (`--alg ES256` for ECDSA P-256), signed by the test kit's issuer, with `aud` naming both
//! authenticated servers, so that both get the very same bytes.
//! jwt-authorizer verifies the signature on every request; rmcp-guard
//! answers a token it has verified from its verified-token cache.
//! rmcp-guard's per-caller request limits stay on (their cost is in the
//! numbers) with a rate, burst and in-flight bound no caller reaches here:
//! the default (20 requests/s per caller) would refuse a load test's one
//! token.
//!
//! Targets (issue 11): guarded / plain >= 0.90, guarded / jwt-authorizer >=
//! 1.5. This is a program, not a test: it reports, it does not assert on
//! time.

use std::net::{Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::serve::ListenerExt;
use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use jwt_authorizer::{IntoLayer, JwtAuthorizer, Validation};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{ServerCapabilities, ServerConfig};
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ServerHandler, tool, tool_handler, tool_router};
use rmcp_guard::Guard;
use rmcp_guard::limit::{Rate as LimitRate, RequestLimits};
use rmcp_guard::oauth::{Issuer, ResourceServer};
use rmcp_guard_testkit::{KeyAlg, TestIssuer};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tower::ServiceExt;

/// The scope both authenticated servers require.
const SCOPE: &str = "mcp:tools";
/// The MCP endpoint's path on every server.
const PATH: &str = "/mcp";
/// Each phase drives its server this long before counting.
const WARM_UP: Duration = Duration::from_secs(1);
/// A single request (or connection) that takes longer than this ends the
/// run: nothing here should.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a server may take to stop.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// Bounds on the command-line settings (the run's length is bounded by
/// `secs * rounds`).
const MAX_SECS: u64 = 120;
const MAX_ROUNDS: usize = 20;
const MAX_CLIENTS: usize = 1024;
const MAX_CALLERS: usize = 100_000;

// ---------------------------------------------------------------------------
// The tool server, the same for all three.

/// One tool, `echo`.
#[derive(Clone)]
struct Tools {
    tool_router: Arc<ToolRouter<Self>>,
}

/// Arguments of `echo`.
#[derive(serde::Deserialize, schemars::JsonSchema)]
struct EchoArgs {
    /// The text to send back.
    text: String,
}

#[tool_router]
impl Tools {
    /// The tool, sharing one router (as `secure_server` does): stateless
    /// servers make a handler per request, and building the router each
    /// time would cost all three more than the guard itself.
    fn new() -> Self {
        static ROUTER: std::sync::LazyLock<Arc<ToolRouter<Tools>>> =
            std::sync::LazyLock::new(|| Arc::new(Tools::tool_router()));
        Tools {
            tool_router: ROUTER.clone(),
        }
    }

    #[tool(description = "Echo the text back")]
    async fn echo(&self, Parameters(args): Parameters<EchoArgs>) -> String {
        args.text
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Tools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }
}

/// rmcp's Streamable HTTP service without sessions, answering with JSON:
/// what `Guard::stateless` builds inside the guard.
fn stateless_rmcp() -> StreamableHttpService<Tools, NeverSessionManager> {
    let config = StreamableHttpServerConfig::default()
        .with_sse_keep_alive(None)
        .with_legacy_session_mode(false)
        .with_json_response(true);
    StreamableHttpService::new(|| Ok(Tools::new()), Arc::new(NeverSessionManager::default()), config)
}

// ---------------------------------------------------------------------------
// The servers.

/// A one-worker runtime of its own for one server, whose threads' CPU time
/// can be read.
struct ServerRuntime {
    rt: tokio::runtime::Runtime,
    threads: Arc<Mutex<Vec<String>>>,
}

impl ServerRuntime {
    /// `name` names its threads (for a profiler; at most 15 bytes).
    fn new(name: &str) -> ServerRuntime {
        let threads = Arc::new(Mutex::new(Vec::new()));
        let seen = threads.clone();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(name)
            .enable_all()
            .on_thread_start(move || {
                // `/proc/thread-self` links to `{pid}/task/{tid}`.
                if let Ok(path) = std::fs::read_link("/proc/thread-self") {
                    seen.lock()
                        .expect("not poisoned")
                        .push(path.to_string_lossy().into_owned());
                }
            })
            .build()
            .expect("server runtime");
        ServerRuntime { rt, threads }
    }

    /// CPU time of the runtime's threads so far (from `schedstat`, in ns; a
    /// thread that has exited no longer counts).
    fn cpu(&self) -> Duration {
        let threads = self.threads.lock().expect("not poisoned");
        let ns: u64 = threads
            .iter()
            .filter_map(|t| std::fs::read_to_string(format!("/proc/{t}/schedstat")).ok())
            .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
            .sum();
        Duration::from_nanos(ns)
    }
}

/// A running server: its address, its runtime, and how to stop it.
struct Server {
    name: &'static str,
    addr: SocketAddr,
    runtime: ServerRuntime,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Server {
    fn url(&self) -> String {
        format!("http://{}{PATH}", self.addr)
    }

    /// Stop accepting, let the open connections finish, then drop the
    /// runtime (which ends whatever is left within [`SHUTDOWN_TIMEOUT`]).
    fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.runtime.rt.shutdown_timeout(SHUTDOWN_TIMEOUT);
    }
}

async fn bind() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local address");
    (listener, addr)
}

/// `app` served by `axum::serve` with `TCP_NODELAY`, until `rx` fires.
async fn axum_serve(listener: TcpListener, app: axum::Router, rx: oneshot::Receiver<()>) {
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let _ = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = rx.await;
        })
        .await;
}

/// Server 1, plain rmcp.
fn start_plain() -> Server {
    let runtime = ServerRuntime::new("plain");
    let (tx, rx) = oneshot::channel();
    let addr = runtime.rt.block_on(async {
        let (listener, addr) = bind().await;
        let app = axum::Router::new().route_service(PATH, stateless_rmcp());
        tokio::spawn(axum_serve(listener, app, rx));
        addr
    });
    Server {
        name: "plain rmcp",
        addr,
        runtime,
        shutdown: Some(tx),
    }
}

/// The claims jwt-authorizer decodes (and hands to the handler, as
/// `TokenData<Claims>` in the request's extensions).
#[derive(Clone, serde::Deserialize)]
struct Claims {
    #[allow(dead_code)] // decoded as a handler would use it
    sub: String,
    #[serde(default)]
    scope: String,
}

/// Server 2, rmcp behind jwt-authorizer: keys from the JWKS, `iss` and
/// `aud` checked (`exp` is by default), and the scope by a claims checker.
fn start_jwt_authorizer(issuer: &TestIssuer) -> Server {
    let runtime = ServerRuntime::new("jwt-authz");
    let (tx, rx) = oneshot::channel();
    let addr = runtime.rt.block_on(async {
        let (listener, addr) = bind().await;
        let audience = format!("http://{addr}{PATH}");
        let authorizer = JwtAuthorizer::<Claims>::from_jwks_url(&issuer.jwks_uri())
            .validation(Validation::new().iss(&[issuer.issuer()]).aud(&[audience]))
            .check(|claims: &Claims| claims.scope.split(' ').any(|s| s == SCOPE))
            .build()
            .await
            .expect("jwt-authorizer");
        // jwt-authorizer's rejections are axum 0.7 responses: give rmcp's
        // answers the same type (one box around the body).
        let rmcp =
            ServiceExt::<Request<axum::body::Body>>::map_response(stateless_rmcp(), |r| r.map(axum07::body::Body::new));
        let service = tower::Layer::layer(&authorizer.into_layer(), rmcp);
        let app = axum::Router::new().route_service(PATH, service);
        tokio::spawn(axum_serve(listener, app, rx));
        addr
    });
    Server {
        name: "rmcp + jwt-authorizer",
        addr,
        runtime,
        shutdown: Some(tx),
    }
}

/// Per-caller limits that run on every request but that no caller here
/// reaches.
fn unreachable_limits() -> RequestLimits {
    RequestLimits::default()
        .rate(LimitRate::per_second(NonZeroU32::MAX))
        .burst(u32::MAX)
        .in_flight(u32::MAX)
}

/// Server 3, rmcp-guard: `Guard::new(rs).stateless()`.
fn start_guarded(issuer: &TestIssuer) -> Server {
    let runtime = ServerRuntime::new("guard");
    let (tx, rx) = oneshot::channel::<()>();
    let addr = runtime.rt.block_on(async {
        let (listener, addr) = bind().await;
        let rs = ResourceServer::builder(
            format!("http://{addr}{PATH}"),
            Issuer::with_jwks_uri(issuer.issuer(), issuer.jwks_uri()),
        )
        .required_scopes([SCOPE])
        .build()
        .expect("resource server");
        rs.warm_up().await.expect("issuer keys");
        let app = Guard::new(rs)
            .stateless()
            .limits(unreachable_limits())
            .router(|| Ok(Tools::new()));
        tokio::spawn(async move {
            let _ = rmcp_guard::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
        });
        addr
    });
    Server {
        name: "rmcp-guard (Guard)",
        addr,
        runtime,
        shutdown: Some(tx),
    }
}

// ---------------------------------------------------------------------------
// The clients.

/// One client: one keep-alive connection, calls one after the other.
struct Client {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: HeaderValue,
    /// The `Authorization` values it sends, in turn.
    auths: Vec<HeaderValue>,
    turn: usize,
    next_id: u64,
}

impl Client {
    async fn connect(addr: SocketAddr, auths: Vec<HeaderValue>) -> Client {
        let tcp = tokio::time::timeout(REQUEST_TIMEOUT, tokio::net::TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        tcp.set_nodelay(true).expect("TCP_NODELAY");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .expect("HTTP/1.1 handshake");
        // Ends when the client (its sender) is dropped.
        tokio::spawn(conn);
        Client {
            sender,
            host: HeaderValue::from_str(&addr.to_string()).expect("an address is a header value"),
            auths,
            turn: 0,
            next_id: 1,
        }
    }

    /// Call `echo` once; the answer must be its text back, for this id.
    async fn echo(&mut self) {
        let id = self.next_id;
        self.next_id += 1;
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"load"}}}}}}"#
        );
        let mut request = Request::post(PATH)
            .header(header::HOST, self.host.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json, text/event-stream")
            .body(Full::new(Bytes::from(body)))
            .expect("a valid request");
        if !self.auths.is_empty() {
            let auth = self.auths[self.turn % self.auths.len()].clone();
            self.turn = self.turn.wrapping_add(1);
            request.headers_mut().insert(header::AUTHORIZATION, auth);
        }
        let call = async {
            self.sender.ready().await.expect("connection open");
            let response = self.sender.send_request(request).await.expect("response");
            let status = response.status();
            let body = response.into_body().collect().await.expect("body").to_bytes();
            (status, body)
        };
        let (status, body) = tokio::time::timeout(REQUEST_TIMEOUT, call)
            .await
            .expect("an answer in time");
        assert_eq!(status, StatusCode::OK, "every load request succeeds: {body:?}");
        let answer: Value = serde_json::from_slice(&body).expect("a JSON answer");
        assert_eq!(answer["id"], id, "{answer}");
        assert_eq!(answer["result"]["content"][0]["text"], "load", "{answer}");
    }
}

/// What a phase measured of one server.
#[derive(Clone, Copy)]
struct Measured {
    /// Requests per second.
    per_second: f64,
    /// Server CPU time per request, in microseconds.
    cpu_us: f64,
}

/// Drive `server` with `clients` clients for [`WARM_UP`], then count for
/// `measure`. `tokens` are shared out: client `i` sends tokens `i`,
/// `i + clients`, ... in turn.
async fn drive(server: &Server, tokens: &[HeaderValue], clients: usize, measure: Duration) -> Measured {
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(clients);
    for i in 0..clients {
        let auths = if tokens.is_empty() {
            Vec::new()
        } else {
            tokens.iter().skip(i % tokens.len()).step_by(clients).cloned().collect()
        };
        let mut client = Client::connect(server.addr, auths).await;
        let (measuring, stop, done) = (measuring.clone(), stop.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                client.echo().await;
                if measuring.load(Ordering::Relaxed) {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(WARM_UP).await;
    measuring.store(true, Ordering::Relaxed);
    let start = Instant::now();
    let cpu_start = server.runtime.cpu();
    tokio::time::sleep(measure).await;
    let count = done.load(Ordering::Relaxed);
    let cpu = server.runtime.cpu() - cpu_start;
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("client task");
    }
    Measured {
        per_second: count as f64 / elapsed,
        cpu_us: cpu.as_secs_f64() * 1e6 / count.max(1) as f64,
    }
}

/// A request without a token must be refused by both authenticated servers
/// (and answered by plain rmcp), so that the numbers measure what they say.
async fn check_auth_is_on(servers: &[Server; 3], token: &HeaderValue) {
    for (server, expected) in servers
        .iter()
        .zip([StatusCode::OK, StatusCode::UNAUTHORIZED, StatusCode::UNAUTHORIZED])
    {
        let mut client = Client::connect(server.addr, Vec::new()).await;
        let request = Request::post(PATH)
            .header(header::HOST, client.host.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json, text/event-stream")
            .body(Full::new(Bytes::from_static(
                br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
            )))
            .expect("a valid request");
        client.sender.ready().await.expect("connection open");
        let response = tokio::time::timeout(REQUEST_TIMEOUT, client.sender.send_request(request))
            .await
            .expect("an answer in time")
            .expect("response");
        assert_eq!(response.status(), expected, "{} without a token", server.name);
        let _ = response.into_body().collect().await;
        let mut client = Client::connect(server.addr, vec![token.clone()]).await;
        client.echo().await;
    }
}

// ---------------------------------------------------------------------------
// The run.

struct Settings {
    secs: u64,
    rounds: usize,
    clients: usize,
    callers: usize,
    client_threads: usize,
    alg: KeyAlg,
}

fn settings() -> Settings {
    let mut s = Settings {
        secs: 10,
        rounds: 3,
        clients: 32,
        callers: 1000,
        client_threads: 1,
        alg: KeyAlg::Rs256,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = |max: u64| -> u64 {
            let v = args
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("{flag} takes a number"));
            assert!((1..=max).contains(&v), "{flag} is between 1 and {max}");
            v
        };
        match flag.as_str() {
            "--secs" => s.secs = value(MAX_SECS),
            "--rounds" => s.rounds = value(MAX_ROUNDS as u64) as usize,
            "--clients" => s.clients = value(MAX_CLIENTS as u64) as usize,
            "--callers" => s.callers = value(MAX_CALLERS as u64) as usize,
            "--client-threads" => s.client_threads = value(64) as usize,
            "--alg" => {
                s.alg = match args.next().as_deref() {
                    Some("RS256") | Some("rs256") => KeyAlg::Rs256,
                    Some("ES256") | Some("es256") => KeyAlg::Es256,
                    _ => panic!("--alg is RS256 or ES256"),
                }
            }
            other => panic!(
                "unknown argument {other}; known: --secs N --rounds N --clients N --callers N --client-threads N --alg RS256|ES256"
            ),
        }
    }
    s
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    (v[(v.len() - 1) / 2] + v[v.len() / 2]) / 2.0
}

fn main() {
    let s = settings();
    let clients_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(s.client_threads)
        .thread_name("clients")
        .enable_all()
        .build()
        .expect("client runtime");
    let issuer = clients_rt.block_on(TestIssuer::start()).expect("test issuer");

    let servers = [start_plain(), start_jwt_authorizer(&issuer), start_guarded(&issuer)];
    // Both authenticated servers are named in `aud`: the very same token
    // bytes go to each.
    let audiences = [servers[1].url(), servers[2].url()];
    let sign = |sub: String| -> HeaderValue {
        let token = issuer
            .token()
            .subject(sub)
            .audiences(audiences.clone())
            .scope(SCOPE)
            .client_id("compare")
            .algorithm(s.alg)
            .expires_in(Duration::from_secs(3600))
            .sign();
        HeaderValue::from_str(&format!("Bearer {token}")).expect("a token is a header value")
    };
    let one = vec![sign("caller-0".into())];
    let many: Vec<HeaderValue> = (0..s.callers).map(|i| sign(format!("caller-{i}"))).collect();
    let scenarios: [(String, &[HeaderValue]); 2] =
        [("one token".into(), &one), (format!("{} callers", s.callers), &many)];

    clients_rt.block_on(check_auth_is_on(&servers, &one[0]));

    println!(
        "compare: stateless JSON tools/call, {} keep-alive clients on {} client thread(s), {} rounds of {} s per server \
         and scenario (after {} s warm-up each), servers on one worker thread each",
        s.clients,
        s.client_threads,
        s.rounds,
        s.secs,
        WARM_UP.as_secs()
    );
    println!(
        "  tokens: {}, iss + aud + exp + scope checked by both authenticated servers; rmcp-guard's per-caller \
         limits on, with bounds no caller reaches",
        s.alg.name()
    );
    println!("  load average at start: {}", load_average());
    let started = Instant::now();
    let measure = Duration::from_secs(s.secs);
    // results[scenario][server] = one Measured per round
    let mut results: Vec<Vec<Vec<Measured>>> = vec![vec![Vec::new(); servers.len()]; scenarios.len()];
    for round in 1..=s.rounds {
        for (k, (scenario, tokens)) in scenarios.iter().enumerate() {
            let mut line = format!("  round {round}, {scenario:<14}");
            for (i, server) in servers.iter().enumerate() {
                let m = clients_rt.block_on(drive(server, tokens, s.clients, measure));
                results[k][i].push(m);
                line.push_str(&format!(
                    " | {} {:>6.0} req/s {:>6.1} us CPU",
                    server.name, m.per_second, m.cpu_us
                ));
            }
            println!("{line}");
        }
    }
    let load_end = load_average();

    println!("\n  medians over {} rounds:", s.rounds);
    println!(
        "  {:<14} {:<24} {:>8} {:>10} {:>10} {:>12}",
        "scenario", "server", "req/s", "CPU us", "req/s per", "rate ratio"
    );
    println!(
        "  {:<14} {:<24} {:>8} {:>10} {:>10} {:>12}",
        "", "", "", "per req", "CPU core", "vs plain"
    );
    let mut verdicts = Vec::new();
    for (k, (scenario, _)) in scenarios.iter().enumerate() {
        let r = &results[k];
        // Ratios per round (the three servers of a round ran back to back),
        // then their median.
        let ratio = |a: usize, b: usize, f: fn(&Measured) -> f64| {
            median(r[a].iter().zip(&r[b]).map(|(x, y)| f(x) / f(y)).collect())
        };
        for (i, server) in servers.iter().enumerate() {
            let rate = median(r[i].iter().map(|m| m.per_second).collect());
            let cpu = median(r[i].iter().map(|m| m.cpu_us).collect());
            println!(
                "  {scenario:<14} {:<24} {rate:>8.0} {cpu:>10.1} {:>10.0} {:>12.3}",
                server.name,
                1e6 / cpu,
                ratio(i, 0, |m| m.per_second)
            );
        }
        let rate = |m: &Measured| m.per_second;
        let capacity = |m: &Measured| 1.0 / m.cpu_us;
        verdicts.push(format!(
            "  {scenario:<14} guarded / plain:          req/s {:.3}, per CPU {:.3}   (target >= 0.90)\n  \
             {scenario:<14} guarded / jwt-authorizer: req/s {:.3}, per CPU {:.3}   (target >= 1.5)",
            ratio(2, 0, rate),
            ratio(2, 0, capacity),
            ratio(2, 1, rate),
            ratio(2, 1, capacity),
        ));
    }
    println!("\n  ratios (median of per-round ratios; \"per CPU\" = requests per second of server CPU):");
    for v in verdicts {
        println!("{v}");
    }
    println!("\n  load average at end: {load_end}; done in {:.0?}", started.elapsed());

    for server in servers {
        server.stop();
    }
    drop(issuer);
    clients_rt.shutdown_timeout(SHUTDOWN_TIMEOUT);
}
