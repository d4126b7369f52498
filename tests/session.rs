//! Session binding over real HTTP: an `Mcp-Session-Id` belongs to the
//! principal that created it, and every request on it is still authenticated.

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
