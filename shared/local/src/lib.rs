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

mod chaos;
mod fs_store;
mod mem_queue;

pub use chaos::{Chaos, ChaosConfig, ChaosStats, Fault};
pub use fs_store::{FsStore, MAX_KEY_LEN, validate_key};
pub use mem_queue::{MemQueue, MemQueueConfig, QueueStats};
