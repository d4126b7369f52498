//! A throwaway `redis-server` on a free loopback port, killed on drop.
//!
//! Needs the `redis-server` binary on PATH (Debian package `redis-server`;
//! `.ci/run` installs it). Without it the tests FAIL with that instruction:
//! they never pass silently. The server persists to an append-only file in
//! its own temp directory (fsync on every write), so a restart keeps what it
//! held, as a production Redis with AOF does.

#![allow(dead_code, unreachable_pub)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Redis {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl Redis {
    /// Start a server on a free port and wait until it answers `PING`.
    pub async fn start() -> Redis {
        let mut last = String::new();
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free loopback port")
                .port();
            let dir = std::env::temp_dir().join(format!("rmcp-guard-redis-{}-{port}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("a temp dir");
            let mut redis = Redis { child: None, port, dir };
            match redis.spawn().await {
                Ok(()) => return redis,
                // Lost a race for the port with another process: next port.
                Err(e) => last = e,
            }
        }
        panic!("redis-server did not start: {last}");
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn log(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    async fn spawn(&mut self) -> Result<(), String> {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--dir",
                self.dir.to_str().expect("a UTF-8 temp dir"),
                "--logfile",
                "redis.log",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "the `redis-server` binary is not on PATH; install it (Debian: `apt-get install redis-server`). \
                 These tests need a real Redis and do not skip."
            ),
            Err(e) => panic!("cannot start redis-server: {e}"),
        };
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                let log = std::fs::read_to_string(self.log()).unwrap_or_default();
                let tail: String = log.lines().rev().take(3).collect::<Vec<_>>().join(" | ");
                return Err(format!("redis-server exited early ({status}): {tail}"));
            }
            // Ours, not another server on this port: only our process writes
            // "Ready to accept connections" into our log.
            let ready = std::fs::read_to_string(self.log()).is_ok_and(|l| l.contains("Ready to accept connections"));
            if ready && self.ping() {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.stop();
                return Err("not ready in 20s".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut answer = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok() && stream.read_exact(&mut answer).is_ok() && &answer == b"+PONG\r\n"
    }

    /// Kill the server (SIGKILL, as a crash). What it held stays in its
    /// append-only file for [`restart`](Self::restart).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same port, with what it held.
    pub async fn restart(&mut self) {
        self.stop();
        // The log decides readiness: start a fresh one.
        let _ = std::fs::remove_file(self.log());
        let mut last = String::new();
        for _ in 0..20 {
            match self.spawn().await {
                Ok(()) => return,
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("redis-server did not restart on port {}: {last}", self.port);
    }

    /// Freeze the server (SIGSTOP): connections stay open and nothing
    /// answers, as a hung Redis or a network partition.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaw a [`pause`](Self::pause)d server.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("a running redis-server");
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal} failed");
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if self.child.is_some() {
            // A paused server would not die of SIGKILL's cleanup otherwise.
            let _ = Command::new("kill")
                .args(["-CONT", &self.child.as_ref().map(|c| c.id()).unwrap_or(0).to_string()])
                .status();
        }
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Wait (at most 10 s) until `revocations` has synced from Redis once: a
/// replica on Redis answers 503 until then.
pub async fn synced(revocations: &rmcp_guard::revoke::Revocations) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !revocations.is_fresh() {
        assert!(Instant::now() < deadline, "revocations never synced from Redis");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
