//! `POST /scim/v2/Bulk` (RFC 7644 §3.7): many resource operations in one request.
//!
//! Each operation is dispatched, as an HTTP request built from it, through the same SCIM
//! router that serves `/Users` and `/Groups` — with the caller's own `Authorization` and
//! the operation's `version` as `If-Match` — so it gets exactly the validation, events,
//! audit and errors of the single-resource endpoint. Bulk adds only what is its own:
//! limits, `bulkId` references and `failOnErrors`.
//!
//! Operations are not one transaction (the RFC does not ask for one): each commits on its
//! own, and the response says per operation what happened.

use std::collections::{HashMap, HashSet};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};
use tower::ServiceExt as _;

use crate::AppState;
use crate::scim_routes::{SCIM_JSON, ScimError, ScimResult, admin_only, caller, read_scim_body, router, scim_json};

const BULK_REQUEST: &str = "urn:ietf:params:scim:api:messages:2.0:BulkRequest";
const BULK_RESPONSE: &str = "urn:ietf:params:scim:api:messages:2.0:BulkResponse";
/// Operations one bulk request may carry (advertised in ServiceProviderConfig).
pub const BULK_MAX_OPERATIONS: usize = 1_000;
/// Bytes one bulk request may carry (advertised in ServiceProviderConfig); the same cap
/// as a list body, so a bulk request costs no more memory than the largest single one.
pub const BULK_MAX_PAYLOAD: usize = crate::extract::LIST_BODY_LIMIT;
/// An operation's own response is read back from the router; a group of 10,000 members
/// renders to ~2 MB, so this leaves room without being unbounded.
const OPERATION_RESPONSE_LIMIT: usize = 16 * 1024 * 1024;
const BULK_ID_PREFIX: &str = "bulkId:";

/// One operation as the client sent it, checked for shape.
struct Operation {
    method: Method,
    bulk_id: Option<String>,
    version: Option<String>,
    path: String,
    data: Option<Value>,
}

/// The result of one operation, as the BulkResponse lists it.
struct Outcome {
    method: String,
    bulk_id: Option<String>,
    location: Option<String>,
    version: Option<String>,
    status: StatusCode,
    /// The operation's response body; returned for failures (the RFC requires it there).
    response: Option<Value>,
}

impl Outcome {
    fn failed(method: String, bulk_id: Option<String>, error: ScimError) -> Self {
        Outcome { method, bulk_id, location: None, version: None, status: error.status(), response: Some(error.body()) }
    }

    fn to_json(&self) -> Value {
        let mut out = json!({ "method": self.method, "status": self.status.as_u16().to_string() });
        if let Some(b) = &self.bulk_id {
            out["bulkId"] = json!(b);
        }
        if let Some(l) = &self.location {
            out["location"] = json!(l);
        }
        if let Some(v) = &self.version {
            out["version"] = json!(v);
        }
        if let Some(r) = &self.response {
            out["response"] = r.clone();
        }
        out
    }

    fn is_error(&self) -> bool {
        self.status.is_client_error() || self.status.is_server_error()
    }
}

/// The operation's shape: method, path and data as §3.7 requires them.
fn parse_operation(raw: &Value) -> Result<Operation, ScimError> {
    let field = |name: &str| crate::scim_routes::field(raw, name);
    let text = |name: &str| -> Result<Option<String>, ScimError> {
        match field(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(ScimError::bad("invalidSyntax", format!("{name} must be a string"))),
        }
    };
    if !raw.is_object() {
        return Err(ScimError::bad("invalidSyntax", "each operation must be an object"));
    }
    let method = match text("method")?.map(|m| m.to_ascii_uppercase()).as_deref() {
        Some("POST") => Method::POST,
        Some("PUT") => Method::PUT,
        Some("PATCH") => Method::PATCH,
        Some("DELETE") => Method::DELETE,
        Some(other) => {
            return Err(ScimError::bad(
                "invalidValue",
                format!("method must be POST, PUT, PATCH or DELETE, not {other:?}"),
            ));
        }
        None => return Err(ScimError::bad("invalidValue", "method is required")),
    };
    let path = text("path")?.ok_or_else(|| ScimError::bad("invalidValue", "path is required"))?;
    let bulk_id = text("bulkId")?;
    if method == Method::POST && bulk_id.is_none() {
        return Err(ScimError::bad("invalidValue", "bulkId is required with POST"));
    }
    if bulk_id.as_deref().is_some_and(|b| b.is_empty() || b.starts_with(BULK_ID_PREFIX)) {
        return Err(ScimError::bad("invalidValue", "bulkId must be a non-empty name without the \"bulkId:\" prefix"));
    }
    let data = field("data").filter(|d| !d.is_null()).cloned();
    if method != Method::DELETE && data.is_none() {
        return Err(ScimError::bad("invalidValue", format!("data is required with {method}")));
    }
    Ok(Operation { method, bulk_id, version: text("version")?, path, data })
}

/// Resource type and id of a bulk path: `/Users`, `/Groups` (POST) or `/Users/{id}`,
/// `/Groups/{id}` (the others). Nothing else: a bulk may not reach discovery, nor `/Bulk`.
fn check_path(method: &Method, path: &str) -> Result<(), ScimError> {
    let trimmed = path.trim_end_matches('/');
    let mut parts = trimmed.strip_prefix('/').unwrap_or("").split('/');
    let resource = parts.next().unwrap_or("");
    let id = parts.next();
    let valid_resource = resource == "Users" || resource == "Groups";
    let ok = valid_resource
        && parts.next().is_none()
        && !path.contains(['?', '#'])
        && match (method == Method::POST, id) {
            (true, None) => true,
            (false, Some(id)) => !id.is_empty(),
            _ => false,
        };
    if ok {
        Ok(())
    } else if method == Method::POST {
        Err(ScimError::bad("invalidPath", format!("a bulk POST path is /Users or /Groups, not {path:?}")))
    } else {
        Err(ScimError::bad(
            "invalidPath",
            format!("a bulk {method} path is /Users/{{id}} or /Groups/{{id}}, not {path:?}"),
        ))
    }
}

/// Every `bulkId:X` an operation refers to: in its path, and as any string value of its
/// data (group members' `value`, a PATCH value…).
fn references(operation: &Operation) -> Vec<String> {
    fn walk(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::String(s) => {
                if let Some(id) = s.strip_prefix(BULK_ID_PREFIX) {
                    out.push(id.to_owned());
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            Value::Object(map) => map.values().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    for segment in operation.path.split('/') {
        if let Some(id) = segment.strip_prefix(BULK_ID_PREFIX) {
            out.push(id.to_owned());
        }
    }
    if let Some(data) = &operation.data {
        walk(data, &mut out);
    }
    out.sort();
    out.dedup();
    out
}

/// `bulkId:X` replaced by the id the operation that declared X created.
fn resolve(value: &mut Value, ids: &HashMap<String, String>) {
    match value {
        Value::String(s) => {
            if let Some(id) = s.strip_prefix(BULK_ID_PREFIX).and_then(|b| ids.get(b)) {
                *s = id.clone();
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| resolve(v, ids)),
        Value::Object(map) => map.values_mut().for_each(|v| resolve(v, ids)),
        _ => {}
    }
}

fn resolve_path(path: &str, ids: &HashMap<String, String>) -> String {
    path.split('/')
        .map(|segment| match segment.strip_prefix(BULK_ID_PREFIX).and_then(|b| ids.get(b)) {
            Some(id) => id.as_str(),
            None => segment,
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// POST /Bulk.
#[utoipa::path(post, path = "/scim/v2/Bulk", tag = "scim", security(("bearer" = [])),
    responses((status = 200, description = "BulkResponse: one entry per operation processed", body = Object, content_type = "application/scim+json"), (status = 400, body = Object, content_type = "application/scim+json"), (status = 413, description = "more than maxOperations or maxPayloadSize", body = Object, content_type = "application/scim+json"), (status = 401, body = Object, content_type = "application/scim+json"))
)]
pub async fn bulk(State(state): State<AppState>, headers: HeaderMap, body: Body) -> ScimResult<Response> {
    // Authenticated once up front so that a bad token is one 401, not a 200 full of them;
    // each operation is authenticated again by its endpoint like any request.
    let actor = caller(&state, &headers).await?;
    admin_only(&actor)?;
    let body = read_scim_body(&state, &headers, body, BULK_MAX_PAYLOAD).await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ScimError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                None,
                format!("the bulk request exceeds maxPayloadSize ({BULK_MAX_PAYLOAD} bytes)"),
            )
        } else {
            e
        }
    })?;
    let listed = crate::scim_routes::field(&body, "schemas")
        .and_then(Value::as_array)
        .is_some_and(|s| s.iter().any(|v| v.as_str() == Some(BULK_REQUEST)));
    if !listed {
        return Err(ScimError::bad("invalidValue", format!("schemas must list {BULK_REQUEST}")));
    }
    let fail_on_errors = match crate::scim_routes::field(&body, "failOnErrors") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 => Some(n as usize),
            _ => return Err(ScimError::bad("invalidValue", "failOnErrors must be an integer of at least 1")),
        },
    };
    let raw_operations = crate::scim_routes::field(&body, "Operations")
        .and_then(Value::as_array)
        .ok_or_else(|| ScimError::bad("invalidValue", "Operations must be a list"))?;
    if raw_operations.len() > BULK_MAX_OPERATIONS {
        return Err(ScimError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            Some("tooMany"),
            format!("the bulk request has {} operations; maxOperations is {BULK_MAX_OPERATIONS}", raw_operations.len()),
        ));
    }

    // Shape first: an operation that is malformed fails alone, the others still run.
    let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(raw_operations.len());
    let mut operations: Vec<Option<Operation>> = Vec::with_capacity(raw_operations.len());
    let mut declared: HashSet<String> = HashSet::new();
    for raw in raw_operations {
        let method_text = crate::scim_routes::field(raw, "method").and_then(Value::as_str).unwrap_or("").to_owned();
        let bulk_id = crate::scim_routes::field(raw, "bulkId").and_then(Value::as_str).map(str::to_owned);
        let parsed = parse_operation(raw).and_then(|op| {
            check_path(&op.method, &op.path)?;
            if let Some(b) = &op.bulk_id
                && op.method == Method::POST
                && !declared.insert(b.clone())
            {
                return Err(ScimError::bad("uniqueness", format!("bulkId {b:?} is declared twice")));
            }
            Ok(op)
        });
        match parsed {
            Ok(op) => {
                outcomes.push(None);
                operations.push(Some(op));
            }
            Err(e) => {
                outcomes.push(Some(Outcome::failed(method_text, bulk_id, e)));
                operations.push(None);
            }
        }
    }
    // Malformed operations count as errors where they stand, for failOnErrors.
    let mut reported = vec![false; outcomes.len()];
    let mut errors = 0;
    let stop = |errors: usize| fail_on_errors.is_some_and(|n| errors >= n);

    // Operations run in request order; one whose references are not created yet waits
    // until they are (the RFC lets a server reorder for this). A pass that runs nothing
    // leaves only cycles, which fail.
    let router = router().with_state(state.clone());
    let authorization = headers.get(header::AUTHORIZATION).cloned();
    let mut created: HashMap<String, String> = HashMap::new();
    let mut failed_ids: HashSet<String> = HashSet::new();
    // bulkIds declared by operations that failed their shape check count as failed.
    for (raw, outcome) in raw_operations.iter().zip(&outcomes) {
        if outcome.is_some()
            && let Some(b) = crate::scim_routes::field(raw, "bulkId").and_then(Value::as_str)
            && !declared.contains(b)
        {
            failed_ids.insert(b.to_owned());
        }
    }
    let mut pending: Vec<usize> = (0..operations.len()).collect();
    while !pending.is_empty() && !stop(errors) {
        let mut waiting = Vec::new();
        let mut progressed = false;
        for index in pending {
            if stop(errors) {
                break;
            }
            let Some(operation) = operations[index].take() else {
                // Failed its shape check above.
                reported[index] = true;
                errors += 1;
                progressed = true;
                continue;
            };
            let refs = references(&operation);
            let outcome = if let Some(bad) = refs.iter().find(|r| failed_ids.contains(*r) || !declared.contains(*r)) {
                let why = if failed_ids.contains(bad) { "failed" } else { "is not declared in this request" };
                Some(Outcome::failed(
                    operation.method.to_string(),
                    operation.bulk_id.clone(),
                    ScimError::new(
                        StatusCode::CONFLICT,
                        Some("invalidValue"),
                        format!("bulkId:{bad} cannot be resolved: the operation that declares it {why}"),
                    ),
                ))
            } else if refs.iter().all(|r| created.contains_key(r)) {
                Some(run(&router, authorization.as_ref(), operation.clone_with(&created)).await)
            } else {
                operations[index] = Some(operation);
                waiting.push(index);
                None
            };
            if let Some(outcome) = outcome {
                progressed = true;
                let declares = operations_bulk_id(&outcome);
                if outcome.is_error() {
                    errors += 1;
                    if let Some(b) = declares {
                        failed_ids.insert(b);
                    }
                } else if let (Some(b), Some(id)) = (declares, outcome.created_id()) {
                    created.insert(b, id);
                }
                outcomes[index] = Some(outcome);
                reported[index] = true;
            }
        }
        pending = waiting;
        if !progressed {
            // Every operation left waits on another one left: a cycle.
            for index in std::mem::take(&mut pending) {
                if stop(errors) {
                    break;
                }
                let Some(operation) = operations[index].take() else { continue };
                outcomes[index] = Some(Outcome::failed(
                    operation.method.to_string(),
                    operation.bulk_id.clone(),
                    ScimError::new(
                        StatusCode::CONFLICT,
                        Some("invalidValue"),
                        "circular bulkId references: this operation waits on one that waits on it",
                    ),
                ));
                reported[index] = true;
                errors += 1;
            }
        }
    }
    // Operations not reached because failOnErrors stopped the run are left out (§3.7.3).
    let listed: Vec<Value> = outcomes
        .iter()
        .zip(&reported)
        .filter(|(_, r)| **r)
        .filter_map(|(o, _)| o.as_ref())
        .map(Outcome::to_json)
        .collect();
    Ok(scim_json(StatusCode::OK, &json!({ "schemas": [BULK_RESPONSE], "Operations": listed })))
}

/// A POST's bulkId, which its outcome then names.
fn operations_bulk_id(outcome: &Outcome) -> Option<String> {
    if outcome.method == "POST" { outcome.bulk_id.clone() } else { None }
}

impl Operation {
    /// The operation with every reference replaced by the created id.
    fn clone_with(self, created: &HashMap<String, String>) -> Operation {
        let mut data = self.data;
        if let Some(d) = data.as_mut() {
            resolve(d, created);
        }
        Operation { path: resolve_path(&self.path, created), data, ..self }
    }
}

impl Outcome {
    /// The id a successful POST created: the last segment of its location.
    fn created_id(&self) -> Option<String> {
        self.location.as_deref().and_then(|l| l.rsplit('/').next()).map(str::to_owned)
    }
}

/// One operation through the SCIM router, as its own request.
async fn run(router: &axum::Router, authorization: Option<&axum::http::HeaderValue>, operation: Operation) -> Outcome {
    let method_text = operation.method.to_string();
    let mut request = Request::builder().method(operation.method.clone()).uri(&operation.path);
    if let Some(auth) = authorization {
        request = request.header(header::AUTHORIZATION, auth);
    }
    if let Some(version) = &operation.version {
        request = request.header(header::IF_MATCH, version);
    }
    let body = match &operation.data {
        Some(data) => {
            request = request.header(header::CONTENT_TYPE, SCIM_JSON);
            Body::from(serde_json::to_vec(data).unwrap_or_default())
        }
        None => Body::empty(),
    };
    let failed = |e: ScimError| Outcome::failed(method_text.clone(), operation.bulk_id.clone(), e);
    let request = match request.body(body) {
        Ok(r) => r,
        Err(_) => return failed(ScimError::bad("invalidPath", format!("{:?} is not a valid path", operation.path))),
    };
    let response = match router.clone().oneshot(request).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let status = response.status();
    let (location, version) = {
        let header_text =
            |name: header::HeaderName| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let location = header_text(header::LOCATION).or_else(|| {
            (status.is_success() && operation.method != Method::DELETE).then(|| format!("/scim/v2{}", operation.path))
        });
        (location, header_text(header::ETAG))
    };
    let bytes = axum::body::to_bytes(response.into_body(), OPERATION_RESPONSE_LIMIT).await.unwrap_or_default();
    let response_body = if status.is_success() { None } else { serde_json::from_slice::<Value>(&bytes).ok() };
    Outcome { method: method_text, bulk_id: operation.bulk_id, location, version, status, response: response_body }
}
