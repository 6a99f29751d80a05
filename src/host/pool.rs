//! Failover pools in the host: the health of each target in Envoy shared data (read by the
//! listener filter to choose where a request starts, written by the upstream filter after
//! each attempt), and the hand-over from the listener filter to the upstream filter.

use super::shared;
use crate::config::Config;
use crate::errors::FilterError;
use crate::failover::{self, FailoverPolicy, Outcome, Start, TargetHealth};
use crate::routing::config::{Backend, ModelRoute};
use crate::routing::{self, Operation, RoutePlan};

/// Filter-state key of the hand-over: what the upstream filter needs to rewrite an attempt.
/// Only filters can write filter state, so a caller cannot make one up.
pub const HANDOVER_PROPERTY: &str = "azure_llm_pool";
/// Filter-state key naming the target (its backend) of the latest attempt.
pub const TARGET_PROPERTY: &str = "azure_llm_target";

/// What the listener filter hands to the upstream filter of a pool's cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handover {
    /// The model's configured name.
    pub model: String,
    pub op: Operation,
}

impl Handover {
    pub fn encode(&self) -> Vec<u8> {
        format!("{}\n{}", self.model, self.op.suffix()).into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Option<Handover> {
        let text = std::str::from_utf8(bytes).ok()?;
        let (model, op) = text.split_once('\n')?;
        Some(Handover {
            model: model.to_string(),
            op: Operation::from_suffix(op)?,
        })
    }
}

fn health_key(backends: &[Backend], backend: usize, deployment: &str) -> Option<String> {
    backends
        .get(backend)
        .map(|b| failover::health_key(&b.name, deployment))
}

/// The health of every target of `route`, in order.
fn healths(backends: &[Backend], route: &ModelRoute) -> Vec<TargetHealth> {
    route
        .targets
        .iter()
        .map(|t| {
            health_key(backends, t.backend, &t.deployment)
                .and_then(|k| shared::read(&k).0)
                .map(|b| TargetHealth::decode(&b))
                .unwrap_or_default()
        })
        .collect()
}

/// Where a request for a pool starts (the first open target, or all are closed).
pub fn start(backends: &[Backend], route: &ModelRoute, now_ms: u64) -> Start {
    let closed: Vec<Option<u64>> = healths(backends, route)
        .iter()
        .map(|h| h.closed_until(now_ms))
        .collect();
    failover::choose_start(&closed, now_ms)
}

/// The smallest wait until a target of the pool opens again, when every one is closed.
pub fn smallest_wait_ms(backends: &[Backend], route: &ModelRoute, now_ms: u64) -> Option<u64> {
    match start(backends, route, now_ms) {
        Start::AllClosed { retry_after_ms } => Some(retry_after_ms),
        Start::At(_) => None,
    }
}

/// The routing-header value for a request starting at target `from`.
pub fn route_key(backends: &[Backend], route: &ModelRoute, from: usize) -> String {
    failover::route_key(
        route
            .targets
            .iter()
            .skip(from)
            .filter_map(|t| backends.get(t.backend).map(|b| b.name.as_str())),
    )
}

/// Where the listener filter sends a request.
pub struct Choice<'c> {
    /// The plan of the first target the request goes to (for admission, properties and, when
    /// it is the only one left, the rewrite).
    pub plan: RoutePlan<'c>,
    /// `Some(routing-header value)`: more than one target is left, the request goes to the
    /// pool's aggregate cluster and the upstream filter rewrites each attempt.
    pub pool_key: Option<String>,
    /// The model is served by a pool (the listener filter records the health of a target it
    /// sends a request to directly).
    pub is_pool: bool,
}

/// Chooses the start of a request for `model`: its only target, or the first open target of
/// its pool; 429 when every target of the pool is closed.
pub fn choose<'c>(
    config: &'c Config,
    op: Operation,
    model: &str,
    now_ms: u64,
) -> Result<Choice<'c>, FilterError> {
    let route = routing::lookup(config, model)?;
    if !route.is_pool() {
        return Ok(Choice {
            plan: routing::plan(config, op, model)?,
            pool_key: None,
            is_pool: false,
        });
    }
    let from = match start(&config.backends, route, now_ms) {
        Start::At(from) => from,
        Start::AllClosed { retry_after_ms } => {
            let secs = failover::retry_after_secs(retry_after_ms);
            return Err(all_throttled(&route.name, secs));
        }
    };
    let plan = routing::plan_target(config, op, model, from)?;
    let pool_key =
        (from + 1 < route.targets.len()).then(|| route_key(&config.backends, route, from));
    Ok(Choice {
        plan,
        pool_key,
        is_pool: true,
    })
}

/// The answer when every target of a model's pool is throttled or ejected.
pub fn all_throttled(model: &str, retry_after_s: u64) -> FilterError {
    FilterError::new(
        429,
        "rate_limit_error",
        "all_targets_throttled",
        format!(
            "every Azure deployment serving `{model}` is throttled or unavailable; retry after \
             {retry_after_s} seconds"
        ),
    )
    .with_retry_after(retry_after_s)
}

/// Records what an attempt's answer says about its target (CAS, so concurrent workers never
/// lose a 429's horizon).
pub fn record(backend: &str, deployment: &str, outcome: Outcome, now_ms: u64, p: &FailoverPolicy) {
    let key = failover::health_key(backend, deployment);
    // Healthy answers from a healthy target change nothing: spare the write.
    shared::update(&key, &TargetHealth::default().encode(), |bytes| {
        let before = TargetHealth::decode(bytes);
        let after = before.record(outcome, now_ms, p);
        (after != before).then(|| after.encode())
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handover_round_trip() {
        let h = Handover {
            model: "gpt-4o".into(),
            op: Operation::ChatCompletions,
        };
        assert_eq!(Handover::decode(&h.encode()), Some(h));
        assert_eq!(Handover::decode(b"gpt-4o"), None);
        assert_eq!(Handover::decode(b"gpt-4o\nnot-an-op"), None);
        assert_eq!(Handover::decode(b"\xff\nchat/completions"), None);
    }
}
