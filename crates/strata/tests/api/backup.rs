//! `strata backup` and `strata restore` as an operator runs them: the real binary, against
//! a server that keeps taking writes, restored into another backend whose users then log
//! in; and a restore killed while it writes.

use super::*;

use std::process::{Command, Stdio};

use strata_core::backup::{Batch, Load, OnExisting, Value as Cell};
use strata_store::StoreOptions;

fn strata(url: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(args)
        .env("STRATA_DATABASE_URL", url)
        .env("STRATA_LOG_LEVEL", "warn")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// PostgreSQL when it is there (a restore across backends), else SQLite.
async fn another_database(what: &str) -> TestDb {
    match fresh(Backend::Postgres, what).await {
        Some(db) => db,
        None => fresh(Backend::Sqlite, what).await.unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_writes_restores_into_another_backend_where_users_log_in() {
    let Some(source) = spawn(Backend::Sqlite, "backup source", |_| {}).await else { return };
    let mut users = Vec::new();
    for i in 0..10 {
        let email = format!("b{i}@example.com");
        let (_, token) = source.user_with_token(&email).await;
        users.push((email, token));
    }

    // Registrations keep coming while the backup runs.
    let source = Arc::new(source);
    let writing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writer = {
        let (source, writing) = (source.clone(), writing.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while writing.load(std::sync::atomic::Ordering::Relaxed) && n < 300 {
                source.register(&format!("w{n}@example.com"), "Writer").await;
                n += 1;
            }
            n
        })
    };
    let dir = strata_store::testing::TempDir::new();
    let out = dir.path.join("backup");
    let backup = {
        let (url, out) = (source._db.url.clone(), out.display().to_string());
        tokio::task::spawn_blocking(move || strata(&url, &["backup", "--out", &out])).await.unwrap()
    };
    writing.store(false, std::sync::atomic::Ordering::Relaxed);
    let registered_meanwhile = writer.await.unwrap();
    assert!(backup.status.success(), "{}", text(&backup.stderr));
    assert!(text(&backup.stdout).contains("written to"), "{}", text(&backup.stdout));
    assert!(text(&backup.stderr).contains("users: "), "per-table progress lines: {}", text(&backup.stderr));
    let manifest: Value = serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let backed_up = manifest["tables"][0]["rows"].as_u64().unwrap();
    assert!(backed_up >= 10, "{manifest}");
    eprintln!("backup: {backed_up} users, {registered_meanwhile} registrations during the run");

    let target = another_database("backup target").await;
    let verified = strata(&target.url, &["restore", "--from", &out.display().to_string(), "--verify-only"]);
    assert!(verified.status.success() && text(&verified.stdout).contains("verified"), "{}", text(&verified.stderr));
    let restored = strata(&target.url, &["restore", "--from", &out.display().to_string()]);
    assert!(restored.status.success(), "{}", text(&restored.stderr));
    assert!(text(&restored.stdout).contains("restored"), "{}", text(&restored.stdout));

    // Running it again is refused with the reason, and changes nothing.
    let again = strata(&target.url, &["restore", "--from", &out.display().to_string()]);
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("not empty") && text(&again.stderr).contains("--replace"),
        "{}",
        text(&again.stderr)
    );

    // A server on the restored database: the same users, passwords and sessions.
    let app = Application::build(test_config(&target.url)).await.unwrap();
    let addr = app.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    let restored_app = TestApp {
        addr,
        client: Client::builder(TokioExecutor::new()).build_http(),
        clock: Arc::new(ManualClock::new(SystemClock.now())),
        shutdown: Some(stop),
        server: Some(server),
        _db: target,
        _shards: Vec::new(),
    };
    for (email, token) in &users {
        assert_eq!(restored_app.login(email, PASSWORD).await.status, StatusCode::CREATED, "{email} logs in");
        let me = restored_app.get("/v1/sessions/current", Some(token)).await;
        assert_eq!(me.status, StatusCode::OK, "{email}'s session survived: {}", me.body);
        assert_eq!(me.body["user"]["email"], email.as_str());
    }
    assert_eq!(counts(&restored_app._db.url).await[0], backed_up);
    restored_app.stop().await;
}

/// Writes `n` users with a session each straight into a store (no argon2: the hashes are
/// placeholders, the rows are what counts).
async fn bulk_users(store: &dyn strata_core::ports::Store, n: usize) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let feed = async move {
        for chunk in 0..n.div_ceil(1000) {
            let ids: Vec<uuid::Uuid> = (0..1000.min(n - chunk * 1000)).map(|_| uuid::Uuid::now_v7()).collect();
            let users = ids
                .iter()
                .enumerate()
                .map(|(i, id)| {
                    vec![
                        Cell::Uuid(*id),
                        Cell::Text(format!("bulk{}@example.com", chunk * 1000 + i)),
                        Cell::Text("Bulk".into()),
                        Cell::Text("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo".into()),
                        Cell::Text("user".into()),
                        Cell::Text("active".into()),
                        Cell::Int(1),
                        Cell::Int(1_767_225_600_000_000),
                        Cell::Int(1_767_225_600_000_000),
                        Cell::Bool(false),
                        Cell::Bool(false),
                    ]
                })
                .collect();
            tx.send(Load::Rows(Batch { table: 0, rows: users })).await.unwrap();
        }
        tx.send(Load::Commit).await.unwrap();
    };
    let (written, ()) = tokio::join!(store.import_snapshot(rx, OnExisting::Refuse), feed);
    assert_eq!(written.unwrap(), n as u64);
}

async fn counts(url: &str) -> Vec<u64> {
    let store = strata_store::connect(&StoreOptions::new(url.to_owned())).await.unwrap();
    store.row_counts().await.unwrap()
}

/// A restore killed (SIGKILL) while its transaction is writing leaves the target empty,
/// and running the same command again completes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_killed_midway_leaves_nothing_and_a_rerun_completes() {
    let Some(target) = fresh(Backend::Postgres, "killed restore").await else { return };
    let source = fresh(Backend::Sqlite, "killed restore source").await.unwrap();
    let store = strata_store::connect(&StoreOptions::new(source.url.clone())).await.unwrap();
    const USERS: usize = 60_000;
    bulk_users(&*store, USERS).await;
    let dir = strata_store::testing::TempDir::new();
    let out = dir.path.join("big");
    let backup = strata(&source.url, &["backup", "--out", &out.display().to_string()]);
    assert!(backup.status.success(), "{}", text(&backup.stderr));

    let mut restore = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["restore", "--from", &out.display().to_string()])
        .env("STRATA_DATABASE_URL", &target.url)
        .env("STRATA_LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once PostgreSQL shows its COPY running.
    let (admin, connection) =
        tokio_postgres::connect(strata_store::testing::DEFAULT_POSTGRES_URL, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let mut copying = false;
    for _ in 0..600 {
        let row = admin
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'COPY users%' AND state <> 'idle'", &[])
            .await
            .unwrap();
        if row.get::<_, i64>(0) > 0 {
            copying = true;
            break;
        }
        assert!(restore.try_wait().unwrap().is_none(), "the restore ended before it was seen writing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(copying, "the restore was never seen writing");
    restore.kill().unwrap();
    restore.wait().unwrap();
    // The server rolls the dead connection's transaction back once it notices the socket closed.
    let mut left = Vec::new();
    for _ in 0..100 {
        left = counts(&target.url).await;
        let busy = admin
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'COPY users%' AND state <> 'idle'", &[])
            .await
            .unwrap()
            .get::<_, i64>(0);
        if busy == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(left.iter().all(|n| *n == 0), "a killed restore wrote nothing: {left:?}");

    let rerun = strata(&target.url, &["restore", "--from", &out.display().to_string()]);
    assert!(rerun.status.success(), "{}", text(&rerun.stderr));
    assert_eq!(counts(&target.url).await[0], USERS as u64);
    assert_eq!(counts(&target.url).await, counts(&source.url).await);
}

/// POSTs JSON; `None` when the server is gone.
async fn post(
    client: Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
    path: &str,
    body: Value,
) -> Option<(StatusCode, Value)> {
    let req = Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let res = tokio::time::timeout(Duration::from_secs(10), client.request(req)).await.ok()?.ok()?;
    let status = res.status();
    let body: Value = serde_json::from_slice(&res.into_body().collect().await.ok()?.to_bytes()).ok()?;
    Some((status, body))
}

/// What a client was told: users created (201) and sessions created (201), by email.
#[derive(Default)]
struct Acknowledged {
    users: Vec<String>,
    sessions: Vec<(String, String)>,
}

/// `kill -9` of a Strata process during a stream of creates: afterwards every create that
/// was acknowledged is there with its session, and no user is there without its
/// `user.created` event.
async fn killed_during_creates(backend: Backend) {
    let what = format!("crash during creates on {}", backend.name());
    let Some(db) = fresh(backend, &what).await else { return };
    let env = [("STRATA_THROTTLE_REGISTRATION_MAX", "1000000")];
    let bin = || Command::new(env!("CARGO_BIN_EXE_strata"));
    let mut api = super::gateway::ApiProcess::on_database(bin(), &db.url, "127.0.0.1:0", &env);
    let addr = api.addr;
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let acked = Arc::new(parking_lot::Mutex::new(Acknowledged::default()));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    const STREAM: usize = 10_000;
    let writers: Vec<_> = (0..8)
        .map(|_| {
            let (client, acked, next) = (client.clone(), acked.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= STREAM {
                        return;
                    }
                    let email = format!("crash{i}@example.com");
                    let created = post(
                        client.clone(),
                        addr,
                        "/v1/users",
                        json!({"email": email, "name": "C", "password": PASSWORD}),
                    )
                    .await;
                    match created {
                        Some((StatusCode::CREATED, _)) => acked.lock().users.push(email.clone()),
                        _ => return, // the server is gone
                    }
                    if i % 10 == 0 {
                        match post(client.clone(), addr, "/v1/sessions", json!({"email": email, "password": PASSWORD}))
                            .await
                        {
                            Some((StatusCode::CREATED, body)) => {
                                let token = body["token"].as_str().unwrap().to_owned();
                                acked.lock().sessions.push((email, token));
                            }
                            _ => return,
                        }
                    }
                }
            })
        })
        .collect();
    // Kill it somewhere in the stream, with creates in flight.
    let kill_after = 1000 + (uuid::Uuid::new_v4().as_u128() % 1500) as usize;
    for _ in 0..3000 {
        if acked.lock().users.len() >= kill_after {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    api.kill();
    for writer in writers {
        writer.await.unwrap();
    }
    let acked = std::mem::take(&mut *acked.lock());
    assert!(acked.users.len() < STREAM, "the kill came during the stream");
    eprintln!("{what}: killed after {} acknowledged creates", acked.users.len());

    let restarted = super::gateway::ApiProcess::on_database(bin(), &db.url, "127.0.0.1:0", &env);
    let store = strata_store::connect(&StoreOptions::new(db.url.clone())).await.unwrap();
    for email in &acked.users {
        let email = strata_core::domain::Email::parse(email).unwrap();
        assert!(store.user_by_email(&email).await.unwrap().is_some(), "acknowledged {email:?} survived");
    }
    for (email, token) in &acked.sessions {
        let req = Request::get(format!("http://{}/v1/sessions/current", restarted.addr))
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(
            client.request(req).await.unwrap().status(),
            StatusCode::OK,
            "{email}'s acknowledged session survived"
        );
    }
    // Every user row, acknowledged or not, has its user.created event.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Batch>(4);
    let collect = async {
        let (mut users, mut created) = (Vec::new(), std::collections::HashSet::new());
        while let Some(batch) = rx.recv().await {
            match strata_core::backup::TABLES[batch.table].name {
                "users" => users.extend(batch.rows.into_iter().map(|r| r[0].clone())),
                "outbox" => created.extend(
                    batch.rows.into_iter().filter(|r| r[2] == Cell::Text("user.created".into())).map(|r| r[1].clone()),
                ),
                _ => {}
            }
        }
        (users, created)
    };
    let (exported, (users, created)) = tokio::join!(store.export_snapshot(tx), collect);
    exported.unwrap();
    assert!(users.len() >= acked.users.len());
    assert!(users.iter().all(|u| created.contains(u)), "a user without its user.created event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_creates_loses_no_acknowledged_write_on_sqlite() {
    killed_during_creates(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_creates_loses_no_acknowledged_write_on_postgres() {
    killed_during_creates(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_creates_loses_no_acknowledged_write_on_mysql() {
    killed_during_creates(Backend::Mysql).await;
}
