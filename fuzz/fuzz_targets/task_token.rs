#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| custos_fuzz::task_token(data));
