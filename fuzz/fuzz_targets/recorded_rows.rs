#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| replication_serve::fuzzing::recorded_rows(data));
