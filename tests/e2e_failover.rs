//! Issue 5, failover: a model served by a pool of Azure resources in priority order (like an
//! APIM backend pool). The filter routes to the pool; Envoy's router retries a 429 or 5xx on
//! the next priority and sets `Host` per attempt from the member's hostname. Same deployment
//! name, api-version and credential across the pool (one token serves every resource the
//! identity has a role on).

mod common;

use azure_standin::{EndpointKind, Fault, StandIn, StandInConfig};
use common::{client, Cluster, Envoy, EnvoyOptions, Pool, PoolMember};
use serde_json::{json, Value};

const PRIMARY: &str = "eastus-res.openai.azure.com";
const SECONDARY: &str = "westeu-res.openai.azure.com";

async fn setup() -> (StandIn, StandIn, Envoy) {
    let primary = StandIn::start(StandInConfig::default()).await.unwrap();
    let secondary = StandIn::start_sharing_keys(&primary, StandInConfig::default())
        .await
        .unwrap();
    let plugin = json!({
        "credentials": common::standin_credentials(&primary.tenant_id()),
        "backends": {"pool": {"kind": "azure_openai", "host": PRIMARY, "api_version": "2024-10-21", "credential": "main"}},
        "models": {"gpt-4o": {"backend": "pool", "deployment": "gpt-4o-prod"}}
    });
    let mut o = EnvoyOptions::new(plugin);
    o.clusters = vec![Cluster::new("entra", primary.port())];
    o.pools = vec![Pool {
        name: "pool".into(),
        members: vec![
            PoolMember {
                port: primary.port(),
                hostname: PRIMARY.into(),
            },
            PoolMember {
                port: secondary.port(),
                hostname: SECONDARY.into(),
            },
        ],
    }];
    let envoy = Envoy::start(o).await;
    (primary, secondary, envoy)
}

async fn chat(envoy: &Envoy) -> (u16, Value) {
    let resp = client()
        .post(envoy.url("/v1/chat/completions"))
        .json(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]}))
        .send()
        .await
        .unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn primary_serves_while_healthy() {
    let (primary, secondary, envoy) = setup().await;
    let (s, b) = chat(&envoy).await;
    assert_eq!(s, 200, "{b} {}", envoy.logs());
    let r = primary.requests_of(EndpointKind::DataPlane);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].header("host"), Some(PRIMARY));
    assert_eq!(secondary.count(EndpointKind::DataPlane), 0);
}

#[tokio::test]
async fn throttled_or_failing_primary_fails_over_to_the_next_priority() {
    let (primary, secondary, envoy) = setup().await;
    primary.push_fault(
        EndpointKind::DataPlane,
        Fault::RateLimited {
            retry_after_secs: 30,
        },
        1,
    );
    let (s, b) = chat(&envoy).await;
    assert_eq!(s, 200, "{b} {}", envoy.logs());
    assert_eq!(
        primary.requests_of(EndpointKind::DataPlane)[0].outcome_status,
        429
    );
    let r = secondary.requests_of(EndpointKind::DataPlane);
    assert_eq!(r.len(), 1);
    assert_eq!(
        r[0].header("host"),
        Some(SECONDARY),
        "Host follows the member"
    );
    assert_eq!(
        r[0].outcome_status, 200,
        "the secondary accepted the same token"
    );

    primary.push_fault(
        EndpointKind::DataPlane,
        Fault::Status {
            status: 503,
            body: r#"{"error":{"code":"ServiceUnavailable","message":"busy"}}"#.into(),
        },
        1,
    );
    let (s, _) = chat(&envoy).await;
    assert_eq!(s, 200);
    assert_eq!(secondary.count(EndpointKind::DataPlane), 2);

    // Both throttled: the caller gets Azure's 429 with its Retry-After.
    primary.push_fault(
        EndpointKind::DataPlane,
        Fault::RateLimited {
            retry_after_secs: 7,
        },
        1,
    );
    secondary.push_fault(
        EndpointKind::DataPlane,
        Fault::RateLimited {
            retry_after_secs: 7,
        },
        1,
    );
    let resp = client()
        .post(envoy.url("/v1/chat/completions"))
        .json(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "7");
}
