//! Envoy stats defined on first use (ids cached per worker VM).

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;
use std::collections::HashMap;

#[derive(Default)]
pub struct Metrics {
    ids: HashMap<String, u32>,
    pub workloads: crate::metrics::WorkloadCap,
}

impl Metrics {
    fn id(&mut self, kind: MetricType, name: String) -> Option<u32> {
        if let Some(id) = self.ids.get(&name) {
            return Some(*id);
        }
        let id = hostcalls::define_metric(kind, &name).ok()?;
        self.ids.insert(name, id);
        Some(id)
    }

    pub fn count(&mut self, name: String, by: u64) {
        if by == 0 {
            return;
        }
        if let Some(id) = self.id(MetricType::Counter, name) {
            let _ = hostcalls::increment_metric(id, i64::try_from(by).unwrap_or(i64::MAX));
        }
    }

    pub fn gauge(&mut self, name: String, value: u64) {
        if let Some(id) = self.id(MetricType::Gauge, name) {
            let _ = hostcalls::record_metric(id, value);
        }
    }
}
