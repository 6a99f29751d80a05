//! The filter's metrics as Envoy stats through the dynamic-module ABI.
//!
//! `src/host` defines a stat by its full name (`azure_llm.requests.outcome.routed `, labels
//! written into the name, `crate::metrics`) the first time a worker needs it, and Envoy's Wasm
//! host creates it then. The ABI does not allow that: stats are defined on the filter
//! configuration while `on_http_filter_config_new` runs, and refused (`Frozen`) after. So each
//! family of `crate::metrics::families` is defined there as one labelled stat (base name and
//! label names), and `proxy_define_metric` takes a full name apart (`crate::metrics::split`)
//! into its family and label values; an update sends those values with it.
//!
//! With `metrics_namespace: wasmcustom` (envoy/native.yaml, the test harness) the Prometheus
//! output is the Wasm build's: `azure_llm_requests{outcome="routed"}`,
//! `gen_ai_client_token_usage_bucket{gen_ai_token_type="input",...}`. Envoy tags the labels
//! itself (the `stats_tags` regexes are not needed for these stats), and the `/stats` name is
//! the Wasm one without the space that ends each value:
//! `wasmcustom.azure_llm.requests.outcome.routed`.

use super::abi::{self, FilterConfigEnvoyPtr, FilterEnvoyPtr, ModuleBuffer};
use crate::metrics::{families, split, Kind};
use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};

/// The most labels a family has (the token histogram per workload: 6).
const MAX_LABELS: usize = 8;

/// One series the filter defined: its family and label values.
struct Series {
    kind: Kind,
    family: usize,
    values: Vec<Box<[u8]>>,
}

#[derive(Default)]
struct Registry {
    /// By kind and full name: the same name gets the same id (as from Envoy's Wasm host).
    by_name: HashMap<(u8, String), u32>,
    /// Id `n` is `series[n - 1]`; id 0 is a name of no family (updates are dropped).
    series: Vec<Series>,
    /// Per filter configuration: Envoy's id of each family (by index in `families()`).
    configs: HashMap<u64, Vec<usize>>,
}

fn registry() -> &'static RwLock<Registry> {
    static REGISTRY: OnceLock<RwLock<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

fn kind_code(kind: Kind) -> u8 {
    match kind {
        Kind::Counter => 0,
        Kind::Gauge => 1,
        Kind::Histogram => 2,
    }
}

/// Defines every family on a new filter configuration (Envoy's main thread, inside
/// `on_http_filter_config_new`). Names a family Envoy refused.
///
/// # Safety
/// `config` is the configuration pointer of the `on_http_filter_config_new` being run.
pub unsafe fn define_all(config_id: u64, config: FilterConfigEnvoyPtr) -> Result<(), String> {
    let mut ids = Vec::new();
    for family in families() {
        let mut labels: Vec<ModuleBuffer> = family
            .labels
            .iter()
            .map(|l| ModuleBuffer::of(l.as_bytes()))
            .collect();
        let name = ModuleBuffer::of(family.base.as_bytes());
        let define = match family.kind {
            Kind::Counter => abi::envoy_dynamic_module_callback_http_filter_config_define_counter,
            Kind::Gauge => abi::envoy_dynamic_module_callback_http_filter_config_define_gauge,
            Kind::Histogram => {
                abi::envoy_dynamic_module_callback_http_filter_config_define_histogram
            }
        };
        let mut id = 0usize;
        let result = define(config, name, labels.as_mut_ptr(), labels.len(), &mut id);
        if result != abi::METRICS_SUCCESS {
            return Err(format!(
                "Envoy refused the metric {} (result {result})",
                family.base
            ));
        }
        ids.push(id);
    }
    if let Ok(mut r) = registry().write() {
        r.configs.insert(config_id, ids);
    }
    Ok(())
}

/// The configuration is gone.
pub fn forget(config_id: u64) {
    if let Ok(mut r) = registry().write() {
        r.configs.remove(&config_id);
    }
}

/// `proxy_define_metric`: the id of the series `name` is, 0 for a name of no family.
pub fn define(kind: Kind, name: &str) -> u32 {
    let key = (kind_code(kind), name.to_owned());
    if let Some(id) = registry()
        .read()
        .ok()
        .and_then(|r| r.by_name.get(&key).copied())
    {
        return id;
    }
    let family = split(name).and_then(|(base, pairs)| {
        let index = families().iter().position(|f| {
            f.kind == kind
                && f.base == base
                && f.labels.len() == pairs.len()
                && f.labels.iter().zip(&pairs).all(|(l, p)| *l == p.0)
        })?;
        let values = pairs
            .iter()
            .map(|p| p.1.as_bytes().to_vec().into_boxed_slice())
            .collect();
        Some((index, values))
    });
    let Ok(mut r) = registry().write() else {
        return 0;
    };
    if let Some(id) = r.by_name.get(&key) {
        return *id;
    }
    let id = match family {
        Some((family, values)) => {
            r.series.push(Series {
                kind,
                family,
                values,
            });
            u32::try_from(r.series.len()).unwrap_or(0)
        }
        None => 0,
    };
    r.by_name.insert(key, id);
    id
}

/// How an update changes its stat.
#[derive(Clone, Copy)]
pub enum Update {
    Add(u64),
    Subtract(u64),
    /// A gauge's value, a histogram's sample.
    Record(u64),
}

/// Applies `update` to series `id` through the stream `filter` (the one whose event is being
/// handled: a root context's updates go through the stream that woke it). `false` if the id,
/// its configuration or the update does not fit.
///
/// # Safety
/// `filter` is a live stream's pointer during one of its hooks.
pub unsafe fn update(filter: FilterEnvoyPtr, config_id: u64, id: u32, update: Update) -> bool {
    let Ok(r) = registry().read() else {
        return false;
    };
    let Some(series) = (id as usize).checked_sub(1).and_then(|i| r.series.get(i)) else {
        return false;
    };
    let Some(envoy_id) = r
        .configs
        .get(&config_id)
        .and_then(|ids| ids.get(series.family))
        .copied()
    else {
        return false;
    };
    if series.values.len() > MAX_LABELS {
        return false;
    }
    let mut values = [ModuleBuffer::NULL; MAX_LABELS];
    for (slot, v) in values.iter_mut().zip(&series.values) {
        *slot = ModuleBuffer::of(v);
    }
    let n = series.values.len();
    let values = values.as_mut_ptr();
    let call = match (series.kind, update) {
        (Kind::Counter, Update::Add(v)) => {
            abi::envoy_dynamic_module_callback_http_filter_increment_counter(
                filter, envoy_id, values, n, v,
            )
        }
        (Kind::Gauge, Update::Add(v)) => {
            abi::envoy_dynamic_module_callback_http_filter_increment_gauge(
                filter, envoy_id, values, n, v,
            )
        }
        (Kind::Gauge, Update::Subtract(v)) => {
            abi::envoy_dynamic_module_callback_http_filter_decrement_gauge(
                filter, envoy_id, values, n, v,
            )
        }
        (Kind::Gauge, Update::Record(v)) => {
            abi::envoy_dynamic_module_callback_http_filter_set_gauge(filter, envoy_id, values, n, v)
        }
        (Kind::Histogram, Update::Record(v)) => {
            abi::envoy_dynamic_module_callback_http_filter_record_histogram_value(
                filter, envoy_id, values, n, v,
            )
        }
        _ => return false,
    };
    call == abi::METRICS_SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics;

    #[test]
    fn a_name_is_one_series_and_an_unknown_one_none() {
        let a = define(Kind::Counter, &metrics::requests("routed"));
        assert_ne!(a, 0);
        assert_eq!(define(Kind::Counter, &metrics::requests("routed")), a);
        assert_ne!(define(Kind::Counter, &metrics::requests("discovery")), a);
        assert_eq!(
            define(Kind::Gauge, &metrics::requests("routed")),
            0,
            "wrong kind"
        );
        assert_eq!(define(Kind::Counter, "something.else "), 0);
        let r = registry().read().unwrap();
        let s = &r.series[a as usize - 1];
        assert_eq!(s.values, vec![b"routed".to_vec().into_boxed_slice()]);
    }
}
