//! The root contexts' ticks. Under Envoy's Wasm host each worker VM has a timer; the dynamic
//! module ABI has no worker timer, only a per-stream scheduler that runs an event on the
//! stream's worker thread and can be committed from any thread. So one thread of the module
//! watches when each worker's root wants its tick and wakes that worker through one of its
//! paused streams (a request waiting for a token, a body, a callout), whose scheduled event
//! runs the tick (`module::run`). A worker with no paused stream needs no timer: nothing waits
//! on it, and its next event runs the tick when due.
//!
//! Every scheduler is used and deleted under the registry's lock, so the thread never commits
//! to a scheduler whose stream is gone.

use super::abi::{self, FilterEnvoyPtr};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

struct Paused {
    worker: u32,
    context: u32,
    /// `envoy_dynamic_module_type_http_filter_scheduler_module_ptr`, as an address (only
    /// ever passed back to Envoy, which allows commits from any thread).
    scheduler: usize,
}

#[derive(Default)]
struct Registry {
    paused: Vec<Paused>,
    /// When each worker's root wants its next tick (ms since the epoch); absent or
    /// `u64::MAX`: not wanted, or a wake-up is already on its way.
    due: HashMap<u32, u64>,
}

fn registry() -> &'static Mutex<Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let _ = std::thread::Builder::new()
            .name("azure-llm-tick".into())
            .spawn(run);
        Mutex::new(Registry::default())
    })
}

fn lock() -> std::sync::MutexGuard<'static, Registry> {
    registry().lock().unwrap_or_else(|p| p.into_inner())
}

thread_local! {
    static WORKER_ID: u32 = {
        static NEXT: AtomicU32 = AtomicU32::new(1);
        NEXT.fetch_add(1, Ordering::Relaxed)
    };
}

thread_local! {
    static PUBLISHED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

pub fn worker_id() -> u32 {
    WORKER_ID.with(|id| *id)
}

/// This worker's next tick time (after each event, from the root's tick period).
pub fn publish(next_tick_ms: u64) {
    // The hot path: most events leave the tick time as it was; only a change takes the lock.
    if PUBLISHED.with(|p| p.replace(next_tick_ms)) == next_tick_ms {
        return;
    }
    let worker = worker_id();
    let mut r = lock();
    let current = r.due.get(&worker).copied();
    // A wake-up already committed stays pending until the worker ran it (`woken`).
    if current != Some(u64::MAX) || next_tick_ms == u64::MAX {
        r.due.insert(worker, next_tick_ms);
    }
}

/// The worker runs a wake-up: the next one may be committed after its next `publish`.
pub fn woken() {
    let worker = worker_id();
    PUBLISHED.with(|p| p.set(0));
    lock().due.remove(&worker);
}

/// A callout's answer is in `worker`'s inbox: wake it now if a stream of it is paused (else
/// its next event reads the inbox).
pub fn wake(worker: u32) {
    let r = lock();
    if let Some(p) = r.paused.iter().find(|p| p.worker == worker) {
        unsafe {
            abi::envoy_dynamic_module_callback_http_filter_scheduler_commit(
                p.scheduler as abi::SchedulerPtr,
                2,
            )
        };
    }
}

/// A stream that paused: its scheduler can wake this worker.
///
/// # Safety
/// `envoy` is the stream's filter pointer, from one of its hooks.
pub unsafe fn register(context: u32, envoy: FilterEnvoyPtr) {
    let scheduler = unsafe { abi::envoy_dynamic_module_callback_http_filter_scheduler_new(envoy) };
    if scheduler.is_null() {
        return;
    }
    let worker = worker_id();
    lock().paused.push(Paused {
        worker,
        context,
        scheduler: scheduler as usize,
    });
}

/// The stream is being destroyed: its scheduler is deleted before anyone can use it again.
pub fn unregister(context: u32) {
    let mut r = lock();
    let worker = worker_id();
    if let Some(at) = r
        .paused
        .iter()
        .position(|p| p.context == context && p.worker == worker)
    {
        let p = r.paused.swap_remove(at);
        unsafe {
            abi::envoy_dynamic_module_callback_http_filter_scheduler_delete(
                p.scheduler as abi::SchedulerPtr,
            )
        };
        // A wake-up committed to this stream never runs (commits to a destroyed filter are
        // dropped): let another paused stream carry it.
        if r.due.get(&worker) == Some(&u64::MAX) {
            r.due.insert(worker, 0);
        }
    }
}

fn run() {
    loop {
        let now = super::host::now_ms();
        let mut sleep_ms = 50;
        {
            let mut r = lock();
            let due: Vec<(u32, u64)> = r.due.iter().map(|(w, t)| (*w, *t)).collect();
            for (worker, at) in due {
                if at == u64::MAX {
                    continue;
                }
                if at > now {
                    sleep_ms = sleep_ms.min(at - now);
                    continue;
                }
                let Some(p) = r.paused.iter().find(|p| p.worker == worker) else {
                    continue;
                };
                unsafe {
                    abi::envoy_dynamic_module_callback_http_filter_scheduler_commit(
                        p.scheduler as abi::SchedulerPtr,
                        1,
                    )
                };
                r.due.insert(worker, u64::MAX);
            }
        }
        std::thread::sleep(Duration::from_millis(sleep_ms.max(1)));
    }
}
