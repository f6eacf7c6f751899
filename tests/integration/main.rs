//! One integration-test binary: the pipeline core over the embedded adapters, with real
//! encryption, real evaluation and real decryption.

mod aws;
mod common;
mod faults;
mod hostile;
mod imports;
mod mlp;
mod notify;
mod permissions;
mod pipeline;
mod public_key;
mod reliability;
mod resubmit;
mod tenants;
mod training;
mod trees;
