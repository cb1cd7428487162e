//! Which messages are pushed, and which provider each device's token goes to.

use std::sync::Arc;

use push::{LogProvider, generate_keys};
use samvad_protocol::MessageType;
use serde_json::json;

use crate::fake::Fake;
use crate::{Setup, chat, fcm, webpush};

fn subscription(fake: &Fake) -> String {
    // A real browser key, so the push can be encrypted.
    let (_, p256dh) = generate_keys();
    json!({"endpoint": fake.endpoint("browser"), "keys": {"p256dh": p256dh, "auth": "BTBZMqHH6r4Tts7J_aSIgg"}})
        .to_string()
}

fn vapid() -> push::Vapid {
    push::Vapid::new(&generate_keys().0, "mailto:ops@samvad.test").unwrap()
}

#[tokio::test]
async fn each_token_goes_to_its_own_provider() {
    let fcm_fake = Fake::start().await;
    let push_service = Fake::start().await;
    let setup = Setup::new(
        vec![webpush(vapid()), fcm(&fcm_fake), Arc::new(LogProvider)],
        &[
            ("browser", &subscription(&push_service), 2.1),
            ("phone", "fcm-token-bob", 2.1),
        ],
    )
    .await;

    setup.push(&[chat("m1", "everywhere")]).await;

    let to_fcm = fcm_fake.sends();
    assert_eq!(to_fcm.len(), 1);
    assert_eq!(to_fcm[0].json()["message"]["token"], "fcm-token-bob");
    let to_browser = push_service.sends();
    assert_eq!(to_browser.len(), 1);
    assert_eq!(to_browser[0].path, "/push/browser");
    assert_eq!(setup.sent(), 2);
}

#[tokio::test]
async fn a_subscription_is_never_sent_to_fcm() {
    let fake = Fake::start().await;
    let setup = Setup::new(vec![fcm(&fake)], &[("browser", &subscription(&fake), 2.1)]).await;

    setup.push(&[chat("m1", "hello")]).await;

    assert!(fake.sends().is_empty());
    assert_eq!(setup.failed("no_provider"), 1);
    assert_eq!(setup.tokens().await.len(), 1, "kept for when webpush is on");
}

#[tokio::test]
async fn notifications_and_ephemeral_messages_are_never_pushed() {
    let fake = Fake::start().await;
    let setup = Setup::new(vec![fcm(&fake)], &[("phone", "fcm-token-bob", 2.1)]).await;
    let typing = push_message("t1", |m| m.ephemeral = true);
    let added = push_message("n1", |m| m.kind = MessageType::Notification);

    setup
        .push(&[typing, added, chat("m1", "the real one")])
        .await;

    let sends = fake.sends();
    assert_eq!(sends.len(), 1);
    let pushed = crate::decode_v2(
        sends[0].json()["message"]["data"]["message"]
            .as_str()
            .unwrap(),
    );
    assert_eq!(pushed.id, "m1");
    assert_eq!(setup.sent(), 1);
}

#[tokio::test]
async fn one_token_on_two_devices_is_pushed_once() {
    let fake = Fake::start().await;
    let setup = Setup::new(
        vec![fcm(&fake)],
        &[
            ("phone", "fcm-token-bob", 2.1),
            ("phone-again", "fcm-token-bob", 2.1),
        ],
    )
    .await;

    setup.push(&[chat("m1", "once")]).await;

    assert_eq!(fake.sends().len(), 1);
}

#[tokio::test]
async fn the_log_provider_takes_every_device_that_has_a_token() {
    let setup = Setup::new(
        vec![Arc::new(LogProvider)],
        &[("phone", "fcm-token-bob", 2.1), ("tablet", "", 2.1)],
    )
    .await;

    setup.push(&[chat("m1", "logged only")]).await;

    assert_eq!(setup.sent(), 1);
    assert_eq!(setup.failed("no_provider"), 0);
}

fn push_message(
    id: &str,
    change: impl FnOnce(&mut samvad_protocol::Message),
) -> samvad_protocol::Message {
    let mut m = chat(id, "");
    change(&mut m);
    m
}
