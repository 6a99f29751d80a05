//! Issue 3, each credential kind end to end against the stand-in: the token it obtains is one
//! the stand-in's Azure data plane accepts.

mod common;

use azure_standin::{
    ClientRegistration, EndpointKind, StandIn, StandInConfig, DEFAULT_CLIENT_ID,
    DEFAULT_IDENTITY_HEADER, DEFAULT_MI_CLIENT_ID,
};
use common::{client, workspace_root, Cluster, Envoy, EnvoyOptions};
use serde_json::{json, Value};

const CERT_CLIENT: &str = "55555555-5555-5555-5555-555555555555";

fn key_file(name: &str) -> String {
    std::fs::read_to_string(workspace_root().join("tests/keys").join(name)).unwrap()
}

fn plugin_config(credentials: Value, credential: &str) -> Value {
    json!({
        "credentials": credentials,
        "backends": {"aoai": {"kind": "azure_openai", "host": "r.openai.azure.com", "api_version": "2024-10-21", "credential": credential}},
        "models": {"gpt-4o": {"backend": "aoai", "deployment": "gpt-4o-prod"}}
    })
}

async fn run(
    cfg: StandInConfig,
    credentials: Value,
    credential: &str,
    env: Vec<(String, String)>,
) -> StandIn {
    let standin = StandIn::start(cfg).await.unwrap();
    let mut o = EnvoyOptions::new(plugin_config(credentials, credential));
    o.clusters = vec![
        Cluster::new("entra", standin.port()),
        Cluster::new("imds", standin.port()),
        Cluster::new("aoai", standin.port()),
    ];
    o.backend_routes = vec!["aoai".into()];
    o.env_vars = env;
    let envoy = Envoy::start(o).await;
    let resp = client()
        .post(envoy.url("/v1/chat/completions"))
        .json(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    assert_eq!(status, 200, "{body}\n{}", envoy.logs());
    let served = standin.requests_of(EndpointKind::DataPlane);
    assert_eq!(served.len(), 1);
    assert_eq!(served[0].outcome_status, 200, "Azure accepted the token");
    standin
}

#[tokio::test]
async fn client_certificate_signs_an_assertion_entra_accepts() {
    let mut cfg = StandInConfig::default();
    cfg.clients.push(ClientRegistration::with_certificate(
        CERT_CLIENT,
        &key_file("client-cert.pem"),
    ));
    let tenant = cfg.tenant_id.clone();
    for algorithm in ["PS256", "RS256"] {
        let creds = json!({"cert": {
            "kind": "client_certificate", "tenant_id": tenant, "client_id": CERT_CLIENT,
            "private_key_env": "CLIENT_KEY", "certificate_pem": key_file("client-cert.pem"),
            "algorithm": algorithm, "token_cluster": "entra"
        }});
        let standin = run(
            cfg.clone(),
            creds,
            "cert",
            vec![("CLIENT_KEY".into(), key_file("client-pkcs8.pem"))],
        )
        .await;
        let form = standin.requests_of(EndpointKind::Token)[0].form();
        assert!(form
            .iter()
            .any(|(k, v)| k == "client_assertion_type" && v.ends_with("jwt-bearer")));
        assert!(!form.iter().any(|(k, _)| k == "client_secret"));
    }
}

#[tokio::test]
async fn managed_identity_from_imds_and_app_service() {
    let cfg = StandInConfig::default();
    let imds = json!({"mi": {"kind": "managed_identity", "client_id": DEFAULT_MI_CLIENT_ID, "token_cluster": "imds"}});
    let standin = run(cfg.clone(), imds, "mi", vec![]).await;
    let r = &standin.requests_of(EndpointKind::Imds)[0];
    assert_eq!(r.header("metadata"), Some("true"));
    assert!(
        r.query
            .contains("resource=https%3A%2F%2Fcognitiveservices.azure.com"),
        "{}",
        r.query
    );

    let app_service = json!({"mi": {"kind": "managed_identity", "endpoint": "app_service",
        "authority": "localhost:42356", "token_cluster": "imds"}});
    let standin = run(
        cfg,
        app_service,
        "mi",
        vec![("IDENTITY_HEADER".into(), DEFAULT_IDENTITY_HEADER.into())],
    )
    .await;
    assert_eq!(standin.count(EndpointKind::AppServiceIdentity), 1);
}

#[tokio::test]
async fn secretless_cross_tenant_chain_managed_identity_then_federated_app() {
    let cfg = StandInConfig::default();
    let tenant = cfg.tenant_id.clone();
    let creds = json!({
        "mi": {"kind": "managed_identity", "token_cluster": "imds"},
        "customer": {"kind": "federated", "tenant_id": tenant, "client_id": DEFAULT_CLIENT_ID,
                     "token_cluster": "entra", "assertion": {"source": "managed_identity", "credential": "mi"}}
    });
    let standin = run(cfg, creds, "customer", vec![]).await;
    let mi = &standin.requests_of(EndpointKind::Imds)[0];
    assert!(mi.query.contains("AzureADTokenExchange"), "{}", mi.query);
    let form = standin.requests_of(EndpointKind::Token)[0].form();
    assert!(form.iter().any(|(k, _)| k == "client_assertion"));
}
