//! Engine-level policy tests: the shipped RBAC policy (v1 and v0) per group,
//! fail-closed evaluation, reload, versioning, memoization.
#![cfg(feature = "policy")]

use std::path::Path;

use rmcp_guard::PolicyError;
use rmcp_guard::audit::Outcome;
use rmcp_guard::policy::{Action, PolicyEngine, PolicyInput, RBAC_TOOL_SCOPE, RegoVersion};
use rmcp_guard::{ConfigError, Principal};
use serde_json::json;

const TOOLS: [&str; 7] = [
    "get_all_templates",
    "deploy_template",
    "create_ticket",
    "list_repositories",
    "whoami",
    "echo",
    "unknown_tool",
];

fn member(groups: &[&str]) -> Principal {
    Principal::unverified("https://idp.example", format!("user-{}", groups.join("+")))
        .groups(groups.iter().copied())
        .scopes([RBAC_TOOL_SCOPE])
        .build()
}

fn may_call(engine: &PolicyEngine, who: &Principal, tool: &str) -> bool {
    engine.decide(&PolicyInput::new(who, tool, Action::CallTool)).allowed()
}

fn allowed_tools(engine: &PolicyEngine, who: &Principal) -> Vec<&'static str> {
    TOOLS.iter().copied().filter(|t| may_call(engine, who, t)).collect()
}

fn engines() -> [(&'static str, PolicyEngine); 2] {
    [
        ("v1", PolicyEngine::rbac_example().unwrap()),
        ("v0", PolicyEngine::rbac_example_v0().unwrap()),
    ]
}

#[test]
fn rbac_grants_each_group_exactly_its_tools() {
    let expected: [(&[&str], &[&str]); 6] = [
        (
            &["admin"],
            &[
                "get_all_templates",
                "deploy_template",
                "create_ticket",
                "list_repositories",
                "whoami",
                "echo",
                "unknown_tool",
            ],
        ),
        (
            &["network-engineers"],
            &["get_all_templates", "deploy_template", "whoami", "echo"],
        ),
        (
            &["service-desk"],
            &["get_all_templates", "create_ticket", "whoami", "echo"],
        ),
        (&["developers"], &["list_repositories", "whoami", "echo"]),
        (&[], &["whoami", "echo"]),
        (
            &["developers", "service-desk"],
            &[
                "get_all_templates",
                "create_ticket",
                "list_repositories",
                "whoami",
                "echo",
            ],
        ),
    ];
    for (name, engine) in engines() {
        for (groups, tools) in expected {
            assert_eq!(
                allowed_tools(&engine, &member(groups)),
                tools,
                "{name} policy, groups {groups:?}"
            );
        }
    }
}

#[test]
fn rbac_permission_checks_follow_roles() {
    let cases = [
        (&["network-engineers"][..], "catalyst-center", "execute", true),
        (&["network-engineers"], "catalyst-center", "delete", false),
        (&["service-desk"], "catalyst-center", "read", true),
        (&["service-desk"], "catalyst-center", "write", false),
        (&["service-desk"], "servicenow", "delete", true),
        (&["developers"], "rest-api-proxy", "write", true),
        (&["developers"], "servicenow", "read", false),
        (&["admin"], "anything", "whatever", true),
        (&["auditors"], "catalyst-center", "read", false),
    ];
    for (name, engine) in engines() {
        for (groups, resource, action, allowed) in cases {
            let d = engine.decide(&PolicyInput::new(&member(groups), resource, Action::custom(action)));
            assert_eq!(d.allowed(), allowed, "{name}: {groups:?} {action} {resource}");
        }
    }
}

#[test]
fn rbac_requires_the_tool_scope_and_says_so() {
    for (name, engine) in engines() {
        let no_scope = Principal::unverified("https://idp.example", "x")
            .groups(["admin"])
            .build();
        let d = engine.decide(&PolicyInput::new(&no_scope, "echo", Action::CallTool));
        assert!(!d.allowed(), "{name}");
        assert!(
            d.reasons().iter().any(|r| r == "missing_scope"),
            "{name}: {:?}",
            d.reasons()
        );
        assert_eq!(d.required_scopes(), [RBAC_TOOL_SCOPE], "{name}");
        // Listing needs no scope.
        let d = engine.decide(&PolicyInput::new(&no_scope, "", Action::ListTools));
        assert!(d.allowed(), "{name}");
    }
}

#[test]
fn rbac_denial_reasons_name_the_cause() {
    for (name, engine) in engines() {
        let dev = member(&["developers"]);
        let d = engine.decide(&PolicyInput::new(&dev, "deploy_template", Action::CallTool));
        assert_eq!(d.reasons(), ["no_role_grants_access"], "{name}");
        assert!(d.required_scopes().is_empty(), "{name}");
        let d = engine.decide(&PolicyInput::new(&dev, "nope", Action::CallTool));
        assert_eq!(d.reasons(), ["no_role_grants_access", "unknown_tool"], "{name}");
    }
}

#[test]
fn rbac_v0_and_v1_decide_identically() {
    let [(_, v1), (_, v0)] = engines();
    let groups: [&[&str]; 7] = [
        &[],
        &["admin"],
        &["network-engineers"],
        &["service-desk"],
        &["developers"],
        &["developers", "network-engineers"],
        &["nobody"],
    ];
    let actions = [
        "tools/call",
        "tools/list",
        "resources/read",
        "prompts/get",
        "read",
        "write",
        "execute",
        "x/y",
    ];
    let resources = TOOLS
        .iter()
        .copied()
        .chain(["catalyst-center", "servicenow", "github", "rest-api-proxy", ""]);
    let resources: Vec<&str> = resources.collect();
    for g in groups {
        for scoped in [true, false] {
            let mut b = Principal::unverified("i", "s").groups(g.iter().copied());
            if scoped {
                b = b.scopes([RBAC_TOOL_SCOPE]);
            }
            let p = b.build();
            for a in actions {
                for r in &resources {
                    let input = PolicyInput::new(&p, *r, Action::method(a));
                    let (d1, d0) = (v1.evaluate(&input), v0.evaluate(&input));
                    assert_eq!(
                        (d1.allowed(), d1.reasons(), d1.required_scopes()),
                        (d0.allowed(), d0.reasons(), d0.required_scopes()),
                        "{g:?} scoped={scoped} {a} {r}"
                    );
                }
            }
        }
    }
}

#[test]
fn default_policy_lists_for_everyone_and_calls_with_the_scope() {
    let engine = PolicyEngine::default_policy("mcp:tools").unwrap();
    let with = Principal::unverified("i", "a").scopes(["mcp:tools"]).build();
    let without = Principal::unverified("i", "b").build();
    assert!(
        engine
            .decide(&PolicyInput::new(&without, "", Action::ListTools))
            .allowed()
    );
    assert!(
        engine
            .decide(&PolicyInput::new(&with, "echo", Action::CallTool))
            .allowed()
    );
    let d = engine.decide(&PolicyInput::new(&without, "echo", Action::CallTool));
    assert!(!d.allowed());
    assert_eq!(d.required_scopes(), ["mcp:tools"]);
    // Fine-grained checks need a policy that grants them: fail closed.
    assert!(
        !engine
            .decide(&PolicyInput::new(&with, "github", Action::custom("write")))
            .allowed()
    );
}

fn engine_for(policy: &str) -> PolicyEngine {
    PolicyEngine::builder().module("test.rego", policy).build().unwrap()
}

#[test]
fn runtime_error_denies() {
    // Division by zero only for one resource; the smoke input passes.
    let engine = engine_for(
        "package mcp.authz\nallow if { input.resource == \"boom\"; 1 / count(input.groups) > 0 }\nallow if input.resource == \"ok\"",
    );
    let p = Principal::unverified("i", "s").build();
    assert!(engine.decide(&PolicyInput::new(&p, "ok", Action::CallTool)).allowed());
    let d = engine.decide(&PolicyInput::new(&p, "boom", Action::CallTool));
    assert!(!d.allowed());
    assert!(
        d.outcome() == Outcome::Error || d.reason() == Some("denied_by_policy"),
        "{d:?}"
    );
}

#[test]
fn conflicting_rule_values_deny_as_an_error() {
    let engine = engine_for(
        "package mcp.authz\nallow := true if input.resource == \"x\"\nallow := false if input.action == \"tools/call\"",
    );
    let p = Principal::unverified("i", "s").build();
    let d = engine.decide(&PolicyInput::new(&p, "x", Action::CallTool));
    // regorus reports the conflict as an error or as undefined: both deny.
    assert!(!d.allowed());
    assert_eq!(d.outcome(), Outcome::Error, "{d:?}");
    assert!(matches!(d.reason(), Some("policy_error" | "policy_undefined")), "{d:?}");
}

#[test]
fn non_boolean_result_denies() {
    let engine = engine_for("package mcp.authz\nallow := \"yes\" if input.resource == \"x\"");
    let p = Principal::unverified("i", "s").build();
    let d = engine.decide(&PolicyInput::new(&p, "x", Action::CallTool));
    assert!(!d.allowed());
    assert_eq!(d.reason(), Some("policy_not_boolean"));
}

#[test]
fn undefined_result_denies() {
    let engine = engine_for("package mcp.authz\nallow if input.resource == \"x\"");
    let p = Principal::unverified("i", "s").build();
    let d = engine.decide(&PolicyInput::new(&p, "y", Action::CallTool));
    assert!(!d.allowed());
    assert_eq!(d.reason(), Some("policy_undefined"));
    assert!(engine.decide(&PolicyInput::new(&p, "x", Action::CallTool)).allowed());
}

#[test]
fn compile_errors_refuse_to_build() {
    let err = PolicyEngine::builder()
        .module("bad.rego", "package mcp.authz\nallow if {")
        .build()
        .unwrap_err();
    assert!(matches!(err, ConfigError::Policy(PolicyError::Compile { .. })), "{err}");
    let err = PolicyEngine::builder()
        .module("other.rego", "package other\nallow := true")
        .build()
        .unwrap_err();
    assert!(
        matches!(err, ConfigError::Policy(PolicyError::Entrypoint { .. })),
        "{err}"
    );
    let err = PolicyEngine::builder()
        .module("smoke.rego", "package mcp.authz\nallow := 7")
        .build()
        .unwrap_err();
    assert!(matches!(err, ConfigError::Policy(PolicyError::Smoke { .. })), "{err}");
    let err = PolicyEngine::builder().build().unwrap_err();
    assert!(matches!(err, ConfigError::Policy(PolicyError::Empty)), "{err}");
    let err = PolicyEngine::builder()
        .module("v0.rego", "package mcp.authz\nallow { true }")
        .rego_version(RegoVersion::V1)
        .build()
        .unwrap_err();
    assert!(matches!(err, ConfigError::Policy(PolicyError::Compile { .. })), "{err}");
}

#[test]
fn auto_accepts_v0_and_v1_modules_together() {
    let engine = PolicyEngine::builder()
        .module("a.rego", "package mcp.authz\ndefault allow = false\nallow { helper }")
        .module("b.rego", "package mcp.authz\nhelper if \"x\" in input.groups")
        .build()
        .unwrap();
    let p = Principal::unverified("i", "s").groups(["x"]).build();
    assert!(engine.decide(&PolicyInput::new(&p, "t", Action::CallTool)).allowed());
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("rmcp-guard-policy-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn reload_swaps_a_good_policy_and_keeps_serving_on_a_bad_one() {
    let dir = temp_dir("reload");
    write(
        &dir,
        "authz.rego",
        "package mcp.authz\ndefault allow := false\nallow if input.resource in data.open",
    );
    write(&dir, "data.json", r#"{"open": ["a"]}"#);
    let engine = PolicyEngine::from_path(&dir).unwrap();
    let p = Principal::unverified("i", "s").build();
    let call = |tool: &str| engine.decide(&PolicyInput::new(&p, tool, Action::CallTool)).allowed();
    let v1 = engine.version();
    assert!(call("a") && !call("b"));

    // Unchanged sources: same version, nothing recompiled.
    assert_eq!(engine.reload().unwrap(), v1);

    // A data change is a new version.
    write(&dir, "data.json", r#"{"open": ["a", "b"]}"#);
    let v2 = engine.reload().unwrap();
    assert_ne!(v1, v2);
    assert!(call("a") && call("b"));
    assert_eq!(
        engine
            .decide(&PolicyInput::new(&p, "b", Action::CallTool))
            .policy_version(),
        v2
    );

    // A policy that does not compile: refused, the old one keeps serving.
    write(&dir, "authz.rego", "package mcp.authz\nallow if {");
    assert!(matches!(
        engine.reload(),
        Err(ConfigError::Policy(PolicyError::Compile { .. }))
    ));
    assert_eq!(engine.version(), v2);
    assert!(call("b"));

    // A policy that fails its smoke evaluation: refused too.
    write(&dir, "authz.rego", "package mcp.authz\nallow := 3");
    assert!(matches!(
        engine.reload(),
        Err(ConfigError::Policy(PolicyError::Smoke { .. }))
    ));
    assert!(call("b"));

    // A good policy again.
    write(&dir, "authz.rego", "package mcp.authz\nallow := true");
    let v3 = engine.reload().unwrap();
    assert_ne!(v3, v2);
    assert!(call("zzz"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn reload_is_seen_by_other_threads() {
    let dir = temp_dir("threads");
    write(&dir, "authz.rego", "package mcp.authz\nallow := false");
    let engine = PolicyEngine::from_path(dir.join("authz.rego")).unwrap();
    let p = Principal::unverified("i", "s").build();
    let e2 = engine.clone();
    let p2 = p.clone();
    let before = std::thread::spawn(move || e2.decide(&PolicyInput::new(&p2, "t", Action::CallTool)).allowed())
        .join()
        .unwrap();
    assert!(!before);
    write(&dir, "authz.rego", "package mcp.authz\nallow := true");
    engine.reload().unwrap();
    let e3 = engine.clone();
    let after = std::thread::spawn(move || e3.decide(&PolicyInput::new(&p, "t", Action::CallTool)).allowed())
        .join()
        .unwrap();
    assert!(after);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn version_is_a_content_hash() {
    let a = engine_for("package mcp.authz\nallow := true");
    let b = engine_for("package mcp.authz\nallow := true");
    let c = engine_for("package mcp.authz\nallow := false");
    assert_eq!(a.version(), b.version());
    assert_ne!(a.version(), c.version());
    assert!(a.version().starts_with("sha256:") && a.version().len() == 7 + 16);
}

#[test]
fn decisions_are_memoized_only_when_arguments_are_not_read() {
    let rbac = PolicyEngine::rbac_example().unwrap();
    assert!(rbac.is_memoized());
    let p = member(&["developers"]);
    let input = PolicyInput::new(&p, "list_repositories", Action::CallTool);
    let first = rbac.decide(&input);
    let second = rbac.decide(&input);
    assert!(!first.from_cache() && second.from_cache());
    assert_eq!(first.allowed(), second.allowed());
    // Another principal with the same decision-relevant fields hits too,
    // one with different groups does not.
    let twin = member(&["developers"]);
    assert!(
        rbac.decide(&PolicyInput::new(&twin, "list_repositories", Action::CallTool))
            .from_cache()
    );
    let other = member(&["service-desk"]);
    let d = rbac.decide(&PolicyInput::new(&other, "list_repositories", Action::CallTool));
    assert!(!d.from_cache() && !d.allowed());

    let args = engine_for("package mcp.authz\nallow if input.arguments.amount < 100");
    assert!(!args.is_memoized());
    let small = PolicyInput::new(&p, "pay", Action::CallTool).with_arguments(json!({"amount": 5}));
    let large = PolicyInput::new(&p, "pay", Action::CallTool).with_arguments(json!({"amount": 500}));
    assert!(args.decide(&small).allowed());
    assert!(!args.decide(&large).allowed());
    assert!(!args.decide(&small).from_cache());

    let off = PolicyEngine::rbac_example_builder()
        .unwrap()
        .memoize(false)
        .build()
        .unwrap();
    assert!(!off.is_memoized());
}

#[test]
fn memo_is_bounded() {
    let engine = PolicyEngine::rbac_example_builder()
        .unwrap()
        .memo_capacity(2)
        .build()
        .unwrap();
    let p = member(&["developers"]);
    for tool in ["a", "b", "c", "a"] {
        let d = engine.decide(&PolicyInput::new(&p, tool, Action::CallTool));
        assert!(!d.from_cache(), "{tool}: capacity 2 was cleared at the third entry");
    }
}

#[test]
fn options_have_their_documented_defaults() {
    // The engine's own defaults are pinned next to them (engine.rs).
    assert_eq!(RegoVersion::default(), RegoVersion::Auto);
    assert_eq!(rmcp_guard::policy::INPUT_VERSION, 1);
}

#[test]
fn runaway_policy_hits_the_instruction_budget_and_denies() {
    let engine = PolicyEngine::builder()
        .module(
            "loop.rego",
            "package mcp.authz\nallow if { input.resource == \"spin\"; count([x | some x in numbers.range(1, 100000)]) > 0 }\nallow if input.resource == \"ok\"",
        )
        .max_instructions(10_000)
        .build()
        .unwrap();
    let p = Principal::unverified("i", "s").build();
    assert!(engine.decide(&PolicyInput::new(&p, "ok", Action::CallTool)).allowed());
    let d = engine.decide(&PolicyInput::new(&p, "spin", Action::CallTool));
    assert!(!d.allowed());
    assert_eq!(d.reason(), Some("policy_error"));
}

#[tokio::test]
async fn interval_reload_picks_up_changes() {
    let dir = temp_dir("interval");
    write(&dir, "authz.rego", "package mcp.authz\nallow := false");
    let engine = PolicyEngine::from_path(&dir).unwrap();
    let before = engine.version();
    let task = engine.spawn_reload_every(std::time::Duration::from_millis(20));
    write(&dir, "authz.rego", "package mcp.authz\nallow := true");
    let mut changed = false;
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        if engine.version() != before {
            changed = true;
            break;
        }
    }
    assert!(changed, "the interval reload applied the new policy");
    let p = Principal::unverified("i", "s").build();
    assert!(engine.decide(&PolicyInput::new(&p, "t", Action::CallTool)).allowed());
    // The task ends once every clone of the engine is gone.
    drop(engine);
    tokio::time::timeout(std::time::Duration::from_secs(5), task)
        .await
        .expect("reload task ends with the engine")
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_builtin_error_denies_even_under_a_not_rule() {
    // regorus turns builtin errors into "undefined" unless strict: `blocked`
    // would then be undefined for an `email` of the wrong type, and `not
    // blocked` would allow.
    let engine = PolicyEngine::builder()
        .module(
            "contractors.rego",
            "package mcp.authz\nimport rego.v1\ndefault allow := false\n\
             blocked if endswith(input.claims.email, \"@contractor.example\")\n\
             allow if { input.action == \"tools/call\"; not blocked }",
        )
        .build()
        .unwrap();
    let with_email = |email: serde_json::Value| {
        let mut claims = serde_json::Map::new();
        claims.insert("email".to_owned(), email);
        Principal::unverified("i", "s").claims(claims).build()
    };
    let employee = with_email(json!("ann@corp.example"));
    assert!(
        engine
            .decide(&PolicyInput::new(&employee, "echo", Action::CallTool))
            .allowed()
    );
    let contractor = with_email(json!("bob@contractor.example"));
    assert!(
        !engine
            .decide(&PolicyInput::new(&contractor, "echo", Action::CallTool))
            .allowed()
    );
    for confused in [json!(["x@contractor.example"]), json!({"a": 1}), json!(42)] {
        let d = engine.decide(&PolicyInput::new(
            &with_email(confused.clone()),
            "echo",
            Action::CallTool,
        ));
        assert!(!d.allowed(), "an email of {confused} must not be allowed");
        assert_eq!(d.outcome(), Outcome::Error, "{confused}: {d:?}");
    }
}
