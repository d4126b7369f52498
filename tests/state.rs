//! Sealed request state and caller-bound handles over real HTTP: a tool
//! server behind `Guard`, driven by the testkit client on 2026-07-28.
//!
//! - `open_cart` mints a handle, `add_item` takes it: another caller
//!   presenting the handle gets the same JSON-RPC error as for a made-up one,
//!   and the owner's cart is untouched.
//! - `transfer` answers `InputRequiredResult` with a sealed `requestState`:
//!   the retry with that state succeeds once; a modified state, another
//!   caller's retry, or other arguments are refused.

mod common;

use std::sync::{Arc, Mutex};

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::RequestState;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResponse, CallToolResult, ContentBlock, InputRequiredResult, JsonObject, ServerCapabilities, ServerConfig,
};
use rmcp::{ErrorData, ServerHandler, schemars, tool, tool_handler, tool_router};
use rmcp_guard::oauth::{Issuer, ResourceServer};
use rmcp_guard::state::{RequestStateSealer, StateBinding, StateHandles, StateKeys};
use rmcp_guard::{Guard, Principal};
use rmcp_guard_testkit::{McpClient, McpError, Protocol, TestIssuer};
use serde_json::{Value, json};

type Cart = Arc<Mutex<Vec<String>>>;

#[derive(Clone)]
struct Shop {
    tool_router: ToolRouter<Self>,
    carts: StateHandles<Cart>,
    sealer: RequestStateSealer,
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct AddItem {
    cart: String,
    item: String,
}

#[tool_router]
impl Shop {
    fn new(carts: StateHandles<Cart>, sealer: RequestStateSealer) -> Self {
        Shop {
            tool_router: Self::tool_router(),
            carts,
            sealer,
        }
    }

    #[tool(description = "Open a cart; returns its handle")]
    async fn open_cart(&self, caller: Principal) -> Result<String, ErrorData> {
        Ok(self.carts.mint(&caller, Cart::default())?)
    }

    #[tool(description = "Add an item to a cart")]
    async fn add_item(&self, caller: Principal, Parameters(args): Parameters<AddItem>) -> Result<String, ErrorData> {
        let cart = self.carts.get(&caller, &args.cart)?;
        let mut items = cart.lock().unwrap();
        items.push(args.item);
        Ok(items.join(","))
    }

    #[tool(description = "Transfer an amount, after a confirmation round")]
    async fn transfer(
        &self,
        caller: Principal,
        Parameters(args): Parameters<JsonObject>,
        RequestState(state): RequestState,
    ) -> Result<CallToolResponse, ErrorData> {
        let binding = StateBinding::tool_call(&caller, "transfer", Some(&args));
        match state {
            None => {
                let sealed = self.sealer.seal(&binding, &json!({"approved": args.get("amount")}))?;
                Ok(InputRequiredResult::from_request_state(sealed).into())
            }
            Some(state) => {
                let payload: Value = self.sealer.open(&state, &binding).await?;
                Ok(
                    CallToolResult::success(vec![ContentBlock::text(format!("transferred {}", payload["approved"]))])
                        .into(),
                )
            }
        }
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Shop {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }
}

struct Server {
    url: String,
    issuer: TestIssuer,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    async fn start() -> Server {
        let issuer = TestIssuer::start().await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/mcp", listener.local_addr().unwrap());
        let rs = ResourceServer::builder(url.clone(), Issuer::with_jwks_uri(issuer.issuer(), issuer.jwks_uri()))
            .required_scopes([common::SCOPE])
            .build()
            .unwrap();
        // One table and one sealer for every instance the factory makes.
        let carts = StateHandles::new();
        let sealer = RequestStateSealer::new(StateKeys::generate());
        let app = Guard::new(rs)
            .limits(common::generous_limits())
            .stateless()
            .router(move || Ok(Shop::new(carts.clone(), sealer.clone())));
        let task = tokio::spawn(async move {
            let _ = rmcp_guard::serve(listener, app).await;
        });
        Server { url, issuer, task }
    }

    async fn client(&self, subject: &str) -> McpClient {
        let token = self
            .issuer
            .token()
            .subject(subject)
            .audience(&self.url)
            .scope(common::SCOPE)
            .sign();
        McpClient::connect(&self.url, Protocol::V2026_07_28)
            .bearer(token)
            .send()
            .await
            .unwrap()
    }
}

/// The JSON-RPC error of a call that must fail: code and message.
fn rpc_error(result: Result<Value, McpError>) -> (i32, String) {
    match result {
        Err(McpError::JsonRpc { code, message, .. }) => (code, message),
        other => panic!("expected a JSON-RPC error, got {other:?}"),
    }
}

async fn call(client: &McpClient, params: Value) -> Result<Value, McpError> {
    client.request("tools/call", params).await
}

fn text(result: &Value) -> &str {
    result["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("{result}"))
}

#[tokio::test]
async fn a_handle_is_bound_to_the_caller_that_opened_it() {
    let server = Server::start().await;
    let alice = server.client("alice").await;
    let bob = server.client("bob").await;
    let opened = call(&alice, json!({"name": "open_cart"})).await.unwrap();
    let cart = text(&opened).to_owned();
    assert_eq!(cart.len(), 43, "{cart}");
    let added = call(
        &alice,
        json!({"name": "add_item", "arguments": {"cart": cart, "item": "apple"}}),
    )
    .await
    .unwrap();
    assert_eq!(text(&added), "apple");

    // Bob presenting Alice's handle gets exactly what a made-up handle gets.
    let theirs = rpc_error(
        call(
            &bob,
            json!({"name": "add_item", "arguments": {"cart": cart, "item": "rock"}}),
        )
        .await,
    );
    let made_up = "A".repeat(43);
    let unknown = rpc_error(
        call(
            &bob,
            json!({"name": "add_item", "arguments": {"cart": made_up, "item": "rock"}}),
        )
        .await,
    );
    assert_eq!(theirs, unknown);
    assert_eq!(theirs, (-32602, "unknown or expired handle".to_owned()));
    assert!(!theirs.1.contains(&cart));

    // Alice's cart has only her item.
    let added = call(
        &alice,
        json!({"name": "add_item", "arguments": {"cart": cart, "item": "pear"}}),
    )
    .await
    .unwrap();
    assert_eq!(text(&added), "apple,pear");
}

/// Call `transfer` without state: the `requestState` of the answer.
async fn first_round(client: &McpClient, arguments: &Value) -> String {
    let result = call(client, json!({"name": "transfer", "arguments": arguments}))
        .await
        .unwrap();
    assert_eq!(result["resultType"], "input_required", "{result}");
    assert!(result.get("content").is_none(), "{result}");
    let state = result["requestState"].as_str().unwrap_or_else(|| panic!("{result}"));
    assert!(state.starts_with("v1."), "{state}");
    assert!(!state.contains("100"), "the payload is encrypted: {state}");
    state.to_owned()
}

async fn retry(client: &McpClient, arguments: &Value, state: &str) -> Result<Value, McpError> {
    call(
        client,
        json!({"name": "transfer", "arguments": arguments, "requestState": state, "inputResponses": {}}),
    )
    .await
}

#[tokio::test]
async fn a_sealed_state_completes_the_retry_once_for_the_same_caller() {
    let server = Server::start().await;
    let alice = server.client("alice").await;
    let arguments = json!({"to": "bob", "amount": 100});
    let state = first_round(&alice, &arguments).await;
    // The same arguments with the keys in another order are the same call.
    let reordered: Value = serde_json::from_str(r#"{"amount": 100, "to": "bob"}"#).unwrap();
    let done = retry(&alice, &reordered, &state).await.unwrap();
    assert_eq!(text(&done), "transferred 100");
    // Single use: the same state again is refused.
    let (code, message) = rpc_error(retry(&alice, &arguments, &state).await);
    assert_eq!(
        (code, message.as_str()),
        (-32602, "request state was already used; start the call again")
    );
}

#[tokio::test]
async fn a_modified_or_borrowed_state_is_refused() {
    let server = Server::start().await;
    let alice = server.client("alice").await;
    let mallory = server.client("mallory").await;
    let arguments = json!({"to": "bob", "amount": 100});
    let state = first_round(&alice, &arguments).await;
    let mismatch = (-32602, "request state does not match this caller or request".to_owned());

    // Another caller retrying with Alice's state.
    assert_eq!(rpc_error(retry(&mallory, &arguments, &state).await), mismatch);
    // Alice's state with other arguments (a larger amount).
    let larger = json!({"to": "bob", "amount": 1_000_000});
    assert_eq!(rpc_error(retry(&alice, &larger, &state).await), mismatch);
    // One character of the state changed.
    let mut modified = state.clone().into_bytes();
    let i = modified.len() - 10;
    modified[i] = if modified[i] == b'A' { b'B' } else { b'A' };
    let modified = String::from_utf8(modified).unwrap();
    assert_eq!(rpc_error(retry(&alice, &arguments, &modified).await), mismatch);
    // A state that is not one at all, and an unknown key id.
    let (code, _) = rpc_error(retry(&alice, &arguments, "not-a-state").await);
    assert_eq!(code, -32602);
    let (_, rest) = state.split_at(3);
    let (_, body) = rest.split_once('.').unwrap();
    let (code, message) = rpc_error(retry(&alice, &arguments, &format!("v1.other-kid.{body}")).await);
    assert_eq!(code, -32602);
    assert!(!message.contains("other-kid"), "{message}");

    // None of these burnt the state: Alice's own retry still completes.
    let done = retry(&alice, &arguments, &state).await.unwrap();
    assert_eq!(text(&done), "transferred 100");
}
