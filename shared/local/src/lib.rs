//! # fhe-batch-local
//!
//! The embedded default of the fhe-batch pipeline: the ports of `fhe-batch-core` implemented
//! without any cloud service, so the whole product runs on one machine.
//!
//! - [`FsStore`]: a directory as the bucket; keys that could escape the root are refused.
//! - [`MemQueue`]: an in-process queue with SQS semantics (visibility timeout, redelivery,
//!   receipts per delivery, dead-letter limit).

mod fs_store;
mod mem_queue;

pub use fs_store::{FsStore, MAX_KEY_LEN, validate_key};
pub use mem_queue::{MemQueue, MemQueueConfig, QueueStats};
