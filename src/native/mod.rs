//! The native build (cargo feature `native`): the same filter as an Envoy dynamic module, a
//! shared object Envoy loads in process (`envoy.extensions.filters.http.dynamic_modules`), no
//! Wasm VM.
//!
//! - `abi`: hand-written bindings for the dynamic module ABI of Envoy 1.40.
//! - `module`: the event hooks Envoy calls; each drives `src/host`'s proxy-wasm dispatcher.
//! - `host`: the proxy-wasm host functions `src/host` calls, implemented on Envoy's callbacks.
//! - `calls`: the other host functions (shared data, resume, local replies, callouts).
//! - `callouts`: the root contexts' callouts, sent by the main thread, answered to the worker.
//! - `stream`: the per-stream event hooks; `unused`: the hooks the filter has no use for.
//! - `metrics`: the filter's stats, defined as labelled families when the configuration loads.
//! - `shared`: Envoy's shared data as process memory, shared by the worker threads.
//! - `ticker`: the root contexts' ticks: a thread that wakes a worker through a paused stream.

pub mod abi;
pub mod callouts;
pub mod calls;
pub mod host;
pub mod metrics;
pub mod module;
pub mod shared;
pub mod stream;
pub mod ticker;
pub mod unused;
