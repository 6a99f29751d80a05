//! Issue 2, end to end through a real Envoy: a chat completion leaves Envoy rewritten for the
//! Azure OpenAI deployment, with an Entra token the stand-in verifies, and without the
//! caller's credentials; a malformed plugin config is refused by Envoy naming the field.

mod common;

use azure_standin::{EndpointKind, StandIn, StandInConfig};
use common::{client, Cluster, Envoy, EnvoyOptions};
use serde_json::{json, Value};

const HOST: &str = "myresource.openai.azure.com";

fn plugin_config(standin: &StandIn) -> Value {
    json!({
        "credentials": common::standin_credentials(&standin.tenant_id()),
        "backends": {"aoai": {"kind": "azure_openai", "host": HOST, "api_version": "2024-10-21", "credential": "main"}},
        "models": {"gpt-4o": {"backend": "aoai", "deployment": "gpt-4o-prod"}}
    })
}

fn options(standin: &StandIn, plugin: Value) -> EnvoyOptions {
    let mut o = EnvoyOptions::new(plugin);
    o.clusters = vec![
        Cluster::new("entra", standin.port()),
        Cluster::new("aoai", standin.port()),
    ];
    o.backend_routes = vec!["aoai".into()];
    o
}

async fn chat(envoy: &Envoy, body: Value) -> reqwest::Response {
    client()
        .post(envoy.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .expect("request reaches Envoy")
}

#[tokio::test]
async fn chat_completion_reaches_the_deployment_with_a_verified_entra_token() {
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    let envoy = Envoy::start(options(&standin, plugin_config(&standin))).await;

    let resp = client()
        .post(envoy.url("/v1/chat/completions"))
        .header("authorization", "Bearer caller-own-token")
        .header("api-key", "caller-api-key")
        .header("x-api-key", "caller-x-api-key")
        .header("x-azure-llm-backend", "somewhere-else")
        .json(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello from the mesh"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", envoy.logs());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert!(body["usage"]["total_tokens"].as_u64().unwrap() > 0);

    let seen = standin.requests_of(EndpointKind::DataPlane);
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    assert_eq!(r.outcome_status, 200, "the stand-in accepted the token");
    assert_eq!(r.path, "/openai/deployments/gpt-4o-prod/chat/completions");
    assert_eq!(r.query, "api-version=2024-10-21");
    assert_eq!(r.header("host"), Some(HOST));
    assert_eq!(r.header_count("authorization"), 1);
    let auth = r.header("authorization").unwrap();
    assert!(
        auth.starts_with("Bearer ey"),
        "an Entra JWT, not the caller's token"
    );
    assert_eq!(r.header("api-key"), None);
    assert_eq!(r.header("x-api-key"), None);
    // The routing header picked the route and stayed in the proxy.
    assert_eq!(r.header("x-azure-llm-backend"), None);

    let token_requests = standin.requests_of(EndpointKind::Token);
    assert_eq!(token_requests.len(), 1);
    let form = token_requests[0].form();
    assert!(form.contains(&("grant_type".into(), "client_credentials".into())));
    assert!(form.contains(&(
        "scope".into(),
        "https://cognitiveservices.azure.com/.default".into()
    )));
    assert_eq!(
        token_requests[0].header("host"),
        Some("login.microsoftonline.com")
    );

    // The token is cached: more requests, no more token fetches.
    for _ in 0..5 {
        let resp = chat(
            &envoy,
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "again"}]}),
        )
        .await;
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(standin.count(EndpointKind::Token), 1);
    assert_eq!(standin.count(EndpointKind::DataPlane), 6);
}

#[tokio::test]
async fn bad_requests_get_openai_style_errors_and_reach_nothing() {
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    let envoy = Envoy::start(options(&standin, plugin_config(&standin))).await;

    let resp = chat(&envoy, json!({"model": "gpt-5-imaginary", "messages": []})).await;
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "model_not_found");

    let resp = client()
        .post(envoy.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body("{\"model\": \"gpt-4o\", oops")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_json");

    let resp = chat(&envoy, json!({"messages": []})).await;
    assert_eq!(resp.status(), 400);

    // Unrouted paths fall through to Envoy's 404 route.
    let resp = client().get(envoy.url("/not/an/api")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    // ... even when the caller names a backend in the routing header: the filter removes it
    // from every request, so no path the filter does not serve can reach Azure.
    let resp = client()
        .post(envoy.url("/openai/not-an-api"))
        .header("x-azure-llm-backend", "aoai")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);

    assert_eq!(standin.count(EndpointKind::DataPlane), 0);
}

#[tokio::test]
async fn secret_from_the_vm_environment() {
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    let mut plugin = plugin_config(&standin);
    let cred = plugin["credentials"]["main"].as_object_mut().unwrap();
    cred.remove("client_secret");
    cred.insert("client_secret_env".into(), json!("AZURE_CLIENT_SECRET"));
    let mut opts = options(&standin, plugin);
    opts.env_vars = vec![("AZURE_CLIENT_SECRET".into(), "standin-secret".into())];
    let envoy = Envoy::start(opts).await;
    let resp = chat(
        &envoy,
        json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(resp.status(), 200, "{}", envoy.logs());
}

#[tokio::test]
async fn malformed_plugin_config_is_refused_naming_the_field() {
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    let mut plugin = plugin_config(&standin);
    plugin["credentials"]["main"]["client_sekret"] = json!("typo");
    let log = Envoy::start_expect_failure(options(&standin, plugin)).await;
    assert!(log.contains("credentials.main"), "{log}");
    assert!(log.contains("client_sekret"), "{log}");

    let mut plugin = plugin_config(&standin);
    plugin["models"]["gpt-4o"]["deployment"] = json!("../../admin");
    let log = Envoy::start_expect_failure(options(&standin, plugin)).await;
    assert!(log.contains("models.gpt-4o.deployment"), "{log}");

    // A secret variable missing from the VM environment is named too.
    let mut plugin = plugin_config(&standin);
    let cred = plugin["credentials"]["main"].as_object_mut().unwrap();
    cred.remove("client_secret");
    cred.insert("client_secret_env".into(), json!("NOT_SET_ANYWHERE"));
    let log = Envoy::start_expect_failure(options(&standin, plugin)).await;
    assert!(log.contains("credentials.main.client_secret_env"), "{log}");
}

#[tokio::test]
async fn entra_refusal_is_a_clean_503_and_logs_the_code_not_the_secret() {
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    let mut plugin = plugin_config(&standin);
    plugin["credentials"]["main"]["client_secret"] = json!("wrong-secret-value-123");
    let envoy = Envoy::start(options(&standin, plugin)).await;
    let resp = chat(&envoy, json!({"model": "gpt-4o", "messages": []})).await;
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "backend_token_unavailable");
    let logs = envoy.logs();
    assert!(logs.contains("AADSTS7000215"), "{logs}");
    assert!(
        !logs.contains("wrong-secret-value-123"),
        "secret leaked into logs"
    );
    assert_eq!(standin.count(EndpointKind::DataPlane), 0);

    // While Entra keeps refusing, the filter backs off instead of asking on every request.
    let before = standin.count(EndpointKind::Token);
    for _ in 0..5 {
        let resp = chat(&envoy, json!({"model": "gpt-4o", "messages": []})).await;
        assert_eq!(resp.status(), 503);
    }
    assert!(standin.count(EndpointKind::Token) <= before + 1);
}
