//! # fhe-batch-aws
//!
//! The AWS side of fhe-batch:
//!
//! - [`S3Store`]: the [`ObjectStore`](fhe_batch_core::ports::ObjectStore) port on S3: ranged
//!   GETs, create-once PUTs with `If-None-Match: *` (412 means "already done"), paginated lists;
//! - [`SqsQueue`]: the [`JobQueue`](fhe_batch_core::ports::JobQueue) port on SQS: batched sends
//!   of pointer-only messages, receives with the receive count, deletes;
//! - [`SnsNotifier`]: the [`Notifier`](fhe_batch_core::ports::Notifier) port on SNS: job-end
//!   notifications to a success and an error topic;
//! - [`EventBridgeNotifier`]: the same job ends as EventBridge events (source `fhe-batch`);
//! - [`handlers`]: the four functions' event handlers (S3 notifications for ingest, SQS
//!   batches with partial failures for the worker and the dead-letter function, HTTP routes
//!   for status);
//! - [`config`]: environment configuration and SDK clients (`AWS_ENDPOINT_URL` aware).

pub mod config;
mod eventbridge;
pub mod handlers;
mod s3;
mod sns;
mod sqs;

pub use eventbridge::{DETAIL_FAILED, DETAIL_SUCCEEDED, EventBridgeNotifier, SOURCE};
pub use s3::S3Store;
pub use sns::SnsNotifier;
pub use sqs::SqsQueue;
