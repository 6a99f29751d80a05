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

/// What the AKS webhook sets in the pod (the authority host is the real one: the `entra`
/// cluster leads to the stand-in). `token_file` None: no AZURE_FEDERATED_TOKEN_FILE.
fn webhook_env(standin: &StandIn, token_file: Option<&Path>) -> Vec<(String, String)> {
    let mut env = vec![
        ("AZURE_CLIENT_ID".to_string(), CLIENT_ID.to_string()),
        ("AZURE_TENANT_ID".to_string(), standin.tenant_id()),
        (
            "AZURE_AUTHORITY_HOST".to_string(),
            "https://login.microsoftonline.com/".to_string(),
        ),
    ];
    if let Some(f) = token_file {
        env.push((
            "AZURE_FEDERATED_TOKEN_FILE".to_string(),
            f.to_string_lossy().into_owned(),
        ));
    }
    env
}

/// A stand-in Entra trusting only the Kubernetes issuer's tokens for the gateway's service
/// account; Envoy with the shipped token route and credential (plus `credential_extra`) and
/// Envoy's environment from `env` (its names are the VM's `host_env_keys`, as shipped).
async fn setup_with(
    token_lifetime_secs: u64,
    token_file: PathBuf,
    env: impl FnOnce(&StandIn) -> Vec<(String, String)>,
    credential_extra: Value,
) -> Setup {
    let tweaks = Tweaks {
        credential_extra,
        ..Tweaks::default()
    };
    setup_tweaked(token_lifetime_secs, token_file, env, tweaks).await
}

/// Less usual settings of a setup.
struct Tweaks {
    /// Fields added to the shipped credential.
    credential_extra: Value,
    log_level: &'static str,
    /// More routes on the public listener (`EnvoyOptions::extra_routes_yaml`).
    extra_routes_yaml: Option<String>,
}

impl Default for Tweaks {
    fn default() -> Self {
        Tweaks {
            credential_extra: json!({}),
            log_level: "info",
            extra_routes_yaml: None,
        }
    }
}

async fn setup_tweaked(
    token_lifetime_secs: u64,
    token_file: PathBuf,
    env: impl FnOnce(&StandIn) -> Vec<(String, String)>,
    tweaks: Tweaks,
) -> Setup {
    let credential_extra = tweaks.credential_extra;
    let issuer = KubernetesIssuer::new().unwrap();
    let standin = StandIn::start(StandInConfig {
        clients: vec![issuer.federated_client(CLIENT_ID, NAMESPACE, SERVICE_ACCOUNT)],
        external_issuers: vec![issuer.trust()],
        token_lifetime_secs,
        ..StandInConfig::default()
    })
    .await
    .unwrap();
    let mut credential = shipped_credential();
    for (k, v) in credential_extra.as_object().unwrap() {
        credential[k] = v.clone();
    }
    let plugin = json!({
        "credentials": {"aks": credential},
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
    o.host_env = env(&standin);
    o.log_level = tweaks.log_level.into();
    o.extra_routes_yaml = tweaks.extra_routes_yaml;
    let envoy = Envoy::start(o).await;
    Setup {
        standin,
        envoy,
        issuer,
        token_file,
    }
}

/// The usual setup: the whole webhook environment, the token file at `token_file`.
async fn setup(token_lifetime_secs: u64, token_file: PathBuf) -> Setup {
    let file = token_file.clone();
    setup_with(
        token_lifetime_secs,
        token_file,
        move |s| webhook_env(s, Some(&file)),
        json!({}),
    )
    .await
}

/// Requests the token route answered (its listener's HTTP statistics).
async fn token_route_requests(envoy: &Envoy) -> u64 {
    envoy
        .stat(&format!("http.{TOKEN_ROUTE}.downstream_rq_total"))
        .await
        .unwrap_or(0)
}

/// Lines the filter logged about failed token requests.
fn failure_lines(envoy: &Envoy) -> Vec<String> {
    envoy
        .logs()
        .lines()
        .filter(|l| l.contains("token request failed"))
        .map(str::to_string)
        .collect()
}

/// Sends chats until the filter has logged `needle` (each must be a 503); the line.
async fn until_logged(envoy: &Envoy, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = chat(envoy).await;
        assert_eq!(status, 503, "{body} {}", envoy.logs());
        assert_eq!(body["error"]["code"], "backend_token_unavailable", "{body}");
        if let Some(l) = failure_lines(envoy)
            .into_iter()
            .find(|l| l.contains(needle))
        {
            return l;
        }
        assert!(
            Instant::now() < deadline,
            "{needle} never logged: {}",
            envoy.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
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
    // Entra tokens of 4 s: refreshed after 2 s, so the next exchange comes soon. Envoy at debug
    // level: not even its debug logs may show the assertion.
    let f = file.clone();
    let debug = Tweaks {
        log_level: "debug",
        ..Tweaks::default()
    };
    let s = setup_tweaked(4, file, move |st| webhook_env(st, Some(&f)), debug).await;
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
    // The assertion is never logged (neither by the filter nor by Envoy, even at debug level).
    let logs = s.envoy.logs();
    assert!(logs.contains("[debug]"), "debug logs captured");
    for token in [&first, &second] {
        let signature = token.rsplit('.').next().unwrap();
        assert!(!logs.contains(signature), "assertion in Envoy's log");
    }
}

/// What callers try to reach the token route: (method, path, headers).
type Attempt = (
    &'static str,
    &'static str,
    Vec<(&'static str, &'static str)>,
);

fn caller_attempts() -> Vec<Attempt> {
    let mut out = Vec::new();
    for method in ["GET", "POST"] {
        for (path, headers) in [
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
        ] {
            out.push((method, path, headers));
        }
    }
    out
}

/// The attempts that got the token file's content (by its signature) out of Envoy.
async fn leaks(envoy: &Envoy, token: &str) -> Vec<String> {
    let signature = token.rsplit('.').next().unwrap().to_string();
    let http = client();
    let mut leaked = Vec::new();
    for (method, path, headers) in caller_attempts() {
        let mut req = http.request(method.parse().unwrap(), envoy.url(path));
        for (k, v) in &headers {
            req = req.header(*k, *v);
        }
        if method == "POST" {
            req = req.json(&json!({"model": "gpt-4o", "messages": []}));
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        if body.contains(&signature) || status == 200 {
            leaked.push(format!("{method} {path} {headers:?}: {status}"));
        }
    }
    leaked
}

/// The token route is reachable from the filter's callout only: whatever a caller sends (the
/// route's path, its authority, the listener's name, the routing header naming its cluster),
/// it never gets the file's content. The same probe finds the leak of an Envoy misconfigured
/// with a route to the token cluster (so it is not blind).
#[tokio::test]
async fn callers_cannot_reach_the_token_route() {
    let file = token_dir().join("azure-identity-token");
    let issuer = KubernetesIssuer::new().unwrap();
    let token = issuer.service_account_token(NAMESPACE, SERVICE_ACCOUNT, 3600);
    write_token(&file, &token);
    let s = setup(3599, file.clone()).await;
    assert_eq!(chat(&s.envoy).await.0, 200, "{}", s.envoy.logs());
    let leaked = leaks(&s.envoy, &token).await;
    assert!(leaked.is_empty(), "reached the token route: {leaked:?}");
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
    drop(s);

    // Control: a route to the token cluster on the public listener leaks, and the probe sees it.
    let f = file.clone();
    let misconfigured = Tweaks {
        extra_routes_yaml: Some(format!(
            "- match: {{ path: \"/token\" }}\n  route: {{ cluster: {TOKEN_ROUTE} }}\n"
        )),
        ..Tweaks::default()
    };
    let s = setup_tweaked(
        3599,
        file,
        move |st| webhook_env(st, Some(&f)),
        misconfigured,
    )
    .await;
    let leaked = leaks(&s.envoy, &token).await;
    assert!(
        !leaked.is_empty(),
        "the probe missed a route to the token cluster"
    );
}

/// The token file is missing (the projected volume is not mounted): 503 for callers, the file
/// named in the log, once per back-off period (not per request); once the file appears the next
/// attempt succeeds.
#[tokio::test]
async fn missing_token_file_is_a_503_naming_the_file_once_per_back_off_then_recovers() {
    let file = token_dir().join("azure-identity-token");
    let s = setup(3599, file.clone()).await;
    let (status, body) = chat(&s.envoy).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "backend_token_unavailable");
    let lines = failure_lines(&s.envoy);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("token_file_unavailable")
            && lines[0].contains("AZURE_FEDERATED_TOKEN_FILE")
            && lines[0].contains(&*file.to_string_lossy()),
        "{}",
        lines[0]
    );
    // A burst within the back-off: answered at once, no new attempt, no new line.
    for _ in 0..10 {
        let (status, body) = chat(&s.envoy).await;
        assert_eq!(status, 503, "{body}");
    }
    let attempts = token_route_requests(&s.envoy).await;
    // One attempt per back-off period (1 s, then 2 s): the burst takes well under 3 s.
    assert!(attempts <= 3, "{attempts} attempts for 11 requests");
    assert_eq!(failure_lines(&s.envoy).len() as u64, attempts);
    assert_eq!(s.standin.count(EndpointKind::Token), 0, "Entra never asked");
    // The kubelet writes the file: the next attempt after the back-off succeeds.
    write_token(
        &file,
        &s.issuer
            .service_account_token(NAMESPACE, SERVICE_ACCOUNT, 3600),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while chat(&s.envoy).await.0 != 200 {
        assert!(Instant::now() < deadline, "no recovery: {}", s.envoy.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A variable the webhook did not set (the pod is not labelled, or the ServiceAccount not
/// annotated): 503 and the variable named; AZURE_FEDERATED_TOKEN_FILE missing from Envoy's own
/// environment is named by the token route.
#[tokio::test]
async fn missing_variables_are_503s_naming_the_variable() {
    let file = token_dir().join("azure-identity-token");
    let issuer = KubernetesIssuer::new().unwrap();
    write_token(
        &file,
        &issuer.service_account_token(NAMESPACE, SERVICE_ACCOUNT, 3600),
    );
    let f = file.clone();
    let s = setup_with(
        3599,
        file.clone(),
        move |st| {
            webhook_env(st, Some(&f))
                .into_iter()
                .filter(|(k, _)| k != "AZURE_CLIENT_ID")
                .collect()
        },
        json!({}),
    )
    .await;
    let line = until_logged(&s.envoy, "workload_identity_env_missing").await;
    assert!(
        line.contains("AZURE_CLIENT_ID is not set in the Wasm VM"),
        "{line}"
    );
    assert_eq!(token_route_requests(&s.envoy).await, 0);
    drop(s);

    let s = setup_with(3599, file, |st| webhook_env(st, None), json!({})).await;
    let line = until_logged(&s.envoy, "token_file_unavailable").await;
    assert!(
        line.contains("AZURE_FEDERATED_TOKEN_FILE is not set in Envoy's environment"),
        "{line}"
    );
    assert_eq!(s.standin.count(EndpointKind::Token), 0);
}

/// Entra's refusals of the projected token are named in the log with what they mean here:
/// another service account (AADSTS70021), another cluster (AADSTS700211), a token for another
/// audience (AADSTS700212, with the credential's `audience` set so the filter sends it).
#[tokio::test]
async fn entra_refusals_of_the_projected_token_are_named() {
    let file = token_dir().join("azure-identity-token");
    let issuer = KubernetesIssuer::new().unwrap();
    write_token(
        &file,
        &issuer.service_account_token(NAMESPACE, "default", 3600),
    );
    let s = setup(3599, file.clone()).await;
    let line = until_logged(&s.envoy, "AADSTS70021").await;
    assert!(
        line.contains("system:serviceaccount:llm-gateway:default")
            && line.contains("oidcIssuerProfile.issuerUrl"),
        "{line}"
    );
    let other_cluster =
        KubernetesIssuer::with_issuer("https://westeurope.oic.prod-aks.azure.com/x/y/").unwrap();
    write_token(
        &file,
        &other_cluster.service_account_token(NAMESPACE, SERVICE_ACCOUNT, 3600),
    );
    let line = until_logged(&s.envoy, "AADSTS700211").await;
    assert!(line.contains("westeurope.oic.prod-aks.azure.com"), "{line}");
    assert!(line.contains("trailing slash"), "{line}");
    drop(s);

    // The filter itself refuses a token for another audience before Entra sees it, unless the
    // credential says that audience is expected.
    let mut claims = issuer.service_account_claims(NAMESPACE, SERVICE_ACCOUNT, 3600);
    claims["aud"] = json!(["api://other"]);
    write_token(&file, &issuer.sign(&claims));
    let s = setup(3599, file.clone()).await;
    let line = until_logged(&s.envoy, "assertion_audience_mismatch").await;
    assert!(line.contains("api://other"), "{line}");
    assert_eq!(s.standin.count(EndpointKind::Token), 0);
    drop(s);
    let f = file.clone();
    let s = setup_with(
        3599,
        file,
        move |st| webhook_env(st, Some(&f)),
        json!({"audience": "api://other"}),
    )
    .await;
    let line = until_logged(&s.envoy, "AADSTS700212").await;
    assert!(line.contains("api://other"), "{line}");
    // Never the assertion, whatever failed.
    let signature = issuer.sign(&claims).rsplit('.').next().unwrap().to_string();
    assert!(!s.envoy.logs().contains(&signature));
}
