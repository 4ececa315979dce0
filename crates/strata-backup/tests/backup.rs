//! Backups taken on each backend and restored into each other backend, through the real
//! databases (PostgreSQL and MySQL are skipped, saying so, when unreachable and not
//! required by STRATA_REQUIRE_BACKENDS), and the ways a backup is refused.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use strata_backup::{BackupError, Progress};
use strata_core::backup::{OnExisting, Row, TABLES};
use strata_core::domain::{
    AuditEntry, DisplayName, Email, OutboxEvent, PasswordHash, Role, Session, SessionId, SessionToken, Timestamp, User,
    UserId, UserStatus, Version,
};
use strata_core::error::RepoError;
use strata_core::ports::Store;
use strata_core::webhooks::{WebhookAttempt, WebhookEndpoint, WebhookSecret, WebhookUrl};
use strata_store::testing::{TestDb, fresh};
use strata_store::{Backend, StoreOptions, connect};

const T0: Timestamp = Timestamp(1_767_225_600_000_000);

async fn store(backend: Backend, what: &str) -> Option<(TestDb, Arc<dyn Store>)> {
    let db = fresh(backend, what).await?;
    let store = connect(&StoreOptions::new(db.url.clone())).await.unwrap();
    Some((db, store))
}

fn event(kind: &'static str, aggregate: uuid::Uuid) -> OutboxEvent {
    OutboxEvent {
        id: uuid::Uuid::now_v7(),
        aggregate_id: aggregate,
        event_type: kind,
        payload: r#"{"by":"test"}"#.into(),
        created_at: T0,
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
    }
}

/// Users with sessions (some revoked), published and pending events, an audit entry, a
/// webhook endpoint with a delivery and an attempt: a row in every table.
async fn populate(store: &dyn Store, users: usize) {
    for i in 0..users {
        let user = User {
            id: UserId::generate(),
            email: Email::parse(&format!("user{i}@example.com")).unwrap(),
            name: DisplayName::parse(&format!("Ünïcode \"{i}\" 🦀 \\ '")).unwrap(),
            password_hash: PasswordHash::from_trusted(format!("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ${i}")),
            role: if i == 0 { Role::Admin } else { Role::User },
            status: if i % 5 == 4 { UserStatus::Disabled } else { UserStatus::Active },
            verified: i % 2 == 0,
            mfa_enabled: false,
            version: Version::FIRST,
            created_at: T0,
            updated_at: T0,
        };
        store.create_user(&user, None, &event("user.created", user.id.as_uuid())).await.unwrap();
        let session = Session {
            id: SessionId::generate(),
            user_id: user.id,
            token_hash: SessionToken::generate().hash(),
            created_at: T0,
            expires_at: T0.plus(Duration::from_secs(3600)),
            revoked_at: None,
        };
        store.create_session(&session, &event("session.created", user.id.as_uuid())).await.unwrap();
        if i % 3 == 0 {
            store.revoke_session(session.id, T0, &event("session.revoked", user.id.as_uuid())).await.unwrap();
        }
        if i % 4 == 1 {
            issue_reset(store, &user).await;
        }
    }
    let pending =
        store.pending_events(&(0..strata_core::domain::OUTBOX_PARTITIONS).collect::<Vec<_>>(), 5).await.unwrap();
    store.mark_published(&pending.iter().map(|e| e.id).collect::<Vec<_>>(), T0).await.unwrap();
    let audit = AuditEntry {
        id: uuid::Uuid::now_v7(),
        event_type: "user.created".into(),
        subject: uuid::Uuid::now_v7(),
        actor: r#"{"type":"admin","id":"x"}"#.into(),
        time: T0,
        data: "{}".into(),
    };
    store.append_audit(&[audit]).await.unwrap();
    let endpoint = WebhookEndpoint {
        id: uuid::Uuid::now_v7(),
        url: WebhookUrl::parse("https://hooks.example.com/in").unwrap(),
        events: vec!["user.created".into()],
        description: "CRM".into(),
        enabled: false,
        disabled_reason: Some("answered 410".into()),
        secrets: vec![WebhookSecret::generate()],
        rate_limit: 10,
        failing_since: Some(T0),
        created_at: T0,
        updated_at: T0,
    };
    store.create_webhook_endpoint(&endpoint).await.unwrap();
    let cloud_event = strata_core::events::Event {
        id: uuid::Uuid::now_v7(),
        source: "/strata".into(),
        event_type: "user.created".into(),
        time: T0,
        subject: uuid::Uuid::now_v7().to_string(),
        sequence: 1,
        traceparent: None,
        data: "{}".into(),
    };
    let delivery = strata_core::webhooks::WebhookDelivery::new(endpoint.id, cloud_event, T0);
    store.enqueue_deliveries(std::slice::from_ref(&delivery)).await.unwrap();
    let attempt =
        WebhookAttempt { delivery_id: delivery.id, attempt: 1, at: T0, status: Some(500), error: None, duration_ms: 7 };
    store.record_delivery(&delivery, Some(&attempt)).await.unwrap();
    let group = strata_core::groups::Group {
        id: strata_core::domain::GroupId::generate(),
        display_name: strata_core::groups::GroupName::parse("Backed up 🦀").unwrap(),
        external_id: Some(strata_core::groups::ExternalId::parse("entra-7").unwrap()),
        version: strata_core::domain::Version(3),
        created_at: T0,
        updated_at: T0,
    };
    let members = store
        .list_users(&strata_core::ports::UserListQuery { after: None, limit: 3, email: None, ..Default::default() })
        .await
        .unwrap();
    let ids: Vec<_> = members.iter().map(|u| u.id).collect();
    store.create_group(&group, &ids, &event("group.created", group.id.as_uuid())).await.unwrap();
    store.set_external_id(ids[0], Some(&strata_core::groups::ExternalId::parse("okta-1").unwrap())).await.unwrap();
    let enterprise = strata_core::groups::EnterpriseUser {
        employee_number: Some(strata_core::groups::EnterpriseText::parse("employee_number", "701984").unwrap()),
        department: Some(strata_core::groups::EnterpriseText::parse("department", "Tour Operations 🦀").unwrap()),
        ..Default::default()
    };
    store.set_enterprise(ids[0], &enterprise).await.unwrap();
    let token = strata_core::provisioning::ProvisioningToken {
        id: uuid::Uuid::now_v7(),
        name: "Okta".into(),
        token_hash: SessionToken::generate().hash(),
        created_at: T0,
        revoked_at: None,
    };
    store.create_provisioning_token(&token).await.unwrap();
}

/// A password-reset token with its queued mail.
async fn issue_reset(store: &dyn Store, user: &User) {
    use strata_core::lifecycle::{AccountToken, MailStatus, OneTimeToken, QueuedMail, TokenPurpose, binding_of};
    let token = AccountToken {
        id: uuid::Uuid::now_v7(),
        user_id: user.id,
        purpose: TokenPurpose::PasswordReset,
        token_hash: OneTimeToken::generate().hash(),
        binding: binding_of(user.password_hash.as_str()),
        created_at: T0,
        expires_at: T0.plus(Duration::from_secs(1800)),
        used_at: None,
        // Round-trips the column an email change fills (any purpose stores it alike).
        new_email: Some(strata_core::domain::Email::parse("new-ünïcode@example.com").unwrap()),
    };
    let mail = QueuedMail {
        id: uuid::Uuid::now_v7(),
        template: "password_reset".into(),
        recipient: user.email.clone(),
        params: r#"{"name":"Ünïcode 🦀"}"#.into(),
        status: MailStatus::Pending,
        attempts: 0,
        next_attempt_at: T0,
        last_error: Some("451 greylisted".into()),
        created_at: T0,
        updated_at: T0,
    };
    store.issue_account_token(&token, &[mail], &event("password_reset.requested", user.id.as_uuid())).await.unwrap();
    let totp = strata_core::totp::TotpRecord {
        user_id: user.id,
        secret: strata_core::totp::TotpSecret::generate(),
        enabled: true,
        last_step: Some(56_000_000),
        recovery_hashes: vec![strata_core::totp::RecoveryCode::generate().hash(); 2],
        version: 3,
        created_at: T0,
        updated_at: T0,
    };
    store.save_totp(&totp, None, None).await.unwrap();
}

/// Every row of every table, in key order.
async fn contents(store: &dyn Store) -> Vec<Vec<Row>> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<strata_core::backup::Batch>(4);
    let collect = async {
        let mut tables = vec![Vec::new(); TABLES.len()];
        while let Some(batch) = rx.recv().await {
            tables[batch.table].extend(batch.rows);
        }
        tables
    };
    let (done, tables) = tokio::join!(store.export_snapshot(tx), collect);
    done.unwrap();
    tables
}

async fn backup_restores_into(from: Backend, to: Backend) {
    let what = format!("backup {} to {}", from.name(), to.name());
    let Some((_a, source)) = store(from, &what).await else { return };
    let Some((_b, target)) = store(to, &what).await else { return };
    populate(&*source, 30).await;
    let dir = tempdir(&what);
    let out = dir.join("backup");
    let manifest = strata_backup::backup(&*source, &out, &Progress::quiet()).await.unwrap();
    assert_eq!(manifest.source_backend, from.name());
    assert_eq!(manifest.tables.iter().find(|t| t.name == "users").unwrap().rows, 30);
    for table in &manifest.tables {
        assert!(out.join(&table.file).is_file(), "{} has its file", table.name);
        assert!(table.rows > 0, "{} has rows", table.name);
    }

    strata_backup::restore(&*target, &out, OnExisting::Refuse, &Progress::quiet()).await.unwrap();
    assert_eq!(contents(&*target).await, contents(&*source).await, "{what}: every row restored as it was");
    // The restored database works: a new user and a login-style read.
    let email = Email::parse("user7@example.com").unwrap();
    assert!(target.user_by_email(&email).await.unwrap().is_some());

    // Restoring again is refused (the target has rows) and changes nothing, unless asked to replace.
    let again = strata_backup::restore(&*target, &out, OnExisting::Refuse, &Progress::quiet()).await;
    assert!(matches!(again, Err(BackupError::Store(RepoError::NotEmpty(_)))), "{again:?}");
    strata_backup::restore(&*target, &out, OnExisting::Replace, &Progress::quiet()).await.unwrap();
    assert_eq!(contents(&*target).await, contents(&*source).await);
    let _ = std::fs::remove_dir_all(dir);
}

fn tempdir(what: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "strata-backup-{}-{}",
        what.replace(' ', "-"),
        uuid::Uuid::now_v7().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

macro_rules! between {
    ($($name:ident: $from:ident => $to:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                backup_restores_into(Backend::$from, Backend::$to).await;
            }
        )*
    };
}

between!(
    sqlite_to_sqlite: Sqlite => Sqlite,
    sqlite_to_postgres: Sqlite => Postgres,
    postgres_to_mysql: Postgres => Mysql,
    mysql_to_sqlite: Mysql => Sqlite,
    postgres_to_postgres: Postgres => Postgres,
    mysql_to_mysql: Mysql => Mysql,
);

/// Flips one byte of a file in the middle.
fn damage(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_or_foreign_backup_writes_nothing() {
    let Some((_a, source)) = store(Backend::Sqlite, "damaged source").await else { return };
    let Some((_b, target)) = store(Backend::Sqlite, "damaged target").await else { return };
    populate(&*source, 10).await;
    let dir = tempdir("damaged");
    let out = dir.join("b");
    strata_backup::backup(&*source, &out, &Progress::quiet()).await.unwrap();

    // Backing up into an existing path is refused.
    let twice = strata_backup::backup(&*source, &out, &Progress::quiet()).await;
    assert!(matches!(&twice, Err(BackupError::Invalid(m)) if m.contains("already exists")), "{twice:?}");

    let empty = contents(&*target).await;
    let copy = |name: &str| {
        let to = dir.join(name);
        std::fs::create_dir_all(&to).unwrap();
        for entry in std::fs::read_dir(&out).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
        to
    };

    // A flipped byte in the last table's file: found before any table is written.
    let damaged = copy("damaged");
    damage(&damaged.join("webhook_attempts.jsonl.gz"));
    let error = strata_backup::restore(&*target, &damaged, OnExisting::Refuse, &Progress::quiet()).await.unwrap_err();
    assert!(error.to_string().contains("webhook_attempts.jsonl.gz"), "{error}");
    assert_eq!(contents(&*target).await, empty);

    // A manifest edited to another schema, or to a file outside the backup.
    let edited = copy("edited");
    let manifest_path = edited.join("manifest.json");
    let text = std::fs::read_to_string(&manifest_path).unwrap();
    std::fs::write(&manifest_path, text.replace("\"schema_version\": 8", "\"schema_version\": 99")).unwrap();
    let error = strata_backup::verify(&edited).await.unwrap_err();
    assert!(error.to_string().contains("schema version 99"), "{error}");
    std::fs::write(&manifest_path, text.replace("\"users.jsonl.gz\"", "\"../users.jsonl.gz\"")).unwrap();
    let error = strata_backup::verify(&edited).await.unwrap_err();
    assert!(error.to_string().contains("leaves the backup directory"), "{error}");

    assert_eq!(contents(&*target).await, empty);
    let _ = std::fs::remove_dir_all(dir);
}
