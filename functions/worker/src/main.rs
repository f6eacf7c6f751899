//! The `worker` Lambda function: SQS batches of chunk messages in, chunk results in S3 out,
//! partial batch failures reported. Wiring only; the logic is
//! `fhe_batch_aws::handlers::handle_sqs_event` over `fhe_batch_core::pipeline::Worker`. The
//! worker (and its model cache) lives across warm invocations.

use aws_lambda_events::event::sqs::SqsEvent;
use fhe_batch_aws::S3Store;
use fhe_batch_aws::config::{Config, clients, init_tracing};
use fhe_batch_aws::handlers::handle_sqs_event;
use fhe_batch_core::pipeline::{Worker, WorkerConfig};
use fhe_batch_core::retry::{RetryPolicy, Retrying};
use fhe_batch_fhe::FheEvaluator;
use lambda_runtime::{Error, LambdaEvent, service_fn};
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_tracing();
    let config = Config::from_env()?;
    let (s3, _) = clients().await;
    let worker = Arc::new(Worker::new(
        Retrying::new(S3Store::new(s3, &config.bucket), RetryPolicy::default()),
        FheEvaluator::default(),
        WorkerConfig {
            max_receives: config.max_receives,
        },
    ));
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| {
        let worker = worker.clone();
        async move { Ok::<_, Error>(handle_sqs_event(worker, event.payload).await) }
    }))
    .await
}
