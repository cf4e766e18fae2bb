// peer-boost-fiber: the plaza peer workloads on Boost.Fiber 1.74 (fibers, work_stealing
// scheduler, boost::fibers::mutex, buffered_channel).
//
// Usage: peer-boost-fiber <workload|all|list> [key=value ...]
// Prints `system,workload,param,metric,value` CSV lines on stdout; diagnostics on stderr.
// Exits non-zero if a workload's own check (counter total, checksum) fails.
//
// Boost.Fiber's work_stealing scheduler can be installed only once per process, so one
// process runs one workload; `all` runs each workload in a child process (this binary,
// re-executed through /proc/self/exe).
//
// Scheduling: workers>=2 installs algo::work_stealing(workers, suspend) on the main thread
// and on workers-1 helper threads (suspend=1 by default: idle threads sleep on a condition
// variable instead of spinning; suspend=0 gives the spinning variant). workers=1 keeps
// Boost.Fiber's default round_robin scheduler on the main thread (work_stealing with one
// thread never finds a victim to steal from).
#include <boost/fiber/all.hpp>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <spawn.h>
#include <string>
#include <sys/resource.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

extern char **environ;

namespace fibers = boost::fibers;
using Clock = std::chrono::steady_clock;

// ---------------------------------------------------------------- helpers

[[noreturn]] static void fail(const char *msg)
{
    std::fprintf(stderr, "peer-boost-fiber: CHECK FAILED: %s\n", msg);
    std::fflush(stdout);
    _exit(2);
}

// The workload and param of the last line printed, for the cpu_per_wall line.
static std::string last_workload, last_param;

static void emit(const char *workload, const std::string &param, const char *metric, double value)
{
    last_workload = workload;
    last_param = param;
    std::printf("boost_fiber,%s,%s,%s,%.2f\n", workload, param.c_str(), metric, value);
    std::fflush(stdout);
}

static int64_t ns_since(Clock::time_point t0)
{
    return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count();
}

struct Params {
    std::map<std::string, std::string> kv;
    uint64_t u(const char *key, uint64_t def) const
    {
        auto it = kv.find(key);
        if (it == kv.end())
            return def;
        const char *s = it->second.c_str();
        char *end;
        errno = 0;
        unsigned long long v = std::strtoull(s, &end, 10);
        if (errno || *end || !*s || *s == '-') {
            std::fprintf(stderr, "peer-boost-fiber: %s=%s is not a non-negative integer\n", key, s);
            std::exit(64);
        }
        return v;
    }
};

static uint64_t umax(uint64_t a, uint64_t b) { return a > b ? a : b; }

// Iterations per fiber: iters= if given, else `total` ops split over n fibers.
static uint64_t iters_for(const Params &p, uint64_t total, uint64_t n)
{
    return p.u("iters", umax(total / umax(n, 1), 1));
}

static std::atomic<uint64_t> sink{0};

// The busy loop run outside the lock: `work` steps of xorshift64 (13, 7, 17), the same
// loop in every peer; the `work` workload calibrates its cost.
static inline uint64_t spin_work(uint64_t work, uint64_t seed)
{
    uint64_t x = seed | 1;
    for (uint64_t i = 0; i < work; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    return x;
}

static void atomic_max(std::atomic<uint64_t> &a, uint64_t v)
{
    uint64_t old = a.load(std::memory_order_relaxed);
    while (v > old && !a.compare_exchange_weak(old, v, std::memory_order_relaxed))
        ;
}

static uint64_t rss_bytes()
{
    std::ifstream f("/proc/self/statm");
    uint64_t size = 0, resident = 0;
    f >> size >> resident;
    return resident * (uint64_t)sysconf(_SC_PAGESIZE);
}

static double cpu_seconds()
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

// ---------------------------------------------------------------- latency histogram

// The latency histogram of every peer and of plaza's own benchmarks (the same layout in
// each language): log-linear over nanoseconds, one bucket per value below 256, then every
// power-of-two range [2^k, 2^(k+1)) split into 128 equal buckets, so a bucket is at most
// 1/128 of its lower bound wide and its midpoint, the value reported, is within 0.4% of
// any value in it. Values from 2^40 ns (18 minutes) up share the last bucket.
struct Hist {
    static constexpr int SUB_BITS = 7;
    static constexpr uint64_t SUB = 1u << SUB_BITS;
    static constexpr int MAX_BITS = 40;
    static constexpr size_t BUCKETS = 2 * SUB + (MAX_BITS - SUB_BITS - 1) * SUB;
    std::vector<uint64_t> c = std::vector<uint64_t>(BUCKETS, 0);

    static size_t index(uint64_t v)
    {
        if (v >= (1ULL << MAX_BITS))
            v = (1ULL << MAX_BITS) - 1;
        if (v < 2 * SUB)
            return (size_t)v;
        int shift = 63 - __builtin_clzll(v) - SUB_BITS; // >= 1 here
        uint64_t mant = v >> shift;                     // in [SUB, 2*SUB)
        return (size_t)(2 * SUB + (uint64_t)(shift - 1) * SUB + (mant - SUB));
    }
    // The midpoint of bucket i, the inverse of index().
    static double value(size_t i)
    {
        if (i < 2 * SUB)
            return (double)i;
        uint64_t k = i - 2 * SUB;
        uint64_t shift = k / SUB + 1, mant = k % SUB + SUB;
        return (double)(mant << shift) + (double)(1ULL << shift) / 2.0;
    }
    void add(uint64_t v) { c[index(v)]++; }
    uint64_t count() const
    {
        uint64_t n = 0;
        for (uint64_t x : c)
            n += x;
        return n;
    }
    // With n values, the one at sorted index min(n-1, n*permille/1000), reported as its
    // bucket's midpoint (ns); 0 for an empty histogram. The rule of every peer.
    double permille(uint64_t pm) const
    {
        uint64_t n = count();
        if (n == 0)
            return 0;
        uint64_t rank = std::min(n * pm / 1000, n - 1), seen = 0;
        for (size_t i = 0; i < BUCKETS; i++) {
            seen += c[i];
            if (seen > rank)
                return value(i);
        }
        return value(BUCKETS - 1);
    }
};

// ---------------------------------------------------------------- scheduler setup

// Installs work_stealing on this thread and workers-1 helpers for the process lifetime
// (or nothing, for workers=1). Helpers park their main fiber on a fiber condition
// variable until the pool is shut down.
class Pool {
  public:
    Pool(uint64_t workers, bool suspend) : workers_(workers)
    {
        if (workers_ < 2)
            return;
        for (uint64_t i = 1; i < workers_; i++) {
            helpers_.emplace_back([this, suspend] {
                fibers::use_scheduling_algorithm<fibers::algo::work_stealing>((uint32_t)workers_, suspend);
                std::unique_lock<fibers::mutex> lk(mtx_);
                cnd_.wait(lk, [this] { return done_; });
            });
        }
        fibers::use_scheduling_algorithm<fibers::algo::work_stealing>((uint32_t)workers_, suspend);
    }
    ~Pool()
    {
        {
            std::unique_lock<fibers::mutex> lk(mtx_);
            done_ = true;
        }
        cnd_.notify_all();
        for (auto &t : helpers_)
            t.join();
    }

  private:
    uint64_t workers_;
    std::vector<std::thread> helpers_;
    fibers::mutex mtx_;
    fibers::condition_variable cnd_;
    bool done_ = false;
};

// The param suffix for a multi-worker row: nothing for the default suspend=1.
static std::string sched_note(uint64_t workers, bool suspend)
{
    return (workers >= 2 && !suspend) ? " suspend=0" : "";
}

// Runs f() on `workers` threads: starts the pool, runs f in the main fiber, shuts the
// pool down. For workers>=2 it adds a `cpu_per_wall` line: process CPU seconds per wall
// second over the run (about 1.0 means only one thread ran: the helpers slept).
template <class F> static void with_pool(const Params &p, uint64_t workers, F f)
{
    bool suspend = p.u("suspend", 1) != 0;
    Pool pool(workers, suspend);
    double c0 = cpu_seconds();
    auto t0 = Clock::now();
    f(sched_note(workers, suspend));
    double wall = ns_since(t0) / 1e9, cpu = cpu_seconds() - c0;
    if (workers >= 2 && !last_workload.empty())
        emit(last_workload.c_str(), std::string(last_param), "cpu_per_wall", wall > 0 ? cpu / wall : 0.0);
}

// ---------------------------------------------------------------- runtime workloads

static void w_work(const Params &p)
{
    uint64_t work = p.u("work", 100);
    uint64_t iters = umax(p.u("iters", 1000000), 1);
    uint64_t s = 1;
    auto t0 = Clock::now();
    for (uint64_t i = 0; i < iters; i++)
        s ^= spin_work(work, s + i);
    int64_t d = ns_since(t0);
    sink += s;
    emit("work", "work=" + std::to_string(work), "ns_per_op", (double)d / iters);
}

static void w_spawn_join(const Params &p)
{
    uint64_t n = umax(p.u("n", 100000), 1);
    uint64_t workers = p.u("workers", 2);
    with_pool(p, workers, [&](const std::string &note) {
        // A fiber has no return value: each writes arg+1 to its slot; the fibers are then
        // joined in order and each slot checked.
        auto t0 = Clock::now();
        std::vector<uint64_t> res(n);
        std::vector<fibers::fiber> fs;
        fs.reserve(n);
        for (uint64_t i = 0; i < n; i++)
            fs.emplace_back([i, &res] { res[i] = i + 1; });
        for (uint64_t i = 0; i < n; i++) {
            fs[i].join();
            if (res[i] != i + 1)
                fail("spawn_join: wrong result");
        }
        int64_t d = ns_since(t0);
        emit("spawn_join", "n=" + std::to_string(n) + " workers=" + std::to_string(workers) + note,
             "ns_per_task", (double)d / n);
    });
}

static void w_yield(const Params &p)
{
    uint64_t tasks = p.u("tasks", 2);
    uint64_t workers = p.u("workers", 1);
    uint64_t iters = p.u("iters", 1000000);
    with_pool(p, workers, [&](const std::string &note) {
        std::atomic<uint64_t> count{0};
        auto t0 = Clock::now();
        std::vector<fibers::fiber> fs;
        for (uint64_t t = 0; t < tasks; t++)
            fs.emplace_back([&] {
                for (uint64_t i = 0; i < iters; i++)
                    boost::this_fiber::yield();
                count += iters;
            });
        for (auto &f : fs)
            f.join();
        int64_t d = ns_since(t0);
        if (count != tasks * iters)
            fail("yield: count mismatch");
        emit("yield", "tasks=" + std::to_string(tasks) + " workers=" + std::to_string(workers) + note,
             "ns_per_yield", (double)d / umax(tasks * iters, 1));
    });
}

// One fiber sleeps `us` µs n times; each actual duration goes into the latency histogram
// (percentiles) and into an exact sum (mean).
static void w_sleep(const Params &p)
{
    uint64_t n = umax(p.u("n", 2000), 1);
    uint64_t us = p.u("us", 100);
    with_pool(p, 1, [&](const std::string &) {
        Hist h;
        uint64_t sum = 0;
        fibers::fiber f([&] {
            for (uint64_t i = 0; i < n; i++) {
                auto t0 = Clock::now();
                boost::this_fiber::sleep_for(std::chrono::microseconds(us));
                uint64_t d = (uint64_t)ns_since(t0);
                h.add(d);
                sum += d;
            }
        });
        f.join();
        if (h.count() != n)
            fail("sleep: sample count mismatch");
        std::string param = "n=" + std::to_string(n) + " us=" + std::to_string(us);
        emit("sleep", param, "p50_us", h.permille(500) / 1000.0);
        emit("sleep", param, "p99_us", h.permille(990) / 1000.0);
        emit("sleep", param, "p999_us", h.permille(999) / 1000.0);
        emit("sleep", param, "mean_us", (double)sum / n / 1000.0);
    });
}

static void w_idle_rss(const Params &p)
{
    uint64_t n = umax(p.u("n", 100000), 1);
    uint64_t workers = p.u("workers", 2);
    with_pool(p, workers, [&](const std::string &note) {
        // Every fiber blocks popping from one channel; closing it releases them all.
        fibers::buffered_channel<uint64_t> release(2);
        std::atomic<uint64_t> parked{0};
        std::vector<uint64_t> res(n);
        std::vector<fibers::fiber> fs;
        fs.reserve(n);
        boost::this_fiber::sleep_for(std::chrono::milliseconds(20));
        uint64_t before = rss_bytes();
        for (uint64_t i = 0; i < n; i++)
            fs.emplace_back([i, &res, &release, &parked] {
                parked.fetch_add(1, std::memory_order_relaxed);
                uint64_t v;
                if (release.pop(v) != fibers::channel_op_status::closed)
                    fail("idle_rss: received a value");
                res[i] = i + 1;
            });
        while (parked.load(std::memory_order_relaxed) < n)
            boost::this_fiber::sleep_for(std::chrono::milliseconds(1));
        boost::this_fiber::sleep_for(std::chrono::milliseconds(20));
        uint64_t after = rss_bytes();
        release.close();
        for (uint64_t i = 0; i < n; i++) {
            fs[i].join();
            if (res[i] != i + 1)
                fail("idle_rss: wrong result");
        }
        emit("idle_rss", "n=" + std::to_string(n) + " workers=" + std::to_string(workers) + note,
             "bytes_per_task", ((double)after - (double)before) / n);
    });
}

// ---------------------------------------------------------------- mutex workloads

// `tasks` fibers each iters times: lock a boost::fibers::mutex, counter++, unlock, then
// `work` busy steps; every 64th acquisition timed. Emits ns_per_op and max_wait_us.
static void fiber_mutex_run(const Params &p, const char *workload, uint64_t tasks, uint64_t workers,
                            uint64_t iters, uint64_t work)
{
    with_pool(p, workers, [&](const std::string &note) {
        fibers::mutex m;
        uint64_t counter = 0; // protected by m
        std::atomic<uint64_t> max_wait{0};
        auto t0 = Clock::now();
        std::vector<fibers::fiber> fs;
        for (uint64_t t = 0; t < tasks; t++)
            fs.emplace_back([&, t] {
                uint64_t s = t + 1, mw = 0;
                for (uint64_t i = 0; i < iters; i++) {
                    if ((i & 63) == 0) {
                        auto l0 = Clock::now();
                        m.lock();
                        uint64_t w = (uint64_t)ns_since(l0);
                        counter++;
                        m.unlock();
                        mw = std::max(mw, w);
                    } else {
                        m.lock();
                        counter++;
                        m.unlock();
                    }
                    if (work)
                        s ^= spin_work(work, s + i);
                }
                atomic_max(max_wait, mw);
                sink += s;
            });
        for (auto &f : fs)
            f.join();
        int64_t d = ns_since(t0);
        m.lock();
        uint64_t total = counter;
        m.unlock();
        if (total != tasks * iters)
            fail("mutex: counter mismatch");
        std::string param = "tasks=" + std::to_string(tasks) + " workers=" + std::to_string(workers) +
                            " work=" + std::to_string(work) + note;
        emit(workload, param, "ns_per_op", (double)d / umax(tasks * iters, 1));
        emit(workload, param, "max_wait_us", max_wait.load() / 1000.0);
    });
}

static void w_tasks_contended(const Params &p)
{
    uint64_t tasks = umax(p.u("tasks", 64), 1);
    uint64_t workers = p.u("workers", 2);
    uint64_t work = p.u("work", 0);
    fiber_mutex_run(p, "tasks_contended", tasks, workers, iters_for(p, 4000000, tasks), work);
}

static void w_async_contended(const Params &p)
{
    uint64_t tasks = umax(p.u("tasks", 64), 1);
    uint64_t workers = p.u("workers", 2);
    uint64_t work = p.u("work", 0);
    fiber_mutex_run(p, "async_contended", tasks, workers, iters_for(p, 2000000, tasks), work);
}

static void w_async_uncontended(const Params &p)
{
    uint64_t iters = umax(p.u("iters", 5000000), 1);
    with_pool(p, 1, [&](const std::string &) {
        int64_t d = 0;
        fibers::fiber f([&] {
            fibers::mutex m;
            uint64_t counter = 0;
            auto t0 = Clock::now();
            for (uint64_t i = 0; i < iters; i++) {
                m.lock();
                counter++;
                m.unlock();
            }
            d = ns_since(t0);
            if (counter != iters)
                fail("async_uncontended: counter mismatch");
        });
        f.join();
        emit("async_uncontended", "tasks=1", "ns_per_op", (double)d / iters);
    });
}

// ---------------------------------------------------------------- channels

// buffered_channel needs a power-of-two size >= 2 and holds one item less than its size:
// size = next power of two >= max(cap, 2) (cap=1 -> size 2, holds 1; cap=1024 -> 1023).
static size_t chan_size(uint64_t cap)
{
    size_t s = 2;
    while (s < cap)
        s <<= 1;
    return s;
}

static void w_chan_pingpong(const Params &p)
{
    uint64_t iters = umax(p.u("iters", 300000), 1);
    uint64_t workers = p.u("workers", 1);
    with_pool(p, workers, [&](const std::string &note) {
        fibers::buffered_channel<uint64_t> a(chan_size(1)), b(chan_size(1));
        fibers::fiber echo([&] {
            uint64_t v;
            while (a.pop(v) == fibers::channel_op_status::success)
                b.push(v + 1);
        });
        int64_t d = 0;
        fibers::fiber ping([&] {
            auto t0 = Clock::now();
            for (uint64_t i = 0; i < iters; i++) {
                a.push(i);
                uint64_t r;
                if (b.pop(r) != fibers::channel_op_status::success || r != i + 1)
                    fail("chan_pingpong: wrong reply");
            }
            d = ns_since(t0);
        });
        ping.join();
        a.close();
        echo.join();
        emit("chan_pingpong", "workers=" + std::to_string(workers) + note, "ns_per_roundtrip", (double)d / iters);
    });
}

static void w_chan_mpmc(const Params &p)
{
    uint64_t producers = umax(p.u("producers", 4), 1);
    uint64_t consumers = umax(p.u("consumers", 4), 1);
    uint64_t workers = p.u("workers", 2);
    uint64_t cap = p.u("cap", 1024);
    uint64_t items = p.u("items", 1000000);
    with_pool(p, workers, [&](const std::string &note) {
        fibers::buffered_channel<uint64_t> ch(chan_size(cap));
        std::atomic<uint64_t> sum{0}, count{0};
        auto t0 = Clock::now();
        std::vector<fibers::fiber> cons, prods;
        for (uint64_t c = 0; c < consumers; c++)
            cons.emplace_back([&] {
                uint64_t s = 0, n = 0, v;
                while (ch.pop(v) == fibers::channel_op_status::success) {
                    s += v;
                    n++;
                }
                sum += s;
                count += n;
            });
        for (uint64_t pi = 0; pi < producers; pi++)
            prods.emplace_back([&, pi] {
                for (uint64_t i = pi; i < items; i += producers)
                    if (ch.push(i + 1) != fibers::channel_op_status::success)
                        fail("chan_mpmc: push failed");
            });
        for (auto &f : prods)
            f.join();
        ch.close();
        for (auto &f : cons)
            f.join();
        int64_t d = ns_since(t0);
        if (count != items || sum != items * (items + 1) / 2)
            fail("chan_mpmc: checksum mismatch");
        emit("chan_mpmc",
             "producers=" + std::to_string(producers) + " consumers=" + std::to_string(consumers) +
                 " workers=" + std::to_string(workers) + " cap=" + std::to_string(cap) + note,
             "ns_per_item", (double)d / umax(items, 1));
    });
}

// ---------------------------------------------------------------- main

struct Workload {
    const char *name;
    void (*fn)(const Params &);
    std::vector<std::string> keys;
};

static const std::vector<Workload> workloads = {
    {"work", w_work, {"work", "iters"}},
    {"spawn_join", w_spawn_join, {"n", "workers", "suspend"}},
    {"yield", w_yield, {"tasks", "workers", "iters", "suspend"}},
    {"sleep", w_sleep, {"n", "us"}},
    {"idle_rss", w_idle_rss, {"n", "workers", "suspend"}},
    {"tasks_contended", w_tasks_contended, {"tasks", "workers", "iters", "work", "suspend"}},
    {"async_uncontended", w_async_uncontended, {"iters"}},
    {"async_contended", w_async_contended, {"tasks", "workers", "iters", "work", "suspend"}},
    {"chan_pingpong", w_chan_pingpong, {"iters", "workers", "suspend"}},
    {"chan_mpmc", w_chan_mpmc, {"producers", "consumers", "workers", "cap", "items", "suspend"}},
};

// What `all` runs, one child process each: every workload once with defaults, the
// tasks_contended and async_contended rows tasks=2|64|1024 x work=0|100 (the same total
// of operations per row), chan_mpmc with consumers=1 (to match tokio's single receiver),
// and every multi-worker row again with suspend=0 (spinning idle workers).
static const std::vector<std::vector<std::string>> all_runs = {
    {"work"},
    {"spawn_join"},
    {"spawn_join", "suspend=0"},
    {"yield"},
    {"sleep"},
    {"idle_rss"},
    {"idle_rss", "suspend=0"},
    {"tasks_contended", "tasks=2", "work=0"},
    {"tasks_contended", "tasks=2", "work=0", "suspend=0"},
    {"tasks_contended", "tasks=2", "work=100"},
    {"tasks_contended", "tasks=2", "work=100", "suspend=0"},
    {"tasks_contended", "tasks=64", "work=0"},
    {"tasks_contended", "tasks=64", "work=0", "suspend=0"},
    {"tasks_contended", "tasks=64", "work=100"},
    {"tasks_contended", "tasks=64", "work=100", "suspend=0"},
    {"tasks_contended", "tasks=1024", "work=0"},
    {"tasks_contended", "tasks=1024", "work=0", "suspend=0"},
    {"tasks_contended", "tasks=1024", "work=100"},
    {"tasks_contended", "tasks=1024", "work=100", "suspend=0"},
    {"async_uncontended"},
    {"async_contended", "tasks=2", "work=0"},
    {"async_contended", "tasks=2", "work=0", "suspend=0"},
    {"async_contended", "tasks=2", "work=100"},
    {"async_contended", "tasks=2", "work=100", "suspend=0"},
    {"async_contended", "tasks=64", "work=0"},
    {"async_contended", "tasks=64", "work=0", "suspend=0"},
    {"async_contended", "tasks=64", "work=100"},
    {"async_contended", "tasks=64", "work=100", "suspend=0"},
    {"async_contended", "tasks=1024", "work=0"},
    {"async_contended", "tasks=1024", "work=0", "suspend=0"},
    {"async_contended", "tasks=1024", "work=100"},
    {"async_contended", "tasks=1024", "work=100", "suspend=0"},
    {"chan_pingpong"},
    {"chan_mpmc"},
    {"chan_mpmc", "suspend=0"},
    {"chan_mpmc", "consumers=1"},
    {"chan_mpmc", "consumers=1", "suspend=0"},
};

[[noreturn]] static void usage()
{
    std::fprintf(stderr, "usage: peer-boost-fiber <workload|all|list> [key=value ...]\nworkloads:\n");
    for (auto &w : workloads) {
        std::fprintf(stderr, "  %s", w.name);
        for (auto &k : w.keys)
            std::fprintf(stderr, " [%s=N]", k.c_str());
        std::fprintf(stderr, "\n");
    }
    std::exit(64);
}

static int run_one(int argc, char **argv)
{
    const Workload *w = nullptr;
    for (auto &x : workloads)
        if (std::strcmp(x.name, argv[0]) == 0)
            w = &x;
    if (!w) {
        std::fprintf(stderr, "peer-boost-fiber: unknown workload '%s'\n", argv[0]);
        usage();
    }
    Params p;
    for (int i = 1; i < argc; i++) {
        const char *eq = std::strchr(argv[i], '=');
        if (!eq) {
            std::fprintf(stderr, "peer-boost-fiber: argument '%s' is not key=value\n", argv[i]);
            return 64;
        }
        std::string k(argv[i], eq - argv[i]);
        if (std::find(w->keys.begin(), w->keys.end(), k) == w->keys.end()) {
            std::fprintf(stderr, "peer-boost-fiber: workload %s has no parameter '%s'\n", w->name, k.c_str());
            return 64;
        }
        p.kv[k] = eq + 1;
    }
    w->fn(p);
    std::fflush(stdout);
    // Skip static destructors: Boost.Fiber's per-thread schedulers are torn down with the
    // process.
    _exit(0);
}

// `all`: run each row in a child process, stdout/stderr shared; fail if any child fails.
static int run_all()
{
    int failed = 0;
    for (auto &r : all_runs) {
        std::vector<char *> args;
        std::string self = "peer-boost-fiber";
        args.push_back(const_cast<char *>(self.c_str()));
        std::string line;
        for (auto &a : r) {
            args.push_back(const_cast<char *>(a.c_str()));
            line += " " + a;
        }
        args.push_back(nullptr);
        std::fprintf(stderr, "peer-boost-fiber:%s\n", line.c_str());
        std::fflush(stdout);
        pid_t pid;
        if (posix_spawn(&pid, "/proc/self/exe", nullptr, nullptr, args.data(), environ) != 0) {
            std::perror("posix_spawn");
            return 1;
        }
        int st = 0;
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
            ;
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            std::fprintf(stderr, "peer-boost-fiber:%s FAILED (status %d)\n", line.c_str(), st);
            failed = 1;
        }
    }
    return failed ? 2 : 0;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        usage();
    if (std::strcmp(argv[1], "list") == 0) {
        for (auto &w : workloads)
            std::printf("%s\n", w.name);
        return 0;
    }
    if (std::strcmp(argv[1], "all") == 0) {
        if (argc > 2) {
            std::fprintf(stderr, "peer-boost-fiber: 'all' takes no parameters\n");
            return 64;
        }
        return run_all();
    }
    return run_one(argc - 1, argv + 1);
}
