//! The cost of the request limits per request: the bearer layer (cached
//! token) in front of a trivial service, with the limit layer and without,
//! side by side in one run.
//!
//! ```text
//! cargo bench --bench limits
//! ```
//!
//! - `limits/off`: bearer layer only.
//! - `limits/on`: bearer layer and [`RequestLimitLayer`] with the default
//!   limits, except a rate no request reaches (a refused request would stop
//!   measuring the admitted path): one table lookup, one GCRA cell, one
//!   in-flight permit taken and released with the body.
//! - `limits/on_2000_callers`: the same, the requests spread over 2 000
//!   callers (a table with 2 000 budgets).
//!
//! After criterion's report, a plain timed loop prints the per-request cost
//! of each and their difference. Target: under 1 us.

use std::convert::Infallible;
use std::hint::black_box;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderValue, Request, Response, header};
use http_body_util::Empty;
use rmcp_guard::limit::{Rate, RequestLimitLayer, RequestLimits};
use rmcp_guard::oauth::{BearerAuthLayer, Issuer, ResourceServer};
use rmcp_guard_testkit::TestIssuer;
use tower::{Layer, Service, ServiceExt, service_fn};

const RESOURCE: &str = "http://127.0.0.1:8080/mcp";

fn ok(_req: Request<()>) -> std::future::Ready<Result<Response<Empty<Bytes>>, Infallible>> {
    std::future::ready(Ok(Response::new(Empty::new())))
}

async fn call<S, B>(service: &S, authorization: &HeaderValue) -> u16
where
    S: Service<Request<()>, Response = Response<B>, Error = Infallible> + Clone,
{
    let mut req = Request::post("/mcp").body(()).expect("request");
    req.headers_mut().insert(header::AUTHORIZATION, authorization.clone());
    let response = service.clone().oneshot(req).await.expect("infallible");
    // Dropping the response ends its body and releases the in-flight permit.
    response.status().as_u16()
}

fn bearer(token: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("Bearer {token}")).expect("header value")
}

/// The default limits, with a rate no benchmark reaches.
fn limits() -> RequestLimits {
    RequestLimits::default()
        .rate(Rate::per_second(NonZeroU32::MAX))
        .burst(u32::MAX)
}

/// Nanoseconds per request over `n` sequential requests cycling `tokens`.
fn per_request<S, B>(rt: &tokio::runtime::Runtime, service: &S, tokens: &[HeaderValue], n: usize) -> f64
where
    S: Service<Request<()>, Response = Response<B>, Error = Infallible> + Clone,
    S::Future: Send,
{
    rt.block_on(async {
        let start = Instant::now();
        for i in 0..n {
            black_box(call(service, &tokens[i % tokens.len()]).await);
        }
        start.elapsed().as_nanos() as f64 / n as f64
    })
}

fn limits_cost(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let issuer = rt.block_on(TestIssuer::start()).expect("test issuer");
    let rs = ResourceServer::builder(RESOURCE, Issuer::with_jwks_uri(issuer.issuer(), issuer.jwks_uri()))
        .required_scopes(["mcp:tools"])
        .build()
        .expect("configuration");
    rt.block_on(rs.warm_up()).expect("keys load");

    let off = BearerAuthLayer::new(rs.clone()).layer(service_fn(ok));
    let on = BearerAuthLayer::new(rs.clone()).layer(RequestLimitLayer::new(limits()).layer(service_fn(ok)));
    let one = [bearer(&issuer.token().audience(RESOURCE).scope("mcp:tools").sign())];
    let many: Vec<HeaderValue> = (0..2_000)
        .map(|i| {
            bearer(
                &issuer
                    .token()
                    .subject(format!("caller-{i}"))
                    .audience(RESOURCE)
                    .scope("mcp:tools")
                    .sign(),
            )
        })
        .collect();
    // Warm the verified-token cache and the budgets.
    for token in one.iter().chain(&many) {
        assert_eq!(rt.block_on(call(&off, token)), 200);
        assert_eq!(rt.block_on(call(&on, token)), 200);
    }

    let mut group = c.benchmark_group("limits");
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_secs(1));
    group.bench_function("off", |b| {
        b.to_async(&rt).iter(|| async { black_box(call(&off, &one[0]).await) })
    });
    group.bench_function("on", |b| {
        b.to_async(&rt).iter(|| async { black_box(call(&on, &one[0]).await) })
    });
    let mut i = 0;
    group.bench_function("on_2000_callers", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) % many.len();
            let token = &many[i];
            let on = &on;
            async move { black_box(call(on, token).await) }
        })
    });
    group.finish();

    // The difference, measured side by side: off, on, off, on.
    let n = 200_000;
    let mut off_ns = f64::MAX;
    let mut on_ns = f64::MAX;
    let mut many_off_ns = f64::MAX;
    let mut many_on_ns = f64::MAX;
    for _ in 0..2 {
        off_ns = off_ns.min(per_request(&rt, &off, &one, n));
        on_ns = on_ns.min(per_request(&rt, &on, &one, n));
        many_off_ns = many_off_ns.min(per_request(&rt, &off, &many, n));
        many_on_ns = many_on_ns.min(per_request(&rt, &on, &many, n));
    }
    println!(
        "limits per request: one caller: off {off_ns:.0} ns, on {on_ns:.0} ns, cost {:.0} ns; \
         2 000 callers: off {many_off_ns:.0} ns, on {many_on_ns:.0} ns, cost {:.0} ns (target < 1000 ns)",
        on_ns - off_ns,
        many_on_ns - many_off_ns,
    );
}

criterion_group!(benches, limits_cost);
criterion_main!(benches);
