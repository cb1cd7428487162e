//! One contract, every store: SQLite (embedded) and MongoDB (a private SecantusDB server,
//! which speaks MongoDB's wire protocol).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod timeline;

use std::time::Duration;

use samvad_store::{
    Asset, AssetStore, Conv, Device, EmbeddedStore, Group, GroupStore, Member, MongoStore, Profile,
    ProfileStore, Removal, Role, TimelineStore,
};

trait Store: ProfileStore + GroupStore + TimelineStore + AssetStore {}
impl<T: ProfileStore + GroupStore + TimelineStore + AssetStore> Store for T {}

async fn group_contract(s: &dyn Store) {
    let member = |u: &str, role| Member {
        username: u.into(),
        role,
    };
    s.create(&Group {
        group_id: "g".into(),
        name: "G".into(),
        members: vec![member("ann", Role::Admin), member("ben", Role::User)],
        profile_pic: None,
    })
    .await
    .unwrap();
    // Read before each change, so that a backend that keeps what it read must let it go.
    assert_eq!(s.group("g").await.unwrap().unwrap().members.len(), 2);
    assert_eq!(
        s.add_members("g", &["cat".into(), "ben".into()])
            .await
            .unwrap(),
        vec!["cat".to_owned()]
    );
    assert_eq!(s.group("g").await.unwrap().unwrap().members.len(), 3);
    assert_eq!(
        s.remove_member("g", "ann").await.unwrap(),
        Some(Removal {
            promoted: Some("ben".into())
        })
    );
    assert_eq!(s.remove_member("g", "ann").await.unwrap(), None);
    let g = s.group("g").await.unwrap().unwrap();
    assert_eq!(
        g.members,
        vec![member("ben", Role::Admin), member("cat", Role::User)]
    );
    assert_eq!(s.groups_of("cat").await.unwrap().len(), 1);
    assert!(s.groups_of("ann").await.unwrap().is_empty());
    assert!(s.group("nope").await.unwrap().is_none());
}

async fn profile_contract(s: &dyn Store) {
    let device = |id: &str, token: &str| Device {
        device_id: id.into(),
        notification_token: token.into(),
        message_version: 2.1,
    };
    let first = s.login("ann", &device("default", "t1"), 3).await.unwrap();
    assert!(first.is_new && !first.session.is_empty() && first.unlinked.is_empty());
    let again = s.login("ann", &device("default", "t2"), 3).await.unwrap();
    assert!(!again.is_new);
    assert_eq!(
        again.session, first.session,
        "a linked device keeps its session"
    );
    let tablet = s.login("ann", &device("tablet", "t3"), 3).await.unwrap();
    assert_ne!(tablet.session, first.session);
    let linked = s.devices("ann").await.unwrap();
    assert_eq!(
        linked.iter().map(|l| l.device.clone()).collect::<Vec<_>>(),
        vec![device("default", "t2"), device("tablet", "t3")]
    );
    assert!(linked.iter().all(|l| l.last_login > 0));
    assert_eq!(
        s.session("ann", "tablet").await.unwrap(),
        Some(tablet.session.clone())
    );
    assert_eq!(s.session("ann", "watch").await.unwrap(), None);
    assert!(
        !s.remove_token("ann", "tablet", "stale").await.unwrap(),
        "only the current token"
    );
    assert!(s.remove_token("ann", "tablet", "t3").await.unwrap());
    let linked = s.devices("ann").await.unwrap();
    assert_eq!(linked.len(), 2, "a dead token leaves the device linked");
    assert_eq!(linked[1].device.notification_token, "");

    // Past the limit, a new device unlinks the one that logged in longest ago.
    tokio::time::sleep(Duration::from_millis(5)).await;
    s.login("ann", &device("default", "t2"), 3).await.unwrap();
    let watch = s.login("ann", &device("watch", ""), 3).await.unwrap();
    let laptop = s.login("ann", &device("laptop", ""), 3).await.unwrap();
    assert_eq!(laptop.unlinked, vec!["tablet".to_owned()]);
    assert_eq!(s.session("ann", "tablet").await.unwrap(), None);
    // A logout; linked again, the device has a new session.
    assert!(s.unlink("ann", "watch").await.unwrap());
    assert!(!s.unlink("ann", "watch").await.unwrap());
    assert_eq!(s.session("ann", "watch").await.unwrap(), None);
    let relinked = s.login("ann", &device("watch", ""), 3).await.unwrap();
    assert!(relinked.unlinked.is_empty(), "{relinked:?}");
    assert_ne!(relinked.session, watch.session);
    assert_eq!(
        s.existing(&["ann".into(), "zed".into()]).await.unwrap(),
        vec!["ann".to_owned()]
    );
    assert_eq!(s.profile("ann").await.unwrap().unwrap().username, "ann");
    // The phone changes hands: its token now reaches only the new user.
    s.login("ben", &device("phone", "t2"), 3).await.unwrap();
    let tokens = |user: &'static str| async move {
        let linked = s.devices(user).await.unwrap();
        linked
            .into_iter()
            .map(|l| l.device.notification_token)
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>()
    };
    assert!(tokens("ann").await.is_empty());
    assert_eq!(tokens("ben").await, vec!["t2".to_owned()]);
    assert!(s.profile("zed").await.unwrap().is_none());

    let fresh = s.profile("ann").await.unwrap().unwrap();
    assert_eq!(
        (fresh.name, fresh.profile_pic, fresh.show_presence),
        (None, None, true)
    );
    let named = Profile {
        username: "ann".into(),
        name: Some("Ann Lee".into()),
        profile_pic: Some("asset-1".into()),
        show_presence: false,
    };
    assert!(s.set_profile(&named).await.unwrap());
    assert_eq!(s.profile("ann").await.unwrap(), Some(named.clone()));
    let cleared = Profile {
        profile_pic: None,
        ..named
    };
    assert!(s.set_profile(&cleared).await.unwrap());
    assert_eq!(s.profile("ann").await.unwrap(), Some(cleared));
    let nobody = Profile {
        username: "zed".into(),
        name: None,
        profile_pic: None,
        show_presence: true,
    };
    assert!(
        !s.set_profile(&nobody).await.unwrap(),
        "no profile, nothing set"
    );
    assert!(s.profile("zed").await.unwrap().is_none());
}

async fn asset_contract(s: &dyn Store) {
    let asset = |id: &str, created_at| Asset {
        file_id: id.into(),
        owner: "ann".into(),
        ext: ".png".into(),
        content_type: "image/png".into(),
        category: "chat".into(),
        created_at,
        size: None,
    };
    s.create_asset(&asset("a1", 1_000)).await.unwrap();
    s.create_asset(&asset("a2", 2_000)).await.unwrap();
    s.create_asset(&asset("a3", 1_500)).await.unwrap();
    assert!(
        s.create_asset(&asset("a1", 3_000)).await.is_err(),
        "an id is taken once"
    );
    assert_eq!(s.asset("a1").await.unwrap(), Some(asset("a1", 1_000)));
    assert!(s.asset("zz").await.unwrap().is_none());

    assert_eq!(s.pending_uploads("ann").await.unwrap(), 3);
    assert_eq!(s.pending_uploads("ben").await.unwrap(), 0);
    assert!(s.mark_uploaded("a1", 42).await.unwrap());
    assert_eq!(s.pending_uploads("ann").await.unwrap(), 2);
    assert!(!s.mark_uploaded("a1", 43).await.unwrap(), "marked once");
    assert!(!s.mark_uploaded("zz", 1).await.unwrap());
    assert_eq!(s.asset("a1").await.unwrap().unwrap().size, Some(42));

    // Only pending uploads older than the cut expire, and each only once.
    assert_eq!(
        s.expire_uploads(1_800, 10).await.unwrap(),
        vec!["a3".to_owned()]
    );
    assert!(s.expire_uploads(1_800, 10).await.unwrap().is_empty());
    assert!(s.asset("a3").await.unwrap().is_none());
    assert!(
        s.asset("a1").await.unwrap().is_some(),
        "an uploaded file stays"
    );
    assert!(
        !s.mark_uploaded("a3", 1).await.unwrap(),
        "an expired upload is gone"
    );

    let (pair, room) = (Conv::direct("ann", "ben"), Conv::group("g"));
    assert!(s.attachments("a1").await.unwrap().is_empty());
    s.attach("a1", &pair, 7).await.unwrap();
    s.attach("a1", &pair, 3).await.unwrap();
    s.attach("a1", &room, 2).await.unwrap();
    s.attach("a1", &room, 9).await.unwrap();
    s.attach("a1", &room, 9).await.unwrap();
    let mut uses = s.attachments("a1").await.unwrap();
    uses.sort_by_key(|(_, seq)| *seq);
    assert_eq!(
        uses,
        vec![(pair, 7), (room, 9)],
        "the latest seq per conversation"
    );
    assert!(s.attachments("a2").await.unwrap().is_empty());
}

async fn contract(s: &dyn Store) {
    asset_contract(s).await;
    group_contract(s).await;
    profile_contract(s).await;
    timeline::contract(s).await;
}

#[tokio::test]
async fn the_embedded_store_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let db = samvad_sqlite::Db::open(&dir.path().join("s.db")).unwrap();
    contract(&EmbeddedStore::open(db).await.unwrap()).await;
}

#[tokio::test]
async fn an_embedded_database_from_before_ended_parts_is_brought_up_to_date() {
    let dir = tempfile::tempdir().unwrap();
    let db = samvad_sqlite::Db::open(&dir.path().join("s.db")).unwrap();
    db.write(|t| {
        t.execute_batch(
            "CREATE TABLE participants (
                username TEXT NOT NULL, conv TEXT NOT NULL, since_seq INTEGER NOT NULL,
                read_seq INTEGER NOT NULL, PRIMARY KEY (username, conv)) WITHOUT ROWID;
             INSERT INTO participants VALUES ('ann', 'g' || char(31) || 'old', 0, 0);",
        )
    })
    .await
    .unwrap();
    let store = EmbeddedStore::open(db).await.unwrap();
    let old = samvad_store::Conv::group("old");
    assert!(store.conversation("ann", &old).await.unwrap().is_some());
    let mut removal = timeline::entry(&old, "ann", "", "rm");
    removal.leaving = vec!["ann".into()];
    store.append(&[removal]).await.unwrap();
    assert!(store.conversation("ann", &old).await.unwrap().is_none());
}

#[tokio::test]
async fn an_embedded_database_from_before_profile_pictures_and_sessions_is_brought_up_to_date() {
    let dir = tempfile::tempdir().unwrap();
    let db = samvad_sqlite::Db::open(&dir.path().join("s.db")).unwrap();
    db.write(|t| {
        t.execute_batch(
            "CREATE TABLE profiles (
                username TEXT PRIMARY KEY, name TEXT, created_at INTEGER NOT NULL) WITHOUT ROWID;
             INSERT INTO profiles VALUES ('ann', NULL, 1);
             CREATE TABLE devices (
                username TEXT NOT NULL, device_id TEXT NOT NULL, token TEXT NOT NULL,
                version REAL NOT NULL, updated_at INTEGER NOT NULL,
                PRIMARY KEY (username, device_id)) WITHOUT ROWID;
             INSERT INTO devices VALUES ('ann', 'default', '', 2.1, 1);",
        )
    })
    .await
    .unwrap();
    let store = EmbeddedStore::open(db).await.unwrap();
    let ann = store.profile("ann").await.unwrap().unwrap();
    assert_eq!((ann.profile_pic, ann.show_presence), (None, true));
    // Linked before sessions: its keys carry none, and it keeps none when it logs in again.
    assert_eq!(
        store.session("ann", "default").await.unwrap(),
        Some(String::new())
    );
    let device = Device {
        device_id: "default".into(),
        notification_token: String::new(),
        message_version: 2.1,
    };
    assert_eq!(store.login("ann", &device, 10).await.unwrap().session, "");
}

async fn mongo_store(url: &str) -> MongoStore {
    for _ in 0..150 {
        match MongoStore::connect(url, "contract").await {
            Ok(s) => return s,
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    panic!("the MongoDB-wire server did not come up");
}

#[tokio::test]
async fn the_mongodb_store_keeps_the_contract() {
    let server = samvad_testkit::mongo();
    let store = mongo_store(&server.url).await;
    contract(&store).await;

    // A removal that crashed after its first write (the admin pulled, nobody promoted yet)
    // leaves a document like this; the group is whole again at the next look.
    let client = mongodb::Client::with_uri_str(&server.url).await.unwrap();
    client
        .database("contract")
        .collection::<mongodb::bson::Document>("groups")
        .insert_one(mongodb::bson::doc! {
            "_id": "headless", "name": "H",
            "members": [{ "username": "ann", "role": "user" }, { "username": "ben", "role": "user" }],
        })
        .await
        .unwrap();
    let g = store.group("headless").await.unwrap().unwrap();
    assert_eq!(
        g.members,
        vec![
            Member {
                username: "ann".into(),
                role: Role::Admin
            },
            Member {
                username: "ben".into(),
                role: Role::User
            },
        ]
    );
}
