//! Which tools may each caller call? Review a policy before you deploy it.
//!
//! ```text
//! cargo run --example permission_matrix                                   # embedded RBAC example
//! cargo run --example permission_matrix -- --policy ./policy/             # a .rego file or a directory
//! cargo run --example permission_matrix -- --groups admin,developers --tools whoami,deploy_template
//! cargo run --example permission_matrix -- --principals principals.json   # [{"name","groups","scopes","tenant"}]
//! ```
//!
//! Each column is a caller (by default one per group of the example, plus a
//! caller with no group); each row a tool; a cell says whether the policy
//! allows `tools/call` of that tool. Callers carry the scope given by
//! `--scope` (default `mcp:tools`). Decisions are evaluated exactly as the
//! server would, without audit events.

use std::process::ExitCode;

use rmcp_guard::Principal;
use rmcp_guard::policy::{Action, PolicyEngine, PolicyInput};

const DEFAULT_TOOLS: [&str; 7] = [
    "whoami",
    "echo",
    "get_all_templates",
    "diagnose_connection",
    "deploy_template",
    "create_ticket",
    "list_repositories",
];
const DEFAULT_GROUPS: [&str; 4] = ["admin", "network-engineers", "service-desk", "developers"];

/// One column of the table.
#[derive(serde::Deserialize)]
struct Caller {
    name: String,
    #[serde(default)]
    groups: Vec<String>,
    scopes: Option<Vec<String>>,
    tenant: Option<String>,
}

struct Options {
    policy: Option<String>,
    tools: Vec<String>,
    callers: Vec<Caller>,
    scope: String,
}

fn list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn options() -> Result<Options, String> {
    let mut args = std::env::args().skip(1);
    let mut policy = None;
    let mut tools: Vec<String> = DEFAULT_TOOLS.iter().map(|s| s.to_string()).collect();
    let mut callers: Option<Vec<Caller>> = None;
    let mut scope = "mcp:tools".to_owned();
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--policy" => policy = Some(value()?),
            "--tools" => tools = list(&value()?),
            "--scope" => scope = value()?,
            "--groups" => {
                let groups = list(&value()?);
                callers = Some(
                    groups
                        .into_iter()
                        .map(|g| Caller {
                            name: g.clone(),
                            groups: vec![g],
                            scopes: None,
                            tenant: None,
                        })
                        .collect(),
                );
            }
            "--principals" => {
                let path = value()?;
                let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
                callers = Some(serde_json::from_str(&text).map_err(|e| format!("{path}: {e}"))?);
            }
            "-h" | "--help" => {
                return Err(
                    "usage: permission_matrix [--policy PATH] [--tools a,b] [--groups g1,g2 | \
                            --principals FILE] [--scope SCOPE]"
                        .to_owned(),
                );
            }
            other => return Err(format!("unknown argument {other}; try --help")),
        }
    }
    let callers = callers.unwrap_or_else(|| {
        let mut callers: Vec<Caller> = DEFAULT_GROUPS
            .iter()
            .map(|g| Caller {
                name: g.to_string(),
                groups: vec![g.to_string()],
                scopes: None,
                tenant: None,
            })
            .collect();
        callers.push(Caller {
            name: "(no group)".to_owned(),
            groups: Vec::new(),
            scopes: None,
            tenant: None,
        });
        callers
    });
    Ok(Options {
        policy,
        tools,
        callers,
        scope,
    })
}

fn main() -> ExitCode {
    let options = match options() {
        Ok(o) => o,
        Err(message) => {
            eprintln!("permission_matrix: {message}");
            return ExitCode::from(2);
        }
    };
    let (engine, source) = match &options.policy {
        Some(path) => (PolicyEngine::from_path(path), path.as_str()),
        None => (PolicyEngine::rbac_example(), "embedded RBAC example"),
    };
    let engine = match engine {
        Ok(e) => e,
        Err(e) => {
            eprintln!("permission_matrix: policy error: {e}");
            return ExitCode::from(2);
        }
    };

    let principals: Vec<Principal> = options
        .callers
        .iter()
        .map(|c| {
            let mut p = Principal::unverified("permission-matrix", c.name.clone())
                .groups(c.groups.clone())
                .scopes(c.scopes.clone().unwrap_or_else(|| vec![options.scope.clone()]));
            if let Some(tenant) = &c.tenant {
                p = p.tenant(tenant.clone());
            }
            p.build()
        })
        .collect();

    println!("policy {} ({source})", engine.version());
    let first = options.tools.iter().map(String::len).max().unwrap_or(4).max(4);
    let widths: Vec<usize> = options.callers.iter().map(|c| c.name.len().max(5)).collect();
    print!("{:first$}", "tool");
    for (caller, width) in options.callers.iter().zip(&widths) {
        print!("  {:width$}", caller.name);
    }
    println!();
    for tool in &options.tools {
        print!("{tool:first$}");
        for (principal, width) in principals.iter().zip(&widths) {
            let decision = engine.evaluate(&PolicyInput::new(principal, tool.clone(), Action::CallTool));
            let cell = if decision.allowed() { "allow" } else { "-" };
            print!("  {cell:width$}");
        }
        println!();
    }
    ExitCode::SUCCESS
}
