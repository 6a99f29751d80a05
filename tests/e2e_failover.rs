//! Failover through a real Envoy.
//!
//! Issue 5: one backend cluster whose endpoints are Azure resources at increasing priority
//! (same deployment, api-version and credential on every member); Envoy retries a 429 or 5xx
//! on the next priority and sets `Host` per attempt.
//!
//! Issue 16 (`pools` below): a model's `targets`, each its own backend, deployment and
//! credential (another tenant). The pool is an aggregate cluster of one cluster per target;
//! Envoy retries, and the filter as that cluster's upstream filter rewrites each attempt for
//! its target. Throttled targets are skipped by later requests until their Retry-After.

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

mod pools {
    use super::common::{self, client, Cluster, Envoy, EnvoyOptions};
    use azure_standin::{
        ClientRegistration, Deployment, EndpointKind, EntraKey, Fault, StandIn, StandInConfig,
    };
    use futures_util::StreamExt;
    use serde_json::{json, Value};
    use std::time::{Duration, Instant};

    const PTU_HOST: &str = "contoso-ptu.openai.azure.com";
    const PAYG_HOST: &str = "partner-payg.openai.azure.com";
    const PAYG_TENANT: &str = "99999999-9999-9999-9999-999999999999";
    const PAYG_CLIENT: &str = "88888888-8888-8888-8888-888888888888";

    /// The PTU resource (tenant of the stand-in's default) and the PAYG resource in another
    /// tenant, signing with another key: a token of one is refused by the other.
    async fn resources() -> (StandIn, StandIn) {
        let ptu = StandIn::start(StandInConfig {
            deployments: vec![Deployment::new("gpt-4o-ptu", "gpt-4o", "OpenAI")],
            ..StandInConfig::default()
        })
        .await
        .unwrap();
        let payg = StandIn::start(StandInConfig {
            tenant_id: PAYG_TENANT.into(),
            clients: vec![ClientRegistration {
                client_id: PAYG_CLIENT.into(),
                client_secret: Some("partner-secret".into()),
                ..ClientRegistration::default()
            }],
            deployments: vec![Deployment::new("gpt-4o-global", "gpt-4o", "OpenAI")],
            signing_key: EntraKey::Secondary,
            ..StandInConfig::default()
        })
        .await
        .unwrap();
        (ptu, payg)
    }

    fn plugin_config(ptu: &StandIn) -> Value {
        json!({
            "credentials": {
                "contoso": {"kind": "client_secret", "tenant_id": ptu.tenant_id(),
                            "client_id": common::STANDIN_CLIENT_ID, "client_secret": "standin-secret",
                            "token_cluster": "entra-contoso"},
                "partner": {"kind": "client_secret", "tenant_id": PAYG_TENANT,
                            "client_id": PAYG_CLIENT, "client_secret": "partner-secret",
                            "token_cluster": "entra-partner"}
            },
            "backends": {
                "ptu":  {"kind": "azure_openai", "host": PTU_HOST, "api_version": "2024-10-21", "credential": "contoso"},
                "payg": {"kind": "azure_openai_v1", "host": PAYG_HOST, "credential": "partner"}
            },
            "models": {"gpt-4o": {"targets": [
                {"backend": "ptu", "deployment": "gpt-4o-ptu"},
                {"backend": "payg", "deployment": "gpt-4o-global"}
            ]}},
            "failover": {"eject_after_failures": 3, "eject_for_ms": 60000},
            "rate_limits": {"default": {"tokens_per_minute": 1000000}}
        })
    }

    /// Envoy with the pool; `ptu_port` is where the PTU cluster connects (a closed port
    /// plays a resource that refuses connections).
    async fn envoy(ptu: &StandIn, payg: &StandIn, ptu_port: u16) -> Envoy {
        envoy_with_routes(ptu, payg, ptu_port, "", 1).await
    }

    async fn envoy_with_routes(
        ptu: &StandIn,
        payg: &StandIn,
        ptu_port: u16,
        more_routes: &str,
        workers: u32,
    ) -> Envoy {
        let plugin = plugin_config(ptu);
        let mut o = EnvoyOptions::new(plugin.clone());
        o.clusters = vec![
            Cluster::new("entra-contoso", ptu.port()),
            Cluster::new("entra-partner", payg.port()),
        ];
        // The pool `ptu+payg` (aggregate cluster, retrying route) and `payg` alone, where
        // requests start while the PTU is throttled.
        let (clusters, routes) = common::failover_pool_yaml(
            &plugin,
            common::DEFAULT_ROUTING_HEADER,
            &[("ptu", ptu_port), ("payg", payg.port())],
        );
        o.extra_clusters_yaml = Some(clusters);
        o.extra_routes_yaml = Some(format!("{routes}{more_routes}"));
        o.concurrency = workers;
        o.backend_routes = vec!["payg".into()];
        Envoy::start(o).await
    }

    async fn setup() -> (StandIn, StandIn, Envoy) {
        let (ptu, payg) = resources().await;
        let envoy = envoy(&ptu, &payg, ptu.port()).await;
        (ptu, payg, envoy)
    }

    async fn chat(envoy: &Envoy) -> reqwest::Response {
        client()
            .post(envoy.url("/v1/chat/completions"))
            .json(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]}))
            .send()
            .await
            .unwrap()
    }

    fn data_plane(s: &StandIn) -> Vec<azure_standin::RecordedRequest> {
        s.requests_of(EndpointKind::DataPlane)
    }

    fn body_json(r: &azure_standin::RecordedRequest) -> Value {
        serde_json::from_slice(&r.body).unwrap_or(Value::Null)
    }

    async fn tokens_stat(envoy: &Envoy, backend: &str) -> u64 {
        let mut total = 0;
        for kind in ["prompt", "completion"] {
            total += envoy
                .stat(&format!(
                    "wasmcustom.{}",
                    azure_llm_filter::metrics::tokens("anonymous", "gpt-4o", backend, kind)
                ))
                .await
                .unwrap_or(0);
        }
        total
    }

    #[tokio::test]
    async fn ptu_429_spills_to_payg_in_another_tenant_and_is_skipped_until_retry_after() {
        let (ptu, payg, envoy) = setup().await;
        ptu.push_fault(
            EndpointKind::DataPlane,
            Fault::RateLimitedMs {
                retry_after_ms: 1500,
            },
            1,
        );
        let throttled_at = Instant::now();
        let resp = chat(&envoy).await;
        let status = resp.status();
        let remaining_first = common::header_u64(&resp, "x-ratelimit-remaining-tokens");
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 200, "{body} {}", envoy.logs());

        let p = data_plane(&ptu);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].outcome_status, 429);
        assert_eq!(p[0].header("host"), Some(PTU_HOST));
        assert_eq!(p[0].path, "/openai/deployments/gpt-4o-ptu/chat/completions");
        let g = data_plane(&payg);
        assert_eq!(g.len(), 1);
        assert_eq!(
            g[0].outcome_status, 200,
            "the partner tenant's own token was accepted"
        );
        assert_eq!(g[0].header("host"), Some(PAYG_HOST));
        assert_eq!(g[0].path, "/openai/v1/chat/completions");
        assert_eq!(body_json(&g[0])["model"], "gpt-4o-global");
        assert_eq!(
            body_json(&g[0])["messages"][0]["content"],
            "hello",
            "body replayed intact"
        );
        assert_ne!(
            p[0].header("authorization"),
            g[0].header("authorization"),
            "each attempt carries its own target's token"
        );
        assert_eq!(g[0].header_count("authorization"), 1);
        for r in [&p[0], &g[0]] {
            assert_eq!(
                r.header("x-azure-llm-backend"),
                None,
                "routing header kept in Envoy"
            );
        }
        let served = body["usage"]["total_tokens"].as_u64().unwrap();
        assert_eq!(
            tokens_stat(&envoy, "payg").await,
            served,
            "charged to the target that answered"
        );
        assert_eq!(tokens_stat(&envoy, "ptu").await, 0);
        assert_eq!(
            envoy
                .stat(&format!(
                    "wasmcustom.{}",
                    azure_llm_filter::metrics::target_attempts("ptu", "throttled")
                ))
                .await,
            Some(1)
        );
        assert_eq!(
            envoy
                .stat(&format!(
                    "wasmcustom.{}",
                    azure_llm_filter::metrics::target_attempts("payg", "answered")
                ))
                .await,
            Some(1)
        );
        // The access log names the target that answered, its deployment and the attempts.
        let deadline = Instant::now() + Duration::from_secs(3);
        let line = loop {
            let logs = envoy.logs();
            if let Some(l) = logs
                .lines()
                .find(|l| l.contains("\" 200 ") && l.contains("model=gpt-4o"))
            {
                break l.to_string();
            }
            assert!(Instant::now() < deadline, "no access log line: {logs}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        for part in [
            "backend=payg",
            "deployment=gpt-4o-global",
            "target=payg",
            "attempts=2",
        ] {
            assert!(line.contains(part), "{part} in {line}");
        }

        // Every later request skips the PTU until its retry-after-ms has passed.
        let resp = chat(&envoy).await;
        assert_eq!(resp.status(), 200);
        let remaining_second = common::header_u64(&resp, "x-ratelimit-remaining-tokens");
        assert_eq!(data_plane(&ptu).len(), 1, "throttled PTU skipped");
        assert_eq!(data_plane(&payg).len(), 2);
        let (a, b) = (remaining_first.unwrap(), remaining_second.unwrap());
        assert_eq!(
            a - b,
            served,
            "usage counted once, from the answer the caller got"
        );

        let wait = Duration::from_millis(1500 + 200).saturating_sub(throttled_at.elapsed());
        tokio::time::sleep(wait).await;
        let resp = chat(&envoy).await;
        assert_eq!(resp.status(), 200);
        let p = data_plane(&ptu);
        assert_eq!(
            p.len(),
            2,
            "the PTU serves again once its Retry-After passed"
        );
        assert_eq!(p[1].outcome_status, 200);
        assert_eq!(data_plane(&payg).len(), 2);
    }

    #[tokio::test]
    async fn a_503_fails_over_and_failures_in_a_row_eject_the_target() {
        let (ptu, payg, envoy) = setup().await;
        ptu.push_fault(
            EndpointKind::DataPlane,
            Fault::Status {
                status: 503,
                body: r#"{"error":{"code":"ServiceUnavailable","message":"busy"}}"#.into(),
            },
            3,
        );
        for i in 1..=3 {
            let resp = chat(&envoy).await;
            assert_eq!(resp.status(), 200, "request {i}: {}", envoy.logs());
            assert_eq!(data_plane(&ptu).len(), i);
            assert_eq!(data_plane(&payg).len(), i);
        }
        // Three 5xx in a row: ejected, the next request goes straight to PAYG.
        let resp = chat(&envoy).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(data_plane(&ptu).len(), 3, "ejected PTU skipped");
        assert_eq!(data_plane(&payg).len(), 4);
    }

    /// A PTU that refuses connections: each request fails over, and after 3 failures Envoy's
    /// outlier detection ejects the PTU's only host (the shipped `max_ejection_percent: 100`;
    /// with Envoy's default 10% it never did), so later requests are not even tried there.
    #[tokio::test]
    async fn a_refused_connection_fails_over_and_ejects_the_target() {
        let (ptu, payg) = resources().await;
        let closed = common::free_port();
        let envoy = envoy(&ptu, &payg, closed).await;
        for _ in 0..5 {
            let resp = chat(&envoy).await;
            let status = resp.status();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            assert_eq!(status, 200, "{body} {}", envoy.logs());
            assert!(body["usage"]["total_tokens"].as_u64().is_some());
        }
        assert_eq!(data_plane(&payg).len(), 5);
        assert_eq!(data_plane(&ptu).len(), 0);
        let stat = |name: &'static str| envoy.stat(name);
        assert_eq!(
            stat("cluster.ptu.outlier_detection.ejections_enforced_total").await,
            Some(1)
        );
        assert_eq!(
            stat("cluster.ptu.upstream_cx_connect_fail").await,
            Some(3),
            "no connection tried once the PTU was ejected"
        );
    }

    #[tokio::test]
    async fn a_stream_fails_over_before_its_first_byte() {
        let (ptu, payg, envoy) = setup().await;
        ptu.push_fault(
            EndpointKind::DataPlane,
            Fault::RateLimitedMs {
                retry_after_ms: 800,
            },
            1,
        );
        let resp = client()
            .post(envoy.url("/v1/chat/completions"))
            .json(&json!({"model": "gpt-4o", "stream": true,
                          "messages": [{"role": "user", "content": "stream please"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        let mut stream = resp.bytes_stream();
        let mut text = Vec::new();
        while let Some(chunk) = stream.next().await {
            text.extend_from_slice(&chunk.unwrap());
        }
        let text = String::from_utf8(text).unwrap();
        assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
        assert_eq!(data_plane(&ptu)[0].outcome_status, 429);
        let g = data_plane(&payg);
        assert_eq!(g.len(), 1);
        let sent = body_json(&g[0]);
        assert_eq!(sent["model"], "gpt-4o-global");
        assert_eq!(sent["stream_options"]["include_usage"], true);
        assert!(
            tokens_stat(&envoy, "payg").await > 0,
            "the stream's usage is charged"
        );
    }

    #[tokio::test]
    async fn every_target_throttled_gives_429_with_the_smallest_retry_after() {
        let (ptu, payg, envoy) = setup().await;
        ptu.push_fault(
            EndpointKind::DataPlane,
            Fault::RateLimitedMs {
                retry_after_ms: 9000,
            },
            1,
        );
        payg.push_fault(
            EndpointKind::DataPlane,
            Fault::RateLimitedMs {
                retry_after_ms: 2500,
            },
            1,
        );
        let resp = chat(&envoy).await;
        assert_eq!(resp.status(), 429);
        assert_eq!(
            resp.headers()["retry-after"],
            "3",
            "the smallest wait (PAYG's 2.5 s)"
        );
        let ms = common::header_u64(&resp, "retry-after-ms").unwrap();
        assert!((2000..=2500).contains(&ms), "{ms}");
        assert_eq!(data_plane(&ptu).len(), 1);
        assert_eq!(data_plane(&payg).len(), 1);

        // Now every target is closed: the filter answers at once, Azure sees nothing.
        let resp = chat(&envoy).await;
        assert_eq!(resp.status(), 429);
        let secs = common::header_u64(&resp, "retry-after").unwrap();
        assert!((1..=3).contains(&secs), "{secs}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "all_targets_throttled");
        assert_eq!(body["error"]["type"], "rate_limit_error");
        assert_eq!(data_plane(&ptu).len(), 1, "no retry storm");
        assert_eq!(data_plane(&payg).len(), 1);
        assert_eq!(
            tokens_stat(&envoy, "payg").await + tokens_stat(&envoy, "ptu").await,
            0
        );
    }

    #[tokio::test]
    async fn a_caller_cannot_pick_the_pool_route_or_reach_it_without_the_listener_filter() {
        let (ptu, payg, envoy) = setup().await;
        // The caller's routing header is removed; its model decides.
        let resp = client()
            .post(envoy.url("/v1/chat/completions"))
            .header("x-azure-llm-backend", "payg")
            .json(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(data_plane(&ptu).len(), 1, "started at the PTU regardless");
        assert_eq!(data_plane(&payg).len(), 0);
    }

    /// A route that reaches the pool's cluster without the listener filter having routed the
    /// request (here: a path the listener filter does not handle) gets no target's token and
    /// no rewrite: the upstream filter refuses it, and no Azure resource sees it.
    #[tokio::test]
    async fn the_pool_cluster_refuses_what_the_listener_filter_did_not_route() {
        let (ptu, payg) = resources().await;
        let bypass =
            "- match: { prefix: \"/bypass\" }\n  route: { cluster: \"ptu+payg\", timeout: 5s }\n";
        let envoy = envoy_with_routes(&ptu, &payg, ptu.port(), bypass, 1).await;
        let resp = client()
            .post(envoy.url("/bypass/openai/deployments/gpt-4o-ptu/chat/completions"))
            .json(&json!({"messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 500);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "pool_misconfigured");
        assert_eq!(data_plane(&ptu).len() + data_plane(&payg).len(), 0);
    }

    /// Spillover happens when traffic peaks: 60 requests in flight at once on two workers,
    /// each answered 429 by the PTU only once all are there, are each served by PAYG, exactly
    /// once per target. Envoy's default retry circuit breaker (3 retries in flight) served 3
    /// to 7 and gave the rest the PTU's 429; the shipped pool sizes it (README "What a pool
    /// needs from Envoy").
    #[tokio::test]
    async fn sixty_concurrent_spills_on_two_workers_are_all_served_by_the_next_target() {
        const N: usize = 60;
        let (ptu, payg) = resources().await;
        let envoy = envoy_with_routes(&ptu, &payg, ptu.port(), "", 2).await;
        // A 429 that comes late: every request is in flight before the first is throttled.
        ptu.push_fault(
            EndpointKind::DataPlane,
            Fault::Delayed(
                Duration::from_millis(600),
                Box::new(Fault::RateLimitedMs { retry_after_ms: 1 }),
            ),
            N,
        );
        let calls = (0..N).map(|i| {
            let envoy = &envoy;
            async move {
                let fresh = reqwest::Client::builder()
                    .pool_max_idle_per_host(0)
                    .build()
                    .unwrap();
                let resp = fresh
                    .post(envoy.url("/v1/chat/completions"))
                    .json(&json!({"model": "gpt-4o",
                                  "messages": [{"role": "user", "content": format!("spill {i}")}]}))
                    .send()
                    .await
                    .unwrap();
                (
                    resp.status().as_u16(),
                    resp.text().await.unwrap_or_default(),
                )
            }
        });
        let answers = futures_util::future::join_all(calls).await;
        let served = answers.iter().filter(|(s, _)| *s == 200).count();
        assert_eq!(
            served,
            N,
            "every spill served: {:?}",
            answers.iter().find(|(s, _)| *s != 200)
        );
        let (p, g) = (data_plane(&ptu), data_plane(&payg));
        assert_eq!(p.len(), N, "each request tried the PTU once");
        assert!(p.iter().all(|r| r.outcome_status == 429));
        assert_eq!(g.len(), N, "and PAYG once");
        let mut contents: Vec<String> = g
            .iter()
            .map(|r| body_json(r)["messages"][0]["content"].to_string())
            .collect();
        contents.sort();
        contents.dedup();
        assert_eq!(contents.len(), N, "no request served twice");
        assert_eq!(
            envoy
                .stat("cluster.ptu+payg.upstream_rq_retry_overflow")
                .await,
            Some(0)
        );
        let name = |w: u32| {
            format!(
                "listener.127.0.0.1_{}.worker_{w}.downstream_cx_total",
                envoy.listener_port
            )
        };
        let (w0, w1) = (envoy.stat(&name(0)).await, envoy.stat(&name(1)).await);
        assert!(
            w0.unwrap_or(0) > 0 && w1.unwrap_or(0) > 0,
            "both workers served: {w0:?} {w1:?}"
        );
    }

    /// The throttle is in shared data: with two workers, requests on new connections (the
    /// kernel spreads them over the workers' sockets; 16 all on one worker would be a 1 in
    /// 30,000 chance) all skip the throttled PTU.
    #[tokio::test]
    async fn every_worker_skips_a_throttled_target() {
        let (ptu, payg) = resources().await;
        let envoy = envoy_with_routes(&ptu, &payg, ptu.port(), "", 2).await;
        ptu.push_fault(
            EndpointKind::DataPlane,
            Fault::RateLimitedMs {
                retry_after_ms: 20_000,
            },
            1,
        );
        assert_eq!(chat(&envoy).await.status(), 200);
        assert_eq!(data_plane(&ptu).len(), 1);
        for i in 0..16 {
            let fresh = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap();
            let resp = fresh
                .post(envoy.url("/v1/chat/completions"))
                .json(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "request {i}");
        }
        assert_eq!(
            data_plane(&ptu).len(),
            1,
            "no worker sent to the throttled PTU"
        );
        assert_eq!(data_plane(&payg).len(), 17);
        let name = |w: u32| {
            format!(
                "listener.127.0.0.1_{}.worker_{w}.downstream_cx_total",
                envoy.listener_port
            )
        };
        let (w0, w1) = (envoy.stat(&name(0)).await, envoy.stat(&name(1)).await);
        assert!(
            w0.unwrap_or(0) > 0 && w1.unwrap_or(0) > 0,
            "both workers served: {w0:?} {w1:?}"
        );
    }
}
