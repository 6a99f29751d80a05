//! Issue 18, the shipped configurations stay true to the filter: every Envoy bootstrap under
//! envoy/ and the Istio gateway carry the stats tags and GenAI histogram buckets of
//! src/metrics.rs, every usage-record logger (Envoy bootstraps, Istio's Telemetry provider)
//! carries the attributes of src/usage_record.rs, and the Grafana dashboard is valid JSON that
//! queries only metrics and labels the filter emits.

use azure_llm_filter::metrics::{self, Histogram};
use azure_llm_filter::usage_record;
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;
use std::collections::BTreeSet;
use std::path::PathBuf;

fn repo_file(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn yaml_docs(rel: &str) -> Vec<Yaml> {
    let text = std::fs::read_to_string(repo_file(rel)).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

/// A `stats_config`'s (tag name, regex) list and (prefix, buckets) list.
type StatsConfig = (Vec<(String, String)>, Vec<(String, Vec<u64>)>);

/// The filter's stats_config, to compare with what a config holds.
fn expected_stats_config() -> StatsConfig {
    let tags = metrics::stats_tags()
        .into_iter()
        .map(|(t, r)| (t.to_string(), r))
        .collect();
    let buckets = metrics::histogram_buckets()
        .into_iter()
        .map(|(p, b)| (p, b.to_vec()))
        .collect();
    (tags, buckets)
}

/// (tags, bucket settings) of a `stats_config` (YAML or JSON, through serde_json values).
fn stats_config_of(stats_config: &Json) -> StatsConfig {
    let tags = stats_config["stats_tags"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|t| {
                    (
                        t["tag_name"].as_str().unwrap_or_default().to_string(),
                        t["regex"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let buckets = stats_config["histogram_bucket_settings"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    let b = s["buckets"]
                        .as_array()
                        .map(|b| b.iter().filter_map(Json::as_u64).collect())
                        .unwrap_or_default();
                    (
                        s["match"]["prefix"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                        b,
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    (tags, buckets)
}

fn to_json(y: &Yaml) -> Json {
    serde_json::to_value(y).unwrap()
}

/// Every access logger of type OpenTelemetry anywhere in a document.
fn otel_loggers(v: &Json, out: &mut Vec<Json>) {
    match v {
        Json::Object(m) => {
            if m.get("name").and_then(Json::as_str) == Some("envoy.access_loggers.open_telemetry") {
                out.push(m["typed_config"].clone());
            }
            for x in m.values() {
                otel_loggers(x, out);
            }
        }
        Json::Array(a) => a.iter().for_each(|x| otel_loggers(x, out)),
        _ => {}
    }
}

fn expected_attributes() -> Vec<(String, String)> {
    usage_record::ATTRIBUTES
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// (tag, value format) of a `custom_tags` list.
fn custom_tags(v: &Json) -> Vec<(String, String)> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|t| {
                    (
                        t["tag"].as_str().unwrap_or_default().to_string(),
                        t["value"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The first HTTP connection manager with a tracing block.
fn hcm_of(v: &Json) -> Option<Json> {
    match v {
        Json::Object(m) => {
            if m.get("name").and_then(Json::as_str)
                == Some("envoy.filters.network.http_connection_manager")
                && m["typed_config"].get("tracing").is_some()
            {
                return Some(m["typed_config"].clone());
            }
            m.values().find_map(hcm_of)
        }
        Json::Array(a) => a.iter().find_map(hcm_of),
        _ => None,
    }
}

#[test]
fn envoy_bootstraps_carry_the_stats_config_and_the_usage_record() {
    for rel in ["envoy/envoy.yaml", "envoy/azure-production.yaml"] {
        let doc = to_json(&yaml_docs(rel)[0]);
        assert_eq!(
            stats_config_of(&doc["stats_config"]),
            expected_stats_config(),
            "{rel}: stats_config differs from src/metrics.rs"
        );
        let mut loggers = Vec::new();
        otel_loggers(&doc, &mut loggers);
        assert_eq!(loggers.len(), 1, "{rel}: one usage-record logger");
        let l = &loggers[0];
        assert_eq!(l["log_name"], usage_record::LOG_NAME, "{rel}");
        assert_eq!(l["body"]["string_value"], usage_record::BODY, "{rel}");
        let cluster = l["grpc_service"]["envoy_grpc"]["cluster_name"]
            .as_str()
            .unwrap();
        let attrs: Vec<(String, String)> = l["attributes"]["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|kv| {
                (
                    kv["key"].as_str().unwrap().to_string(),
                    kv["value"]["string_value"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let (plain, optional): (Vec<_>, Vec<_>) = expected_attributes()
            .into_iter()
            .partition(|(_, f)| !usage_record::may_be_absent(f));
        assert_eq!(attrs, plain, "{rel}: the attributes every request has");
        assert_eq!(
            custom_tags(&l["custom_tags"]),
            optional,
            "{rel}: the values a request may lack are custom tags (absent, not `-`)"
        );
        // Issue 25: the GenAI spans carry the span tags.
        let hcm = hcm_of(&doc).unwrap_or_else(|| panic!("{rel}: no HCM with tracing"));
        let tracing = &hcm["tracing"];
        assert_eq!(
            tracing["provider"]["name"], "envoy.tracers.opentelemetry",
            "{rel}"
        );
        assert_eq!(
            tracing["provider"]["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"],
            cluster,
            "{rel}"
        );
        let want: Vec<(String, String)> = usage_record::span_tags()
            .into_iter()
            .map(|(k, f)| (k.to_string(), f.to_string()))
            .collect();
        assert_eq!(custom_tags(&tracing["custom_tags"]), want, "{rel}");
        // The collector's cluster exists and speaks HTTP/2 (gRPC).
        let clusters = doc["static_resources"]["clusters"].as_array().unwrap();
        let c = clusters
            .iter()
            .find(|c| c["name"] == cluster)
            .unwrap_or_else(|| panic!("{rel}: no cluster {cluster}"));
        assert!(
            c.to_string().contains("http2_protocol_options"),
            "{rel}: {cluster} must speak HTTP/2"
        );
    }
}

#[test]
fn istio_gateway_and_telemetry_provider_match() {
    let docs = yaml_docs("envoy/istio/gateway.yaml");
    let cm = docs
        .iter()
        .map(to_json)
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "azure-llm-stats")
        .expect("ConfigMap azure-llm-stats");
    let bootstrap: Json =
        serde_json::from_str(cm["data"]["custom_bootstrap.json"].as_str().unwrap()).unwrap();
    assert_eq!(
        stats_config_of(&bootstrap["stats_config"]),
        expected_stats_config()
    );
    let deployment = docs
        .iter()
        .map(to_json)
        .find(|d| d["kind"] == "Deployment")
        .unwrap();
    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(
        annotations["sidecar.istio.io/bootstrapOverride"],
        "azure-llm-stats"
    );
    assert!(annotations["proxy.istio.io/config"]
        .as_str()
        .unwrap()
        .contains("wasmcustom."));

    let telemetry: Vec<Json> = yaml_docs("envoy/istio/telemetry.yaml")
        .iter()
        .map(to_json)
        .collect();
    let operator = telemetry
        .iter()
        .find(|d| d["kind"] == "IstioOperator")
        .unwrap();
    let provider = operator["spec"]["meshConfig"]["extensionProviders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "azure-llm-usage")
        .unwrap();
    let als = &provider["envoyOtelAls"];
    assert_eq!(als["logName"], usage_record::LOG_NAME);
    assert_eq!(als["logFormat"]["text"], usage_record::BODY);
    let mut labels: Vec<(String, String)> = als["logFormat"]["labels"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    labels.sort();
    let mut want = expected_attributes();
    want.sort();
    assert_eq!(labels, want);
    let t = telemetry.iter().find(|d| d["kind"] == "Telemetry").unwrap();
    assert_eq!(t["spec"]["selector"]["matchLabels"]["istio"], "llm-gateway");
    assert_eq!(
        t["spec"]["accessLogging"][0]["providers"][0]["name"],
        "azure-llm-usage"
    );
}

/// The Prometheus families the filter's stats become (`wasmcustom.` dropped, dots as `_`,
/// histograms with their `_bucket`, `_sum` and `_count` series).
fn emitted_families() -> BTreeSet<String> {
    let family = |stat: String| {
        let mut parts = stat.split('.');
        format!(
            "{}_{}",
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default()
        )
    };
    let mut names: BTreeSet<String> = [
        metrics::requests("x"),
        metrics::tokens("w", "m", "b", "k"),
        metrics::token_fetches("c", "r"),
        metrics::token_expires_in("c"),
        metrics::jwt_rejections("r"),
        metrics::ratelimit("d"),
        metrics::cost("w", "m", "USD"),
    ]
    .into_iter()
    .map(family)
    .collect();
    for h in Histogram::ALL {
        for suffix in ["_bucket", "_sum", "_count"] {
            names.insert(format!("{}{suffix}", h.metric()));
        }
    }
    names
}

/// Words of a PromQL expression that look like names (metrics, labels, functions, keywords).
fn words(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_string = false;
    for c in expr.chars() {
        if c == '"' {
            in_string = !in_string;
            cur.clear();
            continue;
        }
        if in_string {
            continue;
        }
        if c.is_ascii_alphanumeric() || c == '_' || c == '$' {
            cur.push(c);
        } else if !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[test]
fn dashboard_is_valid_and_queries_only_what_the_filter_emits() {
    let text = std::fs::read_to_string(repo_file("envoy/grafana/azure-llm-filter.json")).unwrap();
    let dash: Json = serde_json::from_str(&text).expect("the dashboard is valid JSON");
    assert!(dash["title"].is_string() && dash["panels"].is_array());
    let families = emitted_families();
    let labels: BTreeSet<String> = metrics::stats_tags()
        .into_iter()
        .map(|(t, _)| t.to_string())
        .chain(["le".to_string()])
        .collect();
    let mut exprs: Vec<String> = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        assert!(p["title"].is_string(), "panel without title: {p}");
        for t in p["targets"].as_array().unwrap() {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    for v in dash["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"]
            .as_str()
            .filter(|q| q.starts_with("label_values"))
        {
            exprs.push(q.to_string());
        }
    }
    assert!(exprs.len() >= 10, "{exprs:?}");
    let mut used = BTreeSet::new();
    for e in &exprs {
        for w in words(e) {
            if w.starts_with("azure_llm_") || (w.starts_with("gen_ai_") && !labels.contains(&w)) {
                assert!(
                    families.contains(&w),
                    "`{e}` queries `{w}`, which the filter does not emit ({families:?})"
                );
                used.insert(w);
            }
        }
        // Every label a query groups or filters by is one the stats tags extract.
        for clause in e.split("by (").skip(1) {
            let inside = clause.split(')').next().unwrap_or_default();
            for l in inside.split(',').map(str::trim) {
                assert!(labels.contains(l), "`{e}` groups by unknown label `{l}`");
            }
        }
        for selector in e.split('{').skip(1) {
            let inside = selector.split('}').next().unwrap_or_default();
            for matcher in inside.split(',') {
                let name = matcher.split(['=', '!']).next().unwrap_or_default().trim();
                if !name.is_empty() {
                    assert!(
                        labels.contains(name),
                        "`{e}` matches unknown label `{name}`"
                    );
                }
            }
        }
    }
    // The dashboard shows each GenAI histogram and the cost.
    for h in Histogram::ALL {
        assert!(
            used.contains(&format!("{}_bucket", h.metric())),
            "no panel for {}",
            h.convention()
        );
    }
    assert!(used.contains("azure_llm_cost_micros"));
}

/// Issue 25: the recording rules that serve the duration histograms under the convention's
/// `_seconds` names are shipped as src/metrics.rs makes them, and every recorded bucket is
/// the millisecond bucket's boundary in seconds (so a dashboard written for the convention
/// reads the same quantiles).
#[test]
fn recording_rules_are_shipped_and_convert_every_bucket() {
    let rel = "envoy/prometheus/gen-ai-seconds.rules.yaml";
    let shipped = std::fs::read_to_string(repo_file(rel)).unwrap_or_default();
    let generated = metrics::recording_rules();
    if shipped != generated {
        let out = repo_file("target/gen-ai-seconds.rules.yaml");
        std::fs::write(&out, &generated).unwrap();
        panic!("{rel} differs from metrics::recording_rules() (the current one: {out:?})");
    }
    let doc = to_json(&yaml_docs(rel)[0]);
    let rules = doc["groups"][0]["rules"].as_array().unwrap();
    for h in Histogram::ALL
        .into_iter()
        .filter(|h| *h != Histogram::TokenUsage)
    {
        let bucket = format!("{}_bucket", h.seconds_metric());
        let mut les: Vec<f64> = rules
            .iter()
            .filter(|r| r["record"] == bucket.as_str())
            .filter_map(|r| {
                let e = r["expr"].as_str()?;
                let target = e.rsplit("\"le\", \"").next()?.split('"').next()?;
                target.parse().ok()
            })
            .collect();
        les.sort_by(f64::total_cmp);
        let want: Vec<f64> = h.buckets().iter().map(|b| *b as f64 / 1000.0).collect();
        assert_eq!(les, want, "{bucket}");
        for suffix in ["_sum", "_count"] {
            let name = format!("{}{suffix}", h.seconds_metric());
            assert_eq!(
                rules
                    .iter()
                    .filter(|r| r["record"] == name.as_str())
                    .count(),
                1,
                "{name}"
            );
        }
    }
}
