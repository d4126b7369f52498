//! Issue 15 with real parts: `examples/secure_server` exports its spans and
//! metrics over OTLP/HTTP (protobuf) to a receiver in this test, which
//! decodes them with the official protobuf definitions
//! (`opentelemetry-proto`; a real collector binary is not installable
//! here). The spans of one call form one tree under the caller's
//! `traceparent`; and at `RUST_LOG=trace`, with every feature in use
//! (JWT and DPoP callers, a Vault credential read from a real OpenBao, a
//! token exchange with a client secret, a refused token), no token, proof,
//! secret or client secret appears in any log or audit line, exported span,
//! exported metric or Prometheus scrape.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue};
use rmcp_guard_testkit::DpopKey;
use rmcp_guard_testkit::TestIssuer;
use rmcp_guard_testkit::client::{McpClient, Protocol};
use serde_json::json;
use support::bao::Bao;
use support::example::{free_port, temp_dir};
use support::otlp::{OtlpReceiver, attribute, counter_sum};

/// The trace the caller is in (W3C `traceparent`).
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN_ID: &str = "00f067aa0ba902b7";

struct Server {
    child: Option<Child>,
    url: String,
    stderr: PathBuf,
}

impl Server {
    /// SIGTERM, and wait for the exit (the providers flush on the way out:
    /// the receiver runs on another worker thread meanwhile).
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            for _ in 0..100 {
                if child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Start `secure_server` on a free port with `vars`; its output (every log
/// line, audit events included) goes to a file.
async fn start(issuer: &TestIssuer, vars: &[(&str, String)], dir: &Path) -> Server {
    let port = free_port();
    let stderr = dir.join("secure_server.log");
    let log = std::fs::File::create(&stderr).expect("log file");
    let child = Command::new(support::example::example_binary("secure_server"))
        .env_clear()
        .env("GUARD_ISSUER", issuer.issuer())
        .env("GUARD_BIND", format!("127.0.0.1:{port}"))
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        // Log lines (audit events included) go to stdout, errors to stderr:
        // both into one file.
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .spawn()
        .expect("run secure_server");
    let server = Server {
        child: Some(child),
        url: format!("http://127.0.0.1:{port}/mcp"),
        stderr,
    };
    let metadata = format!("http://127.0.0.1:{port}/.well-known/oauth-protected-resource/mcp");
    for _ in 0..100 {
        if reqwest::get(&metadata).await.is_ok_and(|r| r.status() == 200) {
            return server;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("secure_server did not start within 10 s:\n{}", server.logs());
}

fn token(issuer: &TestIssuer, url: &str, groups: &[&str]) -> String {
    issuer
        .token()
        .subject("acme-user")
        .audience(url)
        .scope("mcp:tools")
        .claim("groups", json!(groups))
        .claim("tenant", json!("acme"))
        .sign()
}

fn traceparent() -> (HeaderName, HeaderValue) {
    (
        HeaderName::from_static("traceparent"),
        HeaderValue::from_str(&format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-01")).expect("header"),
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_of_a_call_reach_the_otlp_receiver_as_one_tree_under_the_callers_trace() {
    let issuer = TestIssuer::start().await.unwrap();
    let receiver = OtlpReceiver::start().await;
    let dir = temp_dir("otlp");
    let mut server = start(
        &issuer,
        &[
            ("GUARD_OTLP_ENDPOINT", receiver.endpoint()),
            // Sessions on (for 2025-era clients): the sessions gauge is reported.
            ("RUST_LOG", "info".to_owned()),
            // Metrics exported while serving too, not only at the exit's flush.
            ("OTEL_METRIC_EXPORT_INTERVAL", "500".to_owned()),
        ],
        &dir,
    )
    .await;
    let (name, value) = traceparent();
    let client = McpClient::connect(&server.url, Protocol::V2026_07_28)
        .bearer(token(&issuer, &server.url, &["network-engineers"]))
        .header(name, value)
        .send()
        .await
        .expect("connect");
    let result = client.call_tool("whoami", json!({})).await.expect("whoami");
    assert_ne!(result.is_error, Some(true));
    // A refused token is counted too.
    // (A 2026-07-28 client sends nothing until its first request.)
    let refused = McpClient::connect(&server.url, Protocol::V2026_07_28)
        .bearer("not-a-token")
        .send()
        .await
        .expect("connect");
    assert!(refused.call_tool("whoami", json!({})).await.is_err());
    // The gauges of sessions and connections are read at a periodic export,
    // while the server serves.
    let gauges = ["rmcp_guard.sessions.active", "rmcp_guard.connections.active"];
    let reported = receiver
        .wait_for(Duration::from_secs(10), |r| {
            gauges.iter().all(|g| r.metrics().iter().any(|m| m.name == *g))
        })
        .await;
    assert!(reported, "the gauges {gauges:?} are exported while serving");
    server.stop();
    let arrived = receiver
        .wait_for(Duration::from_secs(15), |r| {
            r.spans().iter().any(|s| hex(&s.trace_id) == TRACE_ID)
                && counter_sum(&r.metrics(), "rmcp_guard.requests", &[("outcome", "allow")]) > 0
        })
        .await;
    assert_eq!(receiver.bad_requests(), 0, "every export decodes as OTLP protobuf");
    assert!(
        arrived,
        "spans of the caller's trace and the request counter arrive:\n{}",
        server.logs()
    );

    let spans: Vec<_> = receiver
        .spans()
        .into_iter()
        .filter(|s| hex(&s.trace_id) == TRACE_ID)
        .collect();
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    // The outermost span continues the caller's trace: its parent is the
    // caller's span.
    let roots: Vec<_> = spans
        .iter()
        .filter(|s| hex(&s.parent_span_id) == PARENT_SPAN_ID)
        .collect();
    assert!(!roots.is_empty(), "a span whose parent is the caller's: {names:?}");
    // Every other span of the trace hangs under a span of this trace.
    let ids: Vec<Vec<u8>> = spans.iter().map(|s| s.span_id.clone()).collect();
    for span in &spans {
        let parent = hex(&span.parent_span_id);
        assert!(
            parent == PARENT_SPAN_ID || ids.contains(&span.parent_span_id),
            "span {} has a parent outside the trace ({parent}): {names:?}",
            span.name
        );
    }
    // The stack is there: authentication and the tool, under the request.
    let find = |part: &str| spans.iter().find(|s| s.name.contains(part));
    let authenticate = find("authenticate").unwrap_or_else(|| panic!("an authenticate span: {names:?}"));
    let tool = find("tool").unwrap_or_else(|| panic!("a tool span: {names:?}"));
    assert_ne!(authenticate.parent_span_id, Vec::<u8>::new());
    assert_ne!(tool.parent_span_id, Vec::<u8>::new());
    assert!(
        tool.attributes
            .iter()
            .any(|kv| attribute(std::slice::from_ref(kv), &kv.key) == Some("whoami")),
        "the tool span names the tool: {:?}",
        tool.attributes
    );

    let metrics = receiver.metrics();
    assert!(counter_sum(&metrics, "rmcp_guard.requests", &[("outcome", "allow")]) >= 1);
    assert!(
        counter_sum(
            &metrics,
            "rmcp_guard.requests",
            &[("outcome", "deny"), ("reason", "malformed_token")]
        ) >= 1,
        "the refused token is counted"
    );
    assert!(counter_sum(&metrics, "rmcp_guard.policy.decisions", &[("outcome", "allow")]) >= 1);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The RFC 8693 token endpoint of the exchange: checks the client's secret
/// and answers a fresh opaque token.
async fn token_endpoint(client_secret: String, issued: String) -> (String, tokio::task::JoinHandle<()>) {
    use axum::http::{HeaderMap, StatusCode};
    use base64::Engine;
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("guard-server:{client_secret}"))
    );
    let app = axum::Router::new().route(
        "/token",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let expected = expected.clone();
            let issued = issued.clone();
            async move {
                let authorized = headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(expected.as_str());
                if !authorized || !body.contains("token-exchange") {
                    return (StatusCode::UNAUTHORIZED, axum::Json(json!({"error": "invalid_client"})));
                }
                (
                    StatusCode::OK,
                    axum::Json(json!({
                        "access_token": issued,
                        "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
                        "token_type": "Bearer",
                        "expires_in": 300,
                        "scope": "read",
                    })),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/token"), task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_trace_level_no_token_proof_secret_or_client_secret_leaves_in_logs_spans_or_metrics() {
    let issuer = TestIssuer::start().await.unwrap();
    let receiver = OtlpReceiver::start().await;
    let dir = temp_dir("leak");

    // A real OpenBao holding the caller's credential, read with a token of
    // its own (not the root token).
    let bao = Bao::start().await;
    let password = "Pw-Leak-7f3a9c1e-Vault";
    bao.kv_put(
        "mcp/acme/catalyst-center",
        json!({"username": "acme-netops", "password": password}),
    )
    .await;
    bao.read_policy("mcp-read", &["secret/data/mcp/*"]).await;
    let vault_token = bao.token(json!({"policies": ["mcp-read"], "ttl": "1h"})).await;

    // Token exchange with a client secret, at a token endpoint of this test.
    let client_secret = "Client-Secret-5b2e8d41-Leak";
    let exchanged = "Exchanged-Token-91c4f7a2-Leak";
    let (endpoint, _token_server) = token_endpoint(client_secret.to_owned(), exchanged.to_owned()).await;
    let secret_file = dir.join("client_secret");
    std::fs::write(&secret_file, client_secret).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o400)).unwrap();
    }

    let metrics_port = free_port();
    let mut server = start(
        &issuer,
        &[
            ("RUST_LOG", "trace".to_owned()),
            ("GUARD_OTLP_ENDPOINT", receiver.endpoint()),
            ("GUARD_METRICS_BIND", format!("127.0.0.1:{metrics_port}")),
            ("GUARD_STATELESS", "1".to_owned()),
            ("VAULT_ADDR", bao.addr()),
            ("VAULT_TOKEN", vault_token.clone()),
            ("GUARD_CLIENT_ID", "guard-server".to_owned()),
            ("GUARD_CLIENT_SECRET_FILE", secret_file.display().to_string()),
            ("GUARD_DOWNSTREAM_AUDIENCE", "https://api.example.com".to_owned()),
            ("GUARD_TOKEN_ENDPOINT", endpoint),
        ],
        &dir,
    )
    .await;

    // A bearer caller: a credential read (and leaked by the tool, removed by
    // the output guard) and a token exchange.
    let bearer = token(&issuer, &server.url, &["network-engineers"]);
    let (name, value) = traceparent();
    let client = McpClient::connect(&server.url, Protocol::V2026_07_28)
        .bearer(bearer.clone())
        .header(name, value)
        .send()
        .await
        .expect("connect");
    let diagnosed = client
        .call_tool("diagnose_connection", json!({"service": "catalyst-center"}))
        .await
        .expect("diagnose_connection");
    let text = serde_json::to_string(&diagnosed).unwrap();
    assert!(!text.contains(password), "the tool's leak is removed: {text}");
    assert!(text.contains("[REDACTED:secret_value]"), "{text}");
    let downstream = client
        .call_tool("call_downstream", json!({}))
        .await
        .expect("call_downstream");
    let downstream = serde_json::to_string(&downstream).unwrap();
    assert!(
        downstream.contains("https://api.example.com"),
        "the exchange ran: {downstream}"
    );
    assert!(!downstream.contains(exchanged));

    // A DPoP-bound caller (its proofs are JWTs too).
    let key = DpopKey::es256();
    let bound = issuer
        .token()
        .subject("acme-dpop")
        .audience(&server.url)
        .scope("mcp:tools")
        .claim("groups", json!(["network-engineers"]))
        .claim("tenant", json!("acme"))
        .claim("cnf", json!({"jkt": key.thumbprint()}))
        .sign();
    let dpop = McpClient::connect(&server.url, Protocol::V2026_07_28)
        .dpop(bound.clone(), &key)
        .send()
        .await
        .expect("DPoP connect");
    dpop.call_tool("whoami", json!({})).await.expect("whoami with DPoP");

    // A refused token: a JWT signed by nobody trusted.
    let forged = {
        let other = TestIssuer::start().await.unwrap();
        token(&other, &server.url, &["admin"])
    };
    let refused = McpClient::connect(&server.url, Protocol::V2026_07_28)
        .bearer(forged.clone())
        .send()
        .await
        .expect("connect");
    assert!(refused.call_tool("whoami", json!({})).await.is_err());

    let scrape = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await
        .expect("scrape")
        .text()
        .await
        .unwrap();
    assert!(
        scrape.contains("rmcp_guard_requests"),
        "the scrape has the request counter"
    );
    server.stop();
    receiver
        .wait_for(Duration::from_secs(15), |r| {
            !r.spans().is_empty() && !r.metrics().is_empty()
        })
        .await;
    let logs = server.logs();
    assert!(
        logs.contains("rmcp_guard::audit"),
        "audit lines are in the log: {}",
        &logs[..logs.len().min(3000)]
    );
    assert!(logs.lines().count() > 50, "trace level logs plenty");
    let exported = receiver.all_text();
    assert!(!exported.is_empty());

    let jwt = regex::Regex::new(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}").unwrap();
    for (place, text) in [("log", &logs), ("OTLP export", &exported), ("scrape", &scrape)] {
        for (what, value) in [
            ("bearer token", bearer.as_str()),
            ("DPoP-bound token", bound.as_str()),
            ("refused token", forged.as_str()),
            ("exchanged token", exchanged),
            ("Vault credential", password),
            ("client secret", client_secret),
            ("Vault token", vault_token.as_str()),
        ] {
            assert!(!text.contains(value), "the {what} appears in the {place}");
        }
        // No JWT at all: tokens and DPoP proofs are JWTs.
        assert!(
            jwt.find(text).is_none(),
            "a JWT (token or proof) appears in the {place}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
