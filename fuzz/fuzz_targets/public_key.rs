#![no_main]
// The owner's public key file: magic, version, parameter set, fingerprint, evaluation key id,
// mask seed, body, checksum.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(key) = fhe_batch_fhe::PublicKey::from_bytes(data) {
        assert_eq!(key.to_bytes(), data, "a public key file re-encodes to itself");
    }
});
