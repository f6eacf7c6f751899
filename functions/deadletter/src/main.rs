//! The `deadletter` Lambda function, on the job queue's dead-letter queue: a chunk whose worker
//! died on every attempt (timeout, out of memory, throttling) is recorded as failed with the
//! reason, so its job ends FAILED instead of reading RUNNING forever. Wiring only; the logic is
//! `fhe_batch_aws::handlers::handle_dead_letters` over
//! `fhe_batch_core::pipeline::record_dead_letter`.

use aws_lambda_events::event::sqs::SqsEvent;
use fhe_batch_aws::S3Store;
use fhe_batch_aws::config::{Config, all_clients, init_tracing};
use fhe_batch_aws::handlers::handle_dead_letters;
use fhe_batch_core::retry::{RetryPolicy, Retrying};
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_tracing();
    let config = Config::from_env()?;
    let clients = all_clients().await;
    let s3 = clients.s3.clone();
    let store = &Retrying::new(S3Store::new(s3, &config.bucket), RetryPolicy::default());
    let notifier = &clients.notifier_from_env();
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        let notifier = notifier
            .as_ref()
            .map(|n| n as &dyn fhe_batch_core::ports::Notifier);
        Ok::<_, Error>(handle_dead_letters(store, notifier, event.payload).await)
    }))
    .await
}
