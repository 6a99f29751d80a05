//! What one host call costs inside Envoy: a Wasm filter written in WebAssembly text whose
//! plugins do nothing but make `CALLS` calls of one kind per request (the plugin configuration
//! names the probe: `a` is the first of `PROBES`, `b` the next...; any other value makes no
//! call). Under callgrind, (probe − the plugin that makes no call) / `CALLS` is the price of
//! that call: the host's work, V8's transitions out of and back into the VM and, for a call
//! that returns data, the host's call back into the VM to allocate it. One module and one VM
//! for all probes: under valgrind Envoy cannot reserve address space for many VMs.

/// Calls of the probed kind per request.
pub const CALLS: usize = 10;

/// One probe: a name for the table, and the call it makes (`i` = 0..CALLS).
pub struct Probe {
    pub name: &'static str,
    /// Made in the request body callback rather than the request headers one.
    pub in_body: bool,
    call: fn(usize) -> String,
}

// Memory: 0..64 return slots; 1024.. constant strings (below); the host's hand-overs are
// written at 8192 (`proxy_on_memory_allocate`); 16384.. the probe of each context (4096
// slots, by context id).
const DATA: &str = r#"
  (data (i32.const 1024) "content-type")
  (data (i32.const 1040) "x-bench-0")
  (data (i32.const 1056) "x-bench-1")
  (data (i32.const 1072) "x-bench-2")
  (data (i32.const 1088) "x-bench-3")
  (data (i32.const 1104) "x-bench-4")
  (data (i32.const 1120) "x-bench-5")
  (data (i32.const 1136) "x-bench-6")
  (data (i32.const 1152) "x-bench-7")
  (data (i32.const 1168) "x-bench-8")
  (data (i32.const 1184) "x-bench-9")
  (data (i32.const 1200) "wasm.bench_0")
  (data (i32.const 1216) "wasm.bench_1")
  (data (i32.const 1232) "wasm.bench_2")
  (data (i32.const 1248) "wasm.bench_3")
  (data (i32.const 1264) "wasm.bench_4")
  (data (i32.const 1280) "wasm.bench_5")
  (data (i32.const 1296) "wasm.bench_6")
  (data (i32.const 1312) "wasm.bench_7")
  (data (i32.const 1328) "wasm.bench_8")
  (data (i32.const 1344) "wasm.bench_9")
  (data (i32.const 1400) "value-of-bench")
  (data (i32.const 1420) "bench_shared_key")
  (data (i32.const 1440) "bench_counter")
  (data (i32.const 1460) "debug message from the calibration filter")
  (data (i32.const 1520) "request\00path")
"#;

pub const PROBES: [Probe; 13] = [
    Probe {
        name: "clock read",
        in_body: false,
        call: |_| "(drop (call $clock (i32.const 0)))".into(),
    },
    Probe {
        name: "header read, one value",
        in_body: false,
        call: |_| {
            "(drop (call $get_header (i32.const 0) (i32.const 1024) (i32.const 12) (i32.const 0) (i32.const 4)))".into()
        },
    },
    Probe {
        name: "header read, all 10 request headers",
        in_body: false,
        call: |_| "(drop (call $get_headers (i32.const 0) (i32.const 0) (i32.const 4)))".into(),
    },
    Probe {
        name: "header write",
        in_body: false,
        call: |i| {
            format!(
                "(drop (call $replace_header (i32.const 0) (i32.const {}) (i32.const 9) (i32.const 1400) (i32.const 14)))",
                1040 + 16 * i
            )
        },
    },
    Probe {
        name: "header removal (absent header)",
        in_body: false,
        call: |i| {
            format!(
                "(drop (call $remove_header (i32.const 0) (i32.const {}) (i32.const 9)))",
                1040 + 16 * i
            )
        },
    },
    Probe {
        name: "property write (filter state)",
        in_body: false,
        call: |i| {
            format!(
                "(drop (call $set_property (i32.const {}) (i32.const 12) (i32.const 1400) (i32.const 14)))",
                1200 + 16 * i
            )
        },
    },
    Probe {
        name: "shared-data read",
        in_body: false,
        call: |_| {
            "(drop (call $get_shared (i32.const 1420) (i32.const 16) (i32.const 0) (i32.const 4) (i32.const 8)))".into()
        },
    },
    Probe {
        name: "shared-data write",
        in_body: false,
        call: |_| {
            "(drop (call $set_shared (i32.const 1420) (i32.const 16) (i32.const 1400) (i32.const 14) (i32.const 0)))".into()
        },
    },
    Probe {
        name: "counter increment",
        in_body: false,
        call: |_| "(drop (call $increment (i32.load (i32.const 32)) (i64.const 1)))".into(),
    },
    Probe {
        name: "body read (the request's 108 bytes)",
        in_body: true,
        call: |_| {
            "(drop (call $get_buffer (i32.const 0) (i32.const 0) (i32.const 4096) (i32.const 0) (i32.const 4)))".into()
        },
    },
    Probe {
        name: "body write (14 bytes replaced)",
        in_body: true,
        call: |_| {
            "(drop (call $set_buffer (i32.const 0) (i32.const 0) (i32.const 14) (i32.const 1400) (i32.const 14)))".into()
        },
    },
    Probe {
        name: "property read (request.path)",
        in_body: false,
        call: |_| {
            "(drop (call $get_property (i32.const 1520) (i32.const 12) (i32.const 0) (i32.const 4)))".into()
        },
    },
    Probe {
        name: "log below Envoy's level (debug)",
        in_body: false,
        call: |_| "(drop (call $log (i32.const 1) (i32.const 1460) (i32.const 41)))".into(),
    },
];

/// The configuration value of the plugin running probe `i` (`None`: the one that makes no
/// call).
pub fn configuration(i: Option<usize>) -> String {
    match i {
        Some(i) => char::from(b'a' + i as u8).to_string(),
        None => "-".to_string(),
    }
}

/// The module: per request, the calls of the probe its plugin was configured with.
pub fn wat() -> String {
    let dispatch = |in_body: bool| -> String {
        PROBES
            .iter()
            .enumerate()
            .filter(|(_, p)| p.in_body == in_body)
            .map(|(k, p)| {
                let calls: String = (0..CALLS)
                    .map(|i| format!("      {}\n", (p.call)(i)))
                    .collect();
                format!("    (if (i32.eq (local.get $p) (i32.const {k})) (then\n{calls}    ))\n")
            })
            .collect()
    };
    let headers = dispatch(false);
    let body = dispatch(true);
    format!(
        r#"(module
  (import "env" "proxy_get_current_time_nanoseconds" (func $clock (param i32) (result i32)))
  (import "env" "proxy_get_header_map_value" (func $get_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_pairs" (func $get_headers (param i32 i32 i32) (result i32)))
  (import "env" "proxy_replace_header_map_value" (func $replace_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_remove_header_map_value" (func $remove_header (param i32 i32 i32) (result i32)))
  (import "env" "proxy_set_property" (func $set_property (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_property" (func $get_property (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_shared_data" (func $get_shared (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_shared_data" (func $set_shared (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_define_metric" (func $define_metric (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_increment_metric" (func $increment (param i32 i64) (result i32)))
  (import "env" "proxy_get_buffer_bytes" (func $get_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_buffer_bytes" (func $set_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
{DATA}
  (func $slot (param $ctx i32) (result i32)
    (i32.add (i32.const 16384) (i32.shl (i32.and (local.get $ctx) (i32.const 4095)) (i32.const 2))))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 8192))
  (func (export "proxy_on_context_create") (param $ctx i32) (param $root i32)
    (if (i32.ne (local.get $root) (i32.const 0)) (then
      (i32.store (call $slot (local.get $ctx)) (i32.load (call $slot (local.get $root)))))))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param $root i32) (param $size i32) (result i32)
    (i32.store (call $slot (local.get $root)) (i32.const -1))
    (if (i32.eq (call $get_buffer (i32.const 7) (i32.const 0) (local.get $size) (i32.const 0) (i32.const 4)) (i32.const 0)) (then
      (i32.store (call $slot (local.get $root)) (i32.sub (i32.load8_u (i32.const 8192)) (i32.const 97)))))
    (drop (call $define_metric (i32.const 0) (i32.const 1440) (i32.const 13) (i32.const 32)))
    (drop (call $set_shared (i32.const 1420) (i32.const 16) (i32.const 1400) (i32.const 14) (i32.const 0)))
    (i32.const 1))
  (func (export "proxy_on_request_headers") (param $ctx i32) (param i32 i32) (result i32)
    (local $p i32)
    (local.set $p (i32.load (call $slot (local.get $ctx))))
{headers}    (i32.const 0))
  (func (export "proxy_on_request_body") (param $ctx i32) (param i32 i32) (result i32)
    (local $p i32)
    (local.set $p (i32.load (call $slot (local.get $ctx))))
{body}    (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_response_body") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_log") (param i32))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_delete") (param i32)))
"#
    )
}

#[test]
fn the_probes_are_valid_webassembly() {
    wat::parse_str(wat()).unwrap_or_else(|e| panic!("{e}"));
}
