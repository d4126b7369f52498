//! rmcp's own Streamable HTTP client through the guard: what an MCP client
//! author sees with a good token, no token, or a bad one.

mod common;

use std::time::Duration;

use common::*;
use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp_guard::AuthError;
use rmcp_guard::oauth::Issuer;
use rmcp_guard_testkit::TestIssuer;
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(20);

fn transport(url: &str, token: Option<&str>) -> StreamableHttpClientTransport<reqwest::Client> {
    let mut config = StreamableHttpClientTransportConfig::with_uri(url.to_owned());
    if let Some(token) = token {
        config = config.auth_header(token.to_owned());
    }
    StreamableHttpClientTransport::from_config(config)
}

async fn session_server(issuer: &TestIssuer) -> GuardedServer {
    start_guarded_with(
        Issuer::with_jwks_uri(issuer.issuer(), issuer.jwks_uri()),
        Mode::Sessions,
        |b| b,
    )
    .await
}

async fn list_and_call(server: &GuardedServer, token: &str, issuer: &TestIssuer) {
    let client = tokio::time::timeout(TIMEOUT, ().serve(transport(&server.url, Some(token))))
        .await
        .expect("handshake does not hang")
        .expect("handshake succeeds with a valid token");

    let tools = client.list_all_tools().await.expect("tools/list");
    let mut names: Vec<String> = tools.iter().map(|t| t.name.to_string()).collect();
    names.sort();
    assert_eq!(names, ["echo", "whoami"]);

    let result = client
        .call_tool(CallToolRequestParams::new("whoami"))
        .await
        .expect("tools/call whoami");
    let text = &result.content[0].as_text().expect("text content").text;
    let who: Value = serde_json::from_str(text).unwrap();
    assert_eq!(who["subject"], "carol");
    assert_eq!(who["issuer"], issuer.issuer());
    assert_eq!(who["scopes"], json!([SCOPE]));

    let result = client
        .call_tool(
            CallToolRequestParams::new("echo")
                .with_arguments(json!({"text": "through the guard"}).as_object().unwrap().clone()),
        )
        .await
        .expect("tools/call echo");
    assert_eq!(result.content[0].as_text().unwrap().text, "through the guard");

    client.cancel().await.expect("client closes");
}

#[tokio::test]
async fn rmcp_client_with_a_valid_token_lists_and_calls_tools() {
    let issuer = TestIssuer::start().await.unwrap();
    let server = session_server(&issuer).await;
    let token = token_for(&issuer, &server).subject("carol").sign();
    list_and_call(&server, &token, &issuer).await;
}

#[tokio::test]
async fn rmcp_client_works_against_a_stateless_guarded_server() {
    let issuer = TestIssuer::start().await.unwrap();
    let server = start_guarded(&issuer).await;
    let token = token_for(&issuer, &server).subject("carol").sign();
    list_and_call(&server, &token, &issuer).await;
}

#[tokio::test]
async fn rmcp_client_without_a_token_is_refused_with_the_challenge() {
    let issuer = TestIssuer::start().await.unwrap();
    let server = session_server(&issuer).await;
    let error = tokio::time::timeout(TIMEOUT, ().serve(transport(&server.url, None)))
        .await
        .expect("handshake does not hang")
        .expect_err("no token, no session");
    let expected = server.rs.challenges().header(&AuthError::MissingToken).unwrap();
    let challenge = error
        .auth_challenge()
        .unwrap_or_else(|| panic!("no challenge in {error:?}"));
    assert_eq!(challenge, expected);
    assert!(error.is_authorization_required());
    assert_eq!(issuer.jwks_fetches(), 0, "no token, no key fetch");
}

#[tokio::test]
async fn rmcp_client_with_an_expired_token_is_refused() {
    let issuer = TestIssuer::start().await.unwrap();
    let server = session_server(&issuer).await;
    let token = token_for(&issuer, &server).expired().sign();
    let error = tokio::time::timeout(TIMEOUT, ().serve(transport(&server.url, Some(&token))))
        .await
        .expect("handshake does not hang")
        .expect_err("an expired token gets no session");
    let shown = format!("{error:?} {error}");
    assert!(!shown.contains(&token), "the error does not carry the token");
    let challenge = error
        .auth_challenge()
        .unwrap_or_else(|| panic!("no challenge in {error:?}"));
    let parsed = Challenge::parse(challenge);
    assert_eq!(parsed.get("error"), Some("invalid_token"));
    assert_eq!(parsed.get("error_description"), Some("token expired"));
    assert_eq!(parsed.get("resource_metadata"), Some(server.metadata_url()));
}

#[tokio::test]
async fn rmcp_client_with_insufficient_scope_learns_the_needed_scope() {
    let issuer = TestIssuer::start().await.unwrap();
    let server = session_server(&issuer).await;
    let token = token_for(&issuer, &server).scope("mcp:read").sign();
    let error = tokio::time::timeout(TIMEOUT, ().serve(transport(&server.url, Some(&token))))
        .await
        .expect("handshake does not hang")
        .expect_err("a token without the required scope gets no session");
    assert!(!format!("{error:?} {error}").contains(&token));
    let challenge = error
        .auth_challenge()
        .unwrap_or_else(|| panic!("no challenge in {error:?}"));
    let parsed = Challenge::parse(challenge);
    assert_eq!(parsed.get("error"), Some("insufficient_scope"));
    assert_eq!(parsed.get("scope"), Some(SCOPE));
    assert_eq!(parsed.get("resource_metadata"), Some(server.metadata_url()));
}
