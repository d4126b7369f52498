//! What each piece of the guarded stack costs per request, in process:
//! the same stateless rmcp echo server called through its axum router
//! (`tower::ServiceExt::oneshot`, no socket), plain and behind each piece of
//! [`Guard`](rmcp_guard::Guard) alone, then behind the whole `Guard`.
//!
//! ```text
//! cargo bench --bench stack
//! ```
//!
//! Each request is a `tools/call` of `echo` (JSON answer, read to the end),
//! with the same token every time: after the first request it is answered
//! from the verified-token cache, as it is for a client that keeps its
//! token. Without the network, the difference to plain rmcp is the guard's
//! own CPU time per request. Many short rounds alternate the variants so
//! that a drift in machine load hits each; the summary gives, per variant,
//! the median round's time per request and the best round's (a pause of a
//! shared machine only ever adds), each with its difference to plain
//! rmcp's, and the allocations per request (counted by a global allocator
//! around the system's). `STACK_ONLY=<text>` keeps plain rmcp and the
//! variants whose name has `<text>`, to profile one piece.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use common::{SCOPE, Tools, generous_limits};
use http::Request;
use http_body_util::BodyExt as _;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp_guard::Guard;
use rmcp_guard::oauth::{Issuer, ResourceServer};
use rmcp_guard_testkit::TestIssuer;
use tower::{Layer as _, ServiceExt as _};

const RESOURCE: &str = "http://127.0.0.1:8080/mcp";
/// Requests of one variant in one round: short rounds, many of them, so
/// that a pause of this (virtual) machine falls in few of them.
const REQUESTS: usize = 1_000;
const ROUNDS: usize = 60;
/// Each round of a variant also stops after this long.
const ROUND_BUDGET: Duration = Duration::from_secs(5);

/// The system allocator, counting allocations: how many a request makes is
/// the other half of what a layer costs (each one is also a free, and a
/// chance for the allocator to consolidate).
struct Counting;

static ALLOCATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

// SAFETY: every call goes to the system allocator with the caller's
// arguments unchanged; the counter is a relaxed atomic.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: forwarded as is.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: forwarded as is.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: forwarded as is.
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const BODY: &str =
    r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"load"}}}"#;

fn config() -> StreamableHttpServerConfig {
    StreamableHttpServerConfig::default()
        .with_allowed_hosts(["127.0.0.1:8080".to_owned()])
        .with_sse_keep_alive(None)
        .with_legacy_session_mode(false)
        .with_json_response(true)
}

fn rmcp_service<H, F>(factory: F) -> StreamableHttpService<H, NeverSessionManager>
where
    H: rmcp::ServerHandler + Send + 'static,
    F: Fn() -> Result<H, std::io::Error> + Send + Sync + 'static,
{
    StreamableHttpService::new(factory, Arc::new(NeverSessionManager::default()), config())
}

async fn call(app: &Router, auth: Option<&str>) {
    let mut request = Request::post("/mcp")
        .header("host", "127.0.0.1:8080")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream");
    if let Some(auth) = auth {
        request = request.header("authorization", auth);
    }
    let request = request.body(axum::body::Body::from(BODY)).expect("request");
    let response = app.clone().oneshot(request).await.expect("infallible");
    assert_eq!(response.status(), 200, "every request succeeds");
    let body = response.into_body().collect().await.expect("body").to_bytes();
    assert!(
        body.windows(b"\"text\":\"load\"".len())
            .any(|w| w == b"\"text\":\"load\""),
        "the echo comes back: {}",
        String::from_utf8_lossy(&body)
    );
}

struct Variant {
    name: &'static str,
    app: Router,
    auth: bool,
    times: Vec<f64>,
    /// Allocations (and reallocations) per request.
    allocations: f64,
}

fn variant(name: &'static str, app: Router, auth: bool) -> Variant {
    Variant {
        name,
        app,
        auth,
        times: Vec::new(),
        allocations: 0.0,
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("stack: run with `cargo bench --bench stack`");
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let issuer = TestIssuer::start().await.expect("test issuer");
        let rs = ResourceServer::builder(RESOURCE, Issuer::with_jwks_uri(issuer.issuer(), issuer.jwks_uri()))
            .required_scopes([SCOPE])
            .http_timeout(Duration::from_secs(3))
            .build()
            .expect("valid configuration");
        let token = issuer.token().audience(RESOURCE).scope(SCOPE).sign();
        let auth = format!("Bearer {token}");
        let plain = || Router::new().route_service("/mcp", rmcp_service(|| Ok(Tools::new())));
        let mut variants = vec![
            variant("plain rmcp", plain(), false),
            variant(
                "+ request span",
                Router::new().route_service(
                    "/mcp",
                    rmcp_guard::telemetry::trace::RequestSpanLayer::new().layer(rmcp_service(|| Ok(Tools::new()))),
                ),
                false,
            ),
            variant(
                "+ edge",
                Router::new().route_service(
                    "/mcp",
                    rmcp_guard::edge::EdgeLayer::new(["127.0.0.1:8080"], 8080).layer(rmcp_service(|| Ok(Tools::new()))),
                ),
                false,
            ),
            variant(
                "+ bearer",
                Router::new().route_service(
                    "/mcp",
                    rmcp_guard::oauth::BearerAuthLayer::new(rs.clone()).layer(rmcp_service(|| Ok(Tools::new()))),
                ),
                true,
            ),
            variant(
                "+ bearer + limits",
                Router::new().route_service(
                    "/mcp",
                    rmcp_guard::oauth::BearerAuthLayer::new(rs.clone())
                        .layer(generous_limits().layer().layer(rmcp_service(|| Ok(Tools::new())))),
                ),
                true,
            ),
            variant(
                "+ bearer, revocations",
                Router::new().route_service(
                    "/mcp",
                    rmcp_guard::oauth::BearerAuthLayer::new(rs.clone())
                        .revocations(rmcp_guard::store::SharedStore::memory().revocations())
                        .layer(rmcp_service(|| Ok(Tools::new()))),
                ),
                true,
            ),
            variant(
                "+ handler wrappers",
                Router::new().route_service("/mcp", {
                    let arguments = rmcp_guard::integrity::ArgumentGuard::new((), Default::default());
                    let output = rmcp_guard::integrity::OutputGuard::new((), Default::default());
                    rmcp_service(move || {
                        Ok(rmcp_guard::advertise::Advertised::new(
                            rmcp_guard::telemetry::trace::ToolSpans::new(output.around(arguments.around(Tools::new()))),
                        ))
                    })
                }),
                false,
            ),
            variant(
                "+ tool span",
                Router::new().route_service(
                    "/mcp",
                    rmcp_service(|| Ok(rmcp_guard::telemetry::trace::ToolSpans::new(Tools::new()))),
                ),
                false,
            ),
            variant(
                "+ argument guard",
                Router::new().route_service("/mcp", {
                    let guard = rmcp_guard::integrity::ArgumentGuard::new((), Default::default());
                    rmcp_service(move || Ok(guard.around(Tools::new())))
                }),
                false,
            ),
            variant(
                "+ output guard",
                Router::new().route_service("/mcp", {
                    let guard = rmcp_guard::integrity::OutputGuard::new((), Default::default());
                    rmcp_service(move || Ok(guard.around(Tools::new())))
                }),
                false,
            ),
            variant(
                "+ advertised",
                Router::new().route_service(
                    "/mcp",
                    rmcp_service(|| Ok(rmcp_guard::advertise::Advertised::new(Tools::new()))),
                ),
                false,
            ),
            variant(
                "Guard (stateless)",
                Guard::new(rs.clone())
                    .http_config(config())
                    .limits(generous_limits())
                    .stateless()
                    .router(|| Ok(Tools::new())),
                true,
            ),
        ];
        // `STACK_ONLY=<text>`: plain rmcp and the variants whose name has
        // <text> (to profile one piece).
        if let Ok(only) = std::env::var("STACK_ONLY") {
            let mut index = 0;
            variants.retain(|v| {
                index += 1;
                index == 1 || v.name.contains(&only)
            });
        }
        // Warm up (the token cache, the schemas, the allocator), then count
        // the allocations of 1,000 requests.
        for v in &mut variants {
            for _ in 0..500 {
                call(&v.app, v.auth.then_some(auth.as_str())).await;
            }
            let before = ALLOCATIONS.load(std::sync::atomic::Ordering::Relaxed);
            for _ in 0..1_000 {
                call(&v.app, v.auth.then_some(auth.as_str())).await;
            }
            v.allocations = (ALLOCATIONS.load(std::sync::atomic::Ordering::Relaxed) - before) as f64 / 1_000.0;
        }
        for round in 0..ROUNDS {
            for v in &mut variants {
                let auth = v.auth.then_some(auth.as_str());
                let started = Instant::now();
                let mut done = 0;
                while done < REQUESTS && started.elapsed() < ROUND_BUDGET {
                    call(&v.app, auth).await;
                    done += 1;
                }
                v.times.push(started.elapsed().as_secs_f64() * 1e6 / done as f64);
            }
            if (round + 1) % 10 == 0 {
                println!("round {} done", round + 1);
            }
        }
        let mut plain = variants[0].times.clone();
        let plain_median = median(&mut plain);
        let plain_best = plain[0];
        let plain_allocations = variants[0].allocations;
        println!(
            "\n{:<22} {:>10} {:>10} {:>10} {:>10} {:>8} {:>6}",
            "variant", "median us", "over plain", "best us", "over plain", "allocs", "more"
        );
        for v in &mut variants {
            let m = median(&mut v.times);
            let best = v.times[0];
            println!(
                "{:<22} {:>10.2} {:>+10.2} {:>10.2} {:>+10.2} {:>8.1} {:>+6.1}",
                v.name,
                m,
                m - plain_median,
                best,
                best - plain_best,
                v.allocations,
                v.allocations - plain_allocations
            );
        }
    });
}
