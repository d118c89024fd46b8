//! Global models on disk and in memory, addressed by their BLAKE3 digest.
//!
//! Model versions are large immutable blobs, so they live in plain files
//! (`<dir>/<hex digest>.bin`), not in RocksDB: an LSM tree would copy every model
//! through its write-ahead log, memtable, flushes and compactions. The anchor writes its
//! versions durably (temp file, fsync, rename); an edge keeps a [`ModelCache`]: the few
//! most recent models in memory, where they are trained on and served to peers, and the
//! newest one in a file once it has stayed the newest for [`SAVE_AFTER`] (not synced: the
//! digest is checked when a file is read back), so a restarted edge resumes from it
//! without rewriting every version of a fast federation to disk.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// How long a model must stay an edge's newest before its file is written.
pub const SAVE_AFTER: Duration = Duration::from_secs(1);

/// An edge's recent global models: at most `keep` in memory (most recent first), the
/// newest also in a file in `dir` once it has been the newest for [`SAVE_AFTER`]; older
/// ones are dropped from memory and disk.
#[derive(Debug)]
pub struct ModelCache {
    dir: PathBuf,
    keep: usize,
    recent: VecDeque<(Digest, Arc<Vec<u8>>)>,
    /// The newest model if its file is not written yet, and when to write it.
    unsaved: Option<(Digest, Instant)>,
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
            unsaved: None,
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

    /// Adds a model whose digest the caller has verified, as the newest; its file is
    /// written by [`Self::save_due`] at `now` + [`SAVE_AFTER`] unless a newer model
    /// arrives first, or by [`Self::save`].
    pub fn put(&mut self, digest: Digest, bytes: Vec<u8>, now: Instant) -> Arc<Vec<u8>> {
        self.unsaved = Some((digest, now + SAVE_AFTER));
        self.remember(digest, Arc::new(bytes))
    }

    /// Writes the newest model's file if it has been the newest for [`SAVE_AFTER`] at
    /// `now` (called periodically).
    pub fn save_due(&mut self, now: Instant) {
        if self.unsaved.is_some_and(|(_, at)| now >= at) {
            self.save();
        }
    }

    /// Writes the newest model's file now, if it is not written yet (at shutdown). A
    /// failed write is logged: the model stays usable from memory.
    pub fn save(&mut self) {
        let Some((digest, _)) = self.unsaved.take() else {
            return;
        };
        if let Some(bytes) = self.in_memory(&digest)
            && let Err(e) = write_model_file(&self.dir, &digest, bytes, false)
        {
            tracing::warn!("writing model file: {e}");
        }
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
    fn cache_keeps_the_most_recent_models_and_saves_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let models: Vec<(Digest, Vec<u8>)> = (0..3u8)
            .map(|i| {
                let bytes = vec![i; 1000 + usize::from(i)];
                (digest_of(&bytes), bytes)
            })
            .collect();
        let t0 = Instant::now();
        let mut cache = ModelCache::open(dir.path(), 2).unwrap();
        cache.put(models[0].0, models[0].1.clone(), t0);
        cache.save_due(t0 + SAVE_AFTER);
        assert!(model_path(dir.path(), &models[0].0).exists());
        // Two more in quick succession: the first is evicted (memory and file), the second
        // is superseded before its file is due, the third is saved once due.
        cache.put(models[1].0, models[1].1.clone(), t0 + SAVE_AFTER);
        cache.put(models[2].0, models[2].1.clone(), t0 + SAVE_AFTER * 2);
        assert!(cache.in_memory(&models[0].0).is_none());
        assert!(!model_path(dir.path(), &models[0].0).exists());
        assert!(cache.get(&models[0].0).is_none());
        cache.save_due(t0 + SAVE_AFTER * 3 - Duration::from_millis(1));
        assert!(!model_path(dir.path(), &models[2].0).exists());
        cache.save_due(t0 + SAVE_AFTER * 3);
        assert!(!model_path(dir.path(), &models[1].0).exists());
        assert!(model_path(dir.path(), &models[2].0).exists());
        for (d, b) in &models[1..] {
            assert_eq!(cache.in_memory(d).unwrap().as_slice(), b.as_slice());
        }

        // A reopened cache (a restarted edge) reads the saved file back.
        let mut reopened = ModelCache::open(dir.path(), 2).unwrap();
        assert!(reopened.in_memory(&models[2].0).is_none());
        assert_eq!(
            reopened.get(&models[2].0).unwrap().as_slice(),
            models[2].1.as_slice()
        );
        // `save` writes an unsaved newest model at once (shutdown).
        reopened.put(models[1].0, models[1].1.clone(), Instant::now());
        reopened.save();
        assert!(model_path(dir.path(), &models[1].0).exists());
        // A file whose bytes do not match its digest is removed, not served.
        let mut third = ModelCache::open(dir.path(), 2).unwrap();
        std::fs::write(model_path(dir.path(), &models[1].0), b"garbage").unwrap();
        assert!(third.get(&models[1].0).is_none());
        assert!(!model_path(dir.path(), &models[1].0).exists());
    }
}
