//! The `guardrails` section: the Content Safety resource the service checks call, and one
//! policy per workload (`default` for the others): which checks run on prompts and answers,
//! the severity threshold per category, `block` or `log`, what happens when the service fails
//! (`fail_closed` or `fail_open`) and how long a check may take; the local rules (PII
//! detectors and deny patterns) with `block`, `mask` or `log`.
//!
//! Validation errors name the field (`guardrails.workloads.app-a.deny[1].pattern: ...`).

use super::pattern::Pattern;
use super::pii::PiiKind;
use crate::config::error::{
    check_bytes, check_cluster, check_env_name, check_host, check_range, is_name_byte, ConfigError,
};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::rc::Rc;

/// Content Safety's GA API version with Prompt Shields and protected material
/// (https://learn.microsoft.com/rest/api/contentsafety/).
pub const DEFAULT_API_VERSION: &str = "2024-09-01";
pub const DEFAULT_TIMEOUT_MS: u64 = 2_000;
pub const MAX_CHECK_TIMEOUT_MS: u64 = 30_000;
/// Most prompt text one request may send to the service (100 calls of text:analyze's 10,000
/// characters would be a lot; 10 is already many).
pub const DEFAULT_MAX_TEXT_CHARS: u64 = 100_000;
pub const MAX_MAX_TEXT_CHARS: u64 = 1_000_000;
pub const DEFAULT_STREAM_WINDOW_CHARS: u64 = 1_000;

/// The four harm categories of `text:analyze`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum Category {
    Hate,
    SelfHarm,
    Sexual,
    Violence,
}

impl Category {
    pub const ALL: [Category; 4] = [
        Category::Hate,
        Category::SelfHarm,
        Category::Sexual,
        Category::Violence,
    ];

    /// The service's name (`categories`, `categoriesAnalysis[].category`).
    pub fn service_name(self) -> &'static str {
        match self {
            Category::Hate => "Hate",
            Category::SelfHarm => "SelfHarm",
            Category::Sexual => "Sexual",
            Category::Violence => "Violence",
        }
    }

    /// Azure OpenAI's content-filter key (`content_filter_result.<key>`).
    pub fn filter_key(self) -> &'static str {
        match self {
            Category::Hate => "hate",
            Category::SelfHarm => "self_harm",
            Category::Sexual => "sexual",
            Category::Violence => "violence",
        }
    }

    pub fn from_service_name(name: &str) -> Option<Category> {
        Category::ALL.into_iter().find(|c| c.service_name() == name)
    }
}

/// What a service check does when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Refuse the prompt (400 content_filter) or end the answer.
    #[default]
    Block,
    /// Let it pass; count and record the decision.
    Log,
}

/// What a local rule does when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum LocalAction {
    Block,
    /// Replace the matched text by `[REDACTED:<rule>]` before the prompt leaves.
    Mask,
    Log,
}

/// When the service cannot answer (timeout, error, no token).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Refuse the prompt with 503 (an answer: end it with an error event).
    #[default]
    FailClosed,
    /// Let it pass, counted as `failed_open`.
    FailOpen,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawGuardrails {
    /// The Azure AI Content Safety resource of the service checks.
    #[serde(default)]
    pub content_safety: Option<RawContentSafety>,
    /// The policy of workloads without their own entry (none: no guardrails for them).
    #[serde(default)]
    pub default: Option<RawPolicy>,
    /// Policies by workload; `{}` exempts a workload from `default`.
    #[serde(default)]
    pub workloads: BTreeMap<String, RawPolicy>,
}

#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawContentSafety {
    /// Envoy cluster of the resource (TLS to `host`).
    pub cluster: String,
    /// The resource's host, e.g. contoso-safety.cognitiveservices.azure.com (`:authority`).
    pub host: String,
    /// Default 2024-09-01.
    #[serde(default)]
    pub api_version: Option<String>,
    /// A `credentials` entry: its Entra token (scope https://cognitiveservices.azure.com/.default,
    /// role Cognitive Services User on the resource), from the shared token cache.
    #[serde(default)]
    pub credential: Option<String>,
    /// Or a resource key from this environment variable of the VM (`Ocp-Apim-Subscription-Key`).
    #[serde(default)]
    pub api_key_env: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    /// Content Safety checks of the prompt.
    #[serde(default)]
    pub prompt: Option<RawPromptChecks>,
    /// Content Safety checks of the answer.
    #[serde(default)]
    pub answer: Option<RawAnswerChecks>,
    /// PII and secret detectors on the prompt: `email`, `phone`, `payment_card`, `iban`,
    /// `us_ssn`, `ip_address`, `jwt`, `azure_key`, each `block`, `mask` or `log`.
    #[serde(default)]
    pub pii: BTreeMap<String, LocalAction>,
    /// Deny patterns on the prompt (regular expressions, README "Guardrails").
    #[serde(default)]
    pub deny: Vec<RawDenyRule>,
    /// When Content Safety times out, fails or cannot be authenticated (default fail_closed).
    #[serde(default)]
    pub failure_mode: Option<FailureMode>,
    /// Bound of each Content Safety call (default 2000, at most 30000).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Longest prompt text checked by the service (default 100000 characters); a longer one
    /// is refused (fail_closed) or passes unchecked by the service (fail_open).
    #[serde(default)]
    pub max_text_chars: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawPromptChecks {
    /// Prompt Shields (`text:shieldPrompt`): attacks in the user prompt and in documents (tool
    /// results).
    #[serde(default)]
    pub prompt_shields: Option<Action>,
    /// Text analysis (`text:analyze`): a severity threshold (1-7) per category; severity at or
    /// above it fires.
    #[serde(default)]
    pub categories: BTreeMap<Category, u8>,
    /// Blocklists of the resource to match (`blocklistNames`).
    #[serde(default)]
    pub blocklists: Vec<String>,
    /// Stop the analysis at a blocklist hit (`haltOnBlocklistHit`, default false).
    #[serde(default)]
    pub halt_on_blocklist_hit: Option<bool>,
    /// For categories and blocklists (default block).
    #[serde(default)]
    pub action: Option<Action>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawAnswerChecks {
    /// Text analysis of the answer: a severity threshold (1-7) per category.
    #[serde(default)]
    pub categories: BTreeMap<Category, u8>,
    #[serde(default)]
    pub blocklists: Vec<String>,
    #[serde(default)]
    pub halt_on_blocklist_hit: Option<bool>,
    /// For categories and blocklists (default block).
    #[serde(default)]
    pub action: Option<Action>,
    /// Protected material (`text:detectProtectedMaterial`: lyrics, articles, recipes...).
    #[serde(default)]
    pub protected_material: Option<Action>,
    /// Streams are checked in windows of this many characters of answer text (default 1000,
    /// 20 to 10000; at least 110 with protected_material).
    #[serde(default)]
    pub stream_window_chars: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawDenyRule {
    /// The rule's name in metrics, the usage record and the error body (never the text).
    pub name: String,
    pub pattern: String,
    /// Default block.
    #[serde(default)]
    pub action: Option<LocalAction>,
}

// ---------------------------------------------------------------------------------------------
// Validated

/// How the filter authenticates to Content Safety.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceAuth {
    /// Index into `Config::credentials`.
    Credential(usize),
    /// The environment variable holding the key (resolved at load).
    KeyEnv(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentSafety {
    pub cluster: String,
    pub host: String,
    pub api_version: String,
    pub auth: ServiceAuth,
}

/// The service checks of one direction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Analysis {
    /// (category, threshold), in category order.
    pub thresholds: Vec<(Category, u8)>,
    pub blocklists: Vec<String>,
    pub halt_on_blocklist_hit: bool,
    pub action: Action,
}

impl Analysis {
    pub fn is_on(&self) -> bool {
        !self.thresholds.is_empty() || !self.blocklists.is_empty()
    }

    /// Eight severity levels are asked for when a threshold needs them (an odd one).
    pub fn eight_levels(&self) -> bool {
        self.thresholds.iter().any(|(_, t)| t % 2 == 1)
    }
}

#[derive(Debug, Clone)]
pub struct DenyRule {
    pub name: String,
    pub source: String,
    pub action: LocalAction,
    pub pattern: Rc<Pattern>,
}

impl PartialEq for DenyRule {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.source == other.source && self.action == other.action
    }
}

impl Eq for DenyRule {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub prompt_shields: Option<Action>,
    pub prompt_analysis: Analysis,
    pub answer_analysis: Analysis,
    pub protected_material: Option<Action>,
    pub stream_window_chars: usize,
    pub pii: Vec<(PiiKind, LocalAction)>,
    pub deny: Vec<DenyRule>,
    pub failure_mode: FailureMode,
    pub timeout_ms: u64,
    pub max_text_chars: usize,
}

impl Policy {
    pub fn has_local_rules(&self) -> bool {
        !self.pii.is_empty() || !self.deny.is_empty()
    }

    /// Content Safety checks the prompt.
    pub fn checks_prompt_with_service(&self) -> bool {
        self.prompt_shields.is_some() || self.prompt_analysis.is_on()
    }

    pub fn checks_prompt(&self) -> bool {
        self.has_local_rules() || self.checks_prompt_with_service()
    }

    pub fn checks_answer(&self) -> bool {
        self.answer_analysis.is_on() || self.protected_material.is_some()
    }

    fn is_empty(&self) -> bool {
        !self.checks_prompt() && !self.checks_answer()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Guardrails {
    pub content_safety: Option<ContentSafety>,
    default: Option<Rc<Policy>>,
    /// `None`: the workload is exempt (`{}`).
    workloads: BTreeMap<String, Option<Rc<Policy>>>,
}

impl Guardrails {
    /// The policy that applies to `workload`; `None`: no guardrails for it.
    pub fn policy(&self, workload: &str) -> Option<&Rc<Policy>> {
        match self.workloads.get(workload) {
            Some(own) => own.as_ref(),
            None => self.default.as_ref(),
        }
    }

    /// Every policy, for checks across the config.
    pub fn policies(&self) -> impl Iterator<Item = &Rc<Policy>> {
        self.default.iter().chain(self.workloads.values().flatten())
    }

    pub fn any_prompt_checks(&self) -> bool {
        self.policies().any(|p| p.checks_prompt())
    }

    pub fn uses_service(&self) -> bool {
        self.policies()
            .any(|p| p.checks_prompt_with_service() || p.checks_answer())
    }

    /// The Content Safety key, when the resource is called with one (`api_key_env`), read
    /// from the VM's environment at load time: missing or unusable is a configuration error.
    pub fn resolve_key(
        &self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<String>, ConfigError> {
        let Some(ContentSafety {
            auth: ServiceAuth::KeyEnv(var),
            ..
        }) = &self.content_safety
        else {
            return Ok(None);
        };
        let field = "guardrails.content_safety.api_key_env";
        let value = lookup(var)
            .map(|v| v.trim().to_string())
            .unwrap_or_default();
        if value.is_empty() {
            return Err(ConfigError::new(
                field,
                format!(
                    "environment variable {var:?} is not set or empty in the Wasm VM \
                     (set it in vm_config.environment_variables)"
                ),
            ));
        }
        if value.len() > 8192 || value.bytes().any(|b| b < 0x20 || b == 0x7f) {
            return Err(ConfigError::new(
                field,
                format!("environment variable {var:?} does not hold a valid header value"),
            ));
        }
        Ok(Some(value))
    }

    /// Validates the section; `credential_index` resolves `content_safety.credential`.
    pub fn from_raw(
        raw: &RawGuardrails,
        field: &str,
        credential_index: impl Fn(&str) -> Option<usize>,
    ) -> Result<Guardrails, ConfigError> {
        let content_safety = match &raw.content_safety {
            Some(cs) => Some(content_safety(
                cs,
                &format!("{field}.content_safety"),
                credential_index,
            )?),
            None => None,
        };
        let default = match &raw.default {
            Some(p) => policy(p, &format!("{field}.default"))?.map(Rc::new),
            None => None,
        };
        let mut workloads = BTreeMap::new();
        for (name, p) in &raw.workloads {
            let f = format!("{field}.workloads.{name}");
            if name.is_empty() {
                return Err(ConfigError::new(f, "workload names must not be empty"));
            }
            workloads.insert(name.clone(), policy(p, &f)?.map(Rc::new));
        }
        let g = Guardrails {
            content_safety,
            default,
            workloads,
        };
        if g.uses_service() && g.content_safety.is_none() {
            return Err(ConfigError::new(
                format!("{field}.content_safety"),
                "the policies use Content Safety checks (prompt_shields, categories, blocklists, protected_material): configure the resource",
            ));
        }
        Ok(g)
    }
}

fn content_safety(
    raw: &RawContentSafety,
    field: &str,
    credential_index: impl Fn(&str) -> Option<usize>,
) -> Result<ContentSafety, ConfigError> {
    check_cluster(&format!("{field}.cluster"), &raw.cluster)?;
    check_host(&format!("{field}.host"), &raw.host)?;
    let api_version = raw
        .api_version
        .clone()
        .unwrap_or_else(|| DEFAULT_API_VERSION.to_string());
    check_bytes(
        &format!("{field}.api_version"),
        &api_version,
        64,
        |b| b.is_ascii_alphanumeric() || b == b'-',
        "must be an api-version such as 2024-09-01",
    )?;
    let auth = match (&raw.credential, &raw.api_key_env) {
        (Some(name), None) => ServiceAuth::Credential(credential_index(name).ok_or_else(|| {
            ConfigError::new(
                format!("{field}.credential"),
                format!("no credential named {name:?}"),
            )
        })?),
        (None, Some(env)) => {
            check_env_name(&format!("{field}.api_key_env"), env)?;
            ServiceAuth::KeyEnv(env.clone())
        }
        _ => return Err(ConfigError::new(
            field,
            "set exactly one of `credential` (an Entra token) and `api_key_env` (a resource key)",
        )),
    };
    Ok(ContentSafety {
        cluster: raw.cluster.clone(),
        host: raw.host.clone(),
        api_version,
        auth,
    })
}

fn analysis(
    thresholds: &BTreeMap<Category, u8>,
    blocklists: &[String],
    halt: Option<bool>,
    action: Option<Action>,
    field: &str,
) -> Result<Analysis, ConfigError> {
    for (c, t) in thresholds {
        if !(1..=7).contains(t) {
            return Err(ConfigError::new(
                format!("{field}.categories.{}", c.service_name()),
                "must be a severity between 1 and 7 (content at or above it fires)",
            ));
        }
    }
    for (i, name) in blocklists.iter().enumerate() {
        check_bytes(
            &format!("{field}.blocklists[{i}]"),
            name,
            64,
            |b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'),
            "must be a blocklist name (1-64 of letters, digits, '.', '_', '~', '-')",
        )?;
    }
    Ok(Analysis {
        thresholds: thresholds.iter().map(|(c, t)| (*c, *t)).collect(),
        blocklists: blocklists.to_vec(),
        halt_on_blocklist_hit: halt.unwrap_or(false),
        action: action.unwrap_or_default(),
    })
}

/// A validated policy; `None` for one that checks nothing (an exemption).
fn policy(raw: &RawPolicy, field: &str) -> Result<Option<Policy>, ConfigError> {
    let prompt = raw.prompt.clone().unwrap_or_default();
    let answer = raw.answer.clone().unwrap_or_default();
    let prompt_analysis = analysis(
        &prompt.categories,
        &prompt.blocklists,
        prompt.halt_on_blocklist_hit,
        prompt.action,
        &format!("{field}.prompt"),
    )?;
    let answer_analysis = analysis(
        &answer.categories,
        &answer.blocklists,
        answer.halt_on_blocklist_hit,
        answer.action,
        &format!("{field}.answer"),
    )?;
    let window = answer
        .stream_window_chars
        .unwrap_or(DEFAULT_STREAM_WINDOW_CHARS);
    // Protected material needs 110 characters per call (Content Safety's minimum).
    let min_window = if answer.protected_material.is_some() {
        110
    } else {
        20
    };
    check_range(
        &format!("{field}.answer.stream_window_chars"),
        window,
        min_window,
        10_000,
    )?;
    let mut pii = Vec::new();
    for (name, action) in &raw.pii {
        let kind = PiiKind::from_name(name).ok_or_else(|| {
            ConfigError::new(
                format!("{field}.pii.{name}"),
                format!(
                    "unknown detector; known: {}",
                    PiiKind::ALL.map(PiiKind::name).join(", ")
                ),
            )
        })?;
        pii.push((kind, *action));
    }
    let mut deny: Vec<DenyRule> = Vec::new();
    for (i, rule) in raw.deny.iter().enumerate() {
        let f = format!("{field}.deny[{i}]");
        check_bytes(
            &format!("{f}.name"),
            &rule.name,
            64,
            is_name_byte,
            "names must be 1-64 characters of letters, digits, '-', '_', '.'",
        )?;
        if deny.iter().any(|d| d.name == rule.name) {
            return Err(ConfigError::new(
                format!("{f}.name"),
                format!("another rule is named {:?}", rule.name),
            ));
        }
        let pattern = Pattern::new(&rule.pattern)
            .map_err(|e| ConfigError::new(format!("{f}.pattern"), e.0))?;
        deny.push(DenyRule {
            name: rule.name.clone(),
            source: rule.pattern.clone(),
            action: rule.action.unwrap_or(LocalAction::Block),
            pattern: Rc::new(pattern),
        });
    }
    let timeout_ms = raw.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
    check_range(
        &format!("{field}.timeout_ms"),
        timeout_ms,
        1,
        MAX_CHECK_TIMEOUT_MS,
    )?;
    let max_text_chars = raw.max_text_chars.unwrap_or(DEFAULT_MAX_TEXT_CHARS);
    check_range(
        &format!("{field}.max_text_chars"),
        max_text_chars,
        1_000,
        MAX_MAX_TEXT_CHARS,
    )?;
    let p = Policy {
        prompt_shields: prompt.prompt_shields,
        prompt_analysis,
        answer_analysis,
        protected_material: answer.protected_material,
        stream_window_chars: window as usize,
        pii,
        deny,
        failure_mode: raw.failure_mode.unwrap_or_default(),
        timeout_ms,
        max_text_chars: max_text_chars as usize,
    };
    Ok((!p.is_empty()).then_some(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: serde_json::Value) -> Result<Guardrails, ConfigError> {
        let raw: RawGuardrails =
            serde_json::from_value(v).map_err(|e| ConfigError::new("", e.to_string()))?;
        Guardrails::from_raw(&raw, "guardrails", |n| (n == "main").then_some(0))
    }

    #[test]
    fn policies_by_workload_with_exemptions() {
        let g = parse(serde_json::json!({
            "default": {"pii": {"email": "mask"}},
            "workloads": {
                "trusted": {},
                "strict": {"pii": {"payment_card": "block"}, "deny": [{"name": "falcon", "pattern": "(?i)project falcon"}]}
            }
        }))
        .unwrap();
        assert_eq!(
            g.policy("anyone").unwrap().pii,
            [(PiiKind::Email, LocalAction::Mask)]
        );
        assert!(g.policy("trusted").is_none());
        let strict = g.policy("strict").unwrap();
        assert_eq!(strict.deny[0].action, LocalAction::Block);
        assert!(strict.deny[0].pattern.is_match("about PROJECT FALCON"));
        assert!(!g.uses_service());
        assert!(g.any_prompt_checks());
    }

    #[test]
    fn service_checks_need_the_resource_and_name_their_fields() {
        let e = parse(serde_json::json!({"default": {"prompt": {"prompt_shields": "block"}}}))
            .unwrap_err();
        assert_eq!(e.field, "guardrails.content_safety");
        let cs = serde_json::json!({"cluster": "content_safety", "host": "cs.cognitiveservices.azure.com", "credential": "main"});
        let g = parse(serde_json::json!({
            "content_safety": cs,
            "default": {"prompt": {"prompt_shields": "block", "categories": {"Hate": 2, "Violence": 5}},
                        "answer": {"protected_material": "log"}, "failure_mode": "fail_open"}
        }))
        .unwrap();
        let p = g.policy("w").unwrap();
        assert_eq!(p.prompt_shields, Some(Action::Block));
        assert!(p.prompt_analysis.eight_levels());
        assert_eq!(p.failure_mode, FailureMode::FailOpen);
        assert!(p.checks_answer());
        assert_eq!(
            g.content_safety.as_ref().unwrap().auth,
            ServiceAuth::Credential(0)
        );
        assert_eq!(
            g.content_safety.as_ref().unwrap().api_version,
            DEFAULT_API_VERSION
        );
        for (v, field) in [
            (
                serde_json::json!({"default": {"pii": {"passport": "mask"}}}),
                "guardrails.default.pii.passport",
            ),
            (
                serde_json::json!({"default": {"deny": [{"name": "x", "pattern": "a*"}]}}),
                "guardrails.default.deny[0].pattern",
            ),
            (
                serde_json::json!({"default": {"deny": [{"name": "x", "pattern": "a"}, {"name": "x", "pattern": "b"}]}}),
                "guardrails.default.deny[1].name",
            ),
            (
                serde_json::json!({"content_safety": cs, "default": {"prompt": {"categories": {"Hate": 0}}}}),
                "guardrails.default.prompt.categories.Hate",
            ),
            (
                serde_json::json!({"content_safety": cs, "default": {"answer": {"blocklists": ["a b"]}}}),
                "guardrails.default.answer.blocklists[0]",
            ),
            (
                serde_json::json!({"content_safety": cs, "default": {"timeout_ms": 0, "pii": {"email": "log"}}}),
                "guardrails.default.timeout_ms",
            ),
            (
                serde_json::json!({"content_safety": {"cluster": "c", "host": "h", "credential": "nope"}}),
                "guardrails.content_safety.credential",
            ),
            (
                serde_json::json!({"content_safety": {"cluster": "c", "host": "h"}}),
                "guardrails.content_safety",
            ),
            (
                serde_json::json!({"content_safety": {"cluster": "c", "host": "h", "credential": "main", "api_key_env": "K"}}),
                "guardrails.content_safety",
            ),
            (
                serde_json::json!({"content_safety": cs, "default": {"answer": {"stream_window_chars": 50, "protected_material": "block"}}}),
                "guardrails.default.answer.stream_window_chars",
            ),
            (
                serde_json::json!({"content_safety": cs, "default": {"answer": {"stream_window_chars": 19, "categories": {"Hate": 2}}}}),
                "guardrails.default.answer.stream_window_chars",
            ),
        ] {
            assert_eq!(parse(v.clone()).unwrap_err().field, field, "{v}");
        }
    }
}
