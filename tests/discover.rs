//! What the guarded server advertises, over real HTTP: `server/discover`
//! (2026-07-28) and `initialize` (2025-11-25) carry the client credentials
//! extension when the resource server accepts client-credentials tokens
//! (the default), and not when it refuses them; the guard never removes a
//! capability the inner handler advertises.

mod common;

use common::{Mode, start_guarded, start_guarded_with, start_unguarded, token_for};
use rmcp_guard::advertise::CLIENT_CREDENTIALS_EXTENSION;
use rmcp_guard::oauth::Issuer;
use rmcp_guard_testkit::{McpClient, Protocol, TestIssuer};
use serde_json::{Value, json};

/// The capabilities of `server/discover`, as JSON.
async fn discovered(url: &str, token: Option<String>) -> Value {
    let mut connect = McpClient::connect(url, Protocol::V2026_07_28);
    if let Some(token) = token {
        connect = connect.bearer(token);
    }
    let client = connect.send().await.expect("connect (2026-07-28)");
    let result = client.discover().await.expect("server/discover");
    serde_json::to_value(&result.capabilities).expect("capabilities as JSON")
}

/// The capabilities of the `initialize` answer (2025-11-25), as JSON.
async fn initialized(url: &str, token: String) -> Value {
    let client = McpClient::connect(url, Protocol::V2025_11_25)
        .bearer(token)
        .send()
        .await
        .expect("initialize (2025-11-25)");
    client.initialize_result().expect("an initialize result")["capabilities"].clone()
}

fn client_credentials(capabilities: &Value) -> Option<&Value> {
    capabilities.pointer(&format!(
        "/extensions/{}",
        CLIENT_CREDENTIALS_EXTENSION.replace('~', "~0").replace('/', "~1")
    ))
}

#[tokio::test]
async fn discover_and_initialize_advertise_client_credentials_by_default() {
    let issuer = TestIssuer::start().await.expect("issuer");
    let server = start_guarded(&issuer).await;
    assert!(server.rs.accepts_client_credentials(), "the default accepts them");
    let token = token_for(&issuer, &server).sign();

    let discover = discovered(&server.url, Some(token.clone())).await;
    assert_eq!(client_credentials(&discover), Some(&json!({})), "{discover}");
    let initialize = initialized(&server.url, token).await;
    assert_eq!(client_credentials(&initialize), Some(&json!({})), "{initialize}");
}

#[tokio::test]
async fn refusing_client_credentials_is_not_advertised_and_refuses_their_tokens() {
    let issuer = TestIssuer::start().await.expect("issuer");
    let server = start_guarded_with(
        Issuer::with_jwks_uri(issuer.issuer(), issuer.jwks_uri()),
        Mode::Stateless,
        |b| b.accept_client_credentials(false),
    )
    .await;
    let user = token_for(&issuer, &server).sign();

    let discover = discovered(&server.url, Some(user.clone())).await;
    assert_eq!(client_credentials(&discover), None, "{discover}");
    let initialize = initialized(&server.url, user).await;
    assert_eq!(client_credentials(&initialize), None, "{initialize}");

    // A token a client obtained for itself (sub = client_id) is refused.
    let machine = token_for(&issuer, &server).subject("ci-bot").client_id("ci-bot").sign();
    let refused = McpClient::connect(&server.url, Protocol::V2026_07_28)
        .bearer(machine)
        .send()
        .await
        .expect("connect")
        .discover()
        .await
        .expect_err("a client-credentials token is refused");
    assert_eq!(refused.status(), Some(http::StatusCode::UNAUTHORIZED), "{refused}");
    let challenge = refused.www_authenticate().unwrap_or_default();
    assert!(challenge.contains("invalid_token"), "{challenge}");
}

#[tokio::test]
async fn the_guard_keeps_every_capability_the_handler_advertises() {
    let issuer = TestIssuer::start().await.expect("issuer");
    let server = start_guarded(&issuer).await;
    let plain = start_unguarded(Mode::Stateless).await;
    let guarded = discovered(&server.url, Some(token_for(&issuer, &server).sign())).await;
    let unguarded = discovered(&plain.url, None).await;
    let (Value::Object(guarded), Value::Object(unguarded)) = (&guarded, &unguarded) else {
        panic!("capabilities are objects: {guarded} / {unguarded}");
    };
    assert!(!unguarded.is_empty(), "the handler advertises something");
    for (name, value) in unguarded {
        if name == "extensions" {
            for (id, settings) in value.as_object().into_iter().flatten() {
                assert_eq!(guarded["extensions"].get(id), Some(settings), "extension {id}");
            }
        } else {
            assert_eq!(guarded.get(name), Some(value), "capability {name}");
        }
    }
}
