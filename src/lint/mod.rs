//! Production hazards in the Envoy bootstraps and Istio manifests that deploy the filter, found
//! offline (`check-config` runs these on every file it reads; `tests/shipped_configs.rs` holds
//! the files under `envoy/` to zero findings, so the shipped files and users' own files are
//! judged by the same rules).
//!
//! Each finding names the resource and the fix. The documents are JSON values (check-config
//! converts YAML); nothing here needs a host, so it is plain native code (not in the .wasm).

mod istio;
mod listener;
mod pools;
mod tls;

use serde_json::Value as Json;
use std::fmt;

/// One hazard: where, what is wrong, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The resource, e.g. `cluster entra` or `DestinationRule llm-gateway/login`.
    pub resource: String,
    pub problem: String,
    pub fix: String,
}

impl Finding {
    fn new(resource: &str, problem: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            resource: resource.to_string(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}; fix: {}", self.resource, self.problem, self.fix)
    }
}

/// The CA bundle the shipped files name (Debian / Ubuntu layout: the official envoyproxy/envoy
/// image, istio/proxyv2, distroless images, Ubuntu hosts).
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Lints one document: an Envoy bootstrap, or an Istio object of a kind that can hold a hazard.
/// `None` when the document is none of these (nothing was checked).
pub fn document(doc: &Json) -> Option<Vec<Finding>> {
    if let Some(kind) = doc.get("kind").and_then(Json::as_str) {
        return istio::object(kind, doc);
    }
    let bootstrap = doc.get("static_resources").is_some() || doc.get("dynamic_resources").is_some();
    bootstrap.then(|| envoy_bootstrap(doc))
}

/// The hazards of an Envoy bootstrap (its static resources; what CDS or LDS serve is not here).
pub fn envoy_bootstrap(doc: &Json) -> Vec<Finding> {
    let mut out = Vec::new();
    let clusters: Vec<&Json> = items(doc, &["static_resources", "clusters"]).collect();
    for cluster in &clusters {
        tls::cluster(&cluster_label("", cluster), cluster, &mut out);
    }
    pools::clusters("", &clusters, &mut out);
    listener::bootstrap(doc, &mut out);
    out
}

/// `Kind namespace/name`.
fn object_label(kind: &str, doc: &Json) -> String {
    let meta = doc.get("metadata");
    let field = |k: &str| meta.and_then(|m| m.get(k)).and_then(Json::as_str);
    match (field("namespace"), field("name")) {
        (Some(ns), Some(n)) => format!("{kind} {ns}/{n}"),
        (None, Some(n)) => format!("{kind} {n}"),
        _ => kind.to_string(),
    }
}

fn cluster_label(outer: &str, cluster: &Json) -> String {
    let name = cluster.get("name").and_then(Json::as_str).unwrap_or("?");
    if outer.is_empty() {
        format!("cluster {name}")
    } else {
        format!("{outer}: cluster {name}")
    }
}

/// The value at `path` (object keys).
fn at<'a>(v: &'a Json, path: &[&str]) -> Option<&'a Json> {
    path.iter().try_fold(v, |v, k| v.get(*k))
}

fn str_at<'a>(v: &'a Json, path: &[&str]) -> Option<&'a str> {
    at(v, path).and_then(Json::as_str)
}

/// The elements of the array at `path` (none when absent or not an array).
fn items<'a>(v: &'a Json, path: &[&str]) -> impl Iterator<Item = &'a Json> {
    at(v, path)
        .and_then(Json::as_array)
        .into_iter()
        .flat_map(|a| a.iter())
}

/// Whether a typed config (`typed_config` or an Any) is of this proto type (by its name).
fn is_type(v: &Json, type_name: &str) -> bool {
    v.get("@type")
        .and_then(Json::as_str)
        .is_some_and(|t| t.rsplit('/').next() == Some(type_name))
}

#[cfg(test)]
mod tests;
