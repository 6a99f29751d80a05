use super::*;
use crate::guard::config::{Guardrails, RawGuardrails};
use serde_json::Value;

fn policy(v: Value) -> Policy {
    let raw: RawGuardrails = serde_json::from_value(json!({
        "content_safety": {"cluster": "cs", "host": "cs.cognitiveservices.azure.com", "api_key_env": "K"},
        "default": v
    }))
    .unwrap();
    let g = Guardrails::from_raw(&raw, "guardrails", |_| None).unwrap();
    (**g.policy("w").unwrap()).clone()
}

fn bodies(calls: &[Call], api: Api) -> Vec<Value> {
    calls
        .iter()
        .filter(|c| c.api == api)
        .map(|c| serde_json::from_str(&c.body).unwrap())
        .collect()
}

#[test]
fn split_respects_limits_and_words() {
    let text = "word ".repeat(3000);
    let parts = split(&text, 1000);
    assert!(parts.iter().all(|p| p.chars().count() <= 1000));
    assert_eq!(parts.concat(), text);
    assert!(parts[..parts.len() - 1].iter().all(|p| p.ends_with(' ')));
    // No whitespace: hard cuts on character boundaries.
    let cjk = "日".repeat(2500);
    let parts = split(&cjk, 1000);
    assert_eq!(
        parts.iter().map(|p| p.chars().count()).collect::<Vec<_>>(),
        [1000, 1000, 500]
    );
    assert!(split("", 10).is_empty());
    assert_eq!(split("abc", 10), ["abc"]);
}

#[test]
fn prompt_calls_stay_within_the_documented_limits() {
    let p = policy(
        json!({"prompt": {"prompt_shields": "block", "categories": {"Hate": 2, "Violence": 5},
                                     "blocklists": ["corp"]}}),
    );
    let text = PromptText {
        user: vec!["u".repeat(15_000)],
        documents: (0..7).map(|i| format!("doc{i} ").repeat(500)).collect(),
    };
    let calls = prompt_calls(&p, &text);
    let shields = bodies(&calls, Api::ShieldPrompt);
    for s in &shields {
        assert!(s["userPrompt"].as_str().unwrap().chars().count() <= MAX_ANALYZE_CHARS);
        let docs = s["documents"].as_array().map_or(&[][..], Vec::as_slice);
        assert!(docs.len() <= MAX_DOCUMENTS);
        let chars: usize = docs
            .iter()
            .map(|d| d.as_str().unwrap().chars().count())
            .sum();
        assert!(chars <= MAX_DOCUMENT_CHARS);
    }
    let all_docs: usize = shields
        .iter()
        .filter_map(|s| s["documents"].as_array())
        .map(Vec::len)
        .sum();
    assert_eq!(all_docs, 7, "every document is shielded once: {shields:?}");
    let analyses = bodies(&calls, Api::AnalyzeText);
    assert!(analyses.len() >= 4);
    for a in &analyses {
        assert!(a["text"].as_str().unwrap().chars().count() <= MAX_ANALYZE_CHARS);
        assert_eq!(a["categories"], json!(["Hate", "Violence"]));
        assert_eq!(
            a["outputType"], "EightSeverityLevels",
            "an odd threshold needs 8 levels"
        );
        assert_eq!(a["blocklistNames"], json!(["corp"]));
    }
    assert_eq!(
        Api::AnalyzeText.path("2024-09-01"),
        "/contentsafety/text:analyze?api-version=2024-09-01"
    );
}

#[test]
fn answers_are_read_under_the_policy() {
    let p = policy(
        json!({"prompt": {"prompt_shields": "log", "categories": {"Hate": 4}, "blocklists": ["corp"]},
                          "answer": {"protected_material": "block"}}),
    );
    let ok = |api, body: Value| {
        read(
            api,
            Direction::Prompt,
            &p,
            Some(200),
            body.to_string().as_bytes(),
        )
    };
    let Outcome::Checked(f) = ok(
        Api::ShieldPrompt,
        json!({"userPromptAnalysis": {"attackDetected": true},
                                                             "documentsAnalysis": [{"attackDetected": false}, {"attackDetected": true}]}),
    ) else {
        panic!()
    };
    assert_eq!(
        f.iter().map(Finding::label).collect::<Vec<_>>(),
        [
            "prompt.prompt_shields.jailbreak.logged",
            "prompt.prompt_shields.indirect_attack.logged"
        ]
    );
    let Outcome::Checked(f) = ok(
        Api::AnalyzeText,
        json!({"categoriesAnalysis": [
        {"category": "Hate", "severity": 4}, {"category": "Violence", "severity": 6}, {"category": "Hate"}],
        "blocklistsMatch": [{"blocklistName": "corp", "blocklistItemId": "1", "blocklistItemText": "x"}]}),
    ) else {
        panic!()
    };
    assert_eq!(
        f.iter().map(Finding::label).collect::<Vec<_>>(),
        [
            "prompt.text_analysis.Hate.blocked",
            "prompt.blocklist.corp.blocked"
        ],
        "Violence has no threshold"
    );
    let Outcome::Checked(f) = ok(
        Api::AnalyzeText,
        json!({"categoriesAnalysis": [{"category": "Hate", "severity": 2}]}),
    ) else {
        panic!()
    };
    assert!(f.is_empty());
    let Outcome::Checked(f) = read(
        Api::ProtectedMaterial,
        Direction::Answer,
        &p,
        Some(200),
        br#"{"protectedMaterialAnalysis":{"detected":true}}"#,
    ) else {
        panic!()
    };
    assert_eq!(
        f[0].label(),
        "answer.protected_material.protected_material.blocked"
    );
    assert_eq!(
        read(Api::AnalyzeText, Direction::Prompt, &p, None, b""),
        Outcome::Failed("unreachable", None)
    );
    assert_eq!(
        read(
            Api::AnalyzeText,
            Direction::Prompt,
            &p,
            Some(504),
            b"upstream request timeout"
        ),
        Outcome::Failed("timeout", None),
        "Envoy's own answer to a callout past its timeout"
    );
    assert_eq!(
        read(
            Api::AnalyzeText,
            Direction::Prompt,
            &p,
            Some(200),
            b"<html>"
        ),
        Outcome::Failed("unreadable", None)
    );
    assert_eq!(
        read(
            Api::AnalyzeText,
            Direction::Prompt,
            &p,
            Some(400),
            br#"{"error":{"code":"InvalidRequestBody","message":"The text is too long."}}"#
        ),
        Outcome::Failed("rejected", Some("InvalidRequestBody".into()))
    );
    assert_eq!(
        read(Api::ShieldPrompt, Direction::Prompt, &p, Some(429), b""),
        Outcome::Failed("throttled", None)
    );
    assert_eq!(
        read(Api::ShieldPrompt, Direction::Prompt, &p, Some(401), b"{}"),
        Outcome::Failed("unauthorized", None)
    );
}

#[test]
fn merge_keeps_one_finding_per_check() {
    let f = |c| Finding {
        direction: Direction::Prompt,
        check: c,
        decision: Decision::Blocked,
    };
    let mut all = vec![f(Check::Category(Category::Hate, 4))];
    merge(
        &mut all,
        vec![
            f(Check::Category(Category::Hate, 6)),
            f(Check::Jailbreak),
            f(Check::Jailbreak),
        ],
    );
    assert_eq!(
        all,
        vec![f(Check::Category(Category::Hate, 6)), f(Check::Jailbreak)]
    );
}

#[test]
fn answer_calls_respect_protected_material_bounds() {
    let p = policy(json!({"answer": {"protected_material": "block", "categories": {"Sexual": 2}}}));
    assert!(answer_calls(&p, "   ").is_empty());
    let short = answer_calls(&p, "short answer");
    assert_eq!(
        short.iter().map(|c| c.api).collect::<Vec<_>>(),
        [Api::AnalyzeText],
        "under 110 characters"
    );
    let long = "x".repeat(2050);
    let calls = answer_calls(&p, &long);
    let protected = bodies(&calls, Api::ProtectedMaterial);
    assert_eq!(protected.len(), 3);
    for b in &protected {
        let n = b["text"].as_str().unwrap().chars().count();
        assert!(
            (MIN_PROTECTED_CHARS..=MAX_PROTECTED_CHARS).contains(&n),
            "{n}"
        );
    }
}
