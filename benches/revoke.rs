//! What revocations cost per request, and how fast one reaches another
//! replica.
//!
//! ```text
//! cargo bench --bench revoke
//! ```
//!
//! - `revoke/bearer_off`: the bearer layer (cached token) in front of a
//!   trivial service, without revocations.
//! - `revoke/bearer_none_revoked`: the same with the store's revocations,
//!   nothing revoked (one atomic load).
//! - `revoke/bearer_100k_revoked`: 100 000 revocations, none matching the
//!   caller (four hash lookups under a read lock).
//! - `revoke/check_100k_match`: [`Revocations::check`] alone, refusing.
//!
//! Then, with a real `redis-server` (skipped with a note when it is not
//! installed): two stores on one Redis, 100 revocations made on one; the
//! time until the other's local check refuses, as p50 / p99 / max. Printed,
//! never asserted.

#[path = "../tests/support/redis.rs"]
mod redis_support;

use std::convert::Infallible;
use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderValue, Request, Response, header};
use http_body_util::Empty;
use rmcp_guard::Principal;
use rmcp_guard::oauth::{BearerAuthLayer, Issuer, ResourceServer};
use rmcp_guard::revoke::{Revocation, Revocations};
use rmcp_guard::store::{RedisConfig, SharedStore};
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
    service
        .clone()
        .oneshot(req)
        .await
        .expect("infallible")
        .status()
        .as_u16()
}

async fn filled(n: usize) -> Revocations {
    let revocations = SharedStore::memory().revocations();
    for i in 0..n {
        revocations
            .revoke(Revocation::subject(format!("user-{i:06}@example.com")))
            .await
            .expect("revoke");
    }
    revocations
}

/// This process's resident memory (Linux), in bytes.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kb * 1024)
}

fn with_iat(p: rmcp_guard::PrincipalBuilder) -> Principal {
    p.claims(
        serde_json::json!({"iat": 1, "jti": "j"})
            .as_object()
            .cloned()
            .unwrap_or_default(),
    )
    .build()
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let issuer = runtime.block_on(TestIssuer::start()).expect("test issuer");
    let rs = ResourceServer::builder(RESOURCE, Issuer::with_jwks_uri(issuer.issuer(), issuer.jwks_uri()))
        .build()
        .expect("resource server");
    let token = issuer.token().audience(RESOURCE).subject("alice").sign();
    let authorization = HeaderValue::from_str(&format!("Bearer {token}")).expect("header");

    let none = SharedStore::memory().revocations();
    let before = resident_bytes();
    let full = runtime.block_on(filled(100_000));
    if let (Some(before), Some(after)) = (before, resident_bytes()) {
        println!(
            "memory: 100 000 revocations of 23-byte subjects: {} bytes resident more, {} bytes each",
            after.saturating_sub(before),
            after.saturating_sub(before) / 100_000
        );
    }
    let off = BearerAuthLayer::new(rs.clone()).layer(service_fn(ok));
    let on_none = BearerAuthLayer::new(rs.clone()).revocations(none).layer(service_fn(ok));
    let on_full = BearerAuthLayer::new(rs.clone())
        .revocations(full.clone())
        .layer(service_fn(ok));
    for service in [&off, &on_none, &on_full] {
        assert_eq!(runtime.block_on(call(service, &authorization)), 200);
    }

    let mut group = c.benchmark_group("revoke");
    group.bench_function("bearer_off", |b| {
        b.iter(|| runtime.block_on(call(&off, black_box(&authorization))))
    });
    group.bench_function("bearer_none_revoked", |b| {
        b.iter(|| runtime.block_on(call(&on_none, black_box(&authorization))))
    });
    group.bench_function("bearer_100k_revoked", |b| {
        b.iter(|| runtime.block_on(call(&on_full, black_box(&authorization))))
    });
    let revoked = with_iat(Principal::unverified(issuer.issuer(), "user-050000@example.com"));
    group.bench_function("check_100k_match", |b| {
        b.iter(|| full.check(black_box(&revoked)).is_err())
    });
    group.finish();

    // A plain timed loop, the three side by side.
    const N: u32 = 200_000;
    let per_request = |service: &_| {
        let start = Instant::now();
        runtime.block_on(async {
            for _ in 0..N {
                black_box(call(service, &authorization).await);
            }
        });
        start.elapsed() / N
    };
    let (t_off, t_none, t_full) = (per_request(&off), per_request(&on_none), per_request(&on_full));
    println!(
        "per request (cached token): off {t_off:?}, none revoked {t_none:?} ({:+} ns), 100k revoked {t_full:?} ({:+} ns)",
        t_none.as_nanos() as i128 - t_off.as_nanos() as i128,
        t_full.as_nanos() as i128 - t_off.as_nanos() as i128,
    );

    runtime.block_on(propagation());
}

/// Revoke on one store, poll the other's local check until it refuses.
async fn propagation() {
    if std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("propagation: skipped (no redis-server on PATH)");
        return;
    }
    let redis = redis_support::Redis::start().await;
    let store = |prefix: &str| SharedStore::redis(RedisConfig::new(redis.url()).key_prefix(prefix)).expect("store");
    let a = store("bench:").revocations();
    let b = store("bench:").revocations();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(a.is_fresh() && b.is_fresh()) {
        assert!(Instant::now() < deadline, "subscriptions never came alive");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut samples = Vec::new();
    for i in 0..100 {
        let who = format!("victim-{i}");
        let principal = with_iat(Principal::unverified("https://idp", who.clone()));
        let start = Instant::now();
        a.revoke(Revocation::subject(who)).await.expect("revoke");
        while b.check(&principal).is_ok() {
            assert!(start.elapsed() < Duration::from_secs(5), "revocation never arrived");
            tokio::task::yield_now().await;
        }
        samples.push(start.elapsed());
    }
    samples.sort();
    // The per-request check of a Redis-backed replica: a freshness test
    // (clock read) before the same local lookup.
    let unrelated = with_iat(Principal::unverified("https://idp", "bystander"));
    let memory = filled(100).await;
    const CHECKS: u32 = 1_000_000;
    let timed = |r: &Revocations| {
        let start = Instant::now();
        for _ in 0..CHECKS {
            black_box(r.check(black_box(&unrelated)).is_ok());
        }
        start.elapsed() / CHECKS
    };
    println!(
        "check, not revoked, 100 revocations: in memory {:?}, Redis-backed (fresh) {:?}",
        timed(&memory),
        timed(&b)
    );
    println!(
        "propagation to another replica over {} revocations (revoke call included): p50 {:?}, p99 {:?}, max {:?}",
        samples.len(),
        samples[samples.len() / 2],
        samples[samples.len() * 99 / 100],
        samples[samples.len() - 1],
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
