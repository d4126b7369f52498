//! Adversarial HTTP tests of the bearer layer in front of a real rmcp server.
//!
//! Every test starts a [`TestIssuer`] and the guarded server of
//! `tests/common` on loopback port 0, sends real HTTP requests and checks the
//! status, the `WWW-Authenticate` parameters and that nothing of the token is
//! echoed back. Tokens are minted at test time with relative `exp`.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::*;
use rmcp_guard::oauth::Issuer;
use rmcp_guard_testkit::{KeyAlg, TestIssuer, TestKey, shared_secret_token, unsigned_token};
use serde_json::{Value, json};

async fn setup() -> (TestIssuer, GuardedServer) {
    let issuer = TestIssuer::start().await.expect("test issuer");
    let server = start_guarded(&issuer).await;
    (issuer, server)
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

/// The claims of a token that would be accepted (for hand-built tokens).
fn good_claims(issuer: &TestIssuer, server: &GuardedServer) -> Value {
    token_for(issuer, server).claims()
}

// ---------------------------------------------------------------------------
// Accepted tokens.

async fn assert_algorithm_accepted(alg: KeyAlg) {
    let (issuer, server) = setup().await;
    let token = token_for(&issuer, &server).algorithm(alg).sign();
    let reply = call_echo(&server.url, &token, "hello").await;
    assert_echoed(&reply, "hello");
}

#[tokio::test]
async fn valid_rs256_token_reaches_the_tool() {
    assert_algorithm_accepted(KeyAlg::Rs256).await;
}

#[tokio::test]
async fn valid_ps256_token_reaches_the_tool() {
    assert_algorithm_accepted(KeyAlg::Ps256).await;
}

#[tokio::test]
async fn valid_es256_token_reaches_the_tool() {
    assert_algorithm_accepted(KeyAlg::Es256).await;
}

#[tokio::test]
async fn valid_eddsa_token_reaches_the_tool() {
    assert_algorithm_accepted(KeyAlg::EdDsa).await;
}

#[tokio::test]
async fn tool_sees_the_verified_principal() {
    let (issuer, server) = setup().await;
    let token = token_for(&issuer, &server)
        .subject("bob")
        .client_id("cli-1")
        .scope(format!("{SCOPE} extra"))
        .claim("tenant", json!("acme"))
        .claim("groups", json!(["admins", "ops"]))
        .sign();
    let response = mcp_post(&client(), &server.url, &whoami_call())
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let reply = Reply::read(response).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let who: Value = serde_json::from_str(&reply.tool_text()).unwrap();
    assert_eq!(who["subject"], "bob");
    assert_eq!(who["issuer"], issuer.issuer());
    assert_eq!(who["client_id"], "cli-1");
    assert_eq!(who["tenant"], "acme");
    assert_eq!(who["groups"], json!(["admins", "ops"]));
    assert_eq!(who["scopes"], json!(["extra", SCOPE]));
}

#[tokio::test]
async fn bearer_scheme_is_case_insensitive() {
    let (issuer, server) = setup().await;
    for scheme in ["bearer", "BEARER", "bEaReR"] {
        // A fresh token each time, so the verified-token cache does not answer.
        let token = unique(token_for(&issuer, &server)).sign();
        let response = mcp_post(&client(), &server.url, &echo_call("hi"))
            .header("authorization", format!("{scheme} {token}"))
            .send()
            .await
            .unwrap();
        assert_echoed(&Reply::read(response).await, "hi");
    }
}

#[tokio::test]
async fn audience_array_containing_ours_is_accepted() {
    let (issuer, server) = setup().await;
    let token = token_for(&issuer, &server)
        .audiences(["https://other.example/api", server.url.as_str()])
        .sign();
    assert_echoed(&call_echo(&server.url, &token, "aud").await, "aud");
}

#[tokio::test]
async fn cached_token_is_accepted_again() {
    let (issuer, server) = setup().await;
    let token = token_for(&issuer, &server).sign();
    for i in 0..3 {
        let text = format!("round {i}");
        assert_echoed(&call_echo(&server.url, &token, &text).await, &text);
    }
    assert_eq!(issuer.jwks_fetches(), 1, "one key fetch for three requests");
}

// ---------------------------------------------------------------------------
// Claims.

#[tokio::test]
async fn expired_token_is_rejected() {
    let (issuer, server) = setup().await;
    let token = token_for(&issuer, &server).expired().sign();
    let reply = call_echo(&server.url, &token, "x").await;
    assert_invalid_token(&reply, &server, &token, "token expired");
}

#[tokio::test]
async fn token_not_yet_valid_is_rejected() {
    let (issuer, server) = setup().await;
    let token = token_for(&issuer, &server)
        .not_before_in(Duration::from_secs(3600))
        .expires_in(Duration::from_secs(7200))
        .sign();
    let reply = call_echo(&server.url, &token, "x").await;
    assert_invalid_token(&reply, &server, &token, "token not yet valid");
}

#[tokio::test]
async fn token_without_exp_is_rejected() {
    let (issuer, server) = setup().await;
    let token = token_for(&issuer, &server).without_claim("exp").sign();
    let reply = call_echo(&server.url, &token, "x").await;
    assert_invalid_token(&reply, &server, &token, "token has no expiry");
}

#[tokio::test]
async fn exp_as_a_string_is_rejected() {
    let (issuer, server) = setup().await;
    let far = (std::time::SystemTime::now() + Duration::from_secs(3600))
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = token_for(&issuer, &server).claim("exp", json!(far.to_string())).sign();
    let reply = call_echo(&server.url, &token, "x").await;
    assert_invalid_token(&reply, &server, &token, "invalid token claims");
}

#[tokio::test]
async fn untrusted_issuer_is_rejected() {
    let (issuer, server) = setup().await;
    // Signed with the trusted key, but naming another issuer.
    let token = token_for(&issuer, &server)
        .claim("iss", json!("https://evil.example"))
        .sign();
    let reply = call_echo(&server.url, &token, "x").await;
    assert_invalid_token(&reply, &server, &token, "untrusted issuer");

    // Minted by another (well-formed) issuer for this resource.
    let other = TestIssuer::start().await.unwrap();
    let token = token_for(&other, &server).sign();
    let reply = call_echo(&server.url, &token, "x").await;
    assert_invalid_token(&reply, &server, &token, "untrusted issuer");
    assert_eq!(other.jwks_fetches() + other.metadata_fetches(), 0);
}

#[tokio::test]
async fn token_for_another_audience_is_rejected() {
    let (issuer, server) = setup().await;
    for aud in [
        json!("https://other.example/mcp"),
        json!(format!("{}/", server.url)),
        json!(["https://a.example", "https://b.example"]),
    ] {
        let token = token_for(&issuer, &server).claim("aud", aud).sign();
        let reply = call_echo(&server.url, &token, "x").await;
        assert_invalid_token(&reply, &server, &token, "token not issued for this resource");
    }
    let token = token_for(&issuer, &server).without_claim("aud").sign();
    let reply = call_echo(&server.url, &token, "x").await;
    assert_invalid_token(&reply, &server, &token, "token not issued for this resource");
}

#[tokio::test]
async fn insufficient_scope_is_forbidden_with_a_challenge() {
    let (issuer, server) = setup().await;
    let token = token_for(&issuer, &server).scope("mcp:read profile").sign();
    // Twice: the first verifies, the second is answered from the token cache.
    for _ in 0..2 {
        let reply = call_echo(&server.url, &token, "x").await;
        assert_eq!(reply.status, 403, "{reply:?}");
        let challenge = reply.challenge().expect("challenge");
        assert_eq!(challenge.scheme, "Bearer");
        assert_eq!(challenge.get("error"), Some("insufficient_scope"));
        assert_eq!(challenge.get("scope"), Some(SCOPE));
        assert_eq!(challenge.get("resource_metadata"), Some(server.metadata_url()));
        assert_token_not_echoed(&reply, &token);
    }
    let token = token_for(&issuer, &server).without_claim("scope").sign();
    let reply = call_echo(&server.url, &token, "x").await;
    assert_eq!(reply.status, 403, "{reply:?}");
    assert_token_not_echoed(&reply, &token);
}

#[tokio::test]
async fn missing_token_gets_a_challenge_without_error_code() {
    let (_issuer, server) = setup().await;
    let response = mcp_post(&client(), &server.url, &echo_call("x")).send().await.unwrap();
    let reply = Reply::read(response).await;
    assert_eq!(reply.status, 401, "{reply:?}");
    let challenge = reply.challenge().expect("challenge");
    assert_eq!(challenge.scheme, "Bearer");
    assert_eq!(challenge.get("resource_metadata"), Some(server.metadata_url()));
    assert_eq!(challenge.get("scope"), Some(SCOPE));
    assert_eq!(challenge.get("error"), None, "{challenge:?}");

    // Another scheme is no bearer credentials either.
    let response = mcp_post(&client(), &server.url, &echo_call("x"))
        .header("authorization", "Basic YWxpY2U6c2VjcmV0")
        .send()
        .await
        .unwrap();
    let reply = Reply::read(response).await;
    assert_eq!(reply.status, 401, "{reply:?}");
    assert_eq!(reply.challenge().unwrap().get("error"), None);
    assert_token_not_echoed(&reply, "YWxpY2U6c2VjcmV0");
}

// ---------------------------------------------------------------------------
// Header attacks.

#[tokio::test]
async fn alg_none_and_its_case_variants_are_rejected() {
    let (issuer, server) = setup().await;
    let claims = good_claims(&issuer, &server);
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = json!({"alg": alg, "typ": "at+jwt", "kid": issuer.kid(KeyAlg::Rs256)});
        // As written by an attacker: empty signature.
        let token = unsigned_token(&header, &claims);
        let reply = call_echo(&server.url, &token, "x").await;
        assert_invalid_token(&reply, &server, &token, "malformed token");
        // With a (real) signature, so only the alg check can refuse it.
        let token = issuer.sign_raw(&header, &claims, KeyAlg::Rs256);
        let reply = call_echo(&server.url, &token, "x").await;
        assert_invalid_token(&reply, &server, &token, "token algorithm not allowed");
    }
    let token = issuer.sign_raw(&json!({"typ": "at+jwt"}), &claims, KeyAlg::Rs256);
    let reply = call_echo(&server.url, &token, "x").await;
    assert_invalid_token(&reply, &server, &token, "token algorithm not allowed");
}

#[tokio::test]
async fn hs256_signed_with_the_rsa_public_key_is_rejected() {
    let (issuer, server) = setup().await;
    let claims = good_claims(&issuer, &server);
    let pem = issuer.rsa_public_key_pem();
    let der = issuer.rsa_public_key_der();
    for secret in [pem.as_bytes(), pem.trim_end().as_bytes(), der.as_slice()] {
        for header in [
            json!({"alg": "HS256", "typ": "at+jwt", "kid": issuer.kid(KeyAlg::Rs256)}),
            json!({"alg": "HS256", "typ": "at+jwt"}),
        ] {
            let token = shared_secret_token(secret, &header, &claims);
            let reply = call_echo(&server.url, &token, "x").await;
            assert_invalid_token(&reply, &server, &token, "token algorithm not allowed");
        }
    }
}

#[tokio::test]
async fn attacker_key_reusing_a_real_kid_is_rejected() {
    let (issuer, server) = setup().await;
    for alg in [KeyAlg::Rs256, KeyAlg::Ps256, KeyAlg::Es256, KeyAlg::EdDsa] {
        let attacker = TestKey::generate(alg);
        let token = token_for(&issuer, &server).algorithm(alg).signed_with(&attacker).sign();
        let header: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.split('.').next().unwrap()).unwrap()).unwrap();
        assert_eq!(header["kid"], issuer.kid(alg), "the forged token names the real kid");
        let reply = call_echo(&server.url, &token, "x").await;
        assert_invalid_token(&reply, &server, &token, "invalid signature");
    }
}

#[tokio::test]
async fn key_of_another_type_under_a_real_kid_is_rejected() {
    let (issuer, server) = setup().await;
    // ES256 claimed, but the kid names the RSA key: the key type must fit.
    let token = token_for(&issuer, &server)
        .algorithm(KeyAlg::Es256)
        .header("kid", json!(issuer.kid(KeyAlg::Rs256)))
        .sign();
    let reply = call_echo(&server.url, &token, "x").await;
    assert_invalid_token(&reply, &server, &token, "unknown signing key");
    // PS256 under the kid published with "alg": "RS256": the key's own alg binds.
    let token = token_for(&issuer, &server)
        .algorithm(KeyAlg::Ps256)
        .header("kid", json!(issuer.kid(KeyAlg::Rs256)))
        .sign();
    let reply = call_echo(&server.url, &token, "x").await;
    assert_invalid_token(&reply, &server, &token, "unknown signing key");
}

/// An attacker's server publishing the attacker's key at every path a
/// token header could point to.
async fn attacker_server(attacker: &TestKey) -> StubServer {
    let jwks = json!({"keys": [attacker.public_jwk()]});
    StubServer::start(move |_| vec![("/jwks.json".to_owned(), jwks.clone()), ("/cert.pem".to_owned(), jwks)]).await
}

/// A header pointing at the attacker is never followed: the attacker's token
/// is refused, the real key's token is accepted, and the attacker's server
/// never sees a request.
async fn assert_key_header_ignored(name: &str, value: impl Fn(&StubServer, &TestKey) -> Value) {
    let (issuer, server) = setup().await;
    let attacker = TestKey::generate(KeyAlg::Rs256);
    let evil = attacker_server(&attacker).await;

    for kid in [attacker.kid(), issuer.kid(KeyAlg::Rs256)] {
        let forged = unique(token_for(&issuer, &server))
            .signed_with(&attacker)
            .header("kid", json!(kid))
            .header(name, value(&evil, &attacker))
            .sign();
        let reply = call_echo(&server.url, &forged, "x").await;
        assert_eq!(reply.status, 401, "{name} with kid {kid}: {reply:?}");
        let challenge = reply.challenge().unwrap();
        assert_eq!(challenge.get("error"), Some("invalid_token"));
        assert_token_not_echoed(&reply, &forged);
    }

    let genuine = token_for(&issuer, &server).header(name, value(&evil, &attacker)).sign();
    assert_echoed(&call_echo(&server.url, &genuine, "real key").await, "real key");

    assert_eq!(evil.hits(), 0, "the {name} URL was fetched");
    assert_eq!(issuer.other_requests(), 0);
}

#[tokio::test]
async fn jku_header_is_never_fetched() {
    assert_key_header_ignored("jku", |evil, _| json!(evil.url("/jwks.json"))).await;
}

#[tokio::test]
async fn x5u_header_is_never_fetched() {
    assert_key_header_ignored("x5u", |evil, _| json!(evil.url("/cert.pem"))).await;
}

#[tokio::test]
async fn embedded_jwk_header_is_never_trusted() {
    assert_key_header_ignored("jwk", |_, attacker| attacker.public_jwk()).await;
}

#[tokio::test]
async fn crit_header_is_rejected() {
    let (issuer, server) = setup().await;
    for crit in [json!(["exp"]), json!(["b64"]), json!([]), json!("x")] {
        let token = token_for(&issuer, &server).header("crit", crit).sign();
        let reply = call_echo(&server.url, &token, "x").await;
        assert_invalid_token(&reply, &server, &token, "unsupported critical header");
    }
    let token = token_for(&issuer, &server).header("b64", json!(false)).sign();
    let reply = call_echo(&server.url, &token, "x").await;
    assert_invalid_token(&reply, &server, &token, "unsupported critical header");
}

#[tokio::test]
async fn strict_mode_requires_the_access_token_type() {
    let issuer = TestIssuer::start().await.unwrap();
    let server = start_guarded_with(
        Issuer::with_jwks_uri(issuer.issuer(), issuer.jwks_uri()),
        Mode::Stateless,
        |b| b.token_rules(rmcp_guard::oauth::TokenRules::default().require_access_token_type()),
    )
    .await;
    for typ in [Some("JWT"), Some("jwt"), None, Some("logout+jwt"), Some("id_token")] {
        let mut builder = token_for(&issuer, &server);
        builder = match typ {
            Some(t) => builder.header("typ", json!(t)),
            None => builder.without_header("typ"),
        };
        let token = builder.sign();
        let reply = call_echo(&server.url, &token, "x").await;
        assert_invalid_token(&reply, &server, &token, "not an access token");
    }
    for typ in ["at+jwt", "application/at+jwt", "AT+JWT"] {
        let token = token_for(&issuer, &server).header("typ", json!(typ)).sign();
        assert_echoed(&call_echo(&server.url, &token, typ).await, typ);
    }
}

#[tokio::test]
async fn lenient_mode_accepts_jwt_but_not_other_token_types() {
    let (issuer, server) = setup().await;
    let token = token_for(&issuer, &server).header("typ", json!("JWT")).sign();
    assert_echoed(&call_echo(&server.url, &token, "jwt").await, "jwt");
    let token = token_for(&issuer, &server).without_header("typ").sign();
    assert_echoed(&call_echo(&server.url, &token, "none").await, "none");
    let token = token_for(&issuer, &server).header("typ", json!("logout+jwt")).sign();
    let reply = call_echo(&server.url, &token, "x").await;
    assert_invalid_token(&reply, &server, &token, "not an access token");
}

// ---------------------------------------------------------------------------
// Damaged and malformed tokens.

#[tokio::test]
async fn tampered_payload_is_rejected() {
    let (issuer, server) = setup().await;
    let token = token_for(&issuer, &server).scope("mcp:read").sign();
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
    claims["scope"] = json!(SCOPE);
    claims["sub"] = json!("admin");
    parts[1] = b64(&claims);
    let tampered = parts.join(".");
    let reply = call_echo(&server.url, &tampered, "x").await;
    assert_invalid_token(&reply, &server, &tampered, "invalid signature");
}

#[tokio::test]
async fn truncated_and_empty_signatures_are_rejected() {
    let (issuer, server) = setup().await;
    for alg in [KeyAlg::Rs256, KeyAlg::Es256, KeyAlg::EdDsa] {
        let token = token_for(&issuer, &server).algorithm(alg).sign();
        let (signed, signature) = token.rsplit_once('.').unwrap();

        let truncated = format!("{signed}.{}", &signature[..signature.len() / 2]);
        let reply = call_echo(&server.url, &truncated, "x").await;
        assert_invalid_token(&reply, &server, &truncated, "invalid signature");

        let one_short = format!("{signed}.{}", &signature[..signature.len() - 1]);
        let reply = call_echo(&server.url, &one_short, "x").await;
        assert_eq!(reply.status, 401, "{reply:?}");
        assert_eq!(reply.challenge().unwrap().get("error"), Some("invalid_token"));
        assert_token_not_echoed(&reply, &one_short);

        let empty = format!("{signed}.");
        let reply = call_echo(&server.url, &empty, "x").await;
        assert_invalid_token(&reply, &server, &empty, "malformed token");
    }
}

#[tokio::test]
async fn wrong_number_of_segments_is_rejected() {
    let (issuer, server) = setup().await;
    let token = token_for(&issuer, &server).sign();
    let (signed, _) = token.rsplit_once('.').unwrap();

    let two = signed.to_owned();
    let reply = call_echo(&server.url, &two, "x").await;
    assert_invalid_token(&reply, &server, &two, "malformed token");

    let four = format!("{token}.AAAA");
    let reply = call_echo(&server.url, &four, "x").await;
    assert_invalid_token(&reply, &server, &four, "malformed token");

    // Five segments is the shape of a JWE.
    let five = format!("{token}.AAAA.BBBB");
    let reply = call_echo(&server.url, &five, "x").await;
    assert_invalid_token(&reply, &server, &five, "encrypted tokens are not accepted");
}

#[tokio::test]
async fn garbage_tokens_are_rejected() {
    let (issuer, server) = setup().await;
    let claims = b64(&good_claims(&issuer, &server));
    let header = b64(&json!({"alg": "RS256", "kid": issuer.kid(KeyAlg::Rs256)}));
    let garbage = [
        "garbage".to_owned(),
        "a.b.c".to_owned(),
        "...".to_owned(),
        "!!!.@@@.###".to_owned(),
        format!("{header}.{claims}.!!!notbase64"),
        format!("{}.{claims}.AAAA", URL_SAFE_NO_PAD.encode("not json")),
        format!("{header}.{}.AAAA", URL_SAFE_NO_PAD.encode("[1,2,3]")),
        format!("{}.{claims}.AAAA", b64(&json!(["alg", "RS256"]))),
        format!("{header}={claims}.AAAA"),
    ];
    for token in &garbage {
        let reply = call_echo(&server.url, token, "x").await;
        assert_eq!(reply.status, 401, "{token}: {reply:?}");
        assert_eq!(
            reply.challenge().unwrap().get("error"),
            Some("invalid_token"),
            "{token}"
        );
        assert_token_not_echoed(&reply, token);
    }
}

#[tokio::test]
async fn authorization_header_oddities_are_refused() {
    let (issuer, server) = setup().await;
    let token = token_for(&issuer, &server).sign();
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (b"Bearer".to_vec(), 400),
        (b"Bearer ".to_vec(), 400),
        (format!("Bearer {token} extra").into_bytes(), 401),
        ([format!("Bearer {token}").as_bytes(), &[0xff]].concat(), 400),
        (format!("Token {token}").into_bytes(), 401),
    ];
    for (value, status) in cases {
        let response = mcp_post(&client(), &server.url, &echo_call("x"))
            .header(
                "authorization",
                reqwest::header::HeaderValue::from_bytes(&value).unwrap(),
            )
            .send()
            .await
            .unwrap();
        let reply = Reply::read(response).await;
        assert_eq!(reply.status, status, "{:?}: {reply:?}", String::from_utf8_lossy(&value));
        assert!(reply.challenge().is_some());
        assert_token_not_echoed(&reply, &token);
    }
}

#[tokio::test]
async fn token_of_64_kib_gets_a_4xx_never_a_5xx() {
    let (issuer, server) = setup().await;
    let padded = token_for(&issuer, &server)
        .claim("pad", json!("x".repeat(64 * 1024)))
        .sign();
    let filler = format!("{}.{}.{}", "a".repeat(1024), "b".repeat(63 * 1024), "c".repeat(1024));
    for token in [padded, filler] {
        assert!(token.len() >= 64 * 1024);
        let reply = call_echo(&server.url, &token, "x").await;
        assert!((400..500).contains(&reply.status), "{}", reply.status);
        assert_invalid_token(&reply, &server, &token, "token too large");
    }
}

#[tokio::test]
async fn token_in_the_query_string_is_an_invalid_request() {
    let (issuer, server) = setup().await;
    let token = token_for(&issuer, &server).sign();

    let url = format!("{}?access_token={token}", server.url);
    let response = mcp_post(&client(), &url, &echo_call("x")).send().await.unwrap();
    let reply = Reply::read(response).await;
    assert_invalid_request(&reply, &server, &token);

    // Even alongside a valid Authorization header.
    let url = format!("{}?x=1&access_token={token}", server.url);
    let response = mcp_post(&client(), &url, &echo_call("x"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let reply = Reply::read(response).await;
    assert_invalid_request(&reply, &server, &token);
}

#[tokio::test]
async fn token_in_a_form_body_is_not_read() {
    let (issuer, server) = setup().await;
    let token = token_for(&issuer, &server).sign();
    let response = client()
        .post(&server.url)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("accept", "application/json, text/event-stream")
        .body(format!("access_token={token}"))
        .send()
        .await
        .unwrap();
    let reply = Reply::read(response).await;
    assert_eq!(reply.status, 401, "{reply:?}");
    assert_eq!(reply.challenge().unwrap().get("error"), None);
    assert_token_not_echoed(&reply, &token);
}

#[tokio::test]
async fn two_authorization_headers_are_an_invalid_request() {
    let (issuer, server) = setup().await;
    let token = token_for(&issuer, &server).sign();
    let mut headers = reqwest::header::HeaderMap::new();
    let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).unwrap();
    headers.append("authorization", value.clone());
    headers.append("authorization", value);
    let response = mcp_post(&client(), &server.url, &echo_call("x"))
        .headers(headers)
        .send()
        .await
        .unwrap();
    let reply = Reply::read(response).await;
    assert_invalid_request(&reply, &server, &token);
}

// ---------------------------------------------------------------------------
// Metadata.

#[tokio::test]
async fn protected_resource_metadata_is_served_at_both_paths() {
    let (issuer, server) = setup().await;
    let suffixed = format!("{}/.well-known/oauth-protected-resource/mcp", server.base);
    assert_eq!(
        server.metadata_url(),
        suffixed,
        "the challenge points at the suffixed form"
    );
    for url in [
        format!("{}/.well-known/oauth-protected-resource", server.base),
        suffixed,
    ] {
        let response = client().get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200, "{url}");
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json")
        );
        let doc: Value = response.json().await.unwrap();
        assert_eq!(doc["resource"], server.url, "{doc}");
        assert_eq!(doc["authorization_servers"], json!([issuer.issuer()]), "{doc}");
        assert_eq!(doc["scopes_supported"], json!([SCOPE]), "{doc}");
        assert_eq!(doc["bearer_methods_supported"], json!(["header"]), "{doc}");
    }
}

// ---------------------------------------------------------------------------
// Audit events.

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn audit_events_name_the_reason_and_never_the_token() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("rmcp_guard=trace")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // With a single registered `Dispatch`, tracing-core caches the interest of
    // a callsite first hit on another test thread (no subscriber there) as
    // "never" (tokio-rs/tracing#3611). A second live `Dispatch` makes it take
    // the general path, which asks every registered dispatcher.
    let _second_dispatch = tracing::Dispatch::new(tracing_subscriber::registry());
    // Thread-local: a current-thread test runtime polls the server on this thread.
    let _guard = tracing::subscriber::set_default(subscriber);

    let (issuer, server) = setup().await;
    let valid = token_for(&issuer, &server)
        .subject("auditee")
        .client_id("audit-client")
        .sign();
    let expired = token_for(&issuer, &server).expired().sign();
    let forged = token_for(&issuer, &server)
        .signed_with(&TestKey::generate(KeyAlg::Rs256))
        .sign();
    let narrow = token_for(&issuer, &server).scope("mcp:read").sign();
    let tokens = [&valid, &expired, &forged, &narrow];

    assert_eq!(call_echo(&server.url, &valid, "a").await.status, 200);
    assert_eq!(call_echo(&server.url, &valid, "b").await.status, 200);
    assert_eq!(call_echo(&server.url, &expired, "c").await.status, 401);
    assert_eq!(call_echo(&server.url, &forged, "d").await.status, 401);
    assert_eq!(call_echo(&server.url, &narrow, "e").await.status, 403);
    let response = mcp_post(&client(), &server.url, &echo_call("f")).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let url = format!("{}?access_token={valid}", server.url);
    let response = mcp_post(&client(), &url, &echo_call("g")).send().await.unwrap();
    assert_eq!(response.status(), 400);

    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let audit: Vec<&str> = log.lines().filter(|l| l.contains("rmcp_guard::audit")).collect();
    assert_eq!(audit.len(), 7, "one audit event per request:\n{log}");
    for reason in [
        "valid_token",
        "expired",
        "bad_signature",
        "insufficient_scope",
        "missing_token",
        "invalid_request",
    ] {
        assert!(
            audit.iter().any(|l| l.contains(&format!("reason=\"{reason}\""))),
            "no audit event with reason {reason}:\n{log}"
        );
    }
    assert!(log.contains("auditee"), "the subject is audited:\n{log}");
    assert!(log.contains("audit-client"), "the client id is audited:\n{log}");
    for token in tokens {
        for segment in std::iter::once(token.as_str()).chain(token.split('.')) {
            assert!(!log.contains(segment), "the log contains a token (segment):\n{log}");
        }
    }
}

// ---------------------------------------------------------------------------
// The whole endpoint is guarded.

#[tokio::test]
async fn every_method_on_the_endpoint_needs_a_token() {
    let (issuer, server) = setup().await;
    let token = token_for(&issuer, &server).expired().sign();
    for method in [
        reqwest::Method::GET,
        reqwest::Method::DELETE,
        reqwest::Method::PUT,
        reqwest::Method::PATCH,
    ] {
        let response = client()
            .request(method.clone(), &server.url)
            .header("accept", "application/json, text/event-stream")
            .send()
            .await
            .unwrap();
        let reply = Reply::read(response).await;
        assert_eq!(reply.status, 401, "{method}: {reply:?}");
        assert_eq!(reply.challenge().unwrap().get("error"), None, "{method}");

        let response = client()
            .request(method.clone(), &server.url)
            .bearer_auth(&token)
            .header("accept", "application/json, text/event-stream")
            .send()
            .await
            .unwrap();
        assert_invalid_token(&Reply::read(response).await, &server, &token, "token expired");
    }
}

#[tokio::test]
async fn paths_near_the_endpoint_do_not_bypass_the_guard() {
    let (_issuer, server) = setup().await;
    for path in ["/mcp/", "/mcp/x", "//mcp", "/%6dcp", "/MCP", "/mcp;x", "/./mcp/."] {
        let url = format!("{}{path}", server.base);
        let response = mcp_post(&client(), &url, &echo_call("x")).send().await.unwrap();
        let reply = Reply::read(response).await;
        assert!(
            reply.status == 401 || reply.status == 404,
            "{path} answered {} without a token: {reply:?}",
            reply.status
        );
        assert!(!reply.body.contains("\"result\""), "{path} reached the tool: {reply:?}");
    }
}

#[tokio::test]
async fn session_of_another_caller_is_not_found() {
    let issuer = TestIssuer::start().await.unwrap();
    let server = start_guarded_with(
        Issuer::with_jwks_uri(issuer.issuer(), issuer.jwks_uri()),
        Mode::Sessions,
        |b| b,
    )
    .await;
    let alice = token_for(&issuer, &server).subject("alice").sign();
    let mallory = token_for(&issuer, &server).subject("mallory").sign();
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    let response = mcp_post(&client(), &server.url, &initialize)
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let session = response.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    drop(response);

    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let send = |token: &str, body: &Value| {
        mcp_post(&client(), &server.url, body)
            .bearer_auth(token)
            .header("mcp-session-id", &session)
            .header("mcp-protocol-version", "2025-06-18")
            .send()
    };
    let reply = Reply::read(send(&mallory, &initialized).await.unwrap()).await;
    assert_eq!(reply.status, 404, "another caller's session: {reply:?}");
    assert_token_not_echoed(&reply, &mallory);
    let reply = Reply::read(send(&alice, &initialized).await.unwrap()).await;
    assert_eq!(reply.status, 202, "the owner's session: {reply:?}");
    let reply = Reply::read(send(&mallory, &echo_call("x")).await.unwrap()).await;
    assert_eq!(reply.status, 404, "{reply:?}");

    let delete = |token: &str| {
        client()
            .delete(&server.url)
            .bearer_auth(token)
            .header("mcp-session-id", &session)
            .header("mcp-protocol-version", "2025-06-18")
            .send()
    };
    assert_eq!(delete(&mallory).await.unwrap().status(), 404);
    assert!(delete(&alice).await.unwrap().status().is_success());
}

#[tokio::test]
async fn token_without_a_subject_is_rejected() {
    let (issuer, server) = setup().await;
    for token in [
        token_for(&issuer, &server).without_claim("sub").sign(),
        token_for(&issuer, &server).subject("").sign(),
        token_for(&issuer, &server).claim("sub", json!(42)).sign(),
    ] {
        let reply = call_echo(&server.url, &token, "x").await;
        assert_invalid_token(&reply, &server, &token, "invalid token claims");
    }
}

/// Issue 10, finding 6: 10 000 tokens of 7.7 KB with ~500 claims grew the
/// verified-token cache to ~800 MB. The cache is bounded in bytes: fat
/// tokens are all accepted, and what stays cached never exceeds the bound.
#[tokio::test]
async fn fat_tokens_cannot_grow_the_token_cache_past_its_byte_bound() {
    use rmcp_guard::oauth::TokenCacheConfig;
    let issuer = TestIssuer::start().await.expect("test issuer");
    let max_bytes = 512 * 1024;
    let server = start_guarded_with(
        Issuer::with_jwks_uri(issuer.issuer(), issuer.jwks_uri()),
        Mode::Stateless,
        // Under 1024 entries the cache is one shard, so the whole bound is
        // one budget (sharded, each shard gets its 1/16th).
        |b| b.token_cache(TokenCacheConfig::default().capacity(500).max_bytes(max_bytes)),
    )
    .await;
    let sent = 32;
    for i in 0..sent {
        let mut token = token_for(&issuer, &server).subject(format!("user-{i}"));
        for c in 0..500 {
            token = token.claim(format!("c{c:03}"), json!("v"));
        }
        let text = format!("fat {i}");
        assert_echoed(&call_echo(&server.url, &token.sign(), &text).await, &text);
    }
    let usage = server.rs.token_cache_usage();
    assert!(usage.bytes <= max_bytes, "{usage:?} over {max_bytes}");
    assert!(usage.entries > 0 && usage.entries < sent, "{usage:?}");
}
