//! DPoP (RFC 9449) in the test kit: proofs verify with an independent JOSE
//! library, bound tokens carry `cnf.jkt`, the MCP client sends a fresh proof
//! per request and answers nonce challenges, and the development
//! authorization server binds access and refresh tokens to the proof's key.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rmcp_guard_testkit::dev::DevAuthServer;
use rmcp_guard_testkit::dpop::{DpopKey, jwk_thumbprint, rsa_1024_public_jwk};
use rmcp_guard_testkit::{KeyAlg, McpClient, Protocol, TestIssuer, TestServer};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

const URL: &str = "http://127.0.0.1:9/mcp";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn segment(jws: &str, i: usize) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(jws.split('.').nth(i).unwrap()).unwrap()).unwrap()
}

fn jose_alg(name: &str) -> Algorithm {
    name.parse().unwrap()
}

/// Verifies a proof's signature with the key in its own `jwk` header (what a
/// DPoP verifier does), with jsonwebtoken; returns the claims.
fn verify_proof(proof: &str) -> jsonwebtoken::errors::Result<Value> {
    let header = segment(proof, 0);
    let jwk: Jwk = serde_json::from_value(header["jwk"].clone()).expect("jsonwebtoken parses the jwk");
    let mut validation = Validation::new(jose_alg(header["alg"].as_str().unwrap()));
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_aud = false;
    Ok(jsonwebtoken::decode::<Value>(proof, &DecodingKey::from_jwk(&jwk)?, &validation)?.claims)
}

fn ath(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}

// ---------------------------------------------------------------------------
// Keys and proofs.

#[test]
fn proofs_of_every_algorithm_verify_with_their_jwk() {
    for &alg in KeyAlg::ALL {
        let key = DpopKey::generate(alg);
        let proof = key.proof("POST", URL).access_token("tok").nonce("n1").sign();
        let header = segment(&proof, 0);
        assert_eq!(header["typ"], "dpop+jwt");
        assert_eq!(header["alg"], alg.name());
        assert_eq!(header["jwk"], key.public_jwk());
        let claims = verify_proof(&proof).unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(claims["htm"], "POST");
        assert_eq!(claims["htu"], URL);
        assert_eq!(claims["ath"], ath("tok"));
        assert_eq!(claims["nonce"], "n1");
        assert!(claims["jti"].as_str().unwrap().len() >= 22, "16 random bytes or more");
        assert!(claims["iat"].as_u64().unwrap().abs_diff(now()) <= 5);
        assert_eq!(jwk_thumbprint(&header["jwk"]), Some(key.thumbprint()));
    }
}

#[test]
fn public_and_private_jwks() {
    let ec = DpopKey::es256();
    let public = ec.public_jwk();
    let mut names: Vec<&str> = public.as_object().unwrap().keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["crv", "kty", "x", "y"]);
    assert_eq!(
        ec.private_jwk()["d"].as_str().map(str::len),
        Some(43),
        "a 32-byte scalar"
    );
    assert_eq!(ec.private_jwk()["x"], public["x"]);

    let ed = DpopKey::generate(KeyAlg::EdDsa);
    assert_eq!(ed.public_jwk()["kty"], "OKP");
    assert_eq!(ed.private_jwk()["d"].as_str().map(str::len), Some(43), "a 32-byte seed");

    let rsa = DpopKey::generate(KeyAlg::Rs256);
    let private = rsa.private_jwk();
    for member in ["n", "e", "d", "p", "q", "dp", "dq", "qi"] {
        assert!(private[member].as_str().is_some_and(|v| !v.is_empty()), "{member}");
    }
    let len = |m: &str| URL_SAFE_NO_PAD.decode(private[m].as_str().unwrap()).unwrap().len();
    assert_eq!((len("p"), len("q")), (128, 128), "the primes of a 2048-bit key");
    assert_eq!(private["n"], rsa.public_jwk()["n"]);

    assert_ne!(DpopKey::es256().thumbprint(), ec.thumbprint());
    assert_eq!(ec.clone().thumbprint(), ec.thumbprint());
    let debug = format!("{ec:?}");
    assert!(debug.contains(&ec.thumbprint()));
    assert!(
        !debug.contains(ec.private_jwk()["d"].as_str().unwrap()),
        "Debug hides the private key"
    );
}

#[test]
fn hostile_proofs() {
    let key = DpopKey::es256();
    let other = DpopKey::es256();

    let forged = key.proof("POST", URL).signed_with(&other).sign();
    assert_eq!(segment(&forged, 0)["jwk"], key.public_jwk());
    assert!(verify_proof(&forged).is_err(), "signed by a key other than its jwk");

    let hs = key.proof("POST", URL).sign_hs256(b"secret");
    assert_eq!(segment(&hs, 0)["alg"], "HS256");
    let none = key.proof("POST", URL).unsigned();
    assert_eq!(segment(&none, 0)["alg"], "none");
    assert!(none.ends_with('.'));

    let edited = key
        .proof("GET", URL)
        .iat(7)
        .jti("fixed")
        .claim("extra", json!(1))
        .without_claim("htu")
        .header("jwk", rsa_1024_public_jwk())
        .without_header("typ")
        .sign();
    let (header, claims) = (segment(&edited, 0), segment(&edited, 1));
    assert_eq!(
        header["jwk"]["n"]
            .as_str()
            .map(|n| URL_SAFE_NO_PAD.decode(n).unwrap().len()),
        Some(128)
    );
    assert!(header.get("typ").is_none());
    assert_eq!(claims, json!({"htm": "GET", "iat": 7, "jti": "fixed", "extra": 1}));

    let stale = key.proof("POST", URL).issued_at_offset(-600).claims();
    assert!(now() - stale["iat"].as_u64().unwrap() >= 599);
    let leaking = key.proof("POST", URL).header("jwk", key.private_jwk()).sign();
    assert!(segment(&leaking, 0)["jwk"].get("d").is_some());
}

#[tokio::test]
async fn bound_tokens_carry_the_thumbprint() {
    let issuer = TestIssuer::start().await.unwrap();
    let key = DpopKey::es256();
    let token = issuer.token().audience(URL).bound_to(&key).sign();
    assert_eq!(segment(&token, 1)["cnf"], json!({"jkt": key.thumbprint()}));

    let persona = issuer.persona("alice").scopes(["mcp:tools"]).bound_to(&key);
    assert_eq!(segment(&persona.token(URL), 1)["cnf"]["jkt"], key.thumbprint());
    // Remembered, like every persona setting.
    assert_eq!(
        segment(&issuer.persona("alice").sign(), 1)["cnf"]["jkt"],
        key.thumbprint()
    );
    assert!(segment(&issuer.persona("bob").sign(), 1).get("cnf").is_none());
    assert!(
        segment(&issuer.token().sign(), 1).get("cnf").is_none(),
        "bearer by default"
    );
}

// ---------------------------------------------------------------------------
// The client against an endpoint that demands a nonce.

struct Endpoint {
    url: Mutex<String>,
    token: String,
    jkt: String,
    requests: AtomicUsize,
    nonce_counter: AtomicUsize,
    /// Whether every request is answered with a nonce challenge.
    always_challenge: bool,
}

impl Endpoint {
    fn nonce(&self) -> String {
        format!("nonce-{}", self.nonce_counter.load(Ordering::SeqCst))
    }
}

async fn mcp(State(ep): State<Arc<Endpoint>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    ep.requests.fetch_add(1, Ordering::SeqCst);
    let reject = |why: &str| (StatusCode::BAD_REQUEST, why.to_owned()).into_response();
    if headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) != Some(&format!("DPoP {}", ep.token)) {
        return reject("Authorization must be DPoP <token>");
    }
    let Some(proof) = headers.get("dpop").and_then(|v| v.to_str().ok()) else {
        return reject("no DPoP proof");
    };
    let Ok(claims) = verify_proof(proof) else {
        return reject("the proof does not verify");
    };
    let url = ep.url.lock().unwrap().clone();
    if claims["htm"] != "POST" || claims["htu"] != url.as_str() || claims["ath"] != ath(&ep.token).as_str() {
        return reject("htm, htu or ath is wrong");
    }
    if jwk_thumbprint(&segment(proof, 0)["jwk"]).as_deref() != Some(ep.jkt.as_str()) {
        return reject("the proof's key is not the token's");
    }
    if ep.always_challenge || claims["nonce"] != ep.nonce().as_str() {
        return (
            StatusCode::UNAUTHORIZED,
            [
                (header::WWW_AUTHENTICATE, "DPoP error=\"use_dpop_nonce\"".to_owned()),
                (header::HeaderName::from_static("dpop-nonce"), ep.nonce()),
            ],
        )
            .into_response();
    }
    // Accepted: the nonce rotates, and the new one rides on the answer.
    ep.nonce_counter.fetch_add(1, Ordering::SeqCst);
    let id = serde_json::from_slice::<Value>(&body)
        .map(|b| b["id"].clone())
        .unwrap_or_default();
    (
        [(header::HeaderName::from_static("dpop-nonce"), ep.nonce())],
        axum::Json(json!({"jsonrpc": "2.0", "id": id, "result": {"tools": []}})),
    )
        .into_response()
}

async fn endpoint(key: &DpopKey, always_challenge: bool) -> (TestServer, Arc<Endpoint>) {
    let ep = Arc::new(Endpoint {
        url: Mutex::new(String::new()),
        token: "the-access-token".to_owned(),
        jkt: key.thumbprint(),
        requests: AtomicUsize::new(0),
        nonce_counter: AtomicUsize::new(0),
        always_challenge,
    });
    let app = Router::new().route("/mcp", post(mcp)).with_state(Arc::clone(&ep));
    let server = TestServer::start(app).await.unwrap();
    *ep.url.lock().unwrap() = server.mcp_url("/mcp");
    (server, ep)
}

#[tokio::test]
async fn the_client_sends_proofs_and_answers_nonce_challenges() {
    let key = DpopKey::es256();
    let (server, ep) = endpoint(&key, false).await;
    // The query is not part of `htu`.
    let url = format!("{}?tenant=acme", server.mcp_url("/mcp"));
    let client = McpClient::connect(url, Protocol::V2026_07_28)
        .dpop(ep.token.clone(), &key)
        .await
        .unwrap();
    assert_eq!(client.dpop_nonce(), None);

    // First request: challenged for a nonce, then retried once with it.
    let tools = tokio::time::timeout(Duration::from_secs(20), client.list_tools())
        .await
        .unwrap();
    assert!(tools.unwrap().is_empty());
    assert_eq!(ep.requests.load(Ordering::SeqCst), 2);
    // The nonce that came with the success is used next: no challenge.
    assert_eq!(client.dpop_nonce().as_deref(), Some("nonce-1"));
    client.list_tools().await.unwrap();
    assert_eq!(ep.requests.load(Ordering::SeqCst), 3);
    assert_eq!(client.dpop_nonce().as_deref(), Some("nonce-2"));

    // Back to a bearer token: no proof, and the endpoint refuses.
    let mut client = client;
    client.set_bearer(Some(ep.token.clone()));
    assert_eq!(
        client.list_tools().await.unwrap_err().status(),
        Some(StatusCode::BAD_REQUEST)
    );
    client.set_dpop(Some((ep.token.clone(), key.clone())));
    client.list_tools().await.unwrap();
}

#[tokio::test]
async fn a_nonce_challenge_is_retried_only_once() {
    let key = DpopKey::es256();
    let (server, ep) = endpoint(&key, true).await;
    let client = McpClient::connect(server.mcp_url("/mcp"), Protocol::V2026_07_28)
        .dpop(ep.token.clone(), &key)
        .await
        .unwrap();
    let err = client.list_tools().await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::UNAUTHORIZED));
    assert!(err.www_authenticate().unwrap().contains("use_dpop_nonce"));
    assert_eq!(ep.requests.load(Ordering::SeqCst), 2);
}

// ---------------------------------------------------------------------------
// The development authorization server's token endpoint.

const RESOURCE: &str = "http://127.0.0.1:8080/mcp";
const CALLBACK: &str = "http://127.0.0.1:7777/callback";

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// Registers a public client with refresh tokens; its client id.
async fn register(auth: &DevAuthServer) -> String {
    let response = http()
        .post(auth.registration_endpoint())
        .json(&json!({"redirect_uris": [CALLBACK], "grant_types": ["authorization_code", "refresh_token"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    body["client_id"].as_str().unwrap().to_owned()
}

/// Authorization code + PKCE up to the code; `(code, verifier)`.
async fn code(auth: &DevAuthServer, client_id: &str) -> (String, String) {
    let verifier = "v".repeat(64);
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let url = url::Url::parse_with_params(
        &auth.authorization_endpoint(),
        [
            ("response_type", "code"),
            ("client_id", client_id),
            ("redirect_uri", CALLBACK),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
            ("resource", RESOURCE),
            ("scope", "mcp:tools"),
        ],
    )
    .unwrap();
    let response = http().get(url).send().await.unwrap();
    assert_eq!(response.status(), 302);
    let location = url::Url::parse(response.headers()[header::LOCATION].to_str().unwrap()).unwrap();
    let code = location
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    (code, verifier)
}

/// POST /token with `form` and, if given, a `DPoP` header.
async fn post_token(auth: &DevAuthServer, form: &[(&str, &str)], proof: Option<String>) -> (u16, Value) {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let mut request = http()
        .post(auth.token_endpoint())
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(body);
    if let Some(proof) = proof {
        request = request.header("DPoP", proof);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

/// Redeems a fresh code, with a proof if given.
async fn redeem(auth: &DevAuthServer, client_id: &str, proof: Option<String>) -> (u16, Value) {
    let (code, verifier) = code(auth, client_id).await;
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("code_verifier", verifier.as_str()),
        ("redirect_uri", CALLBACK),
        ("client_id", client_id),
    ];
    post_token(auth, &form, proof).await
}

#[tokio::test]
async fn dev_server_metadata_lists_the_dpop_algorithms() {
    let auth = DevAuthServer::builder(RESOURCE).start().await.unwrap();
    let m: Value = http()
        .get(auth.metadata_url())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        m["dpop_signing_alg_values_supported"],
        json!(["ES256", "ES384", "EdDSA", "RS256", "PS256"])
    );
}

#[tokio::test]
async fn dev_server_without_a_proof_issues_bearer_tokens() {
    let auth = DevAuthServer::builder(RESOURCE).start().await.unwrap();
    let client_id = register(&auth).await;
    let (status, body) = redeem(&auth, &client_id, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert!(segment(body["access_token"].as_str().unwrap(), 1).get("cnf").is_none());
    // An unbound refresh token refreshes without a proof.
    let refresh = body["refresh_token"].as_str().unwrap();
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh),
        ("client_id", &client_id),
    ];
    let (status, body) = post_token(&auth, &form, None).await;
    assert_eq!((status, body["token_type"].as_str()), (200, Some("Bearer")), "{body}");
}

#[tokio::test]
async fn dev_server_binds_access_and_refresh_tokens_to_the_proof_key() {
    let auth = DevAuthServer::builder(RESOURCE).start().await.unwrap();
    let client_id = register(&auth).await;
    let key = DpopKey::es256();
    let endpoint = auth.token_endpoint();

    let (status, body) = redeem(&auth, &client_id, Some(key.proof("POST", &endpoint).sign())).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "DPoP");
    let claims = segment(body["access_token"].as_str().unwrap(), 1);
    assert_eq!(claims["cnf"], json!({"jkt": key.thumbprint()}));

    let refresh = body["refresh_token"].as_str().unwrap().to_owned();
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh.as_str()),
        ("client_id", client_id.as_str()),
    ];
    // No proof, or another key's: refused, and the refresh token is not spent.
    let (status, body) = post_token(&auth, &form, None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_dpop_proof")),
        "{body}"
    );
    let thief = DpopKey::es256();
    let (status, body) = post_token(&auth, &form, Some(thief.proof("POST", &endpoint).sign())).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_dpop_proof")),
        "{body}"
    );

    // The key's own proof: a new bound access token, and a bound refresh token.
    let (status, body) = post_token(&auth, &form, Some(key.proof("POST", &endpoint).sign())).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "DPoP");
    assert_eq!(
        segment(body["access_token"].as_str().unwrap(), 1)["cnf"]["jkt"],
        key.thumbprint()
    );
    let refresh = body["refresh_token"].as_str().unwrap();
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh),
        ("client_id", &client_id),
    ];
    let (status, body) = post_token(&auth, &form, None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_dpop_proof")),
        "{body}"
    );
}

#[tokio::test]
async fn dev_server_refuses_bad_proofs() {
    let auth = DevAuthServer::builder(RESOURCE).start().await.unwrap();
    let client_id = register(&auth).await;
    let key = DpopKey::es256();
    let endpoint = auth.token_endpoint();
    let bad = [
        ("wrong htu", key.proof("POST", RESOURCE).sign()),
        ("wrong htm", key.proof("GET", &endpoint).sign()),
        ("stale", key.proof("POST", &endpoint).issued_at_offset(-600).sign()),
        ("symmetric", key.proof("POST", &endpoint).sign_hs256(b"secret")),
        ("unsigned", key.proof("POST", &endpoint).unsigned()),
        (
            "private jwk",
            key.proof("POST", &endpoint).header("jwk", key.private_jwk()).sign(),
        ),
        (
            "wrong typ",
            key.proof("POST", &endpoint).header("typ", json!("JWT")).sign(),
        ),
        (
            "forged",
            key.proof("POST", &endpoint).signed_with(&DpopKey::es256()).sign(),
        ),
        (
            "weak key",
            key.proof("POST", &endpoint)
                .header("jwk", rsa_1024_public_jwk())
                .header("alg", json!("RS256"))
                .sign(),
        ),
    ];
    for (name, proof) in bad {
        let (status, body) = redeem(&auth, &client_id, Some(proof)).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_dpop_proof")),
            "{name}: {body}"
        );
    }
    // A replayed proof.
    let proof = key.proof("POST", &endpoint).sign();
    assert_eq!(redeem(&auth, &client_id, Some(proof.clone())).await.0, 200);
    let (status, body) = redeem(&auth, &client_id, Some(proof)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_dpop_proof")),
        "{body}"
    );
}
