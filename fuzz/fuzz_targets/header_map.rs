#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| azure_llm_filter::fuzzing::header_map_bytes(data));
