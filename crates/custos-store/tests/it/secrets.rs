//! Static secrets: one sealed value per role, replaced in place, listed without the value.

use custos_store::Store;
use custos_test_support::both_backends;

both_backends!(a_role_keeps_one_sealed_value_and_lists_without_it);

async fn a_role_keeps_one_sealed_value_and_lists_without_it(store: Store) {
    assert_eq!(store.static_secret("api").await.expect("get"), None);
    store
        .put_static_secret("api", "v1.k.a.b", 10, "admin")
        .await
        .expect("put");
    store
        .put_static_secret("other", "v1.k.c.d", 11, "admin")
        .await
        .expect("put other");
    store
        .put_static_secret("api", "v1.k.e.f", 20, "carol")
        .await
        .expect("replace");
    assert_eq!(
        store.static_secret("api").await.expect("get").as_deref(),
        Some("v1.k.e.f")
    );
    let all = store.list_static_secrets().await.expect("list");
    let summary: Vec<(&str, i64, &str)> = all
        .iter()
        .map(|s| (s.role.as_str(), s.updated_at, s.updated_by.as_str()))
        .collect();
    assert_eq!(summary, [("api", 20, "carol"), ("other", 11, "admin")]);
}
