//! Labels on servers (SPEC 7.2): set at registration and changed by a merge
//! patch, through REST and through the oslo RPC API with a token; listed
//! and filtered; refused with every bad label named. And never set by a
//! worker: a guest holding the credentials bora issued it cannot reach the
//! API that changes them.

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};

use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;

/// A request with the test token (ignored by an app without tokens).
async fn call(
    app: &TestApp,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = app.http.request(method, app.url(path)).bearer_auth(TOKEN);
    if let Some(b) = body {
        req = req.json(&b);
    }
    split(req.send().await.unwrap()).await
}

async fn register(app: &TestApp, body: Value) -> (StatusCode, Value) {
    call(app, Method::POST, "/v1/servers", Some(body)).await
}

async fn labels_of(app: &TestApp, server: &str) -> Value {
    let (s, view) = call(app, Method::GET, &format!("/v1/servers/{server}"), None).await;
    assert_eq!(s, StatusCode::OK, "{view}");
    view["labels"].clone()
}

async fn patch_labels(app: &TestApp, server: &str, labels: Value) -> (StatusCode, Value) {
    call(
        app,
        Method::PATCH,
        &format!("/v1/servers/{server}"),
        Some(json!({ "labels": labels })),
    )
    .await
}

/// The ids of `GET /v1/servers{query}`, in the order listed.
async fn listed(app: &TestApp, query: &str) -> Vec<String> {
    let (s, list) = call(app, Method::GET, &format!("/v1/servers{query}"), None).await;
    assert_eq!(s, StatusCode::OK, "{query}: {list}");
    list["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["server_id"].as_str().unwrap().to_owned())
        .collect()
}

/// Revokes the test servers (broker users are global, not per vhost).
async fn revoke(app: &TestApp, servers: &[&str]) {
    for s in servers {
        let _ = call(app, Method::DELETE, &format!("/v1/servers/{s}"), None).await;
    }
}

/// The `field`s of a `validation_failed` answer's details.
fn fields(body: &Value) -> Vec<String> {
    body["error"]["details"]
        .as_array()
        .unwrap_or_else(|| panic!("no details: {body}"))
        .iter()
        .map(|d| d["field"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn labels_are_set_at_registration_merged_by_patch_and_kept_by_a_rotation() {
    let app = spawn_app().await;
    let id = unique("lbl");
    let (s, reg) = register(
        &app,
        json!({"server_id": id, "kind": "guest", "labels": {"role": "web", "zone": "a"}}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{reg}");
    assert_eq!(reg["labels"], json!({"role": "web", "zone": "a"}));
    assert_eq!(
        labels_of(&app, &id).await,
        json!({"role": "web", "zone": "a"})
    );

    // A merge patch: set one, add one, remove one; the others stay.
    let (s, view) =
        patch_labels(&app, &id, json!({"role": "db", "rack": "r1", "zone": null})).await;
    assert_eq!(s, StatusCode::OK, "{view}");
    assert_eq!(view["server_id"], id.as_str());
    assert_eq!(view["registered"], true);
    assert_eq!(view["labels"], json!({"rack": "r1", "role": "db"}));
    // Removing what is not there, and an empty patch, change nothing.
    let (s, view) = patch_labels(&app, &id, json!({"never-set": null})).await;
    assert_eq!(s, StatusCode::OK, "{view}");
    assert_eq!(view["labels"], json!({"rack": "r1", "role": "db"}));
    let (s, view) = call(
        &app,
        Method::PATCH,
        &format!("/v1/servers/{id}"),
        Some(json!({})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{view}");
    assert_eq!(view["labels"], json!({"rack": "r1", "role": "db"}));

    // A rotation without labels keeps them; one with labels replaces them.
    let (s, again) = register(&app, json!({"server_id": id})).await;
    assert_eq!(s, StatusCode::OK, "{again}");
    assert_eq!(again["rotated"], true);
    assert_eq!(again["labels"], json!({"rack": "r1", "role": "db"}));
    assert_eq!(
        labels_of(&app, &id).await,
        json!({"rack": "r1", "role": "db"})
    );
    let (s, again) = register(&app, json!({"server_id": id, "labels": {"role": "web"}})).await;
    assert_eq!(s, StatusCode::OK, "{again}");
    assert_eq!(again["labels"], json!({"role": "web"}));
    assert_eq!(labels_of(&app, &id).await, json!({"role": "web"}));
    let (s, again) = register(&app, json!({"server_id": id, "labels": {}})).await;
    assert_eq!(s, StatusCode::OK, "{again}");
    assert_eq!(labels_of(&app, &id).await, json!({}));

    // Unknown servers: 404, whatever the id looks like.
    for unknown in ["never-registered", "not%20an%20id"] {
        let r = patch_labels(&app, unknown, json!({"role": "web"})).await;
        assert_error(&r, StatusCode::NOT_FOUND, "not_found");
    }
    // Gone after a revoke.
    revoke(&app, &[&id]).await;
    let r = patch_labels(&app, &id, json!({"role": "web"})).await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found");
    app.stop().await;
}

#[tokio::test]
async fn the_list_keeps_the_servers_carrying_every_label_given() {
    let app = spawn_app().await;
    let [a, b, c, d] = ["a", "b", "c", "d"].map(|p| unique(&format!("flt{p}")));
    for (id, labels) in [
        (&a, json!({"role": "web", "zone": "a"})),
        (&b, json!({"role": "web", "zone": "b"})),
        (&c, json!({"role": "db", "zone": "a"})),
        (&d, Value::Null),
    ] {
        let (s, reg) = register(&app, json!({"server_id": id, "labels": labels})).await;
        assert_eq!(s, StatusCode::CREATED, "{reg}");
    }
    let ids = |v: &[&String]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // Every view shows its labels ({} for none).
    let (_, all) = call(&app, Method::GET, "/v1/servers", None).await;
    let all = all["servers"].as_array().unwrap().clone();
    assert_eq!(all.len(), 4, "{all:?}");
    assert!(all.iter().all(|s| s["labels"].is_object()), "{all:?}");
    let plain = all.iter().find(|s| s["server_id"] == d.as_str()).unwrap();
    assert_eq!(plain["labels"], json!({}));

    // One label, then two (both must match), in server_id order.
    assert_eq!(listed(&app, "?label=role=web").await, ids(&[&a, &b]));
    assert_eq!(listed(&app, "?label=zone=a").await, ids(&[&a, &c]));
    assert_eq!(
        listed(&app, "?label=role=web&label=zone=a").await,
        ids(&[&a])
    );
    assert_eq!(
        listed(&app, "?label=zone=a&label=role=db").await,
        ids(&[&c])
    );
    assert!(
        listed(&app, "?label=role=web&label=zone=c")
            .await
            .is_empty()
    );
    assert!(listed(&app, "?label=nobody=has").await.is_empty());
    // Percent-encoded as a client would send it; the same label twice.
    assert_eq!(listed(&app, "?label=role%3Dweb").await, ids(&[&a, &b]));
    assert_eq!(
        listed(&app, "?label=role=web&label=role=web").await,
        ids(&[&a, &b])
    );
    // A change of labels is what the list sees next.
    let (s, _) = patch_labels(&app, &b, json!({"zone": "a"})).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        listed(&app, "?label=role=web&label=zone=a").await,
        ids(&[&a, &b])
    );
    revoke(&app, &[&a, &b, &c, &d]).await;
    app.stop().await;
}

#[tokio::test]
async fn bad_labels_are_refused_with_every_one_named() {
    let app = spawn_app().await;
    let id = unique("bad");
    let many = |n: usize| -> Value {
        (0..n)
            .map(|i| (format!("k{i}"), json!("v")))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    // 33 labels at registration: refused before the broker is touched.
    let r = register(&app, json!({"server_id": id, "labels": many(33)})).await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert_eq!(fields(&r.1), ["labels"]);
    assert!(
        r.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 32 labels (got 33)"),
        "{}",
        r.1
    );
    let r = call(&app, Method::GET, &format!("/v1/servers/{id}"), None).await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found");
    // A bad key and a bad value (and a bad server id) at once: each named.
    let r = register(
        &app,
        json!({"server_id": "a b", "labels": {"bad key": "v", "zone": "a/b", "fine": "ok"}}),
    )
    .await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert_eq!(fields(&r.1), ["server_id", "labels.bad key", "labels.zone"]);
    let message = r.1["error"]["message"].as_str().unwrap();
    assert!(message.contains("label key \"bad key\""), "{message}");
    assert!(message.contains("value of label \"zone\""), "{message}");
    for labels in [
        json!({"": "v"}),
        json!({"k": ""}),
        json!({"k": "x".repeat(64)}),
        Value::Object([("x".repeat(64), json!("v"))].into_iter().collect()),
        json!({"k": "é"}),
    ] {
        let r = register(&app, json!({"server_id": id, "labels": labels})).await;
        assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    }
    // Not strings: the body's shape.
    let r = register(&app, json!({"server_id": id, "labels": {"k": 1}})).await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body");

    // 32 is the limit; a patch that would leave 33 is refused whole.
    let (s, reg) = register(&app, json!({"server_id": id, "labels": many(32)})).await;
    assert_eq!(s, StatusCode::CREATED, "{reg}");
    let r = patch_labels(&app, &id, json!({"one-more": "v"})).await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert_eq!(fields(&r.1), ["labels"]);
    // Swapping one for another keeps 32: fine.
    let (s, view) = patch_labels(&app, &id, json!({"one-more": "v", "k0": null})).await;
    assert_eq!(s, StatusCode::OK, "{view}");
    assert_eq!(view["labels"].as_object().unwrap().len(), 32);
    let before = labels_of(&app, &id).await;
    // Bad keys and values in a patch, a removal's key too: each named, and
    // nothing of the patch applied.
    let r = patch_labels(
        &app,
        &id,
        json!({"k1": "fine", "bad key": "v", "zone": "a b", "no/such": null}),
    )
    .await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert_eq!(
        fields(&r.1),
        ["labels.bad key", "labels.no/such", "labels.zone"]
    );
    assert_eq!(labels_of(&app, &id).await, before);
    let r = call(
        &app,
        Method::PATCH,
        &format!("/v1/servers/{id}"),
        Some(json!({"labels": {"k1": 5}})),
    )
    .await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body");
    let r = call(
        &app,
        Method::PATCH,
        &format!("/v1/servers/{id}"),
        Some(json!({"labels": {}, "kind": "oslo"})),
    )
    .await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body");

    // The list's filter: key=value, each bad one named.
    let r = call(&app, Method::GET, "/v1/servers?label=novalue", None).await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert_eq!(fields(&r.1), ["label"]);
    assert!(
        r.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"novalue\" is not key=value"),
        "{}",
        r.1
    );
    let r = call(
        &app,
        Method::GET,
        "/v1/servers?label=novalue&label=k=a%20b&label=role=web",
        None,
    )
    .await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert_eq!(fields(&r.1), ["label", "label"]);
    let r = call(
        &app,
        Method::GET,
        "/v1/servers?label=role=web&label=role=db",
        None,
    )
    .await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    let r = call(&app, Method::GET, "/v1/servers?labels=role=web", None).await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_query");
    revoke(&app, &[&id]).await;
    app.stop().await;
}

#[tokio::test]
async fn over_rpc_a_token_registers_with_labels_and_label_server_merges_them() {
    let app = spawn_app_with(&[("BORA__API__TOKENS", TOKEN)]).await;
    let id = unique("rpc-lbl");
    let mut caller = RpcCaller::connect(&app).await;
    caller.wait_ready(Some(TOKEN)).await;
    let mut rpc = async |method: &str, args: Value, token: Option<&str>| {
        let req = caller.call(method, args, token);
        caller.publish(&req).await;
        caller.reply(Duration::from_secs(10)).await
    };

    let reply = rpc(
        "register_server",
        json!({"server_id": id, "kind": "guest", "labels": {"role": "web", "zone": "a"}}),
        Some(TOKEN),
    )
    .await
    .expect("register_server answered");
    assert!(reply.failure.is_none(), "{reply:?}");
    assert_eq!(reply.result["labels"], json!({"role": "web", "zone": "a"}));
    assert_eq!(
        labels_of(&app, &id).await,
        json!({"role": "web", "zone": "a"})
    );

    // Python's None is JSON null: it removes a label.
    let reply = rpc(
        "label_server",
        json!({"server_id": id, "labels": {"role": "db", "zone": null, "rack": "r1"}}),
        Some(TOKEN),
    )
    .await
    .expect("label_server answered");
    assert!(reply.failure.is_none(), "{reply:?}");
    assert_eq!(reply.result["server_id"], id.as_str());
    assert_eq!(reply.result["labels"], json!({"rack": "r1", "role": "db"}));
    assert_eq!(
        labels_of(&app, &id).await,
        json!({"rack": "r1", "role": "db"})
    );

    // A rotation over RPC without labels keeps them.
    let reply = rpc("register_server", json!({"server_id": id}), Some(TOKEN))
        .await
        .expect("register_server answered");
    assert_eq!(reply.result["rotated"], true, "{reply:?}");
    assert_eq!(reply.result["labels"], json!({"rack": "r1", "role": "db"}));

    // Refusals as oslo failures.
    for (method, args, class, fragment) in [
        (
            "label_server",
            json!({"server_id": id, "labels": {"bad key": "v"}}),
            "ValidationError",
            "bad key",
        ),
        (
            "register_server",
            json!({"server_id": id, "labels": {"zone": "a/b"}}),
            "ValidationError",
            "value of label",
        ),
        (
            "label_server",
            json!({"server_id": "never-registered", "labels": {"role": "web"}}),
            "NotFound",
            "never-registered",
        ),
        (
            "label_server",
            json!({"server_id": id}),
            "ValidationError",
            "labels",
        ),
    ] {
        let reply = rpc(method, args, Some(TOKEN))
            .await
            .unwrap_or_else(|| panic!("{method} refusal answered"));
        let failure = reply
            .failure
            .unwrap_or_else(|| panic!("{method}: no failure"));
        assert!(failure.contains(class), "{method}: {failure}");
        assert!(failure.contains(fragment), "{method}: {failure}");
    }
    // No token, or a wrong one: no answer, and nothing changed.
    for token in [None, Some("wrong-token-0123456789")] {
        let req = caller.call(
            "label_server",
            json!({"server_id": id, "labels": {"role": "hijacked"}}),
            token,
        );
        caller.publish(&req).await;
        caller
            .expect_silence("label_server without a valid token")
            .await;
    }
    assert_eq!(
        labels_of(&app, &id).await,
        json!({"rack": "r1", "role": "db"})
    );
    revoke(&app, &[&id]).await;
    app.stop().await;
}

#[tokio::test]
async fn without_tokens_label_server_over_rpc_is_refused_unanswered() {
    let app = spawn_app().await;
    let id = unique("rpc-open");
    let (s, reg) = register(&app, json!({"server_id": id, "labels": {"role": "web"}})).await;
    assert_eq!(s, StatusCode::CREATED, "{reg}");
    let mut caller = RpcCaller::connect(&app).await;
    // The rest of the RPC API answers without a token...
    caller.wait_ready(None).await;
    // ...but label_server, like register_server, never runs without tokens.
    for token in [None, Some(TOKEN)] {
        let req = caller.call(
            "label_server",
            json!({"server_id": id, "labels": {"role": "db"}}),
            token,
        );
        caller.publish(&req).await;
        caller.expect_silence("label_server without tokens").await;
    }
    assert_eq!(labels_of(&app, &id).await, json!({"role": "web"}));
    revoke(&app, &[&id]).await;
    app.stop().await;
}

/// Publishes `body` with `mandatory` on a fresh confirming channel of
/// `conn`: the broker's confirmation, or its refusal (which closes the
/// channel; the following call sees it).
async fn publish_as(
    conn: &Connection,
    exchange: &str,
    key: &str,
    body: &[u8],
    props: BasicProperties,
) -> Result<Confirmation, lapin::Error> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let confirmation = ch
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            body,
            props,
        )
        .await?
        .await?;
    // A refused publish closes the channel: make sure we see it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    ch.basic_qos(1, Default::default()).await?;
    Ok(confirmation)
}

#[tokio::test]
async fn a_guests_own_broker_credentials_cannot_change_its_labels() {
    let app = spawn_app_with(&[("BORA__API__TOKENS", TOKEN)]).await;
    let id = unique("guest-lbl");
    let (s, reg) = register(
        &app,
        json!({"server_id": id, "kind": "guest", "labels": {"role": "web"}}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{reg}");
    let user = reg["username"].as_str().unwrap().to_owned();
    // What registration let it do: write only to the reply exchange.
    let perms = mgmt::mgmt_get(&format!("permissions/{}/{user}", app.vhost.name)).await;
    assert_eq!(perms["configure"], "^$", "{perms}");
    assert_eq!(
        perms["write"],
        format!("^{}$", app.settings.amqp.reply_queue),
        "{perms}"
    );

    let guest = Connection::connect(
        reg["amqp_url"].as_str().unwrap(),
        ConnectionProperties::default(),
    )
    .await
    .unwrap();
    // The RPC API's queues exist (the dispatcher consumes them).
    let mut operator = RpcCaller::connect(&app).await;
    operator.wait_ready(Some(TOKEN)).await;
    // A label_server call as complete as an operator's, token included:
    // what stops it is the broker, before the API sees anything.
    let req = operator.call(
        "label_server",
        json!({"server_id": id, "labels": {"role": "db", "pwned": "yes"}}),
        Some(TOKEN),
    );
    let body = req.encode();
    let s = &app.settings;
    let rpc_server_queue = format!("{}.{}", s.rpc.topic, s.rpc_server_name());
    // Into the exchange the RPC API listens on, by topic and by server:
    // refused. Through the default exchange straight into its queue: refused.
    for (exchange, key) in [
        (s.amqp.exchange.as_str(), s.rpc.topic.as_str()),
        (s.amqp.exchange.as_str(), rpc_server_queue.as_str()),
        ("", s.rpc.topic.as_str()),
    ] {
        let err = publish_as(&guest, exchange, key, &body, BasicProperties::default())
            .await
            .expect_err("the broker let a guest publish an RPC call");
        let text = err.to_string();
        assert!(
            text.contains("ACCESS_REFUSED"),
            "publish to {exchange:?} / {key}: {text}"
        );
    }
    // The one exchange it may write to routes nothing to the RPC API: the
    // call comes back unroutable.
    let back = publish_as(
        &guest,
        &s.amqp.reply_queue,
        &s.rpc.topic,
        &body,
        BasicProperties::default().with_user_id(user.as_str().into()),
    )
    .await
    .expect("a guest may publish to the reply exchange");
    assert!(
        back.take_message().is_some(),
        "a call into the reply exchange reached a queue"
    );
    // And what it may route there, into the results queue, is not a call.
    let into_results = publish_as(
        &guest,
        &s.amqp.reply_queue,
        &s.amqp.reply_queue,
        &body,
        BasicProperties::default().with_user_id(user.as_str().into()),
    )
    .await
    .expect("a guest may publish to the reply exchange");
    assert!(matches!(into_results, Confirmation::Ack(None)));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(labels_of(&app, &id).await, json!({"role": "web"}));

    // The same call from the operator, who may publish there, does change
    // them: it was the guest's permissions that stopped it.
    let req = operator.call(
        "label_server",
        json!({"server_id": id, "labels": {"role": "db"}}),
        Some(TOKEN),
    );
    operator.publish(&req).await;
    let reply = operator
        .reply(Duration::from_secs(10))
        .await
        .expect("the operator's call answered");
    assert!(reply.failure.is_none(), "{reply:?}");
    assert_eq!(labels_of(&app, &id).await, json!({"role": "db"}));
    let _ = guest.close(200, "bye".into()).await;
    revoke(&app, &[&id]).await;
    app.stop().await;
}

#[tokio::test]
async fn servers_matching_gives_the_registered_servers_carrying_every_label_by_id() {
    let app = spawn_app().await;
    let [a, b, c] = ["a", "b", "c"].map(|p| unique(&format!("match{p}")));
    for (id, labels) in [
        (&c, json!({"role": "web", "zone": "a"})),
        (&a, json!({"role": "web", "zone": "b"})),
        (&b, json!({"role": "db"})),
    ] {
        let (s, reg) = register(&app, json!({"server_id": id, "labels": labels})).await;
        assert_eq!(s, StatusCode::CREATED, "{reg}");
    }
    // A server only seen in a heartbeat matches nothing, even labelled.
    let store = bora::store::Store::open(&app.store.url, 2).await.unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.touch_servers(&["seen-only"], bora::store::now_us())
        .await
        .unwrap();
    tx.set_server_labels("seen-only", &[("role".to_owned(), "web".to_owned())].into())
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let wanted = |pairs: &[(&str, &str)]| -> bora::domain::Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    let mut tx = store.begin().await.unwrap();
    let ids = |rows: Vec<bora::store::ServerRow>| -> Vec<String> {
        rows.into_iter().map(|r| r.server_id).collect()
    };
    let web = tx
        .servers_matching(&wanted(&[("role", "web")]))
        .await
        .unwrap();
    assert!(web.iter().all(|r| r.registered));
    assert_eq!(web[0].labels, wanted(&[("role", "web"), ("zone", "b")]));
    assert_eq!(ids(web), [a.clone(), c.clone()]);
    let both = tx
        .servers_matching(&wanted(&[("role", "web"), ("zone", "a")]))
        .await
        .unwrap();
    assert_eq!(ids(both), [c.as_str()]);
    let none = tx
        .servers_matching(&wanted(&[("role", "web"), ("zone", "c")]))
        .await
        .unwrap();
    assert!(none.is_empty());
    let every = tx.servers_matching(&wanted(&[])).await.unwrap();
    assert_eq!(ids(every), [a.clone(), b.clone(), c.clone()]);
    // Every read of a server row carries its labels.
    let rows = tx.servers_by_ids(&[b.as_str()]).await.unwrap();
    assert_eq!(rows[0].labels, wanted(&[("role", "db")]));
    drop(tx);
    let row = store.server(&c).await.unwrap().unwrap();
    assert_eq!(row.labels, wanted(&[("role", "web"), ("zone", "a")]));
    store.close().await;
    revoke(&app, &[&a, &b, &c]).await;
    app.stop().await;
}
