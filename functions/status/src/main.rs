//! The `status` Lambda function: answers `GET /jobs/{job}` with the job's state and progress: `fhe_batch_core::pipeline::job_status`.
//!
//! The logic lives, tested, in the shared crates; this binary will only wire it to
//! `lambda_runtime` and the AWS adapters (S3, SQS), which land with the AWS deployment work.
//! Until then the same logic runs locally through `fhe-batch run` and `fhe-batch demo`.

fn main() {
    eprintln!(
        "the status Lambda wiring is not built yet; run the pipeline locally with `fhe-batch run` (see README.md)"
    );
    std::process::exit(2);
}
