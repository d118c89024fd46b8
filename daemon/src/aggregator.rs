//! The anchor's streaming FedAvg: updates are validated and folded into one running
//! weighted sum **as their chunks arrive**, so the anchor holds O(model) memory however many
//! edges report:
//!
//! - the running sum: one `f64` per parameter (exact for the sums FedAvg needs, so the
//!   result does not depend on arrival order);
//! - per upload in flight (at most `slots`): its raw bytes, kept only so that an update
//!   rejected at the end (norm bound, fencing) or midway (a non-finite value, a chunk out of
//!   sequence) can be rolled back exactly;
//! - the base model: in memory when small (up to [`SPILL_ABOVE`]), otherwise on disk,
//!   read block by block for validation.
//!
//! The committed model is written to its content-addressed file directly from the sum,
//! block by block, hashing as it goes: no second copy of the model is ever materialised.
//! Robust strategies (median, trimmed mean) need every update at once and are not
//! streamed; see `model::aggregate`.

use netproto::wire::Digest;
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Values converted per block when reading the base or writing the result.
const BLOCK: usize = 64 * 1024;

/// Why an upload was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum UploadError {
    /// Every upload slot is taken; retry later.
    #[error("busy: {0} uploads in progress")]
    Busy(usize),
    /// The update's layout header differs from the base model's.
    #[error("layout differs from the base model")]
    Layout,
    /// The update's size differs from the base model's.
    #[error("update of {got} bytes, the base model has {expected}")]
    Size {
        /// Declared size.
        got: u64,
        /// Base size.
        expected: u64,
    },
    /// A chunk does not continue the upload.
    #[error("chunk at offset {got} does not continue the upload at {expected}")]
    OutOfSequence {
        /// Offset of the chunk.
        got: u64,
        /// Bytes received so far.
        expected: u64,
    },
    /// No upload from this sender is in progress.
    #[error("no upload in progress")]
    NotStarted,
    /// A value is NaN or infinite.
    #[error("non-finite value at index {0}")]
    NonFinite(usize),
    /// The update is farther from its base than the norm bound.
    #[error("update norm {norm:.3} exceeds the bound {bound}")]
    Norm {
        /// Measured L2 distance to the base.
        norm: f64,
        /// The bound.
        bound: f64,
    },
    /// Reading the base or writing the result failed.
    #[error("i/o: {0}")]
    Io(String),
}

impl From<std::io::Error> for UploadError {
    fn from(e: std::io::Error) -> Self {
        UploadError::Io(e.to_string())
    }
}

/// The base model of a round: its file, and its bytes when it is small.
#[derive(Clone, Debug)]
pub struct BaseModel {
    /// Its file.
    pub path: PathBuf,
    /// Total encoded size.
    pub len: u64,
    /// Bytes before the values (the `ParamSet` layout header).
    pub header: Vec<u8>,
    /// Number of `f32` values.
    pub values: usize,
    /// The whole encoding, for models up to [`SPILL_ABOVE`] bytes: validation reads the
    /// base values from memory instead of the file.
    pub resident: Option<std::sync::Arc<Vec<u8>>>,
}

impl BaseModel {
    /// Describes the encoded model at `path` (a `ParamSet::to_bytes` file).
    pub fn open(path: &Path) -> Result<Self, UploadError> {
        let bytes = std::fs::read(path)?;
        let params = model::ParamSet::from_bytes(&bytes)
            .map_err(|e| UploadError::Io(format!("{}: {e}", path.display())))?;
        let values = params.len();
        let header_len = bytes.len() - values * 4;
        let len = bytes.len() as u64;
        Ok(Self {
            path: path.to_owned(),
            len,
            header: bytes[..header_len].to_vec(),
            values,
            resident: (len <= SPILL_ABOVE).then(|| std::sync::Arc::new(bytes)),
        })
    }

    /// Values `start..start + n` as raw little-endian bytes: from memory, or read from
    /// `file` into `scratch` (reused).
    fn values_at<'a>(
        &'a self,
        file: &File,
        start: usize,
        n: usize,
        scratch: &'a mut Vec<u8>,
    ) -> Result<&'a [u8], UploadError> {
        let at = self.header.len() + start * 4;
        if let Some(bytes) = &self.resident {
            return bytes
                .get(at..at + n * 4)
                .ok_or_else(|| UploadError::Io("base model shorter than its layout".into()));
        }
        scratch.resize(n * 4, 0);
        file.read_exact_at(scratch, at as u64)?;
        Ok(scratch)
    }
}

struct Upload {
    weight: u64,
    total: u64,
    /// Bytes received so far.
    received: u64,
    /// The bytes of a value split across two chunks (fewer than 4).
    carry: Vec<u8>,
    /// The bytes received, kept for an exact rollback of the folded values.
    spill: Spill,
    /// Values folded into the sum so far.
    folded: usize,
    sq_norm: f64,
}

/// Where an upload keeps the bytes it received for an exact rollback: in memory for
/// models up to [`SPILL_ABOVE`] bytes (the received chunks themselves, not a copy; at most
/// `slots` of them), otherwise in an unnamed temporary file, so that an upload of a large
/// model costs the anchor one chunk of memory, not a model's worth (the page cache holds
/// the rest and drops it unwritten once the upload is done). Offsets are upload offsets.
enum Spill {
    /// The chunks in order, each with its upload offset.
    Memory(Vec<(u64, Vec<u8>)>),
    File(File),
}

/// Models larger than this spill their uploads to files.
pub const SPILL_ABOVE: u64 = 4 << 20;

impl Spill {
    /// Before `chunk` is folded: a file spill writes it, so that a failed write leaves
    /// nothing of it in the sum.
    fn write_ahead(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        match self {
            Spill::Memory(_) => Ok(()),
            Spill::File(f) => f.write_all(chunk),
        }
    }

    /// After `chunk` (received at upload offset `at`) was folded, or failed to: a memory
    /// spill keeps the buffer itself.
    fn keep(&mut self, at: u64, chunk: Vec<u8>) {
        if let Spill::Memory(chunks) = self {
            chunks.push((at, chunk));
        }
    }

    /// Fills `out` with the upload's bytes from offset `at`.
    fn read_at(&self, out: &mut [u8], at: u64) -> std::io::Result<()> {
        match self {
            Spill::Memory(chunks) => {
                let eof = || std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
                // The chunk holding `at`, then its successors.
                let mut i = chunks.partition_point(|(start, _)| *start <= at);
                i = i.checked_sub(1).ok_or_else(eof)?;
                let (mut pos, mut filled) = (at, 0);
                while filled < out.len() {
                    let (start, bytes) = chunks.get(i).ok_or_else(eof)?;
                    let from = usize::try_from(pos - start).map_err(|_| eof())?;
                    let src = bytes.get(from..).ok_or_else(eof)?;
                    let n = src.len().min(out.len() - filled);
                    out[filled..filled + n].copy_from_slice(&src[..n]);
                    filled += n;
                    pos += n as u64;
                    i += 1;
                }
                Ok(())
            }
            Spill::File(f) => f.read_exact_at(out, at),
        }
    }
}

/// Running weighted sum of one round's updates.
pub struct StreamingAggregator {
    base: BaseModel,
    base_file: File,
    sum: Vec<f64>,
    slots: usize,
    max_norm: f64,
    uploads: HashMap<String, Upload>,
    count: usize,
    total_weight: u64,
    /// Raw bytes of one block of base values (reused).
    scratch: Vec<u8>,
    /// Where uploads spill their folded bytes (the base model's directory).
    spill_dir: PathBuf,
    /// Uploads of models larger than this spill to files ([`SPILL_ABOVE`] by default).
    spill_above: u64,
    /// A rollback failed to read its spill file: the sum is no longer trustworthy.
    broken: bool,
}

/// Folds one block of raw little-endian `f32` update values into `sum` with weight `w`
/// and returns the block's squared L2 distance to `base` (raw bytes as well). The caller
/// has checked that every value is finite. Written with four independent lanes and no
/// branches or bounds checks, so the compiler vectorizes it.
fn fold_block(sum: &mut [f64], raw: &[u8], base: &[u8], w: f64) -> f64 {
    #[inline(always)]
    fn f(b: &[u8]) -> f32 {
        f32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
    let mut norm = [0f64; 4];
    let mut sums = sum.chunks_exact_mut(4);
    let mut raws = raw.chunks_exact(16);
    let mut bases = base.chunks_exact(16);
    for ((s, r), b) in (&mut sums).zip(&mut raws).zip(&mut bases) {
        for k in 0..4 {
            let v = f(&r[4 * k..]);
            let d = f64::from(v - f(&b[4 * k..]));
            norm[k] += d * d;
            s[k] += w * f64::from(v);
        }
    }
    let tail = sums
        .into_remainder()
        .iter_mut()
        .zip(raws.remainder().chunks_exact(4))
        .zip(bases.remainder().chunks_exact(4));
    for ((s, r), b) in tail {
        let v = f(r);
        let d = f64::from(v - f(b));
        norm[0] += d * d;
        *s += w * f64::from(v);
    }
    (norm[0] + norm[1]) + (norm[2] + norm[3])
}

/// Whether every raw little-endian `f32` in `raw` is finite (exponent bits not all set).
/// Branch-free, so the compiler vectorizes it.
fn all_finite(raw: &[u8]) -> bool {
    raw.chunks_exact(4).fold(true, |ok, b| {
        ok & (u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & 0x7f80_0000 != 0x7f80_0000)
    })
}

impl StreamingAggregator {
    /// An empty aggregate over `base`, accepting at most `slots` concurrent uploads and
    /// updates within `max_norm` (L2) of the base.
    pub fn new(base: BaseModel, slots: usize, max_norm: f64) -> Result<Self, UploadError> {
        let base_file = File::open(&base.path)?;
        let spill_dir = base
            .path
            .parent()
            .map_or_else(std::env::temp_dir, Path::to_path_buf);
        Ok(Self {
            spill_dir,
            spill_above: SPILL_ABOVE,
            broken: false,
            sum: vec![0.0; base.values],
            base,
            base_file,
            slots: slots.max(1),
            max_norm,
            uploads: HashMap::new(),
            count: 0,
            total_weight: 0,
            scratch: Vec::new(),
        })
    }

    /// Keeps uploads of models up to `bytes` in memory, spilling larger ones to files.
    pub fn with_spill_above(mut self, bytes: u64) -> Self {
        self.spill_above = bytes;
        self
    }

    /// Upload slots whose chunks in flight fit in `budget_bytes` (1 to 64): an upload
    /// holds at most one data frame of up to `max_chunk` bytes in memory, whatever the
    /// model's size.
    pub fn slots_for(max_chunk: u64, budget_bytes: u64) -> usize {
        (budget_bytes / max_chunk.max(1)).clamp(1, 64) as usize
    }

    /// Updates folded in completely.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Uploads in progress.
    pub fn in_flight(&self) -> usize {
        self.uploads.len()
    }

    /// Reserves a slot for `sender`'s update of `total` bytes with `weight`.
    pub fn begin(&mut self, sender: &str, total: u64, weight: u64) -> Result<(), UploadError> {
        if total != self.base.len {
            return Err(UploadError::Size {
                got: total,
                expected: self.base.len,
            });
        }
        if let Some(old) = self.uploads.remove(sender) {
            // A restarted upload replaces the old one.
            self.rollback(&old);
        }
        if self.uploads.len() >= self.slots {
            return Err(UploadError::Busy(self.uploads.len()));
        }
        self.uploads.insert(
            sender.to_owned(),
            Upload {
                weight,
                total,
                received: 0,
                carry: Vec::new(),
                spill: if total <= self.spill_above {
                    Spill::Memory(Vec::new())
                } else {
                    Spill::File(tempfile::tempfile_in(&self.spill_dir)?)
                },
                folded: 0,
                sq_norm: 0.0,
            },
        );
        Ok(())
    }

    /// Appends a chunk of `sender`'s upload and folds its complete values into the sum.
    /// Returns `Ok(true)` once every byte arrived (then call [`Self::finish`]). On error the
    /// upload is rolled back and dropped.
    pub fn chunk(
        &mut self,
        sender: &str,
        offset: u64,
        payload: Vec<u8>,
    ) -> Result<bool, UploadError> {
        let mut up = self.uploads.remove(sender).ok_or(UploadError::NotStarted)?;
        let result = if offset != up.received || up.received + payload.len() as u64 > up.total {
            Err(UploadError::OutOfSequence {
                got: offset,
                expected: up.received,
            })
        } else {
            // The chunk is kept (in memory after folding, in the file before): a rollback
            // reads back the values folded from it.
            let r = up
                .spill
                .write_ahead(&payload)
                .map_err(UploadError::from)
                .and_then(|()| self.fold_chunk(&mut up, &payload));
            up.spill.keep(offset, payload);
            r
        };
        match result {
            Ok(done) => {
                self.uploads.insert(sender.to_owned(), up);
                Ok(done)
            }
            Err(e) => {
                self.rollback(&up);
                Err(e)
            }
        }
    }

    /// Folds the next chunk of `up` (in sequence, checked by the caller).
    fn fold_chunk(&mut self, up: &mut Upload, payload: &[u8]) -> Result<bool, UploadError> {
        let before = up.received as usize;
        up.received += payload.len() as u64;
        let mut input = payload;
        // The layout header (possibly split across chunks) must be the base model's.
        let header = self.base.header.len();
        if before < header {
            let n = (header - before).min(input.len());
            if input[..n] != self.base.header[before..before + n] {
                return Err(UploadError::Layout);
            }
            input = &input[n..];
        }
        // Complete a value split across the previous chunk's end.
        if !up.carry.is_empty() {
            let n = (4 - up.carry.len()).min(input.len());
            up.carry.extend_from_slice(&input[..n]);
            input = &input[n..];
            if up.carry.len() == 4 {
                let value = std::mem::take(&mut up.carry);
                self.fold_values(up, &value)?;
            }
        }
        let whole = input.len() / 4 * 4;
        self.fold_values(up, &input[..whole])?;
        up.carry.extend_from_slice(&input[whole..]);
        Ok(up.received == up.total)
    }

    /// Validates whole raw values of `up` (the next ones after those folded), spills them
    /// and folds them into the sum.
    fn fold_values(&mut self, up: &mut Upload, raw: &[u8]) -> Result<(), UploadError> {
        if raw.is_empty() {
            return Ok(());
        }
        if up.folded + raw.len() / 4 > self.base.values {
            return Err(UploadError::Layout);
        }
        if !all_finite(raw) {
            let j = raw
                .chunks_exact(4)
                .position(|b| !f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite())
                .unwrap_or(0);
            // Nothing of `raw` is in the sum: the rollback undoes the values before it.
            return Err(UploadError::NonFinite(up.folded + j));
        }
        let w = up.weight as f64;
        for block in raw.chunks(BLOCK * 4) {
            let (start, n) = (up.folded, block.len() / 4);
            let base = self
                .base
                .values_at(&self.base_file, start, n, &mut self.scratch)?;
            up.sq_norm += fold_block(&mut self.sum[start..start + n], block, base, w);
            up.folded += n;
        }
        Ok(())
    }

    /// Subtracts exactly what `up` added to the sum, reading its values back from its
    /// spill.
    fn rollback(&mut self, up: &Upload) {
        let w = up.weight as f64;
        let mut raw = vec![0u8; BLOCK * 4];
        let header = self.base.header.len();
        let mut start = 0;
        while start < up.folded {
            let n = (up.folded - start).min(BLOCK);
            let block = &mut raw[..n * 4];
            if let Err(e) = up.spill.read_at(block, (header + start * 4) as u64) {
                tracing::error!("rolling back an update failed ({e}); this round's sum is lost");
                self.broken = true;
                return;
            }
            for (s, b) in self.sum[start..start + n]
                .iter_mut()
                .zip(block.chunks_exact(4))
            {
                *s -= w * f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            }
            start += n;
        }
    }

    /// Checks the completed upload of `sender` (norm bound) and, if `admit` agrees,
    /// keeps it in the sum; otherwise rolls it back. `admit` is the protocol core's fencing
    /// decision, asked only for updates whose content is valid.
    pub fn finish(
        &mut self,
        sender: &str,
        admit: impl FnOnce() -> Result<(), String>,
    ) -> Result<(), String> {
        let up = self
            .uploads
            .remove(sender)
            .ok_or_else(|| UploadError::NotStarted.to_string())?;
        let verdict = if up.received != up.total || up.folded != self.base.values {
            Err(UploadError::NotStarted.to_string())
        } else if up.sq_norm.sqrt() > self.max_norm {
            Err(UploadError::Norm {
                norm: up.sq_norm.sqrt(),
                bound: self.max_norm,
            }
            .to_string())
        } else {
            admit()
        };
        match verdict {
            Ok(()) => {
                self.count += 1;
                self.total_weight += up.weight;
                Ok(())
            }
            Err(e) => {
                self.rollback(&up);
                Err(e)
            }
        }
    }

    /// Drops the upload of `sender`, if any, rolling it back.
    pub fn abort(&mut self, sender: &str) {
        if let Some(up) = self.uploads.remove(sender) {
            self.rollback(&up);
        }
    }

    /// The current weighted mean, as `f32` values (for tests and small models).
    pub fn mean(&self) -> Option<Vec<f32>> {
        (self.total_weight > 0).then(|| {
            let t = self.total_weight as f64;
            self.sum.iter().map(|s| (s / t) as f32).collect()
        })
    }

    /// Writes the weighted mean as a model file in `dir`, named by its BLAKE3 digest,
    /// block by block (fsynced, then renamed into place). Returns its digest and the
    /// new model as the next round's base.
    pub fn write_mean(&self, dir: &Path) -> Result<(Digest, BaseModel), UploadError> {
        if self.broken {
            return Err(UploadError::Io(
                "a rolled-back update could not be read back; the sum is not exact".into(),
            ));
        }
        if self.total_weight == 0 {
            return Err(UploadError::Io("no update to aggregate".into()));
        }
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(format!("aggregate-{}.tmp", std::process::id()));
        let mut file = std::io::BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        let mut hasher = blake3::Hasher::new();
        file.write_all(&self.base.header)?;
        hasher.update(&self.base.header);
        let t = self.total_weight as f64;
        let mut block = Vec::with_capacity(BLOCK * 4);
        // A small model stays in memory as the next round's base.
        let mut resident =
            (self.base.len <= SPILL_ABOVE).then(|| Vec::with_capacity(self.base.len as usize));
        if let Some(r) = resident.as_mut() {
            r.extend_from_slice(&self.base.header);
        }
        for chunk in self.sum.chunks(BLOCK) {
            block.clear();
            for s in chunk {
                block.extend_from_slice(&((s / t) as f32).to_le_bytes());
            }
            file.write_all(&block)?;
            hasher.update(&block);
            if let Some(r) = resident.as_mut() {
                r.extend_from_slice(&block);
            }
        }
        let file = file
            .into_inner()
            .map_err(|e| UploadError::Io(e.to_string()))?;
        file.sync_all()?;
        let digest = *hasher.finalize().as_bytes();
        let path = dir.join(format!("{}.bin", hex::encode(digest)));
        std::fs::rename(&tmp, &path)?;
        Ok((
            digest,
            BaseModel {
                path,
                len: self.base.len,
                header: self.base.header.clone(),
                values: self.base.values,
                resident: resident.map(std::sync::Arc::new),
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::{ParamSet, TensorSpec};
    use proptest::prelude::*;

    fn write_base(dir: &Path, values: Vec<f32>) -> BaseModel {
        let p = ParamSet::new(vec![TensorSpec::new("w", vec![values.len()])], values).unwrap();
        let path = dir.join("base.bin");
        std::fs::write(&path, p.to_bytes()).unwrap();
        BaseModel::open(&path).unwrap()
    }

    fn encode(values: &[f32]) -> Vec<u8> {
        ParamSet::new(
            vec![TensorSpec::new("w", vec![values.len()])],
            values.to_vec(),
        )
        .unwrap()
        .to_bytes()
    }

    fn upload(
        agg: &mut StreamingAggregator,
        who: &str,
        bytes: &[u8],
        weight: u64,
        chunk: usize,
    ) -> Result<(), String> {
        agg.begin(who, bytes.len() as u64, weight)
            .map_err(|e| e.to_string())?;
        let mut off = 0;
        for c in bytes.chunks(chunk.max(1)) {
            agg.chunk(who, off as u64, c.to_vec())
                .map_err(|e| e.to_string())?;
            off += c.len();
        }
        agg.finish(who, || Ok(()))
    }

    proptest! {
        #[test]
        fn streaming_equals_batch_fedavg_for_any_order_and_chunking(
            n in 1usize..300,
            k in 1usize..6,
            chunk in 1usize..700,
            rotate in 0usize..6,
            seed in any::<u32>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let base = write_base(dir.path(), vec![0.0; n]);
            let updates: Vec<Vec<f32>> = (0..k)
                .map(|c| (0..n).map(|i| (((i as u32).wrapping_mul(seed | 1) ^ c as u32) % 1000) as f32 / 1000.0 - 0.5).collect())
                .collect();
            let weights: Vec<u64> = (0..k as u64).map(|c| c * 3 + 1).collect();
            let mut agg = StreamingAggregator::new(base, 8, 1e9).unwrap();
            let mut order: Vec<usize> = (0..k).collect();
            order.rotate_left(rotate % k);
            for &c in &order {
                upload(&mut agg, &format!("e{c}"), &encode(&updates[c]), weights[c], chunk).unwrap();
            }
            let sets: Vec<ParamSet> = updates.iter().map(|u| ParamSet::new(vec![TensorSpec::new("w", vec![n])], u.clone()).unwrap()).collect();
            let pairs: Vec<(&ParamSet, u64)> = sets.iter().zip(weights.iter().copied()).collect();
            let batch = model::fedavg(&pairs).unwrap();
            for (a, b) in agg.mean().unwrap().iter().zip(batch.values()) {
                prop_assert!((a - b).abs() <= 1e-6, "{a} vs {b}");
            }
        }

        #[test]
        fn a_rejected_update_leaves_the_sum_as_if_it_never_arrived(
            n in 1usize..200,
            chunk in 1usize..500,
            bad_at in 0usize..200,
            reason in 0u8..4,
            to_file in any::<bool>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let base = write_base(dir.path(), vec![0.25; n]);
            let good: Vec<f32> = (0..n).map(|i| i as f32 * 0.001).collect();
            // Rolled back from memory or from a spill file.
            let mut agg = StreamingAggregator::new(base, 4, 100.0)
                .unwrap()
                .with_spill_above(if to_file { 0 } else { u64::MAX });
            upload(&mut agg, "good", &encode(&good), 3, chunk).unwrap();
            let before = agg.sum.clone();
            let mut bad = good.iter().map(|v| v + 1.0).collect::<Vec<f32>>();
            let bytes = match reason {
                0 => { bad[bad_at % n] = f32::NAN; encode(&bad) }
                1 => { bad[bad_at % n] = 1e6; encode(&bad) }            // norm bound
                _ => encode(&bad),
            };
            agg.begin("bad", bytes.len() as u64, 5).unwrap();
            let mut off = 0;
            let mut failed = false;
            let chunks: Vec<&[u8]> = bytes.chunks(chunk).collect();
            for (i, c) in chunks.iter().enumerate() {
                // reason 2: the second chunk (the first, if there is one) is sent one byte
                // late, after the first was folded.
                let skew = usize::from(reason == 2 && i == 1.min(chunks.len() - 1));
                if agg.chunk("bad", (off + skew) as u64, c.to_vec()).is_err() { failed = true; break; }
                off += c.len();
            }
            prop_assert!(failed || reason != 2);
            if !failed {
                // reason 3: fencing refuses an update whose content is fine.
                let r = agg.finish("bad", || if reason == 3 { Err("stale round".into()) } else { Ok(()) });
                prop_assert!(r.is_err());
            }
            // Subtraction undoes the fold up to f64 rounding of the intermediate sums.
            for (a, b) in agg.sum.iter().zip(&before) {
                prop_assert!((a - b).abs() <= 1e-9 * (1.0 + b.abs()), "{a} vs {b}");
            }
            prop_assert_eq!(agg.count(), 1);
            prop_assert_eq!(agg.in_flight(), 0);
        }
    }

    #[test]
    fn slots_bound_concurrent_uploads_and_the_mean_file_is_content_addressed() {
        let dir = tempfile::tempdir().unwrap();
        let base = write_base(dir.path(), vec![1.0; 10]);
        let len = base.len;
        let mut agg = StreamingAggregator::new(base, 1, 1e9).unwrap();
        agg.begin("a", len, 1).unwrap();
        assert_eq!(agg.begin("b", len, 1), Err(UploadError::Busy(1)));
        assert!(matches!(
            agg.begin("c", len + 4, 1),
            Err(UploadError::Size { .. })
        ));
        agg.abort("a");
        upload(&mut agg, "b", &encode(&[2.0; 10]), 1, 7).unwrap();
        upload(&mut agg, "c", &encode(&[4.0; 10]), 3, 64).unwrap();
        let (digest, next) = agg.write_mean(dir.path()).unwrap();
        let bytes = std::fs::read(&next.path).unwrap();
        assert_eq!(bytes.len() as u64, next.len);
        assert_eq!(next.resident.as_deref(), Some(&bytes));
        assert_eq!(*blake3::hash(&bytes).as_bytes(), digest);
        assert_eq!(ParamSet::from_bytes(&bytes).unwrap().values(), &[3.5; 10]);
        assert_eq!(StreamingAggregator::slots_for(4 << 20, 48 << 20), 12);
        assert_eq!(StreamingAggregator::slots_for(64 << 20, 48 << 20), 1);
        assert_eq!(StreamingAggregator::slots_for(1, 48 << 20), 64);
    }
}
