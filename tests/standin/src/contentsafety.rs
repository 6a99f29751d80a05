//! An Azure AI Content Safety resource (REST API 2024-09-01): `text:shieldPrompt`,
//! `text:analyze` and `text:detectProtectedMaterial` under `/contentsafety/`, authenticated by
//! `Ocp-Apim-Subscription-Key` or an Entra token of the stand-in (audience
//! `https://cognitiveservices.azure.com`), with the documented input limits enforced (a call
//! over them gets the service's 400 `InvalidRequestBody`, so the filter's splitting is
//! tested) and deterministic verdicts from `ContentSafetyConfig`'s markers (case-insensitive
//! substrings of the text).

use crate::dataplane::verify_access_token;
use crate::{Ctx, Reply, Shared};
use serde_json::{json, Map, Value};

/// Versions the stand-in serves.
const API_VERSIONS: [&str; 2] = ["2024-09-01", "2023-10-01"];

/// What the stand-in's Content Safety detects.
#[derive(Clone, Debug)]
pub struct ContentSafetyConfig {
    /// `Ocp-Apim-Subscription-Key` values it accepts (Entra tokens are accepted too).
    pub keys: Vec<String>,
    /// Prompt Shields: text containing one of these is an attack.
    pub attack_markers: Vec<String>,
    /// Text analysis: (marker, category, severity 0-7) — the highest severity per category of
    /// the markers found.
    pub severities: Vec<(String, String, u8)>,
    /// Blocklists: (name, item text) matched as substrings.
    pub blocklists: Vec<(String, String)>,
    /// Protected material: text containing one of these.
    pub protected_markers: Vec<String>,
}

impl Default for ContentSafetyConfig {
    fn default() -> Self {
        ContentSafetyConfig {
            keys: vec!["standin-content-safety-key".into()],
            attack_markers: vec![
                "ignore all previous instructions".into(),
                "you are dan".into(),
            ],
            severities: vec![
                ("hateful slur".into(), "Hate".into(), 4),
                ("kill them all".into(), "Violence".into(), 6),
                ("a fight broke out".into(), "Violence".into(), 2),
                ("explicit scene".into(), "Sexual".into(), 5),
                ("hurt myself".into(), "SelfHarm".into(), 6),
            ],
            blocklists: vec![("corp-terms".into(), "codename bluebird".into())],
            protected_markers: vec!["twinkle twinkle little star".into()],
        }
    }
}

fn error(status: u16, code: &str, message: &str) -> Reply {
    Reply::json(
        status,
        &json!({"error": {"code": code, "message": message}}),
    )
    .with_header("x-ms-error-code", code)
}

fn invalid(message: &str) -> Reply {
    error(400, "InvalidRequestBody", message)
}

fn chars(s: &str) -> usize {
    s.chars().count()
}

fn authenticate(shared: &Shared, ctx: &Ctx) -> Result<(), Reply> {
    let denied = || {
        error(
            401,
            "401",
            "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource.",
        )
    };
    if let Some(key) = ctx.header("ocp-apim-subscription-key") {
        return if shared.cfg.content_safety.keys.iter().any(|k| k == key) {
            Ok(())
        } else {
            Err(denied())
        };
    }
    let token = ctx
        .header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(denied)?;
    verify_access_token(shared, token).map_err(|_| denied())
}

pub fn handle(shared: &Shared, ctx: &Ctx) -> Reply {
    if ctx.method != "POST" {
        return error(405, "MethodNotAllowed", "Method Not Allowed");
    }
    if !ctx
        .query("api-version")
        .is_some_and(|v| API_VERSIONS.contains(&v))
    {
        return error(
            404,
            "404",
            "Resource not found (a supported api-version is required)",
        );
    }
    if let Err(r) = authenticate(shared, ctx) {
        return r;
    }
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&ctx.body) else {
        return invalid("The request body is not valid JSON.");
    };
    let cfg = &shared.cfg.content_safety;
    match ctx.path.as_str() {
        "/contentsafety/text:shieldPrompt" => shield(cfg, &body),
        "/contentsafety/text:analyze" => analyze(cfg, &body),
        "/contentsafety/text:detectProtectedMaterial" => protected(cfg, &body),
        _ => error(404, "404", "Resource not found"),
    }
}

fn contains_any(text: &str, markers: &[String]) -> bool {
    let lower = text.to_lowercase();
    markers.iter().any(|m| lower.contains(&m.to_lowercase()))
}

fn shield(cfg: &ContentSafetyConfig, body: &Map<String, Value>) -> Reply {
    let prompt = match body.get("userPrompt") {
        None => "",
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return invalid("userPrompt must be a string."),
    };
    if chars(prompt) > 10_000 {
        return invalid("The length of userPrompt exceeds the limit of 10000 characters.");
    }
    let docs: Vec<&str> = match body.get("documents") {
        None => Vec::new(),
        Some(Value::Array(d)) => match d.iter().map(Value::as_str).collect::<Option<Vec<_>>>() {
            Some(d) => d,
            None => return invalid("documents must be strings."),
        },
        Some(_) => return invalid("documents must be an array."),
    };
    if docs.len() > 5 {
        return invalid("At most 5 documents are supported.");
    }
    if docs.iter().map(|d| chars(d)).sum::<usize>() > 10_000 {
        return invalid("The total length of documents exceeds the limit of 10000 characters.");
    }
    let analysis: Vec<Value> = docs
        .iter()
        .map(|d| json!({"attackDetected": contains_any(d, &cfg.attack_markers)}))
        .collect();
    Reply::json(
        200,
        &json!({
            "userPromptAnalysis": {"attackDetected": contains_any(prompt, &cfg.attack_markers)},
            "documentsAnalysis": analysis,
        }),
    )
}

fn analyze(cfg: &ContentSafetyConfig, body: &Map<String, Value>) -> Reply {
    let Some(text) = body.get("text").and_then(Value::as_str) else {
        return invalid("text is required.");
    };
    if chars(text) > 10_000 {
        return invalid("The length of text exceeds the limit of 10000 characters.");
    }
    let eight = match body.get("outputType").and_then(Value::as_str) {
        None | Some("FourSeverityLevels") => false,
        Some("EightSeverityLevels") => true,
        Some(_) => return invalid("outputType is not supported."),
    };
    let all = ["Hate", "SelfHarm", "Sexual", "Violence"];
    let categories: Vec<&str> = match body.get("categories") {
        None => all.to_vec(),
        Some(Value::Array(c)) => {
            let names: Vec<&str> = c.iter().filter_map(Value::as_str).collect();
            if names.len() != c.len() || names.iter().any(|n| !all.contains(n)) {
                return invalid("categories has an unknown category.");
            }
            names
        }
        Some(_) => return invalid("categories must be an array."),
    };
    let lower = text.to_lowercase();
    let wanted: Vec<&str> = match body.get("blocklistNames") {
        None => Vec::new(),
        Some(Value::Array(n)) => n.iter().filter_map(Value::as_str).collect(),
        Some(_) => return invalid("blocklistNames must be an array."),
    };
    for name in &wanted {
        if !cfg.blocklists.iter().any(|(n, _)| n == name) {
            return error(404, "NotFound", &format!("Blocklist {name} is not found."));
        }
    }
    let matches: Vec<Value> = cfg
        .blocklists
        .iter()
        .enumerate()
        .filter(|(_, (name, item))| {
            wanted.contains(&name.as_str()) && lower.contains(&item.to_lowercase())
        })
        .map(|(i, (name, item))| {
            json!({"blocklistName": name, "blocklistItemId": format!("item-{i}"), "blocklistItemText": item})
        })
        .collect();
    let halt = body
        .get("haltOnBlocklistHit")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let analysis: Vec<Value> = if halt && !matches.is_empty() {
        Vec::new()
    } else {
        categories
            .iter()
            .map(|c| {
                let s = cfg
                    .severities
                    .iter()
                    .filter(|(m, cat, _)| cat == c && lower.contains(&m.to_lowercase()))
                    .map(|(_, _, s)| *s)
                    .max()
                    .unwrap_or(0);
                let s = if eight { s } else { s - s % 2 };
                json!({"category": c, "severity": s})
            })
            .collect()
    };
    Reply::json(
        200,
        &json!({"blocklistsMatch": matches, "categoriesAnalysis": analysis}),
    )
}

fn protected(cfg: &ContentSafetyConfig, body: &Map<String, Value>) -> Reply {
    let Some(text) = body.get("text").and_then(Value::as_str) else {
        return invalid("text is required.");
    };
    let n = chars(text);
    if !(110..=1_000).contains(&n) {
        return invalid("The length of text must be between 110 and 1000 characters.");
    }
    Reply::json(
        200,
        &json!({"protectedMaterialAnalysis": {"detected": contains_any(text, &cfg.protected_markers)}}),
    )
}
