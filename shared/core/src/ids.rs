//! Validated identifiers. Untrusted strings are parsed once into these newtypes; every other
//! part of the system takes the newtype, so no unchecked id can reach an object key.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} is empty")]
    Empty { kind: &'static str },
    #[error("{kind} is {len} characters long; the limit is {max}")]
    TooLong {
        kind: &'static str,
        len: usize,
        max: usize,
    },
    #[error(
        "{kind} {value:?} contains {bad:?}; only letters, digits, '-' and '_' are allowed, and it must start with a letter or digit"
    )]
    BadChar {
        kind: &'static str,
        value: String,
        bad: char,
    },
    #[error("{kind} {value:?} must be {len} lowercase hex digits")]
    NotHex {
        kind: &'static str,
        value: String,
        len: usize,
    },
}

/// Checks a name from `[A-Za-z0-9_-]`, 1 to `max` characters, starting with a letter or digit.
fn check_name(kind: &'static str, s: &str, max: usize) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { kind });
    }
    let len = s.chars().count();
    if len > max {
        return Err(IdError::TooLong { kind, len, max });
    }
    for (i, c) in s.chars().enumerate() {
        let ok = c.is_ascii_alphanumeric() || (i > 0 && (c == '-' || c == '_'));
        if !ok {
            return Err(IdError::BadChar {
                kind,
                value: s.to_string(),
                bad: c,
            });
        }
    }
    Ok(())
}

/// A tenant: one data owner of a stack that serves several (`inbox/<tenant>/`,
/// `jobs/<tenant>/`, `results/<tenant>/`, `keys/<tenant>/`).
///
/// 1 to 32 characters from `[A-Za-z0-9_-]`, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(String);

impl TenantId {
    /// Longest accepted tenant id.
    pub const MAX_LEN: usize = 32;

    /// Parses an untrusted string.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        check_name("tenant id", s, Self::MAX_LEN)?;
        Ok(Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TenantId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        Self::parse(&s)
    }
}

impl From<TenantId> for String {
    fn from(id: TenantId) -> String {
        id.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A job id: the name of an uploaded batch (`inbox/<job>.fheb`), or, on a stack that serves
/// several tenants, the tenant and the name (`acme/claims`, uploaded as
/// `inbox/acme/claims.fheb`).
///
/// A name is 1 to 64 characters from `[A-Za-z0-9_-]`, starting with a letter or digit; a tenant
/// is a [`TenantId`]. That alphabet has no `.` or `%`, and the one `/` only ever separates a
/// valid tenant from a valid name, so a job id can never climb out of its prefix in a bucket or
/// a directory.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct JobId(String);

impl JobId {
    /// Longest accepted job name (without its tenant).
    pub const MAX_LEN: usize = 64;

    /// A tenant's job: `tenant/name`.
    pub fn for_tenant(tenant: &TenantId, name: &JobId) -> Self {
        Self(format!("{tenant}/{}", name.name()))
    }

    /// Parses an untrusted job id with or without a tenant (`claims`, `acme/claims`).
    pub fn parse_qualified(s: &str) -> Result<Self, IdError> {
        match s.split_once('/') {
            Some((tenant, name)) => {
                let tenant = TenantId::parse(tenant)?;
                Ok(Self::for_tenant(&tenant, &Self::parse(name)?))
            }
            None => Self::parse(s),
        }
    }

    /// The job's tenant, on a stack that serves several.
    pub fn tenant(&self) -> Option<TenantId> {
        self.0.split_once('/').map(|(t, _)| TenantId(t.to_string()))
    }

    /// The job's name without its tenant.
    pub fn name(&self) -> &str {
        self.0.split_once('/').map_or(&self.0, |(_, n)| n)
    }

    /// Parses an untrusted job name (no tenant).
    pub fn parse(s: &str) -> Result<Self, IdError> {
        check_name("job id", s, Self::MAX_LEN)?;
        Ok(Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The job an uploaded file name (without `.fheb`) runs as, and whether it had to be
    /// renamed. A valid job id is kept; otherwise, the documented rule:
    ///
    /// 1. every character other than an ASCII letter, digit, `-` or `_` becomes `-`
    ///    (`claims.v2` -> `claims-v2`, `2026/claims` -> `2026-claims`);
    /// 2. a name that does not start with a letter or digit gets a `j` in front;
    /// 3. a name longer than [`JobId::MAX_LEN`] keeps its first 55 characters, then `-` and 8
    ///    hex digits of the SHA-256 of the original name (so long names stay distinct).
    ///
    /// ```
    /// use fhe_batch_core::ids::JobId;
    /// assert_eq!(JobId::from_file_name("claims-1"), (JobId::parse("claims-1").unwrap(), false));
    /// let (job, renamed) = JobId::from_file_name("claims.v2");
    /// assert_eq!((job.as_str(), renamed), ("claims-v2", true));
    /// assert_eq!(JobId::from_file_name(".hidden").0.as_str(), "j-hidden");
    /// ```
    pub fn from_file_name(name: &str) -> (Self, bool) {
        if let Ok(job) = Self::parse(name) {
            return (job, false);
        }
        let mut s: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        if !s.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            s.insert(0, 'j');
        }
        if s.len() > Self::MAX_LEN {
            use sha2::Digest;
            let digest = sha2::Sha256::digest(name.as_bytes());
            s.truncate(55);
            s.push('-');
            s.push_str(&hex::encode(&digest[..4]));
        }
        let job = Self::parse(&s).expect("the rule yields a valid job id");
        (job, true)
    }
}

#[cfg(test)]
mod file_name_tests {
    use super::JobId;

    #[test]
    fn every_file_name_maps_to_a_valid_distinct_job() {
        for (name, want) in [
            ("claims", "claims"),
            ("claims.v2", "claims-v2"),
            ("2026-11-30.claims", "2026-11-30-claims"),
            ("-x", "j-x"),
            ("", "j"),
            ("a/b", "a-b"),
            ("caf\u{e9}", "caf-"),
        ] {
            assert_eq!(JobId::from_file_name(name).0.as_str(), want, "{name:?}");
        }
        let long_a = "a".repeat(70);
        let long_b = format!("{}b", "a".repeat(69));
        let (a, b) = (
            JobId::from_file_name(&long_a).0,
            JobId::from_file_name(&long_b).0,
        );
        assert_eq!(a.as_str().len(), 64);
        assert_ne!(a, b);
    }

    #[test]
    fn tenant_jobs() {
        use super::TenantId;
        let job = JobId::parse_qualified("acme/claims").unwrap();
        assert_eq!(job.tenant(), Some(TenantId::parse("acme").unwrap()));
        assert_eq!((job.name(), job.as_str()), ("claims", "acme/claims"));
        let plain = JobId::parse_qualified("claims").unwrap();
        assert_eq!((plain.tenant(), plain.name()), (None, "claims"));
        for bad in [
            "acme/",
            "/claims",
            "a/b/c",
            "ac me/claims",
            "../claims",
            "acme/.x",
            "acme//x",
        ] {
            assert!(JobId::parse_qualified(bad).is_err(), "{bad}");
        }
        assert!(JobId::parse("acme/claims").is_err());
        assert!(TenantId::parse(&"t".repeat(33)).is_err());
        let back: JobId = serde_json::from_str("\"acme/claims\"").unwrap();
        assert_eq!(back, job);
    }
}

impl TryFrom<String> for JobId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        Self::parse_qualified(&s)
    }
}

impl From<JobId> for String {
    fn from(id: JobId) -> String {
        id.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for JobId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::parse_qualified(s)
    }
}

macro_rules! hex_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name([u8; 16]);

        impl $name {
            pub const fn from_bytes(bytes: [u8; 16]) -> Self {
                Self(bytes)
            }

            pub const fn as_bytes(&self) -> &[u8; 16] {
                &self.0
            }

            /// Parses 32 lowercase hex digits.
            pub fn parse(s: &str) -> Result<Self, IdError> {
                let err = || IdError::NotHex { kind: $kind, value: s.chars().take(80).collect(), len: 32 };
                if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
                    return Err(err());
                }
                let mut out = [0u8; 16];
                hex::decode_to_slice(s, &mut out).map_err(|_| err())?;
                Ok(Self(out))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::parse(&s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.to_string()
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }
    };
}

hex_id!(
    /// Content address of a compiled model: the first 128 bits of the SHA-256 of its two parts.
    ModelId,
    "model id"
);
hex_id!(
    /// Public fingerprint of a client key (a 128-bit hash; reveals nothing of the key).
    KeyFingerprint,
    "key fingerprint"
);
hex_id!(
    /// Content address of an uploaded evaluation key: the first 128 bits of the SHA-256 of its
    /// file (`keys/<id>/eval.key`).
    EvalKeyId,
    "evaluation key id"
);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn job_ids() {
        assert!(JobId::parse("claims-2026_11").is_ok());
        assert!(JobId::parse("a").is_ok());
        for bad in [
            "",
            "-x",
            "_x",
            "a/b",
            "..",
            "a.b",
            "a%2F",
            "a b",
            "é",
            &"x".repeat(65),
        ] {
            assert!(JobId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn hex_ids_round_trip() {
        let id = ModelId::from_bytes([0xab; 16]);
        assert_eq!(ModelId::parse(&id.to_string()).unwrap(), id);
        assert!(ModelId::parse("ABABABABABABABABABABABABABABABAB").is_err());
        assert!(ModelId::parse("abab").is_err());
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<ModelId>(&json).unwrap(), id);
    }

    proptest! {
        #[test]
        fn accepted_job_ids_never_escape(s in "\\PC{0,80}") {
            if let Ok(id) = JobId::parse(&s) {
                prop_assert!(!id.as_str().contains('/'));
                prop_assert!(!id.as_str().contains('.'));
                prop_assert!(!id.as_str().contains('%'));
                prop_assert!(!id.as_str().starts_with('-'));
                prop_assert!(id.as_str().len() <= JobId::MAX_LEN);
            }
        }
    }
}
