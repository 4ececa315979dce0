//! `strata import`: users of another system (fastapi-users, Django, Keycloak) or of a Strata
//! backup, mapped to Strata users and written into a live database.
//!
//! Foreign database rows arrive as backend-neutral [`Value`]s (strata-store's `foreign`
//! reader runs the queries, which are SQL and live there); this module maps them, and reads Keycloak exports and
//! backup directories itself. Every source row becomes a [`Candidate`] or a [`Rejected`]
//! naming the row, and an [`Importer`] decides, row by row, what happens to it.
//!
//! Users are written one at a time through the `UserRepository` port (`create_user` with
//! its `user.created` event), not in one batch through `import_snapshot`: that port is for
//! restoring into an empty database (it refuses or replaces a non-empty one), whereas an
//! import merges into a database that may be serving. One user per write also makes a
//! re-run the way to finish an interrupted import: every Strata id is derived from the
//! source's id, and a user whose id is already there is skipped.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value as Json;
use sha2::{Digest, Sha256};
use strata_core::backup::{Row, TABLES, Value};
use strata_core::domain::{
    DisplayName, Email, OutboxEvent, PasswordHash, Role, Timestamp, User, UserId, UserStatus, Version,
};
use strata_core::error::RepoError;
use strata_core::password::{HashParams, HashScheme, Pbkdf2Prf, hash_scheme, keycloak_argon2_hash, pbkdf2_hash};
use strata_core::ports::Store;

use crate::BackupError;

/// Where users come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// fastapi-users' SQLAlchemy table `user` (a database URL).
    FastapiUsers,
    /// Django's `auth_user` (a database URL).
    Django,
    /// A Keycloak realm export file, or a directory of `*-users-*.json` files.
    Keycloak,
    /// The users of a Strata backup directory.
    StrataJsonl,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::FastapiUsers => "fastapi-users",
            SourceKind::Django => "django",
            SourceKind::Keycloak => "keycloak",
            SourceKind::StrataJsonl => "strata-jsonl",
        }
    }
}

/// A source row mapped to a Strata user, not yet checked against the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The row's id in the source, for the report.
    pub source_id: String,
    pub user: User,
}

/// Why a source row was not imported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    InvalidEmail(String),
    InvalidName(String),
    /// An earlier row of the source has the same address (compared lower-cased).
    DuplicateEmail,
    /// The target has the address under another id.
    EmailTaken(UserId),
    /// The row is not what the source's format says (a missing column, a wrong type).
    Malformed(String),
}

impl Reason {
    /// The heading the summary counts it under.
    pub fn kind(&self) -> &'static str {
        match self {
            Reason::InvalidEmail(_) => "invalid email",
            Reason::InvalidName(_) => "invalid name",
            Reason::DuplicateEmail => "duplicate email in the source",
            Reason::EmailTaken(_) => "email belongs to another Strata user",
            Reason::Malformed(_) => "malformed row",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::InvalidEmail(why) | Reason::InvalidName(why) | Reason::Malformed(why) => {
                write!(f, "{}: {why}", self.kind())
            }
            Reason::DuplicateEmail => f.write_str(self.kind()),
            Reason::EmailTaken(id) => write!(f, "{} ({id})", self.kind()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    pub source_id: String,
    pub reason: Reason,
}

/// What to do with a rejected row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnError {
    /// Report it and carry on.
    Skip,
    /// Stop at it. What was imported before stays (a re-run skips it).
    Stop,
}

#[derive(Clone, Copy, Debug)]
pub struct ImportOptions {
    pub on_error: OnError,
    /// Check everything, write nothing.
    pub dry_run: bool,
    /// The hasher's parameters (for classifying hashes).
    pub hash_params: HashParams,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    pub read: u64,
    /// Written (or, in a dry run, that would be).
    pub imported: u64,
    /// Their id was in the target already: skipped.
    pub already_present: u64,
    /// Imported disabled because their hash is in no format Strata verifies (included in
    /// `imported`).
    pub disabled_unknown_hash: u64,
    pub rejected: Vec<Rejected>,
}

impl ImportReport {
    /// A few lines for an operator: the counts, then each rejected row.
    pub fn summary(&self, dry_run: bool) -> String {
        let mut by_kind: BTreeMap<&str, u64> = BTreeMap::new();
        for r in &self.rejected {
            *by_kind.entry(r.reason.kind()).or_default() += 1;
        }
        let mut out = format!(
            "{} users read: {} {}, {} already present, {} rejected; {} imported disabled for an unknown password hash\n",
            self.read,
            self.imported,
            if dry_run { "would be imported (dry run: nothing written)" } else { "imported" },
            self.already_present,
            self.rejected.len(),
            self.disabled_unknown_hash,
        );
        for (kind, n) in by_kind {
            out.push_str(&format!("  rejected, {kind}: {n}\n"));
        }
        for r in &self.rejected {
            out.push_str(&format!("  source row {}: {}\n", r.source_id, r.reason));
        }
        out
    }
}

/// Checks candidates against the target and writes them, one by one.
pub struct Importer<'a> {
    store: &'a dyn Store,
    options: ImportOptions,
    /// Addresses of the source seen so far (imported or already present).
    seen: HashSet<String>,
    report: ImportReport,
    now: Timestamp,
}

impl<'a> Importer<'a> {
    pub fn new(store: &'a dyn Store, options: ImportOptions, now: Timestamp) -> Self {
        Importer { store, options, seen: HashSet::new(), report: ImportReport::default(), now }
    }

    pub fn report(&self) -> &ImportReport {
        &self.report
    }

    pub fn into_report(self) -> ImportReport {
        self.report
    }

    /// Handles one source row. An error is either the store's, or, with
    /// [`OnError::Stop`], the rejection that stopped the import.
    pub async fn offer(&mut self, row: Result<Candidate, Rejected>) -> Result<(), BackupError> {
        self.report.read += 1;
        let Candidate { source_id, mut user } = match row {
            Ok(candidate) => candidate,
            Err(rejected) => return self.reject(rejected),
        };
        let email = user.email.as_str().to_owned();
        if self.seen.contains(&email) {
            return self.reject(Rejected { source_id, reason: Reason::DuplicateEmail });
        }
        if self.store.user_by_id(user.id).await?.is_some() {
            self.seen.insert(email);
            self.report.already_present += 1;
            return Ok(());
        }
        if let Some(other) = self.store.user_by_email(&user.email).await? {
            return self.reject(Rejected { source_id, reason: Reason::EmailTaken(other.id) });
        }
        let unknown = hash_scheme(&user.password_hash, &self.options.hash_params) == HashScheme::Unknown;
        if unknown {
            user.status = UserStatus::Disabled;
        }
        if !self.options.dry_run {
            match self.store.create_user(&user, None, &created_event(&user, self.now)).await {
                Ok(()) => {}
                // Registered meanwhile by someone else.
                Err(RepoError::EmailTaken) => {
                    let other = self.store.user_by_email(&user.email).await?.map_or(user.id, |u| u.id);
                    return self.reject(Rejected { source_id, reason: Reason::EmailTaken(other) });
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.seen.insert(email);
        self.report.imported += 1;
        if unknown {
            self.report.disabled_unknown_hash += 1;
        }
        Ok(())
    }

    fn reject(&mut self, rejected: Rejected) -> Result<(), BackupError> {
        let message = format!("source row {}: {}", rejected.source_id, rejected.reason);
        self.report.rejected.push(rejected);
        match self.options.on_error {
            OnError::Skip => Ok(()),
            OnError::Stop => Err(BackupError::Invalid(format!("{message} (--on-error stop)"))),
        }
    }
}

/// The `user.created` event of an imported user: the service's shape, with the actor an
/// admin acting through the import.
fn created_event(user: &User, now: Timestamp) -> OutboxEvent {
    let data = serde_json::json!({
        "user": strata_core::service::user_json(user),
        "actor": { "type": "admin", "id": null, "via": "import" },
    });
    OutboxEvent {
        id: uuid::Uuid::now_v7(),
        aggregate_id: user.id.as_uuid(),
        event_type: "user.created",
        payload: data.to_string(),
        created_at: now,
        traceparent: None,
    }
}

/// A stable Strata id for a source whose ids are not UUIDs (or not ours to reuse): a
/// UUIDv8 from the SHA-256 of the source kind and id, so every run maps a row to the same
/// user.
pub fn derived_id(kind: SourceKind, source_id: &str) -> UserId {
    let digest = Sha256::digest(format!("strata-import\0{}\0{source_id}", kind.as_str()).as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    UserId::from_uuid(uuid::Builder::from_custom_bytes(bytes).into_uuid())
}

/// The parts of a user every source has, parsed.
struct Parts<'a> {
    source_id: String,
    id: UserId,
    email: &'a str,
    name: &'a str,
    hash: PasswordHash,
    admin: bool,
    active: bool,
    /// The source's own proof of the address (fastapi-users `is_verified`, Keycloak
    /// `emailVerified`), so `auth.require_verified_email` does not lock imported users out.
    verified: bool,
    created_at: Option<Timestamp>,
}

fn candidate(parts: Parts<'_>, now: Timestamp) -> Result<Candidate, Rejected> {
    let source_id = parts.source_id;
    let rejected = |reason| Rejected { source_id: source_id.clone(), reason };
    let email = Email::parse(parts.email).map_err(|e| rejected(Reason::InvalidEmail(e.message)))?;
    let name = DisplayName::parse(parts.name).map_err(|e| rejected(Reason::InvalidName(e.message)))?;
    let created_at = parts.created_at.unwrap_or(now);
    let user = User {
        id: parts.id,
        email,
        name,
        password_hash: parts.hash,
        role: if parts.admin { Role::Admin } else { Role::User },
        status: if parts.active { UserStatus::Active } else { UserStatus::Disabled },
        verified: parts.verified,
        // MFA is turned on later, by the user; an import brings no second factor.
        mfa_enabled: false,
        version: Version::FIRST,
        created_at,
        updated_at: created_at,
    };
    Ok(Candidate { source_id, user })
}

/// A column of a foreign row, by position, with the row's id for errors.
struct Cells<'a> {
    row: &'a Row,
    source_id: String,
}

impl Cells<'_> {
    fn malformed(&self, message: String) -> Rejected {
        Rejected { source_id: self.source_id.clone(), reason: Reason::Malformed(message) }
    }

    fn text(&self, i: usize, name: &str) -> Result<&str, Rejected> {
        match self.row.get(i) {
            Some(Value::Text(t)) => Ok(t),
            Some(Value::Null) => Ok(""),
            other => Err(self.malformed(format!("{name}: {other:?} is not text"))),
        }
    }

    /// Booleans are integers on SQLite and MySQL.
    fn flag(&self, i: usize, name: &str) -> Result<bool, Rejected> {
        match self.row.get(i) {
            Some(Value::Bool(b)) => Ok(*b),
            Some(Value::Int(n)) => Ok(*n != 0),
            other => Err(self.malformed(format!("{name}: {other:?} is not a boolean"))),
        }
    }

    /// Microseconds (PostgreSQL, MySQL) or SQLite's text (`2026-12-05 16:13:36.920297`,
    /// perhaps with an offset), read as UTC.
    fn time(&self, i: usize, name: &str) -> Result<Option<Timestamp>, Rejected> {
        match self.row.get(i) {
            Some(Value::Int(micros)) => Ok(Some(Timestamp::from_micros(*micros))),
            Some(Value::Null) => Ok(None),
            Some(Value::Text(t)) => parse_sql_datetime(t)
                .map(Some)
                .ok_or_else(|| self.malformed(format!("{name}: {t:?} is not a date-time"))),
            other => Err(self.malformed(format!("{name}: {other:?} is not a date-time"))),
        }
    }
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff][+HH:MM|Z]` (or with a `T`), as SQLite holds Django's
/// and SQLAlchemy's date-times.
fn parse_sql_datetime(text: &str) -> Option<Timestamp> {
    use time::macros::format_description;
    let text = text.trim().replacen('T', " ", 1);
    let (local, offset_seconds) = match text.get(19..).and_then(|tail| tail.find(['+', '-', 'Z'])) {
        Some(at) => {
            let (local, zone) = text.split_at(19 + at);
            let seconds = match zone {
                "Z" => 0,
                _ => {
                    let sign = if zone.starts_with('-') { -1 } else { 1 };
                    let (h, m) = zone[1..].split_once(':').unwrap_or((&zone[1..], "0"));
                    sign * (h.parse::<i64>().ok()? * 3600 + m.parse::<i64>().ok()? * 60)
                }
            };
            (local.to_owned(), seconds)
        }
        None => (text, 0),
    };
    let format = format_description!("[year]-[month]-[day] [hour]:[minute]:[second][optional [.[subsecond]]]");
    let parsed = time::PrimitiveDateTime::parse(&local, &format).ok()?.assume_utc();
    let micros = parsed.unix_timestamp_nanos() / 1000 - i128::from(offset_seconds) * 1_000_000;
    i64::try_from(micros).ok().map(Timestamp::from_micros)
}

fn uuid_of(value: Option<&Value>) -> Option<uuid::Uuid> {
    match value {
        Some(Value::Uuid(id)) => Some(*id),
        Some(Value::Text(t)) => uuid::Uuid::try_parse(t.trim()).ok(),
        Some(Value::Bytes(b)) => uuid::Uuid::from_slice(b).ok(),
        _ => None,
    }
}

fn id_text(value: Option<&Value>) -> String {
    match value {
        Some(Value::Int(n)) => n.to_string(),
        Some(Value::Text(t)) => t.clone(),
        Some(Value::Uuid(id)) => id.to_string(),
        other => format!("{other:?}"),
    }
}

/// A row of `strata_store::foreign::ForeignUsers::FastapiUsers`'s query: `id, email,
/// hashed_password, is_active, is_superuser, is_verified`. The UUID stays the Strata id;
/// there is no name column, so the name is the address's part before `@`. `is_superuser` →
/// admin, `is_active = false` → disabled, `is_verified` → verified.
pub fn fastapi_users_row(row: &Row, now: Timestamp) -> Result<Candidate, Rejected> {
    let cells = Cells { row, source_id: id_text(row.first()) };
    let id = uuid_of(row.first()).ok_or_else(|| cells.malformed("id: not a UUID".into()))?;
    let email = cells.text(1, "email")?;
    candidate(
        Parts {
            source_id: cells.source_id.clone(),
            id: UserId::from_uuid(id),
            email,
            name: email.trim().rsplit_once('@').map_or(email, |(local, _)| local),
            hash: PasswordHash::from_trusted(cells.text(2, "hashed_password")?.to_owned()),
            active: cells.flag(3, "is_active")?,
            admin: cells.flag(4, "is_superuser")?,
            verified: cells.flag(5, "is_verified")?,
            created_at: None,
        },
        now,
    )
}

/// A row of `strata_store::foreign::ForeignUsers::Django`'s query: `id, password, email,
/// first_name, last_name, username, is_active, is_superuser, date_joined`. The name is "first last", or the username when both
/// are empty; `date_joined` is the creation time.
pub fn django_row(row: &Row, now: Timestamp) -> Result<Candidate, Rejected> {
    let cells = Cells { row, source_id: id_text(row.first()) };
    let name = format!("{} {}", cells.text(3, "first_name")?.trim(), cells.text(4, "last_name")?.trim());
    let name = if name.trim().is_empty() { cells.text(5, "username")? } else { name.trim() };
    candidate(
        Parts {
            source_id: cells.source_id.clone(),
            id: derived_id(SourceKind::Django, &cells.source_id),
            email: cells.text(2, "email")?,
            name,
            hash: PasswordHash::from_trusted(cells.text(1, "password")?.to_owned()),
            active: cells.flag(6, "is_active")?,
            admin: cells.flag(7, "is_superuser")?,
            // Django's auth keeps no proof of the address.
            verified: false,
            created_at: cells.time(8, "date_joined")?,
        },
        now,
    )
}

// ---------------------------------------------------------------------------------------
// Keycloak

/// The JSON files of a Keycloak export: the file itself, or in a directory every
/// `*-realm.json` and `*-users-*.json` (`kc.sh export --users different_files`), sorted.
pub fn keycloak_files(source: &Path) -> Result<Vec<PathBuf>, BackupError> {
    let io = |error| BackupError::Io { path: source.to_owned(), error };
    if !source.is_dir() {
        return Ok(vec![source.to_owned()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(source).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.ends_with(".json") && (name.contains("-users-") || name.ends_with("-realm.json")) {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(BackupError::Invalid(format!("{}: no *-users-*.json or *-realm.json files", source.display())));
    }
    Ok(files)
}

/// The users of one export file (a realm with `users`, or a users file), each mapped.
pub fn keycloak_users(path: &Path, now: Timestamp) -> Result<Vec<Result<Candidate, Rejected>>, BackupError> {
    let text = std::fs::read(path).map_err(|error| BackupError::Io { path: path.to_owned(), error })?;
    let export: Json = serde_json::from_slice(&text)
        .map_err(|e| BackupError::Invalid(format!("{}: not a Keycloak export: {e}", path.display())))?;
    let realm = export["realm"].as_str().unwrap_or("");
    let users = match &export["users"] {
        Json::Array(users) => users.as_slice(),
        Json::Null => &[],
        _ => return Err(BackupError::Invalid(format!("{}: `users` is not an array", path.display()))),
    };
    Ok(users.iter().map(|user| keycloak_user(realm, user, now)).collect())
}

/// One exported user. Ids are derived from the realm and Keycloak's id. Keycloak roles are
/// not mapped: everyone is imported as a user. `enabled = false` → disabled.
fn keycloak_user(realm: &str, user: &Json, now: Timestamp) -> Result<Candidate, Rejected> {
    let text = |key: &str| user[key].as_str().unwrap_or("").trim();
    let keycloak_id = text("id");
    let source_id = if keycloak_id.is_empty() { format!("username {}", text("username")) } else { keycloak_id.into() };
    if keycloak_id.is_empty() {
        return Err(Rejected { source_id, reason: Reason::Malformed("no id".into()) });
    }
    let name = format!("{} {}", text("firstName"), text("lastName"));
    let name = if name.trim().is_empty() { text("username") } else { name.trim() };
    let password = user["credentials"].as_array().and_then(|c| c.iter().find(|c| c["type"] == "password"));
    candidate(
        Parts {
            id: derived_id(SourceKind::Keycloak, &format!("{realm}/{keycloak_id}")),
            source_id: source_id.clone(),
            email: text("email"),
            name,
            hash: password.map_or_else(|| PasswordHash::from_trusted("!keycloak-no-password".into()), keycloak_hash),
            admin: false,
            active: user["enabled"].as_bool().unwrap_or(true),
            verified: user["emailVerified"].as_bool().unwrap_or(false),
            created_at: user["createdTimestamp"].as_i64().map(|ms| Timestamp::from_micros(ms.saturating_mul(1000))),
        },
        now,
    )
}

/// A `password` credential as a hash Strata verifies: `secretData` and `credentialData`
/// are JSON documents inside JSON strings. Anything not understood becomes a string that
/// never verifies (`!keycloak-…`), so the user is imported disabled.
fn keycloak_hash(credential: &Json) -> PasswordHash {
    let unknown = |what: &str| PasswordHash::from_trusted(format!("!keycloak-{what}"));
    let inner = |key: &str| credential[key].as_str().and_then(|s| serde_json::from_str::<Json>(s).ok());
    let (Some(secret), Some(data)) = (inner("secretData"), inner("credentialData")) else {
        return unknown("unreadable-credential");
    };
    let bytes = |key: &str| secret[key].as_str().and_then(|s| STANDARD.decode(s).ok());
    let (Some(salt), Some(value)) = (bytes("salt"), bytes("value")) else {
        return unknown("unreadable-secret");
    };
    let algorithm = data["algorithm"].as_str().unwrap_or("");
    let iterations = data["hashIterations"].as_u64().and_then(|n| u32::try_from(n).ok()).unwrap_or(0);
    if let Some(prf) = Pbkdf2Prf::from_keycloak(algorithm) {
        return pbkdf2_hash(prf, iterations, &salt, &value);
    }
    if algorithm == "argon2" {
        // additionalParameters: {"type": ["id"], "version": ["1.3"], "memory": ["7168"], …}
        let parameter = |key: &str| data["additionalParameters"][key][0].as_str().unwrap_or("").to_owned();
        let number = |key: &str| parameter(key).parse::<u32>().ok();
        if let (Some(memory), Some(parallelism)) = (number("memory"), number("parallelism"))
            && let Some(hash) = keycloak_argon2_hash(
                &parameter("type"),
                &parameter("version"),
                memory,
                iterations,
                parallelism,
                &salt,
                &value,
            )
        {
            return hash;
        }
    }
    unknown(if algorithm.is_empty() { "no-algorithm" } else { algorithm })
}

// ---------------------------------------------------------------------------------------
// Strata backups

/// The users of a Strata backup directory, verified against the manifest first (the
/// whole backup, as a restore does), each as it was: id, role, status, version, times.
pub async fn strata_users(dir: &Path) -> Result<Vec<Result<Candidate, Rejected>>, BackupError> {
    let manifest = crate::verify(dir).await?;
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut users = Vec::new();
        crate::read_table(&dir, 0, &manifest.tables[0], |rows| {
            users.extend(rows.iter().map(strata_user));
            Ok(())
        })?;
        Ok(users)
    })
    .await
    .map_err(|e| BackupError::Invalid(format!("backup reader: {e}")))?
}

fn strata_user(row: &Row) -> Result<Candidate, Rejected> {
    let source_id = id_text(row.first());
    let malformed = |what: &str| Rejected { source_id: source_id.clone(), reason: Reason::Malformed(what.into()) };
    debug_assert_eq!(TABLES[0].name, "users");
    let [
        Value::Uuid(id),
        Value::Text(email),
        Value::Text(name),
        Value::Text(hash),
        Value::Text(role),
        Value::Text(status),
        Value::Int(version),
        Value::Int(created),
        Value::Int(updated),
        Value::Bool(verified),
        // Not carried over: the user's TOTP row is not imported, so the second factor is not.
        Value::Bool(_mfa_enabled),
    ] = row.as_slice()
    else {
        return Err(malformed("not a users row"));
    };
    let rejected = |reason| Rejected { source_id: source_id.clone(), reason };
    Ok(Candidate {
        source_id: source_id.clone(),
        user: User {
            id: UserId::from_uuid(*id),
            email: Email::parse(email).map_err(|e| rejected(Reason::InvalidEmail(e.message)))?,
            name: DisplayName::parse(name).map_err(|e| rejected(Reason::InvalidName(e.message)))?,
            password_hash: PasswordHash::from_trusted(hash.clone()),
            role: Role::parse(role).map_err(|e| malformed(&e.message))?,
            status: UserStatus::parse(status).map_err(|e| malformed(&e.message))?,
            verified: *verified,
            mfa_enabled: false,
            version: Version(u64::try_from(*version).map_err(|_| malformed("negative version"))?),
            created_at: Timestamp::from_micros(*created),
            updated_at: Timestamp::from_micros(*updated),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Timestamp = Timestamp(1_700_000_000_000_000);

    fn text(s: &str) -> Value {
        Value::Text(s.into())
    }

    #[test]
    fn fastapi_users_rows_keep_their_uuid() {
        let id = uuid::Uuid::new_v4();
        let row = vec![
            text(&id.to_string()),
            text("Ann@Example.com"),
            text("$2b$12$x"),
            Value::Int(0),
            Value::Bool(true),
            Value::Int(1),
        ];
        let c = fastapi_users_row(&row, NOW).unwrap();
        assert!(c.user.verified);
        assert_eq!(c.user.id.as_uuid(), id);
        assert_eq!(c.user.email.as_str(), "ann@example.com");
        assert_eq!(c.user.name.as_str(), "Ann");
        assert_eq!((c.user.role, c.user.status), (Role::Admin, UserStatus::Disabled));
        // PostgreSQL's native uuid, too.
        let row = vec![
            Value::Uuid(id),
            text("a@example.com"),
            text("h"),
            Value::Bool(true),
            Value::Bool(false),
            Value::Bool(false),
        ];
        let c = fastapi_users_row(&row, NOW).unwrap();
        assert_eq!((c.user.id.as_uuid(), c.user.verified), (id, false));
    }

    #[test]
    fn django_rows_get_a_stable_id_a_name_and_their_join_date() {
        let row = |first: &str, email: &str, joined: Value| {
            vec![
                Value::Int(7),
                text("pbkdf2_sha256$1000000$s$h"),
                text(email),
                text(first),
                text(""),
                text("ann_l"),
                Value::Int(1),
                Value::Int(0),
                joined,
            ]
        };
        let a = django_row(&row("Ann", "ann@example.com", text("2026-12-05 16:13:36.920297")), NOW).unwrap();
        let b = django_row(&row("", "ann@example.com", Value::Int(1_796_487_216_920_297)), NOW).unwrap();
        assert_eq!(a.user.id, b.user.id, "the id depends on the source id only");
        assert_eq!(a.user.id, derived_id(SourceKind::Django, "7"));
        assert_ne!(a.user.id, derived_id(SourceKind::Keycloak, "7"));
        assert_eq!(a.user.id.as_uuid().get_version_num(), 8);
        assert_eq!((a.user.name.as_str(), b.user.name.as_str()), ("Ann", "ann_l"));
        assert_eq!(a.user.created_at, Timestamp(1_796_487_216_920_297));
        assert_eq!(b.user.created_at, a.user.created_at);
        assert_eq!(a.source_id, "7");

        let bad = django_row(&row("Ann", "", Value::Null), NOW).unwrap_err();
        assert_eq!(bad.source_id, "7");
        assert!(matches!(bad.reason, Reason::InvalidEmail(_)), "{:?}", bad.reason);
        let long = "n".repeat(101);
        assert!(matches!(
            django_row(&row(&long, "a@example.com", Value::Null), NOW).unwrap_err().reason,
            Reason::InvalidName(_)
        ));
        assert!(matches!(
            django_row(&row("Ann", "a@example.com", text("yesterday")), NOW).unwrap_err().reason,
            Reason::Malformed(_)
        ));
    }

    #[test]
    fn sql_date_times_with_and_without_offsets() {
        let t = |s| parse_sql_datetime(s).map(|t| t.0);
        assert_eq!(t("2026-12-05 16:13:36"), Some(1_796_487_216_000_000));
        assert_eq!(t("2026-12-05T16:13:36.5Z"), Some(1_796_487_216_500_000));
        assert_eq!(t("2026-12-05 18:13:36.920297+02:00"), Some(1_796_487_216_920_297));
        assert_eq!(t("2026-12-05 14:13:36-02:00"), Some(1_796_487_216_000_000));
        assert_eq!(t("05/12/2026"), None);
    }

    #[test]
    fn keycloak_credentials_become_hashes_strata_verifies() {
        let params = HashParams::default();
        let pbkdf2 = serde_json::json!({
            "type": "password",
            "secretData": r#"{"value":"3Z83Ic8JUztntTF9PBmLJW02MIxLxTYPg2mt5N2TgwA=","salt":"8qeAg8keMTB9ctgwRYBQ8w==","additionalParameters":{}}"#,
            "credentialData": r#"{"hashIterations":27500,"algorithm":"pbkdf2-sha256","additionalParameters":{}}"#,
        });
        let hash = keycloak_hash(&pbkdf2);
        assert!(hash.as_str().starts_with("$pbkdf2-sha256$i=27500,l=32$"), "{}", hash.as_str());
        assert_eq!(hash_scheme(&hash, &params), HashScheme::Pbkdf2);

        let argon2 = serde_json::json!({
            "type": "password",
            "secretData": r#"{"value":"BruFLfFkjH/8erZ26NnrbkOrWiZuQyDRCHD9o0R6Scg=","salt":"Cf9AYCE5pAbb4CKEF0GUTA==","additionalParameters":{}}"#,
            "credentialData": r#"{"hashIterations":5,"algorithm":"argon2","additionalParameters":{"hashLength":["32"],"memory":["7168"],"type":["id"],"version":["1.3"],"parallelism":["1"]}}"#,
        });
        let hash = keycloak_hash(&argon2);
        assert!(hash.as_str().starts_with("$argon2id$v=19$m=7168,t=5,p=1$"), "{}", hash.as_str());
        assert_eq!(hash_scheme(&hash, &params), HashScheme::Argon2Other);

        let mut md5 = pbkdf2.clone();
        md5["credentialData"] = r#"{"hashIterations":1,"algorithm":"md5-crypt"}"#.into();
        assert_eq!(keycloak_hash(&md5).as_str(), "!keycloak-md5-crypt");
        assert_eq!(hash_scheme(&keycloak_hash(&md5), &params), HashScheme::Unknown);
    }

    #[test]
    fn keycloak_users_map_names_status_and_ids() {
        let user = serde_json::json!({
            "id": "dbfcd8d1-f119-4c89-9409-544382abb11b", "username": "user1", "enabled": false,
            "email": "user1@example.com", "firstName": "Ada", "createdTimestamp": 1693669853579i64,
            "credentials": [ { "type": "otp" } ],
        });
        let c = keycloak_user("demo", &user, NOW).unwrap();
        assert_eq!(c.user.name.as_str(), "Ada");
        assert_eq!(c.user.status, UserStatus::Disabled);
        assert_eq!(c.user.created_at, Timestamp(1_693_669_853_579_000));
        assert_eq!(c.user.id, derived_id(SourceKind::Keycloak, "demo/dbfcd8d1-f119-4c89-9409-544382abb11b"));
        assert_eq!(hash_scheme(&c.user.password_hash, &HashParams::default()), HashScheme::Unknown);
        let no_email = serde_json::json!({ "id": "x", "username": "u" });
        assert!(matches!(keycloak_user("demo", &no_email, NOW).unwrap_err().reason, Reason::InvalidEmail(_)));
    }
}
