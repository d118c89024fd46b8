//! Helpers shared by the `fedctl` CLI tests: run the binary, check it succeeded.

#![allow(dead_code, clippy::unwrap_used)]

use std::process::{Command, Output};

/// Runs `fedctl` with `args`.
pub fn fedctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fedctl"))
        .args(args)
        .output()
        .unwrap()
}

/// The standard output of a run that must have succeeded (else its output is shown).
pub fn ok(out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "fedctl failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
