//! Reports of a run: a CSV of per-round data, a CSV of coordinator changes, and a PNG with
//! the global loss per round, the participants per round and the failover events over
//! virtual time.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::plot::{Canvas, Rgb};
use crate::sim::Outcome;

/// Why a report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// PNG encoding failed.
    #[error("cannot encode {path}: {source}")]
    Png {
        /// The file.
        path: String,
        /// The cause.
        source: png::EncodingError,
    },
}

/// The per-round CSV: one line per committed version (version 0 is the genesis model).
pub fn rounds_csv(o: &Outcome) -> String {
    let mut s =
        String::from("version,round,term,time_s,selected,included,global_loss,train_loss\n");
    for r in &o.rounds {
        let _ = writeln!(
            s,
            "{},{},{},{:.3},{},{},{:.6},{:.6}",
            r.version,
            r.round,
            r.term,
            r.time_ms as f64 / 1e3,
            r.selected,
            r.included,
            r.global_loss,
            r.train_loss
        );
    }
    s
}

/// The failover CSV: one line per term granted after the first.
pub fn failovers_csv(o: &Outcome) -> String {
    let mut s = String::from("time_s,term,after_crash_ms\n");
    for f in &o.failovers {
        let after = f.after_crash_ms.map(|v| v.to_string()).unwrap_or_default();
        let _ = writeln!(s, "{:.3},{},{}", f.time_ms as f64 / 1e3, f.term, after);
    }
    s
}

const BLACK: Rgb = [0, 0, 0];
const GREY: Rgb = [200, 200, 200];
const BLUE: Rgb = [31, 119, 180];
const ORANGE: Rgb = [255, 127, 14];
const RED: Rgb = [214, 39, 40];
const GREEN: Rgb = [44, 160, 44];

struct Panel {
    x0: i64,
    y0: i64,
    x1: i64,
    y1: i64,
    t_max: f64,
}

impl Panel {
    fn x(&self, t_s: f64) -> i64 {
        self.x0 + ((t_s / self.t_max.max(1e-9)) * (self.x1 - self.x0) as f64).round() as i64
    }
    fn y(&self, frac: f64) -> i64 {
        self.y1 - (frac.clamp(0.0, 1.0) * (self.y1 - self.y0) as f64).round() as i64
    }
    fn frame(&self, c: &mut Canvas, title: &str, lo: &str, hi: &str) {
        c.line((self.x0, self.y0), (self.x0, self.y1), BLACK, 1);
        c.line((self.x0, self.y1), (self.x1, self.y1), BLACK, 1);
        c.line((self.x0, self.y0), (self.x1, self.y0), GREY, 1);
        c.line((self.x1, self.y0), (self.x1, self.y1), GREY, 1);
        c.text(self.x0, self.y0 - 16, title, BLACK, 2);
        c.text(self.x0 - 8 - 8 * hi.len() as i64, self.y0, hi, BLACK, 2);
        c.text(
            self.x0 - 8 - 8 * lo.len() as i64,
            self.y1 - 10,
            lo,
            BLACK,
            2,
        );
    }
    fn failovers(&self, c: &mut Canvas, o: &Outcome) {
        for f in &o.failovers {
            let x = self.x(f.time_ms as f64 / 1e3);
            for y in (self.y0..self.y1).step_by(4) {
                c.line((x, y), (x, y + 1), RED, 1);
            }
        }
    }
}

fn fmt_num(v: f64) -> String {
    if v.abs() >= 100.0 || v == 0.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

/// Draws the report figure.
pub fn figure(o: &Outcome) -> Canvas {
    let (w, h) = (1000usize, 780usize);
    let mut c = Canvas::new(w, h);
    let t_max = (o.virtual_ms as f64 / 1e3).max(1.0);
    let head = format!(
        "SIMNET PEERS={} SEED={} ROUNDS={} VIOLATIONS={} FAILOVERS={}",
        o.peers,
        o.seed,
        o.rounds_committed,
        o.safety_violations,
        o.failovers.len()
    );
    c.text(20, 10, &head, BLACK, 2);
    let panel = |i: i64| Panel {
        x0: 110,
        y0: 60 + i * 240,
        x1: w as i64 - 30,
        y1: 60 + i * 240 + 180,
        t_max,
    };

    // 1. Global loss per committed version (log scale when it spans decades).
    let p = panel(0);
    let losses: Vec<(f64, f64)> = o
        .rounds
        .iter()
        .filter(|r| r.global_loss.is_finite())
        .map(|r| (r.time_ms as f64 / 1e3, r.global_loss))
        .collect();
    let lo = losses.iter().map(|l| l.1).fold(f64::INFINITY, f64::min);
    let hi = losses.iter().map(|l| l.1).fold(f64::NEG_INFINITY, f64::max);
    let log = lo > 0.0 && hi / lo > 20.0;
    let scale = |v: f64| {
        if log {
            (v.ln() - lo.ln()) / (hi.ln() - lo.ln()).max(1e-12)
        } else {
            (v - lo) / (hi - lo).max(1e-12)
        }
    };
    let title = if log {
        "GLOBAL LOSS PER ROUND (LOG) - RED: FAILOVER"
    } else {
        "GLOBAL LOSS PER ROUND - RED: FAILOVER"
    };
    p.frame(&mut c, title, &fmt_num(lo), &fmt_num(hi));
    p.failovers(&mut c, o);
    let pts: Vec<(i64, i64)> = losses
        .iter()
        .map(|(t, v)| (p.x(*t), p.y(scale(*v))))
        .collect();
    for pair in pts.windows(2) {
        c.line(pair[0], pair[1], BLUE, 2);
    }
    for &(x, y) in &pts {
        c.rect(x - 2, y - 2, x + 2, y + 2, BLUE);
    }

    // 2. Participants per round: selected (grey) and aggregated (orange).
    let p = panel(1);
    let max_sel = o
        .rounds
        .iter()
        .map(|r| r.selected.max(r.included))
        .max()
        .unwrap_or(1)
        .max(1);
    p.frame(
        &mut c,
        "PARTICIPANTS PER ROUND: SELECTED (GREY) AGGREGATED (ORANGE)",
        "0",
        &max_sel.to_string(),
    );
    p.failovers(&mut c, o);
    for r in o.rounds.iter().skip(1) {
        let x = p.x(r.time_ms as f64 / 1e3);
        c.rect(
            x - 2,
            p.y(r.selected as f64 / max_sel as f64),
            x + 2,
            p.y1,
            GREY,
        );
        c.rect(
            x - 1,
            p.y(r.included as f64 / max_sel as f64),
            x + 1,
            p.y1,
            ORANGE,
        );
    }

    // 3. Term over time; failovers caused by a coordinator crash are marked green.
    let p = panel(2);
    let max_term = o.failovers.iter().map(|f| f.term).max().unwrap_or(1).max(1);
    p.frame(
        &mut c,
        "COORDINATOR TERM - GREEN: FAILOVER AFTER A CRASH",
        "0",
        &max_term.to_string(),
    );
    let mut prev = (p.x(0.0), p.y(0.0));
    let mut steps: Vec<(f64, u64)> = o
        .rounds
        .iter()
        .map(|r| (r.time_ms as f64 / 1e3, r.term))
        .collect();
    steps.extend(o.failovers.iter().map(|f| (f.time_ms as f64 / 1e3, f.term)));
    steps.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (t, term) in steps {
        let next = (p.x(t), p.y(term as f64 / max_term as f64));
        c.line(prev, (next.0, prev.1), BLUE, 2);
        c.line((next.0, prev.1), next, BLUE, 2);
        prev = next;
    }
    for f in &o.failovers {
        let x = p.x(f.time_ms as f64 / 1e3);
        let y = p.y(f.term as f64 / max_term as f64);
        let col = if f.after_crash_ms.is_some() {
            GREEN
        } else {
            RED
        };
        c.rect(x - 3, y - 3, x + 3, y + 3, col);
    }
    let axis = format!("VIRTUAL TIME 0 - {t_max:.0} S");
    c.text(p.x0, p.y1 + 12, &axis, BLACK, 2);
    c
}

/// Writes `rounds.csv`, `failovers.csv` and `report.png` into `dir` (created if needed);
/// returns the paths written.
pub fn write(o: &Outcome, dir: &Path) -> Result<Vec<PathBuf>, ReportError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| ReportError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let rounds = dir.join("rounds.csv");
    std::fs::write(&rounds, rounds_csv(o)).map_err(io(&rounds))?;
    let failovers = dir.join("failovers.csv");
    std::fs::write(&failovers, failovers_csv(o)).map_err(io(&failovers))?;
    let png_path = dir.join("report.png");
    let file = std::fs::File::create(&png_path).map_err(io(&png_path))?;
    figure(o)
        .write_png(std::io::BufWriter::new(file))
        .map_err(|source| ReportError::Png {
            path: png_path.display().to_string(),
            source,
        })?;
    Ok(vec![rounds, failovers, png_path])
}
