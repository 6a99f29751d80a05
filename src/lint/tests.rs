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
