//! The cost of the bearer layer per request, in front of a trivial service.
//!
//! ```text
//! cargo bench --bench layer
//! ```
//!
//! - `first_seen/*`: a token the verified-token cache does not know (the cache
//!   is disabled, so every call parses the token and checks its signature;
//!   the signing keys are already cached, as they are after the first request).
//! - `cached`: the same token again, answered from the verified-token cache.
//!   Target: under 2 us.
//! - `rejected/*`: no credentials (answered before any parsing), and an
//!   expired token (refused after its signature was checked).

use std::convert::Infallible;
use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderValue, Request, Response, header};
use http_body_util::Empty;
use rmcp_guard::oauth::{BearerAuthLayer, Issuer, ResourceServer};
use rmcp_guard_testkit::{KeyAlg, TestIssuer};
use tower::{Layer, Service, ServiceExt, service_fn};

const RESOURCE: &str = "http://127.0.0.1:8080/mcp";

type Inner = fn(Request<()>) -> std::future::Ready<Result<Response<Empty<Bytes>>, Infallible>>;

fn ok(_req: Request<()>) -> std::future::Ready<Result<Response<Empty<Bytes>>, Infallible>> {
    std::future::ready(Ok(Response::new(Empty::new())))
}

fn request(authorization: Option<&HeaderValue>) -> Request<()> {
    let mut req = Request::post("/mcp").body(()).expect("request");
    if let Some(value) = authorization {
        req.headers_mut().insert(header::AUTHORIZATION, value.clone());
    }
    req
}

async fn call<S>(service: &S, authorization: Option<&HeaderValue>) -> u16
where
    S: Service<Request<()>, Error = Infallible> + Clone,
    S::Response: HasStatus,
{
    let response = service
        .clone()
        .oneshot(request(authorization))
        .await
        .expect("infallible");
    response.status_code()
}

trait HasStatus {
    fn status_code(&self) -> u16;
}

impl<B> HasStatus for Response<B> {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

fn bearer(token: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("Bearer {token}")).expect("header value")
}

fn layer_cost(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let issuer = rt.block_on(TestIssuer::start()).expect("test issuer");
    let server = |cache_capacity: usize| {
        let rs = ResourceServer::builder(RESOURCE, Issuer::with_jwks_uri(issuer.issuer(), issuer.jwks_uri()))
            .required_scopes(["mcp:tools"])
            .token_cache(rmcp_guard::oauth::TokenCacheConfig::default().capacity(cache_capacity))
            .build()
            .expect("configuration");
        rt.block_on(rs.warm_up()).expect("keys load");
        BearerAuthLayer::new(rs).layer(service_fn(ok as Inner))
    };
    let cached = server(10_000);
    let uncached = server(0);

    let mut group = c.benchmark_group("bearer_layer");
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_secs(1));

    for alg in [KeyAlg::Rs256, KeyAlg::Es256, KeyAlg::EdDsa] {
        let token = bearer(
            &issuer
                .token()
                .audience(RESOURCE)
                .scope("mcp:tools")
                .algorithm(alg)
                .sign(),
        );
        assert_eq!(rt.block_on(call(&uncached, Some(&token))), 200);
        group.bench_function(format!("first_seen/{}", alg.name()), |b| {
            b.to_async(&rt)
                .iter(|| async { black_box(call(&uncached, Some(&token)).await) })
        });
    }

    let token = bearer(&issuer.token().audience(RESOURCE).scope("mcp:tools").sign());
    assert_eq!(rt.block_on(call(&cached, Some(&token))), 200);
    group.bench_function("cached", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(call(&cached, Some(&token)).await) })
    });

    assert_eq!(rt.block_on(call(&cached, None)), 401);
    group.bench_function("rejected/missing_token", |b| {
        b.to_async(&rt).iter(|| async { black_box(call(&cached, None).await) })
    });

    let expired = bearer(&issuer.token().audience(RESOURCE).scope("mcp:tools").expired().sign());
    assert_eq!(rt.block_on(call(&cached, Some(&expired))), 401);
    group.bench_function("rejected/expired", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(call(&cached, Some(&expired)).await) })
    });

    group.finish();
}

criterion_group!(benches, layer_cost);
criterion_main!(benches);
