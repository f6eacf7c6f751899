//! Expansion of a public 128-bit seed into GLWE masks: AES-128 in counter mode keyed by the
//! seed, the same construction as tfhe's CSPRNG (tfhe-csprng is AES-CTR too), but run a whole
//! block batch at a time with AES-NI instead of one byte per call.
//!
//! The client and the server both call [`expand_masks`], so a seeded ciphertext travels as its
//! seed and bodies only. Masks are uniform 64-bit words, as tfhe's native-modulus masks are.

use aes::Aes128;
use aes::cipher::{BlockCipherEncrypt, KeyInit};

/// Domain separator in the counter's high half: masks of fhe-batch seeded GLWE lists, v1.
const DOMAIN: u64 = u64::from_le_bytes(*b"FHEBMSK1");
const BATCH_BLOCKS: usize = 64;

/// The mask word stream of one seed, filled in consecutive pieces.
pub struct MaskStream {
    cipher: Aes128,
    counter: u64,
    /// A fill ended in the middle of a block; only a final fill may do that.
    ragged: bool,
}

impl MaskStream {
    pub fn new(seed: u128) -> Self {
        Self {
            cipher: Aes128::new(&seed.to_le_bytes().into()),
            counter: 0,
            ragged: false,
        }
    }

    /// Writes the next `out.len()` words of the stream. Every fill but the last must have an
    /// even length (whole AES blocks), so pieces concatenate to exactly the one-shot stream.
    pub fn fill(&mut self, out: &mut [u64]) {
        assert!(!self.ragged, "only the last fill may have an odd length");
        self.ragged = out.len() % 2 == 1;
        let mut blocks = [aes::Block::default(); BATCH_BLOCKS];
        for words in out.chunks_mut(2 * BATCH_BLOCKS) {
            let n_blocks = words.len().div_ceil(2);
            for b in blocks.iter_mut().take(n_blocks) {
                let ctr = (self.counter as u128) | ((DOMAIN as u128) << 64);
                *b = ctr.to_le_bytes().into();
                self.counter += 1;
            }
            self.cipher.encrypt_blocks(&mut blocks[..n_blocks]);
            for (pair, b) in words.chunks_mut(2).zip(&blocks) {
                let bytes: [u8; 16] = (*b).into();
                pair[0] = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
                if let Some(second) = pair.get_mut(1) {
                    *second = u64::from_le_bytes(bytes[8..].try_into().expect("8 bytes"));
                }
            }
        }
    }
}

/// Fills `out` with the mask words derived from `seed`.
pub fn expand_masks(seed: u128, out: &mut [u64]) {
    MaskStream::new(seed).fill(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_distinct_and_prefix_stable() {
        let mut a = vec![0u64; 1000];
        let mut b = vec![0u64; 1000];
        expand_masks(7, &mut a);
        expand_masks(7, &mut b);
        assert_eq!(a, b);
        let mut c = vec![0u64; 1000];
        expand_masks(8, &mut c);
        assert_ne!(a, c);
        // A shorter expansion is a prefix of a longer one (odd lengths included).
        let mut short = vec![0u64; 333];
        expand_masks(7, &mut short);
        assert_eq!(short, a[..333]);
        // Filling in whole-block pieces gives the same stream.
        let mut pieces = vec![0u64; 1000];
        let mut stream = MaskStream::new(7);
        for piece in pieces.chunks_mut(250) {
            stream.fill(piece);
        }
        assert_eq!(pieces, a);
        // Words look uniform: about half of all bits set.
        let ones: u32 = a.iter().map(|w| w.count_ones()).sum();
        assert!((31_000..33_000).contains(&ones), "{ones}");
    }
}
