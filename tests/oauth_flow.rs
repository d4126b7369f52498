//! The whole MCP authorization flow, end to end, with software this project
//! did not write on the client side: rmcp's own client with its `auth`
//! feature (`OAuthState`, `AuthorizationManager`, `AuthClient`).
//!
//! The server is shaped like `examples/quickstart.rs`: a guarded rmcp server
//! on `127.0.0.1:0` that trusts the in-process [`DevAuthServer`] through
//! discovery. The client starts from nothing but the MCP URL:
//! 401 challenge -> RFC 9728 metadata -> RFC 8414 metadata -> RFC 7591
//! registration -> PKCE S256 authorization (driven with reqwest, redirects not
//! followed: `code`, `state` and `iss` are read from the `Location`) -> token
//! -> tools/list and tools/call.
//!
//! Step-up: the library has no HTTP-level per-tool scope check yet (the
//! policy engine's denials are JSON-RPC errors), so the test server puts a
//! small middleware between the bearer layer and rmcp that answers a
//! `tools/call` of `admin_report` without `mcp:admin` with the guard's own
//! 403 `insufficient_scope` rejection ([`ResourceServer::reject`]). rmcp's
//! client re-authorizes with the scope from that challenge
//! (`request_scope_upgrade`) and the retried call succeeds on the same session.
//!
//! The negative tests drive the authorization server with plain reqwest.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::model::{CallToolRequestParams, ServerCapabilities, ServerConfig};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::auth::{
    AuthClient, AuthorizationCallback, AuthorizationRequest, OAuthState, WWWAuthenticateParams,
};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, ServerHandler, ServiceExt, tool, tool_handler, tool_router};
use rmcp_guard::AuthError;
use rmcp_guard::Principal;
use rmcp_guard::oauth::{BearerAuthLayer, Issuer, ResourceServer};
use rmcp_guard::session::SessionBindingLayer;
use rmcp_guard_testkit::dev::DevAuthServer;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tokio::task::JoinHandle;

/// Bound on every network wait.
const TIMEOUT: Duration = Duration::from_secs(20);
/// The client's redirect URI. Never contacted: redirects are not followed.
const REDIRECT_URI: &str = "http://127.0.0.1:9/callback";
/// The scope every request needs.
const TOOLS: &str = "mcp:tools";
/// The extra scope `admin_report` needs.
const ADMIN: &str = "mcp:admin";

// ---------------------------------------------------------------------------
// The quickstart-shaped server.

#[derive(Clone)]
struct Tools {
    tool_router: ToolRouter<Self>,
}

#[tool_router]
impl Tools {
    fn new() -> Self {
        Tools {
            tool_router: Self::tool_router(),
        }
    }

    #[tool(description = "Who the token says the caller is")]
    async fn whoami(&self, p: Principal) -> Result<String, ErrorData> {
        Ok(json!({
            "subject": p.subject(),
            "issuer": p.issuer(),
            "client_id": p.client_id(),
            "scopes": p.scopes().collect::<Vec<_>>(),
            "groups": p.groups(),
            "tenant": p.tenant(),
            "audiences": p.audiences(),
        })
        .to_string())
    }

    #[tool(description = "An admin-only report (needs mcp:admin)")]
    async fn admin_report(&self, p: Principal) -> Result<String, ErrorData> {
        Ok(format!("admin report for {}", p.subject()))
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Tools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }
}

/// Per-tool step-up at the HTTP level: `admin_report` needs `mcp:admin`, and
/// without it the request is answered with the guard's 403 challenge.
async fn step_up(State(rs): State<ResourceServer>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 1 << 20).await else {
        return http::StatusCode::PAYLOAD_TOO_LARGE.into_response();
    };
    let message: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let is_admin_call = message["method"] == "tools/call" && message["params"]["name"] == "admin_report";
    let allowed = parts.extensions.get::<Principal>().is_some_and(|p| p.has_scope(ADMIN));
    if is_admin_call && !allowed {
        let error = AuthError::InsufficientScope {
            required: vec![TOOLS.to_owned(), ADMIN.to_owned()],
        };
        return rs.challenges().reject(&error).map(Body::from);
    }
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}

/// The guarded MCP server and the development authorization server it trusts.
struct Stack {
    auth: DevAuthServer,
    url: String,
    task: JoinHandle<()>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start_stack() -> Stack {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let resource = format!("http://{}/mcp", listener.local_addr().unwrap());
    let auth = DevAuthServer::builder(resource.clone())
        .subject("alice")
        .groups(["engineering"])
        .tenant("acme")
        .scopes_supported([TOOLS, ADMIN])
        .start()
        .await
        .unwrap();
    let rs = ResourceServer::builder(resource.clone(), Issuer::discover(auth.issuer()))
        .required_scopes([TOOLS])
        .scopes_supported([TOOLS, ADMIN])
        .token_rules(rmcp_guard::oauth::TokenRules::default().require_access_token_type())
        .build()
        .unwrap();
    let mcp = StreamableHttpService::new(
        || Ok(Tools::new()),
        LocalSessionManager::default().into(),
        StreamableHttpServerConfig::default().with_allowed_hosts(rs.allowed_hosts()),
    );
    let stepped = axum::Router::new()
        .fallback_service(mcp)
        .layer(axum::middleware::from_fn_with_state(rs.clone(), step_up));
    // A custom stack: the bearer layer, session binding, this test's own
    // step-up middleware, rmcp; and the metadata routes.
    let guarded = tower::Layer::layer(
        &BearerAuthLayer::new(rs.clone()),
        tower::Layer::layer(&SessionBindingLayer::default(), stepped),
    );
    let app = rs.metadata_router().route_service(rs.resource_path(), guarded);
    let task = tokio::spawn(async move {
        let _ = rmcp_guard::serve(listener, app).await;
    });
    Stack {
        auth,
        url: resource,
        task,
    }
}

// ---------------------------------------------------------------------------
// Client-side helpers.

/// Opens an authorization URL without following the redirect; the `Location`.
async fn authorize(url: &str) -> String {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(TIMEOUT)
        .build()
        .unwrap();
    let response = http.get(url).send().await.unwrap();
    assert_eq!(response.status(), 302, "the dev server approves at once");
    response.headers()["location"].to_str().unwrap().to_owned()
}

/// A query parameter of a URL.
fn query_param(url: &str, name: &str) -> Option<String> {
    let url = url::Url::parse(url).ok()?;
    url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// From nothing to an authorized rmcp client: the 401 challenge, discovery,
/// registration, PKCE authorization and the code exchange.
async fn connect_from_nothing(stack: &Stack) -> AuthClient<reqwest::Client> {
    // 1. No credentials: the guard answers 401 with the RFC 9728 pointer.
    let attempt = tokio::time::timeout(
        TIMEOUT,
        ().serve(StreamableHttpClientTransport::from_uri(stack.url.clone())),
    )
    .await
    .expect("handshake does not hang");
    let Err(error) = attempt else {
        panic!("no token, no session");
    };
    assert!(error.is_authorization_required(), "{error}");
    let challenge = error
        .auth_challenge()
        .expect("the 401 challenge reaches the client")
        .to_owned();
    assert!(challenge.contains("resource_metadata="), "{challenge}");
    assert!(challenge.contains("scope=\"mcp:tools\""), "{challenge}");

    // 2. Discovery from the challenge, dynamic registration, PKCE.
    let mut state = OAuthState::new(stack.url.as_str(), None).await.unwrap();
    state
        .start_authorization(
            AuthorizationRequest::new(REDIRECT_URI)
                .with_client_name("rmcp-guard oauth_flow test")
                // The MCP spec's initial scope choice: the challenge's `scope`,
                // else the metadata's `scopes_supported`.
                .with_initial_scope_selection()
                .with_challenge(challenge),
        )
        .await
        .expect("discovery and registration succeed");
    let auth_url = state.get_authorization_url().await.unwrap();
    assert!(auth_url.starts_with(&stack.auth.authorization_endpoint()), "{auth_url}");
    assert_eq!(query_param(&auth_url, "code_challenge_method").as_deref(), Some("S256"));
    assert_eq!(query_param(&auth_url, "resource").as_deref(), Some(stack.url.as_str()));
    assert_eq!(
        query_param(&auth_url, "scope").as_deref(),
        Some(TOOLS),
        "scope from the challenge"
    );
    assert_eq!(stack.auth.registered_clients(), 1);

    // 3. The authorization server approves; the client redeems the code.
    let location = authorize(&auth_url).await;
    assert!(location.starts_with(REDIRECT_URI), "{location}");
    assert_eq!(query_param(&location, "iss").as_deref(), Some(stack.auth.issuer()));
    state
        .handle_callback_url(&location)
        .await
        .expect("code exchange succeeds");

    let manager = state.into_authorization_manager().expect("authorized");
    AuthClient::new(reqwest::Client::new(), manager)
}

fn transport(
    client: AuthClient<reqwest::Client>,
    url: &str,
) -> StreamableHttpClientTransport<AuthClient<reqwest::Client>> {
    StreamableHttpClientTransport::with_client(client, StreamableHttpClientTransportConfig::with_uri(url.to_owned()))
}

fn text_of(result: &rmcp::model::CallToolResult) -> String {
    result.content[0].as_text().expect("text content").text.clone()
}

// ---------------------------------------------------------------------------
// (a) and (b): rmcp's client end to end.

#[tokio::test]
async fn rmcp_client_connects_from_nothing_lists_and_calls_tools() {
    let stack = start_stack().await;
    let client = connect_from_nothing(&stack).await;
    let client_id = client.auth_manager.lock().await.get_credentials().await.unwrap().0;

    let service = tokio::time::timeout(TIMEOUT, ().serve(transport(client, &stack.url)))
        .await
        .expect("handshake does not hang")
        .expect("handshake succeeds with the token");
    let tools = service.list_all_tools().await.expect("tools/list");
    let mut names: Vec<String> = tools.iter().map(|t| t.name.to_string()).collect();
    names.sort();
    assert_eq!(names, ["admin_report", "whoami"]);

    let result = service
        .call_tool(CallToolRequestParams::new("whoami"))
        .await
        .expect("tools/call whoami");
    let who: Value = serde_json::from_str(&text_of(&result)).unwrap();
    assert_eq!(who["subject"], "alice");
    assert_eq!(who["issuer"], stack.auth.issuer());
    assert_eq!(
        who["client_id"],
        client_id.as_str(),
        "client_id is the registered client"
    );
    assert_eq!(who["scopes"], json!([TOOLS]));
    assert_eq!(who["groups"], json!(["engineering"]));
    assert_eq!(who["tenant"], "acme");
    assert_eq!(
        who["audiences"],
        json!([stack.url]),
        "RFC 8707 resource written into aud"
    );

    service.cancel().await.expect("client closes");
}

#[tokio::test]
async fn rmcp_client_steps_up_on_insufficient_scope_and_succeeds() {
    let stack = start_stack().await;
    let client = connect_from_nothing(&stack).await;
    let service = tokio::time::timeout(TIMEOUT, ().serve(transport(client.clone(), &stack.url)))
        .await
        .unwrap()
        .unwrap();

    // The token carries mcp:tools only: admin_report answers 403.
    let error = tokio::time::timeout(TIMEOUT, service.call_tool(CallToolRequestParams::new("admin_report")))
        .await
        .expect("call does not hang")
        .expect_err("403 insufficient_scope");
    let challenge = error
        .auth_challenge()
        .expect("the 403 challenge reaches the client")
        .to_owned();
    let params = WWWAuthenticateParams::parse(&challenge, &url::Url::parse(&stack.url).unwrap());
    assert!(params.is_insufficient_scope(), "{challenge}");
    let needed = params.scope.clone().expect("the challenge names the scope");
    assert_eq!(needed, "mcp:tools mcp:admin");

    // Re-authorize with the scope from the challenge (rmcp's step-up API).
    let upgrade_url = client
        .auth_manager
        .lock()
        .await
        .request_scope_upgrade(&needed)
        .await
        .expect("scope upgrade starts");
    let asked = query_param(&upgrade_url, "scope").unwrap();
    assert!(asked.split(' ').any(|s| s == ADMIN), "{asked}");
    let location = authorize(&upgrade_url).await;
    let callback = AuthorizationCallback::from_redirect_url(&location).unwrap();
    client
        .auth_manager
        .lock()
        .await
        .exchange_code_for_token_with_issuer(&callback.code, &callback.csrf_token, callback.issuer.as_deref())
        .await
        .expect("upgraded token");

    // The same session, the new token: the call goes through.
    let result = tokio::time::timeout(TIMEOUT, service.call_tool(CallToolRequestParams::new("admin_report")))
        .await
        .unwrap()
        .expect("admin_report after step-up");
    assert_eq!(text_of(&result), "admin report for alice");
    let result = service.call_tool(CallToolRequestParams::new("whoami")).await.unwrap();
    let who: Value = serde_json::from_str(&text_of(&result)).unwrap();
    let mut scopes: Vec<&str> = who["scopes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    scopes.sort_unstable();
    assert_eq!(scopes, [ADMIN, TOOLS]);

    service.cancel().await.expect("client closes");
}

#[tokio::test]
async fn rmcp_client_refresh_rotates_and_the_old_refresh_token_is_dead() {
    let stack = start_stack().await;
    let client = connect_from_nothing(&stack).await;
    let manager = client.auth_manager.lock().await;
    let (client_id, first) = manager.get_credentials().await.unwrap();
    let first = serde_json::to_value(first.expect("token response")).unwrap();
    let old_refresh = first["refresh_token"].as_str().expect("a refresh token").to_owned();

    let second = serde_json::to_value(manager.refresh_token().await.expect("refresh succeeds")).unwrap();
    let new_refresh = second["refresh_token"].as_str().expect("a rotated refresh token");
    assert_ne!(new_refresh, old_refresh, "refresh tokens rotate");
    assert_ne!(second["access_token"], first["access_token"]);
    drop(manager);

    // Replaying the spent refresh token is refused, and revokes the family.
    let http = reqwest::Client::new();
    let (status, body) = post_form(
        &http,
        &stack.auth.token_endpoint(),
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &old_refresh),
            ("client_id", &client_id),
        ],
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")));
    let (status, body) = post_form(
        &http,
        &stack.auth.token_endpoint(),
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", new_refresh),
            ("client_id", &client_id),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "reuse detection revoked the live refresh token too"
    );
}

// ---------------------------------------------------------------------------
// (c) What a real authorization server refuses.

const RESOURCE: &str = "http://127.0.0.1:8080/mcp";
const CALLBACK: &str = "http://127.0.0.1:7777/callback";

struct Pkce {
    verifier: String,
    challenge: String,
}

fn pkce(seed: char) -> Pkce {
    let verifier: String = std::iter::repeat_n(seed, 64).collect();
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    Pkce { verifier, challenge }
}

async fn dev_server() -> DevAuthServer {
    DevAuthServer::builder(RESOURCE).start().await.unwrap()
}

async fn register(http: &reqwest::Client, auth: &DevAuthServer) -> String {
    let response = http
        .post(auth.registration_endpoint())
        .json(&json!({
            "client_name": "negative tests",
            "redirect_uris": [CALLBACK],
            "grant_types": ["authorization_code", "refresh_token"],
            "token_endpoint_auth_method": "none",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    body["client_id"].as_str().unwrap().to_owned()
}

/// GET /authorize with `params`; the status and the `Location`, if any.
async fn authorize_with(auth: &DevAuthServer, params: &[(&str, &str)]) -> (u16, Option<String>) {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut url = url::Url::parse(&auth.authorization_endpoint()).unwrap();
    url.query_pairs_mut().extend_pairs(params);
    let response = http.get(url).send().await.unwrap();
    let location = response
        .headers()
        .get("location")
        .map(|l| l.to_str().unwrap().to_owned());
    (response.status().as_u16(), location)
}

/// A good authorization request for `client_id` with `pkce`; the code.
async fn code_for(auth: &DevAuthServer, client_id: &str, pkce: &Pkce) -> String {
    let (status, location) = authorize_with(
        auth,
        &[
            ("response_type", "code"),
            ("client_id", client_id),
            ("redirect_uri", CALLBACK),
            ("code_challenge", &pkce.challenge),
            ("code_challenge_method", "S256"),
            ("resource", RESOURCE),
            ("scope", TOOLS),
            ("state", "xyz"),
        ],
    )
    .await;
    assert_eq!(status, 302);
    let location = location.unwrap();
    assert_eq!(query_param(&location, "state").as_deref(), Some("xyz"));
    query_param(&location, "code").expect("a code")
}

async fn post_form(http: &reqwest::Client, url: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let response = http
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn exchange(
    http: &reqwest::Client,
    auth: &DevAuthServer,
    client_id: &str,
    code: &str,
    verifier: &str,
    extra: &[(&str, &str)],
) -> (u16, Value) {
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("code_verifier", verifier),
        ("client_id", client_id),
    ];
    if !extra.iter().any(|(k, _)| *k == "redirect_uri") {
        form.push(("redirect_uri", CALLBACK));
    }
    form.extend_from_slice(extra);
    post_form(http, &auth.token_endpoint(), &form).await
}

fn error_of(location: &str) -> Option<String> {
    query_param(location, "error")
}

#[tokio::test]
async fn a_good_code_exchange_yields_an_at_jwt_for_the_resource() {
    let auth = dev_server().await;
    let http = reqwest::Client::new();
    let client_id = register(&http, &auth).await;
    let p = pkce('a');
    let code = code_for(&auth, &client_id, &p).await;
    let (status, body) = exchange(&http, &auth, &client_id, &code, &p.verifier, &[("resource", RESOURCE)]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], TOOLS);
    assert!(body["refresh_token"].is_string());
    let token = body["access_token"].as_str().unwrap();
    let segment = |i: usize| -> Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.split('.').nth(i).unwrap()).unwrap()).unwrap()
    };
    let (header, claims) = (segment(0), segment(1));
    assert_eq!(header["typ"], "at+jwt");
    assert_eq!(header["alg"], "ES256");
    assert_eq!(claims["aud"], RESOURCE);
    assert_eq!(claims["iss"], auth.issuer());
    assert_eq!(claims["client_id"], client_id.as_str());
    assert_eq!(claims["scope"], TOOLS);
    let lifetime = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
    assert_eq!(lifetime, 300, "short-lived by default");
    let jwks: Value = http.get(auth.jwks_uri()).send().await.unwrap().json().await.unwrap();
    assert_eq!(jwks["keys"][0]["kid"], header["kid"], "signed with the published key");
}

#[tokio::test]
async fn plain_or_missing_pkce_is_refused() {
    let auth = dev_server().await;
    let http = reqwest::Client::new();
    let client_id = register(&http, &auth).await;
    let p = pkce('b');
    for method in [Some("plain"), None] {
        let mut params = vec![
            ("response_type", "code"),
            ("client_id", client_id.as_str()),
            ("redirect_uri", CALLBACK),
            ("code_challenge", p.verifier.as_str()),
        ];
        params.extend(method.map(|m| ("code_challenge_method", m)));
        let (status, location) = authorize_with(&auth, &params).await;
        assert_eq!(status, 302);
        let location = location.unwrap();
        assert_eq!(error_of(&location).as_deref(), Some("invalid_request"), "{method:?}");
        assert!(query_param(&location, "code").is_none());
    }
    // No challenge at all.
    let (_, location) = authorize_with(
        &auth,
        &[
            ("response_type", "code"),
            ("client_id", &client_id),
            ("redirect_uri", CALLBACK),
            ("code_challenge_method", "S256"),
        ],
    )
    .await;
    assert_eq!(error_of(&location.unwrap()).as_deref(), Some("invalid_request"));
}

#[tokio::test]
async fn wrong_code_verifier_is_refused() {
    let auth = dev_server().await;
    let http = reqwest::Client::new();
    let client_id = register(&http, &auth).await;
    let p = pkce('c');
    let code = code_for(&auth, &client_id, &p).await;
    let wrong = pkce('d');
    let (status, body) = exchange(&http, &auth, &client_id, &code, &wrong.verifier, &[]).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")));
    assert!(body.get("access_token").is_none());
    // The code was spent by the failed attempt.
    let (status, body) = exchange(&http, &auth, &client_id, &code, &p.verifier, &[]).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")));
}

#[tokio::test]
async fn code_reuse_is_refused_and_revokes_its_refresh_token() {
    let auth = dev_server().await;
    let http = reqwest::Client::new();
    let client_id = register(&http, &auth).await;
    let p = pkce('e');
    let code = code_for(&auth, &client_id, &p).await;
    let (status, first) = exchange(&http, &auth, &client_id, &code, &p.verifier, &[]).await;
    assert_eq!(status, 200);
    let (status, body) = exchange(&http, &auth, &client_id, &code, &p.verifier, &[]).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")));
    let refresh = first["refresh_token"].as_str().unwrap();
    let (status, body) = post_form(
        &http,
        &auth.token_endpoint(),
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh),
            ("client_id", &client_id),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "revoked on reuse"
    );
}

#[tokio::test]
async fn expired_code_is_refused() {
    let auth = DevAuthServer::builder(RESOURCE)
        .code_lifetime(Duration::from_millis(100))
        .start()
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let client_id = register(&http, &auth).await;
    let p = pkce('f');
    let code = code_for(&auth, &client_id, &p).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = exchange(&http, &auth, &client_id, &code, &p.verifier, &[]).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")));
}

#[tokio::test]
async fn redirect_uri_mismatch_is_refused() {
    let auth = dev_server().await;
    let http = reqwest::Client::new();
    let client_id = register(&http, &auth).await;
    let p = pkce('g');
    // At the authorization endpoint: answered directly, never redirected.
    for other in [
        "http://127.0.0.1:7777/callback/",
        "http://127.0.0.1:7778/callback",
        "http://127.0.0.1:7777/callback?x=1",
        "https://attacker.example/callback",
    ] {
        let (status, location) = authorize_with(
            &auth,
            &[
                ("response_type", "code"),
                ("client_id", &client_id),
                ("redirect_uri", other),
                ("code_challenge", &p.challenge),
                ("code_challenge_method", "S256"),
            ],
        )
        .await;
        assert_eq!((status, location), (400, None), "{other}");
    }
    // At the token endpoint: the redirect URI must equal the one authorized.
    let code = code_for(&auth, &client_id, &p).await;
    let (status, body) = exchange(
        &http,
        &auth,
        &client_id,
        &code,
        &p.verifier,
        &[("redirect_uri", "http://127.0.0.1:7777/other")],
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")));
}

#[tokio::test]
async fn unknown_client_and_bad_registrations_are_refused() {
    let auth = dev_server().await;
    let http = reqwest::Client::new();
    let p = pkce('h');
    let (status, location) = authorize_with(
        &auth,
        &[
            ("response_type", "code"),
            ("client_id", "nobody"),
            ("redirect_uri", CALLBACK),
            ("code_challenge", &p.challenge),
            ("code_challenge_method", "S256"),
        ],
    )
    .await;
    assert_eq!((status, location), (400, None));
    let (status, body) = exchange(&http, &auth, "nobody", "code", &p.verifier, &[]).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_client")));

    for metadata in [
        json!({"redirect_uris": ["http://app.example.com/cb"]}),
        json!({"redirect_uris": []}),
        json!({"redirect_uris": ["http://127.0.0.1/cb#fragment"]}),
        json!({"redirect_uris": [CALLBACK], "token_endpoint_auth_method": "client_secret_basic"}),
        json!({"redirect_uris": [CALLBACK], "grant_types": ["implicit"]}),
        json!({"redirect_uris": [CALLBACK], "response_types": ["token"]}),
        json!(["not an object"]),
    ] {
        let response = http
            .post(auth.registration_endpoint())
            .json(&metadata)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{metadata}");
    }
    assert_eq!(auth.registered_clients(), 0);
}

#[tokio::test]
async fn foreign_resource_is_refused_with_invalid_target() {
    let auth = dev_server().await;
    let http = reqwest::Client::new();
    let client_id = register(&http, &auth).await;
    let p = pkce('i');
    let (status, location) = authorize_with(
        &auth,
        &[
            ("response_type", "code"),
            ("client_id", &client_id),
            ("redirect_uri", CALLBACK),
            ("code_challenge", &p.challenge),
            ("code_challenge_method", "S256"),
            ("resource", "https://other.example/mcp"),
        ],
    )
    .await;
    assert_eq!(status, 302);
    assert_eq!(error_of(&location.unwrap()).as_deref(), Some("invalid_target"));

    let code = code_for(&auth, &client_id, &p).await;
    let (status, body) = exchange(
        &http,
        &auth,
        &client_id,
        &code,
        &p.verifier,
        &[("resource", "http://127.0.0.1:8080/other")],
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_target")));
}

#[tokio::test]
async fn unsupported_scope_is_refused() {
    let auth = dev_server().await;
    let http = reqwest::Client::new();
    let client_id = register(&http, &auth).await;
    let p = pkce('j');
    let (_, location) = authorize_with(
        &auth,
        &[
            ("response_type", "code"),
            ("client_id", &client_id),
            ("redirect_uri", CALLBACK),
            ("code_challenge", &p.challenge),
            ("code_challenge_method", "S256"),
            ("scope", "mcp:tools root"),
        ],
    )
    .await;
    assert_eq!(error_of(&location.unwrap()).as_deref(), Some("invalid_scope"));
}

#[tokio::test]
async fn hostile_inputs_get_answers_not_panics() {
    let auth = dev_server().await;
    let http = reqwest::Client::new();
    let token = auth.token_endpoint();
    // Wrong content type, garbage, huge bodies, repeated parameters.
    let cases: Vec<(String, &str, Vec<u8>)> = vec![
        (token.clone(), "application/json", b"{}".to_vec()),
        (token.clone(), "application/x-www-form-urlencoded", b"%%%&&&==".to_vec()),
        (
            token.clone(),
            "application/x-www-form-urlencoded",
            b"grant_type=a&grant_type=b".to_vec(),
        ),
        (token.clone(), "application/x-www-form-urlencoded", vec![b'a'; 100_000]),
        (
            auth.registration_endpoint(),
            "application/json",
            b"{\"redirect_uris\": [1, 2]}".to_vec(),
        ),
        (auth.registration_endpoint(), "application/json", vec![0xff; 64]),
        (auth.registration_endpoint(), "text/plain", b"{}".to_vec()),
    ];
    for (url, content_type, body) in cases {
        let response = http
            .post(&url)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_client_error(), "{url}: {}", response.status());
    }
    let (status, _) = authorize_with(&auth, &[("client_id", "a"), ("client_id", "b")]).await;
    assert_eq!(status, 400);
    let response = http
        .get(format!("{}?%ff%fe=%00", auth.authorization_endpoint()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    // Still serving.
    let response = http.get(auth.metadata_url()).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn metadata_advertises_what_mcp_clients_need() {
    let auth = dev_server().await;
    let m: Value = reqwest::get(auth.metadata_url()).await.unwrap().json().await.unwrap();
    assert_eq!(m["issuer"], auth.issuer());
    assert_eq!(m["authorization_endpoint"], auth.authorization_endpoint());
    assert_eq!(m["token_endpoint"], auth.token_endpoint());
    assert_eq!(m["registration_endpoint"], auth.registration_endpoint());
    assert_eq!(m["jwks_uri"], auth.jwks_uri());
    assert_eq!(m["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(m["response_types_supported"], json!(["code"]));
    assert_eq!(
        m["grant_types_supported"],
        json!(["authorization_code", "refresh_token"])
    );
    assert_eq!(m["token_endpoint_auth_methods_supported"], json!(["none"]));
    assert_eq!(m["scopes_supported"], json!([TOOLS]));
    assert_eq!(m["authorization_response_iss_parameter_supported"], true);
}
