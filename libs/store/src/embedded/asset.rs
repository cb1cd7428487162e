//! Attachments in SQLite: one row per file, one per (file, conversation) that carried it.

use rusqlite::{OptionalExtension, params};

use super::{EmbeddedStore, backend};
use crate::asset::{Asset, AssetStore};
use crate::timeline::Conv;
use crate::{Result, StoreError};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS assets (
    file_id TEXT PRIMARY KEY, owner TEXT NOT NULL, ext TEXT NOT NULL,
    content_type TEXT NOT NULL, category TEXT NOT NULL, created_at INTEGER NOT NULL,
    size INTEGER) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS assets_pending ON assets (created_at) WHERE size IS NULL;
CREATE INDEX IF NOT EXISTS assets_pending_by_owner ON assets (owner) WHERE size IS NULL;
CREATE TABLE IF NOT EXISTS asset_uses (
    file_id TEXT NOT NULL, conv TEXT NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (file_id, conv)) WITHOUT ROWID;
";

#[async_trait::async_trait]
impl AssetStore for EmbeddedStore {
    async fn create_asset(&self, asset: &Asset) -> Result<()> {
        let a = asset.clone();
        self.db
            .write(move |t| {
                t.execute(
                    "INSERT INTO assets (file_id, owner, ext, content_type, category, created_at,
                     size) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![
                        a.file_id,
                        a.owner,
                        a.ext,
                        a.content_type,
                        a.category,
                        a.created_at,
                        a.size.map(|s| s as i64)
                    ],
                )?;
                Ok(())
            })
            .await
            .map_err(backend)
    }

    async fn asset(&self, file_id: &str) -> Result<Option<Asset>> {
        let file_id = file_id.to_owned();
        self.db
            .read(move |c| {
                c.prepare_cached(
                    "SELECT owner, ext, content_type, category, created_at, size FROM assets
                     WHERE file_id = ?1",
                )?
                .query_row([&file_id], |r| {
                    Ok(Asset {
                        file_id: file_id.clone(),
                        owner: r.get(0)?,
                        ext: r.get(1)?,
                        content_type: r.get(2)?,
                        category: r.get(3)?,
                        created_at: r.get(4)?,
                        size: r.get::<_, Option<i64>>(5)?.map(|s| s as u64),
                    })
                })
                .optional()
            })
            .await
            .map_err(backend)
    }

    async fn pending_uploads(&self, owner: &str) -> Result<u64> {
        let owner = owner.to_owned();
        self.db
            .read(move |c| {
                c.prepare_cached("SELECT count(*) FROM assets WHERE owner = ?1 AND size IS NULL")?
                    .query_row([&owner], |r| r.get::<_, i64>(0))
            })
            .await
            .map(|n| n as u64)
            .map_err(backend)
    }

    async fn mark_uploaded(&self, file_id: &str, size: u64) -> Result<bool> {
        let file_id = file_id.to_owned();
        self.db
            .write(move |t| {
                let changed = t.execute(
                    "UPDATE assets SET size = ?2 WHERE file_id = ?1 AND size IS NULL",
                    params![file_id, size as i64],
                )?;
                Ok(changed == 1)
            })
            .await
            .map_err(backend)
    }

    async fn attach(&self, file_id: &str, conv: &Conv, seq: u64) -> Result<()> {
        let (file_id, conv) = (file_id.to_owned(), conv.key());
        self.db
            .write(move |t| {
                t.execute(
                    "INSERT INTO asset_uses (file_id, conv, seq) VALUES (?1, ?2, ?3)
                     ON CONFLICT (file_id, conv) DO UPDATE SET seq = max(seq, excluded.seq)",
                    params![file_id, conv, seq as i64],
                )?;
                Ok(())
            })
            .await
            .map_err(backend)
    }

    async fn attachments(&self, file_id: &str) -> Result<Vec<(Conv, u64)>> {
        let file_id = file_id.to_owned();
        let rows = self
            .db
            .read(move |c| {
                c.prepare_cached("SELECT conv, seq FROM asset_uses WHERE file_id = ?1")?
                    .query_map([&file_id], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .await
            .map_err(backend)?;
        rows.into_iter()
            .map(|(key, seq)| {
                Conv::from_key(&key)
                    .map(|conv| (conv, seq as u64))
                    .ok_or_else(|| {
                        StoreError::Corrupt(format!("not a conversation key: {key:?}").into())
                    })
            })
            .collect()
    }

    async fn expire_uploads(&self, before_ms: i64, max: usize) -> Result<Vec<String>> {
        self.db
            .write(move |t| {
                let ids = t
                    .prepare_cached(
                        "DELETE FROM assets WHERE file_id IN (
                            SELECT file_id FROM assets WHERE size IS NULL AND created_at < ?1
                            LIMIT ?2)
                         RETURNING file_id",
                    )?
                    .query_map(params![before_ms, max as i64], |r| r.get(0))?
                    .collect::<rusqlite::Result<Vec<String>>>()?;
                Ok(ids)
            })
            .await
            .map_err(backend)
    }
}
