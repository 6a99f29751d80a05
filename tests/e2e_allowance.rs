//! Issue 23, end to end through Envoy with 2 workers: the learned completion allowance
//! (src/allowance.rs). With a 1,000-token budget and ~150-token requests that set no
//! `max_tokens`, the fixed 1,024-token allowance (cut to the limit) reserved the whole budget,
//! so one request was admitted; once the workload's answers have taught the allowance, the
//! budget admits the requests that fit, `x-ratelimit-remaining-tokens` tells the truth, and 20
//! concurrent requests at the edge still consume no more than the budget.
//!
//! The stand-in's answers are 12 tokens; a request's real cost is its prompt (3 + the words of
//! its message) plus 12. The estimate is ceil(body bytes / 4) plus the allowance, which the
//! learned 12-token answers make the allowance's floor (16).

mod common;

use azure_standin::{StandIn, StandInConfig};
use common::{client, Cluster, Envoy, EnvoyOptions};
use serde_json::{json, Value};

const BUDGET: u64 = 1000;

async fn setup(rate_limits: Value) -> (StandIn, Envoy) {
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    let mut o = EnvoyOptions::new(json!({
        "credentials": common::standin_credentials(&standin.tenant_id()),
        "backends": {"aoai": {"kind": "azure_openai", "host": "r.openai.azure.com", "api_version": "2024-10-21", "credential": "main"}},
        "models": {"gpt-4o": {"backend": "aoai", "deployment": "gpt-4o-prod"}},
        "rate_limits": rate_limits
    }));
    o.clusters = ["entra", "aoai"]
        .iter()
        .map(|n| Cluster::new(*n, standin.port()))
        .collect();
    o.backend_routes = vec!["aoai".into()];
    o.concurrency = 2;
    let envoy = Envoy::start(o).await;
    (standin, envoy)
}

/// A chat of `words` four-byte words, with `max_tokens` if given.
fn chat(words: usize, max_tokens: Option<u64>) -> Value {
    let mut body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": vec!["abc"; words].join(" ")}]});
    if let Some(m) = max_tokens {
        body["max_tokens"] = json!(m);
    }
    body
}

fn bytes(body: &Value) -> u64 {
    serde_json::to_vec(body).unwrap().len() as u64
}

/// The stand-in's real usage of `chat(words, _)` without a smaller `max_tokens`.
fn real(words: usize) -> u64 {
    3 + words as u64 + 12
}

async fn post(envoy: &Envoy, body: &Value) -> reqwest::Response {
    client()
        .post(envoy.url("/v1/chat/completions"))
        .json(body)
        .send()
        .await
        .unwrap()
}

/// The workload's normal traffic teaches the allowance: four small chats with a `max_tokens`
/// their answers stay below. Returns what they cost.
async fn warm_up(envoy: &Envoy) -> u64 {
    let small = chat(2, Some(64));
    for _ in 0..4 {
        let resp = post(envoy, &small).await;
        assert_eq!(resp.status(), 200);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["usage"]["total_tokens"], real(2));
    }
    4 * real(2)
}

/// Sends six ~150-token requests without `max_tokens`, one after the other; the statuses, and
/// the `x-ratelimit-remaining-tokens` of the first.
async fn six_without_max_tokens(envoy: &Envoy) -> (Vec<u16>, Option<u64>) {
    let big = chat(138, None);
    let mut statuses = Vec::new();
    let mut first_remaining = None;
    for _ in 0..6 {
        let resp = post(envoy, &big).await;
        statuses.push(resp.status().as_u16());
        if first_remaining.is_none() {
            first_remaining = common::header_u64(&resp, "x-ratelimit-remaining-tokens");
        }
        let _ = resp.bytes().await;
    }
    (statuses, first_remaining)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_learned_allowance_admits_the_requests_that_fit() {
    let (_s, envoy) = setup(json!({"default": {"tokens_per_day": BUDGET}})).await;
    let spent = warm_up(&envoy).await;
    let big = chat(138, None);
    assert_eq!(real(138), 153, "~150 tokens each");
    let (statuses, remaining) = six_without_max_tokens(&envoy).await;
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    assert!(admitted >= 5, "at least 5 of 6 admitted: {statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 403),
        "{statuses:?}"
    );
    // The first answer's header: the budget less what was spent and this request's own
    // reservation (its prompt estimate and the learned allowance, the floor of 16).
    let reservation = bytes(&big).div_ceil(4) + 16;
    assert_eq!(remaining, Some(BUDGET - spent - reservation));

    // The same traffic with the allowance pinned: each reserves the whole budget.
    let (_s, pinned) = setup(json!({
        "learn_completion_reserve": false,
        "default": {"tokens_per_day": BUDGET}
    }))
    .await;
    warm_up(&pinned).await;
    let (statuses, remaining) = six_without_max_tokens(&pinned).await;
    assert_eq!(
        statuses, [403; 6],
        "the spent warm-up leaves no room for 1,000"
    );
    assert_eq!(remaining, Some(BUDGET - 4 * real(2)));
    let (_s, pinned) = setup(json!({
        "default": {"tokens_per_day": BUDGET, "learn_completion_reserve": false}
    }))
    .await;
    let (statuses, remaining) = six_without_max_tokens(&pinned).await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "a policy can pin it too: {statuses:?}"
    );
    assert_eq!(
        remaining,
        Some(0),
        "the fixed allowance reserved the budget"
    );
}

/// 20 concurrent requests without `max_tokens` at the edge of a budget the allowance was
/// learned for: they are admitted while their reservations fit, and what they consume stays
/// within the budget (their answers are no longer than the learned allowance).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_requests_at_the_edge_stay_within_the_budget() {
    let (standin, envoy) = setup(json!({"default": {"tokens_per_day": BUDGET}})).await;
    let spent = warm_up(&envoy).await;
    let big = chat(138, None);
    let reservation = bytes(&big).div_ceil(4) + 16;
    let sends = (0..20).map(|_| post(&envoy, &big));
    let responses = futures_util::future::join_all(sends).await;
    let mut admitted = 0u64;
    for r in responses {
        match r.status().as_u16() {
            200 => {
                admitted += 1;
                let _ = r.bytes().await;
            }
            403 => {}
            s => panic!("status {s}"),
        }
    }
    // Admitted while their reservations fit: at least what fits at once; one more when
    // enough of the first ones settled (each gives back what its reservation exceeded its
    // cost by) before the last arrived.
    let at_once = (BUDGET - spent) / reservation;
    assert!(
        (at_once..=at_once + 1).contains(&admitted),
        "admitted {admitted}, {at_once} fit at once"
    );
    assert_eq!(
        standin.count(azure_standin::EndpointKind::DataPlane) as u64,
        4 + admitted
    );
    // What the window holds now: a probe's remaining less its own reservation.
    let probe = chat(1, Some(1));
    let resp = post(&envoy, &probe).await;
    assert_eq!(resp.status(), 200);
    let remaining = common::header_u64(&resp, "x-ratelimit-remaining-tokens").unwrap();
    let used = BUDGET - remaining - (bytes(&probe).div_ceil(4) + 1);
    assert_eq!(used, spent + admitted * real(138));
    assert!(used <= BUDGET, "consumed {used} of {BUDGET}");
}
