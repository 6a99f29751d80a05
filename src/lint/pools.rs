//! Failover pools (README "What a pool needs from Envoy"): the aggregate cluster the router
//! retries on must have room for the retries, and its targets' outlier detection must be able
//! to eject the one host each has (AZURE-WIRE.md section 8: Envoy's defaults allow 3
//! concurrent retries per cluster and eject at most 10% of a cluster's hosts, so none of one).

use super::{at, items, str_at, Finding};
use serde_json::Value as Json;

const AGGREGATE: &str = "envoy.clusters.aggregate";

/// The lints of the failover pools among `clusters` (one bootstrap, or the cluster patches of
/// one EnvoyFilter); `label` prefixes the resource.
pub(super) fn clusters(label: &str, clusters: &[&Json], out: &mut Vec<Finding>) {
    let named = |name: &str| {
        clusters
            .iter()
            .find(|c| c.get("name").and_then(Json::as_str) == Some(name))
    };
    for cluster in clusters {
        if str_at(cluster, &["cluster_type", "name"]) != Some(AGGREGATE) {
            continue;
        }
        let name = cluster.get("name").and_then(Json::as_str).unwrap_or("?");
        let resource = format!("{label}cluster {name}");
        let sized = items(cluster, &["circuit_breakers", "thresholds"]).any(|t| {
            t.get("max_retries").is_some()
                && str_at(t, &["priority"]).is_none_or(|p| p == "DEFAULT")
        });
        if !sized {
            out.push(Finding::new(
                &resource,
                "failover pool without retry circuit-breaker sizing: Envoy allows 3 concurrent \
                 retries per cluster, so under load spills to the next target are not made \
                 (upstream_rq_retry_overflow) and callers get the first target's 429",
                "add circuit_breakers: { thresholds: [{ max_retries: 1024 }] } to the aggregate \
                 cluster (a retry_budget does not apply to an aggregate's retries)",
            ));
        }
        let members = at(cluster, &["cluster_type", "typed_config", "clusters"])
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
            .filter_map(Json::as_str);
        for member in members {
            let Some(od) = named(member).and_then(|c| c.get("outlier_detection")) else {
                continue;
            };
            let percent = od
                .get("max_ejection_percent")
                .and_then(|v| v.as_u64().or_else(|| v.get("value").and_then(Json::as_u64)))
                .unwrap_or(10);
            if percent < 100 {
                out.push(Finding::new(
                    &format!("{label}cluster {member}"),
                    format!(
                        "outlier detection with max_ejection_percent {percent} cannot eject the \
                         target's only host: a resource that keeps failing stays in pool {name}"
                    ),
                    "set outlier_detection.max_ejection_percent: 100",
                ));
            }
        }
    }
}
