//! An MCP test client for Streamable HTTP endpoints, speaking both protocol
//! generations.
//!
//! - [`Protocol::V2025_11_25`]: `connect` sends `initialize`, keeps the
//!   `Mcp-Session-Id` the server answers (if any) and sends
//!   `notifications/initialized`; every later POST carries `Mcp-Session-Id`
//!   and `MCP-Protocol-Version` (the version the server negotiated);
//!   [`McpClient::close`] DELETEs the session.
//! - [`Protocol::V2026_07_28`]: stateless, no handshake. Every request carries
//!   `params._meta` with `io.modelcontextprotocol/protocolVersion`,
//!   `io.modelcontextprotocol/clientInfo` and
//!   `io.modelcontextprotocol/clientCapabilities`, and the headers
//!   `MCP-Protocol-Version`, `Mcp-Method`, `Mcp-Name` (for `tools/call` and
//!   `prompts/get`: `params.name`; `resources/read`, `resources/subscribe`,
//!   `resources/unsubscribe`: `params.uri`; `tasks/get`, `tasks/update`,
//!   `tasks/cancel`: `params.taskId`) and, for `tools/call`, the
//!   `Mcp-Param-*` headers the tool's `x-mcp-header` annotations ask for
//!   (known once [`McpClient::list_tools`] has seen the tool). Header values
//!   that are not plain ASCII use the `=?base64?...?=` form.
//!
//! Both accept an `application/json` answer or a `text/event-stream` one (the
//! JSON-RPC response is the SSE `data:` carrying the request's id; other
//! events are skipped). A non-2xx answer is [`McpError::Http`], with the
//! `WWW-Authenticate` challenge, which is what a test of an authorization
//! layer asserts on.
//!
//! # DPoP
//!
//! With [`Connect::dpop`] (or [`McpClient::set_dpop`]) every request carries
//! `Authorization: DPoP <token>` and a fresh `DPoP` proof (RFC 9449) for its
//! method and URL (without query or fragment), with `ath` (the token's hash)
//! and the latest nonce the server sent. The client remembers the
//! `DPoP-Nonce` of every answer that carries one; when the server answers
//! 401 with `DPoP-Nonce` and a `WWW-Authenticate` naming `use_dpop_nonce`,
//! the request is sent once more with a new proof carrying that nonce.
//!
//! ```
//! use rmcp_guard_testkit::client::{McpClient, McpError, Protocol};
//! use rmcp_guard_testkit::TestServer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Anything that is not an MCP endpoint: the handshake fails with the status.
//! let server = TestServer::start(axum::Router::new()).await?;
//! let err = McpClient::connect(server.mcp_url("/mcp"), Protocol::V2025_11_25)
//!     .bearer("not-a-token")
//!     .await
//!     .unwrap_err();
//! assert_eq!(err.status().map(|s| s.as_u16()), Some(404));
//!
//! // Stateless: connecting sends nothing, each request is on its own.
//! let client = McpClient::connect(server.mcp_url("/mcp"), Protocol::V2026_07_28).await?;
//! assert!(matches!(client.list_tools().await, Err(McpError::Http { .. })));
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, WWW_AUTHENTICATE};
use reqwest::{Method, RequestBuilder, StatusCode};
use rmcp::model::{CallToolResult, DiscoverResult, Tool};
use serde_json::{Map, Value, json};

use crate::dpop::DpopKey;

/// `MCP-Protocol-Version`.
const HEADER_PROTOCOL_VERSION: &str = "mcp-protocol-version";
/// `Mcp-Session-Id`.
const HEADER_SESSION_ID: &str = "mcp-session-id";
/// `Mcp-Method`.
const HEADER_METHOD: &str = "mcp-method";
/// `Mcp-Name`.
const HEADER_NAME: &str = "mcp-name";
/// Prefix of the headers mirroring annotated tool arguments.
const HEADER_PARAM_PREFIX: &str = "mcp-param-";
/// `DPoP` (RFC 9449): the proof.
const HEADER_DPOP: &str = "dpop";
/// `DPoP-Nonce` (RFC 9449 section 8): a nonce the server wants in proofs.
const HEADER_DPOP_NONCE: &str = "dpop-nonce";
/// The `Accept` every POST sends (both answer types, as the specification requires).
const ACCEPT_BOTH: &str = "application/json, text/event-stream";

/// `_meta` keys of the 2026-07-28 per-request client context.
const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
const META_CLIENT_INFO: &str = "io.modelcontextprotocol/clientInfo";
const META_CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";

/// The protocol generation an [`McpClient`] speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Protocol {
    /// `2025-11-25`: `initialize` handshake, sessions (`Mcp-Session-Id`).
    V2025_11_25,
    /// `2026-07-28`: stateless, per-request `_meta` and `Mcp-*` headers.
    V2026_07_28,
}

impl Protocol {
    /// The version string, e.g. `"2025-11-25"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::V2025_11_25 => "2025-11-25",
            Protocol::V2026_07_28 => "2026-07-28",
        }
    }

    /// Every protocol generation, oldest first (to run a test against each).
    pub const ALL: [Protocol; 2] = [Protocol::V2025_11_25, Protocol::V2026_07_28];
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What went wrong with a request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum McpError {
    /// The server answered with a non-2xx status (a rejection by an
    /// authorization layer, an unknown session, a malformed request...).
    #[error("HTTP {status}: {body}")]
    Http {
        /// The status.
        status: StatusCode,
        /// The `WWW-Authenticate` header, if any (RFC 6750 challenges).
        www_authenticate: Option<String>,
        /// The body, as text (may be a JSON-RPC error object).
        body: String,
    },
    /// The server answered 2xx with a JSON-RPC error.
    #[error("JSON-RPC error {code}: {message}")]
    JsonRpc {
        /// The error code (e.g. `-32602` invalid params).
        code: i32,
        /// The error message.
        message: String,
        /// The error's `data`, if any.
        data: Option<Value>,
    },
    /// The request could not be sent or the answer not read.
    #[error("transport: {0}")]
    Transport(#[from] reqwest::Error),
    /// The answer was not what the protocol allows (no JSON-RPC response for
    /// the request, a result of the wrong shape...).
    #[error("unexpected answer: {0}")]
    Protocol(String),
}

impl McpError {
    /// The HTTP status of an [`McpError::Http`].
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            McpError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The `WWW-Authenticate` challenge of an [`McpError::Http`].
    pub fn www_authenticate(&self) -> Option<&str> {
        match self {
            McpError::Http { www_authenticate, .. } => www_authenticate.as_deref(),
            _ => None,
        }
    }

    /// The JSON-RPC error code: of an [`McpError::JsonRpc`], or of the
    /// JSON-RPC error object in the body of an [`McpError::Http`].
    pub fn code(&self) -> Option<i32> {
        match self {
            McpError::JsonRpc { code, .. } => Some(*code),
            McpError::Http { body, .. } => serde_json::from_str::<Value>(body)
                .ok()?
                .pointer("/error/code")?
                .as_i64()
                .and_then(|c| i32::try_from(c).ok()),
            _ => None,
        }
    }
}

/// The credentials a client sends with every request.
#[derive(Clone)]
enum Auth {
    /// `Authorization: Bearer <token>`.
    Bearer(String),
    /// `Authorization: DPoP <token>` and a `DPoP` proof made with the key.
    Dpop(String, DpopKey),
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the token.
        match self {
            Auth::Bearer(_) => f.write_str("Bearer <redacted>"),
            Auth::Dpop(_, key) => write!(f, "DPoP <redacted> ({key:?})"),
        }
    }
}

/// Configures a connection; `.await` it (or call [`Connect::send`]) to get
/// the [`McpClient`]. Start one with [`McpClient::connect`].
#[must_use = "a Connect does nothing until awaited"]
pub struct Connect {
    url: String,
    protocol: Protocol,
    auth: Option<Auth>,
    http: Option<reqwest::Client>,
    client_info: Value,
    capabilities: Value,
    headers: HeaderMap,
}

impl fmt::Debug for Connect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connect")
            .field("url", &self.url)
            .field("protocol", &self.protocol)
            .field("auth", &self.auth)
            .field("client_info", &self.client_info)
            .finish_non_exhaustive()
    }
}

impl Connect {
    /// Sends `Authorization: Bearer {token}` on every request (replacing
    /// [`Connect::dpop`]). Defaults to no `Authorization` header.
    pub fn bearer(mut self, token: impl Into<String>) -> Self {
        self.auth = Some(Auth::Bearer(token.into()));
        self
    }

    /// Sends `Authorization: DPoP {token}` and a fresh `DPoP` proof signed
    /// with `key` on every request, answering `use_dpop_nonce` challenges
    /// (see [DPoP](self#dpop)); replaces [`Connect::bearer`]. Defaults to no
    /// `Authorization` header.
    pub fn dpop(mut self, token: impl Into<String>, key: &DpopKey) -> Self {
        self.auth = Some(Auth::Dpop(token.into(), key.clone()));
        self
    }

    /// The HTTP client to use. Defaults to a new `reqwest::Client`.
    pub fn http_client(mut self, http: reqwest::Client) -> Self {
        self.http = Some(http);
        self
    }

    /// The client's name and version (`clientInfo`). Defaults to
    /// `rmcp-guard-testkit` and this crate's version.
    pub fn client_info(mut self, name: impl Into<String>, version: impl Into<String>) -> Self {
        self.client_info = json!({"name": name.into(), "version": version.into()});
        self
    }

    /// The client capabilities this client declares (in `initialize`, or in
    /// every request's `_meta` for 2026-07-28), e.g. `{"elicitation": {}}`.
    /// Declaring a capability does not make the client fulfil input
    /// requests: a test answers them itself through [`McpClient::request`]
    /// (`inputResponses`, `requestState`). Defaults to `{}`.
    pub fn capabilities(mut self, capabilities: Value) -> Self {
        self.capabilities = capabilities;
        self
    }

    /// Adds a header to every request (e.g. `Origin`). Defaults to none.
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.append(name, value);
        self
    }

    /// Connects: for [`Protocol::V2025_11_25`] the `initialize` handshake;
    /// for [`Protocol::V2026_07_28`] nothing is sent.
    ///
    /// # Errors
    ///
    /// What the handshake's requests failed with.
    pub async fn send(self) -> Result<McpClient, McpError> {
        let mut client = McpClient {
            http: self.http.unwrap_or_default(),
            url: self.url,
            protocol: self.protocol,
            auth: self.auth,
            client_info: self.client_info,
            capabilities: self.capabilities,
            headers: self.headers,
            session_id: None,
            negotiated: self.protocol.as_str().to_owned(),
            initialize_result: None,
            next_id: AtomicU64::new(1),
            tool_schemas: Mutex::new(HashMap::new()),
            dpop_nonce: Mutex::new(None),
        };
        if client.protocol == Protocol::V2025_11_25 {
            client.initialize().await?;
        }
        Ok(client)
    }
}

impl IntoFuture for Connect {
    type Output = Result<McpClient, McpError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.send())
    }
}

/// An MCP client for one Streamable HTTP endpoint; see the [module
/// docs](self).
///
/// Requests take `&self`: one client may send several at once.
pub struct McpClient {
    http: reqwest::Client,
    url: String,
    protocol: Protocol,
    auth: Option<Auth>,
    client_info: Value,
    capabilities: Value,
    headers: HeaderMap,
    session_id: Option<String>,
    /// The `MCP-Protocol-Version` to send: the one the server negotiated.
    negotiated: String,
    initialize_result: Option<Value>,
    next_id: AtomicU64,
    /// Input schemas of the tools seen by `list_tools`, for `Mcp-Param-*`.
    tool_schemas: Mutex<HashMap<String, Map<String, Value>>>,
    /// The latest `DPoP-Nonce` the server sent.
    dpop_nonce: Mutex<Option<String>>,
}

impl fmt::Debug for McpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("McpClient")
            .field("url", &self.url)
            .field("protocol", &self.protocol)
            .field("auth", &self.auth)
            .field("session_id", &self.session_id)
            .field("negotiated", &self.negotiated)
            .finish_non_exhaustive()
    }
}

impl McpClient {
    /// Starts connecting to the MCP endpoint `url` with `protocol`; configure
    /// the returned [`Connect`] and `.await` it.
    pub fn connect(url: impl Into<String>, protocol: Protocol) -> Connect {
        Connect {
            url: url.into(),
            protocol,
            auth: None,
            http: None,
            client_info: json!({"name": "rmcp-guard-testkit", "version": env!("CARGO_PKG_VERSION")}),
            capabilities: json!({}),
            headers: HeaderMap::new(),
        }
    }

    /// The protocol generation this client speaks.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The `MCP-Protocol-Version` this client sends: for 2025-11-25 the
    /// version the server answered `initialize` with.
    pub fn protocol_version(&self) -> &str {
        &self.negotiated
    }

    /// The session the server opened (2025-11-25 with a stateful server).
    pub fn session_id(&self) -> Option<&str> {
        self.session_id.as_deref()
    }

    /// The `initialize` result (2025-11-25 only).
    pub fn initialize_result(&self) -> Option<&Value> {
        self.initialize_result.as_ref()
    }

    /// Replaces the credentials sent from now on with a bearer token
    /// (`None`: no `Authorization` header), e.g. after a step-up.
    pub fn set_bearer(&mut self, token: Option<String>) {
        self.auth = token.map(Auth::Bearer);
    }

    /// Replaces the credentials sent from now on with a DPoP-bound token and
    /// its key (`None`: no `Authorization` header); see [DPoP](self#dpop).
    /// A nonce already received is kept.
    pub fn set_dpop(&mut self, credentials: Option<(String, DpopKey)>) {
        self.auth = credentials.map(|(token, key)| Auth::Dpop(token, key));
    }

    /// The latest `DPoP-Nonce` the server sent (with DPoP credentials only),
    /// which the next proof carries.
    pub fn dpop_nonce(&self) -> Option<String> {
        self.dpop_nonce.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Every tool, following `nextCursor` pages. Remembers each tool's input
    /// schema for the `Mcp-Param-*` headers of later calls.
    ///
    /// # Errors
    ///
    /// See [`McpError`].
    pub async fn list_tools(&self) -> Result<Vec<Tool>, McpError> {
        let mut tools = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let params = match &cursor {
                Some(c) => json!({"cursor": c}),
                None => json!({}),
            };
            let result = self.request("tools/list", params).await?;
            let page = result
                .get("tools")
                .cloned()
                .ok_or_else(|| McpError::Protocol("tools/list result without `tools`".into()))?;
            let page: Vec<Tool> =
                serde_json::from_value(page).map_err(|e| McpError::Protocol(format!("tools/list result: {e}")))?;
            {
                let mut schemas = self.tool_schemas.lock().unwrap_or_else(PoisonError::into_inner);
                for tool in &page {
                    schemas.insert(tool.name.to_string(), (*tool.input_schema).clone());
                }
            }
            tools.extend(page);
            cursor = result.get("nextCursor").and_then(Value::as_str).map(str::to_owned);
            if cursor.is_none() {
                return Ok(tools);
            }
        }
    }

    /// Calls the tool `name` with `arguments` (a JSON object, or `Value::Null`
    /// for none). A tool that fails reports it in the result
    /// (`is_error: Some(true)`); an unknown tool or bad arguments is usually
    /// a [`McpError::JsonRpc`].
    ///
    /// For 2026-07-28, a tool this client has not seen in a listing yet is
    /// looked up with [`McpClient::list_tools`] first (its schema says which
    /// arguments go into `Mcp-Param-*` headers). [`McpClient::request`] never
    /// lists by itself.
    ///
    /// # Errors
    ///
    /// See [`McpError`].
    pub async fn call_tool(&self, name: &str, arguments: Value) -> Result<CallToolResult, McpError> {
        if self.protocol == Protocol::V2026_07_28 && !self.knows_tool(name) {
            // The `Mcp-Param-*` headers come from the tool's schema, which a
            // client knows from a listing: list once, as a real client would.
            self.list_tools().await?;
        }
        let params = if arguments.is_null() {
            json!({"name": name})
        } else {
            json!({"name": name, "arguments": arguments})
        };
        let result = self.request("tools/call", params).await?;
        serde_json::from_value(result).map_err(|e| McpError::Protocol(format!("tools/call result: {e}")))
    }

    /// `server/discover` (2026-07-28): the versions and capabilities the
    /// server offers.
    ///
    /// # Errors
    ///
    /// See [`McpError`]; servers of earlier generations answer "method not
    /// found".
    pub async fn discover(&self) -> Result<DiscoverResult, McpError> {
        let result = self.request("server/discover", Value::Null).await?;
        serde_json::from_value(result).map_err(|e| McpError::Protocol(format!("server/discover result: {e}")))
    }

    /// Sends any request and returns its `result`. `params` is a JSON object
    /// (or `Value::Null` for none); for 2026-07-28 the client context is
    /// added to `params._meta` (keys already there are kept).
    ///
    /// # Errors
    ///
    /// See [`McpError`].
    pub async fn request(&self, method: &str, params: Value) -> Result<Value, McpError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let params = self.with_meta(params)?;
        let mut body = json!({"jsonrpc": "2.0", "id": id, "method": method});
        if let Some(params) = &params {
            body["params"] = params.clone();
        }
        let headers = self.request_headers(method, params.as_ref());
        let response = self.post(&body, headers).await?;
        read_response(response, &json!(id)).await
    }

    /// Sends a notification; the server must answer 2xx (202).
    ///
    /// # Errors
    ///
    /// See [`McpError`].
    pub async fn notify(&self, method: &str, params: Value) -> Result<(), McpError> {
        let mut body = json!({"jsonrpc": "2.0", "method": method});
        if !params.is_null() {
            body["params"] = params;
        }
        let mut headers = HeaderMap::new();
        if self.protocol == Protocol::V2026_07_28 {
            insert(&mut headers, HEADER_METHOD, method);
        }
        let response = self.post(&body, headers).await?;
        check_status(response).await.map(drop)
    }

    /// Ends the session: DELETE with its `Mcp-Session-Id` (2025-11-25 with a
    /// session). A server that does not let clients end sessions (405) is
    /// not an error. Without a session nothing is sent.
    ///
    /// # Errors
    ///
    /// See [`McpError`].
    pub async fn close(self) -> Result<(), McpError> {
        let Some(session) = &self.session_id else {
            return Ok(());
        };
        let request = self
            .http
            .delete(&self.url)
            .headers(self.headers.clone())
            .header(HEADER_SESSION_ID, session)
            .header(HEADER_PROTOCOL_VERSION, &self.negotiated);
        let response = self.send(&Method::DELETE, request).await?;
        if response.status() == StatusCode::METHOD_NOT_ALLOWED {
            return Ok(());
        }
        check_status(response).await.map(drop)
    }

    fn knows_tool(&self, name: &str) -> bool {
        let schemas = self.tool_schemas.lock().unwrap_or_else(PoisonError::into_inner);
        schemas.contains_key(name)
    }

    /// The 2025-11-25 handshake.
    async fn initialize(&mut self) -> Result<(), McpError> {
        let body = json!({
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {
                "protocolVersion": Protocol::V2025_11_25.as_str(),
                "capabilities": self.capabilities,
                "clientInfo": self.client_info,
            },
        });
        let response = self.post(&body, HeaderMap::new()).await?;
        self.session_id = response
            .headers()
            .get(HEADER_SESSION_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let result = read_response(response, &json!(0)).await?;
        let version = result
            .get("protocolVersion")
            .and_then(Value::as_str)
            .ok_or_else(|| McpError::Protocol("initialize result without `protocolVersion`".into()))?;
        self.negotiated = version.to_owned();
        self.initialize_result = Some(result);
        self.notify("notifications/initialized", Value::Null).await
    }

    /// For 2026-07-28, `params` with the client context in `_meta`.
    fn with_meta(&self, params: Value) -> Result<Option<Value>, McpError> {
        if self.protocol != Protocol::V2026_07_28 {
            return Ok((!params.is_null()).then_some(params));
        }
        let mut params = match params {
            Value::Null => Map::new(),
            Value::Object(map) => map,
            other => return Err(McpError::Protocol(format!("params must be a JSON object, not {other}"))),
        };
        let meta = params.entry("_meta").or_insert_with(|| json!({}));
        let Value::Object(meta) = meta else {
            return Err(McpError::Protocol("params._meta must be a JSON object".into()));
        };
        meta.entry(META_PROTOCOL_VERSION)
            .or_insert_with(|| json!(self.negotiated));
        meta.entry(META_CLIENT_INFO).or_insert_with(|| self.client_info.clone());
        meta.entry(META_CLIENT_CAPABILITIES)
            .or_insert_with(|| self.capabilities.clone());
        Ok(Some(Value::Object(params)))
    }

    /// The `Mcp-*` headers of a 2026-07-28 request.
    fn request_headers(&self, method: &str, params: Option<&Value>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if self.protocol != Protocol::V2026_07_28 {
            return headers;
        }
        insert(&mut headers, HEADER_METHOD, method);
        let name_key = match method {
            "tools/call" | "prompts/get" => Some("name"),
            "resources/read" | "resources/subscribe" | "resources/unsubscribe" => Some("uri"),
            "tasks/get" | "tasks/update" | "tasks/cancel" => Some("taskId"),
            _ => None,
        };
        if let Some(name) = name_key.and_then(|key| params?.get(key)?.as_str()) {
            insert(&mut headers, HEADER_NAME, &encode_header_value(name));
        }
        if method == "tools/call"
            && let Some(params) = params
            && let Some(tool) = params.get("name").and_then(Value::as_str)
        {
            let schemas = self.tool_schemas.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(schema) = schemas.get(tool) {
                let arguments = params.get("arguments").unwrap_or(&Value::Null);
                for (path, header) in param_headers(schema) {
                    let value = path.iter().try_fold(arguments, |v, key| v.get(key));
                    if let Some(value) = value.and_then(primitive_to_string) {
                        let name = format!("{HEADER_PARAM_PREFIX}{header}");
                        insert(&mut headers, &name, &encode_header_value(&value));
                    }
                }
            }
        }
        headers
    }

    /// POSTs `body` with the connection's headers plus `extra`.
    async fn post(&self, body: &Value, extra: HeaderMap) -> Result<reqwest::Response, McpError> {
        let mut request = self
            .http
            .post(&self.url)
            .header(ACCEPT, ACCEPT_BOTH)
            .header(CONTENT_TYPE, "application/json")
            .headers(self.headers.clone())
            .headers(extra);
        let is_initialize = body.get("method").and_then(Value::as_str) == Some("initialize");
        if !is_initialize {
            request = request.header(HEADER_PROTOCOL_VERSION, &self.negotiated);
        }
        if let Some(session) = &self.session_id {
            request = request.header(HEADER_SESSION_ID, session);
        }
        let body = serde_json::to_vec(body).map_err(|e| McpError::Protocol(e.to_string()))?;
        self.send(&Method::POST, request.body(body)).await
    }

    /// Sends `request` (HTTP `method` to this client's URL) with the
    /// client's credentials. With DPoP: a fresh proof, the nonce of every
    /// answer remembered, and one retry when the server asks for a nonce.
    async fn send(&self, method: &Method, request: RequestBuilder) -> Result<reqwest::Response, McpError> {
        // The body is bytes, so the request can always be cloned.
        let retry = request.try_clone();
        let response = self.authorize(method, request).send().await?;
        match retry {
            Some(retry) if self.note_nonce(&response) => {
                let response = self.authorize(method, retry).send().await?;
                self.note_nonce(&response);
                Ok(response)
            }
            _ => Ok(response),
        }
    }

    /// `request` with the `Authorization` header and, for DPoP, a new proof.
    fn authorize(&self, method: &Method, request: RequestBuilder) -> RequestBuilder {
        match &self.auth {
            None => request,
            Some(Auth::Bearer(token)) => request.header(AUTHORIZATION, format!("Bearer {token}")),
            Some(Auth::Dpop(token, key)) => {
                let mut proof = key.proof(method.as_str(), &htu(&self.url)).access_token(token);
                if let Some(nonce) = self.dpop_nonce() {
                    proof = proof.nonce(nonce);
                }
                request
                    .header(AUTHORIZATION, format!("DPoP {token}"))
                    .header(HEADER_DPOP, proof.sign())
            }
        }
    }

    /// With DPoP credentials, remembers the answer's `DPoP-Nonce`; whether
    /// the answer is a `use_dpop_nonce` challenge (401 with a nonce).
    fn note_nonce(&self, response: &reqwest::Response) -> bool {
        if !matches!(self.auth, Some(Auth::Dpop(..))) {
            return false;
        }
        let Some(nonce) = response
            .headers()
            .get(HEADER_DPOP_NONCE)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
        else {
            return false;
        };
        *self.dpop_nonce.lock().unwrap_or_else(PoisonError::into_inner) = Some(nonce.to_owned());
        response.status() == StatusCode::UNAUTHORIZED
            && response
                .headers()
                .get_all(WWW_AUTHENTICATE)
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| v.contains("use_dpop_nonce")))
    }
}

/// A proof's `htu`: `url` without query and fragment.
fn htu(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut url) => {
            url.set_query(None);
            url.set_fragment(None);
            url.into()
        }
        Err(_) => url.split(['?', '#']).next().unwrap_or(url).to_owned(),
    }
}

/// Inserts a header whose name and value were built here; an invalid one is
/// skipped (the server then reports the missing header, which a test sees).
fn insert(headers: &mut HeaderMap, name: &str, value: &str) {
    if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
        headers.insert(name, value);
    }
}

/// A non-2xx answer as [`McpError::Http`].
async fn check_status(response: reqwest::Response) -> Result<reqwest::Response, McpError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let www_authenticate = response
        .headers()
        .get(WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response.text().await.unwrap_or_default();
    Err(McpError::Http {
        status,
        www_authenticate,
        body,
    })
}

/// The `result` of the JSON-RPC response to `id`, from a JSON or SSE answer.
async fn read_response(response: reqwest::Response, id: &Value) -> Result<Value, McpError> {
    let mut response = check_status(response).await?;
    let is_sse = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.trim_start().starts_with("text/event-stream"));
    if !is_sse {
        let bytes = response.bytes().await?;
        let message: Value =
            serde_json::from_slice(&bytes).map_err(|e| McpError::Protocol(format!("answer is not JSON: {e}")))?;
        return into_result(message, id)?.ok_or_else(|| {
            let text = String::from_utf8_lossy(&bytes);
            McpError::Protocol(format!("no response with id {id} in {text}"))
        });
    }
    let mut events = SseParser::default();
    loop {
        let chunk = response.chunk().await?;
        let done = chunk.is_none();
        let data = match chunk {
            Some(bytes) => events.push(&bytes),
            None => events.finish(),
        };
        for data in data {
            let Ok(message) = serde_json::from_str::<Value>(&data) else {
                continue;
            };
            if let Some(result) = into_result(message, id)? {
                return Ok(result);
            }
        }
        if done {
            return Err(McpError::Protocol(format!(
                "the event stream ended without a response to id {id}"
            )));
        }
    }
}

/// `Some(result)` if `message` is the response to `id`, an error if it is
/// the error response to `id`, `None` for any other message.
fn into_result(message: Value, id: &Value) -> Result<Option<Value>, McpError> {
    if message.get("id") != Some(id) {
        return Ok(None);
    }
    if let Some(error) = message.get("error") {
        let code = error
            .get("code")
            .and_then(Value::as_i64)
            .and_then(|c| i32::try_from(c).ok())
            .unwrap_or(0);
        return Err(McpError::JsonRpc {
            code,
            message: error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            data: error.get("data").cloned(),
        });
    }
    match message.get("result") {
        Some(result) => Ok(Some(result.clone())),
        None => Ok(None),
    }
}

/// Splits a `text/event-stream` body into the `data` of its events.
#[derive(Debug, Default)]
struct SseParser {
    buffer: Vec<u8>,
    data: Vec<String>,
}

impl SseParser {
    /// Feeds bytes; returns the data of every event they complete.
    fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buffer.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buffer.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            self.line(line, &mut out);
        }
        out
    }

    /// The end of the stream: a last event without its blank line.
    fn finish(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.buffer.is_empty() {
            let rest = std::mem::take(&mut self.buffer);
            let rest = String::from_utf8_lossy(&rest).into_owned();
            self.line(rest.trim_end_matches('\r'), &mut out);
        }
        self.line("", &mut out);
        out
    }

    fn line(&mut self, line: &str, out: &mut Vec<String>) {
        if line.is_empty() {
            if !self.data.is_empty() {
                out.push(self.data.join("\n"));
                self.data.clear();
            }
        } else if let Some(value) = line.strip_prefix("data:") {
            self.data.push(value.strip_prefix(' ').unwrap_or(value).to_owned());
        }
        // `event:`, `id:`, `retry:` and `:` comments carry nothing we need.
    }
}

/// `(path, header name)` of every string `x-mcp-header` annotation reached
/// from the schema root through `properties` alone.
fn param_headers(schema: &Map<String, Value>) -> Vec<(Vec<String>, String)> {
    fn walk(properties: Option<&Value>, path: &mut Vec<String>, out: &mut Vec<(Vec<String>, String)>) {
        let Some(Value::Object(properties)) = properties else {
            return;
        };
        for (name, schema) in properties {
            path.push(name.clone());
            if let Some(Value::String(header)) = schema.get("x-mcp-header")
                && !header.is_empty()
            {
                out.push((path.clone(), header.clone()));
            }
            walk(schema.get("properties"), path, out);
            path.pop();
        }
    }
    let mut out = Vec::new();
    walk(schema.get("properties"), &mut Vec::new(), &mut out);
    out
}

/// A string, boolean or number as header text; `None` for anything else.
fn primitive_to_string(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `value`, or `=?base64?{standard base64}?=` when it is not safe as a plain
/// header value (leading or trailing whitespace, control or non-ASCII
/// characters, or text that looks like the sentinel itself).
fn encode_header_value(value: &str) -> String {
    let unsafe_edge = value.starts_with([' ', '\t']) || value.ends_with([' ', '\t']);
    let unsafe_char = value.chars().any(|c| !(' '..='~').contains(&c));
    let looks_encoded = value.starts_with("=?base64?") && value.ends_with("?=");
    if unsafe_edge || unsafe_char || looks_encoded {
        format!("=?base64?{}?=", STANDARD.encode(value))
    } else {
        value.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_defaults() {
        let c = McpClient::connect("http://127.0.0.1:1/mcp", Protocol::V2026_07_28);
        assert!(c.auth.is_none());
        assert!(c.http.is_none());
        assert!(c.headers.is_empty());
        assert_eq!(c.client_info["name"], "rmcp-guard-testkit");
        assert_eq!(c.client_info["version"], env!("CARGO_PKG_VERSION"));
        assert!(
            !format!("{:?}", c.bearer("secret")).contains("secret"),
            "Debug redacts the token"
        );
        let key = DpopKey::es256();
        assert!(
            !format!(
                "{:?}",
                McpClient::connect("http://127.0.0.1:1/mcp", Protocol::V2026_07_28).dpop("secret", &key)
            )
            .contains("secret")
        );
    }

    #[test]
    fn stateless_requests_carry_the_client_context() {
        let client = McpClient {
            http: reqwest::Client::new(),
            url: "http://127.0.0.1:1/mcp".into(),
            protocol: Protocol::V2026_07_28,
            auth: None,
            client_info: json!({"name": "t", "version": "1"}),
            capabilities: json!({}),
            headers: HeaderMap::new(),
            session_id: None,
            negotiated: "2026-07-28".into(),
            initialize_result: None,
            next_id: AtomicU64::new(1),
            tool_schemas: Mutex::new(HashMap::new()),
            dpop_nonce: Mutex::new(None),
        };
        let params = client
            .with_meta(json!({"name": "get_weather", "_meta": {"progressToken": 7}}))
            .unwrap()
            .unwrap();
        assert_eq!(
            params["_meta"],
            json!({
                "progressToken": 7,
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"},
                "io.modelcontextprotocol/clientCapabilities": {},
            })
        );
        let headers = client.request_headers("tools/call", Some(&params));
        assert_eq!(headers["mcp-method"], "tools/call");
        assert_eq!(headers["mcp-name"], "get_weather");
        let headers = client.request_headers("resources/read", Some(&json!({"uri": "file:///a b"})));
        assert_eq!(headers["mcp-name"], "file:///a b");
        assert!(client.with_meta(json!([1])).is_err(), "params must be an object");
    }

    #[test]
    fn htu_drops_query_and_fragment() {
        assert_eq!(htu("http://127.0.0.1:8080/mcp?a=1#f"), "http://127.0.0.1:8080/mcp");
        assert_eq!(htu("http://127.0.0.1:8080/mcp"), "http://127.0.0.1:8080/mcp");
        assert_eq!(htu("not a url?x"), "not a url");
    }

    #[test]
    fn sse_parser_joins_data_lines_and_skips_comments() {
        let mut p = SseParser::default();
        assert!(p.push(b": keep-alive\r\n\r\nid: 1\r\nda").is_empty());
        assert_eq!(p.push(b"ta: {\"a\":\r\ndata: 1}\r\n\r\ndata:x"), vec!["{\"a\":\n1}"]);
        assert_eq!(p.finish(), vec!["x"]);
    }

    #[test]
    fn empty_priming_events_yield_nothing() {
        let mut p = SseParser::default();
        assert_eq!(p.push(b"id: 0\nretry: 3000\ndata:\n\n"), vec![""]);
    }

    #[test]
    fn header_values_outside_plain_ascii_are_base64() {
        assert_eq!(encode_header_value("get_weather"), "get_weather");
        assert_eq!(encode_header_value("héllo"), "=?base64?aMOpbGxv?=");
        assert_eq!(encode_header_value(" x"), "=?base64?IHg=?=");
        assert_eq!(encode_header_value("=?base64?x?="), "=?base64?PT9iYXNlNjQ/eD89?=");
    }

    #[test]
    fn annotated_parameters_are_found_through_properties_only() {
        let schema = json!({
            "type": "object",
            "properties": {
                "region": {"type": "string", "x-mcp-header": "Region"},
                "nested": {"type": "object", "properties": {"id": {"type": "integer", "x-mcp-header": "Id"}}},
                "list": {"type": "array", "items": {"type": "string", "x-mcp-header": "Nope"}}
            }
        });
        let Value::Object(schema) = schema else { unreachable!() };
        let mut found = param_headers(&schema);
        found.sort();
        assert_eq!(
            found,
            vec![
                (vec!["nested".to_owned(), "id".to_owned()], "Id".to_owned()),
                (vec!["region".to_owned()], "Region".to_owned()),
            ]
        );
    }

    #[test]
    fn jsonrpc_errors_are_typed() {
        let err = into_result(
            json!({"jsonrpc": "2.0", "id": 3, "error": {"code": -32602, "message": "bad"}}),
            &json!(3),
        )
        .unwrap_err();
        assert_eq!(err.code(), Some(-32602));
        assert!(
            into_result(json!({"jsonrpc": "2.0", "id": 4, "result": {}}), &json!(3))
                .unwrap()
                .is_none()
        );
    }
}
