//! Opaque tokens and downstream tokens, over real HTTP.
//!
//! Introspection (RFC 7662) and client credentials run against a REAL
//! authorization server: npm `oidc-provider`, started from
//! `tests/oidc-provider/server.js` on a loopback port (install it once with
//! `npm ci --prefix tests/oidc-provider`; Node 20 or later). It mints opaque
//! access tokens bound to a resource (RFC 8707) and counts the requests it
//! receives, so caching is proven at the provider.
//!
//! Token exchange (RFC 8693): no authorization server available here
//! implements it (oidc-provider does not), so those tests run against a small
//! RFC 8693 token endpoint written below, next to a fake downstream API that
//! records every request it receives.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use http::Request;
use rmcp_guard::oauth::{
    BearerAuthLayer, ClientAuth, DownstreamRequest, ExchangeError, InboundToken, IntrospectionConfig, Issuer,
    ResourceServer, ResourceServerBuilder, TokenExchange,
};
use rmcp_guard::{ConfigError, Principal};
use rmcp_guard_testkit::TestIssuer;
use serde_json::{Value, json};
use support::oidc::OidcProvider;
use tower::{Layer, ServiceExt, service_fn};

const RESOURCE: &str = "http://127.0.0.1:9/mcp";
const CLIENT_ID: &str = "rmcp-guard";

// ---------------------------------------------------------------------------
// The real authorization server.

/// `node tests/oidc-provider/server.js`, stopped on drop.
struct Provider {
    oidc: OidcProvider,
    issuer: String,
    secret: String,
}

fn random_secret() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut out = String::new();
    for _ in 0..4 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(std::time::SystemTime::now().elapsed().unwrap_or_default().as_nanos());
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

impl Provider {
    fn start() -> Provider {
        let secret = random_secret();
        let oidc = OidcProvider::start(CLIENT_ID, &secret, &[]);
        let issuer = oidc.issuer.clone();
        Provider { oidc, issuer, secret }
    }

    fn auth(&self) -> ClientAuth {
        ClientAuth::client_secret(CLIENT_ID, &self.secret).unwrap()
    }

    fn introspection_endpoint(&self) -> String {
        format!("{}/token/introspection", self.issuer)
    }

    fn issuer_config(&self) -> Issuer {
        Issuer::introspection(&self.issuer, self.introspection_endpoint(), self.auth())
    }

    fn builder(&self, resource: &str) -> ResourceServerBuilder {
        ResourceServer::builder(resource, self.issuer_config()).required_scopes(["mcp:tools"])
    }

    fn token_client(&self) -> TokenExchange {
        TokenExchange::builder(format!("{}/token", self.issuer), self.auth())
            .build()
            .unwrap()
    }

    /// An opaque access token for `resource` with `scope`, minted through our
    /// own client-credentials code.
    async fn mint(&self, resource: &str, scope: &str) -> String {
        let request = DownstreamRequest::resource(resource).scopes(scope.split(' '));
        let token = self.token_client().client_credentials(&request).await.unwrap();
        assert_eq!(token.audience(), resource);
        token.secret().to_owned()
    }

    async fn counts(&self) -> (u64, u64) {
        let v: Value = reqwest::get(format!("{}/__counts", self.issuer))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (v["introspection"].as_u64().unwrap(), v["token"].as_u64().unwrap())
    }
}

struct Answer {
    status: u16,
    challenge: Option<String>,
    retry_after: Option<String>,
    body: String,
}

/// One request through the bearer layer in front of a service that reports
/// the principal (and whether the inbound token handle is there: kept, as
/// for token exchange).
async fn call(rs: &ResourceServer, token: &str) -> Answer {
    let service =
        BearerAuthLayer::new(rs.clone())
            .keep_inbound_token()
            .layer(service_fn(|req: Request<String>| async move {
                let principal = req.extensions().get::<Principal>().cloned();
                let has_inbound = req.extensions().get::<InboundToken>().is_some();
                let body = match principal {
                    Some(p) => json!({
                        "sub": p.subject(),
                        "iss": p.issuer(),
                        "client_id": p.client_id(),
                        "tenant": p.tenant(),
                        "groups": p.groups(),
                        "scopes": p.scopes().collect::<Vec<_>>(),
                        "aud": p.audiences(),
                        "inbound": has_inbound,
                    }),
                    None => json!(null),
                };
                Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::from(
                    body.to_string(),
                ))))
            }));
    let response = service
        .oneshot(
            Request::post("/mcp")
                .header("authorization", format!("Bearer {token}"))
                .body(String::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status().as_u16();
    let header = |name: &str| response.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
    let (challenge, retry_after) = (header("www-authenticate"), header("retry-after"));
    use http_body_util::BodyExt;
    let body = String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(!body.contains(token), "the token is echoed: {body}");
    if let Some(c) = &challenge {
        assert!(!c.contains(token), "the token is echoed: {c}");
    }
    Answer {
        status,
        challenge,
        retry_after,
        body,
    }
}

fn assert_invalid_token(answer: &Answer, description: &str) {
    assert_eq!(answer.status, 401, "{}", answer.body);
    let c = answer.challenge.as_deref().expect("a challenge");
    assert!(c.starts_with("Bearer error=\"invalid_token\""), "{c}");
    assert!(c.contains(&format!("error_description=\"{description}\"")), "{c}");
    assert!(c.contains("resource_metadata=\""), "{c}");
}

#[tokio::test]
async fn active_token_becomes_the_same_principal() {
    let provider = Provider::start();
    let rs = provider.builder(RESOURCE).build().unwrap();
    let token = provider.mint(RESOURCE, "mcp:tools").await;
    let answer = call(&rs, &token).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let v: Value = serde_json::from_str(&answer.body).unwrap();
    // A client-credentials token has no `sub`: the subject is the client.
    assert_eq!(v["sub"], CLIENT_ID);
    assert_eq!(v["client_id"], CLIENT_ID);
    assert_eq!(v["iss"], provider.issuer.as_str());
    assert_eq!(v["tenant"], "acme");
    assert_eq!(v["groups"], json!(["netops"]));
    assert_eq!(v["scopes"], json!(["mcp:tools"]));
    assert_eq!(v["aud"], json!([RESOURCE]));
    assert_eq!(v["inbound"], true);
}

#[tokio::test]
async fn inactive_token_is_rejected_like_a_bad_jwt() {
    let provider = Provider::start();
    let rs = provider.builder(RESOURCE).build().unwrap();
    let answer = call(&rs, "this-token-was-never-issued").await;
    assert_invalid_token(&answer, "token is not active");
    assert!(answer.challenge.unwrap().contains("scope=\"mcp:tools\""));
}

#[tokio::test]
async fn revoked_token_is_inactive() {
    let provider = Provider::start();
    let rs = provider
        .builder(RESOURCE)
        .introspection(IntrospectionConfig::default().cache_ttl(Duration::ZERO))
        .build()
        .unwrap();
    let token = provider.mint(RESOURCE, "mcp:tools").await;
    assert_eq!(call(&rs, &token).await.status, 200);
    let revoked = reqwest::Client::new()
        .post(format!("{}/token/revocation", provider.issuer))
        .basic_auth(CLIENT_ID, Some(&provider.secret))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    assert_invalid_token(&call(&rs, &token).await, "token is not active");
}

#[tokio::test]
async fn expired_token_is_rejected() {
    let provider = Provider::start();
    // Resources ending in /short get 2-second tokens from server.js.
    let resource = "http://127.0.0.1:9/short";
    let rs = provider.builder(resource).build().unwrap();
    let token = provider.mint(resource, "mcp:tools").await;
    tokio::time::sleep(Duration::from_millis(3100)).await;
    // oidc-provider answers `active: false` for an expired token.
    assert_invalid_token(&call(&rs, &token).await, "token is not active");
}

#[tokio::test]
async fn token_for_another_resource_is_rejected() {
    let provider = Provider::start();
    let rs = provider.builder(RESOURCE).build().unwrap();
    let token = provider.mint("https://other.example.com/api", "mcp:tools").await;
    assert_invalid_token(&call(&rs, &token).await, "token not issued for this resource");
}

#[tokio::test]
async fn missing_scope_is_403_with_the_needed_scope() {
    let provider = Provider::start();
    let rs = provider
        .builder(RESOURCE)
        .required_scopes(["mcp:admin"])
        .build()
        .unwrap();
    let token = provider.mint(RESOURCE, "mcp:tools").await;
    for _ in 0..2 {
        // Fresh, then from the cache: the same answer.
        let answer = call(&rs, &token).await;
        assert_eq!(answer.status, 403, "{}", answer.body);
        let c = answer.challenge.unwrap();
        assert!(
            c.starts_with("Bearer error=\"insufficient_scope\", scope=\"mcp:admin\""),
            "{c}"
        );
    }
}

#[tokio::test]
async fn answers_are_cached_and_counted_at_the_provider() {
    let provider = Provider::start();
    let rs = provider.builder(RESOURCE).build().unwrap();
    let token = provider.mint(RESOURCE, "mcp:tools").await;
    let (before, _) = provider.counts().await;

    for _ in 0..10 {
        assert_eq!(call(&rs, &token).await.status, 200);
    }
    assert_eq!(
        provider.counts().await.0,
        before + 1,
        "a valid token is introspected once"
    );

    for _ in 0..20 {
        assert_eq!(call(&rs, "forged-token-flood").await.status, 401);
    }
    assert_eq!(
        provider.counts().await.0,
        before + 2,
        "a refused token is introspected once while negatively cached"
    );

    // One request in flight per token.
    let fresh = provider.mint(RESOURCE, "mcp:tools").await;
    let calls = (0..16).map(|_| call(&rs, &fresh));
    for answer in futures_util::future::join_all(calls).await {
        assert_eq!(answer.status, 200);
    }
    assert_eq!(
        provider.counts().await.0,
        before + 3,
        "concurrent requests share one introspection"
    );
}

#[tokio::test]
async fn negative_cache_expires() {
    let provider = Provider::start();
    let rs = provider
        .builder(RESOURCE)
        .introspection(IntrospectionConfig::default().negative_cache_ttl(Duration::from_secs(1)))
        .build()
        .unwrap();
    let (before, _) = provider.counts().await;
    assert_eq!(call(&rs, "not-a-token").await.status, 401);
    assert_eq!(call(&rs, "not-a-token").await.status, 401);
    assert_eq!(provider.counts().await.0, before + 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(call(&rs, "not-a-token").await.status, 401);
    assert_eq!(provider.counts().await.0, before + 2);
}

#[tokio::test]
async fn provider_down_is_503_and_cached_tokens_keep_working() {
    let mut provider = Provider::start();
    let rs = provider.builder(RESOURCE).build().unwrap();
    let known = provider.mint(RESOURCE, "mcp:tools").await;
    let unknown = provider.mint(RESOURCE, "mcp:tools").await;
    assert_eq!(call(&rs, &known).await.status, 200);

    provider.oidc.stop();

    let answer = call(&rs, &unknown).await;
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert!(answer.challenge.is_none());
    assert_eq!(answer.retry_after.as_deref(), Some("5"));
    assert!(answer.body.contains("temporarily_unavailable"), "{}", answer.body);
    // Not negatively cached: still 503, never 401, while the provider is down.
    assert_eq!(call(&rs, &unknown).await.status, 503);
    // A token verified before stays valid until its cache entry ends.
    assert_eq!(call(&rs, &known).await.status, 200);
}

#[tokio::test]
async fn wrong_client_secret_is_503_not_401() {
    let provider = Provider::start();
    let wrong = ClientAuth::client_secret(CLIENT_ID, "not-the-secret").unwrap();
    let rs = ResourceServer::builder(
        RESOURCE,
        Issuer::introspection(&provider.issuer, provider.introspection_endpoint(), wrong),
    )
    .build()
    .unwrap();
    let token = provider.mint(RESOURCE, "mcp:tools").await;
    assert_eq!(call(&rs, &token).await.status, 503);
}

#[tokio::test]
async fn client_secret_from_a_file() {
    let provider = Provider::start();
    let dir = std::env::temp_dir().join(format!("rmcp-guard-introspection-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("client_secret");
    std::fs::write(&path, format!("{}\n", provider.secret)).unwrap();
    let auth = ClientAuth::client_secret_file(CLIENT_ID, &path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let rs = ResourceServer::builder(
        RESOURCE,
        Issuer::introspection(&provider.issuer, provider.introspection_endpoint(), auth),
    )
    .build()
    .unwrap();
    let token = provider.mint(RESOURCE, "mcp:tools").await;
    assert_eq!(call(&rs, &token).await.status, 200);
}

#[tokio::test]
async fn jwt_of_a_jwt_issuer_never_reaches_introspection() {
    let provider = Provider::start();
    let jwt_issuer = TestIssuer::start().await.unwrap();
    let rs = ResourceServer::builder(
        RESOURCE,
        Issuer::with_jwks_uri(jwt_issuer.issuer(), jwt_issuer.jwks_uri()),
    )
    .issuer(provider.issuer_config())
    .required_scopes(["mcp:tools"])
    .build()
    .unwrap();
    assert_eq!(
        rs.issuers().collect::<Vec<_>>(),
        [jwt_issuer.issuer(), provider.issuer.as_str()]
    );
    let (before, _) = provider.counts().await;
    let jwt = jwt_issuer.token().audience(RESOURCE).scope("mcp:tools").sign();
    assert_eq!(call(&rs, &jwt).await.status, 200);
    // Refused on the JWT path: not retried at the provider.
    let expired = jwt_issuer
        .token()
        .audience(RESOURCE)
        .scope("mcp:tools")
        .expired()
        .sign();
    assert_invalid_token(&call(&rs, &expired).await, "token expired");
    assert_eq!(provider.counts().await.0, before);

    // An opaque token and a JWT of an unknown issuer go to the provider.
    let opaque = provider.mint(RESOURCE, "mcp:tools").await;
    assert_eq!(call(&rs, &opaque).await.status, 200);
    let stranger = TestIssuer::start().await.unwrap();
    let foreign = stranger.token().audience(RESOURCE).scope("mcp:tools").sign();
    assert_eq!(call(&rs, &foreign).await.status, 401);
    assert_eq!(provider.counts().await.0, before + 2);
}

#[test]
fn two_introspection_issuers_are_refused() {
    let auth = ClientAuth::client_secret("id", "secret").unwrap();
    let err = ResourceServer::builder(
        RESOURCE,
        Issuer::introspection(
            "https://a.example.com",
            "https://a.example.com/introspect",
            auth.clone(),
        ),
    )
    .issuer(Issuer::introspection(
        "https://b.example.com",
        "https://b.example.com/introspect",
        auth.clone(),
    ))
    .build()
    .unwrap_err();
    assert!(matches!(err, ConfigError::MultipleIntrospectionIssuers(..)), "{err}");
    let err = ResourceServer::builder(
        RESOURCE,
        Issuer::introspection("https://a.example.com", "http://a.example.com/introspect", auth),
    )
    .build()
    .unwrap_err();
    assert!(matches!(err, ConfigError::InsecureUrl { .. }), "{err}");
}

#[tokio::test]
async fn client_credentials_are_cached_at_the_real_server() {
    let provider = Provider::start();
    let client = provider.token_client();
    let request = DownstreamRequest::resource("https://api.example.com/").scopes(["mcp:tools"]);
    let (_, before) = provider.counts().await;
    let first = client.client_credentials(&request).await.unwrap();
    let second = client.client_credentials(&request).await.unwrap();
    assert_eq!(first.secret(), second.secret());
    assert_eq!(first.scopes(), ["mcp:tools"]);
    assert!(first.expires_at().is_some());
    assert_eq!(provider.counts().await.1, before + 1);
    let err = client
        .client_credentials(&DownstreamRequest::resource("not-a-uri"))
        .await;
    assert_eq!(err.unwrap_err(), ExchangeError::Refused("invalid_target".into()));
}

#[tokio::test]
async fn token_endpoint_is_discovered_from_the_real_server() {
    let provider = Provider::start();
    let client = TokenExchange::discover(&provider.issuer, provider.auth())
        .await
        .unwrap()
        .build()
        .unwrap();
    let token = client
        .client_credentials(&DownstreamRequest::resource(RESOURCE).scopes(["mcp:tools"]))
        .await
        .unwrap();
    let rs = provider.builder(RESOURCE).build().unwrap();
    assert_eq!(call(&rs, token.secret()).await.status, 200);

    let err = TokenExchange::discover("http://127.0.0.1:9/nothing-here", provider.auth())
        .await
        .unwrap_err();
    assert!(matches!(err, ConfigError::Discovery { .. }), "{err}");
}

// ---------------------------------------------------------------------------
// Introspection answers a real provider does not give: a fake endpoint.

async fn fake_introspection(answer: Value) -> (String, tokio::task::JoinHandle<()>) {
    let app = Router::new().route(
        "/introspect",
        post(move || {
            let answer = answer.clone();
            async move { Json(answer) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (format!("http://{addr}/introspect"), task)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

async fn fake_rs(answer: Value) -> ResourceServer {
    let (endpoint, _task) = fake_introspection(answer).await;
    ResourceServer::builder(
        RESOURCE,
        Issuer::introspection(
            "https://idp.example.com",
            endpoint,
            ClientAuth::client_secret("id", "secret").unwrap(),
        ),
    )
    .build()
    .unwrap()
}

#[tokio::test]
async fn active_but_expired_answer_is_rejected_as_expired() {
    let rs = fake_rs(json!({"active": true, "sub": "alice", "aud": RESOURCE, "exp": now() - 3600})).await;
    assert_invalid_token(&call(&rs, "t1").await, "token expired");
}

#[tokio::test]
async fn answer_without_exp_is_rejected() {
    let rs = fake_rs(json!({"active": true, "sub": "alice", "aud": RESOURCE})).await;
    assert_invalid_token(&call(&rs, "t2").await, "token has no expiry");
}

#[tokio::test]
async fn answer_from_another_issuer_is_rejected() {
    let rs = fake_rs(
        json!({"active": true, "sub": "alice", "aud": RESOURCE, "exp": now() + 60,
        "iss": "https://evil.example.com"}),
    )
    .await;
    assert_invalid_token(&call(&rs, "t3").await, "untrusted issuer");
}

#[tokio::test]
async fn sender_constrained_token_is_not_a_bearer_token() {
    // DPoP-bound (RFC 9449 section 6.2): only with the DPoP scheme and a proof by its key.
    let rs = fake_rs(
        json!({"active": true, "sub": "alice", "aud": RESOURCE, "exp": now() + 60,
        "token_type": "DPoP", "cnf": {"jkt": "x"}}),
    )
    .await;
    let answer = call(&rs, "t4").await;
    assert_eq!(answer.status, 401, "{}", answer.body);
    assert!(
        answer
            .body
            .contains("DPoP-bound token: present it with the DPoP scheme and a proof"),
        "{}",
        answer.body
    );
    // Another kind of token, or a DPoP one without its binding: not an access token here.
    for answer in [
        json!({"active": true, "sub": "alice", "aud": RESOURCE, "exp": now() + 60, "token_type": "N_A"}),
        json!({"active": true, "sub": "alice", "aud": RESOURCE, "exp": now() + 60, "token_type": "DPoP"}),
    ] {
        let rs = fake_rs(answer).await;
        assert_invalid_token(&call(&rs, "t5").await, "not an access token");
    }
    // An mTLS-bound token (RFC 8705): this server cannot check its binding.
    let rs = fake_rs(
        json!({"active": true, "sub": "alice", "aud": RESOURCE, "exp": now() + 60,
        "cnf": {"x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"}}),
    )
    .await;
    assert_invalid_token(&call(&rs, "t6").await, "unsupported token confirmation method");
}

#[tokio::test]
async fn distinct_new_tokens_are_bounded_in_flight() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (now_in, max_in) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (n, m) = (now_in.clone(), max_in.clone());
    let app = Router::new().route(
        "/introspect",
        post(move || {
            let (n, m) = (n.clone(), m.clone());
            async move {
                let current = n.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(current, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                n.fetch_sub(1, Ordering::SeqCst);
                Json(json!({"active": false}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let rs = ResourceServer::builder(
        RESOURCE,
        Issuer::introspection(
            "https://idp.example.com",
            format!("http://{addr}/introspect"),
            ClientAuth::client_secret("id", "secret").unwrap(),
        ),
    )
    .introspection(IntrospectionConfig::default().max_in_flight(3))
    .build()
    .unwrap();
    let tokens: Vec<String> = (0..24).map(|i| format!("forged-{i}")).collect();
    let calls = tokens.iter().map(|t| call(&rs, t));
    for answer in futures_util::future::join_all(calls).await {
        assert_eq!(answer.status, 401);
    }
    assert!(max_in.load(Ordering::SeqCst) <= 3, "{}", max_in.load(Ordering::SeqCst));
}

#[tokio::test]
async fn unreadable_answer_is_503() {
    let rs = fake_rs(json!(["not", "an", "object"])).await;
    assert_eq!(call(&rs, "t5").await.status, 503);
}

// ---------------------------------------------------------------------------
// Token exchange against a local RFC 8693 token endpoint.

#[derive(Clone, Debug)]
struct Seen {
    path: String,
    headers: Vec<(String, String)>,
    body: String,
}

#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<Seen>>>,
    issued: Arc<Mutex<u32>>,
    expires_in: Arc<Mutex<u64>>,
}

impl Recorder {
    fn record(&self, path: &str, headers: &HeaderMap, body: &str) {
        self.seen.lock().unwrap().push(Seen {
            path: path.to_owned(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
                .collect(),
            body: body.to_owned(),
        });
    }

    fn token_requests(&self) -> usize {
        self.seen.lock().unwrap().iter().filter(|s| s.path == "/token").count()
    }
}

const EXCHANGE_CLIENT: &str = "mcp-server";
const EXCHANGE_SECRET: &str = "exchange-client-secret";
const API_AUDIENCE: &str = "https://api.example.com";

/// The RFC 8693 token endpoint: checks client authentication and the
/// request, answers a fresh token for `API_AUDIENCE`, `invalid_target` for
/// anything else.
async fn token_endpoint(State(rec): State<Recorder>, headers: HeaderMap, body: String) -> axum::response::Response {
    rec.record("/token", &headers, &body);
    let form: HashMap<String, String> = url::form_urlencoded::parse(body.as_bytes()).into_owned().collect();
    use base64::Engine as _;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{EXCHANGE_CLIENT}:{EXCHANGE_SECRET}"))
    );
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(basic.as_str()) {
        return (StatusCode::UNAUTHORIZED, Json(json!({"error": "invalid_client"}))).into_response();
    }
    let ok = form.get("grant_type").map(String::as_str) == Some("urn:ietf:params:oauth:grant-type:token-exchange")
        && form.get("subject_token_type").map(String::as_str) == Some("urn:ietf:params:oauth:token-type:access_token")
        && form.get("subject_token").is_some_and(|t| !t.is_empty());
    if !ok {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "invalid_request"}))).into_response();
    }
    if form.get("audience").map(String::as_str) != Some(API_AUDIENCE) {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "invalid_target"}))).into_response();
    }
    let n = {
        let mut issued = rec.issued.lock().unwrap();
        *issued += 1;
        *issued
    };
    let expires_in = *rec.expires_in.lock().unwrap();
    Json(json!({
        "access_token": format!("downstream-token-{n}"),
        "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "token_type": "Bearer",
        "expires_in": expires_in,
        "scope": form.get("scope").cloned().unwrap_or_else(|| "tickets:read".to_owned()),
    }))
    .into_response()
}

async fn downstream_api(State(rec): State<Recorder>, headers: HeaderMap, body: String) -> &'static str {
    rec.record("/api", &headers, &body);
    "ok"
}

#[derive(Clone)]
struct App {
    audience: String,
    api: String,
}

/// The tool a guarded server would expose: exchange, call the API, report
/// the audience and scope obtained (never the token).
async fn call_downstream(State(app): State<App>, request: axum::extract::Request) -> axum::response::Response {
    let (parts, _) = request.into_parts();
    // What the `DownstreamTokens` extractor does inside an rmcp tool.
    let ext = &parts.extensions;
    let (Some(principal), Some(inbound), Some(exchange)) = (
        ext.get::<Principal>(),
        ext.get::<InboundToken>(),
        ext.get::<TokenExchange>(),
    ) else {
        return (StatusCode::BAD_GATEWAY, ExchangeError::Unauthenticated.code()).into_response();
    };
    let request = DownstreamRequest::audience(&app.audience);
    match exchange.exchange(principal, inbound, &request).await {
        Ok(token) => {
            let status = reqwest::Client::new()
                .get(&app.api)
                .header("authorization", token.authorization_header().unwrap())
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(status, 200);
            Json(json!({"aud": token.audience(), "scope": token.scopes().join(" ")})).into_response()
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.code()).into_response(),
    }
}

/// `POST /mcp` with `Authorization: Bearer {token}`, through `app`.
async fn post_with_bearer(app: Router, token: &str) -> axum::response::Response {
    app.oneshot(
        Request::post("/mcp")
            .header("authorization", format!("Bearer {token}"))
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await
    .unwrap()
}

struct ExchangeSetup {
    issuer: TestIssuer,
    rec: Recorder,
    as_addr: SocketAddr,
    exchange: TokenExchange,
    rs: ResourceServer,
}

async fn exchange_setup(exchange: impl FnOnce(String) -> TokenExchange) -> ExchangeSetup {
    let rec = Recorder::default();
    *rec.expires_in.lock().unwrap() = 300;
    let app = Router::new()
        .route("/token", post(token_endpoint))
        .route("/api", get(downstream_api))
        .with_state(rec.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let as_addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    let issuer = TestIssuer::start().await.unwrap();
    let rs = ResourceServer::builder(RESOURCE, Issuer::with_jwks_uri(issuer.issuer(), issuer.jwks_uri()))
        .build()
        .unwrap();
    let exchange = exchange(format!("http://{as_addr}/token"));
    ExchangeSetup {
        issuer,
        rec,
        as_addr,
        exchange,
        rs,
    }
}

fn exchange_client(endpoint: String) -> TokenExchange {
    TokenExchange::builder(
        endpoint,
        ClientAuth::client_secret(EXCHANGE_CLIENT, EXCHANGE_SECRET).unwrap(),
    )
    .build()
    .unwrap()
}

impl ExchangeSetup {
    async fn tool(&self, token: &str, audience: &str) -> (u16, String) {
        let app = Router::new()
            .route("/mcp", post(call_downstream))
            .with_state(App {
                audience: audience.to_owned(),
                api: format!("http://{}/api", self.as_addr),
            })
            .layer(axum::Extension(self.exchange.clone()))
            .layer(BearerAuthLayer::new(self.rs.clone()).keep_inbound_token());
        let response = post_with_bearer(app, token).await;
        let status = response.status().as_u16();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert!(!body.contains(token), "the inbound token is echoed");
        assert!(!body.contains("downstream-token-"), "the downstream token is returned");
        (status, body)
    }
}

#[tokio::test]
async fn exchange_success_is_cached_per_caller_and_audience() {
    let s = exchange_setup(exchange_client).await;
    let token = s.issuer.token().audience(RESOURCE).sign();
    let (status, body) = s.tool(&token, API_AUDIENCE).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["aud"], API_AUDIENCE);
    assert_eq!(v["scope"], "tickets:read");
    assert_eq!(s.tool(&token, API_AUDIENCE).await.0, 200);
    assert_eq!(s.rec.token_requests(), 1, "the second call reuses the downstream token");

    // Another caller's token never gets the first caller's downstream token.
    let bob = s.issuer.token().subject("bob").audience(RESOURCE).sign();
    assert_eq!(s.tool(&bob, API_AUDIENCE).await.0, 200);
    assert_eq!(s.rec.token_requests(), 2);
    let api_auth: Vec<String> = s
        .rec
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.path == "/api")
        .flat_map(|r| {
            r.headers
                .iter()
                .filter(|(k, _)| k == "authorization")
                .map(|(_, v)| v.clone())
        })
        .collect();
    assert_eq!(
        api_auth,
        [
            "Bearer downstream-token-1",
            "Bearer downstream-token-1",
            "Bearer downstream-token-2"
        ]
    );
}

#[tokio::test]
async fn exchange_refused_is_a_tool_error() {
    let s = exchange_setup(exchange_client).await;
    let token = s.issuer.token().audience(RESOURCE).sign();
    let (status, body) = s.tool(&token, "https://not-allowed.example.com").await;
    assert_eq!((status, body.as_str()), (502, "refused"));
    // Refusals are not cached: the next call asks again.
    s.tool(&token, "https://not-allowed.example.com").await;
    assert_eq!(s.rec.token_requests(), 2);
}

#[tokio::test]
async fn wrong_client_secret_is_unavailable() {
    let s = exchange_setup(|endpoint| {
        TokenExchange::builder(endpoint, ClientAuth::client_secret(EXCHANGE_CLIENT, "wrong").unwrap())
            .build()
            .unwrap()
    })
    .await;
    let token = s.issuer.token().audience(RESOURCE).sign();
    assert_eq!(s.tool(&token, API_AUDIENCE).await, (502, "unavailable".to_owned()));
}

#[tokio::test]
async fn exchanged_token_is_replaced_before_it_expires() {
    let s = exchange_setup(|endpoint| {
        TokenExchange::builder(
            endpoint,
            ClientAuth::client_secret(EXCHANGE_CLIENT, EXCHANGE_SECRET).unwrap(),
        )
        .refresh_margin(Duration::from_secs(1))
        .build()
        .unwrap()
    })
    .await;
    // Lives 2 s; replaced 1 s before: cached for about 1 s.
    *s.rec.expires_in.lock().unwrap() = 2;
    let token = s.issuer.token().audience(RESOURCE).sign();
    assert_eq!(s.tool(&token, API_AUDIENCE).await.0, 200);
    assert_eq!(s.tool(&token, API_AUDIENCE).await.0, 200);
    assert_eq!(s.rec.token_requests(), 1);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(s.tool(&token, API_AUDIENCE).await.0, 200);
    assert_eq!(s.rec.token_requests(), 2, "an almost expired token is exchanged again");
}

#[tokio::test]
async fn concurrent_exchanges_share_one_request() {
    let s = exchange_setup(exchange_client).await;
    let token = s.issuer.token().audience(RESOURCE).sign();
    let calls = (0..12).map(|_| s.tool(&token, API_AUDIENCE));
    for (status, _) in futures_util::future::join_all(calls).await {
        assert_eq!(status, 200);
    }
    assert_eq!(s.rec.token_requests(), 1);
}

#[tokio::test]
async fn inbound_token_leaves_only_as_subject_token_to_the_token_endpoint() {
    let s = exchange_setup(exchange_client).await;
    let token = s.issuer.token().audience(RESOURCE).sign();
    assert_eq!(s.tool(&token, API_AUDIENCE).await.0, 200);
    assert_eq!(s.tool(&token, "https://not-allowed.example.com").await.0, 502);

    let seen = s.rec.seen.lock().unwrap().clone();
    assert!(seen.iter().any(|r| r.path == "/api"), "the API was called");
    for request in &seen {
        for (name, value) in &request.headers {
            assert!(
                !value.contains(&token),
                "inbound token in header {name} to {}",
                request.path
            );
        }
        let form: Vec<(String, String)> = url::form_urlencoded::parse(request.body.as_bytes())
            .into_owned()
            .collect();
        let carrying: Vec<&str> = form
            .iter()
            .filter(|(_, v)| v.contains(&token))
            .map(|(k, _)| k.as_str())
            .collect();
        match request.path.as_str() {
            "/token" => assert_eq!(carrying, ["subject_token"], "only as subject_token"),
            other => {
                assert!(!request.body.contains(&token), "inbound token in the body to {other}");
            }
        }
    }
    assert_eq!(seen.iter().filter(|r| r.path == "/token").count(), 2);
    assert!(!format!("{seen:?}").is_empty());
}

#[tokio::test]
async fn without_keep_inbound_token_the_token_is_gone_after_verification() {
    let setup = exchange_setup(exchange_client).await;
    let token = setup.issuer.token().audience(RESOURCE).sign();
    let app = Router::new()
        .route(
            "/mcp",
            post(|request: axum::extract::Request| async move {
                let ext = request.extensions();
                let kept = ext.get::<InboundToken>().is_some();
                let header = request.headers().contains_key("authorization");
                format!("{} {kept} {header}", ext.get::<Principal>().is_some())
            }),
        )
        .layer(BearerAuthLayer::new(setup.rs.clone()));
    let response = post_with_bearer(app, &token).await;
    let body = axum::body::to_bytes(response.into_body(), 1 << 10).await.unwrap();
    assert_eq!(&body[..], b"true false false");
}
