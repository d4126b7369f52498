//! The cost of the output guard per tool call: one tool router called
//! through `ServerHandler::call_tool`, bare and inside [`OutputGuard`]
//! (the default [`OutputPolicy`]), side by side in one run.
//!
//! ```text
//! cargo bench --bench output_guard -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! Four results, each called with the guard `off` and `on`:
//!
//! - `small`: a ~300-byte JSON text, the typical tool result;
//! - `large`: one 1 MiB text block of inventory-like JSON lines (URLs,
//!   percent signs, hashes, timestamps), with no secret in it;
//!
//! each with no credential read (`no_read`: only the credential patterns
//! run) and with one credential of two fields read through
//! `CallerCredentials` (`one_read`: its values and their encodings are
//! searched for too; the in-memory store answers from the cache, in both
//! `off` and `on`). The listing has percent signs (`"util":"37%"`), which
//! makes the guard also search a percent-decoded copy once a value was
//! read; `large/one_read_no_pct` is the same text with `p` for `%`. The tool's text is a copy of a prepared string, the
//! same work `off` and `on`.
//!
//! The handler is called in process on a current-thread runtime with a
//! `RequestContext` made once (its peer is a server on an in-memory pipe
//! that nothing talks to) and cloned per call. After criterion's report, a
//! plain timed loop (off, on, off, on; the faster of two rounds of each)
//! prints each mean, the on/off ratio of each case, and for 1 MiB the
//! guard's cost per KiB (ns/KiB) and its scan rate (MB/s).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::model::{CallToolRequestParams, CallToolResponse, NumberOrString, ServerCapabilities, ServerConfig};
use rmcp::service::{RequestContext, RoleServer, RunningService, serve_directly};
use rmcp::{ErrorData, ServerHandler, tool, tool_handler, tool_router};
use rmcp_guard::Principal;
use rmcp_guard::integrity::{OutputGuard, OutputPolicy};
use rmcp_guard::secrets::{CallerCredentials, Credentials, MemoryStore};

/// The size of the large result.
const LARGE: usize = 1 << 20;
/// Calls of one timed round per case, and the longest a round may take.
const SMALL_CALLS: usize = 50_000;
const LARGE_CALLS: usize = 60;
const ROUND_BUDGET: Duration = Duration::from_secs(5);

/// One line of an inventory listing (~300 bytes): what a tool returns.
fn record(i: u64) -> String {
    // A small LCG: varied, reproducible digits and hex.
    let mut x = i
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    let mut next = || {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        x >> 16
    };
    format!(
        "{{\"id\":{},\"hostname\":\"edge-rtr-{:04}.dc{}.example.net\",\"mgmt_ip\":\"10.{}.{}.{}\",\
         \"model\":\"C9300-48P\",\"status\":\"reachable\",\"uptime\":\"{}d 03:12:55\",\
         \"last_seen\":\"2026-11-30T12:{:02}:55Z\",\"config_sha\":\"{:016x}{:016x}\",\
         \"util\":\"{}%\",\"link\":\"https://inventory.example.com/devices/{}?view=full\"}}\n",
        100_000 + i,
        next() % 10_000,
        next() % 9,
        next() % 256,
        next() % 256,
        next() % 256,
        next() % 400,
        next() % 60,
        next(),
        next(),
        next() % 100,
        100_000 + i,
    )
}

/// Records up to `size` bytes.
fn listing(size: usize) -> String {
    let mut text = String::with_capacity(size + 512);
    let mut i = 0;
    while text.len() < size {
        text.push_str(&record(i));
        i += 1;
    }
    text.truncate(size);
    text
}

#[derive(Clone)]
struct Tools {
    tool_router: ToolRouter<Self>,
    small: Arc<str>,
    large: Arc<str>,
    /// `large` without its percent signs.
    plain: Arc<str>,
}

#[tool_router]
impl Tools {
    fn new() -> Self {
        Tools {
            tool_router: Self::tool_router(),
            small: record(7).trim_end().into(),
            large: listing(LARGE).into(),
            plain: listing(LARGE).replace('%', "p").into(),
        }
    }

    #[tool(description = "A small result")]
    async fn small(&self) -> String {
        self.small.to_string()
    }

    #[tool(description = "A small result, after reading a credential")]
    async fn small_read(&self, credentials: CallerCredentials) -> Result<String, ErrorData> {
        credentials.get("inventory-db").await?;
        Ok(self.small.to_string())
    }

    #[tool(description = "A 1 MiB result")]
    async fn large(&self) -> String {
        self.large.to_string()
    }

    #[tool(description = "A 1 MiB result, after reading a credential")]
    async fn large_read(&self, credentials: CallerCredentials) -> Result<String, ErrorData> {
        credentials.get("inventory-db").await?;
        Ok(self.large.to_string())
    }

    #[tool(description = "A 1 MiB result without percent signs, after reading a credential")]
    async fn plain_read(&self, credentials: CallerCredentials) -> Result<String, ErrorData> {
        credentials.get("inventory-db").await?;
        Ok(self.plain.to_string())
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Tools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }
}

/// A request context as the guard's layers leave it: the caller and the
/// credentials in its extensions. Its peer is a server on an in-memory pipe
/// (kept alive by the returned service).
fn context(rt: &tokio::runtime::Runtime) -> (RequestContext<RoleServer>, RunningService<RoleServer, Tools>) {
    let (server_io, client_io) = tokio::io::duplex(64 * 1024);
    // The client end stays open (leaked) for the whole run.
    std::mem::forget(client_io);
    let running = rt.block_on(async { serve_directly(Tools::new(), server_io, None) });
    let mut context = RequestContext::new(NumberOrString::Number(1), running.peer().clone());
    let store = MemoryStore::new().with(
        "mcp/acme/inventory-db",
        [("username", "svc-inventory"), ("password", "Kx9-vélo/@Zq-4417-bench")],
    );
    context.extensions.insert(
        Principal::unverified("https://idp.test", "alice")
            .tenant("acme")
            .build(),
    );
    context.extensions.insert(Credentials::builder(store).build());
    (context, running)
}

/// The text of a tool's answer.
fn text(response: Result<CallToolResponse, ErrorData>) -> String {
    match response {
        Ok(CallToolResponse::Complete(result)) => result.content[0].as_text().expect("text").text.clone(),
        other => panic!("unexpected answer: {other:?}"),
    }
}

async fn call<H: ServerHandler>(handler: &H, tool: &'static str, context: &RequestContext<RoleServer>) -> usize {
    match handler
        .call_tool(CallToolRequestParams::new(tool), context.clone())
        .await
    {
        Ok(CallToolResponse::Complete(result)) => result.content.len(),
        other => panic!("{tool}: unexpected answer: {other:?}"),
    }
}

/// Nanoseconds per call of `tool`, over at most `n` calls and `ROUND_BUDGET`.
fn per_call<H: ServerHandler>(
    rt: &tokio::runtime::Runtime,
    handler: &H,
    tool: &'static str,
    context: &RequestContext<RoleServer>,
    n: usize,
) -> f64 {
    rt.block_on(async {
        let start = Instant::now();
        let mut done = 0;
        while done < n && start.elapsed() < ROUND_BUDGET {
            black_box(call(handler, tool, context).await);
            done += 1;
        }
        start.elapsed().as_nanos() as f64 / done.max(1) as f64
    })
}

/// The cases: (name, tool, calls per timed round).
const CASES: [(&str, &str, usize); 5] = [
    ("small/no_read", "small", SMALL_CALLS),
    ("small/one_read", "small_read", SMALL_CALLS),
    ("large/no_read", "large", LARGE_CALLS),
    ("large/one_read", "large_read", LARGE_CALLS),
    ("large/one_read_no_pct", "plain_read", LARGE_CALLS),
];

fn output_guard_cost(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (context, _peer) = context(&rt);
    let off = Tools::new();
    let on = OutputGuard::new(Tools::new(), OutputPolicy::default());

    // Both answer the same: nothing in these results is removed (a
    // redaction would measure another path).
    for (name, tool, _) in CASES {
        let bare = text(rt.block_on(off.call_tool(CallToolRequestParams::new(tool), context.clone())));
        let guarded = text(rt.block_on(on.call_tool(CallToolRequestParams::new(tool), context.clone())));
        assert_eq!(bare, guarded, "{name}: the guard changed a result without secrets");
    }
    let small_bytes = off.small.len();
    assert!((250..=350).contains(&small_bytes), "small result: {small_bytes} bytes");

    let mut group = c.benchmark_group("output_guard");
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_secs(1));
    for (name, tool, _) in CASES {
        if name.starts_with("large") {
            group.throughput(criterion::Throughput::Bytes(LARGE as u64));
        } else {
            group.throughput(criterion::Throughput::Bytes(small_bytes as u64));
        }
        group.bench_function(format!("{name}/off"), |b| {
            b.to_async(&rt)
                .iter(|| async { black_box(call(&off, tool, &context).await) })
        });
        group.bench_function(format!("{name}/on"), |b| {
            b.to_async(&rt)
                .iter(|| async { black_box(call(&on, tool, &context).await) })
        });
    }
    group.finish();

    // Side by side: off, on, off, on; the faster round of each.
    println!("output guard per tools/call (direct handler call, one thread; best of 2 rounds):");
    for (name, tool, n) in CASES {
        let (mut off_ns, mut on_ns) = (f64::MAX, f64::MAX);
        for _ in 0..2 {
            off_ns = off_ns.min(per_call(&rt, &off, tool, &context, n));
            on_ns = on_ns.min(per_call(&rt, &on, tool, &context, n));
        }
        let cost = on_ns - off_ns;
        print!(
            "  {name:<22} off {:>11.0} ns   on {:>11.0} ns   cost {:>10.0} ns   on/off {:.2}",
            off_ns,
            on_ns,
            cost,
            on_ns / off_ns
        );
        if name.starts_with("large") {
            let kib = LARGE as f64 / 1024.0;
            print!(
                "   {:.0} ns/KiB, {:.0} MB/s scanned",
                cost / kib,
                LARGE as f64 / (cost / 1e9) / 1e6
            );
        }
        println!();
    }
}

criterion_group!(benches, output_guard_cost);
criterion_main!(benches);
