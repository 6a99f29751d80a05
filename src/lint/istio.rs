//! The Istio objects that deploy the filter: EnvoyFilter patches (clusters, routes, the HTTP
//! connection manager, the Wasm extension config), DestinationRules, VirtualServices, the
//! WasmPlugin and the bootstrap-override ConfigMap of the stats tags.

use super::{cluster_label, items, listener, object_label, pools, str_at, tls, Finding};
use crate::config::DEFAULT_ROUTING_HEADER;
use serde_json::Value as Json;

/// The lints of an Istio object; None for kinds that hold nothing these lints read.
pub(super) fn object(kind: &str, doc: &Json) -> Option<Vec<Finding>> {
    let mut out = Vec::new();
    let label = object_label(kind, doc);
    match kind {
        "EnvoyFilter" => envoy_filter(&label, doc, &mut out),
        "DestinationRule" => tls::destination_rule(&label, doc, &mut out),
        "VirtualService" => virtual_service(&label, doc, &mut out),
        "WasmPlugin" => wasm_plugin(&label, doc, &mut out),
        "ConfigMap" => {
            let bootstrap = str_at(doc, &["data", "custom_bootstrap.json"])
                .and_then(|s| serde_json::from_str::<Json>(s).ok())?;
            let stats = bootstrap.get("stats_config")?;
            listener::stats_config(
                &format!("{label}: custom_bootstrap.json"),
                Some(stats),
                &mut out,
            );
        }
        _ => return None,
    }
    Some(out)
}

fn envoy_filter(label: &str, doc: &Json, out: &mut Vec<Finding>) {
    let mut clusters = Vec::new();
    for patch in items(doc, &["spec", "configPatches"]) {
        let Some(value) = patch.get("patch").and_then(|p| p.get("value")) else {
            continue;
        };
        match patch.get("applyTo").and_then(Json::as_str) {
            Some("CLUSTER") => {
                tls::cluster(&cluster_label(label, value), value, out);
                clusters.push(value);
            }
            Some("HTTP_ROUTE") => {
                let name = value.get("name").and_then(Json::as_str).unwrap_or("?");
                listener::envoy_route(
                    &format!("{label}: HTTP_ROUTE {name}"),
                    value,
                    DEFAULT_ROUTING_HEADER,
                    out,
                );
            }
            Some("NETWORK_FILTER") => {
                if let Some(hcm) = value.get("typed_config") {
                    let l = format!("{label}: NETWORK_FILTER patch");
                    listener::timeouts(&l, hcm, false, out);
                    listener::trust(&l, hcm, out);
                }
            }
            Some("EXTENSION_CONFIG") | Some("HTTP_FILTER") => {
                let name = value.get("name").and_then(Json::as_str).unwrap_or("?");
                if let Some(plugin) = value
                    .get("typed_config")
                    .and_then(|tc| tc.get("config"))
                    .filter(|p| listener::is_ours(p))
                {
                    listener::wasm_plugin(&format!("{label}: {name}"), plugin, out);
                }
            }
            _ => {}
        }
    }
    pools::clusters(&format!("{label}: "), &clusters, out);
}

/// Routes of the routing header remove it (`headers.request.remove`).
fn virtual_service(label: &str, doc: &Json, out: &mut Vec<Finding>) {
    let header = DEFAULT_ROUTING_HEADER;
    for route in items(doc, &["spec", "http"]) {
        let matched = items(route, &["match"]).any(|m| {
            m.get("headers")
                .and_then(Json::as_object)
                .is_some_and(|h| h.keys().any(|k| k.eq_ignore_ascii_case(header)))
        });
        let removes = items(route, &["headers", "request", "remove"])
            .filter_map(Json::as_str)
            .any(|h| h.eq_ignore_ascii_case(header));
        if matched && route.get("route").is_some() && !removes {
            let name = route.get("name").and_then(Json::as_str).unwrap_or("?");
            out.push(Finding::new(
                &format!("{label}: route {name}"),
                format!("forwards the routing header {header} to Azure"),
                format!("add headers: {{ request: {{ remove: [{header}] }} }} to the route"),
            ));
        }
    }
}

/// A WasmPlugin of this filter: it fails closed, and (it cannot set
/// allow_on_headers_stop_iteration) routes on headers.
fn wasm_plugin(label: &str, doc: &Json, out: &mut Vec<Finding>) {
    let spec = doc.get("spec");
    let s = |k: &str| {
        spec.and_then(|s| s.get(k))
            .and_then(Json::as_str)
            .unwrap_or("")
    };
    let ours = [
        s("url"),
        s("pluginName"),
        str_at(doc, &["metadata", "name"]).unwrap_or(""),
    ]
    .iter()
    .any(|v| v.contains("azure_llm_filter") || v.contains("azure-llm-filter"));
    if !ours {
        return;
    }
    if s("failStrategy") == "FAIL_OPEN" {
        out.push(Finding::new(
            label,
            "failStrategy FAIL_OPEN: a VM that fails or a module that cannot be fetched lets \
             requests through without authentication, Entra token, routing or limits",
            "set failStrategy: FAIL_CLOSE",
        ));
    }
    let mode = spec
        .and_then(|s| s.get("pluginConfig"))
        .and_then(|c| c.get("routing_mode"))
        .and_then(Json::as_str);
    if mode != Some("header") {
        out.push(Finding::new(
            label,
            "a WasmPlugin cannot set allow_on_headers_stop_iteration, so body routing never gets \
             the body (500 filter_misconfigured)",
            "set pluginConfig.routing_mode: header, or deploy with an EnvoyFilter \
             (envoy/istio/envoyfilter.yaml)",
        ));
    }
}
