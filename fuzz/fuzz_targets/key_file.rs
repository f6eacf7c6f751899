#![no_main]
// The owner's secret key file: magic, version, parameter set, fingerprint, key bits.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(key) = fhe_batch_fhe::SecretKey::from_bytes(data) {
        assert_eq!(key.to_bytes(), data, "a key file re-encodes to itself");
    }
});
