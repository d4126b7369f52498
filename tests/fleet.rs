//! A fleet: three replicas of the `secure_server` binary sharing one real
//! `redis-server`, as `docs/fleet.md` deploys them. Every replica gets the
//! same environment: one public resource URI (`GUARD_RESOURCE`, the
//! audience of every token), `GUARD_ALLOWED_HOSTS` naming the public host
//! and each replica's own address (the test plays the load balancer and
//! calls each replica directly, round-robin), `GUARD_REDIS_URL` with an ACL
//! user confined to the server's keys and the commands the guard sends, and
//! the same sealing key (`GUARD_REQUEST_STATE_KEY_FILE`). One fleet runs at
//! a time.
//!
//! The proofs: what one replica records binds every other (limits,
//! revocations, confirmations); a stopped or hung Redis is answered 503 with
//! `Retry-After` on every replica, quickly, and the replicas stay up and
//! recover by themselves when it is back; a restarted replica forgets
//! nothing that lives in Redis.
//!
//! Needs the example built (`cargo test` builds it; for this file alone,
//! `cargo build --example secure_server` first) and `redis-server` on PATH.

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::StatusCode;
use rmcp_guard_testkit::TestIssuer;
use rmcp_guard_testkit::client::{McpClient, McpError, Protocol};
use serde_json::{Value, json};
use support::example::free_port;
use support::redis::Redis;

/// The public resource URI every replica serves (what a load balancer
/// would answer at): the audience of every token.
const RESOURCE: &str = "http://localhost/mcp";

/// How long a request may take before the test calls it hung: far above
/// the 50 ms Redis timeout, far below anything a client would wait.
const REQUEST_BOUND: Duration = Duration::from_secs(3);

/// The Redis user every replica logs in as: confined to the key prefix and
/// channel of this server and to the commands the guard sends, as
/// `docs/fleet.md` ("ACL") tells operators to do. A command or key outside
/// it fails the proofs.
const ACL_USER: &str = "mcp";
const ACL_PASSWORD: &str = "fleet-test-password";
const ACL_COMMANDS: &[&str] = &[
    "-@all",
    "+get",
    "+set",
    "+del",
    "+hget",
    "+hset",
    "+hdel",
    "+zadd",
    "+zrem",
    "+zcard",
    "+zrange",
    "+zrangebyscore",
    "+zremrangebyscore",
    "+zscore",
    "+pexpire",
    "+pexpireat",
    "+expireat",
    "+time",
    "+publish",
    "+subscribe",
    "+unsubscribe",
    "+ping",
    "+evalsha",
    "+script|load",
    "+select",
];

/// Create the confined user.
fn confine(redis: &Redis) {
    let mut connection = redis::Client::open(redis.url())
        .and_then(|c| c.get_connection())
        .expect("a connection to the test's Redis");
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(ACL_USER)
        .arg(&["reset", "on", &format!(">{ACL_PASSWORD}")][..])
        .arg(format!("~rmcp-guard:{RESOURCE}:*"))
        .arg(format!("&rmcp-guard:{RESOURCE}:*"))
        .arg(ACL_COMMANDS)
        .query(&mut connection)
        .expect("ACL SETUSER");
}

/// `target/<profile>/examples/secure_server`, built by `cargo test`.
fn binary() -> PathBuf {
    support::example::example_binary("secure_server")
}

/// One `secure_server` process; its stderr goes to a log file shown when it
/// does not start.
struct Replica {
    name: String,
    port: u16,
    env: Vec<(String, String)>,
    child: Option<Child>,
    log: PathBuf,
}

impl Replica {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/mcp", self.port)
    }

    fn metadata_url(&self) -> String {
        format!(
            "http://127.0.0.1:{}/.well-known/oauth-protected-resource/mcp",
            self.port
        )
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(&self.log).expect("replica log file");
        let child = Command::new(binary())
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("GUARD_BIND", format!("127.0.0.1:{}", self.port))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary().display()));
        self.child = Some(child);
    }

    /// Ready when the metadata route answers 200 (the readiness probe of
    /// `docs/fleet.md`).
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if reqwest::get(self.metadata_url()).await.is_ok_and(|r| r.status() == 200) {
                return;
            }
            assert!(self.is_running(), "{} exited: {}", self.name, self.log_tail());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{} not ready within 15 s: {}", self.name, self.log_tail());
    }

    fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
    }

    /// SIGKILL, as a crash or an evicted pod.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start again with the same environment, on the same port.
    async fn restart(&mut self) {
        self.kill();
        self.spawn();
        self.wait_ready().await;
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.log);
    }
}

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Fleet {
    replicas: Vec<Replica>,
    issuer: TestIssuer,
    redis: Redis,
    http: reqwest::Client,
    key_file: PathBuf,
    /// Dropped last: the next fleet starts when this one is gone.
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.key_file);
    }
}

impl Fleet {
    /// Redis, an issuer and three replicas in stateless mode, with `vars`
    /// added to every replica's environment. One fleet runs at a time (the
    /// guard is held until the fleet is dropped): four processes each on a
    /// small CI machine are enough.
    /// The replicas log in as the confined user ([`ACL_COMMANDS`]).
    async fn start(vars: &[(&str, &str)]) -> Fleet {
        Fleet::launch(vars, true).await
    }

    /// The replicas log in as Redis' default user: for the outage proof,
    /// whose Redis restarts without the users it was given (a replica that
    /// reconnects in between would be refused its login).
    async fn start_unconfined(vars: &[(&str, &str)]) -> Fleet {
        Fleet::launch(vars, false).await
    }

    async fn launch(vars: &[(&str, &str)], confined: bool) -> Fleet {
        let turn = ONE_AT_A_TIME.lock().await;
        let redis = Redis::start().await;
        let redis_url = if confined {
            confine(&redis);
            redis
                .url()
                .replacen("redis://", &format!("redis://{ACL_USER}:{ACL_PASSWORD}@"), 1)
        } else {
            redis.url()
        };
        let issuer = TestIssuer::start().await.expect("issuer");
        let ports = [free_port(), free_port(), free_port()];
        // The public name and each replica's own address (a probe, or this
        // test, reaches a replica by it).
        let hosts = std::iter::once("localhost".to_owned())
            .chain(ports.iter().map(|p| format!("127.0.0.1:{p}")))
            .collect::<Vec<_>>()
            .join(",");
        // One sealing key for the fleet, as a secret mounted in every pod.
        let key_file = std::env::temp_dir().join(format!("rmcp-guard-fleet-{}-{}.key", std::process::id(), ports[0]));
        let mut key = [0u8; 32];
        std::io::Read::read_exact(
            &mut std::fs::File::open("/dev/urandom").expect("/dev/urandom"),
            &mut key,
        )
        .expect("32 random bytes");
        std::fs::write(&key_file, base64::engine::general_purpose::STANDARD.encode(key)).expect("key file");
        let mut env: Vec<(String, String)> = [
            ("GUARD_ISSUER", issuer.issuer()),
            ("GUARD_RESOURCE", RESOURCE),
            ("GUARD_ALLOWED_HOSTS", &hosts),
            ("GUARD_REDIS_URL", &redis_url),
            ("GUARD_STATELESS", "1"),
            // Not 50 ms: these proofs are not about Redis' latency, and a
            // loaded CI machine may take longer to schedule it. The outage
            // proof sets the default back.
            ("GUARD_REDIS_TIMEOUT_MS", "250"),
            (
                "GUARD_REQUEST_STATE_KEY_FILE",
                key_file.to_str().expect("UTF-8 temp dir"),
            ),
            ("RUST_LOG", "warn"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        for (k, v) in vars {
            env.retain(|(name, _)| name != k);
            env.push(((*k).to_owned(), (*v).to_owned()));
        }
        let mut replicas: Vec<Replica> = ports
            .iter()
            .enumerate()
            .map(|(i, &port)| Replica {
                name: format!("replica {}", i + 1),
                port,
                env: env.clone(),
                child: None,
                log: std::env::temp_dir().join(format!("rmcp-guard-fleet-{}-{port}.log", std::process::id())),
            })
            .collect();
        for replica in &mut replicas {
            replica.spawn();
        }
        for replica in &mut replicas {
            replica.wait_ready().await;
        }
        let http = reqwest::Client::builder()
            .timeout(REQUEST_BOUND)
            .build()
            .expect("http client");
        let fleet = Fleet {
            replicas,
            issuer,
            redis,
            http,
            key_file,
            _turn: turn,
        };
        // A replica refuses calls (503) until it has read the revocations
        // from Redis, a few milliseconds after it starts.
        let probe = fleet.token("probe", &["developers"]);
        for i in 0..fleet.replicas.len() {
            let (took, answer) = until(&fleet, i, &probe, Duration::from_secs(10), Result::is_ok).await;
            assert!(
                answer.is_ok(),
                "replica {} not serving after {took:?}: {answer:?}",
                i + 1
            );
        }
        fleet
    }

    /// A token for `subject` (tenant acme) in `groups`, for the public
    /// resource.
    fn token(&self, subject: &str, groups: &[&str]) -> String {
        self.issuer
            .token()
            .subject(subject)
            .audience(RESOURCE)
            .scope("mcp:tools")
            .claim("groups", json!(groups))
            .claim("tenant", json!("acme"))
            .sign()
    }

    /// A 2026-07-28 client of replica `i` (0-based) with `token`.
    async fn client(&self, i: usize, token: &str) -> McpClient {
        self.client_with(i, token, json!({})).await
    }

    async fn client_with(&self, i: usize, token: &str, capabilities: Value) -> McpClient {
        McpClient::connect(self.replicas[i].url(), Protocol::V2026_07_28)
            .bearer(token)
            .http_client(self.http.clone())
            .capabilities(capabilities)
            .await
            .expect("a 2026-07-28 client sends nothing to connect")
    }

    /// `echo` on replica `i`: one request (no listing first).
    async fn echo(&self, i: usize, token: &str) -> Result<(), McpError> {
        let client = self.client(i, token).await;
        let result = client
            .request("tools/call", json!({"name": "echo", "arguments": {"text": "hi"}}))
            .await?;
        assert_eq!(result["content"][0]["text"], "hi", "{result}");
        Ok(())
    }

    /// The metadata route of replica `i` (unauthenticated, no Redis): its
    /// status.
    async fn metadata(&self, i: usize) -> StatusCode {
        self.http
            .get(self.replicas[i].metadata_url())
            .send()
            .await
            .map(|r| r.status())
            .unwrap_or_else(|e| panic!("replica {} metadata: {e}", i + 1))
    }
}

/// The status of a refusal (`None`: not an HTTP refusal).
fn status(result: &Result<(), McpError>) -> Option<StatusCode> {
    result.as_ref().err().and_then(McpError::status)
}

/// Call `echo` on replica `i` until `done` says so of the answer, for at
/// most `within`; the time it took and the last answer.
async fn until<F>(fleet: &Fleet, i: usize, token: &str, within: Duration, done: F) -> (Duration, Result<(), McpError>)
where
    F: Fn(&Result<(), McpError>) -> bool,
{
    let start = Instant::now();
    loop {
        let answer = fleet.echo(i, token).await;
        if done(&answer) || start.elapsed() > within {
            return (start.elapsed(), answer);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// While Redis is unusable every replica answers what needs it with 503 and
/// `Retry-After`, within a bound (never waiting on Redis), and still answers
/// its metadata route (a readiness probe keeps it in rotation, a liveness
/// probe does not restart it).
async fn every_replica_fails_closed(fleet: &mut Fleet, token: &str, what: &str) {
    for i in 0..fleet.replicas.len() {
        let (took, answer) = until(fleet, i, token, Duration::from_secs(5), |a| {
            status(a) == Some(StatusCode::SERVICE_UNAVAILABLE)
        })
        .await;
        assert_eq!(
            status(&answer),
            Some(StatusCode::SERVICE_UNAVAILABLE),
            "replica {} with Redis {what}: {answer:?}",
            i + 1
        );
        // Each refusal came quickly (a hung request fails REQUEST_BOUND).
        let client = fleet.client(i, token).await;
        let started = Instant::now();
        let refused = client
            .request("tools/call", json!({"name": "echo", "arguments": {"text": "hi"}}))
            .await
            .unwrap_err();
        let one = started.elapsed();
        let McpError::Http { status, ref body, .. } = refused else {
            panic!("replica {}: {refused:?}", i + 1);
        };
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body.contains("-32000") || body.contains("unavailable"), "{body}");
        eprintln!(
            "redis {what}: replica {} answered 503 after {took:?} of polling; one refusal took {one:?}",
            i + 1
        );
        assert_eq!(fleet.metadata(i).await, StatusCode::OK, "replica {} metadata", i + 1);
        assert!(fleet.replicas[i].is_running(), "replica {} is still up", i + 1);
    }
    // The 503 says when to come back.
    let response = fleet
        .http
        .post(fleet.replicas[0].url())
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/list")
        .json(
            &json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
                "io.modelcontextprotocol/clientCapabilities": {},
            }}}),
        )
        .send()
        .await
        .expect("an answer within the bound");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok());
    assert!(
        retry_after
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|s| (1..=30).contains(&s)),
        "Retry-After: {retry_after:?}"
    );
}

/// Every replica serves again by itself once Redis is back.
async fn every_replica_recovers(fleet: &Fleet, token: &str, what: &str) {
    for i in 0..fleet.replicas.len() {
        let (took, answer) = until(fleet, i, token, Duration::from_secs(20), Result::is_ok).await;
        assert!(answer.is_ok(), "replica {} after Redis {what}: {answer:?}", i + 1);
        eprintln!("redis {what}: replica {} serving again after {took:?}", i + 1);
    }
}

#[tokio::test]
async fn redis_down_is_503_on_every_replica_and_they_recover_by_themselves() {
    // The default timeout: no request waits on Redis for more than 50 ms.
    let mut fleet = Fleet::start_unconfined(&[("GUARD_REDIS_TIMEOUT_MS", "50")]).await;
    let alice = fleet.token("alice", &["developers"]);
    every_replica_recovers(&fleet, &alice, "up").await;

    // Redis crashes (SIGKILL): connections refused.
    fleet.redis.stop();
    every_replica_fails_closed(&mut fleet, &alice, "stopped").await;
    fleet.redis.restart().await;
    every_replica_recovers(&fleet, &alice, "restarted").await;

    // Redis hangs (SIGSTOP): connections open, nothing answers. Nobody
    // waits on it past the timeout.
    fleet.redis.pause();
    every_replica_fails_closed(&mut fleet, &alice, "hung").await;
    fleet.redis.resume();
    every_replica_recovers(&fleet, &alice, "resumed").await;
}

/// A confirmation asked by one replica is answered on another (the same
/// sealing key everywhere, `GUARD_REQUEST_STATE_KEY_FILE`), and only once in
/// the whole fleet (the replay set lives in Redis).
#[tokio::test]
async fn a_confirmation_asked_by_one_replica_is_answered_on_another_once() {
    let fleet = Fleet::start(&[]).await;
    let engineer = fleet.token("eve", &["network-engineers"]);
    let call = json!({"name": "deploy_template", "arguments": {"template_id": "t1", "device_id": "d1"}});
    let elicitation = json!({"elicitation": {"form": {}}});

    let first = fleet.client_with(0, &engineer, elicitation.clone()).await;
    let asked = first
        .request("tools/call", call.clone())
        .await
        .expect("asked to confirm");
    assert_eq!(asked["resultType"], "input_required", "{asked}");
    let mut retry = call.clone();
    retry["requestState"] = asked["requestState"].clone();
    retry["inputResponses"] = json!({"confirm": {"action": "accept", "content": {"confirm": true}}});

    // The user's "yes" lands on replica 2.
    let second = fleet.client_with(1, &engineer, elicitation.clone()).await;
    let done = second.request("tools/call", retry.clone()).await.expect("deployed");
    let text = done["content"][0]["text"].as_str().unwrap_or_default();
    assert!(text.contains("acme-netops"), "{done}");

    // The same answer replayed to replica 3: refused, nothing deployed twice.
    let third = fleet.client_with(2, &engineer, elicitation).await;
    let replayed = third.request("tools/call", retry).await;
    assert!(
        matches!(&replayed, Err(McpError::JsonRpc { data: Some(d), .. }) if d["error"] == "request_state_replayed"),
        "{replayed:?}"
    );
}

/// `GUARD_RATE_LIMIT=30/min` is one budget per caller for the whole fleet:
/// 90 calls spread round-robin over three replicas get about 30 through
/// (three replicas counting on their own would let all 90 through), and
/// another caller keeps a budget of its own.
#[tokio::test]
async fn a_rate_limit_is_one_budget_for_the_whole_fleet() {
    let fleet = Fleet::start(&[("GUARD_RATE_LIMIT", "30/min")]).await;
    let alice = fleet.token("alice", &["developers"]);
    let bob = fleet.token("bob", &["developers"]);

    // In rounds of 5 at once, so that the 90 take well under the 2 s in
    // which one more call is earned back, on a loaded machine too, while
    // staying far under the 16 requests in flight a caller may have (a
    // permit is given back just after its response).
    let started = Instant::now();
    let (mut allowed, mut per_replica) = (0, [0; 3]);
    for round in 0..18 {
        let calls = (0..5).map(|k| {
            let i = (round * 5 + k) % 3;
            let alice = &alice;
            let fleet = &fleet;
            async move { (i, fleet.echo(i, alice).await) }
        });
        for (i, answer) in futures_util::future::join_all(calls).await {
            match answer {
                Ok(()) => {
                    allowed += 1;
                    per_replica[i] += 1;
                }
                Err(e) if e.status() == Some(StatusCode::TOO_MANY_REQUESTS) => {}
                Err(e) => panic!("a call on replica {}: {e:?}", i + 1),
            }
        }
    }
    let took = started.elapsed();
    eprintln!("30/min over 3 replicas: {allowed} of 90 calls allowed in {took:?} (per replica: {per_replica:?})");
    // 30 at once (the burst), plus what came back while the calls ran (one
    // every 2 s).
    assert!((30..=33).contains(&allowed), "{allowed} of 90 allowed");
    assert!(
        per_replica.iter().all(|&n| n > 0),
        "every replica served: {per_replica:?}"
    );

    // Another caller is unaffected, on every replica.
    for i in 0..3 {
        fleet.echo(i, &bob).await.expect("bob's budget is his own");
    }
}

/// Revoke `subject` with the `revoke` tool, called by an admin on replica `i`.
async fn revoke(fleet: &Fleet, i: usize, subject: &str) {
    let admin = fleet.token("root", &["admin"]);
    let client = fleet.client(i, &admin).await;
    let result = client
        .request(
            "tools/call",
            json!({"name": "revoke", "arguments": {"subject": subject}}),
        )
        .await
        .expect("the revoke tool answers");
    assert_ne!(result["isError"], true, "{result}");
}

/// Poll `echo` on replica `i` with `token` until it is refused 401
/// `invalid_token`; how long that took.
async fn until_revoked(fleet: &Fleet, i: usize, token: &str) -> Duration {
    let (took, answer) = until(fleet, i, token, Duration::from_secs(5), |a| {
        status(a) == Some(StatusCode::UNAUTHORIZED)
    })
    .await;
    let Err(refused) = answer else {
        panic!("replica {} still serves the revoked token after {took:?}", i + 1);
    };
    assert_eq!(refused.status(), Some(StatusCode::UNAUTHORIZED), "{refused:?}");
    let challenge = refused.www_authenticate().unwrap_or_default();
    assert!(challenge.contains("invalid_token"), "{challenge}");
    took
}

/// Sleep past the current second: a token issued then has an `iat` later
/// than a revocation made now (`iat` has whole seconds).
async fn next_second() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970");
    tokio::time::sleep(Duration::from_millis(1_100 - u64::from(now.subsec_millis()))).await;
}

/// A revocation made on replica 1 is enforced on replicas 2 and 3 within
/// about a second, for a token each of them has already verified (and
/// cached); a token issued afterwards works everywhere.
#[tokio::test]
async fn a_revocation_on_one_replica_is_enforced_on_every_replica() {
    let fleet = Fleet::start(&[]).await;
    let mallory = fleet.token("mallory", &["developers"]);
    let bob = fleet.token("bob", &["developers"]);
    for i in 0..3 {
        fleet.echo(i, &mallory).await.expect("served before the revocation");
    }

    revoke(&fleet, 0, "mallory").await;
    let (on_2, on_3) = tokio::join!(until_revoked(&fleet, 1, &mallory), until_revoked(&fleet, 2, &mallory));
    eprintln!("revocation made on replica 1 enforced on replica 2 after {on_2:?}, on replica 3 after {on_3:?}");
    until_revoked(&fleet, 0, &mallory).await;
    for i in 0..3 {
        fleet.echo(i, &bob).await.expect("another subject is unaffected");
    }

    next_second().await;
    let later = fleet.token("mallory", &["developers"]);
    for i in 0..3 {
        fleet
            .echo(i, &later)
            .await
            .expect("a token issued after the revocation works");
    }
}

/// `tools/list` on replica `i` in the 2025-11-25 session `session`, as the
/// holder of `token`: the status and body.
async fn in_session(fleet: &Fleet, i: usize, token: &str, session: &str) -> (StatusCode, String) {
    let response = fleet
        .http
        .post(fleet.replicas[i].url())
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", session)
        .header("mcp-protocol-version", "2025-11-25")
        .json(&json!({"jsonrpc": "2.0", "id": 7, "method": "tools/list"}))
        .send()
        .await
        .expect("an answer within the bound");
    let status = response.status();
    (status, response.text().await.unwrap_or_default())
}

/// The session layer's refusal (the binding names someone else), told
/// apart from rmcp's own "no such session" (plain text).
fn refused_by_binding(body: &str) -> bool {
    serde_json::from_str::<Value>(body).is_ok_and(|b| b["error"]["code"] == -32001)
}

/// Replica 2 is killed and started again with the same environment: the
/// revocation recorded before is still enforced there, and the binding of a
/// session opened there before still refuses another principal (the
/// binding lives in Redis, the rmcp session itself in the dead process:
/// its owner gets rmcp's 404 and starts a new session, as MCP says).
#[tokio::test]
async fn a_restarted_replica_keeps_revocations_and_session_bindings() {
    let mut fleet = Fleet::start(&[("GUARD_STATELESS", "0")]).await;
    let alice = fleet.token("alice", &["developers"]);
    let bob = fleet.token("bob", &["developers"]);
    let mallory = fleet.token("mallory", &["developers"]);

    // Alice's session on replica 2; Bob cannot use it.
    let session = McpClient::connect(fleet.replicas[1].url(), Protocol::V2025_11_25)
        .bearer(&alice)
        .http_client(fleet.http.clone())
        .await
        .expect("a 2025-11-25 session");
    let id = session.session_id().expect("a session id").to_owned();
    assert!(session.list_tools().await.is_ok());
    let (code, body) = in_session(&fleet, 1, &bob, &id).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert!(refused_by_binding(&body), "{body}");
    // The binding is in Redis, not only in replica 2.
    let mut redis = redis::Client::open(fleet.redis.url())
        .and_then(|c| c.get_connection())
        .expect("a connection to the test's Redis");
    let binding = format!("rmcp-guard:{RESOURCE}:session:{id}");
    let bytes: Option<u64> = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(&binding)
        .query(&mut redis)
        .expect("MEMORY USAGE");
    assert!(bytes.is_some(), "no {binding} in Redis");
    eprintln!("a session binding: {} bytes", bytes.unwrap_or(0));

    // Mallory is revoked (on replica 1) and refused on replica 2.
    fleet.echo(1, &mallory).await.expect("served before the revocation");
    revoke(&fleet, 0, "mallory").await;
    until_revoked(&fleet, 1, &mallory).await;

    fleet.replicas[1].restart().await;

    // The restarted replica syncs its revocations before it serves (503 until then).
    let (took, answer) = until(&fleet, 1, &mallory, Duration::from_secs(5), |a| {
        status(a) != Some(StatusCode::SERVICE_UNAVAILABLE)
    })
    .await;
    assert_eq!(
        status(&answer),
        Some(StatusCode::UNAUTHORIZED),
        "after {took:?}: {answer:?}"
    );
    fleet.echo(1, &bob).await.expect("others are served");

    // The binding is known after the restart: Bob is refused by it, Alice
    // passes it and meets rmcp's "no such session" (the session died with
    // the process).
    let (code, body) = in_session(&fleet, 1, &bob, &id).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert!(refused_by_binding(&body), "bob: {body}");
    let (code, body) = in_session(&fleet, 1, &alice, &id).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert!(!refused_by_binding(&body), "alice passes the binding: {body}");
}

/// Every key the fleet writes is under the prefix derived from the resource
/// URI (two servers sharing a Redis never meet) and expires (nothing stays
/// forever): after limits, a confirmation, a revocation and a session.
#[tokio::test]
async fn every_key_in_redis_is_under_the_prefix_and_expires() {
    // 30/min: a caller's rate key lives 2 s per call (at 20/s, 50 ms).
    let fleet = Fleet::start(&[("GUARD_RATE_LIMIT", "30/min")]).await;
    let engineer = fleet.token("eve", &["network-engineers"]);
    fleet.echo(0, &engineer).await.expect("served");
    let call = json!({"name": "deploy_template", "arguments": {"template_id": "t1", "device_id": "d1"}});
    let client = fleet
        .client_with(1, &engineer, json!({"elicitation": {"form": {}}}))
        .await;
    let asked = client.request("tools/call", call.clone()).await.expect("asked");
    let mut retry = call;
    retry["requestState"] = asked["requestState"].clone();
    retry["inputResponses"] = json!({"confirm": {"action": "accept", "content": {"confirm": true}}});
    client.request("tools/call", retry).await.expect("deployed");
    revoke(&fleet, 2, "mallory").await;

    let mut redis = redis::Client::open(fleet.redis.url())
        .and_then(|c| c.get_connection())
        .expect("a connection to the test's Redis");
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut redis).expect("KEYS");
    let prefix = format!("rmcp-guard:{RESOURCE}:");
    for kind in ["limit:", "replay:", "revocations:"] {
        assert!(
            keys.iter().any(|k| k.starts_with(&format!("{prefix}{kind}"))),
            "no {kind} key in {keys:?}"
        );
    }
    for key in &keys {
        assert!(key.starts_with(&prefix), "{key} is outside the prefix");
        let ttl: i64 = redis::cmd("PTTL").arg(key).query(&mut redis).expect("PTTL");
        // -2: expired since KEYS; -1: no expiry.
        assert_ne!(ttl, -1, "{key} never expires");
        let bytes: Option<u64> = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(key)
            .query(&mut redis)
            .expect("MEMORY USAGE");
        eprintln!("{key}: {} bytes, expires in {ttl} ms", bytes.unwrap_or(0));
    }
    eprintln!("{} keys, all under {prefix}, all expiring", keys.len());
}
