//! The batch (`.fheb`) and result (`.fher`) file formats.
//!
//! Both are little-endian, versioned, and read with explicit size limits. A batch is a header
//! (fixed part, chunk table, SHA-256 of the header) followed by the ciphertext chunks, laid out
//! contiguously and in order, so chunk `i` is one byte range that an S3 ranged GET can fetch
//! without reading the rest of the file. Each chunk's SHA-256 is in the chunk table, so a
//! corrupted chunk is detected before it is evaluated.
//!
//! ```text
//! batch header, fixed part (64 bytes)
//!   0  magic "FHEB"            4  format version u16     6  parameter set u16
//!   8  header length u32      12  input columns u32     16  record count u64
//!  24  chunk count u32        28  records per chunk u32 32  model id [16]
//!  48  key fingerprint [16]
//! version 2 and 3 (80-byte fixed part):
//!  64  evaluation key id [16] (all zero: none)
//! version 3 only (96-byte fixed part):
//!  80  encryption u16 (1 secret key, 2 public key)   82  reserved [14] (zero)
//! chunk table: per chunk (56 bytes) offset u64, length u64, records u32, reserved u32, sha256 [32]
//! header checksum: sha256 of everything above [32]
//! chunk payload, secret-key batches: compression seed u128, then input columns x records-per-chunk
//!   ciphertext bodies (u64 each)
//! chunk payload, public-key batches: ceil(input columns / g) whole GLWEs ((k + 1) x N u64 each,
//!   mask then body), g = max(1, N / records-per-chunk) columns per GLWE, column j of the chunk at
//!   coefficients (j mod g) x records-per-chunk onwards of GLWE j / g
//!
//! Version 1 has N records per chunk (one record per GLWE coefficient) and no evaluation key.
//! Version 2 lets a chunk hold fewer records (models that bootstrap cost far more per record, so
//! their chunks are sized to finish inside a worker's time limit): each column then sends only
//! the bodies of its first `records_per_chunk` coefficients, the others are never decrypted. It
//! also names the evaluation key the worker needs. Version 3 is a version-2 header that says
//! how the records were encrypted ([`Encryption`]); it is written only for public-key batches,
//! so a secret-key batch is byte for byte what it was.
//!
//! result file
//!   0  magic "FHER"            4  format version u16     6  parameter set u16
//!   8  output ciphertexts u32 12  chunk index u32       16  chunk count u32
//!  20  records u32            24  output bits u8 (+3 reserved)
//!  28  reserved u32           32  model id [16]          48  key fingerprint [16]
//!  64  first record u64       72  output ciphertexts x GLWE (mask then body, u64 each)
//!  end sha256 of everything before it [32]
//! ```
//!
//! A batch of two small chunks, written and read back; the reader finds each chunk's byte
//! range and checks its hash:
//!
//! ```
//! use fhe_batch_core::format::{
//!     BatchHeader, BatchLimits, ChunkLayout, assemble_batch, verify_chunk,
//! };
//! use fhe_batch_core::ids::{KeyFingerprint, ModelId};
//! use fhe_batch_core::params::{Encryption, ParamSet};
//!
//! let params = ParamSet::Glwe2048TUniform17;
//! let layout = ChunkLayout { records_per_chunk: 4, eval_key: None, encryption: Encryption::SecretKey };
//! let len = layout.shape(3).payload_len(params) as usize; // seed + 3 columns x 4 bodies
//! let payloads = vec![(4, vec![1u8; len]), (2, vec![2u8; len])];
//! let bytes = assemble_batch(
//!     params,
//!     3,
//!     layout,
//!     ModelId::from_bytes([7; 16]),
//!     KeyFingerprint::from_bytes([9; 16]),
//!     &payloads,
//! );
//! let header = BatchHeader::parse(&bytes, &BatchLimits::default()).unwrap();
//! assert_eq!((header.record_count, header.records_per_chunk), (6, 4));
//! assert_eq!(header.version(), 2); // fewer than 2,048 records per chunk
//! let c = &header.chunks[1];
//! let payload = &bytes[c.offset as usize..(c.offset + c.length) as usize];
//! verify_chunk(payload, c.length, &c.sha256).unwrap();
//! assert!(verify_chunk(&payloads[0].1, c.length, &c.sha256).is_err());
//! ```

use crate::ids::{KeyFingerprint, ModelId};
use crate::params::{Encryption, ParamSet};
use sha2::{Digest, Sha256};

pub const BATCH_MAGIC: [u8; 4] = *b"FHEB";
pub const RESULT_MAGIC: [u8; 4] = *b"FHER";
pub const FORMAT_VERSION: u16 = 1;
pub const FIXED_HEADER_LEN: usize = 64;
/// Batch format version 2: variable records per chunk and an evaluation key id.
pub const BATCH_VERSION_2: u16 = 2;
pub const FIXED_HEADER_LEN_V2: usize = 80;
/// Batch format version 3: version 2 plus the kind of encryption (public-key batches).
pub const BATCH_VERSION_3: u16 = 3;
pub const FIXED_HEADER_LEN_V3: usize = 96;
pub const CHUNK_ENTRY_LEN: usize = 56;
pub const CHECKSUM_LEN: usize = 32;
pub const SEED_LEN: usize = 16;
pub const RESULT_HEADER_LEN: usize = 72;
/// Result format version 2: the header binds the result to its job and batch
/// ([`ResultBinding`], 48 more bytes).
pub const RESULT_VERSION_2: u16 = 2;
/// Header length of a version-2 result.
pub const RESULT_HEADER_LEN_V2: usize = RESULT_HEADER_LEN + 48;

/// Why a batch or result file is refused. Every variant reads as a sentence a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("not a {what} file (bad magic bytes)")]
    BadMagic { what: &'static str },
    #[error("{what} format version {found} is not supported by this build")]
    Version { what: &'static str, found: u16 },
    #[error("parameter set {id} is not one of the allowed 128-bit parameter sets")]
    UnknownParams { id: u16 },
    #[error("{what} is truncated: {needed} bytes needed, {got} present")]
    Truncated {
        what: &'static str,
        needed: u64,
        got: u64,
    },
    #[error("{what} of {value} exceeds the limit of {limit}")]
    TooLarge {
        what: &'static str,
        value: u64,
        limit: u64,
    },
    #[error("{what} checksum does not match: the file is corrupted")]
    Checksum { what: &'static str },
    #[error(
        "record count disagrees: the header says {header} records, the chunk table holds {chunks}"
    )]
    RecordCount { header: u64, chunks: u64 },
    #[error("batch object is {actual} bytes but its header describes {declared} bytes")]
    SizeMismatch { declared: u64, actual: u64 },
    #[error("malformed {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
}

fn malformed(what: &'static str, detail: impl Into<String>) -> FormatError {
    FormatError::Malformed {
        what,
        detail: detail.into(),
    }
}

/// Size limits applied before anything is allocated or downloaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    pub max_records: u64,
    pub max_features: u32,
    pub max_chunks: u32,
    pub max_batch_bytes: u64,
}

impl Default for BatchLimits {
    fn default() -> Self {
        Self {
            max_records: 100_000_000,
            max_features: crate::model::MAX_FEATURES as u32,
            max_chunks: 65_536,
            max_batch_bytes: 256 << 30,
        }
    }
}

/// One entry of the chunk table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkEntry {
    pub offset: u64,
    pub length: u64,
    pub records: u32,
    pub sha256: [u8; 32],
}

/// A parsed and validated batch header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchHeader {
    pub params: ParamSet,
    pub input_columns: u32,
    pub record_count: u64,
    pub model_id: ModelId,
    pub key_fingerprint: KeyFingerprint,
    /// Records per chunk (all chunks but the last are full).
    pub records_per_chunk: u32,
    /// The evaluation key a worker needs (models that bootstrap).
    pub eval_key: Option<crate::ids::EvalKeyId>,
    /// How the records were encrypted.
    pub encryption: Encryption,
    pub chunks: Vec<ChunkEntry>,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }
    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        out.copy_from_slice(&self.buf[self.pos..self.pos + N]);
        self.pos += N;
        out
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.bytes())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.bytes())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.bytes())
    }
}

/// The shape of a chunk payload: ciphertext columns per record, records per chunk (the
/// body coefficients each column sends), and how they were encrypted. The two counts have the
/// same type, so they travel as one value with named fields and cannot be swapped at a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkShape {
    pub input_columns: u32,
    pub records_per_chunk: u32,
    pub encryption: Encryption,
}

impl ChunkShape {
    /// Bytes of one chunk payload under `params`:
    /// - secret key: the seed, then `records_per_chunk` bodies per column;
    /// - public key: [`ChunkShape::glwes`] whole GLWEs.
    pub fn payload_len(self, params: ParamSet) -> u64 {
        match self.encryption {
            Encryption::SecretKey => {
                SEED_LEN as u64 + self.input_columns as u64 * self.records_per_chunk as u64 * 8
            }
            Encryption::PublicKey => self.glwes(params) as u64 * params.glwe_bytes() as u64,
        }
    }

    /// Columns that share one GLWE of a public-key payload (1 for secret-key payloads).
    pub fn columns_per_glwe(self, params: ParamSet) -> u32 {
        match self.encryption {
            Encryption::SecretKey => 1,
            Encryption::PublicKey => params.columns_per_glwe(self.records_per_chunk),
        }
    }

    /// GLWE ciphertexts in one payload.
    pub fn glwes(self, params: ParamSet) -> u32 {
        self.input_columns.div_ceil(self.columns_per_glwe(params))
    }
}

/// Header length for a format version and a number of chunks.
pub fn batch_header_len(version: u16, chunk_count: u32) -> u64 {
    let fixed = match version {
        BATCH_VERSION_2 => FIXED_HEADER_LEN_V2,
        BATCH_VERSION_3 => FIXED_HEADER_LEN_V3,
        _ => FIXED_HEADER_LEN,
    };
    fixed as u64 + chunk_count as u64 * CHUNK_ENTRY_LEN as u64 + CHECKSUM_LEN as u64
}

impl BatchHeader {
    /// Reads the total header length from the fixed part (the first [`FIXED_HEADER_LEN`]
    /// bytes), so a reader knows how much more to fetch. Checks magic, version and limits first.
    pub fn header_len_from_prefix(prefix: &[u8], limits: &BatchLimits) -> Result<u64, FormatError> {
        if prefix.len() < 4 || prefix[..4] != BATCH_MAGIC {
            return Err(FormatError::BadMagic { what: "batch" });
        }
        if prefix.len() < FIXED_HEADER_LEN {
            return Err(FormatError::Truncated {
                what: "batch header",
                needed: FIXED_HEADER_LEN as u64,
                got: prefix.len() as u64,
            });
        }
        let mut r = Reader::new(prefix);
        r.pos = 4;
        let version = r.u16();
        if !matches!(version, FORMAT_VERSION | BATCH_VERSION_2 | BATCH_VERSION_3) {
            return Err(FormatError::Version {
                what: "batch",
                found: version,
            });
        }
        r.pos = 24;
        let chunk_count = r.u32();
        if chunk_count > limits.max_chunks {
            return Err(FormatError::TooLarge {
                what: "chunk count",
                value: chunk_count as u64,
                limit: limits.max_chunks as u64,
            });
        }
        r.pos = 8;
        let declared = r.u32() as u64;
        let expected = batch_header_len(version, chunk_count);
        if declared != expected {
            return Err(malformed(
                "batch header",
                format!(
                    "header length {declared} does not match {chunk_count} chunks ({expected})"
                ),
            ));
        }
        Ok(expected)
    }

    /// Parses and validates a complete header (`bytes` may extend past it).
    pub fn parse(bytes: &[u8], limits: &BatchLimits) -> Result<Self, FormatError> {
        let hlen = Self::header_len_from_prefix(bytes, limits)? as usize;
        if bytes.len() < hlen {
            return Err(FormatError::Truncated {
                what: "batch header",
                needed: hlen as u64,
                got: bytes.len() as u64,
            });
        }
        let body = &bytes[..hlen - CHECKSUM_LEN];
        let sum: [u8; 32] = Sha256::digest(body).into();
        if sum[..] != bytes[hlen - CHECKSUM_LEN..hlen] {
            return Err(FormatError::Checksum {
                what: "batch header",
            });
        }
        let mut r = Reader::new(bytes);
        r.pos = 4;
        let version = r.u16();
        let param_id = r.u16();
        let params =
            ParamSet::from_wire_id(param_id).ok_or(FormatError::UnknownParams { id: param_id })?;
        r.pos = 12;
        let input_columns = r.u32();
        let record_count = r.u64();
        let chunk_count = r.u32();
        let records_per_chunk = r.u32();
        let model_id = ModelId::from_bytes(r.bytes());
        let key_fingerprint = KeyFingerprint::from_bytes(r.bytes());
        let eval_key = if version >= BATCH_VERSION_2 {
            let id: [u8; 16] = r.bytes();
            (id != [0; 16]).then(|| crate::ids::EvalKeyId::from_bytes(id))
        } else {
            None
        };
        let encryption = if version == BATCH_VERSION_3 {
            let id = r.u16();
            let reserved: [u8; 14] = r.bytes();
            match Encryption::from_wire_id(id) {
                Some(Encryption::PublicKey) if reserved == [0; 14] => Encryption::PublicKey,
                _ => {
                    return Err(malformed(
                        "batch header",
                        format!("encryption kind {id} is not one a version-3 batch carries"),
                    ));
                }
            }
        } else {
            Encryption::SecretKey
        };
        if input_columns == 0 || input_columns > limits.max_features {
            return Err(FormatError::TooLarge {
                what: "feature count",
                value: input_columns as u64,
                limit: limits.max_features as u64,
            });
        }
        if record_count > limits.max_records {
            return Err(FormatError::TooLarge {
                what: "record count",
                value: record_count,
                limit: limits.max_records,
            });
        }
        if record_count == 0 {
            return Err(malformed("batch header", "the batch holds no records"));
        }
        let n = params.polynomial_size() as u64;
        let chunk_size_ok = if version >= BATCH_VERSION_2 {
            (1..=n).contains(&(records_per_chunk as u64))
        } else {
            records_per_chunk as u64 == n
        };
        if !chunk_size_ok {
            return Err(malformed(
                "batch header",
                format!("{records_per_chunk} records per chunk; parameter set {params} has {n}"),
            ));
        }
        let expected_chunks = record_count.div_ceil(records_per_chunk as u64);
        if chunk_count as u64 != expected_chunks {
            return Err(FormatError::RecordCount {
                header: record_count,
                chunks: chunk_count as u64 * records_per_chunk as u64,
            });
        }
        let payload = ChunkShape {
            input_columns,
            records_per_chunk,
            encryption,
        }
        .payload_len(params);
        let mut chunks = Vec::with_capacity(chunk_count as usize);
        let mut total_records = 0u64;
        let mut expected_offset = hlen as u64;
        for i in 0..chunk_count {
            let offset = r.u64();
            let length = r.u64();
            let records = r.u32();
            let _reserved = r.u32();
            let sha256 = r.bytes::<32>();
            if offset != expected_offset || length != payload {
                return Err(malformed(
                    "chunk table",
                    format!("chunk {i} at {offset}+{length}; expected {expected_offset}+{payload}"),
                ));
            }
            if records == 0 || records > records_per_chunk {
                return Err(malformed(
                    "chunk table",
                    format!("chunk {i} claims {records} records (1..={records_per_chunk} allowed)"),
                ));
            }
            total_records += records as u64;
            expected_offset += length;
            chunks.push(ChunkEntry {
                offset,
                length,
                records,
                sha256,
            });
        }
        if total_records != record_count {
            return Err(FormatError::RecordCount {
                header: record_count,
                chunks: total_records,
            });
        }
        if expected_offset > limits.max_batch_bytes {
            return Err(FormatError::TooLarge {
                what: "batch size in bytes",
                value: expected_offset,
                limit: limits.max_batch_bytes,
            });
        }
        Ok(Self {
            params,
            input_columns,
            record_count,
            model_id,
            key_fingerprint,
            records_per_chunk,
            eval_key,
            encryption,
            chunks,
        })
    }

    /// The smallest version that can say everything: 3 for public-key batches, else 1 for
    /// full chunks without an evaluation key, else 2.
    pub fn version(&self) -> u16 {
        if self.encryption == Encryption::PublicKey {
            BATCH_VERSION_3
        } else if self.eval_key.is_none()
            && self.records_per_chunk as usize == self.params.polynomial_size()
        {
            FORMAT_VERSION
        } else {
            BATCH_VERSION_2
        }
    }

    pub fn header_len(&self) -> u64 {
        batch_header_len(self.version(), self.chunks.len() as u32)
    }

    /// Total object size the header describes.
    pub fn total_len(&self) -> u64 {
        self.header_len() + self.chunks.iter().map(|c| c.length).sum::<u64>()
    }

    /// Checks the uploaded object's real size against the header (catches truncation and
    /// trailing garbage before any chunk is queued).
    pub fn check_object_size(&self, actual: u64) -> Result<(), FormatError> {
        let declared = self.total_len();
        if declared != actual {
            return Err(FormatError::SizeMismatch { declared, actual });
        }
        Ok(())
    }

    /// The SHA-256 of the encoded header: what a job's results are bound to
    /// ([`ResultBinding`]), and what names the batch in its job's record.
    pub fn sha256(&self) -> [u8; 32] {
        Sha256::digest(self.encode()).into()
    }

    /// Serializes the header (chunk table and checksum included).
    pub fn encode(&self) -> Vec<u8> {
        let chunk_count = self.chunks.len() as u32;
        let version = self.version();
        let hlen = batch_header_len(version, chunk_count);
        let mut out = Vec::with_capacity(hlen as usize);
        out.extend_from_slice(&BATCH_MAGIC);
        out.extend_from_slice(&version.to_le_bytes());
        out.extend_from_slice(&self.params.wire_id().to_le_bytes());
        out.extend_from_slice(&(hlen as u32).to_le_bytes());
        out.extend_from_slice(&self.input_columns.to_le_bytes());
        out.extend_from_slice(&self.record_count.to_le_bytes());
        out.extend_from_slice(&chunk_count.to_le_bytes());
        out.extend_from_slice(&self.records_per_chunk.to_le_bytes());
        out.extend_from_slice(self.model_id.as_bytes());
        out.extend_from_slice(self.key_fingerprint.as_bytes());
        if version >= BATCH_VERSION_2 {
            out.extend_from_slice(self.eval_key.as_ref().map_or(&[0u8; 16], |k| k.as_bytes()));
        }
        if version == BATCH_VERSION_3 {
            out.extend_from_slice(&self.encryption.wire_id().to_le_bytes());
            out.extend_from_slice(&[0u8; 14]);
        }
        for c in &self.chunks {
            out.extend_from_slice(&c.offset.to_le_bytes());
            out.extend_from_slice(&c.length.to_le_bytes());
            out.extend_from_slice(&c.records.to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
            out.extend_from_slice(&c.sha256);
        }
        let sum: [u8; 32] = Sha256::digest(&out).into();
        out.extend_from_slice(&sum);
        out
    }
}

/// How a batch's chunks are laid out: records per chunk, the evaluation key they need, and
/// how they are encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLayout {
    pub records_per_chunk: u32,
    pub eval_key: Option<crate::ids::EvalKeyId>,
    pub encryption: Encryption,
}

impl ChunkLayout {
    /// One record per GLWE coefficient, no evaluation key, secret-key encryption (linear
    /// models; format version 1).
    pub fn full(params: ParamSet) -> Self {
        Self {
            records_per_chunk: params.polynomial_size() as u32,
            eval_key: None,
            encryption: Encryption::SecretKey,
        }
    }

    /// The shape of this layout's chunk payloads for `input_columns` columns.
    pub fn shape(self, input_columns: u32) -> ChunkShape {
        ChunkShape {
            input_columns,
            records_per_chunk: self.records_per_chunk,
            encryption: self.encryption,
        }
    }
}

/// Assembles a batch file from encrypted chunk payloads (in order).
pub fn assemble_batch(
    params: ParamSet,
    input_columns: u32,
    layout: ChunkLayout,
    model_id: ModelId,
    key_fingerprint: KeyFingerprint,
    payloads: &[(u32, Vec<u8>)],
) -> Vec<u8> {
    let mut header = BatchHeader {
        params,
        input_columns,
        record_count: payloads.iter().map(|(r, _)| *r as u64).sum(),
        model_id,
        key_fingerprint,
        records_per_chunk: layout.records_per_chunk,
        eval_key: layout.eval_key,
        encryption: layout.encryption,
        chunks: Vec::new(),
    };
    let hlen = batch_header_len(header.version(), payloads.len() as u32);
    let mut offset = hlen;
    header.chunks = payloads
        .iter()
        .map(|(records, p)| {
            let e = ChunkEntry {
                offset,
                length: p.len() as u64,
                records: *records,
                sha256: Sha256::digest(p).into(),
            };
            offset += p.len() as u64;
            e
        })
        .collect();
    let mut out = header.encode();
    out.reserve(payloads.iter().map(|(_, p)| p.len()).sum());
    for (_, p) in payloads {
        out.extend_from_slice(p);
    }
    out
}

/// Checks a chunk payload fetched by range against its table entry.
pub fn verify_chunk(payload: &[u8], length: u64, sha256: &[u8; 32]) -> Result<(), FormatError> {
    if payload.len() as u64 != length {
        return Err(FormatError::Truncated {
            what: "chunk",
            needed: length,
            got: payload.len() as u64,
        });
    }
    let sum: [u8; 32] = Sha256::digest(payload).into();
    if &sum != sha256 {
        return Err(FormatError::Checksum { what: "chunk" });
    }
    Ok(())
}

/// What a result answers: its job (a hash of the job id) and the batch (the SHA-256 of the
/// batch header, which names every chunk's hash). A result copied from another job or batch
/// carries the other's binding, and decryption refuses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResultBinding {
    pub job: [u8; 16],
    pub batch_header_sha256: [u8; 32],
}

impl ResultBinding {
    /// The binding of job `job`'s batch whose header hashes to `batch_header_sha256`.
    pub fn new(job: &crate::ids::JobId, batch_header_sha256: [u8; 32]) -> Self {
        let mut h = Sha256::new();
        h.update(b"fhe-batch job v1");
        h.update(job.as_str().as_bytes());
        let d = h.finalize();
        let mut j = [0u8; 16];
        j.copy_from_slice(&d[..16]);
        Self {
            job: j,
            batch_header_sha256,
        }
    }

    /// Whether this binding names `job` (whatever its batch).
    pub fn is_for_job(&self, job: &crate::ids::JobId) -> bool {
        Self::new(job, self.batch_header_sha256).job == self.job
    }
}

/// The metadata of a chunk result file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResultHeader {
    pub params: ParamSet,
    /// Output GLWE ciphertexts in the body.
    pub ciphertexts: u32,
    pub chunk_index: u32,
    pub chunk_count: u32,
    pub records: u32,
    /// Result values decode from the top `output_bits` bits of each coefficient.
    pub output_bits: u8,
    pub model_id: ModelId,
    pub key_fingerprint: KeyFingerprint,
    pub first_record: u64,
    /// The job and batch this result answers (format version 2); `None` in version-1 results.
    pub binding: Option<ResultBinding>,
}

impl ResultHeader {
    /// Bytes of this result's header.
    pub fn header_len(&self) -> usize {
        if self.binding.is_some() {
            RESULT_HEADER_LEN_V2
        } else {
            RESULT_HEADER_LEN
        }
    }

    /// Bytes of the ciphertext body for this header.
    pub fn body_len(&self) -> usize {
        self.ciphertexts as usize * self.params.glwe_bytes()
    }

    /// Wraps ciphertext bytes into a result file.
    pub fn encode(&self, body: &[u8]) -> Vec<u8> {
        assert_eq!(body.len(), self.body_len(), "result body length");
        let mut out = Vec::with_capacity(self.header_len() + body.len() + CHECKSUM_LEN);
        out.extend_from_slice(&RESULT_MAGIC);
        let version = if self.binding.is_some() {
            RESULT_VERSION_2
        } else {
            FORMAT_VERSION
        };
        out.extend_from_slice(&version.to_le_bytes());
        out.extend_from_slice(&self.params.wire_id().to_le_bytes());
        out.extend_from_slice(&self.ciphertexts.to_le_bytes());
        out.extend_from_slice(&self.chunk_index.to_le_bytes());
        out.extend_from_slice(&self.chunk_count.to_le_bytes());
        out.extend_from_slice(&self.records.to_le_bytes());
        out.extend_from_slice(&[self.output_bits, 0, 0, 0]);
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(self.model_id.as_bytes());
        out.extend_from_slice(self.key_fingerprint.as_bytes());
        out.extend_from_slice(&self.first_record.to_le_bytes());
        if let Some(b) = &self.binding {
            out.extend_from_slice(&b.job);
            out.extend_from_slice(&b.batch_header_sha256);
        }
        out.extend_from_slice(body);
        let sum: [u8; 32] = Sha256::digest(&out).into();
        out.extend_from_slice(&sum);
        out
    }

    /// Parses a result file, returning its header and ciphertext body.
    pub fn decode(bytes: &[u8], max_outputs: u32) -> Result<(Self, &[u8]), FormatError> {
        if bytes.len() < 4 || bytes[..4] != RESULT_MAGIC {
            return Err(FormatError::BadMagic { what: "result" });
        }
        if bytes.len() < RESULT_HEADER_LEN + CHECKSUM_LEN {
            return Err(FormatError::Truncated {
                what: "result",
                needed: (RESULT_HEADER_LEN + CHECKSUM_LEN) as u64,
                got: bytes.len() as u64,
            });
        }
        let mut r = Reader::new(bytes);
        r.pos = 4;
        let version = r.u16();
        if version != FORMAT_VERSION && version != RESULT_VERSION_2 {
            return Err(FormatError::Version {
                what: "result",
                found: version,
            });
        }
        let header_len = if version == RESULT_VERSION_2 {
            RESULT_HEADER_LEN_V2
        } else {
            RESULT_HEADER_LEN
        };
        if bytes.len() < header_len + CHECKSUM_LEN {
            return Err(FormatError::Truncated {
                what: "result",
                needed: (header_len + CHECKSUM_LEN) as u64,
                got: bytes.len() as u64,
            });
        }
        let param_id = r.u16();
        let params =
            ParamSet::from_wire_id(param_id).ok_or(FormatError::UnknownParams { id: param_id })?;
        let ciphertexts = r.u32();
        let chunk_index = r.u32();
        let chunk_count = r.u32();
        let records = r.u32();
        let output_bits = r.bytes::<4>()[0];
        let _reserved = r.u32();
        let model_id = ModelId::from_bytes(r.bytes());
        let key_fingerprint = KeyFingerprint::from_bytes(r.bytes());
        let first_record = r.u64();
        let binding = (version == RESULT_VERSION_2).then(|| ResultBinding {
            job: r.bytes(),
            batch_header_sha256: r.bytes(),
        });
        if ciphertexts == 0 || ciphertexts > max_outputs {
            return Err(FormatError::TooLarge {
                what: "result output count",
                value: ciphertexts as u64,
                limit: max_outputs as u64,
            });
        }
        if chunk_index >= chunk_count
            || records == 0
            || records as usize > params.polynomial_size()
            || output_bits == 0
            || output_bits > 62
        {
            return Err(malformed(
                "result",
                format!(
                    "chunk {chunk_index} of {chunk_count}, {records} records, {output_bits} plaintext bits"
                ),
            ));
        }
        let header = Self {
            params,
            ciphertexts,
            chunk_index,
            chunk_count,
            records,
            output_bits,
            model_id,
            key_fingerprint,
            first_record,
            binding,
        };
        let expected = header_len + header.body_len() + CHECKSUM_LEN;
        if bytes.len() != expected {
            return Err(FormatError::Truncated {
                what: "result",
                needed: expected as u64,
                got: bytes.len() as u64,
            });
        }
        let sum: [u8; 32] = Sha256::digest(&bytes[..expected - CHECKSUM_LEN]).into();
        if sum[..] != bytes[expected - CHECKSUM_LEN..] {
            return Err(FormatError::Checksum { what: "result" });
        }
        Ok((header, &bytes[header_len..expected - CHECKSUM_LEN]))
    }
}

/// Reads little-endian u64 words into `out` (`bytes.len()` must be `8 * out.len()`).
pub fn read_u64s(bytes: &[u8], out: &mut [u64]) {
    assert_eq!(bytes.len(), out.len() * 8);
    for (o, b) in out.iter_mut().zip(bytes.chunks_exact(8)) {
        *o = u64::from_le_bytes(b.try_into().expect("8 bytes"));
    }
}

/// Appends u64 words as little-endian bytes.
pub fn write_u64s(words: &[u64], out: &mut Vec<u8>) {
    out.reserve(words.len() * 8);
    for w in words {
        out.extend_from_slice(&w.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(records: u64, features: u32) -> Vec<u8> {
        sample_with(
            records,
            features,
            ChunkLayout::full(ParamSet::Glwe2048TUniform17),
        )
    }

    fn sample_with(records: u64, features: u32, layout: ChunkLayout) -> Vec<u8> {
        let p = ParamSet::Glwe2048TUniform17;
        let n = layout.records_per_chunk as u64;
        let len = layout.shape(features).payload_len(p) as usize;
        let payloads: Vec<(u32, Vec<u8>)> = (0..records.div_ceil(n))
            .map(|i| {
                let r = (records - i * n).min(n) as u32;
                (r, vec![i as u8; len])
            })
            .collect();
        assemble_batch(
            p,
            features,
            layout,
            ModelId::from_bytes([1; 16]),
            KeyFingerprint::from_bytes([2; 16]),
            &payloads,
        )
    }

    #[test]
    fn version_3_carries_public_key_chunks() {
        let p = ParamSet::Glwe2048TUniform17;
        let key = crate::ids::EvalKeyId::from_bytes([7; 16]);
        let limits = BatchLimits::default();
        // 140 records per chunk: 14 columns share a GLWE, so 784 columns travel in 56 GLWEs.
        let layout = ChunkLayout {
            records_per_chunk: 140,
            eval_key: Some(key),
            encryption: Encryption::PublicKey,
        };
        assert_eq!(layout.shape(784).columns_per_glwe(p), 14);
        assert_eq!(layout.shape(784).glwes(p), 56);
        let bytes = sample_with(300, 784, layout);
        let h = BatchHeader::parse(&bytes, &limits).unwrap();
        assert_eq!(h.version(), BATCH_VERSION_3);
        assert_eq!(h.encryption, Encryption::PublicKey);
        assert_eq!(h.eval_key, Some(key));
        assert_eq!(h.chunks[0].length, 56 * 2 * 2048 * 8);
        assert_eq!(h.header_len(), batch_header_len(BATCH_VERSION_3, 3));
        h.check_object_size(bytes.len() as u64).unwrap();
        assert_eq!(h.encode(), bytes[..h.header_len() as usize]);
        assert_eq!(
            BatchHeader::header_len_from_prefix(&bytes[..FIXED_HEADER_LEN], &limits).unwrap(),
            h.header_len()
        );
        // Full chunks: one column per GLWE.
        let full = ChunkLayout {
            encryption: Encryption::PublicKey,
            ..ChunkLayout::full(p)
        };
        assert_eq!(full.shape(30).glwes(p), 30);
        let h = BatchHeader::parse(&sample_with(5000, 30, full), &limits).unwrap();
        assert_eq!((h.version(), h.chunks.len()), (BATCH_VERSION_3, 3));
        // A version-3 header must say "public key" with zero reserved bytes; any other value
        // is refused even with a valid checksum.
        for (at, value) in [(80usize, 1u8), (80, 3), (82, 1), (95, 9)] {
            let mut forged = bytes[..batch_header_len(BATCH_VERSION_3, 3) as usize].to_vec();
            forged[at] = value;
            let n = forged.len();
            let sum: [u8; 32] = Sha256::digest(&forged[..n - CHECKSUM_LEN]).into();
            forged[n - CHECKSUM_LEN..].copy_from_slice(&sum);
            let e = BatchHeader::parse(&forged, &limits).unwrap_err();
            assert!(e.to_string().contains("encryption kind"), "{e}");
        }
        // A secret-key batch never becomes version 3.
        let sk = sample_with(
            300,
            784,
            ChunkLayout {
                encryption: Encryption::SecretKey,
                ..layout
            },
        );
        assert_eq!(u16::from_le_bytes([sk[4], sk[5]]), BATCH_VERSION_2);
    }

    #[test]
    fn version_2_carries_small_chunks_and_the_evaluation_key() {
        let key = crate::ids::EvalKeyId::from_bytes([7; 16]);
        let layout = ChunkLayout {
            records_per_chunk: 131,
            eval_key: Some(key),
            encryption: Encryption::SecretKey,
        };
        let bytes = sample_with(1000, 196, layout);
        let limits = BatchLimits::default();
        let h = BatchHeader::parse(&bytes, &limits).unwrap();
        assert_eq!(h.version(), BATCH_VERSION_2);
        assert_eq!((h.records_per_chunk, h.eval_key), (131, Some(key)));
        assert_eq!(h.chunks.len(), 8);
        assert_eq!(h.chunks[7].records, 1000 - 7 * 131);
        assert_eq!(h.chunks[0].length, 16 + 196 * 131 * 8);
        assert_eq!(h.header_len(), batch_header_len(BATCH_VERSION_2, 8));
        h.check_object_size(bytes.len() as u64).unwrap();
        assert_eq!(h.encode(), bytes[..h.header_len() as usize]);
        // The header length comes from the first 64 bytes, as for version 1.
        assert_eq!(
            BatchHeader::header_len_from_prefix(&bytes[..FIXED_HEADER_LEN], &limits).unwrap(),
            h.header_len()
        );
        // A full layout stays version 1, byte for byte what older readers expect.
        let v1 = sample(1000, 3);
        assert_eq!(u16::from_le_bytes([v1[4], v1[5]]), FORMAT_VERSION);
        // Version 1 may not claim fewer records per chunk than N; version 2 not more.
        let mut forged = v1.clone();
        forged[28..32].copy_from_slice(&100u32.to_le_bytes());
        assert!(BatchHeader::parse(&forged, &limits).is_err());
    }

    #[test]
    fn batch_round_trip_and_ranges() {
        let bytes = sample(5000, 3);
        let limits = BatchLimits::default();
        let h = BatchHeader::parse(&bytes, &limits).unwrap();
        assert_eq!(h.record_count, 5000);
        assert_eq!(h.chunks.len(), 3);
        assert_eq!(h.chunks[2].records, 5000 - 4096);
        h.check_object_size(bytes.len() as u64).unwrap();
        for (i, c) in h.chunks.iter().enumerate() {
            let p = &bytes[c.offset as usize..(c.offset + c.length) as usize];
            verify_chunk(p, c.length, &c.sha256).unwrap();
            assert!(p.iter().all(|&b| b == i as u8));
        }
        assert_eq!(h.encode(), bytes[..h.header_len() as usize]);
    }

    #[test]
    fn every_truncation_of_a_header_is_refused() {
        let bytes = sample(3000, 2);
        let limits = BatchLimits::default();
        let hlen = BatchHeader::parse(&bytes, &limits).unwrap().header_len() as usize;
        for cut in 0..hlen {
            assert!(
                BatchHeader::parse(&bytes[..cut], &limits).is_err(),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn every_header_bit_flip_is_refused() {
        let bytes = sample(3000, 2);
        let limits = BatchLimits::default();
        let hlen = BatchHeader::parse(&bytes, &limits).unwrap().header_len() as usize;
        for i in 0..hlen {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                assert!(
                    BatchHeader::parse(&b, &limits).is_err(),
                    "byte {i} bit {bit}"
                );
            }
        }
    }

    #[test]
    fn limits_apply() {
        let bytes = sample(3000, 2);
        let tight = BatchLimits {
            max_records: 100,
            ..BatchLimits::default()
        };
        assert!(matches!(
            BatchHeader::parse(&bytes, &tight),
            Err(FormatError::TooLarge { .. })
        ));
        let tight = BatchLimits {
            max_chunks: 1,
            ..BatchLimits::default()
        };
        assert!(matches!(
            BatchHeader::header_len_from_prefix(&bytes, &tight),
            Err(FormatError::TooLarge { .. })
        ));
    }

    #[test]
    fn result_round_trip_and_corruption() {
        let job = crate::ids::JobId::parse("claims").unwrap();
        for binding in [None, Some(ResultBinding::new(&job, [5; 32]))] {
            let h = ResultHeader {
                params: ParamSet::Glwe2048TUniform17,
                ciphertexts: 2,
                chunk_index: 1,
                chunk_count: 3,
                records: 10,
                output_bits: 20,
                model_id: ModelId::from_bytes([3; 16]),
                key_fingerprint: KeyFingerprint::from_bytes([4; 16]),
                first_record: 2048,
                binding,
            };
            let body = vec![7u8; h.body_len()];
            let bytes = h.encode(&body);
            let (h2, b2) = ResultHeader::decode(&bytes, 16).unwrap();
            assert_eq!(h2, h);
            assert_eq!(b2, &body[..]);
            let mut bad = bytes.clone();
            bad[100] ^= 1;
            assert!(ResultHeader::decode(&bad, 16).is_err());
            assert!(ResultHeader::decode(&bytes[..bytes.len() - 1], 16).is_err());
        }
        let other = crate::ids::JobId::parse("other").unwrap();
        let b = ResultBinding::new(&job, [5; 32]);
        assert!(b.is_for_job(&job) && !b.is_for_job(&other));
    }
}
