//! peer-tokio: the plaza peer workloads on tokio 1.24 (runtime and tokio::sync),
//! parking_lot 0.12 and std::sync.
//!
//! Usage: peer-tokio <workload|all> [key=value ...]
//! Prints `system,workload,param,metric,value` CSV lines on stdout; diagnostics on stderr.
//! Exits non-zero if a workload's own check (counter total, checksum) fails.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- helpers

fn fail(msg: &str) -> ! {
    eprintln!("peer-tokio: CHECK FAILED: {msg}");
    std::process::exit(2);
}

fn emit(system: &str, workload: &str, param: &str, metric: &str, value: f64) {
    println!("{system},{workload},{param},{metric},{value:.2}");
}

/// key=value arguments; every key must be used by the workload (typos are errors).
struct Params {
    kv: BTreeMap<String, String>,
}

impl Params {
    fn parse(args: &[String]) -> Params {
        let mut kv = BTreeMap::new();
        for a in args {
            match a.split_once('=') {
                Some((k, v)) => {
                    kv.insert(k.to_string(), v.to_string());
                }
                None => {
                    eprintln!("peer-tokio: argument '{a}' is not key=value");
                    std::process::exit(64);
                }
            }
        }
        Params { kv }
    }
    fn u(&self, key: &str, default: u64) -> u64 {
        match self.kv.get(key) {
            None => default,
            Some(v) => v.parse().unwrap_or_else(|_| {
                eprintln!("peer-tokio: {key}={v} is not a non-negative integer");
                std::process::exit(64);
            }),
        }
    }
    fn s(&self, key: &str, default: &str) -> String {
        self.kv.get(key).cloned().unwrap_or_else(|| default.to_string())
    }
    /// Reject keys the workload does not know, before it runs.
    fn check_keys(&self, workload: &str, allowed: &[&str]) {
        for k in self.kv.keys() {
            if !allowed.iter().any(|u| u == k) {
                eprintln!("peer-tokio: workload {workload} has no parameter '{k}'");
                std::process::exit(64);
            }
        }
    }
}

/// The busy loop run outside the lock: `work` steps of xorshift64 (13, 7, 17). Each step
/// depends on the previous one, it has no closed form a compiler could fold (an LCG does:
/// LLVM merges unrolled LCG steps), and the result is consumed, so it cannot be removed.
/// The same loop is used in every peer; the `work` workload calibrates its cost.
#[inline(always)]
fn spin_work(work: u64, seed: u64) -> u64 {
    let mut x = seed | 1;
    for _ in 0..work {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    x
}

/// Per-thread pseudo-random stream used to pick reads vs writes (same LCG in every peer).
struct Lcg(u64);
impl Lcg {
    #[inline(always)]
    fn pct(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % 100
    }
}

fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let resident: u64 = s.split_whitespace().nth(1).unwrap().parse().unwrap();
    resident * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64
}

fn ns_per(d: Duration, ops: u64) -> f64 {
    d.as_nanos() as f64 / ops as f64
}

/// A runtime with `workers` worker threads: `1` means tokio's current_thread runtime.
fn runtime(workers: u64) -> tokio::runtime::Runtime {
    if workers <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers as usize)
            .enable_all()
            .build()
            .unwrap()
    }
}

/// Run `body` as a task on the runtime (so the driving task is itself on a worker, as in
/// the other peers) and return its output.
fn run_on<F, T>(workers: u64, body: F) -> T
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let rt = runtime(workers);
    let out = rt.block_on(async move { tokio::spawn(body).await.unwrap() });
    rt.shutdown_timeout(Duration::from_secs(1));
    out
}

fn max_u64(a: &AtomicU64, v: u64) {
    a.fetch_max(v, Ordering::Relaxed);
}

// ---------------------------------------------------------------- sync lock abstraction

trait Lock: Send + Sync + 'static {
    const NAME: &'static str;
    fn new() -> Self;
    /// lock; counter += 1; unlock
    fn inc(&self);
    /// Same, and return the nanoseconds from `t0` (read just before the lock call) to
    /// the moment the lock was held.
    fn inc_timed(&self, t0: Instant) -> u64;
    fn get(&self) -> u64;
}

struct Pl(parking_lot::Mutex<u64>);
impl Lock for Pl {
    const NAME: &'static str = "parking_lot";
    fn new() -> Self {
        Pl(parking_lot::Mutex::new(0))
    }
    #[inline(always)]
    fn inc(&self) {
        let mut g = self.0.lock();
        *g += 1;
    }
    #[inline(always)]
    fn inc_timed(&self, t0: Instant) -> u64 {
        let mut g = self.0.lock();
        let w = t0.elapsed().as_nanos() as u64;
        *g += 1;
        w
    }
    fn get(&self) -> u64 {
        *self.0.lock()
    }
}

struct StdM(std::sync::Mutex<u64>);
impl Lock for StdM {
    const NAME: &'static str = "std";
    fn new() -> Self {
        StdM(std::sync::Mutex::new(0))
    }
    #[inline(always)]
    fn inc(&self) {
        let mut g = self.0.lock().unwrap();
        *g += 1;
    }
    #[inline(always)]
    fn inc_timed(&self, t0: Instant) -> u64 {
        let mut g = self.0.lock().unwrap();
        let w = t0.elapsed().as_nanos() as u64;
        *g += 1;
        w
    }
    fn get(&self) -> u64 {
        *self.0.lock().unwrap()
    }
}

/// Small struct read under a read lock; a writer bumps every field, so a reader that sees
/// unequal fields saw a torn write.
#[derive(Default, Clone, Copy)]
struct Quad {
    a: u64,
    b: u64,
    c: u64,
    d: u64,
}
impl Quad {
    #[inline(always)]
    fn bump(&mut self) {
        self.a += 1;
        self.b += 1;
        self.c += 1;
        self.d += 1;
    }
    #[inline(always)]
    fn consistent(&self) -> bool {
        self.a == self.b && self.b == self.c && self.c == self.d
    }
}

trait RwLockQ: Send + Sync + 'static {
    const NAME: &'static str;
    fn new() -> Self;
    fn read(&self) -> Quad;
    fn write(&self);
}
struct PlRw(parking_lot::RwLock<Quad>);
impl RwLockQ for PlRw {
    const NAME: &'static str = "parking_lot";
    fn new() -> Self {
        PlRw(parking_lot::RwLock::new(Quad::default()))
    }
    #[inline(always)]
    fn read(&self) -> Quad {
        *self.0.read()
    }
    #[inline(always)]
    fn write(&self) {
        self.0.write().bump()
    }
}
struct StdRw(std::sync::RwLock<Quad>);
impl RwLockQ for StdRw {
    const NAME: &'static str = "std";
    fn new() -> Self {
        StdRw(std::sync::RwLock::new(Quad::default()))
    }
    #[inline(always)]
    fn read(&self) -> Quad {
        *self.0.read().unwrap()
    }
    #[inline(always)]
    fn write(&self) {
        self.0.write().unwrap().bump()
    }
}

/// lock=parking_lot|std|both (default both): which sync locks a sync-lock workload runs.
fn lock_choice(p: &Params) -> (bool, bool) {
    match p.s("lock", "both").as_str() {
        "both" | "all" => (true, true),
        "parking_lot" => (true, false),
        "std" => (false, true),
        other => {
            eprintln!("peer-tokio: lock={other}: expected parking_lot, std or both");
            std::process::exit(64);
        }
    }
}

// ---------------------------------------------------------------- runtime workloads

fn w_spawn_join(p: &Params) {
    let n = p.u("n", 100_000);
    let workers = p.u("workers", 2);
    let d = run_on(workers, async move {
        let t0 = Instant::now();
        let mut hs = Vec::with_capacity(n as usize);
        for i in 0..n {
            hs.push(tokio::spawn(async move { i + 1 }));
        }
        for (i, h) in hs.into_iter().enumerate() {
            if h.await.unwrap() != i as u64 + 1 {
                fail("spawn_join: wrong result");
            }
        }
        t0.elapsed()
    });
    emit("tokio", "spawn_join", &format!("n={n} workers={workers}"), "ns_per_task", ns_per(d, n));
}

// spawn_burst: bursts of tasks that each yield once (tokio::task::yield_now) before they
// return, so that a burst is alive at once; each burst is joined before the next.
fn w_spawn_burst(p: &Params) {
    let burst = p.u("burst", 1000);
    let rounds = p.u("rounds", 100);
    let workers = p.u("workers", 2);
    let d = run_on(workers, async move {
        let t0 = Instant::now();
        for _ in 0..rounds {
            let mut hs = Vec::with_capacity(burst as usize);
            for i in 0..burst {
                hs.push(tokio::spawn(async move {
                    tokio::task::yield_now().await;
                    i + 1
                }));
            }
            for (i, h) in hs.into_iter().enumerate() {
                if h.await.unwrap() != i as u64 + 1 {
                    fail("spawn_burst: wrong result");
                }
            }
        }
        t0.elapsed()
    });
    emit("tokio", "spawn_burst", &format!("burst={burst} rounds={rounds} workers={workers}"), "ns_per_task",
         ns_per(d, burst * rounds));
}

fn w_yield(p: &Params) {
    let tasks = p.u("tasks", 2);
    let workers = p.u("workers", 1);
    let iters = p.u("iters", 1_000_000);
    let d = run_on(workers, async move {
        let t0 = Instant::now();
        let hs: Vec<_> = (0..tasks)
            .map(|_| {
                tokio::spawn(async move {
                    for _ in 0..iters {
                        tokio::task::yield_now().await;
                    }
                    iters
                })
            })
            .collect();
        for h in hs {
            if h.await.unwrap() != iters {
                fail("yield: wrong result");
            }
        }
        t0.elapsed()
    });
    emit(
        "tokio",
        "yield",
        &format!("tasks={tasks} workers={workers}"),
        "ns_per_yield",
        ns_per(d, tasks * iters),
    );
}

/// One task sleeps `us` µs n times; each actual duration goes into the latency
/// histogram (percentiles) and into an exact sum (mean).
fn w_sleep(p: &Params) {
    let n = p.u("n", 2000).max(1);
    let us = p.u("us", 100);
    let (h, sum) = run_on(1, async move {
        let (mut h, mut sum) = (Hist::new(), 0u64);
        for _ in 0..n {
            let t0 = Instant::now();
            tokio::time::sleep(Duration::from_micros(us)).await;
            let d = t0.elapsed().as_nanos() as u64;
            h.record(d);
            sum += d;
        }
        (h, sum)
    });
    if h.count() != n {
        fail("sleep: sample count mismatch");
    }
    let param = format!("n={n} us={us}");
    emit("tokio", "sleep", &param, "p50_us", h.permille(500) / 1000.0);
    emit("tokio", "sleep", &param, "p99_us", h.permille(990) / 1000.0);
    emit("tokio", "sleep", &param, "p999_us", h.permille(999) / 1000.0);
    emit("tokio", "sleep", &param, "mean_us", sum as f64 / n as f64 / 1000.0);
}

fn w_idle_rss(p: &Params) {
    let n = p.u("n", 100_000).max(1);
    let workers = p.u("workers", 2);
    let bytes = run_on(workers, async move {
        // Each task blocks on acquiring a permit of a zero-permit semaphore; closing the
        // semaphore at the end releases them all.
        let sem = Arc::new(tokio::sync::Semaphore::new(0));
        let parked = Arc::new(AtomicUsize::new(0));
        let mut hs = Vec::with_capacity(n as usize);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let before = rss_bytes();
        for i in 0..n {
            let s = sem.clone();
            let c = parked.clone();
            hs.push(tokio::spawn(async move {
                c.fetch_add(1, Ordering::Relaxed);
                if s.acquire().await.is_ok() {
                    fail("idle_rss: acquired a permit");
                }
                i + 1
            }));
        }
        while parked.load(Ordering::Relaxed) < n as usize {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        let after = rss_bytes();
        sem.close();
        for (i, h) in hs.into_iter().enumerate() {
            if h.await.unwrap() != i as u64 + 1 {
                fail("idle_rss: wrong result");
            }
        }
        (after as f64 - before as f64) / n as f64
    });
    emit("tokio", "idle_rss", &format!("n={n} workers={workers}"), "bytes_per_task", bytes);
}

// ---------------------------------------------------------------- sync lock workloads

/// Calibration: the cost of one call of the busy loop with `work` steps, no lock.
fn w_work(p: &Params) {
    let work = p.u("work", 100);
    let iters = p.u("iters", 1_000_000).max(1);
    let mut sink = 1u64;
    let t0 = Instant::now();
    for i in 0..iters {
        sink ^= spin_work(black_box(work), sink.wrapping_add(i));
    }
    let d = t0.elapsed();
    black_box(sink);
    emit("tokio", "work", &format!("work={work}"), "ns_per_op", ns_per(d, iters));
}

fn uncontended_one<L: Lock>(iters: u64) {
    let l = L::new();
    let t0 = Instant::now();
    for _ in 0..iters {
        black_box(&l).inc();
    }
    let d = t0.elapsed();
    if l.get() != iters {
        fail("uncontended: counter mismatch");
    }
    emit(L::NAME, "uncontended", "threads=1", "ns_per_op", ns_per(d, iters));
}

fn w_uncontended(p: &Params) {
    let iters = p.u("iters", 10_000_000);
    let (pl, st) = lock_choice(p);
    if pl {
        uncontended_one::<Pl>(iters);
    }
    if st {
        uncontended_one::<StdM>(iters);
    }
}


/// Iterations per thread/task: `iters=` if given, else `total` ops split over `n` workers.
fn iters_for(p: &Params, total: u64, n: u64) -> u64 {
    p.u("iters", (total / n.max(1)).max(1))
}

/// One thread's (or task's) loop: lock, counter++, unlock, then `work` LCG steps outside
/// the lock. Every 64th acquisition is timed. Returns (max wait ns, sink).
#[inline(always)]
fn lock_loop<L: Lock>(l: &L, iters: u64, work: u64, seed: u64) -> (u64, u64) {
    let mut sink = seed;
    let mut max_wait = 0u64;
    for i in 0..iters {
        if i & 63 == 0 {
            let t0 = Instant::now();
            max_wait = max_wait.max(l.inc_timed(t0));
        } else {
            l.inc();
        }
        if work != 0 {
            sink ^= spin_work(work, sink.wrapping_add(i));
        }
    }
    (max_wait, sink)
}

/// Start `threads` OS threads that wait on a barrier and run `f(thread_index)`; the clock
/// runs from the first thread's start to the last one's end, each read by the thread itself
/// (the main thread, one of threads + 1 runnable ones when the barrier opens, may run again
/// only much later; bench/bench_sync.c measures the same way).
fn timed_threads<F>(threads: u64, f: F) -> Duration
where
    F: Fn(u64) + Send + Sync + 'static,
{
    let f = Arc::new(f);
    let barrier = Arc::new(Barrier::new(threads as usize + 1));
    let hs: Vec<_> = (0..threads)
        .map(|t| {
            let f = f.clone();
            let b = barrier.clone();
            std::thread::spawn(move || {
                b.wait();
                let start = Instant::now();
                f(t);
                (start, Instant::now())
            })
        })
        .collect();
    barrier.wait();
    let spans: Vec<(Instant, Instant)> = hs.into_iter().map(|h| h.join().unwrap()).collect();
    let first = spans.iter().map(|s| s.0).min().unwrap();
    let last = spans.iter().map(|s| s.1).max().unwrap();
    last.duration_since(first)
}

fn contended_one<L: Lock>(threads: u64, iters: u64, work: u64) {
    let l = Arc::new(L::new());
    let mw = Arc::new(AtomicU64::new(0));
    let (l2, mw2) = (l.clone(), mw.clone());
    let d = timed_threads(threads, move |t| {
        let (w, sink) = lock_loop(&*l2, iters, work, t + 1);
        max_u64(&mw2, w);
        black_box(sink);
    });
    if l.get() != threads * iters {
        fail("contended: counter mismatch");
    }
    let param = format!("threads={threads} work={work}");
    emit(L::NAME, "contended", &param, "ns_per_op", ns_per(d, threads * iters));
    emit(L::NAME, "contended", &param, "max_wait_us", mw.load(Ordering::Relaxed) as f64 / 1000.0);
}

fn w_contended(p: &Params) {
    let threads = p.u("threads", 2).max(1);
    let work = p.u("work", 0);
    let iters = iters_for(p, 4_000_000, threads);
    let (pl, st) = lock_choice(p);
    if pl {
        contended_one::<Pl>(threads, iters, work);
    }
    if st {
        contended_one::<StdM>(threads, iters, work);
    }
}

fn tasks_contended_one<L: Lock>(tasks: u64, workers: u64, iters: u64, work: u64) {
    let l = Arc::new(L::new());
    let mw = Arc::new(AtomicU64::new(0));
    let (l2, mw2) = (l.clone(), mw.clone());
    let d = run_on(workers, async move {
        let t0 = Instant::now();
        let hs: Vec<_> = (0..tasks)
            .map(|t| {
                let l = l2.clone();
                let mw = mw2.clone();
                tokio::spawn(async move {
                    let (w, sink) = lock_loop(&*l, iters, work, t + 1);
                    max_u64(&mw, w);
                    black_box(sink);
                })
            })
            .collect();
        for h in hs {
            h.await.unwrap();
        }
        t0.elapsed()
    });
    if l.get() != tasks * iters {
        fail("tasks_contended: counter mismatch");
    }
    let param = format!("tasks={tasks} workers={workers} work={work}");
    emit(L::NAME, "tasks_contended", &param, "ns_per_op", ns_per(d, tasks * iters));
    emit(
        L::NAME,
        "tasks_contended",
        &param,
        "max_wait_us",
        mw.load(Ordering::Relaxed) as f64 / 1000.0,
    );
}

fn w_tasks_contended(p: &Params) {
    let tasks = p.u("tasks", 64).max(1);
    let workers = p.u("workers", 2);
    let work = p.u("work", 0);
    let iters = iters_for(p, 4_000_000, tasks);
    let (pl, st) = lock_choice(p);
    if pl {
        tasks_contended_one::<Pl>(tasks, workers, iters, work);
    }
    if st {
        tasks_contended_one::<StdM>(tasks, workers, iters, work);
    }
}

fn rwlock_one<R: RwLockQ>(threads: u64, iters: u64, write_pct: u64) {
    let l = Arc::new(R::new());
    let writes = Arc::new(AtomicU64::new(0));
    let (l2, w2) = (l.clone(), writes.clone());
    let d = timed_threads(threads, move |t| {
        let mut rng = Lcg(t + 1);
        let (mut nw, mut sink) = (0u64, 0u64);
        for _ in 0..iters {
            if rng.pct() < write_pct {
                l2.write();
                nw += 1;
            } else {
                let q = l2.read();
                if !q.consistent() {
                    fail("rwlock_read_mostly: torn read");
                }
                sink = sink.wrapping_add(q.a);
            }
        }
        w2.fetch_add(nw, Ordering::Relaxed);
        black_box(sink);
    });
    let q = l.read();
    if !q.consistent() || q.a != writes.load(Ordering::Relaxed) {
        fail("rwlock_read_mostly: write count mismatch");
    }
    let param = format!("threads={threads} write_pct={write_pct}");
    emit(R::NAME, "rwlock_read_mostly", &param, "ns_per_op", ns_per(d, threads * iters));
}

fn w_rwlock_read_mostly(p: &Params) {
    let threads = p.u("threads", 8).max(1);
    let write_pct = p.u("write_pct", 1);
    let iters = iters_for(p, 4_000_000, threads);
    let (pl, st) = lock_choice(p);
    if pl {
        rwlock_one::<PlRw>(threads, iters, write_pct);
    }
    if st {
        rwlock_one::<StdRw>(threads, iters, write_pct);
    }
}

// ---------------------------------------------------------------- async workloads

fn w_async_uncontended(p: &Params) {
    let iters = p.u("iters", 5_000_000);
    let d = run_on(1, async move {
        let m = tokio::sync::Mutex::new(0u64);
        let t0 = Instant::now();
        for _ in 0..iters {
            let mut g = black_box(&m).lock().await;
            *g += 1;
        }
        let d = t0.elapsed();
        if *m.lock().await != iters {
            fail("async_uncontended: counter mismatch");
        }
        d
    });
    emit("tokio", "async_uncontended", "tasks=1", "ns_per_op", ns_per(d, iters));
}

fn w_async_contended(p: &Params) {
    let tasks = p.u("tasks", 64).max(1);
    let workers = p.u("workers", 2);
    let work = p.u("work", 0);
    let iters = iters_for(p, 2_000_000, tasks);
    let m = Arc::new(tokio::sync::Mutex::new(0u64));
    let mw = Arc::new(AtomicU64::new(0));
    let (m2, mw2) = (m.clone(), mw.clone());
    let d = run_on(workers, async move {
        let t0 = Instant::now();
        let hs: Vec<_> = (0..tasks)
            .map(|t| {
                let m = m2.clone();
                let mw = mw2.clone();
                tokio::spawn(async move {
                    let mut sink = t + 1;
                    let mut max_wait = 0u64;
                    for i in 0..iters {
                        if i & 63 == 0 {
                            let t0 = Instant::now();
                            let mut g = m.lock().await;
                            max_wait = max_wait.max(t0.elapsed().as_nanos() as u64);
                            *g += 1;
                        } else {
                            *m.lock().await += 1;
                        }
                        if work != 0 {
                            sink ^= spin_work(work, sink.wrapping_add(i));
                        }
                    }
                    max_u64(&mw, max_wait);
                    black_box(sink);
                })
            })
            .collect();
        for h in hs {
            h.await.unwrap();
        }
        t0.elapsed()
    });
    if *m.try_lock().unwrap() != tasks * iters {
        fail("async_contended: counter mismatch");
    }
    let param = format!("tasks={tasks} workers={workers} work={work}");
    emit("tokio", "async_contended", &param, "ns_per_op", ns_per(d, tasks * iters));
    emit("tokio", "async_contended", &param, "max_wait_us", mw.load(Ordering::Relaxed) as f64 / 1000.0);
}

fn w_async_rwlock(p: &Params) {
    let tasks = p.u("tasks", 64).max(1);
    let workers = p.u("workers", 2);
    let write_pct = p.u("write_pct", 10);
    let iters = iters_for(p, 2_000_000, tasks);
    let l = Arc::new(tokio::sync::RwLock::new(Quad::default()));
    let writes = Arc::new(AtomicU64::new(0));
    let (l2, w2) = (l.clone(), writes.clone());
    let d = run_on(workers, async move {
        let t0 = Instant::now();
        let hs: Vec<_> = (0..tasks)
            .map(|t| {
                let l = l2.clone();
                let w = w2.clone();
                tokio::spawn(async move {
                    let mut rng = Lcg(t + 1);
                    let (mut nw, mut sink) = (0u64, 0u64);
                    for _ in 0..iters {
                        if rng.pct() < write_pct {
                            l.write().await.bump();
                            nw += 1;
                        } else {
                            let q = *l.read().await;
                            if !q.consistent() {
                                fail("async_rwlock: torn read");
                            }
                            sink = sink.wrapping_add(q.a);
                        }
                    }
                    w.fetch_add(nw, Ordering::Relaxed);
                    black_box(sink);
                })
            })
            .collect();
        for h in hs {
            h.await.unwrap();
        }
        t0.elapsed()
    });
    let q = *l.try_read().unwrap();
    if !q.consistent() || q.a != writes.load(Ordering::Relaxed) {
        fail("async_rwlock: write count mismatch");
    }
    let param = format!("tasks={tasks} workers={workers} write_pct={write_pct}");
    emit("tokio", "async_rwlock", &param, "ns_per_op", ns_per(d, tasks * iters));
}

fn w_semaphore(p: &Params) {
    let tasks = p.u("tasks", 64).max(1);
    let workers = p.u("workers", 2);
    let permits = p.u("permits", 4).max(1);
    let iters = iters_for(p, 2_000_000, tasks);
    let sem = Arc::new(tokio::sync::Semaphore::new(permits as usize));
    let total = Arc::new(AtomicU64::new(0));
    let (s2, t2) = (sem.clone(), total.clone());
    let d = run_on(workers, async move {
        let t0 = Instant::now();
        let hs: Vec<_> = (0..tasks)
            .map(|_| {
                let s = s2.clone();
                let tot = t2.clone();
                tokio::spawn(async move {
                    let mut n = 0u64;
                    for _ in 0..iters {
                        let permit = s.acquire().await.unwrap();
                        n += 1;
                        drop(black_box(permit));
                    }
                    tot.fetch_add(n, Ordering::Relaxed);
                })
            })
            .collect();
        for h in hs {
            h.await.unwrap();
        }
        t0.elapsed()
    });
    if total.load(Ordering::Relaxed) != tasks * iters || sem.available_permits() != permits as usize {
        fail("semaphore: acquisition count or final permits mismatch");
    }
    let param = format!("tasks={tasks} workers={workers} permits={permits}");
    emit("tokio", "semaphore", &param, "ns_per_op", ns_per(d, tasks * iters));
}

fn w_chan_pingpong(p: &Params) {
    let iters = p.u("iters", 300_000).max(1);
    let workers = p.u("workers", 1);
    let d = run_on(workers, async move {
        let (atx, mut arx) = tokio::sync::mpsc::channel::<u64>(1);
        let (btx, mut brx) = tokio::sync::mpsc::channel::<u64>(1);
        let echo = tokio::spawn(async move {
            while let Some(v) = arx.recv().await {
                btx.send(v + 1).await.unwrap();
            }
        });
        let t0 = Instant::now();
        for i in 0..iters {
            atx.send(i).await.unwrap();
            if brx.recv().await.unwrap() != i + 1 {
                fail("chan_pingpong: wrong reply");
            }
        }
        let d = t0.elapsed();
        drop(atx);
        echo.await.unwrap();
        d
    });
    emit("tokio", "chan_pingpong", &format!("workers={workers}"), "ns_per_roundtrip", ns_per(d, iters));
}

fn w_chan_mpmc(p: &Params) {
    let producers = p.u("producers", 4).max(1);
    let consumers_req = p.u("consumers", 1);
    let workers = p.u("workers", 2);
    let cap = p.u("cap", 1024).max(1);
    let items = p.u("items", 1_000_000);
    if consumers_req != 1 {
        eprintln!(
            "peer-tokio: chan_mpmc: tokio::sync::mpsc has a single receiver; \
             running consumers=1 instead of consumers={consumers_req}"
        );
    }
    let (sum, count, d) = run_on(workers, async move {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<u64>(cap as usize);
        let t0 = Instant::now();
        let consumer = tokio::spawn(async move {
            let (mut sum, mut count) = (0u64, 0u64);
            while let Some(v) = rx.recv().await {
                sum = sum.wrapping_add(v);
                count += 1;
            }
            (sum, count)
        });
        let hs: Vec<_> = (0..producers)
            .map(|pi| {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut i = pi;
                    while i < items {
                        tx.send(i + 1).await.unwrap();
                        i += producers;
                    }
                })
            })
            .collect();
        drop(tx);
        for h in hs {
            h.await.unwrap();
        }
        let (sum, count) = consumer.await.unwrap();
        (sum, count, t0.elapsed())
    });
    if count != items || sum != items.wrapping_mul(items + 1) / 2 {
        fail("chan_mpmc: checksum mismatch");
    }
    let param = format!("producers={producers} consumers=1 workers={workers} cap={cap}");
    emit("tokio", "chan_mpmc", &param, "ns_per_item", ns_per(d, items.max(1)));
}

// ---------------------------------------------------------------- echo server

/// `echo_server port=N workers=2 seconds=S`: a TCP echo server on 127.0.0.1:port for S
/// seconds, one spawned task per connection (read, then write_all what was read, 4 KiB
/// buffer). bench-plaza's `echo` client drives it; this side only reports how many
/// connections it accepted. Without `port` (as in `all`) there is no client: skipped.
fn w_echo_server(p: &Params) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if !p.kv.contains_key("port") {
        eprintln!("peer-tokio: echo_server needs port=N (0: any free port); skipped");
        return;
    }
    let port = p.u("port", 0);
    let workers = p.u("workers", 2).max(1);
    let seconds = p.u("seconds", 10);
    if port > 65535 {
        eprintln!("peer-tokio: port={port} is not a TCP port");
        std::process::exit(64);
    }
    // Always multi_thread, as the spec asks (runtime() would give current_thread for 1).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers as usize)
        .enable_all()
        .build()
        .unwrap();
    let accepted = rt.block_on(async move {
        tokio::spawn(async move {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port as u16))
                .await
                .unwrap_or_else(|e| {
                    eprintln!("peer-tokio: echo_server: bind 127.0.0.1:{port}: {e}");
                    std::process::exit(2);
                });
            let local = listener.local_addr().unwrap();
            eprintln!("peer-tokio: echo_server: listening on {local} for {seconds} s");
            let stop = tokio::time::sleep(Duration::from_secs(seconds));
            tokio::pin!(stop);
            let mut accepted = 0u64;
            loop {
                tokio::select! {
                    _ = &mut stop => break,
                    r = listener.accept() => {
                        let (mut sock, _) = match r {
                            Ok(c) => c,
                            Err(e) => {
                                eprintln!("peer-tokio: echo_server: accept: {e}");
                                continue;
                            }
                        };
                        // Replies leave at once, as in plaza's and Go's servers.
                        let _ = sock.set_nodelay(true);
                        accepted += 1;
                        tokio::spawn(async move {
                            let mut buf = [0u8; 4096];
                            loop {
                                match sock.read(&mut buf).await {
                                    Ok(0) | Err(_) => break,
                                    Ok(n) => {
                                        if sock.write_all(&buf[..n]).await.is_err() {
                                            break;
                                        }
                                    }
                                }
                            }
                        });
                    }
                }
            }
            accepted
        })
        .await
        .unwrap()
    });
    // Connections still open at the deadline are dropped with the runtime.
    rt.shutdown_timeout(Duration::from_millis(100));
    emit("tokio", "echo_server", &format!("workers={workers}"), "connections", accepted as f64);
}

// ---------------------------------------------------------------- logic sections

// The logic-section workloads talk to bin/dbserver (bench/dbserver.c): a 16-byte request,
// the same 16 bytes back after the server's delay. They need `db_port=N`; without it (as
// in `all`) they are skipped, except `wrong_lock kind=data_behind_async`, which uses no
// server.

const DB_MSG: usize = 16;

fn db_port(p: &Params, workload: &str) -> Option<u16> {
    if !p.kv.contains_key("db_port") {
        eprintln!("peer-tokio: {workload} needs db_port=N (a running bin/dbserver); skipped");
        return None;
    }
    let port = p.u("db_port", 0);
    if port == 0 || port > 65535 {
        eprintln!("peer-tokio: db_port={port} is not a TCP port");
        std::process::exit(64);
    }
    Some(port as u16)
}

fn db_request(seq: u64) -> [u8; DB_MSG] {
    let mut req = [0u8; DB_MSG];
    req[..8].copy_from_slice(&seq.to_le_bytes());
    req
}

/// One round trip on an async connection; the reply must echo the request.
async fn db_trip(s: &mut tokio::net::TcpStream, seq: u64) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let req = db_request(seq);
    let mut resp = [0u8; DB_MSG];
    if s.write_all(&req).await.is_err() || s.read_exact(&mut resp).await.is_err() || resp != req {
        fail("db round trip failed or reply mismatch");
    }
}

/// The same on a blocking std connection: the calling thread waits in read().
fn db_trip_blocking(s: &mut std::net::TcpStream, seq: u64) {
    use std::io::{Read, Write};
    let req = db_request(seq);
    let mut resp = [0u8; DB_MSG];
    if s.write_all(&req).is_err() || s.read_exact(&mut resp).is_err() || resp != req {
        fail("db round trip failed or reply mismatch");
    }
}

async fn db_connect(port: u16) -> tokio::net::TcpStream {
    let s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap_or_else(|e| fail(&format!("connect 127.0.0.1:{port}: {e}")));
    s.set_nodelay(true).unwrap();
    s
}

fn db_connect_blocking(port: u16) -> std::net::TcpStream {
    let s = std::net::TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| fail(&format!("connect 127.0.0.1:{port}: {e}")));
    s.set_nodelay(true).unwrap();
    s
}

/// Mean time of one unlocked round trip, in seconds: one task alone, after 10 warm-up
/// trips, at most 500 trips or 200 ms (whichever comes first).
async fn db_probe_rtt(port: u16) -> f64 {
    let mut c = db_connect(port).await;
    for i in 0..10 {
        db_trip(&mut c, i).await;
    }
    let t0 = Instant::now();
    let mut n = 0u64;
    while n < 500 && t0.elapsed() < Duration::from_millis(200) {
        db_trip(&mut c, n).await;
        n += 1;
    }
    t0.elapsed().as_secs_f64() / n as f64
}

/// The latency histogram of every peer and of plaza's own benchmarks (the same layout in
/// each language): log-linear over nanoseconds, one bucket per value below 256, then every
/// power-of-two range [2^k, 2^(k+1)) split into 128 equal buckets, so a bucket is at most
/// 1/128 of its lower bound wide and its midpoint, the value reported, is within 0.4% of
/// any value in it. Values from 2^40 ns (18 minutes) up share the last bucket.
struct Hist(Vec<u64>);
impl Hist {
    const SUB_BITS: u32 = 7;
    const SUB: u64 = 1 << Self::SUB_BITS;
    const MAX_BITS: u32 = 40;
    const BUCKETS: usize = (2 * Self::SUB + (Self::MAX_BITS - Self::SUB_BITS - 1) as u64 * Self::SUB) as usize;
    fn new() -> Hist {
        Hist(vec![0; Self::BUCKETS])
    }
    fn index(v: u64) -> usize {
        let v = v.min((1u64 << Self::MAX_BITS) - 1);
        if v < 2 * Self::SUB {
            return v as usize;
        }
        let shift = 63 - v.leading_zeros() - Self::SUB_BITS; // >= 1 here
        let mant = v >> shift; // in [SUB, 2*SUB)
        (2 * Self::SUB + (shift as u64 - 1) * Self::SUB + (mant - Self::SUB)) as usize
    }
    /// The midpoint of bucket i, the inverse of `index`.
    fn value(i: usize) -> f64 {
        let i = i as u64;
        if i < 2 * Self::SUB {
            return i as f64;
        }
        let k = i - 2 * Self::SUB;
        let (shift, mant) = (k / Self::SUB + 1, k % Self::SUB + Self::SUB);
        (mant << shift) as f64 + (1u64 << shift) as f64 / 2.0
    }
    fn record(&mut self, v: u64) {
        self.0[Self::index(v)] += 1;
    }
    fn merge(&mut self, o: &Hist) {
        for (a, b) in self.0.iter_mut().zip(o.0.iter()) {
            *a += b;
        }
    }
    fn count(&self) -> u64 {
        self.0.iter().sum()
    }
    /// With n values, the one at sorted index min(n-1, n*permille/1000), reported as its
    /// bucket's midpoint (ns); 0 for an empty histogram. The rule of every peer.
    fn permille(&self, pm: u64) -> f64 {
        let n = self.count();
        if n == 0 {
            return 0.0;
        }
        let rank = (n * pm / 1000).min(n - 1);
        let mut seen = 0;
        for (i, c) in self.0.iter().enumerate() {
            seen += c;
            if seen > rank {
                return Self::value(i);
            }
        }
        Self::value(Self::BUCKETS - 1)
    }
}

/// `logic`: `tasks` tasks share one tokio::sync::Mutex; each section is one round trip
/// on the task's own connection. Returns (sections, wall, mean unlocked rtt in s).
fn w_logic(p: &Params) {
    let Some(port) = db_port(p, "logic") else { return };
    let tasks = p.u("tasks", 64).max(1);
    let workers = p.u("workers", 2);
    let delay_us = p.u("delay_us", 0);
    let seconds = p.u("seconds", 2).max(1);
    let (total, d, rtt) = run_on(workers, async move {
        let rtt = db_probe_rtt(port).await;
        let m = Arc::new(tokio::sync::Mutex::new(0u64));
        let mut conns = Vec::new();
        for _ in 0..tasks {
            conns.push(db_connect(port).await);
        }
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(seconds);
        let hs: Vec<_> = conns
            .into_iter()
            .map(|mut c| {
                let m = m.clone();
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while Instant::now() < deadline {
                        let mut g = m.lock().await;
                        db_trip(&mut c, *g).await;
                        *g += 1;
                        drop(g);
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let mut total = 0;
        for h in hs {
            total += h.await.unwrap();
        }
        let d = t0.elapsed();
        if total != *m.lock().await {
            fail("logic: section count mismatch");
        }
        (total, d, rtt)
    });
    let sps = total as f64 / d.as_secs_f64();
    let param = format!("tasks={tasks} workers={workers} delay_us={delay_us}");
    emit("tokio", "logic", &param, "sections_per_s", sps);
    emit("tokio", "logic", &param, "utilisation", sps * rtt);
    emit("tokio", "logic", &param, "rtt_us", rtt * 1e6);
}

struct ByResult {
    sections_per_s: f64,
    bystander_ops_per_s: f64,
    bystander_p50_us: f64,
    bystander_p99_us: f64,
    bystander_p999_us: f64,
}

/// `tasks` tasks run logic sections (sync: std::sync::Mutex around blocking std::net I/O
/// inside the async task; async: tokio::sync::Mutex around tokio I/O) while `bystanders`
/// tasks loop { work(100); yield_now } and record each iteration's latency, counted from
/// the end of the previous one (the first from the start), so time spent waiting for a
/// worker is in the figure.
fn bystanders_run(port: u16, sync: bool, tasks: u64, bystanders: u64, workers: u64, seconds: u64) -> ByResult {
    let (sections, ops, hist, d) = run_on(workers, async move {
        let sm = Arc::new(std::sync::Mutex::new(0u64));
        let am = Arc::new(tokio::sync::Mutex::new(0u64));
        let mut conns = Vec::new();
        let mut bconns = Vec::new();
        for _ in 0..tasks {
            if sync {
                bconns.push(db_connect_blocking(port));
            } else {
                conns.push(db_connect(port).await);
            }
        }
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(seconds);
        let mut hs = Vec::new();
        for mut c in bconns {
            let m = sm.clone();
            hs.push(tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let mut g = m.lock().unwrap();
                    db_trip_blocking(&mut c, *g);
                    *g += 1;
                    drop(g);
                    n += 1;
                }
                n
            }));
        }
        for mut c in conns {
            let m = am.clone();
            hs.push(tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let mut g = m.lock().await;
                    db_trip(&mut c, *g).await;
                    *g += 1;
                    drop(g);
                    n += 1;
                }
                n
            }));
        }
        let bs: Vec<_> = (0..bystanders)
            .map(|b| {
                tokio::spawn(async move {
                    let mut h = Hist::new();
                    let (mut prev, mut n, mut s) = (t0, 0u64, b + 1);
                    loop {
                        s ^= spin_work(100, s.wrapping_add(n));
                        tokio::task::yield_now().await;
                        let now = Instant::now();
                        h.record((now - prev).as_nanos() as u64);
                        prev = now;
                        n += 1;
                        if now >= deadline {
                            break;
                        }
                    }
                    black_box(s);
                    (n, h)
                })
            })
            .collect();
        let mut sections = 0;
        for h in hs {
            sections += h.await.unwrap();
        }
        let (mut ops, mut hist) = (0u64, Hist::new());
        for b in bs {
            let (n, h) = b.await.unwrap();
            ops += n;
            hist.merge(&h);
        }
        let d = t0.elapsed();
        let held = if sync { *sm.lock().unwrap() } else { *am.lock().await };
        if held != sections || hist.count() != ops {
            fail("bystanders: section or iteration count mismatch");
        }
        (sections, ops, hist, d)
    });
    ByResult {
        sections_per_s: sections as f64 / d.as_secs_f64(),
        bystander_ops_per_s: ops as f64 / d.as_secs_f64(),
        bystander_p50_us: hist.permille(500) / 1000.0,
        bystander_p99_us: hist.permille(990) / 1000.0,
        bystander_p999_us: hist.permille(999) / 1000.0,
    }
}

fn lock_kind(p: &Params) -> bool {
    match p.s("lock", "async").as_str() {
        "sync" => true,
        "async" => false,
        other => {
            eprintln!("peer-tokio: lock={other}: expected sync or async");
            std::process::exit(64);
        }
    }
}

fn emit_bystanders(workload: &str, param: &str, r: &ByResult) {
    emit("tokio", workload, param, "bystander_ops_per_s", r.bystander_ops_per_s);
    emit("tokio", workload, param, "bystander_p50_us", r.bystander_p50_us);
    emit("tokio", workload, param, "bystander_p99_us", r.bystander_p99_us);
    emit("tokio", workload, param, "bystander_p999_us", r.bystander_p999_us);
    emit("tokio", workload, param, "sections_per_s", r.sections_per_s);
}

fn w_bystanders(p: &Params) {
    let sync = lock_kind(p);
    let Some(port) = db_port(p, "bystanders") else { return };
    let tasks = p.u("tasks", 64).max(1);
    let bystanders = p.u("bystanders", 64).max(1);
    let workers = p.u("workers", 2);
    let delay_us = p.u("delay_us", 1000);
    let seconds = p.u("seconds", 2).max(1);
    let r = bystanders_run(port, sync, tasks, bystanders, workers, seconds);
    let lock = if sync { "sync" } else { "async" };
    let param = format!("lock={lock} tasks={tasks} bystanders={bystanders} workers={workers} delay_us={delay_us}");
    emit_bystanders("bystanders", &param, &r);
}

/// `wrong_lock kind=data_behind_async`: the data section (counter++) behind
/// tokio::sync::Mutex (compare with `tasks_contended work=0`, the same section behind a
/// sync lock); `kind=logic_behind_sync`: `bystanders lock=sync` under this name.
fn w_wrong_lock(p: &Params) {
    let tasks = p.u("tasks", 64).max(1);
    let workers = p.u("workers", 2);
    match p.s("kind", "data_behind_async").as_str() {
        "data_behind_async" => {
            let iters = iters_for(p, 2_000_000, tasks);
            let m = Arc::new(tokio::sync::Mutex::new(0u64));
            let m2 = m.clone();
            let d = run_on(workers, async move {
                let t0 = Instant::now();
                let hs: Vec<_> = (0..tasks)
                    .map(|_| {
                        let m = m2.clone();
                        tokio::spawn(async move {
                            for _ in 0..iters {
                                *m.lock().await += 1;
                            }
                        })
                    })
                    .collect();
                for h in hs {
                    h.await.unwrap();
                }
                t0.elapsed()
            });
            if *m.try_lock().unwrap() != tasks * iters {
                fail("wrong_lock: counter mismatch");
            }
            let param = format!("kind=data_behind_async tasks={tasks} workers={workers}");
            emit("tokio", "wrong_lock", &param, "ns_per_op", ns_per(d, tasks * iters));
        }
        "logic_behind_sync" => {
            let Some(port) = db_port(p, "wrong_lock kind=logic_behind_sync") else { return };
            let bystanders = p.u("bystanders", 64).max(1);
            let delay_us = p.u("delay_us", 1000);
            let seconds = p.u("seconds", 2).max(1);
            let r = bystanders_run(port, true, tasks, bystanders, workers, seconds);
            let param = format!(
                "kind=logic_behind_sync tasks={tasks} bystanders={bystanders} workers={workers} delay_us={delay_us}"
            );
            emit_bystanders("wrong_lock", &param, &r);
        }
        other => {
            eprintln!("peer-tokio: kind={other}: expected data_behind_async or logic_behind_sync");
            std::process::exit(64);
        }
    }
}

// ---------------------------------------------------------------- scheduling under overload

/// The computing tasks of `ticker` and `blocking_section`: `work` xorshift steps, then
/// yield_now, until `stop`; returns the iterations they made.
fn spawn_busy(n: u64, work: u64, stop: Arc<std::sync::atomic::AtomicBool>, ops: Arc<AtomicU64>) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|i| {
            let stop = stop.clone();
            let ops = ops.clone();
            tokio::spawn(async move {
                let (mut x, mut k) = (i + 1, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    x ^= spin_work(work, x.wrapping_add(k));
                    tokio::task::yield_now().await;
                    k += 1;
                }
                black_box(x);
                ops.fetch_add(k, Ordering::Relaxed);
            })
        })
        .collect()
}

/// `ticker`: one task sleeps until an absolute deadline every period_us beside `tasks`
/// computing and yielding tasks; lateness = when it runs - its deadline.
fn w_ticker(p: &Params) {
    let tasks = p.u("tasks", 1000);
    let workers = p.u("workers", 2);
    let work = p.u("work", 1000);
    let period = Duration::from_micros(p.u("period_us", 2000).max(1));
    let seconds = p.u("seconds", 2).max(1);
    let (late, ops_per_s) = run_on(workers, async move {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ops = Arc::new(AtomicU64::new(0));
        let busy = spawn_busy(tasks, work, stop.clone(), ops.clone());
        let t0 = Instant::now();
        let ticker = tokio::spawn(async move {
            let mut h = Hist::new();
            let start = tokio::time::Instant::now();
            let end = start + Duration::from_secs(seconds);
            let mut deadline = start + period;
            while deadline <= end {
                tokio::time::sleep_until(deadline).await;
                let now = tokio::time::Instant::now();
                if now < deadline {
                    fail("ticker: woke before its deadline");
                }
                h.record((now - deadline).as_nanos() as u64);
                deadline += period;
            }
            h
        });
        let h = ticker.await.unwrap();
        stop.store(true, Ordering::Relaxed);
        for b in busy {
            b.await.unwrap();
        }
        (h, ops.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64())
    });
    if late.count() == 0 {
        fail("ticker: no ticks");
    }
    let param = format!("tasks={tasks} workers={workers} work={work} period_us={}", period.as_micros());
    emit("tokio", "ticker", &param, "late_p50_us", late.permille(500) / 1000.0);
    emit("tokio", "ticker", &param, "late_p99_us", late.permille(990) / 1000.0);
    emit("tokio", "ticker", &param, "late_max_us", late.permille(1000) / 1000.0);
    emit("tokio", "ticker", &param, "busy_ops_per_s", ops_per_s);
}

/// `blocking_section`: `holders` tasks take one tokio::sync::Mutex in turn and hold it
/// across spawn_blocking(sleep block_ms), beside `clients` computing and yielding tasks.
fn w_blocking_section(p: &Params) {
    let clients = p.u("clients", 1000);
    let holders = p.u("holders", 4).max(1);
    let workers = p.u("workers", 2);
    let work = p.u("work", 1000);
    let block = Duration::from_millis(p.u("block_ms", 20).max(1));
    let seconds = p.u("seconds", 2).max(1);
    let (holds, sections_per_s, ops_per_s) = run_on(workers, async move {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ops = Arc::new(AtomicU64::new(0));
        let busy = spawn_busy(clients, work, stop.clone(), ops.clone());
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(seconds);
        // The histogram lives under the lock: only the holder writes it.
        let lock = Arc::new(tokio::sync::Mutex::new(Hist::new()));
        let hs: Vec<_> = (0..holders)
            .map(|_| {
                let lock = lock.clone();
                tokio::spawn(async move {
                    while Instant::now() < deadline {
                        let mut g = lock.lock().await;
                        let got = Instant::now();
                        tokio::task::spawn_blocking(move || std::thread::sleep(block)).await.unwrap();
                        let held = got.elapsed();
                        if held < block {
                            fail("blocking_section: held less than the blocking call");
                        }
                        g.record(held.as_nanos() as u64);
                    }
                })
            })
            .collect();
        for h in hs {
            h.await.unwrap();
        }
        let elapsed = t0.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        for b in busy {
            b.await.unwrap();
        }
        let holds = std::mem::replace(&mut *lock.lock().await, Hist::new());
        let n = holds.count() as f64;
        (holds, n / elapsed, ops.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64())
    });
    if holds.count() == 0 {
        fail("blocking_section: no sections");
    }
    let param = format!(
        "clients={clients} holders={holders} workers={workers} work={work} block_ms={}",
        block.as_millis()
    );
    emit("tokio", "blocking_section", &param, "hold_p50_us", holds.permille(500) / 1000.0);
    emit("tokio", "blocking_section", &param, "hold_p99_us", holds.permille(990) / 1000.0);
    emit("tokio", "blocking_section", &param, "hold_max_us", holds.permille(1000) / 1000.0);
    emit("tokio", "blocking_section", &param, "sections_per_s", sections_per_s);
    emit("tokio", "blocking_section", &param, "client_ops_per_s", ops_per_s);
}

// ---------------------------------------------------------------- main

type Workload = fn(&Params);

/// name, function, accepted keys
const WORKLOADS: &[(&str, Workload, &[&str])] = &[
    ("work", w_work, &["work", "iters"]),
    ("spawn_join", w_spawn_join, &["n", "workers"]),
    ("spawn_burst", w_spawn_burst, &["burst", "rounds", "workers"]),
    ("yield", w_yield, &["tasks", "workers", "iters"]),
    ("sleep", w_sleep, &["n", "us"]),
    ("idle_rss", w_idle_rss, &["n", "workers"]),
    ("uncontended", w_uncontended, &["iters", "lock"]),
    ("contended", w_contended, &["threads", "iters", "work", "lock"]),
    ("tasks_contended", w_tasks_contended, &["tasks", "workers", "iters", "work", "lock"]),
    ("rwlock_read_mostly", w_rwlock_read_mostly, &["threads", "iters", "write_pct", "lock"]),
    ("async_uncontended", w_async_uncontended, &["iters"]),
    ("async_contended", w_async_contended, &["tasks", "workers", "iters", "work"]),
    ("async_rwlock", w_async_rwlock, &["tasks", "workers", "iters", "write_pct"]),
    ("semaphore", w_semaphore, &["tasks", "workers", "permits", "iters"]),
    ("chan_pingpong", w_chan_pingpong, &["iters", "workers"]),
    ("chan_mpmc", w_chan_mpmc, &["producers", "consumers", "workers", "cap", "items"]),
    ("echo_server", w_echo_server, &["port", "workers", "seconds"]),
    ("logic", w_logic, &["db_port", "tasks", "workers", "delay_us", "seconds"]),
    ("bystanders", w_bystanders, &["db_port", "lock", "tasks", "bystanders", "workers", "delay_us", "seconds"]),
    ("wrong_lock", w_wrong_lock, &["kind", "db_port", "tasks", "bystanders", "workers", "iters", "delay_us", "seconds"]),
    // Not in `all`: bench/run.py runs them with their parameters.
    ("ticker", w_ticker, &["tasks", "workers", "work", "period_us", "seconds"]),
    ("blocking_section", w_blocking_section, &["clients", "holders", "workers", "work", "block_ms", "seconds"]),
];

/// What `all` runs: each workload once with defaults, plus the rows the spec lists
/// (contended threads=2|8|64 x work=0|100; tasks_contended and async_contended
/// tasks=2|64|1024 x work=0|100, the same total of operations per row).
const ALL: &[(&str, &[&str])] = &[
    ("work", &[]),
    ("spawn_join", &[]),
    ("spawn_burst", &[]),
    ("yield", &[]),
    ("sleep", &[]),
    ("idle_rss", &[]),
    ("uncontended", &[]),
    ("contended", &["threads=2", "work=0"]),
    ("contended", &["threads=2", "work=100"]),
    ("contended", &["threads=8", "work=0"]),
    ("contended", &["threads=8", "work=100"]),
    ("contended", &["threads=64", "work=0"]),
    ("contended", &["threads=64", "work=100"]),
    ("tasks_contended", &["tasks=2", "work=0"]),
    ("tasks_contended", &["tasks=2", "work=100"]),
    ("tasks_contended", &["tasks=64", "work=0"]),
    ("tasks_contended", &["tasks=64", "work=100"]),
    ("tasks_contended", &["tasks=1024", "work=0"]),
    ("tasks_contended", &["tasks=1024", "work=100"]),
    ("rwlock_read_mostly", &[]),
    ("async_uncontended", &[]),
    ("async_contended", &["tasks=2", "work=0"]),
    ("async_contended", &["tasks=2", "work=100"]),
    ("async_contended", &["tasks=64", "work=0"]),
    ("async_contended", &["tasks=64", "work=100"]),
    ("async_contended", &["tasks=1024", "work=0"]),
    ("async_contended", &["tasks=1024", "work=100"]),
    ("async_rwlock", &[]),
    ("semaphore", &[]),
    ("chan_pingpong", &[]),
    ("chan_mpmc", &[]),
    // The logic workloads need db_port=N, which `all` never has: they print a note and
    // are skipped (bench/run.py runs them against bin/dbserver). The data section
    // behind an async lock needs no server.
    ("logic", &[]),
    ("bystanders", &[]),
    ("wrong_lock", &["kind=data_behind_async"]),
];

fn usage() -> ! {
    eprintln!("usage: peer-tokio <workload|all|list> [key=value ...]");
    eprintln!("workloads:");
    for (name, _, keys) in WORKLOADS {
        let ks: Vec<String> = keys
            .iter()
            .map(|k| match (*name, *k) {
                ("bystanders", "lock") => "[lock=sync|async]".to_string(),
                (_, "lock") => "[lock=parking_lot|std|both]".to_string(),
                (_, "kind") => "[kind=data_behind_async|logic_behind_sync]".to_string(),
                (_, k) => format!("[{k}=N]"),
            })
            .collect();
        eprintln!("  {name} {}", ks.join(" "));
    }
    std::process::exit(64);
}

fn find(name: &str) -> (Workload, &'static [&'static str]) {
    WORKLOADS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, f, k)| (*f, *k))
        .unwrap_or_else(|| {
            eprintln!("peer-tokio: unknown workload '{name}'");
            usage()
        })
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else { usage() };
    match cmd.as_str() {
        "list" => {
            for (name, _, _) in WORKLOADS {
                println!("{name}");
            }
        }
        "all" => {
            if args.len() > 1 {
                eprintln!("peer-tokio: 'all' takes no parameters");
                std::process::exit(64);
            }
            for (name, extra) in ALL {
                let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
                eprintln!("peer-tokio: {name} {}", extra.join(" "));
                let p = Params::parse(&extra);
                let (f, keys) = find(name);
                p.check_keys(name, keys);
                f(&p);
            }
        }
        name => {
            let (f, keys) = find(name);
            let p = Params::parse(&args[1..]);
            p.check_keys(name, keys);
            f(&p);
        }
    }
}
