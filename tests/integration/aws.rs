//! The AWS adapters and the three handlers against a real S3/SQS wire protocol: a moto server
//! on 127.0.0.1 that `infra/test.sh` starts (`AWS_ENDPOINT_URL`). Under CI the endpoint is
//! required; elsewhere these tests say they were skipped.

use crate::common::*;
use aws_lambda_events::event::s3::S3Event;
use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use aws_sdk_sqs::types::QueueAttributeName;
use fhe_batch_aws::handlers::{handle_s3_event, handle_sqs_event, handle_status_request};
use fhe_batch_aws::{S3Store, SqsQueue};
use fhe_batch_core::format::BatchLimits;
use fhe_batch_core::ids::JobId;
use fhe_batch_core::job::JobStatus;
use fhe_batch_core::layout;
use fhe_batch_core::pipeline::{IngestOutcome, RetryDelays, Worker, WorkerConfig, ingest_object};
use fhe_batch_core::ports::{JobQueue, ObjectStore, PutOutcome};
use fhe_batch_fhe::GlweEvaluator;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

fn fixture(name: &str) -> serde_json::Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/events")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The endpoint, or `None` (with a note) when not running under `infra/test.sh`.
fn endpoint() -> Option<String> {
    match std::env::var("AWS_ENDPOINT_URL") {
        Ok(e) if e.starts_with("http://127.0.0.1") => Some(e),
        _ if std::env::var("CI").is_ok() => {
            panic!("CI must run these tests against the local endpoint (see infra/test.sh)")
        }
        _ => {
            eprintln!("skipped: no local S3/SQS endpoint; run ./infra/test.sh");
            None
        }
    }
}

struct Aws {
    store: S3Store,
    queue: SqsQueue,
    sqs: aws_sdk_sqs::Client,
    bucket: String,
    dlq_url: String,
}

/// A fresh bucket, job queue and dead-letter queue (max 5 receives, 2 s visibility).
async fn setup(name: &str) -> Aws {
    let (s3, sqs) = fhe_batch_aws::config::clients().await;
    let bucket = format!("fheb-{name}-{}", std::process::id());
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let (dlq_url, dlq_arn) = new_queue(&sqs, &format!("{bucket}-dlq")).await;
    let url = sqs
        .create_queue()
        .queue_name(format!("{bucket}-jobs"))
        .attributes(QueueAttributeName::VisibilityTimeout, "2")
        .attributes(
            QueueAttributeName::RedrivePolicy,
            serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "5"}).to_string(),
        )
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    Aws {
        store: S3Store::new(s3, &bucket),
        queue: SqsQueue::new(sqs.clone(), url),
        sqs,
        bucket,
        dlq_url,
    }
}

/// An SQS event built from real received messages, as the event source mapping would.
/// A new queue's URL and ARN.
async fn new_queue(sqs: &aws_sdk_sqs::Client, name: &str) -> (String, String) {
    let url = sqs
        .create_queue()
        .queue_name(name)
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let arn = sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()[&QueueAttributeName::QueueArn]
        .clone();
    (url, arn)
}

fn sqs_event(deliveries: &[fhe_batch_core::ports::Delivery]) -> SqsEvent {
    let mut event = SqsEvent::default();
    for d in deliveries {
        let mut m = SqsMessage::default();
        m.message_id = Some(d.message_id.clone());
        m.receipt_handle = Some(d.receipt.clone());
        m.body = Some(d.body.clone());
        m.attributes = HashMap::from([(
            "ApproximateReceiveCount".to_string(),
            d.receive_count.to_string(),
        )]);
        event.records.push(m);
    }
    event
}

async fn receive_n(q: &SqsQueue, n: usize) -> Vec<fhe_batch_core::ports::Delivery> {
    let mut out = Vec::new();
    for _ in 0..50 {
        out.extend(q.receive(10, Duration::from_secs(1)).await.unwrap());
        if out.len() >= n {
            break;
        }
    }
    out
}

#[test]
fn event_fixtures_parse_into_their_types() {
    let s3: S3Event = serde_json::from_value(fixture("s3-put.json")).unwrap();
    assert_eq!(
        s3.records[0].s3.object.key.as_deref(),
        Some("inbox/claims-2026.fheb")
    );
    let sqs: SqsEvent = serde_json::from_value(fixture("sqs-chunk.json")).unwrap();
    let body = sqs.records[0].body.as_deref().unwrap();
    fhe_batch_core::job::ChunkMessage::parse(body).unwrap();
    let http = fixture("status-get-job.json");
    assert_eq!(http["rawPath"], "/jobs/claims-2026");
    assert_eq!(fixture("s3-test-event.json")["Event"], "s3:TestEvent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_over_s3_and_sqs_with_the_lambda_handlers() {
    if endpoint().is_none() {
        return;
    }
    let aws = setup("e2e").await;
    publish(&aws.store, iris_package()).await;
    // Upload as `aws s3 cp` would, then hand ingest the fixture event naming it.
    let (bytes, q) = iris_batch(5000, 21);
    let job = JobId::parse("claims-2026").unwrap();
    aws.store.put(&layout::inbox(&job), bytes).await.unwrap();
    let mut event = fixture("s3-put.json");
    event["Records"][0]["s3"]["bucket"]["name"] = aws.bucket.clone().into();
    let limits = BatchLimits::default();
    let out = handle_s3_event(&aws.store, &aws.queue, &aws.bucket, event, &limits)
        .await
        .unwrap();
    assert_eq!(
        out,
        vec![IngestOutcome::Queued {
            job: job.clone(),
            chunks: 3
        }]
    );
    // The test event and another bucket's event are ignored.
    let ignored = handle_s3_event(
        &aws.store,
        &aws.queue,
        &aws.bucket,
        fixture("s3-test-event.json"),
        &limits,
    )
    .await
    .unwrap();
    assert!(ignored.is_empty());
    let reply = handle_status_request(&aws.store, "GET", "/jobs/claims-2026").await;
    assert_eq!(reply.status, 200);
    let st: JobStatus = serde_json::from_str(&reply.body).unwrap();
    assert_eq!((st.chunks_done, st.chunks_total), (0, 3));

    // Workers consume real SQS messages; successes are deleted as the event source would.
    let worker = Arc::new(Worker::new(
        aws.store.clone(),
        GlweEvaluator,
        WorkerConfig::default(),
    ));
    let deliveries = receive_n(&aws.queue, 3).await;
    assert_eq!(deliveries.len(), 3);
    assert!(
        deliveries.iter().all(|d| d.body.len() < 1024),
        "pointers only"
    );
    let response = handle_sqs_event(
        worker.clone(),
        Some((&aws.queue, RetryDelays::default())),
        sqs_event(&deliveries),
    )
    .await;
    assert!(response.batch_item_failures.is_empty());
    for d in &deliveries {
        aws.queue.ack(&d.receipt).await.unwrap();
    }
    // A duplicate delivery of the same messages changes nothing.
    let before = results(&aws.store, &job).await;
    let response = handle_sqs_event(
        worker.clone(),
        Some((&aws.queue, RetryDelays::default())),
        sqs_event(&deliveries),
    )
    .await;
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(results(&aws.store, &job).await, before);

    let reply = handle_status_request(&aws.store, "GET", "/jobs/claims-2026").await;
    let st: JobStatus = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(st.state, fhe_batch_core::job::JobState::Succeeded);
    assert_eq!(
        handle_status_request(&aws.store, "GET", "/jobs/nope")
            .await
            .status,
        404
    );
    assert_eq!(
        handle_status_request(&aws.store, "GET", "/jobs/..%2Fx")
            .await
            .status,
        400
    );
    let list = handle_status_request(&aws.store, "GET", "/jobs").await;
    assert!(list.body.contains("claims-2026"), "{}", list.body);

    // Decrypt what S3 holds: every record equals the plaintext reference.
    let pkg = iris_package();
    let logits = fhe_batch_fhe::batch::decrypt_job(
        key(),
        &pkg.client,
        &pkg.manifest.model_id,
        &before,
        &|_| {},
    )
    .unwrap();
    let f = pkg.client.n_features();
    for (x, l) in q.chunks_exact(f).zip(logits.chunks_exact(3)) {
        assert_eq!(pkg.server.eval_plain(x), l);
    }
}

/// `fhe-batch retry --bucket`: over S3 and SQS, a job whose chunk was damaged in the bucket
/// fails through the worker function's handler; once the upload is repaired, `retry_job`
/// records attempt 2 in S3 and sends the chunk to SQS, the handler runs it, and the status
/// function reports attempt 2 SUCCEEDED with no failures; the results decrypt exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_job_is_retried_over_s3_and_sqs() {
    if endpoint().is_none() {
        return;
    }
    let aws = setup("resubmit").await;
    publish(&aws.store, iris_package()).await;
    let (good, q) = iris_batch(150, 22);
    let mut bad = good.clone();
    *bad.last_mut().unwrap() ^= 1;
    let job = JobId::parse("retried").unwrap();
    aws.store.put(&layout::inbox(&job), bad).await.unwrap();
    let inbox = layout::inbox(&job);
    ingest_object(&aws.store, &aws.queue, &inbox, &BatchLimits::default())
        .await
        .unwrap();
    let worker = Arc::new(Worker::new(
        aws.store.clone(),
        GlweEvaluator,
        WorkerConfig::default(),
    ));
    let status = || async {
        let reply = handle_status_request(&aws.store, "GET", "/jobs/retried").await;
        serde_json::from_str::<JobStatus>(&reply.body).unwrap()
    };
    for expected_attempt in [1, 2] {
        let d = receive_n(&aws.queue, 1).await;
        assert_eq!(d.len(), 1);
        let response = handle_sqs_event(
            worker.clone(),
            Some((&aws.queue, RetryDelays::default())),
            sqs_event(&d),
        )
        .await;
        assert!(response.batch_item_failures.is_empty());
        aws.queue.ack(&d[0].receipt).await.unwrap();
        let st = status().await;
        assert_eq!(st.attempt, expected_attempt, "{st:?}");
        if expected_attempt == 1 {
            assert_eq!(st.state, fhe_batch_core::job::JobState::Failed, "{st:?}");
            // Repaired in the bucket, then retried as `fhe-batch retry --bucket` does.
            aws.store.put(&inbox, good.clone()).await.unwrap();
            let out = fhe_batch_core::pipeline::retry_job(&aws.store, &aws.queue, &job)
                .await
                .unwrap();
            assert_eq!((out.attempt, out.chunks_queued), (2, 1));
        } else {
            assert_eq!(st.state, fhe_batch_core::job::JobState::Succeeded, "{st:?}");
            assert!(st.failures.is_empty(), "{st:?}");
        }
    }
    let pkg = iris_package();
    let logits = fhe_batch_fhe::batch::decrypt_job(
        key(),
        &pkg.client,
        &pkg.manifest.model_id,
        &results(&aws.store, &job).await,
        &|_| {},
    )
    .unwrap();
    let f = pkg.client.n_features();
    assert_eq!(logits.len(), 150 * 3);
    for (x, l) in q.chunks_exact(f).zip(logits.chunks_exact(3)) {
        assert_eq!(pkg.server.eval_plain(x), l);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_honours_if_none_match() {
    if endpoint().is_none() {
        return;
    }
    let aws = setup("inm").await;
    assert_eq!(
        aws.store
            .put_if_absent("r/x", b"first".to_vec())
            .await
            .unwrap(),
        PutOutcome::Created
    );
    // If the endpoint ignored If-None-Match, this would overwrite and report Created.
    assert_eq!(
        aws.store
            .put_if_absent("r/x", b"second".to_vec())
            .await
            .unwrap(),
        PutOutcome::AlreadyExists
    );
    assert_eq!(aws.store.get("r/x", 100).await.unwrap(), b"first");
    assert_eq!(aws.store.get_range("r/x", 1, 3).await.unwrap(), b"irs");
    assert!(aws.store.get_range("r/x", 3, 10).await.is_err());
    assert!(matches!(
        aws.store.get("r/x", 2).await,
        Err(fhe_batch_core::ports::StoreError::TooLarge { .. })
    ));
    assert_eq!(aws.store.size("r/none").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_keeps_failing_reaches_the_dead_letter_queue() {
    if endpoint().is_none() {
        return;
    }
    let aws = setup("dlq").await;
    aws.queue
        .send_batch(vec!["not a chunk message".into()])
        .await
        .unwrap();
    // Receive without deleting until SQS moves it: 5 receives, 2 s visibility each.
    let mut receives = 0;
    for _ in 0..40 {
        let got = aws.queue.receive(1, Duration::from_secs(1)).await.unwrap();
        receives += got.len();
        let dead = aws
            .sqs
            .receive_message()
            .queue_url(&aws.dlq_url)
            .send()
            .await
            .unwrap();
        if !dead.messages().is_empty() {
            assert_eq!(dead.messages()[0].body(), Some("not a chunk message"));
            assert_eq!(receives, 5);
            return;
        }
    }
    panic!("message never reached the dead-letter queue ({receives} receives)");
}

async fn results(store: &S3Store, job: &JobId) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for k in store.list(&layout::results_prefix(job)).await.unwrap() {
        let b = store.get(&k, 1 << 30).await.unwrap();
        out.push((k, b));
    }
    out
}

/// A chunk whose attempt fails comes back after the worker function's retry delay
/// (`ChangeMessageVisibility` over the SQS wire protocol), not after the queue's visibility
/// timeout: here the delay (5 s) is longer than the test queue's 2 s timeout, so the message
/// stays hidden past it, then returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_chunk_comes_back_after_the_retry_delay_set_over_sqs() {
    if endpoint().is_none() {
        return;
    }
    struct Panicking;
    impl fhe_batch_core::ports::ChunkEvaluator for Panicking {
        fn evaluate(
            &self,
            _: &fhe_batch_core::model::ServerModel,
            _: &fhe_batch_core::ports::ChunkInput<'_>,
        ) -> Result<Vec<u8>, fhe_batch_core::ports::EvalError> {
            panic!("a passing failure")
        }
    }
    let aws = setup("retry").await;
    publish(&aws.store, iris_package()).await;
    let (bytes, _) = iris_batch(150, 31);
    let key = "inbox/retry-1.fheb";
    aws.store.put(key, bytes).await.unwrap();
    ingest_object(&aws.store, &aws.queue, key, &BatchLimits::default())
        .await
        .unwrap();
    let deliveries = receive_n(&aws.queue, 1).await;
    assert_eq!(deliveries.len(), 1);
    let worker = Arc::new(Worker::new(
        aws.store.clone(),
        Panicking,
        WorkerConfig::default(),
    ));
    let delays = RetryDelays {
        first: Duration::from_secs(5),
        max: Duration::from_secs(5),
    };
    let response =
        handle_sqs_event(worker, Some((&aws.queue, delays)), sqs_event(&deliveries)).await;
    assert_eq!(response.batch_item_failures.len(), 1);
    let early = aws.queue.receive(1, Duration::from_secs(3)).await.unwrap();
    assert!(early.is_empty(), "back before its retry delay: {early:?}");
    let later = receive_n(&aws.queue, 1).await;
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].receive_count, 2);
}

/// A job end of 3 chunks and 6,000 records, as the pipeline publishes it.
fn job_end(
    job: &str,
    attempt: u32,
    state: fhe_batch_core::job::JobState,
    reason: Option<&str>,
) -> fhe_batch_core::job::JobNotification {
    let failed = u32::from(state != fhe_batch_core::job::JobState::Succeeded);
    fhe_batch_core::job::JobNotification {
        job: JobId::parse(job).unwrap(),
        attempt,
        state,
        chunks_total: 3,
        chunks_done: 3 - failed,
        chunks_failed: failed,
        records: 6000,
        results_prefix: format!("results/{job}/"),
        reason: reason.map(str::to_string),
        at_unix_ms: 1,
    }
}

/// Job-end notifications over the SNS wire protocol: a SUCCEEDED job goes to the success
/// topic, a FAILED one (with its reason) to the error topic, each delivered to a subscribed
/// queue as SNS delivers to subscribers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_ends_are_published_to_the_success_and_error_topics() {
    if endpoint().is_none() {
        return;
    }
    use fhe_batch_core::job::{JobNotification, JobState};
    use fhe_batch_core::ports::Notifier;
    let fhe_batch_aws::config::Clients { sqs, sns, .. } =
        fhe_batch_aws::config::all_clients().await;
    let name = format!("fheb-notify-{}", std::process::id());
    let mut topics = Vec::new();
    let mut queues = Vec::new();
    for kind in ["ok", "err"] {
        let topic = sns
            .create_topic()
            .name(format!("{name}-{kind}"))
            .send()
            .await
            .unwrap()
            .topic_arn
            .unwrap();
        let (url, arn) = new_queue(&sqs, &format!("{name}-{kind}")).await;
        sns.subscribe()
            .topic_arn(&topic)
            .protocol("sqs")
            .endpoint(arn)
            .send()
            .await
            .unwrap();
        topics.push(topic);
        queues.push(SqsQueue::new(sqs.clone(), url));
    }
    let notifier =
        fhe_batch_aws::SnsNotifier::new(sns, Some(topics[0].clone()), Some(topics[1].clone()));
    let note = |job: &str, state, reason: Option<&str>| job_end(job, 1, state, reason);
    notifier
        .publish(&note("claims-ok", JobState::Succeeded, None))
        .await
        .unwrap();
    notifier
        .publish(&note(
            "claims-bad",
            JobState::Failed,
            Some("chunk 2 is corrupted"),
        ))
        .await
        .unwrap();
    for (queue, (job, state)) in queues
        .iter()
        .zip([("claims-ok", "SUCCEEDED"), ("claims-bad", "FAILED")])
    {
        let got = receive_n(queue, 1).await;
        assert_eq!(got.len(), 1, "{job}");
        let envelope: serde_json::Value = serde_json::from_str(&got[0].body).unwrap();
        let body: JobNotification =
            serde_json::from_str(envelope["Message"].as_str().unwrap()).unwrap();
        assert_eq!(body.job.as_str(), job);
        assert_eq!(body.state.to_string(), state);
        assert_eq!(
            envelope["Subject"].as_str(),
            Some(format!("fhe-batch job {job} {state}").as_str())
        );
    }
}

/// Job-end events over the EventBridge wire protocol: a rule on the bus matching the
/// `fhe-batch` source delivers each job end to a queue, with its detail type and detail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_ends_are_put_on_the_event_bus() {
    if endpoint().is_none() {
        return;
    }
    use fhe_batch_core::job::{JobNotification, JobState};
    use fhe_batch_core::ports::Notifier;
    let fhe_batch_aws::config::Clients { sqs, events, .. } =
        fhe_batch_aws::config::all_clients().await;
    let name = format!("fheb-events-{}", std::process::id());
    events.create_event_bus().name(&name).send().await.unwrap();
    let (url, arn) = new_queue(&sqs, &name).await;
    events
        .put_rule()
        .name(&name)
        .event_bus_name(&name)
        .event_pattern(r#"{"source": ["fhe-batch"], "detail-type": ["fhe-batch Job Failed"]}"#)
        .send()
        .await
        .unwrap();
    events
        .put_targets()
        .rule(&name)
        .event_bus_name(&name)
        .targets(
            aws_sdk_eventbridge::types::Target::builder()
                .id("queue")
                .arn(arn)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let notifier = fhe_batch_aws::EventBridgeNotifier::new(events.clone(), &name);
    let note = |job: &str, state, reason: Option<&str>| job_end(job, 2, state, reason);
    notifier
        .publish(&note("claims-ok", JobState::Succeeded, None))
        .await
        .unwrap();
    notifier
        .publish(&note(
            "claims-bad",
            JobState::Failed,
            Some("chunk 2 timed out"),
        ))
        .await
        .unwrap();
    // The rule matches failures only: exactly the failed job's event arrives.
    let queue = SqsQueue::new(sqs.clone(), url);
    let got = receive_n(&queue, 1).await;
    assert_eq!(got.len(), 1);
    let event: serde_json::Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!(event["source"], fhe_batch_aws::SOURCE);
    assert_eq!(event["detail-type"], fhe_batch_aws::DETAIL_FAILED);
    let detail: JobNotification = serde_json::from_value(event["detail"].clone()).unwrap();
    assert_eq!(detail.job.as_str(), "claims-bad");
    assert_eq!(detail.state, JobState::Failed);
    assert_eq!(detail.attempt, 2);
    assert_eq!(detail.reason.as_deref(), Some("chunk 2 timed out"));
    let more = queue.receive(10, Duration::from_secs(2)).await.unwrap();
    assert!(more.is_empty(), "{more:?}");
    // A bus that does not exist is a failed publish, not a silent loss.
    let nowhere = fhe_batch_aws::EventBridgeNotifier::new(events, format!("{name}-missing"));
    assert!(
        nowhere
            .publish(&note("claims-x", JobState::Failed, None))
            .await
            .is_err()
    );
}
