//! The Python client as a late joiner (clients/python/bench/join.py), run
//! beside the Rust one: an add-on joins through the Python client, which
//! must not be what limits its join.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use serde::Deserialize;

/// The joiner script, in the repository this tool was built from.
const JOINER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/python/bench/join.py");

/// What the Python joiner measured.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct PythonJoin {
    pub seconds: f64,
    pub cpu_seconds: f64,
}

/// What a Python row shows when there is no interpreter with the client.
pub fn missing() -> String {
    "not run: no Python client (pass --python, or run scripts/test.sh once)".to_owned()
}

/// The Python interpreter that has the client: `--python`, else
/// `$REPLICATION_PYTHON`, else the repository's `.venv` (which
/// scripts/test.sh makes), if it is there.
pub fn interpreter(given: Option<PathBuf>) -> Option<PathBuf> {
    given
        .or_else(|| std::env::var_os("REPLICATION_PYTHON").map(PathBuf::from))
        .or_else(|| {
            let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
            venv.exists().then_some(venv)
        })
}

/// Joins the server on `port` once with the Python client and checks that
/// it received `datablocks` datablocks holding `bytes` bytes of data. Its
/// trust-on-first-use pin goes to `config_dir`, not the user's own.
pub fn join(
    python: &Path,
    port: u16,
    datablocks: usize,
    bytes: usize,
    config_dir: &Path,
) -> anyhow::Result<PythonJoin> {
    let output = Command::new(python)
        .arg(JOINER)
        .args(["--port", &port.to_string()])
        .args(["--datablocks", &datablocks.to_string()])
        .args(["--bytes", &bytes.to_string()])
        .env("REPLICATION_CONFIG_DIR", config_dir)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", python.display()))?;
    if !output.status.success() {
        bail!(
            "the Python joiner failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let line = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(line.trim())
        .with_context(|| format!("the Python joiner printed {:?}", line.trim()))
}
