#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| custos_fuzz::tool_name(data));
