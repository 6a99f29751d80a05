//! The local rules on a request body: every string of the JSON document (object keys too) is
//! scanned by the policy's PII detectors and deny patterns, and what a `mask` rule matched is
//! replaced by `[REDACTED:<rule>]` in the document itself, so the prompt that leaves for Azure
//! (and for Content Safety, and the usage record's capture) never holds the value.
//!
//! What a caller could do to get text past the rules, and what closes it:
//! - **Hide text where payloads go.** Only the places where the APIs carry binary payloads are
//!   skipped, by their position in the document, not by a key name found anywhere: the
//!   top-level `model`; `image_url.url` of an `image_url` part and `image_url` of an
//!   `input_image` item (a `data:` URL); `input_audio.data`; `file.file_data` and
//!   `file_data` of an `input_file`; `source.data` of an Anthropic `image` / `document` whose
//!   source is `base64`; `result` of an `image_generation_call`. And even there a value is
//!   skipped only when it is base64 (or a base64 `data:` URL): text put in a payload slot is
//!   scanned like any other.
//! - **Split a value across content parts** (`"proj"` + `"ect falcon"`, a card number over two
//!   parts): the text parts of one content array (chat parts, Responses `input_text`,
//!   Anthropic `text` blocks) are scanned joined, as one text (each byte once); a `mask`
//!   match across parts is masked in each part it covers.
//! - **Hide a value behind JSON escapes** (`"jane\u0040example.com"` in a tool call's
//!   `arguments`, a JSON document inside a JSON string): a string that is a JSON document is
//!   also scanned parsed (`embedded`), and serialised again when masked, so it stays JSON.
//! - **Invisible or look-alike characters** (`proj\u{200B}ect`, `pro\u{301}ject`, Cyrillic
//!   `а` for `a`, `Prōject`, full-width digits): a text with any is also scanned folded
//!   (`super::fold`), the spans found mapped back to the original.
//!
//! A masked text is scanned again: if a rule still matches (its pattern matches the
//! replacement itself), the prompt is blocked instead, so what leaves never matches a `mask`
//! or `block` rule.

use super::config::{LocalAction, Policy};
use super::fold::Folded;
use super::pii::PiiKind;
use super::verdict::{Check, Decision, Direction, Finding};
use serde_json::{Map, Value};

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
        depth: 0,
    };
    scan.value(body, Place::Top);
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

/// Where a value sits, as far as the payload slots need to know.
#[derive(Clone, Copy)]
enum Place<'a> {
    /// The document itself.
    Top,
    /// The value of `key` in an object whose `type` is `parent_type`.
    Field {
        parent_type: Option<&'a str>,
        key: &'a str,
    },
    /// Anything else (an array item, deeper values).
    Inside,
}

/// What a payload slot holds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Payload {
    /// Skipped whatever it holds (the top-level `model`: routing, not prompt).
    Routing,
    /// A base64 `data:` URL (an `http(s)` URL is scanned).
    DataUrl,
    /// Base64, or a base64 `data:` URL.
    Base64,
}

/// The key of `map` (at `place`) whose string value is a binary payload, by position.
fn payload_slot(map: &Map<String, Value>, place: Place<'_>) -> Option<(&'static str, Payload)> {
    let own_type = map.get("type").and_then(Value::as_str);
    match (place, own_type) {
        (Place::Top, _) => Some(("model", Payload::Routing)),
        (_, Some("input_image")) => Some(("image_url", Payload::DataUrl)),
        (_, Some("input_file")) => Some(("file_data", Payload::Base64)),
        (_, Some("image_generation_call")) => Some(("result", Payload::Base64)),
        (
            Place::Field {
                parent_type: Some("image" | "document"),
                key: "source",
            },
            Some("base64"),
        ) => Some(("data", Payload::Base64)),
        (
            Place::Field {
                parent_type: Some("image_url"),
                key: "image_url",
            },
            _,
        ) => Some(("url", Payload::DataUrl)),
        (
            Place::Field {
                parent_type: Some("input_audio"),
                key: "input_audio",
            },
            _,
        ) => Some(("data", Payload::Base64)),
        (
            Place::Field {
                parent_type: Some("file"),
                key: "file",
            },
            _,
        ) => Some(("file_data", Payload::Base64)),
        _ => None,
    }
}

/// Whether `s` is what the slot carries (else it is text and scanned).
fn is_payload(s: &str, kind: Payload) -> bool {
    match kind {
        Payload::Routing => true,
        Payload::DataUrl => is_base64_data_url(s),
        Payload::Base64 => is_base64_data_url(s) || is_base64(s),
    }
}

/// `data:<type>;base64,<base64>`.
fn is_base64_data_url(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("data:") else {
        return false;
    };
    match rest.split_once(',') {
        Some((meta, data)) => meta.ends_with(";base64") && is_base64(data),
        None => false,
    }
}

/// Standard base64, as these slots take it (line breaks allowed): no spaces, dashes or dots,
/// so no prose, SSN, phone number or address fits.
fn is_base64(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+/=\r\n".contains(&b))
}

/// The text of a content part / block, if it is one (`{"type": "text", "text": ...}`,
/// `input_text`, `output_text`, or no type).
fn text_part(v: &Value) -> Option<&str> {
    let o = v.as_object()?;
    let typed = o.get("type").and_then(Value::as_str);
    if !matches!(typed, None | Some("text" | "input_text" | "output_text")) {
        return None;
    }
    o.get("text").and_then(Value::as_str)
}

fn text_part_mut(v: &mut Value) -> Option<&mut String> {
    match v.as_object_mut()?.get_mut("text")? {
        Value::String(s) => Some(s),
        _ => None,
    }
}

struct Scan<'r, 'p> {
    rules: &'r [Rule<'p>],
    /// Per rule: what it did (the strongest: blocked over masked over logged).
    fired: Vec<Option<Decision>>,
    changed: bool,
    /// How many JSON documents held in strings the scan is inside (`embedded`).
    depth: u8,
}

/// JSON documents in strings in JSON documents in strings ... are decoded this deep (a
/// tool's `arguments` is one level; a JSON string inside them two). The bound keeps the
/// recursion (and the Wasm stack) bounded; deeper ones are scanned as text.
const MAX_DOCUMENT_DEPTH: u8 = 3;

/// Whether `s` might be a JSON document (an object or an array), before parsing it.
fn looks_like_document(s: &str) -> bool {
    matches!(s.trim_start().as_bytes().first(), Some(b'{' | b'['))
}

fn is_json(s: &str) -> bool {
    serde_json::from_str::<serde::de::IgnoredAny>(s).is_ok()
}

fn rank(d: Decision) -> u8 {
    match d {
        Decision::Blocked => 3,
        Decision::Masked => 2,
        _ => 1,
    }
}

/// A rule's match: (start, end, rule index).
type Span = (usize, usize, usize);

impl Scan<'_, '_> {
    fn fire(&mut self, rule: usize, decision: Decision) {
        if let Some(slot) = self.fired.get_mut(rule) {
            if slot.is_none_or(|d| rank(decision) > rank(d)) {
                *slot = Some(decision);
            }
        }
    }

    fn value(&mut self, v: &mut Value, place: Place<'_>) {
        match v {
            Value::String(s) => {
                let document = self.embedded(s);
                if let Some((masked, spans)) = self.masked(s) {
                    self.keep_document(document, &masked, &spans);
                    *s = masked;
                }
            }
            // Numbers are prose's digits only inside an embedded document (`{"card":
            // 4111111111111111}` in a tool's arguments); masked, one becomes a string.
            Value::Number(n) if self.depth > 0 => {
                let digits = n.to_string();
                if let Some(masked) = self.text(&digits) {
                    *v = Value::String(masked);
                }
            }
            Value::Array(items) => {
                for item in items.iter_mut() {
                    // A text part's text is scanned once, joined with the others'.
                    let part = text_part(item).is_some();
                    match item {
                        Value::Object(map) if part => self.object(map, Place::Inside, true),
                        _ => self.value(item, Place::Inside),
                    }
                }
                self.joined_parts(items);
            }
            Value::Object(map) => self.object(map, place, false),
            _ => {}
        }
    }

    /// `text_part`: the object is a content part whose `text` is scanned by `joined_parts`.
    fn object(&mut self, map: &mut Map<String, Value>, place: Place<'_>, text_part: bool) {
        let slot = payload_slot(map, place);
        let own_type = map.get("type").and_then(Value::as_str).map(str::to_owned);
        let keys: Vec<String> = map.keys().cloned().collect();
        for k in keys {
            let renamed = self.text(&k);
            let Some(mut v) = map.remove(&k) else {
                continue;
            };
            let skipped = match (slot, &v) {
                (Some((key, kind)), Value::String(s)) => key == k && is_payload(s, kind),
                _ => text_part && k == "text",
            };
            if !skipped {
                let field = Place::Field {
                    parent_type: own_type.as_deref(),
                    key: &k,
                };
                self.value(&mut v, field);
            }
            map.insert(renamed.unwrap_or(k), v);
        }
    }

    /// A string holding a JSON document (a tool call's `arguments`, a tool's output, JSON
    /// pasted as text): its strings and keys are scanned decoded, so `\u0040` or `\u0020`
    /// escapes hide nothing, and its numbers as digits. When a `mask` rule fired in it, the
    /// document is serialised again: it stays valid JSON. Whether `s` was one.
    fn embedded(&mut self, s: &mut String) -> bool {
        if self.depth >= MAX_DOCUMENT_DEPTH || !looks_like_document(s) {
            return false;
        }
        let Ok(mut doc) = serde_json::from_str::<Value>(s) else {
            return false;
        };
        let outer = std::mem::replace(&mut self.changed, false);
        self.depth += 1;
        self.value(&mut doc, Place::Inside);
        self.depth -= 1;
        if self.changed {
            if let Ok(text) = serde_json::to_string(&doc) {
                *s = text;
            }
        }
        self.changed |= outer;
        true
    }

    /// A document's text masked as text (a pattern across its structure, a number too long
    /// for a JSON number) may no longer be JSON: the prompt is blocked instead of sending a
    /// tool call Azure would refuse or misread. `spans`: what was masked, by which rules.
    fn keep_document(&mut self, document: bool, masked: &str, spans: &[Span]) {
        if !document || is_json(masked) {
            return;
        }
        for &(_, _, rule) in spans {
            self.fire(rule, Decision::Blocked);
        }
    }

    /// Every rule's spans in `text`, and in its folded view when it has one.
    fn find(&self, text: &str) -> Vec<Vec<(usize, usize)>> {
        let folded = Folded::of(text);
        self.rules
            .iter()
            .map(|rule| {
                let mut spans = (rule.find)(text);
                if let Some(f) = &folded {
                    spans.extend((rule.find)(&f.text).into_iter().map(|s| f.original(s)));
                }
                spans
            })
            .collect()
    }

    /// Records what the rules found; the spans of the `mask` rules.
    fn record(&mut self, found: Vec<Vec<(usize, usize)>>) -> Vec<Span> {
        let mut spans = Vec::new();
        for (i, found) in found.into_iter().enumerate() {
            if found.is_empty() {
                continue;
            }
            match self.rules.get(i).map(|r| r.action) {
                Some(LocalAction::Block) => self.fire(i, Decision::Blocked),
                Some(LocalAction::Log) => self.fire(i, Decision::Logged),
                Some(LocalAction::Mask) => {
                    self.fire(i, Decision::Masked);
                    spans.extend(found.into_iter().map(|(a, b)| (a, b, i)));
                }
                None => {}
            }
        }
        spans
    }

    /// A masked text must not match a rule that masks or blocks (a pattern matching
    /// `[REDACTED:...]` itself): then the prompt is blocked.
    fn recheck(&mut self, masked: &str) {
        let found = self.find(masked);
        for (i, spans) in found.iter().enumerate() {
            let enforced = self
                .rules
                .get(i)
                .is_some_and(|r| r.action != LocalAction::Log);
            if enforced && !spans.is_empty() {
                self.fire(i, Decision::Blocked);
            }
        }
    }

    /// Scans one text: `Some(masked)` when a `mask` rule changed it.
    fn text(&mut self, text: &str) -> Option<String> {
        self.masked(text).map(|(masked, _)| masked)
    }

    /// `text`, with the spans it masked.
    fn masked(&mut self, text: &str) -> Option<(String, Vec<Span>)> {
        let found = self.find(text);
        let mut spans = self.record(found);
        if spans.is_empty() {
            return None;
        }
        let masked = mask(text, &mut spans, self.rules);
        self.recheck(&masked);
        self.changed = true;
        Some((masked, spans))
    }

    /// The text parts of one content array, joined (what the model reads as one text): each
    /// part's text is scanned here, once, so a value split across parts is found too, and
    /// masked in each part it covers.
    fn joined_parts(&mut self, items: &mut [Value]) {
        let parts: Vec<usize> = (0..items.len())
            .filter(|&i| items.get(i).and_then(text_part).is_some())
            .collect();
        if parts.is_empty() {
            return;
        }
        let documents: Vec<bool> = parts
            .iter()
            .map(|&i| {
                items
                    .get_mut(i)
                    .and_then(text_part_mut)
                    .is_some_and(|t| self.embedded(t))
            })
            .collect();
        let (joined, bounds) = join(items, &parts);
        let found = self.find(&joined);
        let spans = self.record(found);
        if spans.is_empty() {
            return;
        }
        for (k, &(start, end)) in bounds.iter().enumerate() {
            let mut own: Vec<Span> = spans
                .iter()
                .filter(|&&(a, b, _)| a < end && b > start)
                .map(|&(a, b, r)| (a.max(start) - start, b.min(end) - start, r))
                .filter(|&(a, b, _)| a < b)
                .collect();
            if own.is_empty() {
                continue;
            }
            let Some(text) = parts
                .get(k)
                .and_then(|&i| items.get_mut(i))
                .and_then(text_part_mut)
            else {
                continue;
            };
            *text = mask(text, &mut own, self.rules);
            let document = documents.get(k).copied().unwrap_or(false);
            self.keep_document(document, text, &own);
        }
        self.changed = true;
        let (joined, _) = join(items, &parts);
        self.recheck(&joined);
    }
}

/// The texts of `parts` of `items` joined, with each one's byte range in the whole.
fn join(items: &[Value], parts: &[usize]) -> (String, Vec<(usize, usize)>) {
    let mut joined = String::new();
    let mut bounds = Vec::with_capacity(parts.len());
    for &i in parts {
        let start = joined.len();
        joined.push_str(items.get(i).and_then(text_part).unwrap_or_default());
        bounds.push((start, joined.len()));
    }
    (joined, bounds)
}

/// Replaces the spans (merged where they overlap; the first rule names a merged span).
fn mask(text: &str, spans: &mut [Span], rules: &[Rule<'_>]) -> String {
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
                                              {"type": "image_url", "image_url": {"url": "data:image/png;base64,amFuZUBleGFtcGxlLmNvbQ=="}}]}
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
            text.contains("data:image/png;base64,amFuZUBleGFtcGxlLmNvbQ=="),
            "base64 data URLs are skipped"
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
    fn payloads_are_skipped_by_position_and_only_when_base64() {
        let p = policy(json!({"pii": {"email": "mask", "us_ssn": "block"}}));
        // In payload slots: base64 passes, text is scanned.
        let b64 = "data:image/png;base64,MTIzLTQ1LTY3ODk=";
        let mut body = json!({"model": "a@b.io", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": b64}},
            {"type": "image_url", "image_url": {"url": "data:text/plain,a@b.io"}},
            {"type": "input_audio", "input_audio": {"data": "MTIzLTQ1LTY3ODk=", "format": "wav"}},
            {"type": "file", "file": {"file_data": "bob@corp.io", "filename": "x.txt"}}
        ]}]});
        let out = apply(&p, &mut body);
        assert!(!out.blocked);
        assert_eq!(body["model"], "a@b.io", "the top-level model is routing");
        let parts = &body["messages"][0]["content"];
        assert_eq!(parts[0]["image_url"]["url"], b64);
        assert_eq!(
            parts[1]["image_url"]["url"],
            "data:text/plain,[REDACTED:email]"
        );
        assert_eq!(parts[3]["file"]["file_data"], "[REDACTED:email]");
        // Not payload slots: a string starting with data:, keys named data or model anywhere.
        for body in [
            json!({"messages": [{"role": "user", "content": "data: ssn 123-45-6789"}]}),
            json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "x", "data": "123-45-6789"}]}]}),
            json!({"input": [{"role": "user", "content": [{"type": "input_text", "text": "x", "model": "123-45-6789"}]}]}),
            json!({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "ssn 123-45-6789"}}]}]}),
            json!({"messages": [{"role": "user", "content": [{"type": "document", "source": {"type": "text", "data": "123-45-6789"}}]}]}),
            json!({"messages": [{"role": "user", "content": [{"type": "text", "source": {"type": "base64", "data": "ssn 123-45-6789"}}]}]}),
        ] {
            let mut b = body.clone();
            assert!(apply(&p, &mut b).blocked, "{body}");
        }
        let mut anthropic = json!({"messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "YUBiLmlv"}},
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "YUBiLmlv"}}
        ]}]});
        let before = anthropic.clone();
        assert!(!apply(&p, &mut anthropic).changed);
        assert_eq!(anthropic, before);
    }

    #[test]
    fn json_documents_in_strings_are_scanned_decoded_and_stay_json() {
        let p = policy(
            json!({"pii": {"email": "mask", "payment_card": "mask", "us_ssn": "block"},
            "deny": [{"name": "falcon", "pattern": "(?i)project[\\s-]+falcon"}]}),
        );
        let call = |arguments: &str| {
            json!({"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                "function": {"name": "f", "arguments": arguments}}]}]})
        };
        let arguments = |body: &Value| -> Value {
            let a = body["messages"][0]["tool_calls"][0]["function"]["arguments"].as_str();
            serde_json::from_str(a.unwrap()).unwrap()
        };
        // Escapes decoded: `\u0020` between the card's groups, `\u0040` for the `@`.
        let mut body = call(
            r#"{"card": "4111\u00201111\u00201111\u00201111", "to": "jane\u0040example.com", "n": 3}"#,
        );
        let out = apply(&p, &mut body);
        assert!(out.changed && !out.blocked, "{out:?}");
        assert_eq!(
            arguments(&body),
            json!({"card": "[REDACTED:payment_card]", "to": "[REDACTED:email]", "n": 3})
        );
        let mut body = call(r#"{"ssn": "123\u002d45\u002d6789"}"#);
        assert!(apply(&p, &mut body).blocked);
        let mut body = call(r#"{"q": "project\u0020falcon"}"#);
        assert!(apply(&p, &mut body).blocked);
        // A key is text too, and a number holds digits.
        let mut body = call(r#"{"jane\u0040example.com": 1, "card": 4111111111111111}"#);
        assert!(!apply(&p, &mut body).blocked);
        assert_eq!(
            arguments(&body),
            json!({"[REDACTED:email]": 1, "card": "[REDACTED:payment_card]"})
        );
        // Nested: a JSON string inside the arguments, and a text part holding JSON.
        let inner = serde_json::to_string(&json!({"to": "jane\u{0040}example.com"})).unwrap();
        let escaped = inner.replace('@', "\\u0040");
        let mut body = call(&serde_json::to_string(&json!({"payload": escaped})).unwrap());
        apply(&p, &mut body);
        let payload = arguments(&body)["payload"].as_str().unwrap().to_string();
        assert_eq!(
            serde_json::from_str::<Value>(&payload).unwrap(),
            json!({"to": "[REDACTED:email]"})
        );
        let mut body = json!({"messages": [{"role": "tool", "content": [
            {"type": "text", "text": r#"{"mail": "jane\u0040example.com"}"#}]}]});
        apply(&p, &mut body);
        let text = body["messages"][0]["content"][0]["text"].as_str().unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(text).unwrap(),
            json!({"mail": "[REDACTED:email]"})
        );
        // Text that only looks like JSON is scanned as text.
        let mut body =
            json!({"messages": [{"role": "user", "content": "{not json jane@example.com"}]});
        apply(&p, &mut body);
        assert_eq!(body["messages"][0]["content"], "{not json [REDACTED:email]");
    }

    #[test]
    fn a_mask_that_would_break_a_document_blocks() {
        // A number too long for a JSON number keeps its digits only in the text, where the
        // mask would leave `{"n": [REDACTED...]}`: blocked, not sent broken.
        let p = policy(json!({"deny": [{"name": "long", "pattern": "9{25}", "action": "mask"}]}));
        let mut body = json!({"input": [format!("{{\"n\": {}}}", "9".repeat(25))]});
        assert!(apply(&p, &mut body).blocked);
        // A pattern across the structure, masked: no longer JSON either.
        let p =
            policy(json!({"deny": [{"name": "pair", "pattern": "\"a\": \"b", "action": "mask"}]}));
        let mut body = json!({"input": ["{\"a\": \"b\"}"]});
        assert!(apply(&p, &mut body).blocked);
        // The same mask on plain text is a mask.
        let mut body = json!({"input": ["say \"a\": \"b\" please"]});
        let out = apply(&p, &mut body);
        assert!(out.changed && !out.blocked);
    }

    #[test]
    fn documents_nest_only_so_deep() {
        let p = policy(json!({"pii": {"email": "mask"}}));
        let mut doc = json!({"to": "jane\u{0040}example.com"});
        for _ in 0..10 {
            doc = json!([serde_json::to_string(&doc).unwrap()]);
        }
        let mut body = json!({"input": [serde_json::to_string(&doc).unwrap()]});
        let out = apply(&p, &mut body);
        // Scanned as text past MAX_DOCUMENT_DEPTH: the raw text still holds the address.
        assert!(out.changed);
    }

    #[test]
    fn values_split_across_parts_are_found_and_masked_in_each() {
        let p = policy(json!({"pii": {"payment_card": "mask"},
            "deny": [{"name": "falcon", "pattern": "(?i)project[\\s-]+falcon"}]}));
        let mut body = json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "card 4111 1111"},
            {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
            {"type": "text", "text": " 1111 1111 ok"}
        ]}]});
        let out = apply(&p, &mut body);
        assert!(out.changed && !out.blocked);
        let parts = &body["messages"][0]["content"];
        assert_eq!(parts[0]["text"], "card [REDACTED:payment_card]");
        assert_eq!(parts[2]["text"], "[REDACTED:payment_card] ok");
        let mut body = json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "proj"}, {"type": "text", "text": "ect-falcon"}]}]});
        assert!(apply(&p, &mut body).blocked);
        // Separate inputs (embeddings, completions prompts) are separate texts.
        let mut body = json!({"input": ["proj", "ect falcon"]});
        assert!(!apply(&p, &mut body).blocked);
    }

    #[test]
    fn invisible_and_look_alike_characters_are_folded() {
        let p = policy(json!({"pii": {"payment_card": "mask"},
            "deny": [{"name": "falcon", "pattern": "(?i)project\\s+falcon"},
                     {"name": "ru", "pattern": "секрет"}]}));
        for text in [
            "proj\u{200B}ect falcon",
            "Project\u{00A0}Falcon",
            "Prоject Fаlcon",
            "Ｐｒｏｊｅｃｔ　Ｆａｌｃｏｎ",
            "p\u{FEFF}roject f\u{2060}alcon",
            "совсем секрет",
        ] {
            let mut body = json!({"input": text});
            assert!(apply(&p, &mut body).blocked, "{text:?}");
        }
        let mut body = json!({"input": "card ４１１１ １１１１ １１１１ １１１１ ok é"});
        let out = apply(&p, &mut body);
        assert!(out.changed && !out.blocked);
        assert_eq!(body["input"], "card [REDACTED:payment_card] ok é");
        let mut body = json!({"input": "card 4111\u{200B}1111\u{200B}1111\u{200B}1111."});
        apply(&p, &mut body);
        assert_eq!(body["input"], "card [REDACTED:payment_card].");
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
