//! `make bench` (not part of `make test`): what caller authentication costs inside a real
//! Envoy (1 worker). Requests go to `GET /v1/models`, which the filter answers itself after
//! authenticating, so no upstream adds noise. The cost of a cold signature check is the mean
//! latency of requests with a fresh (never seen) valid token minus that of a cached token.

mod common;

use azure_standin::{StandIn, StandInConfig};
use common::{Cluster, Envoy, EnvoyOptions};
use serde_json::json;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const AUDIENCE: &str = "api://llm-gateway";
const N: usize = 1500;

fn claims(standin: &StandIn, i: usize) -> serde_json::Value {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    json!({
        "iss": format!("https://login.microsoftonline.com/{}/v2.0", standin.tenant_id()),
        "aud": AUDIENCE, "azp": format!("app-{i}"), "tid": standin.tenant_id(),
        "iat": t, "nbf": t - 5, "exp": t + 3600, "jti": format!("bench-{i}")
    })
}

async fn mean_latency(
    http: &reqwest::Client,
    url: &str,
    tokens: &[String],
    expect: u16,
) -> Duration {
    let started = Instant::now();
    for t in tokens {
        let resp = http
            .get(url)
            .header("authorization", format!("Bearer {t}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), expect);
        let _ = resp.bytes().await;
    }
    started.elapsed() / tokens.len() as u32
}

#[tokio::test]
#[ignore = "benchmark: run with make bench"]
async fn caller_authentication_cost_in_envoy() {
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    let tenant = standin.tenant_id();
    let plugin = json!({
        "credentials": {"main": {"kind": "client_secret", "tenant_id": tenant, "client_id": "22222222-2222-2222-2222-222222222222",
                                 "client_secret": "standin-secret", "token_cluster": "entra"}},
        "backends": {"aoai": {"kind": "azure_openai", "host": "r.openai.azure.com", "api_version": "2024-10-21", "credential": "main"}},
        "models": {"gpt-4o": {"backend": "aoai", "deployment": "gpt-4o-prod"}},
        "auth": {"jwt_providers": {"entra": {
            "issuer": format!("https://login.microsoftonline.com/{tenant}/v2.0"),
            "audiences": [AUDIENCE],
            "jwks": {"cluster": "entra", "authority": "login.microsoftonline.com", "path": format!("/{tenant}/discovery/v2.0/keys")}
        }}}
    });
    let mut o = EnvoyOptions::new(plugin);
    o.clusters = vec![
        Cluster::new("entra", standin.port()),
        Cluster::new("aoai", standin.port()),
    ];
    o.backend_routes = vec!["aoai".into()];
    o.log_level = "warning".into();
    let envoy = Envoy::start(o).await;
    let url = envoy.url("/v1/models");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();

    let fresh: Vec<String> = (0..N)
        .map(|i| standin.sign_token(claims(&standin, i)))
        .collect();
    let forged: Vec<String> = (0..N)
        .map(|i| standin.sign_token_with_foreign_key(claims(&standin, N + i)))
        .collect();
    let warm = vec![fresh[0].clone(); 1];
    // Wait for the JWKS, warm the VM up (V8 tiers up hot code).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = http
            .get(&url)
            .header("authorization", format!("Bearer {}", warm[0]))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "{}", envoy.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let warmup: Vec<String> = (0..300)
        .map(|i| standin.sign_token(claims(&standin, 10 * N + i)))
        .collect();
    mean_latency(&http, &url, &warmup, 200).await;

    let cached = vec![fresh[0].clone(); N];
    let t_cached = mean_latency(&http, &url, &cached, 200).await;
    let t_cold = mean_latency(&http, &url, &fresh[1..], 200).await;
    let t_forged = mean_latency(&http, &url, &forged, 401).await;
    let garbage = vec!["not-a-jwt".to_string(); N];
    let t_cheap = mean_latency(&http, &url, &garbage, 401).await;

    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "request with a cached token:           {:8.1} us",
        us(t_cached)
    );
    println!(
        "request with a fresh valid RS256 token: {:8.1} us",
        us(t_cold)
    );
    println!(
        "request with a forged RS256 token:      {:8.1} us",
        us(t_forged)
    );
    println!(
        "request with a malformed token:         {:8.1} us",
        us(t_cheap)
    );
    println!(
        "cold RS256 verify inside Envoy (fresh - cached): {:.1} us",
        us(t_cold) - us(t_cached)
    );
    println!(
        "forged-token rejection inside Envoy (forged - malformed): {:.1} us, ~{:.0} forged tokens/s per worker",
        us(t_forged) - us(t_cheap),
        1e6 / us(t_forged)
    );
}
