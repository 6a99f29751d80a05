//! Fuzz targets of the guardrails (registered in `crate::fuzzing`): the scanners see callers'
//! prompts and the operator's patterns, so they must never panic, and what they promise must
//! hold on any input.

use super::config::{Guardrails, RawGuardrails};
use super::local;
use super::pattern::Pattern;
use super::pii::PiiKind;

/// Input: a selector byte, then `pattern \n text`. By the selector: the pattern compiles or is
/// refused, and its spans are ordered, disjoint, on character boundaries and agree with
/// `is_match`; or every PII detector's spans are; or the local rules applied to the text (as
/// a JSON string and, when it is JSON, as a body) leave nothing a masking rule still matches.
pub fn scanners(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (pattern, body) = text.split_once('\n').unwrap_or(("", &text));
    // Patterns are compiled at load time, prompts scanned per request: most inputs exercise
    // the scan, one in four (short patterns, as rules are) the compiler too.
    if data.first().is_some_and(|b| b % 4 == 0) && pattern.len() <= 48 {
        if let Ok(p) = Pattern::new(pattern) {
            let spans = p.find_iter(body);
            check_spans(body, &spans);
            assert_eq!(
                p.is_match(body),
                !spans.is_empty(),
                "{pattern:?} on {body:?}"
            );
        }
        return;
    }
    if data.first().is_some_and(|b| b % 4 == 1) {
        for kind in PiiKind::ALL {
            check_spans(body, &kind.find(body));
        }
        return;
    }
    let Some(g) = masking_policy() else { return };
    let Some(policy) = g.policy("fuzz") else {
        return;
    };
    let mut docs = vec![serde_json::Value::String(body.to_string())];
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(body) {
        docs.push(v);
    }
    for mut doc in docs {
        let out = local::apply(policy, &mut doc);
        if !out.blocked {
            // Masking is complete: a second pass finds nothing to mask or block.
            let again = local::apply(policy, &mut doc);
            assert!(!again.changed && !again.blocked, "{body:?} -> {doc}");
        }
    }
}

fn check_spans(text: &str, spans: &[(usize, usize)]) {
    let mut at = 0;
    for &(a, b) in spans {
        assert!(a >= at && a < b && b <= text.len(), "{spans:?} in {text:?}");
        assert!(text.is_char_boundary(a) && text.is_char_boundary(b));
        at = b;
    }
}

fn masking_policy() -> Option<Guardrails> {
    thread_local! {
        static POLICY: Option<Guardrails> = {
            let raw: Option<RawGuardrails> = serde_json::from_value(serde_json::json!({
                "default": {
                    "pii": {"email": "mask", "phone": "mask", "payment_card": "mask", "iban": "mask",
                            "us_ssn": "mask", "ip_address": "mask", "jwt": "mask", "azure_key": "mask"},
                    "deny": [{"name": "falcon", "pattern": "(?i)\\bproject\\s+falcon\\b", "action": "mask"},
                             {"name": "digits", "pattern": "[0-9]{5,}", "action": "mask"}]
                }
            })).ok();
            raw.and_then(|r| Guardrails::from_raw(&r, "guardrails", |_| None).ok())
        };
    }
    POLICY.with(Clone::clone)
}

/// Seeds: patterns with texts that match them, PII of every kind, a chat body.
pub fn scanner_seeds() -> Vec<String> {
    vec![
        "\u{0}(?i)\\bproject\\s+(falcon|eagle)\\b\nabout Project  Falcon and PROJECT eagle".into(),
        "\u{4}[a-c]{2,3}|\\d+$\nxabcab 12345".into(),
        "\u{8}é+.[^x]\naééb日本".into(),
        "\u{1}\nmail jane@example.com, card 4111 1111 1111 1111, iban DE89 3704 0044 0532 0130 00, ssn 123-45-6789, ip 10.0.0.1 and ::1, +44 20 7946 0958".into(),
        "\u{2}\neyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJlLWJ5dGVz api-key: 0123456789abcdef0123456789abcdef".into(),
        "\u{3}\n{\"model\":\"gpt-4o\",\"messages\":[{\"role\":\"user\",\"content\":\"a@b.io 555-123-4567\"}],\"user\":\"x@y.org\"}".into(),
        // Values split across parts, by invisible or look-alike characters, in payload slots.
        "\u{3}\n{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"card 4111 1111\"},{\"type\":\"text\",\"text\":\" 1111 1111 Project\"},{\"type\":\"text\",\"text\":\" falcon\"}]}]}".into(),
        "\u{7}\nproj\u{200B}ect fal\u{00AD}con, Prоject Fаlcon, ４１１１ １１１１ １１１１ １１１１ ａ@ｂ.ｉｏ".into(),
        "\u{3}\n{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:image/png;base64,MTIzNDU2Nzg5\"}},{\"type\":\"input_audio\",\"input_audio\":{\"data\":\"a@b.io\"}},{\"type\":\"document\",\"source\":{\"type\":\"text\",\"data\":\"x@y.org\"}}]}]}".into(),
    ]
}
