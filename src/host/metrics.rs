//! Envoy stats defined on first use (ids cached per worker VM).
//!
//! The per-request counters (request outcome, rate-limit decision, tokens by workload, model
//! and backend) are looked up without building their names: a name is formatted only the
//! first time a worker defines the stat.

use crate::metrics::{self as names, WorkloadCap};
use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;
use std::collections::HashMap;

/// A counter family whose label is one of a fixed set of `'static` strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// `azure_llm.requests.outcome.<outcome>`
    Requests,
    /// `azure_llm.ratelimit.decision.<decision>`
    RateLimit,
}

impl Family {
    fn name(self, label: &str) -> String {
        match self {
            Family::Requests => names::requests(label),
            Family::RateLimit => names::ratelimit(label),
        }
    }
}

#[derive(Default)]
pub struct Metrics {
    ids: HashMap<String, u32>,
    fixed: HashMap<(Family, &'static str), u32>,
    /// Prompt and completion token counters by `label \0 model \0 backend`.
    tokens: HashMap<String, [u32; 2]>,
    /// Reused to build `tokens` keys without allocating.
    scratch: String,
    pub workloads: WorkloadCap,
}

fn define(kind: MetricType, name: &str) -> Option<u32> {
    hostcalls::define_metric(kind, name).ok()
}

fn increment(id: u32, by: u64) {
    let _ = hostcalls::increment_metric(id, i64::try_from(by).unwrap_or(i64::MAX));
}

impl Metrics {
    fn id(&mut self, kind: MetricType, name: String) -> Option<u32> {
        if let Some(id) = self.ids.get(&name) {
            return Some(*id);
        }
        let id = define(kind, &name)?;
        self.ids.insert(name, id);
        Some(id)
    }

    pub fn count(&mut self, name: String, by: u64) {
        if by == 0 {
            return;
        }
        if let Some(id) = self.id(MetricType::Counter, name) {
            increment(id, by);
        }
    }

    /// Adds one to the counter of `family` labelled `label`.
    pub fn count_fixed(&mut self, family: Family, label: &'static str) {
        let id = match self.fixed.get(&(family, label)) {
            Some(id) => *id,
            None => {
                let Some(id) = define(MetricType::Counter, &family.name(label)) else {
                    return;
                };
                self.fixed.insert((family, label), id);
                id
            }
        };
        increment(id, 1);
    }

    /// Adds a request's prompt and completion tokens to the workload's counters.
    pub fn count_tokens(
        &mut self,
        workload: &str,
        model: &str,
        backend: &str,
        prompt: u64,
        completion: u64,
    ) {
        let label = self.workloads.label(workload);
        self.scratch.clear();
        for part in [label, "\0", model, "\0", backend] {
            self.scratch.push_str(part);
        }
        let ids = match self.tokens.get(self.scratch.as_str()) {
            Some(ids) => *ids,
            None => {
                let define_kind = |kind| {
                    define(
                        MetricType::Counter,
                        &names::tokens(label, model, backend, kind),
                    )
                };
                let (Some(p), Some(c)) = (define_kind("prompt"), define_kind("completion")) else {
                    return;
                };
                self.tokens.insert(self.scratch.clone(), [p, c]);
                [p, c]
            }
        };
        for (id, by) in ids.into_iter().zip([prompt, completion]) {
            if by > 0 {
                increment(id, by);
            }
        }
    }

    pub fn gauge(&mut self, name: String, value: u64) {
        if let Some(id) = self.id(MetricType::Gauge, name) {
            let _ = hostcalls::record_metric(id, value);
        }
    }
}
