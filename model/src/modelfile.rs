//! A self-contained model file: everything inference needs, in one file.
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! "GFRULM01"            8 bytes, magic and format version
//! header_len: u32       length of the header block
//! header                postcard-encoded ModelHeader (architecture and input
//!                       shape, window config, sensor numbers, scaler, training info)
//! params                ParamSet::to_bytes (layout + f32 weights)
//! ```
//!
//! [`ModelFile::from_bytes`] is bounded and total (any input decodes or fails with an
//! error), and checks that the pieces fit together: the weights have the layout of
//! the architecture, and sensors, scaler and model agree on the number of features.

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::data::{Scaler, WindowConfig};
use crate::metrics::Metrics;
use crate::net::ModelSpec;
use crate::params::{ParamError, ParamSet};

/// Magic and format version at the start of every model file.
pub const MAGIC: [u8; 8] = *b"GFRULM01";
/// Largest header block accepted.
pub const MAX_HEADER_BYTES: usize = 1 << 20;
/// Largest model file read from disk.
pub const MAX_FILE_BYTES: u64 = 512 << 20;

/// Errors reading or writing model files.
#[derive(Debug, thiserror::Error)]
pub enum ModelFileError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Not a model file, or one of another format version.
    #[error("not a gossipfed model file (bad magic)")]
    BadMagic,
    /// The input ends early.
    #[error("model file is truncated")]
    Truncated,
    /// Too large.
    #[error("model file too large: {0}")]
    TooLarge(String),
    /// The header block does not decode.
    #[error("model header: {0}")]
    Header(String),
    /// The weights block does not decode.
    #[error("model weights: {0}")]
    Params(#[from] ParamError),
    /// The pieces do not fit together.
    #[error("inconsistent model file: {0}")]
    Inconsistent(String),
}

/// How a model was trained and how it did on its validation engines.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct TrainingInfo {
    /// One-line description (e.g. "federated 5 edges iid fedavg, 30 rounds × 1 epoch").
    pub description: String,
    /// The seed of the run.
    pub seed: u64,
    /// Held-out validation engine ids.
    pub val_engines: Vec<u32>,
    /// The selected epoch or round.
    pub best_step: usize,
    /// Validation metrics of the stored weights (capped targets, all windows).
    pub val: Option<Metrics>,
    /// Training wall time in seconds.
    pub wall_s: f64,
}

/// Everything but the weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelHeader {
    /// Architecture and input shape.
    pub spec: ModelSpec,
    /// Window length and RUL cap used in training.
    pub window: WindowConfig,
    /// C-MAPSS sensor numbers (1–21) that are the features, in feature order.
    pub sensors: Vec<usize>,
    /// The (federated) min-max scaler of the training data.
    pub scaler: Scaler,
    /// Provenance and validation results.
    pub training: TrainingInfo,
}

/// A model file in memory.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelFile {
    /// Architecture, preprocessing, provenance.
    pub header: ModelHeader,
    /// The weights.
    pub params: ParamSet,
}

impl ModelFile {
    /// Checks that weights, architecture, sensors and scaler fit together.
    pub fn validate(&self) -> Result<(), ModelFileError> {
        let h = &self.header;
        let specs = h
            .spec
            .param_specs()
            .map_err(|e| ModelFileError::Inconsistent(e.to_string()))?;
        if specs.as_slice() != self.params.specs() {
            return Err(ModelFileError::Inconsistent(
                "weights do not have the architecture's layout".into(),
            ));
        }
        if h.window.window != h.spec.window {
            return Err(ModelFileError::Inconsistent(format!(
                "window {} vs model input window {}",
                h.window.window, h.spec.window
            )));
        }
        if h.sensors.len() != h.spec.features || h.scaler.features() != h.spec.features {
            return Err(ModelFileError::Inconsistent(format!(
                "{} sensors and {} scaled features vs {} model features",
                h.sensors.len(),
                h.scaler.features(),
                h.spec.features
            )));
        }
        if h.scaler.max.len() != h.scaler.min.len() {
            return Err(ModelFileError::Inconsistent(
                "scaler min and max differ in length".into(),
            ));
        }
        if !self.params.all_finite() {
            return Err(ModelFileError::Inconsistent(
                "weights contain NaN or infinity".into(),
            ));
        }
        Ok(())
    }

    /// The encoding described in the [module docs](self).
    pub fn to_bytes(&self) -> Result<Vec<u8>, ModelFileError> {
        let header = postcard::to_allocvec(&self.header)
            .map_err(|e| ModelFileError::Header(e.to_string()))?;
        if header.len() > MAX_HEADER_BYTES {
            return Err(ModelFileError::TooLarge("header block".into()));
        }
        let params = self.params.to_bytes();
        let mut out = Vec::with_capacity(12 + header.len() + params.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&params);
        Ok(out)
    }

    /// Decodes and [validates](Self::validate) [`ModelFile::to_bytes`] output.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ModelFileError> {
        let (magic, rest) = bytes
            .split_first_chunk::<8>()
            .ok_or(ModelFileError::Truncated)?;
        if *magic != MAGIC {
            return Err(ModelFileError::BadMagic);
        }
        let (len, rest) = rest
            .split_first_chunk::<4>()
            .ok_or(ModelFileError::Truncated)?;
        let len = u32::from_le_bytes(*len) as usize;
        if len > MAX_HEADER_BYTES {
            return Err(ModelFileError::TooLarge("header block".into()));
        }
        if rest.len() < len {
            return Err(ModelFileError::Truncated);
        }
        let (header, params) = rest.split_at(len);
        let (header, trailing): (ModelHeader, &[u8]) =
            postcard::take_from_bytes(header).map_err(|e| ModelFileError::Header(e.to_string()))?;
        if !trailing.is_empty() {
            return Err(ModelFileError::Header(format!(
                "{} trailing bytes",
                trailing.len()
            )));
        }
        let file = ModelFile {
            header,
            params: ParamSet::from_bytes(params)?,
        };
        file.validate()?;
        Ok(file)
    }

    /// Validates and writes the file (through a temporary file and a rename, so a
    /// crash never leaves half a model under `path`).
    pub fn save(&self, path: &Path) -> Result<(), ModelFileError> {
        self.validate()?;
        let bytes = self.to_bytes()?;
        let io_err = |source| ModelFileError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
        tmp_name.push(".tmp");
        let tmp = path.with_file_name(tmp_name);
        std::fs::write(&tmp, &bytes).map_err(io_err)?;
        std::fs::rename(&tmp, path).map_err(io_err)
    }

    /// Reads, decodes and validates a model file.
    pub fn load(path: &Path) -> Result<Self, ModelFileError> {
        let io_err = |source| ModelFileError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io_err)?;
        let mut bytes = Vec::new();
        file.take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(io_err)?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(ModelFileError::TooLarge(format!(
                "{} is larger than {MAX_FILE_BYTES} bytes",
                path.display()
            )));
        }
        Self::from_bytes(&bytes)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::net::{Arch, init_params};

    fn sample(arch: Arch) -> ModelFile {
        let spec = ModelSpec {
            arch,
            window: 30,
            features: 3,
        };
        ModelFile {
            params: init_params(&spec, 1),
            header: ModelHeader {
                spec,
                window: WindowConfig::default(),
                sensors: vec![2, 3, 4],
                scaler: Scaler {
                    min: vec![0.0, 1.0, 2.0],
                    max: vec![1.0, 2.0, 3.0],
                },
                training: TrainingInfo {
                    description: "test".into(),
                    seed: 3,
                    val_engines: vec![4, 9],
                    best_step: 2,
                    val: Some(Metrics::compute(&[1.0], &[2.0])),
                    wall_s: 1.5,
                },
            },
        }
    }

    #[test]
    fn round_trips_through_bytes_and_disk() {
        for arch in [Arch::Cnn, Arch::Lstm] {
            let m = sample(arch);
            let bytes = m.to_bytes().unwrap();
            assert_eq!(ModelFile::from_bytes(&bytes).unwrap(), m);
            let dir = std::env::temp_dir().join(format!("gf-modelfile-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join(format!("{arch:?}.gfm"));
            m.save(&path).unwrap();
            assert_eq!(ModelFile::load(&path).unwrap(), m);
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn corrupt_or_inconsistent_files_are_errors() {
        let m = sample(Arch::Cnn);
        let bytes = m.to_bytes().unwrap();
        for cut in [0, 5, 11, 20, bytes.len() - 1] {
            assert!(ModelFile::from_bytes(&bytes[..cut]).is_err(), "cut {cut}");
        }
        let mut bad = bytes.clone();
        bad[0] = b'X';
        assert!(matches!(
            ModelFile::from_bytes(&bad),
            Err(ModelFileError::BadMagic)
        ));
        let mut wrong = m.clone();
        wrong.header.sensors.pop();
        assert!(matches!(
            ModelFile::from_bytes(&wrong.to_bytes().unwrap()),
            Err(ModelFileError::Inconsistent(_))
        ));
        let mut lstm_weights = m.clone();
        lstm_weights.params = sample(Arch::Lstm).params;
        assert!(lstm_weights.validate().is_err());
        assert!(matches!(
            ModelFile::load(Path::new("/nonexistent/model.gfm")),
            Err(ModelFileError::Io { .. })
        ));
        use proptest::prelude::*;
        proptest!(ProptestConfig::with_cases(200), |(noise in proptest::collection::vec(any::<u8>(), 0..64), at in 0usize..4000)| {
            let mut b = bytes.clone();
            let at = at.min(b.len());
            b.splice(at..(at + noise.len()).min(b.len()), noise);
            let _ = ModelFile::from_bytes(&b);
        });
    }
}
