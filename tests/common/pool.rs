//! Failover pools for the e2e tests, built from the shipped recipe: the target clusters, the
//! aggregate clusters and the pool routes take every setting from `envoy/azure-production.yaml`
//! (connect timeout, outlier detection, circuit breakers, retry policy, the upstream filter's
//! Wasm block), with only what ties them to Azure replaced: endpoints point at the stand-ins
//! (plain HTTP, so no TLS), the Wasm module and its configuration are the test's. So the
//! tests of failover under load exercise the settings operators copy.
//!
//! A pool of targets `a, b, c` needs an aggregate cluster and a route for every routing-header
//! value the listener filter can send (the backends still to try, joined by `+`); the values
//! come from the filter's own enumeration (`azure_llm_filter::failover::route_keys`).

use serde_json::{json, Value};
use std::fmt::Write as _;
use std::sync::OnceLock;

/// What the shipped pool looks like, without what names Azure.
struct Templates {
    target: Value,
    aggregate: Value,
    route: Value,
}

fn templates() -> &'static Templates {
    static T: OnceLock<Templates> = OnceLock::new();
    T.get_or_init(|| {
        let path = super::workspace_root().join("envoy/azure-production.yaml");
        let text = std::fs::read_to_string(&path).expect("envoy/azure-production.yaml");
        let yaml: serde_yaml::Value = serde_yaml::from_str(&text).expect("shipped YAML parses");
        let doc: Value = serde_json::to_value(yaml).expect("YAML as JSON");
        let clusters = doc["static_resources"]["clusters"]
            .as_array()
            .expect("clusters")
            .clone();
        let is_aggregate = |c: &Value| c["cluster_type"]["name"] == "envoy.clusters.aggregate";
        let aggregate = clusters
            .iter()
            .find(|c| is_aggregate(c))
            .expect("the shipped file has a pool")
            .clone();
        let first_member = aggregate["cluster_type"]["typed_config"]["clusters"][0]
            .as_str()
            .expect("members")
            .to_string();
        let mut target = clusters
            .iter()
            .find(|c| c["name"] == first_member.as_str())
            .expect("the pool's first target cluster")
            .clone();
        let aggregate_name = aggregate["name"].as_str().expect("name").to_string();
        let route = routes(&doc)
            .into_iter()
            .find(|r| r["route"]["cluster"] == aggregate_name.as_str())
            .expect("the route to the shipped pool");
        for k in [
            "name",
            "type",
            "dns_lookup_family",
            "load_assignment",
            "transport_socket",
        ] {
            target.as_object_mut().expect("cluster").remove(k);
        }
        Templates {
            target,
            aggregate,
            route,
        }
    })
}

fn routes(doc: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    fn walk(v: &Value, out: &mut Vec<Value>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::Array(rs)) = m.get("routes") {
                    out.extend(rs.iter().cloned());
                }
                m.values().for_each(|x| walk(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    walk(doc, &mut out);
    out
}

/// Pool options for tests that need less than the shipped recipe.
#[derive(Debug, Clone, Copy)]
pub struct PoolYaml {
    /// Keep the shipped `outlier_detection` on the target clusters (false: the filter's own
    /// target health alone).
    pub outlier_detection: bool,
}

impl Default for PoolYaml {
    fn default() -> Self {
        PoolYaml {
            outlier_detection: true,
        }
    }
}

/// Envoy clusters (YAML list entries) and routes for the pools of `plugin`, whose targets
/// (backend name, stand-in port) are `targets`: one plain cluster per target, an aggregate
/// cluster and a retrying route per routing-header value the filter can send.
pub fn failover_pool_yaml_with(
    plugin: &Value,
    routing_header: &str,
    targets: &[(&str, u16)],
    opts: PoolYaml,
) -> (String, String) {
    let t = templates();
    let mut clusters = String::new();
    for (name, port) in targets {
        let mut c = t.target.clone();
        if !opts.outlier_detection {
            c.as_object_mut()
                .expect("cluster")
                .remove("outlier_detection");
        }
        c["name"] = json!(name);
        c["type"] = json!("STATIC");
        c["load_assignment"] = json!({
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{
                "endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}},
                "metadata": {"filter_metadata": {"azure_llm": {"backend": name}}}
            }]}]
        });
        let _ = writeln!(clusters, "- {c}");
    }
    let mut upstream = plugin.clone();
    upstream["role"] = json!("upstream");
    let upstream = serde_json::to_string(&upstream).expect("plugin config serialises");
    let wasm = super::wasm_path().to_string_lossy().to_string();
    let mut routes = String::new();
    for key in route_keys(plugin, targets) {
        let members: Vec<&str> = key.split('+').collect();
        let mut c = t.aggregate.clone();
        c["name"] = json!(key);
        c["cluster_type"]["typed_config"]["clusters"] = json!(members);
        let filters = &mut c["typed_extension_protocol_options"]
            ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["http_filters"];
        for f in filters.as_array_mut().expect("http_filters") {
            if f["name"] == "envoy.filters.http.wasm" {
                let config = &mut f["typed_config"]["config"];
                config["vm_config"]["code"] = json!({"local": {"filename": wasm}});
                config["configuration"]["value"] = json!(upstream);
            }
        }
        let _ = writeln!(clusters, "- {c}");
        let mut r = t.route.clone();
        r["match"] = json!({"prefix": "/", "headers": [{"name": routing_header, "string_match": {"exact": key}}]});
        r["request_headers_to_remove"] = json!([routing_header]);
        r["route"]["cluster"] = json!(key);
        r["route"]["retry_policy"]["num_retries"] = json!(members.len() - 1);
        let _ = writeln!(routes, "- {r}");
    }
    (clusters, routes)
}

/// [`failover_pool_yaml_with`] as shipped.
pub fn failover_pool_yaml(
    plugin: &Value,
    routing_header: &str,
    targets: &[(&str, u16)],
) -> (String, String) {
    failover_pool_yaml_with(plugin, routing_header, targets, PoolYaml::default())
}

/// Every routing-header value for more than one target the filter can send for the pools of
/// `plugin` (`azure_llm_filter::failover::order::route_keys`), whose backends are all among
/// `targets`.
fn route_keys(plugin: &Value, targets: &[(&str, u16)]) -> Vec<String> {
    use azure_llm_filter::failover::order;
    let config = azure_llm_filter::config::Config::parse(plugin.to_string().as_bytes())
        .expect("the plugin configuration is valid");
    let mut keys: Vec<String> = Vec::new();
    for route in config.models.values().filter(|m| m.is_pool()) {
        let priorities: Vec<u32> = route.targets.iter().map(|t| t.priority).collect();
        for o in order::route_keys(&priorities) {
            let names: Vec<&str> = o
                .iter()
                .filter_map(|&i| route.targets.get(i))
                .filter_map(|t| config.backends.get(t.backend))
                .map(|b| b.name.as_str())
                .collect();
            if names.iter().all(|n| targets.iter().any(|(t, _)| t == n)) {
                keys.push(order::route_key(names));
            }
        }
    }
    keys.sort();
    keys.dedup();
    keys
}
