//! The dynamic module's event hooks: Envoy calls these, and each drives the proxy-wasm
//! dispatcher of `src/host` the way Envoy's Wasm host drives the `.wasm` (context creation,
//! `proxy_on_request_headers`, ..., `proxy_on_log`, `proxy_on_done`, `proxy_on_delete`).
//!
//! Every hook runs the filter inside `catch_unwind`: a panic never crosses the ABI (it would
//! abort Envoy); the stream it happened in is answered 500 and is left alone from then on.
//! The native build is compiled with `panic = "unwind"` (profile `native`) for this.
// The hooks are Envoy's entry points: their pointer arguments are Envoy's (or the module's own
// boxes handed back), valid for the hook's duration as the ABI states; they cannot be `unsafe`
// for their caller.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

use super::abi::{
    self, EnvoyBuffer, FilterConfigEnvoyPtr, FilterConfigModulePtr, FilterEnvoyPtr,
    FilterModulePtr, ModuleBuffer, ModuleHttpHeader,
};
use super::host::{self, with, Deferred};
use super::ticker;
use crate::config::{resolve_secrets, Config};
use crate::failover::Role;
use crate::host::root::FilterRoot;
use proxy_wasm::types::StreamType;
use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::c_char;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

// The proxy-wasm SDK's exports (src/host's dispatcher), called in process.
extern "C" {
    fn proxy_on_context_create(context_id: u32, root_context_id: u32);
    fn proxy_on_vm_start(context_id: u32, vm_configuration_size: usize) -> bool;
    fn proxy_on_configure(context_id: u32, plugin_configuration_size: usize) -> bool;
    fn proxy_on_tick(context_id: u32);
    fn proxy_on_http_call_response(
        context_id: u32,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        num_trailers: usize,
    );
}

/// One filter configuration (one `filter_config` in Envoy's config).
pub struct ModuleConfig {
    pub(super) id: u64,
    plugin: Vec<u8>,
    /// Its scheduler (main thread), as an address: root callouts are sent from there.
    scheduler: usize,
}

/// One stream.
pub struct Filter {
    pub(super) config: (u64, usize),
    pub(super) context: u32,
    pub(super) root: u32,
    pub(super) envoy: FilterEnvoyPtr,
    /// A panic happened in this stream: it was answered 500 and gets no more calls.
    pub(super) poisoned: Cell<bool>,
    /// Registered with the ticker once the stream paused (`ticker`).
    pub(super) ticked: Cell<bool>,
}

thread_local! {
    /// This worker's root context per filter configuration (0: its configuration failed).
    static ROOTS: std::cell::RefCell<HashMap<u64, u32>> = std::cell::RefCell::new(HashMap::new());
}

fn next_context_id() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn log(level: u32, message: &str) {
    unsafe { abi::envoy_dynamic_module_callback_log(level, ModuleBuffer::of(message.as_bytes())) }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    let level = (0..=5u32)
        .find(|l| unsafe { abi::envoy_dynamic_module_callback_log_enabled(*l) })
        .unwrap_or(6);
    host::set_log_level(level);
    let sdk_level = match level {
        0 => proxy_wasm::types::LogLevel::Trace,
        1 => proxy_wasm::types::LogLevel::Debug,
        2 => proxy_wasm::types::LogLevel::Info,
        3 => proxy_wasm::types::LogLevel::Warn,
        4 => proxy_wasm::types::LogLevel::Error,
        _ => proxy_wasm::types::LogLevel::Critical,
    };
    // Once, on the main thread: installs the SDK's logger (the `log` crate's) and its panic
    // hook, which logs a panic's message before `catch_unwind` below answers the stream.
    let _ = catch_unwind(|| proxy_wasm::set_log_level(sdk_level));
    abi::ABI_VERSION.as_ptr().cast::<c_char>()
}

/// What the Wasm build refuses at load (`FilterRoot::on_configure`), refused here on the main
/// thread so that Envoy rejects the configuration, plus what the native host cannot do yet.
fn validate(bytes: &[u8]) -> Result<(), String> {
    let config = Config::parse(bytes).map_err(|e| e.to_string())?;
    resolve_secrets(&config, |k| std::env::var(k).ok()).map_err(|e| e.to_string())?;
    if let Some(g) = &config.guardrails {
        g.resolve_key(|k| std::env::var(k).ok())
            .map_err(|e| e.to_string())?;
    }
    if config.rate_limits.global.is_some() {
        return Err(
            "rate_limits.global: the native build cannot call the rate limit service \
                    (the dynamic module ABI has no gRPC callout); use the Wasm build for \
                    global budgets"
                .to_string(),
        );
    }
    if config.role == Role::Upstream {
        return Err(
            "role: \"upstream\" (failover pools) needs the Wasm build: the native \
                    build runs as the listener's HTTP filter only"
                .to_string(),
        );
    }
    Ok(())
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy: FilterConfigEnvoyPtr,
    _name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> FilterConfigModulePtr {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let plugin = unsafe { config.bytes() }.to_vec();
    match catch_unwind(|| validate(&plugin)) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            log(4, &format!("azure-llm-filter: {e}"));
            return std::ptr::null();
        }
        Err(_) => {
            log(4, "azure-llm-filter: the configuration check panicked");
            return std::ptr::null();
        }
    }
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    // Envoy refuses stat definitions once this hook has returned (`native::metrics`).
    if let Err(e) = unsafe { super::metrics::define_all(id, config_envoy) } {
        log(4, &format!("azure-llm-filter: {e}"));
        return std::ptr::null();
    }
    let scheduler = unsafe {
        abi::envoy_dynamic_module_callback_http_filter_config_scheduler_new(config_envoy)
    };
    let config = Box::new(ModuleConfig {
        id,
        plugin,
        scheduler: scheduler as usize,
    });
    Box::into_raw(config).cast_const().cast()
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(ptr: FilterConfigModulePtr) {
    if !ptr.is_null() {
        // SAFETY: made by Box::into_raw in config_new; Envoy destroys it once.
        let config = unsafe { Box::from_raw(ptr.cast_mut().cast::<ModuleConfig>()) };
        super::metrics::forget(config.id);
        if config.scheduler != 0 {
            unsafe {
                abi::envoy_dynamic_module_callback_http_filter_config_scheduler_delete(
                    config.scheduler as abi::SchedulerPtr,
                )
            };
        }
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_new(
    _name: EnvoyBuffer,
    _config: EnvoyBuffer,
) -> *const std::ffi::c_void {
    std::ptr::null()
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_destroy(
    _ptr: *const std::ffi::c_void,
) {
}

/// This worker's root context for `config`, created (and configured) on its first stream.
fn root_for(config: &ModuleConfig, current: FilterEnvoyPtr) -> u32 {
    if let Some(root) = ROOTS.with(|r| r.borrow().get(&config.id).copied()) {
        return root;
    }
    let root = next_context_id();
    proxy_wasm::set_root_context(|id| -> Box<dyn proxy_wasm::traits::RootContext> {
        Box::new(FilterRoot::new(id))
    });
    let prev = with(|w| {
        w.plugin_config = config.plugin.clone();
        w.effective = root;
        w.config = Some((config.id, config.scheduler));
        w.current.replace(current)
    });
    let ok = catch_unwind(|| unsafe {
        proxy_on_context_create(root, 0);
        proxy_on_vm_start(root, 0) && proxy_on_configure(root, config.plugin.len())
    })
    .unwrap_or(false);
    with(|w| w.current = prev);
    let root = if ok { root } else { 0 };
    ROOTS.with(|r| r.borrow_mut().insert(config.id, root));
    root
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: FilterConfigModulePtr,
    envoy: FilterEnvoyPtr,
) -> FilterModulePtr {
    if config.is_null() {
        return std::ptr::null();
    }
    // SAFETY: Envoy hands back the pointer config_new returned, alive until config_destroy.
    let config = unsafe { &*config.cast::<ModuleConfig>() };
    let root = root_for(config, envoy);
    if root == 0 {
        return std::ptr::null();
    }
    let context = next_context_id();
    with(|w| {
        w.streams.insert(
            context,
            host::StreamEntry {
                envoy,
                in_request_body: false,
                in_response_body: false,
            },
        )
    });
    let filter = Box::new(Filter {
        config: (config.id, config.scheduler),
        context,
        root,
        envoy,
        poisoned: Cell::new(false),
        ticked: Cell::new(false),
    });
    run(&filter, (), || unsafe {
        proxy_on_context_create(context, root)
    });
    Box::into_raw(filter).cast_const().cast()
}

/// SAFETY: `ptr` is a pointer filter_new returned and destroy has not freed yet.
pub(super) unsafe fn filter<'a>(ptr: FilterModulePtr) -> Option<&'a Filter> {
    ptr.cast::<Filter>().as_ref()
}

/// Runs `f` (a dispatcher call for `filter`'s context) as Envoy's Wasm host runs a VM call:
/// the context effective, the root's tick first when it is due, a panic turned into a 500,
/// and the stream changes the call asked for done once the outermost hook is over.
pub(super) fn run<R>(filter: &Filter, stopped: R, f: impl FnOnce() -> R) -> R {
    if filter.poisoned.get() {
        return stopped;
    }
    let (prev, depth) = with(|w| {
        w.depth += 1;
        w.config = Some(filter.config);
        (w.current.replace(filter.envoy), w.depth)
    });
    if depth == 1 {
        deliver_inbox();
        tick_if_due(filter.root);
    }
    with(|w| w.effective = filter.context);
    let result = catch_unwind(AssertUnwindSafe(f));
    let out = match result {
        Ok(r) => r,
        Err(_) => {
            filter.poisoned.set(true);
            with(|w| {
                w.deferred.push(Deferred::Respond {
                    context: filter.context,
                    status: 500,
                    headers: vec![(b"content-type".to_vec(), b"application/json".to_vec())],
                    body: br#"{"error":{"message":"azure-llm-filter: internal error","type":"server_error","code":"internal_error"}}"#.to_vec(),
                    details: b"azure_llm_filter_panic".to_vec(),
                })
            });
            stopped
        }
    };
    let depth = with(|w| {
        w.depth -= 1;
        w.current = prev;
        w.depth
    });
    if depth == 0 {
        flush_deferred();
        ticker::publish(with(|w| w.next_tick_ms));
    }
    out
}

/// A stream that paused waits for the root's tick (a token, a body deadline): the ticker
/// wakes this worker through the stream's scheduler.
pub(super) fn paused(f: &Filter) {
    if !f.ticked.replace(true) {
        // SAFETY: the stream's own pointer, during one of its hooks.
        unsafe { ticker::register(f.context, f.envoy) };
    }
}

fn tick_if_due(root: u32) {
    let now = host::now_ms();
    let due = with(|w| {
        if now >= w.next_tick_ms && w.tick_period_ms > 0 {
            w.next_tick_ms = now.saturating_add(w.tick_period_ms);
            w.effective = root;
            true
        } else {
            false
        }
    });
    if due {
        let _ = catch_unwind(|| unsafe { proxy_on_tick(root) });
    }
}

/// The answers to this worker's root callouts (`native::callouts`).
fn deliver_inbox() {
    for answer in super::callouts::take_inbox(ticker::worker_id()) {
        let (owner, token) = (answer.owner, answer.token);
        let (n, size) = (answer.headers.len(), answer.body.len());
        with(|w| {
            w.call_headers = answer.headers;
            w.call_body = answer.body;
            w.effective = owner;
        });
        let _ = catch_unwind(|| unsafe { proxy_on_http_call_response(owner, token, n, size, 0) });
        with(|w| {
            w.call_headers.clear();
            w.call_body.clear();
        });
    }
}

/// Resumes and local replies, in the order they were asked for; each may run this filter's
/// hooks again (which defer their own), so the queue is drained until empty.
fn flush_deferred() {
    loop {
        let batch = with(|w| std::mem::take(&mut w.deferred));
        if batch.is_empty() {
            return;
        }
        for action in batch {
            match action {
                Deferred::Continue(context, stream) => {
                    let Some(envoy) = with(|w| w.streams.get(&context).map(|s| s.envoy)) else {
                        continue;
                    };
                    unsafe {
                        match stream {
                            StreamType::HttpRequest => {
                                abi::envoy_dynamic_module_callback_http_filter_continue_decoding(
                                    envoy,
                                )
                            }
                            StreamType::HttpResponse => {
                                abi::envoy_dynamic_module_callback_http_filter_continue_encoding(
                                    envoy,
                                )
                            }
                            _ => {}
                        }
                    }
                }
                Deferred::Respond {
                    context,
                    status,
                    headers,
                    body,
                    details,
                } => {
                    let Some(envoy) = with(|w| w.streams.get(&context).map(|s| s.envoy)) else {
                        continue;
                    };
                    let mut raw: Vec<ModuleHttpHeader> = headers
                        .iter()
                        .map(|(k, v)| ModuleHttpHeader::of(k, v))
                        .collect();
                    unsafe {
                        abi::envoy_dynamic_module_callback_http_send_response(
                            envoy,
                            status,
                            raw.as_mut_ptr(),
                            raw.len(),
                            ModuleBuffer::of(&body),
                            ModuleBuffer::of(&details),
                        );
                    }
                }
            }
        }
    }
}
