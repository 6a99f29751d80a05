//! The HTTP connection manager that runs the filter and what hangs off it: its timeouts, whom
//! Envoy counts as internal (and so obeys in `x-envoy-*` headers), the routes the filter's
//! routing header selects, the Wasm filter's own settings, and the stats tags its metrics need.

use super::{at, is_type, items, str_at, Finding};
use crate::config::DEFAULT_ROUTING_HEADER;
use serde_json::Value as Json;

const HCM: &str =
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const WASM: &str = "envoy.extensions.filters.http.wasm.v3.Wasm";

fn names_this_filter(s: &str) -> bool {
    s.contains("azure_llm_filter") || s.contains("azure-llm-filter")
}

/// Whether an Envoy Wasm `PluginConfig` is this filter's (by name, root_id, vm_id or code).
pub(super) fn is_ours(plugin: &Json) -> bool {
    [
        str_at(plugin, &["name"]),
        str_at(plugin, &["root_id"]),
        str_at(plugin, &["vm_config", "vm_id"]),
        str_at(plugin, &["vm_config", "code", "local", "filename"]),
        str_at(plugin, &["vm_config", "code", "remote", "http_uri", "uri"]),
    ]
    .into_iter()
    .flatten()
    .any(names_this_filter)
}

/// The plugin configuration JSON of a `PluginConfig` (a StringValue), if it parses.
fn plugin_json(plugin: &Json) -> Option<Json> {
    let value = str_at(plugin, &["configuration", "value"])?;
    serde_json::from_str(value).ok()
}

/// This filter's `PluginConfig`s among an HCM's (or an upstream's) `http_filters`; a filter
/// from ECDS (`config_discovery`) counts by its name, with no config to read.
fn our_filters(http_filters: &Json) -> (Vec<&Json>, bool) {
    let mut plugins = Vec::new();
    let mut by_discovery = false;
    for f in http_filters.as_array().into_iter().flatten() {
        if let Some(tc) = f.get("typed_config").filter(|tc| is_type(tc, WASM)) {
            if let Some(plugin) = tc.get("config").filter(|p| is_ours(p)) {
                plugins.push(plugin);
            }
        } else if f.get("config_discovery").is_some()
            && f.get("name")
                .and_then(Json::as_str)
                .is_some_and(names_this_filter)
        {
            by_discovery = true;
        }
    }
    (plugins, by_discovery)
}

/// The routing header of a listener's filter (its plugin configuration's, else the default).
fn routing_header(plugins: &[&Json]) -> String {
    plugins
        .iter()
        .filter_map(|p| plugin_json(p))
        .find_map(|c| {
            c.get("routing_header")
                .and_then(Json::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| DEFAULT_ROUTING_HEADER.to_string())
}

/// The lints of an Envoy bootstrap's listeners and of the Wasm filters on its clusters.
pub(super) fn bootstrap(doc: &Json, out: &mut Vec<Finding>) {
    let mut runs_filter = false;
    for listener in items(doc, &["static_resources", "listeners"]) {
        let name = listener.get("name").and_then(Json::as_str).unwrap_or("?");
        for chain in items(listener, &["filter_chains"]) {
            for filter in items(chain, &["filters"]) {
                let Some(hcm) = filter.get("typed_config").filter(|tc| is_type(tc, HCM)) else {
                    continue;
                };
                let label = format!("listener {name}");
                runs_filter |= hcm_with_filter(&label, hcm, out);
            }
        }
    }
    for cluster in items(doc, &["static_resources", "clusters"]) {
        let name = cluster.get("name").and_then(Json::as_str).unwrap_or("?");
        let filters = cluster
            .get("typed_extension_protocol_options")
            .and_then(Json::as_object)
            .into_iter()
            .flat_map(|m| m.values())
            .filter_map(|o| o.get("http_filters"));
        for http_filters in filters {
            for plugin in our_filters(http_filters).0 {
                wasm_plugin(&format!("cluster {name}: upstream filter"), plugin, out);
            }
        }
    }
    if runs_filter {
        stats_config("bootstrap stats_config", doc.get("stats_config"), out);
    }
}

/// An HCM: when it runs the filter, its lints; whether it does.
pub(super) fn hcm_with_filter(label: &str, hcm: &Json, out: &mut Vec<Finding>) -> bool {
    let Some(http_filters) = hcm.get("http_filters") else {
        return false;
    };
    let (plugins, by_discovery) = our_filters(http_filters);
    if plugins.is_empty() && !by_discovery {
        return false;
    }
    for plugin in &plugins {
        wasm_plugin(&format!("{label}: filter"), plugin, out);
    }
    timeouts(label, hcm, true, out);
    trust(label, hcm, out);
    if let Some(rc) = hcm.get("route_config") {
        route_config(label, rc, &routing_header(&plugins), out);
    }
    true
}

/// Whether a protobuf Duration (JSON `"10s"` or `{seconds, nanos}`) is zero; None if absent
/// or unreadable.
fn duration_is_zero(v: Option<&Json>) -> Option<bool> {
    match v? {
        Json::String(s) => s
            .trim_end_matches('s')
            .parse::<f64>()
            .ok()
            .map(|f| f == 0.0),
        Json::Object(o) => {
            let n = |k: &str| o.get(k).and_then(Json::as_f64).unwrap_or(0.0);
            Some(n("seconds") == 0.0 && n("nanos") == 0.0)
        }
        _ => None,
    }
}

/// Callers that stall are answered: `required` says whether an absent timeout counts (in an
/// Envoy bootstrap: yes, Envoy's default is none; in an Istio MERGE patch only what it sets).
pub(super) fn timeouts(label: &str, hcm: &Json, required: bool, out: &mut Vec<Finding>) {
    let checks = [
        (
            "request_headers_timeout",
            "10s",
            "a caller that never finishes its headers holds its connection and is never answered",
            true,
        ),
        (
            "request_timeout",
            "60s",
            "a caller whose body never completes is never answered (Envoy would answer 408)",
            true,
        ),
        (
            "stream_idle_timeout",
            "300s",
            "a stream that goes quiet is never ended",
            false,
        ),
    ];
    for (field, value, why, needed) in checks {
        let problem = match duration_is_zero(hcm.get(field)) {
            Some(true) => format!("{field} 0s disables it: {why}"),
            None if hcm.get(field).is_none() && required && needed => {
                format!("no {field} (Envoy's default is none): {why}")
            }
            _ => continue,
        };
        out.push(Finding::new(
            label,
            problem,
            format!("set {field}: {value} on the HTTP connection manager"),
        ));
    }
}

/// Who counts as internal: Envoy obeys the `x-envoy-*` headers (retries, retriable status
/// codes, timeouts) of internal requests. Without `internal_address_config` Envoy 1.40 trusts
/// no address.
pub(super) fn trust(label: &str, hcm: &Json, out: &mut Vec<Finding>) {
    let Some(iac) = hcm.get("internal_address_config") else {
        return;
    };
    let ranges: Vec<String> = items(iac, &["cidr_ranges"])
        .map(|r| {
            format!(
                "{}/{}",
                str_at(r, &["address_prefix"]).unwrap_or("?"),
                r.get("prefix_len").and_then(Json::as_u64).unwrap_or(0)
            )
        })
        .collect();
    let unix = iac.get("unix_sockets").and_then(Json::as_bool) == Some(true);
    if ranges.is_empty() && !unix {
        return;
    }
    let mut trusted = ranges.join(", ");
    if unix {
        trusted.push_str(if trusted.is_empty() {
            "unix sockets"
        } else {
            ", unix sockets"
        });
    }
    let spoofable = if hcm.get("use_remote_address").and_then(Json::as_bool) == Some(true) {
        ""
    } else {
        " (without use_remote_address the caller's own x-forwarded-for decides, so any caller can claim one)"
    };
    out.push(Finding::new(
        label,
        format!(
            "internal_address_config trusts {trusted}{spoofable}: Envoy obeys the x-envoy-* \
             headers of those callers (a retried answer is served and billed twice, timeouts \
             of their choosing)"
        ),
        "remove internal_address_config (Envoy 1.40 then trusts no address) or list only the \
         proxies you run, with use_remote_address: true",
    ));
}

/// Routes selected by the routing header must drop it: it is the filter's message to the
/// route table, not Azure's business.
fn route_config(label: &str, rc: &Json, header: &str, out: &mut Vec<Finding>) {
    let removed_at = |v: &Json| {
        items(v, &["request_headers_to_remove"])
            .filter_map(Json::as_str)
            .any(|h| h.eq_ignore_ascii_case(header))
    };
    let by_config = removed_at(rc);
    for vhost in items(rc, &["virtual_hosts"]) {
        let by_vhost = by_config || removed_at(vhost);
        for route in items(vhost, &["routes"]) {
            if !by_vhost {
                envoy_route(label, route, header, out);
            }
        }
    }
}

/// One Envoy route: if it forwards on the routing header, it removes it.
pub(super) fn envoy_route(label: &str, route: &Json, header: &str, out: &mut Vec<Finding>) {
    let Some(value) = items(route, &["match", "headers"])
        .find(|h| {
            h.get("name")
                .and_then(Json::as_str)
                .is_some_and(|n| n.eq_ignore_ascii_case(header))
        })
        .map(|h| {
            str_at(h, &["string_match", "exact"])
                .or_else(|| str_at(h, &["exact_match"]))
                .unwrap_or("*")
        })
    else {
        return;
    };
    let removes = items(route, &["request_headers_to_remove"])
        .filter_map(Json::as_str)
        .any(|h| h.eq_ignore_ascii_case(header));
    if route.get("route").is_some() && !removes {
        out.push(Finding::new(
            &format!("{label}: route {header}={value}"),
            format!("forwards the routing header {header} to Azure"),
            format!("add request_headers_to_remove: [{header}] to the route"),
        ));
    }
}

/// The Wasm filter's own settings.
pub(super) fn wasm_plugin(label: &str, plugin: &Json, out: &mut Vec<Finding>) {
    let fail_open = str_at(plugin, &["failure_policy"]) == Some("FAIL_OPEN")
        || plugin.get("fail_open").and_then(Json::as_bool) == Some(true);
    if fail_open {
        out.push(Finding::new(
            label,
            "failure_policy FAIL_OPEN: a VM that fails or a module that is missing lets \
             requests through without authentication, Entra token, routing or limits",
            "set failure_policy: FAIL_CLOSED",
        ));
    }
    let header_mode = plugin_json(plugin)
        .and_then(|c| {
            c.get("routing_mode")
                .and_then(Json::as_str)
                .map(str::to_string)
        })
        .is_some_and(|m| m == "header");
    let stops = plugin
        .get("allow_on_headers_stop_iteration")
        .and_then(Json::as_bool)
        == Some(true);
    if !header_mode && !stops {
        out.push(Finding::new(
            label,
            "no allow_on_headers_stop_iteration: true: Envoy never hands the body to the \
             filter, which reads the model from it (500 filter_misconfigured)",
            "set allow_on_headers_stop_iteration: true (or routing_mode \"header\")",
        ));
    }
}

/// The stats tags and GenAI buckets the filter's metrics need (src/metrics.rs).
pub(super) fn stats_config(label: &str, stats: Option<&Json>, out: &mut Vec<Finding>) {
    let tags: Vec<(&str, &str)> = stats
        .map(|s| items(s, &["stats_tags"]).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|t| Some((str_at(t, &["tag_name"])?, str_at(t, &["regex"])?)))
        .collect();
    let wrong: Vec<&str> = crate::metrics::stats_tags()
        .into_iter()
        .filter(|(tag, regex)| !tags.iter().any(|(t, r)| t == tag && r == regex))
        .map(|(tag, _)| tag)
        .collect();
    if !wrong.is_empty() {
        out.push(Finding::new(
            label,
            format!(
                "missing or different stats_tags for the filter's labels ({}): its metrics \
                 reach Prometheus as one name per label value, without labels",
                wrong.join(", ")
            ),
            "copy stats_config.stats_tags from envoy/azure-production.yaml (src/metrics.rs \
             stats_tags)",
        ));
    }
    let settings: Vec<&Json> = stats
        .map(|s| items(s, &["histogram_bucket_settings"]).collect())
        .unwrap_or_default();
    let missing: Vec<String> = crate::metrics::histogram_buckets()
        .into_iter()
        .filter(|(prefix, buckets)| {
            !settings.iter().any(|s| {
                str_at(s, &["match", "prefix"]) == Some(prefix.as_str())
                    && at(s, &["buckets"])
                        .and_then(Json::as_array)
                        .is_some_and(|b| {
                            b.iter().map(Json::as_f64).collect::<Vec<_>>()
                                == buckets.iter().map(|&v| Some(v as f64)).collect::<Vec<_>>()
                        })
            })
        })
        .map(|(prefix, _)| prefix)
        .collect();
    if !missing.is_empty() {
        out.push(Finding::new(
            label,
            format!(
                "missing or different histogram_bucket_settings ({}): the GenAI histograms get \
                 Envoy's default buckets, not the OpenTelemetry conventions'",
                missing.join(", ")
            ),
            "copy stats_config.histogram_bucket_settings from envoy/azure-production.yaml",
        ));
    }
}
