//! DPoP interop with software nobody here wrote: `oidc-provider` (npm, its
//! DPoP feature) issues DPoP-bound tokens, and a real DPoP client
//! (`oauth4webapi`, tests/dpop-client/client.mjs) calls the production
//! template, `examples/secure_server`, end to end with them: as JWTs
//! (`cnf.jkt`) and as opaque tokens checked by RFC 7662 introspection
//! (`cnf` in the answer). The client then probes the misuses the server must
//! refuse: the token as `Bearer`, a replayed proof, a proof for another URI.
//!
//! Needs `npm ci --prefix tests/oidc-provider`, `npm ci --prefix
//! tests/dpop-client` (Node 24: `NODE24`, as `.ci/run` sets it) and the
//! built example (`cargo test` builds it).

mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::example::free_port;
use support::oidc::OidcProvider;

const CLIENT_ID: &str = "rmcp-guard-dpop";
const CLIENT_SECRET: &str = "dpop-interop-test-secret-not-used-anywhere-else";
/// The most the client script may take (it takes about a second).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);

fn node() -> String {
    std::env::var("NODE24")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "node".to_owned())
}

fn tests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests")
}

/// A child process killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// oidc-provider on a loopback port, issuing JWTs or opaque tokens.
fn provider(jwt: bool) -> (OidcProvider, String) {
    let vars: &[(&str, &str)] = if jwt { &[("ACCESS_TOKEN_FORMAT", "jwt")] } else { &[] };
    let provider = OidcProvider::start(CLIENT_ID, CLIENT_SECRET, vars);
    let issuer = provider.issuer.clone();
    (provider, issuer)
}

/// `examples/secure_server` trusting `issuer`, stateless, with `vars`;
/// returns it and its resource URI once its metadata answers.
async fn secure_server(issuer: &str, vars: &[(&str, String)]) -> (Running, String) {
    let port = free_port();
    let binary = support::example::example_binary("secure_server");
    let child = Command::new(&binary)
        .env_clear()
        .env("GUARD_ISSUER", issuer)
        .env("GUARD_BIND", format!("127.0.0.1:{port}"))
        .env("GUARD_STATELESS", "1")
        .env("RUST_LOG", "warn")
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
    let running = Running(child);
    let url = format!("http://127.0.0.1:{port}/mcp");
    let metadata = format!("http://127.0.0.1:{port}/.well-known/oauth-protected-resource/mcp");
    for _ in 0..100 {
        if let Ok(response) = reqwest::get(&metadata).await
            && response.status() == 200
        {
            let doc: Value = response.json().await.unwrap();
            assert!(
                doc["dpop_signing_alg_values_supported"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|alg| alg == "ES256")),
                "{doc}"
            );
            return (running, url);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("secure_server did not start within 10 s");
}

/// Run the oauth4webapi client against `url`; its one JSON line.
fn run_client(issuer: &str, url: &str) -> Value {
    let dir = tests_dir().join("dpop-client");
    assert!(
        dir.join("node_modules/oauth4webapi/package.json").exists(),
        "oauth4webapi is not installed: run `npm ci --prefix tests/dpop-client` with Node 24 (see .ci/run)"
    );
    let mut child = Command::new(node())
        .arg(dir.join("client.mjs"))
        .env("ISSUER", issuer)
        .env("CLIENT_ID", CLIENT_ID)
        .env("CLIENT_SECRET", CLIENT_SECRET)
        .env("RESOURCE", url)
        .env("MCP_URL", url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{}` ({e}): set NODE24 as .ci/run does", node()));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("client status") {
            break status;
        }
        if started.elapsed() > SCRIPT_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the DPoP client did not finish within {SCRIPT_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (mut out, mut err) = (String::new(), String::new());
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(status.success(), "the DPoP client failed: {err}\n{out}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("client output is one JSON line ({e}): {out}\n{err}"))
}

/// What every run must show: a DPoP-bound token that reaches `whoami` with
/// its key, and each misuse refused with 401 and a `DPoP` challenge.
fn check_report(report: &Value) {
    assert_eq!(report["token_type"], "DPoP", "{report:#}");
    assert_eq!(report["ok"]["status"], 200, "{report:#}");
    let who: Value = serde_json::from_str(report["ok"]["text"].as_str().unwrap())
        .unwrap_or_else(|_| panic!("whoami answered: {report:#}"));
    let jkt = who["dpop_jkt"].as_str().unwrap_or_else(|| panic!("bound: {who}"));
    assert_eq!(jkt.len(), 43, "{who}");
    assert_eq!(who["client_id"], CLIENT_ID, "{who}");
    if let Some(cnf) = report["token_claims_cnf"].as_object() {
        assert_eq!(cnf["jkt"], jkt, "the token's key is the one the server saw: {report:#}");
    }
    for (probe, error) in [
        ("as_bearer", "invalid_token"),
        ("replayed", "invalid_dpop_proof"),
        ("wrong_htu", "invalid_dpop_proof"),
    ] {
        let answer = &report[probe];
        assert_eq!(answer["status"], 401, "{probe}: {report:#}");
        let challenge = answer["www_authenticate"].as_str().unwrap_or_default();
        assert!(
            challenge.contains(&format!("DPoP error=\"{error}\"")),
            "{probe}: {challenge}"
        );
        assert!(challenge.contains("algs="), "{probe}: {challenge}");
    }
}

#[tokio::test]
async fn oidc_provider_jwts_bound_with_oauth4webapi_are_accepted_and_misuses_refused() {
    let (_provider, issuer) = provider(true);
    for mode in ["allowed", "required"] {
        let (_server, url) = secure_server(&issuer, &[("GUARD_DPOP", mode.to_owned())]).await;
        let report = tokio::task::spawn_blocking({
            let (issuer, url) = (issuer.clone(), url.clone());
            move || run_client(&issuer, &url)
        })
        .await
        .unwrap();
        assert!(report["token_claims_cnf"]["jkt"].is_string(), "{mode}: {report:#}");
        check_report(&report);
    }
}

#[tokio::test]
async fn oidc_provider_opaque_bound_tokens_are_checked_through_introspection() {
    let (_provider, issuer) = provider(false);
    let dir = tempfile_dir();
    let secret_file = dir.join("client-secret");
    std::fs::write(&secret_file, CLIENT_SECRET).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o400)).unwrap();
    }
    let (_server, url) = secure_server(
        &issuer,
        &[
            ("GUARD_DPOP", "required".to_owned()),
            ("GUARD_INTROSPECTION_URL", format!("{issuer}/token/introspection")),
            ("GUARD_CLIENT_ID", CLIENT_ID.to_owned()),
            ("GUARD_CLIENT_SECRET_FILE", secret_file.display().to_string()),
        ],
    )
    .await;
    let report = tokio::task::spawn_blocking({
        let (issuer, url) = (issuer.clone(), url.clone());
        move || run_client(&issuer, &url)
    })
    .await
    .unwrap();
    assert!(report["token_claims_cnf"].is_null(), "an opaque token: {report:#}");
    check_report(&report);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A fresh directory under the system's temporary directory.
fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "rmcp-guard-dpop-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
