//! The wire format against hand-built bytes, and the check/charge scheme.

use super::wire::*;
use super::*;

fn d(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn request_bytes() {
    let bytes = encode_should_rate_limit("rl", &[d(&[("k", "v")])], 300);
    // 0a 02 "rl" | 12 08 (0a 06 (0a 01 "k" 12 01 "v")) | 18 ac 02
    assert_eq!(
        bytes,
        [0x0a, 2, b'r', b'l', 0x12, 8, 0x0a, 6, 0x0a, 1, b'k', 0x12, 1, b'v', 0x18, 0xac, 0x02]
    );
    // proto3 defaults are left out.
    assert_eq!(encode_should_rate_limit("", &[], 0), Vec::<u8>::new());
    // An empty descriptor is still sent (its position matters).
    assert_eq!(encode_should_rate_limit("", &[vec![]], 0), [0x12, 0]);
}

#[test]
fn long_strings_use_multi_byte_lengths() {
    let long = "w".repeat(300);
    let bytes = encode_should_rate_limit(&long, &[], 1);
    assert_eq!(&bytes[..3], &[0x0a, 0xac, 0x02]);
    assert_eq!(bytes.len(), 3 + 300 + 2);
}

/// Test-only encoder of responses (with extra fields the decoder must skip).
fn status(
    code: u64,
    limit: Option<(&str, u64, u64)>,
    remaining: u64,
    reset: Option<(u64, u64)>,
) -> Vec<u8> {
    let mut s = Vec::new();
    if code != 0 {
        put_key(&mut s, 1, VARINT);
        put_varint(&mut s, code);
    }
    if let Some((name, rpu, unit)) = limit {
        let mut l = Vec::new();
        put_key(&mut l, 1, VARINT);
        put_varint(&mut l, rpu);
        put_key(&mut l, 2, VARINT);
        put_varint(&mut l, unit);
        put_string(&mut l, 3, name);
        put_bytes(&mut s, 2, &l);
    }
    put_key(&mut s, 3, VARINT);
    put_varint(&mut s, remaining);
    if let Some((secs, nanos)) = reset {
        let mut dur = Vec::new();
        put_key(&mut dur, 1, VARINT);
        put_varint(&mut dur, secs);
        put_key(&mut dur, 2, VARINT);
        put_varint(&mut dur, nanos);
        put_bytes(&mut s, 4, &dur);
    }
    // quota (5): a message with a fixed field inside
    put_bytes(&mut s, 5, &[0x08, 0x05]);
    s
}

fn response(code: u64, statuses: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    // Unknown fields of every wire type first.
    put_key(&mut out, 99, FIXED64);
    out.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
    put_key(&mut out, 98, FIXED32);
    out.extend_from_slice(&[1, 2, 3, 4]);
    put_key(&mut out, 97, START_GROUP);
    put_key(&mut out, 1, VARINT);
    put_varint(&mut out, 7);
    put_key(&mut out, 2, START_GROUP);
    put_key(&mut out, 2, END_GROUP);
    put_key(&mut out, 97, END_GROUP);
    put_bytes(&mut out, 5, b"raw body");
    put_key(&mut out, 1, VARINT);
    put_varint(&mut out, code);
    for s in statuses {
        put_bytes(&mut out, 2, s);
    }
    let mut h = Vec::new();
    put_string(&mut h, 1, "x-ratelimit-limit");
    put_string(&mut h, 2, "10");
    put_bytes(&mut out, 3, &h);
    let mut h = Vec::new();
    put_string(&mut h, 1, "x-raw");
    put_bytes(&mut h, 3, b"raw");
    put_bytes(&mut out, 3, &h);
    put_bytes(&mut out, 4, &h); // request_headers_to_add: skipped
    out
}

#[test]
fn decodes_responses_and_skips_unknown_fields() {
    let bytes = response(
        2,
        &[
            status(1, Some(("per-workload", 1000, 2)), 400, None),
            status(2, Some(("per-model", 100, 2)), 0, Some((41, 500_000_000))),
            status(2, None, 0, Some((7, 0))),
        ],
    );
    let r = decode_should_rate_limit_response(&bytes).unwrap();
    assert_eq!(r.overall_code, Code::OverLimit);
    assert_eq!(r.statuses.len(), 3);
    assert_eq!(
        r.statuses[0].current_limit,
        Some(RateLimit {
            name: "per-workload".into(),
            requests_per_unit: 1000,
            unit: Unit::Minute
        })
    );
    assert_eq!(r.statuses[0].limit_remaining, 400);
    assert_eq!(
        r.statuses[1].duration_until_reset,
        Some(Duration {
            seconds: 41,
            nanos: 500_000_000
        })
    );
    assert_eq!(r.retry_after_s(), Some(42));
    assert_eq!(
        r.tightest().map(|(l, rem)| (l.requests_per_unit, rem)),
        Some((100, 0))
    );
    assert_eq!(
        r.response_headers_to_add,
        vec![
            ("x-ratelimit-limit".to_string(), "10".to_string()),
            ("x-raw".to_string(), "raw".to_string())
        ]
    );
    // Limitador's answers: just the code.
    assert_eq!(
        decode_should_rate_limit_response(&[0x08, 0x01]).unwrap(),
        RlsResponse {
            overall_code: Code::Ok,
            ..RlsResponse::default()
        }
    );
    assert_eq!(
        decode_should_rate_limit_response(&[]).unwrap().overall_code,
        Code::Unknown
    );
    // Open enums and units.
    let r = decode_should_rate_limit_response(&[0x08, 0x09]).unwrap();
    assert_eq!(r.overall_code, Code::Other(9));
    let mut l = Vec::new();
    put_key(&mut l, 2, VARINT);
    put_varint(&mut l, 7);
    let mut rl = RateLimit::default();
    decode_rate_limit(&l, &mut rl).unwrap();
    assert_eq!(rl.unit, Unit::Week);
    // Negative enum values are 10-byte varints.
    let mut neg = vec![0x08];
    put_varint(&mut neg, -1i64 as u64);
    assert_eq!(
        decode_should_rate_limit_response(&neg)
            .unwrap()
            .overall_code,
        Code::Other(-1)
    );
}

#[test]
fn rejects_malformed_messages() {
    use RlsError::*;
    let dec = decode_should_rate_limit_response;
    assert_eq!(dec(&[0x08]), Err(Truncated));
    assert_eq!(dec(&[0x12, 5, 1]), Err(Truncated));
    assert_eq!(
        dec(&[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
        Err(VarintTooLong)
    );
    assert!(matches!(dec(&[0x00, 0x01]), Err(Malformed(_))), "field 0");
    assert!(
        matches!(dec(&[0x0e, 0x01]), Err(Malformed(_))),
        "wire type 6"
    );
    assert!(matches!(dec(&[0x0c]), Err(Malformed(_))), "stray END_GROUP");
    assert_eq!(
        dec(&[0x0b, 0x08, 0x01]),
        Err(Truncated),
        "unterminated group"
    );
    assert!(
        matches!(dec(&[0x0b, 0x14]), Err(Malformed(_))),
        "group closed by another field"
    );
    // A status whose inside is broken breaks the answer.
    assert_eq!(dec(&[0x12, 0x02, 0x08, 0x80]), Err(Truncated));
    // Huge length prefixes do not overflow.
    let mut huge = vec![0x12];
    put_varint(&mut huge, u64::MAX);
    assert_eq!(dec(&huge), Err(Truncated));
    // Deeply nested groups are refused, not recursed into.
    let mut deep = Vec::new();
    for _ in 0..1000 {
        put_key(&mut deep, 1, START_GROUP);
    }
    assert!(matches!(dec(&deep), Err(Malformed(_))));
    // A known field with an unexpected wire type is skipped.
    assert_eq!(
        dec(&[0x0d, 1, 2, 3, 4]).unwrap().overall_code,
        Code::Unknown
    );
}

#[test]
fn garbage_never_panics() {
    let mut rng = crate::fuzzing::Mutator::new(0x5eed_1234_abcd_0001);
    let valid = response(
        2,
        &[
            status(1, Some(("a", 10, 2)), 3, Some((5, 1))),
            status(2, None, 0, Some((1, 0))),
        ],
    );
    let mut decoded_ok = 0;
    for round in 0..200_000 {
        let bytes: Vec<u8> = if round % 2 == 0 {
            // Random bytes, biased towards small values and plausible keys.
            let len = rng.below(64);
            (0..len)
                .map(|_| match rng.below(4) {
                    0 => rng.below(0x20) as u8,
                    1 => 0x80 | rng.below(0x80) as u8,
                    _ => rng.next_u64() as u8,
                })
                .collect()
        } else {
            // Mutations of a valid answer: flips, truncation, insertions.
            let mut b = valid.clone();
            for _ in 0..=rng.below(4) {
                let i = rng.below(b.len());
                match rng.below(3) {
                    0 => b[i] ^= 1 << rng.below(8),
                    1 => b.truncate(i),
                    _ => b.insert(i, rng.next_u64() as u8),
                }
                if b.is_empty() {
                    break;
                }
            }
            b
        };
        if let Ok(r) = decode_should_rate_limit_response(&bytes) {
            decoded_ok += 1;
            let _ = r.retry_after_s();
            let _ = r.tightest();
        }
        let _ = check_outcome(0, &bytes, FailureMode::Deny, 60);
    }
    assert!(
        decoded_ok > 1000,
        "the loop also reaches the decoding paths ({decoded_ok})"
    );
}

#[test]
fn scheme_calls() {
    let c = check_call(Protocol::Kuadrant, "azure-llm", "team-a", "gpt-4o", 300);
    assert_eq!(
        (c.service, c.method),
        (KUADRANT_RLS_SERVICE, CHECK_RATE_LIMIT)
    );
    assert_eq!(
        c.message,
        encode_should_rate_limit(
            "azure-llm",
            &[
                d(&[("workload", "team-a"), ("model", "gpt-4o")]),
                d(&[("workload", "team-a")])
            ],
            300
        )
    );
    // Kuadrant: the check reserves nothing, the charge is the whole cost.
    let r = charge_call(Protocol::Kuadrant, "azure-llm", "team-a", "gpt-4o", 57, 300).unwrap();
    assert_eq!((r.service, r.method), (KUADRANT_RLS_SERVICE, REPORT));
    assert!(r.message.ends_with(&[0x18, 57]));
    assert_eq!(charge_call(Protocol::Kuadrant, "d", "w", "m", 0, 300), None);
    assert!(charge_call(Protocol::Kuadrant, "d", "w", "m", 1, 300).is_some());
    let zero = check_call(Protocol::Kuadrant, "d", "w", "m", 0);
    assert!(zero.message.ends_with(&[0x18, 1]), "0 would mean 1 anyway");

    // Envoy: the check added the estimate; the charge adds only what the answer exceeds it by.
    let c = check_call(Protocol::Envoy, "d", "w", "m", 40);
    assert_eq!(
        (c.service, c.method),
        (ENVOY_RLS_SERVICE, SHOULD_RATE_LIMIT)
    );
    assert!(c.message.ends_with(&[0x18, 40]));
    let r = charge_call(Protocol::Envoy, "d", "w", "m", 57, 40).unwrap();
    assert!(
        r.message.ends_with(&[0x18, 17]),
        "the check paid the estimate"
    );
    assert_eq!(charge_call(Protocol::Envoy, "d", "w", "m", 40, 40), None);
    assert_eq!(charge_call(Protocol::Envoy, "d", "w", "m", 0, 40), None);
    assert_eq!(charge_call(Protocol::Envoy, "d", "w", "m", 1, 0), None);
    let big = charge_call(Protocol::Kuadrant, "d", "w", "m", u64::MAX, 1).unwrap();
    assert!(
        big.message.ends_with(&[0x18, 0xff, 0xff, 0xff, 0xff, 0x0f]),
        "clamped to u32"
    );
}

#[test]
fn check_outcomes() {
    use CheckOutcome::*;
    let over = response(2, &[status(2, None, 0, Some((12, 0)))]);
    assert_eq!(
        check_outcome(0, &[0x08, 1], FailureMode::Deny, 60),
        Admit { degraded: false }
    );
    assert_eq!(
        check_outcome(0, &over, FailureMode::Allow, 60),
        OverLimit { retry_after_s: 12 }
    );
    // Limitador: no statuses, the configured fallback.
    assert_eq!(
        check_outcome(0, &[0x08, 2], FailureMode::Allow, 60),
        OverLimit { retry_after_s: 60 }
    );
    for (status, body) in [
        (14u32, &[][..]),
        (0, &[0x08, 0][..]),
        (0, &[0x08][..]),
        (4, &[0x08, 1][..]),
    ] {
        assert_eq!(
            check_outcome(status, body, FailureMode::Allow, 60),
            Admit { degraded: true }
        );
        assert!(matches!(
            check_outcome(status, body, FailureMode::Deny, 60),
            Unavailable { .. }
        ));
    }
}

#[test]
fn global_config() {
    let raw: RawGlobal = serde_json::from_value(serde_json::json!({
        "cluster": "ratelimit", "domain": "azure-llm"
    }))
    .unwrap();
    let g = Global::from_raw("rate_limits.global", &raw).unwrap();
    assert_eq!(g.timeout_ms, DEFAULT_TIMEOUT_MS);
    assert_eq!(g.failure_mode, FailureMode::Allow);
    assert_eq!(g.protocol, Protocol::Kuadrant);
    assert_eq!(g.retry_after_s, DEFAULT_RETRY_AFTER_S);
    let raw: RawGlobal = serde_json::from_value(serde_json::json!({
        "cluster": "rls", "domain": "d", "timeout_ms": 50, "failure_mode": "deny",
        "protocol": "envoy", "retry_after_s": 5
    }))
    .unwrap();
    let g = Global::from_raw("rate_limits.global", &raw).unwrap();
    assert_eq!(
        (g.timeout_ms, g.failure_mode, g.protocol, g.retry_after_s),
        (50, FailureMode::Deny, Protocol::Envoy, 5)
    );
    assert_eq!(g.check_call("w", "m", 1).method, SHOULD_RATE_LIMIT);
    let bad = RawGlobal {
        domain: String::new(),
        ..raw.clone()
    };
    assert_eq!(
        Global::from_raw("rate_limits.global", &bad)
            .unwrap_err()
            .field,
        "rate_limits.global.domain"
    );
    let bad = RawGlobal {
        timeout_ms: Some(0),
        ..raw.clone()
    };
    assert_eq!(
        Global::from_raw("rate_limits.global", &bad)
            .unwrap_err()
            .field,
        "rate_limits.global.timeout_ms"
    );
    assert!(serde_json::from_value::<RawGlobal>(serde_json::json!({
        "cluster": "rls", "domain": "d", "failure_mode": "maybe"
    }))
    .is_err());
    assert!(serde_json::from_value::<RawGlobal>(serde_json::json!({
        "cluster": "rls", "domain": "d", "extra": 1
    }))
    .is_err());
}

#[test]
fn cost_calls_go_to_their_own_domain_in_micro_units_rounded_up() {
    let raw: RawGlobal = serde_json::from_value(serde_json::json!({
        "cluster": "rls", "domain": "tokens", "cost_domain": "money"
    }))
    .unwrap();
    let g = Global::from_raw("rate_limits.global", &raw).unwrap();
    // 132.5 micro-units is counted as 133; a charge below its estimate adds nothing more
    // (envoy protocol) or its own micro-units (kuadrant's Report).
    let check = g.cost_check_call("w", "m", 132_500_000).unwrap();
    assert_eq!(check.method, CHECK_RATE_LIMIT);
    assert_eq!(
        check.message,
        encode_should_rate_limit("money", &descriptors("w", "m"), 133)
    );
    let charge = g
        .cost_charge_call("w", "m", 132_500_000, 200_000_000)
        .unwrap();
    assert_eq!(
        (charge.method, charge.message),
        (
            REPORT,
            encode_should_rate_limit("money", &descriptors("w", "m"), 133)
        )
    );
    assert_eq!(g.cost_charge_call("w", "m", 0, 200_000_000), None);
    assert_eq!(micros_up(1), 1);
    assert_eq!(micros_up(1_000_000), 1);
    assert_eq!(micros_up(0), 0);
    // Without cost_domain, no cost call; the same domain twice, or an empty one, is refused.
    let plain = Global {
        cost_domain: None,
        ..g.clone()
    };
    assert_eq!(plain.cost_check_call("w", "m", 5), None);
    for bad in ["", "tokens"] {
        let raw = RawGlobal {
            cost_domain: Some(bad.to_string()),
            ..raw.clone()
        };
        assert_eq!(
            Global::from_raw("rate_limits.global", &raw)
                .unwrap_err()
                .field,
            "rate_limits.global.cost_domain"
        );
    }
    // Two domains' answers: the worse decides.
    let admit = CheckOutcome::Admit { degraded: false };
    let over = CheckOutcome::OverLimit { retry_after_s: 9 };
    assert_eq!(admit.clone().worse(over.clone()), over);
    assert_eq!(over.clone().worse(admit.clone()), over);
    let down = CheckOutcome::Unavailable { reason: "x".into() };
    assert_eq!(over.clone().worse(down.clone()), down);
    assert_eq!(
        admit.worse(CheckOutcome::Admit { degraded: true }),
        CheckOutcome::Admit { degraded: true }
    );
}
