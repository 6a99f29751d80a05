//! Global rate limits (issue 6, global mode), end to end: two Envoys share one workload's token
//! budget through one rate limit service (tests/rls: Limitador's rate limiter behind Limitador's
//! gRPC services), or through two RLS replicas keeping their counters in one Redis; another
//! workload is unaffected, and an RLS that cannot answer follows `failure_mode`. Since issue
//! 14 the check carries the request's estimate (`hits_addend`) and the charge what the answer
//! cost (src/rls/mod.rs has what each protocol makes of them).
//!

mod common;

use azure_rls::{Flavor, LimitSpec, RlsOptions, RlsServer};
use azure_standin::{EndpointKind, StandIn, StandInConfig};
use common::{client, free_port, Cluster, Envoy, EnvoyOptions};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const DOMAIN: &str = "azure-llm";
const KEY_A: &str = "key-of-team-a";
const KEY_B: &str = "key-of-team-b";

fn plugin_config(standin: &StandIn, failure_mode: &str) -> Value {
    json!({
        "credentials": common::standin_credentials(&standin.tenant_id()),
        "backends": {"aoai": {"kind": "azure_openai", "host": "r.openai.azure.com", "api_version": "2024-10-21", "credential": "main"}},
        "models": {"gpt-4o": {"backend": "aoai", "deployment": "gpt-4o-prod"}},
        "auth": {
            "api_keys": [
                {"sha256": common::hex(&Sha256::digest(KEY_A.as_bytes())), "workload": "team-a"},
                {"sha256": common::hex(&Sha256::digest(KEY_B.as_bytes())), "workload": "team-b"}
            ]
        },
        "rate_limits": {
            "global": {
                "cluster": "ratelimit",
                "domain": DOMAIN,
                "timeout_ms": 200,
                "failure_mode": failure_mode
            }
        }
    })
}

/// The Envoy cluster of the RLS (gRPC: HTTP/2 upstream).
fn rls_cluster(port: u16) -> Cluster {
    Cluster::grpc("ratelimit", port)
}

async fn envoy(standin: &StandIn, rls_port: u16, failure_mode: &str) -> Envoy {
    envoy_with(plugin_config(standin, failure_mode), standin, rls_port).await
}

async fn envoy_with(plugin: Value, standin: &StandIn, rls_port: u16) -> Envoy {
    let mut o = EnvoyOptions::new(plugin)
        .cluster("entra", standin.port())
        .backend("aoai", standin.port());
    o.clusters.push(rls_cluster(rls_port));
    Envoy::start(o).await
}

fn ask_body() -> Value {
    json!({"model": "gpt-4o", "max_tokens": 10, "messages": [{"role": "user", "content": "count my tokens please"}]})
}

/// The filter's estimate of a request: ceil(body bytes / 4) + max_tokens (src/estimate.rs).
fn estimate(body: &Value) -> u32 {
    let bytes = serde_json::to_vec(body).unwrap().len() as u32;
    bytes.div_ceil(4) + body["max_tokens"].as_u64().unwrap_or(0) as u32
}

async fn ask(envoy: &Envoy, key: &str) -> reqwest::Response {
    ask_with(envoy, key, &ask_body()).await
}

async fn ask_with(envoy: &Envoy, key: &str, body: &Value) -> reqwest::Response {
    client()
        .post(envoy.url("/v1/chat/completions"))
        .header("api-key", key)
        .json(body)
        .send()
        .await
        .unwrap()
}

/// Tokens of a 200 answer.
async fn tokens(resp: reqwest::Response) -> u64 {
    let body: Value = resp.json().await.unwrap();
    body["usage"]["total_tokens"].as_u64().unwrap()
}

#[tokio::test]
async fn two_envoys_share_one_workload_budget_and_other_workloads_are_unaffected() {
    const BUDGET: u64 = 60;
    let rls = RlsServer::start(vec![LimitSpec::per_workload(DOMAIN, BUDGET, 60)])
        .await
        .unwrap();
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    let one = envoy(&standin, rls.port(), "deny").await;
    let two = envoy(&standin, rls.port(), "deny").await;

    // team-a alternates between the two Envoys until refused.
    let mut charged = 0;
    let mut refused = None;
    for i in 0..20 {
        let envoy = if i % 2 == 0 { &one } else { &two };
        let resp = ask(envoy, KEY_A).await;
        if resp.status() == 429 {
            refused = Some(resp);
            break;
        }
        assert_eq!(resp.status(), 200);
        charged += tokens(resp).await;
    }
    let refused = refused.expect("team-a ran out of its budget");
    assert!(
        charged >= BUDGET,
        "refused only once the real usage, summed over both Envoys, reached the budget ({charged})"
    );
    assert!(
        charged < 2 * BUDGET,
        "the budget is shared, not one per Envoy ({charged})"
    );
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");

    // Both Envoys refuse team-a now, without asking Azure.
    let served = standin.count(EndpointKind::DataPlane);
    assert_eq!(ask(&one, KEY_A).await.status(), 429);
    assert_eq!(ask(&two, KEY_A).await.status(), 429);
    assert_eq!(standin.count(EndpointKind::DataPlane), served);

    // team-b has its own counter.
    assert_eq!(ask(&one, KEY_B).await.status(), 200);
    assert_eq!(ask(&two, KEY_B).await.status(), 200);

    // What the RLS saw: checks before (the estimate: Limitador's CheckRateLimit itself checks
    // 1 whatever hits_addend says), reports after with the real usage; no charge for refused
    // requests. Reports leave a moment after each answer (from the root context,
    // so that they outlive the request): wait for the last ones.
    let reported_for_a = |calls: &[azure_rls::RecordedCall]| -> u64 {
        calls
            .iter()
            .filter(|c| {
                c.method == "Report"
                    && c.descriptors[0].contains(&("workload".into(), "team-a".into()))
            })
            .map(|c| u64::from(c.hits_addend))
            .sum()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    let mut calls = rls.calls();
    while reported_for_a(&calls) != charged && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        calls = rls.calls();
    }
    assert_eq!(reported_for_a(&calls), charged);
    assert!(calls
        .iter()
        .filter(|c| c.method == "CheckRateLimit")
        .all(|c| c.hits_addend == estimate(&ask_body()) && c.domain == DOMAIN));
    assert_eq!(
        calls[0].descriptors,
        vec![
            vec![
                ("workload".to_string(), "team-a".to_string()),
                ("model".to_string(), "gpt-4o".to_string())
            ],
            vec![("workload".to_string(), "team-a".to_string())],
        ]
    );
}

#[tokio::test]
async fn rls_down_with_failure_mode_allow_lets_requests_through() {
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    // Nothing listens on the RLS port: connection refused.
    let envoy = envoy(&standin, free_port(), "allow").await;
    for _ in 0..3 {
        assert_eq!(ask(&envoy, KEY_A).await.status(), 200);
    }
    assert_eq!(standin.count(EndpointKind::DataPlane), 3);
}

#[tokio::test]
async fn rls_down_with_failure_mode_deny_answers_503() {
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    let rls = RlsServer::start(vec![LimitSpec::per_workload(DOMAIN, 1_000_000, 60)])
        .await
        .unwrap();
    let envoy = envoy(&standin, rls.port(), "deny").await;
    assert_eq!(ask(&envoy, KEY_A).await.status(), 200);

    // The RLS answers UNAVAILABLE (Limitador does when its storage fails).
    rls.set_unavailable(true);
    let resp = ask(&envoy, KEY_A).await;
    assert_eq!(
        resp.status(),
        503,
        "not 429: the caller did not exceed anything, the gateway cannot decide"
    );
    // Slower than timeout_ms (200): the same.
    rls.set_unavailable(false);
    rls.set_delay(std::time::Duration::from_millis(1_000));
    assert_eq!(ask(&envoy, KEY_A).await.status(), 503);
    rls.set_delay(std::time::Duration::ZERO);

    // The RLS gone.
    drop(rls);
    assert_eq!(ask(&envoy, KEY_A).await.status(), 503);
    assert_eq!(
        standin.count(EndpointKind::DataPlane),
        1,
        "nothing reached Azure undecided"
    );
}

/// `protocol: envoy` (envoyproxy/ratelimit): `ShouldRateLimit` both times, the estimate
/// before (a reservation: envoyproxy/ratelimit adds it, admitted or not) and what the answer
/// cost beyond it after, against an RLS that counts like envoyproxy/ratelimit. The answers here
/// cost more than their estimates (one-letter words: 1 token per 2 bytes where the estimate
/// counts 4), so each is charged its excess.
#[tokio::test]
async fn envoy_ratelimit_protocol_reserves_the_estimate_and_charges_the_excess() {
    const BUDGET: u64 = 200;
    let mut opts = RlsOptions::new(vec![LimitSpec::per_workload(DOMAIN, BUDGET, 60)]);
    opts.flavor = Flavor::EnvoyRatelimit;
    let rls = RlsServer::start_with(opts).await.unwrap();
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    let mut plugin = plugin_config(&standin, "deny");
    plugin["rate_limits"]["global"]["protocol"] = json!("envoy");
    let envoy = envoy_with(plugin, &standin, rls.port()).await;

    let body = json!({"model": "gpt-4o", "max_tokens": 10,
        "messages": [{"role": "user", "content": "a ".repeat(100)}]});
    let est = estimate(&body);
    let mut statuses = Vec::new();
    let mut real = 0;
    for _ in 0..4 {
        let resp = ask_with(&envoy, KEY_A, &body).await;
        statuses.push(resp.status().as_u16());
        if resp.status() != 200 {
            break;
        }
        real = tokens(resp).await;
        // Let the charge land before the next check (it leaves just after the answer).
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let excess = u32::try_from(real).unwrap() - est;
    assert!(
        excess > 0,
        "the answers cost {real}, more than the estimate {est}"
    );
    // 0 + est fits; real, then real + est fits; 2 x real + est does not.
    assert!(2 * real + u64::from(est) > BUDGET && real + u64::from(est) <= BUDGET);
    assert_eq!(statuses, vec![200, 200, 429]);
    let calls = rls.calls();
    assert!(calls.iter().all(|c| c.method == "ShouldRateLimit"));
    let hits: Vec<u32> = calls.iter().map(|c| c.hits_addend).collect();
    assert_eq!(
        hits,
        vec![est, excess, est, excess, est],
        "checks reserve the estimate, charges add the excess"
    );
    assert_eq!(ask(&envoy, KEY_B).await.status(), 200, "team-b unaffected");
}

/// A caller that gives up while its request waits for the RLS's answer leaves nothing behind:
/// the request never reaches Azure, and the filter keeps serving.
#[tokio::test]
async fn caller_gone_while_the_rls_thinks() {
    let rls = RlsServer::start(vec![LimitSpec::per_workload(DOMAIN, 1_000_000, 60)])
        .await
        .unwrap();
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    let mut plugin = plugin_config(&standin, "deny");
    plugin["rate_limits"]["global"]["timeout_ms"] = json!(3000);
    let envoy = envoy_with(plugin, &standin, rls.port()).await;

    rls.set_delay(std::time::Duration::from_millis(1_000));
    let impatient = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(200))
        .build()
        .unwrap();
    for _ in 0..5 {
        let r = impatient
            .post(envoy.url("/v1/chat/completions"))
            .header("api-key", KEY_A)
            .json(&json!({"model": "gpt-4o", "messages": []}))
            .send()
            .await;
        assert!(r.is_err(), "the caller gave up first");
    }
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    assert_eq!(
        standin.count(EndpointKind::DataPlane),
        0,
        "abandoned requests never went upstream"
    );
    rls.set_delay(std::time::Duration::ZERO);
    assert_eq!(ask(&envoy, KEY_A).await.status(), 200);
    assert!(
        !envoy.logs().contains("panicked"),
        "no panic in the filter:\n{}",
        envoy.logs()
    );
}

/// The fleet as it is deployed: each Envoy has its own RLS replica (a Limitador), the
/// replicas keep their counters in one Redis (a Debian redis-server started by the test).
/// team-a's budget is shared across both Envoys; when Redis goes away the replicas answer
/// UNAVAILABLE and `failure_mode: deny` answers 503.
#[tokio::test]
async fn envoys_with_their_own_rls_replicas_on_one_redis_share_the_budget() {
    const BUDGET: u64 = 60;
    let redis = azure_rls::RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
    let limits = vec![LimitSpec::per_workload(DOMAIN, BUDGET, 60)];
    let rls_one = RlsServer::start_redis(&redis.url(), limits.clone())
        .await
        .unwrap();
    let rls_two = RlsServer::start_redis(&redis.url(), limits).await.unwrap();
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    let one = envoy(&standin, rls_one.port(), "deny").await;
    let two = envoy(&standin, rls_two.port(), "deny").await;

    let mut charged = 0;
    let mut refused = false;
    for i in 0..20 {
        let envoy = if i % 2 == 0 { &one } else { &two };
        let resp = ask(envoy, KEY_A).await;
        if resp.status() == 429 {
            refused = true;
            break;
        }
        assert_eq!(resp.status(), 200);
        charged += tokens(resp).await;
        // Let the report (sent by the root context just after the answer) reach Redis.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(refused, "team-a ran out of its budget");
    assert!(
        charged >= BUDGET,
        "refused only once the budget was used ({charged})"
    );
    assert!(
        charged < 2 * BUDGET,
        "one budget for both replicas, not one each ({charged})"
    );
    assert_eq!(ask(&one, KEY_A).await.status(), 429);
    assert_eq!(ask(&two, KEY_A).await.status(), 429);
    assert_eq!(ask(&one, KEY_B).await.status(), 200, "team-b has its own");
    // Both replicas read the same counter.
    let used_one = rls_one
        .used(DOMAIN, "per-workload-60-per-60s", "team-a")
        .await;
    let used_two = rls_two
        .used(DOMAIN, "per-workload-60-per-60s", "team-a")
        .await;
    assert_eq!(
        used_one,
        Some(BUDGET),
        "Limitador shows used capped at the max"
    );
    assert_eq!(used_one, used_two);

    drop(redis);
    let resp = ask(&two, KEY_B).await;
    assert_eq!(resp.status(), 503, "Redis gone, failure_mode deny");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_service_unavailable");
}

/// Budgets in money across a fleet (issue 23): with `cost_domain`, each request is also
/// checked and charged in that domain, in micro-units of the price table's currency (each
/// request's cost rounded up to a whole micro-unit). Two Envoys share team-a's cost budget; a
/// spent one is refused 403 `cost_quota_exceeded`; the token domain is charged as before.
#[tokio::test]
async fn two_envoys_share_one_cost_budget_in_its_own_domain() {
    const COST_DOMAIN: &str = "azure-llm-cost";
    /// 0.001 USD in micro-units.
    const BUDGET: u64 = 1000;
    let rls = RlsServer::start(vec![
        LimitSpec::per_workload(DOMAIN, 1_000_000, 60),
        LimitSpec::per_workload(COST_DOMAIN, BUDGET, 3600),
    ])
    .await
    .unwrap();
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    let mut plugin = plugin_config(&standin, "deny");
    plugin["rate_limits"]["global"]["cost_domain"] = json!(COST_DOMAIN);
    plugin["pricing"] = json!({"models": {"gpt-4o": {"input": 2.5, "output": 10}}});
    let one = envoy_with(plugin.clone(), &standin, rls.port()).await;
    let two = envoy_with(plugin, &standin, rls.port()).await;
    // 7 input tokens at 2.5 and 10 output tokens at 10 per million: 117.5 micro-units, 118
    // counted. The estimate: ceil(bytes / 4) input tokens and max_tokens output.
    let cost = 118u64;
    let estimate_cost = (f64::from(estimate(&ask_body()) - 10) * 2.5 + 100.0).ceil() as u64;
    let mut admitted = 0u64;
    let mut refused = None;
    for i in 0..30 {
        let envoy = if i % 2 == 0 { &one } else { &two };
        let resp = ask(envoy, KEY_A).await;
        if resp.status() != 200 {
            refused = Some(resp);
            break;
        }
        assert_eq!(tokens(resp).await, 17);
        admitted += 1;
    }
    let refused = refused.expect("team-a ran out of its cost budget");
    assert_eq!(refused.status(), 403);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "cost_quota_exceeded", "{body}");
    assert!(
        admitted * cost >= BUDGET && admitted * cost < 2 * BUDGET,
        "refused once the cost summed over both Envoys reached the budget: {admitted} x {cost}"
    );
    // team-b has its own cost counter.
    assert_eq!(ask(&one, KEY_B).await.status(), 200);

    let in_domain = |calls: &[azure_rls::RecordedCall], method: &str, domain: &str| -> Vec<u64> {
        calls
            .iter()
            .filter(|c| {
                c.method == method
                    && c.domain == domain
                    && c.descriptors[0].contains(&("workload".into(), "team-a".into()))
            })
            .map(|c| u64::from(c.hits_addend))
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    let mut calls = rls.calls();
    while in_domain(&calls, "Report", COST_DOMAIN).len() < admitted as usize
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        calls = rls.calls();
    }
    assert_eq!(
        in_domain(&calls, "Report", COST_DOMAIN),
        vec![cost; admitted as usize],
        "each answer's real cost, in micro-units rounded up"
    );
    assert_eq!(
        in_domain(&calls, "Report", DOMAIN),
        vec![17; admitted as usize],
        "tokens charged as before"
    );
    let checks = in_domain(&calls, "CheckRateLimit", COST_DOMAIN);
    assert_eq!(checks.len() as u64, admitted + 1);
    assert!(
        checks.iter().all(|h| *h == estimate_cost),
        "{checks:?} vs {estimate_cost}"
    );
}

/// Header routing (the model in a header, `allow_on_headers_stop_iteration: true` as shipped)
/// while the rate limit service thinks: the body Envoy hands over meanwhile is held with the
/// headers, so nothing reaches Azure before the verdict. Here the verdict, after 700 ms, is
/// that the service cannot decide (`failure_mode: deny`): the caller gets the 503 and Azure
/// never sees the request (it got it, released with its body, before the verdict).
#[tokio::test]
async fn header_routing_waits_for_the_verdict_though_the_body_flows() {
    let rls = RlsServer::start(vec![LimitSpec::per_workload(DOMAIN, 1_000_000, 60)])
        .await
        .unwrap();
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    let mut plugin = plugin_config(&standin, "deny");
    plugin["routing_mode"] = json!("header");
    plugin["model_header"] = json!("x-model");
    plugin["rate_limits"]["global"]["timeout_ms"] = json!(3000);
    let envoy = envoy_with(plugin, &standin, rls.port()).await;
    let header_routed = || {
        client()
            .post(envoy.url("/v1/chat/completions"))
            .header("api-key", KEY_A)
            .header("x-model", "gpt-4o")
            .json(&ask_body())
            .send()
    };
    // The token is there (and the service admits at once): served.
    assert_eq!(header_routed().await.unwrap().status(), 200);
    rls.set_unavailable(true);
    rls.set_delay(std::time::Duration::from_millis(700));
    let resp = header_routed().await.unwrap();
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    assert_eq!(
        standin.count(EndpointKind::DataPlane),
        1,
        "nothing reaches Azure before the verdict (caller got {status} {body})"
    );
    assert_eq!(status, 503, "{body}");
}
