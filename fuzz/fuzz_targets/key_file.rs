#![no_main]
// The owner's secret key file: magic, version, parameter set, fingerprint, key bits (version 2
// adds the output key's bits).
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(key) = fhe_batch_fhe::SecretKey::from_bytes(data) {
        // Every key file that loads re-encodes (as version 2) to one that loads to the same key;
        // a version-2 file re-encodes to itself.
        let again = fhe_batch_fhe::SecretKey::from_bytes(&key.to_bytes()).expect("re-encoded key loads");
        assert_eq!(again.to_bytes(), key.to_bytes());
        if data[8..10] == [2, 0] {
            assert_eq!(key.to_bytes(), data, "a version-2 key file re-encodes to itself");
        }
    }
});
