//! # fhe-batch-core
//!
//! The domain of the fhe-batch encrypted-inference pipeline, free of any cloud SDK and of tfhe:
//!
//! - [`budget`]: how long a chunk may take on a worker (one source of truth with the
//!   deployment's timeout), and so how many records a bootstrapped model's chunk holds;
//! - [`events`]: the parts of S3 notifications the ingest function reads;
//! - [`ids`]: validated identifiers ([`ids::JobId`], [`ids::ModelId`], [`ids::KeyFingerprint`]);
//! - [`layout`]: the single builder of object keys;
//! - [`params`]: the allow-listed cryptographic parameter sets, as numbers;
//! - [`model`]: compiled models as one sum type over the model families (linear, tree
//!   ensemble, neural network), each family behind the [`model::ServerFamily`] / [`model::ClientFamily`]
//!   methods, and the two-part model package;
//! - [`format`]: the `.fheb` batch and `.fher` result file formats;
//! - [`job`]: job manifests, chunk messages, failure records and status;
//! - [`ports`]: the [`ports::ObjectStore`] and [`ports::JobQueue`] traits;
//! - [`pipeline`]: ingest, worker and status logic over the ports;
//! - [`tree`]: the tree-ensemble family: IR, bootstrap planner, plan and its noise proof,
//!   client readout;
//! - [`mlp`]: the neural-network family: the integer network, its proof, the client readout;
//! - [`retry`]: bounded retries with exponential backoff and jitter around either port;
//! - [`fuzz`]: the entry points of the fuzz targets, also replayed as ordinary tests.

pub mod budget;
pub mod events;
pub mod format;
#[doc(hidden)]
pub mod fuzz;
pub mod ids;
pub mod job;
pub mod layout;
pub mod mlp;
pub mod model;
pub mod params;
pub mod pipeline;
pub mod ports;
pub mod retry;
pub mod tree;
