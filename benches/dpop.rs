//! DPoP-bound requests against bearer requests on the same server, in one
//! run: what proving possession costs per request.
//!
//! ```text
//! cargo bench --bench dpop
//! ```
//!
//! One resource server in the default mode ([`DpopMode::Allowed`]): a bound
//! token comes with a fresh proof on every request, a bearer token without.
//! Both tokens are in the verified-token cache after their first request (as
//! for any client that keeps its token), so the difference is the proof:
//! parse its header, check its key and one signature (ES256 here), its
//! claims, and record its `jti` in the replay set. Proofs are signed before
//! the timed loops (signing is the client's cost, not the server's).
//!
//! - **layer**: the bearer layer in front of a trivial service, called in
//!   process on one thread; the floor the per-request difference is compared
//!   with is one ES256 verification (aws-lc-rs, through `jsonwebtoken`),
//!   measured alone in the same run.
//! - **HTTP**: the guarded rmcp echo server of the tests (stateless JSON),
//!   over loopback keep-alive connections, 16 clients; rounds alternate
//!   bearer and DPoP so a drift in machine load hits both.
//!
//! The summary prints each mean, the ratio DPoP / bearer and the cost of
//! DPoP per request.
//!
//! [`DpopMode::Allowed`]: rmcp_guard::oauth::DpopMode::Allowed

#[path = "../tests/common/mod.rs"]
mod common;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Mode, start_guarded_with};
use http::{HeaderValue, Request, Response};
use http_body_util::Empty;
use rmcp_guard::oauth::{BearerAuthLayer, DpopConfig, Issuer, ResourceServer};
use rmcp_guard::state::MemoryReplaySet;
use rmcp_guard_testkit::{DpopKey, TestIssuer};
use serde_json::json;
use tower::{Layer, Service, ServiceExt, service_fn};

const RESOURCE: &str = "http://127.0.0.1:8080/mcp";
/// Requests of one layer round, per kind.
const LAYER_REQUESTS: usize = 20_000;
/// Requests of one HTTP round, per kind.
const HTTP_REQUESTS: usize = 8_000;
const HTTP_CLIENTS: usize = 16;
const ROUNDS: usize = 5;
/// Each phase also stops after this long (a slow machine gets fewer requests).
const PHASE_BUDGET: Duration = Duration::from_secs(20);

type Inner = fn(Request<()>) -> std::future::Ready<Result<Response<Empty<Bytes>>, Infallible>>;

fn ok(_req: Request<()>) -> std::future::Ready<Result<Response<Empty<Bytes>>, Infallible>> {
    std::future::ready(Ok(Response::new(Empty::new())))
}

/// A replay set big enough for every proof of the run (the default bounds
/// one caller to 50,000 live proofs, which a benchmark exceeds).
fn dpop() -> DpopConfig {
    DpopConfig::allowed().replay_set(Arc::new(MemoryReplaySet::with_limits(4_000_000, 4_000_000)))
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Microseconds per request of `requests` made by `each`, at most `PHASE_BUDGET`.
async fn time_layer<S>(service: &S, requests: Vec<Request<()>>) -> f64
where
    S: Service<Request<()>, Response = Response<rmcp_guard::oauth::BearerBody<Empty<Bytes>>>, Error = Infallible>
        + Clone,
{
    let started = Instant::now();
    let mut done = 0usize;
    for request in requests {
        let response = service.clone().oneshot(request).await.expect("infallible");
        assert_eq!(response.status(), 200, "every benchmark request is accepted");
        done += 1;
        if started.elapsed() > PHASE_BUDGET {
            break;
        }
    }
    started.elapsed().as_secs_f64() * 1e6 / done.max(1) as f64
}

fn layer_requests(authorization: &HeaderValue, proofs: Option<Vec<String>>, n: usize) -> Vec<Request<()>> {
    let build = |proof: Option<String>| {
        let mut req = Request::post("/mcp").body(()).expect("request");
        req.headers_mut()
            .insert(http::header::AUTHORIZATION, authorization.clone());
        if let Some(proof) = proof {
            req.headers_mut()
                .insert("dpop", HeaderValue::from_str(&proof).expect("proof header"));
        }
        req
    };
    match proofs {
        Some(proofs) => proofs.into_iter().map(|p| build(Some(p))).collect(),
        None => (0..n).map(|_| build(None)).collect(),
    }
}

/// Microseconds of one ES256 signature verification.
fn verify_floor(key: &DpopKey) -> f64 {
    let proof = key.proof("POST", RESOURCE).sign();
    let (message, signature) = proof.rsplit_once('.').expect("a JWS");
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(key.public_jwk()).expect("a JWK");
    let decoding = jsonwebtoken::DecodingKey::from_jwk(&jwk).expect("a key");
    let n = 20_000;
    let started = Instant::now();
    for _ in 0..n {
        let valid =
            jsonwebtoken::crypto::verify(signature, message.as_bytes(), &decoding, jsonwebtoken::Algorithm::ES256);
        assert!(matches!(valid, Ok(true)));
    }
    started.elapsed().as_secs_f64() * 1e6 / n as f64
}

async fn layer(issuer: &TestIssuer) {
    let rs = ResourceServer::builder(RESOURCE, Issuer::with_jwks_uri(issuer.issuer(), issuer.jwks_uri()))
        .required_scopes(["mcp:tools"])
        .dpop(dpop())
        .build()
        .expect("configuration");
    rs.warm_up().await.expect("keys load");
    let service = BearerAuthLayer::new(rs).layer(service_fn(ok as Inner));
    let key = DpopKey::es256();
    let bearer_token = issuer.token().audience(RESOURCE).scope("mcp:tools").sign();
    let bound_token = issuer
        .token()
        .audience(RESOURCE)
        .scope("mcp:tools")
        .bound_to(&key)
        .sign();
    let bearer = HeaderValue::from_str(&format!("Bearer {bearer_token}")).unwrap();
    let bound = HeaderValue::from_str(&format!("DPoP {bound_token}")).unwrap();
    let proofs = |n: usize| -> Vec<String> {
        (0..n)
            .map(|_| key.proof("POST", RESOURCE).access_token(&bound_token).sign())
            .collect()
    };
    // Warm up both paths (and put both tokens in the cache).
    time_layer(&service, layer_requests(&bearer, None, 2_000)).await;
    time_layer(&service, layer_requests(&bound, Some(proofs(2_000)), 0)).await;

    let (mut b, mut d) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        b.push(time_layer(&service, layer_requests(&bearer, None, LAYER_REQUESTS)).await);
        let requests = layer_requests(&bound, Some(proofs(LAYER_REQUESTS)), 0);
        d.push(time_layer(&service, requests).await);
    }
    let floor = verify_floor(&key);
    let ratios: Vec<f64> = b.iter().zip(&d).map(|(b, d)| b / d).collect();
    println!("layer (in process, one thread, {ROUNDS} rounds of {LAYER_REQUESTS} requests each):");
    println!("  bearer, cached token          {:8.2} us/request", mean(&b));
    println!("  DPoP, cached token + proof    {:8.2} us/request", mean(&d));
    println!(
        "  DPoP costs                    {:8.2} us/request more; throughput DPoP / bearer = {:.3} (median of rounds)",
        mean(&d) - mean(&b),
        median(ratios)
    );
    println!(
        "  floor: one ES256 verification {:8.2} us; DPoP extra / floor = {:.2}",
        floor,
        (mean(&d) - mean(&b)) / floor
    );
}

/// Requests per second of `HTTP_CLIENTS` clients sending `requests` (each a
/// ready `(authorization, proof)`), at most `PHASE_BUDGET`.
async fn time_http(url: &str, requests: Vec<(String, Option<String>)>) -> f64 {
    let queue = Arc::new(std::sync::Mutex::new(requests));
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                      "params": {"name": "echo", "arguments": {"text": "bench"}}})
    .to_string();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..HTTP_CLIENTS {
        let (queue, url, body) = (queue.clone(), url.to_owned(), body.clone());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(1)
                .timeout(Duration::from_secs(10))
                .build()
                .expect("client");
            let mut done = 0usize;
            loop {
                let next = queue.lock().expect("queue").pop();
                let Some((authorization, proof)) = next else { break };
                let mut request = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("accept", "application/json, text/event-stream")
                    .header("authorization", authorization)
                    .body(body.clone());
                if let Some(proof) = proof {
                    request = request.header("dpop", proof);
                }
                let response = request.send().await.expect("request");
                assert_eq!(response.status(), 200, "every benchmark request is accepted");
                let _ = response.bytes().await.expect("body");
                done += 1;
                if started.elapsed() > PHASE_BUDGET {
                    break;
                }
            }
            done
        }));
    }
    let mut done = 0;
    for task in tasks {
        done += task.await.expect("client task");
    }
    done as f64 / started.elapsed().as_secs_f64()
}

async fn http(issuer: &TestIssuer) {
    let server = start_guarded_with(
        Issuer::with_jwks_uri(issuer.issuer(), issuer.jwks_uri()),
        Mode::Stateless,
        |b| b.dpop(dpop()),
    )
    .await;
    let key = DpopKey::es256();
    let bearer_token = issuer.token().audience(server.url.clone()).scope("mcp:tools").sign();
    let bound_token = issuer
        .token()
        .audience(server.url.clone())
        .scope("mcp:tools")
        .bound_to(&key)
        .sign();
    let bearer = |n: usize| vec![(format!("Bearer {bearer_token}"), None); n];
    let bound = |n: usize| -> Vec<(String, Option<String>)> {
        (0..n)
            .map(|_| {
                let proof = key.proof("POST", &server.url).access_token(&bound_token).sign();
                (format!("DPoP {bound_token}"), Some(proof))
            })
            .collect()
    };
    time_http(&server.url, bearer(1_000)).await;
    time_http(&server.url, bound(1_000)).await;
    let (mut b, mut d) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        b.push(time_http(&server.url, bearer(HTTP_REQUESTS)).await);
        let requests = bound(HTTP_REQUESTS);
        d.push(time_http(&server.url, requests).await);
    }
    let ratios: Vec<f64> = b.iter().zip(&d).map(|(b, d)| d / b).collect();
    println!(
        "HTTP (guarded rmcp echo, stateless, {HTTP_CLIENTS} clients, {ROUNDS} rounds of {HTTP_REQUESTS} requests each):"
    );
    println!("  bearer  {:9.0} requests/s", mean(&b));
    println!("  DPoP    {:9.0} requests/s", mean(&d));
    println!(
        "  DPoP / bearer = {:.3} (median of rounds); {:.1} us more per request (from the mean rates)",
        median(ratios),
        (1.0 / mean(&d) - 1.0 / mean(&b)) * 1e6
    );
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to configure.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let issuer = TestIssuer::start().await.expect("test issuer");
        layer(&issuer).await;
        http(&issuer).await;
    });
}
