//! # fhe-batch-core
//!
//! The domain of the fhe-batch encrypted-inference pipeline, free of any cloud SDK and of tfhe:
//!
//! - [`events`]: the parts of S3 notifications the ingest function reads;
//! - [`ids`]: validated identifiers ([`ids::JobId`], [`ids::ModelId`], [`ids::KeyFingerprint`]);
//! - [`layout`]: the single builder of object keys;
//! - [`params`]: the allow-listed cryptographic parameter sets, as numbers;
//! - [`model`]: the quantized integer model IR, its plaintext reference evaluator, the
//!   compile-time noise and range proof, and the two-part model package;
//! - [`format`]: the `.fheb` batch and `.fher` result file formats;
//! - [`job`]: job manifests, chunk messages, failure records and status;
//! - [`ports`]: the [`ports::ObjectStore`] and [`ports::JobQueue`] traits;
//! - [`pipeline`]: ingest, worker and status logic over the ports;
//! - [`tree`]: tree ensembles as thermometer bits and integer leaves, with their reference;
//! - [`retry`]: bounded retries with exponential backoff and jitter around either port;
//! - [`fuzz`]: the entry points of the fuzz targets, also replayed as ordinary tests.

pub mod events;
pub mod format;
#[doc(hidden)]
pub mod fuzz;
pub mod ids;
pub mod job;
pub mod layout;
pub mod model;
pub mod params;
pub mod pipeline;
pub mod ports;
pub mod retry;
pub mod tree;
