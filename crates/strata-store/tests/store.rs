//! One conformance suite for the repository ports, run unchanged against every backend,
//! plus the EXPLAIN proof that hot-path queries are served by indexes.
//!
//! Each backend gets a fresh database per test (`strata_store::testing`). PostgreSQL and
//! MySQL tests are skipped with a visible line when their server is unreachable, unless
//! `STRATA_REQUIRE_BACKENDS` names them (CI), in which case they fail.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use strata_core::domain::GroupId;
use strata_core::domain::{
    DisplayName, Email, IdempotencyKey, IdempotencyRecord, OutboxEvent, PasswordHash, Role, Session, SessionId,
    SessionToken, Timestamp, User, UserId, UserStatus, Version,
};
use strata_core::error::RepoError;
use strata_core::groups::{
    ExternalId, Group, GroupListQuery, GroupName, MemberQuery, MembershipChange, MembershipDelta,
};
use strata_core::ports::{SessionRevocation, Store, UserListQuery};
use strata_store::testing::{T0, TestDb, fresh, sample_event, sample_user};
use strata_store::{Backend, StoreOptions, connect};

async fn store_for(backend: Backend, what: &str) -> Option<(TestDb, Arc<dyn Store>)> {
    let db = fresh(backend, what).await?;
    let store = connect(&StoreOptions::new(db.url.clone())).await.expect("connect and migrate");
    Some((db, store))
}

fn user(email: &str, name: &str) -> User {
    sample_user(email, name)
}

fn event(kind: &'static str, aggregate: UserId) -> OutboxEvent {
    sample_event(kind, aggregate)
}

fn all_partitions() -> Vec<u16> {
    (0..strata_core::domain::OUTBOX_PARTITIONS).collect()
}

fn session_for(user: &User) -> (SessionToken, Session) {
    // Placed in its user's logical shard of 256, and so of every count dividing 256: a
    // sharded store refuses a session its hash would not find.
    let shards = strata_core::shards::MAX_LOGICAL_SHARDS;
    let token = SessionToken::generate_in(strata_core::domain::logical_shard(user.id.as_uuid(), shards), shards);
    let session = Session {
        id: SessionId::generate(),
        user_id: user.id,
        token_hash: token.hash(),
        created_at: T0,
        expires_at: T0.plus(Duration::from_secs(3600)),
        revoked_at: None,
    };
    (token, session)
}

async fn create(store: &dyn Store, u: &User) {
    store.create_user(u, None, &event("user.created", u.id)).await.expect("create user");
}

async fn create_and_read_back(store: Arc<dyn Store>) {
    // Metacharacters and any Unicode are data, stored verbatim.
    let u = user("Ann@Example.com", "Ann O'Brien\"; DROP TABLE users;-- 🦀 日本語 \\ % _");
    create(&*store, &u).await;
    assert_eq!(store.user_by_id(u.id).await.unwrap(), Some(u.clone()));
    assert_eq!(store.user_by_email(&u.email).await.unwrap(), Some(u.clone()));
    assert_eq!(store.user_by_id(UserId::generate()).await.unwrap(), None);
    assert_eq!(store.user_by_email(&Email::parse("nobody@example.com").unwrap()).await.unwrap(), None);
    store.ping().await.unwrap();
}

async fn duplicate_email_is_rejected_atomically(store: Arc<dyn Store>) {
    let first = user("dup@example.com", "First");
    create(&*store, &first).await;
    let second = user("dup@example.com", "Second");
    let key = IdempotencyKey::parse("dup-key").unwrap();
    let record = IdempotencyRecord { key: key.clone(), fingerprint: [7; 32], user_id: second.id, created_at: T0 };
    let err = store.create_user(&second, Some(&record), &event("user.created", second.id)).await.unwrap_err();
    assert_eq!(err, RepoError::EmailTaken);
    // Nothing of the failed transaction survives.
    assert_eq!(store.user_by_id(second.id).await.unwrap(), None);
    assert_eq!(store.idempotency_record(&key).await.unwrap(), None);
}

/// The transactional outbox: every committed change leaves exactly its event, in commit
/// order, with the payload given; a change that fails (conflict, stale version) leaves none.
async fn every_committed_change_leaves_its_event(store: Arc<dyn Store>) {
    let described =
        |kind: &'static str, id: UserId, payload: &str| OutboxEvent { payload: payload.to_owned(), ..event(kind, id) };
    let u = user("outbox@example.com", "Outbox");
    let created = described("user.created", u.id, r#"{"n":1}"#);
    store.create_user(&u, None, &created).await.unwrap();
    // Failures write nothing.
    let clash = user("outbox@example.com", "Clash");
    assert!(store.create_user(&clash, None, &event("user.created", clash.id)).await.is_err());
    let stale = User { version: Version(2), ..u.clone() };
    assert!(
        store.update_user(&stale, Version(7), SessionRevocation::None, &event("user.updated", u.id)).await.is_err()
    );

    let updated = described("user.updated", u.id, r#"{"n":2}"#);
    let next = User { version: Version(2), ..u.clone() };
    store.update_user(&next, Version(1), SessionRevocation::None, &updated).await.unwrap();
    let (_, session) = session_for(&u);
    let session_created = OutboxEvent {
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        ..described("session.created", u.id, "{}")
    };
    store.create_session(&session, &session_created).await.unwrap();
    let revoked = described("session.revoked", u.id, "{}");
    assert!(store.revoke_session(session.id, T0, &revoked).await.unwrap());
    // Revoking again changes nothing, so it records nothing.
    assert!(!store.revoke_session(session.id, T0, &event("session.revoked", u.id)).await.unwrap());
    let deleted = described("user.deleted", u.id, "{}");
    store.delete_user(u.id, Some(Version(2)), &deleted).await.unwrap();

    let expected = [&created, &updated, &session_created, &revoked, &deleted];
    let stored = store.pending_events(&all_partitions(), 100).await.unwrap();
    let summary = |e: &strata_core::domain::StoredEvent| {
        (e.id, e.aggregate_id, e.event_type.clone(), e.payload.clone(), e.sequence, e.traceparent.clone())
    };
    assert_eq!(
        stored.iter().map(summary).collect::<Vec<_>>(),
        expected
            .iter()
            .zip(1..)
            .map(|(e, seq)| (
                e.id,
                e.aggregate_id,
                e.event_type.to_owned(),
                e.payload.clone(),
                seq,
                e.traceparent.clone()
            ))
            .collect::<Vec<_>>()
    );
    assert!(stored.iter().all(|e| e.created_at == T0));
    assert_eq!(store.pending_events(&all_partitions(), 2).await.unwrap().len(), 2);
    // Only the partitions asked for.
    let mine = strata_core::domain::outbox_partition(u.id.as_uuid());
    let others: Vec<u16> = all_partitions().into_iter().filter(|p| *p != mine).collect();
    assert!(store.pending_events(&others, 100).await.unwrap().is_empty());
    assert_eq!(store.pending_events(&[mine], 100).await.unwrap().len(), 5);
}

/// Concurrent writers to one aggregate: the sequence numbers are 1..n without gaps, and
/// their order is the order the changes committed in (each update's version is its
/// predecessor's + 1, so version order is commit order).
async fn sequences_follow_commit_order(store: Arc<dyn Store>) {
    let u = user("seq@example.com", "Seq");
    create(&*store, &u).await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (writer, base) = (store.clone(), u.clone());
        tasks.push(tokio::spawn(async move {
            let store = writer;
            let mut done = 0;
            while done < 5 {
                let current = store.user_by_id(base.id).await.unwrap().unwrap();
                let next = User { version: current.version.next(), ..current.clone() };
                let e = OutboxEvent {
                    payload: format!(r#"{{"version":{}}}"#, next.version.0),
                    ..event("user.updated", base.id)
                };
                match store.update_user(&next, current.version, SessionRevocation::None, &e).await {
                    Ok(()) => done += 1,
                    Err(RepoError::VersionConflict | RepoError::Unavailable(_)) => {}
                    Err(other) => panic!("{other}"),
                }
            }
        }));
        // Events with no other change interleave with the updates.
        store.record_event(&event("login.failed", u.id)).await.unwrap();
    }
    for t in tasks {
        t.await.unwrap();
    }
    let stored = store.pending_events(&all_partitions(), 1000).await.unwrap();
    assert_eq!(stored.len(), 1 + 40 + 8);
    assert_eq!(stored.iter().map(|e| e.sequence).collect::<Vec<_>>(), (1..=49).collect::<Vec<_>>());
    let versions: Vec<u64> = stored
        .iter()
        .filter(|e| e.event_type == "user.updated")
        .map(|e| serde_json::from_str::<serde_json::Value>(&e.payload).unwrap()["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, (2..=41).collect::<Vec<_>>(), "sequence order is commit order");
}

/// The classic relay bug: polling `id > last_seen` loses a row whose id is older than one
/// already published (ids are made before commit). Unpublished rows are found by flag.
async fn rows_committed_out_of_id_order_are_not_lost(store: Arc<dyn Store>) {
    let (a, b) = (user("a@example.com", "A"), user("b@example.com", "B"));
    let early = event("login.failed", a.id); // the smaller id…
    let late = event("login.failed", b.id);
    store.record_event(&late).await.unwrap(); // …commits second
    let first = store.pending_events(&all_partitions(), 100).await.unwrap();
    assert_eq!(first.iter().map(|e| e.id).collect::<Vec<_>>(), vec![late.id]);
    store.mark_published(&[late.id], T0).await.unwrap();
    store.record_event(&early).await.unwrap();
    let second = store.pending_events(&all_partitions(), 100).await.unwrap();
    assert_eq!(second.iter().map(|e| e.id).collect::<Vec<_>>(), vec![early.id]);
    assert_eq!(store.outbox_backlog().await.unwrap().count, 1);
}

async fn published_rows_leave_the_backlog_and_are_pruned(store: Arc<dyn Store>) {
    let u = user("prune@example.com", "Prune");
    create(&*store, &u).await;
    for i in 0..4 {
        let e = OutboxEvent { created_at: T0.plus(Duration::from_secs(i)), ..event("login.failed", u.id) };
        store.record_event(&e).await.unwrap();
    }
    let backlog = store.outbox_backlog().await.unwrap();
    assert_eq!((backlog.count, backlog.oldest), (5, Some(T0)));
    let pending: Vec<uuid::Uuid> =
        store.pending_events(&all_partitions(), 100).await.unwrap().iter().map(|e| e.id).collect();
    store.mark_published(&pending[..3], T0).await.unwrap();
    store.mark_published(&pending[3..], T0.plus(Duration::from_secs(60))).await.unwrap();
    assert_eq!(store.outbox_backlog().await.unwrap(), strata_core::domain::Backlog { count: 0, oldest: None });
    assert!(store.pending_events(&all_partitions(), 100).await.unwrap().is_empty());
    assert_eq!(store.prune_published(T0.plus(Duration::from_secs(1)), 2).await.unwrap(), 2);
    assert_eq!(store.prune_published(T0.plus(Duration::from_secs(1)), 100).await.unwrap(), 1);
    assert_eq!(store.prune_published(T0.plus(Duration::from_secs(1)), 100).await.unwrap(), 0);
    // Pruning never touches the sequence: the next event still follows the last.
    store.record_event(&event("login.failed", u.id)).await.unwrap();
    assert_eq!(store.pending_events(&all_partitions(), 10).await.unwrap()[0].sequence, 6);
}

async fn relay_leases_are_exclusive_until_they_expire(store: Arc<dyn Store>) {
    use strata_core::domain::partition_lease;
    let leases = store.relay_leases().await.unwrap();
    let mut partitions: Vec<u16> = leases.iter().filter_map(|l| l.partition()).collect();
    partitions.sort();
    assert_eq!(partitions, all_partitions());
    assert!(leases.iter().all(|l| l.owner.is_empty()));
    let p3 = partition_lease(3);
    let later = T0.plus(Duration::from_secs(10));
    let much_later = later.plus(Duration::from_secs(20));
    assert!(store.claim_lease(&p3, "relay-a", T0, later).await.unwrap());
    assert!(!store.claim_lease(&p3, "relay-b", T0, later).await.unwrap(), "held by a");
    assert!(store.claim_lease(&p3, "relay-a", T0, later).await.unwrap(), "a renews, even to the same expiry");
    let after_expiry = later.plus(Duration::from_secs(1));
    assert!(store.claim_lease(&p3, "relay-b", after_expiry, much_later).await.unwrap(), "expired: b takes it");
    assert!(!store.claim_lease(&p3, "relay-a", later, later).await.unwrap());
    store.release_lease(&p3, "relay-a").await.unwrap(); // not a's: no effect
    let holder =
        |leases: Vec<strata_core::domain::RelayLease>| leases.into_iter().find(|l| l.name == p3).unwrap().owner;
    assert_eq!(holder(store.relay_leases().await.unwrap()), "relay-b");
    store.release_lease(&p3, "relay-b").await.unwrap();
    assert!(store.claim_lease(&p3, "relay-a", T0, later).await.unwrap(), "released: free at once");

    // Heartbeats: one row per relay, renewed in place, forgotten once long dead.
    store.relay_heartbeat("relay-a", later, T0).await.unwrap();
    store.relay_heartbeat("relay-b", later, T0).await.unwrap();
    store.relay_heartbeat("relay-a", much_later, T0).await.unwrap();
    let members = |leases: Vec<strata_core::domain::RelayLease>| {
        let mut m: Vec<(String, Timestamp)> =
            leases.iter().filter_map(|l| l.member().map(|m| (m.to_owned(), l.expires_at))).collect();
        m.sort();
        m
    };
    assert_eq!(
        members(store.relay_leases().await.unwrap()),
        vec![("relay-a".to_owned(), much_later), ("relay-b".to_owned(), later)]
    );
    store.relay_heartbeat("relay-a", much_later, after_expiry).await.unwrap();
    assert_eq!(members(store.relay_leases().await.unwrap()), vec![("relay-a".to_owned(), much_later)]);
}

async fn the_audit_log_records_each_event_once(store: Arc<dyn Store>) {
    use strata_core::domain::{AuditEntry, AuditQuery};
    let (alice, bob) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let entry = |subject, kind: &str, i: i64| AuditEntry {
        id: uuid::Uuid::now_v7(),
        event_type: kind.to_owned(),
        subject,
        actor: r#"{"type":"user"}"#.into(),
        time: Timestamp(T0.0 + i * 1_000_000),
        data: format!(r#"{{"i":{i},"text":"ü \" '"}}"#),
    };
    let entries: Vec<AuditEntry> = (0..10)
        .map(|i| entry(if i % 2 == 0 { alice } else { bob }, if i < 5 { "user.updated" } else { "session.created" }, i))
        .collect();
    assert_eq!(store.append_audit(&entries[..6]).await.unwrap(), 6);
    // A redelivered batch overlapping the first: only the new ones count.
    assert_eq!(store.append_audit(&entries[4..]).await.unwrap(), 4);
    let q = |f: &dyn Fn(&mut AuditQuery)| {
        let mut q = AuditQuery { limit: 100, ..AuditQuery::default() };
        f(&mut q);
        q
    };
    let ids = |v: Vec<AuditEntry>| v.into_iter().map(|e| e.id).collect::<Vec<_>>();
    let all = store.audit_entries(&q(&|_| {})).await.unwrap();
    assert_eq!(all, entries, "everything, in id order, unchanged");
    let of_alice = ids(store.audit_entries(&q(&|q| q.subject = Some(alice))).await.unwrap());
    assert_eq!(of_alice, entries.iter().filter(|e| e.subject == alice).map(|e| e.id).collect::<Vec<_>>());
    let sessions = ids(store.audit_entries(&q(&|q| q.event_type = Some("session.created".into()))).await.unwrap());
    assert_eq!(sessions, entries[5..].iter().map(|e| e.id).collect::<Vec<_>>());
    let both = ids(store
        .audit_entries(&q(&|q| {
            q.subject = Some(bob);
            q.event_type = Some("user.updated".into());
        }))
        .await
        .unwrap());
    assert_eq!(both, vec![entries[1].id, entries[3].id]);
    let since = ids(store.audit_entries(&q(&|q| q.since = Some(Timestamp(T0.0 + 7_000_000)))).await.unwrap());
    assert_eq!(since, entries[7..].iter().map(|e| e.id).collect::<Vec<_>>());
    // Cursor pagination visits everyone once.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store.audit_entries(&AuditQuery { after, limit: 3, ..AuditQuery::default() }).await.unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().map(|e| e.id);
        seen.extend(page.into_iter().map(|e| e.id));
    }
    assert_eq!(seen, entries.iter().map(|e| e.id).collect::<Vec<_>>());
    // Retention goes by the ids' time: everything made before now.
    let now = Timestamp(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64);
    assert_eq!(store.prune_audit(now.plus(Duration::from_secs(120)), 4).await.unwrap(), 4);
    assert_eq!(store.audit_entries(&q(&|_| {})).await.unwrap().len(), 6);
    assert_eq!(store.prune_audit(now.minus(Duration::from_secs(3600)), 100).await.unwrap(), 0);
}

fn endpoint(url: &str) -> strata_core::webhooks::WebhookEndpoint {
    use strata_core::webhooks::{WebhookEndpoint, WebhookSecret, WebhookUrl};
    WebhookEndpoint {
        id: uuid::Uuid::now_v7(),
        url: WebhookUrl::parse(url).unwrap(),
        events: vec!["user.created".into(), "session.created".into()],
        description: "CRM sync — ü \" '".into(),
        enabled: true,
        disabled_reason: None,
        secrets: vec![
            WebhookSecret::generate(),
            WebhookSecret { expires_at: Some(T0.plus(Duration::from_secs(60))), ..WebhookSecret::generate() },
        ],
        rate_limit: 25,
        failing_since: None,
        created_at: T0,
        updated_at: T0,
    }
}

fn delivery(endpoint_id: uuid::Uuid, event_id: uuid::Uuid, due: Timestamp) -> strata_core::webhooks::WebhookDelivery {
    use strata_core::events::Event;
    use strata_core::webhooks::WebhookDelivery;
    let event = Event {
        id: event_id,
        source: "/strata".into(),
        event_type: "user.created".into(),
        time: T0,
        subject: uuid::Uuid::now_v7().to_string(),
        sequence: 1,
        traceparent: None,
        data: r#"{"email":"a@example.com","name":"ü"}"#.into(),
    };
    WebhookDelivery::new(endpoint_id, event, due)
}

async fn webhook_endpoints_round_trip(store: Arc<dyn Store>) {
    let a = endpoint("https://hooks.example.com/strata?tenant=1");
    let b = endpoint("http://[2001:db8::1]:8080/");
    store.create_webhook_endpoint(&a).await.unwrap();
    store.create_webhook_endpoint(&b).await.unwrap();
    assert_eq!(store.webhook_endpoint(a.id).await.unwrap(), Some(a.clone()));
    assert_eq!(store.webhook_endpoints().await.unwrap(), vec![a.clone(), b.clone()]);
    assert_eq!(store.webhook_endpoint(uuid::Uuid::now_v7()).await.unwrap(), None);

    // An update with an event writes both, in one transaction.
    let mut changed = a.clone();
    changed.enabled = false;
    changed.disabled_reason = Some("answered 410 Gone".into());
    changed.failing_since = Some(T0);
    changed.secrets.truncate(1);
    let disabled = OutboxEvent { aggregate_id: a.id, ..event("webhook.endpoint.disabled", UserId::from_uuid(a.id)) };
    store.update_webhook_endpoint(&changed, Some(&disabled)).await.unwrap();
    assert_eq!(store.webhook_endpoint(a.id).await.unwrap(), Some(changed.clone()));
    let pending = store.pending_events(&all_partitions(), 100).await.unwrap();
    assert_eq!(pending.iter().map(|e| e.id).collect::<Vec<_>>(), vec![disabled.id]);
    store.update_webhook_endpoint(&b, None).await.unwrap();

    let gone = endpoint("https://gone.example.com/");
    assert!(matches!(store.update_webhook_endpoint(&gone, None).await, Err(RepoError::NotFound)));
    assert!(store.delete_webhook_endpoint(a.id).await.unwrap());
    assert!(!store.delete_webhook_endpoint(a.id).await.unwrap());
    assert_eq!(store.webhook_endpoints().await.unwrap(), vec![b]);
}

async fn webhook_deliveries_are_queued_once_and_claimed_once(store: Arc<dyn Store>) {
    use strata_core::webhooks::{DeliveryQuery, DeliveryStatus, WebhookAttempt};
    let ep = endpoint("https://hooks.example.com/");
    store.create_webhook_endpoint(&ep).await.unwrap();
    let t = |s: u64| T0.plus(Duration::from_secs(s));
    let events: Vec<uuid::Uuid> = (0..4).map(|_| uuid::Uuid::now_v7()).collect();
    let batch: Vec<_> = events.iter().enumerate().map(|(i, e)| delivery(ep.id, *e, t(i as u64))).collect();
    assert_eq!(store.enqueue_deliveries(&batch).await.unwrap(), 4);
    // A redelivered event (new delivery id, same event) and an endpoint that is gone add nothing.
    let again = [delivery(ep.id, events[0], t(0)), delivery(uuid::Uuid::now_v7(), events[1], t(0))];
    assert_eq!(store.enqueue_deliveries(&again).await.unwrap(), 0);
    assert_eq!(store.enqueue_deliveries(&[]).await.unwrap(), 0);

    // Due at t(1): the first two, oldest first, moved to the lease.
    let claimed = store.claim_due_deliveries(t(1), t(100), 10).await.unwrap();
    let mut ids: Vec<_> = claimed.iter().map(|d| d.id).collect();
    ids.sort();
    assert_eq!(ids, vec![batch[0].id, batch[1].id]);
    assert!(claimed.iter().all(|d| d.next_attempt_at == t(100)));
    assert_eq!(
        claimed.iter().find(|d| d.id == batch[0].id).unwrap().event,
        batch[0].event,
        "the event survives storage"
    );
    // Leased: nobody else gets them; two claimers racing split the rest without overlap.
    let (x, y) =
        tokio::join!(store.claim_due_deliveries(t(5), t(100), 10), store.claim_due_deliveries(t(5), t(100), 10));
    let (x, y) = (x.unwrap(), y.unwrap());
    let mut raced: Vec<_> = x.iter().chain(&y).map(|d| d.id).collect();
    raced.sort();
    assert_eq!(raced, vec![batch[2].id, batch[3].id], "each claimed once");
    assert!(store.claim_due_deliveries(t(99), t(200), 10).await.unwrap().is_empty());
    // A lease that runs out (a dispatcher died) makes the delivery due again.
    assert_eq!(store.claim_due_deliveries(t(100), t(200), 1).await.unwrap().len(), 1);

    // Outcomes and their log.
    let mut d = claimed.iter().find(|d| d.id == batch[0].id).unwrap().clone();
    for (n, status) in [(1, Some(503)), (2, None), (3, Some(204))] {
        d.attempts = n;
        d.last_status = status;
        d.last_error = status.is_none().then(|| "connection closed before the response".to_owned());
        d.status = if status == Some(204) { DeliveryStatus::Delivered } else { DeliveryStatus::Pending };
        d.next_attempt_at = t(300 + u64::from(n));
        d.updated_at = t(n.into());
        let attempt = WebhookAttempt {
            delivery_id: d.id,
            attempt: n,
            at: t(n.into()),
            status,
            error: d.last_error.clone(),
            duration_ms: 12 * n,
        };
        store.record_delivery(&d, Some(&attempt)).await.unwrap();
    }
    assert_eq!(store.webhook_delivery(ep.id, d.id).await.unwrap(), Some(d.clone()));
    assert_eq!(store.webhook_delivery(uuid::Uuid::now_v7(), d.id).await.unwrap(), None, "scoped to its endpoint");
    let log = store.webhook_attempts(d.id).await.unwrap();
    assert_eq!(
        log.iter().map(|a| (a.attempt, a.status)).collect::<Vec<_>>(),
        vec![(1, Some(503)), (2, None), (3, Some(204))]
    );
    assert_eq!(log[1].error.as_deref(), Some("connection closed before the response"));

    let mut failed = claimed.iter().find(|d| d.id == batch[1].id).unwrap().clone();
    failed.status = DeliveryStatus::Failed;
    failed.attempts = 7;
    store.record_delivery(&failed, None).await.unwrap();

    // Listing: cursor pages and the status filter.
    let q = |status, after, limit| DeliveryQuery { endpoint_id: ep.id, status, after, limit };
    let all: Vec<_> = store.webhook_deliveries(&q(None, None, 100)).await.unwrap().into_iter().map(|d| d.id).collect();
    assert_eq!(all, batch.iter().map(|d| d.id).collect::<Vec<_>>());
    let page2 = store.webhook_deliveries(&q(None, Some(batch[1].id), 1)).await.unwrap();
    assert_eq!(page2.iter().map(|d| d.id).collect::<Vec<_>>(), vec![batch[2].id]);
    let only_failed = store.webhook_deliveries(&q(Some(DeliveryStatus::Failed), None, 100)).await.unwrap();
    assert_eq!(only_failed.iter().map(|d| d.id).collect::<Vec<_>>(), vec![batch[1].id]);

    // Replay: not while pending; a delivered or failed one starts over, its log kept.
    assert!(!store.replay_delivery(ep.id, batch[2].id, t(400)).await.unwrap());
    assert!(!store.replay_delivery(uuid::Uuid::now_v7(), d.id, t(400)).await.unwrap());
    assert!(store.replay_delivery(ep.id, d.id, t(400)).await.unwrap());
    let replayed = store.webhook_delivery(ep.id, d.id).await.unwrap().unwrap();
    assert_eq!((replayed.status, replayed.attempts, replayed.next_attempt_at), (DeliveryStatus::Pending, 0, t(400)));
    assert_eq!(store.webhook_attempts(d.id).await.unwrap().len(), 3);
    assert_eq!(store.replay_failed_deliveries(ep.id, t(2), t(400)).await.unwrap(), 0, "created before `since`");
    assert_eq!(store.replay_failed_deliveries(ep.id, t(1), t(400)).await.unwrap(), 1);
    assert_eq!(store.replay_failed_deliveries(ep.id, t(1), t(400)).await.unwrap(), 0, "pending now");

    // Deleting the endpoint takes its deliveries and attempts along; a late outcome is a no-op.
    assert!(store.delete_webhook_endpoint(ep.id).await.unwrap());
    assert_eq!(store.webhook_delivery(ep.id, d.id).await.unwrap(), None);
    assert!(store.webhook_attempts(d.id).await.unwrap().is_empty());
    let late =
        WebhookAttempt { delivery_id: d.id, attempt: 1, at: t(500), status: Some(200), error: None, duration_ms: 1 };
    store.record_delivery(&d, Some(&late)).await.unwrap();
    assert!(store.claim_due_deliveries(t(10_000), t(20_000), 10).await.unwrap().is_empty());
}

async fn idempotency_records(store: Arc<dyn Store>) {
    let u = user("idem@example.com", "Idem");
    let key = IdempotencyKey::parse("key-1").unwrap();
    let record = IdempotencyRecord { key: key.clone(), fingerprint: [3; 32], user_id: u.id, created_at: T0 };
    store.create_user(&u, Some(&record), &event("user.created", u.id)).await.unwrap();
    assert_eq!(store.idempotency_record(&key).await.unwrap(), Some(record.clone()));

    let other = user("other@example.com", "Other");
    let reuse = IdempotencyRecord { user_id: other.id, ..record };
    let err = store.create_user(&other, Some(&reuse), &event("user.created", other.id)).await.unwrap_err();
    assert_eq!(err, RepoError::IdempotencyKeyTaken);
    assert_eq!(store.user_by_id(other.id).await.unwrap(), None);

    // Purging removes records created strictly before the cut-off, and only those.
    let later = IdempotencyRecord {
        key: IdempotencyKey::parse("key-2").unwrap(),
        created_at: T0.plus(std::time::Duration::from_secs(10)),
        ..reuse
    };
    store.create_user(&other, Some(&later), &event("user.created", other.id)).await.unwrap();
    assert_eq!(store.purge_idempotency_keys(T0).await.unwrap(), 0);
    assert_eq!(store.purge_idempotency_keys(T0.plus(std::time::Duration::from_secs(1))).await.unwrap(), 1);
    assert_eq!(store.idempotency_record(&key).await.unwrap(), None);
    assert_eq!(store.idempotency_record(&later.key).await.unwrap(), Some(later));
    assert!(store.user_by_id(u.id).await.unwrap().is_some(), "the user stays");
}

async fn optimistic_updates(store: Arc<dyn Store>) {
    let u = user("upd@example.com", "Before");
    create(&*store, &u).await;
    let taken = user("taken@example.com", "Taken");
    create(&*store, &taken).await;

    let mut next = u.clone();
    next.name = DisplayName::parse("After").unwrap();
    next.version = Version(2);
    next.updated_at = T0.plus(Duration::from_secs(1));
    store.update_user(&next, Version(1), SessionRevocation::None, &event("user.updated", u.id)).await.unwrap();
    assert_eq!(store.user_by_id(u.id).await.unwrap(), Some(next.clone()));

    // Stale version.
    let mut stale = next.clone();
    stale.name = DisplayName::parse("Lost update").unwrap();
    stale.version = Version(2);
    let err = store.update_user(&stale, Version(1), SessionRevocation::None, &event("user.updated", u.id)).await;
    assert_eq!(err.unwrap_err(), RepoError::VersionConflict);

    // Email belonging to someone else: refused, row unchanged.
    let mut clash = next.clone();
    clash.email = taken.email.clone();
    clash.version = Version(3);
    let err = store.update_user(&clash, Version(2), SessionRevocation::None, &event("user.updated", u.id)).await;
    assert_eq!(err.unwrap_err(), RepoError::EmailTaken);
    assert_eq!(store.user_by_id(u.id).await.unwrap(), Some(next.clone()));

    // Missing row.
    let ghost = user("ghost@example.com", "Ghost");
    let err = store.update_user(&ghost, Version(1), SessionRevocation::None, &event("user.updated", ghost.id)).await;
    assert_eq!(err.unwrap_err(), RepoError::NotFound);
}

async fn concurrent_updates_one_wins(store: Arc<dyn Store>) {
    let u = user("race@example.com", "Race");
    create(&*store, &u).await;
    let attempts = (0..8).map(|i| {
        let store = store.clone();
        let mut next = u.clone();
        next.name = DisplayName::parse(&format!("Writer {i}")).unwrap();
        next.version = Version(2);
        tokio::spawn(async move {
            store.update_user(&next, Version(1), SessionRevocation::None, &event("user.updated", next.id)).await
        })
    });
    let mut wins = 0;
    for handle in attempts.collect::<Vec<_>>() {
        match handle.await.unwrap() {
            Ok(()) => wins += 1,
            Err(e) => assert_eq!(e, RepoError::VersionConflict),
        }
    }
    assert_eq!(wins, 1);
    assert_eq!(store.user_by_id(u.id).await.unwrap().unwrap().version, Version(2));
}

async fn sessions_lifecycle(store: Arc<dyn Store>) {
    let u = user("sess@example.com", "Sess");
    create(&*store, &u).await;
    let (token, s1) = session_for(&u);
    let (_, s2) = session_for(&u);
    let (_, s3) = session_for(&u);
    for s in [&s1, &s2, &s3] {
        store.create_session(s, &event("session.created", u.id)).await.unwrap();
    }
    let (found, owner) = store.session_with_user(&token.hash()).await.unwrap().unwrap();
    assert_eq!(found, s1);
    assert_eq!(owner, u);
    assert_eq!(store.session_with_user(&SessionToken::generate().hash()).await.unwrap(), None);
    assert_eq!(store.sessions_of_user(u.id).await.unwrap(), vec![s1.clone(), s2.clone(), s3.clone()]);

    let at = T0.plus(Duration::from_secs(5));
    assert!(store.revoke_session(s1.id, at, &event("session.revoked", u.id)).await.unwrap());
    assert!(!store.revoke_session(s1.id, at, &event("session.revoked", u.id)).await.unwrap());
    assert!(!store.revoke_session(SessionId::generate(), at, &event("session.revoked", u.id)).await.unwrap());
    let (revoked, _) = store.session_with_user(&token.hash()).await.unwrap().unwrap();
    assert_eq!(revoked.revoked_at, Some(at));

    // A password change keeps the session that made it and revokes the others.
    let mut next = u.clone();
    next.version = Version(2);
    let later = T0.plus(Duration::from_secs(9));
    let revoke = SessionRevocation::AllExcept { keep: s2.id, at: later };
    store.update_user(&next, Version(1), revoke, &event("user.updated", u.id)).await.unwrap();
    let by_id: Vec<_> = store.sessions_of_user(u.id).await.unwrap().into_iter().map(|s| (s.id, s.revoked_at)).collect();
    assert_eq!(by_id, vec![(s1.id, Some(at)), (s2.id, None), (s3.id, Some(later))]);

    let mut again = next.clone();
    again.version = Version(3);
    let all = SessionRevocation::All { at: later };
    store.update_user(&again, Version(2), all, &event("user.updated", u.id)).await.unwrap();
    assert!(store.sessions_of_user(u.id).await.unwrap().iter().all(|s| s.revoked_at.is_some()));
}

async fn delete_removes_user_and_sessions(store: Arc<dyn Store>) {
    let u = user("del@example.com", "Del");
    create(&*store, &u).await;
    let (token, s) = session_for(&u);
    store.create_session(&s, &event("session.created", u.id)).await.unwrap();

    let err = store.delete_user(u.id, Some(Version(9)), &event("user.deleted", u.id)).await.unwrap_err();
    assert_eq!(err, RepoError::VersionConflict);
    store.delete_user(u.id, Some(Version(1)), &event("user.deleted", u.id)).await.unwrap();
    assert_eq!(store.user_by_id(u.id).await.unwrap(), None);
    assert_eq!(store.session_with_user(&token.hash()).await.unwrap(), None);
    assert!(store.sessions_of_user(u.id).await.unwrap().is_empty());
    let err = store.delete_user(u.id, None, &event("user.deleted", u.id)).await.unwrap_err();
    assert_eq!(err, RepoError::NotFound);
    // The email is free again.
    create(&*store, &user("del@example.com", "Del again")).await;
}

async fn keyset_pagination_visits_everyone_once(store: Arc<dyn Store>) {
    let mut ids = Vec::new();
    for i in 0..23 {
        let u = user(&format!("page{i:02}@example.com"), &format!("Page {i}"));
        create(&*store, &u).await;
        ids.push(u.id);
    }
    ids.sort();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page =
            store.list_users(&UserListQuery { after, limit: 5, email: None, ..Default::default() }).await.unwrap();
        assert!(page.len() <= 5);
        if page.is_empty() {
            break;
        }
        after = page.last().map(|u| u.id);
        seen.extend(page.into_iter().map(|u| u.id));
    }
    assert_eq!(seen, ids);

    let email = Email::parse("page07@example.com").unwrap();
    let hit = store
        .list_users(&UserListQuery { after: None, limit: 5, email: Some(email), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(hit.len(), 1);
    assert_eq!(hit[0].email.as_str(), "page07@example.com");
}

/// The admin console's list: an email prefix, a status and a role, each alone and together,
/// paged by id with every match seen once.
async fn filtered_pages_visit_every_match_once(store: Arc<dyn Store>) {
    let mut expected = Vec::new();
    for i in 0..14 {
        let mut u = user(&format!("{}{i:02}@example.com", if i % 2 == 0 { "filt" } else { "other" }), "Filtered");
        if i % 3 == 0 {
            u.status = UserStatus::Disabled;
        }
        if i % 4 == 0 {
            u.role = Role::Admin;
        }
        create(&*store, &u).await;
        expected.push(u);
    }
    // An email that sorts right after the prefix's range must stay out of it.
    create(&*store, &user("filu@example.com", "Next")).await;
    expected.sort_by_key(|u| u.id);
    let walk = |query: UserListQuery| {
        let store = store.clone();
        async move {
            let mut seen = Vec::new();
            let mut after = None;
            loop {
                let page = store.list_users(&UserListQuery { after, limit: 2, ..query.clone() }).await.unwrap();
                assert!(page.len() <= 2);
                let Some(last) = page.last() else { break };
                after = Some(last.id);
                seen.extend(page.into_iter().map(|u| u.id));
            }
            seen
        }
    };
    let matching = |f: &dyn Fn(&User) -> bool| expected.iter().filter(|u| f(u)).map(|u| u.id).collect::<Vec<_>>();
    let prefix = || Some("filt".to_owned());
    let q = UserListQuery { email_prefix: prefix(), ..Default::default() };
    assert_eq!(walk(q).await, matching(&|u| u.email.as_str().starts_with("filt")));
    let q = UserListQuery { status: Some(UserStatus::Disabled), ..Default::default() };
    let disabled = walk(q).await;
    assert_eq!(disabled, matching(&|u| u.status == UserStatus::Disabled));
    let q = UserListQuery { role: Some(Role::Admin), ..Default::default() };
    assert_eq!(walk(q).await, matching(&|u| u.role == Role::Admin));
    let q = UserListQuery {
        email_prefix: prefix(),
        status: Some(UserStatus::Active),
        role: Some(Role::User),
        ..Default::default()
    };
    let all_three = walk(q).await;
    assert_eq!(
        all_three,
        matching(&|u| u.email.as_str().starts_with("filt") && u.status == UserStatus::Active && u.role == Role::User)
    );
    assert!(!all_three.is_empty() && !disabled.is_empty());
    // A prefix that is a whole address, and one that matches nothing.
    let q = UserListQuery { email_prefix: Some("filt02@example.com".into()), ..Default::default() };
    assert_eq!(walk(q).await.len(), 1);
    let q = UserListQuery { email_prefix: Some("zzz".into()), ..Default::default() };
    assert!(walk(q).await.is_empty());
}

async fn hot_paths_use_indexes(store: Arc<dyn Store>) {
    // Some rows, so that planners have something to plan over.
    for i in 0..20 {
        create(&*store, &user(&format!("plan{i}@example.com"), "Plan")).await;
    }
    let plans = store.explain_hot_paths().await.unwrap();
    let names: Vec<_> = plans.iter().map(|p| p.name).collect();
    for required in [
        "user_by_id",
        "user_by_email",
        "session_with_user",
        "sessions_of_user",
        "list_users_page",
        "list_users_by_email",
        "idempotency_record",
        "account_token",
        "group_by_id",
        "list_groups_page",
        "list_groups_by_name",
        "list_groups_by_external_id",
        "group_members",
        "groups_of_user",
        "add_group_member",
        "remove_group_member",
        "update_group",
        "users_by_external_id",
        "users_by_employee_number",
        "provisioning_token_by_hash",
        "search_users_email_prefix",
        "search_users_email_or_email",
        "search_users_external_id",
        "search_users_employee_number",
        "search_users_updated_after",
        "search_users_prefix_and_updated",
        "list_users_email_prefix",
        "list_users_prefix_status_role",
        "list_users_status",
    ] {
        assert!(names.contains(&required), "{} did not explain {required}", store.backend());
    }
    for plan in &plans {
        assert!(
            plan.uses_index,
            "{} {}: not served by an index:\n{}\n{}",
            store.backend(),
            plan.name,
            plan.sql,
            plan.plan
        );
    }
    // The plans name the indexes we created for them (in each engine's own words).
    let plan_of = |name: &str| &plans.iter().find(|p| p.name == name).unwrap().plan;
    assert!(plan_of("user_by_email").contains("users_email"), "{}", plan_of("user_by_email"));
    assert!(plan_of("session_with_user").contains("sessions_token_hash"), "{}", plan_of("session_with_user"));
    assert!(plan_of("sessions_of_user").contains("sessions_user_id"), "{}", plan_of("sessions_of_user"));
    assert!(plan_of("account_token").contains("account_tokens_hash"), "{}", plan_of("account_token"));
    assert!(plan_of("groups_of_user").contains("group_members_user"), "{}", plan_of("groups_of_user"));
    assert!(plan_of("list_groups_by_name").contains("user_groups_display_name"), "{}", plan_of("list_groups_by_name"));
}

// --- groups (GroupRepository) ---

fn group(name: &str) -> Group {
    Group {
        id: GroupId::generate(),
        display_name: GroupName::parse(name).unwrap(),
        external_id: None,
        version: Version::FIRST,
        created_at: T0,
        updated_at: T0,
    }
}

fn group_event(kind: &'static str, g: &Group) -> OutboxEvent {
    OutboxEvent {
        id: uuid::Uuid::now_v7(),
        aggregate_id: g.id.as_uuid(),
        event_type: kind,
        payload: "{}".into(),
        created_at: T0,
        traceparent: None,
    }
}

async fn members_of(store: &dyn Store, g: GroupId) -> Vec<UserId> {
    let q = MemberQuery { group: g, after: None, limit: 1000 };
    store.group_members(&q).await.unwrap().into_iter().map(|m| m.user_id).collect()
}

async fn sorted_users(store: &dyn Store, n: usize, prefix: &str) -> Vec<User> {
    let mut users = Vec::new();
    for i in 0..n {
        let u = user(&format!("{prefix}{i}@example.com"), &format!("Member {i}"));
        create(store, &u).await;
        users.push(u);
    }
    users.sort_by_key(|u| u.id);
    users
}

async fn groups_round_trip(store: Arc<dyn Store>) {
    let users = sorted_users(&*store, 3, "g").await;
    let mut g = group("Ops \"team\" 🦀 ' % _");
    g.external_id = Some(ExternalId::parse("entra-42").unwrap());
    // An id naming no user is skipped, not an error at this level.
    let ghost = UserId::generate();
    store.create_group(&g, &[users[0].id, users[2].id, ghost], &group_event("group.created", &g)).await.unwrap();
    assert_eq!(store.group_by_id(g.id).await.unwrap(), Some(g.clone()));
    assert_eq!(store.group_by_id(GroupId::generate()).await.unwrap(), None);
    assert_eq!(members_of(&*store, g.id).await, vec![users[0].id, users[2].id]);
    let listed = store.group_members(&MemberQuery { group: g.id, after: None, limit: 10 }).await.unwrap();
    assert_eq!(listed[0].email, users[0].email);
    assert_eq!(listed[0].name, users[0].name);
    assert_eq!(store.groups_of_user(users[0].id).await.unwrap(), vec![g.clone()]);
    assert!(store.groups_of_user(users[1].id).await.unwrap().is_empty());

    let other = group("Ops \"team\" 🦀 ' % _");
    store.create_group(&other, &[], &group_event("group.created", &other)).await.unwrap();
    let by_name = GroupListQuery { limit: 10, display_name: Some(g.display_name.clone()), ..GroupListQuery::default() };
    assert_eq!(store.list_groups(&by_name).await.unwrap().len(), 2);
    let by_both = GroupListQuery { external_id: g.external_id.clone(), ..by_name.clone() };
    assert_eq!(store.list_groups(&by_both).await.unwrap(), vec![g.clone()]);
    let by_external = GroupListQuery { limit: 10, external_id: g.external_id.clone(), ..GroupListQuery::default() };
    assert_eq!(store.list_groups(&by_external).await.unwrap(), vec![g.clone()]);
    let page = store.list_groups(&GroupListQuery { limit: 1, ..GroupListQuery::default() }).await.unwrap();
    assert_eq!(page, vec![g.clone()]);
    let next = GroupListQuery { after: Some(g.id), limit: 5, ..GroupListQuery::default() };
    assert_eq!(store.list_groups(&next).await.unwrap(), vec![other.clone()]);
    let ids = vec![users[0].id, users[1].id, ghost];
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(store.existing_user_ids(&sorted).await.unwrap(), vec![users[0].id, users[1].id]);
}

async fn membership_changes_touch_only_their_rows(store: Arc<dyn Store>) {
    let users = sorted_users(&*store, 4, "m").await;
    let g = group("Readers");
    store.create_group(&g, &[users[0].id, users[1].id], &group_event("group.created", &g)).await.unwrap();
    let mut next = g.clone();
    next.version = g.version.next();
    let change = MembershipChange { replace: false, add: vec![users[1].id, users[2].id], remove: vec![users[0].id] };
    let delta = store.update_group(&next, g.version, &change, &group_event("group.updated", &next)).await.unwrap();
    assert_eq!(delta, MembershipDelta { added: 1, removed: 1 });
    assert_eq!(members_of(&*store, g.id).await, vec![users[1].id, users[2].id]);
    assert_eq!(store.group_by_id(g.id).await.unwrap().unwrap().version, next.version);

    // A stale version changes nothing.
    let mut stale = next.clone();
    stale.version = next.version.next();
    let remove_all = MembershipChange { replace: false, add: vec![], remove: vec![users[1].id, users[2].id] };
    let err = store.update_group(&stale, g.version, &remove_all, &group_event("group.updated", &stale)).await;
    assert_eq!(err, Err(RepoError::VersionConflict));
    assert_eq!(members_of(&*store, g.id).await, vec![users[1].id, users[2].id]);

    // Replace: exactly the new set.
    let replace = MembershipChange { replace: true, add: vec![users[3].id, users[1].id], remove: vec![] };
    store.update_group(&stale, next.version, &replace, &group_event("group.updated", &stale)).await.unwrap();
    let mut expected = vec![users[1].id, users[3].id];
    expected.sort();
    assert_eq!(members_of(&*store, g.id).await, expected);

    // A deleted user leaves every group; a deleted group leaves no rows behind.
    store.delete_user(users[3].id, None, &event("user.deleted", users[3].id)).await.unwrap();
    assert_eq!(members_of(&*store, g.id).await, vec![users[1].id]);
    assert_eq!(
        store.delete_group(g.id, Some(g.version), &group_event("group.deleted", &g)).await,
        Err(RepoError::VersionConflict)
    );
    store.delete_group(g.id, Some(stale.version), &group_event("group.deleted", &g)).await.unwrap();
    assert_eq!(store.group_by_id(g.id).await.unwrap(), None);
    assert!(store.groups_of_user(users[1].id).await.unwrap().is_empty());
    assert!(members_of(&*store, g.id).await.is_empty());
    assert_eq!(store.delete_group(g.id, None, &group_event("group.deleted", &g)).await, Err(RepoError::NotFound));
    let gone = store.update_group(&stale, stale.version, &MembershipChange::default(), &group_event("x", &g)).await;
    assert_eq!(gone, Err(RepoError::NotFound));
    // Each committed change left its event; the failed ones none.
    let events = store.pending_events(&all_partitions(), 1000).await.unwrap();
    let of_group: Vec<_> =
        events.iter().filter(|e| e.aggregate_id == g.id.as_uuid()).map(|e| e.event_type.as_str()).collect();
    assert_eq!(of_group, ["group.created", "group.updated", "group.updated", "group.deleted"]);
}

async fn external_ids_round_trip(store: Arc<dyn Store>) {
    let users = sorted_users(&*store, 3, "x").await;
    let ext = ExternalId::parse("entra-object-🦀").unwrap();
    assert_eq!(store.external_id_of(users[0].id).await.unwrap(), None);
    store.set_external_id(users[0].id, Some(&ext)).await.unwrap();
    store.set_external_id(users[1].id, Some(&ext)).await.unwrap();
    assert_eq!(store.external_id_of(users[0].id).await.unwrap(), Some(ext.clone()));
    assert_eq!(store.users_by_external_id(&ext).await.unwrap(), vec![users[0].id, users[1].id]);
    let other = ExternalId::parse("other").unwrap();
    store.set_external_id(users[1].id, Some(&other)).await.unwrap();
    assert_eq!(store.users_by_external_id(&ext).await.unwrap(), vec![users[0].id]);
    store.set_external_id(users[0].id, None).await.unwrap();
    assert!(store.users_by_external_id(&ext).await.unwrap().is_empty());
    assert_eq!(store.set_external_id(UserId::generate(), Some(&ext)).await, Err(RepoError::NotFound));
    // A deleted user's external id goes with them.
    store.delete_user(users[1].id, None, &event("user.deleted", users[1].id)).await.unwrap();
    assert!(store.users_by_external_id(&other).await.unwrap().is_empty());
}

async fn enterprise_attributes_round_trip(store: Arc<dyn Store>) {
    use strata_core::groups::{EnterpriseText, EnterpriseUser};
    let text = |v: &str| Some(EnterpriseText::parse("x", v).unwrap());
    let users = sorted_users(&*store, 3, "ent").await;
    assert_eq!(store.enterprise_of(users[0].id).await.unwrap(), None);
    let full = EnterpriseUser {
        employee_number: text("701984"),
        cost_center: text("4130"),
        organization: text("Universal Studios 🦀"),
        division: text("Theme Park"),
        department: text("Tour Operations"),
        manager: text("26118915-6090-4610-87e4-49d8ca9f808d"),
    };
    store.set_enterprise(users[0].id, &full).await.unwrap();
    assert_eq!(store.enterprise_of(users[0].id).await.unwrap(), Some(full.clone()));
    let partial = EnterpriseUser { employee_number: text("701984"), ..EnterpriseUser::default() };
    store.set_enterprise(users[1].id, &partial).await.unwrap();
    assert_eq!(store.enterprise_of(users[1].id).await.unwrap(), Some(partial.clone()));
    let number = EnterpriseText::parse("x", "701984").unwrap();
    assert_eq!(store.users_by_employee_number(&number).await.unwrap(), vec![users[0].id, users[1].id]);
    // Replacing drops what is not given; an empty value deletes the row.
    let moved = EnterpriseUser { department: text("Finance"), ..EnterpriseUser::default() };
    store.set_enterprise(users[0].id, &moved).await.unwrap();
    assert_eq!(store.enterprise_of(users[0].id).await.unwrap(), Some(moved));
    assert_eq!(store.users_by_employee_number(&number).await.unwrap(), vec![users[1].id]);
    store.set_enterprise(users[0].id, &EnterpriseUser::default()).await.unwrap();
    assert_eq!(store.enterprise_of(users[0].id).await.unwrap(), None);
    assert_eq!(store.set_enterprise(UserId::generate(), &full).await, Err(RepoError::NotFound));
    assert_eq!(store.set_enterprise(UserId::generate(), &EnterpriseUser::default()).await, Err(RepoError::NotFound));
    // A deleted user's attributes go with them.
    store.delete_user(users[1].id, None, &event("user.deleted", users[1].id)).await.unwrap();
    assert!(store.users_by_employee_number(&number).await.unwrap().is_empty());
    assert_eq!(store.enterprise_of(users[1].id).await.unwrap(), None);
}

/// Searches (what SCIM filters compile to): prefixes as ranges — metacharacters and
/// Unicode are data, and the range ends where the prefix does —, `or`, `and`, external ids,
/// employee numbers, `updated_at`, order, offset and count.
async fn users_searched_by_indexed_predicates(store: Arc<dyn Store>) {
    use strata_core::groups::{EnterpriseText, EnterpriseUser};
    use strata_core::ports::{Comparison, UserCondition as C, UserOrder, UserPredicate as P, UserSearch};
    let mut made = Vec::new();
    for (i, email) in [
        "ab@example.com",
        "ab_c@example.com",
        "ab%d@example.com",
        "abc@example.com",
        "ac@example.com",
        "aé@example.com",
        "b@example.com",
    ]
    .iter()
    .enumerate()
    {
        let mut u = user(email, &format!("Search {i}"));
        u.created_at = Timestamp(T0.0 + i as i64);
        u.updated_at = Timestamp(T0.0 + 10 * i as i64);
        create(&*store, &u).await;
        made.push(u);
    }
    let emails = |found: Vec<User>| -> Vec<String> { found.into_iter().map(|u| u.email.as_str().to_owned()).collect() };
    let search = |p: Option<P>| UserSearch { predicate: p, limit: 100, ..UserSearch::default() };
    let by_email = UserSearch { order: UserOrder::Email, ..search(Some(P::Is(C::EmailPrefix("ab".into())))) };
    assert_eq!(
        emails(store.search_users(&by_email).await.unwrap()),
        ["ab%d@example.com", "ab@example.com", "ab_c@example.com", "abc@example.com"]
    );
    assert_eq!(store.count_users(by_email.predicate.as_ref()).await.unwrap(), 4);
    // `%` and `_` are not wildcards; a prefix of one Unicode character is a range too.
    assert_eq!(
        emails(store.search_users(&search(Some(P::Is(C::EmailPrefix("ab%".into()))))).await.unwrap()),
        ["ab%d@example.com"]
    );
    assert_eq!(
        emails(store.search_users(&search(Some(P::Is(C::EmailPrefix("aé".into()))))).await.unwrap()),
        ["aé@example.com"]
    );
    assert!(store.search_users(&search(Some(P::Is(C::EmailPrefix("zz".into()))))).await.unwrap().is_empty());
    // Descending, offset and limit; ties are broken by id.
    let page = UserSearch { descending: true, offset: 1, limit: 2, ..by_email.clone() };
    assert_eq!(emails(store.search_users(&page).await.unwrap()), ["ab_c@example.com", "ab@example.com"]);
    let newest = UserSearch { order: UserOrder::CreatedAt, descending: true, limit: 1, ..search(None) };
    assert_eq!(emails(store.search_users(&newest).await.unwrap()), ["b@example.com"]);
    assert_eq!(store.count_users(None).await.unwrap(), 7);
    // or, and, updated_at.
    let either = P::Any(vec![P::Is(C::Email(made[0].email.clone())), P::Is(C::Email(made[6].email.clone()))]);
    assert_eq!(emails(store.search_users(&search(Some(either))).await.unwrap()), ["ab@example.com", "b@example.com"]);
    let recent = P::Is(C::UpdatedAt(Comparison::GreaterOrEqual, Timestamp(T0.0 + 40)));
    let both = P::All(vec![P::Is(C::EmailPrefix("a".into())), recent.clone()]);
    assert_eq!(emails(store.search_users(&search(Some(both))).await.unwrap()), ["ac@example.com", "aé@example.com"]);
    assert_eq!(store.count_users(Some(&recent)).await.unwrap(), 3);
    let before = P::Is(C::UpdatedAt(Comparison::Less, Timestamp(T0.0 + 10)));
    assert_eq!(emails(store.search_users(&search(Some(before))).await.unwrap()), ["ab@example.com"]);
    assert!(store.search_users(&search(Some(P::Any(vec![])))).await.unwrap().is_empty());
    assert_eq!(store.count_users(Some(&P::Any(vec![]))).await.unwrap(), 0);
    // Through the tables beside users, and by id.
    let ext = ExternalId::parse("entra-7").unwrap();
    store.set_external_id(made[3].id, Some(&ext)).await.unwrap();
    assert_eq!(
        emails(store.search_users(&search(Some(P::Is(C::ExternalId(ext))))).await.unwrap()),
        ["abc@example.com"]
    );
    let number = EnterpriseText::parse("x", "42").unwrap();
    store
        .set_enterprise(made[4].id, &EnterpriseUser { employee_number: Some(number.clone()), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(
        emails(store.search_users(&search(Some(P::Is(C::EmployeeNumber(number))))).await.unwrap()),
        ["ac@example.com"]
    );
    assert_eq!(emails(store.search_users(&search(Some(P::Is(C::Id(made[5].id))))).await.unwrap()), ["aé@example.com"]);
}

fn provisioning_token(name: &str) -> strata_core::provisioning::ProvisioningToken {
    strata_core::provisioning::ProvisioningToken {
        id: uuid::Uuid::now_v7(),
        name: name.into(),
        token_hash: SessionToken::generate().hash(),
        created_at: T0,
        revoked_at: None,
    }
}

async fn provisioning_tokens_round_trip(store: Arc<dyn Store>) {
    let a = provisioning_token("Entra ID 🦀");
    let b = provisioning_token("Okta");
    store.create_provisioning_token(&a).await.unwrap();
    store.create_provisioning_token(&b).await.unwrap();
    assert_eq!(store.provisioning_tokens().await.unwrap(), vec![a.clone(), b.clone()]);
    assert_eq!(store.provisioning_token_by_hash(&a.token_hash).await.unwrap(), Some(a.clone()));
    assert_eq!(store.provisioning_token_by_hash(&SessionToken::generate().hash()).await.unwrap(), None);
    let at = T0.plus(Duration::from_secs(9));
    assert!(store.revoke_provisioning_token(a.id, at).await.unwrap());
    assert!(!store.revoke_provisioning_token(a.id, at).await.unwrap(), "already revoked");
    assert!(!store.revoke_provisioning_token(uuid::Uuid::now_v7(), at).await.unwrap());
    assert_eq!(store.provisioning_token_by_hash(&a.token_hash).await.unwrap().unwrap().revoked_at, Some(at));
}

async fn large_groups_page_through_members(store: Arc<dyn Store>) {
    let users = sorted_users(&*store, 30, "l").await;
    let g = group("Everyone");
    let ids: Vec<UserId> = users.iter().map(|u| u.id).collect();
    store.create_group(&g, &ids, &group_event("group.created", &g)).await.unwrap();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store.group_members(&MemberQuery { group: g.id, after, limit: 7 }).await.unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().map(|m| m.user_id);
        seen.extend(page.into_iter().map(|m| m.user_id));
    }
    assert_eq!(seen, ids);
}

// --- backup and restore (BackupRepository) ---

type Tables = Vec<Vec<strata_core::backup::Row>>;

async fn snapshot(store: &dyn Store) -> Tables {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<strata_core::backup::Batch>(4);
    let collect = async {
        let mut tables = vec![Vec::new(); strata_core::backup::TABLES.len()];
        let mut last = 0;
        while let Some(batch) = rx.recv().await {
            assert!(batch.table >= last, "tables arrive in TABLES order");
            last = batch.table;
            tables[batch.table].extend(batch.rows);
        }
        tables
    };
    let (exported, tables) = tokio::join!(store.export_snapshot(tx), collect);
    exported.unwrap();
    tables
}

/// Feeds `tables` to an import in batches of 7 rows, then commits if told to.
async fn load(
    store: &dyn Store,
    tables: &Tables,
    existing: strata_core::backup::OnExisting,
    commit: bool,
) -> Result<u64, RepoError> {
    use strata_core::backup::{Batch, Load};
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let feed = async move {
        for (table, rows) in tables.iter().enumerate() {
            for chunk in rows.chunks(7) {
                if tx.send(Load::Rows(Batch { table, rows: chunk.to_vec() })).await.is_err() {
                    return; // the import stopped
                }
            }
        }
        if commit {
            let _ = tx.send(Load::Commit).await;
        }
    };
    tokio::join!(store.import_snapshot(rx, existing), feed).0
}

fn reset_token_and_mail(
    u: &User,
    at: Timestamp,
) -> (strata_core::lifecycle::AccountToken, strata_core::lifecycle::QueuedMail) {
    use strata_core::lifecycle::{AccountToken, MailStatus, OneTimeToken, QueuedMail, TokenPurpose, binding_of};
    let token = AccountToken {
        id: uuid::Uuid::now_v7(),
        user_id: u.id,
        purpose: TokenPurpose::PasswordReset,
        token_hash: OneTimeToken::generate().hash(),
        binding: binding_of(u.password_hash.as_str()),
        created_at: at,
        expires_at: at.plus(Duration::from_secs(1800)),
        used_at: None,
        new_email: None,
    };
    let mail = QueuedMail {
        id: uuid::Uuid::now_v7(),
        template: "password_reset".into(),
        recipient: u.email.clone(),
        params: r#"{"token":"ot_x","name":"Ann 🦀"}"#.into(),
        status: MailStatus::Pending,
        attempts: 0,
        next_attempt_at: at,
        last_error: None,
        created_at: at,
        updated_at: at,
    };
    (token, mail)
}

async fn account_tokens_are_superseded_redeemed_once_and_cascade(store: Arc<dyn Store>) {
    const RESET: strata_core::lifecycle::TokenPurpose = strata_core::lifecycle::TokenPurpose::PasswordReset;
    let u = user("tokens@example.com", "Tokens");
    create(&*store, &u).await;
    let (first, first_mail) = reset_token_and_mail(&u, T0);
    store
        .issue_account_token(&first, std::slice::from_ref(&first_mail), &event("password_reset.requested", u.id))
        .await
        .unwrap();
    assert_eq!(store.account_token(&first.token_hash).await.unwrap(), Some(first.clone()));
    // A newer request supersedes the older token, and its event is in the outbox with it.
    let (second, second_mail) = reset_token_and_mail(&u, T0.plus(Duration::from_secs(1)));
    store
        .issue_account_token(&second, std::slice::from_ref(&second_mail), &event("password_reset.requested", u.id))
        .await
        .unwrap();
    assert_eq!(store.account_token(&first.token_hash).await.unwrap(), None);
    let pending = store.pending_events(&all_partitions(), 100).await.unwrap();
    assert_eq!(pending.iter().filter(|e| e.event_type == "password_reset.requested").count(), 2);

    // Redeeming sets the password, revokes every session, and works once.
    let (_, s) = session_for(&u);
    store.create_session(&s, &event("session.created", u.id)).await.unwrap();
    let mut next = u.clone();
    next.password_hash = PasswordHash::from_trusted("$argon2id$v=19$m=64,t=1,p=1$bmV3c2FsdA$bmV3".into());
    next.version = u.version.next();
    // The flag round-trips like every other column.
    next.verified = true;
    let at = T0.plus(Duration::from_secs(2));
    let revoke_all = SessionRevocation::All { at };
    store
        .redeem_account_token(second.id, RESET, &next, u.version, revoke_all, at, &event("user.updated", u.id))
        .await
        .unwrap();
    assert_eq!(store.user_by_id(u.id).await.unwrap(), Some(next.clone()));
    assert_eq!(store.sessions_of_user(u.id).await.unwrap()[0].revoked_at, Some(at));
    assert_eq!(store.account_token(&second.token_hash).await.unwrap().unwrap().used_at, Some(at));
    let again = store
        .redeem_account_token(second.id, RESET, &next, next.version, revoke_all, at, &event("user.updated", u.id))
        .await;
    assert_eq!(again, Err(RepoError::NotFound));
    assert_eq!(store.user_by_id(u.id).await.unwrap(), Some(next.clone()), "a refused redeem writes nothing");

    // A stale version refuses the redeem and leaves the token unused.
    let (third, third_mail) = reset_token_and_mail(&next, at);
    store
        .issue_account_token(&third, std::slice::from_ref(&third_mail), &event("password_reset.requested", u.id))
        .await
        .unwrap();
    let stale = store
        .redeem_account_token(third.id, RESET, &next, u.version, revoke_all, at, &event("user.updated", u.id))
        .await;
    assert_eq!(stale, Err(RepoError::VersionConflict));
    assert_eq!(store.account_token(&third.token_hash).await.unwrap().unwrap().used_at, None);

    // Tokens go with their user.
    store.delete_user(u.id, None, &event("user.deleted", u.id)).await.unwrap();
    assert_eq!(store.account_token(&third.token_hash).await.unwrap(), None);
}

async fn email_change_tokens_carry_the_address_and_both_mails(store: Arc<dyn Store>) {
    use strata_core::lifecycle::{MailStatus, TokenPurpose};
    let u = user("old-address@example.com", "Mover");
    create(&*store, &u).await;
    let taken = user("taken@example.com", "Holder");
    create(&*store, &taken).await;
    let (mut token, confirm) = reset_token_and_mail(&u, T0);
    token.purpose = TokenPurpose::EmailChange;
    token.new_email = Some(Email::parse("new-address@example.com").unwrap());
    let mut notice = confirm.clone();
    notice.id = uuid::Uuid::now_v7();
    notice.template = "email_change_notice".into();
    let mails = [confirm.clone(), notice.clone()];
    store.issue_account_token(&token, &mails, &event("email_change.requested", u.id)).await.unwrap();
    assert_eq!(store.account_token(&token.token_hash).await.unwrap(), Some(token.clone()));
    let claimed = store.claim_due_mails(T0, T0.plus(Duration::from_secs(60)), 10).await.unwrap();
    let mut ids: Vec<_> = claimed.iter().map(|m| m.id).collect();
    ids.sort();
    assert_eq!(ids, vec![confirm.id, notice.id], "both mails are queued with the token");
    assert!(claimed.iter().all(|m| m.status == MailStatus::Pending));

    // Confirming to an address someone took meanwhile is refused by the unique index and
    // leaves the token unused, in one transaction.
    let at = T0.plus(Duration::from_secs(5));
    let mut clash = u.clone();
    clash.email = taken.email.clone();
    clash.version = u.version.next();
    let refused = store
        .redeem_account_token(
            token.id,
            TokenPurpose::EmailChange,
            &clash,
            u.version,
            SessionRevocation::None,
            at,
            &event("user.updated", u.id),
        )
        .await;
    assert_eq!(refused, Err(RepoError::EmailTaken));
    assert_eq!(store.account_token(&token.token_hash).await.unwrap().unwrap().used_at, None);
    assert_eq!(store.user_by_id(u.id).await.unwrap(), Some(u.clone()));

    let mut moved = u.clone();
    moved.email = token.new_email.clone().unwrap();
    moved.verified = true;
    moved.version = u.version.next();
    store
        .redeem_account_token(
            token.id,
            TokenPurpose::EmailChange,
            &moved,
            u.version,
            SessionRevocation::None,
            at,
            &event("user.updated", u.id),
        )
        .await
        .unwrap();
    assert_eq!(store.user_by_email(&moved.email).await.unwrap(), Some(moved.clone()));
    assert_eq!(store.user_by_email(&u.email).await.unwrap(), None);
}

async fn queued_mails_are_claimed_once_and_recorded(store: Arc<dyn Store>) {
    use strata_core::lifecycle::MailStatus;
    let mut mails = Vec::new();
    for i in 0..3 {
        let u = user(&format!("mail{i}@example.com"), "Mail");
        create(&*store, &u).await;
        let (t, m) = reset_token_and_mail(&u, T0.plus(Duration::from_secs(i)));
        store
            .issue_account_token(&t, std::slice::from_ref(&m), &event("password_reset.requested", u.id))
            .await
            .unwrap();
        mails.push(m);
    }
    let lease = T0.plus(Duration::from_secs(120));
    // Not due yet: nothing.
    assert!(store.claim_due_mails(T0.minus(Duration::from_secs(1)), lease, 10).await.unwrap().is_empty());
    // Two concurrent claims never take the same mail.
    let (a, b) = tokio::join!(
        store.claim_due_mails(T0.plus(Duration::from_secs(10)), lease, 2),
        store.claim_due_mails(T0.plus(Duration::from_secs(10)), lease, 2)
    );
    let mut claimed: Vec<_> = a.unwrap().into_iter().chain(b.unwrap()).collect();
    claimed.sort_by_key(|m| m.id);
    assert_eq!(claimed.len(), 3);
    for (got, queued) in claimed.iter().zip(&mails) {
        assert_eq!(got.id, queued.id);
        assert_eq!(got.params, queued.params);
        assert_eq!(got.recipient, queued.recipient);
        assert_eq!(got.next_attempt_at, lease);
    }
    // Leased: not claimable again until the lease ends.
    assert!(store.claim_due_mails(T0.plus(Duration::from_secs(60)), lease, 10).await.unwrap().is_empty());

    let mut sent = claimed[0].clone();
    sent.status = MailStatus::Sent;
    sent.attempts = 1;
    sent.params = "{}".into();
    sent.updated_at = T0.plus(Duration::from_secs(20));
    store.record_mail(&sent).await.unwrap();
    let mut retry = claimed[1].clone();
    retry.attempts = 1;
    retry.last_error = Some("451 try later".into());
    retry.next_attempt_at = T0.plus(Duration::from_secs(30));
    store.record_mail(&retry).await.unwrap();
    let due = store.claim_due_mails(T0.plus(Duration::from_secs(30)), lease.plus(Duration::from_secs(60)), 10).await;
    let due = due.unwrap();
    assert_eq!(due.len(), 1, "only the retry is due; the sent one is done, the third still leased");
    assert_eq!((due[0].id, due[0].attempts, due[0].last_error.as_deref()), (retry.id, 1, Some("451 try later")));

    // Pruning takes expired tokens and finished mails, never pending ones.
    let pruned = store.prune_lifecycle(T0.plus(Duration::from_secs(3600)), 100).await.unwrap();
    assert_eq!(pruned, 3 + 1, "three expired tokens and the sent mail");
    assert_eq!(store.prune_lifecycle(T0.plus(Duration::from_secs(3600)), 100).await.unwrap(), 0);
}

/// A little of everything a backup holds.
async fn populate(store: &dyn Store) {
    use strata_core::domain::AuditEntry;
    use strata_core::webhooks::WebhookAttempt;
    for i in 0..20 {
        let u = user(&format!("b{i}@example.com"), &format!("Bee {i} 🦀 \"quoted\" \\ é"));
        create(store, &u).await;
        let (_, s) = session_for(&u);
        store.create_session(&s, &event("session.created", u.id)).await.unwrap();
        if i % 3 == 0 {
            store.revoke_session(s.id, T0.plus(Duration::from_secs(5)), &event("session.revoked", u.id)).await.unwrap();
        }
    }
    let pending = store.pending_events(&all_partitions(), 10).await.unwrap();
    store.mark_published(&pending.iter().map(|e| e.id).collect::<Vec<_>>(), T0).await.unwrap();
    let audit = AuditEntry {
        id: uuid::Uuid::now_v7(),
        event_type: "user.created".into(),
        subject: uuid::Uuid::now_v7(),
        actor: r#"{"type":"system"}"#.into(),
        time: T0,
        data: r#"{"email":"b0@example.com"}"#.into(),
    };
    store.append_audit(&[audit]).await.unwrap();
    let ep = endpoint("https://hooks.example.com/backup");
    store.create_webhook_endpoint(&ep).await.unwrap();
    let d = delivery(ep.id, uuid::Uuid::now_v7(), T0);
    store.enqueue_deliveries(std::slice::from_ref(&d)).await.unwrap();
    let attempt = WebhookAttempt {
        delivery_id: d.id,
        attempt: 1,
        at: T0,
        status: None,
        error: Some("timed out".into()),
        duration_ms: 10_000,
    };
    store.record_delivery(&d, Some(&attempt)).await.unwrap();
    let owner = user("reset@example.com", "Reset");
    create(store, &owner).await;
    let (t, m) = reset_token_and_mail(&owner, T0);
    store
        .issue_account_token(&t, std::slice::from_ref(&m), &event("password_reset.requested", owner.id))
        .await
        .unwrap();
    let g = group("Backed up \"group\" 🦀");
    let members =
        store.list_users(&UserListQuery { after: None, limit: 5, email: None, ..Default::default() }).await.unwrap();
    let ids: Vec<UserId> = members.iter().map(|u| u.id).collect();
    store.create_group(&g, &ids, &group_event("group.created", &g)).await.unwrap();
    store.set_external_id(ids[0], Some(&ExternalId::parse("entra-1").unwrap())).await.unwrap();
    let department = strata_core::groups::EnterpriseText::parse("x", "Tour Operations").unwrap();
    let enterprise = strata_core::groups::EnterpriseUser { department: Some(department), ..Default::default() };
    store.set_enterprise(ids[0], &enterprise).await.unwrap();
    let mut token = provisioning_token("Backed up");
    token.revoked_at = Some(T0);
    store.create_provisioning_token(&token).await.unwrap();
    store.save_totp(&totp_row(owner.id, true, 1), None, None).await.unwrap();
}

fn totp_row(user_id: UserId, enabled: bool, version: i64) -> strata_core::totp::TotpRecord {
    use strata_core::totp::{RecoveryCode, TotpRecord, TotpSecret};
    TotpRecord {
        user_id,
        secret: TotpSecret::generate(),
        enabled,
        last_step: enabled.then_some(58_000_000),
        recovery_hashes: (0..10).map(|_| RecoveryCode::generate().hash()).collect(),
        version,
        created_at: T0,
        updated_at: T0,
    }
}

async fn totp_rows_are_compare_and_set_and_cascade(store: Arc<dyn Store>) {
    let u = user("totp@example.com", "Totp");
    create(&*store, &u).await;
    assert_eq!(store.totp_of(u.id).await.unwrap(), None);
    // An enrolment inserts, and a new one replaces a pending row.
    let pending = totp_row(u.id, false, 1);
    store.save_totp(&pending, None, None).await.unwrap();
    assert_eq!(store.totp_of(u.id).await.unwrap(), Some(pending.clone()));
    let again = totp_row(u.id, false, 1);
    store.save_totp(&again, None, None).await.unwrap();
    assert_eq!(store.totp_of(u.id).await.unwrap(), Some(again.clone()));
    // Confirming is compare-and-set, with its event in the same transaction.
    let mut on = again.clone();
    on.enabled = true;
    on.last_step = Some(58_000_001);
    on.version = 2;
    assert!(!store.user_by_id(u.id).await.unwrap().unwrap().mfa_enabled, "a pending enrolment is not MFA");
    store.save_totp(&on, Some(1), Some(&event("mfa.enabled", u.id))).await.unwrap();
    assert_eq!(store.totp_of(u.id).await.unwrap(), Some(on.clone()));
    // The user row's copy of the flag follows, in every read that returns the user.
    assert!(store.user_by_id(u.id).await.unwrap().unwrap().mfa_enabled);
    assert!(store.user_by_email(&u.email).await.unwrap().unwrap().mfa_enabled);
    let pending_events = store.pending_events(&all_partitions(), 100).await.unwrap();
    assert_eq!(pending_events.iter().filter(|e| e.event_type == "mfa.enabled").count(), 1);
    // A second use of the version read loses; so does a new enrolment over an enabled row.
    let mut stale = on.clone();
    stale.recovery_hashes.pop();
    assert_eq!(store.save_totp(&stale, Some(1), None).await, Err(RepoError::VersionConflict));
    assert_eq!(store.save_totp(&totp_row(u.id, false, 1), None, None).await, Err(RepoError::VersionConflict));
    assert_eq!(store.totp_of(u.id).await.unwrap(), Some(on.clone()));
    // Concurrent uses of one version: exactly one wins.
    let writes: Vec<_> = (0..8)
        .map(|i| {
            let (store, mut next) = (store.clone(), on.clone());
            next.last_step = Some(58_000_002 + i);
            next.version = 3;
            tokio::spawn(async move { store.save_totp(&next, Some(2), None).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for w in writes {
        outcomes.push(w.await.unwrap());
    }
    assert_eq!(outcomes.iter().filter(|o| o.is_ok()).count(), 1, "{outcomes:?}");
    assert!(outcomes.iter().all(|o| o.is_ok() || *o == Err(RepoError::VersionConflict)), "{outcomes:?}");
    let stored = store.totp_of(u.id).await.unwrap().unwrap();
    assert_eq!(stored.version, 3);
    // Delete: guarded by the version when given, with its event.
    assert_eq!(store.delete_totp(u.id, Some(2), &event("mfa.disabled", u.id)).await, Err(RepoError::VersionConflict));
    assert!(store.totp_of(u.id).await.unwrap().is_some());
    assert!(store.user_by_id(u.id).await.unwrap().unwrap().mfa_enabled, "a code acceptance keeps the flag");
    store.delete_totp(u.id, Some(3), &event("mfa.disabled", u.id)).await.unwrap();
    assert_eq!(store.totp_of(u.id).await.unwrap(), None);
    assert!(!store.user_by_id(u.id).await.unwrap().unwrap().mfa_enabled);
    assert_eq!(store.delete_totp(u.id, None, &event("mfa.disabled", u.id)).await, Err(RepoError::NotFound));
    let pending_events = store.pending_events(&all_partitions(), 100).await.unwrap();
    assert_eq!(pending_events.iter().filter(|e| e.event_type == "mfa.disabled").count(), 1);
    // The row goes with its user.
    store.save_totp(&totp_row(u.id, true, 1), None, None).await.unwrap();
    store.delete_user(u.id, None, &event("user.deleted", u.id)).await.unwrap();
    assert_eq!(store.totp_of(u.id).await.unwrap(), None);
}

async fn a_snapshot_restores_every_table_exactly(store: Arc<dyn Store>) {
    use strata_core::backup::{OnExisting, TABLES};
    populate(&*store).await;
    let before = snapshot(&*store).await;
    let counts = store.row_counts().await.unwrap();
    assert_eq!(before.iter().map(|t| t.len() as u64).collect::<Vec<_>>(), counts);
    for (table, rows) in TABLES.iter().zip(&before) {
        assert!(!rows.is_empty(), "{} has rows to back up", table.name);
        for row in rows {
            strata_core::backup::check_row(table, row).unwrap();
        }
    }

    // A non-empty target is refused, and nothing is written.
    assert!(matches!(load(&*store, &before, OnExisting::Refuse, true).await, Err(RepoError::NotEmpty(_))));
    // A stream that ends before its commit writes nothing, even when told to replace.
    assert!(load(&*store, &before, OnExisting::Replace, false).await.is_err());
    assert_eq!(snapshot(&*store).await, before);

    // Replacing with the snapshot gives back exactly the snapshot, and the store works on.
    let total: u64 = counts.iter().sum();
    assert_eq!(load(&*store, &before, OnExisting::Replace, true).await.unwrap(), total);
    assert_eq!(snapshot(&*store).await, before);
    let next = user("after-restore@example.com", "After");
    create(&*store, &next).await;
    let ep = store.webhook_endpoints().await.unwrap()[0].id;
    let d = store
        .webhook_deliveries(&strata_core::webhooks::DeliveryQuery {
            endpoint_id: ep,
            after: None,
            limit: 10,
            status: None,
        })
        .await
        .unwrap();
    let again = strata_core::webhooks::WebhookAttempt {
        delivery_id: d[0].id,
        attempt: 2,
        at: T0,
        status: Some(200),
        error: None,
        duration_ms: 3,
    };
    store.record_delivery(&d[0], Some(&again)).await.unwrap(); // the attempt id sequence moved past the restored ids
    assert_eq!(store.webhook_attempts(d[0].id).await.unwrap().len(), 2);
}

/// A snapshot taken while users are being created is consistent: every session has its
/// user and every user has its `user.created` event, though writes go on during the read.
async fn a_snapshot_is_consistent_under_writes(store: Arc<dyn Store>) {
    use strata_core::backup::{TABLES, Value};
    populate(&*store).await;
    let writing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writer = {
        let (store, writing) = (store.clone(), writing.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while writing.load(std::sync::atomic::Ordering::Relaxed) && n < 2000 {
                let u = user(&format!("w{n}@example.com"), "Writer");
                create(&*store, &u).await;
                let (_, s) = session_for(&u);
                store.create_session(&s, &event("session.created", u.id)).await.unwrap();
                n += 1;
            }
            n
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let tables = snapshot(&*store).await;
    writing.store(false, std::sync::atomic::Ordering::Relaxed);
    let written = writer.await.unwrap();
    assert!(written > 0);
    let column = |table: &str, name: &str| {
        let t = TABLES.iter().position(|t| t.name == table).unwrap();
        let c = TABLES[t].columns.iter().position(|c| c.name == name).unwrap();
        tables[t].iter().map(move |row| row[c].clone())
    };
    let users: std::collections::HashSet<Value> = column("users", "id").collect();
    let created: std::collections::HashSet<Value> = column("outbox", "aggregate_id").collect();
    for id in column("sessions", "user_id") {
        assert!(users.contains(&id), "a session's user is in the snapshot");
    }
    for id in &users {
        assert!(created.contains(id), "a user's events are in the snapshot");
    }
}

macro_rules! conformance {
    ($backend:ident, $variant:expr, [$($case:ident),* $(,)?]) => {
        mod $backend {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let what = concat!("store conformance ", stringify!($case));
                    let Some((_db, store)) = store_for($variant, what).await else { return };
                    assert_eq!(store.backend(), stringify!($backend));
                    super::$case(store).await;
                }
            )*
        }
    };
}

/// The composite adapter: a replicated store whose "replica" is the same database
/// through a pool of its own, so reads really are routed (to the replica once its probed
/// position has passed the reader's writes, to the primary before) and every case holds.
async fn replicated_store_for(backend: Backend, what: &str) -> Option<(TestDb, Arc<dyn Store>)> {
    let (db, _) = store_for(backend, what).await?;
    let board = Arc::new(strata_store::replicated::LocalBoard::default());
    let options =
        strata_store::replicated::ReplicaOptions { max_lag: Duration::from_secs(2), poll: Duration::from_millis(20) };
    let store = strata_store::connect_replicated(
        &StoreOptions::new(db.url.clone()),
        std::slice::from_ref(&db.url),
        board,
        options,
    )
    .await
    .expect("connect replicated");
    assert!(store.read_routing().is_some());
    Some((db, store))
}

macro_rules! conformance_replicated {
    ($name:ident, $backend:ident, $variant:expr, [$($case:ident),* $(,)?]) => {
        mod $name {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let what = concat!("replicated store conformance ", stringify!($case));
                    let Some((_db, store)) = replicated_store_for($variant, what).await else { return };
                    assert_eq!(store.backend(), stringify!($backend));
                    super::$case(store).await;
                }
            )*
        }
    };
}

/// Three fresh databases of `backend`: a catalog and two shards.
async fn catalog_and_two_shards(backend: Backend, what: &str) -> Option<Vec<TestDb>> {
    let mut dbs = Vec::new();
    for _ in 0..3 {
        dbs.push(fresh(backend, what).await?);
    }
    Some(dbs)
}

/// The sharded composite: a catalog and two shards, each a fresh database of `backend`,
/// with 8 logical shards, so that the users of every case spread over both. With
/// `replicas`, each shard is a replicated store whose "replica" is its own database through
/// a pool of its own (as `replicated_store_for`), positions on one board.
async fn sharded_store_for(backend: Backend, what: &str, replicas: bool) -> Option<(Vec<TestDb>, Arc<dyn Store>)> {
    let dbs = catalog_and_two_shards(backend, what).await?;
    let shards: Vec<String> =
        dbs[1..].iter().map(|db| if replicas { format!("{}|{}", db.url, db.url) } else { db.url.clone() }).collect();
    let board: Arc<dyn strata_core::ports::PositionBoard> = Arc::new(strata_store::replicated::LocalBoard::default());
    let routing =
        strata_store::replicated::ReplicaOptions { max_lag: Duration::from_secs(2), poll: Duration::from_millis(20) };
    let options = strata_store::sharded::ShardOptions { logical: 8, ..Default::default() };
    let store = strata_store::connect_sharded(
        &StoreOptions::new(dbs[0].url.clone()),
        &shards,
        replicas.then_some((board, routing)),
        options,
    )
    .await
    .expect("connect sharded");
    assert_eq!(store.logical_shards(), Some(8));
    assert_eq!(store.read_routing().map(|r| r.replicas.len()), replicas.then_some(2));
    Some((dbs, Arc::new(store)))
}

macro_rules! conformance_sharded {
    ($name:ident, $backend:ident, $variant:expr, $replicas:expr, [$($case:ident),* $(,)?]) => {
        mod $name {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let what = concat!("sharded store conformance ", stringify!($case));
                    let Some((_dbs, store)) = sharded_store_for($variant, what, $replicas).await else { return };
                    assert_eq!(store.backend(), stringify!($backend));
                    super::$case(store).await;
                }
            )*
        }
    };
}

macro_rules! unsharded_backends {
    ($($case:ident),* $(,)?) => {
        conformance!(sqlite, Backend::Sqlite, [$($case),*]);
        conformance!(postgres, Backend::Postgres, [$($case),*]);
        conformance!(mysql, Backend::Mysql, [$($case),*]);
        conformance_replicated!(replicated_postgres, postgres, Backend::Postgres, [$($case),*]);
        conformance_replicated!(replicated_mysql, mysql, Backend::Mysql, [$($case),*]);
    };
}

macro_rules! all_backends {
    ($($case:ident),* $(,)?) => {
        unsharded_backends!($($case),*);
        conformance_sharded!(sharded_sqlite, sqlite, Backend::Sqlite, false, [$($case),*]);
        conformance_sharded!(sharded_postgres, postgres, Backend::Postgres, false, [$($case),*]);
        conformance_sharded!(sharded_mysql, mysql, Backend::Mysql, false, [$($case),*]);
        conformance_sharded!(sharded_replicated_postgres, postgres, Backend::Postgres, true, [$($case),*]);
        conformance_sharded!(sharded_replicated_mysql, mysql, Backend::Mysql, true, [$($case),*]);
    };
}

/// Whole-database snapshots: one consistent read and one all-or-nothing write are what a
/// backup promises, and a sharded store spans databases that share no transaction, so it
/// refuses them (`strata backup` says to back up the catalog and each shard by URL).
mod whole_database {
    use super::*;
    unsharded_backends!(a_snapshot_restores_every_table_exactly, a_snapshot_is_consistent_under_writes);
}

all_backends!(
    create_and_read_back,
    duplicate_email_is_rejected_atomically,
    every_committed_change_leaves_its_event,
    sequences_follow_commit_order,
    rows_committed_out_of_id_order_are_not_lost,
    published_rows_leave_the_backlog_and_are_pruned,
    relay_leases_are_exclusive_until_they_expire,
    the_audit_log_records_each_event_once,
    webhook_endpoints_round_trip,
    webhook_deliveries_are_queued_once_and_claimed_once,
    idempotency_records,
    optimistic_updates,
    concurrent_updates_one_wins,
    sessions_lifecycle,
    delete_removes_user_and_sessions,
    keyset_pagination_visits_everyone_once,
    filtered_pages_visit_every_match_once,
    hot_paths_use_indexes,
    groups_round_trip,
    membership_changes_touch_only_their_rows,
    large_groups_page_through_members,
    external_ids_round_trip,
    enterprise_attributes_round_trip,
    users_searched_by_indexed_predicates,
    provisioning_tokens_round_trip,
    account_tokens_are_superseded_redeemed_once_and_cascade,
    queued_mails_are_claimed_once_and_recorded,
    email_change_tokens_carry_the_address_and_both_mails,
    totp_rows_are_compare_and_set_and_cascade,
);

/// Migrating twice (a restart, or two instances starting together) is harmless.
#[tokio::test]
async fn sqlite_migrations_are_idempotent_and_concurrent_safe() {
    let Some(db) = fresh(Backend::Sqlite, "migrations").await else { return };
    let opts = StoreOptions::new(db.url.clone());
    let (a, b) = tokio::join!(connect(&opts), connect(&opts));
    let (a, b) = (a.unwrap(), b.unwrap());
    let u = user("m@example.com", "M");
    create(&*a, &u).await;
    assert_eq!(b.user_by_id(u.id).await.unwrap(), Some(u));
}

/// One test per server engine (PostgreSQL, MySQL/MariaDB) for each case `fn(Backend)`.
macro_rules! on_servers {
    ($($case:ident),* $(,)?) => {
        $(
            mod $case {
                use super::*;
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$case(Backend::Postgres).await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn mysql() {
                    super::$case(Backend::Mysql).await;
                }
            }
        )*
    };
}

/// PostgreSQL and MySQL specifics: migration locking between instances, error mapping,
/// pool figures, racing idempotent retries.
mod server_backends {
    use super::*;

    async fn two_instances_migrate_together(backend: Backend) {
        let Some(db) = fresh(backend, "concurrent migrations").await else { return };
        let opts = StoreOptions::new(db.url.clone());
        let (a, b) = tokio::join!(connect(&opts), connect(&opts));
        let (a, b) = (a.expect("first migrator"), b.expect("second migrator"));
        // A restart finds nothing left to apply.
        let c = connect(&opts).await.expect("migrating again");
        let u = user("m@example.com", "M");
        create(&*a, &u).await;
        assert_eq!(b.user_by_id(u.id).await.unwrap(), Some(u.clone()));
        assert_eq!(c.user_by_id(u.id).await.unwrap(), Some(u));
    }

    async fn unreachable_server_is_unavailable(backend: Backend) {
        // Port 1 is never a database: the connection is refused at once.
        let url = match backend {
            Backend::Postgres => "postgres://postgres@127.0.0.1:1/test",
            _ => "mysql://root@127.0.0.1:1/test",
        };
        let mut opts = StoreOptions::new(url);
        opts.connect_timeout = Duration::from_secs(2);
        match connect(&opts).await {
            Err(RepoError::Unavailable(_)) => {}
            Err(other) => panic!("{}: expected Unavailable, got {other:?}", backend.name()),
            Ok(_) => panic!("{}: connected to port 1", backend.name()),
        }
    }

    /// A call stuck behind another session's row lock gives up after `query_timeout` with
    /// Unavailable, and leaves nothing half-written behind.
    async fn timed_out_calls_are_unavailable(backend: Backend) {
        let Some((db, store)) = store_for(backend, "query timeouts").await else { return };
        let u = user("slow@example.com", "Slow");
        create(&*store, &u).await;
        let mut opts = StoreOptions::new(db.url.clone());
        opts.migrate = false;
        opts.query_timeout = Duration::from_millis(300);
        let impatient = connect(&opts).await.expect("connect");
        let mut next = u.clone();
        next.name = DisplayName::parse("Never").unwrap();
        next.version = Version(2);
        let lock = "SELECT id FROM users FOR UPDATE";
        let outcome = match backend {
            Backend::Postgres => {
                let (mut client, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls).await.unwrap();
                let driver = tokio::spawn(conn);
                let holder = client.transaction().await.unwrap();
                holder.batch_execute(lock).await.unwrap();
                let outcome = impatient
                    .update_user(&next, Version(1), SessionRevocation::None, &event("user.updated", u.id))
                    .await;
                holder.rollback().await.unwrap();
                drop(client);
                let _ = driver.await;
                outcome
            }
            _ => {
                use mysql_async::prelude::Queryable as _;
                let mut conn = mysql_async::Conn::from_url(&db.url).await.unwrap();
                let mut holder = conn.start_transaction(mysql_async::TxOpts::default()).await.unwrap();
                holder.query_drop(lock).await.unwrap();
                let outcome = impatient
                    .update_user(&next, Version(1), SessionRevocation::None, &event("user.updated", u.id))
                    .await;
                holder.rollback().await.unwrap();
                conn.disconnect().await.unwrap();
                outcome
            }
        };
        match outcome {
            Err(RepoError::Unavailable(msg)) => assert!(msg.contains("timed out"), "{msg}"),
            other => panic!("{}: expected a timeout, got {other:?}", backend.name()),
        }
        // The abandoned update never lands, and both stores keep working.
        assert_eq!(store.user_by_id(u.id).await.unwrap(), Some(u.clone()));
        assert_eq!(impatient.user_by_id(u.id).await.unwrap(), Some(u));
    }

    /// A row the adapter did not write (an unknown role) is an internal error, not a panic
    /// and not a silently wrong user.
    async fn corrupt_rows_are_internal_errors(backend: Backend) {
        let Some((db, store)) = store_for(backend, "corrupt rows").await else { return };
        let u = user("corrupt@example.com", "Corrupt");
        create(&*store, &u).await;
        let sql = "UPDATE users SET role = 'superuser'";
        match backend {
            Backend::Postgres => {
                let (client, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls).await.unwrap();
                let driver = tokio::spawn(conn);
                client.batch_execute(sql).await.unwrap();
                drop(client);
                let _ = driver.await;
            }
            _ => {
                use mysql_async::prelude::Queryable as _;
                let mut conn = mysql_async::Conn::from_url(&db.url).await.unwrap();
                conn.query_drop(sql).await.unwrap();
                conn.disconnect().await.unwrap();
            }
        }
        assert!(matches!(store.user_by_id(u.id).await, Err(RepoError::Internal(_))));
        assert!(matches!(store.user_by_email(&u.email).await, Err(RepoError::Internal(_))));
    }

    async fn pool_stats_count_connections(backend: Backend) {
        let Some((_db, store)) = store_for(backend, "pool stats").await else { return };
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move { create(&*store, &user(&format!("pool{i}@example.com"), "Pool")).await })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let stats = store.pool_stats();
        assert!(stats.size >= 1, "{stats:?}");
        assert!(stats.idle <= stats.size, "{stats:?}");
        assert_eq!(stats.waiting, 0, "{stats:?}");
    }

    /// Concurrent retries of one create (same key, same email): exactly one creates, every
    /// other one hears "key taken" (so the service replays it), never "email taken" or a
    /// deadlock.
    async fn racing_retries_create_once(backend: Backend) {
        let Some((_db, store)) = store_for(backend, "racing retries").await else { return };
        let key = IdempotencyKey::parse("race-key").unwrap();
        let attempts: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                let u = user("retry@example.com", "Retry");
                let record =
                    IdempotencyRecord { key: key.clone(), fingerprint: [1; 32], user_id: u.id, created_at: T0 };
                tokio::spawn(async move { store.create_user(&u, Some(&record), &event("user.created", u.id)).await })
            })
            .collect();
        let mut created = 0;
        for attempt in attempts {
            match attempt.await.unwrap() {
                Ok(()) => created += 1,
                Err(e) => assert_eq!(e, RepoError::IdempotencyKeyTaken, "{}", backend.name()),
            }
        }
        assert_eq!(created, 1);
    }

    on_servers!(
        two_instances_migrate_together,
        unreachable_server_is_unavailable,
        timed_out_calls_are_unavailable,
        corrupt_rows_are_internal_errors,
        pool_stats_count_connections,
        racing_retries_create_once,
    );
}

/// Read replicas on private servers (a primary and replicas started by the test, one of
/// them lagging on purpose), PostgreSQL streaming replication and MariaDB GTID replication:
/// read-your-writes across two routing stores that share a position board, a stopped
/// replica costing no request, a promoted replica taking writes without a restart.
mod replication {
    use super::*;
    use strata_core::ports::PositionBoard;
    use strata_store::replicated::{LocalBoard, ReplicaOptions};
    use strata_store::testing::{Replicated, TestServer, primary_with_replicas};

    /// Injected replica lag: MariaDB's `MASTER_DELAY` counts whole seconds.
    fn lag(backend: Backend) -> Duration {
        match backend {
            Backend::Mysql => Duration::from_secs(1),
            _ => Duration::from_millis(300),
        }
    }

    async fn servers(backend: Backend, what: &str, delays: &[Duration]) -> Option<Replicated> {
        let delays = delays.to_vec();
        match tokio::task::spawn_blocking(move || primary_with_replicas(backend, &delays)).await.unwrap() {
            Ok(servers) => Some(servers),
            Err(why) => {
                strata_core::testing::unusable(what, backend.name(), &why);
                None
            }
        }
    }

    fn options() -> ReplicaOptions {
        ReplicaOptions { max_lag: Duration::from_secs(3), poll: Duration::from_millis(50) }
    }

    async fn router(
        primary_url: &str,
        replicas: &[Box<dyn TestServer>],
        board: Arc<dyn PositionBoard>,
    ) -> Arc<dyn Store> {
        let urls: Vec<String> = replicas.iter().map(|r| r.url()).collect();
        let mut opts = StoreOptions::new(primary_url);
        opts.connect_timeout = Duration::from_secs(2);
        strata_store::connect_replicated(&opts, &urls, board, options()).await.expect("connect replicated")
    }

    fn replica_reads(store: &dyn Store) -> u64 {
        store.read_routing().unwrap().replicas.iter().map(|r| r.reads).sum()
    }

    fn to_primary(store: &dyn Store, reason: &str) -> u64 {
        store.read_routing().unwrap().primary.iter().filter(|(why, _)| *why == reason).map(|(_, n)| n).sum()
    }

    /// Polls until every replica of `store` is in rotation (or panics after 30 s).
    async fn all_in_rotation(store: &dyn Store) {
        for _ in 0..300 {
            if store.read_routing().unwrap().replicas.iter().all(|r| r.in_rotation) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("replicas not back in rotation: {:?}", store.read_routing());
    }

    async fn reads_follow_writes_across_instances_despite_lag(backend: Backend) {
        let what = "read-your-writes over lagging replicas";
        let lag = lag(backend);
        let Some((primary, replicas)) = servers(backend, what, &[lag, Duration::ZERO]).await else { return };
        let board: Arc<dyn PositionBoard> = Arc::new(LocalBoard::default());
        let a = router(&primary.url(), &replicas, board.clone()).await;
        let b = router(&primary.url(), &replicas, board).await;
        // Users written often (hot) and never again (cold), each with a session.
        let mut hot = Vec::new();
        for i in 0..20 {
            let u = user(&format!("hot{i}@example.com"), "Hot");
            create(&*a, &u).await;
            let (token, s) = session_for(&u);
            a.create_session(&s, &event("session.created", u.id)).await.unwrap();
            hot.push((u, token, s));
        }
        let mut cold = Vec::new();
        for i in 0..50 {
            let u = user(&format!("cold{i}@example.com"), "Cold");
            create(&*a, &u).await;
            cold.push(u);
        }
        all_in_rotation(&*b).await;
        tokio::time::sleep(lag * 3).await;

        const PAIRS: usize = 10_000;
        for i in 0..PAIRS {
            let k = i % hot.len();
            match i % 5 {
                0 | 1 => {
                    let (u, _, _) = &mut hot[k];
                    let expected = u.version;
                    u.version = Version(expected.0 + 1);
                    u.name = DisplayName::parse(&format!("Hot {i}")).unwrap();
                    a.update_user(u, expected, SessionRevocation::None, &event("user.updated", u.id)).await.unwrap();
                    let read = b.user_by_id(u.id).await.unwrap().expect("the user");
                    assert_eq!(read.version, u.version, "pair {i}: read the user back stale");
                    if i % 5 == 1 {
                        let by_email = b.user_by_email(&u.email).await.unwrap().expect("by email");
                        assert_eq!(by_email.version, u.version, "pair {i}: read by email stale");
                    }
                }
                2 => {
                    // Log out, and the session is revoked for every instance at once.
                    let (u, token, s) = &mut hot[k];
                    assert!(a.revoke_session(s.id, T0, &event("session.revoked", u.id)).await.unwrap());
                    let (seen, _) = b.session_with_user(&token.hash()).await.unwrap().expect("the session");
                    assert_eq!(seen.revoked_at, Some(T0), "pair {i}: a revoked session still valid");
                    let (fresh_token, fresh) = session_for(u);
                    a.create_session(&fresh, &event("session.created", u.id)).await.unwrap();
                    let (seen, owner) = b.session_with_user(&fresh_token.hash()).await.unwrap().expect("new session");
                    assert_eq!((seen.revoked_at, owner.version), (None, u.version), "pair {i}");
                    (*token, *s) = (fresh_token, fresh);
                }
                3 => {
                    let u = &cold[i % cold.len()];
                    assert_eq!(b.user_by_id(u.id).await.unwrap().as_ref(), Some(u), "pair {i}");
                }
                _ => {
                    // A new user is in the next admin page at once.
                    let newest = cold.iter().chain(hot.iter().map(|(u, _, _)| u)).map(|u| u.id).max().unwrap();
                    let u = user(&format!("new{i}@example.com"), "New");
                    create(&*a, &u).await;
                    let query = UserListQuery { after: Some(newest), limit: 5, ..Default::default() };
                    let page = b.list_users(&query).await.unwrap();
                    assert_eq!(page.first().map(|x| x.id), Some(u.id), "pair {i}: list stale");
                    cold.push(u);
                }
            }
        }
        let (served, stale) = (replica_reads(&*b), to_primary(&*b, "stale") + to_primary(&*b, "missing"));
        eprintln!(
            "{PAIRS} write-then-read pairs: {served} reads from replicas, {stale} sent to the primary as not caught up"
        );
        assert!(served > 1000, "replicas answered the reads they had caught up with: {:?}", b.read_routing());
        assert!(stale > 1000, "the lagging replicas were skipped for fresh writes: {:?}", b.read_routing());
    }

    async fn a_stopped_replica_costs_no_request(backend: Backend) {
        let what = "stopped replica";
        let Some((primary, mut replicas)) = servers(backend, what, &[Duration::ZERO, Duration::ZERO]).await else {
            return;
        };
        let store = router(&primary.url(), &replicas, Arc::new(LocalBoard::default())).await;
        let mut users = Vec::new();
        for i in 0..20 {
            let u = user(&format!("r{i}@example.com"), "R");
            create(&*store, &u).await;
            users.push(u);
        }
        all_in_rotation(&*store).await;
        tokio::time::sleep(Duration::from_millis(300)).await;

        let reader = {
            let store = store.clone();
            let users = users.clone();
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0u32, Vec::new());
                let until = std::time::Instant::now() + Duration::from_secs(4);
                let mut i = 0;
                while std::time::Instant::now() < until && i < 200_000 {
                    let u = &users[i % users.len()];
                    match store.user_by_id(u.id).await {
                        Ok(Some(found)) if &found == u => ok += 1,
                        other => failed.push(format!("{other:?}")),
                    }
                    i += 1;
                }
                (ok, failed)
            })
        };
        tokio::time::sleep(Duration::from_millis(800)).await;
        let stopped = replicas.remove(0);
        let stopped = tokio::task::spawn_blocking(move || {
            let mut stopped = stopped;
            stopped.kill().unwrap();
            // Back after a while, to see it return to rotation.
            std::thread::sleep(Duration::from_millis(1500));
            stopped.start().unwrap();
            stopped
        })
        .await
        .unwrap();
        let (ok, failed) = reader.await.unwrap();
        eprintln!("{ok} reads while a replica was stopped and restarted, {} failed", failed.len());
        assert!(failed.is_empty(), "reads failed while a replica was down: {:?}", &failed[..failed.len().min(5)]);
        assert!(ok > 100);
        all_in_rotation(&*store).await;
        drop(stopped);
    }

    async fn a_promoted_replica_takes_writes_without_a_restart(backend: Backend) {
        let what = "primary failover";
        let Some((mut primary, replicas)) = servers(backend, what, &[Duration::ZERO]).await else { return };
        // Both hosts in one URL: whichever takes writes is the primary.
        let url = match backend {
            Backend::Postgres => format!(
                "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=read-write",
                primary.port(),
                replicas[0].port()
            ),
            _ => format!("mysql://root@127.0.0.1:{},127.0.0.1:{}/test", primary.port(), replicas[0].port()),
        };
        let store = router(&url, &replicas, Arc::new(LocalBoard::default())).await;
        let before = user("before@example.com", "Before");
        create(&*store, &before).await;
        all_in_rotation(&*store).await;
        for _ in 0..100 {
            if standby_has(&replicas[0].url(), before.id).await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let started = std::time::Instant::now();
        let (_primary, _promoted) = tokio::task::spawn_blocking(move || {
            primary.kill().unwrap();
            replicas[0].promote().unwrap();
            (primary, replicas)
        })
        .await
        .unwrap();
        let after = user("after@example.com", "After");
        let mut failures = 0;
        loop {
            match store.create_user(&after, None, &event("user.created", after.id)).await {
                Ok(()) => break,
                Err(RepoError::Unavailable(_)) if started.elapsed() < Duration::from_secs(60) => {
                    failures += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("no write after promotion: {e}"),
            }
        }
        eprintln!(
            "{}: writes resumed on the promoted replica {:?} after the primary died ({failures} refused)",
            backend.name(),
            started.elapsed()
        );
        assert_eq!(store.user_by_id(before.id).await.unwrap(), Some(before));
        assert_eq!(store.user_by_id(after.id).await.unwrap(), Some(after));
    }

    async fn standby_has(url: &str, id: UserId) -> bool {
        let mut opts = StoreOptions::new(url);
        opts.migrate = false;
        match connect(&opts).await {
            Ok(s) => s.user_by_id(id).await.ok().flatten().is_some(),
            Err(_) => false,
        }
    }

    on_servers!(
        reads_follow_writes_across_instances_despite_lag,
        a_stopped_replica_costs_no_request,
        a_promoted_replica_takes_writes_without_a_restart,
    );
}

/// Sharding beyond the conformance suite: moving a logical shard under a steady write and
/// read load through two instances, a move killed at any point and run again, the email
/// claim reconciler, and what a sharded store refuses.
mod sharding {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use super::*;
    use strata_core::backup::{BackupRepository, ShardScope};
    use strata_core::domain::logical_shard;
    use strata_core::ports::{Clock as _, SessionRepository, SystemClock, UserRepository};
    use strata_core::shards::{MoveStep, ShardCatalog};
    use strata_store::sharded::{ShardOptions, ShardedStore};

    const LOGICAL: u16 = 8;

    fn options() -> ShardOptions {
        ShardOptions {
            logical: LOGICAL,
            refresh: Duration::from_millis(50),
            query_timeout: Duration::from_secs(1),
            claim_grace: Duration::ZERO,
        }
    }

    /// One instance's router over `dbs` (catalog first).
    async fn instance(dbs: &[TestDb]) -> Arc<ShardedStore> {
        let mut opts = StoreOptions::new(dbs[0].url.clone());
        opts.query_timeout = options().query_timeout;
        let shards: Vec<String> = dbs[1..].iter().map(|d| d.url.clone()).collect();
        Arc::new(strata_store::connect_sharded(&opts, &shards, None, options()).await.expect("connect sharded"))
    }

    fn name(db: &TestDb) -> String {
        strata_store::redact_url(&db.url)
    }

    /// Users of one logical shard (and their sessions) in `store`, straight from its rows.
    async fn users_in(store: &dyn Store, logical: u16) -> Vec<uuid::Uuid> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<strata_core::backup::Batch>(4);
        let scope = ShardScope { logical, count: LOGICAL };
        let collect = async {
            let mut ids = Vec::new();
            while let Some(batch) = rx.recv().await {
                if batch.table == 0 {
                    ids.extend(batch.rows.iter().map(|r| match &r[0] {
                        strata_core::backup::Value::Uuid(id) => id,
                        other => panic!("users.id is {other:?}"),
                    }));
                }
            }
            ids
        };
        let (exported, ids) = tokio::join!(store.export_shard(scope, tx), collect);
        exported.unwrap();
        ids
    }

    /// A user placed in `logical`.
    fn user_in(logical: u16, n: usize) -> User {
        loop {
            let u = user(&format!("u{n}-{}@example.com", uuid::Uuid::now_v7().simple()), "Load");
            if logical_shard(u.id.as_uuid(), LOGICAL) == logical {
                return u;
            }
        }
    }

    /// Writers keep renaming users (half of them in the moving logical shard) through one
    /// instance and creating new ones, readers check every acknowledged version and every
    /// session through the other, while the first instance moves the shard. Afterwards:
    /// no acknowledged write lost, no read older than an acknowledged write, every refused
    /// write a clean 503 naming the move, and the old copy gone.
    async fn a_move_under_load_loses_nothing(backend: Backend) {
        let Some(dbs) = catalog_and_two_shards(backend, "shard move under load").await else { return };
        let (mover, server) = (instance(&dbs).await, instance(&dbs).await);
        let moving = 3;
        let from = mover.status().await.unwrap().map[usize::from(moving)].shard.clone();
        let to = if from == name(&dbs[1]) { name(&dbs[2]) } else { name(&dbs[1]) };

        // Acknowledged state: user → (last acknowledged version, its session token hash).
        let acked: Arc<parking_lot::Mutex<HashMap<UserId, (User, strata_core::domain::TokenHash)>>> = Arc::default();
        for n in 0..40 {
            let u = user_in(if n % 2 == 0 { moving } else { (n % 8) as u16 }, n);
            create(&*server, &u).await;
            let (_, s) = session_for(&u);
            server.create_session(&s, &event("session.created", u.id)).await.unwrap();
            acked.lock().insert(u.id, (u, s.token_hash));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let refused = Arc::new(AtomicU64::new(0));
        // The span writes were refused in: first and last refusal, in µs since `epoch`.
        let epoch = std::time::Instant::now();
        let (first_refusal, last_refusal) = (Arc::new(AtomicU64::new(u64::MAX)), Arc::new(AtomicU64::new(0)));
        let mut load = tokio::task::JoinSet::new();
        for w in 0..4usize {
            let (server, acked, stop, refused) = (server.clone(), acked.clone(), stop.clone(), refused.clone());
            let (first_refusal, last_refusal) = (first_refusal.clone(), last_refusal.clone());
            load.spawn(async move {
                let mut writes = 0u64;
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) && writes < 20_000 {
                    n += 1;
                    // Each writer renames its own users: conflicts would be the test's own.
                    let mut ids: Vec<UserId> =
                        acked.lock().keys().copied().filter(|id| id.as_uuid().as_bytes()[15] % 4 == w as u8).collect();
                    ids.sort();
                    if ids.is_empty() {
                        n += 9;
                    }
                    let Some(&id) = ids.get(n % ids.len().max(1)) else { continue };
                    let current = acked.lock()[&id].0.clone();
                    let mut next = current.clone();
                    next.name = DisplayName::parse(&format!("w{w}-{n}")).unwrap();
                    next.version = current.version.next();
                    let outcome = if n % 10 == 0 {
                        let fresh_user = loop {
                            let u = user_in(moving, 1000 + w * 100_000 + n);
                            if u.id.as_uuid().as_bytes()[15] % 4 == w as u8 {
                                break u;
                            }
                        };
                        let created =
                            server.create_user(&fresh_user, None, &event("user.created", fresh_user.id)).await;
                        created.map(|()| {
                            let (_, s) = session_for(&fresh_user);
                            (fresh_user, Some(s))
                        })
                    } else {
                        server
                            .update_user(&next, current.version, SessionRevocation::None, &event("user.updated", id))
                            .await
                            .map(|()| (next, None))
                    };
                    match outcome {
                        Ok((written, session)) => {
                            let hash = match session {
                                Some(s) => {
                                    // A session for a new user; may itself meet the pause.
                                    while let Err(e) =
                                        server.create_session(&s, &event("session.created", written.id)).await
                                    {
                                        // The move's pause, or a deadlock victim (see below).
                                        assert!(
                                            matches!(e, RepoError::Unavailable(ref m)
                                                if m.contains("moved") || m.contains("Deadlock found")),
                                            "{e}"
                                        );
                                        tokio::time::sleep(Duration::from_millis(20)).await;
                                    }
                                    s.token_hash
                                }
                                None => acked.lock()[&written.id].1,
                            };
                            acked.lock().insert(written.id, (written, hash));
                            writes += 1;
                        }
                        Err(RepoError::Unavailable(why)) if why.contains("being moved") => {
                            refused.fetch_add(1, Ordering::Relaxed);
                            let at = epoch.elapsed().as_micros() as u64;
                            first_refusal.fetch_min(at, Ordering::Relaxed);
                            last_refusal.fetch_max(at, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        // InnoDB breaks a lock cycle between concurrent writers by rolling
                        // one back whole (1213); the adapter reports it as Unavailable (a 503
                        // with Retry-After at the API). Nothing of it was written or acked,
                        // so the writer carries on, as a client would retry.
                        Err(RepoError::Unavailable(why)) if why.contains("Deadlock found") => {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        Err(e) => panic!("a write failed other than by the move's pause: {e}"),
                    }
                }
                writes
            });
        }
        let mut reads = tokio::task::JoinSet::new();
        for r in 0..2usize {
            let (mover, acked, stop) = (mover.clone(), acked.clone(), stop.clone());
            reads.spawn(async move {
                let mut checked = 0u64;
                while !stop.load(Ordering::Relaxed) && checked < 50_000 {
                    let picked: Vec<(User, strata_core::domain::TokenHash)> =
                        acked.lock().values().skip((checked as usize * 3 + r) % 40).take(4).cloned().collect();
                    for (before, hash) in picked {
                        let read = mover.user_by_id(before.id).await.unwrap().expect("an acknowledged user is there");
                        assert!(
                            read.version >= before.version,
                            "stale read of {}: {:?} < {:?}",
                            before.id,
                            read.version,
                            before.version
                        );
                        let (_, u) =
                            mover.session_with_user(&hash).await.unwrap().expect("an acknowledged session is there");
                        assert_eq!(u.id, before.id);
                        checked += 1;
                    }
                }
                checked
            });
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let started = std::time::Instant::now();
        mover.move_shard(moving, &to, &SystemClock, &|_| {}).await.expect("move");
        let took = started.elapsed();
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::Relaxed);
        let mut writes = 0;
        while let Some(w) = load.join_next().await {
            writes += w.unwrap();
        }
        let mut checked = 0;
        while let Some(c) = reads.join_next().await {
            checked += c.unwrap();
        }
        let (first, last) = (first_refusal.load(Ordering::Relaxed), last_refusal.load(Ordering::Relaxed));
        let paused = Duration::from_micros(last.saturating_sub(first.min(last)));
        eprintln!(
            "{}: move of logical shard {moving} took {took:?}; {writes} writes acknowledged, {} refused with a 503 \
             within {paused:?} (writes settle {:?}); {checked} reads checked, none stale",
            backend.name(),
            refused.load(Ordering::Relaxed),
            options().settle_writes(),
        );
        assert!(writes > 0 && checked > 0);

        // Every acknowledged write is there, through a fresh instance too.
        let fresh_instance = instance(&dbs).await;
        let acknowledged = acked.lock().clone();
        for (id, (user, hash)) in acknowledged {
            assert_eq!(fresh_instance.user_by_id(id).await.unwrap().as_ref(), Some(&user));
            assert_eq!(fresh_instance.user_by_email(&user.email).await.unwrap().map(|u| u.id), Some(id));
            assert!(fresh_instance.session_with_user(&hash).await.unwrap().is_some());
        }
        let status = mover.status().await.unwrap();
        let placed = &status.map[usize::from(moving)];
        assert_eq!((placed.shard.as_str(), placed.step, placed.other.as_deref()), (to.as_str(), None, None));
        let (source, target) = if name(&dbs[1]) == from { (&dbs[1], &dbs[2]) } else { (&dbs[2], &dbs[1]) };
        let source = connect(&StoreOptions::new(source.url.clone())).await.unwrap();
        let target = connect(&StoreOptions::new(target.url.clone())).await.unwrap();
        assert!(users_in(&*source, moving).await.is_empty(), "the old copy is removed");
        let moved = users_in(&*target, moving).await;
        let expected = acked.lock().keys().filter(|id| logical_shard(id.as_uuid(), LOGICAL) == moving).count();
        assert_eq!(moved.len(), expected);
    }

    /// A move interrupted at any point (its future dropped mid-step, as a killed process
    /// leaves it: open transactions roll back, the catalog keeps the step reached) and run
    /// again ends with the shard wholly on the target, its rows on the target only.
    async fn a_killed_move_resumes_when_run_again(backend: Backend) {
        let Some(dbs) = catalog_and_two_shards(backend, "killed shard move").await else { return };
        let store = instance(&dbs).await;
        let logical = 5;
        let mut ids = Vec::new();
        for n in 0..30 {
            let u = user_in(logical, n);
            create(&*store, &u).await;
            ids.push(u.id);
        }
        let mut target_name = name(&dbs[1]);
        let (writes, reads) = (options().settle_writes(), options().settle_reads());
        // Before the copy, during it or the switch, during the cleaning wait, after it.
        let kill_points = [
            Duration::from_millis(10),
            writes + Duration::from_millis(5),
            writes + reads + Duration::from_millis(50),
            writes + reads * 2 + Duration::from_millis(100),
        ];
        for kill_after in kill_points {
            let from = store.shard_map().await.unwrap()[usize::from(logical)].shard.clone();
            if from == target_name {
                target_name = if target_name == name(&dbs[1]) { name(&dbs[2]) } else { name(&dbs[1]) };
            }
            let mover = store.clone();
            let to = target_name.clone();
            let killed = tokio::spawn(async move { mover.move_shard(logical, &to, &SystemClock, &|_| {}).await });
            tokio::time::sleep(kill_after).await;
            killed.abort();
            let placement = store.shard_map().await.unwrap()[usize::from(logical)].clone();
            eprintln!(
                "{}: killed after {kill_after:?} at step {:?}",
                backend.name(),
                placement.step.map(MoveStep::as_str)
            );
            // A second mover with another target is refused while this move is in flight.
            if placement.step.is_some() {
                let other = if target_name == name(&dbs[1]) { name(&dbs[2]) } else { name(&dbs[1]) };
                if other != placement.shard || placement.step == Some(MoveStep::Copying) {
                    assert!(store.move_shard(logical, &other, &SystemClock, &|_| {}).await.is_err());
                }
            }
            store.move_shard(logical, &target_name, &SystemClock, &|_| {}).await.expect("the re-run completes");
            let placement = store.shard_map().await.unwrap()[usize::from(logical)].clone();
            assert_eq!((placement.shard.as_str(), placement.step), (target_name.as_str(), None));
            for id in &ids {
                assert!(store.user_by_id(*id).await.unwrap().is_some());
            }
            for db in &dbs[1..] {
                let direct = connect(&StoreOptions::new(db.url.clone())).await.unwrap();
                let held = users_in(&*direct, logical).await.len();
                assert_eq!(held, if name(db) == target_name { ids.len() } else { 0 }, "rows of {}", name(db));
            }
        }
    }

    /// Claims a create, change or delete left pending are kept if the user row has the
    /// email and released if not; a released email can be registered again.
    async fn pending_claims_are_settled_against_the_rows(backend: Backend) {
        let Some(dbs) = catalog_and_two_shards(backend, "email claim reconciler").await else { return };
        let store = instance(&dbs).await;
        let kept = user("kept@example.com", "Kept");
        create(&*store, &kept).await;
        store.claim_email(&kept.email, kept.id, T0).await.unwrap(); // pending again, as mid-change
        let orphan = user("orphan@example.com", "Orphan");
        store.claim_email(&orphan.email, orphan.id, T0).await.unwrap(); // a create that died
        let again = user("orphan@example.com", "Again");
        assert_eq!(store.create_user(&again, None, &event("user.created", again.id)).await, Err(RepoError::EmailTaken));
        assert_eq!(store.reconcile_claims(SystemClock.now()).await.unwrap(), (1, 1));
        assert_eq!(
            store.email_claim(&kept.email).await.unwrap().map(|c| c.state),
            Some(strata_core::shards::ClaimState::Active)
        );
        assert_eq!(store.email_claim(&orphan.email).await.unwrap(), None);
        create(&*store, &again).await;
        assert_eq!(store.user_by_email(&again.email).await.unwrap().map(|u| u.id), Some(again.id));
        assert_eq!(store.reconcile_claims(SystemClock.now()).await.unwrap(), (0, 0));
        // An email change moves the claim; the old address is free afterwards.
        let mut renamed = kept.clone();
        renamed.email = Email::parse("renamed@example.com").unwrap();
        renamed.version = kept.version.next();
        store
            .update_user(&renamed, kept.version, SessionRevocation::None, &event("user.updated", kept.id))
            .await
            .unwrap();
        assert_eq!(store.user_by_email(&kept.email).await.unwrap(), None);
        assert_eq!(store.user_by_email(&renamed.email).await.unwrap().map(|u| u.id), Some(kept.id));
        create(&*store, &user("kept@example.com", "New owner")).await;
        // A session whose token was not made for its user's shard would never be found.
        let (_, mut s) = session_for(&again);
        s.token_hash.0[0] = s.token_hash.0[0].wrapping_add(1);
        assert!(matches!(
            store.create_session(&s, &event("session.created", again.id)).await,
            Err(RepoError::Internal(_))
        ));
        // Whole-store snapshots span databases with no common transaction: refused.
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        assert!(store.export_snapshot(tx).await.is_err());
    }

    macro_rules! on_every_engine {
        ($($case:ident),* $(,)?) => {
            $(
                mod $case {
                    use super::*;
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn sqlite() {
                        super::$case(Backend::Sqlite).await;
                    }
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn postgres() {
                        super::$case(Backend::Postgres).await;
                    }
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn mysql() {
                        super::$case(Backend::Mysql).await;
                    }
                }
            )*
        };
    }

    on_every_engine!(
        a_move_under_load_loses_nothing,
        a_killed_move_resumes_when_run_again,
        pending_claims_are_settled_against_the_rows,
    );
}

/// PostgreSQL's hot point reads run pipelined on shared connections (`pg_pipeline`): they
/// really do, and a shared connection the server ends costs no read an error.
mod pipelined_reads {
    use super::*;

    /// The backends of this store's shared connections, and the last query each ran.
    async fn shared_backends(admin: &tokio_postgres::Client, app: &str) -> Vec<(i32, String)> {
        let rows = admin
            .query(
                "SELECT pid, query FROM pg_stat_activity WHERE application_name = $1",
                &[&format!("{app}-pipelined")],
            )
            .await
            .unwrap();
        rows.iter().map(|r| (r.get(0), r.get(1))).collect()
    }

    async fn until_shared(
        admin: &tokio_postgres::Client,
        app: &str,
        store: &dyn Store,
        token: &strata_core::domain::TokenHash,
    ) {
        for _ in 0..100 {
            // Reads go through the pool until a shared connection is open.
            assert!(store.session_with_user(token).await.unwrap().is_some());
            if shared_backends(admin, app).await.iter().any(|(_, q)| q.contains("FROM sessions")) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no read ran on a shared connection within 5 s");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_reads_outlive_their_shared_connection() {
        let Some(db) = fresh(Backend::Postgres, "pipelined reads").await else { return };
        let app = format!("pipe{}", std::process::id());
        let store = connect(&StoreOptions::new(format!("{}&application_name={app}", db.url))).await.expect("connect");
        let u = user("pipe@example.com", "Pipe");
        create(&*store, &u).await;
        let (_, session) = session_for(&u);
        store.create_session(&session, &event("session.created", u.id)).await.unwrap();
        let (admin, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);

        until_shared(&admin, &app, &*store, &session.token_hash).await;
        // Many reads at once share the connection (and are answered each their own row).
        let mut reads = tokio::task::JoinSet::new();
        for _ in 0..64 {
            let (store, token) = (store.clone(), session.token_hash);
            reads.spawn(async move { store.session_with_user(&token).await });
        }
        while let Some(found) = reads.join_next().await {
            assert_eq!(found.unwrap().unwrap().map(|(s, _)| s.id), Some(session.id));
        }

        // The server ends every shared connection while reads keep coming: none fails.
        let load = {
            let (store, token, id) = (store.clone(), session.token_hash, u.id);
            tokio::spawn(async move {
                for _ in 0..400 {
                    assert!(store.session_with_user(&token).await.expect("a read failed").is_some());
                    assert!(store.user_by_id(id).await.expect("a read failed").is_some());
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        for (pid, _) in shared_backends(&admin, &app).await {
            admin.execute("SELECT pg_terminate_backend($1)", &[&pid]).await.unwrap();
        }
        load.await.unwrap();
        // And new ones take their place.
        until_shared(&admin, &app, &*store, &session.token_hash).await;
    }
}
