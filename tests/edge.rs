//! The HTTP edge over real sockets (issue 10, findings 3 and 9): connection
//! bounds of `rmcp_guard::serve` on the built `examples/secure_server`
//! running under a 256 open-files limit, and the request checks of
//! `EdgeLayer` (`Host`, `Origin`), hyper's answer to `Content-Length` with
//! `Transfer-Encoding`, and rmcp's body limit, on a guarded server.

mod common;
mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{SCOPE, Tools, client, echo_call, mcp_post, start_guarded, token_for};
use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp_guard::Guard;
use rmcp_guard::oauth::{Issuer, ResourceServer};
use rmcp_guard_testkit::TestIssuer;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A hang detector, not a performance bound.
const HANG: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// Raw requests.

/// Send `raw` on a new connection and read until the server closes it.
async fn exchange(addr: &str, raw: &str) -> String {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(raw.as_bytes()).await.expect("send");
    let mut answer = Vec::new();
    tokio::time::timeout(HANG, tcp.read_to_end(&mut answer))
        .await
        .expect("the server answered and closed the connection")
        .expect("read");
    String::from_utf8_lossy(&answer).into_owned()
}

/// The status code of the first response in `answer`.
fn status(answer: &str) -> u16 {
    answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP/1.1 response: {answer:?}"))
}

/// `GET path` with these header lines, closing after the answer.
async fn get(addr: &str, path: &str, headers: &[String]) -> u16 {
    let mut raw = format!("GET {path} HTTP/1.1\r\n");
    for header in headers {
        raw.push_str(header);
        raw.push_str("\r\n");
    }
    raw.push_str("connection: close\r\n\r\n");
    status(&exchange(addr, &raw).await)
}

const METADATA: &str = "/.well-known/oauth-protected-resource/mcp";

fn authority(base: &str) -> String {
    base.trim_start_matches("http://").to_owned()
}

#[tokio::test]
async fn two_host_headers_are_refused_with_400() {
    let issuer = TestIssuer::start().await.unwrap();
    let server = start_guarded(&issuer).await;
    let addr = authority(&server.base);
    let good = format!("host: {addr}");
    assert_eq!(get(&addr, METADATA, std::slice::from_ref(&good)).await, 200);
    for path in [METADATA, "/mcp"] {
        let two = [good.clone(), "host: evil.example".to_owned()];
        assert_eq!(get(&addr, path, &two).await, 400, "{path}");
        let same_twice = [good.clone(), good.clone()];
        assert_eq!(get(&addr, path, &same_twice).await, 400, "{path}");
        assert_eq!(get(&addr, path, &[]).await, 400, "{path}: no Host");
    }
}

#[tokio::test]
async fn content_length_with_chunked_is_read_as_chunked_and_the_connection_closed() {
    // hyper does not refuse it: it reads the body by Transfer-Encoding alone
    // (RFC 9112 §6.1 allows that instead of a 400), drops Content-Length and
    // closes the connection after the answer, so the request smuggled after
    // the chunked body is never read.
    let issuer = TestIssuer::start().await.unwrap();
    let server = start_guarded(&issuer).await;
    let addr = authority(&server.base);
    let smuggled = format!("GET {METADATA} HTTP/1.1\r\nhost: {addr}\r\n\r\n");
    for framing in [
        "content-length: 5\r\ntransfer-encoding: chunked",
        "transfer-encoding: chunked\r\ncontent-length: 5",
    ] {
        let raw = format!(
            "POST /mcp HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
             accept: application/json, text/event-stream\r\n{framing}\r\n\r\n0\r\n\r\n{smuggled}"
        );
        let answer = exchange(&addr, &raw).await;
        assert_eq!(status(&answer), 401, "{answer}");
        assert_eq!(
            answer.matches("HTTP/1.1 ").count(),
            1,
            "the smuggled request was answered: {answer}"
        );
    }
}

#[tokio::test]
async fn an_origin_that_is_not_scheme_host_port_is_refused_with_403() {
    let issuer = TestIssuer::start().await.unwrap();
    let server = start_guarded(&issuer).await;
    let addr = authority(&server.base);
    let host = format!("host: {addr}");
    let base = &server.base;
    for origin in [
        format!("{base}/"),
        format!("{base}/app"),
        format!("{base}?x=1"),
        format!("{base}#f"),
        format!("http://user@{addr}"),
        format!("http://user:pass@{addr}"),
        addr.clone(),
    ] {
        for path in [METADATA, "/mcp"] {
            let headers = [host.clone(), format!("origin: {origin}")];
            assert_eq!(get(&addr, path, &headers).await, 403, "{path} {origin}");
        }
    }
    // The resource's own origin passes the edge: the metadata answers, the
    // MCP endpoint asks for a token.
    let own = [host.clone(), format!("origin: {base}")];
    assert_eq!(get(&addr, METADATA, &own).await, 200);
    assert_eq!(get(&addr, "/mcp", &own).await, 401);
}

#[tokio::test]
async fn an_allowed_host_without_a_port_does_not_accept_any_port() {
    // Loopback resource `http://127.0.0.1:{port}/mcp`: `127.0.0.1` and
    // `localhost` with the resource's port, nothing else (no port means port
    // 80, which is not this server).
    let issuer = TestIssuer::start().await.unwrap();
    let server = start_guarded(&issuer).await;
    let addr = authority(&server.base);
    let port = addr.rsplit(':').next().unwrap().to_owned();
    for (host, expected) in [
        (addr.clone(), 200),
        (format!("localhost:{port}"), 200),
        ("127.0.0.1".to_owned(), 403),
        ("127.0.0.1:80".to_owned(), 403),
        ("localhost".to_owned(), 403),
        ("127.0.0.1:1".to_owned(), 403),
        ("localhost:1".to_owned(), 403),
    ] {
        assert_eq!(
            get(&addr, METADATA, &[format!("host: {host}")]).await,
            expected,
            "{host}"
        );
    }
    // The MCP endpoint refuses the wrong port before asking for a token.
    assert_eq!(get(&addr, "/mcp", &["host: 127.0.0.1:1".to_owned()]).await, 403);

    // An https resource: its host without a port means port 443 only.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let rs = ResourceServer::builder(
        "https://mcp.example.com/mcp",
        Issuer::with_jwks_uri(issuer.issuer(), issuer.jwks_uri()),
    )
    .required_scopes([SCOPE])
    .build()
    .unwrap();
    let app = Guard::new(rs).stateless().router(|| Ok(Tools::new()));
    let running = tokio::spawn(async move { rmcp_guard::serve(listener, app).await });
    for (host, expected) in [
        ("mcp.example.com", 200),
        ("mcp.example.com:443", 200),
        ("mcp.example.com:8443", 403),
        ("mcp.example.com:80", 403),
    ] {
        assert_eq!(
            get(&addr, METADATA, &[format!("host: {host}")]).await,
            expected,
            "{host}"
        );
    }
    running.abort();
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_with_413() {
    // rmcp's max_request_body_bytes (4 MiB by default) is the one limit.
    let issuer = TestIssuer::start().await.unwrap();
    let server = start_guarded(&issuer).await;
    let token = token_for(&issuer, &server).sign();
    let mut call = echo_call("");
    call["params"]["arguments"]["text"] = json!("a".repeat(4 * 1024 * 1024));
    let response = mcp_post(&client(), &server.url, &call)
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .expect("an answer, not a dropped connection");
    assert_eq!(response.status(), 413);
}

// ---------------------------------------------------------------------------
// Connections: the built secure_server under 256 open files.

/// `target/<profile>/examples/secure_server`, built by `cargo test`.
fn binary() -> PathBuf {
    support::example::example_binary("secure_server")
}

/// `binary` run with an open-files limit of 256 (soft and hard).
fn limited(binary: &Path) -> Command {
    match ["/usr/bin/prlimit", "/bin/prlimit"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    {
        Some(prlimit) => {
            let mut command = Command::new(prlimit);
            command.arg("--nofile=256:256").arg(binary);
            command
        }
        None => {
            let mut command = Command::new("/bin/sh");
            command.arg("-c").arg(r#"ulimit -n 256 && exec "$0""#).arg(binary);
            command
        }
    }
}

struct Server {
    child: Child,
    url: String,
    metadata: String,
    max_connections: usize,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of `field=` in a log line, colours removed.
fn field(line: &str, name: &str) -> Option<usize> {
    let mut plain = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|c| c.is_ascii_alphabetic());
        } else {
            plain.push(c);
        }
    }
    let rest = &plain[plain.find(&format!("{name}="))? + name.len() + 1..];
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

async fn start_limited(issuer: &TestIssuer) -> Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut child = limited(&binary())
        .env_clear()
        .env("GUARD_ISSUER", issuer.issuer())
        .env("GUARD_BIND", format!("127.0.0.1:{port}"))
        // Long enough that the header timeout cannot be what lets the
        // valid caller in.
        .env("GUARD_HEADER_TIMEOUT_SECS", "120")
        .env("RUST_LOG", "warn,rmcp_guard::serve=info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary().display()));
    // Read the log on a thread until the process ends (a full pipe would
    // stall the server); hand over the connection cap it logs.
    let stdout = child.stdout.take().expect("piped stdout");
    let (cap_tx, cap_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(cap) = field(&line, "max_connections") {
                let _ = cap_tx.send(cap);
            }
        }
    });
    let max_connections = cap_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("secure_server logs its connection cap at start");
    let server = Server {
        child,
        url: format!("http://127.0.0.1:{port}/mcp"),
        metadata: format!("http://127.0.0.1:{port}{METADATA}"),
        max_connections,
    };
    for _ in 0..100 {
        if reqwest::get(&server.metadata).await.is_ok_and(|r| r.status() == 200) {
            return server;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("secure_server did not start within 10 s");
}

/// Connections whose socket the server has not closed.
fn still_open(sockets: &[TcpStream]) -> usize {
    let mut buf = [0u8; 64];
    sockets
        .iter()
        .filter(|s| matches!(s.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_do_not_keep_a_valid_caller_out_under_256_open_files() {
    let issuer = TestIssuer::start().await.unwrap();
    let server = start_limited(&issuer).await;
    let cap = server.max_connections;
    assert!(
        0 < cap && cap < 256,
        "connection cap {cap} under a 256 open-files limit"
    );

    // 300 sockets, each with half a request line, never finished.
    let mut idle = Vec::new();
    for _ in 0..300 {
        let mut tcp = TcpStream::connect(server.url.trim_start_matches("http://").trim_end_matches("/mcp"))
            .await
            .expect("connect");
        tcp.write_all(b"POST /mcp HT").await.expect("half a request line");
        idle.push(tcp);
    }

    // An authenticated MCP call (initialize, then whoami) is answered.
    let token = issuer
        .token()
        .subject("edge-user")
        .audience(server.url.clone())
        .scope("mcp:tools")
        .claim("groups", json!([]))
        .claim("tenant", json!("acme"))
        .sign();
    let started = Instant::now();
    let config = StreamableHttpClientTransportConfig::with_uri(server.url.clone()).auth_header(token);
    let called = tokio::time::timeout(HANG, async {
        let mcp = ().serve(StreamableHttpClientTransport::from_config(config)).await.expect("initialize");
        let result = mcp
            .call_tool(CallToolRequestParams::new("whoami"))
            .await
            .expect("whoami");
        let _ = mcp.cancel().await;
        result
    })
    .await
    .expect("the MCP call was answered (not stuck behind the idle sockets)");
    let mcp_latency = started.elapsed();
    let text = called.content[0].as_text().expect("text").text.clone();
    assert!(text.contains("edge-user"), "{text}");

    // The metadata GET is answered too, on a new connection.
    let http = client();
    let started = Instant::now();
    let metadata = tokio::time::timeout(HANG, http.get(&server.metadata).send())
        .await
        .expect("the metadata GET was answered")
        .expect("metadata");
    assert_eq!(metadata.status(), 200);
    let metadata_latency = started.elapsed();
    println!(
        "connection cap {cap}; with 300 half-request sockets: MCP initialize + call {mcp_latency:?}, \
         metadata GET {metadata_latency:?}"
    );

    // The cap held: the server closed the longest-idle sockets to make room
    // (bounded wait for the closes to arrive).
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut open = still_open(&idle);
    while open > cap && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        open = still_open(&idle);
    }
    println!("idle sockets still open: {open} of 300");
    assert!(open <= cap, "{open} idle sockets open with a cap of {cap}");
    let mut server = server;
    assert!(
        server.child.try_wait().expect("status").is_none(),
        "secure_server exited"
    );
}
