//! Guardrails (issue 26): a per-workload content policy on prompts and answers.
//!
//! - `config`: the `guardrails` section (the Content Safety resource, policies by workload);
//! - `pii`, `pattern`, `local`: the local rules (PII and secret detectors, deny patterns) that
//!   block, mask or log without any service; `fold`: the text they read, disguises folded away;
//! - `prompt`: the prompt's text for every API, as Prompt Shields reads it (user prompt and
//!   documents);
//! - `answer`: an answer's text (JSON, or a stream's deltas in windows) and the terminal error
//!   event of a flagged stream;
//! - `safety`: Azure AI Content Safety's wire format (Prompt Shields, text analysis, protected
//!   material), calls split within its limits, and what its answers mean under a policy;
//! - `verdict`: findings, their labels for metrics and the usage record, and the refusal in
//!   Azure OpenAI's content-filter shape.
//!
//! All host-free; the phase that runs them is `src/host/http/guard.rs`.

pub mod answer;
pub mod config;
pub mod fold;
/// Fuzz targets (native only; registered in `crate::fuzzing`).
#[cfg(not(target_arch = "wasm32"))]
#[doc(hidden)]
pub mod fuzz;
pub mod local;
pub mod pattern;
pub mod pii;
pub mod prompt;
pub mod safety;
pub mod verdict;

pub use config::{Guardrails, Policy, RawGuardrails};
