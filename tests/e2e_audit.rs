//! Audit of how the features interact, end to end through Envoy: what a caller could do with
//! headers Envoy itself acts on.

mod common;

use azure_standin::{EndpointKind, Fault, StandIn, StandInConfig};
use common::{client, Cluster, Envoy, EnvoyOptions};
use serde_json::{json, Value};
use std::time::Duration;

fn plugin_config(standin: &StandIn) -> Value {
    json!({
        "credentials": common::standin_credentials(&standin.tenant_id()),
        "backends": {
            "aoai": {"kind": "azure_openai", "host": "r.openai.azure.com", "api_version": "2024-10-21", "credential": "main"}
        },
        "models": {"gpt-4o": {"backend": "aoai", "deployment": "gpt-4o-prod"}},
        "rate_limits": {"default": {"tokens_per_day": 100_000}}
    })
}

async fn setup() -> (StandIn, Envoy) {
    setup_with_route_timeout(30).await
}

async fn setup_with_route_timeout(route_timeout_secs: u64) -> (StandIn, Envoy) {
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    let mut o = EnvoyOptions::new(plugin_config(&standin));
    o.clusters = ["entra", "aoai"]
        .iter()
        .map(|n| Cluster::new(*n, standin.port()))
        .collect();
    o.backend_routes = vec!["aoai".into()];
    o.route_timeout_secs = route_timeout_secs;
    let envoy = Envoy::start(o).await;
    (standin, envoy)
}

/// Envoy's router retries, times out and shadows as `x-envoy-*` request headers say, for every
/// request it counts as internal. A caller that asks it to retry an answered request has Azure
/// serve (and bill) it several times while the filter charges one answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_caller_cannot_have_envoy_retry_an_answered_request() {
    let (standin, envoy) = setup().await;
    let body = json!({"model": "gpt-4o", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
    let resp = client()
        .post(envoy.url("/v1/chat/completions"))
        .header("x-envoy-retry-on", "retriable-status-codes,5xx")
        .header("x-envoy-retriable-status-codes", "200")
        .header("x-envoy-max-retries", "3")
        .header("x-envoy-upstream-rq-per-try-timeout-ms", "1")
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let _ = resp.bytes().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = standin.requests_of(EndpointKind::DataPlane);
    assert_eq!(status, 200);
    assert_eq!(
        seen.len(),
        1,
        "Azure served the request once, not once per caller-asked retry"
    );
    for r in &seen {
        for h in [
            "x-envoy-retry-on",
            "x-envoy-retriable-status-codes",
            "x-envoy-max-retries",
        ] {
            assert_eq!(r.header(h), None, "{h} reached Azure");
        }
    }
}

/// A request Azure received but Envoy gave up on (the route's timeout; a caller's
/// `x-envoy-upstream-rq-timeout-ms` is not honoured, the 504 below comes from the route's)
/// may still be billed by Azure: like a caller gone after the request was sent, it keeps its
/// reservation instead of being released as an Azure error.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_envoy_timed_out_after_sending_it_keeps_its_reservation() {
    let (standin, envoy) = setup_with_route_timeout(1).await;
    standin.push_fault(
        EndpointKind::DataPlane,
        Fault::Delay(Duration::from_secs(3)),
        1,
    );
    let body = json!({"model": "gpt-4o", "max_tokens": 300, "messages": [{"role": "user", "content": "a slow one"}]});
    let bytes = serde_json::to_vec(&body).unwrap().len() as u64;
    let each = bytes.div_ceil(4) + 300;
    let resp = client()
        .post(envoy.url("/v1/chat/completions"))
        .header("x-envoy-upstream-rq-timeout-ms", "300")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 504, "Envoy gave up waiting");
    let _ = resp.bytes().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        standin.count(EndpointKind::DataPlane),
        1,
        "Azure received it"
    );
    let probe = json!({"model": "gpt-4o", "max_tokens": 1, "messages": [{"role": "user", "content": "probe"}]});
    let probe_bytes = serde_json::to_vec(&probe).unwrap().len() as u64;
    let resp = client()
        .post(envoy.url("/v1/chat/completions"))
        .json(&probe)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let remaining = common::header_u64(&resp, "x-ratelimit-remaining-tokens").unwrap();
    let used = 100_000 - remaining - (probe_bytes.div_ceil(4) + 1);
    assert_eq!(
        used, each,
        "the timed-out request is charged its reservation"
    );
}
