//! Tool pins: replaced per upstream, first use pins once, a change is noted once.

use custos_store::Store;
use custos_test_support::both_backends;

both_backends!(
    first_use_pins_once_and_a_change_is_noted_once,
    approving_replaces_an_upstreams_pins,
);

async fn first_use_pins_once_and_a_change_is_noted_once(store: Store) {
    assert!(
        store
            .pin_tool_first_use("fx", "echo", "d1", 10)
            .await
            .expect("pin")
    );
    assert!(
        !store
            .pin_tool_first_use("fx", "echo", "d2", 11)
            .await
            .expect("pin again")
    );
    let pins = store.list_pins().await.expect("list");
    assert_eq!(pins.len(), 1);
    assert_eq!(
        (pins[0].digest.as_str(), pins[0].pinned_by.as_str()),
        ("d1", "first-use")
    );
    // The same definition is no change; another one is noted once, a third once more.
    assert!(
        !store
            .note_tool_change("fx", "echo", "d1", 12)
            .await
            .expect("note")
    );
    assert!(
        store
            .note_tool_change("fx", "echo", "d2", 13)
            .await
            .expect("note")
    );
    assert!(
        !store
            .note_tool_change("fx", "echo", "d2", 14)
            .await
            .expect("note again")
    );
    assert!(
        store
            .note_tool_change("fx", "echo", "d3", 15)
            .await
            .expect("note")
    );
    assert_eq!(
        store.list_pins().await.expect("list")[0]
            .observed_digest
            .as_deref(),
        Some("d3")
    );
}

async fn approving_replaces_an_upstreams_pins(store: Store) {
    store
        .pin_upstream(
            "fx",
            &[("a".into(), "1".into()), ("b".into(), "2".into())],
            "admin",
            10,
        )
        .await
        .expect("pin");
    store
        .pin_upstream("other", &[("a".into(), "9".into())], "admin", 10)
        .await
        .expect("pin other");
    store
        .pin_upstream("fx", &[("b".into(), "3".into())], "carol", 20)
        .await
        .expect("re-pin");
    let pins: Vec<(String, String, String)> = store
        .list_pins()
        .await
        .expect("list")
        .into_iter()
        .map(|p| (p.upstream, p.tool, p.digest))
        .collect();
    assert_eq!(
        pins,
        [
            ("fx".to_owned(), "b".to_owned(), "3".to_owned()),
            ("other".to_owned(), "a".to_owned(), "9".to_owned())
        ]
    );
}
