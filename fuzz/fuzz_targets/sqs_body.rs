#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| fhe_batch_core::fuzz::sqs_body(data));
