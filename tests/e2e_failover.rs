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

    pub(super) const PTU_HOST: &str = "contoso-ptu.openai.azure.com";
    pub(super) const PAYG_HOST: &str = "partner-payg.openai.azure.com";
    pub(super) const PAYG_TENANT: &str = "99999999-9999-9999-9999-999999999999";
    pub(super) const PAYG_CLIENT: &str = "88888888-8888-8888-8888-888888888888";

    /// The PTU resource (tenant of the stand-in's default) and the PAYG resource in another
    /// tenant, signing with another key: a token of one is refused by the other.
    pub(super) async fn resources() -> (StandIn, StandIn) {
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

    pub(super) fn plugin_config(ptu: &StandIn) -> Value {
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

    pub(super) async fn chat(envoy: &Envoy) -> reqwest::Response {
        client()
            .post(envoy.url("/v1/chat/completions"))
            .json(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]}))
            .send()
            .await
            .unwrap()
    }

    pub(super) fn data_plane(s: &StandIn) -> Vec<azure_standin::RecordedRequest> {
        s.requests_of(EndpointKind::DataPlane)
    }

    pub(super) fn body_json(r: &azure_standin::RecordedRequest) -> Value {
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
        // One attempt, on the first target: the listener filter knows it without asking
        // Envoy (the upstream filter reported nothing).
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let logs = envoy.logs();
            let served_by_ptu = logs
                .lines()
                .filter(|l| l.contains("\" 200 ") && l.contains("model=gpt-4o"))
                .nth(2);
            if let Some(l) = served_by_ptu {
                for part in ["backend=ptu", "target=ptu", "attempts=1"] {
                    assert!(l.contains(part), "{part} in {l}");
                }
                break;
            }
            assert!(Instant::now() < deadline, "no access log line: {logs}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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

/// Issue 24: dead targets skipped after a few failures with no timeout tax after them, every
/// closed target left out wherever it is in the pool, load spread by weight within a
/// priority, a target whose token fails left out, attempts sent and never answered charged,
/// and the replayed body the caller's bytes.
mod health {
    use super::common::{self, client, Cluster, Envoy, EnvoyOptions, PoolYaml};
    use super::pools::{body_json, chat, data_plane, plugin_config, resources, PAYG_HOST};
    use azure_standin::{Deployment, EndpointKind, Fault, StandIn, StandInConfig};
    use futures_util::StreamExt;
    use serde_json::{json, Value};
    use std::time::{Duration, Instant};

    /// Envoy (2 workers) in front of the pools of `plugin`, whose targets are `targets`
    /// (backend, port), built from the shipped recipe (`opts`: less of it). Also a model
    /// `direct` served by `payg` alone: the latency of a request that needs no failover.
    async fn pool_envoy(
        plugin: &Value,
        token_clusters: Vec<Cluster>,
        targets: &[(&str, u16)],
        opts: PoolYaml,
    ) -> Envoy {
        let mut plugin = plugin.clone();
        plugin["models"]["direct"] = json!({"backend": "payg", "deployment": "gpt-4o-global"});
        let (clusters, routes) =
            common::failover_pool_yaml_with(&plugin, common::DEFAULT_ROUTING_HEADER, targets, opts);
        let mut o = EnvoyOptions::new(plugin);
        o.clusters = token_clusters;
        o.extra_clusters_yaml = Some(clusters);
        o.extra_routes_yaml = Some(routes);
        o.concurrency = 2;
        o.backend_routes = targets.iter().map(|(n, _)| n.to_string()).collect();
        Envoy::start(o).await
    }

    fn entra(ptu: &StandIn, payg: &StandIn) -> Vec<Cluster> {
        vec![
            Cluster::new("entra-contoso", ptu.port()),
            Cluster::new("entra-partner", payg.port()),
        ]
    }

    /// A port that never accepts a connection: a listening socket whose backlog (of one) is
    /// full, so the kernel drops every further SYN, as a black-holed address does.
    fn black_hole() -> (std::net::TcpListener, std::net::TcpStream, u16) {
        use std::os::fd::FromRawFd;
        // SAFETY: plain socket calls on a descriptor this function owns; the listener takes
        // it over.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            assert!(fd >= 0);
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            addr.sin_family = libc::AF_INET as libc::sa_family_t;
            addr.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            assert_eq!(
                libc::bind(fd, &addr as *const _ as *const libc::sockaddr, len),
                0
            );
            assert_eq!(libc::listen(fd, 0), 0);
            let listener = std::net::TcpListener::from_raw_fd(fd);
            let port = listener.local_addr().unwrap().port();
            let filler = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            (listener, filler, port)
        }
    }

    async fn timed(envoy: &Envoy, model: &str) -> (u16, Duration) {
        let t = Instant::now();
        let resp = client()
            .post(envoy.url("/v1/chat/completions"))
            .json(&json!({"model": model, "messages": [{"role": "user", "content": "hello"}]}))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let _ = resp.bytes().await;
        (status, t.elapsed())
    }

    async fn stat(envoy: &Envoy, name: &str) -> u64 {
        envoy.stat(name).await.unwrap_or(0)
    }

    fn unreachable() -> String {
        format!(
            "wasmcustom.{}",
            azure_llm_filter::metrics::target_attempts("ptu", "unreachable")
        )
    }

    /// After the PTU was found dead: requests to the pool, interleaved with requests to
    /// PAYG alone; every one is served and the median added latency is under 50 ms (the
    /// connect timeout is 2 s: a request that still waited for the PTU would show it).
    async fn no_timeout_tax(envoy: &Envoy) {
        let mut added = Vec::new();
        for _ in 0..10 {
            let (s, pool) = timed(envoy, "gpt-4o").await;
            assert_eq!(s, 200);
            let (s, direct) = timed(envoy, "direct").await;
            assert_eq!(s, 200);
            assert!(pool < Duration::from_secs(1), "a request waited: {pool:?}");
            added.push(pool.as_secs_f64() - direct.as_secs_f64());
        }
        added.sort_by(f64::total_cmp);
        let median = added[added.len() / 2];
        eprintln!("added latency after the dead PTU was learnt (s): {added:?}");
        assert!(median < 0.050, "median added latency {median} s: {added:?}");
    }

    /// A black-holed PTU with the shipped pool: the first requests (3, at once) each pay the
    /// connect timeout (2 s) and are served by PAYG; by then both Envoy's outlier detection
    /// and the filter's own target health have ejected the PTU, and no later request waits
    /// for it (5.0 s on every request before).
    #[tokio::test]
    async fn a_black_holed_target_costs_only_the_first_requests_their_connect_timeout() {
        let (ptu, payg) = resources().await;
        let (_listener, _filler, port) = black_hole();
        let envoy = pool_envoy(
            &plugin_config(&ptu),
            entra(&ptu, &payg),
            &[("ptu", port), ("payg", payg.port())],
            PoolYaml::default(),
        )
        .await;
        let first = futures_util::future::join_all((0..3).map(|_| timed(&envoy, "gpt-4o"))).await;
        for (s, t) in &first {
            assert_eq!(*s, 200);
            assert!(
                *t >= Duration::from_millis(1500),
                "the PTU is black-holed: {t:?}"
            );
        }
        assert_eq!(stat(&envoy, &unreachable()).await, 3, "{}", envoy.logs());
        assert_eq!(
            stat(
                &envoy,
                "cluster.ptu.outlier_detection.ejections_enforced_total"
            )
            .await,
            1
        );
        // (Envoy's count of connect timeouts is no measure here: a connection it opened for
        // a request that went elsewhere still times out later.)
        no_timeout_tax(&envoy).await;
        assert_eq!(
            stat(&envoy, &unreachable()).await,
            3,
            "the PTU was not tried again"
        );
        assert_eq!(data_plane(&payg).len(), 3 + 20);
    }

    /// The same without Envoy's outlier detection: the filter's own target health learns the
    /// timeouts (its upstream filter sees the attempts that got no answer) and leaves the PTU
    /// out.
    #[tokio::test]
    async fn the_filters_own_health_leaves_out_a_black_holed_target() {
        let (ptu, payg) = resources().await;
        let (_listener, _filler, port) = black_hole();
        let envoy = pool_envoy(
            &plugin_config(&ptu),
            entra(&ptu, &payg),
            &[("ptu", port), ("payg", payg.port())],
            PoolYaml {
                outlier_detection: false,
            },
        )
        .await;
        let first = futures_util::future::join_all((0..3).map(|_| timed(&envoy, "gpt-4o"))).await;
        assert!(first.iter().all(|(s, _)| *s == 200), "{first:?}");
        assert_eq!(stat(&envoy, &unreachable()).await, 3);
        no_timeout_tax(&envoy).await;
        assert_eq!(
            stat(&envoy, &unreachable()).await,
            3,
            "the PTU was not tried again"
        );
    }

    /// And a PTU that refuses connections, again without outlier detection.
    #[tokio::test]
    async fn the_filters_own_health_leaves_out_a_refusing_target() {
        let (ptu, payg) = resources().await;
        let envoy = pool_envoy(
            &plugin_config(&ptu),
            entra(&ptu, &payg),
            &[("ptu", common::free_port()), ("payg", payg.port())],
            PoolYaml {
                outlier_detection: false,
            },
        )
        .await;
        for _ in 0..3 {
            assert_eq!(timed(&envoy, "gpt-4o").await.0, 200);
        }
        assert_eq!(stat(&envoy, &unreachable()).await, 3);
        no_timeout_tax(&envoy).await;
        assert_eq!(
            stat(&envoy, "cluster.ptu.upstream_cx_connect_fail").await,
            3
        );
    }

    /// Three resources; `mid` has the PTU's tenant and keys, its own deployment.
    async fn three_resources() -> (StandIn, StandIn, StandIn) {
        let (ptu, payg) = resources().await;
        let mid = StandIn::start_sharing_keys(
            &ptu,
            StandInConfig {
                deployments: vec![Deployment::new("gpt-4o-mid", "gpt-4o", "OpenAI")],
                ..StandInConfig::default()
            },
        )
        .await
        .unwrap();
        (ptu, mid, payg)
    }

    fn three_targets(ptu: &StandIn, targets: Value) -> Value {
        let mut p = plugin_config(ptu);
        p["backends"]["mid"] = json!({"kind": "azure_openai", "host": "contoso-mid.openai.azure.com",
                                      "api_version": "2024-10-21", "credential": "contoso"});
        p["models"]["gpt-4o"]["targets"] = targets;
        p
    }

    /// A throttled target in the middle of a pool is left out like one at its start (it was
    /// tried once per request before).
    #[tokio::test]
    async fn a_throttled_target_in_the_middle_of_a_pool_is_not_tried() {
        let (ptu, mid, payg) = three_resources().await;
        let plugin = three_targets(
            &ptu,
            json!([{"backend": "ptu", "deployment": "gpt-4o-ptu"},
                   {"backend": "mid", "deployment": "gpt-4o-mid"},
                   {"backend": "payg", "deployment": "gpt-4o-global"}]),
        );
        let envoy = pool_envoy(
            &plugin,
            entra(&ptu, &payg),
            &[
                ("ptu", ptu.port()),
                ("mid", mid.port()),
                ("payg", payg.port()),
            ],
            PoolYaml::default(),
        )
        .await;
        let short = Fault::RateLimitedMs { retry_after_ms: 1 };
        ptu.push_fault(EndpointKind::DataPlane, short.clone(), 1);
        mid.push_fault(
            EndpointKind::DataPlane,
            Fault::RateLimitedMs {
                retry_after_ms: 30_000,
            },
            1,
        );
        assert_eq!(chat(&envoy).await.status(), 200);
        assert_eq!(
            (
                data_plane(&ptu).len(),
                data_plane(&mid).len(),
                data_plane(&payg).len()
            ),
            (1, 1, 1)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        ptu.push_fault(EndpointKind::DataPlane, short, 1);
        assert_eq!(chat(&envoy).await.status(), 200);
        assert_eq!(data_plane(&ptu).len(), 2, "the PTU is open again");
        assert_eq!(
            data_plane(&mid).len(),
            1,
            "the throttled middle target is left out"
        );
        assert_eq!(data_plane(&payg).len(), 2);
    }

    /// Two PTUs of equal priority with weights 3 and 1, PAYG after them: 1,000 requests start
    /// 750 / 250 (within 10%; smooth weighted round robin per worker is exact), none reaches
    /// PAYG; a throttled PTU's share goes to the other.
    #[tokio::test]
    async fn weights_spread_requests_within_a_priority_and_a_throttled_target_is_skipped() {
        let (east, west, payg) = three_resources().await;
        let plugin = three_targets(
            &east,
            json!([{"backend": "ptu", "deployment": "gpt-4o-ptu", "priority": 0, "weight": 3},
                   {"backend": "mid", "deployment": "gpt-4o-mid", "priority": 0},
                   {"backend": "payg", "deployment": "gpt-4o-global", "priority": 1}]),
        );
        let envoy = pool_envoy(
            &plugin,
            entra(&east, &payg),
            &[
                ("ptu", east.port()),
                ("mid", west.port()),
                ("payg", payg.port()),
            ],
            PoolYaml::default(),
        )
        .await;
        let statuses: Vec<u16> = futures_util::stream::iter(0..1000)
            .map(|_| async { chat(&envoy).await.status().as_u16() })
            .buffer_unordered(16)
            .collect()
            .await;
        assert!(statuses.iter().all(|s| *s == 200));
        let (e, w) = (data_plane(&east).len(), data_plane(&west).len());
        eprintln!("1,000 requests: east {e}, west {w}");
        assert!((675..=825).contains(&e), "east {e}");
        assert!((225..=275).contains(&w), "west {w}");
        assert_eq!(e + w, 1000);
        assert_eq!(data_plane(&payg).len(), 0);

        // The heavier PTU throttled: its next request spills to the other PTU (same
        // priority, next in line), then it is skipped while the lighter one takes everything.
        east.push_fault(
            EndpointKind::DataPlane,
            Fault::RateLimitedMs {
                retry_after_ms: 30_000,
            },
            1,
        );
        for _ in 0..20 {
            assert_eq!(chat(&envoy).await.status(), 200);
        }
        assert_eq!(
            data_plane(&east).len() - e,
            1,
            "the throttled PTU is tried once"
        );
        assert_eq!(data_plane(&west).len() - w, 20);
        assert_eq!(data_plane(&payg).len(), 0);
    }

    /// A target whose credential cannot get a token (a wrong secret here) is known before a
    /// request needs it (the listener filter fetches the tokens of every pool target at
    /// start) and left out: a spill moves on to the next target (it got 503 before).
    #[tokio::test]
    async fn a_target_whose_token_fails_is_left_out_and_the_spill_moves_on() {
        let (ptu, payg) = resources().await;
        let mut plugin = plugin_config(&ptu);
        plugin["credentials"]["broken"] = json!({"kind": "client_secret",
            "tenant_id": super::pools::PAYG_TENANT, "client_id": super::pools::PAYG_CLIENT,
            "client_secret": "not-the-secret", "token_cluster": "entra-partner"});
        plugin["backends"]["payg-east"] = json!({"kind": "azure_openai_v1",
            "host": "partner-payg-east.openai.azure.com", "credential": "broken"});
        plugin["models"]["gpt-4o"]["targets"] = json!([
            {"backend": "ptu", "deployment": "gpt-4o-ptu"},
            {"backend": "payg-east", "deployment": "gpt-4o-global"},
            {"backend": "payg", "deployment": "gpt-4o-global"}]);
        let envoy = pool_envoy(
            &plugin,
            entra(&ptu, &payg),
            &[
                ("ptu", ptu.port()),
                ("payg-east", payg.port()),
                ("payg", payg.port()),
            ],
            PoolYaml::default(),
        )
        .await;
        // The start-up fetch of the broken credential has failed, and the filter knows it:
        // the stand-in's record of its 401 comes before Envoy has read the answer, and a
        // request sent in between finds the fetch still in flight (its attempt then waits
        // for the token and is refused with it: CI once failed so).
        let deadline = Instant::now() + Duration::from_secs(10);
        while fetches_failed(&envoy, "broken").await == 0 {
            assert!(
                Instant::now() < deadline,
                "no failed token fetch counted ({} token requests): {}",
                payg.requests_of(EndpointKind::Token).len(),
                envoy.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ptu.push_fault(
            EndpointKind::DataPlane,
            Fault::RateLimitedMs {
                retry_after_ms: 30_000,
            },
            1,
        );
        let resp = chat(&envoy).await;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 200, "{body} {}", envoy.logs());
        let g = data_plane(&payg);
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].header("host"), Some(PAYG_HOST));
    }

    /// The failed Entra token fetches the filter has counted for `credential` (any failure
    /// code).
    async fn fetches_failed(envoy: &Envoy, credential: &str) -> u64 {
        let prefix = format!(
            "wasmcustom.{}",
            azure_llm_filter::metrics::token_fetches(credential, "")
        );
        // The name ends with the result's value and its end mark: cut both.
        let prefix = prefix.trim_end().to_string();
        let Ok(resp) = client()
            .get(envoy.admin_url("/stats?filter=token_fetches"))
            .send()
            .await
        else {
            return 0;
        };
        let body = resp.text().await.unwrap_or_default();
        body.lines()
            .filter_map(|l| l.split_once(": "))
            .filter(|(k, _)| k.starts_with(&prefix) && !k.ends_with(".ok "))
            .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
            .sum()
    }

    /// An attempt that reached the PTU and was never answered (the connection dropped after
    /// the request) before PAYG answered: Azure may bill it, so the caller's budget is
    /// charged its estimate on top of PAYG's usage (it was charged nothing before).
    #[tokio::test]
    async fn an_attempt_sent_and_never_answered_is_charged_its_estimate() {
        let (ptu, payg) = resources().await;
        let envoy = pool_envoy(
            &plugin_config(&ptu),
            entra(&ptu, &payg),
            &[("ptu", ptu.port()), ("payg", payg.port())],
            PoolYaml::default(),
        )
        .await;
        // Local counters use minute windows: stay inside one.
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        if secs % 60 >= 57 {
            tokio::time::sleep(Duration::from_secs(61 - secs % 60)).await;
        }
        let request = json!({"model": "gpt-4o", "max_tokens": 10,
                             "messages": [{"role": "user", "content": "lost once"}]});
        let estimate = (serde_json::to_vec(&request).unwrap().len() as u64).div_ceil(4) + 10;
        ptu.push_fault(EndpointKind::DataPlane, Fault::DropConnection, 1);
        let resp = client()
            .post(envoy.url("/v1/chat/completions"))
            .json(&request)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let served: Value = resp.json().await.unwrap();
        let usage = served["usage"]["total_tokens"].as_u64().unwrap();
        assert_eq!(data_plane(&ptu).len(), 1, "the PTU received it");
        assert_eq!(data_plane(&payg).len(), 1);
        assert_eq!(stat(&envoy, &unreachable()).await, 1);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let probe = json!({"model": "gpt-4o", "max_tokens": 1,
                           "messages": [{"role": "user", "content": "probe"}]});
        let probe_estimate = (serde_json::to_vec(&probe).unwrap().len() as u64).div_ceil(4) + 1;
        let resp = client()
            .post(envoy.url("/v1/chat/completions"))
            .json(&probe)
            .send()
            .await
            .unwrap();
        let remaining = common::header_u64(&resp, "x-ratelimit-remaining-tokens").unwrap();
        let used = 1_000_000 - remaining - probe_estimate;
        assert_eq!(
            used,
            usage + estimate,
            "PAYG's usage and the lost attempt's estimate"
        );
    }

    /// The pool `targets` (of ptu, payg-east, payg) where payg-east's credential gets no
    /// token, slowly: its Entra (a stand-in of its own, so that only its token requests are
    /// slow) answers after 3 s and knows no such client. Envoy starts while that fetch is in
    /// flight.
    async fn slow_broken_pool(targets: Value) -> (StandIn, StandIn, StandIn, Envoy) {
        let (ptu, payg) = resources().await;
        let slow_entra = StandIn::start(StandInConfig {
            tenant_id: super::pools::PAYG_TENANT.into(),
            ..StandInConfig::default()
        })
        .await
        .unwrap();
        slow_entra.push_fault(
            EndpointKind::Token,
            Fault::Delay(Duration::from_millis(3_000)),
            10,
        );
        let mut plugin = plugin_config(&ptu);
        plugin["credentials"]["broken"] = json!({"kind": "client_secret",
            "tenant_id": super::pools::PAYG_TENANT, "client_id": super::pools::PAYG_CLIENT,
            "client_secret": "partner-secret", "token_cluster": "entra-slow"});
        plugin["backends"]["payg-east"] = json!({"kind": "azure_openai_v1",
            "host": "partner-payg-east.openai.azure.com", "credential": "broken"});
        plugin["models"]["gpt-4o"]["targets"] = targets;
        let mut token_clusters = entra(&ptu, &payg);
        token_clusters.push(Cluster::new("entra-slow", slow_entra.port()));
        let envoy = pool_envoy(
            &plugin,
            token_clusters,
            &[
                ("ptu", ptu.port()),
                ("payg-east", payg.port()),
                ("payg", payg.port()),
            ],
            PoolYaml::default(),
        )
        .await;
        (ptu, payg, slow_entra, envoy)
    }

    /// A target whose token fetch is still in flight when a spill reaches it, and then fails:
    /// the attempt that waited for the token goes on to the next target, and the caller gets
    /// PAYG's 200 (it got the waiting attempt's 503 `backend_token_unavailable` before:
    /// Envoy's router never retries an upstream filter's own answer). The attempt went to its
    /// target without any token: not the PTU's, which the request carried from its first
    /// attempt.
    #[tokio::test]
    async fn a_token_fetch_in_flight_that_fails_moves_the_spill_on_to_the_next_target() {
        let (ptu, payg, slow_entra, envoy) = slow_broken_pool(json!([
            {"backend": "ptu", "deployment": "gpt-4o-ptu"},
            {"backend": "payg-east", "deployment": "gpt-4o-global"},
            {"backend": "payg", "deployment": "gpt-4o-global"}]))
        .await;
        ptu.push_fault(
            EndpointKind::DataPlane,
            Fault::RateLimitedMs {
                retry_after_ms: 30_000,
            },
            1,
        );
        let sent = Instant::now();
        let resp = chat(&envoy).await;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 200, "{body} {}", envoy.logs());
        // The broken credential's fetch was in flight when the spill reached its target, and
        // the attempt waited for its answer (the PTU's 429 and PAYG's answer are immediate):
        // else this test shows nothing.
        let took = sent.elapsed();
        assert!(took >= Duration::from_millis(1_000), "took {took:?}");
        assert!(!slow_entra.requests_of(EndpointKind::Token).is_empty());
        let g = data_plane(&payg);
        assert_eq!(g.len(), 2, "payg-east's attempt, then PAYG's");
        assert_eq!(
            g[0].header("host"),
            Some("partner-payg-east.openai.azure.com")
        );
        assert_eq!(
            g[0].header("authorization"),
            None,
            "an attempt without its token carries no other target's"
        );
        assert_eq!(g[0].outcome_status, 401);
        assert_eq!(g[1].header("host"), Some(PAYG_HOST));
        assert_eq!(g[1].outcome_status, 200);
        let no_token = format!(
            "wasmcustom.{}",
            azure_llm_filter::metrics::target_attempts("payg-east", "no_token")
        );
        assert_eq!(stat(&envoy, &no_token).await, 1);
        // The credential's failure leaves its target out of the next request (the PTU is
        // throttled now: it starts at PAYG).
        let resp = client()
            .post(envoy.url("/v1/chat/completions"))
            .json(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "again"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(data_plane(&payg).len(), 3);
        assert_eq!(data_plane(&payg)[2].header("host"), Some(PAYG_HOST));
    }

    /// The same when the target whose token fetch is in flight and then fails is the first
    /// of the pool: the listener filter's request waited for that token, and goes on to the
    /// pool without it instead of answering 503 (it did before); the upstream filter handles
    /// the first attempt like a later one, and PAYG serves.
    #[tokio::test]
    async fn a_first_targets_token_fetch_that_fails_moves_the_request_on() {
        let (_ptu, payg, _slow_entra, envoy) = slow_broken_pool(json!([
            {"backend": "payg-east", "deployment": "gpt-4o-global"},
            {"backend": "payg", "deployment": "gpt-4o-global"}]))
        .await;
        let sent = Instant::now();
        let resp = chat(&envoy).await;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 200, "{body} {}", envoy.logs());
        let took = sent.elapsed();
        assert!(
            took >= Duration::from_millis(1_000),
            "took {took:?}: no wait"
        );
        let g = data_plane(&payg);
        assert_eq!(g.len(), 2, "payg-east's attempt, then PAYG's");
        assert_eq!(
            g[0].header("host"),
            Some("partner-payg-east.openai.azure.com")
        );
        assert_eq!(g[0].header("authorization"), None);
        assert_eq!(g[1].header("host"), Some(PAYG_HOST));
        assert_eq!(g[1].outcome_status, 200);
    }

    /// The same when the target without a token is the last one left: the caller gets the
    /// filter's 503 `backend_token_unavailable` with Retry-After, in OpenAI's shape, not the
    /// target's refusal of a request without a token.
    #[tokio::test]
    async fn a_token_fetch_that_fails_on_the_last_target_gives_the_filters_503() {
        let (ptu, payg, _slow_entra, envoy) = slow_broken_pool(json!([
            {"backend": "ptu", "deployment": "gpt-4o-ptu"},
            {"backend": "payg-east", "deployment": "gpt-4o-global"}]))
        .await;
        ptu.push_fault(
            EndpointKind::DataPlane,
            Fault::RateLimitedMs {
                retry_after_ms: 30_000,
            },
            1,
        );
        let resp = chat(&envoy).await;
        let status = resp.status();
        let retry_after = resp.headers().get("retry-after").cloned();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 503, "{body} {}", envoy.logs());
        assert_eq!(body["error"]["code"], "backend_token_unavailable", "{body}");
        assert!(retry_after.is_some());
        let g = data_plane(&payg);
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].header("authorization"), None);
    }

    /// The replayed body is the caller's bytes with only the `model` value changed (it was
    /// re-serialized for v1 targets: keys sorted, escapes decoded).
    #[tokio::test]
    async fn the_replayed_body_is_the_callers_bytes_with_only_the_model_changed() {
        let (ptu, payg) = resources().await;
        let envoy = pool_envoy(
            &plugin_config(&ptu),
            entra(&ptu, &payg),
            &[("ptu", ptu.port()), ("payg", payg.port())],
            PoolYaml::default(),
        )
        .await;
        let body = r#"{"messages": [{"role":"user","content":"caf\u00e9 \"model\":1"}],
            "temperature":0.50, "model" : "gpt-4o", "a_last_key":[1, 2.0e0]}"#;
        ptu.push_fault(
            EndpointKind::DataPlane,
            Fault::RateLimitedMs {
                retry_after_ms: 30_000,
            },
            1,
        );
        let resp = client()
            .post(envoy.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(String::from_utf8_lossy(&data_plane(&ptu)[0].body), body);
        let replayed = String::from_utf8_lossy(&data_plane(&payg)[0].body).to_string();
        assert_eq!(
            replayed,
            body.replace(r#""model" : "gpt-4o""#, r#""model" : "gpt-4o-global""#)
        );
        assert_eq!(body_json(&data_plane(&payg)[0])["model"], "gpt-4o-global");
    }
}
