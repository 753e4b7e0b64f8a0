//! The writes a data plane makes: Leases (create, replace) and status subresources (merge
//! patch), with the API server's optimistic concurrency.
//!
//! * `POST .../leases`: creates a Lease; 409 `AlreadyExists` if there is one.
//! * `PUT .../leases/{name}`: replaces it; 409 `Conflict` unless `metadata.resourceVersion`
//!   is the stored one; 404 if absent.
//! * `PATCH .../{plural}/{name}/status` (`application/merge-patch+json`): merges the patch's
//!   `status` into the stored object's status and nothing else, as the status subresource
//!   does; a `metadata.resourceVersion` in the patch is a precondition (409 when stale).
//!
//! Anything else that is not a GET is refused with 405, as before: the cluster is otherwise
//! changed from the test. Objects the test applies keep their stored `status` when they carry
//! none (an update of the main resource does not touch status on a real server), and Gateway
//! API objects and Ingresses get a `metadata.generation` that counts spec changes.

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{json, Value};

use crate::resources::RESOURCES;
use crate::server::{json_response, route, status_response, Body, Route, Shared};

/// Answers a write, or `None` for requests this module does not take.
pub(crate) async fn handle(
    shared: &Shared,
    req: Request<Incoming>,
    path: &str,
) -> Option<Response<Body>> {
    let method = req.method().clone();
    let (path, status) = match path.strip_suffix("/status") {
        Some(p) => (p, true),
        None => (path, false),
    };
    let target = route(path);
    let is_lease = |r: usize| RESOURCES[r].kind == "Lease";
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Some(status_response(400, &format!("reading body: {e}"), None)),
    };
    let doc: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return Some(status_response(
                400,
                &format!("body is not JSON: {e}"),
                None,
            ))
        }
    };
    let resp = match (method, target, status) {
        (
            Method::POST,
            Route::Collection {
                resource,
                namespace,
            },
            false,
        ) if is_lease(resource) => create(
            shared,
            resource,
            namespace.as_deref().unwrap_or("default"),
            doc,
        ),
        (
            Method::PUT,
            Route::Object {
                resource,
                namespace,
                name,
            },
            false,
        ) if is_lease(resource) => replace(
            shared,
            resource,
            namespace.as_deref().unwrap_or(""),
            &name,
            doc,
        ),
        (
            Method::PATCH,
            Route::Object {
                resource,
                namespace,
                name,
            },
            true,
        ) => patch_status(
            shared,
            resource,
            namespace.as_deref().unwrap_or(""),
            &name,
            doc,
        ),
        _ => return None,
    };
    Some(resp)
}

fn not_found(resource: usize, name: &str) -> Response<Body> {
    let rt = &RESOURCES[resource];
    status_response(
        404,
        &format!("{} \"{name}\" not found", rt.plural),
        Some(json!({"name": name, "group": rt.group, "kind": rt.plural})),
    )
}

fn with_type(resource: usize, mut doc: Value) -> Value {
    let rt = &RESOURCES[resource];
    doc["apiVersion"] = json!(rt.api_version());
    doc["kind"] = json!(rt.kind);
    doc
}

fn stored_answer(
    shared: &Shared,
    resource: usize,
    ns: &str,
    name: &str,
    code: StatusCode,
) -> Response<Body> {
    match shared.store().get(resource, ns, name) {
        Some(obj) => json_response(code, &with_type(resource, (*obj).clone())),
        None => not_found(resource, name),
    }
}

fn create(shared: &Shared, resource: usize, ns: &str, mut doc: Value) -> Response<Body> {
    let name = doc["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if shared.store().get(resource, ns, &name).is_some() {
        return status_response(409, &format!("leases \"{name}\" already exists"), None);
    }
    doc["metadata"]["namespace"] = json!(ns);
    if let Some(m) = doc["metadata"].as_object_mut() {
        m.remove("resourceVersion");
    }
    let doc = with_type(resource, doc);
    if let Err(e) = shared.store().apply(doc) {
        return status_response(400, &e, None);
    }
    stored_answer(shared, resource, ns, &name, StatusCode::CREATED)
}

fn stale(stored: &Value, doc: &Value) -> bool {
    match doc["metadata"]
        .get("resourceVersion")
        .and_then(Value::as_str)
    {
        Some(rv) => stored["metadata"]["resourceVersion"].as_str() != Some(rv),
        None => false,
    }
}

fn conflict(name: &str) -> Response<Body> {
    status_response(
        409,
        &format!("Operation cannot be fulfilled on \"{name}\": the object has been modified; please apply your changes to the latest version and try again"),
        None,
    )
}

fn replace(shared: &Shared, resource: usize, ns: &str, name: &str, doc: Value) -> Response<Body> {
    let mut store = shared.store();
    let Some(stored) = store.get(resource, ns, name) else {
        return not_found(resource, name);
    };
    if doc["metadata"].get("resourceVersion").is_none() || stale(&stored, &doc) {
        return conflict(name);
    }
    let doc = with_type(resource, doc);
    if let Err(e) = store.apply(doc) {
        return status_response(400, &e, None);
    }
    drop(store);
    stored_answer(shared, resource, ns, name, StatusCode::OK)
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

fn patch_status(
    shared: &Shared,
    resource: usize,
    ns: &str,
    name: &str,
    doc: Value,
) -> Response<Body> {
    let mut store = shared.store();
    let Some(stored) = store.get(resource, ns, name) else {
        return not_found(resource, name);
    };
    if stale(&stored, &doc) {
        return conflict(name);
    }
    let mut next = with_type(resource, (*stored).clone());
    if let Some(status) = doc.get("status") {
        if next.get("status").is_none() {
            next["status"] = json!({});
        }
        merge(&mut next["status"], status);
    }
    if let Err(e) = store.apply(next) {
        return status_response(400, &e, None);
    }
    drop(store);
    stored_answer(shared, resource, ns, name, StatusCode::OK)
}
