//! DPoP (RFC 9449) at the resource server, over HTTP: a guarded rmcp server
//! on loopback, tokens from a [`TestIssuer`] bound to test keys, proofs from
//! the test kit. Every refusal is a 401 with the right challenge (never a
//! 5xx) and echoes nothing of the token; a proof is good once, on one
//! replica or across a fleet sharing Redis.

mod common;
mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use rmcp_guard::oauth::{DpopConfig, DpopNonces, HostPolicy, Issuer, ResourceServer};
use rmcp_guard::store::{RedisConfig, SharedStore};
use rmcp_guard::{Guard, Principal};
use rmcp_guard_testkit::dpop::rsa_1024_public_jwk;
use rmcp_guard_testkit::{DpopKey, KeyAlg, TestIssuer};
use serde_json::{Value, json};
use support::redis::Redis;

fn jwks(issuer: &TestIssuer) -> Issuer {
    Issuer::with_jwks_uri(issuer.issuer(), issuer.jwks_uri())
}

async fn server(issuer: &TestIssuer, dpop: DpopConfig) -> GuardedServer {
    start_guarded_with(jwks(issuer), Mode::Stateless, move |b| b.dpop(dpop)).await
}

/// A POST of `body` with `Authorization: DPoP <token>` and `proof` (if any).
async fn send_dpop(server: &GuardedServer, body: &Value, token: &str, proof: Option<&str>) -> Reply {
    let mut request = mcp_post(&client(), &server.url, body).header("authorization", format!("DPoP {token}"));
    if let Some(proof) = proof {
        request = request.header("dpop", proof);
    }
    Reply::read(request.send().await.expect("request to the guarded server")).await
}

/// A fresh, correct proof for a POST to `server` with `token`.
fn proof(key: &DpopKey, server: &GuardedServer, token: &str) -> String {
    key.proof("POST", &server.url).access_token(token).sign()
}

/// 401 whose `DPoP` challenge names `error` (and `algs`), with the `Bearer`
/// challenge first and without an error when bearer tokens are accepted;
/// nothing of the token or the proof in the answer.
fn assert_dpop_refused(reply: &Reply, error: &str, secrets: &[&str]) {
    assert_eq!(reply.status, 401, "{reply:?}");
    let challenges = reply.challenges();
    let dpop = reply.dpop_challenge().expect("a DPoP challenge");
    assert_eq!(dpop.get("error"), Some(error), "{challenges:?}");
    assert!(dpop.get("error_description").is_some(), "{challenges:?}");
    assert!(dpop.get("algs").is_some_and(|a| a.contains("ES256")), "{challenges:?}");
    assert!(dpop.get("resource_metadata").is_some(), "{challenges:?}");
    if let Some(bearer) = challenges.iter().find(|c| c.scheme == "Bearer") {
        assert_eq!(bearer.get("error"), None, "the proof error is DPoP's: {challenges:?}");
    }
    let body: Value = serde_json::from_str(&reply.body).expect("JSON rejection");
    assert_eq!(body["error"], error, "{body}");
    for secret in secrets {
        assert_token_not_echoed(reply, secret);
    }
}

fn assert_proof_refused(reply: &Reply, description: &str, token: &str, proof: &str) {
    assert_dpop_refused(reply, "invalid_dpop_proof", &[token, proof]);
    let dpop = reply.dpop_challenge().unwrap();
    assert_eq!(dpop.get("error_description"), Some(description), "{reply:?}");
}

// ---------------------------------------------------------------------------
// Accepted.

#[tokio::test]
async fn a_bound_token_with_its_proof_reaches_the_tool_and_every_proof_is_checked() {
    let issuer = TestIssuer::start().await.unwrap();
    let server = server(&issuer, DpopConfig::allowed()).await;
    let key = DpopKey::es256();
    let token = token_for(&issuer, &server).bound_to(&key).sign();
    for text in ["first", "cached"] {
        // The second request is answered from the verified-token cache: its
        // proof is still checked and recorded.
        let reply = send_dpop(&server, &echo_call(text), &token, Some(&proof(&key, &server, &token))).await;
        assert_echoed(&reply, text);
        assert!(reply.headers.get("dpop-nonce").is_none(), "no nonces configured");
    }
    // Bearer tokens are still accepted in the default mode.
    let plain = token_for(&issuer, &server).sign();
    assert_echoed(&call_echo(&server.url, &plain, "bearer").await, "bearer");
    // Every algorithm of the default list, with the key's own `alg`.
    for alg in [KeyAlg::Es256, KeyAlg::EdDsa, KeyAlg::Ps256, KeyAlg::Rs256] {
        let key = DpopKey::generate(alg);
        let token = token_for(&issuer, &server).bound_to(&key).sign();
        let reply = send_dpop(&server, &echo_call("alg"), &token, Some(&proof(&key, &server, &token))).await;
        assert_echoed(&reply, "alg");
    }
}

#[tokio::test]
async fn the_tool_sees_the_key_and_the_policy_can_require_dpop_for_one_tool() {
    let issuer = TestIssuer::start().await.unwrap();
    // `echo` only with DPoP; `whoami` with any token.
    let engine = rmcp_guard::policy::PolicyEngine::builder()
        .module(
            "dpop.rego",
            r#"package mcp.authz
import rego.v1
default allow := false
allow if input.resource == "whoami"
allow if { input.resource == "echo"; input.dpop }
allow if input.action != "tools/call"
"#,
        )
        .build()
        .unwrap();
    let server = start_guarded_with_policy(&issuer, engine).await;
    let key = DpopKey::es256();
    let bound = token_for(&issuer, &server).bound_to(&key).sign();
    let plain = token_for(&issuer, &server).sign();
    assert_echoed(
        &send_dpop(
            &server,
            &echo_call("bound"),
            &bound,
            Some(&proof(&key, &server, &bound)),
        )
        .await,
        "bound",
    );
    let refused = call_echo(&server.url, &plain, "plain").await;
    assert_eq!(refused.status, 200, "{refused:?}");
    assert!(
        refused.body.contains("-32003"),
        "a bearer token may not call echo: {refused:?}"
    );
    let who = Reply::read(
        mcp_post(&client(), &server.url, &whoami_call())
            .bearer_auth(&plain)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(who.status, 200, "{who:?}");
    assert!(!who.body.contains("-32003"), "{who:?}");
    let principal = Principal::unverified("i", "s")
        .claims(json!({"cnf": {"jkt": key.thumbprint()}}).as_object().unwrap().clone())
        .build();
    assert_eq!(principal.dpop_thumbprint(), Some(key.thumbprint().as_str()));
}

#[tokio::test]
async fn nonces_are_handed_out_and_then_required() {
    let issuer = TestIssuer::start().await.unwrap();
    let server = server(&issuer, DpopConfig::allowed().nonces(DpopNonces::generate().unwrap())).await;
    let key = DpopKey::es256();
    let token = token_for(&issuer, &server).bound_to(&key).sign();
    let first = proof(&key, &server, &token);
    let reply = send_dpop(&server, &echo_call("x"), &token, Some(&first)).await;
    assert_dpop_refused(&reply, "use_dpop_nonce", &[&token, &first]);
    let nonce = reply.headers["dpop-nonce"].to_str().unwrap().to_owned();
    for wrong in ["", "not-a-nonce", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"] {
        let p = key.proof("POST", &server.url).access_token(&token).nonce(wrong).sign();
        let reply = send_dpop(&server, &echo_call("x"), &token, Some(&p)).await;
        assert_dpop_refused(&reply, "use_dpop_nonce", &[&token, &p]);
    }
    let p = key.proof("POST", &server.url).access_token(&token).nonce(&nonce).sign();
    let reply = send_dpop(&server, &echo_call("with nonce"), &token, Some(&p)).await;
    assert_echoed(&reply, "with nonce");
    assert!(
        reply.headers.get("dpop-nonce").is_some(),
        "the current nonce on success"
    );
}

// ---------------------------------------------------------------------------
// Modes and metadata.

async fn metadata(server: &GuardedServer) -> Value {
    let response = client().get(server.metadata_url()).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

#[tokio::test]
async fn required_mode_refuses_bearer_tokens_and_says_so() {
    let issuer = TestIssuer::start().await.unwrap();
    let server = server(&issuer, DpopConfig::required()).await;
    let doc = metadata(&server).await;
    assert_eq!(doc["dpop_bound_access_tokens_required"], true, "{doc}");
    assert_eq!(
        doc["dpop_signing_alg_values_supported"],
        json!(["ES256", "ES384", "EdDSA", "PS256", "RS256"]),
        "{doc}"
    );
    let plain = token_for(&issuer, &server).sign();
    let reply = call_echo(&server.url, &plain, "x").await;
    assert_dpop_refused(&reply, "invalid_token", &[&plain]);
    assert_eq!(reply.challenges().len(), 1, "no Bearer challenge: {reply:?}");
    // Without credentials: only the DPoP challenge.
    let bare = Reply::read(mcp_post(&client(), &server.url, &echo_call("x")).send().await.unwrap()).await;
    assert_eq!(bare.status, 401);
    let all = bare.challenges();
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0].scheme, "DPoP");
    assert!(all[0].get("algs").is_some() && all[0].get("error").is_none(), "{all:?}");
    // An unbound token over DPoP, even with a valid proof.
    let key = DpopKey::es256();
    let p = proof(&key, &server, &plain);
    assert_dpop_refused(
        &send_dpop(&server, &echo_call("x"), &plain, Some(&p)).await,
        "invalid_token",
        &[&plain, &p],
    );
    let bound = token_for(&issuer, &server).bound_to(&key).sign();
    assert_echoed(
        &send_dpop(&server, &echo_call("ok"), &bound, Some(&proof(&key, &server, &bound))).await,
        "ok",
    );
}

#[tokio::test]
async fn off_mode_ignores_the_scheme_and_still_refuses_bound_tokens() {
    let issuer = TestIssuer::start().await.unwrap();
    let server = server(&issuer, DpopConfig::off()).await;
    let doc = metadata(&server).await;
    assert!(doc.get("dpop_signing_alg_values_supported").is_none(), "{doc}");
    assert!(doc.get("dpop_bound_access_tokens_required").is_none(), "{doc}");
    let key = DpopKey::es256();
    let bound = token_for(&issuer, &server).bound_to(&key).sign();
    // The DPoP scheme is not understood: asked for credentials, Bearer only.
    let reply = send_dpop(&server, &echo_call("x"), &bound, Some(&proof(&key, &server, &bound))).await;
    assert_eq!(reply.status, 401, "{reply:?}");
    let all = reply.challenges();
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0].scheme, "Bearer");
    // A bound token is never taken as a bearer token.
    let reply = call_echo(&server.url, &bound, "x").await;
    assert_invalid_token(
        &reply,
        &server,
        &bound,
        "DPoP-bound token: present it with the DPoP scheme and a proof",
    );
    let plain = token_for(&issuer, &server).sign();
    assert_echoed(&call_echo(&server.url, &plain, "plain").await, "plain");
}

// ---------------------------------------------------------------------------
// Refused: the binding.

#[tokio::test]
async fn a_bound_token_as_bearer_is_refused_even_from_the_cache() {
    let issuer = TestIssuer::start().await.unwrap();
    let server = server(&issuer, DpopConfig::allowed()).await;
    let key = DpopKey::es256();
    let token = token_for(&issuer, &server).bound_to(&key).sign();
    let reply = call_echo(&server.url, &token, "x").await;
    assert_dpop_refused(&reply, "invalid_token", &[&token]);
    // Now verified once with its proof (so in the verified-token cache).
    assert_echoed(
        &send_dpop(&server, &echo_call("ok"), &token, Some(&proof(&key, &server, &token))).await,
        "ok",
    );
    let reply = call_echo(&server.url, &token, "x").await;
    assert_dpop_refused(&reply, "invalid_token", &[&token]);
    assert_eq!(
        reply.dpop_challenge().unwrap().get("error_description"),
        Some("DPoP-bound token: present it with the DPoP scheme and a proof")
    );
}

#[tokio::test]
async fn a_proof_by_another_key_or_no_proof_is_refused() {
    let issuer = TestIssuer::start().await.unwrap();
    let server = server(&issuer, DpopConfig::allowed()).await;
    let key = DpopKey::es256();
    let thief = DpopKey::es256();
    let token = token_for(&issuer, &server).bound_to(&key).sign();
    let p = proof(&thief, &server, &token);
    let reply = send_dpop(&server, &echo_call("x"), &token, Some(&p)).await;
    assert_dpop_refused(&reply, "invalid_token", &[&token, &p]);
    assert_eq!(
        reply.dpop_challenge().unwrap().get("error_description"),
        Some("the DPoP proof is not signed by the token's key")
    );
    // The jwk of the key, signed by another: the signature fails.
    let p = key
        .proof("POST", &server.url)
        .access_token(&token)
        .signed_with(&thief)
        .sign();
    let reply = send_dpop(&server, &echo_call("x"), &token, Some(&p)).await;
    assert_proof_refused(&reply, "invalid DPoP proof signature", &token, &p);
    let reply = send_dpop(&server, &echo_call("x"), &token, None).await;
    assert_proof_refused(&reply, "DPoP proof required", &token, "");
}

// ---------------------------------------------------------------------------
// Refused: the proof (RFC 9449 section 4.3).

#[tokio::test]
async fn proofs_for_another_request_are_refused() {
    let issuer = TestIssuer::start().await.unwrap();
    let server = server(&issuer, DpopConfig::allowed()).await;
    let key = DpopKey::es256();
    let token = token_for(&issuer, &server).bound_to(&key).sign();
    let port = server
        .url
        .rsplit(':')
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "GET",
            server.url.clone(),
            "DPoP proof htm does not match the request method",
        ),
        (
            "post",
            server.url.clone(),
            "DPoP proof htm does not match the request method",
        ),
        (
            "POST",
            format!("{}/other", server.base),
            "DPoP proof htu does not match this resource",
        ),
        (
            "POST",
            format!("{}/mcp/", server.base),
            "DPoP proof htu does not match this resource",
        ),
        (
            "POST",
            format!("http://localhost:{port}/mcp"),
            "DPoP proof htu does not match this resource",
        ),
        (
            "POST",
            format!("https://127.0.0.1:{port}/mcp"),
            "DPoP proof htu does not match this resource",
        ),
        (
            "POST",
            format!("{}?x=1", server.url),
            "DPoP proof htu does not match this resource",
        ),
        (
            "POST",
            format!("{}#f", server.url),
            "DPoP proof htu does not match this resource",
        ),
        (
            "POST",
            "not a url".to_owned(),
            "DPoP proof htu does not match this resource",
        ),
    ];
    for (method, url, description) in cases {
        let p = key.proof(method, &url).access_token(&token).sign();
        let reply = send_dpop(&server, &echo_call("x"), &token, Some(&p)).await;
        assert_proof_refused(&reply, description, &token, &p);
    }
}

#[tokio::test]
async fn stale_future_and_replayed_proofs_are_refused() {
    let issuer = TestIssuer::start().await.unwrap();
    let server = server(&issuer, DpopConfig::allowed().proof_max_age(Duration::from_secs(60))).await;
    let key = DpopKey::es256();
    let token = token_for(&issuer, &server).bound_to(&key).sign();
    for (offset, description) in [
        (-61, "DPoP proof too old"),
        (-3600, "DPoP proof too old"),
        (10, "DPoP proof issued in the future"),
        (3600, "DPoP proof issued in the future"),
    ] {
        let p = key
            .proof("POST", &server.url)
            .access_token(&token)
            .issued_at_offset(offset)
            .sign();
        let reply = send_dpop(&server, &echo_call("x"), &token, Some(&p)).await;
        assert_proof_refused(&reply, description, &token, &p);
    }
    // Within the window and the leeway: accepted once, then a replay.
    let p = key
        .proof("POST", &server.url)
        .access_token(&token)
        .issued_at_offset(-50)
        .sign();
    assert_echoed(&send_dpop(&server, &echo_call("once"), &token, Some(&p)).await, "once");
    let reply = send_dpop(&server, &echo_call("twice"), &token, Some(&p)).await;
    assert_proof_refused(&reply, "DPoP proof already used", &token, &p);
    // The same jti in a new proof is the same proof.
    let a = key
        .proof("POST", &server.url)
        .access_token(&token)
        .jti("fixed-jti")
        .sign();
    let b = key
        .proof("POST", &server.url)
        .access_token(&token)
        .jti("fixed-jti")
        .sign();
    assert_echoed(&send_dpop(&server, &echo_call("a"), &token, Some(&a)).await, "a");
    assert_proof_refused(
        &send_dpop(&server, &echo_call("b"), &token, Some(&b)).await,
        "DPoP proof already used",
        &token,
        &b,
    );
}

#[tokio::test]
async fn the_access_token_hash_is_checked() {
    let issuer = TestIssuer::start().await.unwrap();
    let server = server(&issuer, DpopConfig::allowed()).await;
    let key = DpopKey::es256();
    let token = token_for(&issuer, &server).bound_to(&key).sign();
    let other = token_for(&issuer, &server).bound_to(&key).subject("other").sign();
    for p in [
        key.proof("POST", &server.url).sign(),
        key.proof("POST", &server.url).access_token(&other).sign(),
        key.proof("POST", &server.url).claim("ath", json!("")).sign(),
    ] {
        let reply = send_dpop(&server, &echo_call("x"), &token, Some(&p)).await;
        assert_proof_refused(&reply, "DPoP proof ath does not match the access token", &token, &p);
    }
}

#[tokio::test]
async fn malformed_and_dangerous_proofs_are_refused() {
    let issuer = TestIssuer::start().await.unwrap();
    let server = server(&issuer, DpopConfig::allowed()).await;
    let key = DpopKey::es256();
    let rsa = DpopKey::generate(KeyAlg::Rs256);
    let token = token_for(&issuer, &server).bound_to(&key).sign();
    let good = || key.proof("POST", &server.url).access_token(&token);
    let cases: Vec<(String, &str)> = vec![
        (
            good().header("typ", json!("JWT")).sign(),
            "DPoP proof typ must be dpop+jwt",
        ),
        (good().without_header("typ").sign(), "DPoP proof typ must be dpop+jwt"),
        (good().unsigned(), "DPoP proof algorithm not allowed"),
        (good().sign_hs256(&[7u8; 32]), "DPoP proof algorithm not allowed"),
        (
            good().header("alg", json!("ES512")).sign(),
            "DPoP proof algorithm not allowed",
        ),
        (
            good().header("jwk", key.private_jwk()).sign(),
            "DPoP proof key must be a public key",
        ),
        (
            good().header("jwk", json!({"kty": "oct", "k": "c2VjcmV0"})).sign(),
            "DPoP proof key must be a public key",
        ),
        (
            rsa.proof("POST", &server.url)
                .access_token(&token)
                .header("jwk", rsa_1024_public_jwk())
                .sign(),
            "DPoP proof key too weak",
        ),
        (good().without_header("jwk").sign(), "invalid DPoP proof key"),
        (
            good()
                .header("jwk", DpopKey::generate(KeyAlg::EdDsa).public_jwk())
                .sign(),
            "invalid DPoP proof key",
        ),
        (
            good().header("crit", json!(["exp"])).sign(),
            "unsupported critical header in DPoP proof",
        ),
        (good().without_claim("jti").sign(), "DPoP proof lacks a required claim"),
        (good().without_claim("iat").sign(), "DPoP proof lacks a required claim"),
        (
            good().claim("iat", json!("now")).sign(),
            "DPoP proof lacks a required claim",
        ),
        (good().without_claim("htu").sign(), "DPoP proof lacks a required claim"),
        ("not.a.jwt".to_owned(), "malformed DPoP proof"),
        ("a.b".to_owned(), "malformed DPoP proof"),
        (format!("{}.extra", good().sign()), "malformed DPoP proof"),
        ("x".repeat(64 * 1024), "DPoP proof too large"),
    ];
    for (p, description) in cases {
        let reply = send_dpop(&server, &echo_call("x"), &token, Some(&p)).await;
        assert_proof_refused(&reply, description, &token, &p);
    }
    // A 64 KiB proof that is a well-formed JWS too.
    let big = good().claim("pad", json!("p".repeat(64 * 1024))).sign();
    let reply = send_dpop(&server, &echo_call("x"), &token, Some(&big)).await;
    assert_proof_refused(&reply, "DPoP proof too large", &token, &big);
    // Two DPoP headers, both valid.
    let response = mcp_post(&client(), &server.url, &echo_call("x"))
        .header("authorization", format!("DPoP {token}"))
        .header("dpop", good().sign())
        .header("dpop", good().sign())
        .send()
        .await
        .unwrap();
    let reply = Reply::read(response).await;
    assert_proof_refused(&reply, "more than one DPoP header", &token, "");
    // None of these was a 5xx, and the good proof still works.
    assert_echoed(
        &send_dpop(&server, &echo_call("ok"), &token, Some(&good().sign())).await,
        "ok",
    );
}

// ---------------------------------------------------------------------------
// A fleet: the replay set is shared.

#[tokio::test]
async fn a_proof_used_on_one_replica_is_refused_on_another() {
    let issuer = TestIssuer::start().await.unwrap();
    let redis = Redis::start().await;
    let (a, b) = (bind_loopback().await, bind_loopback().await);
    let resource = format!("http://{}/mcp", a.1);
    let hosts = [a.1.to_string(), b.1.to_string()];
    let mut replicas = Vec::new();
    for (listener, addr) in [a, b] {
        let rs = ResourceServer::builder(resource.clone(), jwks(&issuer))
            .required_scopes([SCOPE])
            .hosts(HostPolicy::default().hosts(hosts.clone()))
            .build()
            .unwrap();
        let store = SharedStore::redis(
            RedisConfig::new(redis.url())
                .key_prefix("dpop-test:")
                .timeout(Duration::from_millis(500)),
        )
        .unwrap();
        let revocations = store.revocations();
        let app = Guard::new(rs.clone())
            .http_config(rs.streamable_http_config().with_sse_keep_alive(None))
            .limits(rmcp_guard::limit::RequestLimits::default().dangerous().unlimited())
            .stateless()
            .shared_store(store)
            .router(|| Ok(Tools::new()));
        support::redis::synced(&revocations).await;
        let task = tokio::spawn(async move {
            let _ = rmcp_guard::serve(listener, app).await;
        });
        replicas.push((format!("http://{addr}/mcp"), task));
    }
    let key = DpopKey::es256();
    let token = issuer
        .token()
        .audience(resource.clone())
        .scope(SCOPE)
        .bound_to(&key)
        .sign();
    let p = key.proof("POST", &resource).access_token(&token).sign();
    let post = |url: &str, proof: &str| {
        mcp_post(&client(), url, &echo_call("fleet"))
            .header("authorization", format!("DPoP {token}"))
            .header("dpop", proof.to_owned())
            .send()
    };
    let first = Reply::read(post(&replicas[0].0, &p).await.unwrap()).await;
    assert_echoed(&first, "fleet");
    let second = Reply::read(post(&replicas[1].0, &p).await.unwrap()).await;
    assert_proof_refused(&second, "DPoP proof already used", &token, &p);
    // A new proof is fine on the other replica.
    let fresh = key.proof("POST", &resource).access_token(&token).sign();
    assert_echoed(&Reply::read(post(&replicas[1].0, &fresh).await.unwrap()).await, "fleet");
    for (_, task) in replicas {
        task.abort();
    }
}

async fn bind_loopback() -> (tokio::net::TcpListener, std::net::SocketAddr) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

// ---------------------------------------------------------------------------
// The test kit's client speaks DPoP, nonces included.

#[tokio::test]
async fn the_test_client_speaks_dpop_with_nonces_in_both_protocols() {
    use rmcp_guard_testkit::{McpClient, Protocol};
    let issuer = TestIssuer::start().await.unwrap();
    let server = server(&issuer, DpopConfig::required().nonces(DpopNonces::generate().unwrap())).await;
    let key = DpopKey::es256();
    let token = token_for(&issuer, &server).bound_to(&key).sign();
    for protocol in [Protocol::V2025_11_25, Protocol::V2026_07_28] {
        let client = McpClient::connect(&server.url, protocol)
            .dpop(token.clone(), &key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{protocol:?}: {e}"));
        // 2025-11-25 learns the nonce at `initialize`; 2026-07-28 (no handshake) on its first call.
        let result = client.call_tool("echo", json!({"text": "kit"})).await.unwrap();
        assert_eq!(result.content[0].as_text().unwrap().text, "kit", "{protocol:?}");
        assert!(client.dpop_nonce().is_some(), "{protocol:?}: the nonce was learned");
        // The same token as a bearer token is refused.
        let mut bearer = McpClient::connect(&server.url, protocol)
            .bearer(token.clone())
            .send()
            .await;
        if let Ok(client) = bearer.as_mut() {
            let refused = client.call_tool("echo", json!({"text": "x"})).await.unwrap_err();
            assert_eq!(refused.status().map(|s| s.as_u16()), Some(401), "{protocol:?}");
        } else if let Err(error) = bearer {
            assert_eq!(error.status().map(|s| s.as_u16()), Some(401), "{protocol:?}: {error}");
        }
    }
}

// ---------------------------------------------------------------------------
// Token exchange for a DPoP-bound caller: the downstream token is bound to
// this server's own key.

/// One token request: the `DPoP` proof's key thumbprint and nonce (`None`:
/// no proof).
type SeenProof = Option<(String, Option<String>)>;

/// What the token endpoint saw, request by request.
#[derive(Clone, Default)]
struct TokenEndpointLog(Arc<Mutex<Vec<SeenProof>>>);

/// A proof's key thumbprint, after checking its signature, `typ`, `htm`
/// and `htu` (and `ath` for `token`): what an authorization server or a
/// downstream API does.
fn check_proof(proof: &str, method: &str, htu: &str, token: Option<&str>) -> (String, Value) {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = proof.split('.').collect();
    assert_eq!(parts.len(), 3, "{proof}");
    let header: Value = serde_json::from_slice(&b64.decode(parts[0]).unwrap()).unwrap();
    let claims: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(header["typ"], "dpop+jwt");
    assert_eq!(header["alg"], "ES256");
    assert!(header["jwk"].get("d").is_none(), "a public key only");
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(header["jwk"].clone()).unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
    let message = format!("{}.{}", parts[0], parts[1]);
    assert!(
        jsonwebtoken::crypto::verify(parts[2], message.as_bytes(), &key, jsonwebtoken::Algorithm::ES256).unwrap(),
        "the proof's signature verifies"
    );
    assert_eq!(claims["htm"], method);
    assert_eq!(claims["htu"], htu);
    if let Some(token) = token {
        let ath = b64.encode(<sha2::Sha256 as sha2::Digest>::digest(token.as_bytes()));
        assert_eq!(claims["ath"], ath);
    }
    (
        rmcp_guard_testkit::dpop::jwk_thumbprint(&header["jwk"]).unwrap(),
        claims,
    )
}

/// An RFC 8693 token endpoint that takes DPoP proofs with a nonce (RFC 9449
/// sections 5 and 8): a proof without the nonce gets `use_dpop_nonce`; a
/// good one a `DPoP` token; no proof a `Bearer` token.
async fn dpop_token_endpoint(log: TokenEndpointLog, url: String, headers: http::HeaderMap) -> axum::response::Response {
    use axum::response::IntoResponse;
    let Some(proof) = headers.get("dpop").map(|p| p.to_str().unwrap().to_owned()) else {
        log.0.lock().unwrap().push(None);
        return axum::Json(json!({"access_token": "bearer-downstream", "token_type": "Bearer", "expires_in": 300}))
            .into_response();
    };
    let (jkt, claims) = check_proof(&proof, "POST", &url, None);
    let nonce = claims["nonce"].as_str().map(str::to_owned);
    log.0.lock().unwrap().push(Some((jkt, nonce.clone())));
    if nonce.as_deref() != Some("as-nonce-1") {
        return (
            http::StatusCode::BAD_REQUEST,
            [("dpop-nonce", "as-nonce-1")],
            axum::Json(json!({"error": "use_dpop_nonce"})),
        )
            .into_response();
    }
    axum::Json(json!({"access_token": "dpop-downstream", "token_type": "DPoP", "expires_in": 300})).into_response()
}

async fn json_body<B: http_body::Body>(response: http::Response<B>) -> Value
where
    B::Error: std::fmt::Debug,
{
    use http_body_util::BodyExt;
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn a_dpop_bound_caller_gets_a_downstream_token_bound_to_the_servers_key() {
    use rmcp_guard::oauth::{BearerAuthLayer, ClientAuth, DownstreamRequest, DpopSigner, InboundToken, TokenExchange};
    use tower::{Layer, ServiceExt, service_fn};

    let log = TokenEndpointLog::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let token_url = format!("http://{addr}/token");
    let app = axum::Router::new().route(
        "/token",
        axum::routing::post({
            let (log, url) = (log.clone(), token_url.clone());
            move |headers: http::HeaderMap| dpop_token_endpoint(log.clone(), url.clone(), headers)
        }),
    );
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let signer = DpopSigner::generate().unwrap();
    let exchange = TokenExchange::builder(&token_url, ClientAuth::client_secret("mcp", "secret").unwrap())
        .dpop(signer.clone())
        .build()
        .unwrap();
    let issuer = TestIssuer::start().await.unwrap();
    let resource = "http://127.0.0.1:9/mcp";
    let rs = ResourceServer::builder(resource, jwks(&issuer)).build().unwrap();
    // The tool: exchange the caller's token, report how the downstream token is presented.
    let tool = service_fn(move |request: http::Request<()>| {
        let exchange = exchange.clone();
        async move {
            let ext = request.extensions();
            let (principal, inbound) = (
                ext.get::<Principal>().unwrap().clone(),
                ext.get::<InboundToken>().unwrap().clone(),
            );
            let token = exchange
                .exchange(&principal, &inbound, &DownstreamRequest::audience("api"))
                .await
                .unwrap();
            let proof = token.dpop_proof(&http::Method::GET, "https://api.example.com/items?page=2");
            let answer = json!({
                "authorization": token.authorization_header().unwrap().to_str().unwrap(),
                "bound": token.is_dpop_bound(),
                "proof": proof.map(|p| p.to_str().unwrap().to_owned()),
            });
            Ok::<_, std::convert::Infallible>(http::Response::new(answer.to_string()))
        }
    });
    let service = BearerAuthLayer::new(rs).keep_inbound_token().layer(tool);
    let call = |authorization: String, proof: Option<String>| {
        let mut request = http::Request::post("/mcp").header("authorization", authorization);
        if let Some(proof) = proof {
            request = request.header("dpop", proof);
        }
        service.clone().oneshot(request.body(()).unwrap())
    };

    // A DPoP-bound caller: the exchange carries a proof by the server's key
    // (a second one with the endpoint's nonce), and the downstream token is DPoP.
    let key = DpopKey::es256();
    let bound = issuer.token().audience(resource).bound_to(&key).sign();
    let response = call(
        format!("DPoP {bound}"),
        Some(key.proof("POST", resource).access_token(&bound).sign()),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    let answer = json_body(response).await;
    assert_eq!(answer["authorization"], "DPoP dpop-downstream");
    assert_eq!(answer["bound"], true);
    let (jkt, _) = check_proof(
        answer["proof"].as_str().unwrap(),
        "GET",
        "https://api.example.com/items",
        Some("dpop-downstream"),
    );
    assert_eq!(
        jkt,
        signer.thumbprint(),
        "downstream calls prove the server's key, not the caller's"
    );
    assert_ne!(jkt, key.thumbprint());
    assert_eq!(
        *log.0.lock().unwrap(),
        vec![
            Some((signer.thumbprint().to_owned(), None)),
            Some((signer.thumbprint().to_owned(), Some("as-nonce-1".to_owned()))),
        ]
    );

    // A bearer caller: no proof at the token endpoint, a bearer token downstream.
    let plain = issuer.token().audience(resource).sign();
    let response = call(format!("Bearer {plain}"), None).await.unwrap();
    let answer = json_body(response).await;
    assert_eq!(answer["authorization"], "Bearer bearer-downstream");
    assert_eq!(answer["bound"], false);
    assert!(answer["proof"].is_null());
    assert_eq!(log.0.lock().unwrap().last(), Some(&None));
    server.abort();
}

#[tokio::test]
async fn the_servers_key_is_used_only_where_the_authorization_server_takes_dpop() {
    use rmcp_guard::oauth::{ClientAuth, DpopSigner, TokenExchange};
    for (algs, used) in [
        (Some(json!(["ES256", "EdDSA"])), true),
        (Some(json!(["EdDSA"])), false),
        (None, false),
    ] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let mut doc = json!({"issuer": issuer, "token_endpoint": format!("{issuer}/token")});
        if let Some(algs) = &algs {
            doc["dpop_signing_alg_values_supported"] = algs.clone();
        }
        let app = axum::Router::new().route(
            "/.well-known/oauth-authorization-server",
            axum::routing::get(move || async move { axum::Json(doc) }),
        );
        let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let exchange = TokenExchange::discover(&issuer, ClientAuth::client_secret("mcp", "secret").unwrap())
            .await
            .unwrap()
            .dpop(DpopSigner::generate().unwrap())
            .build()
            .unwrap();
        let shown = format!("{exchange:?}");
        assert_eq!(shown.contains("dpop: Some(DpopSigner"), used, "{algs:?}: {shown}");
        server.abort();
    }
}
