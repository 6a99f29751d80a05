//! The lints on small documents: each hazard found, its fix named, and the verified forms clean.

use super::*;
use serde_json::json;

fn tls_cluster(name: &str, host: &str, common: Json) -> Json {
    json!({
        "name": name,
        "type": "LOGICAL_DNS",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": host, "port_value": 443}}}}
        ]}]},
        "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": host,
            "common_tls_context": common
        }}
    })
}

fn verified(host: &str) -> Json {
    json!({
        "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
        "validation_context": {
            "trusted_ca": {"filename": SYSTEM_CA_BUNDLE},
            "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": host}}]
        }
    })
}

fn bootstrap(clusters: Vec<Json>) -> Json {
    json!({"static_resources": {"clusters": clusters}})
}

fn problems(doc: &Json) -> Vec<String> {
    document(doc)
        .unwrap_or_default()
        .into_iter()
        .map(|f| f.to_string())
        .collect()
}

#[test]
fn a_verified_context_is_clean() {
    let doc = bootstrap(vec![tls_cluster(
        "entra",
        "login.microsoftonline.com",
        verified("login.microsoftonline.com"),
    )]);
    assert_eq!(problems(&doc), Vec::<String>::new());
}

#[test]
fn each_way_of_not_verifying_is_found() {
    let host = "contoso.openai.azure.com";
    let cases: Vec<(Json, &str)> = vec![
        (
            json!({}),
            "without validation_context accepts any server certificate",
        ),
        (
            json!({"validation_context": {"system_root_certs": {}}}),
            "system_root_certs and no trusted_ca verifies nothing",
        ),
        (
            json!({"validation_context": {"match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": host}}]}}),
            "without trusted_ca verifies no certificate chain",
        ),
        (
            json!({"validation_context": {"trusted_ca": {"filename": SYSTEM_CA_BUNDLE}}}),
            "accepts a certificate any trusted CA issued for any name",
        ),
        (
            json!({"validation_context": {"trusted_ca": {"filename": "/x"}, "trust_chain_verification": "ACCEPT_UNTRUSTED",
                   "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": host}}]}}),
            "ACCEPT_UNTRUSTED",
        ),
        (
            json!({"validation_context": {"trusted_ca": {"filename": "/x"}, "allow_expired_certificate": true,
                   "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": host}}]}}),
            "allow_expired_certificate",
        ),
        (
            json!({"validation_context": {"trusted_ca": {"filename": "/x"},
                   "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": "other.openai.azure.com"}}]}}),
            "no SAN matcher matches sni contoso.openai.azure.com",
        ),
        (
            json!({"tls_params": {"tls_minimum_protocol_version": "TLSv1_1"},
                   "validation_context": {"trusted_ca": {"filename": "/x"},
                   "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": host}}]}}),
            "allows TLS below 1.2",
        ),
    ];
    for (common, expected) in cases {
        let doc = bootstrap(vec![tls_cluster("aoai", host, common.clone())]);
        let found = problems(&doc);
        assert!(
            found.len() == 1
                && found[0].contains(expected)
                && found[0].starts_with("cluster aoai: "),
            "{common}: {found:?}"
        );
        assert!(found[0].contains("; fix: "), "{found:?}");
    }
}

#[test]
fn wildcard_and_suffix_matchers_cover_the_host() {
    let host = "contoso.openai.azure.com";
    for matcher in [
        json!({"exact": "*.openai.azure.com"}),
        json!({"suffix": ".openai.azure.com"}),
        json!({"exact": "CONTOSO.openai.azure.com", "ignore_case": true}),
        json!({"safe_regex": {"regex": ".*"}}),
    ] {
        let common = json!({"validation_context": {"trusted_ca": {"filename": "/x"},
            "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": matcher}]}});
        let doc = bootstrap(vec![tls_cluster("aoai", host, common)]);
        assert_eq!(problems(&doc), Vec::<String>::new(), "{matcher}");
    }
    assert!(tls::dns_match("*.openai.azure.com", "a.openai.azure.com"));
    assert!(!tls::dns_match(
        "*.openai.azure.com",
        "a.b.openai.azure.com"
    ));
    assert!(!tls::dns_match("*.openai.azure.com", "openai.azure.com"));
}

#[test]
fn sni_missing_or_different_from_the_endpoint_is_found() {
    let mut c = tls_cluster("aoai", "a.openai.azure.com", verified("a.openai.azure.com"));
    c["transport_socket"]["typed_config"]
        .as_object_mut()
        .unwrap()
        .remove("sni");
    let found = problems(&bootstrap(vec![c]));
    assert!(found.iter().any(|f| f.contains("without sni")), "{found:?}");
    let mut c = tls_cluster("aoai", "a.openai.azure.com", verified("b.openai.azure.com"));
    c["transport_socket"]["typed_config"]["sni"] = json!("b.openai.azure.com");
    let found = problems(&bootstrap(vec![c]));
    assert!(
        found.iter().any(|f| f
            .contains("sni b.openai.azure.com differs from the endpoint host a.openai.azure.com")),
        "{found:?}"
    );
}

#[test]
fn plain_http_to_azure_is_found_but_not_to_imds_or_loopback() {
    let plain = |name: &str, host: &str, port: u64| {
        json!({"name": name, "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}]}]}})
    };
    let doc = bootstrap(vec![
        plain("imds", "169.254.169.254", 80),
        plain("standin", "127.0.0.1", 8089),
        plain("collector", "otel-collector.observability.internal", 4317),
        plain("entra", "login.microsoftonline.com", 443),
        plain("aoai", "contoso.openai.azure.us", 80),
    ]);
    let found = problems(&doc);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found[0].starts_with("cluster entra: plain HTTP to login.microsoftonline.com:443"));
    assert!(found[1].starts_with("cluster aoai: plain HTTP to contoso.openai.azure.us:80"));
}

#[test]
fn envoy_filter_clusters_and_destination_rules_are_linted() {
    let ef = json!({"kind": "EnvoyFilter", "metadata": {"name": "f", "namespace": "ns"},
        "spec": {"configPatches": [{"applyTo": "CLUSTER", "patch": {"operation": "ADD",
            "value": tls_cluster("t", "a.openai.azure.com", json!({}))}}]}});
    let found = problems(&ef);
    assert!(
        found.len() == 1 && found[0].starts_with("EnvoyFilter ns/f: cluster t: "),
        "{found:?}"
    );
    let dr = |tls: Json| {
        json!({"kind": "DestinationRule", "metadata": {"name": "d", "namespace": "ns"},
               "spec": {"host": "login.microsoftonline.com", "trafficPolicy": {"tls": tls}}})
    };
    let good = dr(json!({"mode": "SIMPLE", "sni": "login.microsoftonline.com",
        "caCertificates": SYSTEM_CA_BUNDLE, "subjectAltNames": ["login.microsoftonline.com"]}));
    assert_eq!(problems(&good), Vec::<String>::new());
    let found = problems(&dr(json!({"mode": "SIMPLE", "insecureSkipVerify": true})));
    assert_eq!(found.len(), 3, "{found:?}");
    assert!(found[0].contains("insecureSkipVerify"), "{found:?}");
    assert!(found[1].contains("IST0128"), "{found:?}");
    assert!(found[2].contains("without subjectAltNames"), "{found:?}");
    let found = problems(&dr(json!({"mode": "SIMPLE", "caCertificates": "/x",
        "subjectAltNames": ["login.microsoftonline.us"]})));
    assert!(
        found.len() == 1
            && found[0].contains("no subjectAltNames entry matches login.microsoftonline.com"),
        "{found:?}"
    );
    // Other kinds and plugin configurations have nothing to lint.
    assert_eq!(document(&json!({"kind": "Service"})), None);
    assert_eq!(document(&json!({"credentials": {}})), None);
}

/// A bootstrap whose listener runs the filter, with `hcm` fields merged in and `route` as its
/// one backend route.
fn with_listener(hcm_extra: Json, route: Json, plugin_extra: Json) -> Json {
    let mut plugin = json!({
        "name": "azure_llm_filter", "root_id": "azure_llm_filter",
        "failure_policy": "FAIL_CLOSED", "allow_on_headers_stop_iteration": true,
        "vm_config": {"vm_id": "azure_llm_filter", "code": {"local": {"filename": "azure_llm_filter.wasm"}}},
        "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": "{\"models\": {}}"}
    });
    for (k, v) in plugin_extra.as_object().unwrap() {
        plugin[k] = v.clone();
    }
    let mut hcm = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "request_headers_timeout": "10s", "request_timeout": "60s",
        "route_config": {"virtual_hosts": [{"name": "llm", "domains": ["*"], "routes": [route]}]},
        "http_filters": [
            {"name": "envoy.filters.http.wasm", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm", "config": plugin}},
            {"name": "envoy.filters.http.router"}
        ]
    });
    for (k, v) in hcm_extra.as_object().unwrap() {
        hcm[k] = v.clone();
    }
    let stats_tags: Vec<Json> = crate::metrics::stats_tags()
        .into_iter()
        .map(|(t, r)| json!({"tag_name": t, "regex": r}))
        .collect();
    let buckets: Vec<Json> = crate::metrics::histogram_buckets()
        .into_iter()
        .map(|(p, b)| json!({"match": {"prefix": p}, "buckets": b}))
        .collect();
    json!({
        "stats_config": {"stats_tags": stats_tags, "histogram_bucket_settings": buckets},
        "static_resources": {"listeners": [{"name": "llm_ingress", "filter_chains": [{"filters": [
            {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}]}],
            "clusters": []}
    })
}

fn routed(backend: &str, removes: bool) -> Json {
    let mut r = json!({"match": {"prefix": "/", "headers": [
        {"name": "x-azure-llm-backend", "string_match": {"exact": backend}}]},
        "route": {"cluster": backend}});
    if removes {
        r["request_headers_to_remove"] = json!(["x-azure-llm-backend"]);
    }
    r
}

#[test]
fn the_filters_listener_is_clean_as_shipped() {
    let doc = with_listener(json!({}), routed("aoai", true), json!({}));
    assert_eq!(problems(&doc), Vec::<String>::new());
}

#[test]
fn listener_hazards_are_found() {
    let cases: Vec<(Json, Json, Json, &str)> = vec![
        (json!({"request_timeout": "0s"}), routed("aoai", true), json!({}),
         "listener llm_ingress: request_timeout 0s disables it"),
        (json!({"request_headers_timeout": {"seconds": 0}}), routed("aoai", true), json!({}),
         "request_headers_timeout 0s disables it"),
        (json!({"stream_idle_timeout": "0s"}), routed("aoai", true), json!({}),
         "stream_idle_timeout 0s"),
        (json!({}), routed("aoai", false), json!({}),
         "listener llm_ingress: route x-azure-llm-backend=aoai: forwards the routing header"),
        (json!({"internal_address_config": {"cidr_ranges": [{"address_prefix": "10.0.0.0", "prefix_len": 8}]}}),
         routed("aoai", true), json!({}),
         "internal_address_config trusts 10.0.0.0/8 (without use_remote_address the caller's own x-forwarded-for decides"),
        (json!({}), routed("aoai", true), json!({"failure_policy": "FAIL_OPEN"}),
         "listener llm_ingress: filter: failure_policy FAIL_OPEN"),
        (json!({}), routed("aoai", true), json!({"allow_on_headers_stop_iteration": false}),
         "no allow_on_headers_stop_iteration"),
    ];
    for (hcm, route, plugin, expected) in cases {
        let found = problems(&with_listener(hcm.clone(), route, plugin));
        assert!(
            found.len() == 1 && found[0].contains(expected),
            "{hcm}: {found:?}"
        );
    }
    // An absent timeout counts in a bootstrap (Envoy has none by default).
    let mut doc = with_listener(json!({}), routed("aoai", true), json!({}));
    doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        .as_object_mut()
        .unwrap()
        .remove("request_timeout");
    let found = problems(&doc);
    assert!(
        found.len() == 1 && found[0].contains("no request_timeout"),
        "{found:?}"
    );
    // Trusting callers behind use_remote_address is still a finding, without the XFF note.
    let found = problems(&with_listener(
        json!({"use_remote_address": true, "internal_address_config": {"unix_sockets": true}}),
        routed("aoai", true),
        json!({}),
    ));
    assert!(
        found.len() == 1 && found[0].contains("trusts unix sockets: Envoy obeys"),
        "{found:?}"
    );
}

#[test]
fn routing_header_removed_higher_up_or_by_name_is_fine() {
    let mut doc = with_listener(json!({}), routed("aoai", false), json!({}));
    doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        ["route_config"]["virtual_hosts"][0]["request_headers_to_remove"] =
        json!(["X-Azure-LLM-Backend"]);
    assert_eq!(problems(&doc), Vec::<String>::new());
    // A listener whose filter names another routing header: that header is the one to drop.
    let config = json!({"routing_header": "x-route", "models": {}}).to_string();
    let mut route = routed("aoai", false);
    route["match"]["headers"][0]["name"] = json!("x-route");
    let doc = with_listener(
        json!({}),
        route,
        json!({"configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": config}}),
    );
    let found = problems(&doc);
    assert!(
        found.len() == 1 && found[0].contains("route x-route=aoai"),
        "{found:?}"
    );
    // Header routing needs no body: no allow_on_headers_stop_iteration.
    let config = json!({"routing_mode": "header", "models": {}}).to_string();
    let doc = with_listener(
        json!({}),
        routed("aoai", true),
        json!({"allow_on_headers_stop_iteration": false,
               "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": config}}),
    );
    assert_eq!(problems(&doc), Vec::<String>::new());
}

#[test]
fn missing_stats_tags_and_buckets_are_found() {
    let mut doc = with_listener(json!({}), routed("aoai", true), json!({}));
    doc["stats_config"]["stats_tags"]
        .as_array_mut()
        .unwrap()
        .remove(0);
    doc["stats_config"]["histogram_bucket_settings"][0]["buckets"] = json!([1, 2, 3]);
    let found = problems(&doc);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        found[0].contains("stats_tags for the filter's labels (workload)"),
        "{found:?}"
    );
    assert!(
        found[1].contains("wasmcustom.gen_ai_client_token_usage"),
        "{found:?}"
    );
    doc.as_object_mut().unwrap().remove("stats_config");
    assert_eq!(problems(&doc).len(), 2);
    // A bootstrap without the filter needs none.
    assert_eq!(problems(&bootstrap(vec![])), Vec::<String>::new());
}

fn pool_clusters(breakers: Json, ejection: Json) -> Vec<Json> {
    let target = |name: &str| {
        let mut c = tls_cluster(
            name,
            &format!("{name}.openai.azure.com"),
            verified(&format!("{name}.openai.azure.com")),
        );
        c["outlier_detection"] = json!({"consecutive_local_origin_failure": 3});
        if !ejection.is_null() {
            c["outlier_detection"]["max_ejection_percent"] = ejection.clone();
        }
        c
    };
    let mut aggregate = json!({"name": "a+b", "lb_policy": "CLUSTER_PROVIDED", "cluster_type": {
        "name": "envoy.clusters.aggregate", "typed_config": {"clusters": ["a", "b"]}}});
    if !breakers.is_null() {
        aggregate["circuit_breakers"] = breakers;
    }
    vec![target("a"), target("b"), aggregate]
}

#[test]
fn pools_need_retry_room_and_ejectable_targets() {
    let sized = json!({"thresholds": [{"max_retries": 1024}]});
    let clean = bootstrap(pool_clusters(sized.clone(), json!(100)));
    assert_eq!(problems(&clean), Vec::<String>::new());
    let clean = bootstrap(pool_clusters(sized.clone(), json!({"value": 100})));
    assert_eq!(problems(&clean), Vec::<String>::new());
    let found = problems(&bootstrap(pool_clusters(Json::Null, json!(100))));
    assert!(
        found.len() == 1
            && found[0]
                .starts_with("cluster a+b: failover pool without retry circuit-breaker sizing"),
        "{found:?}"
    );
    let found = problems(&bootstrap(pool_clusters(
        json!({"thresholds": [{"priority": "HIGH", "max_retries": 9}], "retry_budget": {}}),
        Json::Null,
    )));
    assert_eq!(found.len(), 3, "{found:?}");
    assert!(found[1].starts_with("cluster a: outlier detection with max_ejection_percent 10"));
    // In an EnvoyFilter the pool's clusters are patches of the same object.
    let patches: Vec<Json> = pool_clusters(sized, json!(50))
        .into_iter()
        .map(|c| json!({"applyTo": "CLUSTER", "patch": {"operation": "ADD", "value": c}}))
        .collect();
    let ef = json!({"kind": "EnvoyFilter", "metadata": {"name": "f"}, "spec": {"configPatches": patches}});
    let found = problems(&ef);
    assert!(
        found.len() == 2
            && found[0].starts_with(
                "EnvoyFilter f: cluster a: outlier detection with max_ejection_percent 50"
            ),
        "{found:?}"
    );
}

#[test]
fn istio_objects_are_linted() {
    let vs = |remove: bool| {
        let mut route = json!({"name": "aoai", "match": [{"headers": {"x-azure-llm-backend": {"exact": "aoai"}}}],
                               "route": [{"destination": {"host": "r.openai.azure.com"}}]});
        if remove {
            route["headers"] = json!({"request": {"remove": ["x-azure-llm-backend"]}});
        }
        json!({"kind": "VirtualService", "metadata": {"name": "v", "namespace": "ns"}, "spec": {"http": [route,
            {"name": "not-routed", "directResponse": {"status": 404}}]}})
    };
    assert_eq!(problems(&vs(true)), Vec::<String>::new());
    let found = problems(&vs(false));
    assert!(
        found.len() == 1
            && found[0].starts_with("VirtualService ns/v: route aoai: forwards the routing header"),
        "{found:?}"
    );
    let ef = json!({"kind": "EnvoyFilter", "metadata": {"name": "t"}, "spec": {"configPatches": [
        {"applyTo": "NETWORK_FILTER", "patch": {"operation": "MERGE", "value": {"typed_config": {
            "request_timeout": "0s", "stream_idle_timeout": "300s"}}}},
        {"applyTo": "HTTP_ROUTE", "patch": {"operation": "INSERT_BEFORE", "value": {"name": "pool",
            "match": {"prefix": "/", "headers": [{"name": "x-azure-llm-backend", "string_match": {"exact": "a+b"}}]},
            "route": {"cluster": "a+b"}}}},
        {"applyTo": "EXTENSION_CONFIG", "patch": {"operation": "ADD", "value": {"name": "azure-llm-filter",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {"name": "azure_llm_filter", "failure_policy": "FAIL_OPEN",
                           "allow_on_headers_stop_iteration": true, "vm_config": {"vm_id": "azure_llm_filter"}}}}}}
    ]}});
    let found = problems(&ef);
    assert_eq!(found.len(), 3, "{found:?}");
    assert!(
        found[0].contains("NETWORK_FILTER patch: request_timeout 0s"),
        "{found:?}"
    );
    assert!(
        found[1].contains("HTTP_ROUTE pool: route x-azure-llm-backend=a+b: forwards"),
        "{found:?}"
    );
    assert!(
        found[2].contains("azure-llm-filter: failure_policy FAIL_OPEN"),
        "{found:?}"
    );
    let wp = |strategy: &str, mode: &str| {
        json!({"kind": "WasmPlugin", "metadata": {"name": "azure-llm-filter"},
               "spec": {"failStrategy": strategy, "pluginConfig": {"routing_mode": mode}}})
    };
    assert_eq!(problems(&wp("FAIL_CLOSE", "header")), Vec::<String>::new());
    assert_eq!(problems(&wp("FAIL_OPEN", "body")).len(), 2);
    let cm = |bootstrap: Json| json!({"kind": "ConfigMap", "metadata": {"name": "s"}, "data": {"custom_bootstrap.json": bootstrap.to_string()}});
    let found = problems(&cm(json!({"stats_config": {"stats_tags": []}})));
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        found[0].starts_with("ConfigMap s: custom_bootstrap.json: missing"),
        "{found:?}"
    );
    assert_eq!(document(&cm(json!({"node": {}}))), None);
    assert_eq!(document(&json!({"kind": "ConfigMap", "data": {}})), None);
}
