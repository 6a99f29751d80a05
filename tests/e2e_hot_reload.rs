//! Issue 9: a configuration update in a running Envoy (a new listener from LDS, as a control
//! plane or Istio sends it) applies to new requests, and the Entra tokens of credentials that
//! did not change survive it: they live in the VM's shared data under the credential's name and
//! a fingerprint of its settings, and Envoy keeps the VM when only the plugin configuration
//! changes (same `vm_id`, same code).

mod common;

use azure_standin::{ClientRegistration, Deployment, EndpointKind, StandIn, StandInConfig};
use common::{client, Cluster, Envoy, EnvoyOptions};
use serde_json::{json, Value};

const CLIENT_A: &str = "22222222-2222-2222-2222-222222222222";
const CLIENT_B: &str = "33333333-3333-3333-3333-333333333333";

fn plugin_config(standin: &StandIn, client_id: &str, models: Value) -> Value {
    json!({
        "credentials": {"main": {
            "kind": "client_secret",
            "tenant_id": standin.tenant_id(),
            "client_id": client_id,
            "client_secret": "standin-secret",
            "token_cluster": "entra"
        }},
        "backends": {"aoai": {"kind": "azure_openai", "host": "r.openai.azure.com", "api_version": "2024-10-21", "credential": "main"}},
        "models": models
    })
}

async fn chat(envoy: &Envoy, model: &str) -> (u16, Value) {
    let resp = client()
        .post(envoy.url("/v1/chat/completions"))
        .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn last_deployment(standin: &StandIn) -> String {
    standin
        .requests_of(EndpointKind::DataPlane)
        .pop()
        .expect("a data-plane request")
        .path
}

#[tokio::test]
async fn a_new_config_applies_and_unchanged_credentials_keep_their_token() {
    let mut cfg = StandInConfig::default();
    cfg.clients.push(ClientRegistration {
        client_id: CLIENT_B.to_string(),
        ..Default::default()
    });
    cfg.deployments
        .push(Deployment::new("gpt-4o-mini-prod", "gpt-4o-mini", "OpenAI"));
    let standin = StandIn::start(cfg).await.unwrap();
    let models_a = json!({"gpt-4o": {"backend": "aoai", "deployment": "gpt-4o-prod"}});
    let mut o = EnvoyOptions::new(plugin_config(&standin, CLIENT_A, models_a));
    o.clusters = vec![
        Cluster::new("entra", standin.port()),
        Cluster::new("aoai", standin.port()),
    ];
    o.backend_routes = vec!["aoai".into()];
    o.concurrency = 2;
    o.dynamic_listener = true;
    let mut envoy = Envoy::start(o).await;

    let (s, b) = chat(&envoy, "gpt-4o").await;
    assert_eq!(s, 200, "{b}");
    let (s, _) = chat(&envoy, "gpt-4o-mini").await;
    assert_eq!(s, 404, "not configured yet");
    assert_eq!(standin.count(EndpointKind::Token), 1);

    // B: a new model (and alias) on the same backend; credential `main` unchanged.
    let models_b = json!({
        "gpt-4o": {"backend": "aoai", "deployment": "gpt-4o-prod"},
        "gpt-4o-mini": {"backend": "aoai", "deployment": "gpt-4o-mini-prod", "aliases": ["mini"]}
    });
    envoy
        .update_plugin_config(plugin_config(&standin, CLIENT_A, models_b.clone()))
        .await
        .unwrap();
    let (s, b) = chat(&envoy, "mini").await;
    assert_eq!(s, 200, "the new config applies: {b}");
    assert_eq!(
        last_deployment(&standin),
        "/openai/deployments/gpt-4o-mini-prod/chat/completions"
    );
    for _ in 0..10 {
        assert_eq!(chat(&envoy, "gpt-4o").await.0, 200);
    }
    assert_eq!(
        standin.count(EndpointKind::Token),
        1,
        "the unchanged credential's token survived the update"
    );

    // C: the credential itself changes (another app registration): a new token is fetched, and
    // the old one is not used for it.
    envoy
        .update_plugin_config(plugin_config(&standin, CLIENT_B, models_b))
        .await
        .unwrap();
    let (s, b) = chat(&envoy, "gpt-4o").await;
    assert_eq!(s, 200, "{b}");
    let fetches = standin.requests_of(EndpointKind::Token);
    assert_eq!(fetches.len(), 2, "one new fetch for the changed credential");
    assert_eq!(
        fetches[1].form_value("client_id").as_deref(),
        Some(CLIENT_B)
    );
    let token = standin
        .requests_of(EndpointKind::DataPlane)
        .pop()
        .and_then(|r| r.header("authorization").map(str::to_string))
        .unwrap();
    let claims = token
        .strip_prefix("Bearer ")
        .and_then(|t| t.split('.').nth(1))
        .map(|p| {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .unwrap()
        })
        .map(|b| serde_json::from_slice::<Value>(&b).unwrap())
        .unwrap();
    assert_eq!(
        claims["appid"].as_str().or(claims["azp"].as_str()),
        Some(CLIENT_B)
    );

    // A config Envoy's filter refuses is not applied: the listener keeps serving the last one.
    let logs_before = envoy.logs().len();
    let mut bad = plugin_config(&standin, CLIENT_B, json!({}));
    bad["models"] = json!({"gpt-4o": {"backend": "nope", "deployment": "x"}});
    let refused = envoy.update_plugin_config(bad).await;
    assert!(
        refused.is_err(),
        "Envoy rejects a config the filter refuses"
    );
    assert_eq!(
        chat(&envoy, "mini").await.0,
        200,
        "still the last good config"
    );
    assert!(
        envoy.logs()[logs_before..].contains("models.gpt-4o.backend"),
        "the refusal names the field"
    );
}
