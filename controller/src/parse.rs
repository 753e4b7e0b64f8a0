//! Reading manifest files: multi-document YAML (or JSON) of the same objects a cluster holds.
//!
//! Accepted shapes, per document:
//! - `v1 Service`, `discovery.k8s.io/v1 EndpointSlice`, `networking.k8s.io/v1 Ingress`,
//!   `gateway.networking.k8s.io/v1` (or `v1beta1`) `HTTPRoute`, `Gateway`, `GatewayClass`;
//! - `v1 Secret` of type `kubernetes.io/tls` (other Secrets are skipped unread);
//! - `v1 List` (as `kubectl get -o yaml` prints) holding any of those;
//! - anything else is skipped with a debug log (Deployments next to Services are normal).
//!
//! Documents are read one at a time ([`documents`], [`read_document`]): the directory source
//! keeps what each document gave and re-reads only documents whose text changed
//! (`filedocs.rs`), and a rejected document says which object it was meant to be ([`Meant`]),
//! so its last good version can stay. [`read_manifest`] reads a file all or nothing (any
//! error rejects it), for `switchboard check`. Errors carry the path, the line and column in the
//! file (a document's positions are shifted by its first line), the object (for a document that
//! does not parse, as far as the lines before the mistake say), and the field path once.
//! Conversion errors name only a field; `locate.rs` finds it in the text.
//!
//! A document of a served k8s-openapi kind is read straight into its type when its
//! `apiVersion:` and `kind:` lines say which (`parse/direct.rs`, the common case and the
//! start-up's cost); anything else, and a document that does not read that way, goes through
//! a `serde_yaml::Value` first, which also words the errors.

// A rejected file is rare and reported once; boxing its error would only add noise.
#![allow(clippy::result_large_err)]

use std::cell::RefCell;
use std::fmt;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use tables::model as m;

use crate::convert::{convert, ApiObject};

mod direct;
use direct::read_direct;

/// Why a file was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    pub path: String,
    /// 1-based line and column, where known.
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// `Service default/web`, where known.
    pub object: Option<String>,
    /// `spec.ports[0].port`, where known.
    pub field: Option<String>,
    pub message: String,
    /// `parse` (not YAML/JSON, or wrong types) or `validation` (well-formed but invalid); for a
    /// warning (`Manifest::warnings`), `warning`.
    pub reason: &'static str,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path)?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
            if let Some(c) = self.column {
                write!(f, ":{c}")?;
            }
        }
        if let Some(o) = &self.object {
            write!(f, ": {o}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ManifestError {}

impl ManifestError {
    /// The same report for the same document moved by `delta` lines in its file (a document
    /// read before, now below or above where it was).
    pub fn shift(&mut self, delta: isize) {
        if delta == 0 {
            return;
        }
        self.line = self.line.map(|l| l.saturating_add_signed(delta));
        self.message = shift_lines(&self.message, delta);
    }
}

/// What a document says it is: the first thing read of it.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Head {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    metadata: HeadMeta,
}

#[derive(Deserialize, Default)]
struct HeadMeta {
    name: Option<String>,
    namespace: Option<String>,
}

/// The documents of a manifest file, each with the line it starts on (1-based): `---`-separated
/// YAML documents, or a JSON file (`.json`) whole.
pub fn documents<'a>(path: &Path, text: &'a str) -> Vec<(usize, &'a str)> {
    if is_json(path) {
        vec![(1, text)]
    } else {
        split_documents(text)
    }
}

fn is_json(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "json")
}

/// One YAML document and the line it starts on (1-based). A separator is a line that is
/// `---`, or `---` and a space or tab and more (`--- # comment`, `--- !tag`), trailing
/// whitespace allowed. Only lines starting `---` are looked at (`memchr`'s substring search),
/// and lines are counted only up to each separator: a re-read file is split again on every
/// change, so this costs 0.12 ms for a 1.4 MB file of 1,000 documents, where a line-by-line
/// scan took 1.2-1.4 ms.
fn split_documents(text: &str) -> Vec<(usize, &str)> {
    let bytes = text.as_bytes();
    let finder = memchr::memmem::Finder::new(b"\n---");
    let mut docs = Vec::new();
    // The document being read: where it starts, and its first line.
    let (mut start, mut start_line) = (0usize, 1usize);
    // The line that byte `counted` is on.
    let (mut counted, mut line) = (0usize, 1usize);
    // Where to look for the next line that starts with `---` (from a newline).
    let mut from = 0usize;
    loop {
        let at = if from == 0 && text.starts_with("---") {
            0
        } else {
            match finder.find(&bytes[from..]) {
                Some(i) => from + i + 1,
                None => break,
            }
        };
        let end = memchr::memchr(b'\n', &bytes[at..]).map_or(text.len(), |i| at + i + 1);
        // The next separator may be the very next line: look again from this line's newline.
        from = end - 1;
        if !is_separator(&text[at..end]) {
            continue;
        }
        line += memchr::memchr_iter(b'\n', &bytes[counted..at]).count();
        counted = at;
        docs.push((start_line, &text[start..at]));
        start = end;
        start_line = line + 1;
    }
    docs.push((start_line, &text[start..]));
    docs
}

/// Whether `line` (with its newline) separates two documents.
fn is_separator(line: &str) -> bool {
    let l = line.trim_end();
    l == "---" || l.starts_with("--- ") || l.starts_with("---\t")
}

/// One document's text. A YAML document also holds its `Value`, parsed once: the head and the
/// object are read from it (one pass of the YAML parser instead of one per read); only when that
/// fails is the text parsed again, for the position of the error.
enum Doc<'a> {
    Yaml(&'a str, RefCell<Option<serde_yaml::Value>>),
    Json(&'a str),
}

impl Doc<'_> {
    /// The document's head, from its `Value` when there is one.
    fn head(&self) -> Result<Head, TypedErr> {
        if let Doc::Yaml(_, value) = self {
            let head = value.borrow().as_ref().map(Head::deserialize);
            if let Some(Ok(head)) = head {
                return Ok(head);
            }
        }
        self.typed()
    }

    /// Deserializes with the field path and position of any error: from the document's `Value`
    /// (taken: an object is read once), or from the text when that fails.
    fn typed<T: DeserializeOwned>(&self) -> Result<T, TypedErr> {
        if let Doc::Yaml(_, value) = self {
            if let Some(v) = value.borrow_mut().take() {
                if let Ok(t) = T::deserialize(v) {
                    return Ok(t);
                }
            }
        }
        match self {
            Doc::Yaml(text, _) => {
                let de = serde_yaml::Deserializer::from_str(text);
                serde_path_to_error::deserialize(de).map_err(|e| {
                    let path = e.path().to_string();
                    let inner = e.into_inner();
                    let loc = inner.location().map(|l| (l.line(), l.column()));
                    let message = strip_location(&inner.to_string());
                    // serde_yaml starts its message with the path too: say it once.
                    let message = match message.strip_prefix(&format!("{path}: ")) {
                        Some(m) => m.to_string(),
                        None => message,
                    };
                    (Some(path).filter(|p| p != "."), loc, message)
                })
            }
            Doc::Json(text) => {
                let mut de = serde_json::Deserializer::from_str(text);
                serde_path_to_error::deserialize(&mut de).map_err(|e| {
                    let path = e.path().to_string();
                    let inner = e.into_inner();
                    let loc = (inner.line() > 0).then(|| (inner.line(), inner.column()));
                    (
                        Some(path).filter(|p| p != "."),
                        loc,
                        strip_location(&inner.to_string()),
                    )
                })
            }
        }
    }
}

/// serde_yaml/serde_json put the error's position in the message ("... at line 3 column 5");
/// it is reported separately, so it goes. A position of context stays ("found unexpected end of
/// stream, while scanning a quoted scalar at line 2 column 9": where the unclosed quote opened),
/// still counted from the document's first line (see [`shift_lines`]).
fn strip_location(msg: &str) -> String {
    const AT: &str = " at line ";
    let Some(i) = msg.find(AT) else {
        return msg.to_string();
    };
    let rest = msg[i + AT.len()..].trim_start_matches(|c: char| c.is_ascii_digit());
    let rest = match rest.strip_prefix(" column ") {
        Some(r) => r.trim_start_matches(|c: char| c.is_ascii_digit()),
        None => rest,
    };
    format!("{}{rest}", &msg[..i])
}

/// Adds `by` to every "line N" of `msg`: a document's line numbers made the file's.
fn shift_lines(msg: &str, by: isize) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(i) = rest.find("line ") {
        let (before, after) = rest.split_at(i + "line ".len());
        out.push_str(before);
        let digits = after.len() - after.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        match after[..digits].parse::<usize>() {
            Ok(n) => out.push_str(&n.saturating_add_signed(by).to_string()),
            Err(_) => out.push_str(&after[..digits]),
        }
        rest = &after[digits..];
    }
    out.push_str(rest);
    out
}

/// Parses one manifest file into typed API objects (each already validated by conversion).
/// `path` decides YAML vs JSON (`.json`) and names the file in errors.
pub fn parse_manifest(path: &Path, text: &str) -> Result<Vec<ApiObject>, ManifestError> {
    Ok(parse_and_convert(path, text)?
        .0
        .into_iter()
        .map(|(a, _)| a)
        .collect())
}

/// Parses and converts one manifest file into table objects.
pub fn load_manifest(path: &Path, text: &str) -> Result<Vec<m::Object>, ManifestError> {
    Ok(read_manifest(path, text)?.objects)
}

/// A manifest file that parsed and converted.
#[derive(Debug)]
pub struct Manifest {
    pub objects: Vec<m::Object>,
    /// What is not served as it reads (`convert::warnings`), located like errors, with
    /// `reason` `warning`.
    pub warnings: Vec<ManifestError>,
}

/// Parses and converts one manifest file, with its warnings: what the directory source and
/// `switchboard check` read.
pub fn read_manifest(path: &Path, text: &str) -> Result<Manifest, ManifestError> {
    let (objects, warnings) = parse_and_convert(path, text)?;
    Ok(Manifest {
        objects: objects.into_iter().map(|(_, o)| o).collect(),
        warnings,
    })
}

type Converted = (Vec<(ApiObject, m::Object)>, Vec<ManifestError>);

fn parse_and_convert(path: &Path, text: &str) -> Result<Converted, ManifestError> {
    let mut out = Vec::new();
    let mut warnings = Vec::new();
    for (first_line, doc) in documents(path, text) {
        let read = read_document(path, first_line, doc).map_err(|e| e.error)?;
        out.extend(read.objects);
        warnings.extend(read.warnings);
    }
    Ok((out, warnings))
}

/// What one document gave: its objects (typed and converted) and warnings.
#[derive(Debug, Default)]
pub struct DocRead {
    pub objects: Vec<(ApiObject, m::Object)>,
    pub warnings: Vec<ManifestError>,
}

/// A rejected document: the report, and the object it was meant to be.
#[derive(Debug)]
pub struct DocError {
    pub error: ManifestError,
    pub meant: Meant,
}

/// Which object a rejected document was meant to be, as far as its text says (its head, or
/// the lines before a syntax error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Meant {
    /// An object of a kind this reader serves.
    Object(m::ObjectKey),
    /// Nothing this reader serves (a Deployment, a Secret of another type).
    Nothing,
    /// It cannot be told (no kind or name readable, a `List`).
    Unknown,
}

impl Meant {
    fn of(head: Option<&Head>) -> Meant {
        let Some(head) = head.filter(|h| !h.kind.is_empty()) else {
            return Meant::Unknown;
        };
        if head.kind.ends_with("List") {
            return Meant::Unknown;
        }
        let Some(kind) = m::Kind::ALL.into_iter().find(|k| k.as_str() == head.kind) else {
            return Meant::Nothing;
        };
        let Some(name) = head.metadata.name.as_deref().filter(|n| !n.is_empty()) else {
            return Meant::Unknown;
        };
        let namespace = match kind {
            m::Kind::GatewayClass | m::Kind::Namespace => "",
            _ => head
                .metadata
                .namespace
                .as_deref()
                .filter(|n| !n.is_empty())
                .unwrap_or("default"),
        };
        Meant::Object(m::ObjectKey::new(kind, namespace, name))
    }
}

/// Whether a YAML document holds nothing: only blank lines, comments, directives or an end
/// marker. Anything else is parsed (a document of just `null` or `~` is found empty then).
fn looks_empty(text: &str) -> bool {
    text.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#') || l.starts_with('%') || l == "..."
    })
}

/// Parses and converts one document of the file `path`, which starts on line `first_line` of
/// it. Positions in the results are the file's.
pub fn read_document(path: &Path, first_line: usize, text: &str) -> Result<DocRead, DocError> {
    let place = Place::new(path, first_line, text);
    let doc = if is_json(path) {
        Doc::Json(text)
    } else if looks_empty(text) {
        // Empty documents (comments only, trailing `---`) are fine.
        return Ok(DocRead::default());
    } else if let Some((head, item)) = read_direct(text) {
        // The common case, read once straight into its type; what does not read that way
        // goes the long way below, which words its errors.
        return place.convert_items(&head, vec![(String::new(), item)]);
    } else {
        match serde_yaml::from_str::<serde_yaml::Value>(text) {
            // A document of just `~` or `null` is empty too.
            Ok(serde_yaml::Value::Null) => return Ok(DocRead::default()),
            Ok(value) => Doc::Yaml(text, RefCell::new(Some(value))),
            // Parsed again below, for the error's position and the object it was meant to be.
            Err(_) => Doc::Yaml(text, RefCell::new(None)),
        }
    };
    let head: Head = match doc.head() {
        Ok(head) => head,
        Err((field, loc, msg)) => {
            let before = head_before(&doc, loc, &msg);
            return Err(DocError {
                meant: Meant::of(before.as_ref()),
                error: place.fail(before.as_ref().map(describe), field, loc, msg, "parse"),
            });
        }
    };
    let reject = |error: ManifestError| DocError {
        error,
        meant: Meant::of(Some(&head)),
    };
    if head.kind.is_empty() || head.api_version.is_empty() {
        return Err(reject(place.fail(
            None,
            None,
            None,
            "apiVersion and kind are required".into(),
            "parse",
        )));
    }
    let object = describe(&head);
    // Each object with the path of its place in the document ("" or "items[N].").
    let items: Vec<(String, ApiObject)> = if head.kind == "List" || head.kind.ends_with("List") {
        #[derive(Deserialize)]
        struct List {
            #[serde(default)]
            items: Vec<serde_json::Value>,
        }
        let list: List = doc.typed().map_err(|(field, loc, msg)| {
            reject(place.fail(Some(object.clone()), field, loc, msg, "parse"))
        })?;
        let mut items = Vec::new();
        for (i, item) in list.items.into_iter().enumerate() {
            let ih: Head = serde_json::from_value(item.clone()).unwrap_or_default();
            match typed_from_value(&ih.api_version, &ih.kind, item) {
                Ok(Some(o)) => items.push((format!("items[{i}]."), o)),
                Ok(None) => {
                    tracing::debug!(path = %place.shown, kind = %ih.kind, "skipping unsupported kind in list")
                }
                Err((field, msg)) => {
                    let field = match field {
                        Some(f) => format!("items[{i}].{f}"),
                        None => format!("items[{i}]"),
                    };
                    let loc = place.at(&field);
                    return Err(reject(place.fail(
                        Some(describe(&ih)),
                        Some(field),
                        loc,
                        msg,
                        "parse",
                    )));
                }
            }
        }
        items
    } else {
        match typed_doc(&head.api_version, &head.kind, &doc) {
            Ok(Some(o)) => vec![(String::new(), o)],
            Ok(None) => {
                tracing::debug!(path = %place.shown, api_version = %head.api_version, kind = %head.kind, "skipping unsupported kind");
                vec![]
            }
            Err((field, loc, msg)) => {
                return Err(reject(place.fail(Some(object), field, loc, msg, "parse")))
            }
        }
    };
    place.convert_items(&head, items)
}

/// Where a document lies: its file (as shown in reports), the line it starts on and its text.
struct Place<'a> {
    shown: String,
    first_line: usize,
    text: &'a str,
}

impl<'a> Place<'a> {
    fn new(path: &Path, first_line: usize, text: &'a str) -> Self {
        Place {
            shown: path.display().to_string(),
            first_line,
            text,
        }
    }

    /// A report at `loc` in the document (its first line when not known), made the file's.
    fn fail(
        &self,
        object: Option<String>,
        field: Option<String>,
        loc: Option<(usize, usize)>,
        message: String,
        reason: &'static str,
    ) -> ManifestError {
        let first_line = self.first_line;
        ManifestError {
            path: self.shown.clone(),
            line: Some(loc.map_or(first_line, |(l, _)| l + first_line - 1)),
            column: loc.map(|(_, c)| c),
            object,
            field,
            message: shift_lines(&message, first_line as isize - 1),
            reason,
        }
    }

    /// Where a field of this document is, for errors found after parsing.
    fn at(&self, field: &str) -> Option<(usize, usize)> {
        crate::locate::locate(self.text, field)
    }

    /// Converts the document's typed objects (each with the path of its place in the document,
    /// "" or "items[N]."), so that a bad object rejects its document instead of vanishing later.
    fn convert_items(
        &self,
        head: &Head,
        items: Vec<(String, ApiObject)>,
    ) -> Result<DocRead, DocError> {
        let mut out = DocRead::default();
        for (place, item) in items {
            match convert(&item, "default") {
                Ok(obj) => {
                    for w in crate::convert::warnings(&item) {
                        let field = format!("{place}{}", w.field);
                        let loc = self.at(&field);
                        let label = api_object_label(&item);
                        out.warnings.push(self.fail(
                            Some(label),
                            Some(field),
                            loc,
                            w.message,
                            "warning",
                        ));
                    }
                    out.objects.push((item, obj))
                }
                Err(e) => {
                    let field = format!("{place}{}", e.field);
                    let loc = self.at(&field);
                    return Err(DocError {
                        meant: Meant::of(Some(head)),
                        error: self.fail(
                            Some(api_object_label(&item)),
                            Some(field),
                            loc,
                            e.message,
                            "validation",
                        ),
                    });
                }
            }
        }
        Ok(out)
    }
}

type TypedErr = (Option<String>, Option<(usize, usize)>, String);

/// `Service shop/web`: what a document's head says it is.
fn describe(head: &Head) -> String {
    label(
        &head.kind,
        head.metadata.namespace.as_deref(),
        head.metadata.name.as_deref(),
    )
}

/// `Kind namespace/name`, `Kind name` without a namespace, `(unnamed)` for the name it lacks.
fn label(kind: &str, namespace: Option<&str>, name: Option<&str>) -> String {
    let namespace = namespace
        .filter(|n| !n.is_empty())
        .map(|n| format!("{n}/"))
        .unwrap_or_default();
    let name = name.filter(|n| !n.is_empty()).unwrap_or("(unnamed)");
    format!("{kind} {namespace}{name}")
}

/// The head of a YAML document that does not parse, read from the lines before the error at
/// `loc` or before a line its `message` names (a syntax error in `spec` leaves `kind` and
/// `metadata` readable; an unclosed quote is named by the line it opened on).
fn head_before(doc: &Doc, loc: Option<(usize, usize)>, message: &str) -> Option<Head> {
    let Doc::Yaml(text, _) = doc else {
        return None;
    };
    let named = message.split("line ").skip(1).filter_map(|rest| {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        rest[..digits].parse::<usize>().ok()
    });
    loc.map(|(line, _)| line)
        .into_iter()
        .chain(named)
        .find_map(|line| {
            let before: String = text
                .split_inclusive('\n')
                .take(line.saturating_sub(1))
                .collect();
            let head: Head = serde_yaml::from_str(&before).ok()?;
            (!head.kind.is_empty()).then_some(head)
        })
}

fn typed_doc(api_version: &str, kind: &str, doc: &Doc) -> Result<Option<ApiObject>, TypedErr> {
    Ok(Some(match (api_version, kind) {
        ("v1", "Service") => ApiObject::Service(Box::new(doc.typed()?)),
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            ApiObject::EndpointSlice(Box::new(doc.typed()?))
        }
        ("networking.k8s.io/v1", "Ingress") => ApiObject::Ingress(Box::new(doc.typed()?)),
        ("v1", "Namespace") => ApiObject::Namespace(Box::new(doc.typed()?)),
        ("v1", "Secret") => {
            let secret: k8s_openapi::api::core::v1::Secret = doc.typed()?;
            if !crate::convert::is_tls_secret(&secret) {
                return Ok(None);
            }
            ApiObject::Secret(Box::new(secret))
        }
        (v, k) if is_gateway_version(v) => match k {
            "HTTPRoute" => ApiObject::HttpRoute(Box::new(doc.typed()?)),
            "Gateway" => ApiObject::Gateway(Box::new(doc.typed()?)),
            "GatewayClass" => ApiObject::GatewayClass(Box::new(doc.typed()?)),
            "ReferenceGrant" => ApiObject::ReferenceGrant(Box::new(doc.typed()?)),
            _ => return Ok(None),
        },
        _ => return Ok(None),
    }))
}

fn typed_from_value(
    api_version: &str,
    kind: &str,
    v: serde_json::Value,
) -> Result<Option<ApiObject>, (Option<String>, String)> {
    fn de<T: DeserializeOwned>(v: serde_json::Value) -> Result<T, (Option<String>, String)> {
        serde_path_to_error::deserialize(v)
            .map_err(|e| (Some(e.path().to_string()), e.into_inner().to_string()))
    }
    Ok(Some(match (api_version, kind) {
        ("v1", "Service") => ApiObject::Service(Box::new(de(v)?)),
        ("discovery.k8s.io/v1", "EndpointSlice") => ApiObject::EndpointSlice(Box::new(de(v)?)),
        ("networking.k8s.io/v1", "Ingress") => ApiObject::Ingress(Box::new(de(v)?)),
        ("v1", "Namespace") => ApiObject::Namespace(Box::new(de(v)?)),
        ("v1", "Secret") => {
            let secret: k8s_openapi::api::core::v1::Secret = de(v)?;
            if !crate::convert::is_tls_secret(&secret) {
                return Ok(None);
            }
            ApiObject::Secret(Box::new(secret))
        }
        (av, k) if is_gateway_version(av) => match k {
            "HTTPRoute" => ApiObject::HttpRoute(Box::new(de(v)?)),
            "Gateway" => ApiObject::Gateway(Box::new(de(v)?)),
            "GatewayClass" => ApiObject::GatewayClass(Box::new(de(v)?)),
            "ReferenceGrant" => ApiObject::ReferenceGrant(Box::new(de(v)?)),
            _ => return Ok(None),
        },
        _ => return Ok(None),
    }))
}

fn is_gateway_version(v: &str) -> bool {
    v == "gateway.networking.k8s.io/v1" || v == "gateway.networking.k8s.io/v1beta1"
}

fn api_object_kind(o: &ApiObject) -> &'static str {
    match o {
        ApiObject::Service(_) => "Service",
        ApiObject::EndpointSlice(_) => "EndpointSlice",
        ApiObject::Ingress(_) => "Ingress",
        ApiObject::HttpRoute(_) => "HTTPRoute",
        ApiObject::Gateway(_) => "Gateway",
        ApiObject::GatewayClass(_) => "GatewayClass",
        ApiObject::Secret(_) => "Secret",
        ApiObject::ReferenceGrant(_) => "ReferenceGrant",
        ApiObject::Namespace(_) => "Namespace",
    }
}

/// `Kind namespace/name` of a typed object.
fn api_object_label(o: &ApiObject) -> String {
    let m = o.metadata();
    label(
        api_object_kind(o),
        m.namespace.as_deref(),
        m.name.as_deref(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<ApiObject>, ManifestError> {
        parse_manifest(Path::new("x.yaml"), text)
    }

    /// (text, documents with their first lines)
    #[test]
    fn documents_split_at_separator_lines() {
        let cases: &[(&str, &[(usize, &str)])] = &[
            ("", &[(1, "")]),
            ("a: 1\n", &[(1, "a: 1\n")]),
            ("---", &[(1, ""), (2, "")]),
            ("---\na: 1\n", &[(1, ""), (2, "a: 1\n")]),
            ("a\n---\nb", &[(1, "a\n"), (3, "b")]),
            ("a\n---", &[(1, "a\n"), (3, "")]),
            ("a\n---  \n", &[(1, "a\n"), (3, "")]),
            ("\n---\n---\n", &[(1, "\n"), (3, ""), (4, "")]),
            (
                "a\n--- # x\nb\n---\t!t\nc\n---\r\nd\n",
                &[(1, "a\n"), (3, "b\n"), (5, "c\n"), (7, "d\n")],
            ),
            // Not separators: more dashes, text right after, indented.
            ("a\n----\n---x\n ---\nb", &[(1, "a\n----\n---x\n ---\nb")]),
            ("----\n---\nx", &[(1, "----\n"), (3, "x")]),
        ];
        for (text, want) in cases {
            assert_eq!(split_documents(text), *want, "{text:?}");
        }
    }

    #[test]
    fn multi_document_with_unknown_kinds_and_empty_docs() {
        let objs = parse(
            "# comment\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  clusterIP: 10.0.0.1\n  ports: [{port: 80}]\n---\n",
        )
        .unwrap();
        assert_eq!(objs.len(), 1);
    }

    #[test]
    fn type_error_has_line_column_field_and_object() {
        let e = parse(
            "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\nspec:\n  ports:\n  - port: eighty\n",
        )
        .unwrap_err();
        assert_eq!(e.line, Some(12), "{e}");
        assert_eq!(e.field.as_deref(), Some("spec.ports[0].port"), "{e}");
        assert_eq!(e.object.as_deref(), Some("Service shop/web"));
        assert_eq!(e.reason, "parse");
        assert!(e.to_string().starts_with("x.yaml:12:"), "{e}");
    }

    #[test]
    fn syntax_error_has_position() {
        let e = parse("apiVersion: v1\nkind: Service\nmetadata: {name: [\n").unwrap_err();
        assert_eq!(e.reason, "parse");
        assert!(e.line.is_some(), "{e}");
    }

    #[test]
    fn validation_error_names_field() {
        let e = parse("apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  clusterIP: 10.0.0.300\n").unwrap_err();
        assert_eq!(e.reason, "validation");
        assert_eq!(e.field.as_deref(), Some("spec.clusterIP"));
        assert!(e.message.contains("10.0.0.300"), "{e}");
    }

    #[test]
    fn json_and_lists() {
        let objs = parse_manifest(
            Path::new("l.json"),
            r#"{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"Service","metadata":{"name":"a"},"spec":{"clusterIP":"10.0.0.1"}},{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"}}]}"#,
        )
        .unwrap();
        assert_eq!(objs.len(), 1);
        let e = parse_manifest(
            Path::new("l.json"),
            "{\"apiVersion\": \"v1\",\n \"kind\": 5}",
        )
        .unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
    }
}
