//! Users imported with another system's password hash log in with their old password, and
//! that first login stores Strata's argon2id hash in its place, through the ordinary
//! versioned update: no session is revoked, the cached account follows, and the audit log
//! shows a `user.updated` that changed no field.

use strata_core::domain::{DisplayName, Email, OutboxEvent, PasswordHash, Role, User, UserId, UserStatus, Version};
use strata_core::ports::Store;

use super::events::audit_until;
use super::*;

/// The password behind the hashes below.
const IMPORTED_PASSWORD: &str = "correct horse battery staple";
/// Django 5.2's `PBKDF2PasswordHasher`, 1,000 iterations.
const DJANGO_PBKDF2: &str = "pbkdf2_sha256$1000$RElyNNBnbhzQcsK0lmgl5X$ry2Nm7TqkSUAbdXLjZ9E/OHwI4E9+ZcasVehY3lIB1c=";
/// Django 5.2's `BCryptSHA256PasswordHasher`, cost 4.
const DJANGO_BCRYPT_SHA256: &str = "bcrypt_sha256$$2b$04$QqRDRFTvXFmAGUGnQPyiPeiCAbiEzngCvJlg/.rqv6LNeWBYibSR2";

/// Writes a user straight to the store, as an importer would.
async fn import(store: &Arc<dyn Store>, email: &str, hash: &str, status: UserStatus, app: &TestApp) -> UserId {
    let now = app.clock.now();
    let user = User {
        id: UserId::generate(),
        email: Email::parse(email).unwrap(),
        name: DisplayName::parse("Imported").unwrap(),
        password_hash: PasswordHash::from_trusted(hash.to_owned()),
        role: Role::User,
        status,
        verified: false,
        mfa_enabled: false,
        version: Version::FIRST,
        created_at: now,
        updated_at: now,
    };
    let event = OutboxEvent {
        id: uuid::Uuid::now_v7(),
        aggregate_id: user.id.as_uuid(),
        event_type: "user.created",
        payload: json!({ "user": { "id": user.id.to_string() }, "actor": { "type": "admin", "id": null } }).to_string(),
        created_at: now,
        traceparent: None,
    };
    store.create_user(&user, None, &event).await.unwrap();
    user.id
}

async fn stored_hash(store: &Arc<dyn Store>, id: UserId) -> String {
    store.user_by_id(id).await.unwrap().unwrap().password_hash.as_str().to_owned()
}

async fn imported_hashes_are_upgraded_at_login(app: TestApp) {
    let store = strata_store::connect(&strata_store::StoreOptions::new(app._db.url.clone())).await.unwrap();
    let django = import(&store, "django@example.com", DJANGO_PBKDF2, UserStatus::Active, &app).await;
    let bcrypt = import(&store, "bcrypt@example.com", DJANGO_BCRYPT_SHA256, UserStatus::Active, &app).await;
    // An importer imports users whose hash it cannot classify disabled.
    let unknown =
        import(&store, "unknown@example.com", "md5$salt$d2f1c0b4e8a7f6e5d4c3b2a190817263", UserStatus::Disabled, &app)
            .await;

    // Read once so the cache holds version 1, which the upgrade must replace.
    let path = format!("/v1/users/{django}");
    assert_eq!(app.get(&path, Some(ADMIN)).await.body["version"], 1);

    // A wrong password changes nothing.
    app.login("django@example.com", "correct horse battery").await.assert_problem(401, "invalid_credentials", None);
    assert_eq!(stored_hash(&store, django).await, DJANGO_PBKDF2);

    app.clock.advance(Duration::from_secs(1));
    let first = app.login("django@example.com", IMPORTED_PASSWORD).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    assert_eq!(first.body["user"]["version"], 2);
    assert_eq!(first.body["user"]["email"], "django@example.com");
    assert_eq!(first.body["user"]["status"], "active");
    let upgraded = stored_hash(&store, django).await;
    // test_config's parameters: 256 KiB, one pass.
    assert!(upgraded.starts_with("$argon2id$v=19$m=256,t=1,p=1$"), "{upgraded}");
    let token = first.body["token"].as_str().unwrap().to_owned();
    let me = app.get("/v1/sessions/current", Some(&token)).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.body["user"]["version"], 2);
    assert_eq!(app.get(&path, Some(ADMIN)).await.body["version"], 2, "the cached account was not replaced");

    // The next login verifies the argon2id hash and writes nothing; the first session lives.
    let second = app.login("django@example.com", IMPORTED_PASSWORD).await;
    assert_eq!(second.status, StatusCode::CREATED, "{}", second.body);
    assert_eq!(second.body["user"]["version"], 2);
    assert_eq!(stored_hash(&store, django).await, upgraded);
    assert_eq!(app.get("/v1/sessions/current", Some(&token)).await.status, StatusCode::OK);

    let other = app.login("bcrypt@example.com", IMPORTED_PASSWORD).await;
    assert_eq!(other.status, StatusCode::CREATED, "{}", other.body);
    assert!(stored_hash(&store, bcrypt).await.starts_with("$argon2id$v=19$m=256,t=1,p=1$"));

    app.login("unknown@example.com", IMPORTED_PASSWORD).await.assert_problem(401, "invalid_credentials", None);
    assert!(stored_hash(&store, unknown).await.starts_with("md5$"));

    // The upgrade is on record as an update by the user that changed no field.
    let items = audit_until(&app, &format!("/v1/audit?user_id={django}&type=user.updated"), 1).await;
    assert_eq!(items.len(), 1, "{items:#?}");
    assert_eq!(items[0]["actor"], json!({"type": "user", "id": django.to_string()}));
    assert_eq!(items[0]["data"]["changed"], json!([]));
    assert_eq!(items[0]["data"]["sessions_revoked"], "none");
    assert_eq!(items[0]["data"]["user"]["version"], 2);
    assert!(!items[0].to_string().contains("argon2"));
    app.stop().await;
}

api_tests!(sqlite, Backend::Sqlite, [imported_hashes_are_upgraded_at_login]);
api_tests!(postgres, Backend::Postgres, [imported_hashes_are_upgraded_at_login]);
api_tests!(mysql, Backend::Mysql, [imported_hashes_are_upgraded_at_login]);
