//! The short way to read a manifest document: its `apiVersion:` and `kind:` lines say which
//! type it is, and it is deserialized straight into that type, once.
//!
//! The long way (`parse.rs`) parses every document to a `serde_yaml::Value` first, to read its
//! head, and then deserializes the object from that value: at 10,000 Services and 100,000
//! endpoints in files, building the values and reading the objects from them was about a fifth
//! of the start-up's CPU (the YAML scan itself, which both ways share, about a third).
//! Here the head comes from a scan of the text's lines: a block-style document's top-level keys
//! start their lines (`kind: Service`). The scan is only a guess of which type to try; the
//! types tried here (k8s-openapi's) reject any other `apiVersion` or `kind` value while they
//! are read, so a wrong guess fails and the document goes the long way. So does anything
//! that does not read this way (a syntax error, a wrong type, a Gateway API kind, a `List`,
//! a Secret of another type): the long way reads it as before and words its error with the
//! field path and position. What reads here reads the same there (both are serde_yaml on
//! the same text; the long way falls back to the text when its value does not deserialize).

use serde::de::DeserializeOwned;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{Head, HeadMeta};
use crate::convert::ApiObject;

/// The document `text` read straight into its type, with its head; `None` when it does not
/// read that way (the caller then reads it the long way).
pub(crate) fn read_direct(text: &str) -> Option<(Head, ApiObject)> {
    let (api_version, kind) = head_lines(text)?;
    fn read<T: DeserializeOwned>(text: &str) -> Option<Box<T>> {
        serde_yaml::from_str(text).ok()
    }
    let object = match (api_version, kind) {
        ("v1", "Service") => ApiObject::Service(read(text)?),
        ("discovery.k8s.io/v1", "EndpointSlice") => ApiObject::EndpointSlice(read(text)?),
        ("networking.k8s.io/v1", "Ingress") => ApiObject::Ingress(read(text)?),
        ("v1", "Namespace") => ApiObject::Namespace(read(text)?),
        ("v1", "Secret") => {
            let secret = read::<core::Secret>(text)?;
            // Other Secrets are skipped, with the long way's log line.
            if !crate::convert::is_tls_secret(&secret) {
                return None;
            }
            ApiObject::Secret(secret)
        }
        _ => return None,
    };
    Some(with_head(api_version, kind, object))
}

/// The head of `object`, read as `api_version` `kind`.
fn with_head(api_version: &str, kind: &str, object: ApiObject) -> (Head, ApiObject) {
    let meta = object.metadata();
    (head(api_version, kind, meta), object)
}

fn head(api_version: &str, kind: &str, meta: &ObjectMeta) -> Head {
    Head {
        api_version: api_version.to_string(),
        kind: kind.to_string(),
        metadata: HeadMeta {
            name: meta.name.clone(),
            namespace: meta.namespace.clone(),
        },
    }
}

/// `apiVersion` and `kind` as the document's lines that start with them say (`kind: Service`,
/// quoted or not, a comment after it allowed), when each value is one plain word; `None`
/// otherwise (a flow-style document, a value on the next line, a key missing).
fn head_lines(text: &str) -> Option<(&str, &str)> {
    let (mut api_version, mut kind) = (None, None);
    for line in text.lines() {
        let (slot, value) = if let Some(v) = line.strip_prefix("apiVersion:") {
            (&mut api_version, v)
        } else if let Some(v) = line.strip_prefix("kind:") {
            (&mut kind, v)
        } else {
            continue;
        };
        if slot.is_some() {
            return None;
        }
        *slot = Some(word(value)?);
        if let (Some(a), Some(k)) = (api_version, kind) {
            return Some((a, k));
        }
    }
    None
}

/// The value of a `key: value` line as one word (letters, digits, `.`, `/`, `-`), without
/// quotes or a trailing comment.
fn word(value: &str) -> Option<&str> {
    if !value.is_empty() && !value.starts_with([' ', '\t']) {
        return None;
    }
    let v = value.trim_start_matches([' ', '\t']);
    let v = match v.find(" #").or_else(|| v.find("\t#")) {
        Some(i) => &v[..i],
        None => v,
    };
    let v = v.trim_end();
    let v = ['"', '\'']
        .iter()
        .find_map(|q| v.strip_prefix(*q)?.strip_suffix(*q))
        .unwrap_or(v);
    let plain = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'/' | b'-');
    (!v.is_empty() && v.bytes().all(plain)).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_lines_read_plain_words_only() {
        let cases: &[(&str, Option<(&str, &str)>)] = &[
            ("apiVersion: v1\nkind: Service\n", Some(("v1", "Service"))),
            (
                "kind: 'EndpointSlice' # a comment\nmetadata: {}\napiVersion: \"discovery.k8s.io/v1\"\n",
                Some(("discovery.k8s.io/v1", "EndpointSlice")),
            ),
            ("apiVersion: v1\r\nkind: Service\r\n", Some(("v1", "Service"))),
            // Not one plain word, or not on its line: the long way decides.
            ("apiVersion: v1\nkind:\n  Service\n", None),
            ("apiVersion: v1\nkind: Service, x\n", None),
            ("{apiVersion: v1, kind: Service}\n", None),
            ("apiVersion: v1\n  kind: Service\n", None),
            ("apiVersion: v1\nkind: \"Serv\\u0069ce\"\n", None),
            ("apiVersion: v1\napiVersion: v2\nkind: Service\n", None),
            ("apiVersion: v1\nkinds: Service\n", None),
        ];
        for (text, want) in cases {
            assert_eq!(head_lines(text), *want, "{text:?}");
        }
    }

    /// (case, document, read the short way): what the short way takes reads as the long way
    /// reads it, and what it leaves, the long way reports.
    #[test]
    fn only_what_reads_whole_is_taken() {
        let cases: &[(&str, &str, bool)] = &[
            (
                "a Service",
                "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {clusterIP: 10.0.0.1}\n",
                true,
            ),
            (
                "a kind line that is not the object's",
                "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nkind: Deployment\n",
                false,
            ),
            (
                "another apiVersion",
                "apiVersion: v2\nkind: Service\nmetadata: {name: web}\n",
                false,
            ),
            (
                "a wrong type",
                "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: x}]}\n",
                false,
            ),
            (
                "a syntax error",
                "apiVersion: v1\nkind: Service\nmetadata: {name: [\n",
                false,
            ),
            (
                "a Secret of another type",
                "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ntype: Opaque\n",
                false,
            ),
            (
                "a Gateway API kind",
                "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: g}\n",
                false,
            ),
        ];
        for (case, text, want) in cases {
            let got = read_direct(text);
            assert_eq!(got.is_some(), *want, "{case}");
            if let Some((head, _)) = got {
                assert_eq!(head.kind, "Service", "{case}");
                assert_eq!(head.metadata.name.as_deref(), Some("web"), "{case}");
            }
        }
    }
}
