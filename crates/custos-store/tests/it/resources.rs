//! Registry resources: versions, history, deletes, listing, atomic apply.

use std::sync::atomic::{AtomicU64, Ordering};

use custos_store::{AppliedChange, ChangeOp, ResourceWrite, Store, StoreError};
use custos_test_support::both_backends;
use serde_json::json;

use super::tamper::exec;

both_backends!(
    apply_creates_then_bumps_version_and_skips_unchanged,
    delete_keeps_history_and_recreate_continues_the_version_line,
    list_is_by_name_within_a_kind,
    apply_of_several_items_is_all_or_nothing,
    one_apply_may_touch_the_same_item_twice,
    key_order_alone_is_no_change,
    ids_are_kept_by_updates_and_new_after_a_re_create,
    concurrent_applies_to_one_resource_keep_one_version_line,
);

fn item(kind: &str, name: &str, spec: serde_json::Value) -> ResourceWrite {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    ResourceWrite {
        kind: kind.to_owned(),
        name: name.to_owned(),
        spec,
        uid_if_created: format!(
            "{}_{}",
            kind.to_ascii_lowercase(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ),
    }
}

/// An expected change; compared with [`blank`]ed ids (ids have their own test).
fn change(kind: &str, name: &str, version: i64, op: ChangeOp) -> AppliedChange {
    AppliedChange {
        kind: kind.to_owned(),
        name: name.to_owned(),
        uid: String::new(),
        version,
        op,
    }
}

fn blank(changes: Vec<AppliedChange>) -> Vec<AppliedChange> {
    changes
        .into_iter()
        .map(|c| AppliedChange {
            uid: String::new(),
            ..c
        })
        .collect()
}

fn history_ops(h: &[(i64, String, i64, String)]) -> Vec<(i64, &str)> {
    h.iter().map(|(v, op, _, _)| (*v, op.as_str())).collect()
}

async fn apply_creates_then_bumps_version_and_skips_unchanged(store: Store) {
    let v1 = json!({"command": ["a"], "tiers": {"x": 1}});
    let v2 = json!({"command": ["a"], "tiers": {"x": 2}});

    let out = store
        .apply_resources(&[item("Upstream", "u", v1.clone())], "alice", 1000)
        .await
        .expect("create");
    assert_eq!(
        blank(out),
        vec![change("Upstream", "u", 1, ChangeOp::Created)]
    );

    let out = store
        .apply_resources(&[item("Upstream", "u", v1.clone())], "bob", 2000)
        .await
        .expect("same again");
    assert_eq!(
        blank(out),
        vec![change("Upstream", "u", 1, ChangeOp::Unchanged)]
    );
    // Unchanged writes nothing: the row still says who created it and when.
    let row = store
        .get_resource("Upstream", "u")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(
        (row.version, row.updated_at, row.updated_by.as_str()),
        (1, 1000, "alice")
    );
    assert_eq!(row.spec, v1);

    let out = store
        .apply_resources(&[item("Upstream", "u", v2.clone())], "carol", 3000)
        .await
        .expect("update");
    assert_eq!(
        blank(out),
        vec![change("Upstream", "u", 2, ChangeOp::Updated)]
    );
    let row = store
        .get_resource("Upstream", "u")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(row.kind, "Upstream");
    assert_eq!(row.name, "u");
    assert_eq!(
        (row.version, row.updated_at, row.updated_by.as_str()),
        (2, 3000, "carol")
    );
    assert_eq!(row.spec, v2);

    let h = store
        .resource_history("Upstream", "u")
        .await
        .expect("history");
    assert_eq!(
        h,
        vec![
            (1, "created".to_owned(), 1000, "alice".to_owned()),
            (2, "updated".to_owned(), 3000, "carol".to_owned()),
        ]
    );
    // Same name, other kind: a different resource.
    assert_eq!(
        store.get_resource("Template", "u").await.expect("get"),
        None
    );
    assert!(
        store
            .resource_history("Template", "u")
            .await
            .expect("history")
            .is_empty()
    );
}

async fn delete_keeps_history_and_recreate_continues_the_version_line(store: Store) {
    store
        .apply_resources(&[item("Agent", "a", json!({"v": 1}))], "op", 1)
        .await
        .expect("create");
    store
        .apply_resources(&[item("Agent", "a", json!({"v": 2}))], "op", 2)
        .await
        .expect("update");

    let gone = store
        .delete_resource("Agent", "a", "op2", 3)
        .await
        .expect("delete");
    assert_eq!(
        gone.map(|g| blank(vec![g])),
        Some(vec![change("Agent", "a", 2, ChangeOp::Deleted)])
    );
    assert_eq!(store.get_resource("Agent", "a").await.expect("get"), None);
    assert!(
        store
            .list_resources("Agent")
            .await
            .expect("list")
            .is_empty()
    );
    assert_eq!(
        store
            .delete_resource("Agent", "a", "op2", 4)
            .await
            .expect("delete again"),
        None,
        "deleting what is gone is a no-op"
    );
    assert_eq!(
        store
            .delete_resource("Agent", "never", "op2", 4)
            .await
            .expect("delete unknown"),
        None
    );

    // Re-created with the very first spec: still a new version, never version 1 again.
    let out = store
        .apply_resources(&[item("Agent", "a", json!({"v": 1}))], "op3", 5)
        .await
        .expect("re-create");
    assert_eq!(blank(out), vec![change("Agent", "a", 3, ChangeOp::Created)]);
    let row = store
        .get_resource("Agent", "a")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!((row.version, row.spec), (3, json!({"v": 1})));

    let h = store.resource_history("Agent", "a").await.expect("history");
    assert_eq!(
        history_ops(&h),
        vec![
            (1, "created"),
            (2, "updated"),
            (2, "deleted"),
            (3, "created")
        ]
    );
    assert_eq!(h[2].3, "op2", "the delete names who deleted");
}

async fn list_is_by_name_within_a_kind(store: Store) {
    let items = vec![
        item("Template", "charlie", json!({})),
        item("Template", "alpha", json!({})),
        item("Upstream", "aaa", json!({})),
        item("Template", "bravo", json!({})),
    ];
    let out = store.apply_resources(&items, "op", 1).await.expect("apply");
    assert_eq!(out.len(), 4);
    assert!(
        out.iter()
            .all(|c| c.op == ChangeOp::Created && c.version == 1)
    );
    let names: Vec<String> = store
        .list_resources("Template")
        .await
        .expect("list")
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["alpha", "bravo", "charlie"]);
    let ups = store.list_resources("Upstream").await.expect("list");
    assert_eq!(ups.len(), 1);
    assert_eq!(ups[0].name, "aaa");
    assert!(
        store
            .list_resources("Agent")
            .await
            .expect("list")
            .is_empty()
    );
}

async fn apply_of_several_items_is_all_or_nothing(store: Store) {
    store
        .apply_resources(&[item("Template", "existing", json!({"v": 1}))], "op", 1)
        .await
        .expect("seed");
    // Make the database refuse one particular row, the way a constraint or a full disk would.
    let trigger = match store.backend() {
        "sqlite" => {
            "CREATE TRIGGER refuse_boom BEFORE INSERT ON resources WHEN NEW.name = 'boom' \
             BEGIN SELECT RAISE(ABORT, 'refused'); END;"
        }
        _ => {
            "CREATE FUNCTION refuse_boom() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN IF NEW.name = 'boom' THEN RAISE EXCEPTION 'refused'; END IF; RETURN NEW; END $$; \
             CREATE TRIGGER refuse_boom BEFORE INSERT ON resources \
             FOR EACH ROW EXECUTE FUNCTION refuse_boom();"
        }
    };
    exec(&store, trigger).await;

    let items = vec![
        item("Template", "new", json!({"v": 1})),
        item("Template", "existing", json!({"v": 2})),
        item("Template", "boom", json!({"v": 1})),
    ];
    let err = store
        .apply_resources(&items, "op", 2)
        .await
        .expect_err("the third item is refused");
    assert!(matches!(err, StoreError::Database(_)), "{err:?}");

    // Nothing of the failed apply remains: no new row, no update, no history.
    assert_eq!(
        store.get_resource("Template", "new").await.expect("get"),
        None
    );
    let existing = store
        .get_resource("Template", "existing")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!((existing.version, existing.spec), (1, json!({"v": 1})));
    assert!(
        store
            .resource_history("Template", "new")
            .await
            .expect("history")
            .is_empty()
    );
    assert_eq!(
        history_ops(
            &store
                .resource_history("Template", "existing")
                .await
                .expect("history")
        ),
        vec![(1, "created")]
    );

    // And the store still works: the same apply without the refused item succeeds whole.
    let out = store
        .apply_resources(&items[..2], "op", 3)
        .await
        .expect("apply");
    assert_eq!(
        blank(out),
        vec![
            change("Template", "new", 1, ChangeOp::Created),
            change("Template", "existing", 2, ChangeOp::Updated),
        ]
    );
}

async fn one_apply_may_touch_the_same_item_twice(store: Store) {
    // Later items see earlier ones of the same transaction.
    let out = store
        .apply_resources(
            &[
                item("Upstream", "u", json!({"v": 1})),
                item("Upstream", "u", json!({"v": 2})),
                item("Upstream", "u", json!({"v": 2})),
            ],
            "op",
            1,
        )
        .await
        .expect("apply");
    assert_eq!(
        blank(out),
        vec![
            change("Upstream", "u", 1, ChangeOp::Created),
            change("Upstream", "u", 2, ChangeOp::Updated),
            change("Upstream", "u", 2, ChangeOp::Unchanged),
        ]
    );
}

async fn key_order_alone_is_no_change(store: Store) {
    let a: serde_json::Value =
        serde_json::from_str(r#"{"a": 1, "b": {"x": [1, 2], "y": null}}"#).expect("json");
    let b: serde_json::Value =
        serde_json::from_str(r#"{"b": {"y": null, "x": [1, 2]}, "a": 1}"#).expect("json");
    store
        .apply_resources(&[item("Template", "t", a)], "op", 1)
        .await
        .expect("create");
    let out = store
        .apply_resources(&[item("Template", "t", b)], "op", 2)
        .await
        .expect("reorder");
    assert_eq!(
        blank(out),
        vec![change("Template", "t", 1, ChangeOp::Unchanged)]
    );
}

async fn concurrent_applies_to_one_resource_keep_one_version_line(store: Store) {
    // Several operators (or replicas) changing one resource at once: every change gets its
    // own version, and history has each version once.
    store
        .apply_resources(&[item("Template", "t", json!({"n": 0}))], "op", 0)
        .await
        .expect("create");
    let mut handles = Vec::new();
    for n in 1..=8 {
        let s = store.clone();
        handles.push(tokio::spawn(async move {
            s.apply_resources(&[item("Template", "t", json!({ "n": n }))], "op", n)
                .await
        }));
    }
    let mut versions = Vec::new();
    for h in handles {
        let out = h.await.expect("join").expect("apply");
        assert_eq!(out[0].op, ChangeOp::Updated);
        versions.push(out[0].version);
    }
    versions.sort_unstable();
    assert_eq!(
        versions,
        (2..=9).collect::<Vec<_>>(),
        "each change its own version"
    );
    let h = store
        .resource_history("Template", "t")
        .await
        .expect("history");
    let mut hv: Vec<i64> = h.iter().map(|(v, _, _, _)| *v).collect();
    hv.sort_unstable();
    assert_eq!(hv, (1..=9).collect::<Vec<_>>());
    let row = store
        .get_resource("Template", "t")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(row.version, 9);

    // The same for a resource that does not exist yet: one create, the rest updates.
    let mut handles = Vec::new();
    for n in 1..=4 {
        let s = store.clone();
        handles.push(tokio::spawn(async move {
            s.apply_resources(&[item("Agent", "new", json!({ "n": n }))], "op", n)
                .await
        }));
    }
    let mut outcomes = Vec::new();
    for h in handles {
        let out = h
            .await
            .expect("join")
            .expect("a concurrent create is not an error");
        outcomes.push((out[0].version, out[0].op));
    }
    outcomes.sort_by_key(|(v, _)| *v);
    assert_eq!(
        outcomes,
        vec![
            (1, ChangeOp::Created),
            (2, ChangeOp::Updated),
            (3, ChangeOp::Updated),
            (4, ChangeOp::Updated),
        ]
    );
}

async fn ids_are_kept_by_updates_and_new_after_a_re_create(store: Store) {
    let first = item("Agent", "a", json!({"v": 1}));
    let created = store
        .apply_resources(std::slice::from_ref(&first), "op", 1)
        .await
        .expect("create");
    assert_eq!(created[0].uid, first.uid_if_created);
    // An update (whatever id it offers) and an unchanged apply keep the id.
    for (spec, at) in [(json!({"v": 2}), 2), (json!({"v": 2}), 3)] {
        let out = store
            .apply_resources(&[item("Agent", "a", spec)], "op", at)
            .await
            .expect("apply");
        assert_eq!(out[0].uid, first.uid_if_created);
    }
    let row = store
        .get_resource("Agent", "a")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(row.uid, first.uid_if_created);
    let gone = store
        .delete_resource("Agent", "a", "op", 4)
        .await
        .expect("delete")
        .expect("existed");
    assert_eq!(gone.uid, first.uid_if_created);
    // Same name again: another registration, another id.
    let again = item("Agent", "a", json!({"v": 1}));
    let out = store
        .apply_resources(std::slice::from_ref(&again), "op", 5)
        .await
        .expect("re-create");
    assert_eq!(out[0].uid, again.uid_if_created);
    assert_ne!(out[0].uid, first.uid_if_created);
    // Two resources can never share an id.
    let mut dup = item("Template", "t", json!({}));
    dup.uid_if_created = again.uid_if_created.clone();
    assert!(store.apply_resources(&[dup], "op", 6).await.is_err());
}
