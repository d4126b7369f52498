use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde_json::{Value, json};

use super::*;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

const AUD: &str = "http://127.0.0.1:9/mcp";

async fn get(url: &str) -> reqwest::Response {
    reqwest::get(url).await.expect("request to the test issuer")
}

async fn fetch_jwks(issuer: &TestIssuer) -> Value {
    get(&issuer.jwks_uri()).await.json().await.expect("JSON")
}

fn kids(jwks: &Value) -> Vec<String> {
    jwks["keys"]
        .as_array()
        .expect("keys array")
        .iter()
        .filter_map(|k| k["kid"].as_str().map(str::to_owned))
        .collect()
}

fn jose_alg(alg: KeyAlg) -> Algorithm {
    match alg {
        KeyAlg::Rs256 => Algorithm::RS256,
        KeyAlg::Ps256 => Algorithm::PS256,
        KeyAlg::Es256 => Algorithm::ES256,
        KeyAlg::EdDsa => Algorithm::EdDSA,
    }
}

/// Verifies `token` the way a validator would: the JWK named by the header's
/// kid in the served set, the algorithm `alg`, issuer and audience checked.
fn verify(jwks: &Value, token: &str, alg: KeyAlg, iss: &str) -> jsonwebtoken::errors::Result<Value> {
    let header = decode_header(token)?;
    let kid = header.kid.expect("kid in header");
    let jwk_json = jwks["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .unwrap_or_else(|| panic!("kid {kid} not published"));
    assert_eq!(jwk_json["alg"], alg.name(), "JWK alg");
    assert_eq!(jwk_json["use"], "sig");
    let jwk: Jwk = serde_json::from_value(jwk_json.clone()).expect("jsonwebtoken parses the JWK");
    let key = DecodingKey::from_jwk(&jwk)?;
    let mut validation = Validation::new(jose_alg(alg));
    validation.set_issuer(&[iss]);
    validation.set_audience(&[AUD]);
    Ok(decode::<Value>(token, &key, &validation)?.claims)
}

fn segment(token: &str, i: usize) -> Value {
    let part = token.split('.').nth(i).expect("segment");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("JSON")
}

#[tokio::test]
async fn tokens_of_every_algorithm_verify_with_the_published_jwk() {
    let issuer = TestIssuer::start().await.unwrap();
    let jwks = fetch_jwks(&issuer).await;
    for &alg in KeyAlg::ALL {
        let token = issuer.token().algorithm(alg).audience(AUD).sign();
        let header = segment(&token, 0);
        assert_eq!(header["alg"], alg.name());
        assert_eq!(header["kid"], issuer.kid(alg));
        let claims =
            verify(&jwks, &token, alg, issuer.issuer()).unwrap_or_else(|e| panic!("{alg} token must verify: {e}"));
        assert_eq!(claims["sub"], "alice");
    }
}

#[tokio::test]
async fn token_defaults_are_pinned() {
    let issuer = TestIssuer::start().await.unwrap();
    let token = issuer.token().sign();
    let header = segment(&token, 0);
    assert_eq!(
        header,
        json!({"alg": "RS256", "typ": "at+jwt", "kid": issuer.kid(KeyAlg::Rs256)})
    );
    let claims = segment(&token, 1);
    assert_eq!(claims["iss"], issuer.issuer());
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims.get("aud"), None);
    assert_eq!(claims.get("scope"), None);
    let iat = claims["iat"].as_u64().unwrap();
    let exp = claims["exp"].as_u64().unwrap();
    assert_eq!(exp - iat, 300);
    assert_eq!(claims.as_object().unwrap().len(), 4);
    assert!(issuer.issuer().starts_with("http://127.0.0.1:"));
    assert!(!issuer.issuer().ends_with('/'));
    assert_eq!(issuer.jwks_uri(), format!("{}/jwks.json", issuer.issuer()));
}

#[tokio::test]
async fn builder_edits_claims_and_header_verbatim() {
    let issuer = TestIssuer::start().await.unwrap();
    let token = issuer
        .token()
        .subject("bob")
        .audiences(["a", "b"])
        .scope("mcp:tools mcp:admin")
        .claim("exp", json!("9999999999"))
        .without_claim("iat")
        .header("jku", json!("http://attacker.invalid/jwks"))
        .header("crit", json!(["exp"]))
        .without_header("kid")
        .sign();
    let header = segment(&token, 0);
    assert_eq!(header["jku"], "http://attacker.invalid/jwks");
    assert_eq!(header["crit"], json!(["exp"]));
    assert_eq!(header.get("kid"), None);
    let claims = segment(&token, 1);
    assert_eq!(claims["sub"], "bob");
    assert_eq!(claims["aud"], json!(["a", "b"]));
    assert_eq!(claims["scope"], "mcp:tools mcp:admin");
    assert_eq!(claims["exp"], "9999999999");
    assert_eq!(claims.get("iat"), None);

    let expired = segment(&issuer.token().expired().sign(), 1);
    assert!(expired["exp"].as_u64().unwrap() + 3000 < now());
    let future = segment(&issuer.token().not_before_in(Duration::from_secs(600)).sign(), 1);
    assert!(future["nbf"].as_u64().unwrap() > now() + 500);
}

#[tokio::test]
async fn expired_token_is_rejected_by_jsonwebtoken() {
    let issuer = TestIssuer::start().await.unwrap();
    let jwks = fetch_jwks(&issuer).await;
    let token = issuer.token().audience(AUD).expired().sign();
    let err = verify(&jwks, &token, KeyAlg::Rs256, issuer.issuer()).unwrap_err();
    assert_eq!(*err.kind(), jsonwebtoken::errors::ErrorKind::ExpiredSignature);
}

#[tokio::test]
async fn rs256_and_ps256_share_the_rsa_key_under_distinct_kids() {
    let issuer = TestIssuer::start().await.unwrap();
    let rs = issuer.kid(KeyAlg::Rs256);
    let ps = issuer.kid(KeyAlg::Ps256);
    assert_ne!(rs, ps);
    let jwks = issuer.jwks();
    let find = |kid: &str| {
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == kid)
            .unwrap()
            .clone()
    };
    assert_eq!(find(&rs)["n"], find(&ps)["n"]);
    assert_eq!(find(&rs)["alg"], "RS256");
    assert_eq!(find(&ps)["alg"], "PS256");
    assert_eq!(kids(&jwks).len(), 4);
}

#[tokio::test]
async fn rotate_keeps_or_drops_old_kids() {
    let issuer = TestIssuer::start().await.unwrap();
    let old_rs = issuer.kid(KeyAlg::Rs256);
    let old_ps = issuer.kid(KeyAlg::Ps256);
    let old_es = issuer.kid(KeyAlg::Es256);

    let new_rs = issuer.rotate(KeyAlg::Rs256, true);
    assert_ne!(new_rs, old_rs);
    assert_eq!(issuer.kid(KeyAlg::Rs256), new_rs);
    assert_ne!(issuer.kid(KeyAlg::Ps256), old_ps, "PS256 shares the RSA key");
    let served = kids(&fetch_jwks(&issuer).await);
    for kid in [&old_rs, &old_ps, &new_rs, &old_es] {
        assert!(served.contains(kid), "{kid} must be published: {served:?}");
    }
    assert_eq!(served.len(), 6);

    // New tokens use the new key and verify against the served set.
    let jwks = fetch_jwks(&issuer).await;
    let token = issuer.token().audience(AUD).sign();
    verify(&jwks, &token, KeyAlg::Rs256, issuer.issuer()).unwrap();

    let newest = issuer.rotate(KeyAlg::Rs256, false);
    let served = kids(&fetch_jwks(&issuer).await);
    assert!(served.contains(&newest));
    assert!(!served.contains(&old_rs) && !served.contains(&new_rs));
    assert!(served.contains(&old_es), "other kinds are untouched");
    assert_eq!(served.len(), 4);

    let new_ed = issuer.rotate(KeyAlg::EdDsa, false);
    assert_eq!(issuer.kid(KeyAlg::EdDsa), new_ed);
    assert_eq!(kids(&fetch_jwks(&issuer).await).len(), 4);
}

#[tokio::test]
async fn counters_count_requests() {
    let issuer = TestIssuer::start().await.unwrap();
    assert_eq!((issuer.jwks_fetches(), issuer.metadata_fetches()), (0, 0));
    let meta: Value = get(&issuer.oauth_metadata_url()).await.json().await.unwrap();
    assert_eq!(meta["issuer"], issuer.issuer());
    assert_eq!(meta["jwks_uri"], issuer.jwks_uri());
    assert_eq!(meta["response_types_supported"], json!(["code"]));
    assert_eq!(
        meta["id_token_signing_alg_values_supported"],
        json!(["RS256", "PS256", "ES256", "EdDSA"])
    );
    let oidc: Value = get(&issuer.openid_configuration_url()).await.json().await.unwrap();
    assert_eq!(oidc, meta);
    assert_eq!(issuer.metadata_fetches(), 2);
    fetch_jwks(&issuer).await;
    fetch_jwks(&issuer).await;
    fetch_jwks(&issuer).await;
    assert_eq!(issuer.jwks_fetches(), 3);
    assert_eq!(issuer.other_requests(), 0);
    let resp = get(&format!("{}/attacker-jwks", issuer.issuer())).await;
    assert_eq!(resp.status(), 404);
    assert_eq!(issuer.other_requests(), 1);
    assert_eq!((issuer.jwks_fetches(), issuer.metadata_fetches()), (3, 2));
}

#[tokio::test]
async fn unavailable_issuer_answers_503_and_still_counts() {
    let issuer = TestIssuer::start().await.unwrap();
    issuer.set_available(false);
    for url in [
        issuer.jwks_uri(),
        issuer.oauth_metadata_url(),
        issuer.openid_configuration_url(),
    ] {
        assert_eq!(get(&url).await.status(), 503, "{url}");
    }
    assert_eq!((issuer.jwks_fetches(), issuer.metadata_fetches()), (1, 2));
    issuer.set_available(true);
    assert_eq!(get(&issuer.jwks_uri()).await.status(), 200);
}

#[tokio::test]
async fn cache_control_header_defaults_to_none() {
    let issuer = TestIssuer::start().await.unwrap();
    let resp = get(&issuer.jwks_uri()).await;
    assert_eq!(resp.headers().get("cache-control"), None);
    assert_eq!(resp.headers()["content-type"], "application/json");
    issuer.set_cache_control(Some("max-age=60"));
    let resp = get(&issuer.jwks_uri()).await;
    assert_eq!(resp.headers()["cache-control"], "max-age=60");
    issuer.set_cache_control(None);
    let resp = get(&issuer.jwks_uri()).await;
    assert_eq!(resp.headers().get("cache-control"), None);
}

#[tokio::test]
async fn extra_jwks_body_and_metadata_overrides_are_served() {
    let issuer = TestIssuer::start().await.unwrap();
    issuer.publish_extra_jwk(json!({"kty": "foo", "kid": "weird"}));
    issuer.publish_extra_jwk(json!({"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB"}));
    let keys = fetch_jwks(&issuer).await["keys"].as_array().unwrap().clone();
    assert_eq!(keys.len(), 6);
    assert_eq!(keys[4]["kty"], "foo");
    assert_eq!(keys[5]["use"], "enc");
    issuer.clear_extra_jwks();
    assert_eq!(kids(&fetch_jwks(&issuer).await).len(), 4);

    issuer.set_jwks_body(Some("not json".to_owned()));
    assert_eq!(get(&issuer.jwks_uri()).await.text().await.unwrap(), "not json");
    issuer.set_jwks_body(None);

    issuer.set_metadata_field("jwks_uri", Some(json!("http://attacker.invalid/jwks")));
    issuer.set_metadata_field("scopes_supported", None);
    let meta: Value = get(&issuer.oauth_metadata_url()).await.json().await.unwrap();
    assert_eq!(meta["jwks_uri"], "http://attacker.invalid/jwks");
    assert_eq!(meta.get("scopes_supported"), None);
    assert_eq!(meta["issuer"], issuer.issuer());
}

#[tokio::test]
async fn foreign_key_reuses_the_real_kid_and_fails_verification() {
    let issuer = TestIssuer::start().await.unwrap();
    let jwks = fetch_jwks(&issuer).await;
    for &alg in KeyAlg::ALL {
        let attacker = TestKey::generate(alg);
        let token = issuer
            .token()
            .algorithm(alg)
            .audience(AUD)
            .signed_with(&attacker)
            .sign();
        assert_eq!(segment(&token, 0)["kid"], issuer.kid(alg));
        let err = verify(&jwks, &token, alg, issuer.issuer()).unwrap_err();
        assert_eq!(*err.kind(), jsonwebtoken::errors::ErrorKind::InvalidSignature, "{alg}");

        // The attacker's key does verify it: the signature is real.
        let mut own = attacker.public_jwk();
        own["kid"] = json!(issuer.kid(alg));
        let own_set = json!({"keys": [own]});
        verify(&own_set, &token, alg, issuer.issuer()).unwrap();
    }
    // A mismatched key falls back to the key's own algorithm.
    let ec = TestKey::generate(KeyAlg::Es256);
    let token = issuer.token().signed_with(&ec).sign();
    assert_eq!(segment(&token, 0)["alg"], "ES256");
    assert_eq!(segment(&token, 0)["kid"], issuer.kid(KeyAlg::Es256));
}

#[tokio::test]
async fn sign_raw_signs_exactly_the_given_header() {
    let issuer = TestIssuer::start().await.unwrap();
    let jwks = fetch_jwks(&issuer).await;
    let header = json!({"alg": "ES256", "kid": issuer.kid(KeyAlg::Es256), "x5u": "http://x.invalid"});
    let claims = json!({"iss": issuer.issuer(), "aud": AUD, "exp": 4_000_000_000u64});
    let token = issuer.sign_raw(&header, &claims, KeyAlg::Es256);
    assert_eq!(segment(&token, 0), header);
    assert_eq!(
        token.split('.').next().unwrap(),
        URL_SAFE_NO_PAD.encode(header.to_string())
    );
    verify(&jwks, &token, KeyAlg::Es256, issuer.issuer()).unwrap();

    let lying = json!({"alg": "none", "kid": issuer.kid(KeyAlg::Rs256)});
    let token = issuer.sign_raw(&lying, &claims, KeyAlg::Rs256);
    assert_eq!(segment(&token, 0)["alg"], "none");
    assert_eq!(token.split('.').nth(2).unwrap().len(), 342, "2048-bit RSA signature");

    let dup = issuer.sign_raw_bytes(br#"{"alg":"RS256","alg":"none"}"#, b"{}", KeyAlg::Rs256);
    assert!(dup.starts_with(&URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","alg":"none"}"#)));
}

#[tokio::test]
async fn shared_secret_and_unsigned_tokens() {
    let issuer = TestIssuer::start().await.unwrap();
    let header = json!({"alg": "HS256", "typ": "JWT"});
    let claims = json!({"iss": issuer.issuer(), "aud": AUD, "exp": 4_000_000_000u64});
    let token = shared_secret_token(b"s3cret", &header, &claims);
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_audience(&[AUD]);
    decode::<Value>(&token, &DecodingKey::from_secret(b"s3cret"), &validation).unwrap();
    assert!(decode::<Value>(&token, &DecodingKey::from_secret(b"other"), &validation).is_err());

    // Algorithm confusion material: the public key as the HMAC secret.
    let pem = issuer.rsa_public_key_pem();
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
    assert!(pem.ends_with("-----END PUBLIC KEY-----\n"));
    let der = issuer.rsa_public_key_der();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(pem.lines().all(|l| l.len() <= 64));
    let standard = base64::engine::general_purpose::STANDARD;
    assert_eq!(standard.decode(body).unwrap(), der, "PEM wraps the DER");
    aws_lc_rs::rsa::PublicKey::from_der(&der).expect("SPKI DER parses as an RSA public key");
    let forged = shared_secret_token(pem.as_bytes(), &header, &claims);
    assert_eq!(forged.split('.').count(), 3);

    let none = unsigned_token(&json!({"alg": "none"}), &claims);
    assert!(none.ends_with('.'));
    assert_eq!(none.split('.').count(), 3);
}

#[tokio::test]
async fn delay_holds_fetches_in_flight() {
    let issuer = TestIssuer::start().await.unwrap();
    issuer.set_delay(Duration::from_millis(200));
    let started = std::time::Instant::now();
    assert_eq!(get(&issuer.jwks_uri()).await.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(issuer.jwks_fetches(), 1);
}

#[tokio::test]
async fn dropping_the_last_handle_stops_the_server() {
    let issuer = TestIssuer::start().await.unwrap();
    let addr = issuer.local_addr();
    let clone = issuer.clone();
    drop(issuer);
    assert_eq!(get(&clone.jwks_uri()).await.status(), 200, "a clone keeps it up");
    drop(clone);
    // Let the aborted task unwind and release the listener.
    tokio::task::yield_now().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[test]
fn key_alg_names() {
    let names: Vec<&str> = KeyAlg::ALL.iter().map(|a| a.name()).collect();
    assert_eq!(names, ["RS256", "PS256", "ES256", "EdDSA"]);
    assert_eq!(KeyAlg::EdDsa.to_string(), "EdDSA");
}

#[test]
fn test_key_exports_its_public_jwk() {
    let key = TestKey::generate(KeyAlg::Es256);
    let jwk = key.public_jwk();
    assert_eq!(jwk["kty"], "EC");
    assert_eq!(jwk["crv"], "P-256");
    assert_eq!(jwk["kid"], key.kid());
    assert_eq!(URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap().len(), 32);
    assert!(key.rsa_public_key_der().is_none());
    let ed = TestKey::generate(KeyAlg::EdDsa).public_jwk();
    assert_eq!((ed["kty"].as_str(), ed["crv"].as_str()), (Some("OKP"), Some("Ed25519")));
    let rsa = TestKey::generate(KeyAlg::Ps256);
    assert_eq!(rsa.public_jwk()["alg"], "PS256");
    assert_eq!(rsa.public_jwk()["e"], "AQAB");
    assert!(format!("{rsa:?}").contains("Ps256"));
}
