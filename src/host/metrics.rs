//! Envoy stats defined on first use (ids cached per worker VM), and the workload-series
//! registry in shared data (which workloads have their own series, decided once for the
//! whole Envoy).
//!
//! The per-request counters (request outcome, rate-limit decision, tokens by workload, model
//! and backend) and histograms are looked up without building their names: a name is
//! formatted only the first time a worker defines the stat.

use super::shared;
use crate::metrics::{self as names, Admission, GenAiLabels, Histogram, TokenType};
use crate::usage::Usage;
use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;
use proxy_wasm::types::Status;
use std::collections::{HashMap, HashSet};

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
    /// Prompt, completion, cached prompt and reasoning token counters by
    /// `label \0 model \0 backend`.
    tokens: HashMap<String, [u32; TOKEN_KINDS.len()]>,
    /// Histograms by `operation \0 provider \0 model \0 backend \0 label`.
    histograms: HashMap<String, HistogramIds>,
    /// Cost counters by `label \0 model \0 currency`, with the part of a micro-unit (in
    /// pico-units) not counted yet, so that many small answers add up exactly.
    costs: HashMap<String, (u32, u64)>,
    /// Reused to build `tokens` keys without allocating.
    scratch: String,
    pub workloads: WorkloadSeries,
}

/// This worker's copy of the shared workload-series registry
/// ([`names::WORKLOAD_SERIES_KEY`]): the workloads it knows are named, and whether the
/// registry was full when it last read it (then nothing is read again: a full registry
/// never changes).
#[derive(Default)]
pub struct WorkloadSeries {
    named: HashSet<String>,
    full: bool,
    /// `max_workload_series` of the configuration.
    pub cap: usize,
}

impl WorkloadSeries {
    /// The workload's label: itself if the registry names it (adding it while there is room),
    /// else [`names::OTHER`]. Host calls only for a workload this worker has not met while
    /// the registry has room.
    pub fn label<'a>(&mut self, workload: &'a str) -> &'a str {
        if self.named.contains(workload) {
            return workload;
        }
        if self.full {
            return names::OTHER;
        }
        for _ in 0..32 {
            let (bytes, cas) = shared::read(names::WORKLOAD_SERIES_KEY);
            let list = bytes.unwrap_or_default();
            match names::admit_workload(&list, workload, self.cap) {
                Admission::Named => {
                    self.learn(&list);
                    return workload;
                }
                Admission::Full => {
                    self.learn(&list);
                    self.full = true;
                    return names::OTHER;
                }
                Admission::Add(next) => {
                    let cas = cas.unwrap_or(shared::CREATE_ONLY_CAS);
                    match hostcalls::set_shared_data(
                        names::WORKLOAD_SERIES_KEY,
                        Some(&next),
                        Some(cas),
                    ) {
                        Ok(()) => {
                            self.learn(&next);
                            return workload;
                        }
                        Err(Status::CasMismatch) => continue,
                        Err(e) => {
                            log::error!("azure-llm-filter: workload series registry: {e:?}");
                            return names::OTHER;
                        }
                    }
                }
            }
        }
        names::OTHER
    }

    fn learn(&mut self, list: &[u8]) {
        for name in names::registered(list) {
            if !self.named.contains(name) {
                self.named.insert(name.to_string());
            }
        }
    }
}

/// The `kind` labels of the token counters, in `Usage` order.
const TOKEN_KINDS: [&str; 4] = ["prompt", "completion", "cached_prompt", "reasoning"];

/// One series of each histogram (token usage by type).
#[derive(Clone, Copy)]
struct HistogramIds {
    tokens: [u32; TokenType::ALL.len()],
    duration: u32,
    ttft: u32,
    tpot: u32,
}

/// What one routed request measured, recorded once when it is charged.
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    /// The workload (if the histograms carry it) is capped here; pass the request's own.
    pub labels: GenAiLabels<'a>,
    pub usage: Option<Usage>,
    /// The operation has output tokens (not embeddings).
    pub has_output: bool,
    pub duration_ms: u64,
    /// Streamed answers: from the request's headers to the answer's first chunk.
    pub ttft_ms: Option<u64>,
}

const PICO_PER_MICRO: u64 = 1_000_000;

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

    /// Adds a request's tokens (prompt, completion, and the cached and reasoning parts where
    /// reported) to the workload's counters.
    pub fn count_usage(&mut self, workload: &str, model: &str, backend: &str, usage: &Usage) {
        let label = self.workloads.label(workload);
        self.scratch.clear();
        for part in [label, "\0", model, "\0", backend] {
            self.scratch.push_str(part);
        }
        let ids = match self.tokens.get(self.scratch.as_str()) {
            Some(ids) => *ids,
            None => {
                let mut ids = [0; TOKEN_KINDS.len()];
                for (id, kind) in ids.iter_mut().zip(TOKEN_KINDS) {
                    let name = names::tokens(label, model, backend, kind);
                    let Some(defined) = define(MetricType::Counter, &name) else {
                        return;
                    };
                    *id = defined;
                }
                self.tokens.insert(self.scratch.clone(), ids);
                ids
            }
        };
        let amounts = [
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.cached_prompt_tokens.unwrap_or(0),
            usage.reasoning_tokens.unwrap_or(0),
        ];
        for (id, by) in ids.into_iter().zip(amounts) {
            if by > 0 {
                increment(id, by);
            }
        }
    }

    /// Records a request's histograms: tokens by type (the details only when the API reported
    /// them), duration, and for streams time to first token and time per output token.
    pub fn observe(&mut self, o: &Observation<'_>) {
        let Some(ids) = self.histogram_ids(&o.labels) else {
            return;
        };
        let record = |id: u32, value: u64| {
            let _ = hostcalls::record_metric(id, value);
        };
        if let Some(u) = &o.usage {
            let by_type = [
                Some(u.prompt_tokens),
                o.has_output.then_some(u.completion_tokens),
                u.cached_prompt_tokens,
                u.reasoning_tokens,
            ];
            for (id, value) in ids.tokens.into_iter().zip(by_type) {
                if let Some(v) = value {
                    record(id, v);
                }
            }
        }
        record(ids.duration, o.duration_ms);
        if let Some(ttft) = o.ttft_ms {
            record(ids.ttft, ttft);
            let output = o.usage.map_or(0, |u| u.completion_tokens);
            if let Some(tpot) = names::time_per_output_token_ms(o.duration_ms, ttft, output) {
                record(ids.tpot, tpot);
            }
        }
    }

    fn histogram_ids(&mut self, labels: &GenAiLabels<'_>) -> Option<HistogramIds> {
        let workload = labels.workload.map(|w| self.workloads.label(w));
        self.scratch.clear();
        for part in [
            labels.operation,
            "\0",
            labels.provider,
            "\0",
            labels.model,
            "\0",
            labels.backend,
            "\0",
            workload.unwrap_or("\0"),
        ] {
            self.scratch.push_str(part);
        }
        if let Some(ids) = self.histograms.get(self.scratch.as_str()) {
            return Some(*ids);
        }
        let labels = GenAiLabels {
            workload,
            ..*labels
        };
        let def = |h: Histogram, t: Option<TokenType>| {
            define(MetricType::Histogram, &names::histogram(h, &labels, t))
        };
        let mut tokens = [0; TokenType::ALL.len()];
        for (id, t) in tokens.iter_mut().zip(TokenType::ALL) {
            *id = def(Histogram::TokenUsage, Some(t))?;
        }
        let ids = HistogramIds {
            tokens,
            duration: def(Histogram::RequestDuration, None)?,
            ttft: def(Histogram::TimeToFirstToken, None)?,
            tpot: def(Histogram::TimePerOutputToken, None)?,
        };
        self.histograms.insert(self.scratch.clone(), ids);
        Some(ids)
    }

    /// Adds a request's cost (pico-units of `currency`) to the workload's cost counter, which
    /// counts micro-units; the remainder waits for the next request of the same series.
    pub fn count_cost(&mut self, workload: &str, model: &str, currency: &str, pico: u128) {
        let label = self.workloads.label(workload);
        self.scratch.clear();
        for part in [label, "\0", model, "\0", currency] {
            self.scratch.push_str(part);
        }
        let entry = match self.costs.get_mut(self.scratch.as_str()) {
            Some(entry) => entry,
            None => {
                let Some(id) = define(MetricType::Counter, &names::cost(label, model, currency))
                else {
                    return;
                };
                self.costs.entry(self.scratch.clone()).or_insert((id, 0))
            }
        };
        let total = pico.saturating_add(u128::from(entry.1));
        let micros = u64::try_from(total / u128::from(PICO_PER_MICRO)).unwrap_or(u64::MAX);
        entry.1 = u64::try_from(total % u128::from(PICO_PER_MICRO)).unwrap_or(0);
        let id = entry.0;
        if micros > 0 {
            increment(id, micros);
        }
    }

    /// Records `value` in the histogram `name` (defined on first use).
    pub fn histogram(&mut self, name: String, value: u64) {
        if let Some(id) = self.id(MetricType::Histogram, name) {
            let _ = hostcalls::record_metric(id, value);
        }
    }

    pub fn gauge(&mut self, name: String, value: u64) {
        if let Some(id) = self.id(MetricType::Gauge, name) {
            let _ = hostcalls::record_metric(id, value);
        }
    }
}
