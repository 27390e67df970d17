//! Output folders that are never lost. `analyze` (and `probe`) write into a
//! new folder beside the target and swap it in only when the run succeeded
//! ([`Staging`]); a folder holding anything but a swarmtap dataset of the
//! same layout is refused unless `--force` ([`check_target`]); `live`
//! removes the dot-files a killed run left ([`remove_stale_parts`]).

use std::io;
use std::path::{Path, PathBuf};

use super::tables::TABLE_NAMES;

/// Where a live run writes each file until it is whole (`DIR/.swarmtap-tmp`,
/// renamed into its partition then): outside every table folder.
pub const LIVE_TMP_DIR: &str = ".swarmtap-tmp";

/// The two dataset layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `DIR/<table>.parquet` (analyze, probe).
    Single,
    /// `DIR/<table>/date=…/hour=…/part-….parquet` (live).
    Hive,
}

impl Layout {
    fn name(self) -> &'static str {
        match self {
            Layout::Single => "an analyze dataset (DIR/<table>.parquet)",
            Layout::Hive => "a live dataset (DIR/<table>/date=…/hour=…/)",
        }
    }
}

/// Tables of earlier versions too: a dataset they wrote is still ours.
fn is_table(name: &str) -> bool {
    TABLE_NAMES.contains(&name)
}

/// What `dir` holds: `Ok(None)` when missing or empty, else its layout, or
/// the first entry that belongs to no swarmtap dataset.
fn classify(dir: &Path) -> io::Result<Result<Option<Layout>, String>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Ok(None)),
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => {
            return Ok(Err(format!("{} is not a directory", dir.display())))
        }
        Err(e) => return Err(e),
    };
    let (mut single, mut hive) = (false, false);
    for e in rd {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let is_dir = e.file_type()?.is_dir();
        if (name.starts_with('.') && !is_dir && name.ends_with(".tmp")) || (is_dir && name == LIVE_TMP_DIR) {
            // Temporary files of a swarmtap run.
            continue;
        }
        match name.strip_suffix(".parquet") {
            Some(t) if !is_dir && is_table(t) => single = true,
            _ if is_dir && is_table(&name) => hive = true,
            _ => {
                return Ok(Err(format!(
                    "it holds {name:?}, which is not part of a swarmtap dataset"
                )))
            }
        }
    }
    Ok(Ok(match (single, hive) {
        (false, false) => None,
        (true, false) => Some(Layout::Single),
        (false, true) => Some(Layout::Hive),
        (true, true) => return Ok(Err("it mixes the analyze and live layouts".into())),
    }))
}

/// Refuses a target that holds anything but a dataset of `want`'s layout
/// (or nothing), unless `force`.
pub fn check_target(dir: &Path, want: Layout, force: bool) -> io::Result<()> {
    let refuse = |why: String| {
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "refusing to write into {}: {why}; expected {} (use --force to replace it)",
                dir.display(),
                want.name()
            ),
        ))
    };
    if dir.file_name().is_none() {
        return refuse("it names no folder of its own".into());
    }
    match classify(dir)? {
        Ok(None) => Ok(()),
        Ok(Some(l)) if l == want => Ok(()),
        _ if force && dir.is_dir() => Ok(()),
        Ok(Some(l)) => refuse(format!("it holds {}", l.name())),
        Err(why) => refuse(why),
    }
}

/// Removes `.part-*.parquet.tmp` files (and other dot-files ending in
/// `.tmp`) under a live dataset: the interval a killed run was writing.
/// A hive reader scanning `DIR/<table>/` would otherwise trip over them.
pub fn remove_stale_parts(dir: &Path) -> io::Result<u64> {
    fn walk(p: &Path, depth: u32, n: &mut u64) -> io::Result<()> {
        for e in std::fs::read_dir(p)? {
            let e = e?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            let ft = e.file_type()?;
            if ft.is_dir() && depth < 3 {
                walk(&e.path(), depth + 1, n)?;
            } else if ft.is_file() && name.starts_with('.') && name.ends_with(".tmp") {
                std::fs::remove_file(e.path())?;
                *n += 1;
            }
        }
        Ok(())
    }
    let mut n = 0;
    walk(dir, 0, &mut n)?;
    Ok(n)
}

/// A new folder beside the target (`.NAME.swarmtap-new-PID`), swapped in
/// by [`Staging::commit`] and removed when dropped uncommitted.
pub struct Staging {
    target: PathBuf,
    path: PathBuf,
    committed: bool,
}

fn sibling(target: &Path, tag: &str) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    parent.join(format!(".{name}.swarmtap-{tag}-{}", std::process::id()))
}

/// Removes the staging folders of runs that were killed (their process is
/// gone), so they do not pile up beside the target.
fn remove_dead_stagings(target: &Path) {
    let Some(name) = target.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return;
    };
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let Ok(rd) = std::fs::read_dir(&parent) else { return };
    let prefix = format!(".{name}.swarmtap-");
    for e in rd.flatten() {
        let f = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = f.strip_prefix(&prefix) else { continue };
        let pid = rest.rsplit('-').next().and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

impl Staging {
    pub fn new(target: &Path) -> io::Result<Staging> {
        remove_dead_stagings(target);
        let path = sibling(target, "new");
        if path.exists() {
            std::fs::remove_dir_all(&path)?;
        }
        std::fs::create_dir_all(&path)?;
        Ok(Staging {
            target: target.to_path_buf(),
            path,
            committed: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Swaps the staging folder in for the target. The prior dataset is
    /// renamed aside first and removed only once the new one is in place;
    /// if the second rename fails, it is put back.
    pub fn commit(mut self) -> io::Result<()> {
        sync_files(&self.path)?;
        if self.target.exists() {
            let old = sibling(&self.target, "old");
            if old.exists() {
                std::fs::remove_dir_all(&old)?;
            }
            std::fs::rename(&self.target, &old)?;
            if let Err(e) = std::fs::rename(&self.path, &self.target) {
                let _ = std::fs::rename(&old, &self.target);
                return Err(e);
            }
            self.committed = true;
            std::fs::remove_dir_all(&old)?;
        } else {
            std::fs::rename(&self.path, &self.target)?;
            self.committed = true;
        }
        if let Some(p) = self.target.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(p)?;
        }
        Ok(())
    }
}

/// Puts every file of `dir`, and `dir`'s own entries, on disk before the
/// folder is swapped in: a power loss must not leave the new name on
/// empty files. One thread per file: 20 fsyncs one after the other cost
/// ~120 ms here, at once ~30 ms. The folder is synced beside its files,
/// not after them: its entries are final (every file is written and
/// renamed), and both only have to be on disk before the swap; after
/// them it was one more wait for the journal, 0.3-12 ms under load.
fn sync_files(dir: &Path) -> io::Result<()> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.push(dir.to_path_buf());
    std::thread::scope(|s| {
        let handles: Vec<_> = files
            .iter()
            .map(|f| s.spawn(move || std::fs::File::open(f).and_then(|f| f.sync_all())))
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join()
                .unwrap_or_else(|_| Err(io::Error::other("sync thread panicked")))
        })
    })
}

fn sync_dir(p: &Path) -> io::Result<()> {
    std::fs::File::open(p)?.sync_all()
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_classified() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("ds");
        // Missing and empty folders are fine for both layouts.
        check_target(&d, Layout::Single, false).unwrap();
        std::fs::create_dir(&d).unwrap();
        check_target(&d, Layout::Hive, false).unwrap();
        std::fs::write(d.join("flows.parquet"), b"x").unwrap();
        std::fs::write(d.join(".peers.parquet.tmp"), b"x").unwrap();
        check_target(&d, Layout::Single, false).unwrap();
        let e = check_target(&d, Layout::Hive, false).unwrap_err().to_string();
        assert!(e.contains("holds an analyze dataset"), "{e}");
        check_target(&d, Layout::Hive, true).unwrap();
        std::fs::write(d.join("notes.txt"), b"x").unwrap();
        let e = check_target(&d, Layout::Single, false).unwrap_err().to_string();
        assert!(e.contains("\"notes.txt\""), "{e}");
        check_target(&d, Layout::Single, true).unwrap();
        // A file is never a target.
        let f = tmp.path().join("file");
        std::fs::write(&f, b"x").unwrap();
        assert!(check_target(&f, Layout::Single, true).is_err());
    }

    #[test]
    fn stale_parts_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("flows/date=2026-01-01/hour=00");
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join(".part-x-000001.parquet.tmp"), b"x").unwrap();
        std::fs::write(p.join("part-x-000000.parquet"), b"x").unwrap();
        let t = tmp.path().join(LIVE_TMP_DIR);
        std::fs::create_dir_all(&t).unwrap();
        std::fs::write(t.join(".flows-part-x-000002.parquet.tmp"), b"x").unwrap();
        check_target(tmp.path(), Layout::Hive, false).unwrap();
        assert_eq!(remove_stale_parts(tmp.path()).unwrap(), 2);
        assert_eq!(std::fs::read_dir(&t).unwrap().count(), 0);
        let left: Vec<_> = std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, ["part-x-000000.parquet"]);
    }

    #[test]
    fn staging_swaps_in_only_on_commit() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("ds");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("flows.parquet"), b"old").unwrap();
        let s = Staging::new(&d).unwrap();
        std::fs::write(s.path().join("flows.parquet"), b"new").unwrap();
        drop(s);
        assert_eq!(std::fs::read(d.join("flows.parquet")).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1, "staging removed");
        let s = Staging::new(&d).unwrap();
        std::fs::write(s.path().join("flows.parquet"), b"new").unwrap();
        s.commit().unwrap();
        assert_eq!(std::fs::read(d.join("flows.parquet")).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1, "old copy removed");
    }
}
