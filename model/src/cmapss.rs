//! Reader for the NASA C-MAPSS turbofan files (`train_FD00x.txt`, `test_FD00x.txt`,
//! `RUL_FD00x.txt`).
//!
//! A data file is whitespace-separated text, one row per engine per operating cycle,
//! 26 columns: unit number, cycle, three operational settings, sensors 1–21. Rows
//! are grouped into one [`Trajectory`] per unit (machine id = unit number), ordered
//! by cycle, keeping the chosen sensors (standard FD001 choice:
//! [`INFORMATIVE_SENSORS`]). In a training file every trajectory ends at failure; in
//! a test file it stops earlier and the matching `RUL_FD00x.txt` line gives the true
//! RUL of its last cycle (see [`crate::data::last_windows`]).
//!
//! Parsing is bounded ([`MAX_FILE_BYTES`], [`MAX_ROWS`]) and reports the offending
//! line instead of panicking: these files come from operators.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use crate::data::Trajectory;

/// Columns per row: unit, cycle, 3 settings, 21 sensors.
pub const COLUMNS: usize = 26;
/// Number of sensors (numbered 1 to 21).
pub const SENSORS: usize = 21;
/// The 14 sensors that carry degradation information in FD001.
pub const INFORMATIVE_SENSORS: [usize; 14] = [2, 3, 4, 7, 8, 9, 11, 12, 13, 14, 15, 17, 20, 21];
/// Largest file [`load_trajectories`] and [`load_rul`] read.
pub const MAX_FILE_BYTES: u64 = 256 << 20;
/// Most rows accepted in one file.
pub const MAX_ROWS: usize = 2_000_000;

/// Errors from reading C-MAPSS files.
#[derive(Debug, thiserror::Error)]
pub enum CmapssError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_FILE_BYTES`] or has more than [`MAX_ROWS`] rows.
    #[error("C-MAPSS input too large: {0}")]
    TooLarge(String),
    /// A line is malformed.
    #[error("line {line}: {reason}")]
    Parse {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A line of a named file is malformed (what [`load_trajectories`] and
    /// [`load_rul`] report: the file, the 1-based line, what is wrong).
    #[error("{path}:{line}: {reason}")]
    FileParse {
        /// The file.
        path: String,
        /// 1-based line number (0 when the problem spans lines, e.g. a repeated cycle).
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A requested sensor number is not in `1..=21`.
    #[error("sensor {0} does not exist (sensors are numbered 1 to 21)")]
    BadSensor(usize),
}

fn parse_err(line: usize, reason: impl Into<String>) -> CmapssError {
    CmapssError::Parse {
        line,
        reason: reason.into(),
    }
}

/// Parses a whole-number field written as an integer or as a float with no fraction.
fn parse_index(field: &str, line: usize, what: &str) -> Result<u32, CmapssError> {
    if let Ok(v) = field.parse::<u32>() {
        return Ok(v);
    }
    match field.parse::<f64>() {
        Ok(v) if v.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&v) => Ok(v as u32),
        _ => Err(parse_err(
            line,
            format!("{what} {field:?} is not a whole number"),
        )),
    }
}

/// Parses a data file's text into one trajectory per unit, sorted by unit number,
/// keeping `sensors` (numbers in `1..=21`, in the given order) as features.
///
/// Blank lines are skipped. Errors: a row without 26 numeric columns, a non-finite
/// value, a repeated (unit, cycle) pair, too many rows.
pub fn parse_trajectories(text: &str, sensors: &[usize]) -> Result<Vec<Trajectory>, CmapssError> {
    if let Some(&bad) = sensors.iter().find(|&&s| s == 0 || s > SENSORS) {
        return Err(CmapssError::BadSensor(bad));
    }
    let mut units: BTreeMap<u32, Vec<(u32, Vec<f32>)>> = BTreeMap::new();
    let mut rows = 0usize;
    let mut fields = Vec::with_capacity(COLUMNS);
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        fields.clear();
        fields.extend(raw.split_whitespace());
        if fields.is_empty() {
            continue;
        }
        if fields.len() != COLUMNS {
            return Err(parse_err(
                line,
                format!("expected {COLUMNS} columns, found {}", fields.len()),
            ));
        }
        rows += 1;
        if rows > MAX_ROWS {
            return Err(CmapssError::TooLarge(format!("more than {MAX_ROWS} rows")));
        }
        let unit = parse_index(fields[0], line, "unit")?;
        let cycle = parse_index(fields[1], line, "cycle")?;
        let mut row = Vec::with_capacity(sensors.len());
        for &s in sensors {
            let field = fields[4 + s];
            let v: f32 = field.parse().map_err(|_| {
                parse_err(line, format!("sensor {s} value {field:?} is not a number"))
            })?;
            if !v.is_finite() {
                return Err(parse_err(
                    line,
                    format!("sensor {s} value {field:?} is not finite"),
                ));
            }
            row.push(v);
        }
        units.entry(unit).or_default().push((cycle, row));
    }
    let mut out = Vec::with_capacity(units.len());
    for (unit, mut cycles) in units {
        cycles.sort_by_key(|(c, _)| *c);
        if let Some(w) = cycles.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(parse_err(
                0,
                format!("unit {unit} has cycle {} twice", w[0].0),
            ));
        }
        out.push(Trajectory {
            machine: unit,
            rows: cycles.into_iter().map(|(_, r)| r).collect(),
        });
    }
    Ok(out)
}

/// Parses an `RUL_FD00x.txt` file: one true RUL per line, in unit order.
pub fn parse_rul(text: &str) -> Result<Vec<f32>, CmapssError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let field = raw.trim();
        if field.is_empty() {
            continue;
        }
        if out.len() >= MAX_ROWS {
            return Err(CmapssError::TooLarge(format!("more than {MAX_ROWS} rows")));
        }
        let v: f32 = field
            .parse()
            .map_err(|_| parse_err(i + 1, format!("RUL {field:?} is not a number")))?;
        if !(v.is_finite() && v >= 0.0) {
            return Err(parse_err(
                i + 1,
                format!("RUL {field:?} must be finite and >= 0"),
            ));
        }
        out.push(v);
    }
    Ok(out)
}

fn read_bounded(path: &Path) -> Result<String, CmapssError> {
    let io_err = |source| CmapssError::Io {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io_err)?;
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(io_err)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(CmapssError::TooLarge(format!(
            "{} is larger than {MAX_FILE_BYTES} bytes",
            path.display()
        )));
    }
    Ok(text)
}

/// Names the file in a parse error.
fn in_file(path: &Path) -> impl Fn(CmapssError) -> CmapssError + '_ {
    move |e| match e {
        CmapssError::Parse { line, reason } => CmapssError::FileParse {
            path: path.display().to_string(),
            line,
            reason,
        },
        other => other,
    }
}

/// Reads and parses a data file (see [`parse_trajectories`]); parse errors name the
/// file and line ([`CmapssError::FileParse`]).
pub fn load_trajectories(path: &Path, sensors: &[usize]) -> Result<Vec<Trajectory>, CmapssError> {
    parse_trajectories(&read_bounded(path)?, sensors).map_err(in_file(path))
}

/// Reads and parses an RUL file (see [`parse_rul`]); parse errors name the file and line.
pub fn load_rul(path: &Path) -> Result<Vec<f32>, CmapssError> {
    parse_rul(&read_bounded(path)?).map_err(in_file(path))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::data::{WindowConfig, count_windows};

    fn row(unit: u32, cycle: u32, base: f32) -> String {
        let mut s = format!("{unit} {cycle} -0.0007 -0.0004 100.0");
        for k in 1..=21 {
            s.push_str(&format!(" {}", base + k as f32));
        }
        s.push_str("  ");
        s
    }

    #[test]
    fn groups_rows_by_unit_and_cycle() {
        // Unit 2 before unit 1 and cycles out of order: both get sorted.
        let text = [
            row(2, 1, 0.0),
            row(1, 2, 200.0),
            String::new(),
            row(1, 1, 100.0),
            row(2, 2, 10.0),
            row(2, 3, 20.0),
        ]
        .join("\n");
        let trajs = parse_trajectories(&text, &[2, 21]).unwrap();
        assert_eq!(trajs.len(), 2);
        assert_eq!(trajs[0].machine, 1);
        assert_eq!(trajs[0].rows, vec![vec![102.0, 121.0], vec![202.0, 221.0]]);
        assert_eq!(trajs[1].machine, 2);
        assert_eq!(trajs[1].len(), 3);
        assert_eq!(trajs[1].rows[2], vec![22.0, 41.0]);
        let all = parse_trajectories(&text, &INFORMATIVE_SENSORS).unwrap();
        assert_eq!(all[0].rows[0].len(), 14);
    }

    #[test]
    fn malformed_input_is_reported_with_its_line() {
        let good = row(1, 1, 0.0);
        let short = "1 2 0.1 0.2";
        match parse_trajectories(&format!("{good}\n{short}"), &INFORMATIVE_SENSORS) {
            Err(CmapssError::Parse { line: 2, .. }) => {}
            other => panic!("{other:?}"),
        }
        let with_field = |index: usize, value: &str| {
            let mut fields: Vec<String> = row(1, 2, 0.0)
                .split_whitespace()
                .map(String::from)
                .collect();
            fields[index] = value.to_owned();
            format!("{good}\n{}", fields.join(" "))
        };
        // Sensor 2 is column 6.
        for bad in ["NaN", "inf", "x"] {
            assert!(matches!(
                parse_trajectories(&with_field(6, bad), &[2]),
                Err(CmapssError::Parse { line: 2, .. })
            ));
            // An unselected sensor is not parsed.
            assert!(parse_trajectories(&with_field(6, bad), &[3]).is_ok());
        }
        let dup = format!("{}\n{}", row(1, 1, 0.0), row(1, 1, 5.0));
        assert!(matches!(
            parse_trajectories(&dup, &[2]),
            Err(CmapssError::Parse { .. })
        ));
        let bad_unit = row(1, 1, 0.0).replacen("1 1", "1.5 1", 1);
        assert!(matches!(
            parse_trajectories(&bad_unit, &[2]),
            Err(CmapssError::Parse { .. })
        ));
        assert!(matches!(
            parse_trajectories(&good, &[0]),
            Err(CmapssError::BadSensor(0))
        ));
        assert!(matches!(
            parse_trajectories(&good, &[22]),
            Err(CmapssError::BadSensor(22))
        ));
        assert!(parse_trajectories("", &[2]).unwrap().is_empty());
    }

    #[test]
    fn file_errors_name_the_file_and_line() {
        let dir = std::env::temp_dir().join(format!("gf-cmapss-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad_train.txt");
        let text = format!("{}\n{}\n1 3 0.1 x\n", row(1, 1, 0.0), row(1, 2, 0.0));
        std::fs::write(&path, text).unwrap();
        let err = load_trajectories(&path, &INFORMATIVE_SENSORS).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with(&format!("{}:3: ", path.display())), "{msg}");
        assert!(msg.contains("expected 26 columns, found 4"), "{msg}");
        let rul = dir.join("RUL_bad.txt");
        std::fs::write(&rul, "12\n\nabc\n").unwrap();
        let msg = load_rul(&rul).unwrap_err().to_string();
        assert!(msg.starts_with(&format!("{}:3: ", rul.display())), "{msg}");
        let missing = dir.join("missing.txt");
        let msg = load_trajectories(&missing, &[2]).unwrap_err().to_string();
        assert!(msg.contains("missing.txt"), "{msg}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rul_file() {
        assert_eq!(
            parse_rul("112\n98 \n\n69\n").unwrap(),
            vec![112.0, 98.0, 69.0]
        );
        assert!(matches!(
            parse_rul("5\n-1\n"),
            Err(CmapssError::Parse { line: 2, .. })
        ));
        assert!(matches!(
            parse_rul("abc"),
            Err(CmapssError::Parse { line: 1, .. })
        ));
    }

    #[test]
    fn arbitrary_text_never_panics() {
        use proptest::prelude::*;
        proptest!(|(text in "[0-9 .eE+\\-\nNa]{0,400}")| {
            let _ = parse_trajectories(&text, &INFORMATIVE_SENSORS);
            let _ = parse_rul(&text);
        });
    }

    /// A real FD001 file from `GOSSIPFED_CMAPSS_DIR` or the shared data directory
    /// (`../shared/data/cmapss` from the workspace root); a missing file fails the test.
    fn fd001(name: &str) -> Option<std::path::PathBuf> {
        let dir = std::env::var_os("GOSSIPFED_CMAPSS_DIR").map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/cmapss"),
            std::path::PathBuf::from,
        );
        let path = dir.join(name);
        assert!(
            path.exists(),
            "C-MAPSS file {} not found: put the NASA FD001 files in ../shared/data/cmapss \
             (relative to the workspace root) or set GOSSIPFED_CMAPSS_DIR",
            path.display()
        );
        Some(path)
    }

    #[test]
    fn fd001_matches_the_published_protocol() {
        let Some(train) = fd001("train_FD001.txt") else {
            return;
        };
        let trajs = load_trajectories(&train, &INFORMATIVE_SENSORS).unwrap();
        assert_eq!(trajs.len(), 100);
        assert_eq!(trajs.iter().map(Trajectory::len).sum::<usize>(), 20_631);
        let lives: Vec<usize> = trajs.iter().map(Trajectory::len).collect();
        assert_eq!(lives.iter().min(), Some(&128));
        assert_eq!(lives.iter().max(), Some(&362));
        assert!(
            trajs
                .iter()
                .enumerate()
                .all(|(i, t)| t.machine == i as u32 + 1)
        );
        // The standard protocol's 17,731 training windows of 30 cycles.
        assert_eq!(count_windows(&trajs, &WindowConfig::default()), 17_731);
        if let Some(test) = fd001("test_FD001.txt") {
            let trajs = load_trajectories(&test, &INFORMATIVE_SENSORS).unwrap();
            assert_eq!(trajs.len(), 100);
            assert_eq!(trajs.iter().map(Trajectory::len).sum::<usize>(), 13_096);
        }
    }
}
