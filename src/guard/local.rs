//! The local rules on a request body: every string of the JSON document (object keys too) is
//! scanned by the policy's PII detectors and deny patterns, and what a `mask` rule matched is
//! replaced by `[REDACTED:<rule>]` in the document itself, so the prompt that leaves for Azure
//! (and for Content Safety, and the usage record's capture) never holds the value.
//!
//! Base64 payloads are not text and are skipped: `data:` URLs, and the values of `data`,
//! `file_data` and `b64_json` (images, audio, files). So is `model`.
//!
//! A masked text is scanned again: if a rule still matches (its pattern matches the
//! replacement itself), the prompt is blocked instead, so what leaves never matches a `mask`
//! or `block` rule.

use super::config::{LocalAction, Policy};
use super::pii::PiiKind;
use super::verdict::{Check, Decision, Direction, Finding};
use serde_json::{Map, Value};

/// Keys whose string values are binary payloads or routing, not prompt text.
const SKIPPED_KEYS: [&str; 4] = ["data", "file_data", "b64_json", "model"];

/// What the local rules found in a body.
#[derive(Debug, Default)]
pub struct LocalOutcome {
    pub findings: Vec<Finding>,
    /// A rule with `block` fired.
    pub blocked: bool,
    /// The body was changed (a `mask` rule fired).
    pub changed: bool,
}

/// Finds a rule's spans in a text.
type Finder<'p> = Box<dyn Fn(&str) -> Vec<(usize, usize)> + 'p>;

/// One rule, as the scan needs it.
struct Rule<'p> {
    check: Check,
    action: LocalAction,
    find: Finder<'p>,
    label: String,
}

fn rules(policy: &Policy) -> Vec<Rule<'_>> {
    let mut rules: Vec<Rule<'_>> = Vec::new();
    for &(kind, action) in &policy.pii {
        rules.push(Rule {
            check: Check::Pii(kind),
            action,
            find: Box::new(move |t: &str| kind.find(t)),
            label: kind.name().to_string(),
        });
    }
    for d in &policy.deny {
        let pattern = d.pattern.clone();
        rules.push(Rule {
            check: Check::Deny(d.name.clone()),
            action: d.action,
            find: Box::new(move |t: &str| pattern.find_iter(t)),
            label: d.name.clone(),
        });
    }
    rules
}

/// Applies the policy's local rules to `body` (changed in place when a `mask` rule fires).
pub fn apply(policy: &Policy, body: &mut Value) -> LocalOutcome {
    let rules = rules(policy);
    let mut scan = Scan {
        rules: &rules,
        fired: vec![None; rules.len()],
        changed: false,
    };
    scan.value(body, None);
    let mut out = LocalOutcome {
        changed: scan.changed,
        ..LocalOutcome::default()
    };
    for (rule, fired) in rules.iter().zip(scan.fired) {
        let Some(decision) = fired else { continue };
        out.blocked |= decision == Decision::Blocked;
        out.findings.push(Finding {
            direction: Direction::Prompt,
            check: rule.check.clone(),
            decision,
        });
    }
    out
}

struct Scan<'r, 'p> {
    rules: &'r [Rule<'p>],
    /// Per rule: what it did (the strongest: blocked over masked over logged).
    fired: Vec<Option<Decision>>,
    changed: bool,
}

fn rank(d: Decision) -> u8 {
    match d {
        Decision::Blocked => 3,
        Decision::Masked => 2,
        _ => 1,
    }
}

impl Scan<'_, '_> {
    fn fire(&mut self, rule: usize, decision: Decision) {
        if let Some(slot) = self.fired.get_mut(rule) {
            if slot.is_none_or(|d| rank(decision) > rank(d)) {
                *slot = Some(decision);
            }
        }
    }

    fn value(&mut self, v: &mut Value, key: Option<&str>) {
        match v {
            Value::String(s) => {
                let skipped =
                    key.is_some_and(|k| SKIPPED_KEYS.contains(&k)) || s.starts_with("data:");
                if !skipped {
                    if let Some(masked) = self.text(s) {
                        *s = masked;
                    }
                }
            }
            Value::Array(items) => {
                for item in items {
                    self.value(item, None);
                }
            }
            Value::Object(map) => self.object(map),
            _ => {}
        }
    }

    fn object(&mut self, map: &mut Map<String, Value>) {
        let keys: Vec<String> = map.keys().cloned().collect();
        for k in keys {
            let renamed = self.text(&k);
            let Some(mut v) = map.remove(&k) else {
                continue;
            };
            self.value(&mut v, Some(&k));
            map.insert(renamed.unwrap_or(k), v);
        }
    }

    /// Scans one text: `Some(masked)` when a `mask` rule changed it.
    fn text(&mut self, text: &str) -> Option<String> {
        let mut spans: Vec<(usize, usize, usize)> = Vec::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let found = (rule.find)(text);
            if found.is_empty() {
                continue;
            }
            match rule.action {
                LocalAction::Block => self.fire(i, Decision::Blocked),
                LocalAction::Log => self.fire(i, Decision::Logged),
                LocalAction::Mask => {
                    self.fire(i, Decision::Masked);
                    spans.extend(found.into_iter().map(|(a, b)| (a, b, i)));
                }
            }
        }
        if spans.is_empty() {
            return None;
        }
        let masked = mask(text, &mut spans, self.rules);
        // The replacement must not match a rule that masks or blocks (a pattern matching
        // `[REDACTED:...]` itself): then the prompt is blocked.
        for (i, rule) in self.rules.iter().enumerate() {
            if rule.action != LocalAction::Log && !(rule.find)(&masked).is_empty() {
                self.fire(i, Decision::Blocked);
            }
        }
        self.changed = true;
        Some(masked)
    }
}

/// Replaces the spans (merged where they overlap; the first rule names a merged span).
fn mask(text: &str, spans: &mut [(usize, usize, usize)], rules: &[Rule<'_>]) -> String {
    spans.sort_unstable();
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    let mut i = 0;
    while i < spans.len() {
        let (start, mut end, rule) = spans[i];
        let mut j = i + 1;
        while j < spans.len() && spans[j].0 < end {
            end = end.max(spans[j].1);
            j += 1;
        }
        if start >= at {
            out.push_str(text.get(at..start).unwrap_or_default());
            out.push_str("[REDACTED:");
            out.push_str(rules.get(rule).map_or("rule", |r| r.label.as_str()));
            out.push(']');
            at = end;
        }
        i = j;
    }
    out.push_str(text.get(at..).unwrap_or_default());
    out
}

/// The names of the detectors, for docs and errors.
pub fn detector_names() -> Vec<&'static str> {
    PiiKind::ALL.iter().map(|k| k.name()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::config::{Guardrails, RawGuardrails};
    use serde_json::json;

    fn policy(v: Value) -> Policy {
        let raw: RawGuardrails = serde_json::from_value(json!({ "default": v })).unwrap();
        let g = Guardrails::from_raw(&raw, "guardrails", |_| None).unwrap();
        (**g.policy("w").unwrap()).clone()
    }

    #[test]
    fn masks_every_string_and_records_the_rule() {
        let p = policy(
            json!({"pii": {"email": "mask", "payment_card": "mask", "ip_address": "log"},
                               "deny": [{"name": "falcon", "pattern": "(?i)project falcon", "action": "mask"}]}),
        );
        let mut body = json!({
            "model": "gpt-4o",
            "user": "jane@example.com",
            "messages": [
                {"role": "system", "content": "server 10.1.2.3"},
                {"role": "user", "content": [{"type": "text", "text": "card 4111 1111 1111 1111 for Project Falcon"},
                                              {"type": "image_url", "image_url": {"url": "data:image/png;base64,jane@example.com"}}]}
            ],
            "tools": [{"type": "function", "function": {"name": "f", "description": "mail bob@corp.io",
                       "parameters": {"type": "object", "properties": {"carol@x.org": {"type": "string"}}}}}]
        });
        let out = apply(&p, &mut body);
        assert!(out.changed && !out.blocked);
        let text = body.to_string();
        assert_eq!(body["user"], "[REDACTED:email]");
        assert_eq!(
            body["messages"][1]["content"][0]["text"],
            "card [REDACTED:payment_card] for [REDACTED:falcon]"
        );
        assert_eq!(
            body["messages"][0]["content"], "server 10.1.2.3",
            "log does not change"
        );
        assert!(
            text.contains("data:image/png;base64,jane@example.com"),
            "data URLs are skipped"
        );
        assert!(
            !text.contains("bob@corp.io") && !text.contains("carol@x.org"),
            "{text}"
        );
        let labels: Vec<String> = out.findings.iter().map(Finding::label).collect();
        assert_eq!(
            labels,
            [
                "prompt.pii.email.masked",
                "prompt.pii.ip_address.logged",
                "prompt.pii.payment_card.masked",
                "prompt.deny.falcon.masked"
            ]
        );
    }

    #[test]
    fn block_wins_and_a_self_matching_mask_blocks() {
        let p = policy(json!({"pii": {"us_ssn": "block", "email": "mask"}}));
        let mut body =
            json!({"messages": [{"role": "user", "content": "ssn 123-45-6789 mail a@b.io"}]});
        let out = apply(&p, &mut body);
        assert!(out.blocked);
        let p = policy(
            json!({"deny": [{"name": "r", "pattern": "REDACTED|secret", "action": "mask"}]}),
        );
        let mut body = json!({"input": "the secret"});
        let out = apply(&p, &mut body);
        assert!(out.blocked, "the replacement matches the rule itself");
        assert_eq!(out.findings[0].decision, Decision::Blocked);
    }

    #[test]
    fn nothing_found_changes_nothing() {
        let p = policy(json!({"pii": {"email": "mask"}}));
        let mut body = json!({"messages": [{"role": "user", "content": "hello"}]});
        let before = body.clone();
        let out = apply(&p, &mut body);
        assert!(!out.changed && out.findings.is_empty());
        assert_eq!(body, before);
    }

    #[test]
    fn overlapping_masks_merge() {
        let p = policy(
            json!({"pii": {"email": "mask"}, "deny": [{"name": "corp", "pattern": "corp\\.io", "action": "mask"}]}),
        );
        let mut body = json!({"input": "to bob@corp.io now"});
        apply(&p, &mut body);
        assert_eq!(body["input"], "to [REDACTED:email] now");
    }
}
