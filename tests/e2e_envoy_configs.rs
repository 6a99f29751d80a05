//! Envoy configurations: every bootstrap under envoy/ and the harness's generated configs pass
//! `envoy --mode validate`, and the harness can run a bare Envoy end to end.
//!
//! Note: in validate mode Envoy 1.40 loads the Wasm module and runs the filter's configure step
//! (with `failure_policy: FAIL_CLOSED`, a rejected plugin configuration or a missing .wasm file
//! fails validation), so these checks need the filter built (`make test` does that first).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Cluster, Envoy, EnvoyOptions};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How the configs under envoy/ name the filter (relative to the repository root).
const REL_WASM: &str = "target/wasm32-wasip1/release/azure_llm_filter.wasm";

/// Runs `envoy --mode validate -c <config>` from the workspace root; returns (ok, output).
fn validate(config: &Path) -> (bool, String) {
    let mut command = Command::new(common::envoy_binary());
    if config.file_name().is_some_and(|n| n == "native.yaml") {
        // The native build's demo: Envoy loads the dynamic module (`make native`) by name, and
        // the module reads the demo's secret from Envoy's environment when it checks its
        // configuration.
        let module = common::native_module_path();
        command
            .env(
                "ENVOY_DYNAMIC_MODULES_SEARCH_PATH",
                module.parent().unwrap_or(Path::new(".")),
            )
            .env("AZURE_CLIENT_SECRET", "standin-secret");
    }
    let out = command
        .args([
            "--mode",
            "validate",
            "--disable-hot-restart",
            "-l",
            "warning",
            "-c",
        ])
        .arg(config)
        .current_dir(common::workspace_root())
        .output()
        .expect("run envoy --mode validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `*.yaml` files under `dir`, recursively, sorted.
fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            yaml_files(&p, out);
        } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            out.push(p);
        }
    }
    out.sort();
}

/// An Envoy bootstrap (not, e.g., an Istio/Kubernetes manifest under envoy/istio/).
fn is_envoy_bootstrap(path: &Path, text: &str) -> bool {
    if path.components().any(|c| c.as_os_str() == "istio") {
        return false;
    }
    let top_level = |key: &str| text.lines().any(|l| l.starts_with(key));
    !top_level("apiVersion:") && (top_level("static_resources:") || top_level("dynamic_resources:"))
}

/// The plugin configuration of docs/plugin-config.md.
fn sample_plugin_config() -> serde_json::Value {
    json!({
        "routing_header": "x-azure-llm-backend",
        "token_wait_timeout_ms": 5000,
        "max_body_bytes": 1048576,
        "credentials": {
            "main": {
                "kind": "client_secret",
                "tenant_id": "11111111-1111-1111-1111-111111111111",
                "client_id": "22222222-2222-2222-2222-222222222222",
                "client_secret_env": "AZURE_CLIENT_SECRET",
                "token_cluster": "entra",
                "authority_host": "login.microsoftonline.com",
                "scope": "https://cognitiveservices.azure.com/.default"
            }
        },
        "backends": {
            "aoai": {
                "kind": "azure_openai",
                "host": "myresource.openai.azure.com",
                "api_version": "2024-10-21",
                "credential": "main"
            }
        },
        "models": {
            "gpt-4o": { "backend": "aoai", "deployment": "gpt-4o-prod" }
        }
    })
}

/// The same with the secret inline (no VM environment variable needed).
fn inline_secret_plugin_config() -> serde_json::Value {
    let mut c = sample_plugin_config();
    let main = c["credentials"]["main"].as_object_mut().unwrap();
    main.remove("client_secret_env");
    main.insert("client_secret".into(), json!("standin-secret"));
    c
}

fn full_options() -> EnvoyOptions {
    let mut opts = EnvoyOptions::new(sample_plugin_config())
        .backend("aoai", 18089)
        .cluster("entra", 18089);
    opts.env_vars = vec![("AZURE_CLIENT_SECRET".into(), "standin-secret".into())];
    opts
}

/// Writes `yaml` into a scratch file under target/e2e and validates it.
fn validate_rendered(name: &str, yaml: &str) -> (bool, String) {
    let dir = common::workspace_root().join("target/e2e/rendered");
    std::fs::create_dir_all(&dir).expect("create target/e2e/rendered");
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).expect("write rendered config");
    let (ok, out) = validate(&path);
    (ok, format!("{}:\n{out}", path.display()))
}

#[test]
fn every_envoy_config_in_repo_validates() {
    let root = common::workspace_root();
    let mut files = Vec::new();
    yaml_files(&root.join("envoy"), &mut files);
    let mut checked = 0;
    let mut failures = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("read config");
        if !is_envoy_bootstrap(f, &text) {
            eprintln!("skip (not an Envoy bootstrap): {}", f.display());
            continue;
        }
        // Configs name the Wasm file relative to the repository root, and validate runs from
        // there. If that file is not where the filter under test was built (a custom
        // AZURE_LLM_FILTER_WASM), validate a copy pointing at the filter under test.
        let rel = f.strip_prefix(&root).unwrap_or(f);
        let (ok, out) = if text.contains(REL_WASM) && !root.join(REL_WASM).is_file() {
            let wasm = common::wasm_path();
            let name = rel.to_string_lossy().replace('/', "_");
            validate_rendered(&name, &text.replace(REL_WASM, &wasm.to_string_lossy()))
        } else {
            validate(rel)
        };
        checked += 1;
        if !ok {
            failures.push(format!("{}:\n{out}", rel.display()));
        }
    }
    assert!(
        checked > 0 && files.iter().any(|f| f.ends_with("envoy/envoy.yaml")),
        "envoy/envoy.yaml not found"
    );
    assert!(
        failures.is_empty(),
        "configs rejected by envoy --mode validate:\n{}",
        failures.join("\n")
    );
}

#[test]
fn rendered_default_config_validates_without_filter() {
    let mut opts = EnvoyOptions::new(inline_secret_plugin_config());
    opts.with_filter = false;
    let yaml = common::render_config(&opts, 10000, 9901);
    assert!(!yaml.contains("envoy.filters.http.wasm"));
    let (ok, out) = validate_rendered("default-bare", &yaml);
    assert!(ok, "{out}");
}

#[test]
fn rendered_default_config_validates_with_filter() {
    let opts = EnvoyOptions::new(inline_secret_plugin_config());
    let yaml = common::render_config(&opts, 10000, 9901);
    assert!(yaml.contains("envoy.filters.http.wasm"));
    assert!(yaml.contains("allow_on_headers_stop_iteration: true"));
    let (ok, out) = validate_rendered("default-filter", &yaml);
    assert!(ok, "{out}");
}

#[test]
fn rendered_full_config_validates() {
    let mut opts = full_options();
    opts.backend_routes.push("foundry".into());
    opts.clusters.push(Cluster::new("foundry", 18090));
    opts.clusters.push(Cluster::grpc("ratelimit", 18091));
    opts.concurrency = 2;
    opts.route_timeout_secs = 120;
    opts.extra_http_filters_yaml = Some(
        "- name: envoy.filters.http.buffer\n  typed_config:\n    \"@type\": type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer\n    max_request_bytes: 1048576\n"
            .into(),
    );
    let yaml = common::render_config(&opts, 10000, 9901);
    assert!(yaml.contains("AZURE_CLIENT_SECRET"));
    assert!(yaml.contains("timeout: 120s"));
    assert!(yaml.contains("http2_protocol_options"));
    let (ok, out) = validate_rendered("full-filter", &yaml);
    assert!(ok, "{out}");
    opts.with_filter = false;
    let (ok, out) = validate_rendered("full-bare", &common::render_config(&opts, 10000, 9901));
    assert!(ok, "{out}");
}

#[test]
fn render_config_is_pure_and_escapes_strings() {
    let mut opts = full_options();
    opts.env_vars
        .push(("QUOTED".into(), "a \"b\" 'c' \\ d: e #f".into()));
    let a = common::render_config(&opts, 1234, 5678);
    let b = common::render_config(&opts, 1234, 5678);
    assert_eq!(a, b);
    assert!(a.contains("port_value: 1234"));
    assert!(a.contains("port_value: 5678"));
    // The plugin configuration is one YAML double-quoted scalar holding the JSON.
    let line = a
        .lines()
        .find(|l| l.trim_start().starts_with("value: "))
        .expect("StringValue line");
    let scalar = line.trim_start().trim_start_matches("value: ");
    let json_text: String = serde_json::from_str(scalar).expect("JSON-compatible scalar");
    let back: serde_json::Value = serde_json::from_str(&json_text).expect("plugin JSON");
    assert_eq!(back, opts.plugin_config);
}

/// Validate mode runs the filter's configure step: a plugin configuration the filter rejects
/// (unknown field) fails validation, and Envoy refuses to start with it.
#[tokio::test]
async fn rejected_plugin_config_fails_validation_and_start() {
    let mut opts = full_options();
    opts.plugin_config["no_such_field"] = json!(true);
    let (ok, out) = validate_rendered(
        "rejected-plugin-config",
        &common::render_config(&opts, 10000, 9901),
    );
    assert!(!ok, "validate accepted a bad plugin config:\n{out}");
    let logs = Envoy::start_expect_failure(opts).await;
    assert!(
        logs.contains("Unable to create Wasm plugin"),
        "unexpected Envoy log:\n{logs}"
    );
}

/// A tiny HTTP/1.1 upstream answering every request with its request head as JSON.
async fn echo_upstream() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind echo upstream");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = sock.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                let head = String::from_utf8_lossy(&buf).into_owned();
                let head = head.split("\r\n\r\n").next().unwrap_or_default();
                let mut lines = head.lines();
                let request_line = lines.next().unwrap_or_default().to_string();
                let headers: serde_json::Map<String, serde_json::Value> = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_ascii_lowercase(), json!(v.trim())))
                    .collect();
                let body = json!({ "request_line": request_line, "headers": headers }).to_string();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
                    body.len(),
                    body
                );
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    port
}

/// The harness end to end with a bare Envoy: unrouted requests get the 404 JSON, a request
/// carrying the routing header reaches the cluster of that name with `:authority` untouched.
#[tokio::test]
async fn bare_envoy_routes_by_header_and_answers_404_json() {
    let upstream = echo_upstream().await;
    let mut opts = EnvoyOptions::new(json!({})).backend("aoai", upstream);
    opts.with_filter = false;
    let envoy = Envoy::start(opts).await;
    let http = common::client();

    let resp = http
        .post(envoy.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(r#"{"model":"gpt-4o","messages":[]}"#)
        .send()
        .await
        .expect("request through Envoy");
    assert_eq!(resp.status().as_u16(), 404);
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    let body: serde_json::Value = resp.json().await.expect("404 body is JSON");
    assert_eq!(
        body,
        serde_json::from_str::<serde_json::Value>(common::NOT_FOUND_BODY).unwrap()
    );
    assert_eq!(body["error"]["code"], "not_found");

    let resp = http
        .get(envoy.url("/openai/deployments/x/chat/completions?api-version=1"))
        .header("x-azure-llm-backend", "aoai")
        .header("host", "demo-resource.openai.azure.com")
        .send()
        .await
        .expect("routed request");
    assert_eq!(resp.status().as_u16(), 200, "logs:\n{}", envoy.logs());
    let echo: serde_json::Value = resp.json().await.expect("echo JSON");
    assert_eq!(
        echo["request_line"],
        "GET /openai/deployments/x/chat/completions?api-version=1 HTTP/1.1"
    );
    assert_eq!(echo["headers"]["host"], "demo-resource.openai.azure.com");

    // Unknown backend names fall through to the 404 as well.
    let resp = http
        .get(envoy.url("/x"))
        .header("x-azure-llm-backend", "other")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 404);

    // Admin stats are reachable through the harness.
    let total = envoy.stat("http.llm_ingress.downstream_rq_total").await;
    assert!(
        total.is_some_and(|n| n >= 3),
        "downstream_rq_total = {total:?}"
    );

    // The access log goes to the harness's log file.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !envoy.logs().contains("\"GET /x\" 404") {
        assert!(
            std::time::Instant::now() < deadline,
            "no access log line; logs:\n{}",
            envoy.logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
