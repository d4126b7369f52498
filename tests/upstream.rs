//! Upstreams that go down and come back, over real HTTP: the circuit breakers
//! of the introspection endpoint, of an issuer's JWKS and of Vault.
//!
//! Each upstream is a real server on a loopback port: an RFC 7662
//! introspection endpoint written below (stopped and started again on the
//! same port), the [`TestIssuer`] (its JWKS answering 503), and an OpenBao
//! dev server (`bao`, killed and restarted). Assertions are on statuses,
//! `Retry-After`, the upstream's own request counts and the `circuit` audit
//! events, never on elapsed time; every wait is bounded.

mod common;
mod support;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use common::*;
use rmcp_guard::breaker::BreakerConfig;
use rmcp_guard::oauth::{ClientAuth, Issuer, KeyRefresh};
use rmcp_guard::secrets::{SecretError, SecretStore, VaultAuth, VaultStore};
use rmcp_guard_testkit::{KeyAlg, TestIssuer, TestKey};
use serde_json::json;
use support::bao::{Bao, ROOT};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};

// ---------------------------------------------------------------------------
// Audit capture: every `circuit` event of this test binary.

/// One `circuit` audit event's fields.
type Fields = BTreeMap<String, String>;

fn circuit_events() -> &'static Mutex<Vec<Fields>> {
    static EVENTS: OnceLock<Mutex<Vec<Fields>>> = OnceLock::new();
    EVENTS.get_or_init(|| Mutex::new(Vec::new()))
}

struct Capture;

struct Collect<'a>(&'a mut Fields);

impl Visit for Collect<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if event.metadata().target() != rmcp_guard::audit::TARGET {
            return;
        }
        let mut fields = Fields::new();
        event.record(&mut Collect(&mut fields));
        if fields.get("event").map(String::as_str) == Some("circuit") {
            circuit_events().lock().unwrap().push(fields);
        }
    }
}

fn capture_audit() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry().with(Capture));
    });
}

/// The `(previous, state)` pairs of the breaker guarding `endpoint`, in order.
fn transitions(endpoint: &str) -> Vec<(String, String)> {
    circuit_events()
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.get("endpoint").map(String::as_str) == Some(endpoint))
        .map(|e| (e["previous"].clone(), e["state"].clone()))
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

// ---------------------------------------------------------------------------
// An RFC 7662 introspection endpoint that can be stopped and started again.

/// Answers `active: true` for tokens starting with `good-`, counts requests.
struct Introspection {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    running: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl Introspection {
    async fn start() -> Introspection {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut server = Introspection {
            addr,
            hits: Arc::new(AtomicUsize::new(0)),
            running: None,
        };
        server.serve(listener);
        server
    }

    fn issuer(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn endpoint(&self) -> String {
        format!("http://{}/introspect", self.addr)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn serve(&mut self, listener: TcpListener) {
        async fn introspect(
            State((hits, issuer)): State<(Arc<AtomicUsize>, String)>,
            body: String,
        ) -> axum::Json<serde_json::Value> {
            hits.fetch_add(1, Ordering::SeqCst);
            let token = url::form_urlencoded::parse(body.as_bytes())
                .find(|(k, _)| k == "token")
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default();
            if !token.starts_with("good-") {
                return axum::Json(json!({"active": false}));
            }
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
            axum::Json(json!({
                "active": true, "iss": issuer, "sub": "alice", "client_id": "mcp-client",
                "aud": AUDIENCE, "scope": SCOPE, "exp": now + 300, "token_type": "Bearer",
            }))
        }
        let app = Router::new()
            .route("/introspect", post(introspect))
            .with_state((self.hits.clone(), self.issuer()));
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = rmcp_guard::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
        });
        self.running = Some((tx, task));
    }

    /// Stop: the port refuses connections until [`restart`](Self::restart).
    async fn stop(&mut self) {
        if let Some((tx, task)) = self.running.take() {
            let _ = tx.send(());
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }

    /// Listen again on the same port.
    async fn restart(&mut self) {
        let listener = TcpListener::bind(self.addr).await.expect("the same port again");
        self.serve(listener);
    }
}

impl Drop for Introspection {
    fn drop(&mut self) {
        if let Some((tx, task)) = self.running.take() {
            let _ = tx.send(());
            task.abort();
        }
    }
}

/// The audience of the opaque tokens.
const AUDIENCE: &str = "urn:test:mcp";

/// A fresh opaque token the endpoint calls active.
fn opaque() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("good-{}", NEXT.fetch_add(1, Ordering::SeqCst))
}

fn retry_after(reply: &Reply) -> u64 {
    reply.headers["retry-after"].to_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn introspection_outage_opens_the_breaker_and_one_probe_closes_it() {
    capture_audit();
    let mut upstream = Introspection::start().await;
    let issuer = Issuer::introspection(
        upstream.issuer(),
        upstream.endpoint(),
        ClientAuth::client_secret("rs", "rs-secret").unwrap(),
    );
    let breaker = BreakerConfig::default()
        .failure_threshold(3)
        .cool_down(Duration::from_secs(2));
    let server = start_guarded_with(issuer, Mode::Stateless, |b| b.breaker(breaker).audiences([AUDIENCE])).await;

    let cached = opaque();
    assert_echoed(&call_echo(&server.url, &cached, "up").await, "up");
    assert_eq!(upstream.hits(), 1);

    // Down: each new token finds the endpoint dead; the third failure opens.
    upstream.stop().await;
    for _ in 0..3 {
        let token = opaque();
        assert_unavailable(&call_echo(&server.url, &token, "x").await, &token);
    }
    assert_eq!(transitions(&upstream.endpoint()), pairs(&[("closed", "open")]));
    // A token verified before the outage is answered from the cache.
    assert_echoed(&call_echo(&server.url, &cached, "cached").await, "cached");

    // Back up, but the breaker is open: answered at once, nothing asked,
    // until the cool-down lets one probe through, which closes it.
    upstream.restart().await;
    let mut fast_failures = 0;
    let mut closed = false;
    for _ in 0..50 {
        let token = opaque();
        let reply = call_echo(&server.url, &token, "back").await;
        if reply.status == 200 {
            assert_echoed(&reply, "back");
            closed = true;
            break;
        }
        assert_unavailable(&reply, &token);
        let secs = retry_after(&reply);
        assert!((1..=2).contains(&secs), "the remaining open time, rounded up: {secs}");
        assert_eq!(upstream.hits(), 1, "an open breaker sends nothing upstream");
        fast_failures += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(closed, "the breaker let a probe through after its cool-down");
    assert!(fast_failures > 0, "the open breaker answered at once at least once");
    assert_eq!(upstream.hits(), 2, "exactly one probe");
    assert_eq!(
        transitions(&upstream.endpoint()),
        pairs(&[("closed", "open"), ("open", "half_open"), ("half_open", "closed")])
    );
    let token = opaque();
    assert_echoed(&call_echo(&server.url, &token, "closed").await, "closed");
    assert_eq!(upstream.hits(), 3);
}

#[tokio::test]
async fn cached_keys_keep_working_while_the_jwks_breaker_is_open() {
    capture_audit();
    let idp = TestIssuer::start().await.unwrap();
    let server = start_guarded_with(
        Issuer::with_jwks_uri(idp.issuer(), idp.jwks_uri()),
        Mode::Stateless,
        |b| {
            b.key_refresh(
                KeyRefresh::default()
                    .unknown_kid_cooldown(Duration::ZERO)
                    .retry_after_failure(Duration::ZERO),
            )
            .breaker(
                BreakerConfig::default()
                    .failure_threshold(2)
                    .cool_down(Duration::from_secs(30)),
            )
        },
    )
    .await;
    let token = unique(token_for(&idp, &server)).sign();
    assert_echoed(&call_echo(&server.url, &token, "warm").await, "warm");

    // The JWKS answers 503; tokens under unknown kids make the server fetch.
    idp.set_available(false);
    let attacker = TestKey::generate(KeyAlg::Rs256);
    let forged = |i: usize| {
        token_for(&idp, &server)
            .signed_with(&attacker)
            .header("kid", json!(format!("rotated-{i}")))
            .sign()
    };
    for i in 0..2 {
        let token = forged(i);
        assert_unavailable(&call_echo(&server.url, &token, "x").await, &token);
    }
    assert_eq!(transitions(idp.issuer()), pairs(&[("closed", "open")]));
    let fetches = idp.jwks_fetches();
    let token = forged(2);
    let reply = call_echo(&server.url, &token, "x").await;
    assert_unavailable(&reply, &token);
    assert!(retry_after(&reply) > 1, "the breaker's remaining cool-down: {reply:?}");
    assert_eq!(idp.jwks_fetches(), fetches, "an open breaker fetches nothing");

    // A new token under a cached key needs no fetch: the breaker is not in its way.
    let token = unique(token_for(&idp, &server)).sign();
    assert_echoed(&call_echo(&server.url, &token, "cached key").await, "cached key");
    assert_eq!(idp.jwks_fetches(), fetches);
}

#[tokio::test]
async fn vault_outage_fails_fast_until_a_probe_succeeds() {
    capture_audit();
    let mut bao = Bao::start().await;
    bao.kv_put("mcp/acme/svc", json!({"username": "u"})).await;
    let store = VaultStore::builder(bao.addr(), VaultAuth::token(ROOT))
        .timeout(Duration::from_secs(2))
        .breaker(
            BreakerConfig::default()
                .failure_threshold(2)
                .cool_down(Duration::from_secs(2)),
        )
        .build()
        .await
        .unwrap();
    assert!(store.get("mcp/acme/svc").await.is_ok());

    bao.stop();
    for _ in 0..2 {
        assert_eq!(store.get("mcp/acme/svc").await.err(), Some(SecretError::Unreachable));
    }
    let open = store.get("mcp/acme/svc").await.err();
    assert!(
        matches!(
            open,
            Some(SecretError::CircuitOpen {
                retry_after_secs: 1..=2
            })
        ),
        "{open:?}"
    );
    assert_eq!(transitions(&bao.addr()), pairs(&[("closed", "open")]));

    // Restarted (empty, as a dev server is): the probe's answer, "not found",
    // is Vault working, and closes the breaker.
    bao.restart().await;
    let mut answer = None;
    for _ in 0..50 {
        match store.get("mcp/acme/svc").await {
            Err(SecretError::CircuitOpen { .. }) => tokio::time::sleep(Duration::from_millis(100)).await,
            other => {
                answer = Some(other);
                break;
            }
        }
    }
    assert!(matches!(answer, Some(Err(SecretError::NotFound))), "{answer:?}");
    assert_eq!(
        transitions(&bao.addr()),
        pairs(&[("closed", "open"), ("open", "half_open"), ("half_open", "closed")])
    );
}
