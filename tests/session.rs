//! Session binding over real HTTP: an `Mcp-Session-Id` belongs to the
//! principal (issuer, kind, subject, client id) that created it, every request
//! on it is still authenticated, a principal holds a bounded number of
//! sessions, and an event stream ends when its token expires.

mod common;

use common::{Mode, Reply, client, echo_call, mcp_post, start_guarded_with};
use rmcp_guard::oauth::{BearerAuthLayer, Issuer};
use rmcp_guard_testkit::TestIssuer;
use serde_json::json;

fn initialize() -> serde_json::Value {
    json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "test", "version": "0"}}})
}

/// Initialize a session as the bearer of `token`; returns the session id.
async fn open_session(http: &reqwest::Client, url: &str, token: &str) -> String {
    let reply = Reply::read(
        mcp_post(http, url, &initialize())
            .bearer_auth(token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let session = reply.headers["mcp-session-id"].to_str().unwrap().to_owned();
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let ack = mcp_post(http, url, &initialized)
        .bearer_auth(token)
        .header("mcp-session-id", &session)
        .header("mcp-protocol-version", "2025-06-18")
        .send()
        .await
        .unwrap();
    assert!(ack.status().is_success(), "{}", ack.status());
    session
}

async fn call_on(http: &reqwest::Client, url: &str, token: &str, session: &str) -> Reply {
    Reply::read(
        mcp_post(http, url, &echo_call("hi"))
            .bearer_auth(token)
            .header("mcp-session-id", session)
            .header("mcp-protocol-version", "2025-06-18")
            .send()
            .await
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn another_principals_session_is_not_found() {
    let issuer = TestIssuer::start().await.unwrap();
    let server = start_guarded_with(Issuer::discover(issuer.issuer()), Mode::Sessions, |b| b).await;
    let http = client();
    let alice = issuer
        .token()
        .subject("alice")
        .audience(&server.url)
        .scope("mcp:tools")
        .sign();
    let mallory = issuer
        .token()
        .subject("mallory")
        .audience(&server.url)
        .scope("mcp:tools")
        .sign();

    let session = open_session(&http, &server.url, &alice).await;
    let own = call_on(&http, &server.url, &alice, &session).await;
    assert_eq!(own.status, 200, "{}", own.body);
    assert!(own.body.contains("hi"), "{}", own.body);

    // Mallory holds a valid token of her own and Alice's session id.
    let hijack = call_on(&http, &server.url, &mallory, &session).await;
    assert_eq!(hijack.status, 404, "{}", hijack.body);
    assert!(!hijack.body.contains("hi"), "{}", hijack.body);

    // Nor can she close it.
    let delete = http
        .delete(&server.url)
        .bearer_auth(&mallory)
        .header("mcp-session-id", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), 404);

    // Alice's session is untouched.
    let still = call_on(&http, &server.url, &alice, &session).await;
    assert_eq!(still.status, 200, "{}", still.body);

    // A made-up session id is not found either (fail closed).
    let unknown = call_on(&http, &server.url, &alice, "not-a-session").await;
    assert_eq!(unknown.status, 404);

    // Alice closes her own session; the id is then dead for her too.
    let delete = http
        .delete(&server.url)
        .bearer_auth(&alice)
        .header("mcp-session-id", &session)
        .send()
        .await
        .unwrap();
    assert!(delete.status().is_success(), "{}", delete.status());
    let after = call_on(&http, &server.url, &alice, &session).await;
    assert_eq!(after.status, 404);
}

#[tokio::test]
async fn an_expired_token_does_not_ride_on_a_session() {
    let issuer = TestIssuer::start().await.unwrap();
    let server = start_guarded_with(Issuer::discover(issuer.issuer()), Mode::Sessions, |b| b).await;
    let http = client();
    let fresh = issuer
        .token()
        .subject("alice")
        .audience(&server.url)
        .scope("mcp:tools")
        .sign();
    let session = open_session(&http, &server.url, &fresh).await;

    let expired = issuer
        .token()
        .subject("alice")
        .audience(&server.url)
        .scope("mcp:tools")
        .expired()
        .sign();
    let reply = call_on(&http, &server.url, &expired, &session).await;
    assert_eq!(reply.status, 401);
    assert!(reply.challenge().unwrap().get("error") == Some("invalid_token"));

    let none = mcp_post(&http, &server.url, &echo_call("hi"))
        .header("mcp-session-id", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 401);
}

#[tokio::test]
async fn a_foreign_origin_is_refused_and_the_resource_origin_accepted() {
    let issuer = TestIssuer::start().await.unwrap();
    let server = start_guarded_with(Issuer::discover(issuer.issuer()), Mode::Stateless, |b| b).await;
    let http = client();
    let token = issuer.token().audience(&server.url).scope("mcp:tools").sign();
    let foreign = mcp_post(&http, &server.url, &echo_call("hi"))
        .bearer_auth(&token)
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 403);
    let own = mcp_post(&http, &server.url, &echo_call("hi"))
        .bearer_auth(&token)
        .header("origin", &server.base)
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), 200);
}

#[tokio::test]
async fn tools_never_see_the_bearer_token() {
    use tower::{Layer, ServiceExt, service_fn};
    let issuer = TestIssuer::start().await.unwrap();
    let rs = rmcp_guard::oauth::ResourceServer::builder("http://127.0.0.1:9/mcp", Issuer::discover(issuer.issuer()))
        .build()
        .unwrap();
    let token = issuer.token().audience("http://127.0.0.1:9/mcp").sign();
    // Twice: the first request verifies, the second is answered from the cache.
    for _ in 0..2 {
        let inner = service_fn(|req: http::Request<String>| async move {
            let seen = req.headers().get("authorization").is_some();
            let principal = req.extensions().get::<rmcp_guard::Principal>().is_some();
            Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::from(
                format!("authorization={seen} principal={principal}"),
            ))))
        });
        let request = http::Request::post("/mcp")
            .header("authorization", format!("Bearer {token}"))
            .body(String::new())
            .unwrap();
        let response = BearerAuthLayer::new(rs.clone())
            .layer(inner)
            .oneshot(request)
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(body, "authorization=false principal=true");
    }
}

// ---------------------------------------------------------------------------
// Issue 10: bounds per principal, sessions bound to the client, nothing
// unbound reaching rmcp's stateless paths, streams ending with their token.

fn token_for(issuer: &TestIssuer, url: &str, subject: &str, client_id: &str) -> String {
    issuer
        .token()
        .subject(subject)
        .client_id(client_id)
        .audience(url)
        .scope("mcp:tools")
        .sign()
}

/// A GET of the session's event stream.
async fn open_stream(http: &reqwest::Client, url: &str, token: &str, session: &str) -> reqwest::Response {
    http.get(url)
        .bearer_auth(token)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", session)
        .header("mcp-protocol-version", "2025-06-18")
        .send()
        .await
        .unwrap()
}

async fn delete(http: &reqwest::Client, url: &str, token: &str, session: &str) -> u16 {
    http.delete(url)
        .bearer_auth(token)
        .header("mcp-session-id", session)
        .header("mcp-protocol-version", "2025-06-18")
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn one_principal_holds_at_most_sixteen_sessions_and_never_evicts_anothers() {
    use std::sync::Arc;

    use rmcp::transport::streamable_http_server::StreamableHttpService;
    use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
    use rmcp_guard::oauth::ResourceServer;
    use rmcp_guard::session::SessionBindingLayer;

    // The stack `Guard` builds, with the rmcp session manager in our hands.
    let issuer = TestIssuer::start().await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    let rs = ResourceServer::builder(url.clone(), Issuer::discover(issuer.issuer()))
        .required_scopes([common::SCOPE])
        .build()
        .unwrap();
    let manager = Arc::new(LocalSessionManager::default());
    let config = rs.streamable_http_config().with_sse_keep_alive(None);
    let cancel = config.cancellation_token.clone();
    let service = StreamableHttpService::new(|| Ok(common::Tools::new()), manager.clone(), config);
    let app = axum::Router::new()
        .route_service("/mcp", service)
        .layer(SessionBindingLayer::default().session_manager(manager.clone()))
        .layer(BearerAuthLayer::new(rs));
    let server = tokio::spawn(async move {
        let _ = rmcp_guard::serve(listener, app).await;
    });

    let http = client();
    let alice = token_for(&issuer, &url, "alice", "app");
    let bob = token_for(&issuer, &url, "bob", "app");
    let bobs = open_session(&http, &url, &bob).await;
    let mut sessions = Vec::new();
    for _ in 0..40 {
        sessions.push(open_session(&http, &url, &alice).await);
    }

    // rmcp holds Alice's newest 16 and Bob's one: the rest were closed there.
    assert_eq!(manager.sessions.read().await.len(), 17);
    for (i, session) in sessions.iter().enumerate() {
        let reply = call_on(&http, &url, &alice, session).await;
        let expected = if i < 24 { 404 } else { 200 };
        assert_eq!(reply.status, expected, "session {i}: {}", reply.body);
    }
    // Bob's session, opened before all of Alice's, was never touched.
    let reply = call_on(&http, &url, &bob, &bobs).await;
    assert_eq!(reply.status, 200, "{}", reply.body);

    cancel.cancel();
    server.abort();
}

#[tokio::test]
async fn a_session_belongs_to_the_client_that_opened_it() {
    let issuer = TestIssuer::start().await.unwrap();
    let server = start_guarded_with(Issuer::discover(issuer.issuer()), Mode::Sessions, |b| b).await;
    let http = client();
    let trusted = token_for(&issuer, &server.url, "alice", "trusted-app");
    let other = token_for(&issuer, &server.url, "alice", "other-app");
    let session = open_session(&http, &server.url, &trusted).await;

    // The same user through another client: not her session.
    let post = call_on(&http, &server.url, &other, &session).await;
    assert_eq!(post.status, 404, "{}", post.body);
    assert_eq!(open_stream(&http, &server.url, &other, &session).await.status(), 404);
    assert_eq!(delete(&http, &server.url, &other, &session).await, 404);

    let own = call_on(&http, &server.url, &trusted, &session).await;
    assert_eq!(own.status, 200, "{}", own.body);
}

/// The kind of principal the bearer layer makes of `token`.
async fn kind_of(rs: &rmcp_guard::oauth::ResourceServer, token: &str) -> String {
    use tower::{Layer, ServiceExt, service_fn};
    let inner = service_fn(|req: http::Request<String>| async move {
        let kind = req
            .extensions()
            .get::<rmcp_guard::Principal>()
            .map_or("none", |p| p.kind().as_str());
        Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::from(kind))))
    });
    let request = http::Request::post("/mcp")
        .header("authorization", format!("Bearer {token}"))
        .body(String::new())
        .unwrap();
    let response = BearerAuthLayer::new(rs.clone())
        .layer(inner)
        .oneshot(request)
        .await
        .unwrap();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

#[tokio::test]
async fn a_jwt_whose_subject_is_its_client_is_a_client_principal() {
    let issuer = TestIssuer::start().await.unwrap();
    let server = start_guarded_with(Issuer::discover(issuer.issuer()), Mode::Stateless, |b| b).await;
    let user = token_for(&issuer, &server.url, "alice", "app");
    assert_eq!(kind_of(&server.rs, &user).await, "user");
    let client = token_for(&issuer, &server.url, "ci-bot", "ci-bot");
    assert_eq!(kind_of(&server.rs, &client).await, "client");
    let azp = issuer
        .token()
        .subject("ci-bot")
        .claim("azp", json!("ci-bot"))
        .audience(&server.url)
        .scope("mcp:tools")
        .sign();
    assert_eq!(kind_of(&server.rs, &azp).await, "client");
}

#[tokio::test]
async fn a_client_credentials_token_named_like_a_user_is_not_that_user() {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use axum::routing::post;
    use rmcp_guard::oauth::ClientAuth;

    // An RFC 7662 endpoint answering per token: a user's token for Alice,
    // and client `alice`'s own client-credentials token (no `sub`).
    let answers: Arc<Mutex<HashMap<String, serde_json::Value>>> = Arc::default();
    let table = answers.clone();
    let app = axum::Router::new().route(
        "/introspect",
        post(move |form: String| {
            let table = table.clone();
            async move {
                let token = form
                    .split('&')
                    .find_map(|pair| pair.strip_prefix("token="))
                    .unwrap_or_default();
                let answer = table.lock().unwrap().get(token).cloned();
                axum::Json(answer.unwrap_or_else(|| json!({"active": false})))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}/introspect", listener.local_addr().unwrap());
    let introspection = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let issuer = Issuer::introspection(
        "https://idp.example.com",
        endpoint,
        ClientAuth::client_secret("rs", "secret").unwrap(),
    );
    let server = start_guarded_with(issuer, Mode::Sessions, |b| b).await;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 300;
    answers.lock().unwrap().extend([
        (
            "user-alice".to_owned(),
            json!({"active": true, "sub": "alice", "client_id": "webapp", "aud": server.url,
                "exp": exp, "scope": "mcp:tools"}),
        ),
        (
            "client-alice".to_owned(),
            json!({"active": true, "client_id": "alice", "aud": server.url, "exp": exp, "scope": "mcp:tools"}),
        ),
    ]);

    assert_eq!(kind_of(&server.rs, "user-alice").await, "user");
    assert_eq!(kind_of(&server.rs, "client-alice").await, "client");
    let http = client();
    let session = open_session(&http, &server.url, "user-alice").await;
    let hijack = call_on(&http, &server.url, "client-alice", &session).await;
    assert_eq!(hijack.status, 404, "{}", hijack.body);
    assert_eq!(
        open_stream(&http, &server.url, "client-alice", &session).await.status(),
        404
    );
    assert_eq!(delete(&http, &server.url, "client-alice", &session).await, 404);
    let own = call_on(&http, &server.url, "user-alice", &session).await;
    assert_eq!(own.status, 200, "{}", own.body);
    introspection.abort();
}

#[tokio::test]
async fn a_get_or_delete_without_a_session_id_never_reaches_rmcp() {
    let issuer = TestIssuer::start().await.unwrap();
    let server = start_guarded_with(Issuer::discover(issuer.issuer()), Mode::Sessions, |b| b).await;
    let http = client();
    let token = token_for(&issuer, &server.url, "alice", "app");
    // A resumption of MCP 2026-07-28: rmcp would take it to its stateless
    // replay path, bound to no one.
    let replay = Reply::read(
        http.get(&server.url)
            .bearer_auth(&token)
            .header("accept", "text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .header("last-event-id", "0")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(replay.status, 400, "{}", replay.body);
    assert!(replay.body.contains("Mcp-Session-Id"), "{}", replay.body);
    let delete = http.delete(&server.url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(delete.status(), 400);
}

#[tokio::test]
async fn an_event_stream_ends_when_its_token_expires() {
    use std::time::Duration;

    let issuer = TestIssuer::start().await.unwrap();
    let server = start_guarded_with(Issuer::discover(issuer.issuer()), Mode::Sessions, |b| b).await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let short = issuer
        .token()
        .subject("alice")
        .audience(&server.url)
        .scope("mcp:tools")
        .expires_in(Duration::from_secs(3))
        .sign();
    let session = open_session(&http, &server.url, &short).await;
    let mut stream = open_stream(&http, &server.url, &short, &session).await;
    assert_eq!(stream.status(), 200);
    assert!(
        stream.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    // The server sends nothing on this stream (no keep-alive): it stays open
    // until the token expires. A generous hang detector, not a timing claim.
    let ended = tokio::time::timeout(Duration::from_secs(60), async {
        while stream.chunk().await.expect("the stream ends cleanly").is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "the event stream outlived its token");
}
