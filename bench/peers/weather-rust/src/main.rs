//! The weather service of the protocol shared with plaza's apps/weather (bench/peers/README.md,
//! "Weather service peers") written the way a Rust programmer would write it today: tokio's
//! multi-thread runtime, hyper 0.14, rusqlite, parking_lot and serde. It is a benchmark peer
//! of plaza's service and follows the same protocol (endpoints, JSON shapes, status codes,
//! schema, seeding, staleness, group commit, command line):
//!
//!   weather-rust [serve] --listen 127.0.0.1:8080 --db weather.db [--workers N]
//!                        [--forecast-ttl-ms 1000] [--refresh-ms 1000] [--batch-linger-ms 0]
//!
//! A `--db` that is a PostgreSQL URL (`postgresql://...`, `postgres://...`, or `pg:` and a
//! key=value connection string) selects the PostgreSQL back end (pg.rs: tokio-postgres, the
//! schema, statements and lock choices of plaza's PostgreSQL back end for one replica);
//! anything else is an SQLite file.
//!
//! Locks, as the protocol assigns them:
//! - `current` of a city is behind a parking_lot::Mutex (a data lock): only copies in and
//!   out happen inside it, never an await (its guard is not Send, so the compiler refuses
//!   to hold it across one in a spawned task).
//! - `forecast` of a city is behind a tokio::sync::Mutex (a logic lock): a refresh holds it
//!   across the database round trip, which runs on tokio's blocking pool
//!   (spawn_blocking) with SQLite and on tokio's reactor with PostgreSQL (where it also
//!   takes the city's distributed lock inside, as plaza's service does), so tasks waiting
//!   for the forecast park instead of blocking a worker.
//! - One writer task owns the writing connection. Handlers send it their readings through
//!   a bounded mpsc channel with a oneshot sender; the writer commits whatever is queued in
//!   one transaction (at most 1000 readings; with --batch-linger-ms it waits that long
//!   after taking the first for more, as plaza's service does) and acknowledges every
//!   request of the batch after the commit, so a 200 to a POST means its readings are in
//!   the database file.
//! - The writer's connection does not checkpoint (wal_autocheckpoint=0); a checkpointer task
//!   does, on a connection of its own, on the blocking pool, every 100 ms when something was
//!   committed since its last run (PROTOCOL.md, Checkpoints), as plaza's service does.
//!
//! A header block not complete within 10 s gets 408 and the connection is closed. hyper
//! 0.14.19 (Debian's) has `http1_header_read_timeout`, but it never fires (the flag that
//! would start its timer is never set), so the listener hands hyper connections wrapped in
//! `Guarded`, which does that job (see there). A body not complete within 10 s is the
//! handler's business (`read_body`).
//!
//! Shutdown on SIGTERM or SIGINT: stop accepting, let hyper finish the requests in flight
//! (idle keep-alive connections are closed), then tell the writer to commit what it holds
//! and stop, and exit 0.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::process::exit;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hyper::body::HttpBody;
use hyper::header::{HeaderValue, ALLOW, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use hyper::service::{make_service_fn, service_fn};
use hyper::{Body, Method, Request, Response, Server, StatusCode};
use rusqlite::{params, Connection, TransactionBehavior};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

mod pg;

const CITIES: usize = 64;
const SEED_READINGS: i64 = 32;
const HORIZON_MS: f64 = 600_000.0; // the forecast looks 10 minutes ahead
const MAX_POST_READINGS: usize = 1000;
const BATCH_READINGS: usize = 1000;
const MAX_BODY: usize = 1 << 20;
const MAX_HEADER_BLOCK: usize = 8 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const BUSY_TIMEOUT_MS: u64 = 5000;
const WRITER_QUEUE: usize = 1024; // requests, not readings
/// PostgreSQL: how long a refresh may wait for a lock session and the city's distributed
/// lock (plaza's --lock-timeout-ms default).
const LOCK_TIMEOUT: Duration = Duration::from_millis(1000);

const PRAGMAS: &str = "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000; \
                       PRAGMA wal_autocheckpoint=0; PRAGMA journal_size_limit=67108864;";
/// The checkpointer's period, the WAL size in pages from which it tries to make the WAL
/// start over, and the size from which it waits to (PROTOCOL.md, Checkpoints).
const CHECKPOINT_MS: u64 = 100;
const WAL_RESTART_FRAMES: i64 = 4096;
const WAL_FORCE_FRAMES: i64 = 65536;
const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS cities(name TEXT PRIMARY KEY, base REAL NOT NULL);
    CREATE TABLE IF NOT EXISTS readings(id INTEGER PRIMARY KEY, city TEXT NOT NULL,
        temperature REAL NOT NULL, time INTEGER NOT NULL);
    CREATE INDEX IF NOT EXISTS readings_city_time ON readings(city, time);";
const RECENT_SQL: &str = "SELECT temperature, time FROM readings WHERE city = ?1 ORDER BY time DESC LIMIT 32";
const INSERT_SQL: &str = "INSERT INTO readings(city, temperature, time) VALUES (?1, ?2, ?3)";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// Command line

struct Config {
    listen: SocketAddr,
    db: String,
    workers: usize,
    ttl_ms: i64,
    refresh_ms: u64,
    linger: Duration,
}

fn usage(msg: &str) -> ! {
    eprintln!("weather-rust: {msg}");
    eprintln!(
        "usage: weather-rust [serve] --listen HOST:PORT --db FILE|postgresql://... [--workers N] \
         [--forecast-ttl-ms MS] [--refresh-ms MS] [--batch-linger-ms MS]"
    );
    exit(64);
}

fn number<T: std::str::FromStr>(flag: &str, v: &str, min: T) -> T
where
    T: PartialOrd,
{
    match v.parse::<T>() {
        Ok(n) if n >= min => n,
        _ => usage(&format!("{flag}: not a valid number: {v:?}")),
    }
}

fn parse_args() -> Config {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(|a| a == "serve").unwrap_or(false) {
        args.remove(0);
    }
    let mut listen = None;
    let mut db = None;
    let mut workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut ttl_ms = 1000i64;
    let mut refresh_ms = 1000u64;
    let mut linger_ms = 0u64;
    let mut i = 0;
    while i < args.len() {
        // Both `--flag value` and `--flag=value`.
        let (flag, value) = match args[i].split_once('=') {
            Some((f, v)) => (f.to_string(), v.to_string()),
            None => {
                i += 1;
                let v = args
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| usage(&format!("{} needs a value", args[i - 1])));
                (args[i - 1].clone(), v)
            }
        };
        i += 1;
        match flag.as_str() {
            "--listen" => {
                let addr = value.to_socket_addrs().ok().and_then(|mut a| a.next());
                listen = Some(addr.unwrap_or_else(|| usage(&format!("--listen: not HOST:PORT: {value:?}"))));
            }
            "--db" => db = Some(value),
            "--workers" => workers = number(&flag, &value, 1usize),
            "--forecast-ttl-ms" => ttl_ms = number(&flag, &value, 0i64),
            "--refresh-ms" => refresh_ms = number(&flag, &value, 1u64),
            "--batch-linger-ms" => linger_ms = number(&flag, &value, 0u64),
            _ => usage(&format!("unknown option {flag:?}")),
        }
    }
    Config {
        listen: listen.unwrap_or_else(|| usage("--listen is required")),
        db: db.unwrap_or_else(|| usage("--db is required")),
        workers,
        ttl_ms,
        refresh_ms,
        linger: Duration::from_millis(linger_ms),
    }
}

// ---------------------------------------------------------------------------------------
// Database

fn open_db(path: &str) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_millis(BUSY_TIMEOUT_MS))?;
    conn.execute_batch(PRAGMAS)?;
    Ok(conn)
}

/// Creates the schema and, when `cities` is empty, seeds it in one transaction: city i has
/// base ((i*7) % 40) - 5 and 32 readings one minute apart ending at `start`.
fn create_and_seed(conn: &mut Connection, start: i64) -> rusqlite::Result<()> {
    conn.execute_batch(SCHEMA)?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let have: i64 = tx.query_row("SELECT count(*) FROM cities", [], |r| r.get(0))?;
    if have == 0 {
        let mut city = tx.prepare("INSERT INTO cities(name, base) VALUES (?1, ?2)")?;
        let mut reading = tx.prepare(INSERT_SQL)?;
        for i in 0..CITIES as i64 {
            let name = format!("city{i:02}");
            let base = ((i * 7) % 40) as f64 - 5.0;
            city.execute(params![name, base])?;
            for k in 0..SEED_READINGS {
                let t = base + (((k * 13 + i) % 11) - 5) as f64 * 0.1;
                reading.execute(params![name, t, start - (SEED_READINGS - 1 - k) * 60_000])?;
            }
        }
        drop(city);
        drop(reading);
    }
    tx.commit()
}

// ---------------------------------------------------------------------------------------
// State

/// The latest reading of a city (newest by reading time) and how many arrived since start.
struct Current {
    temperature: f64,
    time: i64,
    since_start: u64,
}

/// `computed_at` 0 means never computed (always stale).
struct Forecast {
    temperature: f64,
    computed_at: i64,
    based_on: usize,
    /// PostgreSQL: the fencing token the forecast was written with (0: none yet).
    token: u64,
}

struct City {
    name: String,
    base: f64,
    current: parking_lot::Mutex<Current>,
    forecast: tokio::sync::Mutex<Forecast>,
}

struct Row {
    city: usize,
    temperature: f64,
    time: i64,
}

/// One POST's readings on their way to the writer; `ack` carries whether they were committed.
struct Job {
    rows: Vec<Row>,
    ack: oneshot::Sender<bool>,
}

enum WriterMsg {
    Write(Job),
    /// Sent once no handler is left: commit what is held and stop.
    Stop,
}

struct App {
    cities: Vec<City>,
    index: HashMap<String, usize>,
    db_path: String,
    /// Reading connections for forecast refreshes, reused across spawn_blocking calls.
    readers: parking_lot::Mutex<Vec<Connection>>,
    /// The PostgreSQL back end, when --db names one (then db_path and readers are unused).
    pg: Option<pg::Store>,
    writer: mpsc::Sender<WriterMsg>,
    /// Outcome of the latest read and of the latest commit: /healthz reports both.
    read_ok: AtomicBool,
    write_ok: AtomicBool,
    /// SQLite batches committed, for the checkpointer.
    commits: AtomicU64,
    ttl_ms: i64,
    metrics: Metrics,
}

// ---------------------------------------------------------------------------------------
// Metrics: the log-linear latency histogram of bench/hist.h (one bucket per ns below 256,
// then 128 buckets per power of two), with atomic counters so recording takes no lock.

const HIST_SUB_BITS: u32 = 7;
const HIST_SUB: usize = 1 << HIST_SUB_BITS;
const HIST_MAX_BITS: u32 = 40;
const HIST_BUCKETS: usize = 2 * HIST_SUB + (HIST_MAX_BITS - HIST_SUB_BITS - 1) as usize * HIST_SUB;

fn hist_index(v: u64) -> usize {
    let v = v.min((1u64 << HIST_MAX_BITS) - 1);
    if v < 2 * HIST_SUB as u64 {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    let shift = msb - HIST_SUB_BITS;
    let mant = (v >> shift) as usize;
    2 * HIST_SUB + (shift as usize - 1) * HIST_SUB + (mant - HIST_SUB)
}

fn hist_value(i: usize) -> f64 {
    if i < 2 * HIST_SUB {
        return i as f64;
    }
    let shift = (i - 2 * HIST_SUB) / HIST_SUB + 1;
    let mant = ((i - 2 * HIST_SUB) % HIST_SUB + HIST_SUB) as u64;
    (mant << shift) as f64 + (1u64 << shift) as f64 / 2.0
}

struct Hist {
    buckets: Vec<AtomicU64>,
    max_ns: AtomicU64,
}

impl Hist {
    fn new() -> Hist {
        Hist {
            buckets: (0..HIST_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max_ns: AtomicU64::new(0),
        }
    }

    fn add(&self, ns: u64) {
        self.buckets[hist_index(ns)].fetch_add(1, Ordering::Relaxed);
        self.max_ns.fetch_max(ns, Ordering::Relaxed);
    }

    /// Count and the p50/p99/p99.9 in µs by bench/hist.h's rule (sorted index
    /// min(n-1, n*permille/1000), bucket midpoint), from one pass over a snapshot.
    fn summary(&self) -> EndpointStats {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        let n: u64 = counts.iter().sum();
        let pct = |permille: u64| -> f64 {
            if n == 0 {
                return 0.0;
            }
            let rank = (n * permille / 1000).min(n - 1);
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen > rank {
                    return hist_value(i) / 1000.0;
                }
            }
            0.0
        };
        // A bucket's midpoint can lie above the largest value recorded in it.
        let max_us = self.max_ns.load(Ordering::Relaxed) as f64 / 1000.0;
        EndpointStats {
            count: n,
            p50_us: pct(500).min(max_us),
            p99_us: pct(990).min(max_us),
            p999_us: pct(999).min(max_us),
            max_us,
        }
    }
}

#[derive(Serialize)]
struct EndpointStats {
    count: u64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    max_us: f64,
}

#[derive(Clone, Copy)]
enum Endpoint {
    PostReadings = 0,
    GetWeather = 1,
    Healthz = 2,
    Metrics = 3,
}

struct Metrics {
    endpoints: [Hist; 4],
    status: [AtomicU64; 3], // 2xx, 4xx, 5xx
}

#[derive(Serialize)]
struct StatusCounts {
    #[serde(rename = "2xx")]
    s2xx: u64,
    #[serde(rename = "4xx")]
    s4xx: u64,
    #[serde(rename = "5xx")]
    s5xx: u64,
}

#[derive(Serialize)]
struct MetricsOut {
    post_readings: EndpointStats,
    get_weather: EndpointStats,
    healthz: EndpointStats,
    metrics: EndpointStats,
    status: StatusCounts,
}

// ---------------------------------------------------------------------------------------
// JSON of the protocol

#[derive(Deserialize)]
struct PostIn {
    readings: Vec<ReadingIn>,
}

#[derive(Deserialize)]
struct ReadingIn {
    city: String,
    temperature: f64,
    #[serde(default)]
    time: Option<i64>,
}

#[derive(Serialize)]
struct Accepted {
    accepted: usize,
}

#[derive(Serialize)]
struct ForecastOut {
    temperature: f64,
    computed_at: i64,
    based_on: usize,
}

#[derive(Serialize)]
struct WeatherOut<'a> {
    city: &'a str,
    temperature: f64,
    updated: i64,
    forecast: ForecastOut,
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let body = serde_json::to_vec(value).expect("plain structs serialize");
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// `{"error": reason}`. After 400, 408 and 413 the protocol closes the connection: part of
/// the request may still be unread, so the stream cannot be trusted for the next one.
fn error(status: StatusCode, reason: &str) -> Response<Body> {
    #[derive(Serialize)]
    struct ErrorOut<'a> {
        error: &'a str,
    }
    let mut resp = json(status, &ErrorOut { error: reason });
    if matches!(
        status,
        StatusCode::BAD_REQUEST | StatusCode::REQUEST_TIMEOUT | StatusCode::PAYLOAD_TOO_LARGE
    ) {
        resp.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut resp = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    resp.headers_mut().insert(ALLOW, HeaderValue::from_static(allow));
    resp
}

// ---------------------------------------------------------------------------------------
// Forecasts

/// The protocol's forecast from the newest-first `recent` readings and the previous value:
/// 0.7 * mean + 0.3 * previous (the mean alone the first time), plus the least-squares
/// slope (degrees per ms) times 10 minutes. Times are taken relative to their mean so the
/// sums stay exact in an f64.
fn next_forecast(previous: Option<f64>, recent: &[(f64, i64)]) -> Option<f64> {
    if recent.is_empty() {
        return previous;
    }
    let n = recent.len() as f64;
    let mean_t = recent.iter().map(|r| r.0).sum::<f64>() / n;
    let mean_x = recent.iter().map(|r| r.1 as f64).sum::<f64>() / n;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for &(t, x) in recent {
        let dx = x as f64 - mean_x;
        sxy += dx * (t - mean_t);
        sxx += dx * dx;
    }
    let slope = if recent.len() < 2 || sxx == 0.0 { 0.0 } else { sxy / sxx };
    let smooth = match previous {
        Some(p) => 0.7 * mean_t + 0.3 * p,
        None => mean_t,
    };
    Some(smooth + slope * HORIZON_MS)
}

/// The newest 32 readings of a city, on a pooled reading connection. Runs on the blocking
/// pool. A connection that failed is dropped rather than returned to the pool.
fn recent_readings(app: &App, city: &str) -> rusqlite::Result<Vec<(f64, i64)>> {
    let pooled = app.readers.lock().pop();
    let conn = match pooled {
        Some(c) => c,
        None => open_db(&app.db_path)?,
    };
    let rows = (|| {
        let mut stmt = conn.prepare_cached(RECENT_SQL)?;
        let rows = stmt.query_map(params![city], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<rusqlite::Result<Vec<(f64, i64)>>>()
    })();
    if rows.is_ok() {
        app.readers.lock().push(conn);
    }
    rows
}

/// Recomputes a city's forecast. The caller holds the city's forecast lock across this
/// whole call, database round trip included: that is what makes concurrent refreshes of
/// one city a single flight. With PostgreSQL the refresh goes through the city's
/// distributed lock and the stored forecast (pg.rs); one stored by another process less
/// than `fresh_ms` ago is adopted.
async fn refresh(app: &Arc<App>, idx: usize, f: &mut Forecast, fresh_ms: i64) -> Result<(), ()> {
    if let Some(pg) = &app.pg {
        let city = &app.cities[idx];
        let deadline = tokio::time::Instant::now() + LOCK_TIMEOUT;
        return match pg
            .refresh(&city.name, city.base, f.token, fresh_ms, deadline, next_forecast, now_ms)
            .await
        {
            Ok(s) => {
                app.read_ok.store(true, Ordering::Relaxed);
                f.temperature = s.temperature;
                f.computed_at = s.computed_at;
                f.based_on = s.based_on as usize;
                f.token = s.token;
                Ok(())
            }
            Err(e) => {
                eprintln!("weather-rust: refreshing {}: {e}", city.name);
                app.read_ok.store(false, Ordering::Relaxed);
                Err(())
            }
        };
    }
    let app2 = app.clone();
    let rows = tokio::task::spawn_blocking(move || recent_readings(&app2, &app2.cities[idx].name)).await;
    match rows {
        Ok(Ok(recent)) => {
            app.read_ok.store(true, Ordering::Relaxed);
            let previous = if f.computed_at == 0 { None } else { Some(f.temperature) };
            f.temperature = next_forecast(previous, &recent).unwrap_or(0.0);
            f.computed_at = now_ms();
            f.based_on = recent.len();
            Ok(())
        }
        Ok(Err(e)) => {
            eprintln!("weather-rust: reading {}: {e}", app.cities[idx].name);
            app.read_ok.store(false, Ordering::Relaxed);
            Err(())
        }
        Err(_) => {
            app.read_ok.store(false, Ordering::Relaxed);
            Err(())
        }
    }
}

async fn refresher(app: Arc<App>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for idx in 0..app.cities.len() {
            let mut f = app.cities[idx].forecast.lock().await;
            // As plaza's refresher: a forecast another process stored in the last half
            // period is adopted.
            let fresh = (every.as_millis() as i64 / 2).min(app.ttl_ms);
            let _ = refresh(&app, idx, &mut f, fresh).await;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Writer

fn commit(conn: &mut Connection, app: &App, jobs: &[Job]) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut insert = tx.prepare_cached(INSERT_SQL)?;
        for job in jobs {
            for r in &job.rows {
                insert.execute(params![app.cities[r.city].name, r.temperature, r.time])?;
            }
        }
    }
    tx.commit()
}

/// The writer's database: the SQLite connection it owns (each commit runs on the blocking
/// pool and hands it back), or the PostgreSQL writer connection (pg.rs).
enum Sink {
    Sqlite(Option<Connection>),
    Pg(pg::Writer),
}

/// Commits the batch: one transaction with SQLite, one statement with PostgreSQL.
async fn commit_batch(app: &Arc<App>, sink: &mut Sink, jobs: Vec<Job>) -> (Vec<Job>, Result<(), String>) {
    match sink {
        Sink::Sqlite(slot) => {
            let mut conn = slot.take().expect("the writer's connection is back after each commit");
            let app2 = app.clone();
            let (c, jobs, outcome) = tokio::task::spawn_blocking(move || {
                let outcome = commit(&mut conn, &app2, &jobs);
                (conn, jobs, outcome)
            })
            .await
            .expect("the commit does not panic");
            *slot = Some(c);
            (jobs, outcome.map_err(|e| e.to_string()))
        }
        Sink::Pg(w) => {
            let n: usize = jobs.iter().map(|j| j.rows.len()).sum();
            let (mut cities, mut temps, mut times) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
            for job in &jobs {
                for r in &job.rows {
                    cities.push(app.cities[r.city].name.as_str());
                    temps.push(r.temperature);
                    times.push(r.time);
                }
            }
            let outcome = w.insert_batch(&cities, &temps, &times).await.map_err(|e| e.to_string());
            drop(cities);
            (jobs, outcome)
        }
    }
}

/// The group-commit loop. A batch starts with the first queued job and takes more until it
/// would pass 1000 readings (the job that does not fit opens the next batch) or nothing
/// more is queued; with a linger it waits until `linger` after it took the first job
/// instead (jobs already queued by then are still taken: the timeout polls the channel
/// first). Every job of the batch is acknowledged with the commit's outcome.
async fn writer(app: Arc<App>, mut sink: Sink, mut rx: mpsc::Receiver<WriterMsg>, linger: Duration) {
    let mut carry: Option<Job> = None;
    let mut stopping = false;
    loop {
        let first = match carry.take() {
            Some(job) => job,
            None if stopping => break,
            None => match rx.recv().await {
                Some(WriterMsg::Write(job)) => job,
                Some(WriterMsg::Stop) | None => break,
            },
        };
        let deadline = tokio::time::Instant::now() + linger;
        let mut readings = first.rows.len();
        let mut jobs = vec![first];
        while !stopping && readings < BATCH_READINGS {
            let next = if linger.is_zero() {
                rx.try_recv().map_err(|e| e == mpsc::error::TryRecvError::Disconnected)
            } else {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(msg)) => Ok(msg),
                    Ok(None) => Err(true),
                    Err(_) => Err(false),
                }
            };
            // Err(true): the channel is closed; Err(false): nothing more for this batch.
            match next {
                Ok(WriterMsg::Write(job)) => {
                    if readings + job.rows.len() > BATCH_READINGS {
                        carry = Some(job);
                        break;
                    }
                    readings += job.rows.len();
                    jobs.push(job);
                }
                Ok(WriterMsg::Stop) | Err(true) => stopping = true,
                Err(false) => break,
            }
        }
        let (jobs, outcome) = commit_batch(&app, &mut sink, jobs).await;
        if let Err(e) = &outcome {
            eprintln!("weather-rust: commit of {readings} readings failed: {e}");
        }
        app.write_ok.store(outcome.is_ok(), Ordering::Relaxed);
        if outcome.is_ok() {
            app.commits.fetch_add(1, Ordering::Relaxed);
        }
        for job in jobs {
            let _ = job.ack.send(outcome.is_ok());
        }
    }
}

/// One round of the checkpointer (PROTOCOL.md, Checkpoints): a PASSIVE checkpoint (copies what
/// it can without taking a lock the writer or a reader waits for); from WAL_RESTART_FRAMES on,
/// a second one (what came in during the first) and a RESTART one that does not wait (the
/// connection's busy timeout is 0) unless the WAL has reached WAL_FORCE_FRAMES.
fn checkpoint(conn: &Connection) -> rusqlite::Result<()> {
    let row = |mode: &str| -> rusqlite::Result<(i64, i64)> {
        conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| Ok((r.get(0)?, r.get(1)?)))
    };
    let (busy, frames) = row("PASSIVE")?;
    if busy == 0 && frames >= WAL_RESTART_FRAMES {
        let (busy, frames) = row("PASSIVE")?;
        if busy == 0 {
            let force = frames >= WAL_FORCE_FRAMES;
            if force {
                conn.busy_timeout(Duration::from_millis(BUSY_TIMEOUT_MS))?;
            }
            let restarted = row("RESTART");
            if force {
                conn.busy_timeout(Duration::ZERO)?;
            }
            restarted?;
        }
    }
    Ok(())
}

/// The checkpointer task (SQLite only): every CHECKPOINT_MS, if the writer committed since its
/// last round, runs `checkpoint` on its own connection on the blocking pool.
async fn checkpointer(app: Arc<App>) {
    let mut slot = match open_db(&app.db_path).and_then(|c| c.busy_timeout(Duration::ZERO).map(|_| c)) {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("weather-rust: checkpointer: opening {}: {e}", app.db_path);
            return;
        }
    };
    let mut seen = 0;
    let mut failing = false;
    let mut tick = tokio::time::interval(Duration::from_millis(CHECKPOINT_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let commits = app.commits.load(Ordering::Relaxed);
        if commits == seen {
            continue;
        }
        seen = commits;
        let conn = slot.take().expect("the checkpointer's connection is back after each round");
        let (conn, outcome) = tokio::task::spawn_blocking(move || {
            let outcome = checkpoint(&conn);
            (conn, outcome)
        })
        .await
        .expect("the checkpoint does not panic");
        slot = Some(conn);
        match outcome {
            Err(e) if !failing => {
                eprintln!("weather-rust: checkpoint failed (the WAL grows until one succeeds): {e}");
                failing = true;
            }
            Ok(()) => failing = false,
            Err(_) => {}
        }
    }
}

// ---------------------------------------------------------------------------------------
// Handlers

/// Reads the whole body: 413 past 1 MiB, 408 if it is not complete within `deadline`.
async fn read_body(body: &mut Body, deadline: tokio::time::Instant) -> Result<Vec<u8>, Response<Body>> {
    let mut buf = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, body.data()).await {
            Err(_) => return Err(error(StatusCode::REQUEST_TIMEOUT, "request not complete within 10 s")),
            Ok(None) => return Ok(buf),
            Ok(Some(Err(_))) => return Err(error(StatusCode::BAD_REQUEST, "malformed request body")),
            Ok(Some(Ok(chunk))) => {
                if buf.len() + chunk.len() > MAX_BODY {
                    return Err(error(StatusCode::PAYLOAD_TOO_LARGE, "body over 1 MiB"));
                }
                buf.extend_from_slice(&chunk);
            }
        }
    }
}

async fn post_readings(app: &Arc<App>, req: Request<Body>, start: Instant) -> Response<Body> {
    let headers = req.headers();
    let chunked = headers.contains_key(TRANSFER_ENCODING);
    match headers.get(CONTENT_LENGTH) {
        None if !chunked => return error(StatusCode::LENGTH_REQUIRED, "Content-Length required"),
        Some(v) => {
            // hyper has already rejected a Content-Length that is not a number.
            let n: u64 = v.to_str().ok().and_then(|s| s.parse().ok()).unwrap_or(0);
            if n > MAX_BODY as u64 {
                return error(StatusCode::PAYLOAD_TOO_LARGE, "body over 1 MiB");
            }
        }
        None => {}
    }
    let mut body = req.into_body();
    let bytes = match read_body(&mut body, tokio::time::Instant::from_std(start + REQUEST_TIMEOUT)).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let post: PostIn = match serde_json::from_slice(&bytes) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("malformed JSON: {e}")),
    };
    if post.readings.is_empty() || post.readings.len() > MAX_POST_READINGS {
        return error(StatusCode::BAD_REQUEST, "readings: 1 to 1000 expected");
    }
    // Resolve every city before touching anything: an unknown one rejects the whole request.
    let now = now_ms();
    let mut rows = Vec::with_capacity(post.readings.len());
    for r in &post.readings {
        let Some(&city) = app.index.get(&r.city) else {
            return error(StatusCode::NOT_FOUND, "unknown city");
        };
        rows.push(Row {
            city,
            temperature: r.temperature,
            time: r.time.unwrap_or(now),
        });
    }
    for r in &rows {
        let mut cur = app.cities[r.city].current.lock();
        if r.time >= cur.time {
            cur.temperature = r.temperature;
            cur.time = r.time;
        }
        cur.since_start += 1;
    }
    let accepted = rows.len();
    let (ack, acked) = oneshot::channel();
    let job = Job { rows, ack };
    if app.writer.send(WriterMsg::Write(job)).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "database unavailable");
    }
    match acked.await {
        Ok(true) => json(StatusCode::OK, &Accepted { accepted }),
        _ => error(StatusCode::SERVICE_UNAVAILABLE, "database unavailable"),
    }
}

/// The forecast lock is taken on every GET and staleness is tested under it: a GET that
/// waited behind a refresh finds the forecast fresh and does not query again.
async fn get_weather(app: &Arc<App>, name: &str) -> Response<Body> {
    let Some(&idx) = app.index.get(name) else {
        return error(StatusCode::NOT_FOUND, "unknown city");
    };
    let city = &app.cities[idx];
    let forecast = {
        let mut f = city.forecast.lock().await;
        if f.computed_at == 0 || now_ms() - f.computed_at > app.ttl_ms {
            if refresh(app, idx, &mut f, app.ttl_ms).await.is_err() {
                return error(StatusCode::SERVICE_UNAVAILABLE, "database unavailable");
            }
        }
        ForecastOut {
            temperature: f.temperature,
            computed_at: f.computed_at,
            based_on: f.based_on,
        }
    };
    let (temperature, updated) = {
        let c = city.current.lock();
        (c.temperature, c.time)
    };
    json(
        StatusCode::OK,
        &WeatherOut {
            city: &city.name,
            temperature,
            updated,
            forecast,
        },
    )
}

fn healthz(app: &App) -> Response<Body> {
    #[derive(Serialize)]
    struct Health {
        status: &'static str,
    }
    if app.read_ok.load(Ordering::Relaxed) && app.write_ok.load(Ordering::Relaxed) {
        json(StatusCode::OK, &Health { status: "ok" })
    } else {
        json(StatusCode::SERVICE_UNAVAILABLE, &Health { status: "unavailable" })
    }
}

fn metrics(app: &App) -> Response<Body> {
    let m = &app.metrics;
    let status = |i: usize| m.status[i].load(Ordering::Relaxed);
    json(
        StatusCode::OK,
        &MetricsOut {
            post_readings: m.endpoints[Endpoint::PostReadings as usize].summary(),
            get_weather: m.endpoints[Endpoint::GetWeather as usize].summary(),
            healthz: m.endpoints[Endpoint::Healthz as usize].summary(),
            metrics: m.endpoints[Endpoint::Metrics as usize].summary(),
            status: StatusCounts {
                s2xx: status(0),
                s4xx: status(1),
                s5xx: status(2),
            },
        },
    )
}

async fn route(app: &Arc<App>, req: Request<Body>, start: Instant) -> (Option<Endpoint>, Response<Body>) {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    match path.as_str() {
        "/readings" => {
            let resp = if method == Method::POST {
                post_readings(app, req, start).await
            } else {
                method_not_allowed("POST")
            };
            (Some(Endpoint::PostReadings), resp)
        }
        "/healthz" => (
            Some(Endpoint::Healthz),
            if method == Method::GET {
                healthz(app)
            } else {
                method_not_allowed("GET")
            },
        ),
        "/metrics" => (
            Some(Endpoint::Metrics),
            if method == Method::GET {
                metrics(app)
            } else {
                method_not_allowed("GET")
            },
        ),
        p => match p.strip_prefix("/weather/") {
            Some(name) if !name.is_empty() && !name.contains('/') => {
                let resp = if method == Method::GET {
                    get_weather(app, name).await
                } else {
                    method_not_allowed("GET")
                };
                (Some(Endpoint::GetWeather), resp)
            }
            _ => (None, error(StatusCode::NOT_FOUND, "unknown path")),
        },
    }
}

async fn handle(app: Arc<App>, req: Request<Body>) -> Result<Response<Body>, Infallible> {
    let start = Instant::now();
    let (endpoint, resp) = route(&app, req, start).await;
    if let Some(e) = endpoint {
        app.metrics.endpoints[e as usize].add(start.elapsed().as_nanos() as u64);
    }
    let class = match resp.status().as_u16() {
        200..=299 => Some(0),
        400..=499 => Some(1),
        500..=599 => Some(2),
        _ => None,
    };
    if let Some(c) = class {
        app.metrics.status[c].fetch_add(1, Ordering::Relaxed);
    }
    Ok(resp)
}

// ---------------------------------------------------------------------------------------
// Slow header blocks

/// What the connection's service tells its `Guarded` stream: how many requests it has
/// been handed (a header block is complete each time) and whether one is being handled.
#[derive(Default)]
struct ConnState {
    requests: AtomicU64,
    busy: AtomicBool,
}

/// A TCP stream that answers 408 and fails the connection when a header block is not
/// complete within 10 s of its first bytes. The timer starts when bytes arrive while no
/// request is being handled, and stops once the service has been handed a new request
/// (the count moved). An idle keep-alive connection has no timer. The 408 is written
/// directly to the socket (it is small enough for an empty send buffer), then the read
/// error makes hyper drop the connection.
struct Guarded {
    stream: TcpStream,
    state: Arc<ConnState>,
    timer: Option<(Pin<Box<tokio::time::Sleep>>, u64)>,
}

const RESPONSE_408: &[u8] = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n\
    connection: close\r\ncontent-length: 44\r\n\r\n{\"error\":\"request not complete within 10 s\"}";

impl AsyncRead for Guarded {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let requests = this.state.requests.load(Ordering::Acquire);
        if matches!(&this.timer, Some((_, armed_at)) if *armed_at != requests) {
            this.timer = None;
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        match polled {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                if this.timer.is_none() && !this.state.busy.load(Ordering::Acquire) {
                    this.timer = Some((Box::pin(tokio::time::sleep(REQUEST_TIMEOUT)), requests));
                }
            }
            Poll::Pending => {
                if let Some((sleep, _)) = &mut this.timer {
                    if sleep.as_mut().poll(cx).is_ready() {
                        let _ = this.stream.try_write(RESPONSE_408);
                        return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "slow header block")));
                    }
                }
            }
            _ => {}
        }
        polled
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// The listener as hyper's `Accept`, yielding `Guarded` streams. An accept error (out of
/// descriptors, say) is reported and retried 10 ms later rather than ending the server.
struct GuardedListener {
    listener: TcpListener,
    backoff: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl hyper::server::accept::Accept for GuardedListener {
    type Conn = Guarded;
    type Error = io::Error;

    fn poll_accept(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<io::Result<Guarded>>> {
        let this = self.get_mut();
        loop {
            if let Some(sleep) = &mut this.backoff {
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.backoff = None;
            }
            match this.listener.poll_accept(cx) {
                Poll::Ready(Ok((stream, _))) => {
                    let _ = stream.set_nodelay(true);
                    let state = Arc::new(ConnState::default());
                    return Poll::Ready(Some(Ok(Guarded {
                        stream,
                        state,
                        timer: None,
                    })));
                }
                Poll::Ready(Err(e)) => {
                    eprintln!("weather-rust: accept: {e}");
                    this.backoff = Some(Box::pin(tokio::time::sleep(Duration::from_millis(10))));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Startup and shutdown

fn new_city(name: String, base: f64, temperature: f64, time: i64) -> City {
    City {
        name,
        base,
        current: parking_lot::Mutex::new(Current {
            temperature,
            time,
            since_start: 0,
        }),
        forecast: tokio::sync::Mutex::new(Forecast {
            temperature: 0.0,
            computed_at: 0,
            based_on: 0,
            token: 0,
        }),
    }
}

fn load_cities(conn: &Connection) -> rusqlite::Result<Vec<City>> {
    let mut names = conn.prepare("SELECT name, base FROM cities ORDER BY name")?;
    let names = names
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, f64>(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut latest =
        conn.prepare("SELECT temperature, time FROM readings WHERE city = ?1 ORDER BY time DESC LIMIT 1")?;
    let mut cities = Vec::with_capacity(names.len());
    for (name, base) in names {
        let (temperature, time) = match latest.query_row(params![name], |r| Ok((r.get(0)?, r.get(1)?))) {
            Ok(v) => v,
            Err(rusqlite::Error::QueryReturnedNoRows) => (0.0, 0),
            Err(e) => return Err(e),
        };
        cities.push(new_city(name, base, temperature, time));
    }
    Ok(cities)
}

/// The cities with their latest readings, from PostgreSQL.
async fn load_cities_pg(store: &pg::Store) -> Result<Vec<City>, pg::BoxError> {
    let mut cities = Vec::new();
    for (name, base) in store.cities().await? {
        let (temperature, time) = store.recent(&name, 1).await?.first().copied().unwrap_or((base, 0));
        cities.push(new_city(name, base, temperature, time));
    }
    Ok(cities)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

fn main() {
    let cfg = parse_args();
    let fail = |what: &str, e: &dyn std::fmt::Display| -> ! {
        eprintln!("weather-rust: {what}: {e}");
        exit(1);
    };
    let pg_cfg = pg::parse_url(&cfg.db).map(|r| r.unwrap_or_else(|e| fail(&format!("--db {}", cfg.db), &e)));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.workers)
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail("starting the runtime", &e));
    rt.block_on(async move {
        let (sink, pg, cities) = match pg_cfg {
            None => {
                let mut wconn = open_db(&cfg.db).unwrap_or_else(|e| fail(&format!("opening {}", cfg.db), &e));
                create_and_seed(&mut wconn, now_ms()).unwrap_or_else(|e| fail("creating the schema", &e));
                let cities = load_cities(&wconn).unwrap_or_else(|e| fail("loading the cities", &e));
                (Sink::Sqlite(Some(wconn)), None, cities)
            }
            Some(pcfg) => {
                let (store, w) = pg::Store::open(pcfg, now_ms())
                    .await
                    .unwrap_or_else(|e| fail("opening the PostgreSQL database", &e));
                let cities = load_cities_pg(&store)
                    .await
                    .unwrap_or_else(|e| fail("loading the cities", &e));
                (Sink::Pg(w), Some(store), cities)
            }
        };
        let index = cities.iter().enumerate().map(|(i, c)| (c.name.clone(), i)).collect();
        let (tx, rx) = mpsc::channel(WRITER_QUEUE);
        let app = Arc::new(App {
            cities,
            index,
            db_path: cfg.db.clone(),
            readers: parking_lot::Mutex::new(Vec::new()),
            pg,
            writer: tx,
            read_ok: AtomicBool::new(true),
            write_ok: AtomicBool::new(true),
            commits: AtomicU64::new(0),
            ttl_ms: cfg.ttl_ms,
            metrics: Metrics {
                endpoints: [Hist::new(), Hist::new(), Hist::new(), Hist::new()],
                status: [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)],
            },
        });
        let writer_task = tokio::spawn(writer(app.clone(), sink, rx, cfg.linger));
        let refresher_task = tokio::spawn(refresher(app.clone(), Duration::from_millis(cfg.refresh_ms)));
        let checkpointer_task = app.pg.is_none().then(|| tokio::spawn(checkpointer(app.clone())));

        let listener = TcpListener::bind(cfg.listen)
            .await
            .unwrap_or_else(|e| fail(&format!("listening on {}", cfg.listen), &e));
        let local = listener.local_addr().unwrap_or(cfg.listen);
        let make = {
            let app = app.clone();
            make_service_fn(move |conn: &Guarded| {
                let app = app.clone();
                let state = conn.state.clone();
                async move {
                    Ok::<_, Infallible>(service_fn(move |req| {
                        let (app, state) = (app.clone(), state.clone());
                        state.requests.fetch_add(1, Ordering::AcqRel);
                        state.busy.store(true, Ordering::Release);
                        async move {
                            let resp = handle(app, req).await;
                            state.busy.store(false, Ordering::Release);
                            resp
                        }
                    }))
                }
            })
        };
        // hyper answers a header block larger than its read buffer with 431; 8 KiB is also
        // the smallest buffer it accepts.
        let server = Server::builder(GuardedListener {
            listener,
            backoff: None,
        })
        .http1_only(true)
        .http1_max_buf_size(MAX_HEADER_BLOCK)
        .serve(make);
        eprintln!(
            "weather-rust: listening on {local} ({} workers, db {})",
            cfg.workers, cfg.db
        );
        if let Err(e) = server.with_graceful_shutdown(shutdown_signal()).await {
            eprintln!("weather-rust: server: {e}");
        }
        refresher_task.abort();
        if let Some(t) = checkpointer_task {
            t.abort();
        }
        let _ = app.writer.send(WriterMsg::Stop).await;
        let _ = writer_task.await;
        eprintln!("weather-rust: stopped");
    });
    rt.shutdown_timeout(Duration::from_secs(5));
}
