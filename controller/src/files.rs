//! The manifest-directory source: every `*.yaml`, `*.yml` and `*.json` below a directory,
//! watched for changes.
//!
//! Each file is its own source, read document by document (`filedocs.rs`): a re-read file
//! costs the documents whose text changed, which are parsed and sent as one `Update` (their
//! objects applied, the objects of vanished documents deleted); a file read for the first time
//! is sent whole (`Reset`); a deleted file removes its objects. A document that fails to parse
//! or validate is reported with its path, object and line/column or field, and the object it
//! was meant to be keeps its last good version while the rest of the file applies.
//!
//! At start (and on a full walk that finds many files changed) the files are read and parsed on
//! as many threads as the machine has cores, each file's change sent as soon as it and the
//! rest of its thread's batch of 16 files are parsed.
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
//! Events are gathered for at most 15 ms, and less once every file they named is complete (its
//! writer closed it, or it was renamed into place or removed), so an edit is read at once.
//! A directory deleted and re-created under the same path is watched again at the next walk.

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant, SystemTime};

use notify::{RecursiveMode, Watcher};
use tables::{Origin, SourceId};

use crate::filedocs::{FileDocs, Outcome, Reread};
use crate::parse::{read_manifest, Manifest, ManifestError};
use crate::{Change, Event, Metrics, Sender};

/// At most how long to wait for more events after the first one before reading: the wait ends
/// as soon as no file named so far is still being written.
const DEBOUNCE: Duration = Duration::from_millis(15);
/// The fallback rescan period.
const RESCAN: Duration = Duration::from_secs(5);
/// The rescan period while something could not be read.
const RETRY: Duration = Duration::from_secs(1);
/// The health part this source reports.
const PART: &str = "manifests";

/// A map keyed by path, with a fast hasher (the paths are our own directory's).
type PathMap<V> = std::collections::HashMap<PathBuf, V, foldhash::fast::RandomState>;

/// A manifest file as this source knows it.
#[derive(Debug, Default)]
struct Known {
    /// The version last handled (read, or rejected as a whole); `None` before that.
    stamp: Option<Stamp>,
    docs: FileDocs,
}

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

/// Reads, parses and converts one manifest file all or nothing (any rejected document rejects
/// the file), with the same parsing as the directory source: `switchboard check`.
pub fn read_file(path: &Path) -> Result<Manifest, FileError> {
    let text = read_text(path)?;
    read_manifest(path, &text).map_err(|e| FileError::Invalid(Box::new(e)))
}

fn read_text(path: &Path) -> Result<String, FileError> {
    let bytes = std::fs::read(path).map_err(FileError::Read)?;
    String::from_utf8(bytes).map_err(|_| FileError::NotUtf8(path.display().to_string()))
}

/// Reads `path` against what its documents gave before (`docs`): the directory source's read.
fn read_docs(path: &Path, docs: &mut FileDocs) -> Result<Outcome, FileError> {
    let text = read_text(path)?;
    Ok(docs.update(path, &text))
}

/// Files a reading thread hands over at once: one wake-up of the collecting thread (and a burst
/// of changes, so one of the controller's) per 16 files instead of per file; 16 one-Service
/// files are about 2 ms of parsing.
const BATCH: usize = 16;

/// One file to read: its path, its stamp, and its documents as last read.
type Job = (PathBuf, Stamp, FileDocs);

/// Reads and parses `jobs` on up to one thread per core, handing the results to `done` on the
/// calling thread in batches of up to `BATCH` per thread (in no particular order). Stops early when `done`
/// returns false.
fn read_parallel(
    jobs: Vec<Job>,
    mut done: impl FnMut(Job, Result<Outcome, FileError>) -> bool,
) -> bool {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8)
        .min(jobs.len());
    if threads <= 1 {
        return jobs.into_iter().all(|(path, st, mut docs)| {
            let res = read_docs(&path, &mut docs);
            done((path, st, docs), res)
        });
    }
    let queue = std::sync::Mutex::new(jobs.into_iter());
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (tx, rx) = std_mpsc::channel();
    std::thread::scope(|s| {
        for _ in 0..threads {
            let (queue, stop, tx) = (&queue, &stop, tx.clone());
            s.spawn(move || {
                let mut batch = Vec::with_capacity(BATCH);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let Some((path, st, mut docs)) = queue.lock().unwrap().next() else {
                        break;
                    };
                    let res = read_docs(&path, &mut docs);
                    batch.push(((path, st, docs), res));
                    if batch.len() == BATCH
                        && tx
                            .send(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)))
                            .is_err()
                    {
                        return;
                    }
                }
                if !batch.is_empty() {
                    let _ = tx.send(batch);
                }
            });
        }
        drop(tx);
        for (job, res) in rx.into_iter().flatten() {
            if !done(job, res) {
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                return false;
            }
        }
        true
    })
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
    /// Every manifest file seen, with the stamp of its last handled version and what its
    /// documents gave (so a re-read parses only changed documents). One map, so the path is
    /// kept once per file (docs/memory.md). Hashed, not ordered: at 10,000 files a `BTreeMap`'s
    /// path comparisons (component by component) took 5.8% of the start-up's CPU (perf).
    files: PathMap<Known>,
    /// Totals of the reads since the last `tally` call, for the start-up log line.
    tally: Tally,
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
            files: PathMap::default(),
            tally: Tally::default(),
            failing: BTreeMap::new(),
            reported: None,
        }
    }

    fn send(&self, change: Change) -> bool {
        self.tx.send(Event::now(change)).is_ok()
    }

    /// Tells the controller `path` no longer exists: its objects go.
    fn remove(&mut self, path: &Path) -> bool {
        self.files.remove(path);
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
        let mut docs = self.take_docs(path);
        let res = read_docs(path, &mut docs);
        self.loaded((path.to_path_buf(), st, docs), res)
    }

    /// Reads many files, in parallel: `false` when the controller is gone.
    fn load_many(&mut self, files: Vec<(PathBuf, Stamp)>) -> bool {
        let jobs = files
            .into_iter()
            .map(|(path, st)| {
                let docs = self.take_docs(&path);
                (path, st, docs)
            })
            .collect();
        read_parallel(jobs, |job, res| {
            !matches!(self.loaded(job, res), Read::Closed)
        })
    }

    /// Reports what reading one file came to: its change, warnings and rejected documents.
    fn loaded(&mut self, (path, st, docs): Job, res: Result<Outcome, FileError>) -> Read {
        let path = path.as_path();
        let out = match res {
            Ok(out) => {
                self.put_docs(path, docs);
                out
            }
            Err(e) => {
                // Nothing was read: what the documents gave stays as it was.
                if docs.is_read() {
                    self.put_docs(path, docs);
                }
                return match e {
                    // Vanished between listing and reading: the next walk sees it gone.
                    FileError::Read(e) if e.kind() == io::ErrorKind::NotFound => Read::Done,
                    FileError::Read(e) => {
                        self.read_failed(path, "cannot read manifest", &e);
                        Read::Failed
                    }
                    e => {
                        self.handled(path, st);
                        self.metrics
                            .source_errors
                            .with_label_values(&["manifests", e.reason()])
                            .inc();
                        tracing::warn!(
                            "manifest rejected: {e}; keeping the objects it held before"
                        );
                        Read::Done
                    }
                };
            }
        };
        self.handled(path, st);
        for w in &out.warnings {
            tracing::warn!("manifest warning: {w}");
        }
        for e in &out.errors {
            self.metrics
                .source_errors
                .with_label_values(&["manifests", e.reason])
                .inc();
            tracing::warn!(
                "manifest rejected: {e}; keeping the last good version of its object, applying the rest of the file"
            );
        }
        let source = source_id(&self.dir, path);
        let (change, objects) = match out.change {
            Reread::Reset { objects, keep } => {
                let n = objects.len();
                (
                    Some(Change::Reset {
                        source,
                        objects,
                        keep,
                    }),
                    n,
                )
            }
            Reread::Update { apply, delete } if apply.is_empty() && delete.is_empty() => (None, 0),
            Reread::Update { apply, delete } => {
                let n = apply.len();
                (
                    Some(Change::Update {
                        source,
                        apply,
                        delete,
                    }),
                    n,
                )
            }
        };
        self.tally.files += 1;
        self.tally.documents += out.documents;
        self.tally.objects += objects;
        tracing::debug!(
            path = %path.display(),
            documents = out.documents,
            parsed = out.parsed,
            objects,
            "manifest loaded"
        );
        let Some(change) = change else {
            return Read::Done;
        };
        if self.send(change) {
            Read::Done
        } else {
            Read::Closed
        }
    }

    /// Marks this version of `path` as read, so it is not read again until it changes.
    fn handled(&mut self, path: &Path, st: Stamp) {
        match self.files.get_mut(path) {
            Some(f) => f.stamp = Some(st),
            None => {
                self.files.insert(
                    path.to_path_buf(),
                    Known {
                        stamp: Some(st),
                        docs: FileDocs::default(),
                    },
                );
            }
        }
        self.failing.remove(path);
    }

    /// The stamp of the last handled version of `path`, if it was handled.
    fn stamp_of(&self, path: &Path) -> Option<Stamp> {
        self.files.get(path).and_then(|f| f.stamp)
    }

    /// Takes what `path`'s documents gave out for a read (empty for a file never read); the
    /// read's `loaded` puts it back.
    fn take_docs(&mut self, path: &Path) -> FileDocs {
        self.files
            .get_mut(path)
            .map(|f| std::mem::take(&mut f.docs))
            .unwrap_or_default()
    }

    fn put_docs(&mut self, path: &Path, docs: FileDocs) {
        match self.files.get_mut(path) {
            Some(f) => f.docs = docs,
            None => {
                self.files
                    .insert(path.to_path_buf(), Known { stamp: None, docs });
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
                Err(_) if self.stamp_of(path).is_some() => work.push(path.clone()),
                // Gone and not a file we held: maybe a directory with files in it.
                Err(_)
                    if self
                        .files
                        .iter()
                        .any(|(k, f)| f.stamp.is_some() && k.starts_with(path)) =>
                {
                    return None
                }
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
            .files
            .iter()
            .filter(|(p, f)| f.stamp.is_some() && !present.contains(p) && !listing.hides(p))
            .map(|(p, _)| p.clone())
            .collect();
        for path in gone {
            if !self.remove(&path) {
                return false;
            }
        }
        let mut changed = Vec::new();
        for path in listing.files {
            let st = match stamp(&path) {
                Ok(st) => st,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    self.read_failed(&path, "cannot stat manifest", &e);
                    continue;
                }
            };
            let unchanged = self.stamp_of(&path) == Some(st) && !self.failing.contains_key(&path);
            if unchanged && !forced.contains(&path) {
                continue;
            }
            changed.push((path, st));
        }
        if !self.load_many(changed) {
            return false;
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

        let start = Instant::now();
        if !self.rescan(&HashSet::new()) {
            return Ok(());
        }
        let t = std::mem::take(&mut self.tally);
        tracing::info!(
            files = t.files,
            documents = t.documents,
            objects = t.objects,
            seconds = start.elapsed().as_secs_f64(),
            "manifests read"
        );
        if !self.send(Change::Synced { part: PART.into() }) {
            return Ok(());
        }
        let mut next_rescan = Instant::now() + RESCAN;
        loop {
            let mut forced = HashSet::new();
            let wait = next_rescan.saturating_duration_since(Instant::now());
            match ev_rx.recv_timeout(wait) {
                Ok(Ok(ev)) if settles(&ev.kind).is_none() => continue,
                Ok(first) => {
                    // Files of ours that are being written: the wait ends early once none is.
                    let writing = std::cell::RefCell::new(HashSet::new());
                    let mut collect = |res: notify::Result<notify::Event>| match res {
                        Ok(ev) => {
                            let open = match settles(&ev.kind) {
                                // Our own reads produce open/close-nowrite (Access) events:
                                // reacting to those would reload every file in a loop.
                                None => return,
                                Some(settled) => !settled,
                            };
                            for path in ev.paths {
                                if open && self.is_ours(&path) {
                                    writing.borrow_mut().insert(path.clone());
                                } else {
                                    writing.borrow_mut().remove(&path);
                                }
                                forced.insert(path);
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "manifest watch error"),
                    };
                    collect(first);
                    let deadline = Instant::now() + DEBOUNCE;
                    while !writing.borrow().is_empty() {
                        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                            break;
                        };
                        match ev_rx.recv_timeout(left) {
                            Ok(res) => collect(res),
                            Err(_) => break,
                        }
                    }
                    // Whatever else is already queued belongs to the same burst.
                    while let Ok(res) = ev_rx.try_recv() {
                        collect(res);
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
                    next_rescan = Instant::now() + period;
                    ok
                }
            };
            if !ok {
                return Ok(());
            }
        }
    }
}

/// What an event says of the files it names: `Some(true)` when they are complete (a writer
/// closed them, they were renamed into place or away, removed, or only their metadata
/// changed), `Some(false)` while they may still be written, `None` for events that change
/// nothing (opens and reads, our own included).
fn settles(kind: &notify::EventKind) -> Option<bool> {
    use notify::event::{AccessKind, AccessMode, ModifyKind};
    use notify::EventKind as K;
    match kind {
        K::Access(AccessKind::Close(AccessMode::Write)) => Some(true),
        K::Access(_) => None,
        K::Modify(ModifyKind::Name(_) | ModifyKind::Metadata(_)) | K::Remove(_) => Some(true),
        _ => Some(false),
    }
}

/// Totals of what was read, for the start-up log line.
#[derive(Default)]
struct Tally {
    files: usize,
    documents: usize,
    objects: usize,
}
