//! # fhe-batch-local
//!
//! The embedded default of the fhe-batch pipeline: the ports of `fhe-batch-core` implemented
//! without any cloud service, so the whole product runs on one machine.
//!
//! - [`FsStore`]: a directory as the bucket; keys that could escape the root are refused.
//! - [`MemQueue`]: an in-process queue with SQS semantics (visibility timeout, redelivery,
//!   receipts per delivery, dead-letter limit).
//! - [`Chaos`]: wraps either port and fails a share of calls the way S3 and SQS fail
//!   (throttling, 500s, timeouts, resets; some after the work was done), for reliability tests.
//!
//! The ports as the pipeline uses them: create-once results, and at-least-once delivery with
//! receipts.
//!
//! ```
//! use fhe_batch_core::ports::{JobQueue, ObjectStore, PutOutcome};
//! use std::time::Duration;
//! use fhe_batch_local::{FsStore, MemQueue, MemQueueConfig};
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let dir = tempfile::tempdir().unwrap();
//! let store = FsStore::open(dir.path()).unwrap();
//! // A result is created once; a duplicate delivery finds it and changes nothing.
//! let key = "results/job/000000.fher";
//! assert_eq!(store.put_if_absent(key, b"first".to_vec()).await.unwrap(), PutOutcome::Created);
//! assert_eq!(store.put_if_absent(key, b"again".to_vec()).await.unwrap(), PutOutcome::AlreadyExists);
//! assert_eq!(store.get(key, 1024).await.unwrap(), b"first");
//!
//! let queue = MemQueue::new(MemQueueConfig::default());
//! queue.send_batch(vec!["chunk 0".into()]).await.unwrap();
//! let got = queue.receive(10, Duration::from_millis(10)).await.unwrap();
//! assert_eq!(got[0].body, "chunk 0");
//! queue.ack(&got[0].receipt).await.unwrap();
//! # });
//! ```

mod chaos;
mod fs_store;
mod mem_queue;

pub use chaos::{Chaos, ChaosConfig, ChaosStats, Fault};
pub use fs_store::{FsStore, MAX_KEY_LEN, validate_key};
pub use mem_queue::{MemQueue, MemQueueConfig, QueueStats};
