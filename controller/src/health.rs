//! Whether each source part can read its source right now.
//!
//! A source that cannot read (a manifest directory that cannot be listed, a file that cannot be
//! read, an API server that does not answer) keeps publishing its last good objects; this is
//! where that staleness becomes visible: `/readyz` lists the failing parts in its body, and the
//! controller exports `switchboard_source_up{part}` and
//! `switchboard_source_last_sync_timestamp_seconds{part}`. Parts are the names of
//! [`crate::parts_of`] (`manifests`, `kubernetes/Service`, ...).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// One part's state.
#[derive(Clone, Debug, Default)]
pub struct PartHealth {
    /// What is wrong right now; `None` while the source reads fine.
    pub problem: Option<String>,
    /// Since when `problem` has held (or the part has been fine).
    pub since: Option<SystemTime>,
    /// The last time the part read its source completely and without error.
    pub last_ok: Option<SystemTime>,
}

/// How a report changed a part's state, so the caller can log each outage once.
#[derive(Debug, PartialEq, Eq)]
pub enum Transition {
    /// Nothing changed but the last-ok time.
    Same,
    /// The part began failing.
    Failing,
    /// The part reads again after failing for this long.
    Recovered(std::time::Duration),
}

/// The health of every part, shared by the controller (writer) and the admin listener.
#[derive(Clone, Default)]
pub struct SourceHealth(Arc<Mutex<BTreeMap<String, PartHealth>>>);

impl SourceHealth {
    /// Records a report from `part`: `problem` is `None` when it read its source completely.
    pub fn report(&self, part: &str, problem: Option<String>, now: SystemTime) -> Transition {
        let mut parts = self.0.lock().unwrap();
        let h = parts.entry(part.to_string()).or_default();
        // One outage is one transition each way, whatever the errors in between say.
        let transition = match (&h.problem, &problem) {
            (None, None) | (Some(_), Some(_)) => Transition::Same,
            (Some(_), None) => Transition::Recovered(
                h.since
                    .and_then(|s| now.duration_since(s).ok())
                    .unwrap_or_default(),
            ),
            (None, Some(_)) => Transition::Failing,
        };
        if problem.is_none() {
            h.last_ok = Some(now);
        }
        if transition != Transition::Same {
            h.since = Some(now);
        }
        h.problem = problem;
        transition
    }

    /// The parts failing right now, with their problems, in part order.
    pub fn problems(&self) -> Vec<(String, String)> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(part, h)| h.problem.clone().map(|p| (part.clone(), p)))
            .collect()
    }

    /// A copy of one part's state.
    pub fn get(&self, part: &str) -> Option<PartHealth> {
        self.0.lock().unwrap().get(part).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn transitions_are_reported_once_per_outage() {
        let h = SourceHealth::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let at = |s| t0 + Duration::from_secs(s);
        let cases: &[(u64, Option<&str>, Transition)] = &[
            (0, None, Transition::Same),
            (1, Some("EMFILE"), Transition::Failing),
            (2, Some("EMFILE"), Transition::Same),
            (3, Some("ENOENT"), Transition::Same),
            (7, None, Transition::Recovered(Duration::from_secs(6))),
            (8, None, Transition::Same),
        ];
        let mut failures = Vec::new();
        for (s, problem, want) in cases {
            let got = h.report("manifests", problem.map(str::to_string), at(*s));
            if got != *want {
                failures.push(format!("t={s} {problem:?}: got {got:?}, want {want:?}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        let p = h.get("manifests").unwrap();
        assert_eq!(p.last_ok, Some(at(8)));
        assert!(h.problems().is_empty());
    }
}
