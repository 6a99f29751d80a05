//! Rate-limit counters in Envoy shared data: checked before a request goes upstream, charged
//! with the real usage after the response. CAS retry loops keep counts exact across workers.

use crate::ratelimit::{Counter, Slot, Standing, Unit};
use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;

const CAS_ATTEMPTS: usize = 64;

fn read(key: &str) -> (Slot, Option<u32>) {
    match hostcalls::get_shared_data(key) {
        Ok((Some(bytes), cas)) => (Slot::decode(&bytes), cas),
        Ok((None, cas)) => (Slot::default(), cas),
        Err(_) => (Slot::default(), None),
    }
}

/// Adds `amount` to a counter and returns its new used figure.
fn add(counter: &Counter, now_s: u64, amount: u64) -> u64 {
    let key = counter.key();
    let window = counter.limit.window;
    for _ in 0..CAS_ATTEMPTS {
        let (slot, cas) = read(&key);
        if cas.is_none() {
            // A missing slot has no CAS: create it empty with create-if-absent semantics
            // (see CREATE_ONLY_CAS), then add under CAS like any other update.
            let _ = hostcalls::set_shared_data(
                &key,
                Some(&Slot::default().encode()),
                Some(super::shared::CREATE_ONLY_CAS),
            );
            continue;
        }
        let next = slot.add(window, now_s, amount);
        match hostcalls::set_shared_data(&key, Some(&next.encode()), cas) {
            Ok(()) => return next.used,
            Err(Status::CasMismatch) => continue,
            Err(e) => {
                log::error!("azure-llm-filter: rate-limit counter write failed: {e:?}");
                return next.used;
            }
        }
    }
    log::warn!("azure-llm-filter: rate-limit counter stayed contended");
    read(&key).0.used_in(window, now_s)
}

/// Reads every counter of a request (counting the request itself in request counters).
pub fn standings(counters: &[Counter], now_s: u64) -> Vec<Standing> {
    counters
        .iter()
        .map(|c| {
            let used = match c.limit.unit {
                Unit::Requests => add(c, now_s, 1),
                Unit::Tokens => read(&c.key()).0.used_in(c.limit.window, now_s),
            };
            Standing {
                limit: c.limit,
                used,
                reset_at_s: c.limit.window.bounds(now_s).1,
            }
        })
        .collect()
}

/// Charges tokens to every token counter of a request.
pub fn charge_tokens(counters: &[Counter], now_s: u64, tokens: u64) {
    if tokens == 0 {
        return;
    }
    for c in counters.iter().filter(|c| c.limit.unit == Unit::Tokens) {
        add(c, now_s, tokens);
    }
}
