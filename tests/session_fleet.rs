//! Session bindings, per-principal session bounds and single-use request
//! states shared by a fleet through a real `redis-server`: two (or three)
//! `Guard` replicas on their own ports, one Redis, 2025-era sessions.
//!
//! A refusal by the binding layer is JSON-RPC `-32001 "Session not found"`;
//! a session the binding layer let through to a replica that does not hold
//! it is answered by rmcp itself, in plain text. The tests tell them apart by
//! that body.

mod common;
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Reply, Tools, client, echo_call, mcp_post};
use rmcp_guard::Guard;
use rmcp_guard::Principal;
use rmcp_guard::oauth::{Issuer, ResourceServer};
use rmcp_guard::session::SessionBindingLayer;
use rmcp_guard::state::{RedisReplaySet, RequestStateSealer, StateBinding, StateError, StateKeys};
use rmcp_guard::store::{RedisConfig, SharedStore};
use rmcp_guard_testkit::{McpClient, McpError, Protocol, TestIssuer};
use serde_json::json;
use support::redis::Redis;
use tokio::net::TcpListener;
use zeroize::Zeroizing;

const VERSION: &str = "2025-11-25";

/// One replica: a `Guard` with sessions, sharing `store`.
struct Replica {
    url: String,
    cancel: Option<Box<dyn FnOnce() + Send>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(cancel) = self.cancel.take() {
            cancel();
        }
        self.task.abort();
    }
}

async fn replica(issuer: &TestIssuer, redis: &Redis, layer: SessionBindingLayer) -> Replica {
    replica_with(issuer, redis, |guard| guard.session_binding(layer)).await
}

async fn replica_with(issuer: &TestIssuer, redis: &Redis, configure: impl FnOnce(Guard) -> Guard) -> Replica {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    let rs = ResourceServer::builder(url.clone(), Issuer::with_jwks_uri(issuer.issuer(), issuer.jwks_uri()))
        .required_scopes([common::SCOPE])
        .build()
        .unwrap();
    let config = rs.streamable_http_config().with_sse_keep_alive(None);
    let token = config.cancellation_token.clone();
    let cancel: Option<Box<dyn FnOnce() + Send>> = Some(Box::new(move || token.cancel()));
    // A generous timeout: these tests are about who gets which answer, and
    // the test Redis fsyncs every write on a busy machine.
    let store = SharedStore::redis(
        RedisConfig::new(redis.url())
            .key_prefix("fleet-test:")
            .timeout(Duration::from_millis(500)),
    )
    .unwrap();
    let guard = Guard::new(rs)
        .http_config(config)
        // These tests are about sessions: no request limits, so that with a
        // Redis store every 503 is the bindings' (tests/limits_redis.rs
        // covers limits over Redis).
        .limits(rmcp_guard::limit::RequestLimits::default().dangerous().unlimited())
        .shared_store(store.clone());
    let app = configure(guard).router(|| Ok(Tools::new()));
    // These tests are about sessions: revocation checks keep serving on the
    // last known set while Redis is down (tests/revoke.rs proves they fail
    // closed by default). A replica on Redis still refuses requests (503)
    // until its copy of the revocations has synced once: serve when it has.
    let revocations = store.revocations().dangerous().allow_when_stale();
    support::redis::synced(&revocations).await;
    let task = tokio::spawn(async move {
        let _ = rmcp_guard::serve(listener, app).await;
    });
    Replica { url, cancel, task }
}

fn token(issuer: &TestIssuer, subject: &str, replica: &Replica) -> String {
    issuer
        .token()
        .subject(subject)
        .audience(&replica.url)
        .scope(common::SCOPE)
        .sign()
}

/// Open a 2025-era session on `replica` as `subject`.
async fn open(issuer: &TestIssuer, subject: &str, replica: &Replica) -> Result<McpClient, McpError> {
    McpClient::connect(&replica.url, Protocol::V2025_11_25)
        .bearer(token(issuer, subject, replica))
        .await
}

/// `tools/call echo` on `session` at `replica` as `subject`.
async fn call(issuer: &TestIssuer, subject: &str, replica: &Replica, session: &str) -> Reply {
    let response = mcp_post(&client(), &replica.url, &echo_call("hi"))
        .bearer_auth(token(issuer, subject, replica))
        .header("mcp-session-id", session)
        .header("mcp-protocol-version", VERSION)
        .send()
        .await
        .unwrap();
    Reply::read(response).await
}

/// What answered a request on a session.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// The tool ran.
    Served,
    /// The binding layer refused: not this caller's session (JSON-RPC -32001).
    NotOwned,
    /// The binding let it through; rmcp does not hold the session here.
    NotHere,
    /// 503 with `Retry-After` (the shared store is down).
    Unavailable,
}

fn answer(reply: &Reply) -> Answer {
    match reply.status {
        200 if reply.body.contains("hi") => Answer::Served,
        404 if reply.body.contains("-32001") && reply.body.contains("Session not found") => Answer::NotOwned,
        404 if reply.body.starts_with("Not Found") => Answer::NotHere,
        503 if reply.headers.contains_key("retry-after") && reply.body.contains("store_") => Answer::Unavailable,
        _ => panic!("unexpected answer: {reply:?}"),
    }
}

async fn on(issuer: &TestIssuer, subject: &str, replica: &Replica, session: &str) -> Answer {
    let reply = call(issuer, subject, replica, session).await;
    answer(&reply)
}

fn redis_cli(redis: &Redis, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port().to_string()])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test]
async fn a_session_is_refused_to_another_principal_on_every_replica_and_survives_a_replica_restart() {
    let issuer = TestIssuer::start().await.unwrap();
    let redis = Redis::start().await;
    let a = replica(&issuer, &redis, SessionBindingLayer::default()).await;
    let b = replica(&issuer, &redis, SessionBindingLayer::default()).await;

    let alice = open(&issuer, "alice", &a).await.unwrap();
    let session = alice.session_id().expect("a 2025-era session").to_owned();
    assert_eq!(on(&issuer, "alice", &a, &session).await, Answer::Served);

    // Mallory holds Alice's session id and a valid token of her own.
    assert_eq!(on(&issuer, "mallory", &a, &session).await, Answer::NotOwned);
    assert_eq!(on(&issuer, "mallory", &b, &session).await, Answer::NotOwned);
    // The owner on B passes the binding; B does not hold the session (sticky
    // routing is still needed for 2025-era sessions).
    assert_eq!(on(&issuer, "alice", &b, &session).await, Answer::NotHere);
    // A made-up id is unknown everywhere.
    assert_eq!(on(&issuer, "alice", &b, "made-up").await, Answer::NotOwned);

    // Redis holds a digest, not the subject.
    let keys = redis_cli(&redis, &["--scan", "--pattern", "fleet-test:*"]);
    assert!(keys.contains(&format!("fleet-test:session:{session}")), "{keys}");
    let ttl: i64 = redis_cli(&redis, &["PTTL", &format!("fleet-test:session:{session}")])
        .parse()
        .unwrap();
    assert!(ttl > 0 && ttl <= 330_000, "every key expires: {ttl}");
    let dump = redis_cli(&redis, &["GET", &format!("fleet-test:session:{session}")]);
    assert!(!dump.contains("alice"), "{dump}");

    // A replica restart (a new Guard on the same Redis) keeps the binding.
    drop(b);
    let b = replica(&issuer, &redis, SessionBindingLayer::default()).await;
    assert_eq!(on(&issuer, "mallory", &b, &session).await, Answer::NotOwned);
    assert_eq!(on(&issuer, "alice", &b, &session).await, Answer::NotHere);

    // Alice closes her session on A: it is forgotten fleet-wide.
    alice.close().await.unwrap();
    assert_eq!(on(&issuer, "alice", &b, &session).await, Answer::NotOwned);
    assert_eq!(on(&issuer, "alice", &a, &session).await, Answer::NotOwned);
    assert_eq!(
        redis_cli(&redis, &["EXISTS", &format!("fleet-test:session:{session}")]),
        "0"
    );
}

#[tokio::test]
async fn the_sessions_per_principal_bound_holds_across_replicas() {
    let issuer = TestIssuer::start().await.unwrap();
    let redis = Redis::start().await;
    // Every request refreshes its binding, so a replica notices at once that
    // the fleet evicted one of its sessions.
    let layer = || {
        SessionBindingLayer::default()
            .max_sessions_per_principal(16)
            .refresh_interval(Duration::ZERO)
    };
    let a = replica(&issuer, &redis, layer()).await;
    let b = replica(&issuer, &redis, layer()).await;
    let c = replica(&issuer, &redis, layer()).await;

    let bob = open(&issuer, "bob", &a).await.unwrap();
    let mut sessions = Vec::new();
    for i in 0..20 {
        let replica = if i < 10 { &a } else { &b };
        let client = open(&issuer, "alice", replica).await.unwrap();
        sessions.push(client.session_id().unwrap().to_owned());
        // Distinct idle times (Redis scores are milliseconds).
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // On C, which holds none of them, the binding decides alone.
    let mut bound = Vec::new();
    for session in &sessions {
        bound.push(on(&issuer, "alice", &c, session).await);
    }
    let live = bound.iter().filter(|a| **a == Answer::NotHere).count();
    assert_eq!(live, 16, "{bound:?}");
    // The idlest went: the first four, opened on A.
    assert!(bound[..4].iter().all(|a| *a == Answer::NotOwned), "{bound:?}");
    // A closes them too when they are used: evicted by B's openings.
    for session in &sessions[..4] {
        assert_eq!(on(&issuer, "alice", &a, session).await, Answer::NotOwned);
    }
    for session in &sessions[4..10] {
        assert_eq!(on(&issuer, "alice", &a, session).await, Answer::Served);
    }
    for session in &sessions[10..] {
        assert_eq!(on(&issuer, "alice", &b, session).await, Answer::Served);
    }
    // Bob's session was never evicted for Alice's.
    let bob_session = bob.session_id().unwrap();
    assert_eq!(on(&issuer, "bob", &a, bob_session).await, Answer::Served);
    // Redis holds at most 16 bindings of Alice's, and every key expires.
    let keys = redis_cli(&redis, &["--scan", "--pattern", "fleet-test:session:*"]);
    assert_eq!(keys.lines().count(), 16 + 1, "{keys}");
    for key in redis_cli(&redis, &["--scan", "--pattern", "fleet-test:*"]).lines() {
        let ttl: i64 = redis_cli(&redis, &["PTTL", key]).parse().unwrap();
        assert!(ttl > 0, "{key} has no expiry");
    }
    let owners = redis_cli(&redis, &["--scan", "--pattern", "fleet-test:sessions:*"]);
    let cards: Vec<String> = owners.lines().map(|k| redis_cli(&redis, &["ZCARD", k])).collect();
    let mut cards: Vec<u32> = cards.iter().map(|c| c.parse().unwrap()).collect();
    cards.sort();
    assert_eq!(cards, [1, 16]);
}

#[tokio::test]
async fn a_redis_outage_fails_closed_and_the_fleet_recovers_without_a_restart() {
    let issuer = TestIssuer::start().await.unwrap();
    let mut redis = Redis::start().await;
    let a = replica(&issuer, &redis, SessionBindingLayer::default()).await;
    let b = replica(&issuer, &redis, SessionBindingLayer::default()).await;
    let alice = open(&issuer, "alice", &a).await.unwrap();
    let session = alice.session_id().unwrap().to_owned();

    redis.stop();
    // A new session cannot be bound fleet-wide: 503, and it does not start.
    match open(&issuer, "alice", &a).await {
        Err(McpError::Http { status, .. }) => assert_eq!(status, 503),
        other => panic!("expected a 503, got {other:?}"),
    }
    let initialize = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": VERSION, "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}});
    let reply = Reply::read(
        mcp_post(&client(), &a.url, &initialize)
            .bearer_auth(token(&issuer, "alice", &a))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(answer(&reply), Answer::Unavailable);
    assert!(reply.headers.get("mcp-session-id").is_none(), "{reply:?}");
    // A session B does not hold cannot be checked: 503, for anyone.
    assert_eq!(on(&issuer, "alice", &b, &session).await, Answer::Unavailable);
    assert_eq!(on(&issuer, "mallory", &b, &session).await, Answer::Unavailable);
    // An id no session manager here issues is refused without asking Redis.
    assert_eq!(on(&issuer, "mallory", &b, &"x".repeat(300)).await, Answer::NotOwned);
    // The replica that bound it still serves its owner, and only its owner.
    assert_eq!(on(&issuer, "alice", &a, &session).await, Answer::Served);
    assert_eq!(on(&issuer, "mallory", &a, &session).await, Answer::NotOwned);

    redis.restart().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let reopened = loop {
        match open(&issuer, "alice", &b).await {
            Ok(client) => break client,
            Err(error) if Instant::now() < deadline => {
                assert_eq!(error.status().map(|s| s.as_u16()), Some(503), "{error:?}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(error) => panic!("no recovery within 30 s: {error:?}"),
        }
    };
    // A replica's first command after the restart may still find its old
    // connection dropped (503, and it reconnects): wait until A answers too.
    let deadline = Instant::now() + Duration::from_secs(30);
    while on(&issuer, "mallory", &a, "made-up").await == Answer::Unavailable {
        assert!(Instant::now() < deadline, "replica A did not recover within 30 s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The binding made before the outage survived it (append-only file).
    assert_eq!(on(&issuer, "mallory", &b, &session).await, Answer::NotOwned);
    assert_eq!(on(&issuer, "alice", &b, &session).await, Answer::NotHere);
    let fresh = reopened.session_id().unwrap().to_owned();
    assert_eq!(on(&issuer, "mallory", &a, &fresh).await, Answer::NotOwned);
    assert_eq!(on(&issuer, "alice", &b, &fresh).await, Answer::Served);
    drop((a, b));
}

fn shared_keys() -> StateKeys {
    StateKeys::new("fleet-1", Zeroizing::new(vec![7u8; 32])).unwrap()
}

#[tokio::test]
async fn a_request_state_opens_once_across_replicas() {
    let redis = Redis::start().await;
    let store = |_| {
        let config = RedisConfig::new(redis.url())
            .key_prefix("fleet-test:")
            .timeout(Duration::from_millis(500));
        SharedStore::redis(config).unwrap()
    };
    let (store_a, store_b): (SharedStore, SharedStore) = (store(0), store(1));
    let replay_a = RedisReplaySet::new(&store_a).unwrap().max_per_principal(3);
    let replay_b = RedisReplaySet::new(&store_b).unwrap().max_per_principal(3);
    let a = RequestStateSealer::new(shared_keys()).replay_set(Arc::new(replay_a));
    let b = RequestStateSealer::new(shared_keys()).replay_set(Arc::new(replay_b));

    let alice = Principal::unverified("https://idp", "alice").build();
    let args = json!({"amount": 10}).as_object().unwrap().clone();
    let binding = StateBinding::tool_call(&alice, "transfer", Some(&args));

    // Sealed and opened on A, replayed on B (and on A). One opening is one
    // round trip.
    let state = a.seal(&binding, &json!({"ok": true})).unwrap();
    let before = store_a.round_trips();
    assert_eq!(a.open::<serde_json::Value>(&state, &binding).await.unwrap()["ok"], true);
    assert_eq!(store_a.round_trips() - before, 1);
    assert_eq!(
        b.open::<serde_json::Value>(&state, &binding).await.unwrap_err(),
        StateError::Replayed
    );
    assert_eq!(
        a.open::<serde_json::Value>(&state, &binding).await.unwrap_err(),
        StateError::Replayed
    );
    // Sealed on A, opened first on B: A refuses it then.
    let state = a.seal(&binding, &json!({"ok": true})).unwrap();
    b.open::<serde_json::Value>(&state, &binding).await.unwrap();
    assert_eq!(
        a.open::<serde_json::Value>(&state, &binding).await.unwrap_err(),
        StateError::Replayed
    );

    // Alice's share is bounded (3 live entries); Bob's is his own.
    let third = a.seal(&binding, &json!({})).unwrap();
    b.open::<serde_json::Value>(&third, &binding).await.unwrap();
    let fourth = a.seal(&binding, &json!({})).unwrap();
    assert_eq!(
        b.open::<serde_json::Value>(&fourth, &binding).await.unwrap_err(),
        StateError::Full
    );
    let bob = Principal::unverified("https://idp", "bob").build();
    let bobs = StateBinding::tool_call(&bob, "transfer", Some(&args));
    let state = a.seal(&bobs, &json!({})).unwrap();
    b.open::<serde_json::Value>(&state, &bobs).await.unwrap();
    let keys = redis_cli(&redis, &["--scan", "--pattern", "fleet-test:replay:*"]);
    assert_eq!(keys.lines().count(), 2, "one set per caller: {keys}");
    for key in keys.lines() {
        let ttl: i64 = redis_cli(&redis, &["PTTL", key]).parse().unwrap();
        assert!(ttl > 0 && ttl <= 360_000 + 5_000, "{key}: {ttl}");
    }

    // Redis down: nothing opens (fail closed), then it recovers.
    let mut redis = redis;
    let state = a.seal(&bobs, &json!({})).unwrap();
    redis.stop();
    assert_eq!(
        b.open::<serde_json::Value>(&state, &bobs).await.unwrap_err(),
        StateError::Unavailable
    );
    redis.restart().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match b.open::<serde_json::Value>(&state, &bobs).await {
            Ok(_) => break,
            Err(StateError::Unavailable) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await
            }
            Err(error) => panic!("no recovery: {error:?}"),
        }
    }
    // What was recorded before the outage is still refused after it, on
    // either replica (A's first command may find its old connection dropped).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match a.open::<serde_json::Value>(&third, &binding).await.unwrap_err() {
            StateError::Unavailable if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await
            }
            error => break assert_eq!(error, StateError::Replayed),
        }
    }
    assert_eq!(
        b.open::<serde_json::Value>(&third, &binding).await.unwrap_err(),
        StateError::Replayed
    );
}

/// `echo` asks for confirmation first (the policy's `confirm` rule).
const CONFIRM_ECHO: &str = r#"
package mcp.authz

import rego.v1

default allow := false

allow if "mcp:tools" in input.scopes

confirm if {
	input.action == "tools/call"
	input.resource == "echo"
}
"#;

#[tokio::test]
async fn a_confirmation_opens_once_across_guard_replicas() {
    let issuer = TestIssuer::start().await.unwrap();
    let redis = Redis::start().await;
    let engine = || {
        rmcp_guard::policy::PolicyEngine::builder()
            .module("confirm.rego", CONFIRM_ECHO)
            .build()
            .unwrap()
    };
    // Same keys on both replicas; the replay set is the guard's own memory
    // set unless `Guard` shares it through the store.
    let fleet = |guard: Guard| {
        guard
            .stateless()
            .policy(engine())
            .request_state(RequestStateSealer::new(shared_keys()))
    };
    let a = replica_with(&issuer, &redis, fleet).await;
    let b = replica_with(&issuer, &redis, fleet).await;
    let connect = |replica: &Replica| {
        McpClient::connect(&replica.url, Protocol::V2026_07_28)
            .bearer(token(&issuer, "alice", replica))
            .capabilities(json!({"elicitation": {"form": {}}}))
    };
    let on_a = connect(&a).await.unwrap();
    let on_b = connect(&b).await.unwrap();

    let asked = on_a
        .request("tools/call", json!({"name": "echo", "arguments": {"text": "hi"}}))
        .await
        .unwrap();
    assert_eq!(asked["resultType"], "input_required", "{asked}");
    let state = asked["requestState"].as_str().unwrap().to_owned();
    let retry = json!({
        "name": "echo",
        "arguments": {"text": "hi"},
        "requestState": state,
        "inputResponses": {"confirm": {"action": "accept", "content": {"confirm": true}}},
    });
    // The same keys: B opens what A sealed (so a replay there is a real test).
    let done = on_b.request("tools/call", retry.clone()).await.unwrap();
    assert_eq!(done["content"][0]["text"], "hi", "{done}");
    for client in [&on_a, &on_b] {
        let again = client.request("tools/call", retry.clone()).await;
        assert!(
            matches!(&again, Err(McpError::JsonRpc { data: Some(d), .. }) if d["error"] == "request_state_replayed"),
            "{again:?}"
        );
    }
}

#[tokio::test]
async fn a_hung_redis_is_answered_503_not_waited_on() {
    let issuer = TestIssuer::start().await.unwrap();
    let redis = Redis::start().await;
    let a = replica(&issuer, &redis, SessionBindingLayer::default()).await;
    let b = replica(&issuer, &redis, SessionBindingLayer::default()).await;
    let alice = open(&issuer, "alice", &a).await.unwrap();
    let session = alice.session_id().unwrap().to_owned();

    // Connections stay open and nothing answers: every wait ends at the
    // store's timeout (the test client would give up after 15 s).
    redis.pause();
    match open(&issuer, "bob", &b).await {
        Err(McpError::Http { status, .. }) => assert_eq!(status, 503),
        other => panic!("expected a 503, got {other:?}"),
    }
    assert_eq!(on(&issuer, "mallory", &b, &session).await, Answer::Unavailable);
    assert_eq!(on(&issuer, "alice", &a, &session).await, Answer::Served);
    redis.resume();

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match on(&issuer, "mallory", &b, &session).await {
            Answer::Unavailable if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(250)).await,
            answer => break assert_eq!(answer, Answer::NotOwned),
        }
    }
    assert_eq!(on(&issuer, "alice", &b, &session).await, Answer::NotHere);
}
