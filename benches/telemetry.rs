//! Telemetry on against off, side by side in one run (issue 15), and the
//! cost of one audit event.
//!
//! ```text
//! cargo build --release --example secure_server && cargo bench --bench telemetry
//! ```
//!
//! Three `secure_server` processes (the template users deploy; built by
//! `cargo bench`), on loopback, stateless, all logging at `info` to
//! nowhere, differ in one thing each:
//!
//! - **off**: no exporter, no metrics endpoint (the instruments are no-ops);
//! - **on**: metrics and spans exported over OTLP/HTTP to a receiver in this
//!   program (which accepts and drops them) and the Prometheus endpoint
//!   scraped once a second;
//! - **metrics**: metrics only, on the Prometheus endpoint (no traces);
//! - **on 10%**: like *on* without the scrape, sampling a tenth of the
//!   traces (`OTEL_TRACES_SAMPLER=parentbased_traceidratio`, a common
//!   production setting);
//! - **no audit**: like *off*, with `rmcp_guard::audit=off` in the log
//!   filter: the difference with *off*, divided by the audit events of a
//!   request (read from the *on* server's counter), is the cost of one
//!   audit event written as a log line.
//!
//! Clients call `whoami` (2026-07-28, one POST each) on keep-alive
//! connections for a fixed time; rounds alternate the servers so that a
//! drift in machine load hits all. Each phase also reads the CPU time the
//! server process spent (`/proc/<pid>/task/*/schedstat`): CPU per request
//! depends much less on how busy the machine is than requests/s do.
//! Target: on / off >= 0.95.

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
const MEASURE: Duration = Duration::from_secs(3);
const ROUNDS: usize = 4;

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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

async fn start(name: &'static str, issuer: &TestIssuer, vars: &[(&str, String)]) -> Server {
    let port = free_port();
    let child = Command::new(example::example_binary("secure_server"))
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

/// `CLIENTS` clients calling `whoami` for `MEASURE` after `WARM_UP`.
async fn drive(server: &Server, token: &str) -> Rate {
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        clients.push(
            McpClient::connect(&server.url, Protocol::V2026_07_28)
                .bearer(token.to_owned())
                .send()
                .await
                .expect("connect"),
        );
    }
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for client in clients {
        let (measuring, stop, done) = (measuring.clone(), stop.clone(), done.clone());
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
    tokio::time::sleep(WARM_UP).await;
    let cpu = server.cpu_ns();
    let start = Instant::now();
    measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(MEASURE).await;
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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let issuer = TestIssuer::start().await.expect("issuer");
        let (otlp, exported) = sink().await;
        let (otlp_sampled, _) = sink().await;
        let metrics_bind = format!("127.0.0.1:{}", free_port());
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
                    ("GUARD_METRICS_BIND", format!("127.0.0.1:{}", free_port())),
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
            "telemetry: {CLIENTS} clients calling whoami (stateless), {ROUNDS} rounds of {}s per server",
            MEASURE.as_secs()
        );
        let mut rates: Vec<Vec<Rate>> = vec![Vec::new(); servers.len()];
        let mut on_requests = 0.0;
        for round in 1..=ROUNDS {
            let mut line = format!("  round {round}:");
            for (i, server) in servers.iter().enumerate() {
                let r = drive(server, &token(&server.url)).await;
                if i == 1 {
                    on_requests += r.per_second * MEASURE.as_secs_f64();
                }
                line.push_str(&format!(
                    "  {} {:.0} req/s ({:.1} us CPU)",
                    server.name, r.per_second, r.cpu_us
                ));
                rates[i].push(r);
            }
            println!("{line}");
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
        let ratios: Vec<f64> = rates[0]
            .iter()
            .zip(&rates[1])
            .map(|(off, on)| on.per_second / off.per_second)
            .collect();
        println!("  {:<10} {:>8} {:>12}", "server", "req/s", "CPU us/req");
        for (i, server) in servers.iter().enumerate() {
            println!("  {:<10} {:>8.0} {:>12.1}", server.name, rate(i), cpu(i));
        }
        println!(
            "  telemetry on / off: {:.3} of the throughput (mean of rates; per-round median {:.3}), \
             {:.3} of the CPU per request (off / on); target >= 0.95",
            rate(1) / rate(0),
            {
                let mut r = ratios.clone();
                r.sort_by(f64::total_cmp);
                (r[(r.len() - 1) / 2] + r[r.len() / 2]) / 2.0
            },
            cpu(0) / cpu(1)
        );
        println!(
            "  exported over OTLP by `on`: {:.1} KiB ({:.0} bytes per request)",
            exported.load(Ordering::Relaxed) as f64 / 1024.0,
            exported.load(Ordering::Relaxed) as f64 / on_requests.max(1.0)
        );
        println!(
            "  metrics only (no traces) / off: {:.3} of the throughput, {:.3} of the CPU per request",
            rate(2) / rate(0),
            cpu(0) / cpu(2)
        );
        println!(
            "  telemetry on with 10% of traces sampled / off: {:.3} of the throughput, {:.3} of the CPU per request",
            rate(3) / rate(0),
            cpu(0) / cpu(3)
        );
        let event_us = (cpu(0) - cpu(4)) / per_request.max(1.0);
        println!(
            "  audit events: {per_request:.2} per request; one costs {event_us:.2} us of CPU as an info log line \
             ((off - no audit) / events)"
        );
    });
}
