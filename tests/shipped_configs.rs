//! The invariants of every shipped deployment file (issue 22): the Envoy bootstraps and Istio
//! manifests under envoy/ are what operators copy, so they are held to the production lints of
//! `check-config` (src/lint: the same rules judge users' own files) with zero findings, plus
//! what only the shipped set must guarantee.

use serde::Deserialize as _;
use serde_json::Value as Json;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `*.yaml` under envoy/, relative to the repository root, sorted.
fn shipped_files() -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "yaml") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(&root().join("envoy"), &mut files);
    let mut rel: Vec<String> = files
        .iter()
        .map(|p| p.strip_prefix(root()).unwrap().display().to_string())
        .collect();
    rel.sort();
    rel
}

/// The YAML documents of a file, as JSON.
fn documents(rel: &str) -> Vec<Json> {
    let text = std::fs::read_to_string(root().join(rel)).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Json::deserialize(d).unwrap_or_else(|e| panic!("{rel}: {e}")))
        .filter(|d| !d.is_null())
        .collect()
}

#[test]
fn every_shipped_file_passes_the_production_lints() {
    let files = shipped_files();
    assert!(files.len() >= 8, "{files:?}");
    let mut linted = 0;
    let mut findings = Vec::new();
    for rel in &files {
        for doc in documents(rel) {
            if let Some(found) = azure_llm_filter::lint::document(&doc) {
                linted += 1;
                findings.extend(found.into_iter().map(|f| format!("{rel}: {f}")));
            }
        }
    }
    assert!(linted >= 11, "only {linted} documents linted");
    assert!(findings.is_empty(), "\n{}", findings.join("\n"));
}

/// Every upstream TLS context of a shipped file verifies the server: this counts them, so a
/// file that stops using TLS for Entra or Azure (plain HTTP to 443 is a lint finding too)
/// cannot pass by having nothing to check.
#[test]
fn every_shipped_file_reaches_entra_and_azure_over_verified_tls() {
    let expected = [
        ("envoy/aks-workload-identity.yaml", 2),
        ("envoy/azure-production.yaml", 4),
        ("envoy/istio/aks-workload-identity/envoyfilter.yaml", 2),
        ("envoy/istio/envoyfilter.yaml", 2),
        ("envoy/istio/azure-egress.yaml", 4),
    ];
    for (rel, n) in expected {
        let docs = documents(rel);
        let mut contexts = Vec::new();
        for doc in &docs {
            tls_contexts(doc, &mut contexts);
        }
        assert_eq!(contexts.len(), n, "{rel}: {contexts:?}");
        for c in contexts {
            assert!(
                c.get("common_tls_context").is_some() || c.get("caCertificates").is_some(),
                "{rel}: {c}"
            );
        }
    }
}

/// Upstream TLS contexts (Envoy) and TLS settings of DestinationRules (Istio), anywhere in `v`.
fn tls_contexts<'a>(v: &'a Json, out: &mut Vec<&'a Json>) {
    match v {
        Json::Object(m) => {
            let upstream = m
                .get("@type")
                .and_then(Json::as_str)
                .is_some_and(|t| t.ends_with(".UpstreamTlsContext"));
            let istio = m.get("mode").and_then(Json::as_str) == Some("SIMPLE");
            if upstream || istio {
                out.push(v);
            }
            m.values().for_each(|c| tls_contexts(c, out));
        }
        Json::Array(a) => a.iter().for_each(|c| tls_contexts(c, out)),
        _ => {}
    }
}

/// A file for local trial only says so in its first lines; the others are meant for production.
#[test]
fn the_demo_says_it_is_for_local_trial_only() {
    for rel in shipped_files() {
        let text = std::fs::read_to_string(root().join(&rel)).unwrap();
        let head: String = text.lines().take(3).collect::<Vec<_>>().join("\n");
        let trial = head.contains("FOR LOCAL TRIAL ONLY");
        // The two demos (Wasm and native build) against the local stand-in, and no other.
        let demo = rel == "envoy/envoy.yaml" || rel == "envoy/native.yaml";
        assert_eq!(trial, demo, "{rel}:\n{head}");
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
    let dir = root().join("target/shipped-configs-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

/// check-config runs the same lints on whatever it is given: the shipped files pass, a copy
/// whose clusters no longer verify fails with one line per cluster naming it and the fix, and
/// `--warn-only` reports the same without failing.
#[test]
fn check_config_lints_every_shipped_file_and_fails_on_a_hazard() {
    let files = shipped_files();
    let args: Vec<&str> = files.iter().map(String::as_str).collect();
    let (code, out) = check_config(&args);
    assert_eq!(code, Some(0), "{out}");
    assert!(!out.contains(": hazard: "), "{out}");

    let production = std::fs::read_to_string(root().join("envoy/azure-production.yaml")).unwrap();
    // Without the validation contexts the file still parses; each TLS cluster is a hazard.
    let stripped = strip_validation(&production);
    let file = scratch("production-unverified.yaml", &stripped);
    let (code, out) = check_config(&[&file]);
    assert_eq!(code, Some(1), "{out}");
    let hazards: Vec<&str> = out.lines().filter(|l| l.contains(": hazard: ")).collect();
    assert_eq!(hazards.len(), 4, "{out}");
    for cluster in ["entra", "ptu", "payg", "foundry"] {
        assert!(
            hazards
                .iter()
                .any(|l| l.contains(&format!(
                    ": hazard: cluster {cluster}: upstream TLS without validation_context"
                )) && l.contains("fix: add common_tls_context.validation_context")),
            "{cluster}: {out}"
        );
    }
    let (code, out) = check_config(&["--warn-only", &file]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(out.matches(": hazard: ").count(), 4, "{out}");
}

/// The file without its `validation_context` blocks (each is the key line and the lines
/// indented below it).
fn strip_validation(text: &str) -> String {
    let mut out = String::new();
    let mut skip_below: Option<usize> = None;
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        if let Some(i) = skip_below {
            if indent > i || line.trim().is_empty() {
                continue;
            }
            skip_below = None;
        }
        if line.trim_start().starts_with("validation_context:") {
            skip_below = Some(indent);
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Each hazard the lints know, put one at a time into the shipped production file: check-config
/// fails on it with a line naming the resource and the fix (and `--warn-only` does not fail).
#[test]
fn check_config_reports_each_hazard_in_a_bootstrap() {
    let production = documents("envoy/azure-production.yaml").remove(0);
    let hcm = "/static_resources/listeners/0/filter_chains/0/filters/0/typed_config";
    let cluster = |name: &str| {
        let i = production["static_resources"]["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .position(|c| c["name"] == name)
            .unwrap();
        format!("/static_resources/clusters/{i}")
    };
    let route = |backend: &str| {
        let routes = production
            .pointer(&format!("{hcm}/route_config/virtual_hosts/0/routes"))
            .unwrap()
            .as_array()
            .unwrap();
        let i = routes
            .iter()
            .position(|r| r["match"]["headers"][0]["string_match"]["exact"] == backend)
            .unwrap();
        format!("{hcm}/route_config/virtual_hosts/0/routes/{i}")
    };
    let tls = |name: &str| {
        format!(
            "{}/transport_socket/typed_config/common_tls_context",
            cluster(name)
        )
    };
    let wasm = format!("{hcm}/http_filters/0/typed_config/config");
    type Edit = Box<dyn Fn(&mut Json)>;
    let remove = |path: String, key: &'static str| -> Edit {
        Box::new(move |d: &mut Json| {
            d.pointer_mut(&path)
                .unwrap()
                .as_object_mut()
                .unwrap()
                .remove(key)
                .unwrap();
        })
    };
    let set = |path: String, key: &'static str, v: Json| -> Edit {
        Box::new(move |d: &mut Json| {
            d.pointer_mut(&path).unwrap()[key] = v.clone();
        })
    };
    let cases: Vec<(&str, Edit, &str)> = vec![
        ("tls", remove(tls("entra"), "validation_context"),
         "hazard: cluster entra: upstream TLS without validation_context"),
        ("system-roots", set(tls("ptu"), "validation_context", serde_json::json!({"system_root_certs": {}})),
         "hazard: cluster ptu: validation_context with system_root_certs and no trusted_ca verifies nothing"),
        ("no-san", remove(format!("{}/validation_context", tls("foundry")), "match_typed_subject_alt_names"),
         "hazard: cluster foundry: trusted_ca without match_typed_subject_alt_names"),
        ("routing-header", remove(route("foundry"), "request_headers_to_remove"),
         "hazard: listener llm_ingress: route x-azure-llm-backend=foundry: forwards the routing header"),
        ("request-timeout", set(hcm.to_string(), "request_timeout", serde_json::json!("0s")),
         "hazard: listener llm_ingress: request_timeout 0s disables it"),
        ("headers-timeout", remove(hcm.to_string(), "request_headers_timeout"),
         "hazard: listener llm_ingress: no request_headers_timeout"),
        ("stats", remove("/stats_config".to_string(), "stats_tags"),
         "hazard: bootstrap stats_config: missing or different stats_tags"),
        ("breakers", remove(cluster("ptu+payg"), "circuit_breakers"),
         "hazard: cluster ptu+payg: failover pool without retry circuit-breaker sizing"),
        ("ejection", set(format!("{}/outlier_detection", cluster("payg")), "max_ejection_percent", serde_json::json!(10)),
         "hazard: cluster payg: outlier detection with max_ejection_percent 10"),
        ("internal", set(hcm.to_string(), "internal_address_config",
             serde_json::json!({"cidr_ranges": [{"address_prefix": "10.0.0.0", "prefix_len": 8}]})),
         "hazard: listener llm_ingress: internal_address_config trusts 10.0.0.0/8"),
        ("fail-open", set(wasm.clone(), "failure_policy", serde_json::json!("FAIL_OPEN")),
         "hazard: listener llm_ingress: filter: failure_policy FAIL_OPEN"),
        ("no-body", remove(wasm, "allow_on_headers_stop_iteration"),
         "hazard: listener llm_ingress: filter: no allow_on_headers_stop_iteration"),
    ];
    for (name, edit, expected) in cases {
        let mut doc = production.clone();
        edit(&mut doc);
        let file = scratch(
            &format!("hazard-{name}.json"),
            &serde_json::to_string_pretty(&doc).unwrap(),
        );
        let (code, out) = check_config(&[&file]);
        let hazards: Vec<&str> = out.lines().filter(|l| l.contains(": hazard: ")).collect();
        assert_eq!(code, Some(1), "{name}: {out}");
        assert!(
            hazards.len() == 1 && hazards[0].contains(expected) && hazards[0].contains("; fix: "),
            "{name}: {hazards:?}"
        );
        let (code, _) = check_config(&["--warn-only", &file]);
        assert_eq!(code, Some(0), "{name}");
    }
}

/// The Envoy bootstraps under envoy/ (not the Istio manifests, Prometheus rules, ...).
fn bootstraps() -> Vec<(String, Json)> {
    shipped_files()
        .into_iter()
        .filter_map(|f| {
            let doc = documents(&f).into_iter().next()?;
            doc.get("static_resources").is_some().then_some((f, doc))
        })
        .collect()
}

/// The public listener's HTTP connection manager of a bootstrap.
fn public_hcm(doc: &Json) -> &Json {
    let listener = doc["static_resources"]["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l.get("address").is_some())
        .unwrap();
    &listener["filter_chains"][0]["filters"][0]["typed_config"]
}

/// Every bootstrap exports the usage record with exactly the filter's attributes
/// (src/usage_record.rs), beside its stdout access log.
#[test]
fn every_bootstrap_has_the_usage_record_logger() {
    use azure_llm_filter::usage_record::{ATTRIBUTES, BODY, LOG_NAME};
    for (rel, doc) in bootstraps() {
        let logs = public_hcm(&doc)["access_log"]
            .as_array()
            .unwrap_or_else(|| panic!("{rel}"));
        let otel: Vec<&Json> = logs
            .iter()
            .filter(|l| l["name"] == "envoy.access_loggers.open_telemetry")
            .collect();
        assert_eq!(otel.len(), 1, "{rel}");
        let c = &otel[0]["typed_config"];
        assert_eq!(c["log_name"], LOG_NAME, "{rel}");
        assert_eq!(c["body"]["string_value"], BODY, "{rel}");
        assert_eq!(
            c["grpc_service"]["envoy_grpc"]["cluster_name"], "otel_collector",
            "{rel}"
        );
        let mut attributes: Vec<(String, String)> = c["attributes"]["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["key"].as_str().unwrap().to_string(),
                    a["value"]["string_value"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        // The filter's values are custom tags (absent when unset; tests/observability_configs.rs
        // checks which go where).
        attributes.extend(c["custom_tags"].as_array().into_iter().flatten().map(|t| {
            (
                t["tag"].as_str().unwrap_or_default().to_string(),
                t["value"].as_str().unwrap_or_default().to_string(),
            )
        }));
        attributes.sort();
        let mut expected: Vec<(String, String)> = ATTRIBUTES
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        expected.sort();
        assert_eq!(attributes, expected, "{rel}");
        assert!(
            logs.iter()
                .any(|l| l["name"] == "envoy.access_loggers.stdout"),
            "{rel}"
        );
        assert!(
            doc["static_resources"]["clusters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["name"] == "otel_collector"),
            "{rel}"
        );
    }
}

/// Every Wasm filter of this filter in the shipped files has the same shape (name and root,
/// one VM, V8, fail closed, bodies delivered), and loads the module from where `make wasm`
/// puts it (Envoy) or from the OCI image (Istio).
#[test]
fn every_wasm_filter_has_the_same_shape() {
    fn wasm_configs<'a>(v: &'a Json, out: &mut Vec<&'a Json>) {
        match v {
            Json::Object(m) => {
                if m.get("@type")
                    .and_then(Json::as_str)
                    .is_some_and(|t| t.ends_with(".wasm.v3.Wasm"))
                {
                    out.push(&v["config"]);
                }
                m.values().for_each(|c| wasm_configs(c, out));
            }
            Json::Array(a) => a.iter().for_each(|c| wasm_configs(c, out)),
            _ => {}
        }
    }
    let mut seen = 0;
    for rel in shipped_files() {
        for doc in documents(&rel) {
            let mut configs = Vec::new();
            wasm_configs(&doc, &mut configs);
            for c in configs {
                seen += 1;
                let name = c["name"].as_str().unwrap();
                assert!(
                    name == "azure_llm_filter" || name == "azure_llm_filter_upstream",
                    "{rel}: {name}"
                );
                assert_eq!(c["root_id"], "azure_llm_filter", "{rel}");
                assert_eq!(c["failure_policy"], "FAIL_CLOSED", "{rel}");
                assert_eq!(c["allow_on_headers_stop_iteration"], true, "{rel}");
                assert_eq!(c["vm_config"]["vm_id"], "azure_llm_filter", "{rel}");
                assert_eq!(c["vm_config"]["runtime"], "envoy.wasm.runtime.v8", "{rel}");
                assert_eq!(
                    c["configuration"]["@type"], "type.googleapis.com/google.protobuf.StringValue",
                    "{rel}"
                );
                let code = &c["vm_config"]["code"];
                if rel.starts_with("envoy/istio/") {
                    assert_eq!(
                        code["remote"]["http_uri"]["uri"],
                        "oci://registry.example.com/azure-llm-filter:0.1.0",
                        "{rel}"
                    );
                } else {
                    assert_eq!(
                        code["local"]["filename"],
                        "target/wasm32-wasip1/release/azure_llm_filter.wasm",
                        "{rel}"
                    );
                }
            }
        }
    }
    assert!(seen >= 8, "{seen} Wasm filters");
}

/// Callers' x-envoy-* headers (README "Callers' x-envoy-* headers"): every bootstrap's public
/// listener uses the peer's address and trusts no caller as internal, and its router adds no
/// x-envoy-* header of its own; the Istio gateway trusts nobody either.
#[test]
fn no_shipped_listener_trusts_its_callers() {
    for (rel, doc) in bootstraps() {
        let hcm = public_hcm(&doc);
        assert_eq!(hcm["use_remote_address"], true, "{rel}");
        assert!(hcm.get("internal_address_config").is_none(), "{rel}");
        assert!(hcm.get("xff_num_trusted_hops").is_none(), "{rel}");
        let router = hcm["http_filters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == "envoy.filters.http.router")
            .unwrap();
        assert_eq!(
            router["typed_config"]["suppress_envoy_headers"], true,
            "{rel}"
        );
    }
    let gateway = std::fs::read_to_string(root().join("envoy/istio/gateway.yaml")).unwrap();
    assert!(!gateway.contains("internal_address_config") && !gateway.contains("numTrustedProxies"));
}

/// What the Istio set needs beyond each object: the gateway's connection manager timeouts and
/// the stats tags are in gateway.yaml (the lints check their values), for either filter
/// manifest.
#[test]
fn the_istio_gateway_sets_timeouts_and_stats() {
    let docs = documents("envoy/istio/gateway.yaml");
    let timeouts = docs
        .iter()
        .find(|d| d["kind"] == "EnvoyFilter" && d["metadata"]["name"] == "llm-gateway-timeouts")
        .expect("the timeouts EnvoyFilter");
    let hcm = &timeouts["spec"]["configPatches"][0]["patch"]["value"]["typed_config"];
    for field in [
        "request_headers_timeout",
        "request_timeout",
        "stream_idle_timeout",
    ] {
        assert!(hcm[field].is_string(), "{field}");
    }
    let stats = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "azure-llm-stats")
        .expect("the stats ConfigMap");
    assert!(azure_llm_filter::lint::document(stats).is_some_and(|f| f.is_empty()));
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    assert_eq!(
        deployment["spec"]["template"]["metadata"]["annotations"]
            ["sidecar.istio.io/bootstrapOverride"],
        "azure-llm-stats"
    );
}
