//! Request limits shared by a fleet through a real `redis-server`: two
//! replicas (two `Guard` routers on two ports, one Redis) count one budget
//! per caller: the rate, the requests in flight and the per-tool rates are
//! fleet-wide. Redis down or hung: 503 with `Retry-After` on every replica
//! (fail closed), other routes still served, and admissions work again when
//! Redis is back, without a restart; the dangerous fail-open lets requests
//! through.

mod common;
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Reply, client, mcp_post};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::model::{ServerCapabilities, ServerConfig};
use rmcp::{ServerHandler, tool, tool_handler, tool_router};
use rmcp_guard::Guard;
use rmcp_guard::limit::RequestLimits;
use rmcp_guard::oauth::{Issuer, ResourceServer};
use rmcp_guard::policy::PolicyEngine;
use rmcp_guard::store::{RedisConfig, SharedStore};
use rmcp_guard_testkit::{McpClient, Protocol, TestIssuer};
use serde_json::{Value, json};
use support::redis::Redis;
use tokio::sync::Semaphore;

/// How long any single wait in these tests may take before it fails.
const BOUND: Duration = Duration::from_secs(10);
/// How long a recovery may take (the breaker stays open 5 s at most).
const RECOVERY: Duration = Duration::from_secs(30);

/// Holds `slow` calls until the test releases them.
struct Gate {
    entered: AtomicUsize,
    release: Semaphore,
}

#[derive(Clone)]
struct Tools {
    tool_router: ToolRouter<Self>,
    gate: Arc<Gate>,
}

#[tool_router]
impl Tools {
    fn new(gate: Arc<Gate>) -> Self {
        Tools {
            tool_router: Self::tool_router(),
            gate,
        }
    }

    #[tool(description = "echo")]
    async fn echo(&self) -> String {
        "echo-ran".to_owned()
    }

    #[tool(description = "whoami")]
    async fn whoami(&self) -> String {
        "whoami-ran".to_owned()
    }

    #[tool(description = "waits until the test releases it")]
    async fn slow(&self) -> String {
        self.gate.entered.fetch_add(1, Ordering::SeqCst);
        let _ = tokio::time::timeout(BOUND, self.gate.release.acquire()).await;
        "slow-ran".to_owned()
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Tools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }
}

/// Every caller may do everything: only the limits refuse.
const ALLOW_ALL: &str = "package mcp.authz\ndefault allow := true\n";

/// One replica: a guarded router on its own port, with its own connection
/// to the shared Redis.
struct Replica {
    url: String,
    base: String,
    store: SharedStore,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Two replicas of one MCP server sharing one Redis, and the issuer their
/// callers' tokens come from.
struct Fleet {
    issuer: TestIssuer,
    replicas: [Replica; 2],
    gate: Arc<Gate>,
}

impl Fleet {
    async fn start(redis: &Redis, limits: RequestLimits, policy: Option<PolicyEngine>) -> Fleet {
        Fleet::start_with(redis, limits, policy, true).await
    }

    /// Stateless, or with (per-replica) sessions.
    async fn start_with(redis: &Redis, limits: RequestLimits, policy: Option<PolicyEngine>, stateless: bool) -> Fleet {
        let issuer = TestIssuer::start().await.unwrap();
        let gate = Arc::new(Gate {
            entered: AtomicUsize::new(0),
            release: Semaphore::new(0),
        });
        let mut replicas = Vec::new();
        for _ in 0..2 {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            let url = format!("{base}/mcp");
            let rs = ResourceServer::builder(url.clone(), Issuer::with_jwks_uri(issuer.issuer(), issuer.jwks_uri()))
                .required_scopes(["mcp:tools"])
                .build()
                .unwrap();
            let store = SharedStore::redis(RedisConfig::new(redis.url())).unwrap();
            // These tests are about limits: revocation checks keep serving on
            // the last known set while Redis is down (tests/revoke.rs proves
            // they fail closed by default). A replica on Redis still refuses
            // requests until its revocations have synced once: wait for it.
            let revocations = store.revocations().dangerous().allow_when_stale();
            support::redis::synced(&revocations).await;
            let mut guard = Guard::new(rs).limits(limits.clone()).shared_store(store.clone());
            if stateless {
                guard = guard.stateless();
            }
            if let Some(policy) = &policy {
                guard = guard.policy(policy.clone());
            }
            let tools_gate = gate.clone();
            let app = guard.router(move || Ok(Tools::new(tools_gate.clone())));
            let task = tokio::spawn(async move {
                let _ = rmcp_guard::serve(listener, app).await;
            });
            replicas.push(Replica { url, base, store, task });
        }
        let Ok(replicas) = <[Replica; 2]>::try_from(replicas) else {
            unreachable!("two replicas")
        };
        Fleet { issuer, replicas, gate }
    }

    /// A token of `subject` (client `desktop`) for replica `i`: one caller
    /// whichever replica it reaches.
    fn token(&self, i: usize, subject: &str) -> String {
        self.issuer
            .token()
            .subject(subject)
            .client_id("desktop")
            .audience(&self.replicas[i].url)
            .scope("mcp:tools")
            .sign()
    }

    /// One stateless `tools/call` of `tool` by `subject` on replica `i`.
    async fn call(&self, i: usize, subject: &str, tool: &str) -> Reply {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool}});
        let request = mcp_post(&client(), &self.replicas[i].url, &body)
            .bearer_auth(self.token(i, subject))
            .header("mcp-protocol-version", "2025-06-18");
        Reply::read(tokio::time::timeout(BOUND, request.send()).await.unwrap().unwrap()).await
    }

    /// Call until the call runs its tool, at most [`RECOVERY`].
    async fn until_served(&self, i: usize, subject: &str) {
        let deadline = Instant::now() + RECOVERY;
        loop {
            let reply = self.call(i, subject, "echo").await;
            if ran(&reply, "echo") {
                return;
            }
            assert!(Instant::now() < deadline, "replica {i} not serving again: {reply:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The call ran its tool.
fn ran(reply: &Reply, tool: &str) -> bool {
    reply.status == 200 && reply.body.contains(&format!("{tool}-ran"))
}

/// A 429 naming `error`, with `Retry-After`.
fn assert_too_many(reply: &Reply, error: &str) {
    assert_eq!(reply.status, 429, "{}", reply.body);
    assert!(reply.headers.contains_key("retry-after"));
    let body: Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(body["error"]["code"], -32029, "{body}");
    assert_eq!(body["error"]["data"]["error"], error, "{body}");
}

/// A 503 with a whole-second `Retry-After` naming a store failure.
fn assert_store_down(reply: &Reply) {
    assert_eq!(reply.status, 503, "{}", reply.body);
    let retry_after: u64 = reply.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=5).contains(&retry_after), "Retry-After {retry_after}");
    let body: Value = serde_json::from_str(&reply.body).unwrap();
    let reason = body["error"]["data"]["error"].as_str().unwrap();
    assert!(reason.starts_with("store_"), "{body}");
}

/// The JSON-RPC error of a tool call answered 200.
fn rpc_error(reply: &Reply) -> Value {
    assert_eq!(reply.status, 200, "{}", reply.body);
    let body: Value = serde_json::from_str(&reply.body).unwrap();
    body["error"].clone()
}

#[tokio::test]
async fn the_rate_is_one_budget_across_replicas() {
    let redis = Redis::start().await;
    let limits = RequestLimits::default().rate("30/min".parse().unwrap()).burst(30);
    let fleet = Fleet::start(&redis, limits, None).await;
    let mut allowed = 0;
    for i in 0..90 {
        let reply = fleet.call(i % 2, "alice", "echo").await;
        if ran(&reply, "echo") {
            allowed += 1;
        } else {
            assert_too_many(&reply, "rate_limited");
        }
    }
    // 30 at once, and one back every 2 s while the calls go on.
    assert!((30..=33).contains(&allowed), "{allowed} of 90 allowed");
    // Another caller has a budget of its own, on both replicas.
    assert!(ran(&fleet.call(0, "bob", "echo").await, "echo"));
    assert!(ran(&fleet.call(1, "bob", "echo").await, "echo"));
    // One script per admission, and one release per permit (sent in the
    // background after the answer, so perhaps not all sent yet).
    let trips: u64 = fleet.replicas.iter().map(|r| r.store.round_trips()).sum();
    let admitted = allowed + 2;
    assert!(
        (92..=92 + admitted).contains(&trips),
        "{trips} round trips for 92 decisions"
    );
}

#[tokio::test]
async fn requests_in_flight_are_counted_fleet_wide() {
    let redis = Redis::start().await;
    let fleet = Arc::new(Fleet::start(&redis, RequestLimits::default().in_flight(1), None).await);
    // A slow call holds alice's one permit on replica A...
    let held = {
        let fleet = fleet.clone();
        tokio::spawn(async move { fleet.call(0, "alice", "slow").await })
    };
    let deadline = Instant::now() + BOUND;
    while fleet.gate.entered.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the slow call never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // ...so replica B refuses her next one.
    assert_too_many(&fleet.call(1, "alice", "echo").await, "too_many_in_flight");
    assert_too_many(&fleet.call(0, "alice", "echo").await, "too_many_in_flight");
    // Bob is not touched.
    assert!(ran(&fleet.call(1, "bob", "echo").await, "echo"));

    fleet.gate.release.add_permits(1);
    let reply = tokio::time::timeout(BOUND, held).await.unwrap().unwrap();
    assert!(ran(&reply, "slow"), "{reply:?}");
    // The release is sent in the background: alice has room again soon.
    fleet.until_served(1, "alice").await;
}

/// A request refused for the in-flight bound costs no rate: at 2/min (burst
/// 2) a caller whose one permit is held, and whose next calls are refused in
/// flight on both replicas, still has her second call once the first ends.
#[tokio::test]
async fn a_request_refused_in_flight_costs_no_rate() {
    let redis = Redis::start().await;
    let limits = RequestLimits::default()
        .rate("2/min".parse().unwrap())
        .burst(2)
        .in_flight(1);
    let fleet = Arc::new(Fleet::start(&redis, limits, None).await);
    let held = {
        let fleet = fleet.clone();
        tokio::spawn(async move { fleet.call(0, "alice", "slow").await })
    };
    let deadline = Instant::now() + BOUND;
    while fleet.gate.entered.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the slow call never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for i in 0..4 {
        assert_too_many(&fleet.call(i % 2, "alice", "echo").await, "too_many_in_flight");
    }
    fleet.gate.release.add_permits(1);
    let reply = tokio::time::timeout(BOUND, held).await.unwrap().unwrap();
    assert!(ran(&reply, "slow"), "{reply:?}");
    // Until the release reaches Redis the call is refused in flight (and
    // that costs nothing); then it runs: the second unit of the burst.
    let deadline = Instant::now() + BOUND;
    loop {
        let reply = fleet.call(1, "alice", "echo").await;
        if ran(&reply, "echo") {
            break;
        }
        assert_too_many(&reply, "too_many_in_flight");
        assert!(Instant::now() < deadline, "the permit was never released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The burst is spent now.
    assert_too_many(&fleet.call(0, "alice", "echo").await, "rate_limited");
}

/// A permit whose release never came (a replica killed mid-request) holds
/// its slot until its lease expires, and no longer: here the lease is made
/// to expire early by rewriting its score in Redis.
#[tokio::test]
async fn an_expired_lease_frees_its_slot() {
    let redis = Redis::start().await;
    let fleet = Arc::new(Fleet::start(&redis, RequestLimits::default().in_flight(1), None).await);
    let held = {
        let fleet = fleet.clone();
        tokio::spawn(async move { fleet.call(0, "alice", "slow").await })
    };
    let deadline = Instant::now() + BOUND;
    while fleet.gate.entered.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the slow call never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_too_many(&fleet.call(1, "alice", "echo").await, "too_many_in_flight");
    let cli = |args: &[&str]| {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &redis.port().to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8(out.stdout).unwrap()
    };
    let sets = cli(&["--scan", "--pattern", "rmcp-guard:limit:in_flight:*"]);
    let sets: Vec<&str> = sets.lines().filter(|k| !k.is_empty()).collect();
    assert_eq!(sets.len(), 1, "{sets:?}");
    let expire = "for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do redis.call('ZADD', KEYS[1], 1, m) end";
    cli(&["EVAL", expire, "1", sets[0]]);
    // The lease has expired: replica B admits her again.
    assert!(ran(&fleet.call(1, "alice", "echo").await, "echo"));
    fleet.gate.release.add_permits(1);
    assert!(ran(&tokio::time::timeout(BOUND, held).await.unwrap().unwrap(), "slow"));
}

#[tokio::test]
async fn open_get_streams_are_counted_fleet_wide() {
    let redis = Redis::start().await;
    let fleet = Fleet::start_with(&redis, RequestLimits::default().in_flight(2), None, false).await;
    // A session on each replica (sessions are per replica), and a `GET`
    // stream on it.
    let mut sessions = Vec::new();
    for i in 0..2 {
        let token = fleet.token(i, "alice");
        let mcp = McpClient::connect(fleet.replicas[i].url.clone(), Protocol::V2025_11_25)
            .bearer(token.clone())
            .send()
            .await
            .unwrap();
        let session = mcp.session_id().unwrap().to_owned();
        sessions.push((mcp, token, session));
    }
    let stream = |i: usize| {
        let (_, token, session) = &sessions[i];
        let request = client()
            .get(&fleet.replicas[i].url)
            .bearer_auth(token)
            .header("accept", "text/event-stream")
            .header("mcp-session-id", session)
            .header("mcp-protocol-version", "2025-11-25");
        async move { tokio::time::timeout(BOUND, request.send()).await.unwrap().unwrap() }
    };
    let held = [stream(0).await, stream(0).await];
    assert!(held.iter().all(|r| r.status() == 200));
    // Her two streams are open on replica A: replica B refuses a third...
    assert_too_many(&Reply::read(stream(1).await).await, "too_many_streams");
    // ...and her calls go on, on both.
    for (mcp, _, _) in &sessions {
        assert!(mcp.call_tool("echo", Value::Null).await.is_ok());
    }
    // Closed, it is given back (in the background).
    drop(held);
    let deadline = Instant::now() + RECOVERY;
    loop {
        let reply = stream(1).await;
        if reply.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the stream was never given back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn per_tool_rates_and_policy_limits_are_fleet_wide() {
    let redis = Redis::start().await;
    let policy = PolicyEngine::builder()
        .module(
            "limits.rego",
            r#"
            package mcp.authz
            default allow := true
            limits := {"rate": "2/min"} if input.subject == "tight"
            "#,
        )
        .build()
        .unwrap();
    let limits = RequestLimits::default().tool("echo", "2/h".parse().unwrap());
    let fleet = Fleet::start(&redis, limits, Some(policy)).await;
    assert!(ran(&fleet.call(0, "alice", "echo").await, "echo"));
    assert!(ran(&fleet.call(1, "alice", "echo").await, "echo"));
    for i in 0..2 {
        let error = rpc_error(&fleet.call(i, "alice", "echo").await);
        assert_eq!(error["code"], -32029, "{error}");
        assert_eq!(error["data"]["tool"], "echo", "{error}");
        // Other tools are not limited.
        assert!(ran(&fleet.call(i, "alice", "whoami").await, "whoami"));
    }
    // The policy's limits (2/min for "tight") are counted fleet-wide too.
    assert!(ran(&fleet.call(0, "tight", "whoami").await, "whoami"));
    assert!(ran(&fleet.call(1, "tight", "whoami").await, "whoami"));
    assert_too_many(&fleet.call(0, "tight", "whoami").await, "rate_limited");
}

/// A budget whose burst is 64 or more is shared out: a replica takes 1/32
/// of it per round trip (2 units here) and admits the calls that follow
/// from its share. The fleet still admits no more than the budget, and at
/// most one share's worth per replica less (units taken and not used).
#[tokio::test]
async fn shares_of_a_large_rate_never_admit_more_than_the_budget() {
    let redis = Redis::start().await;
    // 64 per hour (one back every 56 s), burst 64, 64 in flight.
    let limits = RequestLimits::default()
        .rate("64/h".parse().unwrap())
        .burst(64)
        .in_flight(64);
    let fleet = Fleet::start(&redis, limits, None).await;
    let trips = || fleet.replicas.iter().map(|r| r.store.round_trips()).sum::<u64>();
    let before = trips();
    let mut allowed: u64 = 0;
    for i in 0..100 {
        let reply = fleet.call(i % 2, "alice", "echo").await;
        if ran(&reply, "echo") {
            allowed += 1;
        } else {
            assert_too_many(&reply, "rate_limited");
        }
    }
    assert!((62..=64).contains(&allowed), "{allowed} of 100 allowed");
    // One round trip per share of 2 admitted calls (slots stay in the
    // shares: none released yet), one per refused call.
    let trips = trips() - before;
    let expected = allowed.div_ceil(2) + (100 - allowed);
    assert!(
        (expected - 2..=expected + 2).contains(&trips),
        "{trips} round trips for {allowed} admitted and {} refused",
        100 - allowed
    );
    // Another caller's budget is its own.
    assert!(ran(&fleet.call(0, "bob", "echo").await, "echo"));
}

/// In-flight slots taken as shares are members of the budget's set in
/// Redis: the fleet never holds more than the bound, short of it by at
/// most the free slots the replicas' shares hold; a share unused for a
/// second gives its slots back.
#[tokio::test]
async fn shares_of_in_flight_slots_stay_within_the_bound_and_go_back_when_idle() {
    let redis = Redis::start().await;
    let limits = RequestLimits::default()
        .rate(rmcp_guard::limit::Rate::per_second(std::num::NonZeroU32::MAX))
        .burst(1 << 20)
        .in_flight(64);
    let fleet = Arc::new(Fleet::start(&redis, limits, None).await);
    let members = || {
        let out = std::process::Command::new("redis-cli")
            .args([
                "-p",
                &redis.port().to_string(),
                "--scan",
                "--pattern",
                "rmcp-guard:limit:in_flight:*",
            ])
            .output()
            .expect("redis-cli");
        let keys = String::from_utf8(out.stdout).unwrap();
        keys.lines()
            .filter(|k| !k.is_empty())
            .map(|key| {
                let out = std::process::Command::new("redis-cli")
                    .args(["-p", &redis.port().to_string(), "ZCARD", key])
                    .output()
                    .expect("redis-cli");
                String::from_utf8(out.stdout).unwrap().trim().parse::<u64>().unwrap()
            })
            .sum::<u64>()
    };
    // Slow calls, alternating replicas, each started once the one before
    // has entered its tool, until one is refused.
    let mut held = Vec::new();
    let refused = loop {
        assert!(held.len() <= 64, "{} calls in flight over a bound of 64", held.len());
        let i = held.len() % 2;
        let call = {
            let fleet = fleet.clone();
            tokio::spawn(async move { fleet.call(i, "alice", "slow").await })
        };
        let deadline = Instant::now() + BOUND;
        let entered = loop {
            if fleet.gate.entered.load(Ordering::SeqCst) > held.len() {
                break true;
            }
            if call.is_finished() {
                break false;
            }
            assert!(
                Instant::now() < deadline,
                "call {} neither entered nor refused",
                held.len()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        if !entered {
            break call;
        }
        held.push(call);
    };
    let reply = refused.await.unwrap();
    assert_too_many(&reply, "too_many_in_flight");
    assert!(
        (62..=64).contains(&held.len()),
        "{} calls held at the bound",
        held.len()
    );
    let taken = members();
    assert!(
        (held.len() as u64..=64).contains(&taken),
        "{taken} slots taken in Redis"
    );
    fleet.gate.release.add_permits(held.len());
    for call in held {
        assert!(ran(&tokio::time::timeout(BOUND, call).await.unwrap().unwrap(), "slow"));
    }
    // Idle for a second, the shares give their slots back.
    let deadline = Instant::now() + BOUND;
    while members() > 0 {
        assert!(Instant::now() < deadline, "{} slots still taken", members());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn every_key_has_a_ttl() {
    let redis = Redis::start().await;
    // A slow rate, so that the rate keys (which expire when the burst has
    // come back) are still there to look at.
    let limits = RequestLimits::default()
        .rate("1/min".parse().unwrap())
        .burst(5)
        .tool("echo", "5/h".parse().unwrap());
    let policy = PolicyEngine::builder().module("a.rego", ALLOW_ALL).build().unwrap();
    let fleet = Arc::new(Fleet::start(&redis, limits, Some(policy)).await);
    assert!(ran(&fleet.call(0, "alice", "echo").await, "echo"));
    assert!(ran(&fleet.call(1, "bob", "echo").await, "echo"));
    // A call in flight: its permit is in a set.
    let held = {
        let fleet = fleet.clone();
        tokio::spawn(async move { fleet.call(1, "carol", "slow").await })
    };
    let deadline = Instant::now() + BOUND;
    while fleet.gate.entered.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the slow call never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cli = |args: &[&str]| {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &redis.port().to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8(out.stdout).unwrap()
    };
    let keys = cli(&["--scan", "--pattern", "rmcp-guard:limit:*"]);
    let mut keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
    keys.sort();
    // Rate keys of alice, bob and carol, tool rate keys of alice and bob,
    // carol's set of requests in flight (the others' are released in the
    // background: gone, or going).
    let kinds: Vec<&str> = keys.iter().map(|k| k.split(':').nth(2).unwrap()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "rate").count(), 5, "{keys:?}");
    let sets = kinds.iter().filter(|k| **k == "in_flight").count();
    assert!((1..=3).contains(&sets) && sets + 5 == keys.len(), "{keys:?}");
    for key in &keys {
        assert!(!key.contains("alice") && !key.contains("carol"), "{key}");
        let ttl: i64 = cli(&["PTTL", key]).trim().parse().unwrap();
        assert!(ttl > 0, "{key} has no TTL ({ttl})");
    }
    fleet.gate.release.add_permits(1);
    assert!(ran(&tokio::time::timeout(BOUND, held).await.unwrap().unwrap(), "slow"));
}

#[tokio::test]
async fn redis_down_is_503_on_every_replica_then_recovers_without_restart() {
    let mut redis = Redis::start().await;
    let fleet = Fleet::start(&redis, RequestLimits::default(), None).await;
    for i in 0..2 {
        assert!(ran(&fleet.call(i, "alice", "echo").await, "echo"));
    }
    redis.stop();
    for i in 0..2 {
        for _ in 0..4 {
            assert_store_down(&fleet.call(i, "alice", "echo").await);
        }
        // The replica keeps answering what needs no Redis.
        let metadata = client()
            .get(format!(
                "{}/.well-known/oauth-protected-resource/mcp",
                fleet.replicas[i].base
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(metadata.status(), 200);
    }
    redis.restart().await;
    for i in 0..2 {
        fleet.until_served(i, "alice").await;
    }
}

#[tokio::test]
async fn a_hung_redis_is_503_not_a_hung_request() {
    let redis = Redis::start().await;
    let fleet = Fleet::start(&redis, RequestLimits::default(), None).await;
    assert!(ran(&fleet.call(0, "alice", "echo").await, "echo"));
    redis.pause();
    for i in 0..2 {
        assert_store_down(&fleet.call(i, "alice", "echo").await);
    }
    redis.resume();
    for i in 0..2 {
        fleet.until_served(i, "alice").await;
    }
}

#[tokio::test]
async fn a_per_tool_limit_over_a_dead_redis_is_a_json_rpc_error() {
    let mut redis = Redis::start().await;
    // Only a per-tool limit: admissions need no Redis, the tool's count does
    // (a burst under 64: one unit per round trip, no share to draw on).
    let limits = RequestLimits::default()
        .dangerous()
        .no_rate()
        .dangerous()
        .no_in_flight()
        .tool("echo", "60/h".parse().unwrap());
    let policy = PolicyEngine::builder().module("a.rego", ALLOW_ALL).build().unwrap();
    let fleet = Fleet::start(&redis, limits, Some(policy)).await;
    assert!(ran(&fleet.call(0, "alice", "echo").await, "echo"));
    redis.stop();
    for i in 0..2 {
        let error = rpc_error(&fleet.call(i, "alice", "echo").await);
        assert_eq!(error["code"], -32000, "{error}");
        assert!(
            error["data"]["error"].as_str().unwrap().starts_with("store_"),
            "{error}"
        );
        assert_eq!(error["data"]["tool"], "echo", "{error}");
        assert!(ran(&fleet.call(i, "alice", "whoami").await, "whoami"));
    }
}

#[tokio::test]
async fn the_dangerous_fail_open_lets_requests_through() {
    let mut redis = Redis::start().await;
    let limits = RequestLimits::default()
        .tool("echo", "100/h".parse().unwrap())
        .dangerous()
        .fail_open_on_store_error();
    let policy = PolicyEngine::builder().module("a.rego", ALLOW_ALL).build().unwrap();
    let fleet = Fleet::start(&redis, limits, Some(policy)).await;
    assert!(ran(&fleet.call(0, "alice", "echo").await, "echo"));
    redis.stop();
    for i in 0..2 {
        for _ in 0..4 {
            assert!(ran(&fleet.call(i, "alice", "echo").await, "echo"));
        }
    }
}
