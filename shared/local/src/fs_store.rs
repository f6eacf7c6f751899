//! A filesystem [`ObjectStore`] rooted in one directory. Object keys map to paths under the
//! root; a key that could name anything outside it is refused before any file is touched.

use fhe_batch_core::ports::{ObjectStore, PutOutcome, StoreError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Files being written carry this prefix until they are renamed or linked into place; listing
/// skips them.
const TMP_PREFIX: &str = ".tmp-";

/// Longest accepted key, in bytes (S3's limit).
pub const MAX_KEY_LEN: usize = 1024;

/// The embedded object store: one directory is one bucket.
#[derive(Debug, Clone)]
pub struct FsStore {
    root: PathBuf,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl FsStore {
    /// Opens (creating if needed) a store rooted at `root`.
    pub fn open(root: impl Into<PathBuf>) -> std::io::Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root)?;
        Ok(Self {
            root: root.canonicalize()?,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Maps a key to a path under the root, or refuses it.
    ///
    /// Accepted keys are `/`-separated components of `[A-Za-z0-9._-]`, none empty, none `.` or
    /// `..`, none starting with the temporary-file prefix. That leaves no way to name a parent
    /// directory, an absolute path or a hidden temporary file.
    pub fn path_of(&self, key: &str) -> Result<PathBuf, StoreError> {
        validate_key(key)?;
        Ok(self.root.join(key))
    }

    fn io_err(key: &str, e: std::io::Error) -> StoreError {
        if e.kind() == std::io::ErrorKind::NotFound {
            StoreError::NotFound {
                key: key.to_string(),
            }
        } else {
            StoreError::Backend {
                key: key.to_string(),
                message: e.to_string(),
                retryable: matches!(
                    e.kind(),
                    std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
                ),
            }
        }
    }

    /// Writes `bytes` to a fresh temporary file beside `path`.
    fn write_tmp(&self, key: &str, path: &Path, bytes: &[u8]) -> Result<PathBuf, StoreError> {
        let dir = path.parent().expect("keys have a parent under the root");
        std::fs::create_dir_all(dir).map_err(|e| Self::io_err(key, e))?;
        let tmp = dir.join(format!(
            "{TMP_PREFIX}{}-{}",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let mut f = std::fs::File::create(&tmp).map_err(|e| Self::io_err(key, e))?;
        f.write_all(bytes).map_err(|e| Self::io_err(key, e))?;
        f.sync_data().map_err(|e| Self::io_err(key, e))?;
        Ok(tmp)
    }

    fn get_sync(&self, key: &str, max_bytes: u64) -> Result<Vec<u8>, StoreError> {
        let path = self.path_of(key)?;
        let mut f = std::fs::File::open(&path).map_err(|e| Self::io_err(key, e))?;
        let size = f.metadata().map_err(|e| Self::io_err(key, e))?.len();
        if size > max_bytes {
            return Err(StoreError::TooLarge {
                key: key.to_string(),
                size,
                limit: max_bytes,
            });
        }
        let mut out = Vec::with_capacity(size as usize);
        f.read_to_end(&mut out).map_err(|e| Self::io_err(key, e))?;
        Ok(out)
    }

    fn get_range_sync(&self, key: &str, start: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        let path = self.path_of(key)?;
        let mut f = std::fs::File::open(&path).map_err(|e| Self::io_err(key, e))?;
        let size = f.metadata().map_err(|e| Self::io_err(key, e))?.len();
        if start.checked_add(len).is_none_or(|end| end > size) {
            return Err(StoreError::Range {
                key: key.to_string(),
                start,
                len,
                size,
            });
        }
        f.seek(SeekFrom::Start(start))
            .map_err(|e| Self::io_err(key, e))?;
        let mut out = vec![0u8; len as usize];
        f.read_exact(&mut out).map_err(|e| Self::io_err(key, e))?;
        Ok(out)
    }

    fn size_sync(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let path = self.path_of(key)?;
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => Ok(Some(m.len())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Self::io_err(key, e)),
        }
    }

    fn put_sync(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.path_of(key)?;
        let tmp = self.write_tmp(key, &path, bytes)?;
        std::fs::rename(&tmp, &path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Self::io_err(key, e)
        })
    }

    fn put_if_absent_sync(&self, key: &str, bytes: &[u8]) -> Result<PutOutcome, StoreError> {
        let path = self.path_of(key)?;
        if path.exists() {
            return Ok(PutOutcome::AlreadyExists);
        }
        let tmp = self.write_tmp(key, &path, bytes)?;
        // link(2) fails if the target exists: an atomic create-if-absent of complete content.
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(PutOutcome::Created),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Ok(PutOutcome::AlreadyExists)
            }
            Err(e) => Err(Self::io_err(key, e)),
        }
    }

    fn list_sync(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        // Walk from the deepest directory the prefix names completely.
        let dir_part = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        if !dir_part.is_empty() {
            validate_key(dir_part)?;
        }
        let start = if dir_part.is_empty() {
            self.root.clone()
        } else {
            self.root.join(dir_part)
        };
        let mut out = Vec::new();
        let mut stack = vec![start];
        while let Some(dir) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Self::io_err(prefix, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| Self::io_err(prefix, e))?;
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                if name.starts_with(TMP_PREFIX) {
                    continue;
                }
                let ft = entry.file_type().map_err(|e| Self::io_err(prefix, e))?;
                let path = entry.path();
                let rel = path
                    .strip_prefix(&self.root)
                    .expect("walk stays under the root")
                    .to_string_lossy()
                    .replace(std::path::MAIN_SEPARATOR, "/");
                if ft.is_dir() {
                    if prefix.starts_with(&format!("{rel}/")) || rel.starts_with(prefix) {
                        stack.push(path);
                    }
                } else if ft.is_file() && rel.starts_with(prefix) {
                    out.push(rel);
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

/// Checks that a key is safe to map onto the filesystem.
pub fn validate_key(key: &str) -> Result<(), StoreError> {
    let bad = |reason: &str| StoreError::InvalidKey {
        key: key.chars().take(200).collect(),
        reason: reason.to_string(),
    };
    if key.is_empty() {
        return Err(bad("empty key"));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(bad("longer than 1024 bytes"));
    }
    for component in key.split('/') {
        if component.is_empty() {
            return Err(bad(
                "empty path component (leading, trailing or double '/')",
            ));
        }
        if component == "." || component == ".." {
            return Err(bad("'.' and '..' components are not allowed"));
        }
        if component.starts_with(TMP_PREFIX) {
            return Err(bad("reserved name"));
        }
        if !component
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(bad(
                "only letters, digits, '.', '_', '-' and '/' are allowed",
            ));
        }
    }
    Ok(())
}

impl ObjectStore for FsStore {
    async fn get(&self, key: &str, max_bytes: u64) -> Result<Vec<u8>, StoreError> {
        self.get_sync(key, max_bytes)
    }
    async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        self.get_range_sync(key, start, len)
    }
    async fn size(&self, key: &str) -> Result<Option<u64>, StoreError> {
        self.size_sync(key)
    }
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        self.put_sync(key, &bytes)
    }
    async fn put_if_absent(&self, key: &str, bytes: Vec<u8>) -> Result<PutOutcome, StoreError> {
        self.put_if_absent_sync(key, &bytes)
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.list_sync(prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    #[test]
    fn put_get_range_list() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStore::open(dir.path()).unwrap();
        rt().block_on(async {
            s.put("a/b/c.bin", b"hello world".to_vec()).await.unwrap();
            s.put("a/d.bin", b"x".to_vec()).await.unwrap();
            s.put("ab.bin", b"y".to_vec()).await.unwrap();
            assert_eq!(s.get("a/b/c.bin", 100).await.unwrap(), b"hello world");
            assert_eq!(s.get_range("a/b/c.bin", 6, 5).await.unwrap(), b"world");
            assert!(matches!(
                s.get_range("a/b/c.bin", 6, 6).await,
                Err(StoreError::Range { .. })
            ));
            assert!(matches!(
                s.get("a/b/c.bin", 3).await,
                Err(StoreError::TooLarge { .. })
            ));
            assert!(matches!(
                s.get("nope", 3).await,
                Err(StoreError::NotFound { .. })
            ));
            assert_eq!(s.size("a/d.bin").await.unwrap(), Some(1));
            assert_eq!(s.size("a").await.unwrap(), None);
            assert_eq!(
                s.list("a/").await.unwrap(),
                vec!["a/b/c.bin".to_string(), "a/d.bin".to_string()]
            );
            assert_eq!(
                s.list("a").await.unwrap(),
                vec![
                    "a/b/c.bin".to_string(),
                    "a/d.bin".to_string(),
                    "ab.bin".to_string()
                ]
            );
            assert_eq!(
                s.list("a/b/c").await.unwrap(),
                vec!["a/b/c.bin".to_string()]
            );
            assert!(s.list("zz/").await.unwrap().is_empty());
        });
    }

    #[test]
    fn put_if_absent_is_create_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStore::open(dir.path()).unwrap();
        rt().block_on(async {
            assert_eq!(
                s.put_if_absent("r/1", b"first".to_vec()).await.unwrap(),
                PutOutcome::Created
            );
            assert_eq!(
                s.put_if_absent("r/1", b"second".to_vec()).await.unwrap(),
                PutOutcome::AlreadyExists
            );
            assert_eq!(s.get("r/1", 100).await.unwrap(), b"first");
            // No temporary files are left behind or listed.
            assert_eq!(s.list("r/").await.unwrap(), vec!["r/1".to_string()]);
            assert_eq!(std::fs::read_dir(dir.path().join("r")).unwrap().count(), 1);
        });
    }

    #[test]
    fn concurrent_creates_have_one_winner() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStore::open(dir.path()).unwrap();
        let wins: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let s = s.clone();
                    scope.spawn(move || {
                        s.put_if_absent_sync("race/x", format!("{i}").as_bytes())
                            .unwrap()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| (h.join().unwrap() == PutOutcome::Created) as usize)
                .sum()
        });
        assert_eq!(wins, 1);
    }

    #[test]
    fn hostile_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStore::open(dir.path().join("bucket")).unwrap();
        for key in [
            "../escape",
            "a/../../escape",
            "/etc/passwd",
            "a//b",
            "a/",
            ".",
            "a/./b",
            "a\\..\\b",
            "a/.tmp-1",
            "a b",
            "",
        ] {
            assert!(s.path_of(key).is_err(), "{key:?} accepted");
        }
    }

    proptest! {
        #[test]
        fn accepted_keys_stay_under_the_root(key in "[a-z./_\\\\-]{0,24}") {
            let dir = tempfile::tempdir().unwrap();
            let s = FsStore::open(dir.path()).unwrap();
            if let Ok(p) = s.path_of(&key) {
                prop_assert!(p.starts_with(s.root()));
                // Lexically: no component may climb.
                prop_assert!(p.strip_prefix(s.root()).unwrap().components().all(|c| matches!(c, std::path::Component::Normal(_))));
            }
        }
    }
}
