//! TLS to Entra and Azure: every upstream TLS context must verify the server (a trusted CA *and*
//! the host name), and nothing that looks like Azure is reached in plain text.
//!
//! What Envoy 1.40 does with less (checked against it, README "TLS to Azure and Entra"): an
//! `UpstreamTlsContext` without `validation_context` accepts any certificate (`sni` only picks
//! the certificate the server sends); `trusted_ca` without SAN matchers accepts a certificate a
//! trusted CA issued for *any* name (Envoy does not compare it with `sni`); `system_root_certs`
//! is accepted by the config parser but not implemented (no verification at all).

use super::{at, is_type, items, str_at, Finding, SYSTEM_CA_BUNDLE};
use serde_json::Value as Json;

const UPSTREAM_TLS: &str = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";

/// Domains of Entra and Azure (public and sovereign clouds): plain HTTP to them is a hazard.
const AZURE_DOMAINS: [&str; 9] = [
    "microsoftonline.com",
    "microsoftonline.us",
    "microsoftonline.cn",
    "chinacloudapi.cn",
    "azure.com",
    "azure.us",
    "azure.cn",
    "windows.net",
    "microsoft.com",
];

/// The fix for a context that does not verify, naming its host when known.
fn verify_fix(host: Option<&str>) -> String {
    format!(
        "add common_tls_context.validation_context {{ trusted_ca: {{ filename: {SYSTEM_CA_BUNDLE} }} \
         (the image's CA bundle), match_typed_subject_alt_names: [{{ san_type: DNS, matcher: \
         {{ exact: {} }} }}] }}",
        host.unwrap_or("<the host>")
    )
}

/// A cluster's endpoints: (address, port) of each socket address.
fn endpoints(cluster: &Json) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for group in items(cluster, &["load_assignment", "endpoints"]) {
        for lb in items(group, &["lb_endpoints"]) {
            let socket = at(lb, &["endpoint", "address", "socket_address"]);
            if let Some(address) = socket.and_then(|s| s.get("address")).and_then(Json::as_str) {
                let port = socket
                    .and_then(|s| s.get("port_value"))
                    .and_then(Json::as_u64)
                    .unwrap_or(0);
                out.push((address.to_string(), port));
            }
        }
    }
    out
}

/// Loopback, link-local (IMDS) and unspecified addresses, and `localhost`: never leave the host.
fn stays_on_host(address: &str) -> bool {
    match address.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => ip.is_loopback() || ip.is_link_local(),
        Ok(std::net::IpAddr::V6(ip)) => ip.is_loopback() || (ip.segments()[0] & 0xffc0) == 0xfe80,
        Err(_) => address.eq_ignore_ascii_case("localhost"),
    }
}

fn in_domain(host: &str, domain: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == domain || host.ends_with(&format!(".{domain}"))
}

fn is_azure_host(host: &str) -> bool {
    AZURE_DOMAINS.iter().any(|d| in_domain(host, d))
}

/// Whether `address` is a DNS name (not an IP literal).
fn is_dns_name(address: &str) -> bool {
    address.parse::<std::net::IpAddr>().is_err()
}

/// The TLS hazards of one Envoy cluster.
pub(super) fn cluster(label: &str, cluster: &Json, out: &mut Vec<Finding>) {
    let hosts = endpoints(cluster);
    let mut sockets: Vec<&Json> = cluster.get("transport_socket").into_iter().collect();
    sockets.extend(
        items(cluster, &["transport_socket_matches"]).filter_map(|m| m.get("transport_socket")),
    );
    let contexts: Vec<&Json> = sockets
        .iter()
        .filter_map(|s| s.get("typed_config"))
        .filter(|c| is_type(c, UPSTREAM_TLS))
        .collect();
    if contexts.is_empty() {
        for (address, port) in &hosts {
            if !stays_on_host(address) && (*port == 443 || is_azure_host(address)) {
                out.push(Finding::new(
                    label,
                    format!("plain HTTP to {address}:{port}: tokens and prompts cross the network unencrypted"),
                    format!("add a transport_socket envoy.transport_sockets.tls with sni: {address} and {}", verify_fix(Some(address))),
                ));
            }
        }
        return;
    }
    for ctx in contexts {
        upstream_tls(label, ctx, &hosts, out);
    }
}

/// Where a `CommonTlsContext` gets its validation context.
enum Validation<'a> {
    None,
    /// Inline (`validation_context`, or a combined context's default).
    Inline(&'a Json),
    /// From SDS, which this cannot see.
    Sds,
}

fn validation_context(common: Option<&Json>) -> Validation<'_> {
    let Some(common) = common else {
        return Validation::None;
    };
    if let Some(vc) = common.get("validation_context") {
        return Validation::Inline(vc);
    }
    if let Some(combined) = common.get("combined_validation_context") {
        if combined
            .get("validation_context_sds_secret_config")
            .is_some()
        {
            return Validation::Sds;
        }
        return combined
            .get("default_validation_context")
            .map_or(Validation::None, Validation::Inline);
    }
    if common.get("validation_context_sds_secret_config").is_some() {
        return Validation::Sds;
    }
    Validation::None
}

fn upstream_tls(label: &str, ctx: &Json, hosts: &[(String, u64)], out: &mut Vec<Finding>) {
    let sni = ctx
        .get("sni")
        .and_then(Json::as_str)
        .filter(|s| !s.is_empty());
    let host = sni.or_else(|| {
        hosts
            .iter()
            .map(|(a, _)| a.as_str())
            .find(|a| is_dns_name(a))
    });
    let common = ctx.get("common_tls_context");
    if let Some(min) =
        common.and_then(|c| str_at(c, &["tls_params", "tls_minimum_protocol_version"]))
    {
        if matches!(min, "TLSv1_0" | "TLSv1_1") {
            out.push(Finding::new(
                label,
                format!("tls_minimum_protocol_version {min} allows TLS below 1.2"),
                "set tls_params.tls_minimum_protocol_version: TLSv1_2 (Azure and Entra require TLS 1.2)",
            ));
        }
    }
    match sni {
        None => out.push(Finding::new(
            label,
            "upstream TLS without sni: Azure and Entra choose their certificate by SNI",
            format!("set sni: {}", host.unwrap_or("<the host>")),
        )),
        Some(sni) => {
            for (address, _) in hosts.iter().filter(|(a, _)| is_dns_name(a)) {
                if !address.eq_ignore_ascii_case(sni) {
                    out.push(Finding::new(
                        label,
                        format!("sni {sni} differs from the endpoint host {address}"),
                        "give sni, the endpoint address and the SAN matcher the same host",
                    ));
                }
            }
        }
    }
    let vc = match validation_context(common) {
        Validation::Sds => return, // verified there, or not: nothing to see here
        Validation::None => {
            out.push(Finding::new(
                label,
                "upstream TLS without validation_context accepts any server certificate (sni \
                 verifies nothing): an impostor on the path gets the token, secret or prompt",
                verify_fix(host),
            ));
            return;
        }
        Validation::Inline(vc) => vc,
    };
    verified_context(label, vc, host, sni, out);
}

/// The checks of a validation context that exists.
fn verified_context(
    label: &str,
    vc: &Json,
    host: Option<&str>,
    sni: Option<&str>,
    out: &mut Vec<Finding>,
) {
    if vc.get("trusted_ca").is_none() {
        let problem = if vc.get("system_root_certs").is_some() {
            "validation_context with system_root_certs and no trusted_ca verifies nothing: \
             Envoy 1.40 parses system_root_certs but does not implement it"
        } else {
            "validation_context without trusted_ca verifies no certificate chain"
        };
        out.push(Finding::new(label, problem, verify_fix(host)));
        return;
    }
    if str_at(vc, &["trust_chain_verification"]) == Some("ACCEPT_UNTRUSTED") {
        out.push(Finding::new(
            label,
            "trust_chain_verification ACCEPT_UNTRUSTED accepts certificates that fail verification",
            "remove trust_chain_verification (the default VERIFY_TRUST_CHAIN)",
        ));
    }
    if vc.get("allow_expired_certificate").and_then(Json::as_bool) == Some(true) {
        out.push(Finding::new(
            label,
            "allow_expired_certificate accepts expired server certificates",
            "remove allow_expired_certificate",
        ));
    }
    let matchers: Vec<&Json> = items(vc, &["match_typed_subject_alt_names"])
        .filter(|m| {
            m.get("san_type")
                .and_then(Json::as_str)
                .is_none_or(|t| t == "DNS")
        })
        .filter_map(|m| m.get("matcher"))
        .chain(items(vc, &["match_subject_alt_names"]))
        .collect();
    if matchers.is_empty() {
        out.push(Finding::new(
            label,
            "trusted_ca without match_typed_subject_alt_names accepts a certificate any trusted \
             CA issued for any name (Envoy does not compare it with sni)",
            format!(
                "add match_typed_subject_alt_names: [{{ san_type: DNS, matcher: {{ exact: {} }} }}]",
                host.unwrap_or("<the host>")
            ),
        ));
        return;
    }
    if let Some(sni) = sni {
        if matchers.iter().all(|m| matches_name(m, sni) == Some(false)) {
            out.push(Finding::new(
                label,
                format!("no SAN matcher matches sni {sni}: the real server's certificate is refused"),
                format!("match_typed_subject_alt_names: [{{ san_type: DNS, matcher: {{ exact: {sni} }} }}]"),
            ));
        }
    }
}

/// Whether an Envoy `StringMatcher` on a DNS SAN accepts `name`: Some(bool), None when it
/// cannot be told here (a regular expression). An exact matcher may be a wildcard (`*.x.y`,
/// one label), as Envoy compares DNS SANs.
fn matches_name(m: &Json, name: &str) -> Option<bool> {
    let ignore_case = m.get("ignore_case").and_then(Json::as_bool) == Some(true);
    let norm = |s: &str| {
        if ignore_case {
            s.to_ascii_lowercase()
        } else {
            s.to_string()
        }
    };
    let name = norm(name);
    if let Some(exact) = m.get("exact").and_then(Json::as_str) {
        return Some(dns_match(&norm(exact), &name));
    }
    if let Some(p) = m.get("prefix").and_then(Json::as_str) {
        return Some(name.starts_with(&norm(p)));
    }
    if let Some(s) = m.get("suffix").and_then(Json::as_str) {
        return Some(name.ends_with(&norm(s)));
    }
    if let Some(c) = m.get("contains").and_then(Json::as_str) {
        return Some(name.contains(&norm(c)));
    }
    None
}

/// DNS name comparison with one leading wildcard label (`*.openai.azure.com`).
pub(super) fn dns_match(pattern: &str, name: &str) -> bool {
    let (pattern, name) = (pattern.to_ascii_lowercase(), name.to_ascii_lowercase());
    match pattern.strip_prefix("*.") {
        Some(rest) => name
            .split_once('.')
            .is_some_and(|(label, tail)| !label.is_empty() && tail == rest),
        None => pattern == name,
    }
}

/// The TLS hazards of an Istio DestinationRule (its traffic policy, ports and subsets).
pub(super) fn destination_rule(label: &str, doc: &Json, out: &mut Vec<Finding>) {
    let host = str_at(doc, &["spec", "host"]).unwrap_or("<the host>");
    let mut policies: Vec<&Json> = at(doc, &["spec", "trafficPolicy"]).into_iter().collect();
    policies.extend(items(doc, &["spec", "subsets"]).filter_map(|s| s.get("trafficPolicy")));
    let mut settings: Vec<&Json> = Vec::new();
    for p in policies {
        settings.extend(p.get("tls"));
        settings.extend(items(p, &["portLevelSettings"]).filter_map(|s| s.get("tls")));
    }
    for tls in settings {
        let mode = tls.get("mode").and_then(Json::as_str).unwrap_or("DISABLE");
        if !matches!(mode, "SIMPLE" | "MUTUAL") {
            continue;
        }
        let name = tls.get("sni").and_then(Json::as_str).unwrap_or(host);
        if tls.get("insecureSkipVerify").and_then(Json::as_bool) == Some(true) {
            out.push(Finding::new(
                label,
                "tls.insecureSkipVerify accepts any server certificate",
                "remove insecureSkipVerify",
            ));
        }
        if tls.get("caCertificates").is_none() && tls.get("credentialName").is_none() {
            out.push(Finding::new(
                label,
                format!(
                    "tls.mode {mode} without caCertificates leaves server verification to \
                         Istio's version-dependent default (istioctl: IST0128)"
                ),
                format!("set tls.caCertificates: {SYSTEM_CA_BUNDLE} (the proxy image's bundle)"),
            ));
        }
        let sans: Vec<&str> = items(tls, &["subjectAltNames"])
            .filter_map(Json::as_str)
            .collect();
        if sans.is_empty() {
            out.push(Finding::new(
                label,
                format!(
                    "tls.mode {mode} without subjectAltNames: whether the certificate must \
                         name {name} depends on Istio's version and flags"
                ),
                format!("set tls.subjectAltNames: [{name}]"),
            ));
        } else if !sans.iter().any(|s| dns_match(s, name)) {
            out.push(Finding::new(
                label,
                format!("no subjectAltNames entry matches {name}: the real server's certificate is refused"),
                format!("set tls.subjectAltNames: [{name}]"),
            ));
        }
    }
}
