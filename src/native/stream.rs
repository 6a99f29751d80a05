//! The per-stream event hooks: each runs one proxy-wasm callback of the stream's HTTP context
//! through `module::run` (panic barrier, root tick, deferred resumes and replies).
// The hooks are Envoy's entry points: their pointer arguments are Envoy's (or the module's own
// boxes handed back), valid for the hook's duration as the ABI states; they cannot be `unsafe`
// for their caller.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

use super::abi::{
    self, EnvoyBuffer, EnvoyHttpHeader, FilterConfigEnvoyPtr, FilterConfigModulePtr,
    FilterEnvoyPtr, FilterModulePtr, ModuleBuffer,
};
use super::host::{with, PendingCallout};
use super::module::{filter, paused, run, Filter, ModuleConfig};
use super::ticker;
use proxy_wasm::types::Action;
use std::cell::Cell;
use std::panic::catch_unwind;

extern "C" {
    fn proxy_on_request_headers(context_id: u32, num_headers: usize, end_of_stream: bool)
        -> Action;
    fn proxy_on_request_body(context_id: u32, body_size: usize, end_of_stream: bool) -> Action;
    fn proxy_on_request_trailers(context_id: u32, num_trailers: usize) -> Action;
    fn proxy_on_response_headers(
        context_id: u32,
        num_headers: usize,
        end_of_stream: bool,
    ) -> Action;
    fn proxy_on_response_body(context_id: u32, body_size: usize, end_of_stream: bool) -> Action;
    fn proxy_on_response_trailers(context_id: u32, num_trailers: usize) -> Action;
    fn proxy_on_http_call_response(
        context_id: u32,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        num_trailers: usize,
    );
    fn proxy_on_log(context_id: u32);
    fn proxy_on_done(context_id: u32) -> bool;
    fn proxy_on_delete(context_id: u32);
}

/// The end-to-end check that a panic never crosses the ABI (tests/e2e_native.rs): only when
/// the operator started Envoy with `AZURE_LLM_FILTER_NATIVE_PANIC_PROBE=1`, a request carrying
/// `x-azure-llm-panic-probe` panics inside the hook. Without the variable (production) the
/// header means nothing and is not even looked up.
fn panic_probe(envoy: FilterEnvoyPtr) {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if !*ENABLED.get_or_init(|| {
        std::env::var("AZURE_LLM_FILTER_NATIVE_PANIC_PROBE").is_ok_and(|v| v == "1")
    }) {
        return;
    }
    let mut value = EnvoyBuffer::EMPTY;
    let mut count = 0usize;
    let present = unsafe {
        abi::envoy_dynamic_module_callback_http_get_header(
            envoy,
            abi::REQUEST_HEADER,
            ModuleBuffer::of(b"x-azure-llm-panic-probe"),
            &mut value,
            0,
            &mut count,
        )
    } && count > 0;
    #[allow(clippy::panic)]
    if present {
        panic!("azure-llm-filter: panic probe");
    }
}

fn headers_status(action: Action) -> abi::HeadersStatus {
    match action {
        Action::Continue => abi::HEADERS_CONTINUE,
        _ => abi::HEADERS_STOP_ITERATION,
    }
}

fn body_status(action: Action) -> abi::BodyStatus {
    match action {
        Action::Continue => abi::BODY_CONTINUE,
        _ => abi::BODY_STOP_ITERATION_AND_BUFFER,
    }
}

fn trailers_status(action: Action) -> abi::TrailersStatus {
    match action {
        Action::Continue => abi::TRAILERS_CONTINUE,
        _ => abi::TRAILERS_STOP_ITERATION,
    }
}

fn set_in_body(context: u32, request: bool, value: bool) {
    with(|w| {
        if let Some(s) = w.streams.get_mut(&context) {
            if request {
                s.in_request_body = value;
            } else {
                s.in_response_body = value;
            }
        }
    });
}

fn body_size(envoy: FilterEnvoyPtr, request: bool) -> usize {
    let (buffered, received, same) = unsafe {
        if request {
            (
                abi::envoy_dynamic_module_callback_http_get_body_size(
                    envoy,
                    abi::BUFFERED_REQUEST_BODY,
                ),
                abi::envoy_dynamic_module_callback_http_get_body_size(
                    envoy,
                    abi::RECEIVED_REQUEST_BODY,
                ),
                abi::envoy_dynamic_module_callback_http_received_buffered_request_body(envoy),
            )
        } else {
            (
                abi::envoy_dynamic_module_callback_http_get_body_size(
                    envoy,
                    abi::BUFFERED_RESPONSE_BODY,
                ),
                abi::envoy_dynamic_module_callback_http_get_body_size(
                    envoy,
                    abi::RECEIVED_RESPONSE_BODY,
                ),
                abi::envoy_dynamic_module_callback_http_received_buffered_response_body(envoy),
            )
        }
    };
    if same {
        buffered
    } else {
        buffered.saturating_add(received)
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    envoy: FilterEnvoyPtr,
    ptr: FilterModulePtr,
    end_of_stream: bool,
) -> abi::HeadersStatus {
    let Some(f) = (unsafe { filter(ptr) }) else {
        return abi::HEADERS_CONTINUE;
    };
    let n = unsafe {
        abi::envoy_dynamic_module_callback_http_get_headers_size(envoy, abi::REQUEST_HEADER)
    };
    let out = run(f, abi::HEADERS_STOP_ITERATION, || {
        panic_probe(envoy);
        headers_status(unsafe { proxy_on_request_headers(f.context, n, end_of_stream) })
    });
    if out != abi::HEADERS_CONTINUE {
        paused(f);
    }
    out
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    envoy: FilterEnvoyPtr,
    ptr: FilterModulePtr,
    end_of_stream: bool,
) -> abi::BodyStatus {
    let Some(f) = (unsafe { filter(ptr) }) else {
        return abi::BODY_CONTINUE;
    };
    set_in_body(f.context, true, true);
    let size = body_size(envoy, true);
    let out = run(f, abi::BODY_STOP_ITERATION_NO_BUFFER, || {
        body_status(unsafe { proxy_on_request_body(f.context, size, end_of_stream) })
    });
    set_in_body(f.context, true, false);
    if out != abi::BODY_CONTINUE {
        paused(f);
    }
    out
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    envoy: FilterEnvoyPtr,
    ptr: FilterModulePtr,
) -> abi::TrailersStatus {
    let Some(f) = (unsafe { filter(ptr) }) else {
        return abi::TRAILERS_CONTINUE;
    };
    let n = unsafe {
        abi::envoy_dynamic_module_callback_http_get_headers_size(envoy, abi::REQUEST_TRAILER)
    };
    run(f, abi::TRAILERS_STOP_ITERATION, || {
        trailers_status(unsafe { proxy_on_request_trailers(f.context, n) })
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    envoy: FilterEnvoyPtr,
    ptr: FilterModulePtr,
    end_of_stream: bool,
) -> abi::HeadersStatus {
    let Some(f) = (unsafe { filter(ptr) }) else {
        return abi::HEADERS_CONTINUE;
    };
    let n = unsafe {
        abi::envoy_dynamic_module_callback_http_get_headers_size(envoy, abi::RESPONSE_HEADER)
    };
    let out = run(f, abi::HEADERS_CONTINUE, || {
        headers_status(unsafe { proxy_on_response_headers(f.context, n, end_of_stream) })
    });
    if out != abi::HEADERS_CONTINUE {
        paused(f);
    }
    out
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    envoy: FilterEnvoyPtr,
    ptr: FilterModulePtr,
    end_of_stream: bool,
) -> abi::BodyStatus {
    let Some(f) = (unsafe { filter(ptr) }) else {
        return abi::BODY_CONTINUE;
    };
    set_in_body(f.context, false, true);
    let size = body_size(envoy, false);
    let out = run(f, abi::BODY_CONTINUE, || {
        body_status(unsafe { proxy_on_response_body(f.context, size, end_of_stream) })
    });
    set_in_body(f.context, false, false);
    if out != abi::BODY_CONTINUE {
        paused(f);
    }
    out
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    envoy: FilterEnvoyPtr,
    ptr: FilterModulePtr,
) -> abi::TrailersStatus {
    let Some(f) = (unsafe { filter(ptr) }) else {
        return abi::TRAILERS_CONTINUE;
    };
    let n = unsafe {
        abi::envoy_dynamic_module_callback_http_get_headers_size(envoy, abi::RESPONSE_TRAILER)
    };
    run(f, abi::TRAILERS_CONTINUE, || {
        trailers_status(unsafe { proxy_on_response_trailers(f.context, n) })
    })
}

/// Before the access log is written: the filter charges and sets its access-log properties
/// in `on_log`, as under Envoy's Wasm host.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    _envoy: FilterEnvoyPtr,
    ptr: FilterModulePtr,
) {
    let Some(f) = (unsafe { filter(ptr) }) else {
        return;
    };
    run(f, (), || unsafe { proxy_on_log(f.context) });
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_destroy(ptr: FilterModulePtr) {
    if ptr.is_null() {
        return;
    }
    // SAFETY: made by Box::into_raw in filter_new; Envoy destroys each filter once.
    let f = unsafe { Box::from_raw(ptr.cast_mut().cast::<Filter>()) };
    if f.ticked.get() {
        ticker::unregister(f.context);
    }
    // Even a poisoned stream is deleted, so the dispatcher forgets its context.
    f.poisoned.set(false);
    run(&f, (), || unsafe {
        proxy_on_done(f.context);
        proxy_on_delete(f.context);
    });
    with(|w| {
        w.streams.remove(&f.context);
        // The stream's own callouts die with it (Envoy cancels them), as under Wasm.
        let envoy = f.envoy;
        w.callouts.retain(|c| c.filter != envoy);
    });
}

#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    envoy: FilterEnvoyPtr,
    ptr: FilterModulePtr,
    callout_id: u64,
    result: abi::CalloutResult,
    headers: *mut EnvoyHttpHeader,
    headers_size: usize,
    body_chunks: *mut EnvoyBuffer,
    body_chunks_size: usize,
) {
    let Some(f) = (unsafe { filter(ptr) }) else {
        return;
    };
    let Some(PendingCallout { owner, token, .. }) = with(|w| {
        let at = w
            .callouts
            .iter()
            .position(|c| c.filter == envoy && c.callout_id == callout_id)?;
        Some(w.callouts.swap_remove(at))
    }) else {
        return;
    };
    let (pairs, body) = if result == abi::CALLOUT_SUCCESS {
        let mut pairs = Vec::with_capacity(headers_size);
        if !headers.is_null() {
            // SAFETY: Envoy's array of `headers_size` headers, valid during this hook.
            for h in unsafe { std::slice::from_raw_parts(headers, headers_size) } {
                let k = unsafe {
                    EnvoyBuffer {
                        ptr: h.key_ptr,
                        length: h.key_length,
                    }
                    .bytes()
                };
                let v = unsafe {
                    EnvoyBuffer {
                        ptr: h.value_ptr,
                        length: h.value_length,
                    }
                    .bytes()
                };
                pairs.push((k.to_vec(), v.to_vec()));
            }
        }
        let mut body = Vec::new();
        if !body_chunks.is_null() {
            // SAFETY: as above.
            for c in unsafe { std::slice::from_raw_parts(body_chunks, body_chunks_size) } {
                body.extend_from_slice(unsafe { c.bytes() });
            }
        }
        (pairs, body)
    } else {
        // A reset or an answer over the buffer limit: delivered as Envoy's Wasm host delivers a
        // failed call (no headers, no body).
        (Vec::new(), Vec::new())
    };
    let (n, size) = (pairs.len(), body.len());
    with(|w| {
        w.call_headers = pairs;
        w.call_body = body;
    });
    // The owner is the stream itself or its worker's root; a panic in the root's handler is
    // not the stream's fault, but the stream is where it surfaced.
    let runner = Filter {
        config: f.config,
        context: owner,
        root: f.root,
        envoy,
        poisoned: Cell::new(false),
        ticked: Cell::new(true),
    };
    let stream_owned = owner == f.context;
    run(if stream_owned { f } else { &runner }, (), || unsafe {
        proxy_on_http_call_response(owner, token, n, size, 0)
    });
    with(|w| {
        w.call_headers.clear();
        w.call_body.clear();
    });
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    _envoy: FilterEnvoyPtr,
    ptr: FilterModulePtr,
    _event_id: u64,
) {
    // The ticker's wake-up: `run` ticks the root when it is due.
    let Some(f) = (unsafe { filter(ptr) }) else {
        return;
    };
    ticker::woken();
    run(f, (), || {});
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    config_envoy: FilterConfigEnvoyPtr,
    config: FilterConfigModulePtr,
    _event_id: u64,
) {
    // SAFETY: the pointer config_new returned, alive until config_destroy.
    let Some(config) = (unsafe { config.cast::<ModuleConfig>().as_ref() }) else {
        return;
    };
    let _ = catch_unwind(|| unsafe { super::callouts::send_queued(config.id, config_envoy) });
}

#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    _config_envoy: FilterConfigEnvoyPtr,
    config: FilterConfigModulePtr,
    callout_id: u64,
    result: abi::CalloutResult,
    headers: *mut EnvoyHttpHeader,
    headers_size: usize,
    body_chunks: *mut EnvoyBuffer,
    body_chunks_size: usize,
) {
    // SAFETY: as in config_scheduled; the arrays are Envoy's, valid during this hook.
    let Some(config) = (unsafe { config.cast::<ModuleConfig>().as_ref() }) else {
        return;
    };
    let _ = catch_unwind(|| unsafe {
        super::callouts::arrived(
            config.id,
            callout_id,
            result == abi::CALLOUT_SUCCESS,
            headers,
            headers_size,
            body_chunks,
            body_chunks_size,
        )
    });
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_local_reply(
    _envoy: FilterEnvoyPtr,
    _ptr: FilterModulePtr,
    _response_code: u32,
    _details: EnvoyBuffer,
    _reset_imminent: bool,
) -> abi::LocalReplyStatus {
    abi::LOCAL_REPLY_CONTINUE
}
