//! `strata import` as an operator runs it: the real binary reads users that the real
//! fastapi-users and Django made (`import_fixtures.py`, in a Python with those packages:
//! `STRATA_TEST_PYTHON`), and a Keycloak export whose credentials are computed here; the
//! users then log in to a running Strata with their old passwords. A second run imports
//! nothing.

use super::*;

use std::process::Command;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/api/import_fixtures.py");

/// A Python with fastapi-users (SQLAlchemy), aiosqlite, Django and argon2-cffi.
fn import_python() -> Option<String> {
    super::python_with(
        "fastapi_users, fastapi_users_db_sqlalchemy, aiosqlite, django, argon2",
        "import from fastapi-users and Django",
        "import-interop",
        "no python with fastapi-users[sqlalchemy], aiosqlite, django and argon2-cffi (set STRATA_TEST_PYTHON)",
    )
}

/// Runs the fixture script; returns what it made.
fn make_source(py: &str, kind: &str, path: &std::path::Path) -> Value {
    let out = Command::new(py).arg(FIXTURES).arg(kind).arg(path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `strata import` into `url`; returns (success, stdout).
fn import(url: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_strata"))
        .arg("import")
        .args(args)
        .env("STRATA_DATABASE_URL", url)
        .env("STRATA_LOG_LEVEL", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.success(), format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)))
}

#[track_caller]
fn assert_contains(output: &str, expected: &str) {
    assert!(output.contains(expected), "expected {expected:?} in:\n{output}");
}

async fn logs_in(app: &TestApp, email: &str, password: &str) -> Value {
    let r = app.login(email, password).await;
    assert_eq!(r.status, StatusCode::CREATED, "{email}: {}", r.body);
    r.body["user"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fastapi_users_log_in_after_import_with_their_uuid_role_and_status() {
    let Some(py) = import_python() else { return };
    let dir = strata_store::testing::TempDir::new();
    let source = dir.path.join("fastapi.db");
    let made = make_source(&py, "fastapi-users", &source);
    let Some(app) = spawn(Backend::Sqlite, "import fastapi-users", |_| {}).await else { return };
    let url = app._db.url.clone();
    // SQLAlchemy's async URL, as the application's settings hold it.
    let source_url = format!("sqlite+aiosqlite:///{}", source.display());

    let (ok, dry) = import(&url, &["--from", "fastapi-users", &source_url, "--dry-run"]);
    assert!(ok, "{dry}");
    assert_contains(&dry, "4 would be imported (dry run: nothing written)");
    assert_eq!(app.login("ann@example.com", "ann's fastapi password").await.status, StatusCode::UNAUTHORIZED);

    let (ok, out) = import(&url, &["--from", "fastapi-users", &source_url]);
    assert!(ok, "{out}");
    assert_contains(&out, "5 users read: 4 imported, 0 already present, 1 rejected; 1 imported disabled");
    assert_contains(&out, "rejected, invalid email: 1");
    assert_contains(&out, &format!("source row {}: invalid email", made["eve@example.com"]["id"].as_str().unwrap()));

    // pwdlib's argon2id, and bcrypt.
    let ann = logs_in(&app, "ann@example.com", "ann's fastapi password").await;
    assert_eq!(ann["id"], made["ann@example.com"]["id"], "the fastapi-users UUID is the Strata id");
    assert_eq!((ann["role"].as_str(), ann["name"].as_str()), (Some("admin"), Some("ann")));
    let bob = logs_in(&app, "bob@example.com", "bob's bcrypt password").await;
    assert_eq!(bob["role"], "user");
    // is_active = false: the password is right, the account disabled.
    app.login("cat@example.com", "cat's password").await.assert_problem(403, "account_disabled", None);
    // A hash Strata cannot verify: imported, disabled, and never verifies.
    app.login("dan@example.com", "dan's password").await.assert_problem(401, "invalid_credentials", None);
    let dan = app.get(&format!("/v1/users/{}", made["dan@example.com"]["id"].as_str().unwrap()), Some(ADMIN)).await;
    assert_eq!(dan.body["status"], "disabled");

    let (ok, again) = import(&url, &["--from", "fastapi-users", &source_url]);
    assert!(ok, "{again}");
    assert_contains(&again, "5 users read: 0 imported, 4 already present, 1 rejected");
    logs_in(&app, "bob@example.com", "bob's bcrypt password").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_users_log_in_after_import_and_rejected_rows_are_named() {
    let Some(py) = import_python() else { return };
    let dir = strata_store::testing::TempDir::new();
    let source = dir.path.join("django.db");
    let made = make_source(&py, "django", &source);
    let Some(app) = spawn(Backend::Sqlite, "import django", |_| {}).await else { return };
    let url = app._db.url.clone();
    let source_url = format!("sqlite://{}", source.display());

    // Stopping at the first bad row (6, no email) keeps what came before it.
    let (ok, stopped) = import(&url, &["--from", "django", &source_url, "--on-error", "stop"]);
    assert!(!ok, "{stopped}");
    assert_contains(&stopped, "6 users read: 5 imported");
    assert_contains(&stopped, "source row 6: invalid email");

    let (ok, out) = import(&url, &["--from", "django", &source_url]);
    assert!(ok, "{out}");
    assert_contains(&out, "7 users read: 0 imported, 5 already present, 2 rejected");
    assert_contains(&out, "rejected, duplicate email in the source: 1");
    assert_contains(&out, "source row 7: duplicate email in the source");
    assert_contains(&out, "source row 6: invalid email");

    // Django's PBKDF2-SHA256 (1,000,000 iterations) and its argon2.
    let ann = logs_in(&app, "ann@example.com", "ann's django password").await;
    assert_eq!(ann["name"], "Ann Lee");
    assert_eq!(ann["role"], "user");
    let root = logs_in(&app, "root@example.com", "root's django password").await;
    assert_eq!((root["role"].as_str(), root["name"].as_str()), (Some("admin"), Some("root")));
    logs_in(&app, "carl@example.com", "carl's argon2 password").await;
    app.login("gone@example.com", "whatever").await.assert_problem(403, "account_disabled", None);
    assert_eq!(made["nopw"]["hash"].as_str().map(|h| h.starts_with('!')), Some(true));
    let users = app.get("/v1/users?limit=100", Some(ADMIN)).await;
    let nopw = users.body["items"].as_array().unwrap().iter().find(|u| u["email"] == "nopw@example.com").cloned();
    assert_eq!(nopw.map(|u| u["status"].clone()), Some(json!("disabled")), "{}", users.body);

    let (ok, again) = import(&url, &["--from", "django", &source_url]);
    assert!(ok, "{again}");
    assert_contains(&again, "7 users read: 0 imported, 5 already present, 2 rejected");
}

/// A Keycloak credential as `kc.sh export` writes it.
fn keycloak_credential(algorithm: &str, iterations: u32, salt: &[u8], value: &[u8], parameters: Value) -> Value {
    json!({
        "id": uuid::Uuid::new_v4().to_string(),
        "type": "password",
        "createdDate": 1_700_000_000_000i64,
        "secretData": json!({ "value": STANDARD.encode(value), "salt": STANDARD.encode(salt), "additionalParameters": {} }).to_string(),
        "credentialData": json!({ "hashIterations": iterations, "algorithm": algorithm, "additionalParameters": parameters }).to_string(),
    })
}

fn keycloak_user(id: &str, username: &str, email: Option<&str>, credentials: Vec<Value>) -> Value {
    let mut user = json!({
        "id": id, "createdTimestamp": 1_700_000_000_000i64, "username": username, "enabled": true,
        "totp": false, "emailVerified": true, "firstName": "Key", "lastName": username,
        "credentials": credentials, "disableableCredentialTypes": [], "requiredActions": [],
        "realmRoles": ["default-roles-demo"], "notBefore": 0, "groups": [],
    });
    if let Some(email) = email {
        user["email"] = json!(email);
    }
    user
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keycloak_exports_import_and_users_log_in_and_a_backup_imports_elsewhere() {
    let Some(app) = spawn(Backend::Sqlite, "import keycloak", |_| {}).await else { return };
    let url = app._db.url.clone();
    let dir = strata_store::testing::TempDir::new();
    let export = dir.path.join("export");
    std::fs::create_dir(&export).unwrap();

    let salt = *b"keycloak-salt-16";
    let mut pbkdf2 = [0u8; 64];
    pbkdf2::pbkdf2::<hmac::Hmac<sha2::Sha512>>(b"pbkdf2 password", &salt, 27_500, &mut pbkdf2).unwrap();
    let mut argon = [0u8; 32];
    argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon2::Params::new(7168, 5, 1, Some(32)).unwrap(),
    )
    .hash_password_into(b"argon2 password", &salt, &mut argon)
    .unwrap();
    let argon_parameters = json!({
        "hashLength": ["32"], "memory": ["7168"], "type": ["id"], "version": ["1.3"], "parallelism": ["1"],
    });
    let users = vec![
        keycloak_user(
            "6f1a3c1e-0000-4000-8000-000000000001",
            "sha512",
            Some("sha512@example.com"),
            vec![keycloak_credential("pbkdf2-sha512", 27_500, &salt, &pbkdf2, json!({}))],
        ),
        keycloak_user(
            "6f1a3c1e-0000-4000-8000-000000000002",
            "argon",
            Some("argon@example.com"),
            vec![
                json!({ "id": "otp", "type": "otp", "secretData": "{}", "credentialData": "{}" }),
                keycloak_credential("argon2", 5, &salt, &argon, argon_parameters),
            ],
        ),
        keycloak_user(
            "6f1a3c1e-0000-4000-8000-000000000003",
            "md5",
            Some("md5@example.com"),
            vec![keycloak_credential("md5-crypt", 1, &salt, &[7; 16], json!({}))],
        ),
        keycloak_user("6f1a3c1e-0000-4000-8000-000000000004", "nomail", None, vec![]),
    ];
    let realm = json!({ "id": "demo", "realm": "demo", "enabled": true });
    std::fs::write(export.join("demo-realm.json"), serde_json::to_vec_pretty(&realm).unwrap()).unwrap();
    let users_file = json!({ "realm": "demo", "users": users });
    std::fs::write(export.join("demo-users-0.json"), serde_json::to_vec_pretty(&users_file).unwrap()).unwrap();
    let export_path = export.display().to_string();

    let (ok, out) = import(&url, &["--from", "keycloak", &export_path]);
    assert!(ok, "{out}");
    assert_contains(&out, "4 users read: 3 imported, 0 already present, 1 rejected; 1 imported disabled");
    assert_contains(&out, "source row 6f1a3c1e-0000-4000-8000-000000000004: invalid email");
    let sha512 = logs_in(&app, "sha512@example.com", "pbkdf2 password").await;
    assert_eq!(sha512["name"], "Key sha512");
    assert_eq!(sha512["verified"], true, "emailVerified carries over");
    logs_in(&app, "argon@example.com", "argon2 password").await;
    app.login("md5@example.com", "anything").await.assert_problem(401, "invalid_credentials", None);

    let (ok, again) = import(&url, &["--from", "keycloak", &export_path]);
    assert!(ok, "{again}");
    assert_contains(&again, "4 users read: 0 imported, 3 already present, 1 rejected");

    // The same users through a Strata backup, into another database: ids, statuses and
    // the (now upgraded) hashes come along.
    let backup = dir.path.join("backup");
    let out = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["backup", "--out", &backup.display().to_string()])
        .env("STRATA_DATABASE_URL", &url)
        .env("STRATA_LOG_LEVEL", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let Some(other) = spawn(Backend::Sqlite, "import strata-jsonl", |_| {}).await else { return };
    other.register("someone@example.com", "Already Here").await;
    let (ok, out) = import(&other._db.url, &["--from", "strata-jsonl", &backup.display().to_string()]);
    assert!(ok, "{out}");
    assert_contains(&out, "3 users read: 3 imported, 0 already present, 0 rejected; 1 imported disabled");
    let moved = logs_in(&other, "sha512@example.com", "pbkdf2 password").await;
    assert_eq!(moved["id"], sha512["id"]);
    logs_in(&other, "someone@example.com", PASSWORD).await;
    let (ok, again) = import(&other._db.url, &["--from", "strata-jsonl", &backup.display().to_string()]);
    assert!(ok, "{again}");
    assert_contains(&again, "3 users read: 0 imported, 3 already present");
}
