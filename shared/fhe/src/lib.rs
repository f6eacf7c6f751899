//! # fhe-batch-fhe
//!
//! The cryptography of fhe-batch, on tfhe's `core_crypto` layer and its own 128-bit parameter
//! sets:
//!
//! - [`keys`]: the data owner's secret key (a tfhe shortint `ClientKey`), its public
//!   fingerprint, and the owner-only key file;
//! - [`glwe`]: GLWE column packing for linear models: client-side seeded encryption, the
//!   server's key-less evaluator ([`glwe::GlweEvaluator`]), and decryption to exact integer
//!   logits;
//! - [`batch`]: whole-batch encryption (CSV records to a `.fheb` file) and decryption of a
//!   job's results, in parallel.
//!
//! Only the worker and the client link this crate.

pub mod batch;
pub mod glwe;
pub mod keys;
pub mod mask;
pub mod negacyclic;
pub mod params;
pub mod pbs;

pub use glwe::GlweEvaluator;
pub use keys::SecretKey;
