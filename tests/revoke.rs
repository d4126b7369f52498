//! Revocations end to end: real guarded servers on loopback, tokens from the
//! test issuer, and (for the fleet) a real `redis-server` shared by two or
//! three replicas. No timing assertions: every wait is a poll with a
//! deadline.

mod common;
mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use rmcp_guard::Guard;
use rmcp_guard::limit::RequestLimits;
use rmcp_guard::oauth::{Issuer, ResourceServer};
use rmcp_guard::revoke::{Revocation, RevokeError};
use rmcp_guard::store::{RedisConfig, SharedStore};
use rmcp_guard_testkit::{TestIssuer, TokenBuilder};
use serde_json::json;
use support::redis::Redis;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// One replica: a `Guard` on `store`, serving the test tools on 127.0.0.1:0.
struct Replica {
    url: String,
    task: JoinHandle<()>,
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn replica(issuer: &TestIssuer, store: SharedStore) -> Replica {
    replica_of(Issuer::with_jwks_uri(issuer.issuer(), issuer.jwks_uri()), store, None).await
}

/// A replica trusting `issuer`, accepting `audience` (default: its URL).
async fn replica_of(issuer: Issuer, store: SharedStore, audience: Option<&str>) -> Replica {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    let mut builder = ResourceServer::builder(url.clone(), issuer).required_scopes([SCOPE]);
    if let Some(audience) = audience {
        builder = builder.audiences([audience]);
    }
    let rs = builder.build().unwrap();
    // These tests are about revocations: no request limits, so that with a
    // Redis store every 503 is the revocations' (tests/limits_redis.rs
    // covers limits over Redis).
    let app = Guard::new(rs)
        .limits(RequestLimits::default().dangerous().unlimited())
        .stateless()
        .shared_store(store)
        .router(|| Ok(Tools::new()));
    let task = tokio::spawn(async move {
        let _ = rmcp_guard::serve(listener, app).await;
    });
    Replica { url, task }
}

fn token<'a>(issuer: &'a TestIssuer, replica: &Replica) -> TokenBuilder<'a> {
    issuer.token().audience(replica.url.clone()).scope(SCOPE)
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Sleep until the clock has passed `second` (iat has whole seconds: a
/// token minted in the revocation's second is revoked too).
async fn wait_past(second: u64) {
    while now_unix() <= second {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// 401 `invalid_token` "token revoked", and nothing of the token echoed.
fn assert_revoked(reply: &Reply, token: &str) {
    assert_eq!(reply.status, 401, "{reply:?}");
    let challenge = reply.challenge().expect("a challenge");
    assert_eq!(challenge.get("error"), Some("invalid_token"), "{challenge:?}");
    assert_eq!(
        challenge.get("error_description"),
        Some("token revoked"),
        "{challenge:?}"
    );
    assert!(challenge.get("resource_metadata").is_some(), "{challenge:?}");
    assert_token_not_echoed(reply, token);
}

/// Poll `url` with `token` until `done` says so (deadline 10 s); the last reply.
async fn poll_until(url: &str, token: &str, what: &str, done: impl Fn(&Reply) -> bool) -> Reply {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = call_echo(url, token, "poll").await;
        if done(&reply) {
            return reply;
        }
        assert!(Instant::now() < deadline, "{what}: still {reply:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------
// In memory: one replica.

#[tokio::test]
async fn a_revoked_subject_is_refused_even_from_the_cache_and_later_tokens_work() {
    let issuer = TestIssuer::start().await.unwrap();
    let store = SharedStore::memory();
    let server = replica(&issuer, store.clone()).await;
    let alice = token(&issuer, &server).subject("alice").sign();
    let bob = token(&issuer, &server).subject("bob").sign();
    // Twice: the second answer comes from the verified-token cache.
    assert_echoed(&call_echo(&server.url, &alice, "1").await, "1");
    assert_echoed(&call_echo(&server.url, &alice, "2").await, "2");

    let revoked = store.revocations().revoke(Revocation::subject("alice")).await.unwrap();
    assert!(revoked.expires_at >= revoked.revoked_at + 24 * 3600, "{revoked:?}");
    // The cached token is refused at once; another user is not.
    assert_revoked(&call_echo(&server.url, &alice, "3").await, &alice);
    assert_revoked(&call_echo(&server.url, &alice, "4").await, &alice);
    assert_echoed(&call_echo(&server.url, &bob, "5").await, "5");
    // A token minted in the revocation's second is refused too...
    let same_second = token(&issuer, &server)
        .subject("alice")
        .claim("iat", json!(revoked.revoked_at))
        .sign();
    assert_revoked(&call_echo(&server.url, &same_second, "6").await, &same_second);
    // ...and one issued after it works: alice signed in again.
    wait_past(revoked.revoked_at).await;
    let fresh = token(&issuer, &server).subject("alice").sign();
    assert_echoed(&call_echo(&server.url, &fresh, "7").await, "7");
    // The old token stays refused.
    assert_revoked(&call_echo(&server.url, &alice, "8").await, &alice);
}

#[tokio::test]
async fn client_tenant_and_jti_revocations_refuse_only_what_they_name() {
    let issuer = TestIssuer::start().await.unwrap();
    let store = SharedStore::memory();
    let server = replica(&issuer, store.clone()).await;
    let revocations = store.revocations();

    let ci = token(&issuer, &server).subject("u1").client_id("leaky-ci").sign();
    let other_client = token(&issuer, &server).subject("u1").client_id("ide").sign();
    let globex = token(&issuer, &server)
        .subject("u2")
        .claim("tenant", json!("globex"))
        .sign();
    let acme = token(&issuer, &server)
        .subject("u2")
        .claim("tenant", json!("acme"))
        .sign();
    let stolen = token(&issuer, &server)
        .subject("u3")
        .claim("jti", json!("tok-1"))
        .sign();
    let sibling = token(&issuer, &server)
        .subject("u3")
        .claim("jti", json!("tok-2"))
        .sign();
    let all = [&ci, &other_client, &globex, &acme, &stolen, &sibling];
    for t in all {
        assert_echoed(&call_echo(&server.url, t, "before").await, "before");
    }

    revocations.revoke(Revocation::client("leaky-ci")).await.unwrap();
    revocations.revoke(Revocation::tenant("globex")).await.unwrap();
    revocations.revoke(Revocation::jti("tok-1")).await.unwrap();
    // Scoped to another issuer: this issuer's tokens are untouched.
    revocations
        .revoke(Revocation::subject("u1").issuer("https://other-idp.example.com"))
        .await
        .unwrap();
    assert_eq!(revocations.len(), 4);

    for t in [&ci, &globex, &stolen] {
        assert_revoked(&call_echo(&server.url, t, "after").await, t);
    }
    for t in [&other_client, &acme, &sibling] {
        assert_echoed(&call_echo(&server.url, t, "after").await, "after");
    }
    // Revoking this issuer's u1 (scoped to it) refuses u1's tokens.
    revocations
        .revoke(Revocation::subject("u1").issuer(issuer.issuer()))
        .await
        .unwrap();
    assert_revoked(&call_echo(&server.url, &other_client, "x").await, &other_client);
    assert!(matches!(
        revocations.revoke(Revocation::tenant("")).await,
        Err(RevokeError::Invalid(_))
    ));
}

#[tokio::test]
async fn a_token_without_iat_cannot_prove_it_is_newer() {
    let issuer = TestIssuer::start().await.unwrap();
    let store = SharedStore::memory();
    let server = replica(&issuer, store.clone()).await;
    let revoked = store.revocations().revoke(Revocation::subject("dave")).await.unwrap();
    wait_past(revoked.revoked_at).await;
    let without_iat = token(&issuer, &server).subject("dave").without_claim("iat").sign();
    assert_revoked(&call_echo(&server.url, &without_iat, "x").await, &without_iat);
    let with_iat = token(&issuer, &server).subject("dave").sign();
    assert_echoed(&call_echo(&server.url, &with_iat, "y").await, "y");
}

#[tokio::test]
async fn a_token_living_longer_than_the_bound_is_refused() {
    let issuer = TestIssuer::start().await.unwrap();
    let server = replica(&issuer, SharedStore::memory()).await;
    let day = token(&issuer, &server)
        .expires_in(Duration::from_secs(24 * 3600))
        .sign();
    assert_echoed(&call_echo(&server.url, &day, "ok").await, "ok");
    let longer = token(&issuer, &server)
        .expires_in(Duration::from_secs(24 * 3600 + 120))
        .sign();
    let reply = call_echo(&server.url, &longer, "no").await;
    assert_eq!(reply.status, 401, "{reply:?}");
    assert_eq!(
        reply.challenge().unwrap().get("error_description"),
        Some("token lifetime too long")
    );
}

#[tokio::test]
async fn introspected_tokens_are_checked_too() {
    const AUDIENCE: &str = "https://mcp.example.com/mcp";
    let now = now_unix();
    let introspection = StubServer::start(|_| {
        vec![(
            "/introspect".to_owned(),
            json!({"active": true, "sub": "ivan", "aud": AUDIENCE, "scope": SCOPE,
                   "iat": now - 10, "exp": now + 300}),
        )]
    })
    .await;
    let store = SharedStore::memory();
    let issuer = Issuer::introspection(
        "https://idp.example.com",
        introspection.url("/introspect"),
        rmcp_guard::oauth::ClientAuth::client_secret("id", "secret").unwrap(),
    );
    let server = replica_of(issuer, store.clone(), Some(AUDIENCE)).await;
    assert_echoed(&call_echo(&server.url, "opaque-ivan", "1").await, "1");
    // The answer is cached: the provider is not asked again.
    assert_echoed(&call_echo(&server.url, "opaque-ivan", "2").await, "2");
    let asked = introspection.hits();
    store
        .revocations()
        .revoke(Revocation::subject("ivan").issuer("https://idp.example.com"))
        .await
        .unwrap();
    assert_revoked(&call_echo(&server.url, "opaque-ivan", "3").await, "opaque-ivan");
    assert_eq!(introspection.hits(), asked, "refused from the cache");
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn revocations_and_the_refusals_they_cause_are_audited_without_tokens() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("rmcp_guard=info")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // See tests/bearer.rs: a second live Dispatch avoids tracing's cached
    // "never" interest for callsites first hit on another test thread.
    let _second_dispatch = tracing::Dispatch::new(tracing_subscriber::registry());
    let _guard = tracing::subscriber::set_default(subscriber);

    let issuer = TestIssuer::start().await.unwrap();
    let store = SharedStore::memory();
    let server = replica(&issuer, store.clone()).await;
    let erin = token(&issuer, &server).subject("erin").sign();
    assert_echoed(&call_echo(&server.url, &erin, "a").await, "a");
    store
        .revocations()
        .revoke(Revocation::subject("erin").requested_by("root"))
        .await
        .unwrap();
    assert_revoked(&call_echo(&server.url, &erin, "b").await, &erin);

    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let audit: Vec<&str> = log.lines().filter(|l| l.contains("rmcp_guard::audit")).collect();
    let revocation = audit
        .iter()
        .find(|l| l.contains("event=\"revocation\""))
        .unwrap_or_else(|| panic!("a revocation event:\n{log}"));
    for field in ["kind=\"subject\"", "value=\"erin\"", "by=\"root\"", "outcome=\"allow\""] {
        assert!(revocation.contains(field), "{field} in {revocation}");
    }
    assert!(
        audit
            .iter()
            .any(|l| l.contains("event=\"authn\"") && l.contains("reason=\"revoked\"") && l.contains("erin")),
        "the refusal is audited as revoked:\n{log}"
    );
    for segment in std::iter::once(erin.as_str()).chain(erin.split('.')) {
        assert!(!log.contains(segment), "the log contains a token (segment):\n{log}");
    }
}

// ---------------------------------------------------------------------------
// With Redis: a fleet.

fn redis_store(redis: &Redis) -> SharedStore {
    SharedStore::redis(RedisConfig::new(redis.url()).key_prefix("revoke-test:")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_on_one_replica_is_enforced_by_every_replica_and_survives_redis_restarts() {
    let mut redis = Redis::start().await;
    let issuer = TestIssuer::start().await.unwrap();
    let store_a = redis_store(&redis);
    let store_b = redis_store(&redis);
    let a = replica(&issuer, store_a.clone()).await;
    let b = replica(&issuer, store_b.clone()).await;
    // One token per replica: each has its own resource URI (audience).
    let alice_a = token(&issuer, &a).subject("alice").sign();
    let alice_b = token(&issuer, &b).subject("alice").sign();
    let bob_b = token(&issuer, &b).subject("bob").sign();
    // Each replica answers once its first resync is done.
    poll_until(&a.url, &alice_a, "replica A synced", |r| r.status == 200).await;
    poll_until(&b.url, &alice_b, "replica B synced", |r| r.status == 200).await;
    assert_echoed(&call_echo(&b.url, &alice_b, "cached").await, "cached");

    let revoked = store_a
        .revocations()
        .revoke(Revocation::subject("alice"))
        .await
        .unwrap();
    assert!(store_a.revocations().is_shared());
    assert_revoked(&call_echo(&a.url, &alice_a, "a").await, &alice_a);
    // B learns it through the subscription (deadline: no timing assertion).
    let reply = poll_until(&b.url, &alice_b, "revocation reached B", |r| r.status != 200).await;
    assert_revoked(&reply, &alice_b);
    assert_echoed(&call_echo(&b.url, &bob_b, "bob").await, "bob");

    // Redis down: neither replica can know, both fail closed with 503.
    redis.stop();
    let bob_a = token(&issuer, &a).subject("bob").sign();
    for (replica, t) in [(&a, &bob_a), (&b, &bob_b)] {
        let reply = poll_until(&replica.url, t, "stale replica fails closed", |r| r.status == 503).await;
        assert_unavailable(&reply, t);
        assert_eq!(reply.headers["retry-after"], "1");
        assert!(reply.body.contains("temporarily_unavailable"), "{reply:?}");
    }

    // Back: both recover by themselves; the revocation survived (AOF).
    redis.restart().await;
    poll_until(&b.url, &bob_b, "B recovered", |r| r.status == 200).await;
    poll_until(&a.url, &bob_a, "A recovered", |r| r.status == 200).await;
    assert_revoked(&call_echo(&a.url, &alice_a, "after").await, &alice_a);
    assert_revoked(&call_echo(&b.url, &alice_b, "after").await, &alice_b);

    // A replica started after the revocation enforces it (resync).
    let c = replica(&issuer, redis_store(&redis)).await;
    let alice_c = token(&issuer, &c)
        .subject("alice")
        .claim("iat", json!(revoked.revoked_at))
        .sign();
    let reply = poll_until(&c.url, &alice_c, "C synced", |r| r.status != 503).await;
    assert_revoked(&reply, &alice_c);
    wait_past(revoked.revoked_at).await;
    let fresh_c = token(&issuer, &c).subject("alice").sign();
    assert_echoed(&call_echo(&c.url, &fresh_c, "new").await, "new");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_fails_closed_unless_allowed_when_stale_and_recovers() {
    let redis = Redis::start().await;
    let issuer = TestIssuer::start().await.unwrap();
    let strict_store = redis_store(&redis);
    let lenient_store = redis_store(&redis);
    let lenient = lenient_store.revocations().dangerous().allow_when_stale();
    let strict = replica(&issuer, strict_store.clone()).await;
    let relaxed = replica(&issuer, lenient_store.clone()).await;
    let mallory = token(&issuer, &relaxed).subject("mallory").sign();
    let carol_strict = token(&issuer, &strict).subject("carol").sign();
    let carol_relaxed = token(&issuer, &relaxed).subject("carol").sign();
    poll_until(&strict.url, &carol_strict, "strict synced", |r| r.status == 200).await;
    poll_until(&relaxed.url, &carol_relaxed, "relaxed synced", |r| r.status == 200).await;
    strict_store
        .revocations()
        .revoke(Revocation::subject("mallory"))
        .await
        .unwrap();
    poll_until(&relaxed.url, &mallory, "revocation reached the other", |r| {
        r.status == 401
    })
    .await;

    // SIGSTOP: connections stay open, nothing answers (pings time out).
    redis.pause();
    let reply = poll_until(&strict.url, &carol_strict, "hung Redis fails closed", |r| {
        r.status == 503
    })
    .await;
    assert_unavailable(&reply, &carol_strict);
    let deadline = Instant::now() + Duration::from_secs(10);
    while lenient.is_fresh() {
        assert!(Instant::now() < deadline, "a hung Redis still counts as fresh");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The opt-out keeps serving on the last known set: carol works,
    // mallory stays revoked.
    assert_echoed(&call_echo(&relaxed.url, &carol_relaxed, "stale").await, "stale");
    assert_revoked(&call_echo(&relaxed.url, &mallory, "stale").await, &mallory);

    redis.resume();
    poll_until(&strict.url, &carol_strict, "recovered after resume", |r| {
        r.status == 200
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_in_redis_expire_and_the_sync_task_stops_with_the_last_handle() {
    let redis = Redis::start().await;
    let store = redis_store(&redis);
    let revocations = store.revocations();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !revocations.is_fresh() {
        assert!(Instant::now() < deadline, "the subscription never came alive");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let revoked = revocations.revoke(Revocation::jti("j-1")).await.unwrap();

    let client = redis::Client::open(redis.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    for key in ["revoke-test:revocations:expiry", "revoke-test:revocations:at"] {
        let ttl: i64 = redis::cmd("TTL").arg(key).query_async(&mut connection).await.unwrap();
        let expected = (revoked.expires_at - now_unix()) as i64;
        assert!(
            (expected - 2..=expected + 1).contains(&ttl),
            "{key}: TTL {ttl}, expected {expected}"
        );
    }
    let numsub = |connection: &mut redis::aio::MultiplexedConnection| {
        let mut connection = connection.clone();
        async move {
            let (_, n): (String, i64) = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg("revoke-test:revocations:channel")
                .query_async::<Vec<(String, i64)>>(&mut connection)
                .await
                .unwrap()
                .remove(0);
            n
        }
    };
    assert_eq!(numsub(&mut connection).await, 1, "one subscriber: this store's task");
    drop(revocations);
    drop(store);
    let deadline = Instant::now() + Duration::from_secs(5);
    while numsub(&mut connection).await != 0 {
        assert!(Instant::now() < deadline, "the sync task outlived its last handle");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A store outliving the runtime its sync task ran on (a test runtime, a
/// restarted runtime): the next check starts the task on the current one.
#[test]
fn the_sync_task_starts_again_on_another_runtime() {
    let first = tokio::runtime::Runtime::new().unwrap();
    let redis = first.block_on(Redis::start());
    let (store, revocations) = first.block_on(async {
        let store = redis_store(&redis);
        let revocations = store.revocations();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !revocations.is_fresh() {
            assert!(Instant::now() < deadline, "never synced");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (store, revocations)
    });
    drop(first);

    let second = tokio::runtime::Runtime::new().unwrap();
    second.block_on(async {
        let other = redis_store(&redis);
        let victim = rmcp_guard::Principal::unverified("https://idp", "zed").build();
        let deadline = Instant::now() + Duration::from_secs(10);
        // Revoke until it lands (the other store's first write may race its
        // connection), then wait for this store's copy to learn it.
        while other.revocations().revoke(Revocation::subject("zed")).await.is_err() {
            assert!(Instant::now() < deadline, "the other store never wrote");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        while revocations.check(&victim).is_ok() || !revocations.is_fresh() {
            assert!(Instant::now() < deadline, "the sync task did not start again");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    drop((store, second));
}
