//! Issue 17, AKS workload identity without a sidecar, end to end through a real Envoy: the
//! internal token route of envoy/aks-workload-identity.yaml (an internal listener whose Lua
//! filter reads AZURE_FEDERATED_TOKEN_FILE on every request) serves the projected
//! service-account token to the filter's assertion callout; a stand-in Entra that trusts only
//! the stand-in Kubernetes issuer's token for `system:serviceaccount:llm-gateway:llm-gateway`
//! exchanges it. The token file is rotated during the tests, and callers try to reach it.

mod common;

use azure_standin::{EndpointKind, KubernetesIssuer, StandIn, StandInConfig};
use common::{client, Cluster, Envoy, EnvoyOptions};
use serde_json::{json, Value};
use serde_yaml::Value as Yaml;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const CLIENT_ID: &str = "55555555-5555-5555-5555-555555555555";
const NAMESPACE: &str = "llm-gateway";
const SERVICE_ACCOUNT: &str = "llm-gateway";
const TOKEN_ROUTE: &str = "workload_identity_token";

fn shipped_bootstrap() -> Yaml {
    let path = common::workspace_root().join("envoy/aks-workload-identity.yaml");
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The named entries of a list of the shipped bootstrap, as YAML list entries.
fn entries_named(list: &Yaml, name: &str) -> String {
    let picked: Vec<&Yaml> = list
        .as_sequence()
        .unwrap()
        .iter()
        .filter(|e| e["name"].as_str() == Some(name))
        .collect();
    assert_eq!(
        picked.len(),
        1,
        "one {name} in envoy/aks-workload-identity.yaml"
    );
    serde_yaml::to_string(&picked).unwrap()
}

/// The credential of the shipped plugin configuration.
fn shipped_credential() -> Value {
    let boot = shipped_bootstrap();
    let listener = &boot["static_resources"]["listeners"][0];
    let hcm = &listener["filter_chains"][0]["filters"][0]["typed_config"];
    let wasm = &hcm["http_filters"][0]["typed_config"]["config"];
    let plugin: Value =
        serde_json::from_str(wasm["configuration"]["value"].as_str().unwrap()).unwrap();
    plugin["credentials"]["aks"].clone()
}

/// A fresh directory for token files.
fn token_dir() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = common::workspace_root().join(format!(
        "target/e2e/workload-identity-files/{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Replaces the file atomically, as the kubelet's atomic writer does (new file, then rename).
fn write_token(path: &Path, token: &str) {
    let staged = path.with_extension("new");
    std::fs::write(&staged, token).unwrap();
    std::fs::rename(&staged, path).unwrap();
}

struct Setup {
    standin: StandIn,
    envoy: Envoy,
    issuer: KubernetesIssuer,
    token_file: PathBuf,
}

/// A stand-in Entra trusting only the Kubernetes issuer's tokens for the gateway's service
/// account; Envoy with the shipped token route and credential. `token_file` None: Envoy's
/// environment has no AZURE_FEDERATED_TOKEN_FILE.
async fn setup(token_lifetime_secs: u64, token_file: Option<PathBuf>) -> Setup {
    let issuer = KubernetesIssuer::new().unwrap();
    let standin = StandIn::start(StandInConfig {
        clients: vec![issuer.federated_client(CLIENT_ID, NAMESPACE, SERVICE_ACCOUNT)],
        external_issuers: vec![issuer.trust()],
        token_lifetime_secs,
        ..StandInConfig::default()
    })
    .await
    .unwrap();
    let plugin = json!({
        "credentials": {"aks": shipped_credential()},
        "backends": {"aoai": {"kind": "azure_openai", "host": "myresource.openai.azure.com",
                              "api_version": "2024-10-21", "credential": "aks"}},
        "models": {"gpt-4o": {"backend": "aoai", "deployment": "gpt-4o-prod"}}
    });
    let boot = shipped_bootstrap();
    let mut o = EnvoyOptions::new(plugin);
    o.clusters = vec![
        Cluster::new("entra", standin.port()),
        Cluster::new("aoai", standin.port()),
    ];
    o.backend_routes = vec!["aoai".into()];
    o.bootstrap_extensions_yaml =
        Some(serde_yaml::to_string(&boot["bootstrap_extensions"]).unwrap());
    o.extra_listeners_yaml = Some(entries_named(
        &boot["static_resources"]["listeners"],
        TOKEN_ROUTE,
    ));
    o.extra_clusters_yaml = Some(entries_named(
        &boot["static_resources"]["clusters"],
        TOKEN_ROUTE,
    ));
    if let Some(f) = &token_file {
        o.host_env = vec![(
            "AZURE_FEDERATED_TOKEN_FILE".into(),
            f.to_string_lossy().into_owned(),
        )];
    }
    let token_file = token_file.unwrap_or_default();
    let envoy = Envoy::start(o).await;
    Setup {
        standin,
        envoy,
        issuer,
        token_file,
    }
}

async fn chat(envoy: &Envoy) -> (u16, Value) {
    let resp = client()
        .post(envoy.url("/v1/chat/completions"))
        .json(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .expect("Envoy answers");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The client assertions Entra received, in order.
fn assertions(standin: &StandIn) -> Vec<String> {
    standin
        .requests_of(EndpointKind::Token)
        .iter()
        .map(|r| r.form_value("client_assertion").unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn envoy_serves_the_token_file_and_a_rotated_file_is_used_by_the_next_exchange() {
    let file = token_dir().join("azure-identity-token");
    let issuer = KubernetesIssuer::new().unwrap();
    let first = issuer.service_account_token(NAMESPACE, SERVICE_ACCOUNT, 3600);
    write_token(&file, &first);
    // Entra tokens of 4 s: refreshed after 2 s, so the next exchange comes soon.
    let s = setup(4, Some(file)).await;
    let (status, body) = chat(&s.envoy).await;
    assert_eq!(status, 200, "{body} {}", s.envoy.logs());
    assert_eq!(assertions(&s.standin), vec![first.clone()]);

    // The kubelet rotates the file: the next exchange presents the new token.
    let second = s
        .issuer
        .service_account_token(NAMESPACE, SERVICE_ACCOUNT, 3600);
    assert_ne!(first, second);
    write_token(&s.token_file, &second);
    let rotated_at = Instant::now();
    let deadline = rotated_at + Duration::from_secs(10);
    while assertions(&s.standin).len() < 2 {
        assert!(Instant::now() < deadline, "no refresh: {}", s.envoy.logs());
        assert_eq!(chat(&s.envoy).await.0, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen = assertions(&s.standin);
    assert_eq!(
        seen[1], second,
        "the exchange after the rotation used the new file"
    );
    assert!(s
        .standin
        .requests_of(EndpointKind::Token)
        .iter()
        .all(|r| r.outcome_status == 200));
    assert!(s
        .standin
        .requests_of(EndpointKind::DataPlane)
        .iter()
        .all(|r| r.outcome_status == 200));
    // The assertion is never logged (neither by the filter nor by Envoy at info level).
    let logs = s.envoy.logs();
    for token in [&first, &second] {
        let signature = token.rsplit('.').next().unwrap();
        assert!(!logs.contains(signature), "assertion in Envoy's log");
    }
}

/// The token route is reachable from the filter's callout only: whatever a caller sends (the
/// route's path, its authority, the listener's name, the routing header naming its cluster),
/// it never gets the file's content.
#[tokio::test]
async fn callers_cannot_reach_the_token_route() {
    let file = token_dir().join("azure-identity-token");
    let issuer = KubernetesIssuer::new().unwrap();
    let token = issuer.service_account_token(NAMESPACE, SERVICE_ACCOUNT, 3600);
    write_token(&file, &token);
    let s = setup(3599, Some(file)).await;
    assert_eq!(chat(&s.envoy).await.0, 200, "{}", s.envoy.logs());
    let http = client();
    let attempts: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("/token", vec![]),
        ("/token", vec![("host", "workload-identity.internal")]),
        ("/token", vec![("host", TOKEN_ROUTE)]),
        ("/token", vec![("x-azure-llm-backend", TOKEN_ROUTE)]),
        (
            "/token",
            vec![
                ("x-azure-llm-backend", TOKEN_ROUTE),
                ("host", "workload-identity.internal"),
            ],
        ),
        (
            "/v1/chat/completions",
            vec![("x-azure-llm-backend", TOKEN_ROUTE)],
        ),
    ];
    let signature = token.rsplit('.').next().unwrap().to_string();
    for (path, headers) in attempts {
        for method in ["GET", "POST"] {
            let mut req = http.request(method.parse().unwrap(), s.envoy.url(path));
            for (k, v) in &headers {
                req = req.header(*k, *v);
            }
            if method == "POST" {
                req = req.json(&json!({"model": "gpt-4o", "messages": []}));
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let body = resp.text().await.unwrap_or_default();
            assert!(
                !body.contains(&signature) && status != 200,
                "{method} {path} {headers:?} reached the token route: {status} {body}"
            );
        }
    }
    // The internal listener has no address Envoy listens on.
    let listeners: Value = client()
        .get(s.envoy.admin_url("/listeners?format=json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token_listener = listeners["listener_statuses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == TOKEN_ROUTE)
        .expect("the token listener is loaded");
    assert!(
        token_listener["local_address"]["socket_address"].is_null(),
        "{token_listener}"
    );
}
