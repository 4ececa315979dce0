//! PATCH requests (RFC 7644 §3.5.2) in the forms identity providers send them:
//! `{"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [...]}`
//! with `op` in any case (Entra ID sends `"Replace"`), paths such as `name.givenName`,
//! `members[value eq "…"]` or `emails[type eq "work"].value`, and booleans as strings
//! (Entra ID's `"False"`).

use serde_json::Value;

use crate::filter::{AttrPath, Filter, FilterError, parse_filter};

pub const PATCH_OP_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
/// More operations in one request are refused.
pub const MAX_OPERATIONS: usize = 1_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchOp {
    Add,
    Replace,
    Remove,
}

/// Where an operation applies.
#[derive(Clone, Debug, PartialEq)]
pub enum PatchPath {
    /// `attr` or `attr.sub` (with an optional schema URI).
    Attr(AttrPath),
    /// `attr[filter]` or `attr[filter].sub`: the values of a multi-valued attribute that
    /// match the filter.
    Filtered { path: AttrPath, filter: Filter, sub: Option<String> },
}

#[derive(Clone, Debug, PartialEq)]
pub struct PatchOperation {
    pub op: PatchOp,
    pub path: Option<PatchPath>,
    pub value: Option<Value>,
}

/// Why a PATCH request was refused, with the SCIM error type it calls for.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PatchError {
    /// `invalidSyntax`, `invalidPath`, `invalidFilter`, `noTarget` or `invalidValue`.
    pub scim_type: &'static str,
    pub message: String,
}

fn error(scim_type: &'static str, message: impl Into<String>) -> PatchError {
    PatchError { scim_type, message: message.into() }
}

/// Parses a PATCH path.
pub fn parse_patch_path(text: &str) -> Result<PatchPath, PatchError> {
    let text = text.trim();
    let invalid = |e: FilterError| error("invalidPath", format!("invalid path {text:?}: {}", e.message));
    let Some(open) = text.find('[') else {
        return AttrPath::parse(text).map(PatchPath::Attr).map_err(invalid);
    };
    let close = text.rfind(']').ok_or_else(|| error("invalidPath", format!("invalid path {text:?}: missing \"]\"")))?;
    if close < open {
        return Err(error("invalidPath", format!("invalid path {text:?}")));
    }
    let path = AttrPath::parse(&text[..open]).map_err(invalid)?;
    if path.sub.is_some() {
        return Err(error("invalidPath", format!("invalid path {text:?}: a filter applies to an attribute")));
    }
    let filter = parse_filter(&text[open + 1..close])
        .map_err(|e| error("invalidFilter", format!("invalid filter in path {text:?}: {}", e.message)))?;
    let rest = &text[close + 1..];
    let sub = match rest.strip_prefix('.') {
        Some(sub) if !sub.is_empty() && sub.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') => {
            Some(sub.to_owned())
        }
        None if rest.is_empty() => None,
        _ => return Err(error("invalidPath", format!("invalid path {text:?}: unexpected {rest:?}"))),
    };
    Ok(PatchPath::Filtered { path, filter, sub })
}

/// Parses the body of a PATCH request.
pub fn parse_patch_request(body: &Value) -> Result<Vec<PatchOperation>, PatchError> {
    let object = body.as_object().ok_or_else(|| error("invalidSyntax", "the body must be a JSON object"))?;
    let field = |name: &str| object.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v);
    let schemas = field("schemas").and_then(Value::as_array);
    if !schemas.is_some_and(|s| s.iter().any(|v| v.as_str() == Some(PATCH_OP_SCHEMA))) {
        return Err(error("invalidSyntax", format!("schemas must list {PATCH_OP_SCHEMA}")));
    }
    let operations = field("Operations")
        .and_then(Value::as_array)
        .ok_or_else(|| error("invalidSyntax", "Operations must be an array of operations"))?;
    if operations.is_empty() {
        return Err(error("invalidSyntax", "Operations must not be empty"));
    }
    if operations.len() > MAX_OPERATIONS {
        return Err(error("invalidSyntax", format!("at most {MAX_OPERATIONS} operations per request")));
    }
    operations
        .iter()
        .enumerate()
        .map(|(i, raw)| {
            let op =
                raw.as_object().ok_or_else(|| error("invalidSyntax", format!("Operations[{i}] must be an object")))?;
            let get = |name: &str| op.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v);
            let kind = match get("op").and_then(Value::as_str).map(str::to_ascii_lowercase).as_deref() {
                Some("add") => PatchOp::Add,
                Some("replace") => PatchOp::Replace,
                Some("remove") => PatchOp::Remove,
                _ => return Err(error("invalidSyntax", format!("Operations[{i}].op must be add, replace or remove"))),
            };
            let path = match get("path") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) if s.trim().is_empty() => None,
                Some(Value::String(s)) => Some(parse_patch_path(s)?),
                Some(_) => return Err(error("invalidPath", format!("Operations[{i}].path must be a string"))),
            };
            let value = get("value").cloned();
            match kind {
                PatchOp::Remove if path.is_none() => {
                    Err(error("noTarget", format!("Operations[{i}]: remove needs a path")))
                }
                PatchOp::Add | PatchOp::Replace if value.is_none() => {
                    Err(error("invalidValue", format!("Operations[{i}]: {kind:?} needs a value")))
                }
                _ => Ok(PatchOperation { op: kind, path, value }),
            }
        })
        .collect()
}

/// A boolean as clients send it: `false`, or the strings `"False"`/`"false"` (Entra ID).
pub fn coerce_bool(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::{CompValue, CompareOp};
    use serde_json::json;

    #[test]
    fn paths_in_the_forms_providers_send() {
        assert_eq!(
            parse_patch_path("name.givenName").unwrap(),
            PatchPath::Attr(AttrPath::parse("name.givenName").unwrap())
        );
        let PatchPath::Filtered { path, filter, sub } =
            parse_patch_path(r#"members[value eq "2819c223-7f76-453a-919d-413861904646"]"#).unwrap()
        else {
            panic!("filtered")
        };
        assert_eq!(path.name, "members");
        assert_eq!(sub, None);
        assert_eq!(
            filter,
            Filter::Compare {
                path: AttrPath::parse("value").unwrap(),
                op: CompareOp::Eq,
                value: CompValue::String("2819c223-7f76-453a-919d-413861904646".into())
            }
        );
        let PatchPath::Filtered { sub, .. } = parse_patch_path(r#"emails[type eq "work"].value"#).unwrap() else {
            panic!("filtered")
        };
        assert_eq!(sub.as_deref(), Some("value"));
        let enterprise = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager";
        let PatchPath::Attr(p) = parse_patch_path(enterprise).unwrap() else { panic!("attr") };
        assert_eq!(p.name, "manager");
        for bad in ["", "members[", "members]x[", "a.b.c", r#"members[value eq]"#, r#"emails[type eq "w"]value"#] {
            assert!(parse_patch_path(bad).is_err(), "{bad:?} parsed");
        }
        assert_eq!(parse_patch_path(r#"members[value eq]"#).unwrap_err().scim_type, "invalidFilter");
    }

    #[test]
    fn requests_from_entra_and_okta() {
        // Entra ID: capitalised ops, "False" as a string, no path with an object value.
        let entra = json!({
            "schemas": [PATCH_OP_SCHEMA],
            "Operations": [
                {"op": "Replace", "path": "active", "value": "False"},
                {"op": "Add", "path": "members", "value": [{"value": "u1"}]},
                {"op": "Remove", "path": "members[value eq \"u2\"]"},
                {"op": "replace", "value": {"displayName": "New"}},
            ]
        });
        let ops = parse_patch_request(&entra).unwrap();
        assert_eq!(ops.len(), 4);
        assert_eq!(ops[0].op, PatchOp::Replace);
        assert_eq!(coerce_bool(ops[0].value.as_ref().unwrap()), Some(false));
        assert_eq!(ops[2].op, PatchOp::Remove);
        assert!(matches!(ops[2].path, Some(PatchPath::Filtered { .. })));
        assert_eq!(ops[3].path, None);
        // Okta: lower-case ops, a boolean.
        let okta = json!({"schemas": [PATCH_OP_SCHEMA], "Operations": [{"op": "replace", "value": {"active": false}}]});
        assert_eq!(parse_patch_request(&okta).unwrap()[0].op, PatchOp::Replace);

        let refused = |body: Value, scim_type: &str| {
            assert_eq!(parse_patch_request(&body).unwrap_err().scim_type, scim_type, "{body}");
        };
        refused(json!({"Operations": [{"op": "add", "value": 1}]}), "invalidSyntax");
        refused(json!({"schemas": [PATCH_OP_SCHEMA], "Operations": []}), "invalidSyntax");
        refused(json!({"schemas": [PATCH_OP_SCHEMA], "Operations": [{"op": "move", "value": 1}]}), "invalidSyntax");
        refused(json!({"schemas": [PATCH_OP_SCHEMA], "Operations": [{"op": "remove"}]}), "noTarget");
        refused(json!({"schemas": [PATCH_OP_SCHEMA], "Operations": [{"op": "add", "path": "x"}]}), "invalidValue");
        refused(
            json!({"schemas": [PATCH_OP_SCHEMA], "Operations": [{"op": "add", "path": 3, "value": 1}]}),
            "invalidPath",
        );
        refused(json!([1]), "invalidSyntax");
        assert_eq!(coerce_bool(&json!("TRUE")), Some(true));
        assert_eq!(coerce_bool(&json!("yes")), None);
    }
}
