//! Global models on disk and in memory, addressed by their BLAKE3 digest.
//!
//! Model versions are large immutable blobs, so they live in plain files
//! (`<dir>/<hex digest>.bin`), not in RocksDB: an LSM tree would copy every model
//! through its write-ahead log, memtable, flushes and compactions. The anchor writes its
//! versions durably (temp file, fsync, rename); an edge keeps a [`ModelCache`]: the few
//! most recent models in memory, where they are trained on and served to peers, each
//! mirrored to a file (not synced: the digest is checked when a file is read back).

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use netproto::wire::{Digest, digest_of};

/// The file of the model with `digest` in `dir`.
pub fn model_path(dir: &Path, digest: &Digest) -> PathBuf {
    dir.join(format!("{}.bin", hex::encode(digest)))
}

/// Writes a model file through a temporary file and a rename, so a reader never sees a
/// partial file under the final name; `durable` also fsyncs before the rename.
pub fn write_model_file(
    dir: &Path,
    digest: &Digest,
    bytes: &[u8],
    durable: bool,
) -> std::io::Result<()> {
    let tmp = dir.join(format!("{}.tmp", hex::encode(digest)));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    if durable {
        f.sync_all()?;
    }
    std::fs::rename(&tmp, model_path(dir, digest))
}

/// An edge's recent global models: at most `keep` in memory (most recent first), each
/// mirrored to a file in `dir`; older ones are dropped from memory and disk.
#[derive(Debug)]
pub struct ModelCache {
    dir: PathBuf,
    keep: usize,
    recent: VecDeque<(Digest, Arc<Vec<u8>>)>,
}

impl ModelCache {
    /// A cache over the files in `dir` (created if missing), keeping `keep` (at least 1)
    /// models.
    pub fn open(dir: &Path, keep: usize) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_owned(),
            keep: keep.max(1),
            recent: VecDeque::new(),
        })
    }

    /// The model with `digest`, from memory or from its file (whose digest is checked;
    /// a corrupt file is removed and reported as absent).
    pub fn get(&mut self, digest: &Digest) -> Option<Arc<Vec<u8>>> {
        if let Some((_, bytes)) = self.recent.iter().find(|(d, _)| d == digest) {
            return Some(bytes.clone());
        }
        let path = model_path(&self.dir, digest);
        let bytes = std::fs::read(&path).ok()?;
        if digest_of(&bytes) != *digest {
            tracing::warn!(
                "cached model file {} is corrupt; removing it",
                path.display()
            );
            let _ = std::fs::remove_file(&path);
            return None;
        }
        Some(self.remember(*digest, Arc::new(bytes)))
    }

    /// The model with `digest` if it is in memory (no file access).
    pub fn in_memory(&self, digest: &Digest) -> Option<&Arc<Vec<u8>>> {
        self.recent
            .iter()
            .find_map(|(d, b)| (d == digest).then_some(b))
    }

    /// Adds a model whose digest the caller has verified; writes its file (a failed
    /// write is logged: the model stays usable from memory).
    pub fn put(&mut self, digest: Digest, bytes: Vec<u8>) -> Arc<Vec<u8>> {
        if let Err(e) = write_model_file(&self.dir, &digest, &bytes, false) {
            tracing::warn!("writing model file: {e}");
        }
        self.remember(digest, Arc::new(bytes))
    }

    fn remember(&mut self, digest: Digest, bytes: Arc<Vec<u8>>) -> Arc<Vec<u8>> {
        self.recent.retain(|(d, _)| *d != digest);
        self.recent.push_front((digest, bytes.clone()));
        while self.recent.len() > self.keep {
            if let Some((old, _)) = self.recent.pop_back() {
                let _ = std::fs::remove_file(model_path(&self.dir, &old));
            }
        }
        bytes
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn cache_keeps_the_most_recent_models_and_checks_files() {
        let dir = tempfile::tempdir().unwrap();
        let models: Vec<(Digest, Vec<u8>)> = (0..3u8)
            .map(|i| {
                let bytes = vec![i; 1000 + usize::from(i)];
                (digest_of(&bytes), bytes)
            })
            .collect();
        let mut cache = ModelCache::open(dir.path(), 2).unwrap();
        for (d, b) in &models {
            cache.put(*d, b.clone());
        }
        // The oldest is gone from memory and disk; the two newest are in both.
        assert!(cache.in_memory(&models[0].0).is_none());
        assert!(!model_path(dir.path(), &models[0].0).exists());
        assert!(cache.get(&models[0].0).is_none());
        for (d, b) in &models[1..] {
            assert_eq!(cache.in_memory(d).unwrap().as_slice(), b.as_slice());
            assert!(model_path(dir.path(), d).exists());
        }

        // A reopened cache (a restarted edge) reads the files back.
        let mut reopened = ModelCache::open(dir.path(), 2).unwrap();
        assert!(reopened.in_memory(&models[2].0).is_none());
        assert_eq!(
            reopened.get(&models[2].0).unwrap().as_slice(),
            models[2].1.as_slice()
        );
        // A file whose bytes do not match its digest is removed, not served.
        std::fs::write(model_path(dir.path(), &models[1].0), b"garbage").unwrap();
        assert!(reopened.get(&models[1].0).is_none());
        assert!(!model_path(dir.path(), &models[1].0).exists());
    }
}
