//! Attachments: a record per uploaded file, and the conversations whose messages carried it,
//! which is what decides who may download it. The bytes live elsewhere (local disk or an S3
//! bucket); a store keeps only what is needed to sign URLs and to answer "may they read it".

use serde::{Deserialize, Serialize};

use crate::timeline::Conv;
use crate::{Result, Stores};

/// One file a user uploads (or is about to).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Asset {
    pub file_id: String,
    pub owner: String,
    /// The extension the owner named, with its dot (`.png`).
    pub ext: String,
    /// The content type the extension stands for; the upload must carry it.
    pub content_type: String,
    /// What the client said it is for (`chat`, `profile`); kept, not interpreted.
    pub category: String,
    pub created_at: i64,
    /// The size of the stored bytes, once the owner has marked the upload done; `None` while
    /// the upload is pending.
    pub size: Option<u64>,
}

#[async_trait::async_trait]
pub trait AssetStore: Send + Sync + 'static {
    /// Records a pending upload.
    async fn create_asset(&self, asset: &Asset) -> Result<()>;
    async fn asset(&self, file_id: &str) -> Result<Option<Asset>>;
    /// How many uploads of `owner` are pending (not marked, not expired).
    async fn pending_uploads(&self, owner: &str) -> Result<u64>;
    /// Marks a pending upload done, with the size of its bytes; `false` when there is no such
    /// pending upload (absent, expired, or marked already).
    async fn mark_uploaded(&self, file_id: &str, size: u64) -> Result<bool>;
    /// Records that the message at `seq` of `conv` carried the file. Keeps the latest such
    /// seq per conversation (whoever sees an earlier one sees the latest too); idempotent.
    async fn attach(&self, file_id: &str, conv: &Conv, seq: u64) -> Result<()>;
    /// The conversations whose messages carried the file, each with its latest such seq.
    async fn attachments(&self, file_id: &str) -> Result<Vec<(Conv, u64)>>;
    /// Forgets at most `max` uploads still pending that were created before `before_ms`, and
    /// returns their ids, so their bytes can be removed too.
    async fn expire_uploads(&self, before_ms: i64, max: usize) -> Result<Vec<String>>;
}

/// Most files one message may make readable: the first this many it names. A message naming
/// thousands of ids costs a lookup each, so they stop here.
pub const MAX_FILES_PER_MESSAGE: usize = 16;

/// How every file id begins; 32 lower-case hex digits (128 random bits) follow.
pub const FILE_ID_PREFIX: &str = "asset-";
const FILE_ID_LEN: usize = FILE_ID_PREFIX.len() + 32;

pub fn is_file_id(id: &str) -> bool {
    id.len() == FILE_ID_LEN
        && id.starts_with(FILE_ID_PREFIX)
        && id[FILE_ID_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The file ids a message's content names, each once, in order.
pub fn file_ids(content: &[u8]) -> Vec<&str> {
    let prefix = FILE_ID_PREFIX.as_bytes();
    let mut ids: Vec<&str> = Vec::new();
    let mut at = 0;
    while let Some(found) = content[at..]
        .windows(prefix.len())
        .position(|w| w == prefix)
    {
        let start = at + found;
        at = start + prefix.len();
        if let Some(id) = content
            .get(start..start + FILE_ID_LEN)
            .and_then(|b| std::str::from_utf8(b).ok())
            .filter(|id| is_file_id(id))
            && !ids.contains(&id)
        {
            ids.push(id);
        }
    }
    ids
}

impl Stores {
    /// The owner may read their file; anyone else only while they take part in a
    /// conversation where a message carried it and see that message (not a member who joined
    /// after it, nor one who was removed), or while the file is the owner's profile picture
    /// and they share a conversation with the owner.
    pub async fn may_read(&self, user: &str, asset: &Asset) -> Result<bool> {
        if asset.owner == user {
            return Ok(true);
        }
        for (conv, seq) in self.assets.attachments(&asset.file_id).await? {
            if let Some(state) = self.timeline.conversation(user, &conv).await?
                && state.since_seq < seq
            {
                return Ok(true);
            }
        }
        let is_picture = self
            .profiles
            .profile(&asset.owner)
            .await?
            .is_some_and(|p| p.profile_pic.as_deref() == Some(asset.file_id.as_str()));
        Ok(is_picture && self.share_conversation(user, &asset.owner).await?)
    }

    /// Records that the message at `seq` of `conv`, sent by `sender`, carried the files its
    /// content names (the first [`MAX_FILES_PER_MESSAGE`]) — those `sender` may read, so that
    /// naming an id learned elsewhere grants nothing. Delivery calls it for each stored
    /// message before anyone is handed it, and again for a repeat, so a crash between the
    /// append and this is made good by the redelivery or the sender's retry.
    pub async fn attach_carried(
        &self,
        sender: &str,
        conv: &Conv,
        seq: u64,
        content: &[u8],
    ) -> Result<()> {
        for id in file_ids(content).into_iter().take(MAX_FILES_PER_MESSAGE) {
            if let Some(asset) = self.assets.asset(id).await?
                && asset.size.is_some()
                && self.may_read(sender, &asset).await?
            {
                self.assets.attach(id, conv, seq).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_ids_are_found_in_content_once_each_and_only_whole() {
        let a = format!("{FILE_ID_PREFIX}{:032x}", 7u128);
        let b = format!("{FILE_ID_PREFIX}{:032x}", u128::MAX);
        let content = format!(r#"{{"text":"look","fileId":"{a}","more":["{b}","{a}"]}}"#);
        assert_eq!(file_ids(content.as_bytes()), vec![a.as_str(), b.as_str()]);
        assert!(file_ids(b"asset-123 asset-").is_empty());
        assert!(file_ids(&a.as_bytes()[..FILE_ID_LEN - 1]).is_empty());
        assert!(!is_file_id(&a.to_uppercase()));
    }
}
