//! What the guardrails found and decided, in the forms the rest of the filter needs: labels for
//! metrics and the usage record (which rule fired and what was done, never the matched text),
//! and the caller's error, shaped like Azure OpenAI's own content filter (HTTP 400,
//! `error.code: content_filter`, the filter result in `innererror.content_filter_result`) so
//! the OpenAI SDK raises its usual `BadRequestError`; Anthropic routes get Anthropic's shape.

use super::config::Category;
use super::pii::PiiKind;
use crate::errors::{ContentFilter, FilterError};
use serde_json::{json, Map, Value};

/// The part of the exchange a check looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Prompt,
    Answer,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::Prompt => "prompt",
            Direction::Answer => "answer",
        }
    }
}

/// What fired.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Check {
    /// Prompt Shields: an attack in the user prompt.
    Jailbreak,
    /// Prompt Shields: an attack in a document (tool result).
    IndirectAttack,
    /// Text analysis: a category at or above its threshold (the severity found).
    Category(Category, u8),
    /// A Content Safety blocklist.
    Blocklist(String),
    ProtectedMaterial,
    Pii(PiiKind),
    Deny(String),
    /// The service could not decide (timeout, error, no token, text too long).
    Unavailable(&'static str),
}

impl Check {
    /// The `check` label.
    pub fn kind(&self) -> &'static str {
        match self {
            Check::Jailbreak | Check::IndirectAttack => "prompt_shields",
            Check::Category(..) => "text_analysis",
            Check::Blocklist(_) => "blocklist",
            Check::ProtectedMaterial => "protected_material",
            Check::Pii(_) => "pii",
            Check::Deny(_) => "deny",
            Check::Unavailable(_) => "content_safety",
        }
    }

    /// The `category` label: the category, attack, blocklist, detector or rule name.
    pub fn category(&self) -> &str {
        match self {
            Check::Jailbreak => "jailbreak",
            Check::IndirectAttack => "indirect_attack",
            Check::Category(c, _) => c.service_name(),
            Check::Blocklist(name) | Check::Deny(name) => name,
            Check::ProtectedMaterial => "protected_material",
            Check::Pii(kind) => kind.name(),
            Check::Unavailable(why) => why,
        }
    }
}

/// What was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    Blocked,
    Logged,
    Masked,
    /// The service failed and the policy let the request pass.
    FailedOpen,
    /// The service failed and the policy refused the request.
    FailedClosed,
}

impl Decision {
    pub fn name(self) -> &'static str {
        match self {
            Decision::Blocked => "blocked",
            Decision::Logged => "logged",
            Decision::Masked => "masked",
            Decision::FailedOpen => "failed_open",
            Decision::FailedClosed => "failed_closed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub direction: Direction,
    pub check: Check,
    pub decision: Decision,
}

impl Finding {
    /// `prompt.pii.email.masked`: the usage record's entry (no matched text).
    pub fn label(&self) -> String {
        format!(
            "{}.{}.{}.{}",
            self.direction.name(),
            self.check.kind(),
            self.check.category(),
            self.decision.name()
        )
    }
}

/// The usage record's `azure_llm.guardrail`: every finding, comma-separated.
pub fn record(findings: &[Finding]) -> String {
    let mut labels: Vec<String> = findings.iter().map(Finding::label).collect();
    labels.dedup();
    labels.join(",")
}

/// Azure's severity names of the four-level scale.
fn severity_name(severity: u8) -> &'static str {
    match severity {
        0 | 1 => "safe",
        2 | 3 => "low",
        4 | 5 => "medium",
        _ => "high",
    }
}

/// `content_filter_result` of the findings, with Azure OpenAI's keys: the four categories
/// (`filtered`, `severity`), `jailbreak` and `indirect_attack` (`filtered`, `detected`),
/// `protected_material_text`, and `custom_blocklists` (`details[].id`) for the service's
/// blocklists and the filter's own rules (`pii.email`, `deny.<name>`).
pub fn filter_result(findings: &[Finding]) -> Value {
    let mut result = Map::new();
    let mut blocklists: Vec<Value> = Vec::new();
    for f in findings {
        let filtered = f.decision == Decision::Blocked;
        match &f.check {
            Check::Category(c, severity) => {
                result.insert(
                    c.filter_key().into(),
                    json!({"filtered": filtered, "severity": severity_name(*severity)}),
                );
            }
            Check::Jailbreak => {
                result.insert(
                    "jailbreak".into(),
                    json!({"filtered": filtered, "detected": true}),
                );
            }
            Check::IndirectAttack => {
                result.insert(
                    "indirect_attack".into(),
                    json!({"filtered": filtered, "detected": true}),
                );
            }
            Check::ProtectedMaterial => {
                result.insert(
                    "protected_material_text".into(),
                    json!({"filtered": filtered, "detected": true}),
                );
            }
            Check::Blocklist(name) => blocklists.push(json!({"filtered": filtered, "id": name})),
            Check::Pii(kind) => {
                blocklists.push(json!({"filtered": filtered, "id": format!("pii.{}", kind.name())}))
            }
            Check::Deny(name) => {
                blocklists.push(json!({"filtered": filtered, "id": format!("deny.{name}")}))
            }
            Check::Unavailable(_) => {}
        }
    }
    if !blocklists.is_empty() {
        let any = blocklists.iter().any(|b| b["filtered"] == true);
        result.insert(
            "custom_blocklists".into(),
            json!({"filtered": any, "details": blocklists}),
        );
    }
    Value::Object(result)
}

/// The refusal of a prompt (or, with `Direction::Answer`, of a JSON answer): 400
/// `content_filter`.
pub fn refusal(direction: Direction, findings: &[Finding]) -> FilterError {
    let fired: Vec<String> = findings
        .iter()
        .filter(|f| f.decision == Decision::Blocked)
        .map(|f| format!("{} {}", f.check.kind(), f.check.category()))
        .collect();
    let (what, param) = match direction {
        Direction::Prompt => ("prompt", "prompt"),
        Direction::Answer => ("answer", "response"),
    };
    let message = format!(
        "The {what} was filtered by the gateway's content policy ({}). Please modify your prompt and retry.",
        fired.join(", ")
    );
    FilterError::bad_request("content_filter", message).with_content_filter(ContentFilter {
        param,
        result: filter_result(findings),
    })
}

/// The service could not check the prompt and the policy fails closed: 503 with Retry-After.
pub fn unavailable(why: &str) -> FilterError {
    FilterError::unavailable(
        "guardrail_unavailable",
        format!("the content policy could not be checked ({why}); retry later"),
    )
    .with_retry_after(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::errors::Dialect;

    fn finding(check: Check, decision: Decision) -> Finding {
        Finding {
            direction: Direction::Prompt,
            check,
            decision,
        }
    }

    #[test]
    fn refusal_has_azures_content_filter_shape() {
        let findings = [
            finding(Check::Jailbreak, Decision::Blocked),
            finding(Check::Category(Category::Violence, 4), Decision::Logged),
            finding(Check::Pii(PiiKind::Email), Decision::Masked),
        ];
        let e = refusal(Direction::Prompt, &findings);
        assert_eq!(e.status, 400);
        let v: Value = serde_json::from_str(&e.body()).unwrap();
        assert_eq!(v["error"]["code"], "content_filter");
        assert_eq!(v["error"]["param"], "prompt");
        assert_eq!(v["error"]["status"], 400);
        assert!(v["error"]["type"].is_null());
        let inner = &v["error"]["innererror"];
        assert_eq!(inner["code"], "ResponsibleAIPolicyViolation");
        let r = &inner["content_filter_result"];
        assert_eq!(r["jailbreak"], json!({"filtered": true, "detected": true}));
        assert_eq!(
            r["violence"],
            json!({"filtered": false, "severity": "medium"})
        );
        assert_eq!(r["custom_blocklists"]["details"][0]["id"], "pii.email");
        assert_eq!(r["custom_blocklists"]["filtered"], false);
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("prompt_shields jailbreak"));
        // Anthropic's shape on the Messages routes.
        let a: Value = serde_json::from_str(&e.in_dialect(Dialect::Anthropic).body()).unwrap();
        assert_eq!(a["type"], "error");
        assert_eq!(a["error"]["type"], "invalid_request_error");
        assert!(a["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("content_filter: "));
    }

    #[test]
    fn record_names_rules_not_text() {
        let findings = [
            finding(Check::Deny("falcon".into()), Decision::Blocked),
            finding(Check::Pii(PiiKind::PaymentCard), Decision::Masked),
            finding(Check::Pii(PiiKind::PaymentCard), Decision::Masked),
        ];
        assert_eq!(
            record(&findings),
            "prompt.deny.falcon.blocked,prompt.pii.payment_card.masked"
        );
    }
}
