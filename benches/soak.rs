//! Soak: a guarded server under mixed traffic for a bounded time, its memory
//! watched, an upstream taken down and brought back.
//!
//! ```text
//! cargo bench --bench soak                      # 120 s, 8 clients
//! cargo bench --bench soak -- --secs 30 --clients 16 --max-requests 200000
//! cargo bench --bench soak -- --abandon-every 4 --idle-sockets 64
//! ```
//!
//! In one process, on loopback only, everything it starts stopped at the end:
//!
//! - **the server**: the stack of `examples/secure_server.rs` through
//!   [`rmcp_guard::serve`]: [`Guard`] with the shipped RBAC policy and
//!   sessions (rmcp's session manager, bound to their callers), tools `echo`
//!   and `whoami`. It trusts the testkit [`TestIssuer`] (JWTs, keys from its
//!   JWKS) and an RFC 7662 introspection endpoint written below (opaque
//!   tokens), whose circuit breaker opens after 3 failures for 2 s.
//! - **the traffic**, `--clients` concurrent loops (default 8), each
//!   request one of, in turn:
//!   `valid` (a `tools/call` on the client's long-lived session, with the
//!   client's own token, at most one every 100 ms: a well-behaved caller
//!   within the default per-caller rate of 20/s),
//!   `bad_token` (expired, wrong audience, garbage or no token: 401),
//!   `churn` (open a session with one shared token, call, close it: 2 in 10),
//!   `opaque` (a session opened with a fresh opaque token, so introspection is
//!   asked, a call, close: 2 in 10).
//!   With `--abandon-every N`, every Nth churned session is left open (as a
//!   careless or hostile client leaves it): only a per-principal session cap
//!   keeps memory flat then (default 0: every session is closed).
//!   `--idle-sockets N` (default 16) connections send half a request line and
//!   wait; the header-read timeout must close them (each reconnects, so the
//!   pressure stays); the count of closes is printed.
//!   "Requests" are operations: opening a session is `initialize` and
//!   `notifications/initialized`, two HTTP requests.
//! - **the outage**: the introspection endpoint is stopped from 30 % to 55 %
//!   of the run and started again on the same port.
//!
//! It prints the RSS of the process (server and clients; `/proc/self/status`)
//! at the start, its peak and at the end, and the answers by kind and status,
//! and **fails** (exit status 1) when:
//!
//! - any answer is a 5xx other than the designed 503: a 503
//!   `temporarily_unavailable` to a request whose token goes to the
//!   introspection endpoint (`opaque`, and garbage tokens, which are not JWTs
//!   of the issuer), while it is down or its breaker is open;
//! - memory keeps growing: the RSS at the end is above the plateau (the
//!   highest RSS sampled between 20 % and 60 % of the run, after warm-up)
//!   by more than 16 MiB + 20 %;
//! - the introspection share never got a 200 again after the outage ended;
//! - a well-behaved caller (`valid`, `valid_open`) got anything but a 200:
//!   what the others do must never cost it an answer.
//!
//! 429 (per-principal session caps, rate limits) is a designed answer, counted
//! and not a failure, whichever kind of request gets it.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use common::{SCOPE, Tools};
use rmcp_guard::Guard;
use rmcp_guard::breaker::BreakerConfig;
use rmcp_guard::oauth::{ClientAuth, Issuer, ResourceServer};
use rmcp_guard::policy::PolicyEngine;
use rmcp_guard_testkit::{McpClient, McpError, Protocol, TestIssuer};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};

const AUDIENCE_OPAQUE_ISSUER: &str = "soak-introspection";

struct Args {
    secs: u64,
    clients: usize,
    max_requests: u64,
    abandon_every: u64,
    idle_sockets: usize,
}

fn args() -> Args {
    let mut a = Args {
        secs: 120,
        clients: 8,
        max_requests: 2_000_000,
        abandon_every: 0,
        idle_sockets: 16,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| -> u64 {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} takes a number"))
        };
        match arg.as_str() {
            "--secs" => a.secs = value("--secs").clamp(5, 3600),
            "--clients" => a.clients = value("--clients").clamp(1, 256) as usize,
            "--max-requests" => a.max_requests = value("--max-requests").max(1),
            "--abandon-every" => a.abandon_every = value("--abandon-every"),
            "--idle-sockets" => a.idle_sockets = value("--idle-sockets").min(1000) as usize,
            // `cargo bench` passes `--bench`; ignore anything else too.
            _ => {}
        }
    }
    a
}

// ---------------------------------------------------------------------------
// Memory.

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

// ---------------------------------------------------------------------------
// The circuit audit events, counted by state.

#[derive(Default, Clone)]
struct Circuit(Arc<Mutex<BTreeMap<String, u64>>>);

struct StateField<'a>(&'a mut Option<String>, &'a mut bool);

impl Visit for StateField<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "state" => *self.0 = Some(value.to_owned()),
            "event" => *self.1 = value == "circuit",
            _ => {}
        }
    }
    fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Circuit {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if event.metadata().target() != rmcp_guard::audit::TARGET {
            return;
        }
        let (mut state, mut circuit) = (None, false);
        event.record(&mut StateField(&mut state, &mut circuit));
        if let (true, Some(state)) = (circuit, state) {
            *self.0.lock().unwrap().entry(state).or_default() += 1;
        }
    }
}

// ---------------------------------------------------------------------------
// The introspection endpoint: stopped and started again on the same port.

struct Introspection {
    addr: SocketAddr,
    audience: Arc<Mutex<String>>,
    running: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl Introspection {
    async fn start() -> Introspection {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("bind");
        let mut server = Introspection {
            addr: listener.local_addr().expect("address"),
            audience: Arc::default(),
            running: None,
        };
        server.serve(listener);
        server
    }

    fn issuer(&self) -> String {
        format!("http://{}/{AUDIENCE_OPAQUE_ISSUER}", self.addr)
    }

    fn serve(&mut self, listener: TcpListener) {
        async fn introspect(
            State((issuer, audience)): State<(String, Arc<Mutex<String>>)>,
            body: String,
        ) -> axum::Json<Value> {
            let token = url::form_urlencoded::parse(body.as_bytes())
                .find(|(k, _)| k == "token")
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default();
            let Some(subject) = token.strip_prefix("opaque-") else {
                return axum::Json(json!({"active": false}));
            };
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            let audience = audience.lock().unwrap().clone();
            axum::Json(json!({
                "active": true, "iss": issuer, "sub": format!("opaque-user-{}", subject.len() % 4),
                "client_id": "soak", "aud": audience, "scope": SCOPE, "exp": now + 600, "token_type": "Bearer",
            }))
        }
        let app = Router::new()
            .route("/introspect", post(introspect))
            .with_state((self.issuer(), self.audience.clone()));
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = rmcp_guard::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
        });
        self.running = Some((tx, task));
    }

    async fn stop(&mut self) {
        if let Some((tx, task)) = self.running.take() {
            let _ = tx.send(());
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }

    async fn restart(&mut self) {
        // The port was ours a moment ago; retry briefly if the kernel is slow to free it.
        for _ in 0..50 {
            if let Ok(listener) = TcpListener::bind(self.addr).await {
                self.serve(listener);
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!("soak: could not listen on {} again", self.addr);
    }
}

// ---------------------------------------------------------------------------
// Counting answers.

/// How many answers of one kind and outcome, and how long they took.
#[derive(Default, Clone, Copy)]
struct Stat {
    n: u64,
    total_us: u64,
    max_us: u64,
}

impl Stat {
    fn add(&mut self, other: Stat) {
        self.n += other.n;
        self.total_us += other.total_us;
        self.max_us = self.max_us.max(other.max_us);
    }
}

/// `(kind, outcome)` -> answers; `outcome` is a status (`200`, `401`, `503`),
/// or `rpc_error`, `transport`, `protocol`.
type Counts = BTreeMap<(&'static str, String), Stat>;

struct Shared {
    stop: AtomicBool,
    requests: AtomicU64,
    max_requests: u64,
    url: String,
    /// Set when an `opaque` request got a 200 after the outage ended.
    recovered: AtomicBool,
    outage_over: AtomicBool,
    /// 5xx answers that are not the designed 503 (with what they said).
    undesigned: Mutex<Vec<String>>,
}

impl Shared {
    fn running(&self) -> bool {
        !self.stop.load(Ordering::Relaxed) && self.requests.load(Ordering::Relaxed) < self.max_requests
    }
}

fn outcome_of<T>(result: &Result<T, McpError>) -> (String, String) {
    match result {
        Ok(_) => ("200".into(), String::new()),
        Err(McpError::Http { status, body, .. }) => (status.as_u16().to_string(), body.clone()),
        Err(McpError::JsonRpc { code, .. }) => ("rpc_error".into(), code.to_string()),
        Err(McpError::Transport(_)) => ("transport".into(), String::new()),
        Err(_) => ("protocol".into(), String::new()),
    }
}

struct Worker {
    id: usize,
    shared: Arc<Shared>,
    issuer: Arc<TestIssuer>,
    http: reqwest::Client,
    counts: Counts,
    session: Option<McpClient>,
    token: String,
    churn_token: String,
    churns: u64,
    abandon_every: u64,
    /// When the well-behaved caller of this worker may call again.
    next_valid: Instant,
}

/// The pace of the well-behaved callers: 10 calls a second each, half the
/// default per-caller rate.
const VALID_INTERVAL: Duration = Duration::from_millis(100);

impl Worker {
    fn record(&mut self, kind: &'static str, outcome: String, body: &str, may_be_unavailable: bool, took: Duration) {
        self.shared.requests.fetch_add(1, Ordering::Relaxed);
        if outcome.starts_with('5') {
            let designed = outcome == "503" && may_be_unavailable && body.contains("temporarily_unavailable");
            if !designed {
                let mut undesigned = self.shared.undesigned.lock().unwrap();
                if undesigned.len() < 20 {
                    undesigned.push(format!(
                        "{kind}: {outcome} {}",
                        body.chars().take(200).collect::<String>()
                    ));
                }
            }
        }
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.counts.entry((kind, outcome)).or_default().add(Stat {
            n: 1,
            total_us: us,
            max_us: us,
        });
    }

    async fn connect(&self, token: &str) -> Result<McpClient, McpError> {
        McpClient::connect(self.shared.url.clone(), Protocol::V2025_11_25)
            .bearer(token)
            .http_client(self.http.clone())
            .send()
            .await
    }

    async fn run(mut self) -> Counts {
        let mut i = self.id;
        while self.shared.running() {
            match i % 10 {
                0..=3 => {
                    if Instant::now() >= self.next_valid {
                        self.next_valid = Instant::now() + VALID_INTERVAL;
                        self.valid().await;
                    }
                }
                4 | 9 => self.bad_token(i / 10).await,
                5 | 6 => self.churn().await,
                _ => self.opaque(i).await,
            }
            i += 1;
        }
        if let Some(session) = self.session.take() {
            let _ = session.close().await;
        }
        self.counts
    }

    async fn valid(&mut self) {
        if self.session.is_none() {
            let token = self.token.clone();
            let t = Instant::now();
            let result = self.connect(&token).await;
            let (outcome, body) = outcome_of(&result);
            self.record("valid_open", outcome, &body, false, t.elapsed());
            self.session = result.ok();
            return;
        }
        let Some(session) = &self.session else { return };
        let t = Instant::now();
        let result = session.call_tool("echo", json!({"text": "soak"})).await;
        let took = t.elapsed();
        let (outcome, body) = outcome_of(&result);
        if result.is_err() {
            // A lost session (404) or a shed connection: open a new one next time.
            if let Some(session) = self.session.take() {
                let _ = session.close().await;
            }
        }
        self.record("valid", outcome, &body, false, took);
    }

    async fn bad_token(&mut self, round: usize) {
        let url = self.shared.url.clone();
        let (kind, token) = match round % 4 {
            0 => (
                "bad_expired",
                Some(self.issuer.token().audience(url.clone()).scope(SCOPE).expired().sign()),
            ),
            1 => (
                "bad_audience",
                Some(
                    self.issuer
                        .token()
                        .audience("https://elsewhere.example")
                        .scope(SCOPE)
                        .sign(),
                ),
            ),
            2 => ("bad_garbage", Some(format!("garbage-{round}"))),
            _ => ("bad_none", None),
        };
        let mut request = self
            .http
            .post(&url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "x"}}}).to_string());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let t = Instant::now();
        let (outcome, body) = match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16().to_string();
                let has_retry_after = response.headers().contains_key("retry-after");
                let body = response.text().await.unwrap_or_default();
                (status, if has_retry_after { body } else { String::new() })
            }
            Err(_) => ("transport".into(), String::new()),
        };
        // Garbage is not a JWT of the issuer: it goes to introspection.
        self.record(kind, outcome, &body, kind == "bad_garbage", t.elapsed());
    }

    async fn churn(&mut self) {
        let token = self.churn_token.clone();
        let t = Instant::now();
        let result = self.connect(&token).await;
        let (outcome, body) = outcome_of(&result);
        self.record("churn_open", outcome, &body, false, t.elapsed());
        if let Ok(session) = result {
            let t = Instant::now();
            let call = session.call_tool("whoami", json!({})).await;
            let (outcome, body) = outcome_of(&call);
            self.record("churn_call", outcome, &body, false, t.elapsed());
            self.churns += 1;
            if self.abandon_every > 0 && self.churns.is_multiple_of(self.abandon_every) {
                // Left open, as a careless or hostile client does: the
                // per-principal session cap must bound these.
                drop(session);
                return;
            }
            let t = Instant::now();
            let closed = session.close().await;
            let (outcome, body) = outcome_of(&closed);
            self.record("churn_close", outcome, &body, false, t.elapsed());
        }
    }

    async fn opaque(&mut self, i: usize) {
        // A new token each time: the introspection endpoint is asked.
        let token = format!("opaque-{}-{i}", self.id);
        let t = Instant::now();
        let result = self.connect(&token).await;
        let took = t.elapsed();
        let (outcome, body) = outcome_of(&result);
        if outcome == "200" && self.shared.outage_over.load(Ordering::Relaxed) {
            self.shared.recovered.store(true, Ordering::Relaxed);
        }
        self.record("opaque_open", outcome, &body, true, took);
        if let Ok(session) = result {
            let t = Instant::now();
            let call = session.call_tool("echo", json!({"text": "opaque"})).await;
            let (outcome, body) = outcome_of(&call);
            self.record("opaque_call", outcome, &body, true, t.elapsed());
            let _ = session.close().await;
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args = args();
    let circuit = Circuit::default();
    let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry().with(circuit.clone()));

    // Upstreams.
    let issuer = Arc::new(TestIssuer::start().await.expect("test issuer"));
    let mut introspection = Introspection::start().await;

    // The guarded server.
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("bind");
    let server_addr = listener.local_addr().expect("address");
    let url = format!("http://{server_addr}/mcp");
    *introspection.audience.lock().unwrap() = url.clone();
    let rs = ResourceServer::builder(url.clone(), Issuer::with_jwks_uri(issuer.issuer(), issuer.jwks_uri()))
        .issuer(Issuer::introspection(
            introspection.issuer(),
            format!("http://{}/introspect", introspection.addr),
            ClientAuth::client_secret("soak", "soak-secret").expect("client"),
        ))
        .required_scopes([SCOPE])
        .http_timeout(Duration::from_secs(2))
        .breaker(
            BreakerConfig::default()
                .failure_threshold(3)
                .cool_down(Duration::from_secs(2)),
        )
        .build()
        .expect("configuration");
    let app = Guard::new(rs)
        .policy(PolicyEngine::rbac_example().expect("policy"))
        .router(|| Ok(Tools::new()));
    let (server_tx, server_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let _ = rmcp_guard::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = server_rx.await;
            })
            .await;
    });

    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        requests: AtomicU64::new(0),
        max_requests: args.max_requests,
        url: url.clone(),
        recovered: AtomicBool::new(false),
        outage_over: AtomicBool::new(false),
        undesigned: Mutex::new(Vec::new()),
    });
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(args.clients * 2)
        .build()
        .expect("client");
    let lifetime = Duration::from_secs(args.secs + 300);
    let churn_token = issuer
        .token()
        .audience(url.clone())
        .scope(SCOPE)
        .subject("churner")
        .expires_in(lifetime)
        .sign();

    let duration = Duration::from_secs(args.secs);
    println!(
        "soak: {} s, {} clients, at most {} requests, {} idle sockets, abandon every {} churned session (0: none), against {url}",
        args.secs, args.clients, args.max_requests, args.idle_sockets, args.abandon_every
    );
    let rss_start = rss_kib();
    let started = Instant::now();

    // RSS sampler: (fraction of the run, KiB).
    let samples: Arc<Mutex<Vec<(f64, u64)>>> = Arc::default();
    let sampler = {
        let samples = samples.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            while !shared.stop.load(Ordering::Relaxed) {
                let at = started.elapsed().as_secs_f64() / duration.as_secs_f64();
                samples.lock().unwrap().push((at, rss_kib()));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };

    // Sockets that send half a request line and wait: the header-read
    // timeout must close them (each reconnects until the end, so the
    // pressure stays).
    let idle_closed = Arc::new(AtomicUsize::new(0));
    let mut idle = Vec::new();
    for _ in 0..args.idle_sockets {
        let (closed, shared) = (idle_closed.clone(), shared.clone());
        idle.push(tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while !shared.stop.load(Ordering::Relaxed) {
                let Ok(mut socket) = tokio::net::TcpStream::connect(server_addr).await else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                let _ = socket.write_all(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n").await;
                let mut buf = [0u8; 1024];
                while !shared.stop.load(Ordering::Relaxed) {
                    tokio::select! {
                        read = socket.read(&mut buf) => match read {
                            Ok(0) | Err(_) => {
                                closed.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                            // An error answer (408, 400) before the close.
                            Ok(_) => {}
                        },
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                }
            }
        }));
    }

    let active = Arc::new(AtomicUsize::new(args.clients));
    let mut workers = Vec::new();
    for id in 0..args.clients {
        let worker = Worker {
            id,
            shared: shared.clone(),
            issuer: issuer.clone(),
            http: http.clone(),
            counts: Counts::new(),
            session: None,
            token: issuer
                .token()
                .audience(url.clone())
                .scope(SCOPE)
                .subject(format!("soak-user-{id}"))
                .expires_in(lifetime)
                .sign(),
            churn_token: churn_token.clone(),
            churns: 0,
            abandon_every: args.abandon_every,
            next_valid: Instant::now(),
        };
        let active = active.clone();
        workers.push(tokio::spawn(async move {
            let counts = worker.run().await;
            active.fetch_sub(1, Ordering::Relaxed);
            counts
        }));
    }

    // The outage, then the end of the run.
    let down_at = duration.mul_f64(0.30);
    let up_at = duration.mul_f64(0.55);
    tokio::time::sleep_until((started + down_at).into()).await;
    if shared.running() {
        println!(
            "soak: {:>5.1} s introspection endpoint stopped",
            started.elapsed().as_secs_f64()
        );
        introspection.stop().await;
        tokio::time::sleep_until((started + up_at).into()).await;
        introspection.restart().await;
        shared.outage_over.store(true, Ordering::Relaxed);
        println!(
            "soak: {:>5.1} s introspection endpoint started again",
            started.elapsed().as_secs_f64()
        );
    }
    while started.elapsed() < duration && shared.running() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    shared.stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();

    let mut counts = Counts::new();
    for worker in workers {
        if let Ok(Ok(worker_counts)) = tokio::time::timeout(Duration::from_secs(30), worker).await {
            for (key, stat) in worker_counts {
                counts.entry(key).or_default().add(stat);
            }
        }
    }
    let _ = sampler.await;
    for task in idle {
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_end = rss_kib();

    // Stop everything started here.
    let _ = server_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
    introspection.stop().await;

    // Report.
    let samples = samples.lock().unwrap().clone();
    let rss_peak = samples
        .iter()
        .map(|(_, kib)| *kib)
        .chain([rss_start, rss_end])
        .max()
        .unwrap_or(0);
    let plateau = samples
        .iter()
        .filter(|(at, _)| (0.2..=0.6).contains(at))
        .map(|(_, kib)| *kib)
        .max()
        .unwrap_or(rss_start);
    let limit = plateau + 16 * 1024 + plateau / 5;
    let total: u64 = counts.values().map(|s| s.n).sum();
    println!(
        "\nsoak: {total} requests in {:.1} s ({:.0}/s), {} clients still running at the end",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        active.load(Ordering::Relaxed)
    );
    println!(
        "\n{:<14} {:>10} {:>10} {:>10} {:>10}",
        "kind", "outcome", "count", "mean ms", "max ms"
    );
    for ((kind, outcome), stat) in &counts {
        let mean = stat.total_us as f64 / stat.n.max(1) as f64 / 1000.0;
        let max = stat.max_us as f64 / 1000.0;
        println!("{kind:<14} {outcome:>10} {:>10} {mean:>10.2} {max:>10.2}", stat.n);
    }
    let mut by_status: BTreeMap<&str, u64> = BTreeMap::new();
    for ((_, outcome), stat) in &counts {
        *by_status.entry(outcome.as_str()).or_default() += stat.n;
    }
    println!("\nby status: {by_status:?}");
    println!("circuit audit events by new state: {:?}", circuit.0.lock().unwrap());
    println!(
        "idle half-request sockets: {} held at a time, closed by the server {} times",
        args.idle_sockets,
        idle_closed.load(Ordering::Relaxed)
    );
    println!(
        "\nRSS: start {}, peak {}, end {}; plateau (max between 20 % and 60 % of the run) {}",
        mib(rss_start),
        mib(rss_peak),
        mib(rss_end),
        mib(plateau)
    );
    println!("rule: end RSS must be <= plateau + 16 MiB + 20 % = {}", mib(limit));

    let mut failed = false;
    if rss_end > limit {
        println!("FAIL: memory keeps growing (end {} > {})", mib(rss_end), mib(limit));
        failed = true;
    }
    let undesigned = shared.undesigned.lock().unwrap();
    if !undesigned.is_empty() {
        println!("FAIL: 5xx other than the designed 503:");
        for line in undesigned.iter() {
            println!("  {line}");
        }
        failed = true;
    }
    let refused: Vec<String> = counts
        .iter()
        .filter(|((kind, outcome), _)| kind.starts_with("valid") && outcome != "200")
        .map(|((kind, outcome), stat)| format!("{kind} {outcome} x{}", stat.n))
        .collect();
    if !refused.is_empty() {
        println!("FAIL: well-behaved callers were refused: {}", refused.join(", "));
        failed = true;
    }
    if shared.outage_over.load(Ordering::Relaxed) && !shared.recovered.load(Ordering::Relaxed) {
        println!("FAIL: the introspection share never got a 200 after the endpoint came back");
        failed = true;
    }
    if failed {
        ExitCode::FAILURE
    } else {
        println!("soak: ok");
        ExitCode::SUCCESS
    }
}
