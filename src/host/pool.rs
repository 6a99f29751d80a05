//! Failover pools in the host: the health of each target in Envoy shared data (read by the
//! listener filter to choose which targets a request tries, written by the upstream filter
//! after each attempt), and the hand-over from the listener filter to the upstream filter.

use super::shared;
use super::tokens;
use super::worker::WorkerState;
use crate::config::Config;
use crate::errors::FilterError;
use crate::failover::order::{self, Rotation, Start, TargetState};
use crate::failover::{self, FailoverPolicy, Outcome, TargetHealth};
use crate::routing::config::{Backend, ModelRoute};
use crate::routing::{self, Operation, RoutePlan};

/// Filter-state key of the hand-over: what the upstream filter needs to rewrite an attempt.
/// Only filters can write filter state, so a caller cannot make one up.
pub const HANDOVER_PROPERTY: &str = "azure_llm_pool";
/// Filter-state key naming the target (its backend) of the latest attempt the upstream
/// filter rewrote (absent: the attempts went to the target the listener filter rewrote for).
pub const TARGET_PROPERTY: &str = "azure_llm_target";
/// Filter-state key listing the attempts (their numbers, `1,3`) that were sent to a target
/// and never answered (reset, timed out): Azure may bill them.
pub const LOST_PROPERTY: &str = "azure_llm_lost_attempts";

/// What the listener filter hands to the upstream filter of a pool's cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handover {
    /// The model's configured name.
    pub model: String,
    pub op: Operation,
    /// The target (index into the model's pool) the listener filter already rewrote the
    /// request for (`:authority`, `:path`, headers, body `model`, token): an attempt Envoy
    /// sends there needs nothing more. `None` in header routing mode when the body's `model`
    /// could not be rewritten.
    pub rewritten_for: Option<usize>,
    /// Targets (bit i: the pool's target i) with nothing stored for their health when the
    /// request started (never failed, or settled): a healthy answer of theirs has nothing to
    /// clear in shared data.
    pub clean: u8,
}

impl Handover {
    pub fn encode(&self) -> Vec<u8> {
        let first = self
            .rewritten_for
            .map_or_else(|| "-".to_string(), |i| i.to_string());
        format!(
            "{}\n{}\n{first}\n{}",
            self.model,
            self.op.suffix(),
            self.clean
        )
        .into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Option<Handover> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut parts = text.split('\n');
        let model = parts.next()?;
        let op = Operation::from_suffix(parts.next()?)?;
        let rewritten_for = match parts.next()? {
            "-" => None,
            i => Some(i.parse().ok()?),
        };
        let clean = parts.next()?.parse().ok()?;
        Some(Handover {
            model: model.to_string(),
            op,
            rewritten_for,
            clean,
        })
    }

    /// A healthy answer of the pool's target `index` would change nothing in shared data.
    pub fn is_clean(&self, index: usize) -> bool {
        index < 8 && self.clean & (1 << index) != 0
    }
}

/// The request's first target cannot get its token (on the current effective context: the
/// listener filter's request): the hand-over then names no target as rewritten for, so the
/// upstream filter handles the first attempt like any other (rewrites it, looks for its token
/// and goes on without it, its target's refusal becoming the 503 that Envoy's router retries
/// on the next target).
pub fn hand_over_without_token() {
    let Ok(Some(bytes)) = proxy_wasm::hostcalls::get_property(vec![HANDOVER_PROPERTY]) else {
        return;
    };
    let Some(mut h) = Handover::decode(&bytes) else {
        return;
    };
    h.rewritten_for = None;
    let _ = proxy_wasm::hostcalls::set_property(vec![HANDOVER_PROPERTY], Some(&h.encode()));
}

/// The shared-data key of the health of the pool's target `index`.
pub fn target_health_key(config: &Config, route: &ModelRoute, index: usize) -> Option<String> {
    let t = route.targets.get(index)?;
    let b = config.backends.get(t.backend)?;
    Some(failover::health_key(&b.name, &t.deployment))
}

/// The health of every target of `route`, in order; `None` for a target with nothing stored
/// (a missing key, or the empty value of a settled health: [`TargetHealth::next_stored`]).
fn healths(config: &Config, route: &ModelRoute) -> Vec<Option<TargetHealth>> {
    (0..route.targets.len())
        .map(|i| {
            target_health_key(config, route, i)
                .and_then(|k| shared::read(&k).0)
                .filter(|b| !b.is_empty())
                .map(|b| TargetHealth::decode(&b))
        })
        .collect()
}

/// The smallest wait until a target of the pool opens again, when every one is closed.
pub fn smallest_wait_ms(config: &Config, route: &ModelRoute, now_ms: u64) -> Option<u64> {
    let states: Vec<TargetState> = healths(config, route)
        .iter()
        .map(|h| TargetState {
            priority: 0,
            weight: 1,
            closed_until: h.as_ref().and_then(|h| h.closed_until(now_ms)),
            token_ok: true,
        })
        .collect();
    match order::choose(&states, now_ms, &mut Rotation::default()) {
        Start::AllClosed { retry_after_ms } => Some(retry_after_ms),
        Start::Try(_) => None,
    }
}

/// The routing-header value of a request trying `targets` (indices into the pool) in order.
fn route_key(backends: &[Backend], route: &ModelRoute, targets: &[usize]) -> String {
    order::route_key(
        targets
            .iter()
            .filter_map(|&i| route.targets.get(i))
            .filter_map(|t| backends.get(t.backend).map(|b| b.name.as_str())),
    )
}

/// Where the listener filter sends a request.
pub struct Choice<'c> {
    /// The plan of the first target the request goes to: the listener filter rewrites the
    /// request for it (and admits, names it in properties) as for a plain model.
    pub plan: RoutePlan<'c>,
    /// The pool index of that target.
    pub first: usize,
    /// `Some(routing-header value)`: more than one target to try, the request goes to the
    /// pool's aggregate cluster and the upstream filter rewrites the attempts Envoy sends to
    /// another target.
    pub pool_key: Option<String>,
    /// The model is served by a pool (the listener filter records the health of a target it
    /// sends a request to directly).
    pub is_pool: bool,
    /// See [`Handover::clean`].
    pub clean: u8,
}

/// Chooses where a request for `model` goes: its only target, or the order in which it
/// tries the targets of its pool (`crate::failover::order`); 429 when every target of the
/// pool is closed.
pub fn choose<'c>(
    config: &'c Config,
    state: &mut WorkerState,
    op: Operation,
    model: &str,
    now_ms: u64,
) -> Result<Choice<'c>, FilterError> {
    let route = routing::lookup(config, model)?;
    if !route.is_pool() {
        return Ok(Choice {
            plan: routing::plan(config, op, model)?,
            first: 0,
            pool_key: None,
            is_pool: false,
            clean: 0,
        });
    }
    let healths = healths(config, route);
    let mut clean = 0u8;
    let mut states = Vec::with_capacity(route.targets.len());
    for (i, (t, h)) in route.targets.iter().zip(&healths).enumerate() {
        if h.is_none() && i < 8 {
            clean |= 1 << i;
        }
        let h = h.unwrap_or_default();
        let credential = config.backends.get(t.backend).map(|b| b.credential);
        states.push(TargetState {
            priority: t.priority,
            weight: t.weight,
            closed_until: h.closed_until(now_ms),
            token_ok: credential.is_some_and(|c| tokens::credential_ok(state, c, now_ms)),
        });
    }
    let start = if route.has_weights() {
        let rotation = state.pool_rotations.entry(route.name.clone()).or_default();
        order::choose(&states, now_ms, rotation)
    } else {
        order::choose(&states, now_ms, &mut Rotation::default())
    };
    let targets = match start {
        Start::Try(targets) => targets,
        Start::AllClosed { retry_after_ms } => {
            let secs = failover::retry_after_secs(retry_after_ms);
            return Err(all_throttled(&route.name, secs));
        }
    };
    let first = targets.first().copied().unwrap_or(0);
    let plan = routing::plan_target(config, op, model, first)?;
    let pool_key = (targets.len() > 1).then(|| route_key(&config.backends, route, &targets));
    Ok(Choice {
        plan,
        first,
        pool_key,
        is_pool: true,
        clean,
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

/// Records what an attempt says about its target (CAS, so concurrent workers never lose a
/// 429's horizon or a failure); a settled health is stored empty (see
/// [`TargetHealth::next_stored`]).
pub fn record(key: &str, outcome: Outcome, now_ms: u64, p: &FailoverPolicy) {
    shared::update(key, b"", |stored| {
        TargetHealth::next_stored(stored, outcome, now_ms, p)
    });
}

/// The attempt numbers in a [`LOST_PROPERTY`] value.
pub fn lost_attempts(value: &[u8]) -> impl Iterator<Item = u64> + '_ {
    value
        .split(|b| *b == b',')
        .filter_map(|n| std::str::from_utf8(n).ok()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handover_round_trip() {
        let h = Handover {
            model: "gpt-4o".into(),
            op: Operation::ChatCompletions,
            rewritten_for: Some(1),
            clean: 0b101,
        };
        assert_eq!(Handover::decode(&h.encode()), Some(h.clone()));
        assert!(h.is_clean(0) && !h.is_clean(1) && h.is_clean(2) && !h.is_clean(9));
        let none = Handover {
            rewritten_for: None,
            ..h
        };
        assert_eq!(Handover::decode(&none.encode()), Some(none));
        assert_eq!(Handover::decode(b"gpt-4o"), None);
        assert_eq!(Handover::decode(b"gpt-4o\nnot-an-op\n-\n0"), None);
        assert_eq!(Handover::decode(b"gpt-4o\nchat/completions\nx\n0"), None);
        assert_eq!(Handover::decode(b"gpt-4o\nchat/completions\n0\n999"), None);
        assert_eq!(Handover::decode(b"\xff\nchat/completions\n0\n0"), None);
    }

    #[test]
    fn lost_attempt_numbers() {
        assert_eq!(lost_attempts(b"1,3").collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(lost_attempts(b"").count(), 0);
        assert_eq!(lost_attempts(b"x,2").collect::<Vec<_>>(), vec![2]);
    }
}
