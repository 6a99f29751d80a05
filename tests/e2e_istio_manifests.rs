//! The Istio manifests under envoy/istio/: every YAML document parses, every embedded plugin
//! configuration passes the filter's own validation (`Config::parse`, as the filter runs it
//! when Envoy configures it), and the pieces fit together: the EnvoyFilter lets the filter read
//! bodies and fails closed, the WasmPlugin routes on headers only, every host the filter or the
//! routes use has a ServiceEntry and a DestinationRule originating TLS with SNI, every backend
//! has a route, and the credential's secret reaches the VM.
//!
//! No cluster is needed: these are static checks of the files (Istio itself is not run here).

use azure_llm_filter::auth::JwksSource;
use azure_llm_filter::config::Config;
use azure_llm_filter::routing::config::RoutingMode;
use serde::Deserialize;
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn istio_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("envoy/istio")
}

/// Every YAML document of every `*.yaml` file under envoy/istio/, with its file name.
fn documents() -> Vec<(String, Yaml)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(istio_dir())
        .expect("envoy/istio/ exists")
        .flatten()
        .map(|e| e.path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    let mut docs = Vec::new();
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&f).unwrap();
        for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let v = Yaml::deserialize(doc)
                .unwrap_or_else(|e| panic!("{name}: document {}: not valid YAML: {e}", i + 1));
            if !v.is_null() {
                docs.push((name.clone(), v));
            }
        }
    }
    docs
}

fn kind(doc: &Yaml) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}

fn of_kind<'a>(docs: &'a [(String, Yaml)], k: &str) -> Vec<&'a Yaml> {
    docs.iter()
        .filter(|(_, d)| kind(d) == k)
        .map(|(_, d)| d)
        .collect()
}

fn s(v: &Yaml) -> &str {
    v.as_str().unwrap_or_default()
}

/// What istiod hands the filter for a WasmPlugin's `pluginConfig`: a google.protobuf.Struct
/// (every number a double) serialised to JSON, integral numbers printed without a fraction.
fn istio_plugin_config_json(v: &Yaml) -> Json {
    match v {
        Yaml::Null => Json::Null,
        Yaml::Bool(b) => Json::Bool(*b),
        Yaml::Number(n) => {
            let f = n.as_f64().unwrap();
            if f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15 {
                Json::from(f as i64)
            } else {
                Json::from(f)
            }
        }
        Yaml::String(s) => Json::String(s.clone()),
        Yaml::Sequence(items) => Json::Array(items.iter().map(istio_plugin_config_json).collect()),
        Yaml::Mapping(m) => Json::Object(
            m.iter()
                .map(|(k, v)| {
                    let key = k.as_str().expect("pluginConfig keys are strings");
                    (key.to_string(), istio_plugin_config_json(v))
                })
                .collect(),
        ),
        Yaml::Tagged(t) => istio_plugin_config_json(&t.value),
    }
}

/// The Wasm filter configs (`envoy.extensions.filters.http.wasm.v3.Wasm`) of an EnvoyFilter.
fn envoy_filter_wasm_configs(ef: &Yaml) -> Vec<&Yaml> {
    ef["spec"]["configPatches"]
        .as_sequence()
        .into_iter()
        .flatten()
        .map(|p| &p["patch"]["value"]["typed_config"])
        .filter(|tc| {
            s(&tc["@type"]) == "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
        })
        .map(|tc| &tc["config"])
        .collect()
}

/// Every plugin configuration in the manifests: (where, the bytes the filter receives, routing
/// mode expected).
fn plugin_configs(docs: &[(String, Yaml)]) -> Vec<(String, Vec<u8>, RoutingMode)> {
    let mut out = Vec::new();
    for (file, doc) in docs {
        match kind(doc) {
            "EnvoyFilter" => {
                for wasm in envoy_filter_wasm_configs(doc) {
                    let any = &wasm["configuration"];
                    assert_eq!(
                        s(&any["@type"]),
                        "type.googleapis.com/google.protobuf.StringValue",
                        "{file}: the plugin configuration must be a StringValue holding JSON"
                    );
                    let value = any["value"]
                        .as_str()
                        .expect("StringValue value is a string");
                    out.push((
                        format!("{file} (EnvoyFilter)"),
                        value.as_bytes().to_vec(),
                        RoutingMode::Body,
                    ));
                }
            }
            "WasmPlugin" => {
                let json = istio_plugin_config_json(&doc["spec"]["pluginConfig"]);
                out.push((
                    format!("{file} (WasmPlugin)"),
                    serde_json::to_vec(&json).unwrap(),
                    RoutingMode::Header,
                ));
            }
            _ => {}
        }
    }
    out
}

#[test]
fn every_document_is_a_kubernetes_object() {
    let docs = documents();
    assert!(
        docs.len() >= 8,
        "expected the Istio manifests under envoy/istio/"
    );
    for (file, doc) in &docs {
        assert!(
            doc["apiVersion"].is_string() && !kind(doc).is_empty(),
            "{file}: document without apiVersion/kind"
        );
        assert!(
            doc["metadata"]["name"].is_string(),
            "{file}: {} without metadata.name",
            kind(doc)
        );
    }
    for k in [
        "EnvoyFilter",
        "WasmPlugin",
        "ServiceEntry",
        "DestinationRule",
        "Gateway",
        "VirtualService",
        "Deployment",
    ] {
        assert!(!of_kind(&docs, k).is_empty(), "no {k} under envoy/istio/");
    }
}

#[test]
fn embedded_plugin_configurations_pass_the_filters_validation() {
    let docs = documents();
    let configs = plugin_configs(&docs);
    assert!(
        configs.iter().any(|(w, ..)| w.contains("EnvoyFilter"))
            && configs.iter().any(|(w, ..)| w.contains("WasmPlugin")),
        "expected an EnvoyFilter and a WasmPlugin configuration"
    );
    for (place, bytes, mode) in configs {
        let config = Config::parse(&bytes).unwrap_or_else(|e| panic!("{place}: {e}"));
        assert_eq!(config.routing_mode, mode, "{place}: routing_mode");
    }
}

#[test]
fn envoy_filter_reads_bodies_and_fails_closed_on_the_gateway() {
    let docs = documents();
    let filters: Vec<&Yaml> = of_kind(&docs, "EnvoyFilter")
        .into_iter()
        .filter(|ef| !envoy_filter_wasm_configs(ef).is_empty())
        .collect();
    assert_eq!(filters.len(), 1, "one EnvoyFilter carries the Wasm filter");
    let ef = filters[0];
    assert_eq!(
        s(&ef["spec"]["workloadSelector"]["labels"]["istio"]),
        "llm-gateway"
    );
    let wasm = envoy_filter_wasm_configs(ef);
    assert_eq!(
        wasm.len(),
        2,
        "the listener's Wasm filter config and the failover pool's upstream one"
    );
    for w in &wasm {
        assert_eq!(w["allow_on_headers_stop_iteration"].as_bool(), Some(true));
        assert_eq!(s(&w["failure_policy"]), "FAIL_CLOSED");
        assert_eq!(
            s(&w["vm_config"]["vm_id"]),
            s(&wasm[0]["vm_config"]["vm_id"])
        );
    }
    let wasm = wasm[0];
    assert_eq!(
        wasm["allow_on_headers_stop_iteration"].as_bool(),
        Some(true)
    );
    assert_eq!(s(&wasm["failure_policy"]), "FAIL_CLOSED");
    assert_eq!(s(&wasm["vm_config"]["runtime"]), "envoy.wasm.runtime.v8");
    let uri = s(&wasm["vm_config"]["code"]["remote"]["http_uri"]["uri"]);
    assert!(uri.starts_with("oci://"), "module from an OCI image: {uri}");
    assert!(
        wasm["vm_config"]["code"]["remote"]["sha256"].is_string(),
        "remote code needs sha256"
    );

    // The extension config is served over ECDS and inserted before the router of the
    // gateway's HTTP listener, waiting for the config (no traffic without the filter).
    let patches = ef["spec"]["configPatches"].as_sequence().unwrap();
    let ext = patches
        .iter()
        .find(|p| s(&p["applyTo"]) == "EXTENSION_CONFIG")
        .expect("EXTENSION_CONFIG patch");
    let http = patches
        .iter()
        .find(|p| s(&p["applyTo"]) == "HTTP_FILTER")
        .expect("HTTP_FILTER patch");
    assert_eq!(s(&ext["patch"]["operation"]), "ADD");
    assert_eq!(s(&http["match"]["context"]), "GATEWAY");
    assert_eq!(
        s(&http["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"]),
        "envoy.filters.http.router"
    );
    assert_eq!(s(&http["patch"]["operation"]), "INSERT_BEFORE");
    assert_eq!(
        s(&http["patch"]["value"]["name"]),
        s(&ext["patch"]["value"]["name"]),
        "the HTTP filter names the extension config"
    );
    let discovery = &http["patch"]["value"]["config_discovery"];
    assert_eq!(
        s(&discovery["type_urls"][0]),
        "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
    );
    assert_eq!(
        s(&discovery["config_source"]["initial_fetch_timeout"]),
        "0s"
    );
    assert!(
        discovery.get("default_config").is_none(),
        "a default config would let traffic pass without the filter"
    );
}

#[test]
fn wasm_plugin_routes_on_headers_and_fails_closed() {
    let docs = documents();
    let plugins = of_kind(&docs, "WasmPlugin");
    assert_eq!(plugins.len(), 1);
    let spec = &plugins[0]["spec"];
    assert_eq!(s(&spec["pluginConfig"]["routing_mode"]), "header");
    assert_eq!(s(&spec["failStrategy"]), "FAIL_CLOSE");
    assert_eq!(s(&spec["phase"]), "STATS");
    assert_eq!(s(&spec["selector"]["matchLabels"]["istio"]), "llm-gateway");
    assert!(s(&spec["url"]).starts_with("oci://"));
}

#[test]
fn destination_rules_originate_tls_with_sni_for_every_service_entry() {
    let docs = documents();
    let mut entries = BTreeSet::new();
    for se in of_kind(&docs, "ServiceEntry") {
        let spec = &se["spec"];
        assert_eq!(s(&spec["resolution"]), "DNS");
        assert_eq!(s(&spec["location"]), "MESH_EXTERNAL");
        let ports = spec["ports"].as_sequence().unwrap();
        assert!(
            ports.iter().any(|p| p["number"].as_u64() == Some(443)),
            "ServiceEntry {:?} without port 443",
            spec["hosts"]
        );
        for h in spec["hosts"].as_sequence().unwrap() {
            entries.insert(s(h).to_string());
        }
    }
    let mut rules = BTreeSet::new();
    for dr in of_kind(&docs, "DestinationRule") {
        let host = s(&dr["spec"]["host"]).to_string();
        let policy = &dr["spec"]["trafficPolicy"];
        // Either the whole host or its port 443 carries the TLS settings.
        let tls = if policy["tls"].is_mapping() {
            &policy["tls"]
        } else {
            policy["portLevelSettings"]
                .as_sequence()
                .into_iter()
                .flatten()
                .find(|p| p["port"]["number"].as_u64() == Some(443))
                .map(|p| &p["tls"])
                .unwrap_or_else(|| panic!("DestinationRule {host}: no TLS settings"))
        };
        assert_eq!(s(&tls["mode"]), "SIMPLE", "DestinationRule {host}");
        assert_eq!(s(&tls["sni"]), host, "DestinationRule {host}: sni");
        rules.insert(host);
    }
    assert!(entries.contains("login.microsoftonline.com"));
    assert_eq!(
        entries, rules,
        "every ServiceEntry host needs a DestinationRule and vice versa"
    );
}

/// `outbound|443||host` → `host`: the cluster Istio builds for a ServiceEntry's port 443.
fn istio_cluster_host(cluster: &str) -> Option<&str> {
    cluster.strip_prefix("outbound|443||")
}

/// Stalled callers are answered on the gateway whichever flavour of the filter is applied:
/// an EnvoyFilter merges request timeouts into its HTTP connection manager.
#[test]
fn gateway_answers_callers_that_stall() {
    let docs = documents();
    let (file, hcm) = docs
        .iter()
        .filter(|(_, d)| kind(d) == "EnvoyFilter")
        .flat_map(|(f, d)| {
            d["spec"]["configPatches"]
                .as_sequence()
                .unwrap()
                .iter()
                .map(move |p| (f.as_str(), p))
        })
        .find(|(_, p)| {
            s(&p["applyTo"]) == "NETWORK_FILTER"
                && s(&p["match"]["listener"]["filterChain"]["filter"]["name"])
                    == "envoy.filters.network.http_connection_manager"
        })
        .expect("an HTTP connection manager patch");
    assert_eq!(file, "gateway.yaml", "applied with either flavour");
    assert_eq!(s(&hcm["match"]["context"]), "GATEWAY");
    assert_eq!(s(&hcm["patch"]["operation"]), "MERGE");
    let cfg = &hcm["patch"]["value"]["typed_config"];
    for field in [
        "request_headers_timeout",
        "request_timeout",
        "stream_idle_timeout",
    ] {
        let v = s(&cfg[field]);
        assert!(v.ends_with('s') && v != "0s", "{field}: {v:?}");
    }
}

#[test]
fn clusters_routes_and_secrets_fit_together() {
    let docs = documents();
    let entries: BTreeSet<String> = of_kind(&docs, "ServiceEntry")
        .iter()
        .flat_map(|se| se["spec"]["hosts"].as_sequence().unwrap().iter())
        .map(|h| s(h).to_string())
        .collect();

    // The VirtualService of the gateway: routing header value -> destination host, port 443.
    let services = of_kind(&docs, "VirtualService");
    assert_eq!(services.len(), 1);
    let vs = services[0];
    let gateways = of_kind(&docs, "Gateway");
    assert_eq!(
        s(&vs["spec"]["gateways"][0]),
        s(&gateways[0]["metadata"]["name"])
    );
    let mut routes = BTreeMap::new();
    let http = vs["spec"]["http"].as_sequence().unwrap();
    for r in http {
        let Some(m) = r["match"].as_sequence() else {
            continue;
        };
        let value = s(&m[0]["headers"]["x-azure-llm-backend"]["exact"]);
        let removed = r["headers"]["request"]["remove"].as_sequence();
        assert!(
            removed.is_some_and(|h| h.iter().any(|h| s(h) == "x-azure-llm-backend")),
            "route {value} must keep the routing header from Azure"
        );
        let dest = &r["route"][0]["destination"];
        assert_eq!(dest["port"]["number"].as_u64(), Some(443), "route {value}");
        routes.insert(value.to_string(), s(&dest["host"]).to_string());
    }
    let last = http.last().unwrap();
    assert!(
        last["match"].is_null() && last["directResponse"]["status"].as_u64() == Some(404),
        "the last route answers what the filter did not route with 404"
    );

    // Secrets the credentials read from the environment: in the gateway container's env.
    let deployment = of_kind(&docs, "Deployment")[0];
    let proxy = deployment["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|c| s(&c["name"]) == "istio-proxy")
        .expect("istio-proxy container");
    let container_env: BTreeSet<&str> = proxy["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| s(&e["name"]))
        .collect();
    let ef_wasm = envoy_filter_wasm_configs(of_kind(&docs, "EnvoyFilter")[0])[0];
    let ef_host_keys: BTreeSet<&str> = ef_wasm["vm_config"]["environment_variables"]
        ["host_env_keys"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(s)
        .collect();
    let wp_host_keys: BTreeSet<&str> = of_kind(&docs, "WasmPlugin")[0]["spec"]["vmConfig"]["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter(|e| s(&e["valueFrom"]) == "HOST")
        .map(|e| s(&e["name"]))
        .collect();

    for (place, bytes, _) in plugin_configs(&docs) {
        let config = Config::parse(&bytes).unwrap_or_else(|e| panic!("{place}: {e}"));
        let mut clusters: Vec<&str> = config
            .credentials
            .iter()
            .map(|c| c.token_cluster.as_str())
            .collect();
        if let Some(auth) = &config.auth {
            for p in &auth.providers {
                if let JwksSource::Remote { cluster, .. } = &p.jwks {
                    clusters.push(cluster);
                }
            }
        }
        for cluster in clusters {
            let host = istio_cluster_host(cluster)
                .unwrap_or_else(|| panic!("{place}: {cluster} is not an Istio outbound cluster"));
            assert!(
                entries.contains(host),
                "{place}: no ServiceEntry for {host}"
            );
        }
        for backend in &config.backends {
            let dest = routes.get(&backend.name).unwrap_or_else(|| {
                panic!(
                    "{place}: no VirtualService route for backend {}",
                    backend.name
                )
            });
            assert_eq!(dest, &backend.host, "{place}: route of {}", backend.name);
            assert!(
                entries.contains(dest),
                "{place}: no ServiceEntry for {dest}"
            );
        }
        // Every secret named by environment variable reaches the VM.
        let raw: Json = serde_json::from_slice(&bytes).unwrap();
        for (name, cred) in raw["credentials"].as_object().unwrap() {
            if let Some(var) = cred["client_secret_env"].as_str() {
                assert!(
                    container_env.contains(var),
                    "{place}: {name}: {var} not in the proxy env"
                );
                let keys = if place.contains("EnvoyFilter") {
                    &ef_host_keys
                } else {
                    &wp_host_keys
                };
                assert!(
                    keys.contains(var),
                    "{place}: {name}: {var} not passed to the VM"
                );
            }
        }
    }
}

#[test]
fn oci_recipe_follows_the_wasm_image_spec() {
    let text = std::fs::read_to_string(istio_dir().join("Dockerfile")).unwrap();
    let instructions: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(
        instructions,
        ["FROM scratch", "COPY azure_llm_filter.wasm ./plugin.wasm"]
    );
    assert!(text.contains("module.wasm.image/variant=compat"));
}

/// The offline checker agrees: `check-config` accepts every manifest, and with
/// `--check-env` resolves the secret the way the VM would (host env keys).
#[test]
fn check_config_accepts_the_manifests() {
    let files = ["envoyfilter.yaml", "wasmplugin.yaml"].map(|f| istio_dir().join(f));
    let run = |extra: &[&str], env: &[(&str, &str)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_check-config"));
        cmd.args(extra)
            .args(&files)
            .env_remove("AZURE_CLIENT_SECRET")
            .env_remove("AZURE_PARTNER_CLIENT_SECRET");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run check-config");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = run(&[], &[]);
    assert_eq!(code, Some(0), "{out}");
    // The EnvoyFilter's listener and failover-pool upstream filters, and the WasmPlugin.
    assert_eq!(
        out.lines().filter(|l| l.ends_with(": OK")).count(),
        3,
        "{out}"
    );

    let (code, out) = run(
        &["--check-env"],
        &[
            ("AZURE_CLIENT_SECRET", "s3cret"),
            ("AZURE_PARTNER_CLIENT_SECRET", "s3cret2"),
        ],
    );
    assert_eq!(code, Some(0), "{out}");

    let (code, out) = run(&["--check-env"], &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(
            "invalid plugin configuration: credentials.main.client_secret_env: environment \
             variable \"AZURE_CLIENT_SECRET\" is not set"
        ),
        "{out}"
    );
}

/// The failover pool of the EnvoyFilter: the upstream filter has the listener's credentials,
/// backends and models with role upstream; the aggregate cluster lists the pool's targets in
/// order, each target cluster's endpoint names its backend and originates TLS to its host; the
/// route of the pool's routing-header value retries 429 / 5xx on the next target.
#[test]
fn the_failover_pool_fits_together() {
    let docs = documents();
    let ef = of_kind(&docs, "EnvoyFilter")[0];
    let patches = ef["spec"]["configPatches"].as_sequence().unwrap();
    let configs: Vec<Json> = envoy_filter_wasm_configs(ef)
        .iter()
        .map(|w| serde_json::from_str(w["configuration"]["value"].as_str().unwrap()).unwrap())
        .collect();
    let (listener, upstream) = (&configs[0], &configs[1]);
    assert_eq!(upstream["role"], "upstream");
    for section in ["credentials", "backends", "models"] {
        assert_eq!(listener[section], upstream[section], "{section} differ");
    }
    let config = Config::parse(listener.to_string().as_bytes()).unwrap();
    let pool = &config.models["gpt-4o"];
    assert!(pool.is_pool());
    let backends: Vec<&str> = pool
        .targets
        .iter()
        .map(|t| config.backends[t.backend].name.as_str())
        .collect();
    let key = backends.join("+");

    let clusters: Vec<&Yaml> = patches
        .iter()
        .filter(|p| s(&p["applyTo"]) == "CLUSTER" && s(&p["patch"]["operation"]) == "ADD")
        .map(|p| &p["patch"]["value"])
        .collect();
    let cluster = |name: &str| {
        *clusters
            .iter()
            .find(|c| s(&c["name"]) == name)
            .unwrap_or_else(|| panic!("no cluster {name}"))
    };
    let aggregate = cluster(&key);
    let members = aggregate["cluster_type"]["typed_config"]["clusters"]
        .as_sequence()
        .unwrap();
    assert_eq!(members.len(), backends.len());
    for (member, backend) in members.iter().zip(&backends) {
        let c = cluster(s(member));
        let ep = &c["load_assignment"]["endpoints"][0]["lb_endpoints"][0];
        assert_eq!(
            s(&ep["metadata"]["filter_metadata"]["azure_llm"]["backend"]),
            *backend
        );
        let host = &config
            .backends
            .iter()
            .find(|b| b.name == *backend)
            .unwrap()
            .host;
        assert_eq!(
            s(&ep["endpoint"]["address"]["socket_address"]["address"]),
            host
        );
        assert_eq!(s(&c["transport_socket"]["typed_config"]["sni"]), host);
    }
    let filters = aggregate["typed_extension_protocol_options"]
        ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["http_filters"]
        .as_sequence()
        .unwrap();
    let ext = patches
        .iter()
        .filter(|p| s(&p["applyTo"]) == "EXTENSION_CONFIG")
        .nth(1)
        .expect("the upstream filter's EXTENSION_CONFIG");
    assert_eq!(s(&filters[0]["name"]), s(&ext["patch"]["value"]["name"]));
    assert_eq!(
        s(&filters[0]["config_discovery"]["config_source"]["initial_fetch_timeout"]),
        "0s"
    );
    assert_eq!(s(&filters[1]["name"]), "envoy.filters.http.upstream_codec");

    let route = patches
        .iter()
        .find(|p| s(&p["applyTo"]) == "HTTP_ROUTE")
        .map(|p| &p["patch"]["value"])
        .expect("the pool's route");
    assert_eq!(
        s(&route["match"]["headers"][0]["string_match"]["exact"]),
        key
    );
    assert_eq!(s(&route["route"]["cluster"]), key);
    assert_eq!(
        s(&route["request_headers_to_remove"][0]),
        "x-azure-llm-backend",
        "the routing header never leaves the gateway"
    );
    let retry = &route["route"]["retry_policy"];
    for on in ["5xx", "connect-failure", "retriable-status-codes"] {
        assert!(s(&retry["retry_on"]).contains(on), "retry_on {on}");
    }
    assert_eq!(retry["retriable_status_codes"][0].as_u64(), Some(429));
    assert_eq!(
        retry["num_retries"].as_u64(),
        Some(backends.len() as u64 - 1)
    );
    assert_eq!(
        s(&retry["retry_priority"]["name"]),
        "envoy.retry_priorities.previous_priorities"
    );
}
