//! The data owner's secret key: generation, fingerprint, and the owner-only key file.
//!
//! The key is a tfhe shortint `ClientKey`; its GLWE secret key encrypts batches. Keeping the
//! whole shortint key means the same secret also serves models that need bootstrapping later.
//! Nothing in this module ever writes the key anywhere but the file the owner names.

use crate::negacyclic::BinaryPolyMultiplier;
use crate::params::shortint_params;
use fhe_batch_core::ids::KeyFingerprint;
use fhe_batch_core::params::ParamSet;
use sha2::{Digest, Sha256};
use std::path::Path;
use tfhe::core_crypto::prelude::*;
use tfhe::shortint::ClientKey as ShortintClientKey;
use tfhe::shortint::client_key::atomic_pattern::{
    AtomicPatternClientKey, StandardAtomicPatternClientKey,
};

const KEY_MAGIC: [u8; 8] = *b"FHEBKEY\0";
/// Key file version 1: GLWE and LWE key bits; the output key is derived from the GLWE key.
const KEY_VERSION_1: u16 = 1;
/// Key file version 2 (written since issue 14): GLWE, LWE and output key bits; the output key
/// is sampled independently.
const KEY_VERSION: u16 = 2;
const KEY_HEADER_LEN: usize = 8 + 2 + 2 + 16 + 8;
/// Largest key file accepted.
pub const MAX_KEY_FILE_BYTES: u64 = 1 << 20;

/// Why a key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("not an fhe-batch key file")]
    BadMagic,
    #[error("key file version {0} is not supported")]
    Version(u16),
    #[error("key file is damaged: {0}")]
    Damaged(String),
    #[error("key uses a parameter set that is not allowed")]
    Params,
    #[error("key file {path} already exists; pass --force to replace it")]
    Exists { path: String },
    #[error("{0}")]
    Passphrase(String),
    #[error("refusing key file {path}: {why}")]
    Unsafe { path: String, why: &'static str },
    #[error("cannot {action} key file {path}: {source}")]
    Io {
        action: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The data owner's secret key. Its `Debug` shows only the fingerprint.
pub struct SecretKey {
    params: ParamSet,
    /// Always `Some` until the key is dropped (taken then to zeroize its parts).
    shortint: Option<ShortintClientKey>,
    glwe: GlweSecretKeyOwned<u64>,
    lwe: LweSecretKeyOwned<u64>,
    fingerprint: KeyFingerprint,
    /// One fast multiplier per GLWE key polynomial.
    multipliers: Vec<BinaryPolyMultiplier>,
    /// The key results of bootstrapped models are packed under ([`SecretKey::output_glwe`]).
    output: GlweSecretKeyOwned<u64>,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretKey")
            .field("params", &self.params)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

fn raw_parts_of(
    key: &ShortintClientKey,
) -> Option<(GlweSecretKeyOwned<u64>, LweSecretKeyOwned<u64>)> {
    match &key.atomic_pattern {
        AtomicPatternClientKey::Standard(ap) => {
            let (glwe, lwe, _, _) = ap.clone().into_raw_parts();
            Some((glwe, lwe))
        }
        _ => None,
    }
}

/// The output key of a version-1 key file: a binary GLWE key of the same shape, derived from
/// the secret key with a PRF (AES-128-CTR keyed by a domain-separated SHA-256 of the key bits).
/// Results of bootstrapped models are packed under it, so the packing key encrypts the input
/// key under a different key; but that key is a function of the input key (key-dependent
/// encryption, sound only heuristically), which is why version-2 files store an independently
/// sampled output key instead ([`sample_output_key`]). Kept so version-1 keys, their published
/// evaluation keys and their results keep working.
fn output_key_of(glwe: &GlweSecretKeyOwned<u64>) -> GlweSecretKeyOwned<u64> {
    let mut h = Sha256::new();
    h.update(b"fhe-batch output key v1");
    for w in glwe.as_ref() {
        h.update(w.to_le_bytes());
    }
    let d = h.finalize();
    let seed = u128::from_le_bytes(d[..16].try_into().expect("16 bytes"));
    let mut words = vec![0u64; glwe.as_ref().len()];
    crate::mask::expand_masks(seed, &mut words);
    words.iter_mut().for_each(|w| *w &= 1);
    GlweSecretKey::from_container(words, glwe.polynomial_size())
}

/// A fresh output key, independent of the input key: uniform binary from its own generator
/// (tfhe's seeder mixed with the operating system's, [`crate::seed`]).
fn sample_output_key(params: ParamSet) -> GlweSecretKeyOwned<u64> {
    use tfhe::core_crypto::commons::math::random::RandomGenerator;
    let n = params.polynomial_size();
    let mut words = vec![0u64; params.glwe_dimension() * n];
    RandomGenerator::<DefaultRandomGenerator>::new(crate::seed::MixedSeeder::new().seed())
        .fill_slice_with_random_uniform_binary_bits(&mut words);
    GlweSecretKey::from_container(words, PolynomialSize(n))
}

fn fingerprint_of(glwe: &GlweSecretKeyOwned<u64>) -> KeyFingerprint {
    let mut h = Sha256::new();
    h.update(b"fhe-batch key fingerprint v1");
    for w in glwe.as_ref() {
        h.update(w.to_le_bytes());
    }
    let d = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&d[..16]);
    KeyFingerprint::from_bytes(out)
}

impl SecretKey {
    /// Generates a fresh key from tfhe's seeder mixed with the operating system's generator
    /// ([`crate::seed`]).
    pub fn generate(params: ParamSet) -> Self {
        let shortint = tfhe::shortint::engine::ShortintEngine::new_from_seeder(
            &mut crate::seed::MixedSeeder::new(),
        )
        .new_client_key(shortint_params(params));
        Self::from_shortint(params, shortint, Some(sample_output_key(params)))
            .expect("fresh key has the requested parameters")
    }

    /// `output`: the stored output key (version 2), or `None` to derive it (version 1).
    fn from_shortint(
        params: ParamSet,
        shortint: ShortintClientKey,
        output: Option<GlweSecretKeyOwned<u64>>,
    ) -> Result<Self, KeyError> {
        let expected = shortint_params(params);
        let p = shortint.parameters();
        if p.glwe_dimension() != expected.glwe_dimension
            || p.polynomial_size() != expected.polynomial_size
            || p.glwe_noise_distribution() != expected.glwe_noise_distribution
            || p.lwe_dimension() != expected.lwe_dimension
            || p.ciphertext_modulus() != expected.ciphertext_modulus
        {
            return Err(KeyError::Params);
        }
        let (glwe, lwe) = raw_parts_of(&shortint).ok_or(KeyError::Params)?;
        if glwe.glwe_dimension().0 != params.glwe_dimension()
            || glwe.polynomial_size().0 != params.polynomial_size()
            || glwe.as_ref().iter().any(|&b| b > 1)
            || lwe.as_ref().iter().any(|&b| b > 1)
        {
            return Err(KeyError::Params);
        }
        let fingerprint = fingerprint_of(&glwe);
        let multipliers = glwe
            .as_polynomial_list()
            .iter()
            .map(|p| BinaryPolyMultiplier::new(p.as_ref()))
            .collect();
        let output = match output {
            Some(o)
                if o.glwe_dimension() == glwe.glwe_dimension()
                    && o.polynomial_size() == glwe.polynomial_size()
                    && o.as_ref().iter().all(|&b| b <= 1) =>
            {
                o
            }
            Some(_) => return Err(KeyError::Params),
            None => output_key_of(&glwe),
        };
        Ok(Self {
            params,
            shortint: Some(shortint),
            glwe,
            lwe,
            fingerprint,
            multipliers,
            output,
        })
    }

    pub fn params(&self) -> ParamSet {
        self.params
    }

    pub fn fingerprint(&self) -> KeyFingerprint {
        self.fingerprint
    }

    #[cfg(test)]
    pub(crate) fn glwe(&self) -> &GlweSecretKeyOwned<u64> {
        &self.glwe
    }

    /// `acc (+/-)= <mask, key>`: the mask-key product of one GLWE ciphertext (k polynomials).
    pub(crate) fn mask_product(&self, acc: &mut [u64], mask: &[u64], subtract: bool) {
        let n = self.params.polynomial_size();
        for (m, poly) in self.multipliers.iter().zip(mask.chunks_exact(n)) {
            m.mul_acc(acc, poly, subtract);
        }
    }

    /// Serializes the key for the owner's key file (version 2): a header, then the binary
    /// GLWE, LWE and output secret keys, one byte per key bit. A key read from a version-1
    /// file is written with the output key it derived, so it stays the same key.
    pub fn to_bytes(&self) -> Vec<u8> {
        let (glwe, lwe) = self.raw_keys();
        let output = self.output.as_ref();
        let body_len = glwe.len() + lwe.len() + output.len();
        let mut out = Vec::with_capacity(KEY_HEADER_LEN + body_len);
        out.extend_from_slice(&KEY_MAGIC);
        out.extend_from_slice(&KEY_VERSION.to_le_bytes());
        out.extend_from_slice(&self.params.wire_id().to_le_bytes());
        out.extend_from_slice(self.fingerprint.as_bytes());
        out.extend_from_slice(&(body_len as u64).to_le_bytes());
        out.extend(glwe.iter().map(|&b| b as u8));
        out.extend(lwe.iter().map(|&b| b as u8));
        out.extend(output.iter().map(|&b| b as u8));
        out
    }

    fn raw_keys(&self) -> (&[u64], &[u64]) {
        (self.glwe.as_ref(), self.lwe.as_ref())
    }

    /// The key bootstrapped models' results are packed under.
    pub(crate) fn output_glwe(&self) -> &GlweSecretKeyOwned<u64> {
        &self.output
    }

    /// The input GLWE key seen as an LWE key of dimension k * N: what sample-extracted
    /// coefficients (and bootstrap outputs) are encrypted under.
    pub(crate) fn big_lwe(&self) -> LweSecretKeyView<'_, u64> {
        LweSecretKey::from_container(self.glwe.as_ref())
    }

    /// The tfhe shortint client key (for models that need bootstrapping).
    pub fn shortint(&self) -> &ShortintClientKey {
        self.shortint
            .as_ref()
            .expect("present until the key is dropped")
    }

    /// Reads a key file's bytes: size-limited, parameter-checked, fingerprint-checked.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        if bytes.len() < KEY_HEADER_LEN || bytes[..8] != KEY_MAGIC {
            return Err(KeyError::BadMagic);
        }
        if bytes.len() as u64 > MAX_KEY_FILE_BYTES {
            return Err(KeyError::Damaged("file too large".into()));
        }
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        if version != KEY_VERSION && version != KEY_VERSION_1 {
            return Err(KeyError::Version(version));
        }
        let params = ParamSet::from_wire_id(u16::from_le_bytes([bytes[10], bytes[11]]))
            .ok_or(KeyError::Params)?;
        let mut fp = [0u8; 16];
        fp.copy_from_slice(&bytes[12..28]);
        let len = u64::from_le_bytes(bytes[28..36].try_into().expect("8 bytes"));
        let body = &bytes[KEY_HEADER_LEN..];
        let sp = shortint_params(params);
        let glwe_len = sp.glwe_dimension.0 * sp.polynomial_size.0;
        let lwe_len = sp.lwe_dimension.0;
        let output_len = if version == KEY_VERSION { glwe_len } else { 0 };
        let needed = glwe_len + lwe_len + output_len;
        if len != body.len() as u64 || body.len() != needed {
            return Err(KeyError::Damaged(format!(
                "declares {len} key bytes, holds {}, parameters need {needed}",
                body.len(),
            )));
        }
        if body.iter().any(|&b| b > 1) {
            return Err(KeyError::Damaged("key bits must be 0 or 1".into()));
        }
        let glwe = GlweSecretKey::from_container(
            body[..glwe_len]
                .iter()
                .map(|&b| b as u64)
                .collect::<Vec<u64>>(),
            sp.polynomial_size,
        );
        let lwe = LweSecretKey::from_container(
            body[glwe_len..glwe_len + lwe_len]
                .iter()
                .map(|&b| b as u64)
                .collect::<Vec<u64>>(),
        );
        let ap = StandardAtomicPatternClientKey::from_raw_parts(glwe, lwe, sp.into(), None);
        let shortint = ShortintClientKey {
            atomic_pattern: AtomicPatternClientKey::Standard(ap),
        };
        let output = (version == KEY_VERSION).then(|| {
            GlweSecretKey::from_container(
                body[glwe_len + lwe_len..]
                    .iter()
                    .map(|&b| b as u64)
                    .collect::<Vec<u64>>(),
                sp.polynomial_size,
            )
        });
        let key = Self::from_shortint(params, shortint, output)?;
        if key.fingerprint != KeyFingerprint::from_bytes(fp) {
            return Err(KeyError::Damaged(
                "fingerprint does not match the key".into(),
            ));
        }
        Ok(key)
    }

    /// Writes the key file, readable and writable by its owner only (mode 0600 on Unix), without
    /// ever following a symbolic link or replacing a file it did not mean to: the bytes go to a
    /// fresh temporary file in the same folder (created exclusively, `O_NOFOLLOW`), which is
    /// synced, then linked to `path` when it must not exist yet (failing if it appeared
    /// meanwhile) or renamed over it with `overwrite`. A folder it has to create is created
    /// owner-only (0700).
    pub fn save(&self, path: &Path, overwrite: bool) -> Result<(), KeyError> {
        self.save_with(path, overwrite, None)
    }

    /// [`SecretKey::save`], sealed under `passphrase` when one is given
    /// (Argon2id and XChaCha20-Poly1305, see the `sealed` module).
    pub fn save_with(
        &self,
        path: &Path,
        overwrite: bool,
        passphrase: Option<&[u8]>,
    ) -> Result<(), KeyError> {
        use std::io::Write;
        use zeroize::Zeroize;
        let io = |action, source| KeyError::Io {
            action,
            path: path.display().to_string(),
            source,
        };
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(KeyError::Unsafe {
                    path: path.display().to_string(),
                    why: "it is a symbolic link",
                });
            }
            Ok(_) if !overwrite => {
                return Err(KeyError::Exists {
                    path: path.display().to_string(),
                });
            }
            _ => {}
        }
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !dir.exists() {
            let mut b = std::fs::DirBuilder::new();
            b.recursive(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::DirBuilderExt;
                b.mode(0o700);
            }
            b.create(dir).map_err(|e| io("create the folder of", e))?;
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| "key".into());
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).map_err(|e| {
            io(
                "name a temporary file for",
                std::io::Error::other(e.to_string()),
            )
        })?;
        let tmp = dir.join(format!(".{name}.{}.tmp", hex::encode(nonce)));
        let mut f = no_follow(std::fs::OpenOptions::new().write(true).create_new(true))
            .open(&tmp)
            .map_err(|e| io("create", e))?;
        let mut bytes = self.to_bytes();
        if let Some(p) = passphrase {
            let sealed = crate::sealed::seal(&bytes, p);
            bytes.zeroize();
            bytes = sealed?;
        }
        let written = f
            .write_all(&bytes)
            .and_then(|_| f.sync_all())
            .map_err(|e| io("write", e));
        bytes.zeroize();
        drop(f);
        let placed = written.and_then(|_| {
            if overwrite {
                std::fs::rename(&tmp, path).map_err(|e| io("replace", e))
            } else {
                std::fs::hard_link(&tmp, path).map_err(|e| {
                    if e.kind() == std::io::ErrorKind::AlreadyExists {
                        KeyError::Exists {
                            path: path.display().to_string(),
                        }
                    } else {
                        io("create", e)
                    }
                })
            }
        });
        let _ = std::fs::remove_file(&tmp);
        placed?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Loads a key file, refusing a symbolic link and anything over [`MAX_KEY_FILE_BYTES`]. A
    /// passphrase-protected file needs [`SecretKey::load_with`].
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        Self::load_with(path, None)
    }

    /// Whether the key file at `path` is passphrase-protected (it is read, not parsed).
    pub fn is_sealed(path: &Path) -> bool {
        use std::io::Read;
        let mut magic = [0u8; 8];
        no_follow(std::fs::OpenOptions::new().read(true))
            .open(path)
            .and_then(|mut f| f.read_exact(&mut magic))
            .is_ok()
            && crate::sealed::is_sealed(&magic)
    }

    /// [`SecretKey::load`], opening a passphrase-protected file with `passphrase`.
    pub fn load_with(path: &Path, passphrase: Option<&[u8]>) -> Result<Self, KeyError> {
        use std::io::Read;
        use zeroize::Zeroize;
        let io = |source| KeyError::Io {
            action: "read",
            path: path.display().to_string(),
            source,
        };
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(KeyError::Unsafe {
                path: path.display().to_string(),
                why: "it is a symbolic link",
            });
        }
        let f = no_follow(std::fs::OpenOptions::new().read(true))
            .open(path)
            .map_err(io)?;
        let mut bytes = Vec::new();
        f.take(MAX_KEY_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        if bytes.len() as u64 > MAX_KEY_FILE_BYTES {
            bytes.zeroize();
            return Err(KeyError::Damaged("file too large".into()));
        }
        if crate::sealed::is_sealed(&bytes) {
            let Some(p) = passphrase else {
                bytes.zeroize();
                return Err(KeyError::Passphrase(format!(
                    "key file {} is passphrase-protected: give its passphrase (FHE_BATCH_PASSPHRASE or FHE_BATCH_PASSPHRASE_FILE)",
                    path.display()
                )));
            };
            let opened = crate::sealed::open(&bytes, p);
            bytes.zeroize();
            bytes = opened?;
        }
        let key = Self::from_bytes(&bytes);
        bytes.zeroize();
        key
    }
}

/// Open options that refuse to follow a symbolic link at the last path component (and create
/// owner-only files).
fn no_follow(opts: &mut std::fs::OpenOptions) -> &mut std::fs::OpenOptions {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.custom_flags(libc::O_NOFOLLOW).mode(0o600);
    }
    opts
}

/// The secret parts are overwritten with zeros when the key is dropped: the GLWE and LWE keys
/// (ours and tfhe's copies), the output key, and the key's FFT images.
impl Drop for SecretKey {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.glwe.as_mut().zeroize();
        self.lwe.as_mut().zeroize();
        self.output.as_mut().zeroize();
        for m in &mut self.multipliers {
            m.zeroize_key();
        }
        if let Some(ck) = self.shortint.take()
            && let AtomicPatternClientKey::Standard(ap) = ck.atomic_pattern
        {
            let (mut glwe, mut lwe, _, _) = ap.into_raw_parts();
            glwe.as_mut().zeroize();
            lwe.as_mut().zeroize();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_round_trip_and_owner_only() {
        let dir = std::env::temp_dir().join(format!("fheb-key-{}", std::process::id()));
        let path = dir.join("client.key");
        let key = SecretKey::generate(ParamSet::Glwe2048TUniform17);
        key.save(&path, false).unwrap();
        assert!(matches!(
            key.save(&path, false),
            Err(KeyError::Exists { .. })
        ));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let back = SecretKey::load(&path).unwrap();
        assert_eq!(back.fingerprint(), key.fingerprint());
        assert_eq!(back.glwe().as_ref(), key.glwe().as_ref());
        // Debug output never shows key material.
        let dbg = format!("{key:?}");
        assert!(dbg.contains("fingerprint") && dbg.len() < 200);
        // --force replaces the file in place (a rename), still owner-only, no stray temp file.
        key.save(&path, true).unwrap();
        assert_eq!(
            SecretKey::load(&path).unwrap().fingerprint(),
            key.fingerprint()
        );
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("client.key")]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A symbolic link where the key goes (or is read from) is refused: the key is never
    /// written through it, and the file it points to is untouched; a folder created for the key
    /// is owner-only.
    #[cfg(unix)]
    #[test]
    fn key_files_refuse_symbolic_links_and_create_owner_only_folders() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("fheb-link-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("keys/client.key");
        let key = SecretKey::generate(ParamSet::Glwe2048TUniform17);
        key.save(&path, false).unwrap();
        let mode = std::fs::metadata(dir.join("keys"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o700);
        let victim = dir.join("victim.txt");
        std::fs::write(&victim, b"not a key").unwrap();
        let link = dir.join("keys/link.key");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        for overwrite in [false, true] {
            assert!(
                matches!(key.save(&link, overwrite), Err(KeyError::Unsafe { .. })),
                "overwrite {overwrite}"
            );
        }
        assert_eq!(std::fs::read(&victim).unwrap(), b"not a key");
        let real = dir.join("keys/real-link.key");
        std::os::unix::fs::symlink(&path, &real).unwrap();
        assert!(matches!(
            SecretKey::load(&real),
            Err(KeyError::Unsafe { .. })
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Version-1 files (no stored output key) still load, with the output key they always had
    /// (derived), and are re-written as version 2 holding that same key; new keys sample their
    /// output key independently.
    #[test]
    fn version_1_key_files_still_load_and_new_keys_have_an_independent_output_key() {
        let v1 = include_bytes!("../../../fuzz/seeds/key_file/test-key.bin");
        assert_eq!(u16::from_le_bytes([v1[8], v1[9]]), 1);
        let old = SecretKey::from_bytes(v1).unwrap();
        assert_eq!(old.output_glwe(), &output_key_of(&old.glwe));
        let v2 = old.to_bytes();
        assert_eq!(u16::from_le_bytes([v2[8], v2[9]]), KEY_VERSION);
        assert_eq!(v2.len(), v1.len() + 2048);
        let again = SecretKey::from_bytes(&v2).unwrap();
        assert_eq!(again.output_glwe(), old.output_glwe());
        assert_eq!(again.fingerprint(), old.fingerprint());
        assert_eq!(again.to_bytes(), v2);
        let mut extra = v1.to_vec();
        extra.push(0);
        assert!(SecretKey::from_bytes(&extra).is_err());

        let new = SecretKey::generate(ParamSet::Glwe2048TUniform17);
        let derived = output_key_of(&new.glwe);
        let differ = new
            .output_glwe()
            .as_ref()
            .iter()
            .zip(derived.as_ref())
            .filter(|(a, b)| a != b)
            .count();
        let ones = new.output_glwe().as_ref().iter().sum::<u64>();
        // Independent uniform bits: about half differ from the derived key, about half are set.
        assert!((800..1250).contains(&differ), "{differ}");
        assert!((800..1250).contains(&ones), "{ones}");
        let bytes = new.to_bytes();
        assert_eq!(
            SecretKey::from_bytes(&bytes).unwrap().output_glwe(),
            new.output_glwe()
        );
        let mut bad = bytes.clone();
        *bad.last_mut().unwrap() = 2;
        assert!(SecretKey::from_bytes(&bad).is_err());
    }

    /// A sealed key file opens with its passphrase only; its bytes hold no window of the plain
    /// key file; any changed byte fails like a wrong passphrase.
    #[test]
    fn passphrase_protected_key_files() {
        let dir = tempfile_dir("sealed");
        let path = dir.join("owner.key");
        let key = SecretKey::generate(ParamSet::Glwe2048TUniform17);
        key.save_with(&path, false, Some(b"correct horse battery staple"))
            .unwrap();
        assert!(SecretKey::is_sealed(&path));
        let e = SecretKey::load(&path).unwrap_err();
        assert!(e.to_string().contains("passphrase-protected"), "{e}");
        let e = SecretKey::load_with(&path, Some(b"wrong")).unwrap_err();
        assert!(matches!(e, KeyError::Passphrase(_)), "{e}");
        let back = SecretKey::load_with(&path, Some(b"correct horse battery staple")).unwrap();
        assert_eq!(back.to_bytes(), key.to_bytes());
        let sealed = std::fs::read(&path).unwrap();
        let plain = key.to_bytes();
        assert!(
            !sealed
                .windows(32)
                .any(|w| plain.windows(32).any(|p| p == w))
        );
        for at in [12usize, 30, 50, 100, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[at] ^= 1;
            assert!(
                crate::sealed::open(&bad, b"correct horse battery staple").is_err(),
                "byte {at}"
            );
        }
        // Costs beyond the limits are refused before any derivation.
        let mut greedy = sealed.clone();
        greedy[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            crate::sealed::open(&greedy, b"correct horse battery staple"),
            Err(KeyError::Damaged(_))
        ));
        // An unprotected key is not sealed, and an empty passphrase is refused.
        let plain_path = dir.join("plain.key");
        key.save(&plain_path, false).unwrap();
        assert!(!SecretKey::is_sealed(&plain_path));
        assert!(
            key.save_with(&dir.join("empty.key"), false, Some(b""))
                .is_err()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir(tag: &str) -> std::path::PathBuf {
        let mut n = [0u8; 8];
        getrandom::fill(&mut n).unwrap();
        let d = std::env::temp_dir().join(format!("fheb-{tag}-{}", hex::encode(n)));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn damaged_key_files_are_refused() {
        let key = SecretKey::generate(ParamSet::Glwe2048TUniform17);
        let bytes = key.to_bytes();
        for cut in [0, 7, 20, 36, bytes.len() / 2, bytes.len() - 1] {
            assert!(SecretKey::from_bytes(&bytes[..cut]).is_err(), "cut {cut}");
        }
        let mut flipped = bytes.clone();
        flipped[14] ^= 1; // fingerprint
        assert!(SecretKey::from_bytes(&flipped).is_err());
        let mut flipped = bytes.clone();
        flipped[10] = 99; // parameter set id
        assert!(matches!(
            SecretKey::from_bytes(&flipped),
            Err(KeyError::Params)
        ));
    }
}
