//! Phase forward: the admitted request is pointed at its backend: `:authority`, `:path`, the
//! routing header Envoy's route table matches, the backend's fixed headers and defaults, and
//! the access-log properties naming model, backend and deployment. `accept-encoding` is
//! removed, so that Azure answers uncompressed and the usage of every answer can be read (a
//! compressed answer would be charged its estimate; decoding gzip/br in the filter would cost
//! a decompressor in the module and CPU on every answer byte).

use super::HttpFilter;
use crate::config::Config;
use crate::host::phase::{self, Phase};
use crate::routing::RoutePlan;
use proxy_wasm::traits::HttpContext;

impl HttpFilter {
    /// Sets the upstream headers of a plan.
    pub(super) fn forward(&mut self, config: &Config, plan: &RoutePlan) {
        let _phase = phase::enter(Phase::Forward);
        // Every attempt (pool targets too) inherits this.
        self.set_http_request_header("accept-encoding", None);
        // A failover pool's request is rewritten here for the first target it tries, like a
        // plain model's; the upstream filter rewrites the attempts Envoy sends elsewhere.
        self.routed = Some((plan.model.to_string(), plan.backend.name.clone()));
        {
            let _phase = phase::enter(Phase::Observe);
            self.observe_route(plan);
        }
        // Per-request data for access logs: %FILTER_STATE(wasm.azure_llm_<name>:PLAIN)%.
        for (name, value) in [
            ("azure_llm_model", plan.model),
            ("azure_llm_backend", plan.backend.name.as_str()),
            ("azure_llm_deployment", plan.deployment),
        ] {
            self.property(name, value.as_bytes());
        }
        self.set_http_request_header(":authority", Some(&plan.backend.host));
        self.set_http_request_header(":path", Some(&plan.path));
        match self.pool_key() {
            Some(key) => {
                let _phase = phase::enter(Phase::Pool);
                self.set_http_request_header(&config.routing_header, Some(&key));
                self.hand_over(plan);
            }
            None => self.set_http_request_header(&config.routing_header, Some(&plan.backend.name)),
        }
        for (name, value) in &plan.backend.headers {
            self.set_http_request_header(name, Some(value));
        }
        for (name, value) in &plan.default_headers {
            let set_above = plan
                .backend
                .headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case(name));
            if !set_above && !self.request_keeps_header(config, name) {
                self.set_http_request_header(name, Some(value));
            }
        }
    }
}
