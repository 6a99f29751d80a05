//! The root contexts' callouts (Entra tokens, JWKS): made by the main thread, answered to the
//! worker whose root asked.
//!
//! Under Envoy's Wasm host a root context's callout belongs to the VM and outlives every
//! request. The ABI's per-stream callout dies with its stream (a caller refused at once for
//! want of keys would cancel the JWKS fetch it started), and its configuration-level callout
//! belongs to the filter configuration, which lives on the main thread (its bookkeeping is not
//! made for several threads). So a worker's root queues the call here and commits an event to
//! the configuration's scheduler; the main thread sends it; its answer goes to the worker's
//! inbox, and the worker is woken through one of its paused streams (`ticker::wake`) or reads
//! the inbox at its next event. Single flight across workers is the token slot's lease
//! (shared data), as in the Wasm build.

use super::abi::{self, EnvoyBuffer, EnvoyHttpHeader, FilterConfigEnvoyPtr, ModuleBuffer};
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

struct Outgoing {
    worker: u32,
    owner: u32,
    token: u32,
    cluster: Vec<u8>,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    body: Vec<u8>,
    timeout_ms: u64,
}

/// An answer for a worker's root: no headers and no body is a failed call (what Envoy's Wasm
/// host delivers for a reset or timeout).
pub struct Answer {
    pub owner: u32,
    pub token: u32,
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub body: Vec<u8>,
}

#[derive(Default)]
struct State {
    /// Per filter configuration (its id), the calls the main thread has yet to send.
    outgoing: HashMap<u64, Vec<Outgoing>>,
    /// (configuration id, Envoy's callout id) → (worker, owner, token).
    inflight: HashMap<(u64, u64), (u32, u32, u32)>,
    inbox: HashMap<u32, Vec<Answer>>,
}

fn state() -> std::sync::MutexGuard<'static, State> {
    static STATE: OnceLock<Mutex<State>> = OnceLock::new();
    STATE
        .get_or_init(|| Mutex::new(State::default()))
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// A worker's root asks for a call; `scheduler` is the configuration's (main thread).
#[allow(clippy::too_many_arguments)]
pub fn queue(
    config_id: u64,
    scheduler: usize,
    worker: u32,
    owner: u32,
    token: u32,
    cluster: &[u8],
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    body: &[u8],
    timeout_ms: u64,
) {
    state()
        .outgoing
        .entry(config_id)
        .or_default()
        .push(Outgoing {
            worker,
            owner,
            token,
            cluster: cluster.to_vec(),
            headers,
            body: body.to_vec(),
            timeout_ms,
        });
    unsafe {
        abi::envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
            scheduler as abi::SchedulerPtr,
            0,
        )
    };
}

/// Main thread: sends the queued calls of one configuration.
///
/// # Safety
/// `config_envoy` is Envoy's pointer to the configuration, as its hooks pass it.
pub unsafe fn send_queued(config_id: u64, config_envoy: FilterConfigEnvoyPtr) {
    let calls = state().outgoing.remove(&config_id).unwrap_or_default();
    for call in calls {
        let mut raw: Vec<abi::ModuleHttpHeader> = call
            .headers
            .iter()
            .map(|(k, v)| abi::ModuleHttpHeader::of(k, v))
            .collect();
        let mut callout_id = 0u64;
        let result = unsafe {
            abi::envoy_dynamic_module_callback_http_filter_config_http_callout(
                config_envoy,
                &mut callout_id,
                ModuleBuffer::of(&call.cluster),
                raw.as_mut_ptr(),
                raw.len(),
                ModuleBuffer::of(&call.body),
                call.timeout_ms,
            )
        };
        if result == abi::CALLOUT_INIT_SUCCESS {
            state().inflight.insert(
                (config_id, callout_id),
                (call.worker, call.owner, call.token),
            );
        } else {
            answer(call.worker, call.owner, call.token, Vec::new(), Vec::new());
        }
    }
}

/// Main thread: an answer arrived.
///
/// # Safety
/// `headers` / `body_chunks` are Envoy's arrays of the given sizes (or null), valid during
/// the hook that passes them.
pub unsafe fn arrived(
    config_id: u64,
    callout_id: u64,
    success: bool,
    headers: *const EnvoyHttpHeader,
    headers_size: usize,
    body_chunks: *const EnvoyBuffer,
    body_chunks_size: usize,
) {
    let Some((worker, owner, token)) = state().inflight.remove(&(config_id, callout_id)) else {
        return;
    };
    let mut pairs = Vec::new();
    let mut body = Vec::new();
    if success {
        if !headers.is_null() {
            for h in std::slice::from_raw_parts(headers, headers_size) {
                let k = EnvoyBuffer {
                    ptr: h.key_ptr,
                    length: h.key_length,
                }
                .bytes();
                let v = EnvoyBuffer {
                    ptr: h.value_ptr,
                    length: h.value_length,
                }
                .bytes();
                pairs.push((k.to_vec(), v.to_vec()));
            }
        }
        if !body_chunks.is_null() {
            for c in std::slice::from_raw_parts(body_chunks, body_chunks_size) {
                body.extend_from_slice(c.bytes());
            }
        }
    }
    answer(worker, owner, token, pairs, body);
}

fn answer(worker: u32, owner: u32, token: u32, headers: Vec<(Vec<u8>, Vec<u8>)>, body: Vec<u8>) {
    state().inbox.entry(worker).or_default().push(Answer {
        owner,
        token,
        headers,
        body,
    });
    super::ticker::wake(worker);
}

/// The answers waiting for `worker`.
pub fn take_inbox(worker: u32) -> Vec<Answer> {
    let mut s = state();
    if s.inbox.is_empty() {
        return Vec::new();
    }
    s.inbox.remove(&worker).unwrap_or_default()
}
