mod common;

#[tokio::test]
async fn a_delivery_is_applied_and_visible_at_once() {
    let app = common::spawn_app().await;
    let (id, status) = app
        .deliver_ok(common::fixture("deliveries/01-customer-created-alice.json"))
        .await;
    assert_eq!((id, status.as_str()), (1, "applied"));
    let customer = app.customer("cus_alice_01").await;
    assert_eq!(customer["revision"], 1);
    let app = app.restart().await;
    assert_eq!(app.customer("cus_alice_01").await["revision"], 1);
}
