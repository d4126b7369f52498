//! Requests per second of the same rmcp echo server, unguarded and guarded,
//! in one run on loopback.
//!
//! ```text
//! cargo bench --bench load
//! ```
//!
//! Both servers run rmcp's Streamable HTTP service in stateless JSON mode (a
//! `tools/call` is one POST) on a two-worker runtime; a bounded number of
//! HTTP/1.1 keep-alive clients call `echo` for a fixed time. The guarded
//! server sees the same token on every request (as a session does), so after
//! the first request it is answered from the verified-token cache.
//! The phases alternate (unguarded, guarded, ...) for several rounds so that a
//! drift in machine load hits both; the summary gives the mean rates and the
//! median of the per-round ratios. A last phase drives both servers at the
//! same time (half the clients each), which cancels load drift on a shared
//! machine. Target: guarded / unguarded >= 0.90.
//!
//! A third server runs the whole stack of `examples/secure_server.rs`: the
//! bearer layer, the step-up layer and `Guarded` deciding every call with the
//! shipped default policy (the "guarded with policy" row).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{GuardedServer, Mode, echo_call, start_guarded, start_guarded_with_policy, start_unguarded, token_for};
use rmcp_guard_testkit::TestIssuer;

const CLIENTS: usize = 32;
const WARM_UP: Duration = Duration::from_secs(1);
const MEASURE: Duration = Duration::from_secs(2);
const ROUNDS: usize = 3;

/// Drive every target (`url`, optional bearer token) at once with
/// `clients` concurrent clients each; returns each target's requests/s over
/// the measured window (warm-up excluded). Every answer must be 200.
async fn drive(targets: &[(&str, Option<&str>)], clients: usize) -> Vec<f64> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(clients)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let body = echo_call("load").to_string();
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let counters: Vec<Arc<AtomicU64>> = targets.iter().map(|_| Arc::new(AtomicU64::new(0))).collect();
    let mut tasks = Vec::with_capacity(clients * targets.len());
    for ((url, token), done) in targets.iter().zip(&counters) {
        for _ in 0..clients {
            let (http, url, body) = (http.clone(), (*url).to_owned(), body.clone());
            let auth = token.map(|t| format!("Bearer {t}"));
            let (measuring, stop, done) = (measuring.clone(), stop.clone(), done.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let mut req = http
                        .post(&url)
                        .header("content-type", "application/json")
                        .header("accept", "application/json, text/event-stream")
                        .body(body.clone());
                    if let Some(auth) = &auth {
                        req = req.header("authorization", auth);
                    }
                    let response = req.send().await.expect("request");
                    assert_eq!(response.status(), 200, "every load request succeeds");
                    let _ = response.bytes().await.expect("body");
                    if measuring.load(Ordering::Relaxed) {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
    }
    tokio::time::sleep(WARM_UP).await;
    measuring.store(true, Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(MEASURE).await;
    let counts: Vec<u64> = counters.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("client task");
    }
    counts.into_iter().map(|n| n as f64 / elapsed).collect()
}

async fn run() {
    let issuer = TestIssuer::start().await.expect("test issuer");
    let unguarded = start_unguarded(Mode::Stateless).await;
    let guarded: GuardedServer = start_guarded(&issuer).await;
    guarded.rs.warm_up().await.expect("keys load");
    let token = token_for(&issuer, &guarded).expires_in(Duration::from_secs(600)).sign();
    let engine = rmcp_guard::policy::PolicyEngine::default_policy(common::SCOPE).expect("default policy");
    let policed: GuardedServer = start_guarded_with_policy(&issuer, engine).await;
    policed.rs.warm_up().await.expect("keys load");
    let policed_token = token_for(&issuer, &policed).expires_in(Duration::from_secs(600)).sign();

    let mut plain = Vec::new();
    let mut guard = Vec::new();
    let mut policy = Vec::new();
    for round in 1..=ROUNDS {
        let u = drive(&[(&unguarded.url, None)], CLIENTS).await[0];
        let g = drive(&[(&guarded.url, Some(&token))], CLIENTS).await[0];
        let p = drive(&[(&policed.url, Some(&policed_token))], CLIENTS).await[0];
        println!(
            "round {round}: unguarded {u:>8.0} req/s   guarded {g:>8.0} req/s (ratio {:.3})   \
             guarded+policy {p:>8.0} req/s (ratio {:.3})",
            g / u,
            p / u
        );
        plain.push(u);
        guard.push(g);
        policy.push(p);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (u, g) = (mean(&plain), mean(&guard));
    let mut ratios: Vec<f64> = plain.iter().zip(&guard).map(|(u, g)| g / u).collect();
    ratios.sort_by(f64::total_cmp);
    let median = (ratios[(ratios.len() - 1) / 2] + ratios[ratios.len() / 2]) / 2.0;
    println!(
        "load: {CLIENTS} clients, {ROUNDS} rounds of {}s per phase: unguarded {u:.0} req/s, guarded {g:.0} req/s, \
         ratio of means {:.3}, median ratio {median:.3} (target >= 0.90)",
        MEASURE.as_secs(),
        g / u
    );
    // Both servers at once, half the clients each: machine-load drift hits
    // both equally, so this ratio is the steadiest on a shared machine.
    let both = drive(&[(&unguarded.url, None), (&guarded.url, Some(&token))], CLIENTS / 2).await;
    println!(
        "paired: {} clients each, at the same time: unguarded {:.0} req/s, guarded {:.0} req/s, ratio {:.3}",
        CLIENTS / 2,
        both[0],
        both[1],
        both[1] / both[0]
    );
    let p = mean(&policy);
    println!(
        "guarded+policy: mean {p:.0} req/s, ratio of means to unguarded {:.3}",
        p / u
    );
    let both = drive(
        &[(&unguarded.url, None), (&policed.url, Some(&policed_token))],
        CLIENTS / 2,
    )
    .await;
    println!(
        "paired: {} clients each, at the same time: unguarded {:.0} req/s, guarded+policy {:.0} req/s, ratio {:.3}",
        CLIENTS / 2,
        both[0],
        both[1],
        both[1] / both[0]
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing
    // useful either: run the whole program only for `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        println!("load: run with `cargo bench --bench load`");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run());
}
