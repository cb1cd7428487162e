//! The cluster backend: MongoDB through the official driver.
//!
//! Correctness comes from unique indexes and idempotent single-document writes, not from
//! multi-document transactions: a username is a profile's `_id`; a timeline entry is unique per
//! (conversation, seq) and per (conversation, sender, id); group membership lives in one
//! document, changed atomically.
//! Writes use majority write concern, so an acknowledged write survives a primary failover.

use futures_util::TryStreamExt;
use mongodb::bson::{Document, doc};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{ReturnDocument, WriteConcern};
use mongodb::{Client, Collection, Database, IndexModel};

mod asset;
mod timeline;

use crate::{
    Conv, Device, Group, GroupStore, Linked, LoggedIn, Member, Profile, ProfileStore, Removal,
    Result, Role, StoreError, new_session, now_ms,
};

const DUPLICATE_KEY: i32 = 11000;

fn backend(e: mongodb::error::Error) -> StoreError {
    StoreError::Backend(e.into())
}

fn corrupt(e: impl Into<crate::Cause>) -> StoreError {
    StoreError::Corrupt(e.into())
}

fn is_duplicate(e: &mongodb::error::Error) -> bool {
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == DUPLICATE_KEY,
        ErrorKind::InsertMany(failure) => failure
            .write_errors
            .as_ref()
            .is_some_and(|errors| errors.iter().all(|w| w.code == DUPLICATE_KEY)),
        _ => false,
    }
}

pub(super) fn int(d: &Document, field: &str) -> Result<u64> {
    match d.get(field) {
        Some(mongodb::bson::Bson::Int64(n)) => Ok(*n as u64),
        Some(mongodb::bson::Bson::Int32(n)) => Ok(*n as u64),
        Some(mongodb::bson::Bson::Double(n)) => Ok(*n as u64),
        other => Err(corrupt(format!("{field} is {other:?}"))),
    }
}

pub(super) fn conv_of(d: &Document) -> Result<Conv> {
    let key = d.get_str("conv").map_err(corrupt)?;
    Conv::from_key(key).ok_or_else(|| corrupt(format!("not a conversation key: {key:?}")))
}

/// Every document a find returns.
async fn all(find: mongodb::action::Find<'_, Document>) -> Result<Vec<Document>> {
    find.await
        .map_err(backend)?
        .try_collect()
        .await
        .map_err(backend)
}

/// Profiles, groups, timelines and attachments in MongoDB.
#[derive(Clone)]
pub struct MongoStore {
    profiles: Collection<Document>,
    devices: Collection<Document>,
    groups: Collection<Document>,
    conversations: Collection<Document>,
    timeline: Collection<Document>,
    participants: Collection<Document>,
    registered: Collection<Document>,
    cursors: Collection<Document>,
    assets: Collection<Document>,
    asset_uses: Collection<Document>,
}

impl MongoStore {
    /// Connects to `url`, uses database `database`, and creates the indexes it relies on.
    pub async fn connect(url: &str, database: &str) -> Result<Self> {
        let client = Client::with_uri_str(url).await.map_err(backend)?;
        let db: Database = client.database_with_options(
            database,
            mongodb::options::DatabaseOptions::builder()
                .write_concern(WriteConcern::majority())
                .build(),
        );
        let store = Self {
            profiles: db.collection("profiles"),
            devices: db.collection("devices"),
            groups: db.collection("groups"),
            conversations: db.collection("conversations"),
            timeline: db.collection("timeline"),
            participants: db.collection("participants"),
            registered: db.collection("registered_devices"),
            cursors: db.collection("cursors"),
            assets: db.collection("assets"),
            asset_uses: db.collection("asset_uses"),
        };
        store.create_indexes().await?;
        Ok(store)
    }

    async fn create_indexes(&self) -> Result<()> {
        let plain = |keys: Document| IndexModel::builder().keys(keys).build();
        self.devices
            .create_index(plain(doc! { "user": 1 }))
            .await
            .map_err(backend)?;
        self.devices
            .create_index(plain(doc! { "token": 1 }))
            .await
            .map_err(backend)?;
        self.groups
            .create_index(plain(doc! { "members.username": 1 }))
            .await
            .map_err(backend)?;
        self.assets
            .create_index(plain(doc! { "size": 1, "created_at": 1 }))
            .await
            .map_err(backend)?;
        self.assets
            .create_index(plain(doc! { "owner": 1, "size": 1 }))
            .await
            .map_err(backend)?;
        self.asset_uses
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "file": 1, "conv": 1 })
                    .options(
                        mongodb::options::IndexOptions::builder()
                            .unique(true)
                            .build(),
                    )
                    .build(),
            )
            .await
            .map_err(backend)?;
        self.create_timeline_indexes().await
    }
}

impl MongoStore {
    async fn find_group(&self, group_id: &str) -> Result<Option<Group>> {
        self.groups
            .find_one(doc! { "_id": group_id })
            .await
            .map_err(backend)?
            .as_ref()
            .map(group_from)
            .transpose()
    }

    /// If no admin is left, the first member (the longest-standing) becomes one — in one
    /// conditional update, so two concurrent departures cannot both promote. Returns who.
    async fn ensure_admin(&self, group_id: &str) -> Result<Option<String>> {
        let promoted = self
            .groups
            .find_one_and_update(
                doc! {
                    "_id": group_id,
                    "members.role": { "$ne": "admin" },
                    "members.0": { "$exists": true },
                },
                doc! { "$set": { "members.0.role": "admin" } },
            )
            .return_document(ReturnDocument::After)
            .await
            .map_err(backend)?;
        Ok(match promoted {
            Some(d) => group_from(&d)?.members.first().map(|m| m.username.clone()),
            None => None,
        })
    }
}

fn group_from(d: &Document) -> Result<Group> {
    let members = d
        .get_array("members")
        .map_err(corrupt)?
        .iter()
        .map(|m| {
            let m = m
                .as_document()
                .ok_or_else(|| corrupt("member is not a document"))?;
            Ok(Member {
                username: m.get_str("username").map_err(corrupt)?.to_owned(),
                role: if m.get_str("role").map_err(corrupt)? == "admin" {
                    Role::Admin
                } else {
                    Role::User
                },
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Group {
        group_id: d.get_str("_id").map_err(corrupt)?.to_owned(),
        name: d.get_str("name").map_err(corrupt)?.to_owned(),
        members,
        profile_pic: d.get_str("profilePic").ok().map(str::to_owned),
    })
}

fn member_doc(username: &str, role: Role) -> Document {
    doc! { "username": username, "role": role.as_str() }
}

#[async_trait::async_trait]
impl ProfileStore for MongoStore {
    async fn login(&self, username: &str, device: &Device, max_devices: usize) -> Result<LoggedIn> {
        let is_new = self
            .profiles
            .update_one(
                doc! { "_id": username },
                doc! { "$setOnInsert": { "createdAt": mongodb::bson::DateTime::now() } },
            )
            .upsert(true)
            .await
            .map_err(backend)?
            .upserted_id
            .is_some();
        if !device.notification_token.is_empty() {
            // A token belongs to one device: a phone that changed hands must not get the
            // previous user's pushes.
            self.devices
                .update_many(
                    doc! { "token": &device.notification_token, "user": { "$ne": username } },
                    doc! { "$set": { "token": "" } },
                )
                .await
                .map_err(backend)?;
        }
        let id = doc! { "user": username, "device": &device.device_id };
        let fresh = new_session();
        let before = self
            .devices
            .find_one_and_update(
                doc! { "_id": &id },
                doc! {
                    "$set": {
                        "user": username,
                        "token": &device.notification_token,
                        "version": f64::from(device.message_version),
                        "loggedInAt": now_ms(),
                    },
                    "$setOnInsert": { "session": &fresh },
                },
            )
            .upsert(true)
            .return_document(ReturnDocument::Before)
            .projection(doc! { "session": 1 })
            .await
            .map_err(backend)?;
        let mut unlinked = Vec::new();
        let session = match before {
            // Linked already: it keeps its session (none, if linked before sessions were).
            Some(linked) => linked.get_str("session").unwrap_or_default().to_owned(),
            None => {
                let linked_now = self
                    .devices
                    .count_documents(doc! { "user": username })
                    .await
                    .map_err(backend)?;
                let excess = usize::try_from(linked_now)
                    .unwrap_or(usize::MAX)
                    .saturating_sub(max_devices);
                if excess > 0 {
                    let oldest = all(self
                        .devices
                        .find(doc! { "user": username, "_id": { "$ne": &id } })
                        .sort(doc! { "loggedInAt": 1, "_id.device": 1 })
                        .limit(i64::try_from(excess).unwrap_or(i64::MAX))
                        .projection(doc! { "_id": 1 }))
                    .await?;
                    for found in oldest {
                        let device_id = found
                            .get_document("_id")
                            .and_then(|d| d.get_str("device"))
                            .map_err(corrupt)?
                            .to_owned();
                        if self.unlink(username, &device_id).await? {
                            unlinked.push(device_id);
                        }
                    }
                }
                fresh
            }
        };
        Ok(LoggedIn {
            is_new,
            session,
            unlinked,
        })
    }

    async fn profile(&self, username: &str) -> Result<Option<Profile>> {
        let found = self
            .profiles
            .find_one(doc! { "_id": username })
            .await
            .map_err(backend)?;
        Ok(found.map(|d| Profile {
            username: username.to_owned(),
            name: d.get_str("name").ok().map(str::to_owned),
            profile_pic: d.get_str("profile_pic").ok().map(str::to_owned),
            show_presence: d.get_bool("show_presence").unwrap_or(true),
        }))
    }

    async fn set_profile(&self, p: &Profile) -> Result<bool> {
        let done = self
            .profiles
            .update_one(
                doc! { "_id": &p.username },
                doc! { "$set": {
                    "name": p.name.as_deref(),
                    "profile_pic": p.profile_pic.as_deref(),
                    "show_presence": p.show_presence,
                } },
            )
            .await
            .map_err(backend)?;
        Ok(done.matched_count == 1)
    }

    async fn existing(&self, usernames: &[String]) -> Result<Vec<String>> {
        let found = all(self
            .profiles
            .find(doc! { "_id": { "$in": usernames } })
            .projection(doc! { "_id": 1 }))
        .await?;
        let found: std::collections::HashSet<&str> =
            found.iter().filter_map(|d| d.get_str("_id").ok()).collect();
        Ok(usernames
            .iter()
            .filter(|u| found.contains(u.as_str()))
            .cloned()
            .collect())
    }

    async fn remove_token(&self, username: &str, device_id: &str, token: &str) -> Result<bool> {
        if token.is_empty() {
            return Ok(false);
        }
        let result = self
            .devices
            .update_one(
                doc! { "_id": { "user": username, "device": device_id }, "token": token },
                doc! { "$set": { "token": "" } },
            )
            .await
            .map_err(backend)?;
        Ok(result.modified_count == 1)
    }

    async fn devices(&self, username: &str) -> Result<Vec<Linked>> {
        let found = all(self
            .devices
            .find(doc! { "user": username })
            .sort(doc! { "_id.device": 1 }))
        .await?;
        found
            .iter()
            .map(|d| {
                let id = d.get_document("_id").map_err(corrupt)?;
                Ok(Linked {
                    device: Device {
                        device_id: id.get_str("device").map_err(corrupt)?.to_owned(),
                        notification_token: d.get_str("token").map_err(corrupt)?.to_owned(),
                        message_version: d.get_f64("version").map_err(corrupt)? as f32,
                    },
                    session: d.get_str("session").unwrap_or_default().to_owned(),
                    last_login: d.get_i64("loggedInAt").unwrap_or_default(),
                })
            })
            .collect()
    }

    async fn session(&self, username: &str, device_id: &str) -> Result<Option<String>> {
        let found = self
            .devices
            .find_one(doc! { "_id": { "user": username, "device": device_id } })
            .projection(doc! { "session": 1 })
            .await
            .map_err(backend)?;
        Ok(found.map(|d| d.get_str("session").unwrap_or_default().to_owned()))
    }

    async fn unlink(&self, username: &str, device_id: &str) -> Result<bool> {
        let result = self
            .devices
            .delete_one(doc! { "_id": { "user": username, "device": device_id } })
            .await
            .map_err(backend)?;
        Ok(result.deleted_count == 1)
    }
}

#[async_trait::async_trait]
impl GroupStore for MongoStore {
    async fn create(&self, group: &Group) -> Result<()> {
        let members: Vec<Document> = group
            .members
            .iter()
            .map(|m| member_doc(&m.username, m.role))
            .collect();
        let mut d = doc! { "_id": &group.group_id, "name": &group.name, "members": members };
        if let Some(pic) = &group.profile_pic {
            d.insert("profilePic", pic);
        }
        self.groups.insert_one(d).await.map_err(backend)?;
        Ok(())
    }

    async fn group(&self, group_id: &str) -> Result<Option<Group>> {
        let found = self.find_group(group_id).await?;
        match found {
            // A removal that crashed between its two writes left the group without an admin:
            // the next look finishes it.
            Some(g) if !g.members.is_empty() && g.members.iter().all(|m| m.role != Role::Admin) => {
                self.ensure_admin(group_id).await?;
                self.find_group(group_id).await
            }
            other => Ok(other),
        }
    }

    async fn groups_of(&self, username: &str) -> Result<Vec<Group>> {
        let found = all(self
            .groups
            .find(doc! { "members.username": username })
            .sort(doc! { "_id": 1 }))
        .await?;
        found.iter().map(group_from).collect()
    }

    async fn add_members(&self, group_id: &str, usernames: &[String]) -> Result<Vec<String>> {
        let mut added = Vec::new();
        for name in usernames {
            // Appends only when absent: the array's order is the order members joined.
            let result = self
                .groups
                .update_one(
                    doc! { "_id": group_id, "members.username": { "$ne": name } },
                    doc! { "$push": { "members": member_doc(name, Role::User) } },
                )
                .await
                .map_err(backend)?;
            if result.modified_count == 1 {
                added.push(name.clone());
            }
        }
        Ok(added)
    }

    async fn remove_member(&self, group_id: &str, username: &str) -> Result<Option<Removal>> {
        let removed = self
            .groups
            .update_one(
                doc! { "_id": group_id, "members.username": username },
                doc! { "$pull": { "members": { "username": username } } },
            )
            .await
            .map_err(backend)?;
        if removed.modified_count == 0 {
            return Ok(None);
        }
        let promoted = self.ensure_admin(group_id).await?;
        Ok(Some(Removal { promoted }))
    }
}
