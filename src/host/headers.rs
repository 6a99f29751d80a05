//! Reading a whole header map in one host call, as bytes (`crate::header_map` reads it in
//! place). The SDK's own readers (`get_http_request_headers`, `get_http_request_header`, ...)
//! build a `String` per name and value and panic on a value that is not UTF-8, which any
//! caller can send: the filter does not use them for maps a caller or an upstream fills.

use crate::header_map::HeaderMap;
use proxy_wasm::types::{MapType, Status};

#[link(wasm_import_module = "env")]
extern "C" {
    // The same import the SDK declares (proxy-wasm ABI 0.2.1).
    fn proxy_get_header_map_pairs(
        map_type: MapType,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> Status;
}

/// The map `map_type` of the current context (empty if the host has none).
pub fn read(map_type: MapType) -> HeaderMap {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a pointer to `size` bytes it allocated in this module with
    // `proxy_on_memory_allocate` (a boxed slice of exactly that length, the SDK's allocator),
    // which is ours to free; the SDK takes its own hand-overs back the same way.
    let status = unsafe { proxy_get_header_map_pairs(map_type, &mut data, &mut size) };
    if status != Status::Ok || data.is_null() {
        return HeaderMap::default();
    }
    // SAFETY: see above.
    let bytes = unsafe { Vec::from_raw_parts(data, size, size) };
    HeaderMap::parse(bytes)
}

/// The request headers.
pub fn request() -> HeaderMap {
    read(MapType::HttpRequestHeaders)
}

/// The response headers.
pub fn response() -> HeaderMap {
    read(MapType::HttpResponseHeaders)
}
