//! Running an axum app in-process on a loopback port.
//!
//! ```
//! use axum::{Router, routing::get};
//! use rmcp_guard_testkit::TestServer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let app = Router::new().route("/health", get(|| async { "ok" }));
//! let server = TestServer::start(app).await?;
//! assert!(server.url().starts_with("http://127.0.0.1:"));
//!
//! let body = reqwest::get(server.mcp_url("/health")).await?.text().await?;
//! assert_eq!(body, "ok");
//! server.shutdown().await?;
//! # Ok(())
//! # }
//! ```

use std::io;
use std::net::{Ipv4Addr, SocketAddr};

use axum::Router;
use axum::serve::ListenerExt as _;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// An axum [`Router`] served on `127.0.0.1:{free port}` by a task of the
/// current tokio runtime.
///
/// Accepted sockets get `TCP_NODELAY` (small MCP requests and answers are not
/// held back by Nagle's algorithm). Dropping the handle starts a graceful
/// shutdown: the listener closes, idle connections close, requests in flight
/// finish. [`TestServer::shutdown`] does the same and waits for it.
#[derive(Debug)]
pub struct TestServer {
    addr: SocketAddr,
    url: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<io::Result<()>>>,
}

impl TestServer {
    /// Binds `127.0.0.1:0` and serves `router` on the current tokio runtime.
    ///
    /// # Errors
    ///
    /// If the port cannot be bound.
    ///
    /// # Panics
    ///
    /// If called outside a tokio runtime.
    pub async fn start(router: Router) -> io::Result<TestServer> {
        Self::start_with(|_| router).await
    }

    /// Binds `127.0.0.1:0`, builds the app with its own base URL
    /// (`http://127.0.0.1:{port}`: a guarded app needs it for its resource
    /// URI and audience) and serves it, as [`start`](Self::start) does.
    ///
    /// # Errors
    ///
    /// If the port cannot be bound.
    pub async fn start_with(app: impl FnOnce(&str) -> Router) -> io::Result<TestServer> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let router = app(&format!("http://{addr}"));
        let (stop, stopped) = oneshot::channel::<()>();
        let listener = listener.tap_io(|tcp| {
            // Best effort: a socket that refuses the option still works.
            let _ = tcp.set_nodelay(true);
        });
        let task = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    // A dropped sender (the handle dropped) also stops the server.
                    let _ = stopped.await;
                })
                .await
        });
        Ok(TestServer {
            addr,
            url: format!("http://{addr}"),
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:{port}`, without a trailing slash.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// [`TestServer::url`] followed by `path` (e.g. `"/mcp"`); a missing
    /// leading `/` is added.
    pub fn mcp_url(&self, path: &str) -> String {
        if path.starts_with('/') {
            format!("{}{path}", self.url)
        } else {
            format!("{}/{path}", self.url)
        }
    }

    /// Stops accepting connections and waits until the connections still
    /// open have finished.
    ///
    /// # Errors
    ///
    /// What the server task returned, or [`io::ErrorKind::Other`] if it
    /// panicked.
    pub async fn shutdown(mut self) -> io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.map_err(io::Error::other)?,
            None => Ok(()),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
