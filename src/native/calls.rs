//! The rest of the proxy-wasm host functions `src/host` links against (see `host` for the
//! design): shared data, resuming and answering streams, callouts, and the ones the filter
//! never needs under the native build (shared queues, gRPC, foreign functions), which answer
//! as a host without them would.
#![allow(clippy::missing_safety_doc)]

use super::abi::{self, ModuleBuffer};
use super::host::{deserialize_map, effective_stream, give, input, with, Deferred, PendingCallout};
use super::metrics::{self, Update};
use super::shared;
use crate::metrics::Kind;
use proxy_wasm::types::{MetricType, Status, StreamType};
use std::ptr::null_mut;

#[no_mangle]
pub unsafe extern "C" fn proxy_get_shared_data(
    key_data: *const u8,
    key_size: usize,
    return_data: *mut *mut u8,
    return_size: *mut usize,
    return_cas: *mut u32,
) -> Status {
    match shared::get(input(key_data, key_size)) {
        Some((value, cas)) => {
            give(value, return_data, return_size);
            if !return_cas.is_null() {
                *return_cas = cas;
            }
            Status::Ok
        }
        None => Status::NotFound,
    }
}

#[no_mangle]
pub unsafe extern "C" fn proxy_set_shared_data(
    key_data: *const u8,
    key_size: usize,
    value_data: *const u8,
    value_size: usize,
    cas: u32,
) -> Status {
    if shared::set(
        input(key_data, key_size),
        input(value_data, value_size),
        cas,
    ) {
        Status::Ok
    } else {
        Status::CasMismatch
    }
}

// Shared queues are not used by the filter.
#[no_mangle]
pub unsafe extern "C" fn proxy_register_shared_queue(
    _name_data: *const u8,
    _name_size: usize,
    _return_id: *mut u32,
) -> Status {
    Status::InternalFailure
}

#[no_mangle]
pub unsafe extern "C" fn proxy_resolve_shared_queue(
    _vm_id_data: *const u8,
    _vm_id_size: usize,
    _name_data: *const u8,
    _name_size: usize,
    _return_id: *mut u32,
) -> Status {
    Status::NotFound
}

#[no_mangle]
pub unsafe extern "C" fn proxy_dequeue_shared_queue(
    _queue_id: u32,
    _return_data: *mut *mut u8,
    _return_size: *mut usize,
) -> Status {
    Status::NotFound
}

#[no_mangle]
pub unsafe extern "C" fn proxy_enqueue_shared_queue(
    _queue_id: u32,
    _value_data: *const u8,
    _value_size: usize,
) -> Status {
    Status::NotFound
}

#[no_mangle]
pub unsafe extern "C" fn proxy_continue_stream(stream_type: StreamType) -> Status {
    let Some((id, _, _, _)) = effective_stream() else {
        return Status::NotFound;
    };
    with(|w| w.deferred.push(Deferred::Continue(id, stream_type)));
    Status::Ok
}

#[no_mangle]
pub unsafe extern "C" fn proxy_close_stream(_stream_type: StreamType) -> Status {
    Status::Ok
}

#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn proxy_send_local_response(
    status_code: u32,
    details_data: *const u8,
    details_size: usize,
    body_data: *const u8,
    body_size: usize,
    headers_data: *const u8,
    headers_size: usize,
    _grpc_status: i32,
) -> Status {
    let Some((id, _, _, _)) = effective_stream() else {
        return Status::NotFound;
    };
    let headers = deserialize_map(input(headers_data, headers_size)).unwrap_or_default();
    with(|w| {
        w.deferred.push(Deferred::Respond {
            context: id,
            status: status_code,
            headers,
            body: input(body_data, body_size).to_vec(),
            details: input(details_data, details_size).to_vec(),
        })
    });
    Status::Ok
}

/// An HTTP context's callout (a Content Safety check) goes through its own stream's filter
/// and dies with it, as under Envoy's Wasm host. A root context's callout (tokens, JWKS) is
/// queued for the main thread (`native::callouts`) so it outlives every request.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn proxy_http_call(
    upstream_data: *const u8,
    upstream_size: usize,
    headers_data: *const u8,
    headers_size: usize,
    body_data: *const u8,
    body_size: usize,
    _trailers_data: *const u8,
    _trailers_size: usize,
    timeout: u32,
    return_token: *mut u32,
) -> Status {
    let Some(headers) = deserialize_map(input(headers_data, headers_size)) else {
        return Status::BadArgument;
    };
    let cluster = input(upstream_data, upstream_size);
    let body = input(body_data, body_size);
    let token = next_token();
    match effective_stream() {
        Some((context, filter, _, _)) => {
            let mut raw: Vec<abi::ModuleHttpHeader> = headers
                .iter()
                .map(|(k, v)| abi::ModuleHttpHeader::of(k, v))
                .collect();
            let mut callout_id = 0u64;
            let result = abi::envoy_dynamic_module_callback_http_filter_http_callout(
                filter,
                &mut callout_id,
                ModuleBuffer::of(cluster),
                raw.as_mut_ptr(),
                raw.len(),
                ModuleBuffer::of(body),
                u64::from(timeout),
            );
            if result != abi::CALLOUT_INIT_SUCCESS {
                return if result == 2 {
                    // ClusterNotFound, as Envoy's Wasm host reports an unknown cluster.
                    Status::BadArgument
                } else {
                    Status::InternalFailure
                };
            }
            with(|w| {
                w.callouts.push(PendingCallout {
                    filter,
                    owner: context,
                    callout_id,
                    token,
                })
            });
        }
        None => {
            let (owner, config) = with(|w| (w.effective, w.config));
            let Some((config_id, scheduler)) = config else {
                return Status::InternalFailure;
            };
            super::callouts::queue(
                config_id,
                scheduler,
                super::ticker::worker_id(),
                owner,
                token,
                cluster,
                headers,
                body,
                u64::from(timeout),
            );
        }
    }
    if !return_token.is_null() {
        *return_token = token;
    }
    Status::Ok
}

fn next_token() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// gRPC callouts (global rate limiting's RLS calls) have no counterpart in the ABI's
/// one-shot HTTP callouts; the native build refuses `rate_limits.global` at load.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn proxy_grpc_call(
    _upstream_data: *const u8,
    _upstream_size: usize,
    _service_name_data: *const u8,
    _service_name_size: usize,
    _method_name_data: *const u8,
    _method_name_size: usize,
    _initial_metadata_data: *const u8,
    _initial_metadata_size: usize,
    _message_data_data: *const u8,
    _message_data_size: usize,
    _timeout: u32,
    _return_callout_id: *mut u32,
) -> Status {
    Status::InternalFailure
}

#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn proxy_grpc_stream(
    _upstream_data: *const u8,
    _upstream_size: usize,
    _service_name_data: *const u8,
    _service_name_size: usize,
    _method_name_data: *const u8,
    _method_name_size: usize,
    _initial_metadata_data: *const u8,
    _initial_metadata_size: usize,
    _return_stream_id: *mut u32,
) -> Status {
    Status::InternalFailure
}

#[no_mangle]
pub unsafe extern "C" fn proxy_grpc_send(
    _token: u32,
    _message_ptr: *const u8,
    _message_len: usize,
    _end_stream: bool,
) -> Status {
    Status::NotFound
}

#[no_mangle]
pub unsafe extern "C" fn proxy_grpc_cancel(_token_id: u32) -> Status {
    Status::NotFound
}

#[no_mangle]
pub unsafe extern "C" fn proxy_grpc_close(_token_id: u32) -> Status {
    Status::NotFound
}

#[no_mangle]
pub unsafe extern "C" fn proxy_get_status(
    return_code: *mut u32,
    return_message_data: *mut *mut u8,
    return_message_size: *mut usize,
) -> Status {
    if !return_code.is_null() {
        *return_code = 0;
    }
    give(Vec::new(), return_message_data, return_message_size);
    Status::Ok
}

#[no_mangle]
pub unsafe extern "C" fn proxy_set_effective_context(context_id: u32) -> Status {
    with(|w| w.effective = context_id);
    Status::Ok
}

#[no_mangle]
pub unsafe extern "C" fn proxy_call_foreign_function(
    _function_name_data: *const u8,
    _function_name_size: usize,
    _arguments_data: *const u8,
    _arguments_size: usize,
    results_data: *mut *mut u8,
    _results_size: *mut usize,
) -> Status {
    if !results_data.is_null() {
        *results_data = null_mut();
    }
    Status::NotFound
}

#[no_mangle]
pub unsafe extern "C" fn proxy_done() -> Status {
    Status::Ok
}

/// Metrics (`native::metrics`): a name becomes a series of a family Envoy defined at load;
/// updates go through the stream whose event is being handled.
#[no_mangle]
pub unsafe extern "C" fn proxy_define_metric(
    metric_type: MetricType,
    name_data: *const u8,
    name_size: usize,
    return_id: *mut u32,
) -> Status {
    let kind = match metric_type {
        MetricType::Counter => Some(Kind::Counter),
        MetricType::Gauge => Some(Kind::Gauge),
        MetricType::Histogram => Some(Kind::Histogram),
        _ => None,
    };
    let id = match (kind, std::str::from_utf8(input(name_data, name_size))) {
        (Some(kind), Ok(name)) => metrics::define(kind, name),
        _ => 0,
    };
    if !return_id.is_null() {
        *return_id = id;
    }
    Status::Ok
}

/// Envoy's stat values are not readable through the ABI; the filter reads none.
#[no_mangle]
pub unsafe extern "C" fn proxy_get_metric(_metric_id: u32, return_value: *mut u64) -> Status {
    if !return_value.is_null() {
        *return_value = 0;
    }
    Status::Ok
}

fn update_metric(id: u32, update: Update) -> Status {
    let (current, config) = with(|w| (w.current, w.config));
    if let (Some(filter), Some((config_id, _))) = (current, config) {
        // SAFETY: `current` is the stream whose hook is running (module::run).
        unsafe { metrics::update(filter, config_id, id, update) };
    }
    Status::Ok
}

#[no_mangle]
pub unsafe extern "C" fn proxy_record_metric(metric_id: u32, value: u64) -> Status {
    update_metric(metric_id, Update::Record(value))
}

#[no_mangle]
pub unsafe extern "C" fn proxy_increment_metric(metric_id: u32, offset: i64) -> Status {
    let update = if offset >= 0 {
        Update::Add(offset.unsigned_abs())
    } else {
        Update::Subtract(offset.unsigned_abs())
    };
    update_metric(metric_id, update)
}
