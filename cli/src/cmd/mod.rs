//! The data owner's and model owner's subcommands, one module each: its `clap` arguments and
//! its `run`. What several of them share (the store arguments, the async runtime, job ids,
//! compile options) is in [`common`].

pub mod common;
pub mod decrypt;
pub mod encrypt;
pub mod fetch;
pub mod import;
pub mod ingest;
pub mod keygen;
pub mod publish;
pub mod publish_key;
pub mod retry;
pub mod run;
pub mod status;
pub mod submit;
pub mod train;
pub mod worker;
