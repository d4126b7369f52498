//! Issue 15, the operations kit with real parts: `promtool` checks and unit
//! tests the alert rules (`ops/prometheus/alerts.yml`, each alert firing on
//! a synthetic series), and a real Prometheus (the Debian package), run with
//! the example configuration `ops/prometheus/prometheus.yml`, scrapes
//! `examples/secure_server` (`GUARD_METRICS_BIND`, behind the bearer token of
//! `GUARD_METRICS_TOKEN_FILE`) and its query API answers the series a
//! scripted mix of requests made: allowed calls, a refused token (401), a
//! policy denial, a rate limit hit and a redaction. The same Prometheus
//! loads the alert rules and evaluates every query of the Grafana dashboard
//! (`ops/grafana/rmcp-guard.json`) without error.
//!
//! Needs `prometheus` and `promtool` on PATH (`apt-get install prometheus`;
//! `.ci/run` installs it). Everything listens on 127.0.0.1, on free ports.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rmcp_guard_testkit::TestIssuer;
use rmcp_guard_testkit::client::{McpClient, McpError, Protocol};
use serde_json::{Value, json};
use support::example::{free_port, temp_dir};

/// The repository's operations kit.
fn ops(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ops").join(path)
}

/// Run a Prometheus tool; a missing one fails the test with how to install it.
fn run(tool: &str, args: &[&str], dir: &Path) -> Output {
    Command::new(tool)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `{tool}` ({e}): install Prometheus and its promtool \
                 (Debian: `apt-get install prometheus`; `.ci/run` does)"
            )
        })
}

fn assert_success(what: &str, output: &Output) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn alert_rules_pass_promtool_check_and_each_alert_fires_in_its_unit_test() {
    let dir = ops("prometheus");
    let checked = run("promtool", &["check", "rules", "alerts.yml"], &dir);
    assert_success("promtool check rules ops/prometheus/alerts.yml", &checked);
    assert!(
        String::from_utf8_lossy(&checked.stdout).contains("SUCCESS: 6 rules found"),
        "{}",
        String::from_utf8_lossy(&checked.stdout)
    );
    let tested = run("promtool", &["test", "rules", "alerts_test.yml"], &dir);
    assert_success("promtool test rules ops/prometheus/alerts_test.yml", &tested);

    // Every alert of the rules is proven to fire by a test case.
    let rules = std::fs::read_to_string(dir.join("alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("alerts_test.yml")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- alert: "))
        .collect();
    assert_eq!(alerts.len(), 6, "{alerts:?}");
    for alert in alerts {
        let fires = tests
            .split("alertname: ")
            .skip(1)
            .any(|case| case.starts_with(alert) && case.lines().nth(1).is_some_and(|l| l.trim() == "exp_alerts:"));
        assert!(fires, "no test case of alerts_test.yml expects {alert} to fire");
    }
}

/// A child process killed (and reaped) when dropped.
struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(command: &mut Command, log: PathBuf) -> Process {
        let child = command
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("log file"))
            .stderr(std::fs::File::create(log.with_extension("err")).expect("log file"))
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {:?} ({e}); Prometheus: `apt-get install prometheus` (`.ci/run` does)",
                    command.get_program()
                )
            });
        Process { child, log }
    }

    fn logs(&self) -> String {
        let out = std::fs::read_to_string(&self.log).unwrap_or_default();
        let err = std::fs::read_to_string(self.log.with_extension("err")).unwrap_or_default();
        format!("{out}{err}")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Wait (at most `limit`) until `url` answers 200.
async fn wait_ready(url: &str, limit: Duration, process: &Process) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if reqwest::get(url).await.is_ok_and(|r| r.status() == 200) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{url} did not answer within {limit:?}:\n{}", process.logs());
}

/// A token of `subject`, issued to the OAuth client `client_id` (RFC 9068).
fn token(issuer: &TestIssuer, url: &str, subject: &str, client_id: &str, groups: &[&str]) -> String {
    issuer
        .token()
        .subject(subject)
        .audience(url)
        .scope("mcp:tools")
        .claim("client_id", json!(client_id))
        .claim("groups", json!(groups))
        .claim("tenant", json!("acme"))
        .sign()
}

/// `GET /api/v1/query`: the instant vector's samples (labels, value).
async fn query(prometheus: &str, promql: &str) -> Result<Vec<(Value, f64)>, String> {
    let mut url = url::Url::parse(&format!("{prometheus}/api/v1/query")).unwrap();
    url.query_pairs_mut().append_pair("query", promql);
    let body: Value = reqwest::get(url)
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    if body["status"] != "success" {
        return Err(format!("{promql}: {body}"));
    }
    Ok(body["data"]["result"]
        .as_array()
        .map(|samples| {
            samples
                .iter()
                .map(|s| {
                    let value = s["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
                    (s["metric"].clone(), value)
                })
                .collect()
        })
        .unwrap_or_default())
}

/// The example Prometheus configuration, pointed at this test's server and
/// token file, scraping every second.
fn prometheus_config(dir: &Path, target: &str, token_file: &Path) -> PathBuf {
    let mut config = std::fs::read_to_string(ops("prometheus/prometheus.yml")).unwrap();
    for (from, to) in [
        ("scrape_interval: 15s", "scrape_interval: 1s".to_owned()),
        ("evaluation_interval: 15s", "evaluation_interval: 1s".to_owned()),
        ("rmcp-guard-1.internal:9464", target.to_owned()),
        (
            "/etc/prometheus/rmcp-guard-metrics.token",
            token_file.display().to_string(),
        ),
    ] {
        assert_eq!(
            config.matches(from).count(),
            1,
            "{from} in ops/prometheus/prometheus.yml"
        );
        config = config.replace(from, &to);
    }
    std::fs::copy(ops("prometheus/alerts.yml"), dir.join("alerts.yml")).unwrap();
    let path = dir.join("prometheus.yml");
    std::fs::write(&path, config).unwrap();
    path
}

#[tokio::test]
async fn prometheus_scrapes_the_example_and_answers_the_series_of_a_scripted_mix() {
    let issuer = TestIssuer::start().await.unwrap();
    let dir = temp_dir("observability");
    let scrape_token = "scrape-token-3f9a1c7e5b2d4608";
    let token_file = dir.join("metrics.token");
    std::fs::write(&token_file, format!("{scrape_token}\n")).unwrap();

    // secure_server with its scrape endpoint on a loopback port, behind a token.
    let (port, metrics_port) = (free_port(), free_port());
    let server = Process::spawn(
        Command::new(support::example::example_binary("secure_server"))
            .env_clear()
            .env("GUARD_ISSUER", issuer.issuer())
            .env("GUARD_BIND", format!("127.0.0.1:{port}"))
            .env("GUARD_METRICS_BIND", format!("127.0.0.1:{metrics_port}"))
            .env("GUARD_METRICS_TOKEN_FILE", &token_file)
            .env("GUARD_RATE_LIMIT", "20/min")
            .env("RUST_LOG", "warn"),
        dir.join("secure_server.log"),
    );
    let url = format!("http://127.0.0.1:{port}/mcp");
    wait_ready(
        &format!("http://127.0.0.1:{port}/.well-known/oauth-protected-resource/mcp"),
        Duration::from_secs(10),
        &server,
    )
    .await;

    // The scrape endpoint wants the token.
    let metrics_url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let http = reqwest::Client::new();
    assert_eq!(http.get(&metrics_url).send().await.unwrap().status(), 401);
    let wrong = http.get(&metrics_url).bearer_auth("scrape-token-wrong-0000000");
    assert_eq!(wrong.send().await.unwrap().status(), 401);
    let scrape = http.get(&metrics_url).bearer_auth(scrape_token).send().await.unwrap();
    assert_eq!(scrape.status(), 200);
    assert!(
        scrape.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
        "{:?}",
        scrape.headers()
    );

    // A real Prometheus, with the example configuration and the alert rules.
    let prometheus_dir = temp_dir("prometheus");
    let config = prometheus_config(&prometheus_dir, &format!("127.0.0.1:{metrics_port}"), &token_file);
    assert_success(
        "promtool check config (ops/prometheus/prometheus.yml)",
        &run(
            "promtool",
            &["check", "config", config.to_str().unwrap()],
            &prometheus_dir,
        ),
    );
    let prometheus_port = free_port();
    let prometheus = Process::spawn(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", prometheus_dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{prometheus_port}"))
            .current_dir(&prometheus_dir),
        prometheus_dir.join("prometheus.log"),
    );
    let prometheus_url = format!("http://127.0.0.1:{prometheus_port}");
    wait_ready(
        &format!("{prometheus_url}/-/ready"),
        Duration::from_secs(20),
        &prometheus,
    )
    .await;

    // The scripted mix. A network engineer: allowed calls, one of them a
    // diagnostic whose leaked password the guard removes.
    let neteng = McpClient::connect(&url, Protocol::V2026_07_28)
        .bearer(token(&issuer, &url, "acme-neteng", "ops-agent", &["network-engineers"]))
        .send()
        .await
        .expect("connect");
    for (tool, arguments) in [
        ("whoami", json!({})),
        ("echo", json!({"text": "hello"})),
        ("get_all_templates", json!({})),
        ("diagnose_connection", json!({"service": "catalyst-center"})),
    ] {
        let result = neteng.call_tool(tool, arguments).await.expect(tool);
        assert_ne!(result.is_error, Some(true), "{tool}: {result:?}");
    }
    // A refused token: 401.
    let refused = http
        .post(&url)
        .bearer_auth("not-a-token")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    // A developer calls a Catalyst Center tool: the policy denies it.
    let developer = McpClient::connect(&url, Protocol::V2026_07_28)
        .bearer(token(&issuer, &url, "acme-dev", "dev-agent", &["developers"]))
        .send()
        .await
        .expect("connect");
    let denied = developer.call_tool("get_all_templates", json!({})).await;
    assert!(
        matches!(&denied, Err(McpError::JsonRpc { .. })) || denied.as_ref().is_ok_and(|r| r.is_error == Some(true)),
        "{denied:?}"
    );
    // A caller over its rate (20 a minute): refused with 429.
    let flood = McpClient::connect(&url, Protocol::V2026_07_28)
        .bearer(token(&issuer, &url, "acme-flood", "flood-agent", &["developers"]))
        .send()
        .await
        .expect("connect");
    let mut limited = 0;
    for _ in 0..25 {
        if let Err(e) = flood.list_tools().await {
            assert_eq!(e.status().map(|s| s.as_u16()), Some(429), "{e}");
            limited += 1;
        }
    }
    assert!(limited > 0, "the 21st request in a minute is refused");

    // Prometheus has the series, with the values the mix made.
    let job = r#"job="rmcp-guard""#;
    /// A query, what its one value must satisfy, and that said in words.
    type Expectation = (String, Box<dyn Fn(f64) -> bool>, &'static str);
    let expected: Vec<Expectation> = vec![
        (format!("up{{{job}}}"), Box::new(|v| v == 1.0), "== 1"),
        (
            format!(
                r#"sum(rmcp_guard_requests_total{{{job}, outcome="allow", reason="valid_token", client_id="ops-agent"}})"#
            ),
            Box::new(|v| v >= 5.0),
            ">= 5",
        ),
        (
            // Not verified: no client is known.
            format!(r#"sum(rmcp_guard_requests_total{{{job}, outcome="deny", status="401", client_id="unknown"}})"#),
            Box::new(|v| v == 1.0),
            "== 1",
        ),
        (
            format!(
                r#"sum(rmcp_guard_policy_denials_total{{{job}, subject="acme-dev", client_id="dev-agent", action="tools/call", resource="get_all_templates"}})"#
            ),
            Box::new(|v| v == 1.0),
            "== 1",
        ),
        (
            format!(
                r#"sum(rmcp_guard_policy_decisions_total{{{job}, outcome="deny", action="tools/call", client_id="dev-agent"}})"#
            ),
            Box::new(|v| v == 1.0),
            "== 1",
        ),
        (
            format!(
                r#"sum(rmcp_guard_policy_decisions_total{{{job}, outcome="allow", action="tools/call", client_id="ops-agent"}})"#
            ),
            Box::new(|v| v >= 4.0),
            ">= 4",
        ),
        (
            format!(r#"sum(rmcp_guard_policy_duration_seconds_count{{{job}}})"#),
            Box::new(|v| v >= 5.0),
            ">= 5",
        ),
        (
            format!(r#"sum(rmcp_guard_policy_duration_seconds_bucket{{{job}, le="+Inf"}})"#),
            Box::new(|v| v >= 5.0),
            ">= 5",
        ),
        (
            format!(
                r#"sum(rmcp_guard_limit_hits_total{{{job}, outcome="deny", reason="rate", client_id="flood-agent"}})"#
            ),
            Box::new(move |v| v == f64::from(limited)),
            "== the 429s",
        ),
        (
            format!(r#"sum(rmcp_guard_output_redactions_total{{{job}, resource="diagnose_connection"}})"#),
            Box::new(|v| v >= 1.0),
            ">= 1",
        ),
        (
            format!(r#"sum(rmcp_guard_cache_lookups_total{{{job}, cache="token"}})"#),
            Box::new(|v| v >= 7.0),
            ">= 7",
        ),
        (
            format!(r#"sum(rmcp_guard_secrets_reads_total{{{job}, outcome="ok", service="catalyst-center"}})"#),
            Box::new(|v| v >= 2.0),
            ">= 2",
        ),
        // The issuer's metadata and JWKS, fetched at start: what the
        // JWKS alert watches.
        (
            format!(r#"sum(rmcp_guard_upstream_duration_seconds_count{{{job}, upstream="jwks", outcome="ok"}})"#),
            Box::new(|v| v >= 1.0),
            ">= 1",
        ),
        (
            format!(r#"sum(rmcp_guard_audit_events_total{{{job}, event="authn"}})"#),
            Box::new(|v| v >= 8.0),
            ">= 8",
        ),
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut missing: Vec<String> = Vec::new();
    while Instant::now() < deadline {
        missing.clear();
        for (promql, holds, wanted) in &expected {
            match query(&prometheus_url, promql).await {
                Ok(samples) if samples.len() == 1 && holds(samples[0].1) => {}
                Ok(samples) => missing.push(format!("{promql} {wanted}: {samples:?}")),
                Err(e) => missing.push(e),
            }
        }
        if missing.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if !missing.is_empty() {
        let scrape = http.get(&metrics_url).bearer_auth(scrape_token).send().await.unwrap();
        panic!(
            "after 30 s Prometheus still lacks:\n{}\n\nthe scrape:\n{}\n\nsecure_server:\n{}\nprometheus:\n{}",
            missing.join("\n"),
            scrape.text().await.unwrap_or_default(),
            server.logs(),
            prometheus.logs()
        );
    }
    // Every series carries the meter's scope: the allowed and the refused.
    let scoped = query(
        &prometheus_url,
        r#"count(rmcp_guard_requests_total{otel_scope_name="rmcp_guard"})"#,
    )
    .await
    .unwrap();
    assert!(scoped.first().is_some_and(|(_, n)| *n >= 2.0), "{scoped:?}");

    // The alert rules are loaded and evaluate against the real series.
    let deadline = Instant::now() + Duration::from_secs(15);
    let rules = loop {
        let rules: Value = reqwest::get(format!("{prometheus_url}/api/v1/rules"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let list: Vec<Value> = rules["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        let evaluated = list.len() == 6
            && list
                .iter()
                .all(|r| r["health"] == "ok" && !r["lastEvaluation"].as_str().unwrap_or("0001").starts_with("0001"));
        if evaluated || Instant::now() > deadline {
            break list;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(rules.len(), 6, "{rules:?}");
    for rule in &rules {
        assert_eq!(rule["health"], "ok", "{rule}");
        assert_eq!(rule["type"], "alerting", "{rule}");
    }

    // Every query of the Grafana dashboard is PromQL this Prometheus runs.
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(ops("grafana/rmcp-guard.json")).unwrap()).unwrap();
    assert_eq!(dashboard["__inputs"][0]["name"], "DS_PROMETHEUS");
    let panels: Vec<&Value> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] != "row")
        .collect();
    assert!(panels.len() >= 12, "{} panels", panels.len());
    // Rates need two scrapes of a series: wait (bounded) until the panels
    // the mix feeds have data.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut answered = 0;
        for panel in &panels {
            assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}", "{}", panel["title"]);
            for target in panel["targets"].as_array().unwrap() {
                let promql = target["expr"]
                    .as_str()
                    .unwrap()
                    .replace("$__rate_interval", "1m")
                    .replace("$__range", "5m")
                    .replace("$job", ".+")
                    .replace("$instance", ".+");
                let samples = query(&prometheus_url, &promql)
                    .await
                    .unwrap_or_else(|e| panic!("panel {}: {e}", panel["title"]));
                answered += usize::from(!samples.is_empty());
            }
        }
        // Requests, 401s, denials (three panels), decisions, decision
        // latency (two), cache ratio, limit hits, upstream latency,
        // credential reads, redactions.
        if answered >= 12 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dashboard shows the mix: only {answered} queries with data"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    drop(prometheus);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&prometheus_dir);
}

#[test]
fn a_metrics_endpoint_off_loopback_needs_a_token_and_bad_settings_exit_2() {
    let dir = temp_dir("metrics-settings");
    let short = dir.join("short.token");
    std::fs::write(&short, "abc\n").unwrap();
    let good = dir.join("good.token");
    std::fs::write(&good, "a-token-long-enough-0123456789\n").unwrap();
    let short = short.display().to_string();
    let good = good.display().to_string();
    for (vars, expected) in [
        (vec![("GUARD_METRICS_BIND", "0.0.0.0:9464")], "GUARD_METRICS_TOKEN_FILE"),
        (vec![("GUARD_METRICS_BIND", "[::]:9464")], "not a loopback address"),
        (
            vec![("GUARD_METRICS_BIND", "localhost")],
            "GUARD_METRICS_BIND is not a socket address",
        ),
        (
            vec![
                ("GUARD_METRICS_BIND", "0.0.0.0:9464"),
                ("GUARD_METRICS_TOKEN_FILE", short.as_str()),
            ],
            "16 characters",
        ),
        (
            vec![
                ("GUARD_METRICS_BIND", "0.0.0.0:9464"),
                ("GUARD_METRICS_TOKEN_FILE", "/nonexistent/token"),
            ],
            "GUARD_METRICS_TOKEN_FILE: cannot read",
        ),
        (
            vec![("GUARD_METRICS_TOKEN_FILE", good.as_str())],
            "needs GUARD_METRICS_BIND",
        ),
        (vec![("GUARD_OTLP_ENDPOINT", "collector:4318")], "GUARD_OTLP_ENDPOINT"),
    ] {
        let output = Command::new(support::example::example_binary("secure_server"))
            .env_clear()
            .env("GUARD_ISSUER", "https://idp.example.com")
            .envs(vars.iter().copied())
            .stdin(Stdio::null())
            .output()
            .expect("run secure_server");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{vars:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{vars:?}: one line: {stderr}");
        assert!(stderr.contains(expected), "{vars:?}: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
