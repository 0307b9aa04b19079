#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| replication_serve::fuzzing::patches(data));
