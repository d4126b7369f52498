//! Requests per second of one guarded echo server with its request limits in
//! this process's memory, and with them in Redis (fleet mode), in one run on
//! loopback; and the Redis round trips per request.
//!
//! ```text
//! cargo bench --bench fleet
//! ```
//!
//! The program starts its own `redis-server` ([`RedisServer`]: a free
//! loopback port, no persistence, as a Redis that holds only expiring
//! budgets is run; killed at the end) and one [`Guard`] per variant (see
//! [`variants`]), each served by [`rmcp_guard::serve`] on a one-worker
//! runtime of its own; the clients run on a two-worker runtime. Each client
//! is its own caller (its own token, so its own budget) and owns one
//! HTTP/1.1 keep-alive connection on which it calls `echo` statelessly
//! (JSON answers), one call after the other, for a fixed time; every answer
//! is checked. The limits are the load benchmark's (`generous_limits`: the
//! limit layer runs but never refuses) so the measure is the admitted path.
//! Their bounds are large, so in Redis a replica takes a share of each
//! budget per round trip (1/32 of it, at most 16 rate units and in-flight
//! slots) and admits the requests that follow from it; a third variant has
//! a burst and in-flight bound under 64 (as the defaults), which take one
//! admission script per request; releases are sent in batches by a
//! background task once the answers' bodies end.
//!
//! The phases alternate (memory, Redis, ...) for [`ROUNDS`] rounds so that
//! a drift in machine load hits both; the summary gives the mean rates, the
//! median of the per-round ratios, the server CPU per request (which depends
//! less on how busy the machine is; Redis's own CPU is not in it) and the
//! round trips per request. Target: Redis / memory >= 0.75.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rmcp_guard::Guard;
use rmcp_guard::oauth::{Issuer, ResourceServer};
use rmcp_guard::store::{RedisConfig, SharedStore};
use rmcp_guard_testkit::TestIssuer;
use serde_json::Value;

/// Concurrent clients of one phase.
const CLIENTS: usize = 16;
const WARM_UP: Duration = Duration::from_secs(1);
const MEASURE: Duration = Duration::from_secs(2);
const ROUNDS: usize = 4;

/// One guarded server configuration under test: a name, whether its
/// `Guard` gets a Redis store (`Guard::shared_store`, made on the server's
/// runtime), and what else it turns on.
struct Variant {
    name: &'static str,
    redis: bool,
    configure: Box<dyn FnOnce(Guard) -> Guard + Send>,
}

/// The variants compared, the first being the reference (in-memory
/// limits). **Hook**: further fleet features add their variant here, e.g.
/// `("Redis limits + revocation checks", redis: true, configure: |guard|
/// guard.<revocation settings>)` beside "Redis limits" (revocation checks
/// off), to be measured in the same run.
fn variants() -> Vec<Variant> {
    vec![
        Variant {
            name: "memory limits",
            redis: false,
            configure: Box::new(|guard| guard),
        },
        Variant {
            name: "Redis limits",
            redis: true,
            configure: Box::new(|guard| guard),
        },
        Variant {
            name: "Redis limits, 1 per round trip",
            redis: true,
            configure: Box::new(|guard| guard.limits(exact_limits())),
        },
    ]
}

/// Limits as generous for this load, with a burst and an in-flight bound
/// under `2 x 32`: a replica takes no share of the budget, so every request
/// is its own admission round trip (as with the defaults, burst 40 and 16
/// in flight).
fn exact_limits() -> rmcp_guard::limit::RequestLimits {
    rmcp_guard::limit::RequestLimits::default()
        .rate(rmcp_guard::limit::Rate::per_second(std::num::NonZeroU32::MAX))
        .burst(63)
        .in_flight(63)
}

/// A throwaway `redis-server` on a free loopback port without persistence
/// (the tests' harness, `tests/support/redis.rs`, fsyncs every write for its
/// restart tests: not what a limits Redis runs with). Killed when dropped.
struct RedisServer {
    child: std::process::Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl RedisServer {
    fn start() -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let dir = std::env::temp_dir().join(format!("rmcp-guard-fleet-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server on PATH (Debian: apt-get install redis-server)");
        let server = RedisServer { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !server.ping() {
            assert!(Instant::now() < deadline, "redis-server not ready in 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut answer = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok() && stream.read_exact(&mut answer).is_ok() && &answer == b"+PONG\r\n"
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A one-worker runtime for one server, whose threads' CPU time can be read.
struct ServerRuntime {
    rt: tokio::runtime::Runtime,
    threads: Arc<Mutex<Vec<String>>>,
}

impl ServerRuntime {
    fn new(name: &str) -> ServerRuntime {
        let threads = Arc::new(Mutex::new(Vec::new()));
        let seen = threads.clone();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(name)
            .enable_all()
            .on_thread_start(move || {
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

    /// CPU time of the runtime's threads so far (`schedstat`).
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

/// A running guarded server.
struct Server {
    name: &'static str,
    url: String,
    store: SharedStore,
    tokens: Vec<String>,
    runtime: ServerRuntime,
}

/// Start `variant` on its own runtime (its Redis connection too); its
/// clients' tokens come from `issuer`.
fn start(variant: Variant, redis_url: &str, issuer: &TestIssuer) -> Server {
    let runtime = ServerRuntime::new(&format!("fleet-{}", &variant.name[..1]));
    let store = match variant.redis {
        true => {
            let _runtime = runtime.rt.enter();
            SharedStore::redis(RedisConfig::new(redis_url)).expect("redis config")
        }
        false => SharedStore::memory(),
    };
    let url = runtime.rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/mcp", listener.local_addr().expect("address"));
        let rs = ResourceServer::builder(url.clone(), Issuer::with_jwks_uri(issuer.issuer(), issuer.jwks_uri()))
            .required_scopes([common::SCOPE])
            .build()
            .expect("configuration");
        rs.warm_up().await.expect("keys load");
        let config = rs.streamable_http_config().with_sse_keep_alive(None);
        let guard = Guard::new(rs)
            .http_config(config)
            .limits(common::generous_limits())
            .shared_store(store.clone())
            .stateless();
        let app = (variant.configure)(guard).router(|| Ok(common::Tools::new()));
        tokio::spawn(async move {
            let _ = rmcp_guard::serve(listener, app).await;
        });
        url
    });
    let tokens = (0..CLIENTS)
        .map(|i| {
            issuer
                .token()
                .subject(format!("fleet-{i}"))
                .audience(&url)
                .scope(common::SCOPE)
                .expires_in(Duration::from_secs(600))
                .sign()
        })
        .collect();
    Server {
        name: variant.name,
        url,
        store,
        tokens,
        runtime,
    }
}

/// One client: one keep-alive connection calling `echo`.
async fn client_loop(
    url: String,
    token: String,
    stop: Arc<AtomicBool>,
    measuring: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) {
    let http = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let auth = format!("Bearer {token}");
    let mut id = 0u64;
    while !stop.load(Ordering::Relaxed) {
        id += 1;
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"load"}}}}}}"#
        );
        let response = http
            .post(&url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-11-25")
            .header("authorization", &auth)
            .body(body)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200, "every load request succeeds");
        let answer: Value = serde_json::from_slice(&response.bytes().await.expect("body")).expect("JSON answer");
        assert_eq!(answer["result"]["content"][0]["text"], "load", "{answer}");
        if measuring.load(Ordering::Relaxed) {
            done.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What one phase measured.
#[derive(Clone, Copy)]
struct Phase {
    per_second: f64,
    cpu_us: f64,
    round_trips: f64,
}

async fn drive(server: &Server) -> Phase {
    let (stop, measuring, done) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let tasks: Vec<_> = server
        .tokens
        .iter()
        .map(|token| {
            tokio::spawn(client_loop(
                server.url.clone(),
                token.clone(),
                stop.clone(),
                measuring.clone(),
                done.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(WARM_UP).await;
    let (cpu, trips) = (server.runtime.cpu(), server.store.round_trips());
    measuring.store(true, Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(MEASURE).await;
    measuring.store(false, Ordering::Relaxed);
    let (n, elapsed) = (done.load(Ordering::Relaxed).max(1), start.elapsed().as_secs_f64());
    let cpu = server.runtime.cpu() - cpu;
    let trips = server.store.round_trips() - trips;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("client task");
    }
    Phase {
        per_second: n as f64 / elapsed,
        cpu_us: cpu.as_secs_f64() * 1e6 / n as f64,
        // Counted over the window, so a few more commands than requests
        // counted (releases of calls that began before it).
        round_trips: trips as f64 / n as f64,
    }
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = v.collect();
    v.iter().sum::<f64>() / v.len() as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    (v[(v.len() - 1) / 2] + v[v.len() / 2]) / 2.0
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("fleet: run with `cargo bench --bench fleet`");
        return;
    }
    let clients = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let redis = RedisServer::start();
    let issuer = clients.block_on(TestIssuer::start()).expect("test issuer");
    let servers: Vec<Server> = variants()
        .into_iter()
        .map(|v| start(v, &redis.url(), &issuer))
        .collect();
    let started = Instant::now();
    let phases: Vec<Vec<Phase>> = clients.block_on(async {
        let mut phases = vec![Vec::new(); servers.len()];
        println!(
            "fleet: {CLIENTS} clients (one caller each), {ROUNDS} rounds of {}s per server",
            MEASURE.as_secs()
        );
        for round in 1..=ROUNDS {
            let mut line = format!("  round {round}:");
            for (i, server) in servers.iter().enumerate() {
                let phase = drive(server).await;
                line.push_str(&format!(
                    "  {} {:.0} req/s ({:.1} us CPU, {:.2} round trips)",
                    server.name, phase.per_second, phase.cpu_us, phase.round_trips
                ));
                phases[i].push(phase);
            }
            println!("{line}");
        }
        phases
    });
    println!(
        "  {:<32} {:>8} {:>8} {:>8} {:>8} {:>12}",
        "server", "req/s", "median", "CPU us", "CPU", "round trips"
    );
    println!(
        "  {:<32} {:>8} {:>8} {:>8} {:>8} {:>12}",
        "", "", "ratio", "per req", "ratio", "per request"
    );
    let reference = &phases[0];
    let reference_cpu = mean(reference.iter().map(|p| p.cpu_us));
    for (server, phase) in servers.iter().zip(&phases) {
        let ratios = reference
            .iter()
            .zip(phase)
            .map(|(r, p)| p.per_second / r.per_second)
            .collect();
        let cpu = mean(phase.iter().map(|p| p.cpu_us));
        println!(
            "  {:<32} {:>8.0} {:>8.3} {:>8.1} {:>8.3} {:>12.2}",
            server.name,
            mean(phase.iter().map(|p| p.per_second)),
            median(ratios),
            cpu,
            reference_cpu / cpu,
            mean(phase.iter().map(|p| p.round_trips)),
        );
    }
    println!(
        "  (target: Redis / memory >= 0.75. \"Redis limits\" (bounds of 64 or more): a replica takes a share \
         of 1/32 of a budget, up to 16 units and slots, per round trip. \"1 per round trip\": one admission \
         script per request, its release sent later in a batch)"
    );
    println!("fleet: done in {:.0?}", started.elapsed());
    drop(servers);
    drop(redis);
}
