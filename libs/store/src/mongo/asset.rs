//! Attachments in MongoDB: a document per file (`_id` the file id), and one per (file,
//! conversation) that carried it, its seq moved with `$max` so a repeat changes nothing.

use mongodb::bson::{Bson, Document, doc};

use super::{MongoStore, all, backend, conv_of, corrupt, int, is_duplicate};
use crate::Result;
use crate::asset::{Asset, AssetStore};
use crate::timeline::Conv;

fn asset_from(d: &Document) -> Result<Asset> {
    let text = |field: &str| d.get_str(field).map(str::to_owned).map_err(corrupt);
    Ok(Asset {
        file_id: text("_id")?,
        owner: text("owner")?,
        ext: text("ext")?,
        content_type: text("content_type")?,
        category: text("category")?,
        created_at: int(d, "created_at")? as i64,
        size: match d.get("size") {
            None | Some(Bson::Null) => None,
            Some(_) => Some(int(d, "size")?),
        },
    })
}

#[async_trait::async_trait]
impl AssetStore for MongoStore {
    async fn create_asset(&self, a: &Asset) -> Result<()> {
        self.assets
            .insert_one(doc! {
                "_id": &a.file_id,
                "owner": &a.owner,
                "ext": &a.ext,
                "content_type": &a.content_type,
                "category": &a.category,
                "created_at": a.created_at,
                "size": a.size.map(|s| s as i64),
            })
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn asset(&self, file_id: &str) -> Result<Option<Asset>> {
        self.assets
            .find_one(doc! { "_id": file_id })
            .await
            .map_err(backend)?
            .as_ref()
            .map(asset_from)
            .transpose()
    }

    async fn pending_uploads(&self, owner: &str) -> Result<u64> {
        self.assets
            .count_documents(doc! { "owner": owner, "size": Bson::Null })
            .await
            .map_err(backend)
    }

    async fn mark_uploaded(&self, file_id: &str, size: u64) -> Result<bool> {
        let done = self
            .assets
            .update_one(
                doc! { "_id": file_id, "size": Bson::Null },
                doc! { "$set": { "size": size as i64 } },
            )
            .await
            .map_err(backend)?;
        Ok(done.modified_count == 1)
    }

    async fn attach(&self, file_id: &str, conv: &Conv, seq: u64) -> Result<()> {
        let upsert = || {
            self.asset_uses
                .update_one(
                    doc! { "file": file_id, "conv": conv.key() },
                    doc! { "$max": { "seq": seq as i64 } },
                )
                .upsert(true)
        };
        match upsert().await {
            // Two upserts raced to insert: the loser's update now finds the document.
            Err(e) if is_duplicate(&e) => upsert().await.map_err(backend)?,
            done => done.map_err(backend)?,
        };
        Ok(())
    }

    async fn attachments(&self, file_id: &str) -> Result<Vec<(Conv, u64)>> {
        all(self.asset_uses.find(doc! { "file": file_id }))
            .await?
            .iter()
            .map(|d| Ok((conv_of(d)?, int(d, "seq")?)))
            .collect()
    }

    async fn expire_uploads(&self, before_ms: i64, max: usize) -> Result<Vec<String>> {
        let stale = all(self
            .assets
            .find(doc! { "size": Bson::Null, "created_at": { "$lt": before_ms } })
            .limit(max as i64))
        .await?;
        let mut gone = Vec::new();
        for d in stale {
            let id = d.get_str("_id").map_err(corrupt)?;
            // Only if still pending: the owner may have marked it meanwhile.
            let deleted = self
                .assets
                .delete_one(doc! { "_id": id, "size": Bson::Null })
                .await
                .map_err(backend)?;
            if deleted.deleted_count == 1 {
                gone.push(id.to_owned());
            }
        }
        Ok(gone)
    }
}
