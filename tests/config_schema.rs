//! The JSON Schema of the plugin configuration and the offline checker.
//!
//! - schema/plugin-config.schema.json is what the Rust types generate today. When this fails
//!   after a change to a `Raw*` config type, regenerate it with `make schema` (or
//!   `UPDATE_SCHEMA=1 cargo test --test config_schema`) and commit the result.
//! - Every example configuration in the repository (the Envoy configs under envoy/, the Istio
//!   manifests, the JSON examples in README.md and docs/) passes both the filter's validation
//!   (`Config::parse`) and the schema.
//! - `check-config` prints exactly the message the filter logs, with the right exit status.

use azure_llm_filter::config::{resolve_secrets, Config};
use serde::Deserialize;
use serde_json::{json, Value as Json};
use serde_yaml::Value as Yaml;
use std::path::{Path, PathBuf};
use std::process::Command;

const SCHEMA_FILE: &str = "schema/plugin-config.schema.json";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The generated schema, as `check-config --print-schema` prints it.
fn generated_text() -> String {
    let schema = azure_llm_filter::config::json_schema();
    format!("{}\n", serde_json::to_string_pretty(&schema).unwrap())
}

#[test]
fn checked_in_schema_is_up_to_date() {
    let generated = generated_text();
    let path = root().join(SCHEMA_FILE);
    if std::env::var_os("UPDATE_SCHEMA").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    let same = serde_json::from_str::<Json>(&checked_in).ok()
        == serde_json::from_str::<Json>(&generated).ok();
    assert!(
        same,
        "{SCHEMA_FILE} differs from the schema the config types generate: run `make schema` \
         (or `UPDATE_SCHEMA=1 cargo test --test config_schema`) and commit the file"
    );
}

#[test]
fn print_schema_prints_the_generated_schema() {
    let out = Command::new(env!("CARGO_BIN_EXE_check-config"))
        .arg("--print-schema")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), generated_text());
}

fn compiled_schema() -> (boon::Schemas, boon::SchemaIndex) {
    let mut schemas = boon::Schemas::new();
    let mut compiler = boon::Compiler::new();
    let url = "https://azure-llm-filter.invalid/plugin-config.schema.json";
    compiler
        .add_resource(url, azure_llm_filter::config::json_schema())
        .unwrap();
    let index = compiler
        .compile(url, &mut schemas)
        .unwrap_or_else(|e| panic!("the schema does not compile: {e:#}"));
    (schemas, index)
}

/// A complete minimal configuration, for examples that show one section only.
fn base() -> Json {
    json!({
        "credentials": {"main": {"kind": "client_secret", "tenant_id": "t", "client_id": "c",
                                 "client_secret": "s", "token_cluster": "entra"}},
        "backends": {"aoai": {"kind": "azure_openai", "host": "r.openai.azure.com",
                              "api_version": "2024-10-21", "credential": "main"}},
        "models": {"gpt-4o": {"backend": "aoai", "deployment": "gpt-4o-prod"}}
    })
}

/// Plugin configurations embedded in a YAML file: Envoy/EnvoyFilter StringValues of this
/// filter's Wasm configs and WasmPlugin pluginConfigs (as JSON).
fn yaml_examples(rel: &str, out: &mut Vec<(String, String)>) {
    fn walk(v: &Yaml, rel: &str, out: &mut Vec<(String, String)>) {
        match v {
            Yaml::Mapping(m) => {
                if m.contains_key("vm_config") {
                    let ours = ["name", "root_id"].iter().any(|k| {
                        v[*k]
                            .as_str()
                            .is_some_and(|s| s.contains("azure_llm_filter"))
                    });
                    if let (true, Some(text)) = (ours, v["configuration"]["value"].as_str()) {
                        out.push((format!("{rel} (Wasm configuration)"), text.to_string()));
                    }
                    return;
                }
                if v["kind"].as_str() == Some("WasmPlugin") {
                    let json: Json = serde_json::to_value(&v["spec"]["pluginConfig"]).unwrap();
                    out.push((format!("{rel} (WasmPlugin)"), json.to_string()));
                    return;
                }
                for (_, child) in m {
                    walk(child, rel, out);
                }
            }
            Yaml::Sequence(items) => items.iter().for_each(|c| walk(c, rel, out)),
            _ => {}
        }
    }
    let text = read(rel);
    for doc in serde_yaml::Deserializer::from_str(&text) {
        walk(&Yaml::deserialize(doc).unwrap(), rel, out);
    }
}

/// ```json blocks of a Markdown file that are whole configurations, or an `auth` section
/// (merged into `base()`). Fragments (a single section, `...` placeholders) are skipped.
fn markdown_examples(rel: &str, out: &mut Vec<(String, String)>) {
    let text = read(rel);
    let mut block: Option<(usize, String)> = None;
    for (n, line) in text.lines().enumerate() {
        match &mut block {
            None if line.trim_start().starts_with("```json") => {
                block = Some((n + 1, String::new()))
            }
            None => {}
            Some((start, body)) => {
                if line.trim_start().starts_with("```") {
                    let place = format!("{rel}:{start}");
                    if let Ok(Json::Object(obj)) = serde_json::from_str::<Json>(body) {
                        let whole = ["credentials", "backends", "models"]
                            .iter()
                            .all(|k| obj.contains_key(*k));
                        if whole {
                            out.push((place, body.clone()));
                        } else if obj.len() == 1 && obj.contains_key("auth") {
                            let mut c = base();
                            c["auth"] = obj["auth"].clone();
                            out.push((place, c.to_string()));
                        }
                    }
                    block = None;
                } else {
                    body.push_str(line);
                    body.push('\n');
                }
            }
        }
    }
}

fn all_examples() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut yaml_files: Vec<String> = Vec::new();
    for dir in ["envoy", "envoy/istio", "envoy/istio/aks-workload-identity"] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("yaml"))
            .collect();
        files.sort();
        for f in files {
            yaml_files.push(format!(
                "{dir}/{}",
                f.file_name().unwrap().to_string_lossy()
            ));
        }
    }
    for f in &yaml_files {
        yaml_examples(f, &mut out);
    }
    for f in ["README.md", "docs/plugin-config.md", "docs/auth-config.md"] {
        markdown_examples(f, &mut out);
    }
    out
}

#[test]
fn every_example_configuration_is_valid_for_the_filter_and_the_schema() {
    let examples = all_examples();
    for expected in [
        "envoy/envoy.yaml",
        "envoy/azure-production.yaml",
        "envoy/istio/envoyfilter.yaml",
        "envoy/istio/wasmplugin.yaml",
        "README.md",
        "docs/plugin-config.md",
        "docs/auth-config.md",
    ] {
        assert!(
            examples.iter().any(|(p, _)| p.starts_with(expected)),
            "no example configuration found in {expected}"
        );
    }
    let (schemas, index) = compiled_schema();
    for (place, text) in &examples {
        Config::parse(text.as_bytes()).unwrap_or_else(|e| panic!("{place}: {e}"));
        let value: Json = serde_json::from_str(text).unwrap();
        if let Err(e) = schemas.validate(&value, index) {
            panic!("{place}: rejected by {SCHEMA_FILE}: {e:#}");
        }
    }
}

/// Mistakes the filter refuses are refused by the schema too (so an editor flags them).
#[test]
fn schema_rejects_what_the_filter_rejects() {
    let (schemas, index) = compiled_schema();
    let mut cases: Vec<(&str, Json)> = Vec::new();
    let mut c = base();
    c["no_such_field"] = json!(1);
    cases.push(("unknown top-level field", c));
    let mut c = base();
    c["credentials"]["main"]["client_sekret"] = json!("x");
    cases.push(("unknown credential field", c));
    let mut c = base();
    c["credentials"]["main"]["kind"] = json!("password");
    cases.push(("unknown credential kind", c));
    let mut c = base();
    c["backends"]["aoai"]
        .as_object_mut()
        .unwrap()
        .remove("api_version");
    cases.push(("azure_openai without api_version", c));
    let mut c = base();
    c.as_object_mut().unwrap().remove("models");
    cases.push(("no models", c));
    let mut c = base();
    c["routing_mode"] = json!("path");
    cases.push(("unknown routing mode", c));
    let mut c = base();
    c["token_wait_timeout_ms"] = json!(0);
    cases.push(("timeout out of range", c));
    let mut c = base();
    c["models"]["gpt-4o"]["deployment"] = json!("../x");
    cases.push(("deployment with a path", c));
    let mut c = base();
    c["rate_limits"] = json!({"default": {"tokens_per_second": 1}});
    cases.push(("unknown rate limit window", c));
    let mut c = base();
    c["models"]["gpt-4o"]["targets"] = json!([{"backend": "aoai", "deployment": "d"}]);
    cases.push(("model with backend and targets", c));
    let mut c = base();
    c["models"]["gpt-4o"] = json!({"targets": []});
    cases.push(("pool without targets", c));
    let mut c = base();
    c["models"]["gpt-4o"] = json!({"aliases": ["x"]});
    cases.push(("model without backend or targets", c));
    let mut c = base();
    c["models"]["gpt-4o"] =
        json!({"targets": [{"backend": "aoai", "deployment": "d", "share": 1}]});
    cases.push(("unknown target field", c));
    let mut c = base();
    c["models"]["gpt-4o"] =
        json!({"targets": [{"backend": "aoai", "deployment": "d", "weight": 0}]});
    cases.push(("target weight 0", c));
    let mut c = base();
    c["failover"] = json!({"eject_for_ms": 0});
    cases.push(("failover out of range", c));
    let mut c = base();
    c["credentials"]["mi"] = json!({"kind": "managed_identity", "token_cluster": "imds",
                                    "endpoint": "arc"});
    cases.push(("unknown managed identity endpoint", c));
    let mut c = base();
    c["credentials"]["f"] = json!({"kind": "federated", "tenant_id": "t", "client_id": "c",
                                   "token_cluster": "entra",
                                   "assertion": {"source": "file", "path": "/x"}});
    cases.push(("unknown assertion source", c));
    let mut c = base();
    c["credentials"]["wi"] = json!({"kind": "workload_identity", "token_cluster": "entra",
                                    "token_file": "/var/run/secrets/azure/tokens/azure-identity-token"});
    cases.push((
        "workload identity with a file path (Envoy serves the file)",
        c,
    ));
    for (what, config) in cases {
        assert!(
            Config::parse(config.to_string().as_bytes()).is_err(),
            "{what}: the filter accepts it"
        );
        assert!(
            schemas.validate(&config, index).is_err(),
            "{what}: the schema accepts it"
        );
    }
}

fn check_config(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_check-config"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("run check-config");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn scratch(name: &str, text: &str) -> String {
    let dir = root().join("target/check-config-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn check_config_accepts_the_envoy_configs() {
    let (code, out) = check_config(&["envoy/envoy.yaml", "envoy/azure-production.yaml"]);
    assert_eq!(code, Some(0), "{out}");
    // The demo's filter, the production listener's filter and its failover pool's upstream
    // filter (on the aggregate cluster).
    assert_eq!(
        out.lines().filter(|l| l.ends_with(": OK")).count(),
        3,
        "{out}"
    );
    // The demo's secret is inline in vm_config.environment_variables.key_values.
    let (code, out) = check_config(&["--check-env", "envoy/envoy.yaml"]);
    assert_eq!(code, Some(0), "{out}");
}

/// The line printed for a bad configuration is the filter's own message, the one Envoy logs.
#[test]
fn check_config_prints_the_filters_message() {
    let mut bad = base();
    bad["credentials"]["main"]["client_sekret"] = json!("x");
    let text = serde_json::to_string_pretty(&bad).unwrap();
    let expected = Config::parse(text.as_bytes()).unwrap_err().to_string();
    assert!(expected.starts_with("invalid plugin configuration: credentials.main: unknown field"));
    let file = scratch("bad.json", &text);
    let (code, out) = check_config(&[&file]);
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(out.trim_end(), format!("{file}: {expected}"));

    // The same inside an Envoy bootstrap.
    let envoy = read("envoy/envoy.yaml").replace(
        "\"client_secret_env\": \"AZURE_CLIENT_SECRET\"",
        "\"client_secret_env\": \"AZURE_CLIENT_SECRET\", \"colour\": \"blue\"",
    );
    let file = scratch("bad-envoy.yaml", &envoy);
    let (code, out) = check_config(&[&file]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(": invalid plugin configuration: credentials.main: unknown field `colour`"),
        "{out}"
    );

    // A good file next to a bad one: both reported, status 1.
    let good = scratch("good.json", &base().to_string());
    let bad = scratch("bad2.json", &text);
    let (code, out) = check_config(&[&good, &bad]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains(&format!("{good}: OK")), "{out}");
}

/// `--check-env` resolves `*_env` secrets like the filter at start, with its message.
#[test]
fn check_config_check_env_matches_resolve_secrets() {
    let mut c = base();
    let main = c["credentials"]["main"].as_object_mut().unwrap();
    main.remove("client_secret");
    main.insert(
        "client_secret_env".into(),
        json!("CHECK_CONFIG_TEST_SECRET_UNSET"),
    );
    let text = c.to_string();
    let config = Config::parse(text.as_bytes()).unwrap();
    let expected = resolve_secrets(&config, |_| None).unwrap_err().to_string();
    let file = scratch("env.json", &text);
    // Without --check-env the environment is not consulted.
    let (code, out) = check_config(&[&file]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = check_config(&["--check-env", &file]);
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(out.trim_end(), format!("{file}: {expected}"));
}

#[test]
fn check_config_reads_a_yaml_plugin_configuration_and_rejects_bad_usage() {
    let yaml = serde_yaml::to_string(&base()).unwrap();
    let file = scratch("plugin.yaml", &yaml);
    let (code, out) = check_config(&[&file]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(out.trim_end(), format!("{file}: OK"));

    let (code, _) = check_config(&["--no-such-option", &file]);
    assert_eq!(code, Some(2));
    let (code, _) = check_config(&[]);
    assert_eq!(code, Some(2));
    let (code, out) = check_config(&["no/such/file.json"]);
    assert_eq!(code, Some(1), "{out}");
    // A file without any configuration of this filter, nor anything to lint, checks nothing:
    // status 1.
    let (code, out) = check_config(&["envoy/istio/telemetry.yaml"]);
    assert_eq!(code, Some(1), "{out}");
}

/// A failover pool's upstream filter must have the listener filter's credentials, backends and
/// models; a pool without its upstream filter in the file gets a note, not a failure.
#[test]
fn check_config_checks_failover_pools() {
    let production = read("envoy/azure-production.yaml");
    let last = production.rfind("\"gpt-4o-global\"").unwrap();
    let mismatched = format!(
        "{}\"gpt-4o-other\"{}",
        &production[..last],
        &production[last + "\"gpt-4o-global\"".len()..]
    );
    let file = scratch("pool-mismatch.yaml", &mismatched);
    let (code, out) = check_config(&[&file]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("clusters[4].typed_extension_protocol_options")
            && out.contains("invalid failover pool: this upstream filter's credentials, backends or models differ"),
        "{out}"
    );

    let start = production.find("    - name: \"ptu+payg\"").unwrap();
    let end = production.find("    - name: foundry\n").unwrap();
    let without = format!("{}{}", &production[..start], &production[end..]);
    let file = scratch("pool-without-upstream.yaml", &without);
    let (code, out) = check_config(&[&file]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("note: model `gpt-4o`") && out.contains("\"role\": \"upstream\""),
        "{out}"
    );
}
