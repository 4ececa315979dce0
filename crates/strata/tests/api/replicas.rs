//! Two Strata instances over one PostgreSQL primary and a lagging streaming replica (private
//! servers started here), their read-your-writes positions in the shared Redis: every
//! change made through one instance is read back through the other, never stale.

use super::*;
use strata_store::testing::PgServer;

/// An api instance on `primary` with `replicas`, positions in `redis`, no cache (every
/// session check reaches the store).
async fn spawn_on(what: &str, primary: &PgServer, replicas: &[&PgServer], redis: &str) -> TestApp {
    let mut config = test_config(&primary.url());
    config.database.replicas = replicas.iter().map(|r| r.url()).collect::<Vec<_>>().join(",");
    config.cache.url = "none://".into();
    config.throttle.url = redis.to_owned();
    let app = Application::build_with_clock(config, Arc::new(SystemClock)).await.expect(what);
    let addr = app.local_addr();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(app.run_until(async {
        let _ = rx.await;
    }));
    let client = Client::builder(TokioExecutor::new()).build_http();
    let clock = Arc::new(ManualClock::new(SystemClock.now()));
    // The database is the private server; the TestDb is only a placeholder to drop.
    let placeholder = fresh(Backend::Sqlite, what).await.unwrap();
    TestApp { addr, client, clock, shutdown: Some(tx), server: Some(server), _db: placeholder, _shards: Vec::new() }
}

fn metric_sum(text: &str, prefix: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_through_one_instance_are_read_back_through_another() {
    let what = "read-your-writes across instances";
    let Some(redis) = strata_cache::testing::shared_redis(what) else { return };
    let servers = tokio::task::spawn_blocking(|| {
        let primary = PgServer::primary()?;
        let replica = PgServer::replica_of(&primary, Duration::from_millis(300))?;
        Ok::<_, String>((primary, replica))
    })
    .await
    .unwrap();
    let (primary, replica) = match servers {
        Ok(s) => s,
        Err(why) => return strata_core::testing::unusable(what, "postgres", &why),
    };
    let a = spawn_on(what, &primary, &[&replica], &redis).await;
    let b = spawn_on(what, &primary, &[&replica], &redis).await;

    let (user, token) = a.user_with_token("ryw@example.com").await;
    let id = user["id"].as_str().unwrap().to_owned();
    let mut version = 1;
    for i in 0..200 {
        let etag = format!("\"{version}\"");
        let auth = format!("Bearer {token}");
        let body = Bytes::from(json!({"name": format!("Name {i}")}).to_string());
        let headers = [("authorization", auth.as_str()), ("content-type", "application/json"), ("if-match", &etag)];
        let r = a.send(Method::PATCH, &format!("/v1/users/{id}"), &headers, Some(body)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        version += 1;
        let seen = b.get("/v1/sessions/current", Some(&token)).await;
        assert_eq!(seen.status, StatusCode::OK, "{}", seen.body);
        assert_eq!(seen.body["user"]["name"], format!("Name {i}"), "change {i} read back stale");
        let got = b.get(&format!("/v1/users/{id}"), Some(&token)).await;
        assert_eq!(got.header("etag"), format!("\"{version}\""), "change {i}: get user stale");
    }
    // A logout through one instance ends the session on the other at once.
    let r =
        a.send(Method::DELETE, "/v1/sessions/current", &[("authorization", &format!("Bearer {token}"))], None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    b.get("/v1/sessions/current", Some(&token)).await.assert_problem(401, "token_revoked", Some("Authorization"));

    // The replica did answer what it had caught up with.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, other) = a.user_with_token("other@example.com").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    for _ in 0..20 {
        assert_eq!(b.get("/v1/sessions/current", Some(&other)).await.status, StatusCode::OK);
    }
    let metrics = String::from_utf8_lossy(&b.get("/metrics", None).await.raw).into_owned();
    let from_replica = metric_sum(&metrics, "strata_db_replica_reads_total{");
    let fallbacks = metric_sum(&metrics, "strata_db_reads_routed_to_primary_total{");
    eprintln!("instance b: {from_replica} reads from the replica, {fallbacks} from the primary");
    assert!(from_replica >= 20, "{metrics}");
    assert!(fallbacks >= 200, "fresh changes were read from the primary: {metrics}");
    assert!(metrics.contains("strata_db_replica_in_rotation{"), "{metrics}");
}
