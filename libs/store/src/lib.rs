//! Durable state behind narrow traits: profiles and devices, groups, conversations as
//! timelines with a cursor per device, and attachments. The embedded backend keeps them in
//! the all-in-one process's SQLite database; the MongoDB backend implements the same traits.
//!
//! Correctness rests on idempotent writes keyed by natural ids, so a consumer that handles a
//! record twice after a crash changes nothing the second time: a timeline entry is unique per
//! (conversation, sender, message id), which is also how a re-sent id from the same sender is
//! dropped.

mod asset;
mod embedded;
mod mongo;
mod timeline;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use asset::{Asset, AssetStore, FILE_ID_PREFIX, file_ids, is_file_id};
pub use embedded::EmbeddedStore;
pub use mongo::MongoStore;
pub use timeline::{
    Ack, Appended, Conv, ConvState, DeviceRef, Entry, HISTORY_PAGE, HISTORY_PAGE_MAX, NewEntry,
    Page, Position, SYSTEM_DEVICE, TimelineStore, Window, history, stamp,
};

/// What a backend said went wrong, kept whole as the cause.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage backend: {0}")]
    Backend(#[source] Cause),
    #[error("stored data is corrupt: {0}")]
    Corrupt(#[source] Cause),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Now, as stores keep times (milliseconds since the Unix epoch, signed as SQLite and BSON
/// integers are).
fn now_ms() -> i64 {
    samvad_protocol::now_ms() as i64
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub username: String,
    /// The name shown for them.
    pub name: Option<String>,
    /// The file id of their picture (an asset they uploaded).
    pub profile_pic: Option<String>,
    /// Whether those who share a conversation with them see when they are online.
    pub show_presence: bool,
}

/// A device as a login names it: where its pushes go (an empty token: nowhere) and in which
/// message version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    pub device_id: String,
    pub notification_token: String,
    pub message_version: f32,
}

/// A device linked to its user by logging in, as the store keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Linked {
    pub device: Device,
    /// The link's session, which the device's access keys carry: made when the device is
    /// linked, so that a key issued before a logout never works after a new login. Empty for
    /// a device linked before sessions were (its keys carry none either).
    pub session: String,
    /// When it last logged in, in milliseconds since the Unix epoch.
    pub last_login: i64,
}

/// What a login did.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedIn {
    /// Whether the profile was made by it.
    pub is_new: bool,
    /// The device's session.
    pub session: String,
    /// The devices unlinked to keep the user within the limit: those whose last login was
    /// longest ago.
    pub unlinked: Vec<String>,
}

/// A new device session: unique, which is all it needs to be (keys are signed).
fn new_session() -> String {
    mongodb::bson::oid::ObjectId::new().to_hex()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    User,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::User => "user",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub username: String,
    pub role: Role,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Group {
    pub group_id: String,
    pub name: String,
    pub members: Vec<Member>,
    pub profile_pic: Option<String>,
}

impl Group {
    pub fn member(&self, username: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.username == username)
    }
}

/// What removing a member changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removal {
    /// The member who became admin because the last admin left.
    pub promoted: Option<String>,
}

#[async_trait::async_trait]
pub trait ProfileStore: Send + Sync + 'static {
    /// Creates the profile if needed and links the device (a device linked already keeps its
    /// session), taking its notification token from any other user who had it (the phone
    /// changed hands). A device new to the user that would make them more than `max_devices`
    /// unlinks those that logged in longest ago.
    async fn login(&self, username: &str, device: &Device, max_devices: usize) -> Result<LoggedIn>;
    async fn profile(&self, username: &str) -> Result<Option<Profile>>;
    /// Sets the name, picture and presence setting of an existing profile; `false` when
    /// there is none.
    async fn set_profile(&self, profile: &Profile) -> Result<bool>;
    /// The subset of `usernames` that have a profile.
    async fn existing(&self, usernames: &[String]) -> Result<Vec<String>>;
    /// The user's linked devices.
    async fn devices(&self, username: &str) -> Result<Vec<Linked>>;
    /// The session of a linked device; `None` when it is not linked (it never logged in, or
    /// logged out since).
    async fn session(&self, username: &str, device_id: &str) -> Result<Option<String>>;
    /// Unlinks a device (a logout): its access keys stop working. Returns whether it was
    /// linked.
    async fn unlink(&self, username: &str, device_id: &str) -> Result<bool>;
    /// Forgets the push token a provider reported dead, only if the device still has that
    /// token (a login may have registered a new one meanwhile); the device stays linked.
    /// Returns whether it was forgotten.
    async fn remove_token(&self, username: &str, device_id: &str, token: &str) -> Result<bool>;
}

#[async_trait::async_trait]
pub trait GroupStore: Send + Sync + 'static {
    async fn create(&self, group: &Group) -> Result<()>;
    async fn group(&self, group_id: &str) -> Result<Option<Group>>;
    async fn groups_of(&self, username: &str) -> Result<Vec<Group>>;
    /// Adds members as `user`; returns those who were not members before.
    async fn add_members(&self, group_id: &str, usernames: &[String]) -> Result<Vec<String>>;
    /// Removes a member; when the last admin leaves, the longest-standing remaining member
    /// becomes admin. `None` when they were not a member.
    async fn remove_member(&self, group_id: &str, username: &str) -> Result<Option<Removal>>;
}

/// The stores a service may use, whichever backend holds them.
#[derive(Clone)]
pub struct Stores {
    pub profiles: Arc<dyn ProfileStore>,
    pub groups: Arc<dyn GroupStore>,
    pub timeline: Arc<dyn TimelineStore>,
    pub assets: Arc<dyn AssetStore>,
}

impl Stores {
    /// Every store from one backend.
    pub fn from<S: ProfileStore + GroupStore + TimelineStore + AssetStore>(store: S) -> Self {
        let store = Arc::new(store);
        Self {
            profiles: store.clone(),
            groups: store.clone(),
            timeline: store.clone(),
            assets: store,
        }
    }
}

impl Stores {
    /// Whether `a` and `b` are the same user, or both take part in a 1:1 conversation of
    /// theirs or in a group.
    pub async fn share_conversation(&self, a: &str, b: &str) -> Result<bool> {
        if a == b
            || self
                .timeline
                .conversation(a, &Conv::direct(a, b))
                .await?
                .is_some()
        {
            return Ok(true);
        }
        Ok(self
            .groups
            .groups_of(a)
            .await?
            .iter()
            .any(|g| g.member(b).is_some()))
    }
}

impl Stores {
    /// Whether `user` has a profile that lets others see their presence.
    pub async fn shows_presence(&self, user: &str) -> Result<bool> {
        Ok(self
            .profiles
            .profile(user)
            .await?
            .is_some_and(|p| p.show_presence))
    }

    /// Who shares a conversation with `user`: their 1:1 partners and their fellow members of
    /// groups of at most `group_limit` members, each once, `user` not among them.
    pub async fn partners(&self, user: &str, group_limit: usize) -> Result<Vec<String>> {
        let mut partners = std::collections::BTreeSet::new();
        for state in self.timeline.conversations(user).await? {
            match &state.conv {
                Conv::Direct { .. } => {
                    partners.extend(state.conv.peer_for(user).map(str::to_owned))
                }
                Conv::Group(id) => {
                    if let Some(group) = self.groups.group(id).await?
                        && group.members.len() <= group_limit
                    {
                        partners.extend(group.members.into_iter().map(|m| m.username));
                    }
                }
            }
        }
        partners.remove(user);
        Ok(partners.into_iter().collect())
    }
}
