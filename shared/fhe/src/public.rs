//! The data owner's public key: anyone holding it encrypts records, only the secret key's
//! holder reads them (or the results computed from them).
//!
//! # Scheme
//! Ring-LWE public-key encryption (Lyubashevsky, Peikert and Regev), on the secret key's own
//! GLWE ring `Z_{2^64}[X]/(X^N + 1)` (k = 1, N = 2048):
//!
//! - public key: `(A, B = A·S + E)`, a GLWE encryption of zero under the secret key `S`, with
//!   `A` uniform (expanded from a public 128-bit seed, so it travels as the seed) and `E`
//!   TUniform(2^17);
//! - encryption of a message polynomial `M`: `(A·r + e1, B·r + e2 + M)` with a fresh uniform
//!   binary `r` and fresh TUniform(2^17) `e1`, `e2`;
//! - it decrypts under `S` like any GLWE ciphertext: `B·r + e2 + M - (A·r + e1)·S =
//!   M + E·r + e2 - e1·S`.
//!
//! These are the numbers of tfhe 1.8's own compact public-key encryption for this parameter
//! set (`V1_8_PARAM_PKE_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128`: dimension 2048, TUniform
//! bound 2^17, native modulus, binary `r`); only the convolution's orientation differs (tfhe
//! reverses the mask so a list expands into LWE ciphertexts; we keep GLWE ciphertexts, which our
//! evaluators consume). The noise bound, `(N (k + 1) + 1) 2^17` per coefficient, is
//! [`fhe_batch_core::params::Encryption::noise_bound_log2`]; every model proof that admits
//! public-key batches uses it.
//!
//! The public key holds no secret: it is the owner's fingerprint, optionally the evaluation key
//! id producers must name, the seed of `A`, and `B`. Knowing it, a producer can encrypt but not
//! decrypt, not even its own batches.

use crate::keys::{KeyError, SecretKey};
use crate::negacyclic::BinaryPolyMultiplier;
use crate::params::glwe_noise;
use fhe_batch_core::format::{ChunkShape, write_u64s};
use fhe_batch_core::ids::{EvalKeyId, KeyFingerprint};
use fhe_batch_core::params::{Encryption, ParamSet};
use sha2::{Digest, Sha256};
use std::path::Path;
use tfhe::core_crypto::commons::math::random::RandomGenerator;
use tfhe::core_crypto::prelude::*;
use zeroize::Zeroize;

const PUBLIC_MAGIC: [u8; 8] = *b"FHEBPUB\0";
const PUBLIC_VERSION: u16 = 1;
/// magic, version, parameter set, reserved, fingerprint, evaluation key id, seed.
const PUBLIC_HEADER_LEN: usize = 8 + 2 + 2 + 4 + 16 + 16 + 16;
const CHECKSUM_LEN: usize = 32;
/// Largest public key file accepted.
pub const MAX_PUBLIC_KEY_BYTES: u64 = 1 << 20;

/// The owner's public key. Its `Debug` shows the fingerprint and evaluation key id only.
#[derive(Clone)]
pub struct PublicKey {
    params: ParamSet,
    owner: KeyFingerprint,
    eval_key: Option<EvalKeyId>,
    seed: u128,
    /// `A`, expanded from the seed (k polynomials).
    mask: Vec<u64>,
    /// `B = A·S + E`.
    body: Vec<u64>,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicKey")
            .field("params", &self.params)
            .field("owner", &self.owner)
            .field("eval_key", &self.eval_key)
            .finish_non_exhaustive()
    }
}

impl PublicKey {
    /// A fresh public key of `key` (seeds from tfhe's seeder mixed with the operating system's
    /// generator). Any number of public keys may be made from one secret key; each works alone.
    pub fn generate(key: &SecretKey, eval_key: Option<EvalKeyId>) -> Self {
        let params = key.params();
        let n = params.polynomial_size();
        let mut seeder = crate::seed::MixedSeeder::new();
        let seed = seeder.seed().0;
        let noise_seed = seeder.seed();
        assert_ne!(seed, noise_seed.0, "the mask and noise seeds must differ");
        let mut mask = vec![0u64; params.glwe_dimension() * n];
        crate::mask::expand_masks(seed, &mut mask);
        let mut body = vec![0u64; n];
        RandomGenerator::<DefaultRandomGenerator>::new(noise_seed)
            .unsigned_integer_slice_wrapping_add_random_from_distribution_assign(
                &mut body,
                glwe_noise(params),
            );
        key.mask_product(&mut body, &mask, false);
        Self {
            params,
            owner: key.fingerprint(),
            eval_key,
            seed,
            mask,
            body,
        }
    }

    pub fn params(&self) -> ParamSet {
        self.params
    }

    /// The fingerprint of the secret key that reads what this key encrypts.
    pub fn owner(&self) -> KeyFingerprint {
        self.owner
    }

    /// The evaluation key producers name in batches for models that bootstrap.
    pub fn eval_key(&self) -> Option<EvalKeyId> {
        self.eval_key
    }

    /// Encrypts one message polynomial (`N` coefficients, already scaled) into a whole GLWE
    /// ciphertext, appended to `out` as `(k + 1) x N` words (mask, then body).
    /// `times_r` is a multiplier of this size, re-keyed here with the fresh `r`.
    fn encrypt_glwe(
        &self,
        message: &[u64],
        generator: &mut RandomGenerator<DefaultRandomGenerator>,
        times_r: &mut BinaryPolyMultiplier,
        out: &mut Vec<u64>,
    ) {
        let n = self.params.polynomial_size();
        let k = self.params.glwe_dimension();
        assert_eq!(message.len(), n, "one polynomial");
        let mut r = vec![0u64; n];
        generator.fill_slice_with_random_uniform_binary_bits(&mut r);
        times_r.set_key(&r);
        r.zeroize();
        // Noise first (e1 on the mask, e2 on the body), then the products with r.
        let mut glwe = vec![0u64; (k + 1) * n];
        generator.unsigned_integer_slice_wrapping_add_random_from_distribution_assign(
            &mut glwe,
            glwe_noise(self.params),
        );
        let (mask, body) = glwe.split_at_mut(k * n);
        for (m, a) in mask.chunks_exact_mut(n).zip(self.mask.chunks_exact(n)) {
            times_r.mul_acc(m, a, false);
        }
        times_r.mul_acc(body, &self.body, false);
        times_r.zeroize_key();
        for (b, &x) in body.iter_mut().zip(message) {
            *b = b.wrapping_add(x);
        }
        out.extend_from_slice(&glwe);
        glwe.zeroize();
    }

    /// Encrypts up to `shape.records_per_chunk` records (row-major, `records x input_columns`
    /// values, each encoded at `2^(64 - column_bits)`) into one public-key chunk payload: whole
    /// GLWEs, `g = N / records_per_chunk` columns to a GLWE, column `j` at coefficients
    /// `(j mod g) x records_per_chunk` onwards of GLWE `j / g` (the layout in
    /// [`fhe_batch_core::format`]).
    pub fn encrypt_columns(
        &self,
        shape: ChunkShape,
        column_bits: u8,
        quantized: &[u64],
    ) -> Vec<u8> {
        assert_eq!(
            shape.encryption,
            Encryption::PublicKey,
            "a public-key shape"
        );
        let params = self.params;
        let n = params.polynomial_size();
        let f = shape.input_columns as usize;
        let slots = shape.records_per_chunk as usize;
        assert!(quantized.len().is_multiple_of(f), "whole records");
        let records = quantized.len() / f;
        assert!(
            slots <= n && records > 0 && records <= slots,
            "1..=slots records per chunk"
        );
        let g = shape.columns_per_glwe(params) as usize;
        let glwes = shape.glwes(params) as usize;
        let shift = 64 - column_bits as u32;
        let mut generator =
            RandomGenerator::<DefaultRandomGenerator>::new(crate::seed::MixedSeeder::new().seed());
        let mut words = Vec::with_capacity(glwes * (params.glwe_dimension() + 1) * n);
        let mut message = vec![0u64; n];
        let mut times_r = BinaryPolyMultiplier::new(&message);
        for t in 0..glwes {
            message.fill(0);
            for c in 0..g {
                let j = t * g + c;
                if j >= f {
                    break;
                }
                for (i, record) in quantized.chunks_exact(f).enumerate() {
                    message[c * slots + i] = record[j] << shift;
                }
            }
            self.encrypt_glwe(&message, &mut generator, &mut times_r, &mut words);
        }
        message.zeroize();
        let mut out = Vec::with_capacity(shape.payload_len(params) as usize);
        write_u64s(&words, &mut out);
        words.zeroize();
        out
    }

    /// The public key file: a header, `B`, and a SHA-256 of everything before it.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(PUBLIC_HEADER_LEN + self.body.len() * 8 + CHECKSUM_LEN);
        out.extend_from_slice(&PUBLIC_MAGIC);
        out.extend_from_slice(&PUBLIC_VERSION.to_le_bytes());
        out.extend_from_slice(&self.params.wire_id().to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(self.owner.as_bytes());
        out.extend_from_slice(self.eval_key.as_ref().map_or(&[0u8; 16], |k| k.as_bytes()));
        out.extend_from_slice(&self.seed.to_le_bytes());
        write_u64s(&self.body, &mut out);
        let sum: [u8; 32] = Sha256::digest(&out).into();
        out.extend_from_slice(&sum);
        out
    }

    /// Reads a public key file, checking magic, version, parameter set, length and checksum.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        if bytes.len() < 8 || bytes[..8] != PUBLIC_MAGIC {
            return Err(KeyError::BadMagic);
        }
        if bytes.len() < PUBLIC_HEADER_LEN + CHECKSUM_LEN {
            return Err(KeyError::Damaged("truncated public key".into()));
        }
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        if version != PUBLIC_VERSION {
            return Err(KeyError::Version(version));
        }
        let params = ParamSet::from_wire_id(u16::from_le_bytes([bytes[10], bytes[11]]))
            .ok_or(KeyError::Params)?;
        let n = params.polynomial_size();
        let expected = PUBLIC_HEADER_LEN + n * 8 + CHECKSUM_LEN;
        if bytes.len() != expected {
            return Err(KeyError::Damaged(format!(
                "public key is {} bytes, expected {expected}",
                bytes.len()
            )));
        }
        let sum: [u8; 32] = Sha256::digest(&bytes[..expected - CHECKSUM_LEN]).into();
        if sum[..] != bytes[expected - CHECKSUM_LEN..] {
            return Err(KeyError::Damaged(
                "public key checksum does not match".into(),
            ));
        }
        if bytes[12..16] != [0; 4] {
            return Err(KeyError::Damaged("reserved bytes are not zero".into()));
        }
        let field = |at: usize| -> [u8; 16] { bytes[at..at + 16].try_into().expect("16 bytes") };
        let owner = KeyFingerprint::from_bytes(field(16));
        let eval = field(32);
        let eval_key = (eval != [0; 16]).then(|| EvalKeyId::from_bytes(eval));
        let seed = u128::from_le_bytes(field(48));
        let mut mask = vec![0u64; params.glwe_dimension() * n];
        crate::mask::expand_masks(seed, &mut mask);
        let mut body = vec![0u64; n];
        fhe_batch_core::format::read_u64s(
            &bytes[PUBLIC_HEADER_LEN..expected - CHECKSUM_LEN],
            &mut body,
        );
        Ok(Self {
            params,
            owner,
            eval_key,
            seed,
            mask,
            body,
        })
    }

    /// Writes the public key file (it holds no secret; an existing file is replaced only with
    /// `overwrite`).
    pub fn save(&self, path: &Path, overwrite: bool) -> Result<(), KeyError> {
        let io = |action: &'static str| {
            move |source| KeyError::Io {
                action,
                path: path.display().to_string(),
                source,
            }
        };
        let mut options = std::fs::OpenOptions::new();
        options.write(true);
        if overwrite {
            options.create(true).truncate(true);
        } else {
            options.create_new(true);
        }
        use std::io::Write;
        let mut file = options.open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                KeyError::Exists {
                    path: path.display().to_string(),
                }
            } else {
                io("create")(e)
            }
        })?;
        file.write_all(&self.to_bytes()).map_err(io("write"))
    }

    /// Reads a public key file.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let io = |action: &'static str| {
            move |source| KeyError::Io {
                action,
                path: path.display().to_string(),
                source,
            }
        };
        let size = std::fs::metadata(path).map_err(io("read"))?.len();
        if size > MAX_PUBLIC_KEY_BYTES {
            return Err(KeyError::Damaged(format!(
                "{size} bytes is too large for a public key"
            )));
        }
        Self::from_bytes(&std::fs::read(path).map_err(io("read"))?)
    }
}

/// What encrypts a batch: the secret key (seeded, smallest) or a public key.
#[derive(Debug, Clone, Copy)]
pub enum Encryptor<'a> {
    Secret(&'a SecretKey),
    Public(&'a PublicKey),
}

impl Encryptor<'_> {
    pub fn params(&self) -> ParamSet {
        match self {
            Encryptor::Secret(k) => k.params(),
            Encryptor::Public(k) => k.params(),
        }
    }

    /// The fingerprint of the key that reads the batch.
    pub fn owner(&self) -> KeyFingerprint {
        match self {
            Encryptor::Secret(k) => k.fingerprint(),
            Encryptor::Public(k) => k.owner(),
        }
    }

    pub fn kind(&self) -> Encryption {
        match self {
            Encryptor::Secret(_) => Encryption::SecretKey,
            Encryptor::Public(_) => Encryption::PublicKey,
        }
    }

    /// One chunk payload of `shape` (whose encryption must be this encryptor's kind).
    pub fn encrypt_columns(
        &self,
        shape: ChunkShape,
        column_bits: u8,
        quantized: &[u64],
    ) -> Vec<u8> {
        assert_eq!(shape.encryption, self.kind(), "the shape's encryption");
        match self {
            Encryptor::Secret(k) => crate::glwe::encrypt_columns(k, shape, column_bits, quantized),
            Encryptor::Public(k) => k.encrypt_columns(shape, column_bits, quantized),
        }
    }
}

impl<'a> From<&'a SecretKey> for Encryptor<'a> {
    fn from(k: &'a SecretKey) -> Self {
        Encryptor::Secret(k)
    }
}

impl<'a> From<&'a PublicKey> for Encryptor<'a> {
    fn from(k: &'a PublicKey) -> Self {
        Encryptor::Public(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::glwe::GlweEvaluator;
    use rand::{Rng, SeedableRng};

    const P: ParamSet = ParamSet::Glwe2048TUniform17;

    fn key() -> &'static SecretKey {
        static K: std::sync::OnceLock<SecretKey> = std::sync::OnceLock::new();
        K.get_or_init(|| SecretKey::generate(P))
    }

    /// The phases (body minus mask-key product) of expanded column GLWEs, as signed noise
    /// around `value << shift`.
    fn phases(key: &SecretKey, columns: &[u64]) -> Vec<u64> {
        let n = P.polynomial_size();
        let glwe_len = (P.glwe_dimension() + 1) * n;
        let mut out = Vec::new();
        for glwe in columns.chunks_exact(glwe_len) {
            let mut phase = glwe[glwe_len - n..].to_vec();
            key.mask_product(&mut phase, &glwe[..glwe_len - n], true);
            out.extend(phase);
        }
        out
    }

    /// Every record of every column comes back exactly after the server's expansion (the
    /// rotations of shared GLWEs included), with noise inside the proven bound, and the file
    /// round-trips.
    #[test]
    fn public_key_chunks_decrypt_within_the_proven_bound() {
        let sk = key();
        let pk = PublicKey::from_bytes(&PublicKey::generate(sk, None).to_bytes()).unwrap();
        assert_eq!(pk.owner(), sk.fingerprint());
        let bound = Encryption::PublicKey.noise_bound_log2(P).exp2();
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut worst = 0f64;
        // Full chunks (one column per GLWE), small ones (20 and 14 columns share a GLWE, the
        // last GLWE partly empty) and one record per chunk (2,048 columns to a GLWE).
        for (columns, slots, records) in [
            (3u32, 2048u32, 2048usize),
            (45, 100, 77),
            (30, 140, 140),
            (5, 1, 1),
        ] {
            let shape = ChunkShape {
                input_columns: columns,
                records_per_chunk: slots,
                encryption: Encryption::PublicKey,
            };
            let bits = 8u8;
            let values: Vec<u64> = (0..records * columns as usize)
                .map(|_| rng.gen_range(0..256))
                .collect();
            let payload = pk.encrypt_columns(shape, bits, &values);
            assert_eq!(payload.len() as u64, shape.payload_len(P));
            let expanded = GlweEvaluator::expand(P, shape, &payload).unwrap();
            let phase = phases(sk, &expanded);
            let n = P.polynomial_size();
            for j in 0..columns as usize {
                for i in 0..records {
                    let want = values[i * columns as usize + j] << 56;
                    let noise = phase[j * n + i].wrapping_sub(want) as i64;
                    worst = worst.max((noise as f64).abs());
                    assert!(
                        (noise as f64).abs() < bound,
                        "column {j} record {i}: noise {noise}"
                    );
                }
            }
        }
        // The bound is a worst case; a real coefficient sits far inside it, but well above a
        // secret-key encryption's 2^17 (the products with r and s are there).
        assert!(
            worst > (1u64 << 18) as f64 && worst < bound / 8.0,
            "worst noise {worst}"
        );
    }

    #[test]
    fn public_key_files_are_checked() {
        let pk = PublicKey::generate(key(), Some(EvalKeyId::from_bytes([5; 16])));
        let bytes = pk.to_bytes();
        assert_eq!(bytes.len(), 64 + 2048 * 8 + 32);
        let back = PublicKey::from_bytes(&bytes).unwrap();
        assert_eq!(back.eval_key(), Some(EvalKeyId::from_bytes([5; 16])));
        assert_eq!(back.to_bytes(), bytes);
        // The file holds no secret: neither key's bits appear in it as a run of bytes.
        let secret = key().to_bytes();
        assert!(
            !bytes
                .windows(64)
                .any(|w| secret.windows(64).any(|s| s == w))
        );
        assert!(matches!(
            PublicKey::from_bytes(&secret),
            Err(KeyError::BadMagic)
        ));
        for (at, v) in [
            (9usize, 7u8),
            (10, 9),
            (13, 1),
            (100, 1),
            (bytes.len() - 1, 0),
        ] {
            let mut bad = bytes.clone();
            bad[at] ^= v.max(1);
            assert!(PublicKey::from_bytes(&bad).is_err(), "byte {at}");
        }
        assert!(PublicKey::from_bytes(&bytes[..bytes.len() - 8]).is_err());
    }
}
