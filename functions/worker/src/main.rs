//! The `worker` Lambda function: evaluates chunk messages from SQS on the ciphertexts and writes each chunk result once: `fhe_batch_core::pipeline::Worker` with `fhe_batch_fhe::GlweEvaluator`.
//!
//! The logic lives, tested, in the shared crates; this binary will only wire it to
//! `lambda_runtime` and the AWS adapters (S3, SQS), which land with the AWS deployment work.
//! Until then the same logic runs locally through `fhe-batch run` and `fhe-batch demo`.

fn main() {
    eprintln!(
        "the worker Lambda wiring is not built yet; run the pipeline locally with `fhe-batch run` (see README.md)"
    );
    std::process::exit(2);
}
