//! The audit schema, pinned: a guarded server (policy, confirmation,
//! credentials, token exchange, limits, pinned definitions, output guard,
//! revocations) is driven over real HTTP so that every audit event is
//! emitted by the code that emits it in production, captured as ECS JSON
//! lines by `audit::EcsJsonLayer`, and checked against the golden table
//! below.
//!
//! A failure here means an audit document changed shape. Renaming or
//! removing a key is a breaking change for every dashboard and alert built
//! on it: update docs/audit-schema.md, raise `audit::SCHEMA_VERSION`, and
//! say so in CHANGELOG.md; adding a key is a minor change (docs and
//! CHANGELOG too).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{ServerCapabilities, ServerConfig};
use rmcp::{ErrorData, ServerHandler, schemars, tool, tool_handler, tool_router};
use rmcp_guard::Guard;
use rmcp_guard::audit::{ECS_VERSION, EcsJsonLayer, SCHEMA_VERSION};
use rmcp_guard::breaker::BreakerConfig;
use rmcp_guard::integrity::DefinitionsLock;
use rmcp_guard::limit::RequestLimits;
use rmcp_guard::oauth::{ClientAuth, DownstreamTokens, Issuer, ResourceServer, TokenExchange};
use rmcp_guard::policy::PolicyEngine;
use rmcp_guard::revoke::Revocation;
use rmcp_guard::secrets::{CallerCredentials, Credentials, MemoryStore};
use rmcp_guard::store::SharedStore;
use rmcp_guard_testkit::client::{McpClient, Protocol};
use rmcp_guard_testkit::{TestIssuer, TestServer};
use serde_json::{Value, json};
use tracing_subscriber::prelude::*;

const SERVICE: &str = "audit-schema-test";
/// The credential the store holds: it must never reach a document.
const PASSWORD: &str = "pw-4d1f9c-never-in-a-log";
/// The exchange client's secret: likewise.
const CLIENT_SECRET: &str = "cs-77e0b2-never-in-a-log";

const POLICY: &str = r#"
package mcp.authz

import rego.v1

default allow := false

allow if {
	"mcp:tools" in input.scopes
	not input.resource in {"admin_tool", "forbidden"}
}

reasons contains "forbidden_tool" if input.resource == "forbidden"

allow if "mcp:admin" in input.scopes

reasons contains "needs_admin" if {
	input.resource == "admin_tool"
	not "mcp:admin" in input.scopes
}

required_scopes contains "mcp:admin" if {
	input.resource == "admin_tool"
	not "mcp:admin" in input.scopes
}

confirm if {
	input.action == "tools/call"
	input.resource == "deploy"
}
"#;

// ---------------------------------------------------------------------------
// The golden table.

/// Keys in every document (`service.name` because the layer is given one).
const COMMON: &[&str] = &[
    "@timestamp",
    "ecs.version",
    "event.action",
    "event.category",
    "event.kind",
    "event.type",
    "log.level",
    "rmcp_guard.audit.schema_version",
    "service.name",
];

/// The caller of a verified token, as most events carry it.
const CALLER: &[&str] = &[
    "user.id",
    "rmcp_guard.client_id",
    "rmcp_guard.issuer",
    "organization.id",
];

/// One pinned document: the first document of `action` for which `pick`
/// holds has exactly `COMMON` + `keys`, and these categorization values.
struct Golden {
    action: &'static str,
    case: &'static str,
    pick: fn(&Value) -> bool,
    category: &'static str,
    types: &'static [&'static str],
    outcome: Option<&'static str>,
    keys: &'static [&'static [&'static str]],
}

fn reason(doc: &Value, r: &str) -> bool {
    doc["event"]["reason"] == r
}

const GOLDEN: &[Golden] = &[
    Golden {
        action: "authn",
        case: "a verified token",
        pick: |d| reason(d, "valid_token") && d["user"]["id"] == "alice",
        category: "authentication",
        types: &["start"],
        outcome: Some("success"),
        keys: &[CALLER, &["event.outcome", "event.reason", "rmcp_guard.cached"]],
    },
    Golden {
        action: "authn",
        case: "no token",
        pick: |d| d["event"]["outcome"] == "failure" && d.get("user").is_none(),
        category: "authentication",
        types: &["start"],
        outcome: Some("failure"),
        keys: &[&[
            "event.outcome",
            "event.reason",
            "http.response.status_code",
            "rmcp_guard.cached",
        ]],
    },
    Golden {
        action: "authn",
        case: "a revoked token",
        pick: |d| reason(d, "revoked"),
        category: "authentication",
        types: &["start"],
        outcome: Some("failure"),
        keys: &[
            CALLER,
            &[
                "event.outcome",
                "event.reason",
                "http.response.status_code",
                "rmcp_guard.cached",
            ],
        ],
    },
    Golden {
        action: "session",
        case: "a GET without a session",
        pick: |d| reason(d, "session_id_required"),
        category: "api",
        types: &["denied"],
        outcome: Some("failure"),
        keys: &[&["event.outcome", "event.reason", "user.id"]],
    },
    Golden {
        action: "authz",
        case: "a call needing a scope the token lacks",
        pick: |_| true,
        category: "api",
        types: &["denied"],
        outcome: Some("failure"),
        keys: &[&[
            "event.outcome",
            "event.reason",
            "user.id",
            "rmcp_guard.client_id",
            "rmcp_guard.issuer",
            "rmcp_guard.resource",
            "rmcp_guard.action",
            "rmcp_guard.required_scopes",
        ]],
    },
    Golden {
        action: "policy_decision",
        case: "an allowed call",
        pick: |d| d["event"]["outcome"] == "success" && d["rmcp_guard"]["resource"] == "echo",
        category: "api",
        types: &["allowed"],
        outcome: Some("success"),
        keys: &[&[
            "event.outcome",
            "event.duration",
            "user.id",
            "rmcp_guard.issuer",
            "rmcp_guard.resource",
            "rmcp_guard.action",
            "rmcp_guard.allowed",
            "rmcp_guard.policy_version",
            "rmcp_guard.cached",
        ]],
    },
    Golden {
        action: "policy_decision",
        case: "a denied call",
        pick: |d| reason(d, "forbidden_tool"),
        category: "api",
        types: &["denied"],
        outcome: Some("failure"),
        keys: &[&[
            "event.outcome",
            "event.reason",
            "event.duration",
            "user.id",
            "rmcp_guard.issuer",
            "rmcp_guard.resource",
            "rmcp_guard.action",
            "rmcp_guard.allowed",
            "rmcp_guard.policy_version",
            "rmcp_guard.cached",
        ]],
    },
    Golden {
        action: "policy_reload",
        case: "applied",
        pick: |d| d["event"]["outcome"] == "success",
        category: "configuration",
        types: &["change"],
        outcome: Some("success"),
        keys: &[&[
            "event.outcome",
            "rmcp_guard.previous_version",
            "rmcp_guard.policy_version",
        ]],
    },
    Golden {
        action: "policy_reload",
        case: "refused",
        pick: |d| d["event"]["outcome"] == "failure",
        category: "configuration",
        types: &["change", "error"],
        outcome: Some("failure"),
        keys: &[&[
            "event.outcome",
            "error.message",
            "rmcp_guard.previous_version",
            "rmcp_guard.policy_version",
        ]],
    },
    Golden {
        action: "secret_access",
        case: "a credential read",
        pick: |d| d["event"]["outcome"] == "success",
        category: "api",
        types: &["access"],
        outcome: Some("success"),
        keys: &[&[
            "event.outcome",
            "user.id",
            "rmcp_guard.issuer",
            "organization.id",
            "rmcp_guard.service",
            "rmcp_guard.template",
            "rmcp_guard.path",
            "rmcp_guard.cache",
        ]],
    },
    Golden {
        action: "token_exchange",
        case: "the token endpoint down",
        pick: |d| d["event"]["outcome"] == "failure",
        category: "api",
        types: &["access"],
        outcome: Some("failure"),
        keys: &[&[
            "event.outcome",
            "error.code",
            "user.id",
            "rmcp_guard.issuer",
            "rmcp_guard.grant",
            "rmcp_guard.audience",
            "rmcp_guard.cache",
        ]],
    },
    Golden {
        action: "confirmation",
        case: "asked",
        pick: |d| d["rmcp_guard"]["step"] == "asked",
        category: "api",
        types: &["info"],
        outcome: None,
        keys: &[&[
            "user.id",
            "rmcp_guard.client_id",
            "rmcp_guard.issuer",
            "rmcp_guard.resource",
            "rmcp_guard.action",
            "rmcp_guard.step",
        ]],
    },
    Golden {
        action: "confirmation",
        case: "granted",
        pick: |d| d["rmcp_guard"]["step"] == "granted",
        category: "api",
        types: &["allowed"],
        outcome: Some("success"),
        keys: &[&[
            "event.outcome",
            "user.id",
            "rmcp_guard.client_id",
            "rmcp_guard.issuer",
            "rmcp_guard.resource",
            "rmcp_guard.action",
            "rmcp_guard.step",
        ]],
    },
    Golden {
        action: "confirmation",
        case: "refused: the client cannot be asked",
        pick: |d| d["rmcp_guard"]["step"] == "refused",
        category: "api",
        types: &["denied"],
        outcome: Some("failure"),
        keys: &[&[
            "event.outcome",
            "event.reason",
            "user.id",
            "rmcp_guard.client_id",
            "rmcp_guard.issuer",
            "rmcp_guard.resource",
            "rmcp_guard.action",
            "rmcp_guard.step",
        ]],
    },
    Golden {
        action: "limit",
        case: "a per-tool rate",
        pick: |_| true,
        category: "api",
        types: &["denied"],
        outcome: Some("failure"),
        keys: &[
            CALLER,
            &[
                "event.outcome",
                "event.reason",
                "rmcp_guard.resource",
                "rmcp_guard.retry_after_secs",
            ],
        ],
    },
    Golden {
        action: "arguments",
        case: "arguments not valid against the schema",
        pick: |_| true,
        category: "api",
        types: &["denied"],
        outcome: Some("failure"),
        keys: &[CALLER, &["event.outcome", "event.reason", "rmcp_guard.resource"]],
    },
    Golden {
        action: "definitions",
        case: "a tool that drifted from its pin",
        pick: |_| true,
        category: "intrusion_detection",
        types: &["denied"],
        outcome: Some("failure"),
        keys: &[CALLER, &["event.outcome", "event.reason", "rmcp_guard.resource"]],
    },
    Golden {
        action: "output_redacted",
        case: "a tool that leaked its credential",
        pick: |_| true,
        category: "intrusion_detection",
        types: &["allowed"],
        outcome: Some("success"),
        keys: &[
            CALLER,
            &["event.outcome", "rule.name", "rmcp_guard.count", "rmcp_guard.resource"],
        ],
    },
    Golden {
        action: "revocation",
        case: "a subject revoked on every issuer",
        pick: |_| true,
        category: "iam",
        types: &["change"],
        outcome: Some("success"),
        keys: &[&[
            "event.outcome",
            "event.reason",
            "rmcp_guard.kind",
            "rmcp_guard.value",
            "rmcp_guard.by",
            "rmcp_guard.revoked_at",
            "rmcp_guard.expires_at",
        ]],
    },
    Golden {
        action: "circuit",
        case: "the token endpoint's breaker opening",
        pick: |d| d["rmcp_guard"]["state"] == "open",
        category: "network",
        types: &["info"],
        outcome: None,
        keys: &[&[
            "rmcp_guard.upstream",
            "rmcp_guard.endpoint",
            "rmcp_guard.state",
            "rmcp_guard.previous",
            "rmcp_guard.failures",
            "rmcp_guard.retry_after",
        ]],
    },
];

/// Every event of the vocabulary (`AuditEvent::name`).
const EVENTS: &[&str] = &[
    "authn",
    "session",
    "authz",
    "policy_decision",
    "policy_reload",
    "secret_access",
    "token_exchange",
    "confirmation",
    "limit",
    "arguments",
    "definitions",
    "output_redacted",
    "revocation",
    "circuit",
];

// ---------------------------------------------------------------------------
// Capture.

/// The layer's output, for the whole test binary (a global subscriber: the
/// servers' tasks run on other threads).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn captured() -> &'static Captured {
    static CAPTURED: OnceLock<Captured> = OnceLock::new();
    CAPTURED.get_or_init(|| {
        let captured = Captured::default();
        let writer = captured.clone();
        let layer = EcsJsonLayer::new(move || writer.clone()).service_name(SERVICE);
        tracing_subscriber::registry()
            .with(layer)
            .try_init()
            .expect("the only subscriber of this test binary");
        captured
    })
}

/// `{"a": {"b": 1}}` -> `["a.b"]`.
fn flat_keys(value: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flat_keys(v, &key, out);
            }
        }
        _ => {
            out.insert(prefix.to_owned());
        }
    }
}

fn keys_of(doc: &Value) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    flat_keys(doc, "", &mut keys);
    keys
}

// ---------------------------------------------------------------------------
// The server.

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct EchoArgs {
    text: String,
}

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

    #[tool(description = "Echo the text back")]
    async fn echo(&self, Parameters(args): Parameters<EchoArgs>) -> String {
        args.text
    }

    #[tool(description = "Check the GitHub connection (a buggy tool: it prints its password)")]
    async fn leak(&self, credentials: CallerCredentials) -> Result<String, ErrorData> {
        let credential = credentials.get("github").await?;
        Ok(format!(
            "login failed with password {}",
            credential.expose_required("password")?
        ))
    }

    #[tool(description = "Call the downstream API")]
    async fn downstream(&self, tokens: DownstreamTokens) -> Result<String, ErrorData> {
        let token = tokens.get("https://api.example.com").await?;
        Ok(token.audience().to_owned())
    }

    #[tool(description = "Administer")]
    async fn admin_tool(&self) -> String {
        "administered".into()
    }

    #[tool(description = "Never allowed")]
    async fn forbidden(&self) -> String {
        "ran".into()
    }

    #[tool(description = "Deploy")]
    async fn deploy(&self) -> String {
        "deployed".into()
    }

    #[tool(description = "Rate limited")]
    async fn limited(&self) -> String {
        "ok".into()
    }

    #[tool(description = "Served differently from its pinned definition")]
    async fn drifted(&self) -> String {
        "ran".into()
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Tools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }
}

/// The lock pins every tool as served, except `drifted`, pinned with
/// another description.
fn lock() -> DefinitionsLock {
    let mut tools = Tools::tool_router().list_all();
    for tool in &mut tools {
        if tool.name == "drifted" {
            tool.description = Some("the description that was reviewed".into());
        }
    }
    DefinitionsLock::new(&tools, &[], &[])
}

/// Refused: a JSON-RPC error, or a tool result marked as an error.
fn assert_refused(result: Result<rmcp::model::CallToolResult, rmcp_guard_testkit::client::McpError>) {
    match result {
        Err(_) => {}
        Ok(r) => assert_eq!(r.is_error, Some(true), "refused: {r:?}"),
    }
}

fn token(issuer: &TestIssuer, url: &str, subject: &str, scope: &str) -> String {
    issuer
        .token()
        .subject(subject)
        .audience(url.to_owned())
        .scope(scope)
        .client_id("cli-1")
        .claim("tenant", json!("acme"))
        .sign()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_audit_event_has_its_pinned_ecs_keys_and_no_secret() {
    let captured = captured();
    let issuer = TestIssuer::start().await.unwrap();
    let dir = std::env::temp_dir().join(format!("rmcp-guard-audit-schema-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let policy_file = dir.join("policy.rego");
    std::fs::write(&policy_file, POLICY).unwrap();
    let engine = PolicyEngine::builder().module_file(&policy_file).build().unwrap();
    let store = SharedStore::memory();

    let jwks = Issuer::with_jwks_uri(issuer.issuer(), issuer.jwks_uri());
    let (app_engine, app_store) = (engine.clone(), store.clone());
    let server = TestServer::start_with(move |base| {
        let rs = ResourceServer::builder(format!("{base}/mcp"), jwks)
            .required_scopes(["mcp:tools"])
            .build()
            .unwrap();
        let credentials =
            Credentials::builder(MemoryStore::new().with("mcp/acme/github", [("password", PASSWORD)])).build();
        // Nothing listens on port 1: the exchange fails and its breaker opens.
        let exchange = TokenExchange::builder(
            "http://127.0.0.1:1/token",
            ClientAuth::client_secret("guard", CLIENT_SECRET).unwrap(),
        )
        .breaker(BreakerConfig::default().failure_threshold(1))
        .build()
        .unwrap();
        Guard::new(rs)
            .policy(app_engine)
            .credentials(credentials)
            .exchange(exchange)
            .limits(RequestLimits::default().tool("limited", "1/h".parse().unwrap()))
            .pin_definitions(lock())
            .shared_store(app_store)
            .router(|| Ok(Tools::new()))
    })
    .await
    .unwrap();
    let url = server.mcp_url("/mcp");
    let alice = token(&issuer, &url, "alice", "mcp:tools");
    let mallory = token(&issuer, &url, "mallory", "mcp:tools");
    let client = |token: &str, capabilities: Value| {
        McpClient::connect(url.clone(), Protocol::V2026_07_28)
            .bearer(token.to_owned())
            .capabilities(capabilities)
    };
    let a = client(&alice, json!({"elicitation": {"form": {}}})).await.unwrap();

    // authn (allow), policy_decision (allow).
    a.call_tool("echo", json!({"text": "hi"})).await.unwrap();
    // authn: no token.
    let anonymous = McpClient::connect(url.clone(), Protocol::V2026_07_28).await.unwrap();
    let refused = anonymous.list_tools().await.unwrap_err();
    assert_eq!(refused.status().map(|s| s.as_u16()), Some(401), "{refused:?}");
    // session: a GET that names no session.
    let get = reqwest::Client::new()
        .get(&url)
        .bearer_auth(&alice)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 400);
    // authz: step-up 403, before `Guarded` decides.
    let step_up = a.call_tool("admin_tool", json!({})).await.unwrap_err();
    assert_eq!(step_up.status().map(|s| s.as_u16()), Some(403), "{step_up:?}");
    // policy_decision: denied.
    assert_refused(a.call_tool("forbidden", json!({})).await);
    // secret_access, output_redacted.
    let leaked = a.call_tool("leak", json!({})).await.unwrap();
    assert!(!serde_json::to_string(&leaked).unwrap().contains(PASSWORD));
    // token_exchange (failed), circuit (open).
    assert_refused(a.call_tool("downstream", json!({})).await);
    // confirmation: asked, then granted.
    let asked = a
        .request("tools/call", json!({"name": "deploy", "arguments": {}}))
        .await
        .unwrap();
    let state = asked["requestState"].as_str().expect("requestState").to_owned();
    a.request(
        "tools/call",
        json!({
            "name": "deploy",
            "arguments": {},
            "requestState": state,
            "inputResponses": {"confirm": {"action": "accept", "content": {"confirm": true}}},
        }),
    )
    .await
    .unwrap();
    // confirmation: refused, a client that cannot be asked.
    let plain = client(&alice, json!({})).await.unwrap();
    assert_refused(plain.call_tool("deploy", json!({})).await);
    // limit: the second call within the hour.
    a.call_tool("limited", json!({})).await.unwrap();
    assert_refused(a.call_tool("limited", json!({})).await);
    // arguments.
    assert_refused(a.call_tool("echo", json!({"text": 5})).await);
    // definitions.
    assert_refused(a.call_tool("drifted", json!({})).await);
    // revocation, then authn refusing the revoked token.
    store
        .revocations()
        .revoke(Revocation::subject("mallory").requested_by("root"))
        .await
        .unwrap();
    let revoked = client(&mallory, json!({})).await.unwrap();
    let refused = revoked.list_tools().await.unwrap_err();
    assert_eq!(refused.status().map(|s| s.as_u16()), Some(401), "{refused:?}");
    // policy_reload: applied, then refused.
    std::fs::write(&policy_file, format!("{POLICY}\n# reviewed\n")).unwrap();
    engine.reload().unwrap();
    std::fs::write(&policy_file, "package mcp.authz\nallow if {").unwrap();
    engine.reload().unwrap_err();
    let _ = std::fs::remove_dir_all(&dir);

    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    // `AUDIT_SCHEMA_DUMP=<file>`: keep the documents (the examples of docs/audit-schema.md come from here).
    if let Some(path) = std::env::var_os("AUDIT_SCHEMA_DUMP") {
        std::fs::write(path, &text).unwrap();
    }
    let docs: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not one JSON document ({e}): {line}")))
        .collect();
    let mut by_action: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
    for doc in &docs {
        by_action
            .entry(doc["event"]["action"].as_str().unwrap())
            .or_default()
            .push(doc);
    }

    let golden_actions: BTreeSet<&str> = GOLDEN.iter().map(|g| g.action).collect();
    assert_eq!(
        golden_actions,
        EVENTS.iter().copied().collect(),
        "every event has a golden entry"
    );
    let seen: BTreeSet<&str> = by_action.keys().copied().collect();
    assert_eq!(seen, golden_actions, "every event was emitted, and no other:\n{text}");

    let common: BTreeSet<String> = COMMON.iter().map(|k| k.to_string()).collect();
    let mut allowed: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for golden in GOLDEN {
        let want: BTreeSet<String> = golden
            .keys
            .iter()
            .flat_map(|k| k.iter())
            .map(|k| k.to_string())
            .chain(common.iter().cloned())
            .collect();
        allowed.entry(golden.action).or_default().extend(want.iter().cloned());
        let doc = by_action[golden.action]
            .iter()
            .find(|d| (golden.pick)(d))
            .unwrap_or_else(|| panic!("no `{}` document for: {}\n{text}", golden.action, golden.case));
        let got = keys_of(doc);
        let missing: Vec<_> = want.difference(&got).collect();
        let added: Vec<_> = got.difference(&want).collect();
        assert!(
            missing.is_empty() && added.is_empty(),
            "the `{}` document ({}) changed: missing {missing:?}, added {added:?}.\n\
             Renaming or removing a key breaks dashboards: update docs/audit-schema.md, raise \
             audit::SCHEMA_VERSION and note it in CHANGELOG.md; an added key is a minor change (docs and \
             CHANGELOG too). Then update this table.\n{doc:#}",
            golden.action,
            golden.case,
        );
        assert_eq!(doc["event"]["category"], json!([golden.category]), "{doc:#}");
        assert_eq!(doc["event"]["type"], json!(golden.types), "{doc:#}");
        assert_eq!(
            doc["event"].get("outcome").and_then(Value::as_str),
            golden.outcome,
            "{doc:#}"
        );
    }

    for doc in &docs {
        // Every document: the pinned versions, RFC 3339 UTC, no key outside
        // what its event may carry.
        assert_eq!(doc["ecs"]["version"], ECS_VERSION);
        assert_eq!(doc["rmcp_guard"]["audit"]["schema_version"], SCHEMA_VERSION);
        assert_eq!(doc["event"]["kind"], "event");
        assert_eq!(doc["service"]["name"], SERVICE);
        let ts = doc["@timestamp"].as_str().unwrap();
        assert!(ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{ts}");
        let action = doc["event"]["action"].as_str().unwrap();
        let extra: Vec<_> = keys_of(doc).difference(&allowed[action]).cloned().collect();
        assert!(
            extra.is_empty(),
            "a `{action}` document has keys no golden entry lists: {extra:?} (see docs/audit-schema.md)\n{doc:#}"
        );
    }

    // Never a token nor a secret: the values fed in, and each token's
    // segments (a signature alone would do harm).
    let mut secrets = vec![PASSWORD.to_owned(), CLIENT_SECRET.to_owned()];
    for t in [&alice, &mallory] {
        secrets.push(t.clone());
        secrets.extend(t.split('.').map(str::to_owned));
    }
    for secret in &secrets {
        assert!(
            !text.contains(secret.as_str()),
            "an audit document holds a secret or a token:\n{text}"
        );
    }
}
