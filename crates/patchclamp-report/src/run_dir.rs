//! A run folder: the one place a command's files are written, locked while it writes and
//! closed by a manifest, so a reader can tell a complete set of outputs from an interrupted one.
//!
//! The life of a folder:
//! 1. [`RunDir::create`] takes an exclusive lock (`.patchclamp.lock`; the OS releases it if
//!    the process dies), then looks at what is there. An empty or missing folder is used as
//!    it is. A folder holding an earlier run of the same command (its `manifest.json`) has that
//!    run's files removed first, so the new set never mixes with the old one. A folder holding
//!    files patchclamp did not write, or another command's complete run, is refused unless
//!    `force` (then patchclamp's own earlier files are still removed, the others kept).
//! 2. Every file goes through [`RunDir::write`] (atomic: temp file and rename) or is registered
//!    with [`RunDir::file`] when another writer (the trainer's checkpoint) fills it. The manifest
//!    on disk lists them as they come, with `complete: false`.
//! 3. [`RunDir::finish`] writes the manifest with `complete: true`, last.
//!
//! [`RunDir::resume`] reopens a folder to continue the run in it (`train --resume`).

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};

use patchclamp_core::fsutil::write_atomic;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The lock file's name.
pub const LOCK: &str = ".patchclamp.lock";
/// The manifest's name.
pub const MANIFEST: &str = "manifest.json";

/// What a run folder holds and how it came to be; written as `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// The command that wrote the folder (`patch`, `lab induction`, …).
    pub command: String,
    /// The patchclamp version that wrote it.
    pub version: String,
    /// The source revision the binary was built from, when known.
    pub git_revision: String,
    /// A hash of the full resolved experiment, for runs made from one.
    #[serde(default)]
    pub experiment_hash: Option<String>,
    /// Every file of the run, relative to the folder.
    pub files: Vec<String>,
    /// True once every file is written; false while writing or after an interruption.
    pub complete: bool,
}

/// An exclusive, manifest-closed output folder.
pub struct RunDir {
    root: PathBuf,
    manifest: Manifest,
    /// Whether the manifest on disk is this run's (a resumed folder keeps the old one
    /// until the first file is written).
    saved: bool,
    // Held for the folder's lifetime: the OS lock is released when this closes.
    _lock: File,
}

impl RunDir {
    /// Opens `root` for a fresh run of `command` (see the module doc for what is refused).
    pub fn create(root: &Path, command: &str, force: bool) -> Result<RunDir> {
        // Looked at before the lock file is made, so a refused folder is left untouched; and
        // again under the lock, in case another process wrote it in between.
        if root.is_dir() {
            check_ours(root, command, force)?;
        }
        let lock = take_lock(root)?;
        let old = check_ours(root, command, force)?;
        if let Some(m) = &old {
            for f in &m.files {
                remove_quietly(&root.join(f));
            }
            remove_empty_dirs(root, &m.files);
        }
        remove_temporaries(root);
        let mut dir = RunDir {
            root: root.to_path_buf(),
            manifest: Manifest {
                command: command.to_string(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                git_revision: crate::revision::git_revision(),
                experiment_hash: None,
                files: vec![],
                complete: false,
            },
            saved: false,
            _lock: lock,
        };
        dir.save_manifest()?;
        Ok(dir)
    }

    /// Reopens `root` to continue the run recorded in its manifest.
    pub fn resume(root: &Path, command: &str) -> Result<RunDir> {
        // Checked before anything is created, so a mistaken --resume leaves no folder behind.
        if !root.join(MANIFEST).is_file() {
            return Err(Error::NothingToResume {
                path: root.to_path_buf(),
            });
        }
        let lock = take_lock(root)?;
        let Some(mut manifest) = read_manifest(root) else {
            return Err(Error::NothingToResume {
                path: root.to_path_buf(),
            });
        };
        remove_temporaries(root);
        manifest.command = command.to_string();
        manifest.complete = false;
        manifest.git_revision = crate::revision::git_revision();
        // Nothing is written until the run writes its first file, so a resume that fails
        // before then leaves the folder as it was.
        Ok(RunDir {
            root: root.to_path_buf(),
            manifest,
            saved: false,
            _lock: lock,
        })
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The manifest as it stands.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Records the hash of the experiment the run was made from.
    pub fn set_experiment_hash(&mut self, hash: String) -> Result<()> {
        self.manifest.experiment_hash = Some(hash);
        self.save_manifest()
    }

    /// Registers `rel` as a file of this run that another writer fills; returns its path.
    pub fn file(&mut self, rel: &str) -> Result<PathBuf> {
        if !self.manifest.files.iter().any(|f| f == rel) {
            self.manifest.files.push(rel.to_string());
            self.save_manifest()?;
        } else if !self.saved {
            self.save_manifest()?;
        }
        Ok(self.root.join(rel))
    }

    /// Writes `bytes` to `rel` (atomically) as a file of this run; returns its path.
    pub fn write(&mut self, rel: &str, bytes: &[u8]) -> Result<PathBuf> {
        let path = self.file(rel)?;
        write_atomic(&path, bytes).map_err(|e| write_error(&path, e))?;
        Ok(path)
    }

    /// Closes the run: the manifest says `complete: true`. Written last.
    pub fn finish(mut self) -> Result<Manifest> {
        self.manifest.complete = true;
        self.save_manifest()?;
        Ok(self.manifest.clone())
    }

    fn save_manifest(&mut self) -> Result<()> {
        let path = self.root.join(MANIFEST);
        let text = serde_json::to_string_pretty(&self.manifest)?;
        write_atomic(&path, text.as_bytes()).map_err(|e| write_error(&path, e))?;
        self.saved = true;
        Ok(())
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        // Unlock explicitly rather than by closing: a child process forked by another thread
        // between our open and its exec shares the lock's file description, and closing our
        // descriptor alone would leave the folder locked until that child execs.
        let _ = self._lock.unlock();
    }
}

pub use patchclamp_core::fsutil::content_hash;

/// Fails when `out` lies inside `model_home`, the folder a model was loaded from: patchclamp
/// writes nothing there (a model's folder is another tool's, and its files are not ours).
pub fn outside_model(out: &Path, model_home: &Path) -> Result<()> {
    // The nearest folder that exists decides where the output would land.
    let mut anchor = out.to_path_buf();
    while !anchor.as_os_str().is_empty() && !anchor.exists() {
        anchor = anchor.parent().map(Path::to_path_buf).unwrap_or_default();
    }
    if anchor.as_os_str().is_empty() {
        anchor = PathBuf::from(".");
    }
    if let (Ok(a), Ok(home)) = (anchor.canonicalize(), model_home.canonicalize()) {
        if a.starts_with(&home) {
            return Err(Error::Input(format!(
                "--out {} is inside the model's folder {}; patchclamp never writes there",
                out.display(),
                model_home.display()
            )));
        }
    }
    Ok(())
}

/// Whether [`RunDir::create`] would accept `root` for `command`, touching nothing: a long
/// computation checks its folder first, then creates it once its results exist.
pub fn check(root: &Path, command: &str, force: bool) -> Result<()> {
    if root.exists() && !root.is_dir() {
        return Err(Error::NotAFolder {
            path: root.to_path_buf(),
        });
    }
    if root.is_dir() {
        check_ours(root, command, force)?;
    }
    Ok(())
}

/// Reads `root`'s manifest and refuses the folder if it holds files patchclamp did not write or
/// another command's complete run (unless `force`); returns the earlier run's manifest.
fn check_ours(root: &Path, command: &str, force: bool) -> Result<Option<Manifest>> {
    let old = read_manifest(root);
    let ours: BTreeSet<String> = old
        .as_ref()
        .map(|m| m.files.iter().cloned().collect())
        .unwrap_or_default();
    let foreign = foreign_entries(root, &ours)?;
    if !foreign.is_empty() && !force {
        let mut listed: Vec<String> = foreign.iter().take(4).cloned().collect();
        if foreign.len() > 4 {
            listed.push(format!("and {} more", foreign.len() - 4));
        }
        return Err(Error::NotOurs {
            path: root.to_path_buf(),
            listed: listed.join(", "),
        });
    }
    if let Some(m) = &old {
        if m.complete && m.command != command && !force {
            return Err(Error::OtherRun {
                path: root.to_path_buf(),
                found: m.command.clone(),
            });
        }
    }
    Ok(old)
}

/// A core I/O error as the report floor's write error (the path named once).
/// A failed write of `path` as the report floor's error (every file it writes says which).
pub(crate) fn write_error(path: &Path, e: patchclamp_core::Error) -> Error {
    match e {
        patchclamp_core::Error::Io { source, .. }
        | patchclamp_core::Error::Write { source, .. } => Error::Write {
            path: path.to_path_buf(),
            source,
        },
        other => Error::Core(other),
    }
}

/// Creates `root` and takes its lock without waiting.
fn take_lock(root: &Path) -> Result<File> {
    let werr = |path: &Path, source| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    if root.exists() && !root.is_dir() {
        return Err(Error::NotAFolder {
            path: root.to_path_buf(),
        });
    }
    std::fs::create_dir_all(root).map_err(|e| werr(root, e))?;
    let path = root.join(LOCK);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| werr(&path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Busy {
            path: root.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(werr(&path, e)),
    }
}

/// The folder's manifest, if it holds a readable one.
fn read_manifest(root: &Path) -> Option<Manifest> {
    let text = std::fs::read_to_string(root.join(MANIFEST)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Entries of `root` (recursively, as relative paths) that are neither a file of the earlier
/// run nor patchclamp's own bookkeeping.
fn foreign_entries(root: &Path, ours: &BTreeSet<String>) -> Result<Vec<String>> {
    let mut out = vec![];
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let entries = std::fs::read_dir(&dir).map_err(|e| Error::Read {
            path: dir.clone(),
            source: e,
        })?;
        let mut names: Vec<_> = entries.filter_map(|e| e.ok()).collect();
        names.sort_by_key(|e| e.file_name());
        for e in names {
            let name = e.file_name().to_string_lossy().into_owned();
            let r = rel.join(&name);
            let key = r.to_string_lossy().replace('\\', "/");
            if rel.as_os_str().is_empty() && (name == LOCK || name == MANIFEST) {
                continue;
            }
            if is_temporary(&name) || ours.contains(&key) {
                continue;
            }
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            // A sub-folder is ours when some file of the earlier run lives in it.
            if is_dir && ours.iter().any(|f| f.starts_with(&format!("{key}/"))) {
                stack.push(r);
            } else {
                out.push(key);
            }
        }
    }
    Ok(out)
}

/// `write_atomic`'s temporary names: `.NAME.tmpPID`.
fn is_temporary(name: &str) -> bool {
    name.starts_with('.')
        && name
            .rsplit_once(".tmp")
            .is_some_and(|(_, pid)| !pid.is_empty() && pid.chars().all(|c| c.is_ascii_digit()))
}

/// Removes temporary files an interrupted writer left in `root` (top level and sub-folders).
fn remove_temporaries(root: &Path) {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().into_owned();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            } else if is_temporary(&name) {
                remove_quietly(&e.path());
            }
        }
    }
}

fn remove_quietly(path: &Path) {
    let _ = std::fs::remove_file(path);
}

/// Removes the sub-folders of the earlier run's files that are now empty.
fn remove_empty_dirs(root: &Path, files: &[String]) {
    let mut dirs: Vec<PathBuf> = files
        .iter()
        .flat_map(|f| Path::new(f).ancestors().skip(1).map(Path::to_path_buf))
        .filter(|d| !d.as_os_str().is_empty())
        .collect();
    dirs.sort();
    dirs.dedup();
    // Deepest first, so a folder is empty by the time it is tried.
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in dirs {
        let _ = std::fs::remove_dir(root.join(d)); // only succeeds when empty
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pc-rundir-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn manifest(root: &Path) -> Manifest {
        read_manifest(root).expect("a manifest")
    }

    #[test]
    fn content_hash_is_fnv1a() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(content_hash(b""), "cbf29ce484222325");
        assert_eq!(content_hash(b"a"), "af63dc4c8601ec8c");
    }

    #[test]
    fn manifest_is_incomplete_until_finish_and_lists_every_file() {
        let d = tmp("finish");
        let mut run = RunDir::create(&d, "patch", false).unwrap();
        run.write("result.json", b"{}").unwrap();
        run.write("sub/log.jsonl", b"").unwrap();
        let m = manifest(&d);
        assert!(!m.complete, "an unfinished run is marked incomplete");
        assert_eq!(m.files, ["result.json", "sub/log.jsonl"]);
        run.finish().unwrap();
        assert!(manifest(&d).complete);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_second_writer_is_refused_while_the_first_holds_the_lock() {
        let d = tmp("lock");
        let first = RunDir::create(&d, "patch", false).unwrap();
        let err = RunDir::create(&d, "patch", false).err().expect("refused");
        assert!(matches!(err, Error::Busy { .. }), "{err}");
        drop(first);
        RunDir::create(&d, "patch", false).expect("free again once the first is done");
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_rerun_replaces_the_whole_earlier_set() {
        let d = tmp("rerun");
        let mut run = RunDir::create(&d, "lens", false).unwrap();
        run.write("lens_0.svg", b"old").unwrap();
        run.write("lens_1.svg", b"old").unwrap();
        run.write("runs/a/log.jsonl", b"old").unwrap();
        run.finish().unwrap();
        let mut run = RunDir::create(&d, "lens", false).unwrap();
        run.write("lens_0.svg", b"new").unwrap();
        run.finish().unwrap();
        assert!(
            !d.join("lens_1.svg").exists(),
            "no file of the old set stays"
        );
        assert!(!d.join("runs").exists(), "its emptied sub-folders go too");
        assert_eq!(std::fs::read(d.join("lens_0.svg")).unwrap(), b"new");
        assert_eq!(manifest(&d).files, ["lens_0.svg"]);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn foreign_files_and_other_commands_runs_are_refused_unless_forced() {
        let d = tmp("foreign");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("model.safetensors"), b"precious").unwrap();
        let err = RunDir::create(&d, "run", false).err().expect("refused");
        assert!(err.to_string().contains("model.safetensors"), "{err}");
        let mut run = RunDir::create(&d, "run", true).unwrap();
        run.write("result.json", b"{}").unwrap();
        run.finish().unwrap();
        assert_eq!(
            std::fs::read(d.join("model.safetensors")).unwrap(),
            b"precious"
        );
        std::fs::remove_file(d.join("model.safetensors")).unwrap();
        let err = RunDir::create(&d, "patch", false).err().expect("refused");
        assert!(matches!(err, Error::OtherRun { .. }), "{err}");
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn an_interrupted_run_is_recognised_and_replaced() {
        let d = tmp("interrupted");
        let mut run = RunDir::create(&d, "train", false).unwrap();
        run.write("log.jsonl", b"partial").unwrap();
        std::fs::write(d.join(".checkpoint.safetensors.tmp4242"), b"half").unwrap();
        drop(run); // as if killed: no finish
        assert!(!manifest(&d).complete);
        let resumed = RunDir::resume(&d, "train").unwrap();
        assert_eq!(
            resumed.manifest().files,
            ["log.jsonl"],
            "resume keeps the files"
        );
        assert!(
            !d.join(".checkpoint.safetensors.tmp4242").exists(),
            "temporaries are removed"
        );
        drop(resumed);
        RunDir::create(&d, "train", false)
            .unwrap()
            .finish()
            .unwrap();
        assert!(
            !d.join("log.jsonl").exists(),
            "a fresh run starts from nothing"
        );
        std::fs::remove_dir_all(d).unwrap();
    }
}
