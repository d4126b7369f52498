//! Scan tool definitions for poisoning (`rmcp_guard::integrity`).
//!
//! ```text
//! cargo run --example scan_tools -- FILE      # or - for standard input
//! ```
//!
//! The input is a `tools/list` result (`{"tools": [...]}`, also inside a
//! JSON-RPC answer's `result`) or a bare array of tool definitions. Each
//! finding is printed as one JSON object per line on standard output:
//! `tool`, `field`, `rule`, `severity` (`low`, `medium` or `high`),
//! `excerpt`. The exit status is 1 when any finding is medium or high, 0
//! when there is none (or only low ones), 2 when the input cannot be read
//! or is not tool definitions.

use std::io::Read;
use std::process::ExitCode;

use rmcp_guard::integrity::{Severity, scan_json};
use serde_json::Value;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [path] = args.as_slice() else {
        eprintln!("usage: scan_tools FILE (or - for standard input)");
        return ExitCode::from(2);
    };
    let mut input = String::new();
    let read = if path == "-" {
        std::io::stdin().read_to_string(&mut input).map(|_| ())
    } else {
        std::fs::read_to_string(path).map(|text| input = text)
    };
    if let Err(e) = read {
        eprintln!("scan_tools: cannot read {path}: {e}");
        return ExitCode::from(2);
    }
    let Some(tools) = tools(&input) else {
        eprintln!("scan_tools: {path} is not a tools/list result nor an array of tool definitions");
        return ExitCode::from(2);
    };
    let findings = scan_json(&tools);
    for finding in &findings {
        println!("{}", finding.to_json());
    }
    if findings.iter().any(|f| f.severity >= Severity::Medium) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// The definitions in `input`: `{"tools": [...]}`, `{"result": {"tools": [...]}}`
/// or `[...]`, each an object with a string `name`.
fn tools(input: &str) -> Option<Vec<Value>> {
    let value: Value = serde_json::from_str(input).ok()?;
    let list = match value {
        Value::Array(items) => items,
        Value::Object(mut doc) => {
            let holder = match doc.remove("result") {
                Some(Value::Object(result)) => result,
                _ => doc,
            };
            match holder.get("tools") {
                Some(Value::Array(items)) => items.clone(),
                _ => return None,
            }
        }
        _ => return None,
    };
    list.iter()
        .all(|t| t.get("name").is_some_and(Value::is_string))
        .then_some(list)
}
