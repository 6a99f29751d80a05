//! Phase guard (issue 26): the workload's guardrail policy on the prompt. In the body phase,
//! before admission, the local rules (`crate::guard::local`) run on the JSON body: a `block`
//! refuses the request with Azure's content-filter 400 before anything is reserved or sent,
//! a `mask` rewrites the body. The body that leaves is then the filter's own serialisation of
//! the document it checked, so what Azure parses is exactly what was checked (a body with
//! duplicate keys cannot show the checks one prompt and Azure another).
//!
//! Without a policy for the workload nothing here runs: one lookup.

use super::HttpFilter;
use crate::config::Config;
use crate::errors::FilterError;
use crate::guard::verdict::{self, Direction, Finding};
use crate::guard::{local, Policy};
use crate::metrics;
use crate::routing::Operation;
use crate::usage_record as record;
use std::rc::Rc;

/// A request's guardrail state (only for workloads with a policy).
pub(super) struct GuardState {
    /// Everything the checks found, in order (metrics are counted as they are found).
    pub(super) findings: Vec<Finding>,
}

impl HttpFilter {
    /// The workload's policy, if the config has guardrails and one applies.
    fn guard_policy(&self, config: &Config) -> Option<Rc<Policy>> {
        config.guardrails.as_ref()?.policy(&self.workload).cloned()
    }

    /// The request's JSON body, before routing rewrites it: the local rules. `Ok(Some(body))`
    /// is the body to send instead (masked, and in any case re-serialised from what was
    /// checked); `Err` the refusal.
    pub(super) fn guard_prompt(
        &mut self,
        config: &Config,
        _op: Operation,
        body: &[u8],
    ) -> Result<Option<Vec<u8>>, FilterError> {
        let Some(policy) = self.guard_policy(config) else {
            return Ok(None);
        };
        let checks_prompt = policy.checks_prompt();
        self.guard = Some(Box::new(GuardState {
            findings: Vec::new(),
        }));
        if !checks_prompt {
            return Ok(None);
        }
        let mut document: serde_json::Value = serde_json::from_slice(body).map_err(|_| {
            FilterError::bad_request("invalid_json", "request body is not a valid JSON object")
        })?;
        let outcome = local::apply(&policy, &mut document);
        self.guard_found(outcome.findings);
        if outcome.blocked {
            return Err(self.guard_refusal(Direction::Prompt));
        }
        serde_json::to_vec(&document).map(Some).map_err(|_| {
            FilterError::internal("rewrite_failed", "could not rewrite the request body")
        })
    }

    /// Records findings: counted now, listed in the usage record (`azure_llm_guardrail`).
    fn guard_found(&mut self, found: Vec<Finding>) {
        if found.is_empty() {
            return;
        }
        if let Ok(mut s) = self.state.try_borrow_mut() {
            for f in &found {
                s.metrics.count(
                    metrics::guardrail(
                        f.direction.name(),
                        f.check.kind(),
                        f.check.category(),
                        f.decision.name(),
                    ),
                    1,
                );
            }
        }
        for f in &found {
            log::debug!(
                "azure-llm-filter: guardrail {} for workload `{}`",
                f.label(),
                self.workload
            );
        }
        let Some(guard) = self.guard.as_mut() else {
            return;
        };
        guard.findings.extend(found);
        let summary = verdict::record(&guard.findings);
        self.property(record::GUARDRAIL, summary.as_bytes());
    }

    /// The caller's refusal for what was blocked.
    fn guard_refusal(&self, direction: Direction) -> FilterError {
        let findings = self.guard.as_ref().map_or(&[][..], |g| &g.findings[..]);
        verdict::refusal(direction, findings)
    }
}
