//! Phase authenticate: who is calling (JWT, API key or mTLS peer → workload), and the
//! removal of the caller's credentials, which never reach Azure.

use super::HttpFilter;
use crate::auth::AuthError;
use crate::config::{is_envoy_header, Config};
use crate::errors::FilterError;
use crate::header_map::HeaderMap;
use crate::host::{keys, now_ms, tokens};
use crate::metrics;
use proxy_wasm::traits::Context;
use proxy_wasm::traits::HttpContext;

/// Caller credentials that must never reach Azure: the filter authenticates to Azure itself.
const CALLER_CREDENTIAL_HEADERS: [&str; 3] = ["authorization", "api-key", "x-api-key"];

impl HttpFilter {
    /// Checks the caller's credential. `Ok(None)`: anonymous (authentication optional).
    pub(super) fn authenticate(
        &mut self,
        headers: &HeaderMap,
    ) -> Result<Option<String>, FilterError> {
        let values = |name: &'static str| -> Vec<&str> { headers.get_all(name).collect() };
        let authorization = values("authorization");
        let mut api_keys = values("api-key");
        api_keys.extend(values("x-api-key"));
        let state_rc = self.state.clone();
        let mut state = state_rc.borrow_mut();
        let Some(authn) = state.auth.as_mut() else {
            return Ok(None);
        };
        // Envoy's attribute for the first URI SAN of the downstream peer's certificate: with
        // mTLS (Istio), the caller's SPIFFE identity. Read only when the config can use it.
        let mtls_peer = if authn.config().mtls_peers.is_empty() {
            None
        } else {
            self.get_property(vec!["connection", "uri_san_peer_certificate"])
                .and_then(|b| String::from_utf8(b).ok())
        };
        let mut outcome =
            authn.authenticate(&authorization, &api_keys, mtls_peer.as_deref(), now_ms());
        // No keys yet, or not this kid: another worker may have fetched them since this
        // worker's last tick. Look at shared data before refusing anyone (one read, only on
        // this path).
        if let Err(AuthError::KeysUnavailable { provider } | AuthError::UnknownKid { provider }) =
            outcome
        {
            if keys::install_shared(authn, provider) {
                outcome =
                    authn.authenticate(&authorization, &api_keys, mtls_peer.as_deref(), now_ms());
            }
        }
        match outcome {
            Ok(caller) => Ok(caller.map(|c| c.workload)),
            Err(e) => {
                log::debug!("azure-llm-filter: caller refused: {}", e.code());
                state.metrics.count(metrics::jwt_rejections(e.code()), 1);
                if let AuthError::UnknownKid { provider } = e {
                    if let Some(flag) = state.jwks_unknown_kid.get_mut(provider) {
                        *flag = true;
                    }
                    tokens::request_tick_now(&mut state);
                }
                let mut err = e.to_filter_error();
                if let Some(v) = e.www_authenticate() {
                    err.extra_headers.push(("www-authenticate", v));
                }
                Err(err)
            }
        }
    }

    /// Whatever happens next, neither the caller's credentials nor a routing decision the
    /// caller made up go any further, nor the headers the operator keeps from Azure
    /// (`request_headers_to_remove`: cookies, proxy credentials, APIM keys by default), nor
    /// directions to Envoy (`x-envoy-*`: retries, timeouts; `config::is_envoy_header`).
    /// Removing removes every value of a name.
    pub(super) fn strip_caller_headers(&self, config: &Config, headers: &HeaderMap) {
        for name in stripped_names(config) {
            if headers.contains(name) {
                self.set_http_request_header(name, None);
            }
        }
        let mut removed: Vec<&str> = Vec::new();
        for name in headers.names() {
            if is_envoy_header(name) && !removed.contains(&name) {
                self.set_http_request_header(name, None);
                removed.push(name);
            }
        }
    }

    /// Whether the request, as it leaves, has header `name`: the caller sent it and the
    /// filter did not take it out.
    pub(super) fn request_keeps_header(&self, config: &Config, name: &str) -> bool {
        self.request_headers.contains(name)
            && !is_envoy_header(name)
            && !stripped_names(config).any(|n| n.eq_ignore_ascii_case(name))
    }
}

/// The request headers removed by name before anything else happens.
fn stripped_names(config: &Config) -> impl Iterator<Item = &str> {
    CALLER_CREDENTIAL_HEADERS
        .iter()
        .copied()
        .chain([config.routing_header.as_str()])
        .chain(config.request_headers_to_remove.iter().map(String::as_str))
}
