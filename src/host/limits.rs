//! Rate-limit counters in Envoy shared data: a request's estimate is reserved in every counter
//! that applies before it goes upstream (all or none), and replaced by what it cost when it
//! ends. CAS retry loops keep counts exact across workers; the arithmetic is in
//! crate::ratelimit.

use crate::allowance::{self, Completions};
use crate::ratelimit::{self, Counter, Held, Need, Refusal, Slot, Standing, Unit};
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

/// Applies `change` to a counter's slot under CAS. `change` returns None to leave the slot as
/// it is (the update does not fit); the result is the slot written, or None.
fn update(counter: &Counter, change: impl Fn(&Slot) -> Option<Slot>) -> Option<Slot> {
    let key = counter.key();
    for _ in 0..CAS_ATTEMPTS {
        let (slot, cas) = read(&key);
        if cas.is_none() {
            // A missing slot has no CAS: create it empty with create-if-absent semantics
            // (see CREATE_ONLY_CAS), then update under CAS like any other.
            let _ = hostcalls::set_shared_data(
                &key,
                Some(&Slot::default().encode()),
                Some(super::shared::CREATE_ONLY_CAS),
            );
            continue;
        }
        let next = change(&slot)?;
        match hostcalls::set_shared_data(&key, Some(&next.encode()), cas) {
            Ok(()) => return Some(next),
            Err(Status::CasMismatch) => continue,
            Err(e) => {
                log::error!("azure-llm-filter: rate-limit counter write failed: {e:?}");
                return Some(next);
            }
        }
    }
    log::warn!("azure-llm-filter: rate-limit counter stayed contended");
    None
}

/// What an admitted request holds in one counter, and its estimate there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    pub counter: Counter,
    pub held: Held,
    /// The request's estimate under this counter's policy (what the fail-safe charges).
    pub estimate: u64,
}

/// An admitted request: what it holds, and the counters' standings including it.
pub struct Admitted {
    pub taken: Vec<Taken>,
    pub standings: Vec<Standing>,
}

/// A refused request: why, and the counters' standings without it.
pub struct Refused {
    pub refusal: Refusal,
    pub standings: Vec<Standing>,
}

/// Takes `needs[i]` from `counters[i]` for every i, or nothing: a counter it does not fit in
/// gives the refusal and gives back what the earlier ones took. On success, the counters'
/// standings including this request (for `x-ratelimit-*`).
pub fn reserve(
    counters: &[Counter],
    needs: &[Need],
    estimates: &[u64],
    now_s: u64,
) -> Result<Admitted, Refused> {
    let mut taken: Vec<Taken> = Vec::with_capacity(counters.len());
    let mut standings = Vec::with_capacity(counters.len());
    for ((c, need), estimate) in counters.iter().zip(needs).zip(estimates) {
        match update(c, |slot| slot.take(c.limit, now_s, *need)) {
            Some(slot) => {
                standings.push(standing(c, slot.used, now_s));
                taken.push(Taken {
                    counter: c.clone(),
                    held: Held {
                        window_start: slot.window_start,
                        taken: need.take,
                    },
                    estimate: *estimate,
                });
            }
            None => {
                // Give back what this request took, then say why it is refused (from the
                // standings without it: the longest wait of the counters it does not fit).
                give_back(&taken, now_s);
                let now: Vec<Standing> = counters
                    .iter()
                    .map(|c| standing(c, read(&c.key()).0.used_in(c.limit.window, now_s), now_s))
                    .collect();
                let refusal = ratelimit::refusal(&now, needs, now_s)
                    .unwrap_or_else(|| ratelimit::refusal_of(c.limit, now_s));
                return Err(Refused {
                    refusal,
                    standings: now,
                });
            }
        }
    }
    Ok(Admitted { taken, standings })
}

fn standing(c: &Counter, used: u64, now_s: u64) -> Standing {
    Standing {
        limit: c.limit,
        used,
        reset_at_s: c.limit.window.bounds(now_s).1,
    }
}

/// Replaces each token or cost reservation by what the request cost there (`cost(taken)`);
/// request counters keep their count.
pub fn settle(taken: &[Taken], now_s: u64, cost: impl Fn(&Taken) -> u64) {
    let tokens: Vec<Taken> = taken
        .iter()
        .filter(|t| t.counter.limit.unit != Unit::Requests)
        .cloned()
        .collect();
    replace(&tokens, now_s, cost);
}

/// Gives back every token and cost reservation (nothing was spent).
pub fn release(taken: &[Taken], now_s: u64) {
    settle(taken, now_s, |_| 0);
}

/// Gives back everything a refused request took (its request counts too).
fn give_back(taken: &[Taken], now_s: u64) {
    replace(taken, now_s, |_| 0);
}

fn replace(taken: &[Taken], now_s: u64, cost: impl Fn(&Taken) -> u64) {
    for t in taken {
        let actual = cost(t);
        if actual == t.held.taken {
            continue;
        }
        update(&t.counter, |slot| {
            Some(slot.settle(t.counter.limit.window, now_s, t.held, actual))
        });
    }
}

/// The learned completions of `workload` with `model` (src/allowance.rs), if any.
pub fn learned(workload: &str, model: &str) -> Option<Completions> {
    match super::shared::read(&allowance::key(workload, model)) {
        (Some(bytes), _) => Some(Completions::decode(&bytes)).filter(|c| !c.is_empty()),
        _ => None,
    }
}

/// Adds an answer's completion tokens to what `workload` with `model` has taught.
pub fn learn(workload: &str, model: &str, completion_tokens: u64) {
    super::shared::update(&allowance::key(workload, model), b"", |bytes| {
        let mut c = Completions::decode(bytes);
        c.record(completion_tokens);
        Some(c.encode())
    });
}
