//! `switchboard check [DIR] [--config FILE]`: what `run --manifests DIR` would serve, without
//! serving it — for CI pipelines of people who keep their objects as manifests.
//!
//! It goes through the live path's own code, not a copy: the config file through
//! `Config::resolve`, the directory through `controller::files` (`list_files`, then `read_file`
//! per file: parse, convert, warnings), the objects into a `tables::ClusterState` (one source per
//! file, as the watcher makes them) compiled into the same `Snapshot` that DNS and the proxies
//! read, and its HTTP rules through the proxy's `RouteIndex::build`. Then it prints:
//!
//! ```text
//! examples/demo: 6 files, 21 objects
//! services (7):             default/web ClusterIP 127.10.0.1 8080/TCP: 2 of 2 endpoints ready
//! DNS names (12):           web.default.svc.cluster.local. A 127.10.0.1   (SRV, PTR: --tables)
//! HTTP routes (3):          as /debug/tables prints them
//! L4 frontends (6):         TCP 127.10.0.1:8080 ClusterIP -> default/web port 8080
//! warnings (N):             FILE:LINE:COLUMN: ... where the place is known
//! errors (N):               FILE:LINE:COLUMN: ...
//! ```
//!
//! Exit status: 0 when every file was read and accepted (warnings allowed); 1 when any file or
//! directory could not be read or was rejected, or the config file is wrong; 2 for usage errors.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use controller::files::{self, FileError};
use tables::{ClusterState, Kind, ObjectKey, ObjectRef, Snapshot, SourceId, TableConfig};

use crate::config::{Config, RunArgs};

/// What a check found.
pub struct Report {
    pub dir: PathBuf,
    pub files: usize,
    pub objects: usize,
    pub snapshot: Arc<Snapshot>,
    pub warnings: Vec<String>,
    pub errors: Vec<String>,
}

/// `switchboard check`: prints the report of `dir` (else the config file's `manifests`), with
/// the full table dump when `tables`; an error when anything was rejected.
pub fn run(dir: Option<PathBuf>, config: Option<PathBuf>, tables: bool) -> anyhow::Result<()> {
    let cfg = Config::resolve(RunArgs {
        config,
        manifests: dir,
        ..Default::default()
    })?;
    let Some(dir) = cfg.manifests.clone() else {
        anyhow::bail!(
            "no manifest directory to check: give DIR, or --config FILE with `manifests`"
        );
    };
    let report = check(&dir, cfg.table_config());
    print!("{}", report.render(tables));
    match report.errors.len() {
        0 => Ok(()),
        n => anyhow::bail!(
            "{}: {n} error{}",
            dir.display(),
            if n == 1 { "" } else { "s" }
        ),
    }
}

/// Reads and compiles `dir` as `run --manifests` would.
pub fn check(dir: &Path, config: TableConfig) -> Report {
    let listing = files::list_files(dir);
    let mut errors: Vec<String> = listing
        .unreadable
        .iter()
        .map(|(path, e)| format!("{}: cannot read: {e}", path.display()))
        .collect();
    let mut warnings = Vec::new();
    let mut objects = 0;
    let mut state = ClusterState::new(config);
    for path in &listing.files {
        match files::read_file(path) {
            Ok(manifest) => {
                warnings.extend(manifest.warnings.iter().map(ToString::to_string));
                objects += manifest.objects.len();
                state.reset(&files::source_id(dir, path), manifest.objects, &[]);
            }
            Err(FileError::Read(e)) => errors.push(format!("{}: cannot read: {e}", path.display())),
            Err(e) => errors.push(e.to_string()),
        }
    }
    for (key, served, also) in state.take_conflicts() {
        warnings.push(controller::conflict(&key, &served, &also));
    }
    warnings.extend(unserved(&state));
    state.set_synced(true);
    let snapshot = state.commit().unwrap_or_else(|| state.snapshot());
    warnings.extend(not_routed(&snapshot, &sources(&state)));
    Report {
        dir: dir.to_path_buf(),
        files: listing.files.len(),
        objects,
        snapshot,
        warnings,
        errors,
    }
}

/// Each object's file.
fn sources(state: &ClusterState) -> BTreeMap<ObjectKey, SourceId> {
    state
        .objects()
        .into_iter()
        .map(|(key, source, _)| (key.clone(), source.clone()))
        .collect()
}

/// EndpointSlices that no Service takes: their endpoints are served nowhere.
fn unserved(state: &ClusterState) -> Vec<String> {
    let objects = state.objects();
    let services: BTreeSet<&ObjectKey> = objects
        .iter()
        .filter(|(key, ..)| key.kind == Kind::Service)
        .map(|(key, ..)| *key)
        .collect();
    let mut out = Vec::new();
    for (key, source, object) in &objects {
        let ObjectRef::EndpointSlice(slice) = object else {
            continue;
        };
        let file = &source.name;
        match &slice.service_name {
            None => out.push(format!(
                "{file}: {key}: no kubernetes.io/service-name label, so no Service takes its endpoints"
            )),
            Some(name)
                if !services.contains(&ObjectKey::new(Kind::Service, &slice.namespace, name)) =>
            {
                out.push(format!(
                    "{file}: {key}: its Service {}/{name} is not defined, so its endpoints are served nowhere",
                    slice.namespace
                ))
            }
            Some(_) => {}
        }
    }
    out
}

/// HTTP rules and certificates that the compiled tables or the proxy leave out, and
/// `switchboard.dev/lb-algorithm` values the proxy would ignore.
fn not_routed(snap: &Snapshot, sources: &BTreeMap<ObjectKey, SourceId>) -> Vec<String> {
    let file = |key: &ObjectKey| {
        sources
            .get(key)
            .map(|s| format!("{}: ", s.name))
            .unwrap_or_default()
    };
    let http = &snap.routes.http;
    let mut out = Vec::new();
    for (key, why) in &http.ignored {
        out.push(format!("{}{key}: not served: {why}", file(key)));
    }
    for (secret, by) in &snap.routes.tls.missing {
        out.push(format!(
            "{}{by}: {secret} is not defined (or not kubernetes.io/tls): no certificate from it",
            file(by)
        ));
    }
    for (rule, why) in proxy::http::route::RouteIndex::build(http).refused {
        out.push(format!("{rule}: not served: {why}"));
    }
    let lb = proxy::http::backend::LB_ANNOTATION;
    let mut bad_lb = BTreeSet::new();
    for rule in &http.rules {
        if let Some(value) = &rule.lb_algorithm {
            bad_lb.insert((rule.source.clone(), value.to_string()));
        }
    }
    for (key, svc) in snap.routes.services.iter() {
        if let Some(value) = svc.service.annotations.get(lb) {
            bad_lb.insert((
                ObjectKey::new(Kind::Service, &key.namespace, &key.name),
                value.clone(),
            ));
        }
    }
    for (key, value) in bad_lb {
        if let Err(e) = value.parse::<proxy::http::Algorithm>() {
            out.push(format!("{}{key}: {lb}: {e}; ignored", file(&key)));
        }
    }
    out
}

impl Report {
    /// The text `switchboard check` prints; `tables` adds the `/debug/tables` dump.
    pub fn render(&self, tables: bool) -> String {
        let snap = &self.snapshot;
        let dump = tables::dump(snap);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{}: {} files, {} objects",
            self.dir.display(),
            self.files,
            self.objects
        );

        let mut services: Vec<_> = snap.routes.services.iter().collect();
        services.sort_by(|a, b| a.0.cmp(b.0));
        let _ = writeln!(out, "services ({}):", services.len());
        for (key, svc) in services {
            let s = &svc.service;
            let ips = if s.headless {
                "None".to_string()
            } else if let Some(name) = &s.external_name {
                name.clone()
            } else {
                let ips: Vec<String> = s.cluster_ips.iter().map(ToString::to_string).collect();
                ips.join(",")
            };
            let ports: Vec<String> = svc
                .ports
                .iter()
                .map(|p| format!("{}/{}", p.port, p.protocol))
                .collect();
            let mut all = BTreeSet::new();
            let mut ready = BTreeSet::new();
            for e in svc.ports.iter().flat_map(|p| p.endpoints.iter()) {
                all.insert(e.addr().ip());
                if e.conditions.is_ready() {
                    ready.insert(e.addr().ip());
                }
            }
            let _ = write!(out, "  {key} {} {ips}", s.service_type.as_str());
            if !ports.is_empty() {
                let _ = write!(
                    out,
                    " {}: {} of {} endpoints ready",
                    ports.join(","),
                    ready.len(),
                    all.len()
                );
            }
            out.push('\n');
        }

        // From the dump, so they read as `/debug/tables` does.
        let lines = |prefix: &str, keep: &dyn Fn(&str) -> bool| -> Vec<String> {
            dump.lines()
                .filter_map(|l| l.strip_prefix(prefix))
                .filter(|l| keep(l))
                .map(|l| format!("  {l}\n"))
                .collect()
        };
        let names = lines("dns ", &|l| {
            [" A ", " AAAA ", " CNAME "].iter().any(|t| l.contains(t))
        });
        let distinct: BTreeSet<&str> = names
            .iter()
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        let _ = writeln!(
            out,
            "DNS names ({}; SRV, PTR and the rest with --tables):",
            distinct.len()
        );
        out.extend(names);
        let routes = lines("http ", &|_| true);
        let _ = writeln!(out, "HTTP routes ({}):", routes.len());
        out.extend(routes);
        let frontends = lines("frontend ", &|_| true);
        let _ = writeln!(out, "L4 frontends ({}):", frontends.len());
        out.extend(frontends);

        for (what, list) in [("warnings", &self.warnings), ("errors", &self.errors)] {
            let _ = writeln!(out, "{what} ({}):", list.len());
            for item in list {
                let _ = writeln!(out, "  {item}");
            }
        }
        if tables {
            out.push_str("tables:\n");
            out.push_str(&dump);
        }
        out
    }
}
