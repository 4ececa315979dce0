//! The setup phase: create `--users N` users, each with a session, through the API itself, in
//! parallel, before the measured run.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::bail;
use parking_lot::Mutex;

use crate::client::{Client, Response, Target, Want, write_request};
use crate::progress::{Progress, bar};
use crate::scenario::SeedUser;

async fn post_json(
    client: &mut Client,
    target: &Target,
    path: &str,
    body: &str,
    wanted: &[String],
    out: &mut Response,
) -> Result<(), String> {
    let mut request = Vec::with_capacity(256);
    let full = format!("{}{path}", target.base_path);
    write_request(&mut request, "POST", full.as_bytes(), &target.authority, &[], Some(body.as_bytes()));
    client
        .send(&request, Want { body: true, headers: wanted, head_request: false }, out)
        .await
        .map_err(|f| format!("POST {path}: {f:?}"))?;
    if out.status != 201 {
        let snippet: String = String::from_utf8_lossy(&out.body).chars().take(200).collect();
        return Err(format!("POST {path} answered {} {snippet}", out.status));
    }
    Ok(())
}

fn json_str(body: &[u8], pointer: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    match value.pointer(pointer)? {
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

async fn seed_one(client: &mut Client, target: &Target, run_id: &str, i: usize) -> Result<SeedUser, String> {
    let email = format!("seed-{run_id}-{i}@bench.strata.test");
    let password = format!("Seed-pass-{run_id}");
    let mut response = Response::default();
    let wanted = ["etag".to_string()];
    let body = serde_json::json!({ "email": email, "name": format!("Seed {i}"), "password": password }).to_string();
    post_json(client, target, "/v1/users", &body, &wanted, &mut response).await?;
    let id = json_str(&response.body, "/id").ok_or("POST /v1/users: no `id` in the response")?;
    let etag = response
        .headers
        .get("etag")
        .cloned()
        .or_else(|| json_str(&response.body, "/version").map(|v| format!("\"{v}\"")))
        .unwrap_or_default();
    let body = serde_json::json!({ "email": email, "password": password }).to_string();
    post_json(client, target, "/v1/sessions", &body, &[], &mut response).await?;
    let token = json_str(&response.body, "/token").ok_or("POST /v1/sessions: no `token` in the response")?;
    Ok(SeedUser { email, password, id, token, etag })
}

/// Creates `count` users with a session each, `concurrency` at a time, showing a progress bar.
pub async fn seed_users(
    target: &Target,
    run_id: &str,
    count: usize,
    concurrency: usize,
    timeout: Duration,
    progress: &mut Progress,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Vec<SeedUser>> {
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let results: Arc<Mutex<Vec<Option<SeedUser>>>> = Arc::new(Mutex::new(vec![None; count]));
    let first_error: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency.clamp(1, count.max(1)) {
        let (next, done, results, first_error) = (next.clone(), done.clone(), results.clone(), first_error.clone());
        let (target, run_id) = (target.clone(), run_id.to_string());
        tasks.spawn(async move {
            let mut client = Client::new(target.addr, timeout);
            loop {
                // Stop everyone at the first failure: the rest would most likely fail the same way.
                if first_error.lock().is_some() {
                    return;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return;
                }
                match seed_one(&mut client, &target, &run_id, i).await {
                    Ok(user) => results.lock()[i] = Some(user),
                    Err(e) => {
                        first_error.lock().get_or_insert(e);
                        return;
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let started = std::time::Instant::now();
    let mut last_printed = usize::MAX;
    loop {
        tokio::select! {
            joined = tasks.join_next() => if joined.is_none() { break },
            Ok(()) = stop.changed() => if *stop.borrow() {
                tasks.abort_all();
                progress.finish();
                bail!("interrupted while seeding users");
            },
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        let d = done.load(Ordering::Relaxed);
        // Plain (non-TTY) output prints every 10% only, to keep logs short.
        let step = if progress.is_tty() { 1 } else { (count / 10).max(1) };
        if last_printed == usize::MAX || d / step != last_printed / step {
            progress.update(&format!("seeding users {} {d}/{count}", bar(d, count, 30)));
            last_printed = d;
        }
    }
    if let Some(e) = first_error.lock().take() {
        progress.finish();
        bail!("seeding users through the API failed: {e}");
    }
    let users: Vec<SeedUser> = std::mem::take(&mut *results.lock()).into_iter().flatten().collect();
    progress.update(&format!("seeding users {} {}/{count}", bar(users.len(), count, 30), users.len()));
    progress.finish();
    progress.say(&format!("seeded {} users with sessions in {:.1}s", users.len(), started.elapsed().as_secs_f64()));
    Ok(users)
}

/// Users listed in a file (`--users-file`): `ID TOKEN [EMAIL PASSWORD]` per line; blank
/// lines and `#` comments are skipped.
pub fn read_users(path: &std::path::Path) -> anyhow::Result<Vec<SeedUser>> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut users = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (id, token) = match fields[..] {
            [id, token] | [id, token, _, _] => (id, token),
            _ => bail!("{}:{}: expected `ID TOKEN [EMAIL PASSWORD]`", path.display(), n + 1),
        };
        let (email, password) = (fields.get(2).unwrap_or(&""), fields.get(3).unwrap_or(&""));
        users.push(SeedUser {
            email: email.to_string(),
            password: password.to_string(),
            id: id.to_owned(),
            token: token.to_owned(),
            etag: String::new(),
        });
    }
    if users.is_empty() {
        bail!("{}: no users", path.display());
    }
    Ok(users)
}

#[cfg(test)]
mod tests {
    #[test]
    fn users_files_are_read_line_by_line() {
        let path = std::env::temp_dir().join(format!("strata-users-{}.txt", std::process::id()));
        std::fs::write(&path, "# id token\nu1 st_a\n\nu2 st_b e@x pw\n").unwrap();
        let users = super::read_users(&path).unwrap();
        assert_eq!(users.len(), 2);
        assert_eq!((users[1].id.as_str(), users[1].token.as_str(), users[1].email.as_str()), ("u2", "st_b", "e@x"));
        std::fs::write(&path, "u1 st_a extra\n").unwrap();
        assert!(super::read_users(&path).is_err());
        let _ = std::fs::remove_file(&path);
    }
}
