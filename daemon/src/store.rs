//! RocksDB persistence for the anchor and the edges.
//!
//! Both stores use column families and atomic [`WriteBatch`]es. Keys are big-endian
//! integers, so RocksDB's bytewise ordering is numeric ordering (versions, rounds and
//! cycles iterate in order). Values are postcard-encoded records, except sensor rows,
//! which are raw little-endian `f32`s.
//!
//! * [`AnchorStore`]: immutable global model versions (by digest), the version index,
//!   the round log and the protocol core's durable state. A version commit is one synced
//!   batch, so a `kill -9` leaves either the whole commit or none of it.
//! * [`EdgeStore`]: sensor readings keyed by `(machine, cycle)`, failure events, local
//!   state. Edges keep global models as files ([`crate::models::ModelCache`]).
//!
//! All calls block (RocksDB is synchronous, and synced writes wait for `fsync`); from
//! async code call them through `tokio::task::spawn_blocking`. Both stores are cheap to
//! clone (the database handle is shared).

use std::path::Path;
use std::sync::{Arc, Mutex};

use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteBatch,
    WriteOptions,
};
use serde::{Deserialize, Serialize};

/// Errors of [`AnchorStore`] and [`EdgeStore`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// RocksDB reported an error (open, read, write, iteration).
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// A column family that `open` creates is missing (should not happen).
    #[error("column family {0:?} is missing")]
    MissingColumnFamily(&'static str),
    /// A record could not be encoded.
    #[error("encoding a record for {cf:?}: {source}")]
    Encode {
        /// Column family the record was meant for.
        cf: &'static str,
        /// The postcard error.
        source: postcard::Error,
    },
    /// A stored key or value could not be decoded.
    #[error("corrupt entry in column family {cf:?}: {reason}")]
    Corrupt {
        /// Column family of the entry.
        cf: &'static str,
        /// What was wrong with it.
        reason: String,
    },
    /// The rows passed to [`EdgeStore::ingest`] do not all have the same width (or do not
    /// match the width already stored for the machine). Nothing was written.
    #[error(
        "machine {machine}: row for cycle {cycle} has {got} values, expected {expected}; nothing was written"
    )]
    RowWidth {
        /// Machine of the batch.
        machine: u32,
        /// Cycle of the offending row.
        cycle: u32,
        /// Width of the offending row.
        got: usize,
        /// Width of the first row (or of the rows already stored).
        expected: usize,
    },
    /// A run-to-failure recording has a missing cycle.
    #[error("machine {machine}: reading for cycle {cycle} is missing (failure at cycle {failure})")]
    MissingCycle {
        /// Machine of the recording.
        machine: u32,
        /// First missing cycle.
        cycle: u32,
        /// Failure cycle of the machine.
        failure: u32,
    },
    /// Version already committed with a different record (versions are immutable).
    #[error("version {0} is already committed with a different record")]
    VersionConflict(u64),
    /// The caller passed an argument the store cannot accept (e.g. cycle 0, empty rows,
    /// cycle numbers that overflow `u32`).
    #[error("invalid argument: {0}")]
    Invalid(String),
}

const CF_MODELS: &str = "models";
const CF_VERSIONS: &str = "versions";
const CF_ROUNDS: &str = "rounds";
const CF_META: &str = "meta";
const CF_READINGS: &str = "readings";
const CF_FAILURES: &str = "failures";
const CF_STATE: &str = "state";

const META_DURABLE: &[u8] = b"durable";

/// One committed global model version (anchor, column family `versions`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VersionRecord {
    /// Global model version number (monotonically increasing).
    pub version: u64,
    /// Content digest of the serialized model (key into `models`).
    pub digest: [u8; 32],
    /// Round that produced the version.
    pub round: u64,
    /// Coordination term of that round.
    pub term: u64,
    /// Commit time, milliseconds since the Unix epoch.
    pub committed_at_ms: u64,
    /// Number of updates aggregated.
    pub participants: u32,
    /// Number of training samples behind the aggregated updates.
    pub samples: u64,
    /// Sample-weighted mean training loss reported by the participants.
    pub train_loss: f32,
    /// Evaluation RMSE of the new model, if evaluated.
    pub eval_rmse: Option<f64>,
}

/// One entry of the anchor's round log (column family `rounds`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoundLogEntry {
    /// Round number.
    pub round: u64,
    /// Coordination term.
    pub term: u64,
    /// `"committed"` or `"abandoned: <reason>"`.
    pub outcome: String,
    /// Peers invited to the round.
    pub participants: Vec<String>,
    /// Peers whose updates were aggregated.
    pub included: Vec<String>,
    /// Number of rejected updates (stale, duplicate, invalid).
    pub rejected: u32,
    /// Round start, milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    /// Round end, milliseconds since the Unix epoch.
    pub ended_at_ms: u64,
    /// Version committed by the round, if any.
    pub version: Option<u64>,
}

fn open_db(dir: &Path, cfs: &[&'static str]) -> Result<DB, StoreError> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    let descriptors = cfs
        .iter()
        .map(|name| ColumnFamilyDescriptor::new(*name, Options::default()));
    Ok(DB::open_cf_descriptors(&opts, dir, descriptors)?)
}

fn cf<'a>(db: &'a DB, name: &'static str) -> Result<&'a ColumnFamily, StoreError> {
    db.cf_handle(name)
        .ok_or(StoreError::MissingColumnFamily(name))
}

fn synced() -> WriteOptions {
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    wo
}

fn encode<T: Serialize>(cf: &'static str, v: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(v).map_err(|source| StoreError::Encode { cf, source })
}

fn decode<'a, T: Deserialize<'a>>(cf: &'static str, bytes: &'a [u8]) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt {
        cf,
        reason: format!("undecodable record: {e}"),
    })
}

fn u64_from_key(cf: &'static str, key: &[u8]) -> Result<u64, StoreError> {
    let arr: [u8; 8] = key.try_into().map_err(|_| StoreError::Corrupt {
        cf,
        reason: format!("key of {} bytes, expected 8", key.len()),
    })?;
    Ok(u64::from_be_bytes(arr))
}

/// The anchor's store: model versions, round log and durable protocol state.
///
/// Column families: `models` (digest → model bytes), `versions` (version `u64` BE →
/// postcard [`VersionRecord`]), `rounds` (append sequence `u64` BE → postcard
/// [`RoundLogEntry`]), `meta` (string keys; `"durable"` holds the protocol core's
/// durable state).
#[derive(Clone)]
pub struct AnchorStore {
    db: Arc<DB>,
    /// Serializes `append_round` (it reads the last sequence number, then writes).
    append_lock: Arc<Mutex<()>>,
}

impl std::fmt::Debug for AnchorStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnchorStore")
            .field("path", &self.db.path())
            .finish()
    }
}

impl AnchorStore {
    /// Opens (or creates) the anchor store in `dir`, creating missing column families.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = open_db(dir, &[CF_MODELS, CF_VERSIONS, CF_ROUNDS, CF_META])?;
        Ok(Self {
            db: Arc::new(db),
            append_lock: Arc::new(Mutex::new(())),
        })
    }

    /// Commits a global model version: the model bytes under `rec.digest`, the version
    /// record under `rec.version` and the durable protocol state, in ONE atomic, synced
    /// write batch. After a crash either all three are visible or none is.
    ///
    /// Versions are immutable: committing an existing version number with a different
    /// record is [`StoreError::VersionConflict`] (re-committing the identical record, e.g.
    /// a retry, is accepted).
    pub fn commit_version(
        &self,
        rec: &VersionRecord,
        model_bytes: &[u8],
        durable_state: &[u8],
    ) -> Result<(), StoreError> {
        let mut batch = self.version_batch(rec, durable_state)?;
        batch.put_cf(cf(&self.db, CF_MODELS)?, rec.digest, model_bytes);
        self.db.write_opt(batch, &synced())?;
        Ok(())
    }

    /// A write batch with the version record and the durable state, refusing to rewrite an
    /// existing version with a different record.
    fn version_batch(
        &self,
        rec: &VersionRecord,
        durable_state: &[u8],
    ) -> Result<WriteBatch, StoreError> {
        if let Some(existing) = self.version(rec.version)?
            && existing != *rec
        {
            return Err(StoreError::VersionConflict(rec.version));
        }
        let value = encode(CF_VERSIONS, rec)?;
        let mut batch = WriteBatch::default();
        batch.put_cf(cf(&self.db, CF_VERSIONS)?, rec.version.to_be_bytes(), value);
        batch.put_cf(cf(&self.db, CF_META)?, META_DURABLE, durable_state);
        Ok(batch)
    }

    /// Commits a global model version whose model bytes live elsewhere (the anchor keeps
    /// models as content-addressed files, written durably before this call): the version
    /// record and the durable protocol state in one atomic, synced write batch.
    pub fn commit_version_record(
        &self,
        rec: &VersionRecord,
        durable_state: &[u8],
    ) -> Result<(), StoreError> {
        let batch = self.version_batch(rec, durable_state)?;
        self.db.write_opt(batch, &synced())?;
        Ok(())
    }

    /// Stores the protocol core's durable state (term, vote, ...) with a synced write.
    pub fn put_durable(&self, durable_state: &[u8]) -> Result<(), StoreError> {
        self.db.put_cf_opt(
            cf(&self.db, CF_META)?,
            META_DURABLE,
            durable_state,
            &synced(),
        )?;
        Ok(())
    }

    /// The last durable state stored by [`Self::put_durable`] or [`Self::commit_version`].
    pub fn durable(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get_cf(cf(&self.db, CF_META)?, META_DURABLE)?)
    }

    /// The committed version with the highest version number, if any.
    pub fn latest_version(&self) -> Result<Option<VersionRecord>, StoreError> {
        let versions = cf(&self.db, CF_VERSIONS)?;
        match self.db.iterator_cf(versions, IteratorMode::End).next() {
            None => Ok(None),
            Some(item) => {
                let (key, value) = item?;
                let rec: VersionRecord = decode(CF_VERSIONS, &value)?;
                check_version_key(&key, &rec)?;
                Ok(Some(rec))
            }
        }
    }

    /// The record of version `v`, if committed.
    pub fn version(&self, v: u64) -> Result<Option<VersionRecord>, StoreError> {
        let versions = cf(&self.db, CF_VERSIONS)?;
        match self.db.get_cf(versions, v.to_be_bytes())? {
            None => Ok(None),
            Some(value) => {
                let rec: VersionRecord = decode(CF_VERSIONS, &value)?;
                check_version_key(&v.to_be_bytes(), &rec)?;
                Ok(Some(rec))
            }
        }
    }

    /// The model bytes stored under `digest`, if any.
    pub fn model(&self, digest: &[u8; 32]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get_cf(cf(&self.db, CF_MODELS)?, digest)?)
    }

    /// Stores model bytes under `digest` (e.g. the genesis model) with a synced write.
    /// The store does not recompute the digest; callers pass the content digest.
    pub fn put_model(&self, digest: &[u8; 32], bytes: &[u8]) -> Result<(), StoreError> {
        self.db
            .put_cf_opt(cf(&self.db, CF_MODELS)?, digest, bytes, &synced())?;
        Ok(())
    }

    /// Appends an entry to the round log (synced). Entries are keyed by an append
    /// sequence number, not by round, so a round number reused in a later term never
    /// overwrites history.
    pub fn append_round(&self, e: &RoundLogEntry) -> Result<(), StoreError> {
        let value = encode(CF_ROUNDS, e)?;
        // A poisoned lock only means another append panicked; the DB is still consistent.
        let _guard = self
            .append_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let rounds = cf(&self.db, CF_ROUNDS)?;
        let next = match self.db.iterator_cf(rounds, IteratorMode::End).next() {
            None => 0,
            Some(item) => {
                let (key, _) = item?;
                u64_from_key(CF_ROUNDS, &key)?
                    .checked_add(1)
                    .ok_or_else(|| StoreError::Invalid("round log sequence overflow".into()))?
            }
        };
        self.db
            .put_cf_opt(rounds, next.to_be_bytes(), value, &synced())?;
        Ok(())
    }

    /// The whole round log, in append order.
    pub fn rounds(&self) -> Result<Vec<RoundLogEntry>, StoreError> {
        let rounds = cf(&self.db, CF_ROUNDS)?;
        self.db
            .iterator_cf(rounds, IteratorMode::Start)
            .map(|item| {
                let (_, value) = item?;
                decode(CF_ROUNDS, &value)
            })
            .collect()
    }
}

fn check_version_key(key: &[u8], rec: &VersionRecord) -> Result<(), StoreError> {
    let k = u64_from_key(CF_VERSIONS, key)?;
    if k != rec.version {
        return Err(StoreError::Corrupt {
            cf: CF_VERSIONS,
            reason: format!("key {k} holds the record of version {}", rec.version),
        });
    }
    Ok(())
}

/// The edge's store: sensor readings, failure events and local state.
///
/// Column families: `readings` (`(machine u32 BE, cycle u32 BE)` → row as raw
/// little-endian `f32`s), `failures` (machine `u32` BE → failure cycle `u32` BE),
/// `state` (string keys); `models` is no longer written (edges keep models as files)
/// and is only opened so that stores from earlier releases still open.
///
/// Cycles are numbered from 1, as in C-MAPSS; a machine's failure cycle is its last
/// recorded cycle.
#[derive(Clone)]
pub struct EdgeStore {
    db: Arc<DB>,
}

impl std::fmt::Debug for EdgeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeStore")
            .field("path", &self.db.path())
            .finish()
    }
}

fn reading_key(machine: u32, cycle: u32) -> [u8; 8] {
    let mut k = [0u8; 8];
    k[..4].copy_from_slice(&machine.to_be_bytes());
    k[4..].copy_from_slice(&cycle.to_be_bytes());
    k
}

fn split_reading_key(key: &[u8]) -> Result<(u32, u32), StoreError> {
    let arr: [u8; 8] = key.try_into().map_err(|_| StoreError::Corrupt {
        cf: CF_READINGS,
        reason: format!("key of {} bytes, expected 8", key.len()),
    })?;
    let machine = u32::from_be_bytes([arr[0], arr[1], arr[2], arr[3]]);
    let cycle = u32::from_be_bytes([arr[4], arr[5], arr[6], arr[7]]);
    Ok((machine, cycle))
}

fn encode_row(row: &[f32]) -> Vec<u8> {
    row.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn decode_row(machine: u32, cycle: u32, bytes: &[u8]) -> Result<Vec<f32>, StoreError> {
    if !bytes.len().is_multiple_of(4) {
        return Err(StoreError::Corrupt {
            cf: CF_READINGS,
            reason: format!(
                "machine {machine} cycle {cycle}: {} bytes is not a whole number of f32s",
                bytes.len()
            ),
        });
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

fn u32_value(cf: &'static str, bytes: &[u8]) -> Result<u32, StoreError> {
    let arr: [u8; 4] = bytes.try_into().map_err(|_| StoreError::Corrupt {
        cf,
        reason: format!("value of {} bytes, expected 4", bytes.len()),
    })?;
    Ok(u32::from_be_bytes(arr))
}

impl EdgeStore {
    /// Opens (or creates) the edge store in `dir`, creating missing column families.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = open_db(dir, &[CF_READINGS, CF_FAILURES, CF_STATE, CF_MODELS])?;
        Ok(Self { db: Arc::new(db) })
    }

    /// Width (values per row) of the first stored reading of `machine`, if any.
    fn stored_width(&self, machine: u32) -> Result<Option<usize>, StoreError> {
        let readings = cf(&self.db, CF_READINGS)?;
        let start = reading_key(machine, 0);
        let mut it = self
            .db
            .iterator_cf(readings, IteratorMode::From(&start, Direction::Forward));
        match it.next() {
            None => Ok(None),
            Some(item) => {
                let (key, value) = item?;
                let (m, _) = split_reading_key(&key)?;
                Ok((m == machine).then_some(value.len() / 4))
            }
        }
    }

    /// Stores `rows` as the readings of `machine` at cycles `first_cycle`,
    /// `first_cycle + 1`, ... in one atomic batch (not synced: the WAL survives a process
    /// kill). All rows must have the same, non-zero width, equal to the width of rows
    /// already stored for the machine; otherwise [`StoreError::RowWidth`] is returned and
    /// nothing is written. Existing readings at the same cycles are overwritten.
    pub fn ingest(
        &self,
        machine: u32,
        first_cycle: u32,
        rows: &[Vec<f32>],
    ) -> Result<(), StoreError> {
        let Some(first) = rows.first() else {
            return Ok(());
        };
        if first_cycle == 0 {
            return Err(StoreError::Invalid(format!(
                "machine {machine}: cycles are numbered from 1, got first cycle 0"
            )));
        }
        let count = u32::try_from(rows.len()).ok();
        let last_ok = count.and_then(|n| first_cycle.checked_add(n - 1)).is_some();
        if !last_ok {
            return Err(StoreError::Invalid(format!(
                "machine {machine}: {} rows from cycle {first_cycle} overflow the cycle counter",
                rows.len()
            )));
        }
        let expected = match self.stored_width(machine)? {
            Some(w) => w,
            None => first.len(),
        };
        if expected == 0 {
            return Err(StoreError::Invalid(format!(
                "machine {machine}: rows must have at least one value"
            )));
        }
        let readings = cf(&self.db, CF_READINGS)?;
        let mut batch = WriteBatch::default();
        put_rows(&mut batch, readings, machine, first_cycle, rows, expected)?;
        self.db.write(batch)?;
        Ok(())
    }

    /// Records that `machine` failed at `cycle` (its last cycle, >= 1), synced.
    pub fn mark_failure(&self, machine: u32, cycle: u32) -> Result<(), StoreError> {
        if cycle == 0 {
            return Err(StoreError::Invalid(format!(
                "machine {machine}: failure cycle must be >= 1"
            )));
        }
        self.db.put_cf_opt(
            cf(&self.db, CF_FAILURES)?,
            machine.to_be_bytes(),
            cycle.to_be_bytes(),
            &synced(),
        )?;
        Ok(())
    }

    /// Stores complete run-to-failure recordings: the rows of each trajectory at cycles
    /// `1..=L` and a failure at cycle `L`, all in one atomic, synced batch. Trajectories
    /// with no rows are rejected; widths are checked as in [`Self::ingest`], within each
    /// trajectory and against rows already stored for the machine, before anything is
    /// written.
    pub fn ingest_trajectories(&self, trajs: &[model::data::Trajectory]) -> Result<(), StoreError> {
        let readings = cf(&self.db, CF_READINGS)?;
        let failures = cf(&self.db, CF_FAILURES)?;
        let mut batch = WriteBatch::default();
        for t in trajs {
            let machine = t.machine;
            let Some(first) = t.rows.first() else {
                return Err(StoreError::Invalid(format!(
                    "machine {machine}: trajectory without rows"
                )));
            };
            let len = u32::try_from(t.rows.len()).map_err(|_| {
                StoreError::Invalid(format!("machine {machine}: trajectory too long"))
            })?;
            let expected = self.stored_width(machine)?.unwrap_or(first.len());
            if expected == 0 {
                return Err(StoreError::Invalid(format!(
                    "machine {machine}: rows must have at least one value"
                )));
            }
            put_rows(&mut batch, readings, machine, 1, &t.rows, expected)?;
            batch.put_cf(failures, machine.to_be_bytes(), len.to_be_bytes());
        }
        self.db.write_opt(batch, &synced())?;
        Ok(())
    }

    /// The complete run-to-failure recordings: one trajectory per machine with a failure
    /// event, ordered by machine, rows for cycles `1..=failure` in cycle order. Machines
    /// without a failure event (still running) are left out; readings after the failure
    /// cycle are ignored. A missing cycle is [`StoreError::MissingCycle`].
    pub fn trajectories(&self) -> Result<Vec<model::data::Trajectory>, StoreError> {
        let readings = cf(&self.db, CF_READINGS)?;
        let failures = cf(&self.db, CF_FAILURES)?;
        let mut out = Vec::new();
        for item in self.db.iterator_cf(failures, IteratorMode::Start) {
            let (key, value) = item?;
            let machine = u32_value(CF_FAILURES, &key)?;
            let failure = u32_value(CF_FAILURES, &value)?;
            let mut rows: Vec<Vec<f32>> = Vec::with_capacity(failure as usize);
            let start = reading_key(machine, 1);
            let mut expected_cycle = 1u32;
            for item in self
                .db
                .iterator_cf(readings, IteratorMode::From(&start, Direction::Forward))
            {
                let (key, value) = item?;
                let (m, cycle) = split_reading_key(&key)?;
                if m != machine || cycle > failure {
                    break;
                }
                if cycle != expected_cycle {
                    return Err(StoreError::MissingCycle {
                        machine,
                        cycle: expected_cycle,
                        failure,
                    });
                }
                let row = decode_row(machine, cycle, &value)?;
                if let Some(w) = rows.first().map(Vec::len)
                    && row.len() != w
                {
                    return Err(StoreError::Corrupt {
                        cf: CF_READINGS,
                        reason: format!(
                            "machine {machine} cycle {cycle}: {} values, earlier rows have {w}",
                            row.len()
                        ),
                    });
                }
                rows.push(row);
                expected_cycle = cycle.saturating_add(1);
            }
            if rows.len() != failure as usize {
                return Err(StoreError::MissingCycle {
                    machine,
                    cycle: expected_cycle,
                    failure,
                });
            }
            out.push(model::data::Trajectory { machine, rows });
        }
        Ok(out)
    }

    /// Number of distinct machines with at least one reading.
    pub fn machine_count(&self) -> Result<u64, StoreError> {
        let readings = cf(&self.db, CF_READINGS)?;
        let mut it = self.db.raw_iterator_cf(readings);
        it.seek_to_first();
        let mut count = 0u64;
        while it.valid() {
            let Some(key) = it.key() else { break };
            let (machine, _) = split_reading_key(key)?;
            count += 1;
            match machine.checked_add(1) {
                Some(next) => it.seek(reading_key(next, 0)),
                None => break,
            }
        }
        it.status()?;
        Ok(count)
    }

    /// Number of machines with a failure event.
    pub fn failure_count(&self) -> Result<u64, StoreError> {
        let failures = cf(&self.db, CF_FAILURES)?;
        let mut count = 0u64;
        for item in self.db.iterator_cf(failures, IteratorMode::Start) {
            item?;
            count += 1;
        }
        Ok(count)
    }

    /// Stores a local state value under `key` (synced).
    pub fn put_state(&self, key: &str, v: &[u8]) -> Result<(), StoreError> {
        self.db
            .put_cf_opt(cf(&self.db, CF_STATE)?, key.as_bytes(), v, &synced())?;
        Ok(())
    }

    /// The local state value under `key`, if any.
    pub fn state(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get_cf(cf(&self.db, CF_STATE)?, key.as_bytes())?)
    }
}

/// Adds `rows` of `machine` from `first_cycle` on to `batch`, refusing rows whose width
/// is not `expected` (the caller then drops the batch, so nothing is written).
fn put_rows(
    batch: &mut WriteBatch,
    readings: &rocksdb::ColumnFamily,
    machine: u32,
    first_cycle: u32,
    rows: &[Vec<f32>],
    expected: usize,
) -> Result<(), StoreError> {
    for (cycle, row) in (first_cycle..).zip(rows) {
        if row.len() != expected {
            return Err(StoreError::RowWidth {
                machine,
                cycle,
                got: row.len(),
                expected,
            });
        }
        batch.put_cf(readings, reading_key(machine, cycle), encode_row(row));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use model::data::Trajectory;

    fn rec(version: u64, digest_byte: u8) -> VersionRecord {
        VersionRecord {
            version,
            digest: [digest_byte; 32],
            round: version * 2,
            term: 3,
            committed_at_ms: 1_700_000_000_000 + version,
            participants: 4,
            samples: 1000 + version,
            train_loss: 0.25,
            eval_rmse: if version.is_multiple_of(2) {
                Some(17.5)
            } else {
                None
            },
        }
    }

    fn entry(round: u64, outcome: &str) -> RoundLogEntry {
        RoundLogEntry {
            round,
            term: 1,
            outcome: outcome.to_string(),
            participants: vec!["a".into(), "b".into()],
            included: vec!["a".into()],
            rejected: 1,
            started_at_ms: 10,
            ended_at_ms: 20,
            version: (outcome == "committed").then_some(round),
        }
    }

    fn rows(n: usize, width: usize, base: f32) -> Vec<Vec<f32>> {
        (0..n)
            .map(|i| {
                (0..width)
                    .map(|j| base + i as f32 + j as f32 / 100.0)
                    .collect()
            })
            .collect()
    }

    #[test]
    fn anchor_commit_is_atomic_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let r1 = rec(1, 0xAA);
        {
            let s = AnchorStore::open(dir.path()).unwrap();
            assert_eq!(s.latest_version().unwrap(), None);
            assert_eq!(s.durable().unwrap(), None);
            s.commit_version(&r1, b"model-one", b"durable-1").unwrap();
            // All three parts of the commit are visible.
            assert_eq!(
                s.model(&r1.digest).unwrap().as_deref(),
                Some(&b"model-one"[..])
            );
            assert_eq!(s.version(1).unwrap(), Some(r1.clone()));
            assert_eq!(s.durable().unwrap().as_deref(), Some(&b"durable-1"[..]));
        }
        let s = AnchorStore::open(dir.path()).unwrap();
        assert_eq!(
            s.model(&r1.digest).unwrap().as_deref(),
            Some(&b"model-one"[..])
        );
        assert_eq!(s.version(1).unwrap(), Some(r1.clone()));
        assert_eq!(s.latest_version().unwrap(), Some(r1.clone()));
        assert_eq!(s.durable().unwrap().as_deref(), Some(&b"durable-1"[..]));
        assert_eq!(s.version(2).unwrap(), None);
        assert_eq!(s.model(&[0u8; 32]).unwrap(), None);
        // Re-committing the same record is fine; rewriting history is not.
        s.commit_version(&r1, b"model-one", b"durable-1b").unwrap();
        let mut other = r1.clone();
        other.digest = [0xBB; 32];
        assert!(matches!(
            s.commit_version(&other, b"other", b"durable-2"),
            Err(StoreError::VersionConflict(1))
        ));
        assert_eq!(s.model(&[0xBB; 32]).unwrap(), None);
        assert_eq!(s.durable().unwrap().as_deref(), Some(&b"durable-1b"[..]));
    }

    #[test]
    fn anchor_latest_version_is_numerically_highest() {
        let dir = tempfile::tempdir().unwrap();
        let s = AnchorStore::open(dir.path()).unwrap();
        // 256 > 255 only under big-endian ordering of the keys (LE would put 255 last).
        for v in [3u64, 255, 1, 256, 2] {
            s.commit_version(&rec(v, v as u8), b"m", format!("d{v}").as_bytes())
                .unwrap();
        }
        assert_eq!(s.latest_version().unwrap().unwrap().version, 256);
        assert_eq!(s.version(255).unwrap().unwrap(), rec(255, 255));
        // Durable state is the last one written, regardless of version order.
        assert_eq!(s.durable().unwrap().as_deref(), Some(&b"d2"[..]));
        s.put_durable(b"later").unwrap();
        assert_eq!(s.durable().unwrap().as_deref(), Some(&b"later"[..]));
    }

    #[test]
    fn anchor_genesis_model_and_round_log() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = AnchorStore::open(dir.path()).unwrap();
            s.put_model(&[7u8; 32], b"genesis").unwrap();
            s.append_round(&entry(1, "committed")).unwrap();
            s.append_round(&entry(2, "abandoned: quorum not reached"))
                .unwrap();
        }
        let s = AnchorStore::open(dir.path()).unwrap();
        assert_eq!(
            s.model(&[7u8; 32]).unwrap().as_deref(),
            Some(&b"genesis"[..])
        );
        // Same round number again (new term): appended, not overwritten.
        s.append_round(&entry(2, "committed")).unwrap();
        let log = s.rounds().unwrap();
        assert_eq!(
            log,
            vec![
                entry(1, "committed"),
                entry(2, "abandoned: quorum not reached"),
                entry(2, "committed")
            ]
        );
    }

    #[test]
    fn edge_trajectories_round_trip_in_cycle_order() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = EdgeStore::open(dir.path()).unwrap();
            // Machine 1: 300 cycles ingested out of order in three chunks; cycle 256 must
            // sort after 255 (big-endian keys).
            let all = rows(300, 3, 0.0);
            s.ingest(1, 201, &all[200..]).unwrap();
            s.ingest(1, 1, &all[..100]).unwrap();
            s.ingest(1, 101, &all[100..200]).unwrap();
            s.mark_failure(1, 300).unwrap();
            // Machine 0: still running, no failure event: excluded.
            s.ingest(0, 1, &rows(5, 3, 1000.0)).unwrap();
            // Machines 5 and 2 via ingest_trajectories.
            s.ingest_trajectories(&[
                Trajectory {
                    machine: 5,
                    rows: rows(7, 3, 500.0),
                },
                Trajectory {
                    machine: 2,
                    rows: rows(4, 3, 200.0),
                },
            ])
            .unwrap();
        }
        let s = EdgeStore::open(dir.path()).unwrap();
        assert_eq!(s.machine_count().unwrap(), 4);
        assert_eq!(s.failure_count().unwrap(), 3);
        let trajs = s.trajectories().unwrap();
        let machines: Vec<u32> = trajs.iter().map(|t| t.machine).collect();
        assert_eq!(machines, vec![1, 2, 5]);
        assert_eq!(trajs[0].rows, rows(300, 3, 0.0));
        assert_eq!(trajs[1].rows, rows(4, 3, 200.0));
        assert_eq!(trajs[2].rows, rows(7, 3, 500.0));
    }

    #[test]
    fn edge_readings_after_failure_are_ignored_and_gaps_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let s = EdgeStore::open(dir.path()).unwrap();
        s.ingest(3, 1, &rows(10, 2, 0.0)).unwrap();
        s.mark_failure(3, 8).unwrap();
        let t = s.trajectories().unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].rows, rows(8, 2, 0.0));

        // Machine 4 misses cycle 3.
        s.ingest(4, 1, &rows(2, 2, 0.0)).unwrap();
        s.ingest(4, 4, &rows(3, 2, 0.0)).unwrap();
        s.mark_failure(4, 6).unwrap();
        match s.trajectories() {
            Err(StoreError::MissingCycle {
                machine: 4,
                cycle: 3,
                failure: 6,
            }) => {}
            other => panic!("expected a gap at machine 4 cycle 3, got {other:?}"),
        }
        // Machine 4 truncated at the end: readings stop before the failure cycle.
        s.mark_failure(4, 9).unwrap();
        s.ingest(4, 3, &rows(1, 2, 0.0)).unwrap();
        match s.trajectories() {
            Err(StoreError::MissingCycle {
                machine: 4,
                cycle: 7,
                failure: 9,
            }) => {}
            other => panic!("expected a gap at machine 4 cycle 7, got {other:?}"),
        }
        assert!(s.mark_failure(4, 0).is_err());
    }

    #[test]
    fn edge_bad_width_rejected_and_nothing_written() {
        let dir = tempfile::tempdir().unwrap();
        let s = EdgeStore::open(dir.path()).unwrap();
        let mut bad = rows(5, 4, 0.0);
        bad[3].pop();
        match s.ingest(9, 1, &bad) {
            Err(StoreError::RowWidth {
                machine: 9,
                cycle: 4,
                got: 3,
                expected: 4,
            }) => {}
            other => panic!("expected RowWidth, got {other:?}"),
        }
        assert_eq!(s.machine_count().unwrap(), 0);

        // A width different from what is already stored for the machine.
        s.ingest(9, 1, &rows(2, 4, 0.0)).unwrap();
        assert!(matches!(
            s.ingest(9, 3, &rows(2, 5, 0.0)),
            Err(StoreError::RowWidth {
                expected: 4,
                got: 5,
                ..
            })
        ));
        // Batch of trajectories with one bad trajectory: nothing from the batch lands.
        let mut bad_traj = rows(3, 4, 0.0);
        bad_traj[2].push(1.0);
        assert!(matches!(
            s.ingest_trajectories(&[
                Trajectory {
                    machine: 20,
                    rows: rows(3, 4, 0.0)
                },
                Trajectory {
                    machine: 21,
                    rows: bad_traj
                },
            ]),
            Err(StoreError::RowWidth { machine: 21, .. })
        ));
        s.mark_failure(9, 2).unwrap();
        assert_eq!(s.machine_count().unwrap(), 1);
        assert_eq!(s.failure_count().unwrap(), 1);
        assert_eq!(s.trajectories().unwrap()[0].rows, rows(2, 4, 0.0));
        assert!(s.ingest(9, 0, &rows(1, 4, 0.0)).is_err());
        assert!(s.ingest(10, u32::MAX, &rows(2, 4, 0.0)).is_err());
    }

    #[test]
    fn edge_state_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = EdgeStore::open(dir.path()).unwrap();
            s.put_state("scaler", b"minmax").unwrap();
        }
        let s = EdgeStore::open(dir.path()).unwrap();
        assert_eq!(s.state("scaler").unwrap().as_deref(), Some(&b"minmax"[..]));
        assert_eq!(s.state("other").unwrap(), None);
    }
}
