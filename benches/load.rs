//! Requests per second of the same rmcp echo server, plain and guarded, in
//! one run on loopback, in both of rmcp's modes.
//!
//! ```text
//! cargo bench --bench load
//! ```
//!
//! Every server is served by [`rmcp_guard::serve`] (so every socket has
//! `TCP_NODELAY`, plain rmcp's included), each on a one-worker runtime of its
//! own; the clients run on a two-worker runtime. Each client owns one
//! HTTP/1.1 keep-alive connection and calls `echo` on it, one call after the
//! other, for a fixed time; every answer is parsed and checked. The guarded
//! servers see the same token on every request (as a session does), so
//! after the first request it is answered from the verified-token cache.
//! Besides requests/s, each phase reads the CPU time of the server's threads
//! (`/proc/.../schedstat`): CPU per request, and its ratio to plain rmcp's,
//! depend much less on how busy the machine is than the rates do.
//!
//! - **stateless JSON**: no sessions, a `tools/call` is one POST answered
//!   with JSON. Plain rmcp, [`Guard`](rmcp_guard::Guard) (bearer layer,
//!   `.stateless()`), and `Guard` with the shipped default policy (step-up
//!   layer and `Guarded` deciding every call).
//! - **stateful SSE**: each client opens a session (`initialize` at
//!   `2025-11-25`, `notifications/initialized`), then sends `Mcp-Session-Id`
//!   and `MCP-Protocol-Version` on every call and reads the answer from an
//!   SSE stream. Plain rmcp and `Guard` with its default session binding.
//! - **sequential latency**: one client, one connection, calls in a row on a
//!   session (the case Nagle's algorithm would slow to ~40 ms a call).
//!
//! The throughput phases alternate (plain, guarded, ...) for several rounds
//! so that a drift in machine load hits every server; the summary gives the
//! mean rates, the median of the per-round ratios and the ratio of CPU per
//! request. Then paired phases drive plain rmcp and one guarded server at the
//! same time (half the clients each). Their rates tend to come out equal
//! whatever the servers cost (the clients share one runtime and take turns),
//! so the paired column that counts is the CPU ratio. Target: guarded /
//! plain >= 0.90.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    GuardedServer, Mode, start_guarded, start_guarded_with, start_guarded_with_policy, start_unguarded, token_for,
};
use rmcp_guard::oauth::Issuer;
use rmcp_guard_testkit::TestIssuer;
use serde_json::{Value, json};

/// Concurrent clients of one throughput phase (split between the servers of
/// a paired phase).
const CLIENTS: usize = 32;
const WARM_UP: Duration = Duration::from_secs(1);
const MEASURE: Duration = Duration::from_secs(2);
const ROUNDS: usize = 5;
/// Calls of the sequential-latency phase, after [`LATENCY_WARM_UP`] calls;
/// the phase also stops after [`LATENCY_BUDGET`].
const LATENCY_CALLS: usize = 2_000;
const LATENCY_WARM_UP: usize = 100;
const LATENCY_BUDGET: Duration = Duration::from_secs(5);
const PROTOCOL_VERSION: &str = "2025-11-25";

/// A server under load: its endpoint, the token it wants, its mode, and
/// the runtime it runs on.
#[derive(Clone, Copy)]
struct Target<'a> {
    url: &'a str,
    /// The clients' tokens, one per client in turn (none: no token). With
    /// sessions every client is its own caller, as real ones are: one token
    /// shared by all would meet the per-caller session bound.
    tokens: &'a [String],
    mode: Mode,
    cpu: &'a ServerRuntime,
}

/// A one-worker runtime of its own for one server, whose threads' CPU time
/// can be read: the CPU a server spends per request does not depend on how
/// busy the machine is, nor on how the clients are scheduled.
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

/// What a phase measured of one server.
#[derive(Clone, Copy)]
struct Rate {
    /// Requests per second.
    per_second: f64,
    /// Server CPU time per request, in microseconds.
    cpu_us: f64,
}

/// One client: one keep-alive connection, and a session in stateful mode.
struct Client {
    http: reqwest::Client,
    url: String,
    auth: Option<String>,
    session: Option<String>,
    next_id: u64,
}

impl Client {
    /// Connect to `target`; open a session in stateful mode.
    async fn open(target: Target<'_>, index: usize) -> Client {
        let http = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(1)
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        let mut client = Client {
            http,
            url: target.url.to_owned(),
            auth: (!target.tokens.is_empty()).then(|| format!("Bearer {}", target.tokens[index % target.tokens.len()])),
            session: None,
            next_id: 1,
        };
        if target.mode == Mode::Sessions {
            let initialize = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                "protocolVersion": PROTOCOL_VERSION, "capabilities": {},
                "clientInfo": {"name": "load", "version": "0"}}});
            let response = client.post(initialize.to_string()).send().await.expect("initialize");
            assert_eq!(response.status(), 200, "initialize succeeds");
            let session = response.headers()["mcp-session-id"]
                .to_str()
                .expect("ASCII session id")
                .to_owned();
            let answer = rpc_answer(&response.bytes().await.expect("initialize body"));
            assert_eq!(answer["result"]["protocolVersion"], PROTOCOL_VERSION, "{answer}");
            client.session = Some(session);
            let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
            let ack = client.post(initialized.to_string()).send().await.expect("initialized");
            assert_eq!(ack.status(), 202, "notifications/initialized accepted");
        }
        client
    }

    /// A POST with the headers of a Streamable HTTP client (and of the
    /// session, once there is one).
    fn post(&self, body: String) -> reqwest::RequestBuilder {
        let mut req = self
            .http
            .post(&self.url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body);
        if let Some(auth) = &self.auth {
            req = req.header("authorization", auth);
        }
        if let Some(session) = &self.session {
            req = req
                .header("mcp-session-id", session)
                .header("mcp-protocol-version", PROTOCOL_VERSION);
        }
        req
    }

    /// Call `echo` once; the answer (JSON or SSE) must be its text back.
    async fn echo(&mut self) {
        let id = self.next_id;
        self.next_id += 1;
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"load"}}}}}}"#
        );
        let response = self.post(body).send().await.expect("request");
        assert_eq!(response.status(), 200, "every load request succeeds");
        let answer = rpc_answer(&response.bytes().await.expect("body"));
        assert_eq!(answer["id"], id, "{answer}");
        assert_eq!(answer["result"]["content"][0]["text"], "load", "{answer}");
    }

    /// End the session, if any.
    async fn close(self) {
        if let Some(session) = &self.session {
            let mut req = self
                .http
                .delete(&self.url)
                .header("mcp-session-id", session)
                .header("mcp-protocol-version", PROTOCOL_VERSION);
            if let Some(auth) = &self.auth {
                req = req.header("authorization", auth);
            }
            let response = req.send().await.expect("delete session");
            assert!(response.status().is_success(), "session closed: {}", response.status());
        }
    }
}

/// The JSON-RPC response in a body: the body itself (JSON), or the `data:`
/// line of an SSE stream that carries a response (priming events and the
/// like carry none).
fn rpc_answer(body: &[u8]) -> Value {
    if let Ok(value) = serde_json::from_slice::<Value>(body) {
        return value;
    }
    let text = std::str::from_utf8(body).expect("UTF-8 body");
    text.lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .filter_map(|data| serde_json::from_str::<Value>(data.trim()).ok())
        .find(|message| message.get("id").is_some() && message.get("method").is_none())
        .unwrap_or_else(|| panic!("a JSON-RPC response in the SSE stream: {text}"))
}

/// Drive every target at once with `clients` concurrent clients each;
/// returns each target's requests/s over the measured window (warm-up
/// excluded) and its CPU time per request.
async fn drive(targets: &[Target<'_>], clients: usize) -> Vec<Rate> {
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let counters: Vec<Arc<AtomicU64>> = targets.iter().map(|_| Arc::new(AtomicU64::new(0))).collect();
    let mut tasks = Vec::with_capacity(clients * targets.len());
    for (target, done) in targets.iter().zip(&counters) {
        for index in 0..clients {
            let mut client = Client::open(*target, index).await;
            let (measuring, stop, done) = (measuring.clone(), stop.clone(), done.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    client.echo().await;
                    if measuring.load(Ordering::Relaxed) {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
                client.close().await;
            }));
        }
    }
    tokio::time::sleep(WARM_UP).await;
    measuring.store(true, Ordering::Relaxed);
    let start = Instant::now();
    let cpu_start: Vec<Duration> = targets.iter().map(|t| t.cpu.cpu()).collect();
    tokio::time::sleep(MEASURE).await;
    let counts: Vec<u64> = counters.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    let cpu: Vec<Duration> = targets.iter().zip(cpu_start).map(|(t, s)| t.cpu.cpu() - s).collect();
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("client task");
    }
    counts
        .into_iter()
        .zip(cpu)
        .map(|(n, cpu)| Rate {
            per_second: n as f64 / elapsed,
            cpu_us: cpu.as_secs_f64() * 1e6 / n.max(1) as f64,
        })
        .collect()
}

/// Per-call latency of one client calling in a row on one connection.
struct Latency {
    calls: usize,
    mean: Duration,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

async fn sequential(target: Target<'_>) -> Latency {
    let mut client = Client::open(target, 0).await;
    for _ in 0..LATENCY_WARM_UP {
        client.echo().await;
    }
    let mut samples = Vec::with_capacity(LATENCY_CALLS);
    let budget = Instant::now();
    while samples.len() < LATENCY_CALLS && budget.elapsed() < LATENCY_BUDGET {
        let start = Instant::now();
        client.echo().await;
        samples.push(start.elapsed());
    }
    client.close().await;
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    Latency {
        calls: samples.len(),
        mean: samples.iter().sum::<Duration>() / samples.len() as u32,
        p50: at(0.50),
        p99: at(0.99),
        max: samples[samples.len() - 1],
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    (v[(v.len() - 1) / 2] + v[v.len() / 2]) / 2.0
}

/// The rounds of one mode (`targets[0]` is plain rmcp, the reference),
/// then one paired phase of plain rmcp and each other target. Prints the
/// table.
async fn compare(title: &str, names: &[&str], targets: &[Target<'_>]) {
    println!(
        "\n{title}: {CLIENTS} clients, {ROUNDS} rounds of {}s per server",
        MEASURE.as_secs()
    );
    let mut rates: Vec<Vec<Rate>> = vec![Vec::new(); targets.len()];
    for round in 1..=ROUNDS {
        let mut line = format!("  round {round}:");
        for (i, target) in targets.iter().enumerate() {
            let r = drive(&[*target], CLIENTS).await[0];
            rates[i].push(r);
            line.push_str(&format!(
                "  {} {:.0} req/s ({:.1} us CPU)",
                names[i], r.per_second, r.cpu_us
            ));
        }
        println!("{line}");
    }
    let mut paired = Vec::new();
    for target in &targets[1..] {
        paired.push(drive(&[targets[0], *target], CLIENTS / 2).await);
    }

    println!(
        "  {:<24} {:>7} {:>7} {:>7} {:>8} {:>7} | {:>18} {:>7}",
        "server", "req/s", "median", "of", "CPU us", "CPU", "paired req/s", "paired"
    );
    println!(
        "  {:<24} {:>7} {:>7} {:>7} {:>8} {:>7} | {:>18} {:>7}",
        "", "", "ratio", "means", "per req", "ratio", "plain / this", "CPU rt"
    );
    let per_second = |r: &[Rate]| r.iter().map(|r| r.per_second).collect::<Vec<_>>();
    let cpu_us = |r: &[Rate]| r.iter().map(|r| r.cpu_us).collect::<Vec<_>>();
    let (plain, plain_cpu) = (mean(&per_second(&rates[0])), mean(&cpu_us(&rates[0])));
    for (i, (name, r)) in names.iter().zip(&rates).enumerate() {
        let ratios: Vec<f64> = rates[0]
            .iter()
            .zip(r)
            .map(|(p, g)| g.per_second / p.per_second)
            .collect();
        let cpu = mean(&cpu_us(r));
        let paired = match i {
            0 => String::new(),
            i => {
                let both = &paired[i - 1];
                format!(
                    "{:>8.0} / {:>7.0} {:>7.3}",
                    both[0].per_second,
                    both[1].per_second,
                    both[0].cpu_us / both[1].cpu_us
                )
            }
        };
        println!(
            "  {name:<24} {:>7.0} {:>7.3} {:>7.3} {cpu:>8.1} {:>7.3} | {paired}",
            mean(&per_second(r)),
            median(ratios),
            mean(&per_second(r)) / plain,
            plain_cpu / cpu
        );
    }
}

/// Every server on a runtime of its own, started before the clients'.
struct Servers {
    plain: common::PlainServer,
    guarded: GuardedServer,
    policed: GuardedServer,
    plain_sessions: common::PlainServer,
    guarded_sessions: GuardedServer,
}

async fn run(issuer: &TestIssuer, servers: &Servers, rts: &[ServerRuntime; 5]) {
    let Servers {
        plain,
        guarded,
        policed,
        plain_sessions,
        guarded_sessions,
    } = servers;
    for server in [guarded, policed, guarded_sessions] {
        server.rs.warm_up().await.expect("keys load");
    }
    let token_of = |server: &GuardedServer| token_for(issuer, server).expires_in(Duration::from_secs(600)).sign();
    let (token, policed_token) = ([token_of(guarded)], [token_of(policed)]);
    let sessions_tokens: Vec<String> = (0..CLIENTS)
        .map(|i| {
            token_for(issuer, guarded_sessions)
                .subject(format!("load-{i}"))
                .expires_in(Duration::from_secs(600))
                .sign()
        })
        .collect();

    let started = Instant::now();
    compare(
        "stateless JSON",
        &["plain rmcp", "Guard", "Guard + default policy"],
        &[
            Target {
                url: &plain.url,
                tokens: &[],
                mode: Mode::Stateless,
                cpu: &rts[0],
            },
            Target {
                url: &guarded.url,
                tokens: &token,
                mode: Mode::Stateless,
                cpu: &rts[1],
            },
            Target {
                url: &policed.url,
                tokens: &policed_token,
                mode: Mode::Stateless,
                cpu: &rts[2],
            },
        ],
    )
    .await;

    let plain_target = Target {
        url: &plain_sessions.url,
        tokens: &[],
        mode: Mode::Sessions,
        cpu: &rts[3],
    };
    let guard_target = Target {
        url: &guarded_sessions.url,
        tokens: &sessions_tokens,
        mode: Mode::Sessions,
        cpu: &rts[4],
    };
    compare(
        "stateful sessions, SSE answers",
        &["plain rmcp", "Guard (session binding)"],
        &[plain_target, guard_target],
    )
    .await;

    println!(
        "\nsequential calls on one keep-alive connection (stateful, {LATENCY_CALLS} calls after {LATENCY_WARM_UP}):"
    );
    println!(
        "  {:<24} {:>6} {:>10} {:>10} {:>10} {:>10}",
        "server", "calls", "mean", "p50", "p99", "max"
    );
    for (name, target) in [("plain rmcp", plain_target), ("Guard (session binding)", guard_target)] {
        let l = sequential(target).await;
        println!(
            "  {name:<24} {:>6} {:>10.1?} {:>10.1?} {:>10.1?} {:>10.1?}",
            l.calls, l.mean, l.p50, l.p99, l.max
        );
    }
    println!("\nload: done in {:.0?}", started.elapsed());
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing
    // useful either: run the whole program only for `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        println!("load: run with `cargo bench --bench load`");
        return;
    }
    // The clients (and the test issuer) on two workers; each server on one
    // worker of its own.
    let clients = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let rts = ["plain-json", "guard-json", "policy-json", "plain-sse", "guard-sse"].map(ServerRuntime::new);
    let issuer = clients.block_on(TestIssuer::start()).expect("test issuer");
    let jwks = || Issuer::with_jwks_uri(issuer.issuer(), issuer.jwks_uri());
    let engine = rmcp_guard::policy::PolicyEngine::default_policy(common::SCOPE).expect("default policy");
    let servers = Servers {
        plain: rts[0].rt.block_on(start_unguarded(Mode::Stateless)),
        guarded: rts[1].rt.block_on(start_guarded(&issuer)),
        policed: rts[2].rt.block_on(start_guarded_with_policy(&issuer, engine)),
        plain_sessions: rts[3].rt.block_on(start_unguarded(Mode::Sessions)),
        guarded_sessions: rts[4].rt.block_on(start_guarded_with(jwks(), Mode::Sessions, |b| b)),
    };
    clients.block_on(run(&issuer, &servers, &rts));
    drop(servers);
}
