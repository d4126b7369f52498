//! End to end with a third-party authorization server: npm `oidc-provider`
//! (pinned by `tests/oidc-provider/package-lock.json`), configured with RFC
//! 8707 resource indicators and RFC 9068 JWT access tokens.
//!
//! Tokens are obtained with the **client credentials grant** (a grant the
//! provider supports without a browser or interaction endpoints): the token
//! request names the resource, and the provider writes it into `aud`. The
//! guarded server trusts the provider through OpenID Connect discovery (it
//! serves no RFC 8414 document, so this also covers the fallback) and
//! validates the tokens with the provider's own JWKS.
//!
//! Needs Node 20+ and `npm ci --prefix tests/oidc-provider` (`.ci/run` does
//! both); without them the test fails and says what to run.

mod common;
mod support;

use base64::Engine as _;
use common::{Mode, call_echo, start_guarded_with};
use rmcp_guard::oauth::Issuer;
use support::oidc::OidcProvider;

const CLIENT_ID: &str = "rmcp-guard-third-party";
const CLIENT_SECRET: &str = "third-party-test-secret-not-used-anywhere-else";

/// `node tests/oidc-provider/server.js` minting JWT access tokens; killed on drop.
struct Provider {
    _oidc: OidcProvider,
    issuer: String,
}

impl Provider {
    fn start() -> Provider {
        let oidc = OidcProvider::start(CLIENT_ID, CLIENT_SECRET, &[("ACCESS_TOKEN_FORMAT", "jwt")]);
        let issuer = oidc.issuer.clone();
        Provider { _oidc: oidc, issuer }
    }

    async fn token_for(&self, resource: &str, scope: &str) -> String {
        let response = common::client()
            .post(format!("{}/token", self.issuer))
            .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!(
                "grant_type=client_credentials&scope={}&resource={}",
                scope.replace(' ', "%20"),
                resource.replace(':', "%3A").replace('/', "%2F")
            ))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(status, 200, "{body}");
        body["access_token"].as_str().unwrap().to_owned()
    }
}

fn jose_header(token: &str) -> serde_json::Value {
    let header = token.split('.').next().unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap()
}

#[tokio::test]
async fn oidc_provider_jwt_for_our_resource_is_accepted_and_for_another_refused() {
    let provider = Provider::start();
    let server = start_guarded_with(Issuer::discover(&provider.issuer), Mode::Stateless, |b| b).await;

    let ours = provider.token_for(&server.url, "mcp:tools").await;
    // A real RFC 9068 access token, not an opaque one.
    assert_eq!(ours.split('.').count(), 3, "expected a JWT");
    assert_eq!(jose_header(&ours)["typ"], "at+jwt");
    let reply = call_echo(&server.url, &ours, "hello from oidc-provider").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.tool_text(), "hello from oidc-provider");

    // Same provider, same client, validly signed: but minted for another
    // resource. RFC 8707 audience binding refuses it (no token passthrough).
    let theirs = provider.token_for("https://other.example/mcp", "mcp:tools").await;
    let reply = call_echo(&server.url, &theirs, "x").await;
    assert_eq!(reply.status, 401, "{}", reply.body);
    let challenge = reply.challenge().expect("challenge");
    assert_eq!(challenge.get("error"), Some("invalid_token"));
    assert_eq!(
        challenge.get("error_description"),
        Some("token not issued for this resource")
    );
    assert!(!reply.body.contains(&theirs));

    // Without the required scope: 403 naming it.
    let unscoped = provider.token_for(&server.url, "mcp:admin").await;
    let reply = call_echo(&server.url, &unscoped, "x").await;
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert_eq!(reply.challenge().unwrap().get("scope"), Some("mcp:tools"));
}
