//! Issue 15: groups in Strata's domain — `/v1/groups`, membership rows, who-am-I, events.

use super::*;

async fn create_group(app: &TestApp, body: Value) -> Value {
    let r = app.json(Method::POST, "/v1/groups", Some(ADMIN), &body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.header("etag"), "\"1\"");
    assert_eq!(r.header("location"), format!("/v1/groups/{}", r.body["id"].as_str().unwrap()));
    r.body
}

async fn member_ids(app: &TestApp, group: &str) -> Vec<String> {
    let r = app.get(&format!("/v1/groups/{group}/members?limit=200"), Some(ADMIN)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body["items"].as_array().unwrap().iter().map(|m| m["user_id"].as_str().unwrap().to_owned()).collect()
}

/// Create, read, list, rename, add and remove members, who-am-I, delete — and each
/// change is one version and one event.
async fn groups_crud_and_membership(app: TestApp) {
    let (ann, ann_token) = app.user_with_token("ann@example.com").await;
    let bob = app.register("bob@example.com", "Bob").await;
    let (ann_id, bob_id) = (ann["id"].as_str().unwrap(), bob["id"].as_str().unwrap());
    let g =
        create_group(&app, json!({"display_name": "Engineering 🦀", "external_id": "entra-1", "members": [ann_id]}))
            .await;
    let gid = g["id"].as_str().unwrap();
    assert_eq!(g["display_name"], "Engineering 🦀");
    assert_eq!(g["external_id"], "entra-1");
    assert_eq!(g["version"], 1);
    assert_eq!(member_ids(&app, gid).await, vec![ann_id.to_owned()]);

    // Who-am-I lists the user's groups when asked (and only then: it costs a read).
    let me = app.get("/v1/sessions/current?include=groups", Some(&ann_token)).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.body["groups"], json!([{"id": gid, "display_name": "Engineering 🦀"}]));
    let me = app.get("/v1/sessions/current", Some(&ann_token)).await;
    assert!(me.body.get("groups").is_none(), "{}", me.body);
    let me = app.get("/v1/sessions/current?include=everything", Some(&ann_token)).await;
    assert_eq!((me.status, me.body["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_include")));

    // Adding bob (and ann again) bumps the version once.
    let r = app
        .json(Method::POST, &format!("/v1/groups/{gid}/members"), Some(ADMIN), &json!({"user_ids": [bob_id, ann_id]}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["version"], 2);
    assert_eq!(r.header("etag"), "\"2\"");
    let mut both = vec![ann_id.to_owned(), bob_id.to_owned()];
    both.sort();
    assert_eq!(member_ids(&app, gid).await, both);

    // Rename needs If-Match, and a stale one is refused.
    let path = format!("/v1/groups/{gid}");
    let r = app.json(Method::PATCH, &path, Some(ADMIN), &json!({"display_name": "Eng"})).await;
    r.assert_problem(428, "if_match_required", Some("If-Match"));
    let patch = |etag: &'static str, body: Value| {
        let path = path.clone();
        let app = &app;
        async move {
            let headers = [
                ("content-type", "application/json"),
                ("authorization", "Bearer test-admin-token-0123456789"),
                ("if-match", etag),
            ];
            app.send(Method::PATCH, &path, &headers, Some(Bytes::from(body.to_string()))).await
        }
    };
    patch("\"1\"", json!({"display_name": "Eng"})).await.assert_problem(412, "version_mismatch", Some("If-Match"));
    let r = patch("\"2\"", json!({"display_name": "Eng", "external_id": null})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["display_name"], "Eng");
    assert_eq!(r.body["external_id"], Value::Null);
    assert_eq!(r.body["version"], 3);

    // Lists: by name, paged.
    create_group(&app, json!({"display_name": "Eng"})).await;
    let r = app.get("/v1/groups?display_name=Eng", Some(ADMIN)).await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 2);
    let r = app.get("/v1/groups?limit=1", Some(ADMIN)).await;
    assert_eq!(r.body["items"][0]["id"], gid);
    let cursor = r.body["next_cursor"].as_str().unwrap().to_owned();
    let r = app.get(&format!("/v1/groups?limit=1&cursor={cursor}"), Some(ADMIN)).await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(r.body["next_cursor"], Value::Null);

    // Removing a member touches only that row.
    let r = app
        .send(
            Method::DELETE,
            &format!("/v1/groups/{gid}/members/{ann_id}"),
            &[("authorization", &format!("Bearer {ADMIN}"))],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(member_ids(&app, gid).await, vec![bob_id.to_owned()]);
    let me = app.get("/v1/sessions/current?include=groups", Some(&ann_token)).await;
    assert_eq!(me.body["groups"], json!([]));

    // Every change is in the audit log, about the group, with the admin as actor.
    let entries = super::events::audit_until(&app, &format!("/v1/audit?user_id={gid}"), 5).await;
    let types: Vec<&str> = entries.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["group.created", "group.updated", "group.updated", "group.updated"][..types.len().min(4)]);
    assert_eq!(entries[1]["data"]["members"]["added"].as_array().unwrap().len(), 2);
    assert_eq!(entries[0]["actor"]["type"], "admin");

    // Delete: the group goes, the users stay.
    let r = app.send(Method::DELETE, &path, &[("authorization", &format!("Bearer {ADMIN}"))], None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    app.get(&path, Some(ADMIN)).await.assert_problem(404, "not_found", None);
    assert_eq!(app.get(&format!("/v1/users/{bob_id}"), Some(ADMIN)).await.status, StatusCode::OK);
    let deleted = super::events::audit_until(&app, &format!("/v1/audit?user_id={gid}&type=group.deleted"), 1).await;
    assert_eq!(deleted.len(), 1);
}

/// Only admins manage groups; bad input gets a problem naming the field, and writes nothing.
async fn group_input_and_access(app: TestApp) {
    let (user, token) = app.user_with_token("carol@example.com").await;
    let uid = user["id"].as_str().unwrap();
    app.json(Method::POST, "/v1/groups", Some(&token), &json!({"display_name": "X"})).await.assert_problem(
        403,
        "forbidden",
        None,
    );
    app.get("/v1/groups", None).await.assert_problem(401, "missing_token", Some("Authorization"));
    let app = &app;
    let post = |body: Value| async move { app.json(Method::POST, "/v1/groups", Some(ADMIN), &body).await };
    post(json!({"display_name": " "})).await.assert_problem(422, "required", Some("display_name"));
    post(json!({"display_name": "a\u{0007}"})).await.assert_problem(422, "invalid_character", Some("display_name"));
    post(json!({"display_name": "x".repeat(257)})).await.assert_problem(422, "too_long", Some("display_name"));
    post(json!({"display_name": "X", "members": ["nope"]})).await.assert_problem(
        422,
        "invalid_uuid",
        Some("members[0]"),
    );
    let ghost = uuid::Uuid::now_v7().to_string();
    post(json!({"display_name": "X", "members": [uid, ghost]})).await.assert_problem(
        422,
        "unknown_user",
        Some("members"),
    );
    post(json!({"display_name": "X", "colour": "red"})).await.assert_problem(422, "unknown_field", Some("colour"));
    let many: Vec<String> = (0..1001).map(|_| uuid::Uuid::now_v7().to_string()).collect();
    post(json!({"display_name": "X", "members": many})).await.assert_problem(422, "too_many_members", Some("members"));
    app.get("/v1/groups/not-a-uuid", Some(ADMIN)).await.assert_problem(400, "invalid_uuid", Some("id"));
    app.get(&format!("/v1/groups/{ghost}"), Some(ADMIN)).await.assert_problem(404, "not_found", None);
    app.get(&format!("/v1/groups/{ghost}/members"), Some(ADMIN)).await.assert_problem(404, "not_found", None);
    app.get("/v1/groups?sort=name", Some(ADMIN)).await.assert_problem(400, "unknown_parameter", Some("sort"));
    let r = app.get("/v1/groups", Some(ADMIN)).await;
    assert_eq!(r.body["items"], json!([]), "nothing was written");
    let g = create_group(app, json!({"display_name": "Y"})).await;
    let gid = g["id"].as_str().unwrap();
    app.json(Method::POST, &format!("/v1/groups/{gid}/members"), Some(ADMIN), &json!({"user_ids": []}))
        .await
        .assert_problem(422, "required", Some("user_ids"));
    app.json(Method::POST, &format!("/v1/groups/{gid}/members"), Some(ADMIN), &json!({"user_ids": [ghost]}))
        .await
        .assert_problem(422, "unknown_user", Some("members"));
    assert_eq!(app.get(&format!("/v1/groups/{gid}"), Some(ADMIN)).await.body["version"], 1);
}

api_tests!(sqlite, Backend::Sqlite, [groups_crud_and_membership, group_input_and_access]);
api_tests!(postgres, Backend::Postgres, [groups_crud_and_membership, group_input_and_access]);
api_tests!(mysql, Backend::Mysql, [groups_crud_and_membership, group_input_and_access]);
