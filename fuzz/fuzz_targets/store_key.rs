#![no_main]
// Object keys as the local bucket (a directory) receives them: a valid key maps inside the root.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(key) = std::str::from_utf8(data)
        && fhe_batch_local::validate_key(key).is_ok()
    {
        assert!(!key.starts_with('/') && key.split('/').all(|s| s != ".." && s != "." && !s.is_empty()));
    }
});
