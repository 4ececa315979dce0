//! `strata shards status` and `strata shards move` as an operator runs them: the real
//! binary against the databases of a sharded server that keeps serving; a move killed
//! (SIGKILL) mid-way and run again; writes to the moving shard answered with a clean 503
//! and `Retry-After`, reads and other shards untouched.

use super::*;

use std::process::{Command, Stdio};

use strata_core::domain::logical_shard;
use strata_core::shards::MoveStep;

fn strata(app: &TestApp, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_strata"));
    cmd.args(args)
        .env("STRATA_DATABASE_URL", &app._db.url)
        .env("STRATA_DATABASE_SHARDS", app._shards.iter().map(|d| d.url.as_str()).collect::<Vec<_>>().join(","))
        .env("STRATA_DATABASE_QUERY_TIMEOUT_MS", "1000")
        .env("STRATA_LOG_LEVEL", "warn");
    cmd
}

fn run(mut cmd: Command) -> (bool, String, String) {
    let out = cmd.output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

async fn a_killed_move_is_resumed_while_the_api_serves(backend: Backend) {
    let Some(app) = spawn_sharded(backend, "shards cli").await else { return };
    let mut users = Vec::new();
    for i in 0..24 {
        let (user, token) = app.user_with_token(&format!("s{i}@example.com")).await;
        let id: uuid::Uuid = user["id"].as_str().unwrap().parse().unwrap();
        users.push((id, token));
    }
    let (ok, status, err) = run(strata(&app, &["shards", "status"]));
    assert!(ok, "{err}");
    assert!(status.starts_with("8 logical shards\n"), "{status}");
    assert!(status.contains("no moves in flight"), "{status}");
    let names: Vec<String> = app._shards.iter().map(|d| strata_store::redact_url(&d.url)).collect();
    let counts: Vec<u64> = names
        .iter()
        .map(|n| {
            let line = status.lines().find(|l| l.starts_with(n.as_str())).unwrap_or_else(|| panic!("{n} in {status}"));
            line.split_whitespace().last().unwrap().parse().unwrap()
        })
        .collect();
    assert_eq!(counts.iter().sum::<u64>(), 24, "{status}");

    // The logical shard with the most of our users, moved to the database it is not on.
    let moving = (0..8u16).max_by_key(|l| users.iter().filter(|(id, _)| logical_shard(*id, 8) == *l).count()).unwrap();
    let catalog = strata_store::connect(&strata_store::StoreOptions::new(app._db.url.clone())).await.unwrap();
    let from = catalog.shard_map().await.unwrap()[usize::from(moving)].shard.clone();
    let to_url = app._shards.iter().find(|d| strata_store::redact_url(&d.url) != from).unwrap().url.clone();
    let to = strata_store::redact_url(&to_url);
    let logical = moving.to_string();

    // Killed while it waits for writers to drain: the catalog keeps the step reached.
    let mut mover = strata(&app, &["shards", "move", &logical, "--to", &to_url]).stderr(Stdio::null()).spawn().unwrap();
    let frozen = async {
        loop {
            let placement = catalog.shard_map().await.unwrap()[usize::from(moving)].clone();
            if placement.step == Some(MoveStep::Copying) {
                return placement;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let placement = tokio::time::timeout(Duration::from_secs(30), frozen).await.expect("the move starts");
    assert_eq!(placement.other.as_deref(), Some(to.as_str()));
    mover.kill().unwrap();
    mover.wait().unwrap();

    // Meanwhile: a write to the moving shard is a clean 503, reads and other shards work.
    tokio::time::sleep(Duration::from_millis(1500)).await; // every instance has read the map
    let (in_moving, token) = users.iter().find(|(id, _)| logical_shard(*id, 8) == moving).unwrap();
    async fn patch(app: &TestApp, id: uuid::Uuid, token: &str, name: &str) -> Resp {
        let auth = format!("Bearer {token}");
        let etag = app.get(&format!("/v1/users/{id}"), Some(token)).await.header("etag").to_owned();
        let body = Bytes::from(json!({ "name": name }).to_string());
        let headers = [("authorization", auth.as_str()), ("content-type", "application/json"), ("if-match", &etag)];
        app.send(Method::PATCH, &format!("/v1/users/{id}"), &headers, Some(body)).await
    }
    let refused = patch(&app, *in_moving, token, "Paused").await;
    refused.assert_problem(503, "unavailable", None);
    assert!(!refused.header("retry-after").is_empty(), "a 503 says when to retry");
    assert_eq!(app.get("/v1/sessions/current", Some(token)).await.status, StatusCode::OK);
    let (elsewhere, other_token) = users.iter().find(|(id, _)| logical_shard(*id, 8) != moving).unwrap();
    assert_eq!(patch(&app, *elsewhere, other_token, "Unaffected").await.status, StatusCode::OK);
    let (ok, status, _) = run(strata(&app, &["shards", "status"]));
    assert!(ok && status.contains(&format!("logical shard {moving}: moving from {from} to {to}, copying")), "{status}");
    let metrics = app.get("/metrics", None).await;
    let text = String::from_utf8_lossy(&metrics.raw).into_owned();
    assert!(text.contains("\nstrata_db_shards_paused 1\n"), "{text}");
    assert!(text.contains("\nstrata_db_shard_writes_refused_total 1\n"), "{text}");
    assert!(text.contains("\nstrata_db_shard_map_age_seconds "), "{text}");

    // Run again: resumed to the end.
    let (ok, out, err) = run(strata(&app, &["shards", "move", &logical, "--to", &to_url]));
    assert!(ok, "{err}");
    assert!(out.contains(&format!("logical shard {moving} is on {to}")), "{out}");
    assert!(err.contains("copied") && err.contains("move done"), "{err}");
    let (ok, status, _) = run(strata(&app, &["shards", "status"]));
    assert!(ok && status.contains("no moves in flight"), "{status}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let metrics = app.get("/metrics", None).await;
    assert!(String::from_utf8_lossy(&metrics.raw).contains("\nstrata_db_shards_paused 0\n"));

    // Every user works as before: old tokens, new logins, writes on the moved shard.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (i, (id, token)) in users.iter().enumerate() {
        let me = app.get("/v1/sessions/current", Some(token)).await;
        assert_eq!(me.status, StatusCode::OK, "{}", me.body);
        assert_eq!(me.body["user"]["id"], id.to_string());
        assert_eq!(app.login(&format!("s{i}@example.com"), PASSWORD).await.status, StatusCode::CREATED);
    }
    assert_eq!(patch(&app, *in_moving, token, "Moved").await.status, StatusCode::OK);
    let list = app.get("/v1/users?limit=100", Some(ADMIN)).await;
    assert_eq!(list.body["items"].as_array().unwrap().len(), 24, "each user listed once: {}", list.body);
    app.stop().await;
}

per_backend!(a_killed_move_is_resumed_while_the_api_serves);
