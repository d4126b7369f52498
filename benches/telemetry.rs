//! Telemetry on against off, side by side in one run (issue 15), and the
//! cost of one audit event.
//!
//! ```text
//! cargo build --release --example secure_server && cargo bench --bench telemetry
//! ```
//!
//! Five `secure_server` processes (the template users deploy; built by
//! `cargo bench`), on loopback, stateless, all logging at `info` to
//! nowhere, differ in one thing each:
//!
//! - **off**: no exporter, no metrics endpoint (the instruments are no-ops);
//! - **on**: metrics and spans exported over OTLP/HTTP to a receiver in this
//!   program (which accepts and drops them), every trace, and the
//!   Prometheus endpoint scraped once a second;
//! - **metrics**: metrics only, on the Prometheus endpoint (no traces);
//! - **on 10%**: like *on* without the scrape, sampling a tenth of the
//!   traces (`OTEL_TRACES_SAMPLER=parentbased_traceidratio`, a common
//!   production setting);
//! - **no audit**: like *off*, with `rmcp_guard::audit=off` in the log
//!   filter: the difference with *off*, divided by the audit events of a
//!   request (read from the *on* server's counter), is the cost of one
//!   audit event written as a log line.
//!
//! Each server has `CLIENTS` keep-alive connections, kept for the whole
//! run, calling `whoami` (2026-07-28, one POST each). With two CPUs or more
//! the servers run on one and this program on another, so that the load
//! does not steal the servers' time. A round gives each server a short
//! phase, in a rotating order; each phase also reads the CPU time the
//! server process spent (`/proc/<pid>/task/*/schedstat`). The summary is
//! the median, over the rounds, of each server's ratio to *off* in the same
//! round: a slow moment of the machine (this is often a shared VM) moves
//! both sides of a ratio. Target: on / off >= 0.95.

#[path = "../tests/support/example.rs"]
mod example;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rmcp_guard_testkit::TestIssuer;
use rmcp_guard_testkit::client::{McpClient, Protocol};
use serde_json::json;

const CLIENTS: usize = 16;
const WARM_UP: Duration = Duration::from_secs(1);
const RAMP: Duration = Duration::from_millis(100);
const PHASE: Duration = Duration::from_millis(500);
const ROUNDS: usize = 24;

struct Server {
    name: &'static str,
    child: Child,
    url: String,
    metrics: Option<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// CPU time the process has spent so far (all its threads), in ns.
    fn cpu_ns(&self) -> u64 {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.child.id())) else {
            return 0;
        };
        tasks
            .filter_map(Result::ok)
            .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
            .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    }
}

/// The CPUs the load and the servers run on: with two or more (and
/// `taskset`), the servers share one CPU and this program (the clients)
/// another, so that neither steals the other's time: the CPU a server
/// spends per request then varies little from round to round.
fn pinning() -> Option<(usize, usize)> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let taskset = Command::new("taskset")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    (cpus >= 2 && taskset).then_some((0, 1))
}

/// Pin this process (before its runtime starts threads) to the load CPU.
fn pin_self() {
    if let Some((load, _)) = pinning() {
        let pinned = Command::new("taskset")
            .args(["-a", "-p", "-c", &load.to_string(), &std::process::id().to_string()])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !pinned {
            eprintln!("telemetry: could not pin the load to CPU {load}; results will be noisier");
        }
    }
}

async fn start(name: &'static str, issuer: &TestIssuer, vars: &[(&str, String)]) -> Server {
    let port = example::free_port();
    let mut command = match pinning() {
        Some((_, server)) => {
            let mut c = Command::new("taskset");
            c.arg("-c")
                .arg(server.to_string())
                .arg(example::example_binary("secure_server"));
            c
        }
        None => Command::new(example::example_binary("secure_server")),
    };
    let child = command
        .env_clear()
        .env("GUARD_ISSUER", issuer.issuer())
        .env("GUARD_BIND", format!("127.0.0.1:{port}"))
        .env("GUARD_STATELESS", "1")
        // No limit gets in the way of the load.
        .env("GUARD_RATE_LIMIT", "100000/s")
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run secure_server");
    let metrics = vars
        .iter()
        .find(|(k, _)| *k == "GUARD_METRICS_BIND")
        .map(|(_, v)| format!("http://{v}/metrics"));
    let server = Server {
        name,
        child,
        url: format!("http://127.0.0.1:{port}/mcp"),
        metrics,
    };
    let metadata = format!("http://127.0.0.1:{port}/.well-known/oauth-protected-resource/mcp");
    for _ in 0..100 {
        if reqwest::get(&metadata).await.is_ok_and(|r| r.status() == 200) {
            return server;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("secure_server ({name}) did not start within 10 s");
}

/// An OTLP/HTTP endpoint that takes every export and drops it.
async fn sink() -> (String, Arc<AtomicU64>) {
    let bytes = Arc::new(AtomicU64::new(0));
    let seen = bytes.clone();
    let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
        let seen = seen.clone();
        async move {
            seen.fetch_add(body.len() as u64, Ordering::Relaxed);
            axum::http::StatusCode::OK
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), bytes)
}

#[derive(Clone, Copy)]
struct Rate {
    per_second: f64,
    cpu_us: f64,
}

/// `CLIENTS` connections to one server, kept for the whole run.
struct Load {
    clients: Vec<Arc<McpClient>>,
}

impl Load {
    async fn connect(server: &Server, token: &str) -> Load {
        let mut clients = Vec::with_capacity(CLIENTS);
        for _ in 0..CLIENTS {
            let client = McpClient::connect(&server.url, Protocol::V2026_07_28)
                .bearer(token.to_owned())
                .send()
                .await
                .expect("connect");
            clients.push(Arc::new(client));
        }
        Load { clients }
    }

    /// Every client calls `whoami` for `RAMP` (not counted), then for
    /// `PHASE`: the rate, and the CPU the server spent per call.
    async fn phase(&self, server: &Server) -> Rate {
        let measuring = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for client in &self.clients {
            let (client, measuring, stop, done) = (client.clone(), measuring.clone(), stop.clone(), done.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let result = client.call_tool("whoami", json!({})).await.expect("whoami");
                    assert_ne!(result.is_error, Some(true));
                    if measuring.load(Ordering::Relaxed) {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        tokio::time::sleep(RAMP).await;
        let cpu = server.cpu_ns();
        let start = Instant::now();
        measuring.store(true, Ordering::Relaxed);
        tokio::time::sleep(PHASE).await;
        measuring.store(false, Ordering::Relaxed);
        let elapsed = start.elapsed();
        let cpu = server.cpu_ns() - cpu;
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            task.await.expect("client");
        }
        let n = done.load(Ordering::Relaxed).max(1) as f64;
        Rate {
            per_second: n / elapsed.as_secs_f64(),
            cpu_us: cpu as f64 / 1000.0 / n,
        }
    }
}

/// The median of `v`.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    (v[(n - 1) / 2] + v[n / 2]) / 2.0
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = v.collect();
    v.iter().sum::<f64>() / v.len() as f64
}

/// A counter's total in a Prometheus text scrape (every series whose name
/// starts with `name`).
fn scrape_total(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn main() {
    pin_self();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let issuer = TestIssuer::start().await.expect("issuer");
        let (otlp, exported) = sink().await;
        let (otlp_sampled, exported_sampled) = sink().await;
        let metrics_bind = format!("127.0.0.1:{}", example::free_port());
        let servers = [
            start("off", &issuer, &[("RUST_LOG", "info".to_owned())]).await,
            start(
                "on",
                &issuer,
                &[
                    ("RUST_LOG", "info".to_owned()),
                    ("GUARD_OTLP_ENDPOINT", otlp),
                    ("GUARD_METRICS_BIND", metrics_bind),
                ],
            )
            .await,
            start(
                "metrics",
                &issuer,
                &[
                    ("RUST_LOG", "info".to_owned()),
                    ("GUARD_METRICS_BIND", format!("127.0.0.1:{}", example::free_port())),
                ],
            )
            .await,
            start(
                "on 10%",
                &issuer,
                &[
                    ("RUST_LOG", "info".to_owned()),
                    ("GUARD_OTLP_ENDPOINT", otlp_sampled),
                    ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio".to_owned()),
                    ("OTEL_TRACES_SAMPLER_ARG", "0.1".to_owned()),
                ],
            )
            .await,
            start(
                "no audit",
                &issuer,
                &[("RUST_LOG", "info,rmcp_guard::audit=off".to_owned())],
            )
            .await,
        ];
        // Prometheus scrapes the `on` server once a second meanwhile.
        let scraping = Arc::new(AtomicBool::new(true));
        let scraper = {
            let url = servers[1].metrics.clone().expect("metrics endpoint");
            let scraping = scraping.clone();
            tokio::spawn(async move {
                while scraping.load(Ordering::Relaxed) {
                    let _ = reqwest::get(&url).await.and_then(|r| r.error_for_status());
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            })
        };
        let token = |url: &str| {
            issuer
                .token()
                .subject("bench-user")
                .audience(url)
                .scope("mcp:tools")
                .claim("groups", json!(["developers"]))
                .claim("tenant", json!("acme"))
                .sign()
        };
        println!(
            "telemetry: {CLIENTS} clients calling whoami (stateless), {ROUNDS} rounds of {} ms per server{}",
            PHASE.as_millis(),
            if pinning().is_some() { " (servers on CPU 1, load on CPU 0)" } else { "" }
        );
        let mut loads = Vec::with_capacity(servers.len());
        for server in &servers {
            let load = Load::connect(server, &token(&server.url)).await;
            // Warm up: connections, caches, the allocator.
            let deadline = Instant::now() + WARM_UP;
            while Instant::now() < deadline {
                load.phase(server).await;
            }
            loads.push(load);
        }
        let mut rates: Vec<Vec<Rate>> = vec![Vec::new(); servers.len()];
        let mut on_requests = 0.0;
        let mut sampled_requests = 0.0;
        for round in 0..ROUNDS {
            // Rounds alternate the servers, in a rotating order, so that a
            // slow moment of the machine hits each about as often.
            for k in 0..servers.len() {
                let i = (round + k) % servers.len();
                let r = loads[i].phase(&servers[i]).await;
                match i {
                    1 => on_requests += r.per_second * PHASE.as_secs_f64(),
                    3 => sampled_requests += r.per_second * PHASE.as_secs_f64(),
                    _ => {}
                }
                rates[i].push(r);
            }
        }
        scraping.store(false, Ordering::Relaxed);
        let _ = scraper.await;
        let scrape = reqwest::get(servers[1].metrics.clone().expect("metrics"))
            .await
            .expect("scrape")
            .text()
            .await
            .expect("scrape body");
        let requests = scrape_total(&scrape, "rmcp_guard_requests_total").max(1.0);
        let events = scrape_total(&scrape, "rmcp_guard_audit_events_total");
        let per_request = events / requests;

        let rate = |i: usize| mean(rates[i].iter().map(|r| r.per_second));
        let cpu = |i: usize| mean(rates[i].iter().map(|r| r.cpu_us));
        // Each round's ratio to `off` in the same round, then their median:
        // what a slow moment of the machine does to one round cancels out.
        let paired = |i: usize, of: fn(&Rate) -> f64| {
            median(rates[0].iter().zip(&rates[i]).map(|(off, x)| of(x) / of(off)).collect())
        };
        let throughput = |i: usize| paired(i, |r| r.per_second);
        let cpu_ratio = |i: usize| 1.0 / paired(i, |r| r.cpu_us);
        println!("  {:<10} {:>8} {:>12} {:>16} {:>16}", "server", "req/s", "CPU us/req", "throughput/off", "off CPU/CPU");
        for (i, server) in servers.iter().enumerate() {
            println!(
                "  {:<10} {:>8.0} {:>12.1} {:>16.3} {:>16.3}",
                server.name,
                rate(i),
                cpu(i),
                throughput(i),
                cpu_ratio(i)
            );
        }
        println!(
            "  telemetry on (every trace) / off: {:.3} of the throughput, {:.3} of the CPU per request; target >= 0.95",
            throughput(1),
            cpu_ratio(1)
        );
        println!(
            "  telemetry on, 10% of traces sampled / off: {:.3} of the throughput, {:.3} of the CPU per request; target >= 0.95",
            throughput(3),
            cpu_ratio(3)
        );
        println!(
            "  metrics only (no traces) / off: {:.3} of the throughput, {:.3} of the CPU per request",
            throughput(2),
            cpu_ratio(2)
        );
        println!(
            "  exported over OTLP by `on`: {:.1} KiB ({:.0} bytes per request)",
            exported.load(Ordering::Relaxed) as f64 / 1024.0,
            exported.load(Ordering::Relaxed) as f64 / on_requests.max(1.0)
        );
        println!(
            "  exported over OTLP by `on 10%`: {:.1} KiB ({:.0} bytes per request, metrics included)",
            exported_sampled.load(Ordering::Relaxed) as f64 / 1024.0,
            exported_sampled.load(Ordering::Relaxed) as f64 / sampled_requests.max(1.0)
        );
        let event_us = (cpu(0) - cpu(4)) / per_request.max(1.0);
        println!(
            "  audit events: {per_request:.2} per request; one costs {event_us:.2} us of CPU as an info log line \
             ((off - no audit) / events)"
        );
    });
}
