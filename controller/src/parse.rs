//! Reading manifest files: multi-document YAML (or JSON) of the same objects a cluster holds.
//!
//! Accepted shapes, per document:
//! - `v1 Service`, `discovery.k8s.io/v1 EndpointSlice`, `networking.k8s.io/v1 Ingress`,
//!   `gateway.networking.k8s.io/v1` (or `v1beta1`) `HTTPRoute`, `Gateway`, `GatewayClass`;
//! - `v1 Secret` of type `kubernetes.io/tls` (other Secrets are skipped unread);
//! - `v1 List` (as `kubectl get -o yaml` prints) holding any of those;
//! - anything else is skipped with a debug log (Deployments next to Services are normal).
//!
//! A file is all or nothing: any error rejects the whole file, so the caller can keep what the
//! file held before. Errors carry the path, the document, the object and the line/column or the
//! field at fault.

// A rejected file is rare and reported once; boxing its error would only add noise.
#![allow(clippy::result_large_err)]

use std::fmt;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use tables::model as m;

use crate::convert::{convert, ApiObject};

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
    /// `parse` (not YAML/JSON, or wrong types) or `validation` (well-formed but invalid).
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

/// One YAML document and the line it starts on (1-based).
fn split_documents(text: &str) -> Vec<(usize, &str)> {
    let mut docs = Vec::new();
    let mut start = 0usize;
    let mut start_line = 1usize;
    let mut offset = 0usize;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let l = line.trim_end();
        let is_sep = l == "---" || l.starts_with("--- ") || l.starts_with("---\t");
        if is_sep {
            docs.push((start_line, &text[start..offset]));
            start = offset + line.len();
            start_line = i + 2;
        }
        offset += line.len();
    }
    docs.push((start_line, &text[start..]));
    docs
}

enum Doc<'a> {
    Yaml(&'a str),
    Json(&'a str),
}

impl Doc<'_> {
    /// Deserializes with the field path and position of any error.
    fn typed<T: DeserializeOwned>(&self) -> Result<T, TypedErr> {
        match self {
            Doc::Yaml(text) => {
                let de = serde_yaml::Deserializer::from_str(text);
                serde_path_to_error::deserialize(de).map_err(|e| {
                    let path = e.path().to_string();
                    let inner = e.into_inner();
                    let loc = inner.location().map(|l| (l.line(), l.column()));
                    (
                        Some(path).filter(|p| p != "."),
                        loc,
                        strip_location(&inner.to_string()),
                    )
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

/// serde_yaml/serde_json append "at line X column Y"; we report the position separately.
fn strip_location(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// Parses one manifest file into typed API objects (each already validated by conversion).
/// `path` decides YAML vs JSON (`.json`) and names the file in errors.
pub fn parse_manifest(path: &Path, text: &str) -> Result<Vec<ApiObject>, ManifestError> {
    Ok(parse_and_convert(path, text)?
        .into_iter()
        .map(|(a, _)| a)
        .collect())
}

/// Parses and converts one manifest file into table objects, as the directory source needs.
pub fn load_manifest(path: &Path, text: &str) -> Result<Vec<m::Object>, ManifestError> {
    Ok(parse_and_convert(path, text)?
        .into_iter()
        .map(|(_, o)| o)
        .collect())
}

fn parse_and_convert(
    path: &Path,
    text: &str,
) -> Result<Vec<(ApiObject, m::Object)>, ManifestError> {
    let shown = path.display().to_string();
    let is_json = path.extension().is_some_and(|e| e == "json");
    let docs: Vec<(usize, Doc)> = if is_json {
        vec![(1, Doc::Json(text))]
    } else {
        split_documents(text)
            .into_iter()
            .map(|(l, t)| (l, Doc::Yaml(t)))
            .collect()
    };
    let mut out = Vec::new();
    for (first_line, doc) in docs {
        let fail = |object: Option<String>,
                    field: Option<String>,
                    loc: Option<(usize, usize)>,
                    message: String,
                    reason| {
            ManifestError {
                path: shown.clone(),
                line: Some(loc.map_or(first_line, |(l, _)| l + first_line - 1)),
                column: loc.map(|(_, c)| c),
                object,
                field,
                message,
                reason,
            }
        };
        if let Doc::Yaml(t) = &doc {
            // Empty documents (comments only, trailing `---`) are fine.
            if serde_yaml::from_str::<serde_yaml::Value>(t).is_ok_and(|v| v.is_null()) {
                continue;
            }
        }
        let head: Head = doc
            .typed()
            .map_err(|(field, loc, msg)| fail(None, field, loc, msg, "parse"))?;
        if head.kind.is_empty() || head.api_version.is_empty() {
            return Err(fail(
                None,
                None,
                None,
                "apiVersion and kind are required".into(),
                "parse",
            ));
        }
        let object = format!(
            "{} {}{}",
            head.kind,
            head.metadata
                .namespace
                .as_deref()
                .map(|n| format!("{n}/"))
                .unwrap_or_default(),
            head.metadata.name.as_deref().unwrap_or("<unnamed>")
        );
        let items: Vec<ApiObject> = if head.kind == "List" || head.kind.ends_with("List") {
            #[derive(Deserialize)]
            struct List {
                #[serde(default)]
                items: Vec<serde_json::Value>,
            }
            let list: List = doc.typed().map_err(|(field, loc, msg)| {
                fail(Some(object.clone()), field, loc, msg, "parse")
            })?;
            let mut items = Vec::new();
            for (i, item) in list.items.into_iter().enumerate() {
                let ih: Head = serde_json::from_value(item.clone()).unwrap_or_default();
                let iobj = format!(
                    "{} {}",
                    ih.kind,
                    ih.metadata.name.as_deref().unwrap_or("<unnamed>")
                );
                match typed_from_value(&ih.api_version, &ih.kind, item) {
                    Ok(Some(o)) => items.push(o),
                    Ok(None) => {
                        tracing::debug!(path = %shown, kind = %ih.kind, "skipping unsupported kind in list")
                    }
                    Err((field, msg)) => {
                        return Err(fail(
                            Some(iobj),
                            Some(format!(
                                "items[{i}]{}",
                                field.map(|f| format!(".{f}")).unwrap_or_default()
                            )),
                            None,
                            msg,
                            "parse",
                        ))
                    }
                }
            }
            items
        } else {
            match typed_doc(&head.api_version, &head.kind, &doc) {
                Ok(Some(o)) => vec![o],
                Ok(None) => {
                    tracing::debug!(path = %shown, api_version = %head.api_version, kind = %head.kind, "skipping unsupported kind");
                    vec![]
                }
                Err((field, loc, msg)) => return Err(fail(Some(object), field, loc, msg, "parse")),
            }
        };
        for item in items {
            // Convert now, so a bad object rejects its file instead of vanishing later.
            match convert(&item, "default") {
                Ok(obj) => out.push((item, obj)),
                Err(e) => {
                    let (ns, name) = api_object_name(&item);
                    let kind = api_object_kind(&item);
                    let obj = format!("{kind} {ns}{name}");
                    return Err(fail(
                        Some(obj),
                        Some(e.field),
                        None,
                        e.message,
                        "validation",
                    ));
                }
            }
        }
    }
    Ok(out)
}

type TypedErr = (Option<String>, Option<(usize, usize)>, String);

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

fn api_object_name(o: &ApiObject) -> (String, String) {
    let m = match o {
        ApiObject::Service(x) => &x.metadata,
        ApiObject::EndpointSlice(x) => &x.metadata,
        ApiObject::Ingress(x) => &x.metadata,
        ApiObject::HttpRoute(x) => &x.metadata,
        ApiObject::Gateway(x) => &x.metadata,
        ApiObject::GatewayClass(x) => &x.metadata,
        ApiObject::Secret(x) => &x.metadata,
        ApiObject::ReferenceGrant(x) => &x.metadata,
        ApiObject::Namespace(x) => &x.metadata,
    };
    (
        m.namespace
            .as_deref()
            .map(|n| format!("{n}/"))
            .unwrap_or_default(),
        m.name.clone().unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<ApiObject>, ManifestError> {
        parse_manifest(Path::new("x.yaml"), text)
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
