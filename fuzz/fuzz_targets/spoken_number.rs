#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| humanline::fuzzing::spoken_number(data));
