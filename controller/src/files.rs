//! The manifest-directory source: every `*.yaml`, `*.yml` and `*.json` below a directory,
//! watched for changes.
//!
//! Each file is its own source: a file that parses replaces what it held before (`Reset`), a
//! deleted file removes its objects, and a file that fails to parse or validate is reported with
//! its path, object and line/column or field, while the objects it held stay as they were.
//! Names starting with `.` are skipped, which also skips the `..data` directories of a mounted
//! ConfigMap while following its symlinked files.
//!
//! Change detection: inotify (via `notify`) names the files that changed, and only those are
//! re-read, so a change costs the files it touched, not the directory's size. Directory events
//! (a directory created, renamed or deleted) and a slow periodic fallback walk the whole tree and
//! compare each file's (mtime, size, inode), which catches anything a filesystem does not report.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, SystemTime};

use notify::{RecursiveMode, Watcher};
use tables::{Origin, SourceId};

use crate::parse::load_manifest;
use crate::{Change, Event, Metrics, Sender};

/// How long to wait for more events after the first one before rescanning.
const DEBOUNCE: Duration = Duration::from_millis(15);
/// The fallback rescan period.
const RESCAN: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    ino: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let md = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(&md);
    #[cfg(not(unix))]
    let ino = 0;
    Some(Stamp {
        modified: md.modified().ok(),
        len: md.len(),
        ino,
    })
}

fn is_manifest(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

/// Every manifest file below `dir`, sorted, following symlinks, skipping dot-names.
pub fn list_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    let mut seen_dirs = HashSet::new();
    while let Some(d) = stack.pop() {
        if let Ok(canon) = d.canonicalize() {
            if !seen_dirs.insert(canon) {
                continue; // symlink loop
            }
        }
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let path = entry.path();
            match std::fs::metadata(&path) {
                Ok(md) if md.is_dir() => stack.push(path),
                Ok(md) if md.is_file() && is_manifest(&path) => out.push(path),
                _ => {}
            }
        }
    }
    out.sort();
    out
}

/// Watches `dir` and feeds its objects into `tx` until `tx` closes.
pub struct FileSource {
    dir: PathBuf,
    tx: Sender,
    metrics: Metrics,
    known: BTreeMap<PathBuf, Stamp>,
}

impl FileSource {
    pub fn new(dir: PathBuf, tx: Sender, metrics: Metrics) -> Self {
        FileSource {
            dir,
            tx,
            metrics,
            known: BTreeMap::new(),
        }
    }

    fn source_id(&self, path: &Path) -> SourceId {
        let rel = path.strip_prefix(&self.dir).unwrap_or(path);
        SourceId::new(Origin::Manifests, &rel.display().to_string())
    }

    fn send(&self, change: Change) -> bool {
        self.tx.send(Event::now(change)).is_ok()
    }

    /// Reads one file and reports its objects, or its error. Returns false when the
    /// controller is gone.
    fn load(&self, path: &Path) -> bool {
        let text = match std::fs::read(path) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(t) => t,
                Err(_) => {
                    self.metrics
                        .source_errors
                        .with_label_values(&["manifests", "parse"])
                        .inc();
                    tracing::warn!(path = %path.display(), "manifest rejected: not UTF-8; keeping the objects it held before");
                    return true;
                }
            },
            // Vanished between listing and reading: the next scan sees it gone.
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "manifest unreadable");
                return true;
            }
        };
        match load_manifest(path, &text) {
            Ok(objects) => {
                tracing::debug!(path = %path.display(), objects = objects.len(), "manifest loaded");
                self.send(Change::Reset {
                    source: self.source_id(path),
                    objects,
                    keep: vec![],
                })
            }
            Err(e) => {
                self.metrics
                    .source_errors
                    .with_label_values(&["manifests", e.reason])
                    .inc();
                tracing::warn!("manifest rejected: {e}; keeping the objects it held before");
                true
            }
        }
    }

    /// Whether `path` is a file this source reads: below the directory, no dot-name on the
    /// way, a manifest extension.
    fn is_ours(&self, path: &Path) -> bool {
        let Ok(rel) = path.strip_prefix(&self.dir) else {
            return false;
        };
        is_manifest(path)
            && !rel
                .components()
                .any(|c| c.as_os_str().to_string_lossy().starts_with('.'))
    }

    /// Handles the files an event named, without walking the directory: the cost of a change
    /// is the files it touched. Returns `None` when the event needs a full rescan (a directory
    /// appeared or vanished, or a path we cannot classify).
    fn update_paths(&mut self, paths: &HashSet<PathBuf>) -> Option<bool> {
        let mut work = Vec::new();
        for path in paths {
            match std::fs::metadata(path) {
                Ok(md) if md.is_dir() => return None,
                Ok(md) if md.is_file() => {
                    if self.is_ours(path) {
                        work.push(path.clone());
                    }
                }
                Ok(_) => {}
                Err(_) if self.known.contains_key(path) => work.push(path.clone()),
                // Gone and not a file we held: maybe a directory with files in it.
                Err(_) if self.known.keys().any(|k| k.starts_with(path)) => return None,
                Err(_) => {}
            }
        }
        work.sort();
        for path in work {
            match stamp(&path) {
                Some(st) => {
                    self.known.insert(path.clone(), st);
                    if !self.load(&path) {
                        return Some(false);
                    }
                }
                None => {
                    self.known.remove(&path);
                    tracing::info!(path = %path.display(), "manifest removed");
                    if !self.send(Change::Reset {
                        source: self.source_id(&path),
                        objects: vec![],
                        keep: vec![],
                    }) {
                        return Some(false);
                    }
                }
            }
        }
        Some(true)
    }

    /// Rescans the directory; `forced` paths are re-read even if their stamp is unchanged.
    fn rescan(&mut self, forced: &HashSet<PathBuf>) -> bool {
        let files = list_files(&self.dir);
        let present: HashSet<&PathBuf> = files.iter().collect();
        let gone: Vec<PathBuf> = self
            .known
            .keys()
            .filter(|p| !present.contains(p))
            .cloned()
            .collect();
        for path in gone {
            self.known.remove(&path);
            tracing::info!(path = %path.display(), "manifest removed");
            if !self.send(Change::Reset {
                source: self.source_id(&path),
                objects: vec![],
                keep: vec![],
            }) {
                return false;
            }
        }
        for path in &files {
            let Some(st) = stamp(path) else { continue };
            if self.known.get(path) == Some(&st) && !forced.contains(path) {
                continue;
            }
            self.known.insert(path.clone(), st);
            if !self.load(path) {
                return false;
            }
        }
        true
    }

    /// Runs on the calling thread: initial scan, `Synced`, then watch until the controller
    /// hangs up. Fails only if the directory cannot be watched at all.
    pub fn run(mut self) -> notify::Result<()> {
        let (ev_tx, ev_rx) = std_mpsc::channel::<notify::Result<notify::Event>>();
        let mut watcher = notify::recommended_watcher(move |res| {
            let _ = ev_tx.send(res);
        })?;
        watcher.watch(&self.dir, RecursiveMode::Recursive)?;
        tracing::info!(dir = %self.dir.display(), "watching manifests");

        if !self.rescan(&HashSet::new()) {
            return Ok(());
        }
        if !self.send(Change::Synced {
            part: "manifests".into(),
        }) {
            return Ok(());
        }
        let mut next_rescan = std::time::Instant::now() + RESCAN;
        loop {
            let mut forced = HashSet::new();
            let wait = next_rescan.saturating_duration_since(std::time::Instant::now());
            match ev_rx.recv_timeout(wait) {
                Ok(Ok(ev)) if matches!(ev.kind, notify::EventKind::Access(_)) => continue,
                Ok(first) => {
                    let mut collect = |res: notify::Result<notify::Event>| match res {
                        // Our own reads produce open/close-nowrite (Access) events:
                        // reacting to those would reload every file in a loop.
                        Ok(ev) if matches!(ev.kind, notify::EventKind::Access(_)) => {}
                        Ok(ev) => forced.extend(ev.paths),
                        Err(e) => tracing::warn!(error = %e, "manifest watch error"),
                    };
                    collect(first);
                    let deadline = std::time::Instant::now() + DEBOUNCE;
                    while let Some(left) =
                        deadline.checked_duration_since(std::time::Instant::now())
                    {
                        match ev_rx.recv_timeout(left) {
                            Ok(res) => collect(res),
                            Err(_) => break,
                        }
                    }
                }
                Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                Err(std_mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
            }
            if self.tx.is_closed() {
                return Ok(());
            }
            // Events name their files: handle just those. A full walk (which compares every
            // file's stamp) runs for directory events and as the periodic fallback.
            let ok = match (!forced.is_empty())
                .then(|| self.update_paths(&forced))
                .flatten()
            {
                Some(ok) => ok,
                None => {
                    next_rescan = std::time::Instant::now() + RESCAN;
                    self.rescan(&forced)
                }
            };
            if !ok {
                return Ok(());
            }
        }
    }
}
