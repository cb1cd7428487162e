//! The timeline contract (PROTOCOL §7): seqs per conversation, cursors per device, read
//! positions per user, membership bounds, retention.

use samvad_protocol::{Channel, Message};
use samvad_store::{Ack, Appended, Conv, DeviceRef, NewEntry, Page, Position, TimelineStore};

pub fn entry(conv: &Conv, from: &str, device: &str, id: &str) -> NewEntry {
    let destination = match conv {
        Conv::Direct { low, high } => if low == from { high } else { low }.clone(),
        Conv::Group(id) => id.clone(),
    };
    NewEntry {
        conv: conv.clone(),
        device: device.into(),
        message: Message {
            id: id.into(),
            source: from.into(),
            destination,
            channel: if matches!(conv, Conv::Group(_)) {
                Channel::Group
            } else {
                Channel::Individual
            },
            content: format!(r#"{{"text":"{id}"}}"#).into_bytes(),
            ..Message::default()
        },
        leaving: Vec::new(),
    }
}

fn device(user: &str, device: &str) -> DeviceRef {
    DeviceRef {
        user: user.into(),
        device: device.into(),
    }
}

/// The conversations where `d` is owed entries.
async fn owed_in(s: &dyn TimelineStore, d: &DeviceRef) -> Vec<Position> {
    let all = s.positions(d, None).await.unwrap();
    all.into_iter().filter(Position::owed).collect()
}

fn seqs(window: &samvad_store::Window) -> Vec<u64> {
    window.entries.iter().map(|e| e.seq).collect()
}

pub async fn contract(s: &dyn TimelineStore) {
    let chat = Conv::direct("ann", "bob");
    let phone = device("bob", "phone");
    assert!(s.register(&phone).await.unwrap(), "a new device");
    assert!(!s.register(&phone).await.unwrap(), "seen before");

    // One sequence for both directions of a 1:1 chat; a repeat is found, not stored.
    let appended = s
        .append(&[
            entry(&chat, "ann", "default", "a1"),
            entry(&chat, "bob", "phone", "b1"),
            entry(&chat, "ann", "default", "a2"),
        ])
        .await
        .unwrap();
    assert_eq!(
        appended,
        [Appended::New(1), Appended::New(2), Appended::New(3)]
    );
    assert_eq!(
        s.append(&[
            entry(&chat, "ann", "default", "a1"),
            entry(&chat, "bob", "phone", "a1"),
        ])
        .await
        .unwrap(),
        [Appended::Repeat(1), Appended::New(4)],
        "the same id from another sender is another message"
    );
    assert_eq!(s.append(&[]).await.unwrap(), [], "nothing to store");
    // A repeat amid new entries takes no seq, and none after it is skipped.
    let other = Conv::direct("ivy", "jon");
    s.append(&[
        entry(&other, "ivy", "default", "i1"),
        entry(&other, "jon", "default", "j1"),
    ])
    .await
    .unwrap();
    assert_eq!(
        s.append(&[
            entry(&other, "ivy", "default", "i2"),
            entry(&other, "ivy", "default", "i1"),
            entry(&other, "jon", "default", "j2"),
            entry(&chat, "bob", "phone", "a1"),
        ])
        .await
        .unwrap(),
        [
            Appended::New(3),
            Appended::Repeat(1),
            Appended::New(4),
            Appended::Repeat(4)
        ]
    );
    let whole = s.window(&other, Page::Latest, 0, 10).await.unwrap();
    assert_eq!(seqs(&whole), [1, 2, 3, 4]);

    // Paging, oldest first within a page.
    let latest = s.window(&chat, Page::Latest, 0, 2).await.unwrap();
    assert_eq!((seqs(&latest), latest.more), (vec![3, 4], true));
    assert_eq!(latest.entries[0].message.id, "a2");
    assert_eq!(latest.entries[0].device, "default");
    let before = s.window(&chat, Page::Before(3), 0, 5).await.unwrap();
    assert_eq!((seqs(&before), before.more), (vec![1, 2], false));
    let after = s.window(&chat, Page::After(1), 0, 2).await.unwrap();
    assert_eq!((seqs(&after), after.more), (vec![2, 3], true));
    let floored = s.window(&chat, Page::After(0), 2, 10).await.unwrap();
    assert_eq!(seqs(&floored), [3, 4], "nothing at or below the floor");
    assert_eq!(
        s.window(&Conv::direct("x", "y"), Page::Latest, 0, 5)
            .await
            .unwrap()
            .entries,
        []
    );

    // A device registered now owes nothing of what was stored before it.
    let laptop = device("bob", "laptop");
    assert!(s.register(&laptop).await.unwrap());
    assert_eq!(owed_in(s, &laptop).await, []);
    let at = s.positions(&laptop, Some(&chat)).await.unwrap();
    assert_eq!(
        at.iter()
            .map(|p| (p.cursor, p.last_seq))
            .collect::<Vec<_>>(),
        [(4, 4)],
        "where it stands, owed or not"
    );
    assert_eq!(
        s.positions(&laptop, Some(&Conv::direct("bob", "zed")))
            .await
            .unwrap(),
        [],
        "no part in it"
    );
    let owed = owed_in(s, &phone).await;
    assert_eq!(owed.len(), 1);
    assert_eq!(
        (
            &owed[0].conv,
            owed[0].cursor,
            owed[0].last_seq,
            owed[0].first_seq
        ),
        (&chat, 0, 4, 1)
    );

    // One device's acks move only its own cursor, and never back.
    s.ack(&[(phone.clone(), Ack::Id("b1".into()))])
        .await
        .unwrap();
    assert_eq!(owed_in(s, &phone).await[0].cursor, 2);
    s.append(&[entry(&chat, "ann", "default", "a3")])
        .await
        .unwrap();
    assert_eq!(owed_in(s, &laptop).await[0].cursor, 4, "laptop: new entry");
    s.ack(&[
        (
            phone.clone(),
            Ack::Upto {
                conv: chat.clone(),
                seq: 5,
            },
        ),
        (
            phone.clone(),
            Ack::Upto {
                conv: chat.clone(),
                seq: 1,
            },
        ),
        (
            device("cat", "default"),
            Ack::Upto {
                conv: chat.clone(),
                seq: 5,
            },
        ),
        (phone.clone(), Ack::Id("no-such-id".into())),
    ])
    .await
    .unwrap();
    assert_eq!(owed_in(s, &phone).await, [], "acked through 5");
    assert_eq!(owed_in(s, &laptop).await.len(), 1, "laptop still owed");
    s.ack(&[(
        laptop.clone(),
        Ack::Upto {
            conv: chat.clone(),
            seq: 1_000_000,
        },
    )])
    .await
    .unwrap();
    let at = s.positions(&laptop, Some(&chat)).await.unwrap();
    assert_eq!(
        (at[0].cursor, at[0].last_seq),
        (5, 5),
        "never past what is stored"
    );
    assert!(!s.register(&laptop).await.unwrap());
    assert_eq!(owed_in(s, &device("cat", "default")).await, []);

    // Read positions per user, and unread counts from others.
    assert_eq!(
        s.last_of(&chat, &["a1".into(), "a3".into(), "nope".into()])
            .await
            .unwrap(),
        Some(5)
    );
    assert_eq!(s.last_of(&chat, &["nope".into()]).await.unwrap(), None);
    let bob_view = s.conversation("bob", &chat).await.unwrap().unwrap();
    assert_eq!(
        (bob_view.last_seq, bob_view.read_seq, bob_view.unread),
        (5, 0, 3)
    );
    assert_eq!(s.read("bob", &chat, 3).await.unwrap(), Some(3));
    assert_eq!(
        s.read("bob", &chat, 1).await.unwrap(),
        Some(3),
        "never back"
    );
    assert_eq!(
        s.conversation("bob", &chat).await.unwrap().unwrap().unread,
        1
    );
    assert_eq!(s.read("cat", &chat, 3).await.unwrap(), None, "an outsider");
    assert!(s.conversation("cat", &chat).await.unwrap().is_none());

    // A group: members see it from when they joined.
    let group = Conv::group("g1");
    s.join("g1", &["ann".into(), "bob".into()]).await.unwrap();
    s.append(&[entry(&group, "ann", "default", "g-1")])
        .await
        .unwrap();
    s.join("g1", &["cat".into()]).await.unwrap();
    s.join("g1", &["ann".into()]).await.unwrap();
    s.append(&[entry(&group, "bob", "phone", "g-2")])
        .await
        .unwrap();
    let cat = s.conversation("cat", &group).await.unwrap().unwrap();
    assert_eq!((cat.since_seq, cat.last_seq, cat.unread), (1, 2, 1));
    assert_eq!(
        s.conversation("ann", &group)
            .await
            .unwrap()
            .unwrap()
            .since_seq,
        0,
        "joining again changes nothing"
    );
    let cat_owed = owed_in(s, &device("cat", "default")).await;
    assert_eq!(cat_owed.len(), 1);
    assert_eq!((cat_owed[0].cursor, cat_owed[0].last_seq), (1, 2));
    let ann = s.conversations("ann").await.unwrap();
    assert_eq!(
        ann.iter().map(|c| c.conv.clone()).collect::<Vec<_>>(),
        [group.clone(), chat.clone()],
        "most recently active first"
    );

    // A removal: the notice ends the part where it is stored; the removed member's devices are
    // owed everything up to it, and nothing after.
    let mut removal = entry(&group, "ann", "", "rm-bob");
    removal.leaving = vec!["bob".into()];
    assert_eq!(s.append(&[removal]).await.unwrap(), [Appended::New(3)]);
    s.append(&[entry(&group, "ann", "default", "g-3")])
        .await
        .unwrap();
    assert!(
        s.conversation("bob", &group).await.unwrap().is_none(),
        "gone from the list"
    );
    assert!(
        s.conversations("bob")
            .await
            .unwrap()
            .iter()
            .all(|c| c.conv != group)
    );
    let ended = owed_in(s, &phone).await;
    let ended: Vec<_> = ended.iter().filter(|o| o.conv == group).collect();
    assert_eq!(ended.len(), 1, "owed up to the notice of the removal");
    assert_eq!(
        (ended[0].cursor, ended[0].last_seq, ended[0].until),
        (0, 3, Some(3))
    );
    assert_eq!(
        owed_in(s, &device("cat", "default")).await[0].last_seq,
        4,
        "the others go on"
    );
    let watch = device("bob", "watch");
    assert!(s.register(&watch).await.unwrap());
    assert!(
        owed_in(s, &watch).await.iter().all(|o| o.conv != group),
        "a device that first logs in after the removal is owed nothing of it"
    );
    s.ack(&[(
        phone.clone(),
        Ack::Upto {
            conv: group.clone(),
            seq: 3,
        },
    )])
    .await
    .unwrap();
    assert!(
        s.positions(&phone, Some(&group)).await.unwrap().is_empty(),
        "once acked to its end, a former member is owed nothing"
    );
    s.join("g1", &["bob".into()]).await.unwrap();
    let again = s.conversation("bob", &group).await.unwrap().unwrap();
    assert_eq!(
        (again.since_seq, again.unread),
        (4, 0),
        "added again: a new part"
    );

    // A device is never sent its own messages, so its cursor passes them by itself.
    let dan = Conv::direct("bob", "dan");
    s.append(&[
        entry(&dan, "dan", "default", "d1"),
        entry(&dan, "bob", "phone", "p1"),
        entry(&dan, "bob", "phone", "p2"),
    ])
    .await
    .unwrap();
    let upto = |seq| Ack::Upto {
        conv: dan.clone(),
        seq,
    };
    s.ack(&[(phone.clone(), upto(1)), (laptop.clone(), upto(1))])
        .await
        .unwrap();
    let at = |d: &DeviceRef| {
        let d = d.clone();
        let dan = dan.clone();
        async move { s.positions(&d, Some(&dan)).await.unwrap()[0].cursor }
    };
    assert_eq!(at(&phone).await, 3, "past its own two");
    assert_eq!(
        at(&laptop).await,
        1,
        "another device of the user is sent them"
    );
    s.append(&[entry(&dan, "bob", "phone", "p3")])
        .await
        .unwrap();
    assert_eq!(at(&phone).await, 4, "and past what it sent since");
    assert_eq!(at(&laptop).await, 1);
    // A run of its own longer than a store reads at a time, then a reply: passed up to it.
    let run: Vec<NewEntry> = (0..40)
        .map(|i| entry(&dan, "bob", "phone", &format!("r{i}")))
        .collect();
    s.append(&run).await.unwrap();
    s.append(&[entry(&dan, "dan", "default", "d2")])
        .await
        .unwrap();
    s.ack(&[(phone.clone(), upto(4))]).await.unwrap();
    assert_eq!(
        at(&phone).await,
        44,
        "past its own forty, not past the reply"
    );

    // A device unlinked and linked again starts afresh: owed nothing from before.
    assert_eq!(owed_in(s, &laptop).await.len(), 1);
    s.unregister(&laptop).await.unwrap();
    s.unregister(&laptop).await.unwrap();
    assert!(s.register(&laptop).await.unwrap(), "new again");
    assert_eq!(owed_in(s, &laptop).await, []);

    // Retention: what it removed before a device acked it is a gap that device can see.
    let tablet = device("bob", "tablet");
    let future = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 60_000;
    let mut removed = 0;
    loop {
        let n = s.trim(future, 3).await.unwrap();
        assert!(n <= 3, "bounded");
        if n == 0 {
            break;
        }
        removed += n;
    }
    assert_eq!(
        removed, 58,
        "five chat entries, four of ivy and jon's, four group entries, 45 of bob and dan's"
    );
    let owed: Vec<_> = owed_in(s, &tablet)
        .await
        .into_iter()
        .filter(|o| o.conv == chat)
        .collect();
    assert_eq!(owed.len(), 1);
    assert_eq!(
        (owed[0].cursor, owed[0].first_seq),
        (0, 6),
        "seqs 1..=5 are gone"
    );
    assert_eq!(
        s.window(&chat, Page::Latest, 0, 10).await.unwrap().entries,
        []
    );
    assert_eq!(
        s.append(&[entry(&chat, "bob", "phone", "b2")])
            .await
            .unwrap(),
        [Appended::New(6)],
        "retention never makes a seq come back"
    );

    // An ack by id moves a cursor only where the id names one message of the device's
    // conversations; the acks of one batch move each cursor to the highest of them.
    let (de, ef) = (Conv::direct("dave", "erin"), Conv::direct("erin", "fay"));
    let erin = device("erin", "phone");
    s.register(&erin).await.unwrap();
    s.append(&[
        entry(&de, "dave", "default", "same"),
        entry(&ef, "fay", "default", "same"),
        entry(&de, "dave", "default", "d2"),
        entry(&de, "dave", "default", "d3"),
        entry(&ef, "fay", "default", "f2"),
    ])
    .await
    .unwrap();
    let cursors = || async {
        let mut at: Vec<(Conv, u64)> = s
            .positions(&erin, None)
            .await
            .unwrap()
            .into_iter()
            .map(|p| (p.conv, p.cursor))
            .collect();
        at.sort_by_key(|(conv, _)| conv.key());
        at
    };
    s.ack(&[(erin.clone(), Ack::Id("same".into()))])
        .await
        .unwrap();
    assert_eq!(
        cursors().await,
        [(de.clone(), 0), (ef.clone(), 0)],
        "an id in two conversations"
    );
    s.ack(&[
        (erin.clone(), Ack::Id("d3".into())),
        (erin.clone(), Ack::Id("d2".into())),
        (erin.clone(), Ack::Id("f2".into())),
    ])
    .await
    .unwrap();
    assert_eq!(cursors().await, [(de, 3), (ef, 2)]);

    // Unread counts what people wrote: a receipt or a notice is stored, and never unread.
    let gh = Conv::direct("gus", "hal");
    let mut receipt = entry(&gh, "hal", "default", "h2");
    receipt.message.meta.insert("action".into(), "state".into());
    receipt.message.content = br#"{"ids":["g1"],"state":"READ"}"#.to_vec();
    let mut notice = entry(&gh, "hal", "default", "h3");
    notice.message.kind = samvad_protocol::MessageType::Notification;
    s.append(&[entry(&gh, "hal", "default", "h1"), receipt, notice])
        .await
        .unwrap();
    let gus = s.conversation("gus", &gh).await.unwrap().unwrap();
    assert_eq!((gus.last_seq, gus.unread), (3, 1));
}
