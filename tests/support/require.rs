//! Tests that need something outside the repository: the shared corpus
//! (`../shared`), tshark, root, network namespaces, the geolocation
//! databases. Every such test asks [`require`]; nothing else decides to
//! skip.
//!
//! - With `SWARMTAP_REQUIRE_ALL=1` (set by `.ci/run`) a missing prerequisite
//!   fails the test, with the reason: CI never passes by checking nothing.
//! - Otherwise the test skips, and the skip is not hidden in a passing
//!   test's output: one line per skip is appended to
//!   `target/test-skips/<binary>--<test>.txt` (or `$SWARMTAP_SKIP_DIR`),
//!   and `tests/run-all.sh` prints the counted list at the end.
//!
//! One file, included with `#[path]` by the library's unit tests and by the
//! integration tests, so both follow the same rule.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

/// The switch that turns every skip into a failure.
pub const SWITCH: &str = "SWARMTAP_REQUIRE_ALL";

/// Whether skips are failures in this run.
pub fn strict() -> bool {
    std::env::var_os(SWITCH).is_some_and(|v| !v.is_empty() && v != "0")
}

/// `ok`, or: under [`SWITCH`] a panic naming `what` and `reason`; without
/// it, a recorded skip and `false`.
#[track_caller]
pub fn require(ok: bool, what: &str, reason: &str) -> bool {
    if !ok {
        skip(what, reason);
    }
    ok
}

/// A prerequisite is missing: fails under [`SWITCH`], else records the skip.
#[track_caller]
pub fn skip(what: &str, reason: &str) {
    let test = std::thread::current().name().unwrap_or("unnamed").to_string();
    if strict() {
        panic!("{test}: needs {what}: {reason} ({SWITCH} is set, so this is a failure, not a skip)");
    }
    let caller = std::panic::Location::caller();
    let line = format!("{test}: {what}: {reason} [{}:{}]", caller.file(), caller.line());
    eprintln!("SKIPPED {line}");
    if let Some(dir) = skip_dir() {
        let bin = std::env::current_exe()
            .ok()
            .and_then(|e| e.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .map(|s| s.rsplit_once('-').map_or(s.clone(), |(a, _)| a.to_string()))
            .unwrap_or_else(|| "tests".into());
        let file: String = format!("{bin}--{test}")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let _ = std::fs::create_dir_all(&dir);
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{file}.txt")))
        {
            let _ = writeln!(f, "{bin} {line}");
        }
    }
}

/// Where skips are recorded: `$SWARMTAP_SKIP_DIR`, else `test-skips/` in
/// the target directory the test binary runs from (`target/debug/deps/x`).
fn skip_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("SWARMTAP_SKIP_DIR") {
        return Some(PathBuf::from(d));
    }
    let exe = std::env::current_exe().ok()?;
    let target = exe.parent()?.parent()?.parent()?;
    Some(target.join("test-skips"))
}

/// The shared material (`DESIGN.md`, `corpus/`): `$SWARMTAP_SHARED`, else
/// `shared/` beside the repository (`../shared` from its root, the first
/// ancestor of `manifest_dir` holding `Cargo.lock`; `manifest_dir` is the
/// including crate's `CARGO_MANIFEST_DIR`, the root or a crate under it).
/// No skip is recorded here; see [`corpus`].
pub fn shared_dir(manifest_dir: &str) -> Option<PathBuf> {
    let d = match std::env::var_os("SWARMTAP_SHARED") {
        Some(d) => PathBuf::from(d),
        None => {
            let m = Path::new(manifest_dir);
            let root = m.ancestors().find(|a| a.join("Cargo.lock").is_file()).unwrap_or(m);
            root.parent()?.join("shared")
        }
    };
    d.join("corpus/public").is_dir().then_some(d)
}

/// `../shared/corpus/public`, or the skip rule when it is absent.
#[track_caller]
pub fn corpus(manifest_dir: &str) -> Option<PathBuf> {
    let d = shared_dir(manifest_dir).map(|d| d.join("corpus/public"));
    if d.is_none() {
        skip(
            "../shared/corpus/public",
            "the shared corpus is absent (put it beside the repository or set SWARMTAP_SHARED)",
        );
    }
    d
}

/// The bytes of one corpus file (`rel` under `corpus/public`), or the skip
/// rule. A corpus that is present but lacks the file is a failure: the
/// corpus is read-only and its MANIFEST lists every file.
#[track_caller]
pub fn corpus_file(manifest_dir: &str, rel: &str) -> Option<Vec<u8>> {
    let p = corpus(manifest_dir)?.join(rel);
    Some(std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
}

/// Whether `cmd args` runs and exits 0 (a tool is installed).
pub fn tool_runs(cmd: &str, args: &[&str]) -> bool {
    std::process::Command::new(cmd)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// tshark is installed, or the skip rule.
#[track_caller]
pub fn tshark() -> bool {
    require(
        tool_runs("tshark", &["--version"]),
        "tshark",
        "the independent decoder is not installed (tests/setup.sh installs it)",
    )
}

/// Running as root (network namespaces, veth pairs), or the skip rule.
#[track_caller]
pub fn root(why: &str) -> bool {
    let uid = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    require(uid == "0", "root", why)
}
