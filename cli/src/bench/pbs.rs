//! `fhe-batch bench --pbs N`: programmable bootstrapping with tfhe's shortint server key on
//! our parameters (key generation, key sizes, bootstraps per second on one thread and on all
//! cores). The measuring is in `fhe_batch_fhe::pbs`; this is the report line.

use fhe_batch_fhe::SecretKey;
use fhe_batch_fhe::pbs::PbsFigures;

/// Runs `bootstraps` bootstraps under `key`'s parameters.
pub(super) fn measure(key: &SecretKey, bootstraps: usize) -> PbsFigures {
    fhe_batch_fhe::pbs::measure(key, bootstraps)
}

/// The key=value line of the text report.
pub(super) fn print_line(b: &PbsFigures) {
    println!(
        "pbs bootstraps={} keygen_s={:.2} compressed_key_bytes={} server_key_bytes={} decompress_s={:.2} single_thread_per_s={:.1} parallel_per_s={:.1} threads={} all_correct={}",
        b.bootstraps,
        b.keygen_s,
        b.compressed_key_bytes,
        b.server_key_bytes,
        b.decompress_s,
        b.single_thread_per_s,
        b.parallel_per_s,
        b.threads,
        b.all_correct
    );
}
