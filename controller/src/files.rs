//! The manifest-directory source: every `*.yaml`, `*.yml` and `*.json` below a directory,
//! watched for changes.
//!
//! Each file is its own source: a file that parses replaces what it held before (`Reset`), a
//! deleted file removes its objects, and a file that fails to parse or validate is reported with
//! its path, object and line/column or field, while the objects it held stay as they were.
//! Names starting with `.` are skipped, which also skips the `..data` directories of a mounted
//! ConfigMap while following its symlinked files.
//!
//! Only a successful read says a file is gone. A directory that cannot be listed (out of file
//! descriptors, no permission, deleted or being re-created) or a file that cannot be read keeps
//! every object below it, is logged at warn and counted
//! (`switchboard_source_errors_total{source="manifests",reason="read"}`), and reports the part
//! `manifests` as failing (`Change::Health`) until a complete read succeeds; failing reads are
//! retried every second.
//!
//! Change detection: inotify (via `notify`) names the files that changed, and only those are
//! re-read, so a change costs the files it touched, not the directory's size. Directory events
//! (a directory created, renamed or deleted) and a slow periodic fallback walk the whole tree and
//! compare each file's (mtime, size, inode), which catches anything a filesystem does not report.
//! A directory deleted and re-created under the same path is watched again at the next walk.

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, SystemTime};

use notify::{RecursiveMode, Watcher};
use tables::{Origin, SourceId};

use crate::parse::{read_manifest, Manifest, ManifestError};
use crate::{Change, Event, Metrics, Sender};

/// How long to wait for more events after the first one before rescanning.
const DEBOUNCE: Duration = Duration::from_millis(15);
/// The fallback rescan period.
const RESCAN: Duration = Duration::from_secs(5);
/// The rescan period while something could not be read.
const RETRY: Duration = Duration::from_secs(1);
/// The health part this source reports.
const PART: &str = "manifests";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    ino: u64,
}

fn stamp(path: &Path) -> io::Result<Stamp> {
    let md = std::fs::metadata(path)?;
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(&md);
    #[cfg(not(unix))]
    let ino = 0;
    Ok(Stamp {
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

/// The source a file of the manifest directory `dir` is: its path below `dir`.
pub fn source_id(dir: &Path, path: &Path) -> SourceId {
    let rel = path.strip_prefix(dir).unwrap_or(path);
    SourceId::new(Origin::Manifests, &rel.display().to_string())
}

/// Why a manifest file gave no objects.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// It could not be read: what it held is unknown, not gone.
    #[error("{0}")]
    Read(io::Error),
    #[error("{0}: not UTF-8")]
    NotUtf8(String),
    /// It was read and rejected.
    #[error("{0}")]
    Invalid(Box<ManifestError>),
}

impl FileError {
    /// The `reason` label of `switchboard_source_errors_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            FileError::Read(_) => "read",
            FileError::NotUtf8(_) => "parse",
            FileError::Invalid(e) => e.reason,
        }
    }
}

/// Reads, parses and converts one manifest file: what the directory source does with each file,
/// and `switchboard check` too.
pub fn read_file(path: &Path) -> Result<Manifest, FileError> {
    let bytes = std::fs::read(path).map_err(FileError::Read)?;
    let text =
        String::from_utf8(bytes).map_err(|_| FileError::NotUtf8(path.display().to_string()))?;
    read_manifest(path, &text).map_err(|e| FileError::Invalid(Box::new(e)))
}

/// What one walk of the directory found.
#[derive(Debug, Default)]
pub struct Listing {
    /// Every manifest file it could see, sorted.
    pub files: Vec<PathBuf>,
    /// Places it could not read, with the error: what was below them is unknown, not gone.
    pub unreadable: Vec<(PathBuf, io::Error)>,
}

impl Listing {
    /// Whether `path` lies where the walk could not see.
    pub fn hides(&self, path: &Path) -> bool {
        self.unreadable.iter().any(|(u, _)| path.starts_with(u))
    }
}

/// Every manifest file below `dir`, sorted, following symlinks, skipping dot-names; and the
/// directories and entries it could not read. A missing `dir` is unreadable, not empty.
pub fn list_files(dir: &Path) -> Listing {
    let mut out = Listing::default();
    let mut stack = vec![dir.to_path_buf()];
    let mut seen_dirs = HashSet::new();
    while let Some(d) = stack.pop() {
        if let Ok(canon) = d.canonicalize() {
            if !seen_dirs.insert(canon) {
                continue; // symlink loop
            }
        }
        let entries = match std::fs::read_dir(&d) {
            Ok(entries) => entries,
            Err(e) => {
                out.unreadable.push((d, e));
                continue;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    out.unreadable.push((d.clone(), e));
                    break;
                }
            };
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let path = entry.path();
            match std::fs::metadata(&path) {
                Ok(md) if md.is_dir() => stack.push(path),
                Ok(md) if md.is_file() && is_manifest(&path) => out.files.push(path),
                Ok(_) => {}
                // A dangling symlink, or gone since the listing: not a file.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => out.unreadable.push((path, e)),
            }
        }
    }
    out.files.sort();
    out
}

/// What reading one file came to.
enum Read {
    /// Parsed (and sent) or rejected with a logged error: either way this version is handled.
    Done,
    /// Could not be read; its objects stay and it is tried again at the next walk.
    Failed,
    /// The controller is gone.
    Closed,
}

/// Watches `dir` and feeds its objects into `tx` until `tx` closes.
pub struct FileSource {
    dir: PathBuf,
    tx: Sender,
    metrics: Metrics,
    known: BTreeMap<PathBuf, Stamp>,
    /// Files and directories that could not be read, with the error, until they read again.
    failing: BTreeMap<PathBuf, String>,
    /// The health last reported, so an unchanged state is not re-logged.
    reported: Option<Option<String>>,
}

impl FileSource {
    /// `dir` may be relative: it is made absolute (symlinks kept) so event paths match it.
    pub fn new(dir: PathBuf, tx: Sender, metrics: Metrics) -> Self {
        let dir = std::path::absolute(&dir).unwrap_or(dir);
        FileSource {
            dir,
            tx,
            metrics,
            known: BTreeMap::new(),
            failing: BTreeMap::new(),
            reported: None,
        }
    }

    fn send(&self, change: Change) -> bool {
        self.tx.send(Event::now(change)).is_ok()
    }

    /// Tells the controller `path` no longer exists: its objects go.
    fn remove(&mut self, path: &Path) -> bool {
        self.known.remove(path);
        self.failing.remove(path);
        tracing::info!(path = %path.display(), "manifest removed");
        self.send(Change::Reset {
            source: source_id(&self.dir, path),
            objects: vec![],
            keep: vec![],
        })
    }

    /// Records that `path` could not be read: logged at warn when the error is new, counted
    /// every time, and its objects stay.
    fn read_failed(&mut self, path: &Path, what: &str, e: &io::Error) {
        self.metrics
            .source_errors
            .with_label_values(&["manifests", "read"])
            .inc();
        let problem = format!("{what} {}: {e}", path.display());
        if self.failing.get(path) != Some(&problem) {
            tracing::warn!("{problem}; keeping the objects below it");
        }
        self.failing.insert(path.to_path_buf(), problem);
    }

    /// Reports the source's health to the controller when it changed.
    fn report_health(&mut self) -> bool {
        let problem = match self.failing.len() {
            0 => None,
            1 => self.failing.values().next().cloned(),
            n => Some(format!(
                "{} (and {} more)",
                self.failing.values().next().unwrap(),
                n - 1
            )),
        };
        if self.reported.as_ref() == Some(&problem) {
            return true;
        }
        self.reported = Some(problem.clone());
        self.send(Change::Health {
            part: PART.into(),
            problem,
        })
    }

    /// Reads one file, whose metadata gave `st`, and reports its objects or its error.
    fn load(&mut self, path: &Path, st: Stamp) -> Read {
        let manifest = match read_file(path) {
            // Vanished between listing and reading: the next walk sees it gone.
            Err(FileError::Read(e)) if e.kind() == io::ErrorKind::NotFound => return Read::Done,
            Err(FileError::Read(e)) => {
                self.read_failed(path, "cannot read manifest", &e);
                return Read::Failed;
            }
            Err(e) => {
                self.handled(path, st);
                self.metrics
                    .source_errors
                    .with_label_values(&["manifests", e.reason()])
                    .inc();
                tracing::warn!("manifest rejected: {e}; keeping the objects it held before");
                return Read::Done;
            }
            Ok(manifest) => manifest,
        };
        self.handled(path, st);
        for w in &manifest.warnings {
            tracing::warn!("manifest warning: {w}");
        }
        let objects = manifest.objects;
        tracing::debug!(path = %path.display(), objects = objects.len(), "manifest loaded");
        let sent = self.send(Change::Reset {
            source: source_id(&self.dir, path),
            objects,
            keep: vec![],
        });
        if sent {
            Read::Done
        } else {
            Read::Closed
        }
    }

    /// Marks this version of `path` as read, so it is not read again until it changes.
    fn handled(&mut self, path: &Path, st: Stamp) {
        self.known.insert(path.to_path_buf(), st);
        self.failing.remove(path);
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
    /// appeared or vanished, a path we cannot classify, or one we could not look at).
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
                Err(e) if e.kind() != io::ErrorKind::NotFound => return None,
                Err(_) if self.known.contains_key(path) => work.push(path.clone()),
                // Gone and not a file we held: maybe a directory with files in it.
                Err(_) if self.known.keys().any(|k| k.starts_with(path)) => return None,
                Err(_) => {}
            }
        }
        work.sort();
        for path in work {
            let ok = match stamp(&path) {
                Ok(st) => !matches!(self.load(&path, st), Read::Closed),
                Err(e) if e.kind() == io::ErrorKind::NotFound => self.remove(&path),
                Err(e) => {
                    self.read_failed(&path, "cannot stat manifest", &e);
                    true
                }
            };
            if !ok {
                return Some(false);
            }
        }
        Some(self.report_health())
    }

    /// Rescans the directory; `forced` paths are re-read even if their stamp is unchanged.
    /// What lies below a place the walk could not read is kept as it was.
    fn rescan(&mut self, forced: &HashSet<PathBuf>) -> bool {
        let listing = list_files(&self.dir);
        // Directory problems are recomputed by every walk; file problems by reading the file.
        self.failing.retain(|p, _| p.is_file());
        for (path, e) in &listing.unreadable {
            self.read_failed(path, "cannot list manifests in", e);
        }
        let present: HashSet<&PathBuf> = listing.files.iter().collect();
        let gone: Vec<PathBuf> = self
            .known
            .keys()
            .filter(|p| !present.contains(p) && !listing.hides(p))
            .cloned()
            .collect();
        for path in gone {
            if !self.remove(&path) {
                return false;
            }
        }
        for path in &listing.files {
            let st = match stamp(path) {
                Ok(st) => st,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    self.read_failed(path, "cannot stat manifest", &e);
                    continue;
                }
            };
            let unchanged = self.known.get(path) == Some(&st) && !self.failing.contains_key(path);
            if unchanged && !forced.contains(path) {
                continue;
            }
            if let Read::Closed = self.load(path, st) {
                return false;
            }
        }
        self.report_health()
    }

    /// The inode of the directory itself, to tell when it was deleted and re-created.
    fn dir_ino(&self) -> Option<u64> {
        stamp(&self.dir).ok().map(|st| st.ino)
    }

    /// Runs on the calling thread: initial scan, `Synced`, then watch until the controller
    /// hangs up. Fails only if the directory cannot be watched at start.
    pub fn run(mut self) -> notify::Result<()> {
        let (ev_tx, ev_rx) = std_mpsc::channel::<notify::Result<notify::Event>>();
        let mut watcher = notify::recommended_watcher(move |res| {
            let _ = ev_tx.send(res);
        })?;
        watcher.watch(&self.dir, RecursiveMode::Recursive)?;
        let mut watched = self.dir_ino();
        tracing::info!(dir = %self.dir.display(), "watching manifests");

        if !self.rescan(&HashSet::new()) {
            return Ok(());
        }
        if !self.send(Change::Synced { part: PART.into() }) {
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
                    // A directory deleted and made again has lost its inotify watch: watch
                    // the new one before walking it, so nothing written meanwhile is missed.
                    let ino = self.dir_ino();
                    if ino.is_some() && ino != watched {
                        let _ = watcher.unwatch(&self.dir);
                        match watcher.watch(&self.dir, RecursiveMode::Recursive) {
                            Ok(()) => {
                                watched = ino;
                                tracing::info!(dir = %self.dir.display(), "manifest directory re-created; watching it again");
                            }
                            Err(e) => {
                                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot watch the re-created manifest directory; rescanning it periodically")
                            }
                        }
                    }
                    let ok = self.rescan(&forced);
                    let period = if self.failing.is_empty() {
                        RESCAN
                    } else {
                        RETRY
                    };
                    next_rescan = std::time::Instant::now() + period;
                    ok
                }
            };
            if !ok {
                return Ok(());
            }
        }
    }
}
