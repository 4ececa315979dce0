//! The OpenAPI 3.1 document, generated from the handlers' annotations and DTO types.

use std::sync::OnceLock;

use utoipa::openapi::security::{ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::dto::{
    AddMembersRequest, AttemptBody, AuditEntryBody, AuditList, CreateGroupRequest, CreateUserRequest,
    CreateWebhookRequest, DeliveryBody, DeliveryDetail, DeliveryList, GroupBody, GroupList, GroupRef, Health,
    LoginRequest, LoginResponse, MemberBody, MemberList, ReplayRequest, ReplayResponse, SessionBody,
    UpdateGroupRequest, UpdateUserRequest, UpdateWebhookRequest, UserBody, UserList, WebhookBody, WebhookList, WhoAmI,
};
use crate::error::Problem;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        let mut scheme = Http::new(HttpAuthScheme::Bearer);
        scheme.description =
            Some("A session token from POST /v1/sessions, or the configured admin token (STRATA_ADMIN_TOKEN).".into());
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
        // Every route that takes the bearer token takes the session cookie instead, when no
        // Authorization header is sent; unsafe methods then need X-CSRF-Token too.
        components.add_security_scheme(
            "session_cookie",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                "strata_session",
                "The session cookie of a login with `\"cookie\": true` (name: auth.cookie_name). POST, PUT, PATCH and DELETE authenticated by it need `X-CSRF-Token` (the login's `csrf_token`; else 403 `csrf_token_missing` / `csrf_token_invalid`) and, when the browser sends `Origin`, a listed or same origin (else 403 `origin_not_allowed`).",
            ))),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Strata",
        description = "User accounts and sessions. Errors are RFC 9457 `application/problem+json` with a stable `code` and the `field` at fault. Every response carries `Server-Timing` (app, db, hash) and `X-Request-Id`.",
    ),
    paths(
        crate::routes::create_user,
        crate::routes::list_users,
        crate::routes::get_user,
        crate::routes::update_user,
        crate::routes::delete_user,
        crate::routes::list_user_sessions,
        crate::routes::revoke_user_sessions,
        crate::routes::login,
        crate::routes::current_session,
        crate::routes::logout,
        crate::routes::list_audit,
        crate::lifecycle_routes::request_password_reset,
        crate::lifecycle_routes::confirm_password_reset,
        crate::lifecycle_routes::request_verification,
        crate::lifecycle_routes::confirm_verification,
        crate::lifecycle_routes::confirm_email_change,
        crate::group_routes::create_group,
        crate::group_routes::list_groups,
        crate::group_routes::get_group,
        crate::group_routes::update_group,
        crate::group_routes::delete_group,
        crate::group_routes::list_members,
        crate::group_routes::add_members,
        crate::group_routes::remove_member,
        crate::provisioning_routes::create_token,
        crate::provisioning_routes::list_tokens,
        crate::provisioning_routes::revoke_token,
        crate::scim_routes::service_provider_config,
        crate::scim_routes::resource_types,
        crate::scim_routes::resource_type,
        crate::scim_routes::schemas,
        crate::scim_routes::schema,
        crate::scim_routes::list_users,
        crate::scim_routes::create_user,
        crate::scim_routes::get_user,
        crate::scim_routes::replace_user,
        crate::scim_routes::patch_user,
        crate::scim_routes::delete_user,
        crate::scim_routes::list_groups,
        crate::scim_routes::create_group,
        crate::scim_routes::get_group,
        crate::scim_routes::replace_group,
        crate::scim_routes::patch_group,
        crate::scim_routes::delete_group,
        crate::scim_bulk::bulk,
        crate::mfa_routes::start_totp,
        crate::mfa_routes::confirm_totp,
        crate::mfa_routes::regenerate_recovery_codes,
        crate::mfa_routes::disable_totp,
        crate::mfa_routes::complete_mfa_login,
        crate::webhook_routes::create_webhook,
        crate::webhook_routes::list_webhooks,
        crate::webhook_routes::get_webhook,
        crate::webhook_routes::update_webhook,
        crate::webhook_routes::delete_webhook,
        crate::webhook_routes::rotate_secret,
        crate::webhook_routes::list_deliveries,
        crate::webhook_routes::get_delivery,
        crate::webhook_routes::replay_delivery,
        crate::webhook_routes::replay_failed,
        crate::healthz,
        crate::readyz,
        crate::metrics,
        crate::openapi_json,
        crate::asyncapi_json,
        crate::docs::page,
        crate::docs::asset,
        crate::admin::page,
        crate::admin::asset,
        crate::admin::bench_report,
    ),
    components(schemas(
        CreateUserRequest, UpdateUserRequest, LoginRequest, UserBody, SessionBody, LoginResponse, WhoAmI, UserList,
        crate::dto::UserSessionBody, crate::dto::SessionList, crate::dto::SessionsRevoked,
        AuditEntryBody, AuditList, CreateWebhookRequest, UpdateWebhookRequest, WebhookBody, WebhookList, DeliveryBody,
        DeliveryList, DeliveryDetail, AttemptBody, ReplayRequest, ReplayResponse, Health, Problem,
        crate::lifecycle_routes::PasswordResetRequest, crate::lifecycle_routes::PasswordResetAccepted,
        crate::lifecycle_routes::PasswordResetConfirmRequest, crate::lifecycle_routes::VerificationRequest,
        crate::lifecycle_routes::EmailChangeConfirmRequest, crate::dto::EmailChangePendingBody,
        CreateGroupRequest, UpdateGroupRequest, AddMembersRequest, GroupBody, GroupList, GroupRef, MemberBody, MemberList,
        crate::provisioning_routes::CreateProvisioningTokenRequest, crate::provisioning_routes::ProvisioningTokenBody,
        crate::provisioning_routes::ProvisioningTokenList,
        crate::mfa_routes::TotpEnrolRequest, crate::mfa_routes::TotpEnrolResponse, crate::mfa_routes::TotpCodeRequest,
        crate::mfa_routes::RecoveryCodes, crate::mfa_routes::MfaLoginRequest
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "users", description = "Accounts"),
        (name = "sessions", description = "Login, who-am-I, logout"),
        (name = "email verification", description = "Proving an account's email: a mailed one-time token"),
        (name = "email changes", description = "Confirming a change of your own email with the token mailed to the new address"),
        (name = "password resets", description = "Forgotten passwords: a mailed one-time token, then a new password"),
        (name = "groups", description = "Groups of users and their members (admins only)"),
        (name = "scim", description = "SCIM 2.0 (RFC 7644) for identity providers: application/scim+json, SCIM error bodies"),
        (name = "mfa", description = "TOTP second factor (RFC 6238): enrolment, recovery codes, disabling, admin reset"),
        (name = "audit", description = "The audit log of every event"),
        (name = "webhooks", description = "Signed, durable event deliveries over HTTP (Standard Webhooks, CloudEvents binary mode)"),
        (name = "operations", description = "Health, readiness, metrics, documentation"),
        (name = "admin console", description = "The web console at /admin: its page and assets, and the bench report viewer"),
    )
)]
pub struct ApiDoc;

pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc
}

/// Serialised once; the document does not change while the process runs.
pub fn document_json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        let mut doc = serde_json::to_value(document()).unwrap_or_default();
        crate::openapi_rules::apply(&mut doc);
        doc.to_string()
    })
}
