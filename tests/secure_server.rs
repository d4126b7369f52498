//! `examples/secure_server.rs` as a user runs it: the built binary, configured
//! from the environment, driven by rmcp's own client with tokens from the
//! test kit. Proves the template's wiring: bearer auth, the RBAC policy per
//! group (calls and listings), the caller's tenant-scoped credentials (demo
//! in-memory store), and one clear line with exit status 2 on bad
//! configuration.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp_guard_testkit::TestIssuer;
use serde_json::{Value, json};

/// `target/<profile>/examples/secure_server`, built by `cargo test`.
fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>");
    let binary = profile_dir.join("examples").join("secure_server");
    assert!(
        binary.exists(),
        "{} is missing: `cargo test` builds the examples; for this test alone run \
         `cargo build --example secure_server` first",
        binary.display()
    );
    binary
}

struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start(issuer: &TestIssuer) -> Server {
    // A free loopback port (the resource URI must name it).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let child = Command::new(binary())
        .env_clear()
        .env("GUARD_ISSUER", issuer.issuer())
        .env("GUARD_BIND", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary().display()));
    let url = format!("http://127.0.0.1:{port}/mcp");
    let server = Server { child, url };
    let metadata = format!("http://127.0.0.1:{port}/.well-known/oauth-protected-resource/mcp");
    for _ in 0..100 {
        if reqwest::get(&metadata).await.is_ok_and(|r| r.status() == 200) {
            return server;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("secure_server did not start within 10 s");
}

fn token(issuer: &TestIssuer, url: &str, groups: &[&str], tenant: &str) -> String {
    issuer
        .token()
        .subject(format!("{tenant}-user"))
        .audience(url)
        .scope("mcp:tools")
        .claim("groups", json!(groups))
        .claim("tenant", json!(tenant))
        .sign()
}

type Client = rmcp::service::RunningService<rmcp::RoleClient, ()>;

async fn connect(url: &str, token: &str) -> Client {
    let config = StreamableHttpClientTransportConfig::with_uri(url.to_owned()).auth_header(token.to_owned());
    tokio::time::timeout(
        Duration::from_secs(10),
        ().serve(StreamableHttpClientTransport::from_config(config)),
    )
    .await
    .expect("connect in time")
    .expect("connect")
}

async fn call(client: &Client, tool: &str, arguments: Value) -> Result<Value, String> {
    let params =
        CallToolRequestParams::new(tool.to_owned()).with_arguments(arguments.as_object().cloned().unwrap_or_default());
    match client.call_tool(params).await {
        Ok(result) => {
            let text = result.content[0].as_text().expect("text content").text.clone();
            Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
        }
        Err(e) => Err(e.to_string()),
    }
}

async fn tools(client: &Client) -> Vec<String> {
    let mut names: Vec<String> = client
        .list_all_tools()
        .await
        .expect("tools/list")
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn template_wires_policy_and_tenant_credentials() {
    let issuer = TestIssuer::start().await.unwrap();
    let server = start(&issuer).await;

    // A network engineer of tenant acme: Catalyst Center with acme's account.
    let neteng = connect(
        &server.url,
        &token(&issuer, &server.url, &["network-engineers"], "acme"),
    )
    .await;
    assert_eq!(
        tools(&neteng).await,
        [
            "call_downstream",
            "deploy_template",
            "echo",
            "get_all_templates",
            "whoami"
        ]
    );
    let templates = call(&neteng, "get_all_templates", json!({})).await.unwrap();
    assert_eq!(templates["connected_as"], "acme-netops");
    let deployed = call(
        &neteng,
        "deploy_template",
        json!({"template_id": "t1", "device_id": "d1"}),
    )
    .await
    .unwrap();
    assert_eq!(deployed["connected_as"], "acme-netops");
    assert!(call(&neteng, "create_ticket", json!({"summary": "x"})).await.is_err());
    let _ = neteng.cancel().await;

    // Service desk of tenant globex: tickets with globex's account, never acme's.
    let desk = connect(&server.url, &token(&issuer, &server.url, &["service-desk"], "globex")).await;
    let ticket = call(&desk, "create_ticket", json!({"summary": "printer on fire"}))
        .await
        .unwrap();
    assert_eq!(ticket["connected_as"], "globex-itsm");
    assert!(
        !ticket.to_string().contains("demo-"),
        "no secret value in a tool result: {ticket}"
    );
    assert!(
        call(
            &desk,
            "deploy_template",
            json!({"template_id": "t1", "device_id": "d1"})
        )
        .await
        .is_err()
    );
    let _ = desk.cancel().await;

    // A developer sees and calls none of the Catalyst Center tools.
    let dev = connect(&server.url, &token(&issuer, &server.url, &["developers"], "acme")).await;
    assert_eq!(
        tools(&dev).await,
        ["call_downstream", "echo", "list_repositories", "whoami"]
    );
    assert!(call(&dev, "get_all_templates", json!({})).await.is_err());
    let _ = dev.cancel().await;

    // A tenant with no credentials stored: a clear error, not someone else's.
    let stranger = connect(&server.url, &token(&issuer, &server.url, &["admin"], "initech")).await;
    let err = call(&stranger, "get_all_templates", json!({})).await.unwrap_err();
    assert!(!err.contains("acme") && !err.contains("globex"), "{err}");
    let _ = stranger.cancel().await;
}

#[test]
fn bad_configuration_is_one_line_and_exit_status_2() {
    for (vars, expected) in [
        (vec![], "GUARD_ISSUER is required"),
        (vec![("GUARD_ISSUER", "http://idp.example.com")], "must be an https URL"),
        (
            vec![
                ("GUARD_ISSUER", "https://idp.example.com"),
                ("GUARD_POLICY", "/nonexistent/policy.rego"),
            ],
            "policy",
        ),
        (
            vec![("GUARD_ISSUER", "https://idp.example.com"), ("GUARD_BIND", "nowhere")],
            "GUARD_BIND",
        ),
        (
            vec![
                ("GUARD_ISSUER", "https://idp.example.com"),
                ("GUARD_MAX_SESSIONS_PER_PRINCIPAL", "0"),
            ],
            "GUARD_MAX_SESSIONS_PER_PRINCIPAL",
        ),
        (
            vec![
                ("GUARD_ISSUER", "https://idp.example.com"),
                ("GUARD_RATE_LIMIT", "fast"),
            ],
            "GUARD_RATE_LIMIT",
        ),
    ] {
        let output = Command::new(binary())
            .env_clear()
            .envs(vars)
            .output()
            .expect("run secure_server");
        assert_eq!(output.status.code(), Some(2), "{expected}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
    }
}
