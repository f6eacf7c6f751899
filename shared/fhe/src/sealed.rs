//! Optional passphrase protection of the secret key file (off by default).
//!
//! A sealed file is the ordinary key file (version 2) encrypted with XChaCha20-Poly1305 under a
//! key derived from the passphrase by Argon2id (RFC 9106's second recommended setting: 64 MiB,
//! 3 passes, 4 lanes), with a fresh 16-byte salt and 24-byte nonce from the operating system's
//! generator. The whole header is authenticated as associated data, so a changed cost, salt or
//! version fails like a wrong passphrase.
//!
//! ```text
//!  0  magic "FHEBSEAL"   8  version u16 (1)   10  KDF u16 (1: Argon2id v0x13)
//! 12  memory KiB u32    16  passes u32       20  lanes u32
//! 24  salt [16]         40  nonce [24]       64  ciphertext of the key file, then its 16-byte tag
//! ```

use crate::keys::KeyError;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::Zeroize;

pub(crate) const SEALED_MAGIC: [u8; 8] = *b"FHEBSEAL";
const SEALED_VERSION: u16 = 1;
const KDF_ARGON2ID: u16 = 1;
const HEADER_LEN: usize = 64;
const TAG_LEN: usize = 16;
/// RFC 9106, section 4, second recommended option.
const MEMORY_KIB: u32 = 64 * 1024;
const PASSES: u32 = 3;
const LANES: u32 = 4;
/// The costs a sealed file may ask for (a hostile file must not make loading take hours).
const MAX_MEMORY_KIB: u32 = 1024 * 1024;
const MAX_PASSES: u32 = 16;
const MAX_LANES: u32 = 16;

/// Whether `bytes` are a sealed key file.
pub(crate) fn is_sealed(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[..8] == SEALED_MAGIC
}

fn derive(
    passphrase: &[u8],
    salt: &[u8],
    memory: u32,
    passes: u32,
    lanes: u32,
) -> Result<[u8; 32], KeyError> {
    let params = argon2::Params::new(memory, passes, lanes, Some(32))
        .map_err(|e| KeyError::Damaged(format!("passphrase parameters: {e}")))?;
    let kdf = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut key = [0u8; 32];
    kdf.hash_password_into(passphrase, salt, &mut key)
        .map_err(|e| KeyError::Damaged(format!("passphrase key derivation: {e}")))?;
    Ok(key)
}

fn random<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).expect("the operating system's generator");
    out
}

/// Seals key file bytes under a passphrase.
pub(crate) fn seal(plain: &[u8], passphrase: &[u8]) -> Result<Vec<u8>, KeyError> {
    if passphrase.is_empty() {
        return Err(KeyError::Passphrase("the passphrase is empty".into()));
    }
    let salt: [u8; 16] = random();
    let nonce: [u8; 24] = random();
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(&SEALED_MAGIC);
    header.extend_from_slice(&SEALED_VERSION.to_le_bytes());
    header.extend_from_slice(&KDF_ARGON2ID.to_le_bytes());
    header.extend_from_slice(&MEMORY_KIB.to_le_bytes());
    header.extend_from_slice(&PASSES.to_le_bytes());
    header.extend_from_slice(&LANES.to_le_bytes());
    header.extend_from_slice(&salt);
    header.extend_from_slice(&nonce);
    let mut key = derive(passphrase, &salt, MEMORY_KIB, PASSES, LANES)?;
    let cipher = XChaCha20Poly1305::new(&key.into());
    key.zeroize();
    let sealed = cipher
        .encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: plain,
                aad: &header,
            },
        )
        .map_err(|_| KeyError::Passphrase("sealing failed".into()))?;
    header.extend_from_slice(&sealed);
    Ok(header)
}

/// Opens a sealed key file: the key file bytes, or why not (a wrong passphrase and a damaged
/// file are indistinguishable by design).
pub(crate) fn open(bytes: &[u8], passphrase: &[u8]) -> Result<Vec<u8>, KeyError> {
    if !is_sealed(bytes) {
        return Err(KeyError::BadMagic);
    }
    if bytes.len() < HEADER_LEN + TAG_LEN {
        return Err(KeyError::Damaged("sealed key file is truncated".into()));
    }
    let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let version = u16_at(8);
    if version != SEALED_VERSION {
        return Err(KeyError::Version(version));
    }
    if u16_at(10) != KDF_ARGON2ID {
        return Err(KeyError::Damaged(format!(
            "unknown key derivation {}",
            u16_at(10)
        )));
    }
    let (memory, passes, lanes) = (u32_at(12), u32_at(16), u32_at(20));
    if memory > MAX_MEMORY_KIB || passes > MAX_PASSES || lanes > MAX_LANES {
        return Err(KeyError::Damaged(format!(
            "passphrase costs {memory} KiB, {passes} passes, {lanes} lanes exceed the limits"
        )));
    }
    let nonce: [u8; 24] = bytes[40..64].try_into().expect("24 bytes");
    let mut key = derive(passphrase, &bytes[24..40], memory, passes, lanes)?;
    let cipher = XChaCha20Poly1305::new(&key.into());
    key.zeroize();
    cipher
        .decrypt(
            &XNonce::from(nonce),
            Payload {
                msg: &bytes[HEADER_LEN..],
                aad: &bytes[..HEADER_LEN],
            },
        )
        .map_err(|_| {
            KeyError::Passphrase("wrong passphrase, or the sealed key file was changed".into())
        })
}
