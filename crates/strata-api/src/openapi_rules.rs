//! The server's input rules, written into the OpenAPI document: lengths, patterns, ranges,
//! enumerations, required bodies and the error statuses every body-taking or authenticated
//! operation can answer. The numbers come from the same constants the parsers use
//! (strata-core's domain types), so the document cannot drift from what is enforced; the
//! patterns are what the parsers accept, narrowed where JSON Schema cannot say it exactly
//! (an email's parts, "not only whitespace"): data that matches the document is accepted.
//!
//! `bench/schemathesis.sh` and CI run Schemathesis against the served document to keep it so.

use crate::routes::EMAIL_PREFIX_MAX_CHARS;
use serde_json::{Map, Value, json};
use strata_core::domain::{IDEMPOTENCY_KEY_MAX_LEN, NAME_MAX_CHARS, PASSWORD_MAX_CHARS, PASSWORD_MIN_CHARS};
use strata_core::events::EVENT_TYPES;
use strata_core::groups::{EXTERNAL_ID_MAX_CHARS, GROUP_NAME_MAX_CHARS, MAX_MEMBERS_PER_CHANGE};
use strata_core::webhook_admin::{DESCRIPTION_MAX_CHARS, RATE_LIMIT_MAX};
use strata_core::webhooks::{EVENTS_MAX, URL_MAX_LEN};

/// No control characters (Unicode Cc, and the line/paragraph separators the parsers refuse
/// too).
const NO_CONTROL: &str = r"^[^\u0000-\u001f\u007f-\u009f\u2028\u2029]*$";
/// As [`NO_CONTROL`], and at least one character that is not whitespace.
const TEXT: &str = r"^[^\u0000-\u001f\u007f-\u009f\u2028\u2029]*[^\s\u0000-\u001f\u007f-\u009f\u2028\u2029][^\u0000-\u001f\u007f-\u009f\u2028\u2029]*$";
/// `Email::parse`, restricted to ASCII so that characters are bytes (the server counts
/// bytes): surrounding whitespace (trimmed), a local part of 1–64 characters without
/// whitespace, control characters, `"(),:;<>[\]@` or a leading, trailing or doubled dot, and a
/// host name of at least two labels of letters, digits and inner hyphens (1–63 each). The
/// server also takes non-ASCII letters in both parts.
const EMAIL: &str = r#"^(?=\s*\S{6,254}\s*$)\s*(?=[^@]{1,64}@)[!#-'*+\-/-9=?A-Z^-~]+(\.[!#-'*+\-/-9=?A-Z^-~]+)*@(?=[^.]{1,63}(\.|\s*$))[A-Za-z0-9]([A-Za-z0-9]|-(?=[A-Za-z0-9-]))*(\.(?=[^.]{1,63}(\.|\s*$))[A-Za-z0-9]([A-Za-z0-9]|-(?=[A-Za-z0-9-]))*)+\s*$"#;
/// `next_cursor`: version byte 1 and a 16-byte id, base64url without padding (23 characters,
/// canonical last character).
const CURSOR: &str = r"^A[Q-Za-f][A-Za-z0-9_-]{20}[AEIMQUYcgkosw048]$";
/// An ETag as Strata sends it (`"3"`), weak form accepted; or empty, an empty list, which is
/// the same as no header (RFC 9110 §5.6.1).
const ETAG: &str = r#"^((W/)?"[1-9][0-9]{0,17}")?$"#;
/// Control characters but the newline refused.
const DESCRIPTION: &str = r"^[^\u0000-\u0009\u000b-\u001f\u007f-\u009f]*$";
/// http(s), a host name or IPv4 address, an optional port, a path without a fragment.
const URL: &str = r#"^https?://(?=[A-Za-z0-9.-]{1,253}([:/]|$))[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*(:[1-9][0-9]{0,3})?(/[!"$-~]*)?$"#;
/// A six-digit TOTP code, or a recovery code (base32, 10 characters, dash in the middle).
const SECOND_FACTOR: &str = r"^([0-9]{6}|[a-z2-7]{5}-[a-z2-7]{5})$";

/// Default and maximum page size of the list endpoints (the defaults of the account
/// settings; deployments that change them change the range).
const LIST_MAX: u64 = 200;

pub(crate) fn apply(doc: &mut Value) {
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for (path, item) in paths.iter_mut() {
            let Some(item) = item.as_object_mut() else { continue };
            for (method, op) in item.iter_mut() {
                operation(path, method, op);
            }
        }
    }
    if let Some(schemas) = doc.pointer_mut("/components/schemas").and_then(Value::as_object_mut) {
        for (name, schema) in schemas.iter_mut() {
            body_schema(name, schema);
        }
    }
}

fn operation(path: &str, method: &str, op: &mut Value) {
    let scim = path.starts_with("/scim/");
    if let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) {
        for p in params {
            parameter(path, p);
        }
    }
    // The one optional body: an admin's MFA reset sends none, the user sends their code.
    let optional_body = path == "/v1/users/{id}/mfa/totp" && method == "delete";
    if let Some(body) = op.get_mut("requestBody").and_then(Value::as_object_mut) {
        body.insert("required".into(), Value::Bool(!optional_body));
        // Optional means absent, not `null`: a body that is sent must be the object.
        if let Some(schema) =
            body.get_mut("content").and_then(|c| c.get_mut("application/json")).and_then(|m| m.get_mut("schema"))
        {
            if let Some(only) = schema.get("oneOf").and_then(|alts| the_one_not_null(alts, |s| &s["type"])) {
                *schema = only;
            }
        }
    } else if scim && matches!(method, "post" | "put" | "patch") {
        // The SCIM handlers read their own media type. The body is a SCIM resource, a PatchOp
        // or a BulkRequest (RFC 7644); here only what every one of them must carry, the full
        // attribute rules are /scim/v2/Schemas.
        op["requestBody"] = json!({
            "required": true,
            "content": {"application/scim+json": {"schema": scim_body(path, method)}},
        });
    }
    let has_body = op.get("requestBody").is_some();
    let has_query = op
        .get("parameters")
        .and_then(Value::as_array)
        .is_some_and(|ps| ps.iter().any(|p| p["in"] == "query" && p["name"] != "limit" && p["name"] != "cursor"));
    let authenticated = op.get("security").and_then(Value::as_array).is_some_and(|s| !s.is_empty());
    let uuid_in_path = op
        .get("parameters")
        .and_then(Value::as_array)
        .is_some_and(|ps| ps.iter().any(|p| p["in"] == "path" && p["schema"]["format"] == "uuid"));
    let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else { return };
    let problem = |description: &str| {
        if scim {
            json!({"description": description, "content": {"application/scim+json": {"schema": {"type": "object"}}}})
        } else {
            json!({"description": description, "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}})
        }
    };
    if has_body {
        responses.entry("415").or_insert_with(|| {
            problem(if scim {
                "Content-Type is not application/scim+json or application/json"
            } else {
                "Content-Type is not application/json"
            })
        });
        responses.entry("413").or_insert_with(|| problem("Body too large"));
        if !scim {
            responses.entry("422").or_insert_with(|| problem("A field breaks its rules (`field` names it)"));
        }
    }
    if method == "get" && has_query && !scim {
        responses.entry("422").or_insert_with(|| problem("A filter value breaks its field's rules (`field` names it)"));
    }
    if authenticated {
        responses.entry("401").or_insert_with(|| problem("Missing, unknown, expired or revoked token"));
    }
    if uuid_in_path {
        responses.entry("400").or_insert_with(|| problem("Malformed id in the path"));
        responses.entry("404").or_insert_with(|| problem("No such resource"));
    }
}

fn scim_body(path: &str, method: &str) -> Value {
    let schemas = |urn: &str| json!({"type": "array", "items": {"type": "string"}, "contains": {"const": urn}});
    if path == "/scim/v2/Bulk" {
        return json!({
            "type": "object",
            "properties": {
                "schemas": schemas("urn:ietf:params:scim:api:messages:2.0:BulkRequest"),
                "Operations": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["method", "path"],
                    "properties": {"method": {"enum": ["POST", "PUT", "PATCH", "DELETE"]}, "path": {"type": "string"}},
                }},
            },
        });
    }
    if method == "patch" {
        return json!({
            "type": "object",
            "required": ["schemas", "Operations"],
            "properties": {
                "schemas": schemas("urn:ietf:params:scim:api:messages:2.0:PatchOp"),
                "Operations": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["op"],
                    "properties": {"op": {"enum": ["add", "remove", "replace"]}, "path": {"type": "string"}},
                }},
            },
        });
    }
    if path.starts_with("/scim/v2/Groups") {
        return json!({
            "type": "object",
            "required": ["displayName"],
            "properties": {
                "schemas": schemas("urn:ietf:params:scim:schemas:core:2.0:Group"),
                "displayName": {"type": "string", "minLength": 1, "maxLength": GROUP_NAME_MAX_CHARS, "pattern": TEXT},
            },
        });
    }
    json!({
        "type": "object",
        "required": ["schemas", "userName"],
        "properties": {
            "schemas": schemas("urn:ietf:params:scim:schemas:core:2.0:User"),
            "userName": {"type": "string", "pattern": EMAIL},
        },
    })
}

fn parameter(path: &str, p: &mut Value) {
    let name = p["name"].as_str().unwrap_or("").to_owned();
    let in_query = p["in"] == "query";
    if in_query && let Some(obj) = p.as_object_mut() {
        // `?email=` means the filter is not given (what a form with an empty field sends).
        obj.insert("allowEmptyValue".into(), Value::Bool(true));
    }
    let Some(schema) = p.get_mut("schema").and_then(Value::as_object_mut) else { return };
    match name.as_str() {
        "limit" => {
            schema.insert("type".into(), json!("integer"));
            schema.insert("minimum".into(), json!(1));
            schema.insert("maximum".into(), json!(LIST_MAX));
        }
        // Patterns that fix the length themselves: Schemathesis 4's coverage phase takes
        // maxLength + 1 for a valid value when a pattern is present too.
        "cursor" => param_pattern(schema, CURSOR),
        "If-Match" => {
            schema.insert("type".into(), json!("string"));
            schema.insert("pattern".into(), json!(ETAG));
        }
        "display_name" | "external_id" if in_query => {
            schema.insert("type".into(), json!("string"));
            string(schema, 1, GROUP_NAME_MAX_CHARS.min(EXTERNAL_ID_MAX_CHARS), TEXT);
        }
        "type" if in_query => {
            schema.insert("enum".into(), json!(EVENT_TYPES));
        }
        "status" if in_query && path == "/v1/users" => {
            schema.insert("enum".into(), json!(["active", "disabled"]));
        }
        "role" if in_query => {
            schema.insert("enum".into(), json!(["user", "admin"]));
        }
        "status" if in_query => {
            schema.insert("enum".into(), json!(["pending", "delivered", "failed"]));
        }
        "email_prefix" => param_pattern(
            schema,
            &format!("^[^\\u0000-\\u001f\\u007f-\\u009f\\u2028\\u2029]{{0,{EMAIL_PREFIX_MAX_CHARS}}}$"),
        ),
        "Idempotency-Key" => param_pattern(schema, &format!("^[!-~]{{1,{IDEMPOTENCY_KEY_MAX_LEN}}}$")),
        "email" if in_query => param_pattern(schema, EMAIL),
        _ => {}
    }
}

/// Of a list of alternatives (`oneOf` schemas, `type` names), the single one that is not
/// `null`, if there is exactly one: what a field becomes where `null` is refused.
fn the_one_not_null(alternatives: &Value, type_of: impl Fn(&Value) -> &Value) -> Option<Value> {
    let mut rest = alternatives.as_array()?.iter().filter(|a| type_of(a) != "null");
    let only = rest.next()?;
    rest.next().is_none().then(|| only.clone())
}

/// A query or header value: a string (never null) matching `pattern`.
fn param_pattern(schema: &mut Map<String, Value>, pattern: &str) {
    schema.insert("type".into(), json!("string"));
    schema.insert("pattern".into(), json!(pattern));
}

/// `schema`, a string (or null, where the field takes null), gets `min..=max` characters
/// matching `pattern`.
fn string(schema: &mut Map<String, Value>, min: usize, max: usize, pattern: &str) {
    schema.insert("minLength".into(), json!(min));
    schema.insert("maxLength".into(), json!(max));
    schema.insert("pattern".into(), json!(pattern));
}

fn body_schema(name: &str, schema: &mut Value) {
    let rules: &[(&str, Rule)] = match name {
        "CreateUserRequest" => &[("email", Rule::Email), ("name", Rule::Name), ("password", Rule::NewPassword)],
        "UpdateUserRequest" => &[
            ("email", Rule::Email),
            ("name", Rule::Name),
            ("password", Rule::NewPassword),
            ("current_password", Rule::Password),
            ("role", Rule::Enum(&["user", "admin"])),
            ("status", Rule::Enum(&["active", "disabled"])),
        ],
        "LoginRequest" => &[("email", Rule::Email), ("password", Rule::Password)],
        "PasswordResetRequest" => &[("email", Rule::Email)],
        "PasswordResetConfirmRequest" => &[("token", Rule::OneTimeToken), ("new_password", Rule::NewPassword)],
        "VerificationRequest" | "EmailChangeConfirmRequest" => &[("token", Rule::OneTimeToken)],
        "TotpEnrolRequest" => &[("current_password", Rule::Password)],
        "TotpCodeRequest" => &[("code", Rule::SecondFactor)],
        "MfaLoginRequest" => &[("code", Rule::SecondFactor), ("challenge", Rule::Challenge)],
        "CreateProvisioningTokenRequest" => &[("name", Rule::Name)],
        "CreateGroupRequest" | "UpdateGroupRequest" => &[
            ("display_name", Rule::Text(GROUP_NAME_MAX_CHARS)),
            ("external_id", Rule::Text(EXTERNAL_ID_MAX_CHARS)),
            ("members", Rule::Ids { min: 0 }),
        ],
        "AddMembersRequest" => &[("user_ids", Rule::Ids { min: 1 })],
        "CreateWebhookRequest" | "UpdateWebhookRequest" => &[
            ("url", Rule::Url),
            ("events", Rule::Events),
            ("description", Rule::Description),
            ("rate_limit", Rule::Range(1, RATE_LIMIT_MAX as u64)),
        ],
        _ => return,
    };
    // In a PATCH, absent means unchanged and `null` is refused, except a group's
    // external_id, where `null` clears it.
    let patch = name.starts_with("Update");
    let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) else { return };
    for (field, prop) in props.iter_mut() {
        let Some(prop) = prop.as_object_mut() else { continue };
        if let Some((_, rule)) = rules.iter().find(|(f, _)| f == field) {
            rule.apply(prop);
        }
        if patch && !(name == "UpdateGroupRequest" && field == "external_id") {
            if let Some(only) = prop.get("type").and_then(|types| the_one_not_null(types, |t| t)) {
                prop.insert("type".into(), only);
            }
        }
    }
    // Users and groups refuse a PATCH that changes nothing (`empty_patch`; for a user,
    // current_password alone changes nothing); webhooks take it.
    let changes: &[&str] = match name {
        "UpdateUserRequest" => &["email", "name", "password", "role", "status"],
        "UpdateGroupRequest" => &["display_name", "external_id"],
        _ => &[],
    };
    if !changes.is_empty() {
        if let Some(obj) = schema.as_object_mut() {
            let any: Vec<Value> = changes.iter().map(|f| json!({"required": [f]})).collect();
            obj.insert("anyOf".into(), Value::Array(any));
        }
    }
}

enum Rule {
    Email,
    Name,
    NewPassword,
    Password,
    Text(usize),
    Enum(&'static [&'static str]),
    OneTimeToken,
    SecondFactor,
    Challenge,
    Ids { min: usize },
    Url,
    Events,
    Description,
    Range(u64, u64),
}

impl Rule {
    fn apply(&self, prop: &mut Map<String, Value>) {
        match self {
            Rule::Email => {
                prop.insert("pattern".into(), json!(EMAIL));
            }
            Rule::Name => string(prop, 1, NAME_MAX_CHARS, TEXT),
            Rule::NewPassword => string(prop, PASSWORD_MIN_CHARS, PASSWORD_MAX_CHARS, NO_CONTROL),
            Rule::Password => string(prop, 1, PASSWORD_MAX_CHARS, NO_CONTROL),
            Rule::Text(max) => string(prop, 1, *max, TEXT),
            Rule::Enum(values) => {
                prop.insert("enum".into(), json!(values));
            }
            Rule::OneTimeToken => {
                let len = 3 + strata_core::lifecycle::ONE_TIME_B64_LEN;
                string(prop, len, len, r"^ot_[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]$")
            }
            Rule::SecondFactor => string(prop, 6, 11, SECOND_FACTOR),
            Rule::Challenge => string(prop, 100, 100, r"^mfa_[A-Za-z0-9_-]{96}$"),
            Rule::Ids { min } => {
                prop.insert("items".into(), json!({"type": "string", "format": "uuid"}));
                prop.insert("minItems".into(), json!(min));
                prop.insert("maxItems".into(), json!(MAX_MEMBERS_PER_CHANGE));
            }
            Rule::Url => string(prop, 8, URL_MAX_LEN, URL),
            Rule::Events => {
                prop.insert("items".into(), json!({"type": "string", "enum": EVENT_TYPES}));
                prop.insert("minItems".into(), json!(1));
                // Repeats are accepted and stored once, so no uniqueItems.
                prop.insert("maxItems".into(), json!(EVENTS_MAX));
            }
            Rule::Description => {
                prop.insert("maxLength".into(), json!(DESCRIPTION_MAX_CHARS));
                prop.insert("pattern".into(), json!(DESCRIPTION));
            }
            Rule::Range(min, max) => {
                prop.insert("minimum".into(), json!(min));
                prop.insert("maximum".into(), json!(max));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_patterns_carry_the_parsers_limits() {
        use strata_core::domain::EMAIL_MAX_LEN;
        assert!(EMAIL.contains(&format!(r"\S{{6,{EMAIL_MAX_LEN}}}")));
        assert!(URL.contains("{1,253}"));
        assert_eq!(strata_core::lifecycle::ONE_TIME_B64_LEN, 43, "the one-time token pattern spells 42 + 1");
    }

    #[test]
    fn rules_reach_the_served_document() {
        let doc: Value = serde_json::from_str(crate::openapi::document_json()).unwrap();
        let create = &doc["components"]["schemas"]["CreateUserRequest"]["properties"];
        assert_eq!(create["password"]["minLength"], PASSWORD_MIN_CHARS);
        assert_eq!(create["password"]["maxLength"], PASSWORD_MAX_CHARS);
        assert_eq!(create["name"]["maxLength"], NAME_MAX_CHARS);
        assert_eq!(create["email"]["pattern"], EMAIL);
        let update = &doc["components"]["schemas"]["UpdateUserRequest"];
        assert_eq!(update["properties"]["role"]["type"], "string", "null is refused in a PATCH");
        assert_eq!(update["anyOf"].as_array().unwrap().len(), 5);
        let list = &doc["paths"]["/v1/users"]["get"];
        let limit = list["parameters"].as_array().unwrap().iter().find(|p| p["name"] == "limit").unwrap();
        assert_eq!((limit["schema"]["minimum"].as_u64(), limit["schema"]["maximum"].as_u64()), (Some(1), Some(200)));
        let create_op = &doc["paths"]["/v1/users"]["post"];
        assert_eq!(create_op["requestBody"]["required"], true);
        assert!(create_op["responses"]["415"].is_object());
        let reset = &doc["paths"]["/v1/users/{id}/mfa/totp"]["delete"]["requestBody"];
        assert_eq!(reset["required"], false);
        assert!(reset["content"]["application/json"]["schema"]["$ref"].is_string(), "optional, never null");
    }
}
