//! Observing a request (issue 18): when it started, when its answer's first output came
//! (`crate::first_output`, issue 25), and at
//! charge time one record of what it measured: the OpenTelemetry GenAI histograms (tokens by
//! type, duration, time to first token, time per output token), the cost of the price table,
//! and the usage-record properties (`crate::usage_record`) for the access loggers, with the
//! captured prompt and answer when `capture` is on.

use super::HttpFilter;
use crate::capture::AnswerCapture;
use crate::config::Config;
use crate::first_output::FirstOutput;
use crate::host::metrics::Observation;
use crate::host::now_ms;
use crate::metrics::{self, GenAiLabels};
use crate::routing::config::BackendKind;
use crate::routing::{Operation, RoutePlan};
use crate::usage::Usage;
use crate::usage_record as record;

/// What the observation of one request keeps until it is charged.
#[derive(Default)]
pub(super) struct Observed {
    started_ms: u64,
    /// Streams: when the first chunk carrying output passed.
    first_output_ms: Option<u64>,
    /// Streams: follows the answer until its first output.
    first_output: Option<FirstOutput>,
    /// The model that answered, as the answer names it.
    response_model: Option<String>,
    operation: Option<Operation>,
    /// `gen_ai.operation.name` and `gen_ai.provider.name`, once routed.
    gen_ai: Option<(&'static str, &'static str)>,
    answer: Option<AnswerCapture>,
}

/// `gen_ai.provider.name` of a backend kind.
fn provider(kind: &BackendKind) -> &'static str {
    match kind {
        BackendKind::AzureOpenai { .. } | BackendKind::AzureOpenaiV1 => {
            metrics::PROVIDER_AZURE_OPENAI
        }
        BackendKind::FoundryModels { .. } => metrics::PROVIDER_AZURE_AI_INFERENCE,
        BackendKind::FoundryAnthropic { .. } => metrics::PROVIDER_ANTHROPIC,
    }
}

impl HttpFilter {
    /// Request headers of an API request: the clock starts.
    pub(super) fn observe_start(&mut self, op: Operation) {
        self.observed.started_ms = now_ms();
        self.observed.operation = Some(op);
    }

    /// The request is routed: its operation and provider, for the histograms and the record.
    pub(super) fn observe_route(&mut self, plan: &RoutePlan) {
        let operation = self
            .observed
            .operation
            .map_or("other", metrics::gen_ai_operation);
        let provider = provider(&plan.backend.kind);
        self.observed.gen_ai = Some((operation, provider));
        self.property(record::OPERATION, operation.as_bytes());
        self.property(record::PROVIDER, provider.as_bytes());
    }

    /// The request's JSON body: its prompt, if captured.
    pub(super) fn observe_prompt(&self, config: &Config, body: &[u8]) {
        if let Some(prompt) = config.capture.prompt_of(body) {
            self.property(record::PROMPT, prompt.as_bytes());
        }
    }

    /// Response headers: the answer's text is followed if captured (not an encoded answer,
    /// whose bytes are not text).
    pub(super) fn observe_answer_start(
        &mut self,
        config: &Config,
        content_type: &str,
        encoded: bool,
    ) {
        let streamed = content_type
            .trim_start()
            .to_ascii_lowercase()
            .starts_with("text/event-stream");
        // An encoded stream's bytes are not events: it has no time to first token.
        self.observed.first_output = (streamed && !encoded).then(FirstOutput::new);
        self.observed.answer = config.capture.answer_reader(streamed).filter(|_| !encoded);
    }

    /// One chunk of the answer (read for the meter already, if it was read).
    pub(super) fn observe_chunk(&mut self, chunk: Option<&[u8]>) {
        if let (Some(first), Some(chunk)) = (self.observed.first_output.as_mut(), chunk) {
            if first.feed(chunk) {
                self.observed.first_output_ms = Some(now_ms());
                self.observed.response_model = first.model().map(str::to_string);
                self.observed.first_output = None;
            }
        }
        if let (Some(answer), Some(chunk)) = (self.observed.answer.as_mut(), chunk) {
            answer.feed(chunk);
        }
    }

    /// Whether the answer has output tokens to report: an embeddings answer has none (Azure
    /// reports `prompt_tokens` and `total_tokens` only), so its record and histograms have no
    /// output figure rather than a 0 Azure never said.
    pub(super) fn has_output(&self) -> bool {
        self.observed.operation != Some(Operation::Embeddings)
    }

    /// Whether `observe_chunk` needs the chunk's bytes.
    pub(super) fn observes_answer_text(&self) -> bool {
        self.observed.answer.is_some() || self.observed.first_output.is_some()
    }

    /// Charge time, once: histograms, cost, and the record's properties.
    pub(super) fn observe_end(&mut self, usage: Option<Usage>) {
        let Some((model, backend)) = self.routed.clone() else {
            return;
        };
        let (operation, provider) = self.observed.gen_ai.unwrap_or(("other", ""));
        let started = self.observed.started_ms;
        // Time to first token is a streaming measure (a JSON answer's first byte is its end),
        // to the first chunk that carried output: a stream that never did has none.
        let ttft_ms = self
            .observed
            .first_output_ms
            .map(|t| t.saturating_sub(started));
        let config = self.state.borrow().config.clone();
        let cost = usage.zip(config.pricing.as_ref()).and_then(|(u, p)| {
            let price = p.price(&model)?;
            Some((price.cost_pico(&u), p.currency.as_str()))
        });
        let observation = Observation {
            labels: GenAiLabels {
                operation,
                provider,
                model: &model,
                backend: &backend,
                workload: config
                    .gen_ai_histograms_per_workload
                    .then_some(self.workload.as_str()),
            },
            usage,
            has_output: self.has_output(),
            duration_ms: now_ms().saturating_sub(started),
            ttft_ms,
        };
        if let Ok(mut s) = self.state.try_borrow_mut() {
            if config.gen_ai_histograms {
                s.metrics.observe(&observation);
            }
            if let Some((pico, currency)) = cost {
                s.metrics.count_cost(&self.workload, &model, currency, pico);
            }
        }
        let details = usage.map_or([None, None], |u| {
            [u.cached_prompt_tokens, u.reasoning_tokens]
        });
        for (name, value) in [record::CACHED_PROMPT_TOKENS, record::REASONING_TOKENS]
            .into_iter()
            .zip(details)
        {
            if let Some(v) = value {
                self.property(name, v.to_string().as_bytes());
            }
        }
        if let Some((pico, currency)) = cost {
            let micros = pico / 1_000_000;
            self.property(record::COST_MICROS, micros.to_string().as_bytes());
            self.property(record::CURRENCY, currency.as_bytes());
        }
        if let Some(t) = ttft_ms {
            self.property(record::TTFT_MS, t.to_string().as_bytes());
        }
        let response_model = self
            .observed
            .response_model
            .take()
            .or_else(|| {
                let pending = self.observed.first_output.as_ref()?;
                pending.model().map(str::to_string)
            })
            .or_else(|| self.meter.response_model());
        if let Some(m) = response_model {
            self.property(record::RESPONSE_MODEL, m.as_bytes());
        }
        if let Some(answer) = self.observed.answer.take() {
            self.property(record::ANSWER, answer.finish().as_bytes());
        }
    }
}
