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
//! - [`forest`]: tree ensembles: the evaluation key (tfhe's compressed server key and a packing
//!   key), bootstrapped evaluation of a compiled plan, decryption of packed score slots;
//! - [`mlp`]: neural networks: the first layer on GLWE columns, one bootstrap per hidden
//!   neuron with the evaluation key (a layer's neurons keyswitched and blind-rotated in
//!   batches, one pass over each key per batch), decryption of packed scores;
//! - [`evaluator`]: the worker's [`FheEvaluator`] (every model kind);
//! - [`key_cache`]: the evaluation keys' lifecycle for the worker ([`key_cache::EvalKeyCache`]:
//!   download, checks, expansion, caches in memory and on local disk, one load per key however
//!   many workers meet it at once);
//! - [`batch`]: whole-batch encryption (CSV records to a `.fheb` file) and decryption of a
//!   job's results, in parallel.
//!
//! Only the worker and the client link this crate.

pub mod batch;
mod batch_ks;
pub mod evaluator;
pub mod forest;
pub mod glwe;
pub mod key_cache;
pub mod keys;
pub mod mask;
pub mod mlp;
pub mod negacyclic;
pub mod params;
pub mod pbs;
pub mod public;
mod sealed;
pub mod seed;

pub use evaluator::FheEvaluator;
pub use glwe::GlweEvaluator;
pub use keys::SecretKey;
pub use public::{Encryptor, PublicKey};
