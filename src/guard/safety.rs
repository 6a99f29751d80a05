//! Azure AI Content Safety's REST API (api-version 2024-09-01,
//! https://learn.microsoft.com/rest/api/contentsafety/text-operations): the calls a policy
//! needs for a text, split within the service's documented limits, and what their answers
//! mean under the policy.
//!
//! - `POST {endpoint}/contentsafety/text:shieldPrompt` `{"userPrompt", "documents": [..]}` →
//!   `{"userPromptAnalysis": {"attackDetected"}, "documentsAnalysis": [{"attackDetected"}]}`;
//!   at most 10,000 characters of user prompt, and up to five documents of 10,000 characters
//!   in all, per call.
//! - `POST .../text:analyze` `{"text", "categories", "blocklistNames", "haltOnBlocklistHit",
//!   "outputType"}` → `{"categoriesAnalysis": [{"category", "severity"}], "blocklistsMatch":
//!   [{"blocklistName", "blocklistItemId", "blocklistItemText"}]}`; 10,000 characters per call.
//! - `POST .../text:detectProtectedMaterial` `{"text"}` → `{"protectedMaterialAnalysis":
//!   {"detected"}}`; for answers of 110 characters or more, 1,000 per call.
//! - Errors: `{"error": {"code", "message", ...}}` with `x-ms-error-code`.
//!
//! Characters are Unicode code points. A text longer than a call's limit is cut into several
//! calls, at whitespace where there is some in the last part of the window.

use super::config::{Action, Analysis, Category, Policy};
use super::prompt::PromptText;
use super::verdict::{Check, Decision, Direction, Finding};
use serde::Deserialize;
use serde_json::json;

/// Characters per `text:analyze` call, and of a Prompt Shields user prompt.
pub const MAX_ANALYZE_CHARS: usize = 10_000;
/// Documents per Prompt Shields call, and their characters in all.
pub const MAX_DOCUMENTS: usize = 5;
pub const MAX_DOCUMENT_CHARS: usize = 10_000;
/// Protected material: the documented bounds for LLM completions.
pub const MIN_PROTECTED_CHARS: usize = 110;
pub const MAX_PROTECTED_CHARS: usize = 1_000;

/// One of the service's text operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    ShieldPrompt,
    AnalyzeText,
    ProtectedMaterial,
}

impl Api {
    /// The metric label.
    pub fn name(self) -> &'static str {
        match self {
            Api::ShieldPrompt => "shield_prompt",
            Api::AnalyzeText => "analyze_text",
            Api::ProtectedMaterial => "protected_material",
        }
    }

    /// The request path.
    pub fn path(self, api_version: &str) -> String {
        let op = match self {
            Api::ShieldPrompt => "text:shieldPrompt",
            Api::AnalyzeText => "text:analyze",
            Api::ProtectedMaterial => "text:detectProtectedMaterial",
        };
        format!("/contentsafety/{op}?api-version={api_version}")
    }
}

/// A call to make: which operation, its JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub api: Api,
    pub body: String,
}

/// Cuts `text` into pieces of at most `max` characters, at whitespace when the last fifth of
/// the window has some (so that words, and what they mean, are not split).
pub fn split(text: &str, max: usize) -> Vec<&str> {
    let max = max.max(1);
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let Some((end, _)) = rest.char_indices().nth(max) else {
            out.push(rest);
            break;
        };
        let window = &rest[..end];
        let floor = window
            .char_indices()
            .nth(max - max / 5)
            .map_or(0, |(i, _)| i);
        let cut = window
            .char_indices()
            .rev()
            .find(|(i, c)| *i >= floor && c.is_whitespace())
            .map_or(end, |(i, c)| i + c.len_utf8());
        let cut = if cut == 0 { end } else { cut };
        out.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    out
}

fn analyze_body(analysis: &Analysis, text: &str) -> String {
    let mut body = json!({"text": text});
    if !analysis.thresholds.is_empty() {
        body["categories"] = analysis
            .thresholds
            .iter()
            .map(|(c, _)| c.service_name())
            .collect();
    }
    if !analysis.blocklists.is_empty() {
        body["blocklistNames"] = json!(analysis.blocklists);
        body["haltOnBlocklistHit"] = json!(analysis.halt_on_blocklist_hit);
    }
    body["outputType"] = json!(if analysis.eight_levels() {
        "EightSeverityLevels"
    } else {
        "FourSeverityLevels"
    });
    body.to_string()
}

/// The calls that check a prompt: Prompt Shields on the user prompt and the documents, text
/// analysis on all of it.
pub fn prompt_calls(policy: &Policy, text: &PromptText) -> Vec<Call> {
    let mut calls = Vec::new();
    if policy.prompt_shields.is_some() {
        let user = text.user.join("\n");
        let prompts = split(&user, MAX_ANALYZE_CHARS);
        let mut groups: Vec<Vec<&str>> = Vec::new();
        let mut chars = 0;
        for doc in &text.documents {
            for part in split(doc, MAX_DOCUMENT_CHARS) {
                let n = part.chars().count();
                let full = groups
                    .last()
                    .is_none_or(|g| g.len() >= MAX_DOCUMENTS || chars + n > MAX_DOCUMENT_CHARS);
                if full {
                    groups.push(Vec::new());
                    chars = 0;
                }
                chars += n;
                if let Some(g) = groups.last_mut() {
                    g.push(part);
                }
            }
        }
        for i in 0..prompts.len().max(groups.len()) {
            let mut body = json!({"userPrompt": prompts.get(i).copied().unwrap_or("")});
            if let Some(docs) = groups.get(i) {
                body["documents"] = json!(docs);
            }
            calls.push(Call {
                api: Api::ShieldPrompt,
                body: body.to_string(),
            });
        }
    }
    if policy.prompt_analysis.is_on() {
        let all: Vec<&str> = text
            .user
            .iter()
            .chain(&text.documents)
            .map(String::as_str)
            .collect();
        let all = all.join("\n");
        for part in split(&all, MAX_ANALYZE_CHARS) {
            calls.push(Call {
                api: Api::AnalyzeText,
                body: analyze_body(&policy.prompt_analysis, part),
            });
        }
    }
    calls
}

/// The calls that check (a window of) an answer's text.
pub fn answer_calls(policy: &Policy, text: &str) -> Vec<Call> {
    let mut calls = Vec::new();
    if text.trim().is_empty() {
        return calls;
    }
    if policy.answer_analysis.is_on() {
        for part in split(text, MAX_ANALYZE_CHARS) {
            calls.push(Call {
                api: Api::AnalyzeText,
                body: analyze_body(&policy.answer_analysis, part),
            });
        }
    }
    if policy.protected_material.is_some() && text.chars().count() >= MIN_PROTECTED_CHARS {
        let mut parts = split(text, MAX_PROTECTED_CHARS);
        // A last piece under the service's minimum is replaced by the text's last 110
        // characters (overlapping the piece before it).
        if parts.len() > 1
            && parts
                .last()
                .is_some_and(|p| p.chars().count() < MIN_PROTECTED_CHARS)
        {
            let start = text
                .char_indices()
                .rev()
                .nth(MIN_PROTECTED_CHARS - 1)
                .map_or(0, |(i, _)| i);
            parts.pop();
            parts.push(&text[start..]);
        }
        for part in parts {
            calls.push(Call {
                api: Api::ProtectedMaterial,
                body: json!({"text": part}).to_string(),
            });
        }
    }
    calls
}

#[derive(Deserialize)]
struct Attack {
    #[serde(rename = "attackDetected", default)]
    attack_detected: bool,
}

#[derive(Deserialize)]
struct ShieldResult {
    #[serde(rename = "userPromptAnalysis", default)]
    user: Option<Attack>,
    #[serde(rename = "documentsAnalysis", default)]
    documents: Vec<Attack>,
}

#[derive(Deserialize)]
struct CategoryResult {
    category: String,
    #[serde(default)]
    severity: Option<u8>,
}

#[derive(Deserialize)]
struct BlocklistMatch {
    #[serde(rename = "blocklistName")]
    name: String,
}

#[derive(Deserialize)]
struct AnalyzeResult {
    #[serde(rename = "categoriesAnalysis", default)]
    categories: Vec<CategoryResult>,
    #[serde(rename = "blocklistsMatch", default)]
    blocklists: Option<Vec<BlocklistMatch>>,
}

#[derive(Deserialize)]
struct Detected {
    #[serde(default)]
    detected: bool,
}

#[derive(Deserialize)]
struct ProtectedResult {
    #[serde(rename = "protectedMaterialAnalysis")]
    analysis: Detected,
}

#[derive(Deserialize)]
struct ServiceError {
    error: ServiceErrorBody,
}

#[derive(Deserialize)]
struct ServiceErrorBody {
    #[serde(default)]
    code: Option<String>,
}

/// What one answer says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Read: what fired (nothing, for a clean text).
    Checked(Vec<Finding>),
    /// The service could not answer: why (for the finding), and its error code if it sent
    /// one (for the log).
    Failed(&'static str, Option<String>),
}

fn decision(action: Action) -> Decision {
    match action {
        Action::Block => Decision::Blocked,
        Action::Log => Decision::Logged,
    }
}

/// Reads an answer of `api` (`status` None: no answer at all, the call was reset).
pub fn read(
    api: Api,
    direction: Direction,
    policy: &Policy,
    status: Option<u32>,
    body: &[u8],
) -> Outcome {
    let Some(status) = status else {
        return Outcome::Failed("unreachable", None);
    };
    if status != 200 {
        let code = serde_json::from_slice::<ServiceError>(body)
            .ok()
            .and_then(|e| e.error.code)
            .map(|c| {
                c.chars()
                    .filter(|c| c.is_ascii_graphic())
                    .take(64)
                    .collect()
            });
        let why = match status {
            // Envoy answers a callout that outlives its timeout with its own 504.
            504 => "timeout",
            401 | 403 => "unauthorized",
            429 => "throttled",
            400..=499 => "rejected",
            _ => "error",
        };
        return Outcome::Failed(why, code);
    }
    let finding = |check: Check, action: Action| Finding {
        direction,
        check,
        decision: decision(action),
    };
    let mut found = Vec::new();
    match api {
        Api::ShieldPrompt => {
            let Ok(r) = serde_json::from_slice::<ShieldResult>(body) else {
                return Outcome::Failed("unreadable", None);
            };
            let action = policy.prompt_shields.unwrap_or_default();
            if r.user.is_some_and(|u| u.attack_detected) {
                found.push(finding(Check::Jailbreak, action));
            }
            if r.documents.iter().any(|d| d.attack_detected) {
                found.push(finding(Check::IndirectAttack, action));
            }
        }
        Api::AnalyzeText => {
            let Ok(r) = serde_json::from_slice::<AnalyzeResult>(body) else {
                return Outcome::Failed("unreadable", None);
            };
            let analysis = match direction {
                Direction::Prompt => &policy.prompt_analysis,
                Direction::Answer => &policy.answer_analysis,
            };
            for c in &r.categories {
                let Some(category) = Category::from_service_name(&c.category) else {
                    continue;
                };
                let severity = c.severity.unwrap_or(0);
                let fires = analysis
                    .thresholds
                    .iter()
                    .any(|(t, min)| *t == category && severity >= *min);
                if fires {
                    found.push(finding(
                        Check::Category(category, severity),
                        analysis.action,
                    ));
                }
            }
            let mut lists: Vec<String> = r
                .blocklists
                .unwrap_or_default()
                .into_iter()
                .map(|m| m.name)
                .filter(|n| analysis.blocklists.contains(n))
                .collect();
            lists.sort();
            lists.dedup();
            for name in lists {
                found.push(finding(Check::Blocklist(name), analysis.action));
            }
        }
        Api::ProtectedMaterial => {
            let Ok(r) = serde_json::from_slice::<ProtectedResult>(body) else {
                return Outcome::Failed("unreadable", None);
            };
            if r.analysis.detected {
                found.push(finding(
                    Check::ProtectedMaterial,
                    policy.protected_material.unwrap_or_default(),
                ));
            }
        }
    }
    Outcome::Checked(found)
}

/// Adds `new` findings to `all`, one per check (a category keeps its highest severity).
pub fn merge(all: &mut Vec<Finding>, new: Vec<Finding>) {
    for f in new {
        let same = all.iter_mut().find(|g| {
            g.direction == f.direction
                && match (&g.check, &f.check) {
                    (Check::Category(a, _), Check::Category(b, _)) => a == b,
                    (a, b) => a == b,
                }
        });
        match same {
            Some(g) => {
                if let (Check::Category(_, old), Check::Category(_, new)) = (&mut g.check, &f.check)
                {
                    *old = (*old).max(*new);
                }
            }
            None => all.push(f),
        }
    }
}

#[cfg(test)]
mod tests;
