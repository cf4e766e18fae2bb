//! The PostgreSQL back end of the Rust weather service, chosen by a `--db` that is a libpq URL
//! (`postgresql://...`, `postgres://...`) or `pg:` followed by a key=value connection string.
//! It has the schema, statements, connections and lock choices of plaza's PostgreSQL back end
//! (apps/weather/storage_pg.c, forecast.c) for one replica, on tokio-postgres:
//!
//! - Connections, one per role: the writer's own (used only by the writer task, reconnected
//!   on its next batch if it broke), a pool of 4 for the readers (each lent to one task at a
//!   time, so a reader never waits behind a commit), and 4 lock sessions.
//! - A batch of readings is one statement (INSERT ... SELECT FROM unnest() of three array
//!   parameters), so one implicit transaction in one round trip: stored whole or not at all.
//! - Forecasts live in the table `forecasts`, as plaza's service keeps them for its replicas.
//!   A refresh, with the city's tokio::sync::Mutex held by the caller (single flight within
//!   the process), borrows a lock session, takes the city's session-level advisory lock
//!   together with the next fencing token (pg_advisory_lock and nextval in one statement),
//!   reads the stored forecast, adopts it if another process wrote it recently or else
//!   reads the 32 newest readings, computes and writes it with the token (the write applies
//!   only if no higher token wrote the city), then unlocks. The sessions run with
//!   idle_session_timeout = 5 s, plaza's default lease.
//! - Every statement is prepared once per connection, so each call is one round trip.
//!
//! A lock session that is given up in the middle of a refresh (a timeout, or the request
//! future dropped when its client went away) may still hold its advisory lock: it is never
//! lent again but dropped, and closing its connection releases whatever it held.

use std::error::Error as StdError;
use std::str::FromStr;
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::{timeout, timeout_at, Instant};
use tokio_postgres::{Client, Config, NoTls, Statement};

pub type BoxError = Box<dyn StdError + Send + Sync>;

/// Reader connections, and lock sessions (plaza's WX_STORE_READERS and WX_LOCK_SESSIONS).
const READERS: usize = 4;
const LOCK_SESSIONS: usize = 4;
/// The lock sessions' lease: the server ends a session idle this long (plaza's default).
const LEASE_MS: u64 = 5000;
/// How long one storage call may take (plaza's PG_TIMEOUT).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an unlock may take before the session is dropped instead.
const UNLOCK_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: [&str; 4] = [
    "CREATE TABLE IF NOT EXISTS cities(name TEXT PRIMARY KEY, base DOUBLE PRECISION NOT NULL)",
    "CREATE TABLE IF NOT EXISTS readings(id BIGSERIAL PRIMARY KEY, city TEXT NOT NULL, \
     temperature DOUBLE PRECISION NOT NULL, time BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS readings_city_time ON readings(city, time)",
    "CREATE TABLE IF NOT EXISTS forecasts(city TEXT PRIMARY KEY, temperature DOUBLE PRECISION NOT NULL, \
     computed_at BIGINT NOT NULL, based_on INT NOT NULL, token BIGINT NOT NULL)",
];
const FENCE_SETUP: &str = "CREATE SEQUENCE IF NOT EXISTS plaza_fence_seq; \
     CREATE TABLE IF NOT EXISTS plaza_fence_seen (key bigint PRIMARY KEY, token bigint NOT NULL)";
// The protocol's seed computed in float8, as plaza's back end does.
const SEED_CITIES_SQL: &str = "INSERT INTO cities(name, base) SELECT 'city' || lpad(i::text, 2, '0'), \
     ((i * 7) % 40)::float8 - 5.0::float8 FROM generate_series(0, 63) i";
const SEED_READINGS_SQL: &str = "INSERT INTO readings(city, temperature, time) SELECT 'city' || lpad(i::text, 2, '0'), \
     (((i * 7) % 40)::float8 - 5.0::float8) + (((k * 13 + i) % 11) - 5)::float8 * 0.1::float8, \
     $1::bigint - (31 - k) * 60000 FROM generate_series(0, 63) i, generate_series(0, 31) k ORDER BY i, k";
const INSERT_SQL: &str = "INSERT INTO readings(city, temperature, time) \
     SELECT * FROM unnest($1::text[], $2::float8[], $3::bigint[])";
const RECENT_SQL: &str = "SELECT temperature, time FROM readings WHERE city = $1 ORDER BY time DESC LIMIT $2::int";
const FORECAST_GET_SQL: &str = "SELECT temperature, computed_at, based_on, token FROM forecasts WHERE city = $1";
// The fencing check and the write in one statement: nothing is written (0 rows) when a
// higher token has written the city.
const FORECAST_PUT_SQL: &str = "INSERT INTO forecasts AS f (city, temperature, computed_at, based_on, token) \
     VALUES ($1, $2::float8, $3::bigint, $4::int, $5::bigint) ON CONFLICT (city) DO UPDATE \
     SET temperature = EXCLUDED.temperature, computed_at = EXCLUDED.computed_at, \
     based_on = EXCLUDED.based_on, token = EXCLUDED.token WHERE f.token <= EXCLUDED.token";
// nextval runs once the lock is granted: the subquery in FROM is evaluated first.
const LOCK_SQL: &str = "SELECT nextval('plaza_fence_seq') FROM (SELECT pg_advisory_lock($1::bigint)) l";
const UNLOCK_SQL: &str = "SELECT pg_advisory_unlock($1::bigint)";

/// Whether `db` names a PostgreSQL database, and its connection settings.
pub fn parse_url(db: &str) -> Option<Result<Config, BoxError>> {
    let conninfo = if db.starts_with("postgresql://") || db.starts_with("postgres://") {
        db
    } else if let Some(rest) = db.strip_prefix("pg:") {
        rest
    } else {
        return None;
    };
    Some(Config::from_str(conninfo).map_err(|e| e.into()))
}

async fn connect(cfg: &Config, quiet: bool) -> Result<Client, BoxError> {
    let (client, conn) = timeout(CALL_TIMEOUT, cfg.connect(NoTls)).await.map_err(|_| "connect timed out")??;
    tokio::spawn(async move {
        // A lock session ended by its lease while idle is expected; it is replaced.
        if let Err(e) = conn.await {
            if !quiet {
                eprintln!("weather-rust: postgresql connection: {e}");
            }
        }
    });
    Ok(client)
}

async fn within<T, E: Into<BoxError>>(f: impl std::future::Future<Output = Result<T, E>>) -> Result<T, BoxError> {
    match timeout(CALL_TIMEOUT, f).await {
        Ok(r) => r.map_err(|e| e.into()),
        Err(_) => Err("the database did not answer within 30 s".into()),
    }
}

/// The forecast of a city as stored in `forecasts`.
#[derive(Clone, Copy)]
pub struct Stored {
    pub temperature: f64,
    pub computed_at: i64,
    pub based_on: i32,
    pub token: u64,
}

// ---------------------------------------------------------------------------------------
// A pool of connections of one kind, each lent to one task at a time.

trait Member: Sized + Send {
    fn usable(&self) -> bool;
}

struct Pool<T: Member> {
    slots: Semaphore,
    idle: parking_lot::Mutex<Vec<T>>,
}

/// A lent member; it goes back to the pool when dropped, unless it is no longer usable.
struct Lent<'a, T: Member> {
    pool: &'a Pool<T>,
    _permit: SemaphorePermit<'a>,
    item: Option<T>,
}

impl<T: Member> Drop for Lent<'_, T> {
    fn drop(&mut self) {
        if let Some(item) = self.item.take() {
            if item.usable() {
                self.pool.idle.lock().push(item);
            }
        }
    }
}

impl<T: Member> Pool<T> {
    fn new(size: usize) -> Pool<T> {
        Pool {
            slots: Semaphore::new(size),
            idle: parking_lot::Mutex::new(Vec::with_capacity(size)),
        }
    }

    /// A member: an idle one, or a new one made by `make` (the permit bounds how many exist).
    async fn lend<F, Fut>(&self, make: F) -> Result<Lent<'_, T>, BoxError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T, BoxError>>,
    {
        let permit = self.slots.acquire().await.map_err(|_| "pool closed")?;
        let idle = self.idle.lock().pop();
        let item = match idle {
            Some(item) => item,
            None => make().await?,
        };
        Ok(Lent {
            pool: self,
            _permit: permit,
            item: Some(item),
        })
    }
}

struct Reader {
    client: Client,
    recent: Statement,
    forecast_get: Statement,
    forecast_put: Statement,
}

impl Member for Reader {
    fn usable(&self) -> bool {
        !self.client.is_closed()
    }
}

struct LockSession {
    client: Client,
    lock: Statement,
    unlock: Statement,
    /// Set from the lock statement's start to the unlock's success: while set, the session
    /// may hold an advisory lock, so it must not be lent again.
    maybe_held: bool,
}

impl Member for LockSession {
    fn usable(&self) -> bool {
        !self.maybe_held && !self.client.is_closed()
    }
}

// ---------------------------------------------------------------------------------------
// The store

pub struct Store {
    cfg: Config,
    readers: Pool<Reader>,
    sessions: Pool<LockSession>,
}

/// The writer's connection, owned by the writer task.
pub struct Writer {
    cfg: Config,
    conn: Option<(Client, Statement)>,
}

/// The distributed lock's key of a city: FNV-1a of a name of its own, as plaza's service
/// computes it, so that both take the same advisory lock for a city.
fn city_key(name: &str) -> i64 {
    let mut h: u64 = 1469598103934665603;
    for b in "plaza-weather/forecast/".bytes().chain(name.bytes()) {
        h = (h ^ b as u64).wrapping_mul(1099511628211);
    }
    h as i64
}

impl Store {
    /// Connects the writer, creates the schema (and the fencing objects) if missing, seeds
    /// an empty database, and opens the lock sessions.
    pub async fn open(cfg: Config, now_ms: i64) -> Result<(Store, Writer), BoxError> {
        let mut client = connect(&cfg, false).await?;
        for sql in SCHEMA {
            // Services starting at once can collide creating one table; the next try finds it.
            let mut r = client.batch_execute(sql).await;
            for _ in 0..2 {
                if r.is_ok() {
                    break;
                }
                r = client.batch_execute(sql).await;
            }
            r.map_err(|e| format!("schema: {e}"))?;
        }
        {
            // Two services starting on one empty database seed it once.
            let tx = client.transaction().await?;
            tx.batch_execute("LOCK TABLE cities IN EXCLUSIVE MODE").await?;
            let have: i64 = tx.query_one("SELECT count(*) FROM cities", &[]).await?.get(0);
            if have == 0 {
                tx.execute(SEED_CITIES_SQL, &[]).await?;
                tx.execute(SEED_READINGS_SQL, &[&now_ms]).await?;
            }
            tx.commit().await?;
        }
        let insert = client.prepare(INSERT_SQL).await?;
        let store = Store {
            cfg: cfg.clone(),
            readers: Pool::new(READERS),
            sessions: Pool::new(LOCK_SESSIONS),
        };
        // The lock sessions are made at start, as plaza's service makes them.
        let mut made = Vec::new();
        for _ in 0..LOCK_SESSIONS {
            made.push(store.new_session().await?);
        }
        store.sessions.idle.lock().extend(made);
        Ok((
            store,
            Writer {
                cfg,
                conn: Some((client, insert)),
            },
        ))
    }

    async fn new_reader(&self) -> Result<Reader, BoxError> {
        let client = connect(&self.cfg, false).await?;
        let recent = client.prepare(RECENT_SQL).await?;
        let forecast_get = client.prepare(FORECAST_GET_SQL).await?;
        let forecast_put = client.prepare(FORECAST_PUT_SQL).await?;
        Ok(Reader {
            client,
            recent,
            forecast_get,
            forecast_put,
        })
    }

    async fn new_session(&self) -> Result<LockSession, BoxError> {
        let client = connect(&self.cfg, true).await?;
        let mut r = client.batch_execute(FENCE_SETUP).await;
        for _ in 0..2 {
            if r.is_ok() {
                break;
            }
            r = client.batch_execute(FENCE_SETUP).await;
        }
        r?;
        client
            .batch_execute(&format!("SET idle_session_timeout = {LEASE_MS}"))
            .await?;
        let lock = client.prepare(LOCK_SQL).await?;
        let unlock = client.prepare(UNLOCK_SQL).await?;
        Ok(LockSession {
            client,
            lock,
            unlock,
            maybe_held: false,
        })
    }

    async fn reader(&self) -> Result<Lent<'_, Reader>, BoxError> {
        within(self.readers.lend(|| self.new_reader())).await
    }

    /// The city's newest readings, newest first, at most `max`.
    pub async fn recent(&self, city: &str, max: i32) -> Result<Vec<(f64, i64)>, BoxError> {
        let r = self.reader().await?;
        let c = r.item.as_ref().expect("lent");
        let rows = within(c.client.query(&c.recent, &[&city, &max])).await?;
        Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
    }

    /// The cities and their bases, sorted by name.
    pub async fn cities(&self) -> Result<Vec<(String, f64)>, BoxError> {
        let r = self.reader().await?;
        let c = r.item.as_ref().expect("lent");
        let rows = within(c.client.query("SELECT name, base FROM cities ORDER BY name", &[])).await?;
        Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
    }

    async fn forecast_get(&self, city: &str) -> Result<Option<Stored>, BoxError> {
        let r = self.reader().await?;
        let c = r.item.as_ref().expect("lent");
        let row = within(c.client.query_opt(&c.forecast_get, &[&city])).await?;
        Ok(row.map(|row| Stored {
            temperature: row.get(0),
            computed_at: row.get(1),
            based_on: row.get(2),
            token: row.get::<_, i64>(3) as u64,
        }))
    }

    /// Ok(true) if written, Ok(false) if refused: a higher token wrote the city first.
    async fn forecast_put(&self, city: &str, f: &Stored) -> Result<bool, BoxError> {
        let r = self.reader().await?;
        let c = r.item.as_ref().expect("lent");
        let token = f.token as i64;
        let n = within(c.client.execute(
            &c.forecast_put,
            &[&city, &f.temperature, &f.computed_at, &f.based_on, &token],
        ))
        .await?;
        Ok(n == 1)
    }

    /// Refreshes the city's forecast under its distributed lock; the caller holds the
    /// city's local lock. `known_token`: the token of the forecast this process serves (never
    /// adopted again: it was found stale). A stored forecast younger than `fresh_ms` written
    /// by another holder is adopted. `deadline` bounds the wait for a session and the lock.
    pub async fn refresh(
        &self,
        city: &str,
        base: f64,
        known_token: u64,
        fresh_ms: i64,
        deadline: Instant,
        compute: impl FnOnce(Option<f64>, &[(f64, i64)]) -> Option<f64>,
        now_ms: impl Fn() -> i64,
    ) -> Result<Stored, BoxError> {
        let mut lent = match timeout_at(deadline, self.sessions.lend(|| self.new_session())).await {
            Ok(r) => r?,
            Err(_) => return Err("no lock session within the lock timeout".into()),
        };
        let key = city_key(city);
        // One retry on a new session if the lent one had ended while idle (its lease): it
        // held nothing then.
        let mut token = None;
        for attempt in 0..2 {
            if attempt == 1 {
                lent.item = Some(self.new_session().await?);
            }
            let s = lent.item.as_mut().expect("lent");
            s.maybe_held = true;
            match timeout_at(deadline, s.client.query_one(&s.lock, &[&key])).await {
                Err(_) => return Err("distributed lock not had within the lock timeout".into()),
                Ok(Ok(row)) => {
                    token = Some(row.get::<_, i64>(0) as u64);
                    break;
                }
                Ok(Err(e)) if attempt == 0 && s.client.is_closed() => {
                    let _ = e;
                    continue;
                }
                Ok(Err(e)) => return Err(e.into()),
            }
        }
        let token = token.expect("locked");
        let outcome = self.refresh_held(city, base, known_token, fresh_ms, token, compute, now_ms).await;
        let s = lent.item.as_mut().expect("lent");
        match timeout(UNLOCK_TIMEOUT, s.client.query_one(&s.unlock, &[&key])).await {
            Ok(Ok(row)) if row.get::<_, bool>(0) => s.maybe_held = false,
            Ok(Ok(_)) => {
                s.maybe_held = false;
                eprintln!("weather-rust: distributed lock of {city} (token {token}) was lost while held");
            }
            // The session is dropped (maybe_held stays set), which releases the lock.
            _ => {}
        }
        outcome
    }

    #[allow(clippy::too_many_arguments)]
    async fn refresh_held(
        &self,
        city: &str,
        base: f64,
        known_token: u64,
        fresh_ms: i64,
        token: u64,
        compute: impl FnOnce(Option<f64>, &[(f64, i64)]) -> Option<f64>,
        now_ms: impl Fn() -> i64,
    ) -> Result<Stored, BoxError> {
        let stored = self.forecast_get(city).await?;
        if let Some(f) = &stored {
            if f.token != known_token && fresh_ms > 0 && now_ms() - f.computed_at < fresh_ms {
                // Another process refreshed it recently: single flight across processes.
                return Ok(*f);
            }
        }
        let recent = self.recent(city, 32).await?;
        let previous = stored.as_ref().map(|f| f.temperature);
        let f = Stored {
            temperature: compute(previous, &recent).unwrap_or(base),
            computed_at: now_ms(),
            based_on: recent.len() as i32,
            token,
        };
        if self.forecast_put(city, &f).await? {
            return Ok(f);
        }
        // The lock was lost and a later holder wrote: its forecast is the one to serve.
        eprintln!("weather-rust: forecast of {city} not written: token {token} is stale");
        self.forecast_get(city)
            .await?
            .ok_or_else(|| "forecast refused but none stored".into())
    }
}

impl Writer {
    /// Commits the readings in one statement (one implicit transaction); reconnects first if
    /// the connection broke.
    pub async fn insert_batch(&mut self, cities: &[&str], temps: &[f64], times: &[i64]) -> Result<(), BoxError> {
        if cities.is_empty() {
            return Ok(());
        }
        if matches!(&self.conn, Some((c, _)) if c.is_closed()) {
            self.conn = None;
        }
        if self.conn.is_none() {
            let client = connect(&self.cfg, false).await?;
            let insert = within(client.prepare(INSERT_SQL)).await?;
            self.conn = Some((client, insert));
        }
        let (client, insert) = self.conn.as_ref().expect("connected");
        let n = within(client.execute(insert, &[&cities, &temps, &times])).await?;
        if n != cities.len() as u64 {
            return Err(format!("short insert: {n} of {} rows", cities.len()).into());
        }
        Ok(())
    }
}
