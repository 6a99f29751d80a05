//! Phase pool (models served by a failover pool): the request starts at the first open
//! target (`host::pool`); with more than one target left it goes to the pool's aggregate
//! cluster, whose upstream filter rewrites each attempt (`host::upstream`), else it is an
//! ordinary request to the one target left. On the answer: which target served it after how
//! many attempts, and when every target is closed the 429 says when the first opens again.

use super::HttpFilter;
use crate::config::Config;
use crate::errors::FilterError;
use crate::failover::{self, Outcome};
use crate::host::now_ms;
use crate::host::pool::{self, Handover, HANDOVER_PROPERTY, TARGET_PROPERTY};
use crate::routing::{self, Operation, RoutePlan};
use proxy_wasm::traits::{Context, HttpContext};

/// A request for a model served by a failover pool.
pub(super) struct PoolRequest {
    /// Where it goes: `Some(routing-header value)` of the pool's aggregate cluster (more than
    /// one target left), `None`: straight to its one target left.
    key: Option<String>,
    op: Operation,
    /// (backend, deployment) of a request sent straight to one target: no upstream filter
    /// sees its answer, so its health is recorded here.
    direct: (String, String),
}

impl HttpFilter {
    /// The plan of a request: the model's only target, or the first open target of its pool
    /// (429 when every target is closed).
    pub(super) fn choose_plan<'c>(
        &mut self,
        config: &'c Config,
        op: Operation,
        model: &str,
    ) -> Result<RoutePlan<'c>, FilterError> {
        let choice = pool::choose(config, op, model, now_ms())?;
        if choice.is_pool {
            self.pool = Some(PoolRequest {
                key: choice.pool_key,
                op,
                direct: (
                    choice.plan.backend.name.clone(),
                    choice.plan.deployment.to_string(),
                ),
            });
        }
        Ok(choice.plan)
    }

    /// The request goes to a pool's aggregate cluster: each attempt is rewritten (and gets
    /// its token) from the upstream filter.
    pub(super) fn via_pool_cluster(&self) -> bool {
        self.pool.as_ref().is_some_and(|p| p.key.is_some())
    }

    /// forward, for a pool's aggregate cluster: the routing header names the targets left;
    /// the hand-over tells the upstream filter the model and API.
    pub(super) fn forward_to_pool(&mut self, config: &Config, plan: &RoutePlan) {
        let Some(p) = &self.pool else { return };
        let Some(key) = p.key.clone() else { return };
        let handover = Handover {
            model: plan.model.to_string(),
            op: p.op,
        };
        self.routed = Some((plan.model.to_string(), plan.backend.name.clone()));
        self.property("azure_llm_model", plan.model.as_bytes());
        self.set_http_request_header(&config.routing_header, Some(&key));
        // Not an access-log property: the upstream filter needs it whatever the config says.
        self.set_property(vec![HANDOVER_PROPERTY], Some(&handover.encode()));
    }

    /// The answer of a pool request (response headers).
    pub(super) fn pool_answered(&mut self) {
        let Some(p) = &self.pool else { return };
        let config = self.state.borrow().config.clone();
        let status = self
            .get_http_response_header(":status")
            .and_then(|s| s.parse::<u32>().ok())
            .unwrap_or(0);
        let now = now_ms();
        let target = if p.key.is_some() {
            self.get_property(vec![TARGET_PROPERTY])
                .and_then(|b| String::from_utf8(b).ok())
        } else {
            let (backend, deployment) = p.direct.clone();
            let wait = failover::retry_after_ms(
                self.get_http_response_header("retry-after-ms").as_deref(),
                self.get_http_response_header("retry-after").as_deref(),
            );
            let outcome = Outcome::of_status(status, wait);
            pool::record(&backend, &deployment, outcome, now, &config.failover);
            Some(backend)
        };
        if let Some(target) = target {
            self.property(TARGET_PROPERTY, target.as_bytes());
            self.property("azure_llm_backend", target.as_bytes());
            if let Some((_, backend)) = &mut self.routed {
                *backend = target;
            }
        }
        let attempts = self
            .get_property(vec!["upstream", "request_attempt_count"])
            .and_then(|b| b.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()))
            .map(u64::from_le_bytes);
        if let Some(n) = attempts {
            self.property("azure_llm_attempts", n.to_string().as_bytes());
        }
        if status == 429 {
            self.lower_retry_after(&config, now);
        }
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
        if let Some(wait) = pool::smallest_wait_ms(&config.backends, route, now) {
            let secs = failover::retry_after_secs(wait);
            self.set_http_response_header("retry-after", Some(&secs.to_string()));
            self.set_http_response_header("retry-after-ms", Some(&wait.to_string()));
        }
    }
}
