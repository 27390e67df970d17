//! Build script: the commit the binary was built from, for `--version`
//! (`SWARMTAP_COMMIT`: the short hash of HEAD; `unknown` without git or
//! outside a repository). Uncommitted changes are not marked: watching the
//! index would rebuild the crate at every `git add`.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=SWARMTAP_COMMIT");
    // Rebuild when HEAD moves (a commit, a checkout).
    if let Some(path) = git(&["rev-parse", "--git-path", "HEAD"]) {
        println!("cargo:rerun-if-changed={path}");
    }
    if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
        if let Some(path) = git(&["rev-parse", "--git-path", &r]) {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    let commit = std::env::var("SWARMTAP_COMMIT")
        .ok()
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]));
    println!(
        "cargo:rustc-env=SWARMTAP_COMMIT={}",
        commit.unwrap_or_else(|| "unknown".into())
    );
}
