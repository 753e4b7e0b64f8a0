//! What each manifest file gave, document by document, so that re-reading a changed file costs
//! the documents whose text changed, not the file's size.
//!
//! ```text
//!  file text ─ split at `---` ─> documents ─ hash each ─┬─ seen before: what it gave then (keys)
//!                                                      └─ new: parse + convert ─> Apply
//!  documents gone (or no longer giving an object) ─────────────────────────────> Delete
//! ```
//!
//! Per file, [`FileDocs`] holds for each document a 128-bit hash of its text, the line it
//! starts on, and the keys of the objects it gave (or, for a rejected document, its report and
//! the object it was meant to be) — not the objects themselves: the controller's state holds
//! those once. A re-read file is split into documents again (a textual scan); documents whose
//! hash is known are taken as they were, wherever they moved in the file (their reports are
//! shifted to their new lines); only the others are parsed. The result is what changed
//! ([`Reread::Update`]: objects to apply, keys to delete), or, for a file read for the first time
//! and for a file that defines one object in two documents (where the later document wins, as it
//! always has), every object of the file ([`Reread::Reset`], each document parsed).
//!
//! A rejected document keeps its object's last good version (`keep`): the object its head (or,
//! for a syntax error, the lines before the mistake) names. When it cannot be told which object
//! a rejected document was meant to be, nothing the file held is deleted until it can. The rest
//! of the file is applied either way.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use tables::model::{Object, ObjectKey};

use crate::parse::{documents, read_document, ManifestError, Meant};

/// A document's text, hashed: two foldhash sums under different seeds, 128 bits, so that two
/// different texts taken for the same is not a practical concern, without keeping the text.
/// A re-read file hashes every document again on every change: for a 1.4 MB file of 1,000
/// documents this takes 0.09 ms, where two SipHash-1-3 sums (std's `DefaultHasher`) took
/// 0.6 ms.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct TextHash(u64, u64);

fn hash_text(text: &str) -> TextHash {
    use foldhash::quality::FixedState;
    use std::hash::BuildHasher;
    const SEEDS: [FixedState; 2] = [
        FixedState::with_seed(0x5157_4954_4348_424f),
        FixedState::with_seed(0x4152_4420_6669_6c65),
    ];
    TextHash(SEEDS[0].hash_one(text), SEEDS[1].hash_one(text))
}

/// One document as last read.
#[derive(Debug)]
struct Doc {
    hash: TextHash,
    first_line: usize,
    state: DocState,
}

#[derive(Debug)]
enum DocState {
    /// The keys of the objects it gave (none for a document of kinds this reader skips).
    Valid(Box<[ObjectKey]>),
    /// Rejected: its report (with this document's positions) and what it was meant to be.
    Invalid {
        error: Box<ManifestError>,
        meant: Meant,
    },
}

/// The documents of one file as last read. Empty for a file never read.
#[derive(Debug, Default)]
pub struct FileDocs {
    docs: Vec<Doc>,
    /// Keys the controller holds for this file whose documents are rejected right now.
    kept: Vec<ObjectKey>,
    read: bool,
}

/// What a re-read file comes to, for the controller.
#[derive(Debug)]
pub enum Reread {
    /// Everything the file holds (`Change::Reset`): `keep` are objects of rejected documents.
    Reset {
        objects: Vec<Object>,
        keep: Vec<ObjectKey>,
    },
    /// Only what changed (`Change::Update`); both empty when nothing did.
    Update {
        apply: Vec<Object>,
        delete: Vec<ObjectKey>,
    },
}

/// What reading a file found, besides the change.
#[derive(Debug)]
pub struct Outcome {
    pub change: Reread,
    /// Warnings of the documents parsed this time (documents read before said theirs then).
    pub warnings: Vec<ManifestError>,
    /// Every rejected document of the file, at its current lines.
    pub errors: Vec<ManifestError>,
    /// Documents in the file, and how many of them were parsed this time.
    pub documents: usize,
    pub parsed: usize,
}

impl FileDocs {
    /// Reads `text`, the current content of `path`, against what the file held before.
    pub fn update(&mut self, path: &Path, text: &str) -> Outcome {
        let held = self.held();
        match self.read_docs(path, text, !self.read, &held) {
            Some(o) => o,
            // An object defined twice in the file: which document wins depends on documents
            // not parsed this time, so parse them all and replace the file's objects.
            None => self
                .read_docs(path, text, true, &held)
                .expect("a whole read never defers"),
        }
    }

    /// Whether the file has been read (and its documents are known).
    pub fn is_read(&self) -> bool {
        self.read
    }

    /// Keys the controller holds from this file: of valid documents, and kept ones.
    fn held(&self) -> HashSet<ObjectKey> {
        let mut held: HashSet<ObjectKey> = self
            .docs
            .iter()
            .filter_map(|d| match &d.state {
                DocState::Valid(keys) => Some(keys.iter().cloned()),
                DocState::Invalid { .. } => None,
            })
            .flatten()
            .collect();
        held.extend(self.kept.iter().cloned());
        held
    }

    /// One read; `whole` parses every document and answers `Reset`. `None` when a partial read
    /// finds an object defined twice.
    fn read_docs(
        &mut self,
        path: &Path,
        text: &str,
        whole: bool,
        held: &HashSet<ObjectKey>,
    ) -> Option<Outcome> {
        let mut before: HashMap<TextHash, Vec<Doc>> = HashMap::new();
        if !whole {
            for doc in self.docs.drain(..) {
                before.entry(doc.hash).or_default().push(doc);
            }
        }
        let mut docs = Vec::new();
        let mut fresh = Vec::new();
        let mut warnings = Vec::new();
        let mut parsed = 0;
        for (first_line, doc_text) in documents(path, text) {
            let hash = hash_text(doc_text);
            if let Some(mut doc) = before.get_mut(&hash).and_then(Vec::pop) {
                if let DocState::Invalid { error, .. } = &mut doc.state {
                    error.shift(first_line as isize - doc.first_line as isize);
                }
                doc.first_line = first_line;
                docs.push(doc);
                continue;
            }
            parsed += 1;
            let state = match read_document(path, first_line, doc_text) {
                Ok(read) => {
                    warnings.extend(read.warnings);
                    let keys = read.objects.iter().map(|(_, o)| o.key()).collect();
                    fresh.extend(read.objects.into_iter().map(|(_, o)| o));
                    DocState::Valid(keys)
                }
                Err(e) => DocState::Invalid {
                    error: Box::new(e.error),
                    meant: e.meant,
                },
            };
            docs.push(Doc {
                hash,
                first_line,
                state,
            });
        }
        let mut defined = HashSet::new();
        let mut twice = false;
        for doc in &docs {
            if let DocState::Valid(keys) = &doc.state {
                for k in keys.iter() {
                    twice |= !defined.insert(k.clone());
                }
            }
        }
        if twice && !whole && parsed < docs.len() {
            return None;
        }
        // Rejected documents keep the last good version of what they were meant to be; one
        // that cannot be told keeps everything that would otherwise go.
        let mut kept = Vec::new();
        let mut unknown = false;
        let mut errors = Vec::new();
        for doc in &docs {
            if let DocState::Invalid { error, meant } = &doc.state {
                errors.push((**error).clone());
                match meant {
                    Meant::Object(k) if held.contains(k) && !defined.contains(k) => {
                        kept.push(k.clone())
                    }
                    Meant::Unknown => unknown = true,
                    _ => {}
                }
            }
        }
        if unknown {
            kept = held.difference(&defined).cloned().collect();
        }
        kept.sort();
        kept.dedup();
        let change = if whole || !self.read {
            Reread::Reset {
                objects: fresh,
                keep: kept.clone(),
            }
        } else {
            let keep: HashSet<&ObjectKey> = kept.iter().collect();
            let mut delete: Vec<ObjectKey> = held
                .iter()
                .filter(|k| !defined.contains(*k) && !keep.contains(k))
                .cloned()
                .collect();
            delete.sort();
            Reread::Update {
                apply: fresh,
                delete,
            }
        };
        let documents = docs.len();
        // Kept for the file's life: no spare room (a `Vec` grown by `push` keeps up to twice).
        docs.shrink_to_fit();
        self.docs = docs;
        self.kept = kept;
        self.read = true;
        Some(Outcome {
            change,
            warnings,
            errors,
            documents,
            parsed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, ip: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  clusterIP: {ip}\n  ports: [{{port: 80}}]\n"
        )
    }

    fn file(docs: &[String]) -> String {
        docs.join("---\n")
    }

    fn names(objects: &[Object]) -> Vec<String> {
        objects.iter().map(|o| o.key().name.to_string()).collect()
    }

    fn keys(keys: &[ObjectKey]) -> Vec<String> {
        keys.iter().map(|k| k.name.to_string()).collect()
    }

    /// (case, second text as (name, ip) documents or a raw document, want applied, want
    /// deleted, want kept, want parsed, want errors)
    #[test]
    fn a_reread_applies_only_what_changed() {
        let base = vec![
            svc("a", "10.0.0.1"),
            svc("b", "10.0.0.2"),
            svc("c", "10.0.0.3"),
        ];
        let bad_b =
            "apiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec:\n  clusterIP: 10.0.0.300\n"
                .to_string();
        let syntax = "apiVersion: v1\nkind: Service\nmetadata: [\n".to_string();
        type Case<'a> = (
            &'a str,
            Vec<String>,
            &'a [&'a str],
            &'a [&'a str],
            &'a [&'a str],
            usize,
            usize,
        );
        let cases: Vec<Case> = vec![
            ("unchanged", base.clone(), &[], &[], &[], 0, 0),
            (
                "one document edited",
                vec![base[0].clone(), svc("b", "10.0.0.9"), base[2].clone()],
                &["b"],
                &[],
                &[],
                1,
                0,
            ),
            (
                "one document removed",
                vec![base[0].clone(), base[2].clone()],
                &[],
                &["b"],
                &[],
                0,
                0,
            ),
            (
                "documents reordered",
                vec![base[2].clone(), base[0].clone(), base[1].clone()],
                &[],
                &[],
                &[],
                0,
                0,
            ),
            (
                "one document added",
                vec![
                    base[0].clone(),
                    base[1].clone(),
                    base[2].clone(),
                    svc("d", "10.0.0.4"),
                ],
                &["d"],
                &[],
                &[],
                1,
                0,
            ),
            (
                "one document invalid keeps its last good version",
                vec![base[0].clone(), bad_b.clone(), svc("c", "10.0.0.7")],
                &["c"],
                &[],
                &["b"],
                2,
                1,
            ),
            (
                "an unidentifiable document keeps what would go",
                vec![svc("a", "10.0.0.8"), syntax.clone()],
                &["a"],
                &[],
                &["b", "c"],
                2,
                1,
            ),
            (
                "a comment added re-reads that document only",
                vec![
                    format!("# hello\n{}", base[0]),
                    base[1].clone(),
                    base[2].clone(),
                ],
                &["a"],
                &[],
                &[],
                1,
                0,
            ),
        ];
        let path = Path::new("f.yaml");
        for (case, second, apply, delete, kept, parsed, errors) in cases {
            let mut docs = FileDocs::default();
            let first = docs.update(path, &file(&base));
            let Reread::Reset { objects, keep } = first.change else {
                panic!("{case}: a first read replaces the file")
            };
            assert_eq!(names(&objects), ["a", "b", "c"], "{case}");
            assert!(keep.is_empty(), "{case}");
            let out = docs.update(path, &file(&second));
            let Reread::Update {
                apply: a,
                delete: d,
            } = &out.change
            else {
                panic!("{case}: {:?}", out.change)
            };
            assert_eq!(names(a), apply, "{case}: applied");
            assert_eq!(keys(d), delete, "{case}: deleted");
            assert_eq!(keys(&docs.kept), kept, "{case}: kept");
            assert_eq!(out.parsed, parsed, "{case}: parsed");
            assert_eq!(out.errors.len(), errors, "{case}: errors");
        }
    }

    #[test]
    fn a_fixed_document_replaces_its_kept_version_and_errors_follow_their_lines() {
        let path = Path::new("f.yaml");
        let bad =
            "apiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec:\n  clusterIP: 10.0.0.300\n";
        let mut docs = FileDocs::default();
        docs.update(path, &file(&[svc("a", "10.0.0.1"), svc("b", "10.0.0.2")]));
        let out = docs.update(path, &file(&[svc("a", "10.0.0.1"), bad.into()]));
        assert_eq!(out.errors[0].line, Some(12), "{}", out.errors[0]);
        // A line added above the rejected document moves its report, without parsing it.
        let out = docs.update(
            path,
            &file(&[format!("# x\n{}", svc("a", "10.0.0.1")), bad.into()]),
        );
        assert_eq!(out.errors[0].line, Some(13), "{}", out.errors[0]);
        assert_eq!(keys(&docs.kept), ["b"]);
        let out = docs.update(path, &file(&[svc("a", "10.0.0.1"), svc("b", "10.0.0.5")]));
        let Reread::Update { apply, delete } = out.change else {
            panic!()
        };
        assert_eq!(names(&apply), ["a", "b"]);
        assert!(delete.is_empty() && docs.kept.is_empty() && out.errors.is_empty());
    }

    #[test]
    fn an_object_defined_twice_rereads_the_file_whole() {
        let path = Path::new("f.yaml");
        let mut docs = FileDocs::default();
        docs.update(path, &file(&[svc("a", "10.0.0.1"), svc("a", "10.0.0.2")]));
        let out = docs.update(path, &file(&[svc("a", "10.0.0.1"), svc("a", "10.0.0.3")]));
        let Reread::Reset { objects, .. } = out.change else {
            panic!("{:?}", out.change)
        };
        assert_eq!(objects.len(), 2);
        assert_eq!(out.parsed, 2);
    }
}
