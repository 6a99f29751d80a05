//! Istio-style mTLS peer identity as the workload (issue 4, `auth.mtls_peers`), through a real
//! Envoy: the filter's listener requires client certificates signed by a test CA; plain-HTTP
//! front listeners in the same Envoy reach it over mTLS, each with one client certificate
//! whose URI SAN is a SPIFFE ID (as Istio sidecars present them).

mod common;

use azure_standin::{EndpointKind, StandIn, StandInConfig};
use common::{client, free_port, Cluster, Envoy, EnvoyOptions};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const REPORTER: &str = "spiffe://cluster.local/ns/apps/sa/reporter";
const STRANGER: &str = "spiffe://cluster.local/ns/apps/sa/stranger";
const KEY: &str = "key-of-batch";

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (Debian package openssl) on PATH");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test CA, a server certificate for `localhost`, and one client certificate per SPIFFE ID
/// (`client-<i>.crt` / `.key`).
fn certificates(spiffe_ids: &[&str]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "azure-llm-mtls-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=test mesh CA"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.crt"]);
    ca.extend(["-addext", "basicConstraints=critical,CA:TRUE"]);
    ca.extend(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
    openssl(&dir, &ca);
    let issue = |name: &str, san: &str| {
        let (key, crt, subj) = (
            format!("{name}.key"),
            format!("{name}.crt"),
            format!("/CN={name}"),
        );
        let mut a = vec![
            "req", "-x509", "-days", "2", "-CA", "ca.crt", "-CAkey", "ca.key",
        ];
        a.extend(ec);
        a.extend([
            "-subj", &subj, "-keyout", &key, "-out", &crt, "-addext", san,
        ]);
        a.extend(["-addext", "basicConstraints=CA:FALSE"]);
        openssl(&dir, &a);
    };
    issue("server", "subjectAltName=DNS:localhost");
    for (i, id) in spiffe_ids.iter().enumerate() {
        issue(&format!("client-{i}"), &format!("subjectAltName=URI:{id}"));
    }
    dir
}

fn tls_listener_yaml(dir: &Path) -> String {
    let p = |f: &str| dir.join(f).display().to_string();
    format!(
        "name: envoy.transport_sockets.tls
typed_config:
  \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
  require_client_certificate: true
  common_tls_context:
    tls_certificates:
      - certificate_chain: {{ filename: {} }}
        private_key: {{ filename: {} }}
    validation_context:
      trusted_ca: {{ filename: {} }}
",
        p("server.crt"),
        p("server.key"),
        p("ca.crt")
    )
}

/// One plain-HTTP front listener per client certificate, each forwarding to the filter's
/// listener over mTLS with that certificate.
fn fronts_yaml(dir: &Path, ports: &[u16]) -> (String, String) {
    let mut listeners = String::new();
    let mut clusters = String::new();
    for (i, port) in ports.iter().enumerate() {
        listeners.push_str(&format!(
            "- name: front_{i}
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
  filter_chains:
    - filters:
        - name: envoy.filters.network.http_connection_manager
          typed_config:
            \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
            stat_prefix: front_{i}
            route_config:
              virtual_hosts:
                - name: all
                  domains: [\"*\"]
                  routes: [{{ match: {{ prefix: \"/\" }}, route: {{ cluster: mtls_{i}, timeout: 30s }} }}]
            http_filters:
              - name: envoy.filters.http.router
                typed_config:
                  \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"
        ));
        clusters.push_str(&format!(
            "- name: mtls_{i}
  type: STATIC
  connect_timeout: 1s
  load_assignment:
    cluster_name: mtls_{i}
    endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {{listener_port}} }} }} }} }}] }}]
  transport_socket:
    name: envoy.transport_sockets.tls
    typed_config:
      \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
      sni: localhost
      common_tls_context:
        tls_certificates:
          - certificate_chain: {{ filename: {crt} }}
            private_key: {{ filename: {key} }}
        validation_context:
          trusted_ca: {{ filename: {ca} }}
",
            crt = dir.join(format!("client-{i}.crt")).display(),
            key = dir.join(format!("client-{i}.key")).display(),
            ca = dir.join("ca.crt").display(),
        ));
    }
    (listeners, clusters)
}

fn plugin_config(standin: &StandIn) -> Value {
    json!({
        "credentials": common::standin_credentials(&standin.tenant_id()),
        "backends": {"aoai": {"kind": "azure_openai", "host": "r.openai.azure.com", "api_version": "2024-10-21", "credential": "main"}},
        "models": {"gpt-4o": {"backend": "aoai", "deployment": "gpt-4o-prod"}},
        "auth": {
            "api_keys": [{"sha256": common::hex(&Sha256::digest(KEY.as_bytes())), "workload": "batch"}],
            "mtls_peers": {REPORTER: "reporting"}
        },
        "rate_limits": {"workloads": {"reporting": {"requests_per_minute": 2}}}
    })
}

async fn chat(port: u16, api_key: Option<&str>) -> u16 {
    let mut req = client()
        .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
        .json(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}));
    if let Some(k) = api_key {
        req = req.header("api-key", k);
    }
    req.send().await.unwrap().status().as_u16()
}

async fn access_log_has(envoy: &Envoy, needle: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while envoy.logs().matches(needle).count() < count {
        assert!(
            Instant::now() < deadline,
            "want {count} x `{needle}` in:\n{}",
            envoy.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn mtls_peer_identity_names_the_workload() {
    let dir = certificates(&[REPORTER, STRANGER]);
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    let ports = [free_port(), free_port()];
    let (listeners, clusters) = fronts_yaml(&dir, &ports);
    let mut o = EnvoyOptions::new(plugin_config(&standin));
    o.clusters = vec![
        Cluster::new("entra", standin.port()),
        Cluster::new("aoai", standin.port()),
    ];
    o.backend_routes = vec!["aoai".into()];
    o.listener_transport_socket_yaml = Some(tls_listener_yaml(&dir));
    o.extra_listeners_yaml = Some(listeners);
    o.extra_clusters_yaml = Some(clusters);
    let envoy = Envoy::start(o).await;
    let (reporter, stranger) = (ports[0], ports[1]);

    // The reporter's certificate makes it the workload `reporting`, with that workload's limit.
    assert_eq!(chat(reporter, None).await, 200, "{}", envoy.logs());
    assert_eq!(chat(reporter, None).await, 200);
    assert_eq!(
        chat(reporter, None).await,
        429,
        "reporting's 2 requests a minute"
    );
    access_log_has(&envoy, "workload=reporting", 3).await;

    // A verified peer the config does not list presents no credential: 401.
    assert_eq!(chat(stranger, None).await, 401);
    // A presented key decides over the peer identity.
    assert_eq!(chat(stranger, Some(KEY)).await, 200);
    assert_eq!(chat(reporter, Some(KEY)).await, 200, "batch, not reporting");
    access_log_has(&envoy, "workload=batch", 2).await;
    assert_eq!(chat(reporter, Some("wrong-key")).await, 401);

    assert_eq!(standin.count(EndpointKind::DataPlane), 4);
    let _ = std::fs::remove_dir_all(dir);
}
