//! Issue 26, end to end: guardrails through a real Envoy, called by the official OpenAI and
//! Anthropic SDKs (tests/sdk/guardrails.py). Local rules: PII masked before the prompt leaves
//! (the stand-in Azure never sees the value), deny patterns and blocking detectors refused with
//! Azure's content-filter 400 (the SDKs' `BadRequestError`), nothing reserved or sent for a
//! refused prompt, exempt workloads untouched, metrics and the usage record naming the rule.

mod common;

use azure_llm_filter::metrics;
use azure_standin::{EndpointKind, Fault, RecordedRequest, StandInConfig};
use common::guardrails::*;
use common::sdk::{ok, raised};
use serde_json::{json, Value};

fn local_rules() -> Value {
    json!({
        "default": {
            "pii": {"email": "mask", "payment_card": "mask", "us_ssn": "block"},
            "deny": [{"name": "project-falcon", "pattern": "(?i)project\\s+falcon"}]
        },
        "workloads": {"exempt": {}}
    })
}

/// PII is masked before the prompt leaves, for every API and both SDKs; the stream and the
/// answers are what Azure returned; blocking rules refuse with Azure's content-filter shape
/// and nothing reaches Azure; exempt workloads are untouched.
#[tokio::test]
async fn local_rules_mask_and_block_through_the_sdks() {
    let gw = gateway(local_rules()).await;
    let cases = [
        "oai_pii_masked",
        "oai_pii_stream",
        "oai_deny_blocked",
        "oai_ssn_blocked",
        "oai_ssn_in_tool_result",
        "resp_pii_masked",
        "emb_pii_masked",
        "claude_pii_masked",
        "claude_ssn_blocked",
        "exempt_pii_passes",
    ];
    let r = run(&gw, &cases).await;

    // Masked: the SDK gets Azure's answer; Azure never saw the values.
    assert_eq!(ok(&r, "oai_pii_masked")["content"], ANSWER);
    assert_eq!(ok(&r, "oai_pii_stream")["content"], ANSWER);
    assert!(ok(&r, "resp_pii_masked")["text"]
        .as_str()
        .unwrap()
        .starts_with("This is"));
    assert_eq!(ok(&r, "emb_pii_masked")["count"], 1);
    assert_eq!(ok(&r, "claude_pii_masked")["stop_reason"], "end_turn");
    for case in [
        "oai_pii_masked",
        "oai_pii_stream",
        "resp_pii_masked",
        "emb_pii_masked",
        "claude_pii_masked",
    ] {
        let body = one_upstream(&gw, case);
        assert!(
            !body.contains(EMAIL) && !body.contains("jane.doe"),
            "{case}: {body}"
        );
        assert!(
            !body.contains(CARD) && !body.contains("4111"),
            "{case}: {body}"
        );
        assert!(body.contains("[REDACTED:"), "{case}: {body}");
    }
    let masked = one_upstream(&gw, "oai_pii_masked");
    assert!(
        masked.contains("mail [REDACTED:email] about card [REDACTED:payment_card]"),
        "{masked}"
    );
    let claude = one_upstream(&gw, "claude_pii_masked");
    assert!(
        claude.contains("operator [REDACTED:email]"),
        "system prompt: {claude}"
    );

    // Blocked: Azure's content-filter 400, the rule named, nothing sent.
    let (class, status, body) = raised(&r, "oai_deny_blocked");
    assert_eq!((class, status), ("BadRequestError", 400), "{body}");
    assert_eq!(body["code"], "content_filter", "{body}");
    assert_eq!(body["param"], "prompt", "{body}");
    assert_eq!(body["innererror"]["code"], "ResponsibleAIPolicyViolation");
    let details = &body["innererror"]["content_filter_result"]["custom_blocklists"];
    assert_eq!(details["filtered"], true, "{body}");
    assert_eq!(details["details"][0]["id"], "deny.project-falcon", "{body}");
    assert!(
        !body.to_string().contains("FALCON"),
        "the matched text is never echoed: {body}"
    );
    for case in ["oai_ssn_blocked", "oai_ssn_in_tool_result"] {
        let (class, status, body) = raised(&r, case);
        assert_eq!((class, status), ("BadRequestError", 400), "{case}: {body}");
        let details = &body["innererror"]["content_filter_result"]["custom_blocklists"];
        assert_eq!(details["details"][0]["id"], "pii.us_ssn", "{case}: {body}");
        assert!(!body.to_string().contains(SSN), "{case}: {body}");
    }
    let (class, status, body) = raised(&r, "claude_ssn_blocked");
    assert_eq!((class, status), ("BadRequestError", 400), "{body}");
    assert_eq!(body["type"], "error", "Anthropic's shape: {body}");
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("content_filter: ") && message.contains("pii us_ssn"),
        "{message}"
    );
    for case in [
        "oai_deny_blocked",
        "oai_ssn_blocked",
        "oai_ssn_in_tool_result",
        "claude_ssn_blocked",
    ] {
        assert!(upstream_of(&gw, case).is_empty(), "{case} reached Azure");
    }

    // The exempt workload's prompt passes as sent.
    assert_eq!(ok(&r, "exempt_pii_passes")["content"], ANSWER);
    assert!(one_upstream(&gw, "exempt_pii_passes").contains(EMAIL));

    // A refused prompt reserves nothing: every admitted request went to Azure.
    let sent = gw.standin.count(EndpointKind::DataPlane) as u64;
    assert_eq!(stat(&gw, &metrics::ratelimit("allowed")).await, sent);
    assert_eq!(sent, 6);

    // Metrics name the rule and the action.
    for (name, n) in [
        (guardrail("pii", "email", "masked"), 5),
        (guardrail("pii", "payment_card", "masked"), 2),
        (guardrail("pii", "us_ssn", "blocked"), 3),
        (guardrail("deny", "project-falcon", "blocked"), 1),
    ] {
        assert_eq!(stat(&gw, &name).await, n, "{name}");
    }
    // The access log's usage record names rules, never values.
    let logs = gw.envoy.logs();
    assert!(
        !logs.contains(EMAIL) && !logs.contains(SSN),
        "a value reached Envoy's log"
    );
    assert!(
        logs.contains(" guardrail=prompt.pii.email.masked,prompt.pii.payment_card.masked\n"),
        "{logs}"
    );
    assert!(
        logs.contains("guardrail=prompt.deny.project-falcon.blocked\n"),
        "{logs}"
    );
}

fn service_policies(auth: Value) -> Value {
    json!({
        "content_safety": content_safety(auth),
        "default": {
            "prompt": {"prompt_shields": "block", "categories": {"Hate": 4, "Violence": 4},
                       "blocklists": ["corp-terms"]},
            "pii": {"email": "mask"},
            "timeout_ms": 400
        },
        "workloads": {
            "lenient": {"prompt": {"prompt_shields": "log", "categories": {"Violence": 2}, "action": "log"}},
            "open": {"prompt": {"prompt_shields": "block"}, "failure_mode": "fail_open", "timeout_ms": 400}
        }
    })
}

fn content_filter_result(body: &Value) -> &Value {
    assert_eq!(body["code"], "content_filter", "{body}");
    assert_eq!(
        body["innererror"]["code"], "ResponsibleAIPolicyViolation",
        "{body}"
    );
    &body["innererror"]["content_filter_result"]
}

/// Content Safety on prompts, authenticated with the shared Entra token: attacks in the user
/// prompt (both SDKs) and in tool results, categories at or above their threshold and
/// blocklists are refused in Azure's content-filter shape before anything reaches Azure, and
/// their reservations are released; what passes reached Content Safety masked; `log`
/// policies let it through; long prompts are split within the service's limits; a failing
/// or slow service fails closed (503) or open, per workload.
#[tokio::test]
async fn content_safety_checks_prompts() {
    let gw = gateway(service_policies(json!({"credential": "main"}))).await;
    token_ready(&gw).await;
    let cases = [
        "cs_jailbreak_blocked",
        "cs_claude_jailbreak",
        "cs_indirect_blocked",
        "cs_violence_blocked",
        "cs_blocklist_blocked",
        "cs_mild_passes",
        "cs_stream_passes",
        "cs_lenient_logs",
        "cs_long_prompt_jailbreak",
        "cs_long_prompt_clean",
    ];
    let r = run(&gw, &cases).await;

    let (class, status, body) = raised(&r, "cs_jailbreak_blocked");
    assert_eq!((class, status), ("BadRequestError", 400), "{body}");
    let result = content_filter_result(body);
    assert_eq!(
        result["jailbreak"],
        json!({"filtered": true, "detected": true}),
        "{body}"
    );
    let (class, status, body) = raised(&r, "cs_claude_jailbreak");
    assert_eq!((class, status), ("BadRequestError", 400), "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("jailbreak"),
        "{body}"
    );
    let (_, status, body) = raised(&r, "cs_indirect_blocked");
    assert_eq!(status, 400);
    assert_eq!(
        content_filter_result(body)["indirect_attack"]["filtered"],
        true,
        "{body}"
    );
    let (_, status, body) = raised(&r, "cs_violence_blocked");
    assert_eq!(status, 400);
    assert_eq!(
        content_filter_result(body)["violence"],
        json!({"filtered": true, "severity": "high"}),
        "{body}"
    );
    let (_, status, body) = raised(&r, "cs_blocklist_blocked");
    assert_eq!(status, 400);
    assert_eq!(
        content_filter_result(body)["custom_blocklists"]["details"][0]["id"],
        "corp-terms",
        "{body}"
    );
    let (_, status, _) = raised(&r, "cs_long_prompt_jailbreak");
    assert_eq!(
        status, 400,
        "the attack at the end of a long prompt is found"
    );
    let blocked = [
        "cs_jailbreak_blocked",
        "cs_claude_jailbreak",
        "cs_indirect_blocked",
        "cs_violence_blocked",
        "cs_blocklist_blocked",
        "cs_long_prompt_jailbreak",
    ];
    for case in blocked {
        assert!(upstream_of(&gw, case).is_empty(), "{case} reached Azure");
        assert!(
            !safety_calls(&gw, case).is_empty(),
            "{case} was not checked"
        );
    }

    for case in ["cs_mild_passes", "cs_lenient_logs", "cs_long_prompt_clean"] {
        assert_eq!(ok(&r, case)["content"], ANSWER, "{case}");
        one_upstream(&gw, case);
    }
    assert_eq!(ok(&r, "cs_stream_passes")["content"], ANSWER);
    // Content Safety sees the masked prompt, with the shared Entra token.
    let checked = safety_calls(&gw, "cs_mild_passes");
    assert_eq!(checked.len(), 2, "shieldPrompt and analyze: {checked:#?}");
    for c in &checked {
        let body = String::from_utf8_lossy(&c.body);
        assert!(
            !body.contains(EMAIL) && body.contains("[REDACTED:email]"),
            "{body}"
        );
        let token = c
            .header("authorization")
            .unwrap()
            .strip_prefix("Bearer ")
            .unwrap();
        assert!(gw.standin.verify_access_token(token).is_ok());
        assert_eq!(c.header("ocp-apim-subscription-key"), None);
        assert_eq!(
            c.header(":authority").or(c.header("host")),
            Some("contoso-safety.cognitiveservices.azure.com")
        );
    }
    let analyze = checked
        .iter()
        .find(|c| c.path == "/contentsafety/text:analyze")
        .unwrap();
    assert_eq!(analyze.query, "api-version=2024-09-01");
    assert_eq!(
        analyze.body_json().unwrap()["categories"],
        json!(["Hate", "Violence"])
    );
    // Long prompts: split within 10,000 characters (the stand-in refuses more).
    let long = safety_calls(&gw, "cs_long_prompt_clean");
    assert_eq!(
        long.iter()
            .filter(|c| c.path.ends_with("text:analyze"))
            .count(),
        3,
        "25,000 characters in three analyses"
    );
    assert!(long.iter().all(|c| c.outcome_status == 200), "{long:#?}");

    // Refused after admission: each reservation went back; the passing ones were charged.
    let sent = gw.standin.count(EndpointKind::DataPlane) as u64;
    assert_eq!(
        stat(&gw, &metrics::ratelimit("allowed")).await,
        sent + blocked.len() as u64
    );
    assert_eq!(
        stat(&gw, &metrics::ratelimit("charge_released")).await,
        blocked.len() as u64
    );
    for (name, n) in [
        (
            metrics::guardrail("prompt", "prompt_shields", "jailbreak", "blocked"),
            3,
        ),
        (
            metrics::guardrail("prompt", "prompt_shields", "indirect_attack", "blocked"),
            1,
        ),
        (
            metrics::guardrail("prompt", "prompt_shields", "jailbreak", "logged"),
            1,
        ),
        (
            metrics::guardrail("prompt", "text_analysis", "Violence", "blocked"),
            1,
        ),
        (
            metrics::guardrail("prompt", "blocklist", "corp-terms", "blocked"),
            1,
        ),
    ] {
        assert_eq!(stat(&gw, &name).await, n, "{name}");
    }
    let prometheus = common::client()
        .get(gw.envoy.admin_url("/stats/prometheus"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        prometheus
            .contains("guardrail_callout_milliseconds_bucket{result=\"ok\",api=\"analyze_text\""),
        "callout latency histogram: {}",
        prometheus
            .lines()
            .filter(|l| l.contains("guardrail"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // The service fails: fail_closed refuses with 503, fail_open lets the request through.
    gw.standin.set_fault(
        EndpointKind::ContentSafety,
        Some(Fault::Status {
            status: 500,
            body: r#"{"error":{"code":"InternalServerError","message":"boom"}}"#.into(),
        }),
    );
    let r = run(&gw, &["cs_fail_closed", "cs_fail_open"]).await;
    let (class, status, body) = raised(&r, "cs_fail_closed");
    assert_eq!((class, status), ("InternalServerError", 503), "{body}");
    assert_eq!(body["code"], "guardrail_unavailable", "{body}");
    assert_eq!(ok(&r, "cs_fail_open")["content"], ANSWER);
    // Slower than the policy's 400 ms: a timeout, the same two ways.
    gw.standin.set_fault(
        EndpointKind::ContentSafety,
        Some(Fault::Delay(std::time::Duration::from_millis(1500))),
    );
    let started = std::time::Instant::now();
    let r = run(&gw, &["cs_timeout_closed", "cs_timeout_open"]).await;
    gw.standin.clear_faults();
    let (_, status, body) = raised(&r, "cs_timeout_closed");
    assert_eq!(status, 503, "{body}");
    assert_eq!(ok(&r, "cs_timeout_open")["content"], ANSWER);
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    for case in ["cs_fail_closed", "cs_timeout_closed"] {
        assert!(upstream_of(&gw, case).is_empty(), "{case} reached Azure");
    }
    for (name, n) in [
        (
            metrics::guardrail("prompt", "content_safety", "error", "failed_closed"),
            1,
        ),
        (
            metrics::guardrail("prompt", "content_safety", "error", "failed_open"),
            1,
        ),
        (
            metrics::guardrail("prompt", "content_safety", "timeout", "failed_closed"),
            1,
        ),
        (
            metrics::guardrail("prompt", "content_safety", "timeout", "failed_open"),
            1,
        ),
    ] {
        assert_eq!(stat(&gw, &name).await, n, "{name}");
    }
}

/// A resource key from the environment (`api_key_env`, passed with `host_env_keys`) instead
/// of a token: sent as `Ocp-Apim-Subscription-Key`, never in Envoy's config or logs.
#[tokio::test]
async fn content_safety_with_a_key_from_the_environment() {
    let gw = gateway_with(
        service_policies(json!({"api_key_env": "CONTENT_SAFETY_KEY"})),
        vec![("CONTENT_SAFETY_KEY".into(), CS_KEY.into())],
    )
    .await;
    let r = run(&gw, &["cs_jailbreak_blocked", "cs_mild_passes"]).await;
    assert_eq!(raised(&r, "cs_jailbreak_blocked").1, 400);
    assert_eq!(ok(&r, "cs_mild_passes")["content"], ANSWER);
    for c in safety_calls(&gw, "cs_mild_passes") {
        assert_eq!(c.header("ocp-apim-subscription-key"), Some(CS_KEY));
        assert_eq!(c.header("authorization"), None);
    }
    assert!(!gw.envoy.logs().contains(CS_KEY) && !gw.envoy.config_yaml().contains(CS_KEY));
}

/// Content Safety on answers: a flagged JSON answer is replaced by the content-filter 400
/// before any of it is released (and charged: Azure billed it); a flagged stream is checked in
/// windows as it passes and ended by an error event the OpenAI and Anthropic SDKs raise on,
/// the text before the verdict having passed; clean answers pass whole; a failing service
/// fails closed on answers too.
#[tokio::test]
async fn content_safety_checks_answers() {
    let mut cfg = StandInConfig {
        // 12 chunks, 40 ms apart: the first window's verdict comes mid-stream.
        chunk_delay_ms: 40,
        ..StandInConfig::default()
    };
    cfg.content_safety
        .severities
        .push(("deterministic answer".into(), "Violence".into(), 4));
    let policies = json!({
        "content_safety": content_safety(json!({"credential": "main"})),
        "default": {"answer": {"categories": {"Violence": 4}, "stream_window_chars": 30}, "timeout_ms": 1000},
        "workloads": {"lenient": {"answer": {"categories": {"Hate": 4}}}}
    });
    let gw = gateway_of(cfg, policies, Vec::new()).await;
    token_ready(&gw).await;
    let cases = [
        "ans_json_blocked",
        "ans_json_passes",
        "ans_claude_json_blocked",
        "ans_stream_blocked",
        "ans_stream_passes",
        "ans_responses_stream_blocked",
        "ans_claude_stream_blocked",
    ];
    let r = run(&gw, &cases).await;

    // JSON: the whole answer held, then refused.
    let (class, status, body) = raised(&r, "ans_json_blocked");
    assert_eq!((class, status), ("BadRequestError", 400), "{body}");
    assert_eq!(body["param"], "response", "{body}");
    assert_eq!(
        content_filter_result(body)["violence"],
        json!({"filtered": true, "severity": "medium"}),
        "{body}"
    );
    assert!(
        !body.to_string().contains("deterministic"),
        "nothing of the answer: {body}"
    );
    let (class, status, body) = raised(&r, "ans_claude_json_blocked");
    assert_eq!((class, status), ("BadRequestError", 400), "{body}");
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(ok(&r, "ans_json_passes")["content"], ANSWER);
    assert_eq!(ok(&r, "ans_stream_passes")["content"], ANSWER);

    // Streams: cut by an error event the SDKs raise on, after what passed before the verdict.
    for case in ["ans_stream_blocked", "ans_responses_stream_blocked"] {
        let v = ok(&r, case);
        assert_eq!(v["exception"], "APIError", "{case}: {v}");
        assert_eq!(v["body"]["code"], "content_filter", "{case}: {v}");
        let got = v["content"].as_str().unwrap();
        assert!(
            ANSWER.starts_with(got) && got.len() < ANSWER.len(),
            "{case}: {got:?}"
        );
    }
    let v = ok(&r, "ans_claude_stream_blocked");
    assert!(v["exception"].as_str().unwrap().ends_with("Error"), "{v}");
    assert_eq!(v["body"]["type"], "error", "{v}");
    assert!(
        v["body"]["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("content_filter: "),
        "{v}"
    );
    let got = v["content"].as_str().unwrap();
    assert!(
        ANSWER.starts_with(got) && got.len() < ANSWER.len(),
        "{got:?}"
    );

    // Every answer reached the caller's gateway from Azure, and each was charged.
    let sent = gw.standin.count(EndpointKind::DataPlane) as u64;
    assert_eq!(sent, cases.len() as u64);
    let charged = stat(&gw, &metrics::ratelimit("charged_usage")).await
        + stat(&gw, &metrics::ratelimit("charged_estimate")).await;
    assert_eq!(charged, sent, "a refused answer is charged");
    assert_eq!(stat(&gw, &metrics::ratelimit("charge_released")).await, 0);
    assert_eq!(
        stat(
            &gw,
            &metrics::guardrail("answer", "text_analysis", "Violence", "blocked")
        )
        .await,
        5
    );
    // The answers' text reached Content Safety, in windows within the limits.
    let windows: Vec<RecordedRequest> = gw.standin.requests_of(EndpointKind::ContentSafety);
    assert!(
        windows.iter().all(|w| w.outcome_status == 200),
        "{windows:#?}"
    );

    // The service fails: answers fail closed too.
    gw.standin.set_fault(
        EndpointKind::ContentSafety,
        Some(Fault::Status {
            status: 503,
            body: "{}".into(),
        }),
    );
    let r = run(&gw, &["ans_fail_closed_json", "ans_fail_closed_stream"]).await;
    gw.standin.clear_faults();
    let (_, status, body) = raised(&r, "ans_fail_closed_json");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "guardrail_unavailable", "{body}");
    let v = ok(&r, "ans_fail_closed_stream");
    assert_eq!(v["body"]["code"], "guardrail_unavailable", "{v}");
}
