//! The `ingest` Lambda function: S3 `ObjectCreated` events on `inbox/*.fheb` in, one SQS message
//! per chunk out. Wiring only; the logic is `fhe_batch_aws::handlers::handle_s3_event`.

use fhe_batch_aws::config::{Config, all_clients, init_tracing};
use fhe_batch_aws::handlers::{handle_s3_event_in, notify_refused_in};
use fhe_batch_aws::{S3Store, SqsQueue};
use fhe_batch_core::retry::{RetryPolicy, Retrying};
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_tracing();
    let config = Config::from_env()?;
    let clients = all_clients().await;
    let notifier = clients.notifier_from_env();
    let (s3, sqs) = (clients.s3, clients.sqs);
    let store = Retrying::new(S3Store::new(s3, &config.bucket), RetryPolicy::default());
    let queue = Retrying::new(
        SqsQueue::new(sqs, config.queue_url()?),
        RetryPolicy::default(),
    );
    let (store, queue, config, notifier) = (&store, &queue, &config, &notifier);
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<serde_json::Value>| async move {
            let outcomes = handle_s3_event_in(
                store,
                queue,
                &config.bucket,
                event.payload,
                &config.limits,
                config.tenancy,
            )
            .await?;
            // A refused batch ends its job: publish that (a failed publish retries the event).
            if let Some(n) = notifier {
                notify_refused_in(store, n, &outcomes, config.tenancy).await?;
            }
            Ok::<_, Error>(serde_json::json!({
                "ingested": outcomes.iter().map(|o| o.to_json()).collect::<Vec<_>>()
            }))
        },
    ))
    .await
}
