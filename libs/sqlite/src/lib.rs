//! Group-committed SQLite for the all-in-one shape.
//!
//! One writer thread owns the only write connection. Jobs sent to it while it is busy are
//! batched into one transaction and one fsync, so durability costs one disk flush per batch,
//! not per message. Each job runs inside its own savepoint: a job that fails is rolled back
//! and reported to its caller alone, the rest of the batch commits. Reads go to a small pool of
//! read-only connections (WAL mode lets them run beside the writer). Checkpoints (copying the
//! WAL into the database file, with its own fsyncs) run on a thread of their own. The WAL only
//! starts over once a checkpoint has caught up with the last commit, which one running beside
//! a busy writer never does; so when the WAL has grown, the writer finishes the checkpoint
//! itself between two batches — copying only what was committed since the checkpointer's last
//! pass — and its next commit starts the WAL over. A writer that waited for a truncating
//! checkpoint instead stalled every commit for 0.2–1.5 s every few seconds under load.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, Transaction};
use tokio::sync::{Semaphore, oneshot};

/// Most jobs one transaction takes; more wait for the next one.
const MAX_BATCH: usize = 1024;
/// Read connections opened at start.
const READERS: usize = 4;
/// Most reads running at once, and read connections kept: a burst of reads (10,000 sockets
/// closing together, each looking up whom to tell) waits its turn instead of opening a
/// connection, with a page cache of its own, per read.
const MAX_READS: usize = READERS * 4;
/// How long a connection waits for another's lock (a previous process still closing) before
/// reporting the database busy.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the checkpointer copies committed WAL pages into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);
/// WAL pages (16 MiB) beyond which the writer finishes a checkpoint so the WAL starts over.
const WAL_RESTART_PAGES: i64 = 4_096;
/// WAL pages (128 MiB) beyond which the checkpointer empties the WAL however long the writer
/// waits: only if restarts keep failing (a reader that holds an old snapshot for long).
const WAL_LIMIT_PAGES: i64 = 32_768;
/// What a WAL file is cut back to when it starts over.
const WAL_KEEP_BYTES: i64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the database writer has stopped")]
    Closed,
    #[error("the transaction was not committed (see the log for the storage error)")]
    NotCommitted,
    #[error("opening {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
}

type Job = Box<dyn FnOnce(&Transaction<'_>) -> Box<dyn FnOnce() + Send> + Send>;

/// A SQLite database with a group-committing writer and a read pool. Cheap to clone.
#[derive(Clone)]
pub struct Db {
    writer: mpsc::Sender<Job>,
    /// Dropped with the last clone, which stops the checkpointer.
    _checkpointer: mpsc::Sender<()>,
    readers: Arc<Mutex<Vec<Connection>>>,
    /// A permit per read running (at most [`MAX_READS`]).
    reading: Arc<Semaphore>,
    path: Arc<PathBuf>,
}

impl Db {
    /// Opens (creating if needed) the database at `path`. Each component that keeps tables here
    /// creates them with [`Db::write`] when it opens.
    pub fn open(path: &Path) -> Result<Self, DbError> {
        let open_err = |source| DbError::Open {
            path: path.to_owned(),
            source,
        };
        owner_only(path)
            .map_err(|e| open_err(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))?;
        let conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        // FULL: a commit is on disk (WAL fsynced) before it returns; that is what an ack promises.
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;
             PRAGMA wal_autocheckpoint=0;",
        )
        .map_err(open_err)?;
        conn.pragma_update(None, "journal_size_limit", WAL_KEEP_BYTES)
            .map_err(open_err)?;
        let checkpoint_conn = Connection::open(path).map_err(open_err)?;
        checkpoint_conn
            .busy_timeout(BUSY_TIMEOUT)
            .map_err(open_err)?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            readers.push(open_reader(path).map_err(open_err)?);
        }
        let (writer, jobs) = mpsc::channel::<Job>();
        let restart = Arc::new(AtomicBool::new(false));
        let wanted = Arc::clone(&restart);
        thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || write_loop(conn, jobs, &wanted))
            .map_err(|e| open_err(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))?;
        let (checkpointer, stop) = mpsc::channel::<()>();
        thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || checkpoint_loop(&checkpoint_conn, &stop, &restart))
            .map_err(|e| open_err(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))?;
        Ok(Self {
            writer,
            _checkpointer: checkpointer,
            readers: Arc::new(Mutex::new(readers)),
            reading: Arc::new(Semaphore::new(MAX_READS)),
            path: Arc::new(path.to_owned()),
        })
    }

    /// Runs `f` in the next group commit and returns its result once the transaction is durable.
    /// An error from `f` rolls back `f`'s own writes only.
    pub async fn write<T, F>(&self, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> rusqlite::Result<T> + Send + 'static,
    {
        self.write_ordered(f, |_| {}).await
    }

    /// Queues `f` for the next group commit without waiting for it: for writes whose loss in a
    /// crash costs only a redelivery, such as a consumer's position. A failure is logged.
    pub fn write_detached<F>(&self, f: F)
    where
        F: FnOnce(&Transaction<'_>) -> rusqlite::Result<()> + Send + 'static,
    {
        let job: Job = Box::new(move |txn| {
            if let Err(e) = run_in_savepoint(txn, f) {
                tracing::warn!(error = %e, "background sqlite write failed");
            }
            Box::new(|| {})
        });
        if self.writer.send(job).is_err() {
            tracing::warn!("background sqlite write dropped: the writer has stopped");
        }
    }

    /// Runs `f` in the next group commit and, once the transaction is durable, runs
    /// `after_commit` on its result on the writer thread, in commit order, before returning it.
    /// This is how a log makes appended records visible to readers strictly in offset order.
    pub async fn write_ordered<T, F, A>(&self, f: F, after_commit: A) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> rusqlite::Result<T> + Send + 'static,
        A: FnOnce(&T) + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |txn| {
            let result = run_in_savepoint(txn, f);
            Box::new(move || {
                if let Ok(value) = &result {
                    after_commit(value);
                }
                let _ = tx.send(result);
            })
        });
        self.writer.send(job).map_err(|_| DbError::Closed)?;
        rx.await.map_err(|_| DbError::NotCommitted)?
    }

    /// Runs a read on a pooled connection, off the async threads.
    pub async fn read<T, F>(&self, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let readers = Arc::clone(&self.readers);
        let path = Arc::clone(&self.path);
        let permit = Arc::clone(&self.reading)
            .acquire_owned()
            .await
            .map_err(|_| DbError::Closed)?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let conn = readers.lock().ok().and_then(|mut pool| pool.pop());
            let conn = match conn {
                Some(conn) => conn,
                // More reads at once than connections yet: open one more; it joins the pool.
                None => open_reader(&path)?,
            };
            let result = f(&conn);
            if let Ok(mut pool) = readers.lock()
                && pool.len() < MAX_READS
            {
                pool.push(conn);
            }
            Ok(result?)
        })
        .await
        .map_err(|_| DbError::Closed)?
    }
}

/// A connection of the read pool: read-only, and waiting out a checkpoint's lock as the
/// writer does.
fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

/// Creates the database file readable by its owner only, or makes an existing one so: it holds
/// every message. SQLite gives its WAL and shared-memory files the same mode.
fn owner_only(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        }
        Err(e) => Err(e),
    }
}

fn run_in_savepoint<T>(
    txn: &Transaction<'_>,
    f: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<T>,
) -> Result<T, DbError> {
    // Prepared once per connection: a group commit runs these for every job.
    txn.prepare_cached("SAVEPOINT job")?.execute([])?;
    match f(txn) {
        Ok(value) => {
            txn.prepare_cached("RELEASE job")?.execute([])?;
            Ok(value)
        }
        Err(e) => {
            txn.execute_batch("ROLLBACK TO job; RELEASE job")?;
            Err(e.into())
        }
    }
}

/// Runs a checkpoint in `mode`; whether another checkpoint kept it from running, and the
/// WAL's size in pages.
fn checkpoint(conn: &Connection, mode: &str) -> rusqlite::Result<(bool, i64)> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |row| {
        Ok((row.get::<_, i64>(0)? != 0, row.get(1)?))
    })
}

/// Commits batches of jobs; between two, when the checkpointer asks (`restart`), finishes its
/// checkpoint so the next commit starts the WAL over.
fn write_loop(mut conn: Connection, jobs: mpsc::Receiver<Job>, restart: &AtomicBool) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let replies = match commit_batch(&mut conn, batch) {
            Ok(replies) => replies,
            Err(e) => {
                // The whole transaction failed (disk full, I/O error): every caller in it learns
                // so through its dropped reply channel; nothing was acknowledged.
                tracing::error!(error = %e, "sqlite group commit failed");
                continue;
            }
        };
        for reply in replies {
            reply();
        }
        if restart.swap(false, Ordering::Relaxed) {
            match checkpoint(&conn, "PASSIVE") {
                // The checkpointer was in the middle of a pass: again after the next batch.
                Ok((true, _)) => restart.store(true, Ordering::Relaxed),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "sqlite checkpoint failed"),
            }
        }
    }
}

/// Every [`CHECKPOINT_EVERY`] until the database is closed, a passive checkpoint (which never
/// blocks the writer), then asks the writer to finish it once the WAL has outgrown
/// [`WAL_RESTART_PAGES`]; a truncating one if it outgrew [`WAL_LIMIT_PAGES`] all the same.
fn checkpoint_loop(conn: &Connection, stop: &mpsc::Receiver<()>, restart: &AtomicBool) {
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY) {
        match checkpoint(conn, "PASSIVE") {
            Ok((_, pages)) if pages > WAL_LIMIT_PAGES => {
                if let Err(e) = checkpoint(conn, "TRUNCATE") {
                    tracing::warn!(error = %e, "sqlite checkpoint failed");
                }
            }
            Ok((_, pages)) if pages > WAL_RESTART_PAGES => restart.store(true, Ordering::Relaxed),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "sqlite checkpoint failed"),
        }
    }
}

fn commit_batch(
    conn: &mut Connection,
    batch: Vec<Job>,
) -> rusqlite::Result<Vec<Box<dyn FnOnce() + Send>>> {
    // IMMEDIATE: the write lock from the start. A deferred transaction that reads before it
    // writes (an append reads the conversation's last seq) cannot always be upgraded once the
    // checkpointer has moved the WAL on, and fails at once with "database is locked".
    let txn = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let replies = batch.into_iter().map(|job| job(&txn)).collect();
    txn.commit()?;
    Ok(replies)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, v TEXT NOT NULL);";

    #[tokio::test]
    async fn writes_are_visible_to_readers_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let db = Db::open(&path).unwrap();
        db.write(|t| t.execute_batch(SCHEMA)).await.unwrap();
        let mut writes = Vec::new();
        for k in 0..100_i64 {
            let db = db.clone();
            writes.push(tokio::spawn(async move {
                db.write(move |t| t.execute("INSERT INTO t VALUES (?1, 'x')", [k]))
                    .await
            }));
        }
        for w in writes {
            assert_eq!(w.await.unwrap().unwrap(), 1);
        }
        let n: i64 = db
            .read(|c| c.query_row("SELECT count(*) FROM t", [], |r| r.get(0)))
            .await
            .unwrap();
        assert_eq!(n, 100);
        drop(db);
        let db = Db::open(&path).unwrap();
        let n: i64 = db
            .read(|c| c.query_row("SELECT count(*) FROM t", [], |r| r.get(0)))
            .await
            .unwrap();
        assert_eq!(n, 100);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_reads_runs_a_bounded_number_at_once() {
        use std::sync::atomic::AtomicUsize;
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db.sqlite")).unwrap();
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let mut reads = Vec::new();
        for _ in 0..200 {
            let (db, running, most) = (db.clone(), Arc::clone(&running), Arc::clone(&most));
            reads.push(tokio::spawn(async move {
                db.read(move |c| {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(5));
                    running.fetch_sub(1, Ordering::SeqCst);
                    c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
                })
                .await
            }));
        }
        for read in reads {
            assert_eq!(read.await.unwrap().unwrap(), 1);
        }
        let most = most.load(Ordering::SeqCst);
        assert!((2..=MAX_READS).contains(&most), "{most} reads ran at once");
    }

    #[tokio::test]
    async fn committed_pages_reach_the_database_file_without_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let db = Db::open(&path).unwrap();
        db.write(|t| t.execute_batch(SCHEMA)).await.unwrap();
        db.write(|t| {
            for k in 0..1000_i64 {
                t.execute("INSERT INTO t VALUES (?1, ?2)", (k, "x".repeat(1024)))?;
            }
            Ok(())
        })
        .await
        .unwrap();
        // The writer checkpoints only once the WAL passes 16 MiB; this 1 MiB gets there through
        // the checkpointer.
        let size = || std::fs::metadata(&path).map_or(0, |m| m.len());
        for _ in 0..100 {
            if size() > 1_000_000 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("database file still {} bytes after 10 s", size());
    }

    #[tokio::test]
    async fn the_wal_starts_over_under_a_writer_that_never_pauses() {
        use std::io::Read;
        use std::sync::atomic::AtomicU64;
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db.sqlite")).unwrap();
        db.write(|t| t.execute_batch(SCHEMA)).await.unwrap();
        // The WAL header's checkpoint sequence number (bytes 12..16) counts its restarts.
        let wal = dir.path().join("db.sqlite-wal");
        let restarts = || {
            let mut header = [0; 16];
            std::fs::File::open(&wal)
                .and_then(|mut f| f.read_exact(&mut header))
                .map_or(0, |()| {
                    u32::from_be_bytes([header[12], header[13], header[14], header[15]])
                })
        };
        // Two writers, so a job is always waiting when a commit ends: no checkpoint beside them
        // ever catches up with the last commit by itself.
        let written = Arc::new(AtomicU64::new(0));
        let writers: Vec<_> = (0..2_i64)
            .map(|w| {
                let (db, written) = (db.clone(), Arc::clone(&written));
                tokio::spawn(async move {
                    for round in 0.. {
                        db.write(move |t| {
                            for k in 0..4 {
                                t.execute(
                                    "INSERT OR REPLACE INTO t VALUES (?1, ?2)",
                                    ((w * 4 + k) * 1024 + round % 1024, "x".repeat(4000)),
                                )?;
                            }
                            Ok(())
                        })
                        .await
                        .unwrap();
                        written.fetch_add(16_000, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        let first = restarts();
        // Long before the 128 MiB at which the checkpointer would empty it however long the
        // writer waits.
        while restarts() == first {
            let bytes = written.load(Ordering::Relaxed);
            assert!(
                bytes < 96 << 20,
                "{bytes} bytes written and the WAL never started over"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for w in writers {
            w.abort();
        }
    }

    #[tokio::test]
    async fn only_the_owner_may_read_the_database() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let db = Db::open(&path).unwrap();
        db.write(|t| t.execute_batch(SCHEMA)).await.unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir.path().join("db.sqlite-wal")), 0o600);
        drop(db);
        // One an older version left readable by everyone is closed up.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(Db::open(&path).unwrap());
        assert_eq!(mode(&path), 0o600);
    }

    #[tokio::test]
    async fn a_failing_job_rolls_back_alone() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db.sqlite")).unwrap();
        db.write(|t| t.execute_batch(SCHEMA)).await.unwrap();
        db.write(|t| t.execute("INSERT INTO t VALUES (1, 'a')", []))
            .await
            .unwrap();
        let ok = db.write(|t| t.execute("INSERT INTO t VALUES (2, 'b')", []));
        let dup = db.write(|t| {
            t.execute("INSERT INTO t VALUES (3, 'c')", [])?;
            t.execute("INSERT INTO t VALUES (1, 'dup')", [])
        });
        let (ok, dup) = tokio::join!(ok, dup);
        assert!(ok.is_ok());
        assert!(dup.is_err());
        let keys: Vec<i64> = db
            .read(|c| {
                let mut s = c.prepare("SELECT k FROM t ORDER BY k")?;
                s.query_map([], |r| r.get(0))?.collect()
            })
            .await
            .unwrap();
        assert_eq!(
            keys,
            vec![1, 2],
            "the failed job's first insert was rolled back"
        );
    }
}
