//! Guardrails (issue 26): a per-workload content policy on prompts and answers.
//!
//! - `config`: the `guardrails` section (the Content Safety resource, policies by workload);
//! - `pii`, `pattern`, `local`: the local rules (PII and secret detectors, deny patterns) that
//!   block, mask or log without any service;
//! - `prompt`: the prompt's text for every API, as Prompt Shields reads it (user prompt and
//!   documents);
//! - `verdict`: findings, their labels for metrics and the usage record, and the refusal in
//!   Azure OpenAI's content-filter shape.
//!
//! All host-free; the phase that runs them is `src/host/http/guard.rs`.

pub mod config;
/// Fuzz targets (native only; registered in `crate::fuzzing`).
#[cfg(not(target_arch = "wasm32"))]
#[doc(hidden)]
pub mod fuzz;
pub mod local;
pub mod pattern;
pub mod pii;
pub mod prompt;
pub mod verdict;

pub use config::{Guardrails, Policy, RawGuardrails};
