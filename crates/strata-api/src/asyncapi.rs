//! The AsyncAPI 3.0 document of every event Strata emits, served at `/asyncapi.json` and
//! validated in CI with `asyncapi validate`. Built from `strata_core::events::EVENT_TYPES`,
//! so an event type cannot exist without being documented.

use std::sync::OnceLock;

use serde_json::{Value, json};
use strata_core::events::{EVENT_TYPES, TYPE_PREFIX};

/// What each event's data carries besides `actor`, and what it is for.
fn describe(event_type: &str) -> (&'static str, Value) {
    let user = json!({ "$ref": "#/components/schemas/User" });
    let session = json!({ "$ref": "#/components/schemas/Session" });
    match event_type {
        "user.created" => ("An account was registered.", json!({ "user": user })),
        "user.updated" => (
            "An account changed (profile, email, password, role or status). `changed` names the fields; `sessions_revoked` says whether the change ended sessions (`all` on a password change by an admin or a disable, `all_but_current` when users change their own password). `changed` is empty when a login only replaced an imported or outdated password hash with Strata's current one.",
            json!({
                "user": user,
                "changed": { "type": "array", "items": { "type": "string", "enum": ["email", "name", "password", "role", "status", "verified"] } },
                "sessions_revoked": { "type": "string", "enum": ["none", "all", "all_but_current"] },
            }),
        ),
        "email_verification.requested" => (
            "A user asked for a verification mail: a one-time token was made and a mail to their current email queued (the worker's `mail` listener sends it). Never carries the token. A completed verification is a `user.updated` with `changed: [\"verified\"]` and `via: \"email_verification\"`.",
            json!({
                "user": user,
                "mail_id": { "type": "string", "format": "uuid" },
                "expires_at": { "type": "string", "format": "date-time" },
            }),
        ),
        "email_change.requested" => (
            "A user asked to change their own email (`PATCH /v1/users/{id}` with `email` and `current_password`): a one-time token was made, a confirmation mail to `new_email` and a notice to the current address queued (the worker's `mail` listener sends them). Nothing changed yet; never carries the token. The confirmed change is a `user.updated` with `changed: [\"email\"]` (and `\"verified\"` when the old address was unverified) and `via: \"email_change\"`.",
            json!({
                "user": user,
                "new_email": { "type": "string", "format": "email" },
                "mail_id": { "type": "string", "format": "uuid" },
                "notice_mail_id": { "type": "string", "format": "uuid" },
                "expires_at": { "type": "string", "format": "date-time" },
            }),
        ),
        "password_reset.requested" => (
            "A password reset was asked for an existing, active account: a one-time token was made and a mail queued (the worker's `mail` listener sends it). Never carries the token. Requests for unknown or disabled accounts produce no event. A completed reset is a `user.updated` with `changed: [\"password\"]`, `sessions_revoked: \"all\"` and `via: \"password_reset\"`.",
            json!({
                "user": user,
                "mail_id": { "type": "string", "format": "uuid" },
                "expires_at": { "type": "string", "format": "date-time" },
            }),
        ),
        "mfa.enabled" => (
            "A user confirmed a TOTP enrolment: logins now need a second factor. Never carries the secret or the recovery codes.",
            json!({ "user": user, "factor": { "type": "string", "enum": ["totp"] } }),
        ),
        "mfa.disabled" => (
            "TOTP was turned off: by the user with a code (`via: code` or `recovery_code`) or reset by an admin (`via: admin_reset`, the actor names the admin).",
            json!({
                "user": user,
                "factor": { "type": "string", "enum": ["totp"] },
                "via": { "type": "string", "enum": ["code", "recovery_code", "admin_reset"] },
            }),
        ),
        "mfa.recovery_codes_regenerated" => (
            "A user replaced their recovery codes; the old ones no longer work. Never carries the codes.",
            json!({ "user": user, "factor": { "type": "string", "enum": ["totp"] } }),
        ),
        "mfa.recovery_code_used" => (
            "A login was completed with a recovery code (spent now); `recovery_codes_left` says how many remain.",
            json!({
                "user": user,
                "factor": { "type": "string", "enum": ["totp"] },
                "recovery_codes_left": { "type": "integer", "minimum": 0 },
            }),
        ),
        "user.deleted" => {
            ("An account was deleted, with its sessions. `user` is the account as it was.", json!({ "user": user }))
        }
        "session.created" => ("A user logged in.", json!({ "session": session })),
        "session.revoked" => (
            "A session ended: by its logout (`logout`), or among every live session of a user ended by the user or an admin through `DELETE /v1/users/{id}/sessions` (`revoked`; `actor` says who). Sessions ended by a disable, a password change or a deletion have no event of their own: the `user.updated` / `user.deleted` says so.",
            json!({ "session": session, "reason": { "type": "string", "enum": ["logout", "revoked"] } }),
        ),
        "login.failed" => (
            "A login to an existing account failed. Unknown emails produce no event (see login.throttled).",
            json!({
                "user": user,
                "reason": { "type": "string", "enum": ["wrong_password", "account_disabled", "email_not_verified"] },
                "client": { "type": "string", "description": "The client address the throttle counts by (IPv6 by /64)." },
            }),
        ),
        "login.throttled" => (
            "Logins for an email from a client were refused by the throttle. At most one event per email and client per throttle window. The subject is the account, or the nil UUID when the email has none.",
            json!({
                "email": { "type": "string", "format": "email" },
                "user": { "oneOf": [user, { "type": "null" }] },
                "client": { "type": "string" },
                "retry_after_secs": { "type": "integer", "minimum": 0 },
            }),
        ),
        "webhook.endpoint.disabled" => (
            "A webhook endpoint was disabled automatically: it answered 410 Gone, or every delivery to it failed for days. The subject is the endpoint id.",
            json!({
                "endpoint": {
                    "type": "object",
                    "properties": { "id": { "type": "string", "format": "uuid" }, "url": { "type": "string", "format": "uri" } },
                },
                "reason": { "type": "string" },
            }),
        ),
        "group.created" | "group.updated" | "group.deleted" => {
            let group = json!({
                "type": "object",
                "properties": {
                    "id": { "type": "string", "format": "uuid" },
                    "display_name": { "type": "string" },
                    "external_id": { "type": ["string", "null"] },
                    "version": { "type": "integer" },
                    "created_at": { "type": "string", "format": "date-time" },
                    "updated_at": { "type": "string", "format": "date-time" },
                },
            });
            let ids = json!({ "type": "array", "items": { "type": "string", "format": "uuid" } });
            match event_type {
                "group.created" => (
                    "A group was created (by an admin or through SCIM). The subject is the group id; `members.added` lists its first members.",
                    json!({ "group": group, "members": { "type": "object", "properties": { "added": ids } } }),
                ),
                "group.updated" => (
                    "A group changed: `changed` names what (`display_name`, `external_id`, `members`); `members` gives the member ids added and removed by this change (`replaced` when the whole member list was replaced, as by a SCIM PUT). Never the whole member list.",
                    json!({
                        "group": group,
                        "changed": { "type": "array", "items": { "type": "string", "enum": ["display_name", "external_id", "members"] } },
                        "members": { "type": "object", "properties": { "replaced": { "type": "boolean" }, "added": ids, "removed": ids } },
                    }),
                ),
                _ => (
                    "A group was deleted with its memberships (the users stay). `group` is the group as it was.",
                    json!({ "group": group }),
                ),
            }
        }
        _ => ("", json!({})),
    }
}

/// `user.created` → `userCreated`.
fn camel(event_type: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in event_type.chars() {
        if c == '.' || c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

fn build() -> Value {
    let mut channels = serde_json::Map::new();
    let mut operations = serde_json::Map::new();
    let mut messages = serde_json::Map::new();
    for t in EVENT_TYPES {
        let name = camel(t);
        let (summary, fields) = describe(t);
        let mut properties = fields.as_object().cloned().unwrap_or_default();
        properties.insert("actor".into(), json!({ "$ref": "#/components/schemas/Actor" }));
        let mut required: Vec<Value> = properties.keys().map(|k| Value::String(k.clone())).collect();
        required.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
        messages.insert(
            name.clone(),
            json!({
                "name": t,
                "title": format!("{TYPE_PREFIX}{t}"),
                "summary": summary,
                "contentType": "application/json",
                "headers": { "$ref": "#/components/schemas/CloudEventHeaders" },
                "payload": { "type": "object", "properties": properties, "required": required },
            }),
        );
        channels.insert(
            name.clone(),
            json!({
                "address": format!("strata.events.{t}"),
                "title": t,
                "description": format!(
                    "Where `{t}` travels on each broker (namespace `strata`, events.namespace): NATS subject `strata.events.{t}` in stream `STRATA_EVENTS`; Kafka topic `strata.events`, key = subject; RabbitMQ topic exchange `strata.events`, routing key `{t}`; MQTT topic `strata/events/{}`; Redis stream `strata:events`. Webhook deliveries carry the same CloudEvent."
                , t.replace('.', "/")),
                "messages": { name.clone(): { "$ref": format!("#/components/messages/{name}") } },
            }),
        );
        operations.insert(
            format!("publish{}", {
                let mut c = name.chars();
                c.next().map(|f| f.to_uppercase().collect::<String>() + c.as_str()).unwrap_or_default()
            }),
            json!({
                "action": "send",
                "channel": { "$ref": format!("#/channels/{name}") },
                "summary": summary,
                "messages": [{ "$ref": format!("#/channels/{name}/messages/{name}") }],
            }),
        );
    }
    // The L1 cache invalidation channel (Memcached deployments with an L1; see strata-cache's
    // `bus` module): instances to instances, not part of the outbox.
    let t = strata_core::events::CACHE_INVALIDATED;
    let name = camel(t);
    messages.insert(
        name.clone(),
        json!({
            "name": t,
            "title": format!("{TYPE_PREFIX}{t}"),
            "summary": "Cache keys an instance invalidated; every other instance drops them from its in-process (L1) cache. The subject is the sending instance's id (its own messages are skipped). Keys are cache keys (SHA-256 hashes of session tokens, user ids), never a token.",
            "contentType": "application/json",
            "headers": { "$ref": "#/components/schemas/CloudEventHeaders" },
            "payload": {
                "type": "object",
                "properties": { "keys": { "type": "array", "items": { "type": "string" } } },
                "required": ["keys"],
            },
        }),
    );
    channels.insert(
        name.clone(),
        json!({
            "address": format!("strata-cache.events.{t}"),
            "title": t,
            "description": "L1 invalidations, on the namespace `<events.namespace>-cache` of the broker in events.url (default `strata-cache`: NATS stream `STRATA-CACHE_EVENTS`, Kafka topic `strata-cache.events`, RabbitMQ exchange `strata-cache.events`, MQTT `strata-cache/events/cache/invalidated`, Redis stream `strata-cache:events`), read by every instance's broadcast subscription. Used only with a Memcached cache and an L1; Redis deployments use Redis pub/sub instead.",
            "messages": { name.clone(): { "$ref": format!("#/components/messages/{name}") } },
        }),
    );
    operations.insert(
        "publishCacheInvalidated".into(),
        json!({
            "action": "send",
            "channel": { "$ref": format!("#/channels/{name}") },
            "summary": "Tell other instances which cache keys to drop.",
            "messages": [{ "$ref": format!("#/channels/{name}/messages/{name}") }],
        }),
    );
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "Strata events",
            "version": "1.0.0",
            "description": "Every change in Strata, published from its transactional outbox at least once and in order per user (`sequence`). Every event is a CloudEvents 1.0 event in binary mode: attributes travel as headers (`ce-` on NATS and HTTP, `ce_` on Kafka, `cloudEvents:` on AMQP, unprefixed MQTT 5 user properties, `ce_` fields on Redis streams) and `data` is the JSON body. `id` is unique per event: consumers deduplicate by it. Payloads never carry password hashes or tokens.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "nats": { "host": "localhost:4222", "protocol": "nats", "description": "JetStream stream STRATA_EVENTS; Nats-Msg-Id = event id" },
            "kafka": { "host": "localhost:9092", "protocol": "kafka", "description": "Topic strata.events, key = subject (user id), idempotent producer" },
            "rabbitmq": { "host": "localhost:5672", "protocol": "amqp", "protocolVersion": "0.9.1", "description": "Topic exchange strata.events, routing key = event type, publisher confirms" },
            "mqtt": { "host": "localhost:1883", "protocol": "mqtt", "protocolVersion": "5", "description": "QoS 1, topics strata/events/…" },
            "redis": { "host": "localhost:6379", "protocol": "redis", "description": "Stream strata:events, one entry per event" },
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": messages,
            "schemas": {
                "CloudEventHeaders": {
                    "type": "object",
                    "description": "CloudEvents attributes, shown with the NATS/HTTP `ce-` prefix.",
                    "properties": {
                        "ce-specversion": { "type": "string", "const": "1.0" },
                        "ce-id": { "type": "string", "format": "uuid", "description": "The outbox event id: also the broker dedup id and the webhook id." },
                        "ce-source": { "type": "string", "description": "events.source, default /strata" },
                        "ce-type": { "type": "string", "description": "dev.strata.<event type>" },
                        "ce-time": { "type": "string", "format": "date-time" },
                        "ce-subject": { "type": "string", "format": "uuid", "description": "The user the event is about." },
                        "ce-partitionkey": { "type": "string", "description": "= subject" },
                        "ce-sequence": { "type": "string", "pattern": "^[0-9]{20}$", "description": "Per-subject order: 1, 2, … in commit order, zero-padded so it sorts as a string." },
                        "ce-traceparent": { "type": "string", "description": "W3C trace context, when tracing is on." },
                    },
                    "required": ["ce-specversion", "ce-id", "ce-source", "ce-type", "ce-time", "ce-subject", "ce-partitionkey", "ce-sequence"],
                },
                "Actor": {
                    "type": "object",
                    "description": "Who acted: the user themself, an admin (a user with the role, or the admin token: id null), or an anonymous client.",
                    "properties": {
                        "type": { "type": "string", "enum": ["user", "admin", "anonymous"] },
                        "id": { "type": ["string", "null"], "format": "uuid" },
                        "via": { "type": "string", "enum": ["admin_token", "import"], "description": "admin_token: the admin token; import: `strata import`." },
                    },
                    "required": ["type"],
                },
                "User": {
                    "type": "object",
                    "description": "The account as the API shows it.",
                    "properties": {
                        "id": { "type": "string", "format": "uuid" },
                        "email": { "type": "string", "format": "email" },
                        "name": { "type": "string" },
                        "role": { "type": "string", "enum": ["user", "admin"] },
                        "status": { "type": "string", "enum": ["active", "disabled"] },
                        "version": { "type": "integer", "minimum": 1 },
                        "created_at": { "type": "string", "format": "date-time" },
                        "updated_at": { "type": "string", "format": "date-time" },
                    },
                    "required": ["id", "email", "name", "role", "status", "version", "created_at", "updated_at"],
                },
                "Session": {
                    "type": "object",
                    "properties": {
                        "id": { "type": "string", "format": "uuid" },
                        "user_id": { "type": "string", "format": "uuid" },
                        "created_at": { "type": "string", "format": "date-time" },
                        "expires_at": { "type": "string", "format": "date-time" },
                    },
                    "required": ["id", "user_id", "created_at", "expires_at"],
                },
            },
        },
    })
}

/// The document, rendered once.
pub fn json() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| build().to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_event_type_has_a_channel_message_and_operation() {
        let doc: serde_json::Value = serde_json::from_str(super::json()).unwrap();
        assert_eq!(doc["asyncapi"], "3.0.0");
        for t in strata_core::events::EVENT_TYPES {
            let name = super::camel(t);
            assert_eq!(doc["channels"][&name]["address"], format!("strata.events.{t}"));
            assert_eq!(doc["components"]["messages"][&name]["name"], *t);
            assert!(doc["components"]["messages"][&name]["summary"].as_str().is_some_and(|s| !s.is_empty()), "{t}");
        }
        assert_eq!(doc["operations"].as_object().unwrap().len(), strata_core::events::EVENT_TYPES.len() + 1);
        assert_eq!(doc["channels"]["cacheInvalidated"]["address"], "strata-cache.events.cache.invalidated");
    }
}
