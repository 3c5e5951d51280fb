#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| humanline::fuzzing::dtmf_input(data));
