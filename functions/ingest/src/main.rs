//! The `ingest` Lambda function: validates an uploaded batch (S3 ObjectCreated event on inbox/) and queues one SQS message per chunk: `fhe_batch_core::pipeline::ingest_object`.
//!
//! The logic lives, tested, in the shared crates; this binary will only wire it to
//! `lambda_runtime` and the AWS adapters (S3, SQS), which land with the AWS deployment work.
//! Until then the same logic runs locally through `fhe-batch run` and `fhe-batch demo`.

fn main() {
    eprintln!(
        "the ingest Lambda wiring is not built yet; run the pipeline locally with `fhe-batch run` (see README.md)"
    );
    std::process::exit(2);
}
