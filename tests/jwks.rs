//! The issuer key cache, seen from outside: how many times the guarded server
//! fetches the issuer's metadata and JWKS, and what it answers when they
//! change or go away.
//!
//! The [`TestIssuer`] counts its requests; the assertions are on those counts
//! and on HTTP statuses, never on elapsed time. Loops that wait for a
//! background refresh are bounded.

mod common;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::*;
use rmcp_guard::oauth::{Issuer, KeyRefresh};
use rmcp_guard_testkit::{KeyAlg, TestIssuer, TestKey, shared_secret_token};
use serde_json::json;
use tokio::task::JoinSet;

fn jwks_issuer(issuer: &TestIssuer) -> Issuer {
    Issuer::with_jwks_uri(issuer.issuer(), issuer.jwks_uri())
}

/// A token signed by a key nobody publishes, under a `kid` nobody publishes.
fn forged_kid_token(issuer: &TestIssuer, server: &GuardedServer, attacker: &TestKey, i: usize) -> String {
    token_for(issuer, server)
        .signed_with(attacker)
        .header("kid", json!(format!("forged-{i}")))
        .sign()
}

/// Send fresh tokens (so the verified-token cache never answers) until
/// `done()` or `tries` run out, pausing `pause` between tries; every answer
/// must be 200. Returns whether `done()` became true.
async fn poll_until(
    issuer: &TestIssuer,
    server: &GuardedServer,
    tries: usize,
    pause: Duration,
    done: impl Fn() -> bool,
) -> bool {
    for _ in 0..tries {
        if done() {
            return true;
        }
        tokio::time::sleep(pause).await;
        let token = unique(token_for(issuer, server)).sign();
        assert_echoed(&call_echo(&server.url, &token, "poll").await, "poll");
    }
    done()
}

// ---------------------------------------------------------------------------
// Unknown kid and single flight.

#[tokio::test]
async fn unknown_kid_refetch_is_rate_limited() {
    let issuer = TestIssuer::start().await.unwrap();
    let server = start_guarded(&issuer).await;
    let valid = token_for(&issuer, &server).sign();
    assert_echoed(&call_echo(&server.url, &valid, "warm").await, "warm");
    assert_eq!(issuer.jwks_fetches(), 1);

    let attacker = TestKey::generate(KeyAlg::Rs256);
    for i in 0..50 {
        let token = forged_kid_token(&issuer, &server, &attacker, i);
        let reply = call_echo(&server.url, &token, "x").await;
        assert_invalid_token(&reply, &server, &token, "unknown signing key");
    }
    let fetches = issuer.jwks_fetches();
    assert!(fetches <= 2, "50 forged kids caused {fetches} JWKS fetches");

    // The real keys still work, without another fetch.
    let token = unique(token_for(&issuer, &server)).sign();
    assert_echoed(&call_echo(&server.url, &token, "still").await, "still");
    assert_eq!(issuer.jwks_fetches(), fetches);
}

#[tokio::test]
async fn concurrent_unknown_kid_flood_on_a_cold_cache_is_bounded() {
    let issuer = TestIssuer::start().await.unwrap();
    let server = start_guarded(&issuer).await;
    // Hold every fetch a little, so the flood arrives while one is in flight.
    issuer.set_delay(Duration::from_millis(200));
    let attacker = TestKey::generate(KeyAlg::Es256);
    let mut flood = JoinSet::new();
    for i in 0..50 {
        let token = forged_kid_token(&issuer, &server, &attacker, i);
        let url = server.url.clone();
        flood.spawn(async move {
            let reply = call_echo(&url, &token, "x").await;
            (reply, token)
        });
    }
    while let Some(joined) = flood.join_next().await {
        let (reply, token) = joined.unwrap();
        assert_invalid_token(&reply, &server, &token, "unknown signing key");
    }
    let fetches = issuer.jwks_fetches();
    assert!(fetches <= 2, "50 concurrent forged kids caused {fetches} JWKS fetches");
}

#[tokio::test]
async fn concurrent_first_requests_share_one_fetch() {
    let issuer = TestIssuer::start().await.unwrap();
    let server = start_guarded(&issuer).await;
    issuer.set_delay(Duration::from_millis(300));
    let mut requests = JoinSet::new();
    for i in 0..20 {
        let token = unique(token_for(&issuer, &server)).sign();
        let url = server.url.clone();
        requests.spawn(async move { call_echo(&url, &token, &format!("r{i}")).await });
    }
    while let Some(reply) = requests.join_next().await {
        assert_eq!(reply.unwrap().status, 200);
    }
    assert_eq!(
        issuer.jwks_fetches(),
        1,
        "single flight: one fetch for 20 first requests"
    );
}

// ---------------------------------------------------------------------------
// Rotation.

#[tokio::test]
async fn rotated_key_is_accepted_after_exactly_one_refetch() {
    let issuer = TestIssuer::start().await.unwrap();
    let server = start_guarded(&issuer).await;
    let before = token_for(&issuer, &server).sign();
    assert_echoed(&call_echo(&server.url, &before, "before").await, "before");
    assert_eq!(issuer.jwks_fetches(), 1);
    // Minted with the old key, first presented after the rotation.
    let old_key_token = unique(token_for(&issuer, &server)).sign();

    let new_kid = issuer.rotate(KeyAlg::Rs256, false);
    let rotated = token_for(&issuer, &server).sign();
    assert!(rotated.split('.').next().is_some_and(|h| {
        let header = URL_SAFE_NO_PAD.decode(h).unwrap();
        String::from_utf8(header).unwrap().contains(&new_kid)
    }));
    assert_echoed(&call_echo(&server.url, &rotated, "after").await, "after");
    assert_eq!(issuer.jwks_fetches(), 2, "exactly one refetch for the new kid");

    for alg in [KeyAlg::Rs256, KeyAlg::Ps256, KeyAlg::Es256, KeyAlg::EdDsa] {
        let token = unique(token_for(&issuer, &server)).algorithm(alg).sign();
        assert_echoed(&call_echo(&server.url, &token, alg.name()).await, alg.name());
    }
    assert_eq!(issuer.jwks_fetches(), 2, "the new key set serves every algorithm");

    // The old key is no longer published: its tokens are refused, and asking
    // again for its kid costs the issuer nothing (cooldown).
    let reply = call_echo(&server.url, &old_key_token, "x").await;
    assert_invalid_token(&reply, &server, &old_key_token, "unknown signing key");
    assert_eq!(issuer.jwks_fetches(), 2);
}

#[tokio::test]
async fn retired_key_still_published_keeps_working_after_rotation() {
    let issuer = TestIssuer::start().await.unwrap();
    let server = start_guarded(&issuer).await;
    let warm = token_for(&issuer, &server).algorithm(KeyAlg::Es256).sign();
    assert_echoed(&call_echo(&server.url, &warm, "warm").await, "warm");
    let old_key_token = unique(token_for(&issuer, &server)).algorithm(KeyAlg::Es256).sign();

    issuer.rotate(KeyAlg::Es256, true);
    let rotated = token_for(&issuer, &server).algorithm(KeyAlg::Es256).sign();
    assert_echoed(&call_echo(&server.url, &rotated, "new").await, "new");
    assert_echoed(&call_echo(&server.url, &old_key_token, "old").await, "old");
    assert_eq!(issuer.jwks_fetches(), 2);
}

// ---------------------------------------------------------------------------
// Outages.

#[tokio::test]
async fn jwks_down_at_start_answers_503_never_200() {
    let issuer = TestIssuer::start().await.unwrap();
    issuer.set_available(false);
    let server = start_guarded_with(jwks_issuer(&issuer), Mode::Stateless, |b| {
        b.key_refresh(KeyRefresh::default().retry_after_failure(Duration::from_millis(50)))
    })
    .await;
    assert!(server.rs.warm_up().await.is_err(), "warm_up reports the outage");

    for _ in 0..5 {
        let token = unique(token_for(&issuer, &server)).sign();
        let reply = call_echo(&server.url, &token, "x").await;
        assert_unavailable(&reply, &token);
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    assert!(issuer.jwks_fetches() >= 1);

    // Back up: an attempt after the back-off succeeds. Six failed fetches
    // have opened the JWKS circuit breaker (10 s), so a client that waits as
    // the 503s say (`Retry-After`) gets through once it closes; the wait is
    // bounded (30 s, 60 attempts).
    issuer.set_available(true);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut accepted = false;
    for _ in 0..60 {
        let token = unique(token_for(&issuer, &server)).sign();
        let reply = call_echo(&server.url, &token, "x").await;
        match reply.status {
            200 => {
                accepted = true;
                break;
            }
            503 => assert_unavailable(&reply, &token),
            other => panic!("unexpected status {other}: {reply:?}"),
        }
        let retry_after = reply.headers["retry-after"].to_str().unwrap().parse::<u64>().unwrap();
        let wait = Duration::from_secs(retry_after).clamp(Duration::from_millis(50), Duration::from_secs(5));
        if tokio::time::Instant::now() + wait > deadline {
            break;
        }
        tokio::time::sleep(wait).await;
    }
    assert!(accepted, "accepted once the issuer is back");
}

#[tokio::test]
async fn jwks_down_mid_run_keeps_serving_cached_keys() {
    let issuer = TestIssuer::start().await.unwrap();
    let server = start_guarded_with(jwks_issuer(&issuer), Mode::Stateless, |b| {
        b.key_refresh(
            KeyRefresh::default()
                .unknown_kid_cooldown(Duration::from_millis(100))
                .retry_after_failure(Duration::from_millis(100)),
        )
    })
    .await;
    server.rs.warm_up().await.expect("keys load");
    assert_eq!(issuer.jwks_fetches(), 1);

    issuer.set_available(false);
    // Known kids: new tokens (not in the token cache) verify with cached keys.
    for alg in [KeyAlg::Rs256, KeyAlg::Ps256, KeyAlg::Es256, KeyAlg::EdDsa] {
        let token = unique(token_for(&issuer, &server)).algorithm(alg).sign();
        assert_echoed(&call_echo(&server.url, &token, alg.name()).await, alg.name());
    }
    assert_eq!(issuer.jwks_fetches(), 1, "known kids need no fetch");

    // A new kid cannot be checked while the issuer is down: 503, never 200.
    issuer.rotate(KeyAlg::EdDsa, true);
    let new_kid_token = token_for(&issuer, &server).algorithm(KeyAlg::EdDsa).sign();
    let reply = call_echo(&server.url, &new_kid_token, "x").await;
    assert_unavailable(&reply, &new_kid_token);
    for _ in 0..3 {
        let token = unique(token_for(&issuer, &server)).algorithm(KeyAlg::EdDsa).sign();
        let reply = call_echo(&server.url, &token, "x").await;
        assert_unavailable(&reply, &token);
    }
    // The cached keys still serve the kids they know.
    let token = unique(token_for(&issuer, &server)).sign();
    assert_echoed(&call_echo(&server.url, &token, "cached").await, "cached");

    // Back up: the new kid is accepted once the cooldown allows a refetch.
    issuer.set_available(true);
    let mut accepted = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let token = unique(token_for(&issuer, &server)).algorithm(KeyAlg::EdDsa).sign();
        if call_echo(&server.url, &token, "x").await.status == 200 {
            accepted = true;
            break;
        }
    }
    assert!(accepted, "the new kid is accepted once the issuer is back");
}

/// While the issuer is down, a kid the cache does not know may be a key the
/// issuer rotated in: it cannot be told from a forged one, so the answer is
/// 503 (try again), not 401 (throw the token away) - also for the requests
/// that arrive during the unknown-kid cooldown after the failed refetch.
#[tokio::test]
async fn unknown_kid_during_an_outage_is_unavailable_not_invalid() {
    let issuer = TestIssuer::start().await.unwrap();
    let server = start_guarded(&issuer).await;
    server.rs.warm_up().await.expect("keys load");
    issuer.set_available(false);
    issuer.rotate(KeyAlg::Es256, true);
    for _ in 0..3 {
        let token = unique(token_for(&issuer, &server)).algorithm(KeyAlg::Es256).sign();
        let reply = call_echo(&server.url, &token, "x").await;
        assert_unavailable(&reply, &token);
    }
    assert_eq!(
        issuer.jwks_fetches(),
        2,
        "one refetch attempt for the new kid, then the cooldown"
    );
}

// ---------------------------------------------------------------------------
// Scheduled refresh and Cache-Control.

#[tokio::test]
async fn zero_max_age_is_raised_to_the_minimum_bound() {
    let issuer = TestIssuer::start().await.unwrap();
    issuer.set_cache_control(Some("no-store, max-age=0"));
    let server = start_guarded_with(jwks_issuer(&issuer), Mode::Stateless, |b| {
        b.key_refresh(KeyRefresh::default().bounds(Duration::from_secs(60), Duration::from_secs(3600)))
    })
    .await;
    for i in 0..10 {
        let token = unique(token_for(&issuer, &server)).sign();
        let text = format!("n{i}");
        assert_echoed(&call_echo(&server.url, &token, &text).await, &text);
    }
    assert_eq!(issuer.jwks_fetches(), 1, "max-age=0 must not mean a fetch per request");
}

#[tokio::test]
async fn max_age_schedules_a_background_refresh() {
    let issuer = TestIssuer::start().await.unwrap();
    issuer.set_cache_control(Some("public, max-age=1"));
    let server = start_guarded_with(jwks_issuer(&issuer), Mode::Stateless, |b| {
        b.key_refresh(
            KeyRefresh::default()
                .bounds(Duration::from_millis(100), Duration::from_secs(3600))
                .interval(Duration::from_secs(3600)),
        )
    })
    .await;
    let warm = token_for(&issuer, &server).sign();
    assert_echoed(&call_echo(&server.url, &warm, "warm").await, "warm");
    assert_eq!(issuer.jwks_fetches(), 1);
    let refreshed = poll_until(&issuer, &server, 60, Duration::from_millis(100), || {
        issuer.jwks_fetches() >= 2
    })
    .await;
    assert!(refreshed, "max-age=1 (within bounds) leads to a refresh");
}

#[tokio::test]
async fn long_max_age_is_capped_by_the_maximum_bound() {
    let issuer = TestIssuer::start().await.unwrap();
    issuer.set_cache_control(Some("max-age=31536000"));
    let server = start_guarded_with(jwks_issuer(&issuer), Mode::Stateless, |b| {
        b.key_refresh(KeyRefresh::default().bounds(Duration::from_millis(100), Duration::from_millis(300)))
    })
    .await;
    let warm = token_for(&issuer, &server).sign();
    assert_echoed(&call_echo(&server.url, &warm, "warm").await, "warm");
    assert_eq!(issuer.jwks_fetches(), 1);
    let refreshed = poll_until(&issuer, &server, 60, Duration::from_millis(100), || {
        issuer.jwks_fetches() >= 2
    })
    .await;
    assert!(refreshed, "a year of max-age is capped at the maximum bound");
}

#[tokio::test]
async fn failed_background_refresh_keeps_the_last_good_keys() {
    let issuer = TestIssuer::start().await.unwrap();
    issuer.set_cache_control(Some("max-age=0"));
    let server = start_guarded_with(jwks_issuer(&issuer), Mode::Stateless, |b| {
        b.key_refresh(
            KeyRefresh::default()
                .bounds(Duration::from_millis(50), Duration::from_secs(3600))
                .retry_after_failure(Duration::from_millis(50)),
        )
    })
    .await;
    server.rs.warm_up().await.unwrap();
    issuer.set_available(false);
    // Refreshes are due and fail; requests keep succeeding with the old keys.
    let failed = poll_until(&issuer, &server, 60, Duration::from_millis(60), || {
        issuer.jwks_fetches() >= 3
    })
    .await;
    assert!(failed, "refreshes were attempted");
    issuer.set_jwks_body(Some("{\"keys\": \"not a set\"}".to_owned()));
    issuer.set_available(true);
    let garbled = poll_until(&issuer, &server, 60, Duration::from_millis(60), || {
        issuer.jwks_fetches() >= 5
    })
    .await;
    assert!(garbled, "refreshes of a garbled set were attempted");
}

// ---------------------------------------------------------------------------
// What the key set may contain.

#[tokio::test]
async fn junk_keys_in_the_jwks_do_not_break_valid_keys() {
    let issuer = TestIssuer::start().await.unwrap();
    let rsa = issuer.jwks()["keys"][0].clone();
    let mut enc = rsa.clone();
    enc["kid"] = json!("enc-key");
    enc["use"] = json!("enc");
    enc["alg"] = json!("RSA-OAEP-256");
    let mut no_kid = rsa.clone();
    no_kid.as_object_mut().unwrap().remove("kid");
    issuer.publish_extra_jwk(enc);
    issuer.publish_extra_jwk(no_kid);
    issuer.publish_extra_jwk(json!({"kty": "foo", "kid": "weird", "x": "y"}));
    issuer.publish_extra_jwk(json!({"kty": "oct", "kid": "hmac", "k": URL_SAFE_NO_PAD.encode("secret")}));
    issuer.publish_extra_jwk(json!({"kty": "EC", "kid": "p521", "crv": "P-521", "x": "AA", "y": "AA"}));
    issuer.publish_extra_jwk(json!({"kty": "RSA", "kid": "broken", "n": "!!!", "e": "AQAB"}));
    issuer.publish_extra_jwk(json!({"kid": "no-kty"}));
    issuer.publish_extra_jwk(json!(42));
    let server = start_guarded(&issuer).await;

    for alg in [KeyAlg::Rs256, KeyAlg::Ps256, KeyAlg::Es256, KeyAlg::EdDsa] {
        let token = token_for(&issuer, &server).algorithm(alg).sign();
        assert_echoed(&call_echo(&server.url, &token, alg.name()).await, alg.name());
    }
    assert_eq!(issuer.jwks_fetches(), 1);

    // The published symmetric key is never used to verify anything.
    let claims = token_for(&issuer, &server).claims();
    let token = shared_secret_token(b"secret", &json!({"alg": "HS256", "kid": "hmac"}), &claims);
    let reply = call_echo(&server.url, &token, "x").await;
    assert_invalid_token(&reply, &server, &token, "token algorithm not allowed");
}

/// A big-endian modulus of exactly `bits` bits (top bit set, odd).
fn modulus(bits: usize) -> String {
    let mut n: Vec<u8> = (0..bits / 8)
        .map(|i| (i as u8).wrapping_mul(151).wrapping_add(7))
        .collect();
    n[0] |= 0x80;
    *n.last_mut().unwrap() |= 1;
    URL_SAFE_NO_PAD.encode(n)
}

/// aws-lc will not make an RSA key under 2048 bits, so no test can sign with
/// one. What can be shown over HTTP is that such a key is never loaded: a
/// token naming a 1024-bit key's kid gets "unknown signing key", while the
/// same token naming a 2048-bit key with the same shape gets as far as the
/// signature check ("invalid signature").
#[tokio::test]
async fn rsa_key_under_2048_bits_is_never_loaded() {
    let issuer = TestIssuer::start().await.unwrap();
    for (kid, bits) in [("weak-1024", 1024), ("weak-2040", 2040), ("control-2048", 2048)] {
        issuer.publish_extra_jwk(json!({
            "kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": modulus(bits), "e": "AQAB"
        }));
    }
    let server = start_guarded(&issuer).await;
    server.rs.warm_up().await.unwrap();

    for kid in ["weak-1024", "weak-2040"] {
        let token = token_for(&issuer, &server).header("kid", json!(kid)).sign();
        let reply = call_echo(&server.url, &token, "x").await;
        assert_invalid_token(&reply, &server, &token, "unknown signing key");
    }
    let token = token_for(&issuer, &server).header("kid", json!("control-2048")).sign();
    let reply = call_echo(&server.url, &token, "x").await;
    assert_invalid_token(&reply, &server, &token, "invalid signature");
}

// ---------------------------------------------------------------------------
// Discovery.

#[tokio::test]
async fn keys_are_discovered_through_rfc_8414_metadata() {
    let issuer = TestIssuer::start().await.unwrap();
    let server = start_guarded_with(Issuer::discover(issuer.issuer()), Mode::Stateless, |b| b).await;
    let token = token_for(&issuer, &server).sign();
    assert_echoed(&call_echo(&server.url, &token, "found").await, "found");
    assert_eq!(issuer.metadata_fetches(), 1, "RFC 8414 answered first");
    assert_eq!(issuer.jwks_fetches(), 1);
    assert_eq!(issuer.other_requests(), 0);
}

#[tokio::test]
async fn discovery_falls_back_to_openid_configuration() {
    let issuer = TestIssuer::start().await.unwrap();
    let jwks_uri = issuer.jwks_uri();
    // An identity provider that only publishes OpenID Connect discovery; its
    // keys are the test issuer's.
    let oidc_only = StubServer::start(move |base| {
        vec![(
            "/.well-known/openid-configuration".to_owned(),
            json!({"issuer": base, "jwks_uri": jwks_uri}),
        )]
    })
    .await;
    let server = start_guarded_with(Issuer::discover(oidc_only.base.clone()), Mode::Stateless, |b| b).await;
    let token = token_for(&issuer, &server).claim("iss", json!(oidc_only.base)).sign();
    assert_echoed(&call_echo(&server.url, &token, "oidc").await, "oidc");
    assert_eq!(oidc_only.hits(), 2, "RFC 8414 (404), then OpenID Connect");
    assert_eq!(issuer.jwks_fetches(), 1);
}

#[tokio::test]
async fn metadata_naming_another_issuer_is_refused() {
    let issuer = TestIssuer::start().await.unwrap();
    issuer.set_metadata_field("issuer", Some(json!("https://evil.example")));
    let server = start_guarded_with(Issuer::discover(issuer.issuer()), Mode::Stateless, |b| b).await;
    let token = token_for(&issuer, &server).sign();
    let reply = call_echo(&server.url, &token, "x").await;
    assert_unavailable(&reply, &token);
    assert_eq!(issuer.metadata_fetches(), 2, "both discovery documents were tried");
    assert_eq!(
        issuer.jwks_fetches(),
        0,
        "the mismatched document's jwks_uri is never used"
    );
}

#[tokio::test]
async fn kidless_token_is_matched_only_when_exactly_one_key_fits() {
    let issuer = TestIssuer::start().await.unwrap();
    let server = start_guarded(&issuer).await;
    for alg in [KeyAlg::Rs256, KeyAlg::Es256] {
        let token = token_for(&issuer, &server).algorithm(alg).without_header("kid").sign();
        assert_echoed(&call_echo(&server.url, &token, alg.name()).await, alg.name());
    }
    // Two published ES256 keys: a token without kid is never matched by guessing.
    issuer.rotate(KeyAlg::Es256, true);
    let with_kid = token_for(&issuer, &server).algorithm(KeyAlg::Es256).sign();
    assert_echoed(&call_echo(&server.url, &with_kid, "new").await, "new");
    let token = unique(token_for(&issuer, &server))
        .algorithm(KeyAlg::Es256)
        .without_header("kid")
        .sign();
    let reply = call_echo(&server.url, &token, "x").await;
    assert_invalid_token(&reply, &server, &token, "unknown signing key");
}
