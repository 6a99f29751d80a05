//! Phase pool (models served by a failover pool): the listener filter chooses which targets
//! the request tries, in which order (`host::pool`, `crate::failover::order`), and rewrites
//! it for the first as for a plain model (`:authority`, `:path`, headers, token). With more
//! than one target to try it goes to the aggregate cluster of that order, whose upstream
//! filter (`host::upstream`) rewrites the attempts Envoy sends elsewhere; else it is an
//! ordinary request to its one target. On the answer: which target served it after how many
//! attempts, attempts that were sent and never answered (charged), and when every target is
//! closed the 429 says when the first opens again.

use super::HttpFilter;
use crate::config::Config;
use crate::errors::FilterError;
use crate::failover::{self, Outcome, TargetHealth};
use crate::host::now_ms;
use crate::host::pool::{self, Handover, HANDOVER_PROPERTY, LOST_PROPERTY, TARGET_PROPERTY};
use crate::metrics;
use crate::routing::{self, Operation, RoutePlan};
use proxy_wasm::traits::{Context, HttpContext};

/// A request for a model served by a failover pool.
pub(super) struct PoolRequest {
    /// Where it goes: `Some(routing-header value)` of an aggregate cluster (more than one
    /// target to try), `None`: straight to its one target.
    key: Option<String>,
    op: Operation,
    /// Pool index of the first target, which the listener filter rewrote the request for.
    first: usize,
    /// (backend, deployment) of the first target: the target of a request sent straight
    /// there (no upstream filter sees its answer, so its health is recorded here).
    direct: (String, String),
    clean: u8,
    /// Envoy's count of the request's attempts, once the answer is known: `Some(1)` without
    /// a host call when the upstream filter reported nothing (`TARGET_PROPERTY` absent: one
    /// attempt, served by the first target), else read once (`upstream.request_attempt_count`).
    attempts: Option<Option<u64>>,
}

impl HttpFilter {
    /// The plan of a request: the model's only target, or the first target it tries in its
    /// pool (429 when every target is closed).
    pub(super) fn choose_plan<'c>(
        &mut self,
        config: &'c Config,
        op: Operation,
        model: &str,
    ) -> Result<RoutePlan<'c>, FilterError> {
        let now = now_ms();
        let choice = {
            let mut state = self.state.borrow_mut();
            pool::choose(config, &mut state, op, model, now)?
        };
        if choice.is_pool {
            self.pool = Some(PoolRequest {
                key: choice.pool_key,
                op,
                first: choice.first,
                direct: (
                    choice.plan.backend.name.clone(),
                    choice.plan.deployment.to_string(),
                ),
                clean: choice.clean,
                attempts: None,
            });
        }
        Ok(choice.plan)
    }

    /// The request goes to a pool's aggregate cluster: the upstream filter sets each
    /// attempt's body `model`, and rewrites the attempts Envoy sends to another target.
    pub(super) fn via_pool_cluster(&self) -> bool {
        self.pool.as_ref().is_some_and(|p| p.key.is_some())
    }

    /// forward: the routing-header value of an aggregate cluster (the targets to try joined
    /// by `+`), if the request goes to one.
    pub(super) fn pool_key(&self) -> Option<String> {
        self.pool.as_ref().and_then(|p| p.key.clone())
    }

    /// forward, for a pool's aggregate cluster: the hand-over tells the upstream filter the
    /// model, API and first target.
    pub(super) fn hand_over(&mut self, plan: &RoutePlan) {
        let Some(p) = &self.pool else { return };
        let handover = Handover {
            model: plan.model.to_string(),
            op: p.op,
            rewritten_for: Some(p.first),
            clean: p.clean,
        };
        // Not an access-log property: the upstream filter needs it whatever the config says.
        self.set_property(vec![HANDOVER_PROPERTY], Some(&handover.encode()));
    }

    /// The answer of a pool request (response headers).
    pub(super) fn pool_answered(&mut self) {
        let Some(p) = &self.pool else { return };
        let config = self.state.borrow().config.clone();
        let status = self.response_status.unwrap_or(0);
        let now = now_ms();
        let (first_backend, first_deployment) = p.direct.clone();
        // Whether the upstream filter wrote `TARGET_PROPERTY` (it did for an attempt it
        // rewrote for another target, or one that did not serve), and then how many attempts.
        let mut reported = false;
        let (target, outcome) = if p.key.is_some() {
            let target = self
                .get_property(vec![TARGET_PROPERTY])
                .and_then(|b| String::from_utf8(b).ok());
            reported = target.is_some();
            let changed = target.as_deref().is_some_and(|t| t != first_backend);
            (target.unwrap_or(first_backend), changed)
        } else {
            // The answer's headers as the meter read them (one host call for all).
            let headers = &self.response_headers;
            let wait =
                failover::retry_after_ms(headers.get("retry-after-ms"), headers.get("retry-after"));
            let outcome = Outcome::of_status(status, wait);
            let key = failover::health_key(&first_backend, &first_deployment);
            if outcome != Outcome::Answered || !p.is_clean_first() {
                pool::record(&key, outcome, now, &config.failover);
            }
            if outcome != Outcome::Answered {
                self.count_target(&first_backend, outcome);
            }
            (first_backend, false)
        };
        // The upstream filter counts the attempts that were throttled, failed or unanswered;
        // an answer is final, so it is counted here, once, for the target that gave it.
        if Outcome::of_status(status, None) == Outcome::Answered {
            self.count_target(&target, Outcome::Answered);
        }
        // (An upstream filter's value is there already.)
        if p.key.is_some() && !reported {
            self.property(TARGET_PROPERTY, target.as_bytes());
        }
        let via_cluster = p.key.is_some();
        if outcome {
            self.property("azure_llm_backend", target.as_bytes());
            if let Some((_, backend)) = &mut self.routed {
                *backend = target;
            }
        }
        // Nothing reported: every attempt served and none was rewritten, so there was one.
        let attempts = if via_cluster && !reported {
            Some(1)
        } else {
            self.attempt_count()
        };
        if let Some(p) = self.pool.as_mut() {
            p.attempts = Some(attempts);
        }
        if self.access_log_properties {
            if let Some(n) = attempts {
                self.property("azure_llm_attempts", n.to_string().as_bytes());
            }
        }
        if status == 429 {
            self.lower_retry_after(&config, now);
        }
    }

    fn count_target(&self, backend: &str, outcome: Outcome) {
        if let Ok(mut s) = self.state.try_borrow_mut() {
            let label = TargetHealth::outcome_label(outcome);
            s.metrics.count(metrics::target_attempts(backend, label), 1);
        }
    }

    /// Envoy's count of the request's attempts (`upstream.request_attempt_count`).
    fn attempt_count(&self) -> Option<u64> {
        self.get_property(vec!["upstream", "request_attempt_count"])
            .and_then(|b| b.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()))
            .map(u64::from_le_bytes)
    }

    /// charge: attempts of a pool request that were sent to a target and never answered (a
    /// reset, a timeout) before the attempt the caller got: Azure may bill them, so each is
    /// charged the request's estimate.
    pub(super) fn lost_attempts(&self) -> u64 {
        if !self.via_pool_cluster() {
            return 0;
        }
        let known = self.pool.as_ref().and_then(|p| p.attempts);
        let attempts = match known {
            Some(n) => n,
            // No answer came (the caller left first): ask Envoy.
            None => self.attempt_count(),
        };
        let Some(last) = attempts.filter(|n| *n > 1) else {
            return 0;
        };
        let Some(lost) = self.get_property(vec![LOST_PROPERTY]) else {
            return 0;
        };
        pool::lost_attempts(&lost).filter(|n| *n < last).count() as u64
    }

    /// A 429 of a pool whose every target is now closed says when the first opens again (the
    /// last target's own Retry-After may be longer than an earlier one's).
    fn lower_retry_after(&mut self, config: &Config, now: u64) {
        let Some(route) = self
            .routed
            .as_ref()
            .and_then(|(model, _)| routing::lookup(config, model).ok())
        else {
            return;
        };
        if let Some(wait) = pool::smallest_wait_ms(config, route, now) {
            let secs = failover::retry_after_secs(wait);
            self.set_http_response_header("retry-after", Some(&secs.to_string()));
            self.set_http_response_header("retry-after-ms", Some(&wait.to_string()));
        }
    }
}

impl PoolRequest {
    /// The first target had no failure counted when the request started.
    fn is_clean_first(&self) -> bool {
        self.first < 8 && self.clean & (1 << self.first) != 0
    }
}
