//! The output guard over real HTTP: tools that read their caller's
//! credential from a real OpenBao (`bao server -dev`) and leak it the way
//! buggy tools do (raw text, a connection URL, structured content, error
//! results and JSON-RPC errors, base64, percent-encoding, JSON escapes,
//! `Basic` credentials, embedded resources) are served by [`Guard`] and
//! called by rmcp's own client with test-kit tokens. The client must not be
//! able to read the password in any form; the audit trail says what was
//! removed (rule, count, tool) and never the value. Also the
//! `secure_server` example's `diagnose_connection`, run as a user runs it.
//!
//! "Cannot read it in any form" is checked by decoding, not by listing the
//! encodings the guard knows: [`readable`] undoes JSON escapes (any hex
//! case, three levels deep), percent-encoding and base64 (both alphabets,
//! any alignment) over everything the client received, and
//! `the_leak_check_reads_every_encoding` proves it finds each form.
#![cfg(feature = "integrity")]

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Json;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ContentBlock, ResourceContents, ServerCapabilities, ServerConfig,
};
use rmcp::service::RunningService;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ErrorData, RoleClient, ServerHandler, ServiceExt, schemars, tool, tool_handler, tool_router};
use rmcp_guard::Guard;
use rmcp_guard::integrity::{OutputPolicy, RedactionRule};
use rmcp_guard::limit::{Rate, RequestLimits};
use rmcp_guard::oauth::{Issuer, ResourceServer};
use rmcp_guard::secrets::{CallerCredentials, Credentials, VaultAuth, VaultStore};
use rmcp_guard_testkit::TestIssuer;
use serde_json::{Value, json};
use support::bao::{Bao, ROOT};
use tracing::field::{Field, Visit};
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::{Context, SubscriberExt};

const TIMEOUT: Duration = Duration::from_secs(20);
const SCOPE: &str = "mcp:tools";
const TENANT: &str = "acme";
/// The service whose credential the tools read: `secret/mcp/acme/inventory-db`.
const SERVICE: &str = "inventory-db";
const USERNAME: &str = "svc-inventory";
/// A quote, a slash, an at sign, a space and a non-ASCII letter: each
/// encoding of it differs from the raw value.
const PASSWORD: &str = "Kx9 \"vélo\"/@Zq-4417";
const MARKER: &str = "[REDACTED:secret_value]";

/// A JWT-shaped string (header `{"alg":"RS256","typ":"JWT"}`).
const JWT: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJzdmMtYmFja3VwIiwic2NvcGUiOiJhZG1pbiJ9.\
                   c2lnbmF0dXJlLW9mLWEtbGVha2VkLXRva2Vu";
/// The body line of a private key block.
const PEM_BODY: &str = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj";

/// What an ordinary tool answers: URLs, percent signs, JSON, hashes,
/// numbers; nothing a rule should touch.
const ORDINARY: &str = "Inventory of site dc1 (updated 2026-01-02T03:04:05Z):\n\
     {\"devices\": [{\"id\": 1042, \"name\": \"core-sw-01\", \"ip\": \"10.20.0.1\", \"uplink\": \"98% utilised\"},\n\
     {\"id\": 1043, \"name\": \"edge-rtr-02\", \"sha\": \"0123456789abcdef0123456789abcdef01234567\"}]}\n\
     Docs: https://inventory.example.com/api/v2/devices?site=dc1&page=2 (see %PATH% notes, 100% done).\n\
     Contact: the network team at 10:30; ticket INC-20260102; build 1.2.3-beta+42; déjà vu, 東京.";

// ---------------------------------------------------------------------------
// The leaky tools.

#[derive(Clone)]
struct Leaky {
    tool_router: ToolRouter<Self>,
}

/// A structured report that carries the password as a value and as a
/// member name.
#[derive(serde::Serialize, schemars::JsonSchema)]
struct Report {
    /// The account used.
    connected_as: String,
    /// The password used (the bug).
    password: String,
    /// Login attempts, by the password tried (the bug, as a member name).
    attempts: BTreeMap<String, String>,
}

/// The caller's account and password for [`SERVICE`].
async fn login(credentials: &CallerCredentials) -> Result<(String, String), ErrorData> {
    let secret = credentials.get(SERVICE).await?;
    Ok((
        secret.expose_required("username")?.to_owned(),
        secret.expose_required("password")?.to_owned(),
    ))
}

/// A connection URL built properly (`url` percent-encodes the user
/// information), as a careful-but-leaky tool does.
fn dsn(user: &str, password: &str) -> String {
    let mut url = url::Url::parse("postgres://db.internal:5432/inventory").expect("a URL");
    url.set_username(user).expect("a username");
    url.set_password(Some(password)).expect("a password");
    url.to_string()
}

/// Every byte `%XX`, in the hex case given.
fn percent_all(value: &str, upper: bool) -> String {
    value
        .bytes()
        .map(|b| {
            if upper {
                format!("%{b:02X}")
            } else {
                format!("%{b:02x}")
            }
        })
        .collect()
}

/// Only the characters a URL needs escaped, lower-case hex, `/` literal:
/// a mix of escaped and literal characters.
fn percent_some(value: &str) -> String {
    let mut out = String::new();
    for c in value.chars() {
        match c {
            'A'..='Z' | 'a'..='z' | '0'..='9' | '-' | '/' => out.push(c),
            _ => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("%{b:02x}"));
                }
            }
        }
    }
    out
}

/// JSON with every non-ASCII character as `\uXXXX` in the hex case given,
/// and `/` as `\/` when asked (PHP's `json_encode` writes `\/` and
/// lower-case `\u00e9`; .NET and Jackson's ASCII mode write `\u00E9`).
fn json_ascii(value: &str, upper: bool, escape_slash: bool) -> String {
    let serde = serde_json::to_string(value).expect("a JSON string");
    let mut out = String::new();
    for c in serde.chars() {
        if c.is_ascii() {
            if c == '/' && escape_slash {
                out.push_str("\\/");
            } else {
                out.push(c);
            }
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                if upper {
                    out.push_str(&format!("\\u{unit:04X}"));
                } else {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    out
}

/// The forms `leak_encoded` writes, by name (also the rows of the leak
/// check's self-test).
fn encoded_forms(user: &str, password: &str) -> Vec<(&'static str, String)> {
    vec![
        ("base64", STANDARD.encode(password)),
        ("base64url", URL_SAFE_NO_PAD.encode(password)),
        ("percent, upper case", percent_all(password, true)),
        ("percent, lower case", percent_all(password, false)),
        ("percent, mixed with literal", percent_some(password)),
        (
            "form-urlencoded",
            url::form_urlencoded::byte_serialize(password.as_bytes()).collect(),
        ),
        ("json (serde)", json!({ "password": password }).to_string()),
        (
            "json, \\/ escaped",
            json!({ "password": password }).to_string().replace('/', "\\/"),
        ),
        (
            "json, ascii lower hex",
            format!("{{\"password\":{}}}", json_ascii(password, false, false)),
        ),
        (
            "basic_auth outside a header",
            STANDARD.encode(format!("{user}:{password}")),
        ),
    ]
}

/// JSON other libraries write: PHP's `json_encode` (`\/`, lower-case
/// `\u00e9`), .NET's `System.Text.Json` (upper-case `\u00E9`, `\u0022` for
/// a quote), Jackson in ASCII mode (upper-case `\u00E9`), and a JSON
/// document inside a JSON string (a log record's message).
fn json_escape_forms(password: &str) -> Vec<(&'static str, String)> {
    vec![
        ("php", format!("{{\"password\":{}}}", json_ascii(password, false, true))),
        (
            "jackson ascii",
            format!("{{\"password\":{}}}", json_ascii(password, true, false)),
        ),
        (
            "dotnet",
            format!(
                "{{\"password\":{}}}",
                json_ascii(password, true, false).replace("\\\"", "\\u0022")
            ),
        ),
        (
            "json in a json string",
            serde_json::to_string(&json!({ "password": password }).to_string()).expect("JSON"),
        ),
    ]
}

#[tool_router]
impl Leaky {
    fn new() -> Self {
        Leaky {
            tool_router: Self::tool_router(),
        }
    }

    #[tool(description = "Connect to the inventory database and report how")]
    async fn leak_text(&self, credentials: CallerCredentials) -> Result<String, ErrorData> {
        let (user, password) = login(&credentials).await?;
        Ok(format!(
            "connecting to db.internal as {user} with password {password}\n\
             dsn=postgres://{user}:{password}@db.internal:5432/inventory\n\
             encoded dsn={}",
            dsn(&user, &password)
        ))
    }

    #[tool(description = "Connect to the inventory database and report how, as JSON")]
    async fn leak_structured(&self, credentials: CallerCredentials) -> Result<Json<Report>, ErrorData> {
        let (user, password) = login(&credentials).await?;
        Ok(Json(Report {
            connected_as: user,
            password: password.clone(),
            attempts: BTreeMap::from([(password, "rejected: account locked".to_owned())]),
        }))
    }

    #[tool(description = "Connect to the inventory database; fails")]
    async fn leak_error_result(&self, credentials: CallerCredentials) -> Result<CallToolResult, ErrorData> {
        let (user, password) = login(&credentials).await?;
        Ok(CallToolResult::error(vec![ContentBlock::text(format!(
            "login to db.internal failed for {user} with password {password}: 401 Unauthorized"
        ))]))
    }

    #[tool(description = "Connect to the inventory database; errors")]
    async fn leak_error(&self, credentials: CallerCredentials) -> Result<String, ErrorData> {
        let (user, password) = login(&credentials).await?;
        Err(ErrorData::internal_error(
            format!("upstream refused {user} / {password}"),
            Some(json!({"user": user, "password": password, "dsn": dsn(&user, &password)})),
        ))
    }

    #[tool(description = "Show the credential in the encodings a client library uses")]
    async fn leak_encoded(&self, credentials: CallerCredentials) -> Result<String, ErrorData> {
        let (user, password) = login(&credentials).await?;
        let mut text: String = encoded_forms(&user, &password)
            .into_iter()
            .map(|(name, form)| format!("{name}: {form}\n"))
            .collect();
        text.push_str(&format!(
            "request: GET /v1/items HTTP/1.1\nAuthorization: Basic {}\n",
            STANDARD.encode(format!("{user}:{password}"))
        ));
        Ok(text)
    }

    #[tool(description = "Show the credential as other JSON libraries write it")]
    async fn leak_json_escapes(&self, credentials: CallerCredentials) -> Result<String, ErrorData> {
        let (_, password) = login(&credentials).await?;
        Ok(json_escape_forms(&password)
            .into_iter()
            .map(|(name, form)| format!("{name}: {form}\n"))
            .collect())
    }

    #[tool(description = "Show the configuration files the tool wrote")]
    async fn leak_resource(&self, credentials: CallerCredentials) -> Result<CallToolResult, ErrorData> {
        let (user, password) = login(&credentials).await?;
        Ok(CallToolResult::success(vec![
            ContentBlock::embedded_text(
                "file:///etc/inventory/db.ini",
                format!("[db]\nhost = db.internal\nuser = {user}\npassword = {password}\n"),
            ),
            ContentBlock::resource(ResourceContents::blob(
                STANDARD.encode(format!("DB_USER={user}\nDB_PASSWORD={password}\n")),
                "file:///etc/inventory/db.env",
            )),
        ]))
    }

    #[tool(description = "Show the cached session of the backup service")]
    async fn leak_patterns(&self) -> String {
        format!(
            "session token: {JWT}\nsigning key:\n-----BEGIN PRIVATE KEY-----\n{PEM_BODY}\n\
             -----END PRIVATE KEY-----\nstatus: ok"
        )
    }

    #[tool(description = "List the devices of site dc1")]
    async fn inventory(&self) -> String {
        ORDINARY.to_owned()
    }

    #[tool(description = "List the devices of site dc1, logged in")]
    async fn inventory_after_login(&self, credentials: CallerCredentials) -> Result<String, ErrorData> {
        let _ = login(&credentials).await?;
        Ok(ORDINARY.to_owned())
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Leaky {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }
}

// ---------------------------------------------------------------------------
// The guarded server, OpenBao and the client.

/// OpenBao with `secret/mcp/acme/inventory-db`.
async fn bao() -> Bao {
    let bao = Bao::start().await;
    bao.kv_put(
        &format!("mcp/{TENANT}/{SERVICE}"),
        json!({"username": USERNAME, "password": PASSWORD}),
    )
    .await;
    bao
}

/// [`Leaky`] behind [`Guard`] with `output`, credentials from `bao`; stops
/// when dropped.
struct Served {
    url: String,
    task: tokio::task::JoinHandle<()>,
    /// Cancels rmcp's open streams.
    cancel: Option<Box<dyn FnOnce() + Send>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(cancel) = self.cancel.take() {
            cancel();
        }
        self.task.abort();
    }
}

async fn serve(issuer: &TestIssuer, bao: &Bao, output: OutputPolicy) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    let rs = ResourceServer::builder(url.clone(), Issuer::with_jwks_uri(issuer.issuer(), issuer.jwks_uri()))
        .required_scopes([SCOPE])
        .build()
        .expect("valid test configuration");
    // The `VaultStoreBuilder` of a real deployment, against the dev server.
    let store = VaultStore::builder(bao.addr(), VaultAuth::token(ROOT))
        .build()
        .await
        .expect("the Vault store");
    let credentials = Credentials::builder(Arc::new(store)).build();
    let http = rs.streamable_http_config().with_sse_keep_alive(None);
    let token = http.cancellation_token.clone();
    let app = Guard::new(rs)
        .http_config(http)
        // Many calls with one token: limits that never refuse.
        .limits(
            RequestLimits::default()
                .rate(Rate::per_second(std::num::NonZeroU32::MAX))
                .burst(u32::MAX)
                .in_flight(u32::MAX),
        )
        .credentials(credentials)
        .output(output)
        .router(|| Ok(Leaky::new()));
    let task = tokio::spawn(async move {
        let _ = rmcp_guard::serve(listener, app).await;
    });
    Served {
        url,
        task,
        cancel: Some(Box::new(move || token.cancel())),
    }
}

/// A network engineer of tenant acme, named `subject` (the audit events of
/// each test are told apart by it).
fn token(issuer: &TestIssuer, url: &str, subject: &str) -> String {
    issuer
        .token()
        .subject(subject)
        .audience(url)
        .scope(SCOPE)
        .claim("groups", json!(["network-engineers"]))
        .claim("tenant", json!(TENANT))
        .sign()
}

type Client = RunningService<RoleClient, ()>;

async fn connect(url: &str, token: &str) -> Client {
    let config = StreamableHttpClientTransportConfig::with_uri(url.to_owned()).auth_header(token.to_owned());
    tokio::time::timeout(TIMEOUT, ().serve(StreamableHttpClientTransport::from_config(config)))
        .await
        .expect("handshake does not hang")
        .expect("handshake")
}

/// Everything the client got for `tool`: the result, or the JSON-RPC error.
async fn call(client: &Client, tool: &str) -> Result<CallToolResult, ErrorData> {
    let result = tokio::time::timeout(TIMEOUT, client.call_tool(CallToolRequestParams::new(tool.to_owned())))
        .await
        .expect("call does not hang");
    match result {
        Ok(result) => Ok(result),
        Err(rmcp::ServiceError::McpError(e)) => Err(e),
        Err(e) => panic!("{tool}: transport error: {e}"),
    }
}

/// The client's view of an answer as one text: its JSON.
fn wire(answer: &Result<CallToolResult, ErrorData>) -> String {
    match answer {
        Ok(result) => serde_json::to_string(result).unwrap(),
        Err(error) => serde_json::to_string(error).unwrap(),
    }
}

fn texts(result: &CallToolResult) -> Vec<&str> {
    result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.as_str()))
        .collect()
}

// ---------------------------------------------------------------------------
// The leak check: can `secret` be read back from what the client got?

/// Undo one level of JSON string escapes (`\"`, `\\`, `\/`, `\n`...,
/// `\uXXXX` in either hex case, surrogate pairs); anything else is kept.
fn json_unescape(text: &str) -> String {
    fn hex4(c: &[char], at: usize) -> Option<u32> {
        let digits: String = c.get(at..at + 4)?.iter().collect();
        if digits.len() == 4 && digits.chars().all(|d| d.is_ascii_hexdigit()) {
            u32::from_str_radix(&digits, 16).ok()
        } else {
            None
        }
    }
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < c.len() {
        if c[i] == '\\' && i + 1 < c.len() {
            let simple = match c[i + 1] {
                '"' => Some('"'),
                '\\' => Some('\\'),
                '/' => Some('/'),
                'n' => Some('\n'),
                't' => Some('\t'),
                'r' => Some('\r'),
                'b' => Some('\u{8}'),
                'f' => Some('\u{c}'),
                _ => None,
            };
            if let Some(s) = simple {
                out.push(s);
                i += 2;
                continue;
            }
            if c[i + 1] == 'u'
                && let Some(unit) = hex4(&c, i + 2)
            {
                if (0xD800..0xDC00).contains(&unit)
                    && c.get(i + 6) == Some(&'\\')
                    && c.get(i + 7) == Some(&'u')
                    && let Some(low) = hex4(&c, i + 8)
                    && (0xDC00..0xE000).contains(&low)
                    && let Some(ch) = char::from_u32(0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00))
                {
                    out.push(ch);
                    i += 12;
                    continue;
                }
                if let Some(ch) = char::from_u32(unit) {
                    out.push(ch);
                    i += 6;
                    continue;
                }
            }
        }
        out.push(c[i]);
        i += 1;
    }
    out
}

/// `%XX` decoded (either hex case); invalid UTF-8 replaced.
fn percent_decode(text: &str) -> String {
    let raw = text.as_bytes();
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%'
            && i + 2 < raw.len()
            && let Ok(b) = u8::from_str_radix(std::str::from_utf8(&raw[i + 1..i + 3]).unwrap_or("zz"), 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Base64 without padding, a partial last group allowed.
const LENIENT: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::RequireNone),
);

/// Whether a run of base64 characters in `text` (either alphabet, at any
/// of the four alignments) decodes to bytes holding `secret`.
fn base64_holds(text: &str, secret: &str) -> bool {
    let is_b64 = |c: char| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '-' | '_');
    text.split(|c: char| !is_b64(c))
        .filter(|run| run.len() >= 8)
        .any(|run| {
            let normal = run.replace('-', "+").replace('_', "/");
            (0..4).any(|skip| {
                let s = &normal[skip.min(normal.len())..];
                // A last group of one character holds no whole byte.
                let s = if s.len() % 4 == 1 { &s[..s.len() - 1] } else { s };
                LENIENT
                    .decode(s)
                    .is_ok_and(|bytes| bytes.windows(secret.len()).any(|w| w == secret.as_bytes()))
            })
        })
}

/// How `secret` can still be read from `text`: as is, or after undoing
/// up to three levels of JSON escapes, percent-encoding (`+` for a space
/// or not) and base64. Empty: it cannot.
fn readable(text: &str, secret: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut view = text.to_owned();
    for depth in 0..4 {
        let views = [
            ("as is", view.clone()),
            ("percent-decoded", percent_decode(&view)),
            ("form-decoded", percent_decode(&view.replace('+', " "))),
        ];
        for (how, decoded) in views {
            if decoded.contains(secret) {
                found.push(format!("{how}, after {depth} JSON unescapes"));
            }
        }
        if base64_holds(&view, secret) {
            found.push(format!("base64-decoded, after {depth} JSON unescapes"));
        }
        view = json_unescape(&view);
    }
    found
}

#[track_caller]
fn assert_unreadable(text: &str, secret: &str, what: &str) {
    let found = readable(text, secret);
    assert!(
        found.is_empty(),
        "{what}: the secret can be read ({found:?}) in:\n{text}"
    );
}

// ---------------------------------------------------------------------------
// Audit capture: every event of this test binary.

type Fields = BTreeMap<String, String>;

fn audit_events() -> &'static Mutex<Vec<Fields>> {
    static EVENTS: OnceLock<Mutex<Vec<Fields>>> = OnceLock::new();
    EVENTS.get_or_init(|| Mutex::new(Vec::new()))
}

/// Every captured event (of any target) as a line.
fn log_lines() -> &'static Mutex<Vec<String>> {
    static LINES: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    LINES.get_or_init(|| Mutex::new(Vec::new()))
}

struct Capture;

struct Collect<'a>(&'a mut Fields);

impl Visit for Collect<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut fields = Fields::new();
        event.record(&mut Collect(&mut fields));
        let target = event.metadata().target();
        let line: String = fields.iter().map(|(k, v)| format!(" {k}={v:?}")).collect();
        log_lines()
            .lock()
            .unwrap()
            .push(format!("{} {target}:{line}", event.metadata().level()));
        if target == rmcp_guard::audit::TARGET {
            audit_events().lock().unwrap().push(fields);
        }
    }
}

/// Capture the events of every test of this binary (rmcp-guard's at every
/// level, the rest from `info`).
fn capture_audit() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let filter = tracing_subscriber::filter::Targets::new()
            .with_target("rmcp_guard", tracing::Level::TRACE)
            .with_default(tracing::Level::INFO);
        let _ =
            tracing::subscriber::set_global_default(tracing_subscriber::registry().with(Capture.with_filter(filter)));
    });
}

/// `(rule, count)` of the `output_redacted` events of `subject` for `tool`.
fn redactions(subject: &str, tool: &str) -> Vec<(String, usize)> {
    let events = audit_events().lock().unwrap();
    let mut rules: Vec<(String, usize)> = events
        .iter()
        .filter(|e| {
            e.get("event").map(String::as_str) == Some("output_redacted")
                && e.get("subject").map(String::as_str) == Some(subject)
                && e.get("resource").map(String::as_str) == Some(tool)
        })
        .map(|e| {
            assert_eq!(e.get("outcome").map(String::as_str), Some("allow"), "{e:?}");
            assert_eq!(e.get("tenant").map(String::as_str), Some(TENANT), "{e:?}");
            assert!(
                e.get("issuer").is_some_and(|i| i.starts_with("http://127.0.0.1:")),
                "{e:?}"
            );
            (e["rule"].clone(), e["count"].parse().expect("a count"))
        })
        .collect();
    rules.sort();
    rules
}

fn rules(list: &[(RedactionRule, usize)]) -> Vec<(String, usize)> {
    let mut v: Vec<(String, usize)> = list.iter().map(|(r, n)| (r.as_str().to_owned(), *n)).collect();
    v.sort();
    v
}

/// Every test is bounded in time.
async fn bounded<F: Future<Output = ()>>(secs: u64, f: F) {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .expect("test timed out");
}

// ---------------------------------------------------------------------------
// Tests.

#[test]
fn the_leak_check_reads_every_encoding() {
    let mut forms: Vec<(&str, String)> = encoded_forms(USERNAME, PASSWORD);
    forms.extend(json_escape_forms(PASSWORD));
    forms.extend([
        ("raw", PASSWORD.to_owned()),
        ("url userinfo", dsn(USERNAME, PASSWORD)),
        (
            "Basic header",
            format!(
                "Authorization: Basic {}",
                STANDARD.encode(format!("{USERNAME}:{PASSWORD}"))
            ),
        ),
        ("base64, shifted by 1", STANDARD.encode(format!("x{PASSWORD}"))),
        ("base64, shifted by 2", URL_SAFE_NO_PAD.encode(format!("xy{PASSWORD}"))),
    ]);
    for (name, form) in &forms {
        assert_ne!(
            readable(&format!("before {form} after"), PASSWORD),
            Vec::<String>::new(),
            "{name}: {form}"
        );
        // Through the wire too: inside a JSON string.
        assert!(
            !readable(&json!({ "text": format!("{name}: {form}") }).to_string(), PASSWORD).is_empty(),
            "{name} in JSON"
        );
    }
    assert_unreadable(ORDINARY, PASSWORD, "ordinary text");
    assert_unreadable(&format!("a {MARKER} b"), PASSWORD, "the marker");
}

/// Every way a tool can leak the password it read: none reaches the client,
/// each is replaced by the marker, the public `username` stays, and the
/// audit events name the rule, the count and the tool but never the value.
#[tokio::test]
async fn no_form_of_a_password_the_tool_read_reaches_the_client() {
    capture_audit();
    bounded(90, async {
        let bao = bao().await;
        let issuer = TestIssuer::start().await.unwrap();
        let server = serve(&issuer, &bao, OutputPolicy::default().public_field("username")).await;
        let subject = "leak-every-form";
        let client = connect(&server.url, &token(&issuer, &server.url, subject)).await;

        // (a) Text: raw, in a connection URL, percent-encoded in a proper URL.
        let answer = call(&client, "leak_text").await;
        let result = answer.as_ref().expect("a result");
        let text = texts(result).concat();
        assert_eq!(
            text,
            format!(
                "connecting to db.internal as {USERNAME} with password {MARKER}\n\
                 dsn=postgres://{USERNAME}:{MARKER}@db.internal:5432/inventory\n\
                 encoded dsn=postgres://{USERNAME}:{MARKER}@db.internal:5432/inventory"
            )
        );
        assert_unreadable(&wire(&answer), PASSWORD, "leak_text");

        // (b) Structured content: the password as a value and as a member
        // name (and in the text block rmcp mirrors it into).
        let answer = call(&client, "leak_structured").await;
        let result = answer.as_ref().expect("a result");
        assert_unreadable(&wire(&answer), PASSWORD, "leak_structured");
        let structured = result.structured_content.as_ref().expect("structured content");
        assert_eq!(
            structured,
            &json!({
                "connected_as": USERNAME,
                "password": MARKER,
                "attempts": {MARKER: "rejected: account locked"},
            })
        );
        let mirrored: Value = serde_json::from_str(&texts(result).concat()).expect("the text block is JSON");
        assert_eq!(&mirrored, structured, "the text block is redacted the same way");

        // (c) A tool error result, and a JSON-RPC error (message and data).
        let answer = call(&client, "leak_error_result").await;
        let result = answer.as_ref().expect("a result");
        assert_eq!(result.is_error, Some(true));
        assert_eq!(
            texts(result).concat(),
            format!("login to db.internal failed for {USERNAME} with password {MARKER}: 401 Unauthorized")
        );
        assert_unreadable(&wire(&answer), PASSWORD, "leak_error_result");

        let answer = call(&client, "leak_error").await;
        let error = answer.as_ref().expect_err("a JSON-RPC error");
        assert_unreadable(&wire(&answer), PASSWORD, "leak_error");
        assert_eq!(error.message, format!("upstream refused {USERNAME} / {MARKER}"));
        let data = error.data.as_ref().expect("the error's data");
        assert_eq!(data["user"], USERNAME);
        assert_eq!(data["password"], MARKER);
        assert_eq!(
            data["dsn"],
            format!("postgres://{USERNAME}:{MARKER}@db.internal:5432/inventory")
        );

        // (d) Encoded: base64 (both alphabets, inside `user:password`),
        // percent (any mix), form, JSON-escaped; `Basic` credentials.
        let answer = call(&client, "leak_encoded").await;
        let result = answer.as_ref().expect("a result");
        let text = texts(result).concat();
        assert_unreadable(&wire(&answer), PASSWORD, "leak_encoded");
        for (name, form) in encoded_forms(USERNAME, PASSWORD) {
            let line = text
                .lines()
                .find(|l| l.starts_with(&format!("{name}: ")))
                .unwrap_or_else(|| panic!("{name} line in {text}"));
            assert!(!line.contains(&form), "{name}: {line}");
            assert!(line.contains(MARKER), "{name}: {line}");
        }
        assert!(text.contains("Authorization: Basic [REDACTED:authorization]"), "{text}");

        // Embedded resources: a text file and a blob.
        let answer = call(&client, "leak_resource").await;
        let result = answer.as_ref().expect("a result");
        assert_unreadable(&wire(&answer), PASSWORD, "leak_resource");
        let ContentBlock::Resource(ini) = &result.content[0] else {
            panic!("an embedded resource: {result:?}")
        };
        let ResourceContents::TextResourceContents { text, .. } = &ini.resource else {
            panic!("a text resource")
        };
        assert_eq!(
            text,
            &format!("[db]\nhost = db.internal\nuser = {USERNAME}\npassword = {MARKER}\n")
        );
        let ContentBlock::Resource(env) = &result.content[1] else {
            panic!("an embedded resource: {result:?}")
        };
        let ResourceContents::BlobResourceContents { blob, .. } = &env.resource else {
            panic!("a blob resource")
        };
        assert_eq!(
            String::from_utf8(STANDARD.decode(blob).unwrap()).unwrap(),
            format!("DB_USER={USERNAME}\nDB_PASSWORD={MARKER}\n")
        );
        let _ = client.cancel().await;

        // The audit trail: one event per rule that removed something.
        let secret = |n| rules(&[(RedactionRule::SecretValue, n)]);
        assert_eq!(redactions(subject, "leak_text"), secret(3));
        // Value and member name, in the structured content and its text.
        assert_eq!(redactions(subject, "leak_structured"), secret(4));
        assert_eq!(redactions(subject, "leak_error_result"), secret(1));
        // The message, the data's password and its URL.
        assert_eq!(redactions(subject, "leak_error"), secret(3));
        assert_eq!(
            redactions(subject, "leak_encoded"),
            rules(&[
                (RedactionRule::SecretValue, encoded_forms(USERNAME, PASSWORD).len()),
                (RedactionRule::Authorization, 1),
            ])
        );
        assert_eq!(redactions(subject, "leak_resource"), secret(2));

        // No captured line, audit or not, holds the password in any form.
        let lines = log_lines().lock().unwrap().join("\n");
        assert!(lines.contains("output_redacted"));
        assert_unreadable(&lines, PASSWORD, "the log");
    })
    .await;
}

/// JSON escapes other libraries write: lower-case `\u00e9` with `\/` (PHP's
/// `json_encode`), upper-case `\u00E9` (Jackson in ASCII mode), upper-case
/// and `\u0022` for a quote (.NET's `System.Text.Json`), and JSON inside a
/// JSON string. `RedactionRule::SecretValue` documents `\uXXXX` and `\/`;
/// only serde's own form, `\/` alone and lower-case `\u00e9` alone are
/// searched for today, so each of these leaks (found by this test).
#[tokio::test]
async fn json_escapes_of_other_libraries_are_removed() {
    capture_audit();
    bounded(60, async {
        let bao = bao().await;
        let issuer = TestIssuer::start().await.unwrap();
        let server = serve(&issuer, &bao, OutputPolicy::default().public_field("username")).await;
        let client = connect(&server.url, &token(&issuer, &server.url, "json-escapes")).await;
        let answer = call(&client, "leak_json_escapes").await;
        let _ = client.cancel().await;
        let result = answer.as_ref().expect("a result");
        let text = texts(result).concat();
        // Every form checked before failing, to name each one that leaks.
        let leaked: Vec<&str> = text
            .lines()
            .filter(|line| !readable(line, PASSWORD).is_empty() || !line.contains(MARKER))
            .collect();
        assert!(
            leaked.is_empty(),
            "JSON escapes that leak the password:\n{}",
            leaked.join("\n")
        );
    })
    .await;
}

/// A result that read no secret still loses what is shaped like a
/// credential: a JWT and a private key block.
#[tokio::test]
async fn credential_shaped_text_is_removed_without_any_secret_read() {
    capture_audit();
    bounded(60, async {
        let bao = bao().await;
        let issuer = TestIssuer::start().await.unwrap();
        let server = serve(&issuer, &bao, OutputPolicy::default().public_field("username")).await;
        let subject = "leak-patterns";
        let client = connect(&server.url, &token(&issuer, &server.url, subject)).await;
        let answer = call(&client, "leak_patterns").await;
        let _ = client.cancel().await;
        let result = answer.as_ref().expect("a result");
        let text = texts(result).concat();
        assert_eq!(
            text,
            "session token: [REDACTED:jwt]\nsigning key:\n[REDACTED:private_key]\nstatus: ok"
        );
        let wire = wire(&answer);
        assert!(!wire.contains(JWT) && !wire.contains("eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9"));
        assert!(!wire.contains(PEM_BODY));
        assert_eq!(
            redactions(subject, "leak_patterns"),
            rules(&[(RedactionRule::Jwt, 1), (RedactionRule::PrivateKey, 1)])
        );
        let lines = log_lines().lock().unwrap().join("\n");
        assert!(!lines.contains(JWT) && !lines.contains(PEM_BODY));
    })
    .await;
}

/// Ordinary text leaves exactly as the tool wrote it, whether or not the
/// call read a secret, and nothing is audited.
#[tokio::test]
async fn ordinary_text_is_unchanged_byte_for_byte() {
    capture_audit();
    bounded(60, async {
        let bao = bao().await;
        let issuer = TestIssuer::start().await.unwrap();
        let server = serve(&issuer, &bao, OutputPolicy::default()).await;
        let subject = "ordinary-text";
        let client = connect(&server.url, &token(&issuer, &server.url, subject)).await;
        for tool in ["inventory", "inventory_after_login"] {
            let answer = call(&client, tool).await;
            let result = answer.as_ref().expect("a result");
            assert_eq!(result.content.len(), 1, "{tool}");
            assert_eq!(
                result.content[0].as_text().expect("text").text.as_bytes(),
                ORDINARY.as_bytes(),
                "{tool}"
            );
            assert_eq!(result.structured_content, None);
            assert_eq!(
                redactions(subject, tool),
                [],
                "{tool}: nothing removed, nothing audited"
            );
        }
        let _ = client.cancel().await;
    })
    .await;
}

/// Without `public_field("username")` (the default policy), the account
/// name is a value of the credential like any other: removed too.
#[tokio::test]
async fn by_default_every_field_of_the_credential_is_removed() {
    capture_audit();
    bounded(60, async {
        let bao = bao().await;
        let issuer = TestIssuer::start().await.unwrap();
        let server = serve(&issuer, &bao, OutputPolicy::default()).await;
        let subject = "default-policy";
        let client = connect(&server.url, &token(&issuer, &server.url, subject)).await;
        let answer = call(&client, "leak_text").await;
        let _ = client.cancel().await;
        let wire = wire(&answer);
        assert_unreadable(&wire, PASSWORD, "leak_text");
        assert_unreadable(&wire, USERNAME, "leak_text, username");
        let text = texts(answer.as_ref().expect("a result")).concat();
        assert_eq!(
            text,
            format!(
                "connecting to db.internal as {MARKER} with password {MARKER}\n\
                 dsn=postgres://{MARKER}:{MARKER}@db.internal:5432/inventory\n\
                 encoded dsn=postgres://{MARKER}:{MARKER}@db.internal:5432/inventory"
            )
        );
        assert_eq!(
            redactions(subject, "leak_text"),
            rules(&[(RedactionRule::SecretValue, 6)])
        );
    })
    .await;
}

/// The control: with every rule skipped (the `dangerous` policy), each leak
/// does reach the client, so the checks above are not vacuous.
#[tokio::test]
async fn with_every_rule_skipped_the_leaks_reach_the_client() {
    capture_audit();
    bounded(60, async {
        let bao = bao().await;
        let issuer = TestIssuer::start().await.unwrap();
        let policy = RedactionRule::ALL
            .into_iter()
            .fold(OutputPolicy::default().dangerous(), |p, rule| p.skip(rule))
            .build();
        let server = serve(&issuer, &bao, policy).await;
        let subject = "every-rule-skipped";
        let client = connect(&server.url, &token(&issuer, &server.url, subject)).await;
        for tool in [
            "leak_text",
            "leak_structured",
            "leak_error_result",
            "leak_error",
            "leak_encoded",
            "leak_resource",
        ] {
            let answer = call(&client, tool).await;
            assert!(!readable(&wire(&answer), PASSWORD).is_empty(), "{tool}");
            assert!(!wire(&answer).contains("[REDACTED:"), "{tool}");
            assert_eq!(redactions(subject, tool), [], "{tool}");
        }
        let answer = call(&client, "leak_patterns").await;
        assert!(wire(&answer).contains(PEM_BODY));
        let _ = client.cancel().await;
    })
    .await;
}

// ---------------------------------------------------------------------------
// examples/secure_server.rs, run as a user runs it, against OpenBao.

/// The example's `diagnose_connection` writes the credential it read into
/// its text; what leaves the binary has the password removed and the
/// (public) username kept, and its audit log says so without the value.
#[tokio::test]
async fn secure_server_diagnose_connection_never_returns_the_password() {
    bounded(90, async {
        const CC_PASSWORD: &str = "Rq2#Lx9-acme-CC!77";
        let bao = Bao::start().await;
        bao.kv_put(
            "mcp/acme/catalyst-center",
            json!({"username": "acme-netops", "password": CC_PASSWORD}),
        )
        .await;
        let issuer = TestIssuer::start().await.unwrap();
        let log = bao.dir().join("secure_server.log");
        let server = SecureServer::start(&issuer, &log, &[("VAULT_ADDR", &bao.addr()), ("VAULT_TOKEN", ROOT)]).await;
        let client = connect(&server.url, &token(&issuer, &server.url, "acme-neteng")).await;
        let params = CallToolRequestParams::new("diagnose_connection")
            .with_arguments(json!({"service": "catalyst-center"}).as_object().unwrap().clone());
        let answer = tokio::time::timeout(TIMEOUT, client.call_tool(params))
            .await
            .expect("call does not hang")
            .map_err(|e| match e {
                rmcp::ServiceError::McpError(e) => e,
                e => panic!("transport error: {e}"),
            });
        let _ = client.cancel().await;
        let result = answer.as_ref().expect("diagnose_connection answers");
        assert_ne!(result.is_error, Some(true), "{result:?}");
        let text = texts(result).concat();
        let wire = wire(&answer);
        assert_unreadable(&wire, CC_PASSWORD, "diagnose_connection");
        assert!(text.contains(MARKER), "{text}");
        assert!(text.contains("acme-netops"), "the public username stays: {text}");

        // The binary's own audit line: rule and count, never the value.
        drop(server);
        let out = without_ansi(&std::fs::read_to_string(&log).unwrap_or_default());
        let audit: Vec<&str> = out
            .lines()
            .filter(|l| l.contains("rmcp_guard::audit") && l.contains("output_redacted"))
            .collect();
        assert_eq!(audit.len(), 1, "{out}");
        let line = audit[0];
        for field in [
            "rule=\"secret_value\"",
            "resource=\"diagnose_connection\"",
            "tenant=\"acme\"",
        ] {
            assert!(
                line.contains(field) || line.contains(&field.replace('"', "")),
                "{field} in {line}"
            );
        }
        let count: usize = line
            .split_whitespace()
            .find_map(|f| f.strip_prefix("count="))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("a count in {line}"));
        assert!(count >= 2, "the URL and the other occurrence: {line}");
        assert_unreadable(&out, CC_PASSWORD, "secure_server's log");
    })
    .await;
}

/// `text` without terminal colour sequences (`ESC [ ... m`).
fn without_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The `secure_server` binary, killed on drop.
struct SecureServer {
    child: Child,
    url: String,
}

impl Drop for SecureServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl SecureServer {
    /// Start it on a free port, its output into `log`; ready when its
    /// metadata route answers.
    async fn start(issuer: &TestIssuer, log: &Path, vars: &[(&str, &str)]) -> SecureServer {
        let binary = support::example::example_binary("secure_server");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let out = std::fs::File::create(log).expect("a log file");
        let child = Command::new(&binary)
            .env_clear()
            .env("GUARD_ISSUER", issuer.issuer())
            .env("GUARD_BIND", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn,rmcp_guard::audit=info")
            .envs(vars.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("a log file"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
        let server = SecureServer {
            child,
            url: format!("http://127.0.0.1:{port}/mcp"),
        };
        let metadata = format!("http://127.0.0.1:{port}/.well-known/oauth-protected-resource/mcp");
        for _ in 0..100 {
            if reqwest::get(&metadata).await.is_ok_and(|r| r.status() == 200) {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let out = std::fs::read_to_string(log).unwrap_or_default();
        panic!("secure_server did not start within 10 s: {out}");
    }
}
