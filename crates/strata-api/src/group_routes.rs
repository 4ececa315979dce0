//! Handlers of `/v1/groups` (admins only): groups, their members, membership changes.
//! Parse, call [`strata_core::groups::Groups`], render.

use axum::Json;
use axum::extract::{FromRequestParts, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use strata_core::domain::{GroupId, UserId};
use strata_core::groups::{ExternalId, Group, GroupChanges, GroupListQuery, GroupName, MembershipChange, NewGroup};

use crate::AppState;
use crate::dto::{
    AddMembersRequest, CreateGroupRequest, GroupBody, GroupList, MemberBody, MemberList, UpdateGroupRequest,
};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{Caller, IfMatch, JsonBody, ListJsonBody, OptionalIfMatch, query_pairs};
use crate::routes::{decode_cursor, encode_cursor, list_limit};

/// The ids in a `/v1/groups/{id}[/members/{user_id}]` path.
pub struct GroupPath(pub GroupId, pub Option<UserId>);

impl FromRequestParts<AppState> for GroupPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let axum::extract::Path(raw) = axum::extract::Path::<Vec<String>>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::bad_request("invalid_uuid", "id", "the path must name a group"))?;
        let parse = |field: &'static str, s: &String| {
            s.parse::<uuid::Uuid>()
                .map_err(|_| ApiError::bad_request("invalid_uuid", field, format!("{s:?} is not a UUID")))
        };
        let id = parse("id", raw.first().ok_or_else(|| ApiError::bad_request("invalid_uuid", "id", "no id"))?)?;
        let user = raw.get(1).map(|s| parse("user_id", s)).transpose()?;
        Ok(GroupPath(GroupId::from_uuid(id), user.map(UserId::from_uuid)))
    }
}

/// User ids from a body list, each parsed; the first bad one is named by its position.
pub(crate) fn user_ids(field: &str, raw: &[String]) -> Result<Vec<UserId>, ApiError> {
    raw.iter()
        .enumerate()
        .map(|(i, s)| {
            UserId::parse(s).map_err(|_| {
                ApiError::invalid_field("invalid_uuid", format!("{field}[{i}]"), format!("{s:?} is not a UUID"))
            })
        })
        .collect()
}

fn group_response(status: StatusCode, group: &Group) -> Response {
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", group.version.0)) {
        headers.insert(header::ETAG, v);
    }
    if status == StatusCode::CREATED
        && let Ok(v) = HeaderValue::from_str(&format!("/v1/groups/{}", group.id))
    {
        headers.insert(header::LOCATION, v);
    }
    (status, headers, Json(GroupBody::from(group))).into_response()
}

/// Create a group, optionally with members.
#[utoipa::path(
    post, path = "/v1/groups", tag = "groups",
    request_body = CreateGroupRequest,
    security(("bearer" = [])),
    responses(
        (status = 201, body = GroupBody, headers(("Location" = String), ("ETag" = String))),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid name or external id, unknown member, too many members", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_group(
    State(state): State<AppState>,
    Caller(actor): Caller,
    ListJsonBody(req): ListJsonBody<CreateGroupRequest>,
) -> ApiResult<Response> {
    let new = NewGroup {
        display_name: GroupName::parse(&req.display_name)?,
        external_id: req.external_id.as_deref().map(ExternalId::parse).transpose()?,
        members: user_ids("members", &req.members)?,
    };
    let group = state.groups.create(&actor, new).await?;
    Ok(group_response(StatusCode::CREATED, &group))
}

/// List groups in creation order, with cursor pagination.
#[utoipa::path(
    get, path = "/v1/groups", tag = "groups",
    params(
        ("limit" = Option<u32>, Query, description = "1–200, default 50"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
        ("display_name" = Option<String>, Query, description = "Exact display name"),
        ("external_id" = Option<String>, Query, description = "Exact external id"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, body = GroupList),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_groups(
    State(state): State<AppState>,
    Caller(actor): Caller,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<GroupList>> {
    let mut q = GroupListQuery::default();
    for (k, v) in query_pairs(query.as_deref(), &["limit", "cursor", "display_name", "external_id"])? {
        match k.as_str() {
            "limit" => q.limit = list_limit(&state, &v)?,
            "cursor" => q.after = Some(GroupId::from_bytes(decode_cursor(&v)?)),
            "display_name" => q.display_name = Some(GroupName::parse(&v)?),
            _ => q.external_id = Some(ExternalId::parse(&v)?),
        }
    }
    let page = state.groups.list(&actor, q).await?;
    Ok(Json(GroupList {
        items: page.items.iter().map(GroupBody::from).collect(),
        next_cursor: page.next_after.map(|id| encode_cursor(id.as_bytes())),
    }))
}

#[utoipa::path(
    get, path = "/v1/groups/{id}", tag = "groups",
    params(("id" = String, Path, format = Uuid)),
    security(("bearer" = [])),
    responses(
        (status = 200, body = GroupBody, headers(("ETag" = String))),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_group(
    State(state): State<AppState>,
    Caller(actor): Caller,
    GroupPath(id, _): GroupPath,
) -> ApiResult<Response> {
    Ok(group_response(StatusCode::OK, &state.groups.get(&actor, id).await?))
}

/// Rename a group or change its external id.
#[utoipa::path(
    patch, path = "/v1/groups/{id}", tag = "groups",
    request_body = UpdateGroupRequest,
    params(("id" = String, Path, format = Uuid), ("If-Match" = String, Header, description = "The group's ETag")),
    security(("bearer" = [])),
    responses(
        (status = 200, body = GroupBody, headers(("ETag" = String))),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "Stale If-Match", body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
        (status = 428, description = "If-Match missing", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn update_group(
    State(state): State<AppState>,
    Caller(actor): Caller,
    GroupPath(id, _): GroupPath,
    IfMatch(expected): IfMatch,
    JsonBody(req): JsonBody<UpdateGroupRequest>,
) -> ApiResult<Response> {
    let changes = GroupChanges {
        display_name: req.display_name.as_deref().map(GroupName::parse).transpose()?,
        external_id: req.external_id.map(|e| e.as_deref().map(ExternalId::parse).transpose()).transpose()?,
        members: MembershipChange::default(),
    };
    if changes.display_name.is_none() && changes.external_id.is_none() {
        return Err(ApiError::invalid_field("empty_patch", "body", "the body must change at least one field"));
    }
    Ok(group_response(StatusCode::OK, &state.groups.update(&actor, id, Some(expected), changes).await?))
}

/// Delete a group (its members stay; only the memberships go).
#[utoipa::path(
    delete, path = "/v1/groups/{id}", tag = "groups",
    params(("id" = String, Path, format = Uuid), ("If-Match" = Option<String>, Header, description = "Delete only this version")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 412, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete_group(
    State(state): State<AppState>,
    Caller(actor): Caller,
    GroupPath(id, _): GroupPath,
    OptionalIfMatch(expected): OptionalIfMatch,
) -> ApiResult<StatusCode> {
    state.groups.delete(&actor, id, expected).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A group's members in user id order, with cursor pagination.
#[utoipa::path(
    get, path = "/v1/groups/{id}/members", tag = "groups",
    params(
        ("id" = String, Path, format = Uuid),
        ("limit" = Option<u32>, Query, description = "1–200, default 50"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, body = MemberList),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_members(
    State(state): State<AppState>,
    Caller(actor): Caller,
    GroupPath(id, _): GroupPath,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<MemberList>> {
    let (mut limit, mut after) = (None, None);
    for (k, v) in query_pairs(query.as_deref(), &["limit", "cursor"])? {
        match k.as_str() {
            "limit" => limit = Some(list_limit(&state, &v)?),
            _ => after = Some(UserId::from_bytes(decode_cursor(&v)?)),
        }
    }
    let page = state.groups.members(&actor, id, after, limit).await?;
    Ok(Json(MemberList {
        items: page
            .items
            .iter()
            .map(|m| MemberBody {
                user_id: m.user_id.to_string(),
                email: m.email.as_str().to_owned(),
                name: m.name.as_str().to_owned(),
            })
            .collect(),
        next_cursor: page.next_after.map(|id| encode_cursor(id.as_bytes())),
    }))
}

/// Add members: one row each; the group's version moves, its other rows are not touched.
#[utoipa::path(
    post, path = "/v1/groups/{id}/members", tag = "groups",
    request_body = AddMembersRequest,
    params(("id" = String, Path, format = Uuid), ("If-Match" = Option<String>, Header, description = "Change only this version")),
    security(("bearer" = [])),
    responses(
        (status = 200, body = GroupBody, headers(("ETag" = String))),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 412, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad or unknown user id, none or too many", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn add_members(
    State(state): State<AppState>,
    Caller(actor): Caller,
    GroupPath(id, _): GroupPath,
    OptionalIfMatch(expected): OptionalIfMatch,
    ListJsonBody(req): ListJsonBody<AddMembersRequest>,
) -> ApiResult<Response> {
    let add = user_ids("user_ids", &req.user_ids)?;
    if add.is_empty() {
        return Err(ApiError::invalid_field("required", "user_ids", "name at least one user id"));
    }
    let changes =
        GroupChanges { members: MembershipChange { add, ..MembershipChange::default() }, ..GroupChanges::default() };
    Ok(group_response(StatusCode::OK, &state.groups.update(&actor, id, expected, changes).await?))
}

/// Remove one member.
#[utoipa::path(
    delete, path = "/v1/groups/{id}/members/{user_id}", tag = "groups",
    params(("id" = String, Path, format = Uuid), ("user_id" = String, Path, format = Uuid), ("If-Match" = Option<String>, Header)),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Not a member any more (whether or not they were)"),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such group", body = Problem, content_type = "application/problem+json"),
        (status = 412, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn remove_member(
    State(state): State<AppState>,
    Caller(actor): Caller,
    GroupPath(id, user): GroupPath,
    OptionalIfMatch(expected): OptionalIfMatch,
) -> ApiResult<StatusCode> {
    let user = user.ok_or_else(|| ApiError::bad_request("invalid_uuid", "user_id", "the path must name a user"))?;
    let changes = GroupChanges {
        members: MembershipChange { remove: vec![user], ..MembershipChange::default() },
        ..GroupChanges::default()
    };
    state.groups.update(&actor, id, expected, changes).await?;
    Ok(StatusCode::NO_CONTENT)
}
