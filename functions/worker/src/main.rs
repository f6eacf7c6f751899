//! The `worker` Lambda function: SQS batches of chunk messages in, chunk results in S3 out,
//! partial batch failures reported. Wiring only; the logic is
//! `fhe_batch_aws::handlers::handle_sqs_event` over `fhe_batch_core::pipeline::Worker`. The
//! worker (and its model cache) lives across warm invocations.

use aws_lambda_events::event::sqs::SqsEvent;
use fhe_batch_aws::config::{Config, all_clients, init_tracing};
use fhe_batch_aws::handlers::handle_sqs_event;
use fhe_batch_aws::{S3Store, SqsQueue};
use fhe_batch_core::pipeline::{RetryDelays, Worker, WorkerConfig};
use fhe_batch_core::retry::{RetryPolicy, Retrying};
use fhe_batch_fhe::FheEvaluator;
use lambda_runtime::{Error, LambdaEvent, service_fn};
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_tracing();
    let config = Config::from_env()?;
    let clients = all_clients().await;
    let notifier = clients.notifier_from_env();
    let (s3, sqs) = (clients.s3, clients.sqs);
    // Failed chunks are retried after 15 s, doubling, rather than the queue's visibility
    // timeout (JOBS_QUEUE_URL is set by the template; without it the timeout applies).
    let queue = config
        .queue_url
        .as_deref()
        .map(|url| Retrying::new(SqsQueue::new(sqs, url), RetryPolicy::default()));
    let mut worker = Worker::new(
        Retrying::new(S3Store::new(s3, &config.bucket), RetryPolicy::default()),
        FheEvaluator::default(),
        WorkerConfig {
            max_receives: config.max_receives,
        },
    );
    // The job-end notification goes out once, from whichever chunk ends the job.
    if let Some(n) = notifier {
        worker = worker.with_notifier(Arc::new(n));
    }
    let worker = Arc::new(worker);
    let queue = Arc::new(queue);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| {
        let (worker, queue) = (worker.clone(), queue.clone());
        async move {
            let retry = queue.as_ref().as_ref().map(|q| (q, RetryDelays::default()));
            Ok::<_, Error>(handle_sqs_event(worker, retry, event.payload).await)
        }
    }))
    .await
}
