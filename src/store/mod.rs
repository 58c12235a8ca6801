//! The backing store: SQLite (embedded default, a file or memory) and PostgreSQL (production), through
//! sqlx's `Any` driver so that one set of portable SQL serves both, and every store test runs on both.
//!
//! The store holds tenancy (organizations, environments, users, API key hashes, known accounts). Every
//! write transaction bumps `store_revision`, which readers such as the sidecar poll to notice changes cheaply.
//! It also holds the fact store's facts, per environment (`facts.rs`); fact writes leave the revision alone.

mod accounts;
mod apply;
mod auth;
mod facts;
mod key_use;
mod lifecycle;
mod migrations;
mod readers;
mod snapshot;
mod sql;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, Executor};

pub use apply::{ApplyOutcome, IssuedKey, KeyRotation, StoreTx};
pub use auth::{AuthSnapshot, EnvironmentLimits, KeyUseCell, LiveKey};
pub use facts::{ARG_COLUMNS, FactStoreError, FactWrite, MAX_WILDCARD_DELETED};
pub use key_use::{KEY_USE_RESOLUTION, KeyRecord};
pub use lifecycle::{KeyEvent, KeyEventKind, Revocation, local_actor};

/// Which database a store runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot connect to the store at {url}: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("unsupported database URL {url}: use sqlite://PATH, sqlite::memory: or postgres://...")]
    UnsupportedUrl { url: String },
    #[error("cannot create the SQLite store {}: {source}", path.display())]
    CreateFile { path: PathBuf, source: std::io::Error },
    #[error("cannot migrate the store schema: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("store query failed while {context}: {source}")]
    Query { context: &'static str, source: sqlx::Error },
    #[error("the store holds unexpected data ({0}); was it edited by hand?")]
    Corrupt(String),
    #[error("no key with id {key_id:?} in the store (`orgkeeper keys list` shows every key's id); nothing was changed")]
    UnknownKey { key_id: String },
    /// A write transaction lost a race with another writer: SQLite's write lock was held (or this
    /// transaction's snapshot went stale while it waited), or another transaction created first a row this
    /// one meant to create. The transaction is rolled back; planning again from the store sees the winner.
    #[error("another apply is running against this store; nothing was changed")]
    ConcurrentApply {
        /// What this transaction was doing when it lost.
        context: &'static str,
    },
}

impl StoreError {
    /// Whether the database could not be reached at all (down, unreachable, out of connections), as opposed
    /// to refusing a statement: the answer a caller can retry later.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            StoreError::Connect { .. }
                | StoreError::Query {
                    source: sqlx::Error::PoolTimedOut
                        | sqlx::Error::PoolClosed
                        | sqlx::Error::Io(_)
                        | sqlx::Error::Tls(_)
                        | sqlx::Error::Protocol(_),
                    ..
                }
        )
    }

    /// The error for a failed statement of a write transaction: [`StoreError::ConcurrentApply`] when another
    /// writer got there first, [`StoreError::Query`] otherwise.
    pub(crate) fn from_write(context: &'static str, source: sqlx::Error) -> StoreError {
        if lost_a_race(&source) {
            // The database's own words stay out of the message (they read as a bug) but not out of the logs.
            tracing::debug!(context, error = %source, "a write transaction lost a race with another writer");
            StoreError::ConcurrentApply { context }
        } else {
            StoreError::Query { context, source }
        }
    }
}

/// Whether a statement failed only because another transaction got there first.
fn lost_a_race(error: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = error else { return false };
    if db.kind() == sqlx::error::ErrorKind::UniqueViolation {
        return true;
    }
    if let Some(sqlite) = db.try_downcast_ref::<sqlx::sqlite::SqliteError>() {
        // Extended result codes keep the primary code in their low byte: SQLITE_BUSY (5: "database is
        // locked", and BUSY_SNAPSHOT, a read snapshot too old to write from) or SQLITE_LOCKED (6).
        const SQLITE_BUSY: i32 = 5;
        const SQLITE_LOCKED: i32 = 6;
        let code = sqlx::error::DatabaseError::code(sqlite).and_then(|code| code.parse::<i32>().ok());
        return code.is_some_and(|code| matches!(code & 0xff, SQLITE_BUSY | SQLITE_LOCKED));
    }
    if let Some(postgres) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
        // serialization_failure, deadlock_detected, lock_not_available.
        return matches!(postgres.code(), "40001" | "40P01" | "55P03");
    }
    false
}

/// Attaches what we were doing to a database error.
pub(crate) trait QueryContext<T> {
    fn context(self, context: &'static str) -> Result<T, StoreError>;
}

impl<T> QueryContext<T> for Result<T, sqlx::Error> {
    fn context(self, context: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Query { context, source })
    }
}

/// A connection pool to the store, plus a count of the statements it has issued (for benchmarks and the
/// "no writes when idle" guarantee).
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// Lent connections for hot single-statement reads on a SQLite file (`readers.rs`); `None` elsewhere.
    readers: Option<Arc<readers::Readers>>,
    statements: Arc<AtomicU64>,
    writes: Arc<AtomicU64>,
    /// Who makes this store's changes, for the audit trail (`lifecycle.rs`).
    actor: Arc<str>,
}

/// How a store's connection pool behaves.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// How long a statement waits for a connection (a free one, or a new one to be opened) before it fails
    /// with an unreachable store.
    pub acquire_timeout: Duration,
    /// How much memory a SQLite connection may use for the file's pages.
    pub sqlite_memory: SqliteMemory,
}

/// How much memory each SQLite connection uses for the file's pages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SqliteMemory {
    /// A 32 MiB page cache and memory-mapped reads: a million facts make a few hundred MB of table and
    /// indexes, and this keeps index lookups off the read() path (the fact store, batch commands).
    #[default]
    Large,
    /// A 1 MiB page cache and no memory map: for a process that reads the tenancy now and then and must
    /// stay small (the sidecar's key ring: otherwise every pooled connection caches the whole file, and
    /// the mapped pages count in the sidecar's RSS too).
    Small,
}

impl SqliteMemory {
    fn pragmas(self) -> &'static str {
        match self {
            SqliteMemory::Large => {
                "PRAGMA cache_size = -32768; PRAGMA mmap_size = 1073741824; PRAGMA temp_store = MEMORY"
            }
            SqliteMemory::Small => "PRAGMA cache_size = -1024; PRAGMA mmap_size = 0; PRAGMA temp_store = MEMORY",
        }
    }
}

/// Long enough for a busy PostgreSQL to hand out a connection; what batch commands (plan, apply, the
/// controller) wait before giving up.
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            acquire_timeout: DEFAULT_ACQUIRE_TIMEOUT,
            sqlite_memory: SqliteMemory::Large,
        }
    }
}

/// The embedded default: a SQLite file in the working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://orgkeeper.db";

/// Connections to a SQLite file in the pool, and again lent to reads (`readers.rs`): each is a thread, and
/// SQLite serializes writers anyway.
const SQLITE_CONNECTIONS: u32 = 4;

impl Store {
    /// Connects, creating a SQLite file if needed, and brings the schema up to date.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        Store::connect_with(url, &StoreOptions::default()).await
    }

    /// [`Store::connect`] with other pool settings (the fact store fails faster than a batch command).
    pub async fn connect_with(url: &str, settings: &StoreOptions) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let (backend, url) = normalise_url(url)?;
        let memory = backend == Backend::Sqlite && url.contains(":memory:") || url.contains("mode=memory");
        if backend == Backend::Sqlite && !memory {
            prepare_sqlite_file(&url)?;
        }
        let memory_pragmas = settings.sqlite_memory.pragmas();
        let options = AnyPoolOptions::new()
            .acquire_timeout(settings.acquire_timeout)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if conn.backend_name().eq_ignore_ascii_case("sqlite") {
                        // WAL lets readers (the sidecar) proceed while a writer (apply) holds the lock.
                        conn.execute("PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000; PRAGMA synchronous = NORMAL")
                            .await?;
                        // The page cache and memory map as `SqliteMemory` says; statement journals (every
                        // multi-row insert has one) stay in memory instead of a temp file.
                        conn.execute(memory_pragmas).await?;
                    }
                    Ok(())
                })
            });
        // An in-memory SQLite database lives and dies with its one connection.
        let options = if memory {
            options
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
        } else {
            match backend {
                // A SQLite connection is a file handle in this process: it cannot go stale the way a network
                // connection can, so pinging it before every use (sqlx's default) only adds a round trip to
                // its worker thread, which was a third of the fact store's CPU per read.
                Backend::Sqlite => options.max_connections(SQLITE_CONNECTIONS).test_before_acquire(false),
                Backend::Postgres => options.max_connections(8),
            }
        };
        let pool = options.connect(&url).await.map_err(|source| StoreError::Connect {
            url: redact_url(&url),
            source,
        })?;
        migrations::migrator(backend).run(&pool).await?;
        // An in-memory database exists only in its one pooled connection, so it has no readers.
        let readers = (backend == Backend::Sqlite && !memory)
            .then(|| Arc::new(readers::Readers::new(pool.clone(), SQLITE_CONNECTIONS as usize)));
        Ok(Store {
            pool,
            backend,
            readers,
            statements: Arc::new(AtomicU64::new(0)),
            writes: Arc::new(AtomicU64::new(0)),
            actor: Arc::from(lifecycle::local_actor()),
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// How many statements this store (and its clones) has issued since it was opened.
    pub fn statements(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }

    /// How many of those statements wrote (INSERT, UPDATE, DELETE).
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    pub(crate) fn count_write(&self, n: u64) {
        self.count(n);
        self.writes.fetch_add(n, Ordering::Relaxed);
    }

    /// The underlying pool, for adapters that keep their own tables (the fact store) and for tests.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub(crate) fn count(&self, n: u64) {
        self.statements.fetch_add(n, Ordering::Relaxed);
    }

    /// The current revision; it changes on every committed write to tenancy data.
    pub async fn revision(&self) -> Result<i64, StoreError> {
        self.count(1);
        sqlx::query_scalar::<Any, i64>("SELECT revision FROM store_revision WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .context("reading the store revision")
    }

    /// Closes the pool, waiting for connections to finish.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// The SQLite file holds key hashes, facts and e-mail addresses: it is created owner-only (0600) before
/// SQLite opens it, because SQLite would create it 0644 (less the umask). SQLite gives its `-wal` and `-shm`
/// files the database file's own mode, so they are 0600 too. An existing file that others can read is
/// used as it is, with a warning saying how to fix it.
fn prepare_sqlite_file(url: &str) -> Result<(), StoreError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

    let options = sqlite_options(url)?;
    let path = options.get_filename();
    // Only where SQLite itself would create it (`normalise_url` adds `mode=rwc` unless told otherwise).
    let created = if !url.contains("mode=rwc") {
        Err(std::io::Error::from(std::io::ErrorKind::AlreadyExists))
    } else {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
    };
    match created {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            if let Ok(metadata) = std::fs::metadata(path) {
                let mode = metadata.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    tracing::warn!(
                        path = %path.display(),
                        mode = format!("{mode:04o}"),
                        "the SQLite store can be read by other users of this machine, and it holds key hashes, \
                         facts and e-mail addresses: run chmod 600 on it and on its -wal and -shm files"
                    );
                }
            }
            Ok(())
        }
        Err(source) => Err(StoreError::CreateFile {
            path: path.to_owned(),
            source,
        }),
    }
}

fn sqlite_options(url: &str) -> Result<sqlx::sqlite::SqliteConnectOptions, StoreError> {
    url.parse().map_err(|source| StoreError::Connect {
        url: redact_url(url),
        source,
    })
}

/// Accepts `sqlite:` and `postgres:`/`postgresql:` URLs; SQLite files are created when missing.
fn normalise_url(url: &str) -> Result<(Backend, String), StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok((Backend::Postgres, url.to_owned()));
    }
    if !url.starts_with("sqlite:") {
        return Err(StoreError::UnsupportedUrl { url: redact_url(url) });
    }
    if url.contains(":memory:") || url.contains("mode=") {
        return Ok((Backend::Sqlite, url.to_owned()));
    }
    let separator = if url.contains('?') { '&' } else { '?' };
    Ok((Backend::Sqlite, format!("{url}{separator}mode=rwc")))
}

/// A database URL without its password, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Seconds since the Unix epoch, the store's timestamp unit.
pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

pub(crate) type Row = AnyRow;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_appear_in_messages() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/orgkeeper"),
            "postgres://app:***@db:5432/orgkeeper"
        );
        assert_eq!(redact_url("postgres://app@db/orgkeeper"), "postgres://app@db/orgkeeper");
        assert_eq!(redact_url("sqlite://orgkeeper.db"), "sqlite://orgkeeper.db");
    }

    #[test]
    fn the_sqlite_file_is_found_in_either_url_form() {
        for url in ["sqlite://dir/x.db", "sqlite:dir/x.db", "sqlite:///tmp/dir/x.db"] {
            let (_, url) = normalise_url(url).unwrap();
            let path = sqlite_options(&url).unwrap().get_filename().to_owned();
            assert!(path.ends_with("dir/x.db"), "{url}: {}", path.display());
        }
    }

    #[test]
    fn sqlite_files_are_created_when_missing() {
        assert_eq!(normalise_url("sqlite://x.db").unwrap().1, "sqlite://x.db?mode=rwc");
        assert_eq!(normalise_url("sqlite::memory:").unwrap().1, "sqlite::memory:");
        assert!(matches!(
            normalise_url("mysql://x"),
            Err(StoreError::UnsupportedUrl { .. })
        ));
    }
}
