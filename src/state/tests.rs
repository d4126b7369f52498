//! Adversarial tests of sealed state and handles: pure and fast, with the
//! clock passed in where time matters.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rmcp::model::JsonObject;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::sealer::{MAX_PAYLOAD_LEN, MAX_SEALED_LEN};
use super::*;
use crate::cache::Timestamp;
use crate::{Principal, PrincipalKind};

const NOW: u64 = 1_800_000_000;

fn at(secs: u64) -> Timestamp {
    Timestamp::from_unix_secs(secs)
}

fn key(byte: u8) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(vec![byte; 32])
}

fn sealer() -> RequestStateSealer {
    RequestStateSealer::new(StateKeys::new("k1", key(1)).unwrap())
}

fn alice() -> Principal {
    Principal::unverified("https://issuer.example", "alice")
        .client_id("app")
        .build()
}

fn args(value: Value) -> JsonObject {
    value.as_object().unwrap().clone()
}

/// Open at `now` without the replay set.
fn open(sealer: &RequestStateSealer, sealed: &str, binding: &StateBinding<'_>) -> Result<Value, StateError> {
    sealer
        .open_at::<Value>(sealed, binding, at(NOW + 1))
        .map(|(payload, _)| payload)
}

fn sealed_for(sealer: &RequestStateSealer, binding: &StateBinding<'_>) -> String {
    sealer.seal_at(binding, &json!({"amount": 100}), at(NOW)).unwrap()
}

#[tokio::test]
async fn a_sealed_state_opens_once_for_the_same_caller_and_call() {
    let sealer = sealer();
    let alice = alice();
    let arguments = args(json!({"service": "billing", "replicas": 3}));
    let binding = StateBinding::tool_call(&alice, "deploy", Some(&arguments));
    let sealed = sealer.seal(&binding, &json!({"amount": 100})).unwrap();
    assert!(sealed.starts_with("v1.k1."), "{sealed}");
    let payload: Value = sealer.open(&sealed, &binding).await.unwrap();
    assert_eq!(payload, json!({"amount": 100}));
    assert_eq!(
        sealer.open::<Value>(&sealed, &binding).await.unwrap_err(),
        StateError::Replayed
    );
    // A second state for the same call is a new state with its own id.
    let again = sealer.seal(&binding, &json!({"amount": 100})).unwrap();
    assert_ne!(again, sealed, "fresh nonce and id per seal");
    assert!(sealer.open::<Value>(&again, &binding).await.is_ok());
}

#[tokio::test]
async fn a_shared_replay_set_replaces_only_the_sealers_own() {
    let alice = alice();
    let binding = StateBinding::tool_call(&alice, "t", None);
    // The sealer's own set gives way to the fleet's: two sealers sharing it
    // open a state once between them.
    let fleet: Arc<dyn ReplaySet> = Arc::new(MemoryReplaySet::new());
    let a = sealer().shared_replay_set(fleet.clone());
    let b = sealer().shared_replay_set(fleet.clone());
    let sealed = a.seal(&binding, &"x").unwrap();
    a.open::<String>(&sealed, &binding).await.unwrap();
    assert_eq!(
        b.open::<String>(&sealed, &binding).await.unwrap_err(),
        StateError::Replayed
    );
    // A set the user chose stays.
    let chosen: Arc<dyn ReplaySet> = Arc::new(MemoryReplaySet::new());
    let a = sealer().replay_set(chosen.clone()).shared_replay_set(fleet.clone());
    let b = sealer().replay_set(chosen).shared_replay_set(fleet.clone());
    let sealed = a.seal(&binding, &"x").unwrap();
    a.open::<String>(&sealed, &binding).await.unwrap();
    assert_eq!(
        b.open::<String>(&sealed, &binding).await.unwrap_err(),
        StateError::Replayed
    );
    let c = sealer().shared_replay_set(fleet);
    c.open::<String>(&sealed, &binding).await.unwrap();
    // Multi-use stays multi-use.
    let multi = sealer().multi_use().shared_replay_set(Arc::new(MemoryReplaySet::new()));
    for _ in 0..2 {
        multi.open::<String>(&sealed, &binding).await.unwrap();
    }
}

#[tokio::test]
async fn a_multi_use_state_opens_until_it_expires() {
    let sealer = sealer().multi_use();
    let alice = alice();
    let binding = StateBinding::tool_call(&alice, "t", None);
    let sealed = sealer.seal(&binding, &"x").unwrap();
    for _ in 0..3 {
        assert_eq!(sealer.open::<String>(&sealed, &binding).await.unwrap(), "x");
    }
}

#[test]
fn the_payload_is_not_readable_in_the_sealed_state() {
    let sealer = sealer();
    let alice = alice();
    let binding = StateBinding::tool_call(&alice, "t", None);
    let sealed = sealer.seal_at(&binding, &"very-secret-payload", at(NOW)).unwrap();
    let body = sealed.rsplit('.').next().unwrap();
    let bytes = URL_SAFE_NO_PAD.decode(body).unwrap();
    assert!(!bytes.windows(6).any(|w| w == b"secret"));
    assert!(!sealed.contains("secret"));
}

#[test]
fn a_flipped_bit_anywhere_in_the_sealed_bytes_is_a_mismatch() {
    let sealer = sealer();
    let alice = alice();
    let arguments = args(json!({"a": 1}));
    let binding = StateBinding::tool_call(&alice, "t", Some(&arguments));
    let sealed = sealed_for(&sealer, &binding);
    let (prefix, body) = sealed.rsplit_once('.').unwrap();
    let bytes = URL_SAFE_NO_PAD.decode(body).unwrap();
    for i in 0..bytes.len() {
        for bit in [0x01, 0x80] {
            let mut flipped = bytes.clone();
            flipped[i] ^= bit;
            let tampered = format!("{prefix}.{}", URL_SAFE_NO_PAD.encode(&flipped));
            assert_eq!(
                open(&sealer, &tampered, &binding),
                Err(StateError::Mismatch),
                "byte {i}"
            );
        }
    }
    assert!(open(&sealer, &sealed, &binding).is_ok());
}

#[test]
fn a_changed_character_anywhere_in_the_string_never_opens() {
    let sealer = sealer();
    let alice = alice();
    let binding = StateBinding::tool_call(&alice, "t", None);
    let sealed = sealed_for(&sealer, &binding);
    for i in 0..sealed.len() {
        for replacement in ['A', '_', '.', '~'] {
            let mut changed: Vec<char> = sealed.chars().collect();
            if changed[i] == replacement {
                continue;
            }
            changed[i] = replacement;
            let changed: String = changed.into_iter().collect();
            // The last character of the base64url body carries spare bits:
            // a change there may decode to the same bytes, or be refused.
            if let Ok(payload) = open(&sealer, &changed, &binding) {
                panic!("position {i} -> {replacement:?} opened: {payload}");
            }
        }
    }
}

#[test]
fn every_truncation_is_refused() {
    let sealer = sealer();
    let alice = alice();
    let binding = StateBinding::tool_call(&alice, "t", None);
    let sealed = sealed_for(&sealer, &binding);
    for len in 0..sealed.len() {
        let error = open(&sealer, &sealed[..len], &binding).unwrap_err();
        assert!(
            matches!(
                error,
                StateError::Malformed | StateError::Mismatch | StateError::UnknownKey
            ),
            "{len}: {error:?}"
        );
    }
    // Appending is refused too.
    assert!(open(&sealer, &format!("{sealed}A"), &binding).is_err());
    assert!(open(&sealer, &format!("{sealed}AAAA"), &binding).is_err());
}

#[test]
fn another_caller_is_a_mismatch_whichever_field_differs() {
    let sealer = sealer();
    let alice = alice();
    let binding = StateBinding::tool_call(&alice, "t", None);
    let sealed = sealed_for(&sealer, &binding);
    let others = [
        Principal::unverified("https://issuer.example", "mallory")
            .client_id("app")
            .build(),
        Principal::unverified("https://other.example", "alice")
            .client_id("app")
            .build(),
        Principal::unverified("https://issuer.example", "alice")
            .client_id("other-app")
            .build(),
        Principal::unverified("https://issuer.example", "alice").build(),
        Principal::unverified("https://issuer.example", "alice")
            .client_id("app")
            .kind(PrincipalKind::Client)
            .build(),
    ];
    for other in &others {
        let theirs = StateBinding::tool_call(other, "t", None);
        assert_eq!(open(&sealer, &sealed, &theirs), Err(StateError::Mismatch), "{other:?}");
    }
    // The same identity in a new token (other scopes, expiry) opens it.
    let refreshed = Principal::unverified("https://issuer.example", "alice")
        .client_id("app")
        .scopes(["more"])
        .expires_at_unix(NOW + 3600)
        .build();
    assert!(open(&sealer, &sealed, &StateBinding::tool_call(&refreshed, "t", None)).is_ok());
}

#[test]
fn other_arguments_tool_or_method_are_a_mismatch_and_key_order_is_not() {
    let sealer = sealer();
    let alice = alice();
    let arguments = args(json!({"service": "billing", "replicas": 3, "opts": {"b": 1, "a": [1, 2]}}));
    let binding = StateBinding::tool_call(&alice, "deploy", Some(&arguments));
    let sealed = sealed_for(&sealer, &binding);
    let changed = [
        json!({"service": "billing", "replicas": 4, "opts": {"b": 1, "a": [1, 2]}}),
        json!({"service": "billing", "replicas": 3, "opts": {"b": 1, "a": [2, 1]}}),
        json!({"service": "billing", "replicas": 3}),
        json!({"service": "billing", "replicas": "3", "opts": {"b": 1, "a": [1, 2]}}),
        json!({}),
    ];
    for other in changed {
        let other = args(other);
        let theirs = StateBinding::tool_call(&alice, "deploy", Some(&other));
        assert_eq!(open(&sealer, &sealed, &theirs), Err(StateError::Mismatch), "{other:?}");
    }
    assert_eq!(
        open(&sealer, &sealed, &StateBinding::tool_call(&alice, "deploy", None)),
        Err(StateError::Mismatch)
    );
    assert_eq!(
        open(
            &sealer,
            &sealed,
            &StateBinding::tool_call(&alice, "undeploy", Some(&arguments))
        ),
        Err(StateError::Mismatch)
    );
    let value = Value::Object(arguments.clone());
    assert_eq!(
        open(
            &sealer,
            &sealed,
            &StateBinding::new(&alice, "prompts/get", "deploy", Some(&value))
        ),
        Err(StateError::Mismatch)
    );
    assert!(
        open(
            &sealer,
            &sealed,
            &StateBinding::new(&alice, "tools/call", "deploy", Some(&value))
        )
        .is_ok()
    );
    let reordered: JsonObject =
        serde_json::from_str(r#"{"opts": {"a": [1, 2], "b": 1}, "replicas": 3, "service": "billing"}"#).unwrap();
    assert!(
        open(
            &sealer,
            &sealed,
            &StateBinding::tool_call(&alice, "deploy", Some(&reordered))
        )
        .is_ok()
    );
}

#[test]
fn a_state_expires_at_its_ttl() {
    let sealer = sealer().ttl(Duration::from_secs(60));
    let alice = alice();
    let binding = StateBinding::tool_call(&alice, "t", None);
    let sealed = sealer.seal_at(&binding, &1, at(NOW)).unwrap();
    let open_at = |now| sealer.open_at::<u32>(&sealed, &binding, now).map(|(v, _)| v);
    assert_eq!(open_at(at(NOW + 59)), Ok(1));
    assert_eq!(open_at(at(NOW + 60)), Err(StateError::Expired));
    assert_eq!(open_at(at(NOW + 100_000)), Err(StateError::Expired));
    // A tampered state is a mismatch, not "expired": the expiry is only
    // read once the state is authentic.
    let tampered = format!("{}A", &sealed[..sealed.len() - 1]);
    if tampered != sealed {
        assert_ne!(
            sealer
                .open_at::<u32>(&tampered, &binding, at(NOW + 100_000))
                .map(|(v, _)| v),
            Err(StateError::Expired)
        );
    }
}

#[test]
fn the_default_ttl_is_300_seconds_and_single_use_is_on() {
    let sealer = sealer();
    let alice = alice();
    let binding = StateBinding::tool_call(&alice, "t", None);
    let sealed = sealer.seal_at(&binding, &1, at(NOW)).unwrap();
    assert!(sealer.open_at::<u32>(&sealed, &binding, at(NOW + 299)).is_ok());
    assert_eq!(
        sealer.open_at::<u32>(&sealed, &binding, at(NOW + 300)).map(|(v, _)| v),
        Err(StateError::Expired)
    );
    assert!(format!("{sealer:?}").contains("single_use: true"));
}

#[test]
fn a_rotated_key_opens_within_its_window_and_not_after() {
    let old = RequestStateSealer::new(StateKeys::new("old", key(1)).unwrap());
    let alice = alice();
    let binding = StateBinding::tool_call(&alice, "t", None);
    let by_old = old.seal_at(&binding, &"old", at(NOW)).unwrap();
    let keys = StateKeys::new("old", key(1))
        .unwrap()
        .rotate_at("new".into(), &key(2), Duration::from_secs(600), at(NOW))
        .unwrap();
    assert_eq!(keys.kids().collect::<Vec<_>>(), ["new", "old"]);
    let rotated = RequestStateSealer::new(keys).ttl(Duration::from_secs(3600));
    let by_new = rotated.seal_at(&binding, &"new", at(NOW)).unwrap();
    assert!(by_new.starts_with("v1.new."));
    // Within the window (and the state's own TTL), the old key opens.
    let open_at = |sealed: &str, now| rotated.open_at::<String>(sealed, &binding, now).map(|(v, _)| v);
    assert_eq!(open_at(&by_old, at(NOW + 299)), Ok("old".into()));
    // Past the window the old key is refused like an unknown one...
    let long = old.clone().ttl(Duration::from_secs(3600));
    let by_old_long = long.seal_at(&binding, &"old", at(NOW)).unwrap();
    assert_eq!(open_at(&by_old_long, at(NOW + 599)), Ok("old".into()));
    assert_eq!(open_at(&by_old_long, at(NOW + 600)), Err(StateError::UnknownKey));
    // ...while the new key keeps opening.
    assert_eq!(open_at(&by_new, at(NOW + 600)), Ok("new".into()));
    // The old sealer does not know the new key.
    assert_eq!(
        old.open_at::<String>(&by_new, &binding, at(NOW + 1)).map(|(v, _)| v),
        Err(StateError::UnknownKey)
    );
}

#[test]
fn rotating_again_keeps_earlier_windows_and_drops_closed_ones() {
    let keys = StateKeys::new("a", key(1))
        .unwrap()
        .rotate_at("b".into(), &key(2), Duration::from_secs(100), at(NOW))
        .unwrap()
        .rotate_at("c".into(), &key(3), Duration::from_secs(1000), at(NOW + 50))
        .unwrap();
    assert!(keys.opening("a", at(NOW + 99)).is_some());
    assert!(keys.opening("a", at(NOW + 100)).is_none(), "a keeps its own window");
    assert!(keys.opening("b", at(NOW + 1049)).is_some());
    assert!(keys.opening("b", at(NOW + 1050)).is_none());
    assert!(
        keys.opening("c", at(u64::MAX / 1000)).is_some(),
        "the current key never retires"
    );
    let keys = keys
        .rotate_at("d".into(), &key(4), Duration::from_secs(10), at(NOW + 200))
        .unwrap();
    assert_eq!(
        keys.kids().collect::<Vec<_>>(),
        ["d", "c", "b"],
        "a's window had closed"
    );
}

#[test]
fn keys_are_checked_when_the_ring_is_built() {
    assert!(matches!(
        StateKeys::new("k", Zeroizing::new(vec![0; 31])),
        Err(crate::ConfigError::StateKey(_))
    ));
    assert!(StateKeys::new("k", Zeroizing::new(vec![0; 33])).is_err());
    for kid in ["", "a.b", "a b", "é", &"k".repeat(65)] {
        assert!(StateKeys::new(kid, key(1)).is_err(), "{kid:?}");
    }
    assert!(StateKeys::new("A-z_09", key(1)).is_ok());
    let ring = StateKeys::new("k", key(1)).unwrap();
    assert!(
        ring.rotate("k", key(2), Duration::from_secs(1)).is_err(),
        "a kid is used once"
    );
    let generated = StateKeys::generate();
    assert_ne!(
        generated.kids().next().unwrap(),
        StateKeys::generate().kids().next().unwrap()
    );
}

#[test]
fn debug_shows_key_ids_and_never_key_bytes() {
    let keys = StateKeys::new(
        "visible-kid",
        Zeroizing::new(b"0123456789abcdef0123456789abcdef".to_vec()),
    )
    .unwrap();
    let shown = format!("{:?}", RequestStateSealer::new(keys));
    assert!(shown.contains("visible-kid"), "{shown}");
    assert!(!shown.contains("0123456789"), "{shown}");
}

#[test]
fn an_unknown_kid_or_the_same_kid_with_another_key_is_refused() {
    let sealer = sealer();
    let alice = alice();
    let binding = StateBinding::tool_call(&alice, "t", None);
    let sealed = sealed_for(&sealer, &binding);
    let unknown = sealed.replacen("v1.k1.", "v1.k2.", 1);
    assert_eq!(open(&sealer, &unknown, &binding), Err(StateError::UnknownKey));
    let impostor = RequestStateSealer::new(StateKeys::new("k1", key(9)).unwrap());
    assert_eq!(open(&impostor, &sealed, &binding), Err(StateError::Mismatch));
    // A kid moved into another state's AAD does not verify either.
    let keys = StateKeys::new("k1", key(1))
        .unwrap()
        .rotate_at("k2".into(), &key(1), Duration::from_secs(600), at(NOW))
        .unwrap();
    let same_bytes = RequestStateSealer::new(keys);
    assert_eq!(open(&same_bytes, &unknown, &binding), Err(StateError::Mismatch));
}

#[test]
fn garbage_and_oversized_input_is_malformed_without_panic() {
    let sealer = sealer();
    let alice = alice();
    let binding = StateBinding::tool_call(&alice, "t", None);
    let huge = format!("v1.k1.{}", "A".repeat(MAX_SEALED_LEN));
    let inputs = [
        "",
        ".",
        "..",
        "v1",
        "v1.",
        "v1.k1",
        "v1.k1.",
        "v1..AAAA",
        "v2.k1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "v1.k1.!!!!",
        "v1.k1.AAAA====",
        "v1.k1.AAAA",
        "v1.k1.a.b.c",
        "v1.k\u{0}1.AAAA",
        "v1.ké.AAAA",
        "\u{feff}v1.k1.AAAA",
        huge.as_str(),
    ];
    for input in inputs {
        let error = open(&sealer, input, &binding).unwrap_err();
        assert_eq!(error, StateError::Malformed, "{:?}", &input[..input.len().min(40)]);
    }
    // A huge kid is refused before any lookup or decoding.
    let long_kid = format!("v1.{}.AAAA", "k".repeat(10_000));
    assert_eq!(open(&sealer, &long_kid, &binding), Err(StateError::Malformed));
    // Valid base64url of random bytes of many lengths: refused, never a panic.
    for len in 0..200 {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
        let forged = format!("v1.k1.{}", URL_SAFE_NO_PAD.encode(bytes));
        assert!(open(&sealer, &forged, &binding).is_err(), "{len}");
    }
}

#[test]
fn error_messages_never_echo_the_input() {
    let sealer = sealer();
    let alice = alice();
    let binding = StateBinding::tool_call(&alice, "t", None);
    for input in ["v1.attacker-kid.AAAA", "v1.k1.attacker<script>", "attacker"] {
        let error: rmcp::ErrorData = open(&sealer, input, &binding).unwrap_err().into();
        assert!(!error.message.contains("attacker"), "{}", error.message);
        assert!(!format!("{:?}", error.data).contains("attacker"));
    }
}

#[test]
fn errors_map_to_invalid_params_for_the_client_and_internal_for_the_server() {
    use rmcp::model::ErrorCode;
    for (error, code) in [
        (StateError::Malformed, ErrorCode::INVALID_PARAMS),
        (StateError::UnknownKey, ErrorCode::INVALID_PARAMS),
        (StateError::Mismatch, ErrorCode::INVALID_PARAMS),
        (StateError::Expired, ErrorCode::INVALID_PARAMS),
        (StateError::Replayed, ErrorCode::INVALID_PARAMS),
        (StateError::Full, ErrorCode::INTERNAL_ERROR),
        (StateError::Unavailable, ErrorCode::INTERNAL_ERROR),
        (StateError::Encode, ErrorCode::INTERNAL_ERROR),
    ] {
        let data: rmcp::ErrorData = error.into();
        assert_eq!(data.code, code, "{error:?}");
        assert_eq!(data.message, error.to_string());
        assert_eq!(data.data, Some(json!({"error": error.code()})));
    }
    let expired: rmcp::ErrorData = StateError::Expired.into();
    assert_eq!(expired.message, "request state expired; start the call again");
    let unknown: rmcp::ErrorData = HandleError::Unknown.into();
    assert_eq!(unknown.code, ErrorCode::INVALID_PARAMS);
    let full: rmcp::ErrorData = HandleError::Full.into();
    assert_eq!(full.code, ErrorCode::INTERNAL_ERROR);
}

#[test]
fn payloads_are_bounded_and_must_read_back_as_their_type() {
    let sealer = sealer();
    let alice = alice();
    let binding = StateBinding::tool_call(&alice, "t", None);
    let big = "x".repeat(MAX_PAYLOAD_LEN);
    assert_eq!(sealer.seal_at(&binding, &big, at(NOW)), Err(StateError::Encode));
    let largest = "x".repeat(MAX_PAYLOAD_LEN - 2);
    let sealed = sealer.seal_at(&binding, &largest, at(NOW)).unwrap();
    assert!(sealed.len() <= MAX_SEALED_LEN, "{} > {MAX_SEALED_LEN}", sealed.len());
    assert_eq!(
        sealer
            .open_at::<String>(&sealed, &binding, at(NOW + 1))
            .map(|(v, _)| v.len()),
        Ok(largest.len())
    );
    assert_eq!(
        sealer.open_at::<u32>(&sealed, &binding, at(NOW + 1)).map(|(v, _)| v),
        Err(StateError::Encode)
    );
}

#[test]
fn the_replay_set_is_bounded_per_caller_and_in_total_and_never_evicts() {
    let set = MemoryReplaySet::with_limits(3, 2);
    let sealer = sealer();
    let alice = alice();
    let bob = Principal::unverified("https://issuer.example", "bob").build();
    let carol = Principal::unverified("https://issuer.example", "carol").build();
    let entry = |who: &Principal, ttl: u64| {
        let sealer = sealer.clone().ttl(Duration::from_secs(ttl));
        let binding = StateBinding::tool_call(who, "t", None);
        let sealed = sealer.seal_at(&binding, &1, at(NOW)).unwrap();
        sealer.open_at::<u32>(&sealed, &binding, at(NOW)).unwrap().1
    };
    let a1 = entry(&alice, 100);
    let a2 = entry(&alice, 300);
    assert_eq!(set.first_use_at(&a1, at(NOW)), Ok(()));
    assert_eq!(set.first_use_at(&a1, at(NOW)), Err(StateError::Replayed));
    assert_eq!(set.first_use_at(&a2, at(NOW)), Ok(()));
    // Alice's share is full of live entries: her third fails closed.
    let a3 = entry(&alice, 300);
    assert_eq!(set.first_use_at(&a3, at(NOW)), Err(StateError::Full));
    // Bob has his own share; then the set is full and Carol is refused,
    // and nobody's entry was evicted for her.
    let b1 = entry(&bob, 300);
    assert_eq!(set.first_use_at(&b1, at(NOW)), Ok(()));
    let c1 = entry(&carol, 300);
    assert_eq!(set.first_use_at(&c1, at(NOW)), Err(StateError::Full));
    for used in [&a1, &a2, &b1] {
        assert_eq!(set.first_use_at(used, at(NOW + 1)), Err(StateError::Replayed));
    }
    // Once a1 expired, it makes room (for Alice, and in total).
    assert_eq!(set.first_use_at(&a3, at(NOW + 100)), Ok(()));
    assert_eq!(set.first_use_at(&c1, at(NOW + 100)), Err(StateError::Full));
}

#[test]
fn the_replay_set_defaults_are_pinned() {
    let set = MemoryReplaySet::new();
    assert_eq!(MemoryReplaySet::DEFAULT_TOTAL, 100_000);
    let entry = |i: u32| {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&i.to_be_bytes());
        ReplayEntry::new([1; 32], id, at(NOW + 300))
    };
    for i in 0..1_000 {
        assert_eq!(set.first_use_at(&entry(i), at(NOW)), Ok(()), "{i}");
    }
    assert_eq!(set.first_use_at(&entry(1_000), at(NOW)), Err(StateError::Full));
    let other = ReplayEntry::new([2; 32], [0; 16], at(NOW + 300));
    assert_eq!(
        set.first_use_at(&other, at(NOW)),
        Ok(()),
        "another caller has its own share"
    );
    assert!(format!("{set:?}").contains("entries: 1001"));
    let far = ReplayEntry::new([1; 32], [0; 16], Timestamp::MAX);
    assert!(
        far.expires_at() > std::time::SystemTime::now(),
        "no overflow at the end of time"
    );
}

#[test]
fn concurrent_openings_of_one_state_succeed_once() {
    let set = Arc::new(MemoryReplaySet::new());
    let sealer = sealer().replay_set(set.clone());
    let alice = alice();
    let binding = StateBinding::tool_call(&alice, "t", None);
    let sealed = sealer.seal(&binding, &1).unwrap();
    let entry = sealer.open_at::<u32>(&sealed, &binding, Timestamp::now()).unwrap().1;
    let wins: usize = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..8)
            .map(|_| scope.spawn(|| set.first_use_at(&entry, Timestamp::now()).is_ok()))
            .collect();
        threads.into_iter().map(|t| usize::from(t.join().unwrap())).sum()
    });
    assert_eq!(wins, 1);
}

#[tokio::test]
async fn a_shared_replay_set_spans_sealers() {
    let set: Arc<dyn ReplaySet> = Arc::new(MemoryReplaySet::new());
    let one = sealer().replay_set(set.clone());
    let two = sealer().replay_set(set);
    let alice = alice();
    let binding = StateBinding::tool_call(&alice, "t", None);
    let sealed = one.seal(&binding, &1).unwrap();
    assert_eq!(two.open::<u32>(&sealed, &binding).await, Ok(1));
    assert_eq!(one.open::<u32>(&sealed, &binding).await, Err(StateError::Replayed));
}

#[tokio::test]
async fn a_state_refused_for_another_caller_is_not_burnt() {
    let sealer = sealer();
    let alice = alice();
    let mallory = Principal::unverified("https://issuer.example", "mallory").build();
    let binding = StateBinding::tool_call(&alice, "t", None);
    let sealed = sealer.seal(&binding, &1).unwrap();
    let theirs = StateBinding::tool_call(&mallory, "t", None);
    assert_eq!(sealer.open::<u32>(&sealed, &theirs).await, Err(StateError::Mismatch));
    assert_eq!(sealer.open::<u32>(&sealed, &binding).await, Ok(1));
}

// ---- handles ----

fn bob() -> Principal {
    Principal::unverified("https://issuer.example", "bob")
        .client_id("app")
        .build()
}

#[test]
fn a_handle_serves_its_owner_only_and_another_caller_sees_unknown() {
    let handles = StateHandles::new();
    let (alice, bob) = (alice(), bob());
    let handle = handles.mint_at(&alice, vec![1], at(NOW)).unwrap();
    assert_eq!(handle.len(), 43);
    assert!(
        handle
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    );
    assert_eq!(handles.get_at(&alice, &handle, at(NOW)), Ok(vec![1]));
    assert_eq!(handles.get_at(&bob, &handle, at(NOW)), Err(HandleError::Unknown));
    assert_eq!(handles.remove_at(&bob, &handle, at(NOW)), Err(HandleError::Unknown));
    let made_up = URL_SAFE_NO_PAD.encode([7u8; 32]);
    let theirs: rmcp::ErrorData = handles.get_at(&bob, &handle, at(NOW)).unwrap_err().into();
    let unknown: rmcp::ErrorData = handles.get_at(&bob, &made_up, at(NOW)).unwrap_err().into();
    assert_eq!(
        theirs, unknown,
        "the same answer for another's handle and a made-up one"
    );
    // Bob's attempts left Alice's handle in place.
    assert_eq!(handles.remove_at(&alice, &handle, at(NOW)), Ok(vec![1]));
    assert_eq!(handles.get_at(&alice, &handle, at(NOW)), Err(HandleError::Unknown));
    assert_ne!(
        handles.mint_at(&alice, vec![], at(NOW)).unwrap(),
        handles.mint_at(&alice, vec![], at(NOW)).unwrap()
    );
}

#[test]
fn another_callers_lookup_does_not_refresh_the_owners_handle() {
    let handles = StateHandles::new().per_principal(2);
    let (alice, bob) = (alice(), bob());
    let first = handles.mint_at(&alice, 1, at(NOW)).unwrap();
    let second = handles.mint_at(&alice, 2, at(NOW)).unwrap();
    // Bob "uses" Alice's first handle: if that counted, the second would be
    // evicted below instead.
    assert_eq!(handles.get_at(&bob, &first, at(NOW)), Err(HandleError::Unknown));
    handles.mint_at(&alice, 3, at(NOW)).unwrap();
    assert_eq!(handles.get_at(&alice, &first, at(NOW)), Err(HandleError::Unknown));
    assert_eq!(handles.get_at(&alice, &second, at(NOW)), Ok(2));
}

#[test]
fn a_caller_minting_past_its_share_loses_its_own_least_recently_used_handle() {
    let handles = StateHandles::new().per_principal(3);
    let (alice, bob) = (alice(), bob());
    let bobs = handles.mint_at(&bob, 0, at(NOW)).unwrap();
    let minted: Vec<String> = (1..=3).map(|i| handles.mint_at(&alice, i, at(NOW)).unwrap()).collect();
    assert_eq!(handles.get_at(&alice, &minted[0], at(NOW)), Ok(1));
    for i in 4..=100 {
        handles.mint_at(&alice, i, at(NOW)).unwrap();
    }
    assert_eq!(handles.get_at(&alice, &minted[0], at(NOW)), Err(HandleError::Unknown));
    assert_eq!(
        handles.get_at(&bob, &bobs, at(NOW)),
        Ok(0),
        "Bob's handle survives Alice's flood"
    );
}

#[test]
fn a_full_table_refuses_to_mint_and_evicts_no_one() {
    let handles = StateHandles::new().max_handles(2).idle_ttl(Duration::from_secs(60));
    let (alice, bob) = (alice(), bob());
    let carol = Principal::unverified("https://issuer.example", "carol").build();
    let a = handles.mint_at(&alice, 1, at(NOW)).unwrap();
    let b = handles.mint_at(&bob, 2, at(NOW + 30)).unwrap();
    assert_eq!(handles.mint_at(&carol, 3, at(NOW + 30)), Err(HandleError::Full));
    assert_eq!(handles.get_at(&alice, &a, at(NOW + 30)), Ok(1));
    assert_eq!(handles.get_at(&bob, &b, at(NOW + 30)), Ok(2));
    // Idle past the TTL, Alice's handle is gone and makes room.
    assert!(handles.mint_at(&carol, 3, at(NOW + 91)).is_ok());
    assert_eq!(handles.get_at(&alice, &a, at(NOW + 91)), Err(HandleError::Unknown));
}

#[test]
fn a_handle_expires_when_idle_and_each_use_restarts_the_clock() {
    let handles = StateHandles::new();
    let alice = alice();
    let handle = handles.mint_at(&alice, 1, at(NOW)).unwrap();
    assert_eq!(
        handles.get_at(&alice, &handle, at(NOW + 3599)),
        Ok(1),
        "default idle TTL 1 h"
    );
    assert_eq!(handles.get_at(&alice, &handle, at(NOW + 3599 + 3599)), Ok(1));
    assert_eq!(
        handles.get_at(&alice, &handle, at(NOW + 3599 * 2 + 3600)),
        Err(HandleError::Unknown)
    );
}

#[test]
fn the_handle_defaults_are_pinned() {
    let handles = StateHandles::<u8>::new();
    let shown = format!("{handles:?}");
    assert!(shown.contains("per_principal: 64"), "{shown}");
    assert!(shown.contains("max_handles: 100000"), "{shown}");
    assert!(shown.contains("idle_ttl: 3600s"), "{shown}");
}

#[test]
fn garbage_handles_are_unknown_without_panic() {
    let handles = StateHandles::new();
    let alice = alice();
    let handle = handles.mint_at(&alice, 1, at(NOW)).unwrap();
    let huge = "A".repeat(1 << 20);
    let mut last_changed = handle.clone();
    // The last character carries 2 spare bits: a non-canonical spelling of
    // the same bytes must not be accepted.
    let last = last_changed.pop().unwrap();
    let sibling = ['A', 'B', 'C', 'D']
        .into_iter()
        .find(|c| *c != last && URL_SAFE_NO_PAD.decode(format!("{last_changed}{c}")).is_err())
        .map(|c| format!("{last_changed}{c}"));
    let mut inputs = vec![
        String::new(),
        "x".into(),
        huge,
        format!("{handle}="),
        format!("{handle}A"),
        handle[..42].to_string(),
        "!".repeat(43),
        "é".repeat(21) + "A",
        handle.to_uppercase(),
    ];
    inputs.extend(sibling);
    for input in &inputs {
        if input == &handle {
            continue;
        }
        assert_eq!(
            handles.get_at(&alice, input, at(NOW)),
            Err(HandleError::Unknown),
            "{:?}",
            &input[..input.len().min(50)]
        );
    }
    assert_eq!(handles.get_at(&alice, &handle, at(NOW)), Ok(1));
}
