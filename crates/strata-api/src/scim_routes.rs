//! SCIM 2.0 (RFC 7643, RFC 7644) under `/scim/v2`: the User resource over Strata's users,
//! the Group resource over Strata's groups, and the discovery endpoints. Parse (with strata-scim), call
//! [`strata_core::groups::Groups`], render SCIM JSON.
//!
//! Everything under `/scim/v2` answers in SCIM's own shapes: `application/scim+json`, and
//! errors as `urn:ietf:params:scim:api:messages:2.0:Error` bodies with a `scimType`, never
//! problem+json — identity providers parse those. Versions are ETags (`W/"3"`), and
//! `If-Match` is honoured on PUT, PATCH and DELETE.

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use strata_core::domain::{DisplayName, Email, GroupId, Password, User, UserId, UserStatus, Version, rfc3339};
use strata_core::error::{AppError, TokenProblem};
use strata_core::groups::{
    EnterpriseText, EnterpriseUser, ExternalId, Group, GroupChanges, GroupListQuery, GroupMember, GroupName,
    MembershipChange, NewGroup,
};
use strata_core::ports::{Comparison, UserCondition, UserOrder, UserPredicate, UserSearch};
use strata_core::service::{Actor, UserChanges};
use strata_scim::filter::{AttrPath, CompValue, CompareOp, Filter, parse_filter};
use strata_scim::patch::{PatchOp, PatchPath, parse_patch_request};

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{LIST_BODY_LIMIT, authenticate, read_body};

pub const SCIM_JSON: &str = "application/scim+json";
const ERROR_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:Error";
const LIST_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
pub const GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
/// Default and largest `count` of a list.
const DEFAULT_COUNT: usize = 100;
const MAX_COUNT: usize = 1_000;
/// Groups a filter that no index serves may look through.
const MAX_SCANNED_GROUPS: usize = 10_000;

/// A SCIM error on its way out.
#[derive(Debug)]
pub struct ScimError {
    status: StatusCode,
    scim_type: Option<&'static str>,
    detail: String,
}

impl ScimError {
    pub fn new(status: StatusCode, scim_type: Option<&'static str>, detail: impl Into<String>) -> Self {
        ScimError { status, scim_type, detail: detail.into() }
    }

    pub(crate) fn bad(scim_type: &'static str, detail: impl Into<String>) -> Self {
        ScimError::new(StatusCode::BAD_REQUEST, Some(scim_type), detail)
    }

    fn not_found(what: &str) -> Self {
        ScimError::new(StatusCode::NOT_FOUND, None, format!("{what} not found"))
    }

    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }

    /// The SCIM error body (`urn:ietf:params:scim:api:messages:2.0:Error`).
    pub(crate) fn body(&self) -> Value {
        let mut body = json!({
            "schemas": [ERROR_SCHEMA],
            "status": self.status.as_u16().to_string(),
            "detail": self.detail,
        });
        if let Some(t) = self.scim_type {
            body["scimType"] = json!(t);
        }
        body
    }
}

impl IntoResponse for ScimError {
    fn into_response(self) -> Response {
        scim_json(self.status, &self.body())
    }
}

/// Problems from the shared extractors and services, in SCIM terms. Field errors are
/// `invalidValue`; the status stays what Strata's API would answer.
impl From<ApiError> for ScimError {
    fn from(e: ApiError) -> Self {
        let scim_type = match (e.status, e.code) {
            (StatusCode::BAD_REQUEST, "malformed_json") => Some("invalidSyntax"),
            (StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY, _) => Some("invalidValue"),
            (StatusCode::CONFLICT, _) => Some("uniqueness"),
            _ => None,
        };
        // SCIM has no 422: a field that does not parse is a 400 there.
        let status = if e.status == StatusCode::UNPROCESSABLE_ENTITY { StatusCode::BAD_REQUEST } else { e.status };
        let detail = match &e.field {
            Some(field) if !e.detail.contains(field.as_str()) => format!("{field}: {}", e.detail),
            _ => e.detail.clone(),
        };
        ScimError::new(status, scim_type, detail)
    }
}

impl From<AppError> for ScimError {
    fn from(e: AppError) -> Self {
        ApiError::from(e).into()
    }
}

pub(crate) type ScimResult<T> = Result<T, ScimError>;

pub(crate) fn scim_json(status: StatusCode, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut res = (status, bytes).into_response();
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(SCIM_JSON));
    res
}

fn with_etag(mut res: Response, version: Version) -> Response {
    if let Ok(v) = HeaderValue::from_str(&etag(version)) {
        res.headers_mut().insert(header::ETAG, v);
    }
    res
}

fn etag(version: Version) -> String {
    format!("W/\"{}\"", version.0)
}

/// The SCIM router, mounted at `/scim/v2`.
pub fn router() -> Router<AppState> {
    use axum::routing::get;
    Router::new()
        .route("/ServiceProviderConfig", get(service_provider_config))
        .route("/ResourceTypes", get(resource_types))
        .route("/ResourceTypes/{name}", get(resource_type))
        .route("/Schemas", get(schemas))
        .route("/Schemas/{uri}", get(schema))
        .route("/Users", get(list_users).post(create_user))
        .route("/Users/{id}", get(get_user).put(replace_user).patch(patch_user).delete(delete_user))
        .route("/Groups", get(list_groups).post(create_group))
        .route("/Groups/{id}", get(get_group).put(replace_group).patch(patch_group).delete(delete_group))
        .route("/Bulk", axum::routing::post(crate::scim_bulk::bulk))
        .fallback(|| async { ScimError::new(StatusCode::NOT_FOUND, None, "no such SCIM endpoint") })
        .method_not_allowed_fallback(|| async {
            ScimError::new(StatusCode::METHOD_NOT_ALLOWED, None, "this endpoint does not support the method")
        })
}

/// The admin token, or an admin's session (the service checks the role).
pub(crate) async fn caller(state: &AppState, headers: &HeaderMap) -> ScimResult<Actor> {
    let unauthenticated = |p: TokenProblem| ScimError::from(AppError::Unauthenticated(p));
    let raw = headers.get(header::AUTHORIZATION).ok_or_else(|| unauthenticated(TokenProblem::Missing))?;
    let text = raw.to_str().map_err(|_| unauthenticated(TokenProblem::Malformed))?;
    let (scheme, token) = text.split_once(' ').ok_or_else(|| unauthenticated(TokenProblem::Malformed))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(unauthenticated(TokenProblem::Malformed));
    }
    let token = token.trim();
    if state.is_admin_token(token) {
        strata_core::timing::mark_authenticated();
        return Ok(Actor::System);
    }
    if token.starts_with(strata_core::provisioning::TOKEN_PREFIX) {
        let found = state.provisioning.authenticate(token).await?;
        let Some(found) = found else { return Err(unauthenticated(TokenProblem::Unknown)) };
        strata_core::timing::mark_authenticated();
        return Ok(Actor::Provisioner(found.id));
    }
    let (session, user) = authenticate(state, token).await?;
    Ok(Actor::User { user: Box::new(user), session: session.id })
}

async fn body_json(state: &AppState, headers: &HeaderMap, body: Body) -> ScimResult<Value> {
    read_scim_body(state, headers, body, state.body_limit.max(LIST_BODY_LIMIT)).await
}

/// A SCIM JSON object body of at most `limit` bytes.
pub(crate) async fn read_scim_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> ScimResult<Value> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if mime != SCIM_JSON && mime != "application/json" {
        return Err(ScimError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            None,
            format!("send {SCIM_JSON} (or application/json), not {content_type:?}"),
        ));
    }
    let bytes = read_body(body, limit, state.body_read_timeout).await?;
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ScimError::bad("invalidSyntax", format!("the body is not JSON: {e}")))?;
    if !value.is_object() {
        return Err(ScimError::bad("invalidSyntax", "the body must be a JSON object"));
    }
    Ok(value)
}

/// The operations of a PATCH body.
async fn patch_operations(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> ScimResult<Vec<strata_scim::patch::PatchOperation>> {
    let body = body_json(state, headers, body).await?;
    parse_patch_request(&body).map_err(|e| ScimError::bad(e.scim_type, e.message))
}

/// The value of an `add`/`replace` without a path: an object of attributes.
fn pathless_object(value: &Value) -> ScimResult<&serde_json::Map<String, Value>> {
    value.as_object().ok_or_else(|| ScimError::bad("invalidValue", "without a path, the value must be an object"))
}

/// `If-Match`: `W/"3"`, `"3"` or `*`.
fn if_match(headers: &HeaderMap) -> ScimResult<Option<Version>> {
    let Some(raw) = headers.get(header::IF_MATCH) else { return Ok(None) };
    let text = raw.to_str().unwrap_or("").trim();
    if text == "*" {
        return Ok(None);
    }
    let inner = text.strip_prefix("W/").unwrap_or(text);
    inner
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .and_then(|t| t.parse::<u64>().ok())
        .filter(|v| *v > 0)
        .map(|v| Some(Version(v)))
        .ok_or_else(|| {
            ScimError::bad("invalidValue", "If-Match must be an ETag from a previous response, e.g. W/\"3\"")
        })
}

/// Case-insensitive field of a JSON object (SCIM attribute names ignore case).
pub(crate) fn field<'a>(object: &'a Value, name: &str) -> Option<&'a Value> {
    object.as_object()?.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v)
}

// --- query parameters: filter, startIndex, count, attributes, excludedAttributes ---

struct ListParams {
    filter: Option<Filter>,
    /// `sortBy` and whether `sortOrder` is descending.
    sort: Option<(AttrPath, bool)>,
    start_index: usize,
    count: usize,
    projection: Projection,
}

/// `attributes` / `excludedAttributes` (RFC 7644 §3.4.2.5): top-level names, compared
/// without regard to case. `id` and `schemas` are always returned.
#[derive(Default)]
struct Projection {
    only: Option<Vec<String>>,
    excluded: Vec<String>,
}

impl Projection {
    fn parse(list: &str) -> ScimResult<Vec<String>> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                // An extension's whole schema URI names its top-level object.
                if s.eq_ignore_ascii_case(ENTERPRISE_SCHEMA) {
                    return Ok(s.to_ascii_lowercase());
                }
                AttrPath::parse(s)
                    .map(|p| p.name.to_ascii_lowercase())
                    .map_err(|e| ScimError::bad("invalidValue", format!("attributes: {}", e.message)))
            })
            .collect()
    }

    fn wants(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        if name == "id" || name == "schemas" {
            return true;
        }
        match &self.only {
            Some(only) => only.contains(&name),
            None => !self.excluded.contains(&name),
        }
    }

    fn apply(&self, mut resource: Value) -> Value {
        if let Some(object) = resource.as_object_mut() {
            object.retain(|k, _| self.wants(k));
        }
        resource
    }
}

fn list_params(query: Option<&str>, allow_list: bool) -> ScimResult<ListParams> {
    let mut params = ListParams {
        filter: None,
        sort: None,
        start_index: 1,
        count: DEFAULT_COUNT,
        projection: Projection::default(),
    };
    let mut sort_by = None;
    let mut descending = false;
    let mut seen = Vec::new();
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let key = k.to_ascii_lowercase();
        if seen.contains(&key) {
            return Err(ScimError::bad("invalidSyntax", format!("{k} given twice")));
        }
        seen.push(key.clone());
        match key.as_str() {
            "attributes" => params.projection.only = Some(Projection::parse(&v)?),
            "excludedattributes" => params.projection.excluded = Projection::parse(&v)?,
            "filter" if allow_list => {
                params.filter =
                    Some(parse_filter(&v).map_err(|e| ScimError::bad("invalidFilter", format!("filter: {e}")))?)
            }
            // A startIndex below 1 is read as 1, and a negative count as 0 (§3.4.2.4).
            "startindex" if allow_list => {
                params.start_index = v
                    .trim()
                    .parse::<i64>()
                    .map_err(|_| ScimError::bad("invalidValue", "startIndex must be an integer"))?
                    .max(1) as usize
            }
            "count" if allow_list => {
                params.count = v
                    .trim()
                    .parse::<i64>()
                    .map_err(|_| ScimError::bad("invalidValue", "count must be an integer"))?
                    .clamp(0, MAX_COUNT as i64) as usize
            }
            "sortby" if allow_list => {
                sort_by = Some(
                    AttrPath::parse(&v)
                        .map_err(|e| ScimError::bad("invalidValue", format!("sortBy: {}", e.message)))?,
                )
            }
            "sortorder" if allow_list => {
                descending = match v.to_ascii_lowercase().as_str() {
                    "ascending" => false,
                    "descending" => true,
                    _ => return Err(ScimError::bad("invalidValue", "sortOrder must be ascending or descending")),
                }
            }
            _ => return Err(ScimError::bad("invalidSyntax", format!("unknown query parameter {k:?}"))),
        }
    }
    // sortOrder alone changes nothing: without sortBy the order is the server's (§3.4.2.3).
    params.sort = sort_by.map(|path| (path, descending));
    Ok(params)
}

/// Sorts `items` (each with its SCIM JSON) by `sortBy`, ties broken by id so that pages
/// are stable. The sets sorted here are the ones already in memory: an indexed equality's
/// few rows, or a filtered scan capped at MAX_SCANNED_USERS / MAX_SCANNED_GROUPS.
fn sort_items<T>(items: &mut [(Value, T)], sort: &Option<(AttrPath, bool)>) {
    let Some((path, descending)) = sort else { return };
    let id_of = |v: &Value| v.get("id").and_then(Value::as_str).unwrap_or("").to_owned();
    items.sort_by(|(a, _), (b, _)| {
        let by_value =
            strata_scim::compare_sort_values(strata_scim::sort_value(a, path), strata_scim::sort_value(b, path));
        let by_value = if *descending { by_value.reverse() } else { by_value };
        by_value.then_with(|| id_of(a).cmp(&id_of(b)))
    });
}

fn list_response(total: usize, start_index: usize, resources: Vec<Value>) -> Response {
    scim_json(
        StatusCode::OK,
        &json!({
            "schemas": [LIST_SCHEMA],
            "totalResults": total,
            "startIndex": start_index,
            "itemsPerPage": resources.len(),
            "Resources": resources,
        }),
    )
}

// --- Groups ---

fn group_json(group: &Group, members: Option<&[GroupMember]>) -> Value {
    let mut out = json!({
        "schemas": [GROUP_SCHEMA],
        "id": group.id.to_string(),
        "displayName": group.display_name.as_str(),
        "meta": {
            "resourceType": "Group",
            "created": rfc3339(group.created_at),
            "lastModified": rfc3339(group.updated_at),
            "location": format!("/scim/v2/Groups/{}", group.id),
            "version": etag(group.version),
        },
    });
    if let Some(external) = &group.external_id {
        out["externalId"] = json!(external.as_str());
    }
    if let Some(members) = members {
        out["members"] = members
            .iter()
            .map(|m| {
                json!({
                    "value": m.user_id.to_string(),
                    "display": m.name.as_str(),
                    "type": "User",
                    "$ref": format!("/scim/v2/Users/{}", m.user_id),
                })
            })
            .collect();
    }
    out
}

fn group_id(raw: &str) -> ScimResult<GroupId> {
    raw.parse::<uuid::Uuid>().map(GroupId::from_uuid).map_err(|_| ScimError::not_found("group"))
}

async fn render_group(state: &AppState, actor: &Actor, group: &Group, projection: &Projection) -> ScimResult<Value> {
    let members =
        if projection.wants("members") { Some(state.groups.all_members(actor, group.id).await?) } else { None };
    Ok(projection.apply(group_json(group, members.as_deref())))
}

/// Member ids from `[{"value": "…"}]` (or a single such object).
fn member_ids(value: &Value) -> ScimResult<Vec<UserId>> {
    let items: Vec<&Value> = match value {
        Value::Array(items) => items.iter().collect(),
        Value::Object(_) => vec![value],
        Value::Null => vec![],
        _ => return Err(ScimError::bad("invalidValue", "members must be a list of {\"value\": user id}")),
    };
    items
        .into_iter()
        .map(|m| {
            let id = field(m, "value")
                .and_then(Value::as_str)
                .ok_or_else(|| ScimError::bad("invalidValue", "each member needs a \"value\" naming a user id"))?;
            UserId::parse(id).map_err(|_| ScimError::bad("invalidValue", format!("member {id:?} is not a user id")))
        })
        .collect()
}

fn display_name(value: &Value) -> ScimResult<GroupName> {
    let text = value.as_str().ok_or_else(|| ScimError::bad("invalidValue", "displayName must be a string"))?;
    GroupName::parse(text).map_err(|e| ScimError::bad("invalidValue", format!("displayName: {}", e.message)))
}

fn external_id(value: &Value) -> ScimResult<Option<ExternalId>> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => ExternalId::parse(s)
            .map(Some)
            .map_err(|e| ScimError::bad("invalidValue", format!("externalId: {}", e.message))),
        _ => Err(ScimError::bad("invalidValue", "externalId must be a string")),
    }
}

/// The attributes of a Group body (POST, PUT): displayName required; externalId and
/// members optional; read-only and unknown attributes refused or ignored as RFC 7643 says
/// (`id`, `meta` are ignored; other unknown attributes are an error).
fn group_body(body: &Value) -> ScimResult<(GroupName, Option<ExternalId>, Vec<UserId>)> {
    let object = body.as_object().ok_or_else(|| ScimError::bad("invalidSyntax", "the body must be an object"))?;
    let mut name = None;
    let mut external = None;
    let mut members = Vec::new();
    for (key, value) in object {
        match key.to_ascii_lowercase().as_str() {
            "schemas" => {
                let listed = value.as_array().is_some_and(|s| s.iter().any(|v| v.as_str() == Some(GROUP_SCHEMA)));
                if !listed {
                    return Err(ScimError::bad("invalidValue", format!("schemas must list {GROUP_SCHEMA}")));
                }
            }
            "displayname" => name = Some(display_name(value)?),
            "externalid" => external = external_id(value)?,
            "members" => members = member_ids(value)?,
            "id" | "meta" => {}
            other => return Err(ScimError::bad("invalidSyntax", format!("unknown attribute {other:?} of a Group"))),
        }
    }
    let name = name.ok_or_else(|| ScimError::bad("invalidValue", "displayName is required"))?;
    Ok((name, external, members))
}

/// Create a group.
#[utoipa::path(post, path = "/scim/v2/Groups", tag = "scim",
    security(("bearer" = [])),
    responses((status = 201, body = Object, content_type = "application/scim+json"), (status = 400, description = "SCIM error (`scimType`)", body = Object, content_type = "application/scim+json"), (status = 401, body = Object, content_type = "application/scim+json"), (status = 403, body = Object, content_type = "application/scim+json"))
)]
pub async fn create_group(State(state): State<AppState>, headers: HeaderMap, body: Body) -> ScimResult<Response> {
    let actor = caller(&state, &headers).await?;
    let body = body_json(&state, &headers, body).await?;
    let (display_name, external_id, members) = group_body(&body)?;
    let group = state.groups.create(&actor, NewGroup { display_name, external_id, members }).await?;
    let rendered = render_group(&state, &actor, &group, &Projection::default()).await?;
    let mut res = with_etag(scim_json(StatusCode::CREATED, &rendered), group.version);
    if let Ok(v) = HeaderValue::from_str(&format!("/scim/v2/Groups/{}", group.id)) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    Ok(res)
}

/// One group with its members.
#[utoipa::path(get, path = "/scim/v2/Groups/{id}", tag = "scim",
    params(("id" = String, Path)),
    security(("bearer" = [])),
    responses((status = 200, body = Object, content_type = "application/scim+json"), (status = 404, body = Object, content_type = "application/scim+json"), (status = 400, description = "SCIM error (`scimType`)", body = Object, content_type = "application/scim+json"), (status = 401, body = Object, content_type = "application/scim+json"), (status = 403, body = Object, content_type = "application/scim+json"))
)]
pub async fn get_group(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> ScimResult<Response> {
    let actor = caller(&state, &headers).await?;
    let params = list_params(query.as_deref(), false)?;
    let group = state.groups.get(&actor, group_id(&id)?).await?;
    let rendered = render_group(&state, &actor, &group, &params.projection).await?;
    Ok(with_etag(scim_json(StatusCode::OK, &rendered), group.version))
}

/// An equality on an indexed column, if the filter is (a conjunction of) those.
fn indexed_group_query(filter: &Filter, query: &mut GroupListQuery, id: &mut Option<GroupId>) -> bool {
    match filter {
        Filter::And(a, b) => indexed_group_query(a, query, id) && indexed_group_query(b, query, id),
        Filter::Compare { path, op: CompareOp::Eq, value: CompValue::String(v) } if path.sub.is_none() => {
            if path.is("displayName", None) && query.display_name.is_none() {
                GroupName::parse(v).map(|n| query.display_name = Some(n)).is_ok()
            } else if path.is("externalId", None) && query.external_id.is_none() {
                ExternalId::parse(v).map(|e| query.external_id = Some(e)).is_ok()
            } else if path.is("id", None) && id.is_none() {
                v.parse::<uuid::Uuid>().map(|u| *id = Some(GroupId::from_uuid(u))).is_ok()
            } else {
                false
            }
        }
        _ => false,
    }
}

/// Groups, with filter, startIndex, count, attributes and excludedAttributes.
#[utoipa::path(get, path = "/scim/v2/Groups", tag = "scim",
    security(("bearer" = [])),
    responses((status = 200, body = Object, content_type = "application/scim+json"), (status = 400, description = "SCIM error (`scimType`)", body = Object, content_type = "application/scim+json"), (status = 401, body = Object, content_type = "application/scim+json"), (status = 403, body = Object, content_type = "application/scim+json"))
)]
pub async fn list_groups(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> ScimResult<Response> {
    let actor = caller(&state, &headers).await?;
    let params = list_params(query.as_deref(), true)?;
    let mut store_query = GroupListQuery::default();
    let mut by_id = None;
    let indexed = params.filter.as_ref().is_none_or(|f| indexed_group_query(f, &mut store_query, &mut by_id));
    // Equalities on displayName, externalId and id go to their indexes; any other filter
    // is evaluated here over at most MAX_SCANNED_GROUPS groups (groups are few; users,
    // where this would not hold, are filtered in SQL).
    let mut matching = Vec::new();
    if let Some(id) = by_id {
        match state.groups.get(&actor, id).await {
            Ok(g) => {
                let name_ok = store_query.display_name.as_ref().is_none_or(|n| *n == g.display_name);
                let external_ok = store_query.external_id.is_none() || store_query.external_id == g.external_id;
                if name_ok && external_ok {
                    matching.push((group_json(&g, None), g));
                }
            }
            Err(AppError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    } else {
        let limit = state.groups.list_max_limit();
        loop {
            store_query.limit = limit;
            let page = state.groups.list(&actor, store_query.clone()).await?;
            for g in page.items {
                let json = group_json(&g, None);
                let keep = indexed || params.filter.as_ref().is_none_or(|f| f.matches(&json));
                if keep {
                    matching.push((json, g));
                }
            }
            match page.next_after {
                Some(after) => store_query.after = Some(after),
                None => break,
            }
            if store_query.after.is_some() && matching.len() + limit as usize > MAX_SCANNED_GROUPS && !indexed {
                return Err(ScimError::bad("tooMany", "the filter matches too many groups; narrow it"));
            }
        }
    }
    sort_items(&mut matching, &params.sort);
    let total = matching.len();
    let mut resources = Vec::new();
    for (_, g) in matching.iter().skip(params.start_index - 1).take(params.count) {
        resources.push(render_group(&state, &actor, g, &params.projection).await?);
    }
    Ok(list_response(total, params.start_index, resources))
}

/// Replace a group, members included.
#[utoipa::path(put, path = "/scim/v2/Groups/{id}", tag = "scim",
    params(("id" = String, Path)),
    security(("bearer" = [])),
    responses((status = 200, body = Object, content_type = "application/scim+json"), (status = 404, body = Object, content_type = "application/scim+json"), (status = 412, body = Object, content_type = "application/scim+json"), (status = 400, description = "SCIM error (`scimType`)", body = Object, content_type = "application/scim+json"), (status = 401, body = Object, content_type = "application/scim+json"), (status = 403, body = Object, content_type = "application/scim+json"))
)]
pub async fn replace_group(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> ScimResult<Response> {
    let actor = caller(&state, &headers).await?;
    let id = group_id(&id)?;
    let expected = if_match(&headers)?;
    let body = body_json(&state, &headers, body).await?;
    let (name, external, members) = group_body(&body)?;
    let changes = GroupChanges {
        display_name: Some(name),
        external_id: Some(external),
        members: MembershipChange { replace: true, add: members, remove: vec![] },
    };
    let group = state.groups.update(&actor, id, expected, changes).await?;
    let rendered = render_group(&state, &actor, &group, &Projection::default()).await?;
    Ok(with_etag(scim_json(StatusCode::OK, &rendered), group.version))
}

/// What a list of PATCH operations does to a group, gathered before anything is written:
/// one update (one version, one event) however many operations there are.
#[derive(Default)]
struct GroupPatch {
    changes: GroupChanges,
}

impl GroupPatch {
    fn add_members(&mut self, ids: Vec<UserId>) {
        let m = &mut self.changes.members;
        m.remove.retain(|r| !ids.contains(r));
        m.add.extend(ids);
    }

    fn remove_members(&mut self, ids: Vec<UserId>) {
        let m = &mut self.changes.members;
        m.add.retain(|a| !ids.contains(a));
        m.remove.extend(ids);
    }

    fn replace_members(&mut self, ids: Vec<UserId>) {
        self.changes.members = MembershipChange { replace: true, add: ids, remove: vec![] };
    }

    /// An attribute set by `add`/`replace` with a path or inside a path-less object value.
    fn set(&mut self, op: PatchOp, name: &str, value: &Value) -> ScimResult<()> {
        match name.to_ascii_lowercase().as_str() {
            "displayname" => self.changes.display_name = Some(display_name(value)?),
            "externalid" => self.changes.external_id = Some(external_id(value)?),
            "members" if op == PatchOp::Add => self.add_members(member_ids(value)?),
            "members" => self.replace_members(member_ids(value)?),
            "id" | "meta" | "schemas" => {
                return Err(ScimError::bad("mutability", format!("{name} cannot be changed")));
            }
            other => return Err(ScimError::bad("invalidPath", format!("a Group has no attribute {other:?}"))),
        }
        Ok(())
    }
}

/// Add, replace or remove attributes and members (one version per request).
#[utoipa::path(patch, path = "/scim/v2/Groups/{id}", tag = "scim",
    params(("id" = String, Path)),
    security(("bearer" = [])),
    responses((status = 200, body = Object, content_type = "application/scim+json"), (status = 404, body = Object, content_type = "application/scim+json"), (status = 412, body = Object, content_type = "application/scim+json"), (status = 400, description = "SCIM error (`scimType`)", body = Object, content_type = "application/scim+json"), (status = 401, body = Object, content_type = "application/scim+json"), (status = 403, body = Object, content_type = "application/scim+json"))
)]
pub async fn patch_group(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    body: Body,
) -> ScimResult<Response> {
    let actor = caller(&state, &headers).await?;
    let id = group_id(&id)?;
    let expected = if_match(&headers)?;
    let params = list_params(query.as_deref(), false)?;
    let operations = patch_operations(&state, &headers, body).await?;
    let mut patch = GroupPatch::default();
    for operation in operations {
        let value = operation.value.as_ref().unwrap_or(&Value::Null);
        match (operation.op, &operation.path) {
            (PatchOp::Add | PatchOp::Replace, None) => {
                let object = pathless_object(value)?;
                for (name, v) in object {
                    patch.set(operation.op, name, v)?;
                }
            }
            (op, Some(PatchPath::Attr(path))) if path.sub.is_none() && op != PatchOp::Remove => {
                patch.set(op, &path.name, value)?;
            }
            (PatchOp::Remove, Some(PatchPath::Attr(path))) if path.is("members", None) => {
                // Entra ID and others send the members to remove as the value; without one,
                // every member goes.
                match operation.value.as_ref() {
                    Some(v) if !v.is_null() => patch.remove_members(member_ids(v)?),
                    _ => patch.replace_members(vec![]),
                }
            }
            (PatchOp::Remove, Some(PatchPath::Attr(path))) if path.is("externalId", None) => {
                patch.changes.external_id = Some(None);
            }
            (PatchOp::Remove, Some(PatchPath::Filtered { path, filter, sub: None })) if path.is("members", None) => {
                // `members[value eq "…"]` (Okta, Entra ID): the ids the filter names. The
                // filter is evaluated over {"value": id} of the current members only when
                // it is not a plain equality on value.
                let ids = match filter {
                    Filter::Compare { path, op: CompareOp::Eq, value: CompValue::String(v) }
                        if path.is("value", None) =>
                    {
                        vec![
                            UserId::parse(v)
                                .map_err(|_| ScimError::bad("invalidValue", format!("{v:?} is not a user id")))?,
                        ]
                    }
                    other => state
                        .groups
                        .all_members(&actor, id)
                        .await?
                        .into_iter()
                        .filter(|m| {
                            other.matches(
                                &json!({"value": m.user_id.to_string(), "display": m.name.as_str(), "type": "User"}),
                            )
                        })
                        .map(|m| m.user_id)
                        .collect(),
                };
                patch.remove_members(ids);
            }
            (PatchOp::Remove, Some(PatchPath::Attr(path))) if path.is("displayName", None) => {
                return Err(ScimError::bad("mutability", "displayName is required and cannot be removed"));
            }
            (_, Some(path)) => {
                return Err(ScimError::bad("invalidPath", format!("cannot {:?} at {path:?}", operation.op)));
            }
            // parse_patch_request refuses a remove without a path.
            (PatchOp::Remove, None) => return Err(ScimError::bad("noTarget", "remove needs a path")),
        }
    }
    let mut members = std::mem::take(&mut patch.changes.members);
    members.add.sort();
    members.add.dedup();
    members.remove.sort();
    members.remove.dedup();
    patch.changes.members = members;
    let group = state.groups.update(&actor, id, expected, patch.changes).await?;
    let rendered = render_group(&state, &actor, &group, &params.projection).await?;
    Ok(with_etag(scim_json(StatusCode::OK, &rendered), group.version))
}

/// Delete a group.
#[utoipa::path(delete, path = "/scim/v2/Groups/{id}", tag = "scim",
    params(("id" = String, Path)),
    security(("bearer" = [])),
    responses((status = 204), (status = 404, body = Object, content_type = "application/scim+json"), (status = 412, body = Object, content_type = "application/scim+json"), (status = 400, description = "SCIM error (`scimType`)", body = Object, content_type = "application/scim+json"), (status = 401, body = Object, content_type = "application/scim+json"), (status = 403, body = Object, content_type = "application/scim+json"))
)]
pub async fn delete_group(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ScimResult<Response> {
    let actor = caller(&state, &headers).await?;
    let expected = if_match(&headers)?;
    state.groups.delete(&actor, group_id(&id)?, expected).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// --- discovery ---

/// What this SCIM service provider supports.
#[utoipa::path(get, path = "/scim/v2/ServiceProviderConfig", tag = "scim",
    responses((status = 200, body = Object, content_type = "application/scim+json"))
)]
pub async fn service_provider_config() -> Response {
    scim_json(
        StatusCode::OK,
        &json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
            "documentationUri": "https://github.com/strata/strata#scim",
            "patch": {"supported": true},
            "bulk": {
                "supported": true,
                "maxOperations": crate::scim_bulk::BULK_MAX_OPERATIONS,
                "maxPayloadSize": crate::scim_bulk::BULK_MAX_PAYLOAD,
            },
            "filter": {"supported": true, "maxResults": MAX_COUNT},
            "changePassword": {"supported": false},
            "sort": {"supported": true},
            "etag": {"supported": true},
            "authenticationSchemes": [{
                "type": "oauthbearertoken",
                "name": "Bearer token",
                "description": "A provisioning token (scim_…, from POST /v1/provisioning-tokens), the admin token (STRATA_ADMIN_TOKEN) or an admin's session token, as Authorization: Bearer.",
                "primary": true,
            }],
            "meta": {"resourceType": "ServiceProviderConfig", "location": "/scim/v2/ServiceProviderConfig"},
        }),
    )
}

fn group_resource_type() -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ResourceType"],
        "id": "Group",
        "name": "Group",
        "endpoint": "/Groups",
        "description": "A Strata group",
        "schema": GROUP_SCHEMA,
        "meta": {"resourceType": "ResourceType", "location": "/scim/v2/ResourceTypes/Group"},
    })
}

/// The resource types served.
#[utoipa::path(get, path = "/scim/v2/ResourceTypes", tag = "scim",
    responses((status = 200, body = Object, content_type = "application/scim+json"))
)]
pub async fn resource_types(RawQuery(query): RawQuery) -> ScimResult<Response> {
    list_params(query.as_deref(), true)?;
    Ok(list_response(2, 1, vec![user_resource_type(), group_resource_type()]))
}

/// One resource type.
#[utoipa::path(get, path = "/scim/v2/ResourceTypes/{name}", tag = "scim",
    params(("name" = String, Path)),
    responses((status = 200, body = Object, content_type = "application/scim+json"), (status = 404, body = Object, content_type = "application/scim+json"))
)]
pub async fn resource_type(Path(name): Path<String>) -> ScimResult<Response> {
    if name == "Group" {
        return Ok(scim_json(StatusCode::OK, &group_resource_type()));
    }
    if name == "User" {
        return Ok(scim_json(StatusCode::OK, &user_resource_type()));
    }
    Err(ScimError::not_found("resource type"))
}

fn attribute(name: &str, ty: &str, required: bool, mutability: &str, uniqueness: &str, description: &str) -> Value {
    json!({
        "name": name,
        "type": ty,
        "multiValued": false,
        "description": description,
        "required": required,
        "caseExact": false,
        "mutability": mutability,
        "returned": "default",
        "uniqueness": uniqueness,
    })
}

fn group_schema() -> Value {
    let mut members = attribute("members", "complex", false, "readWrite", "none", "The users in the group.");
    members["multiValued"] = json!(true);
    members["subAttributes"] = json!([
        attribute("value", "string", true, "immutable", "none", "The user's id."),
        attribute("display", "string", false, "readOnly", "none", "The user's name."),
        attribute("type", "string", false, "readOnly", "none", "Always \"User\"."),
        {
            "name": "$ref", "type": "reference", "referenceTypes": ["User"], "multiValued": false,
            "description": "The user's URI.", "required": false, "caseExact": true,
            "mutability": "readOnly", "returned": "default", "uniqueness": "none",
        },
    ]);
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"],
        "id": GROUP_SCHEMA,
        "name": "Group",
        "description": "Group",
        "attributes": [
            attribute("displayName", "string", true, "readWrite", "none", "1–256 characters, no control characters."),
            members,
        ],
        "meta": {"resourceType": "Schema", "location": format!("/scim/v2/Schemas/{GROUP_SCHEMA}")},
    })
}

/// The schemas served, attribute by attribute.
#[utoipa::path(get, path = "/scim/v2/Schemas", tag = "scim",
    responses((status = 200, body = Object, content_type = "application/scim+json"))
)]
pub async fn schemas(RawQuery(query): RawQuery) -> ScimResult<Response> {
    list_params(query.as_deref(), true)?;
    Ok(list_response(3, 1, vec![user_schema(), enterprise_schema(), group_schema()]))
}

/// One schema.
#[utoipa::path(get, path = "/scim/v2/Schemas/{uri}", tag = "scim",
    params(("uri" = String, Path)),
    responses((status = 200, body = Object, content_type = "application/scim+json"), (status = 404, body = Object, content_type = "application/scim+json"))
)]
pub async fn schema(Path(uri): Path<String>) -> ScimResult<Response> {
    if uri == GROUP_SCHEMA {
        return Ok(scim_json(StatusCode::OK, &group_schema()));
    }
    if uri == USER_SCHEMA {
        return Ok(scim_json(StatusCode::OK, &user_schema()));
    }
    if uri == ENTERPRISE_SCHEMA {
        return Ok(scim_json(StatusCode::OK, &enterprise_schema()));
    }
    Err(ScimError::not_found("schema"))
}

// --- Users ---

pub const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
pub const ENTERPRISE_SCHEMA: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
/// Users a filter that no index serves may look through.
const MAX_SCANNED_USERS: usize = 10_000;
/// Tries of a change made without If-Match before a lost version race is reported.
const USER_ATTEMPTS: u32 = 3;

fn user_json(user: &User, external_id: Option<&ExternalId>, enterprise: Option<&EnterpriseUser>) -> Value {
    let mut out = json!({
        "schemas": [USER_SCHEMA],
        "id": user.id.to_string(),
        "userName": user.email.as_str(),
        "name": {"formatted": user.name.as_str()},
        "displayName": user.name.as_str(),
        "active": user.status == UserStatus::Active,
        "emails": [{"value": user.email.as_str(), "type": "work", "primary": true}],
        "meta": {
            "resourceType": "User",
            "created": rfc3339(user.created_at),
            "lastModified": rfc3339(user.updated_at),
            "location": format!("/scim/v2/Users/{}", user.id),
            "version": etag(user.version),
        },
    });
    if let Some(external) = external_id {
        out["externalId"] = json!(external.as_str());
    }
    if let Some(e) = enterprise.filter(|e| !e.is_empty()) {
        let mut ext = serde_json::Map::new();
        for attr in EnterpriseAttr::ALL {
            if let Some(v) = attr.get(e) {
                let v = if attr == EnterpriseAttr::Manager { json!({"value": v.as_str()}) } else { json!(v.as_str()) };
                ext.insert(attr.name().to_owned(), v);
            }
        }
        out["schemas"] = json!([USER_SCHEMA, ENTERPRISE_SCHEMA]);
        out[ENTERPRISE_SCHEMA] = Value::Object(ext);
    }
    out
}

/// The Enterprise User attributes Strata stores (RFC 7643 §4.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EnterpriseAttr {
    EmployeeNumber,
    CostCenter,
    Organization,
    Division,
    Department,
    Manager,
}

impl EnterpriseAttr {
    const ALL: [EnterpriseAttr; 6] = [
        EnterpriseAttr::EmployeeNumber,
        EnterpriseAttr::CostCenter,
        EnterpriseAttr::Organization,
        EnterpriseAttr::Division,
        EnterpriseAttr::Department,
        EnterpriseAttr::Manager,
    ];

    fn name(self) -> &'static str {
        match self {
            EnterpriseAttr::EmployeeNumber => "employeeNumber",
            EnterpriseAttr::CostCenter => "costCenter",
            EnterpriseAttr::Organization => "organization",
            EnterpriseAttr::Division => "division",
            EnterpriseAttr::Department => "department",
            EnterpriseAttr::Manager => "manager",
        }
    }

    fn parse(name: &str) -> ScimResult<EnterpriseAttr> {
        EnterpriseAttr::ALL.into_iter().find(|a| a.name().eq_ignore_ascii_case(name)).ok_or_else(|| {
            ScimError::bad("invalidPath", format!("the Enterprise User extension has no attribute {name:?}"))
        })
    }

    fn slot(self, e: &mut EnterpriseUser) -> &mut Option<EnterpriseText> {
        match self {
            EnterpriseAttr::EmployeeNumber => &mut e.employee_number,
            EnterpriseAttr::CostCenter => &mut e.cost_center,
            EnterpriseAttr::Organization => &mut e.organization,
            EnterpriseAttr::Division => &mut e.division,
            EnterpriseAttr::Department => &mut e.department,
            EnterpriseAttr::Manager => &mut e.manager,
        }
    }

    fn get(self, e: &EnterpriseUser) -> Option<&EnterpriseText> {
        match self {
            EnterpriseAttr::EmployeeNumber => e.employee_number.as_ref(),
            EnterpriseAttr::CostCenter => e.cost_center.as_ref(),
            EnterpriseAttr::Organization => e.organization.as_ref(),
            EnterpriseAttr::Division => e.division.as_ref(),
            EnterpriseAttr::Department => e.department.as_ref(),
            EnterpriseAttr::Manager => e.manager.as_ref(),
        }
    }

    /// A value as sent: a string, null (clears), or for `manager` also `{"value": …}`
    /// (Okta and the RFC) — `sub` is `Some("value")` when the path was `manager.value`.
    fn value(self, value: &Value, sub: Option<&str>) -> ScimResult<Option<EnterpriseText>> {
        let field_name = match self {
            EnterpriseAttr::EmployeeNumber => "employeeNumber",
            EnterpriseAttr::CostCenter => "costCenter",
            EnterpriseAttr::Organization => "organization",
            EnterpriseAttr::Division => "division",
            EnterpriseAttr::Department => "department",
            EnterpriseAttr::Manager => "manager",
        };
        match sub {
            Some(s) if self == EnterpriseAttr::Manager && s.eq_ignore_ascii_case("value") => {}
            Some(s) => return Err(ScimError::bad("invalidPath", format!("{field_name} has no sub-attribute {s:?}"))),
            None => {}
        }
        let value = match value {
            Value::Object(_) if self == EnterpriseAttr::Manager && sub.is_none() => {
                field(value, "value").unwrap_or(&Value::Null)
            }
            other => other,
        };
        match value {
            Value::Null => Ok(None),
            // An empty manager clears it: Entra ID sends {"value": ""} to remove one.
            Value::String(s) if s.is_empty() => Ok(None),
            Value::String(s) => EnterpriseText::parse(field_name, s)
                .map(Some)
                .map_err(|e| ScimError::bad("invalidValue", format!("{field_name}: {}", e.message))),
            _ => Err(ScimError::bad("invalidValue", format!("{field_name} must be a string"))),
        }
    }
}

fn user_id(raw: &str) -> ScimResult<UserId> {
    raw.parse::<uuid::Uuid>().map(UserId::from_uuid).map_err(|_| ScimError::not_found("user"))
}

async fn render_user(state: &AppState, user: &User, projection: &Projection) -> ScimResult<Value> {
    Ok(projection.apply(full_user_json(state, user).await?))
}

/// The user's SCIM JSON with what is stored beside the user row (externalId).
async fn full_user_json(state: &AppState, user: &User) -> ScimResult<Value> {
    let store = state.accounts.store();
    let external = store.external_id_of(user.id).await.map_err(AppError::from)?;
    let enterprise = store.enterprise_of(user.id).await.map_err(AppError::from)?;
    Ok(user_json(user, external.as_ref(), enterprise.as_ref()))
}

fn user_email(value: &Value, what: &str) -> ScimResult<Email> {
    let text = value.as_str().ok_or_else(|| ScimError::bad("invalidValue", format!("{what} must be a string")))?;
    Email::parse(text).map_err(|e| ScimError::bad("invalidValue", format!("{what}: {}", e.message)))
}

fn user_name(text: &str, what: &str) -> ScimResult<DisplayName> {
    DisplayName::parse(text).map_err(|e| ScimError::bad("invalidValue", format!("{what}: {}", e.message)))
}

/// What a User body or PATCH sets. Strata keeps one name: `displayName`, else
/// `name.formatted`, else `name.givenName` + `name.familyName`.
#[derive(Default)]
struct UserFields {
    email: Option<Email>,
    display_name: Option<DisplayName>,
    formatted: Option<String>,
    given: Option<String>,
    family: Option<String>,
    active: Option<bool>,
    password: Option<Password>,
    external_id: Option<Option<ExternalId>>,
    /// `emails` values, checked against the userName once both are known.
    emails: Vec<Email>,
    /// Enterprise User attributes set (None clears); with `enterprise_replace`, every
    /// attribute not named is cleared (POST and PUT carry the whole extension).
    enterprise: Vec<(EnterpriseAttr, Option<EnterpriseText>)>,
    enterprise_replace: bool,
}

impl UserFields {
    fn set(&mut self, name: &str, value: &Value) -> ScimResult<()> {
        match name.to_ascii_lowercase().as_str() {
            "username" => self.email = Some(user_email(value, "userName")?),
            "displayname" => {
                let text =
                    value.as_str().ok_or_else(|| ScimError::bad("invalidValue", "displayName must be a string"))?;
                self.display_name = Some(user_name(text, "displayName")?);
            }
            "name" => {
                let object =
                    value.as_object().ok_or_else(|| ScimError::bad("invalidValue", "name must be an object"))?;
                for (sub, v) in object {
                    self.set_name_part(sub, v)?;
                }
            }
            "active" => {
                self.active = Some(
                    strata_scim::patch::coerce_bool(value)
                        .ok_or_else(|| ScimError::bad("invalidValue", "active must be true or false"))?,
                )
            }
            "password" => {
                let text = value.as_str().ok_or_else(|| ScimError::bad("invalidValue", "password must be a string"))?;
                self.password = Some(
                    Password::parse_new(text)
                        .map_err(|e| ScimError::bad("invalidValue", format!("password: {}", e.message)))?,
                );
            }
            "externalid" => self.external_id = Some(external_id(value)?),
            "emails" => {
                let items = value.as_array().ok_or_else(|| ScimError::bad("invalidValue", "emails must be a list"))?;
                for item in items {
                    let v = field(item, "value")
                        .ok_or_else(|| ScimError::bad("invalidValue", "each email needs a value"))?;
                    self.emails.push(user_email(v, "emails.value")?);
                }
            }
            "id" | "meta" | "schemas" => {}
            other if other.eq_ignore_ascii_case(ENTERPRISE_SCHEMA) => {
                let object = match value {
                    Value::Object(o) => o,
                    Value::Null => return Ok(()),
                    _ => return Err(ScimError::bad("invalidValue", format!("{ENTERPRISE_SCHEMA} must be an object"))),
                };
                for (k, v) in object {
                    let attr = EnterpriseAttr::parse(k)?;
                    self.enterprise.push((attr, attr.value(v, None)?));
                }
            }
            other => {
                return Err(ScimError::bad(
                    "invalidSyntax",
                    format!("unsupported attribute {other:?} of a User (see /scim/v2/Schemas)"),
                ));
            }
        }
        Ok(())
    }

    fn set_name_part(&mut self, sub: &str, value: &Value) -> ScimResult<()> {
        let text = match value {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            _ => return Err(ScimError::bad("invalidValue", format!("name.{sub} must be a string"))),
        };
        match sub.to_ascii_lowercase().as_str() {
            "formatted" => self.formatted = text,
            "givenname" => self.given = text,
            "familyname" => self.family = text,
            other => {
                return Err(ScimError::bad("invalidSyntax", format!("unsupported attribute name.{other} of a User")));
            }
        }
        Ok(())
    }

    /// The one name these fields give, if they give one.
    fn name(&self) -> ScimResult<Option<DisplayName>> {
        if let Some(n) = &self.display_name {
            return Ok(Some(n.clone()));
        }
        if let Some(f) = self.formatted.as_deref().filter(|f| !f.trim().is_empty()) {
            return user_name(f, "name.formatted").map(Some);
        }
        let parts: Vec<&str> = [&self.given, &self.family]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .filter(|s| !s.trim().is_empty())
            .collect();
        if parts.is_empty() {
            return Ok(None);
        }
        user_name(&parts.join(" "), "name").map(Some)
    }

    /// Strata keeps one email, the userName: other `emails` values are refused rather
    /// than dropped.
    fn check_emails(&self, user_name: &Email) -> ScimResult<()> {
        match self.emails.iter().find(|e| *e != user_name) {
            Some(other) => Err(ScimError::bad(
                "invalidValue",
                format!("emails: {} is not the userName; Strata keeps one email, the userName", other.as_str()),
            )),
            None => Ok(()),
        }
    }
}

fn user_fields(body: &Value) -> ScimResult<UserFields> {
    let object = body.as_object().ok_or_else(|| ScimError::bad("invalidSyntax", "the body must be an object"))?;
    let listed = field(body, "schemas")
        .and_then(Value::as_array)
        .is_some_and(|s| s.iter().any(|v| v.as_str() == Some(USER_SCHEMA)));
    if !listed {
        return Err(ScimError::bad("invalidValue", format!("schemas must list {USER_SCHEMA}")));
    }
    let mut fields = UserFields { enterprise_replace: true, ..UserFields::default() };
    for (key, value) in object {
        fields.set(key, value)?;
    }
    Ok(fields)
}

/// A user changed through [`strata_core::service::Accounts::update_user`], retried on a
/// lost version race when the client did not ask for a version.
async fn apply_user_changes(
    state: &AppState,
    actor: &Actor,
    id: UserId,
    expected: Option<Version>,
    fields: &UserFields,
) -> ScimResult<User> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let current = state.accounts.get_user(actor, id).await?;
        if expected.is_some_and(|v| v != current.version) {
            return Err(AppError::VersionMismatch.into());
        }
        let email = fields.email.clone().filter(|e| *e != current.email);
        fields.check_emails(email.as_ref().unwrap_or(&current.email))?;
        let name = fields.name()?.filter(|n| *n != current.name);
        let status = fields
            .active
            .map(|a| if a { UserStatus::Active } else { UserStatus::Disabled })
            .filter(|s| *s != current.status);
        let changes =
            UserChanges { email, name, password: fields.password.clone(), role: None, status, current_password: None };
        if changes.email.is_none() && changes.name.is_none() && changes.password.is_none() && changes.status.is_none() {
            return Ok(current);
        }
        match state.accounts.update_user(actor, id, current.version, changes, "scim").await {
            Err(AppError::VersionMismatch) if expected.is_none() && attempts < USER_ATTEMPTS => continue,
            out => return Ok(out?),
        }
    }
}

/// What is stored beside the user row: externalId and the Enterprise User attributes.
async fn set_external_id(state: &AppState, id: UserId, fields: &UserFields) -> ScimResult<()> {
    let store = state.accounts.store();
    if let Some(external) = &fields.external_id {
        store.set_external_id(id, external.as_ref()).await.map_err(AppError::from)?;
    }
    if fields.enterprise_replace || !fields.enterprise.is_empty() {
        let current = store.enterprise_of(id).await.map_err(AppError::from)?;
        let mut next =
            if fields.enterprise_replace { EnterpriseUser::default() } else { current.clone().unwrap_or_default() };
        for (attr, value) in &fields.enterprise {
            *attr.slot(&mut next) = value.clone();
        }
        // Nothing to write when nothing changes (a PUT without the extension of a user
        // who has none).
        if next != current.unwrap_or_default() {
            store.set_enterprise(id, &next).await.map_err(AppError::from)?;
        }
    }
    Ok(())
}

/// POST /Users.
#[utoipa::path(post, path = "/scim/v2/Users", tag = "scim", security(("bearer" = [])),
    responses((status = 201, body = Object, content_type = "application/scim+json"), (status = 409, description = "userName taken (`uniqueness`)", body = Object, content_type = "application/scim+json"), (status = 400, body = Object, content_type = "application/scim+json"), (status = 401, body = Object, content_type = "application/scim+json"), (status = 403, body = Object, content_type = "application/scim+json"))
)]
pub async fn create_user(State(state): State<AppState>, headers: HeaderMap, body: Body) -> ScimResult<Response> {
    let actor = caller(&state, &headers).await?;
    let body = body_json(&state, &headers, body).await?;
    let fields = user_fields(&body)?;
    let email = fields.email.clone().ok_or_else(|| ScimError::bad("invalidValue", "userName is required"))?;
    fields.check_emails(&email)?;
    let name = match fields.name()? {
        Some(n) => n,
        None => user_name(email.as_str().split('@').next().unwrap_or(email.as_str()), "userName")?,
    };
    let status = if fields.active.unwrap_or(true) { UserStatus::Active } else { UserStatus::Disabled };
    let user = state.accounts.provision_user(&actor, email, name, fields.password.clone(), status).await?;
    set_external_id(&state, user.id, &fields).await?;
    let rendered = render_user(&state, &user, &Projection::default()).await?;
    let mut res = with_etag(scim_json(StatusCode::CREATED, &rendered), user.version);
    if let Ok(v) = HeaderValue::from_str(&format!("/scim/v2/Users/{}", user.id)) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    Ok(res)
}

/// GET /Users/{id}.
#[utoipa::path(get, path = "/scim/v2/Users/{id}", tag = "scim", params(("id" = String, Path)), security(("bearer" = [])),
    responses((status = 200, body = Object, content_type = "application/scim+json"), (status = 404, body = Object, content_type = "application/scim+json"), (status = 401, body = Object, content_type = "application/scim+json"))
)]
pub async fn get_user(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> ScimResult<Response> {
    let actor = caller(&state, &headers).await?;
    admin_only(&actor)?;
    let params = list_params(query.as_deref(), false)?;
    let user = state.accounts.get_user(&actor, user_id(&id)?).await?;
    let rendered = render_user(&state, &user, &params.projection).await?;
    Ok(with_etag(scim_json(StatusCode::OK, &rendered), user.version))
}

/// SCIM is an admin interface: a user's own session may read itself through /v1, not here.
pub(crate) fn admin_only(actor: &Actor) -> ScimResult<()> {
    if actor.is_admin() { Ok(()) } else { Err(AppError::Forbidden("SCIM requires an admin").into()) }
}

/// A SCIM filter split in two: what SQL answers through an index (`predicate`), and what
/// is left to evaluate on each row SQL returns (`residual`). With no residual the SQL is
/// the whole answer, so it also counts, sorts and pages.
#[derive(Debug, Default)]
struct CompiledUserFilter {
    predicate: Option<UserPredicate>,
    residual: Option<Filter>,
}

/// A predicate no user satisfies: the filter names a value no user can have (a userName
/// that is not an email, an id that is not a UUID).
fn no_user() -> UserPredicate {
    UserPredicate::Any(vec![])
}

/// One comparison that an index answers exactly, if it is one. `emails_scope` is set
/// inside `emails[…]`, where `value` is the one email (the userName) and `type eq "work"`
/// and `primary eq true` hold for it.
fn indexed_condition(path: &AttrPath, op: CompareOp, value: &CompValue, emails_scope: bool) -> Option<UserPredicate> {
    let is = |c: UserCondition| Some(UserPredicate::Is(c));
    let core = path.uri.as_deref().is_none_or(|u| u.eq_ignore_ascii_case(USER_SCHEMA));
    let enterprise = path.uri.as_deref().is_some_and(|u| u.eq_ignore_ascii_case(ENTERPRISE_SCHEMA));
    if emails_scope {
        return match (path.name.to_ascii_lowercase().as_str(), op, value) {
            ("value", CompareOp::Eq, CompValue::String(v)) if path.sub.is_none() => {
                Email::parse(v).map_or(Some(no_user()), |e| is(UserCondition::Email(e)))
            }
            ("type", CompareOp::Eq, CompValue::String(t)) if path.sub.is_none() => {
                Some(if t.eq_ignore_ascii_case("work") { UserPredicate::All(vec![]) } else { no_user() })
            }
            ("primary", CompareOp::Eq, CompValue::Bool(p)) if path.sub.is_none() => {
                Some(if *p { UserPredicate::All(vec![]) } else { no_user() })
            }
            _ => None,
        };
    }
    let text = match value {
        CompValue::String(v) => v.as_str(),
        _ => return None,
    };
    let user_name = core && (path.is("userName", None) || path.is("emails", Some("value")));
    match op {
        CompareOp::Eq if user_name => {
            Some(Email::parse(text).map_or(no_user(), |e| UserPredicate::Is(UserCondition::Email(e))))
        }
        // Stored emails are lower-cased and hold no whitespace; a prefix with some is left
        // to the in-memory evaluation rather than reasoned about here.
        CompareOp::Sw if user_name && !text.is_empty() && !text.chars().any(char::is_whitespace) => {
            is(UserCondition::EmailPrefix(text.to_lowercase()))
        }
        CompareOp::Eq if core && path.is("externalId", None) => {
            Some(ExternalId::parse(text).map_or(no_user(), |e| UserPredicate::Is(UserCondition::ExternalId(e))))
        }
        CompareOp::Eq if core && path.is("id", None) => Some(
            text.parse::<uuid::Uuid>()
                .map_or(no_user(), |u| UserPredicate::Is(UserCondition::Id(UserId::from_uuid(u)))),
        ),
        CompareOp::Eq if enterprise && path.is("employeeNumber", None) => Some(
            EnterpriseText::parse("employeeNumber", text)
                .map_or(no_user(), |n| UserPredicate::Is(UserCondition::EmployeeNumber(n))),
        ),
        CompareOp::Gt | CompareOp::Ge | CompareOp::Lt | CompareOp::Le
            if core && path.is("meta", Some("lastModified")) =>
        {
            let at = strata_core::domain::parse_rfc3339(text)?;
            let comparison = match op {
                CompareOp::Gt => Comparison::Greater,
                CompareOp::Ge => Comparison::GreaterOrEqual,
                CompareOp::Lt => Comparison::Less,
                _ => Comparison::LessOrEqual,
            };
            is(UserCondition::UpdatedAt(comparison, at))
        }
        _ => None,
    }
}

fn all_of(a: Option<UserPredicate>, b: Option<UserPredicate>) -> Option<UserPredicate> {
    match (a, b) {
        (Some(a), Some(b)) => Some(UserPredicate::All(vec![a, b])),
        (a, b) => a.or(b),
    }
}

fn and_of(a: Option<Filter>, b: Option<Filter>) -> Option<Filter> {
    match (a, b) {
        (Some(a), Some(b)) => Some(Filter::And(Box::new(a), Box::new(b))),
        (a, b) => a.or(b),
    }
}

fn compile_user_filter(filter: &Filter, emails_scope: bool) -> CompiledUserFilter {
    let whole = || CompiledUserFilter { predicate: None, residual: Some(filter.clone()) };
    match filter {
        Filter::Compare { path, op, value } => match indexed_condition(path, *op, value, emails_scope) {
            Some(p) => CompiledUserFilter { predicate: Some(p), residual: None },
            None => whole(),
        },
        // `and`: each side narrows; what a side cannot say in SQL stays to be checked.
        Filter::And(a, b) => {
            let (a, b) = (compile_user_filter(a, emails_scope), compile_user_filter(b, emails_scope));
            CompiledUserFilter { predicate: all_of(a.predicate, b.predicate), residual: and_of(a.residual, b.residual) }
        }
        // `or`: only when both sides are exact, or the SQL would miss rows.
        Filter::Or(a, b) => {
            let (a, b) = (compile_user_filter(a, emails_scope), compile_user_filter(b, emails_scope));
            match (a, b) {
                (
                    CompiledUserFilter { predicate: Some(pa), residual: None },
                    CompiledUserFilter { predicate: Some(pb), residual: None },
                ) => CompiledUserFilter { predicate: Some(UserPredicate::Any(vec![pa, pb])), residual: None },
                _ => whole(),
            }
        }
        // A user has one email: `emails[X and Y]` is X and Y of that email.
        Filter::ValuePath { path, filter: inner } if !emails_scope && path.is("emails", None) && path.uri.is_none() => {
            let compiled = compile_user_filter(inner, true);
            match compiled.residual {
                None => compiled,
                Some(_) => CompiledUserFilter { predicate: compiled.predicate, residual: Some(filter.clone()) },
            }
        }
        _ => whole(),
    }
}

/// The SQL order a `sortBy` maps to, when the attribute is a column whose order is SCIM's
/// (userName is stored lower-cased; displayName, compared without case, is not).
fn user_order(sort: &Option<(AttrPath, bool)>) -> Option<(UserOrder, bool)> {
    let Some((path, descending)) = sort else { return Some((UserOrder::Id, false)) };
    if path.uri.as_deref().is_some_and(|u| !u.eq_ignore_ascii_case(USER_SCHEMA)) {
        return None;
    }
    let order = if path.is("userName", None) || path.is("emails", Some("value")) {
        UserOrder::Email
    } else if path.is("meta", Some("created")) {
        UserOrder::CreatedAt
    } else if path.is("meta", Some("lastModified")) {
        UserOrder::UpdatedAt
    } else if path.is("id", None) {
        UserOrder::Id
    } else {
        return None;
    };
    Some((order, *descending))
}

/// GET /Users.
#[utoipa::path(get, path = "/scim/v2/Users", tag = "scim", security(("bearer" = [])),
    responses((status = 200, body = Object, content_type = "application/scim+json"), (status = 400, body = Object, content_type = "application/scim+json"), (status = 401, body = Object, content_type = "application/scim+json"))
)]
pub async fn list_users(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> ScimResult<Response> {
    let actor = caller(&state, &headers).await?;
    admin_only(&actor)?;
    let params = list_params(query.as_deref(), true)?;
    let compiled = match &params.filter {
        Some(f) => compile_user_filter(f, false),
        None => CompiledUserFilter::default(),
    };
    let store = state.accounts.store();
    let offset = (params.start_index - 1) as u64;
    if let (None, Some((order, descending))) = (&compiled.residual, user_order(&params.sort)) {
        // SQL is the whole answer: it pages, sorts and counts.
        let search =
            UserSearch { predicate: compiled.predicate.clone(), order, descending, offset, limit: params.count as u32 };
        let page =
            if params.count == 0 { vec![] } else { store.search_users(&search).await.map_err(AppError::from)? };
        // A first page shorter than asked for is everything: no count query needed (the
        // userName lookups identity providers make all end here).
        let total = if offset == 0 && page.len() < params.count {
            page.len() as u64
        } else {
            store.count_users(compiled.predicate.as_ref()).await.map_err(AppError::from)?
        };
        let mut resources = Vec::with_capacity(page.len());
        for u in &page {
            resources.push(render_user(&state, u, &params.projection).await?);
        }
        return Ok(list_response(total as usize, params.start_index, resources));
    }
    // Otherwise SQL narrows (or, with no indexed term, reads users in id order), at most
    // MAX_SCANNED_USERS of them, and the rest of the filter and the sort run here.
    let search = UserSearch {
        predicate: compiled.predicate.clone(),
        limit: (MAX_SCANNED_USERS + 1) as u32,
        ..UserSearch::default()
    };
    let candidates = store.search_users(&search).await.map_err(AppError::from)?;
    if candidates.len() > MAX_SCANNED_USERS {
        return Err(ScimError::bad(
            "tooMany",
            format!(
                "more than {MAX_SCANNED_USERS} users to filter or sort without an index; filter on userName (eq, sw), \
                 emails.value, externalId, id, employeeNumber or meta.lastModified, and sort by userName, meta.created \
                 or meta.lastModified"
            ),
        ));
    }
    let mut matching = Vec::new();
    for user in candidates {
        let json = full_user_json(&state, &user).await?;
        if compiled.residual.as_ref().is_none_or(|f| f.matches(&json)) {
            matching.push((json, user));
        }
    }
    sort_items(&mut matching, &params.sort);
    let total = matching.len();
    let mut resources = Vec::new();
    for (json, _) in matching.into_iter().skip(params.start_index - 1).take(params.count) {
        resources.push(params.projection.apply(json));
    }
    Ok(list_response(total, params.start_index, resources))
}

/// PUT /Users/{id}: every attribute as given; externalId cleared when absent.
#[utoipa::path(put, path = "/scim/v2/Users/{id}", tag = "scim", params(("id" = String, Path)), security(("bearer" = [])),
    responses((status = 200, body = Object, content_type = "application/scim+json"), (status = 404, body = Object, content_type = "application/scim+json"), (status = 412, body = Object, content_type = "application/scim+json"), (status = 400, body = Object, content_type = "application/scim+json"))
)]
pub async fn replace_user(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> ScimResult<Response> {
    let actor = caller(&state, &headers).await?;
    admin_only(&actor)?;
    let id = user_id(&id)?;
    let expected = if_match(&headers)?;
    let body = body_json(&state, &headers, body).await?;
    let mut fields = user_fields(&body)?;
    if fields.email.is_none() {
        return Err(ScimError::bad("invalidValue", "userName is required"));
    }
    fields.active.get_or_insert(true);
    fields.external_id.get_or_insert(None);
    let user = apply_user_changes(&state, &actor, id, expected, &fields).await?;
    set_external_id(&state, id, &fields).await?;
    let rendered = render_user(&state, &user, &Projection::default()).await?;
    Ok(with_etag(scim_json(StatusCode::OK, &rendered), user.version))
}

/// PATCH /Users/{id}: Entra ID's `{"op": "Replace", "path": "active", "value": "False"}`,
/// Okta's path-less `{"op": "replace", "value": {"active": false}}`, `name.givenName`,
/// `emails[type eq "work"].value`. `active=false` ends every session at once.
#[utoipa::path(patch, path = "/scim/v2/Users/{id}", tag = "scim", params(("id" = String, Path)), security(("bearer" = [])),
    responses((status = 200, body = Object, content_type = "application/scim+json"), (status = 404, body = Object, content_type = "application/scim+json"), (status = 412, body = Object, content_type = "application/scim+json"), (status = 400, body = Object, content_type = "application/scim+json"))
)]
pub async fn patch_user(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    body: Body,
) -> ScimResult<Response> {
    let actor = caller(&state, &headers).await?;
    admin_only(&actor)?;
    let id = user_id(&id)?;
    let expected = if_match(&headers)?;
    let params = list_params(query.as_deref(), false)?;
    let operations = patch_operations(&state, &headers, body).await?;
    let mut fields = UserFields::default();
    for operation in operations {
        let value = operation.value.as_ref().unwrap_or(&Value::Null);
        match (operation.op, &operation.path) {
            (PatchOp::Add | PatchOp::Replace, None) => {
                let object = pathless_object(value)?;
                for (name, v) in object {
                    if name.eq_ignore_ascii_case(ENTERPRISE_SCHEMA) {
                        // Okta: the extension as one object, merged attribute by attribute.
                        fields.set(name, v)?;
                    } else if name.contains('.') || name.contains(':') {
                        // Entra ID sends {"name.givenName": "…"} as keys of a path-less value.
                        let path = AttrPath::parse(name).map_err(|e| ScimError::bad("invalidPath", e.message))?;
                        set_user_path(&mut fields, &path, v)?;
                    } else {
                        fields.set(name, v)?;
                    }
                }
            }
            (PatchOp::Add | PatchOp::Replace, Some(PatchPath::Attr(path))) => set_user_path(&mut fields, path, value)?,
            (PatchOp::Add | PatchOp::Replace, Some(PatchPath::Filtered { path, sub: Some(sub), .. }))
                if path.is("emails", None) && sub.eq_ignore_ascii_case("value") =>
            {
                // The one email is the userName: changing the work email changes both.
                fields.email = Some(user_email(value, "emails.value")?);
            }
            (PatchOp::Remove, Some(PatchPath::Attr(path))) if path.is("externalId", None) => {
                fields.external_id = Some(None);
            }
            (PatchOp::Remove, Some(PatchPath::Attr(path)))
                if path.uri.as_deref().is_some_and(|u| u.eq_ignore_ascii_case(ENTERPRISE_SCHEMA)) =>
            {
                fields.enterprise.push((EnterpriseAttr::parse(&path.name)?, None));
            }
            (PatchOp::Remove, Some(path)) => {
                return Err(ScimError::bad("mutability", format!("{path:?} cannot be removed from a Strata user")));
            }
            (_, Some(path)) => {
                return Err(ScimError::bad("invalidPath", format!("cannot {:?} at {path:?}", operation.op)));
            }
            (PatchOp::Remove, None) => return Err(ScimError::bad("noTarget", "remove needs a path")),
        }
    }
    let user = apply_user_changes(&state, &actor, id, expected, &fields).await?;
    set_external_id(&state, id, &fields).await?;
    let rendered = render_user(&state, &user, &params.projection).await?;
    Ok(with_etag(scim_json(StatusCode::OK, &rendered), user.version))
}

fn set_user_path(fields: &mut UserFields, path: &AttrPath, value: &Value) -> ScimResult<()> {
    if path.to_string().eq_ignore_ascii_case(ENTERPRISE_SCHEMA) {
        // The path is the extension itself: its value is an object of attributes.
        return fields.set(ENTERPRISE_SCHEMA, value);
    }
    if let Some(uri) = &path.uri {
        if uri.eq_ignore_ascii_case(ENTERPRISE_SCHEMA) {
            // Entra ID: `urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department`.
            let attr = EnterpriseAttr::parse(&path.name)?;
            fields.enterprise.push((attr, attr.value(value, path.sub.as_deref())?));
            return Ok(());
        }
        if !uri.eq_ignore_ascii_case(USER_SCHEMA) {
            return Err(ScimError::bad("invalidPath", format!("unsupported schema {uri}")));
        }
    }
    match &path.sub {
        Some(sub) if path.is("name", Some(sub)) => fields.set_name_part(sub, value),
        Some(_) => Err(ScimError::bad("invalidPath", format!("a User has no attribute {path}"))),
        None => fields.set(&path.name, value),
    }
}

/// DELETE /Users/{id}: the user and every session of theirs.
#[utoipa::path(delete, path = "/scim/v2/Users/{id}", tag = "scim", params(("id" = String, Path)), security(("bearer" = [])),
    responses((status = 204), (status = 404, body = Object, content_type = "application/scim+json"), (status = 412, body = Object, content_type = "application/scim+json"))
)]
pub async fn delete_user(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ScimResult<Response> {
    let actor = caller(&state, &headers).await?;
    admin_only(&actor)?;
    let expected = if_match(&headers)?;
    state.accounts.delete_user(&actor, user_id(&id)?, expected).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn user_resource_type() -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ResourceType"],
        "id": "User",
        "name": "User",
        "endpoint": "/Users",
        "description": "A Strata user account",
        "schema": USER_SCHEMA,
        "schemaExtensions": [{"schema": ENTERPRISE_SCHEMA, "required": false}],
        "meta": {"resourceType": "ResourceType", "location": "/scim/v2/ResourceTypes/User"},
    })
}

/// RFC 7643 §4.3, the attributes Strata stores. Filterable like the core ones;
/// `employeeNumber eq` is served by an index.
fn enterprise_schema() -> Value {
    let text = |name: &str, description: &str| attribute(name, "string", false, "readWrite", "none", description);
    let mut manager = attribute("manager", "complex", false, "readWrite", "none", "The user's manager.");
    manager["subAttributes"] = json!([attribute(
        "value",
        "string",
        false,
        "readWrite",
        "none",
        "The manager's id, as the identity provider sends it."
    ),]);
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"],
        "id": ENTERPRISE_SCHEMA,
        "name": "EnterpriseUser",
        "description": "Enterprise User",
        "attributes": [
            text("employeeNumber", "A numeric or alphanumeric identifier assigned by the organization; 1–256 characters."),
            text("costCenter", "1–256 characters."),
            text("organization", "1–256 characters."),
            text("division", "1–256 characters."),
            text("department", "1–256 characters."),
            manager,
        ],
        "meta": {"resourceType": "Schema", "location": format!("/scim/v2/Schemas/{ENTERPRISE_SCHEMA}")},
    })
}

fn user_schema() -> Value {
    let mut name = attribute(
        "name",
        "complex",
        false,
        "readWrite",
        "none",
        "Strata keeps one name: formatted, or givenName and familyName joined.",
    );
    name["subAttributes"] = json!([
        attribute("formatted", "string", false, "readWrite", "none", "The full name."),
        attribute("givenName", "string", false, "writeOnly", "none", "Joined with familyName into the one name."),
        attribute("familyName", "string", false, "writeOnly", "none", "Joined with givenName into the one name."),
    ]);
    let mut emails = attribute("emails", "complex", false, "readWrite", "none", "One email, the userName.");
    emails["multiValued"] = json!(true);
    emails["subAttributes"] = json!([
        attribute("value", "string", false, "readWrite", "none", "Must be the userName."),
        attribute("type", "string", false, "readOnly", "none", "Always \"work\"."),
        attribute("primary", "boolean", false, "readOnly", "none", "Always true."),
    ]);
    let mut password = attribute("password", "string", false, "writeOnly", "none", "8–256 characters; never returned.");
    password["returned"] = json!("never");
    let mut user_name =
        attribute("userName", "string", true, "readWrite", "server", "The email address, normalised to lower case.");
    user_name["caseExact"] = json!(false);
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"],
        "id": USER_SCHEMA,
        "name": "User",
        "description": "User Account",
        "attributes": [
            user_name,
            name,
            attribute("displayName", "string", false, "readWrite", "none", "1–100 characters, no control characters."),
            attribute("active", "boolean", false, "readWrite", "none", "false disables the account and ends its sessions at once."),
            emails,
            password,
        ],
        "meta": {"resourceType": "Schema", "location": format!("/scim/v2/Schemas/{USER_SCHEMA}")},
    })
}
