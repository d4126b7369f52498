//! The shared store against a real redis-server: what it does when Redis
//! refuses its login and later accepts it again.

mod support;

use std::time::{Duration, Instant};

use rmcp_guard::revoke::{Revocation, RevokeError};
use rmcp_guard::store::{RedisConfig, SharedStore};
use support::redis::Redis;

fn redis_cli(redis: &Redis, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port().to_string()])
        .args(args)
        .output()
        .expect("redis-cli (Debian package redis-tools, installed with redis-server)");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn create_user(redis: &Redis) {
    assert_eq!(
        redis_cli(
            redis,
            &["ACL", "SETUSER", "guard", "on", ">s3cret", "~*", "&*", "+@all"]
        ),
        "OK"
    );
}

/// A Redis whose ACL user disappears (a restart before its users were
/// loaded, a rotation) refuses the login; redis-rs alone would keep that
/// refusal for good. The store connects anew and recovers once the user is
/// back, without a restart.
#[tokio::test]
async fn a_refused_login_is_retried_and_the_store_recovers() {
    let redis = Redis::start().await;
    create_user(&redis);
    let url = format!("redis://guard:s3cret@127.0.0.1:{}/0", redis.port());
    let store = SharedStore::redis(RedisConfig::new(url).timeout(Duration::from_millis(500))).unwrap();
    let revocations = store.revocations();
    revocations.revoke(Revocation::subject("first")).await.unwrap();

    // The user is deleted (its connections are closed): every command fails.
    assert_eq!(redis_cli(&redis, &["ACL", "DELUSER", "guard"]), "1");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match revocations.revoke(Revocation::subject("meanwhile")).await {
            Err(RevokeError::Store(_)) => break,
            Ok(_) => assert!(Instant::now() < deadline, "commands kept working without the user"),
            Err(other) => panic!("unexpected: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let the refusal be seen several times, as a busy replica would.
    for _ in 0..5 {
        assert!(revocations.revoke(Revocation::subject("refused")).await.is_err());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The user is back: the store recovers by itself.
    create_user(&redis);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match revocations.revoke(Revocation::subject("after")).await {
            Ok(_) => break,
            Err(error) => assert!(
                Instant::now() < deadline,
                "no recovery after the login works again: {error}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        redis_cli(
            &redis,
            &["HEXISTS", "rmcp-guard:revocations:at", "[\"subject\",null,\"after\"]"]
        ),
        "1"
    );
}
