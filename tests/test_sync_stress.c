/* The sync locks under load: mutual exclusion from threads and from tasks
 * on every worker, fairness under barging, rwlock exclusion (with random
 * read and write deadlines, tries and recursive reads) and upgrade
 * races, condvar hand-offs without lost wake-ups, notify_all with requeue,
 * and pz_once raced by threads and tasks. */
#include "helpers.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>


/* ---- pz_mutex: exclusion ---- */

struct excl {
    pz_mutex_t m;
    long counter; /* plain: only the holder touches it */
    _Atomic int inside;
    long iters;
};

static void excl_body(struct excl *e)
{
    for (long i = 0; i < e->iters; i++) {
        if (i % 7 == 0)
            CHECK_EQ(pz_mutex_lock_until(&e->m, PZ_FOREVER), 0);
        else if (i % 13 == 0) {
            while (!pz_mutex_trylock(&e->m))
                ;
        } else
            pz_mutex_lock(&e->m);
        CHECK_EQ(atomic_exchange_explicit(&e->inside, 1, memory_order_relaxed), 0);
        e->counter++;
        atomic_store_explicit(&e->inside, 0, memory_order_relaxed);
        if (i % 5 == 0)
            pz_mutex_unlock_fair(&e->m);
        else
            pz_mutex_unlock(&e->m);
    }
}

static void *excl_thread(void *arg)
{
    excl_body(arg);
    return NULL;
}

static void test_mutex_exclusion_threads(void **state)
{
    (void)state;
    enum { T = 8 };
    struct excl e = {PZ_MUTEX_INIT, 0, 0, SCALED(200000)};
    pthread_t t[T];
    for (int i = 0; i < T; i++)
        CHECK_EQ(pthread_create(&t[i], NULL, excl_thread, &e), 0);
    for (int i = 0; i < T; i++)
        pthread_join(t[i], NULL);
    CHECK_EQ(e.counter, (long)T * e.iters);
    CHECK_EQ(atomic_load(&e.m.state), 0);
}

static void *excl_task(void *arg)
{
    excl_body(arg);
    return NULL;
}

static void *excl_tasks_main(void *arg)
{
    enum { N = 64 };
    pz_task_t *t[N];
    for (int i = 0; i < N; i++)
        t[i] = pz_spawn(excl_task, arg);
    for (int i = 0; i < N; i++)
        CHECK_EQ(pz_join(t[i], NULL), 0);
    return NULL;
}

static void test_mutex_exclusion_tasks(void **state)
{
    (void)state;
    struct excl e = {PZ_MUTEX_INIT, 0, 0, SCALED(20000)};
    run_in_runtime(0, excl_tasks_main, &e); /* one worker per CPU */
    CHECK_EQ(e.counter, 64 * e.iters);
    CHECK_EQ(atomic_load(&e.m.state), 0);
}

/* ---- pz_mutex: fairness under maximal barging ---- */

struct fair {
    pz_mutex_t *m;
    _Atomic int *stop;
    long count;
    int64_t max_wait;
    long *shared;
};

static void *fair_thread(void *arg)
{
    struct fair *f = arg;
    while (!atomic_load_explicit(f->stop, memory_order_relaxed)) {
        int64_t t0 = pz_now();
        pz_mutex_lock(f->m);
        int64_t waited = pz_now() - t0;
        (*f->shared)++;
        pz_mutex_unlock(f->m);
        if (waited > f->max_wait)
            f->max_wait = waited;
        f->count++;
    }
    return NULL;
}

static void test_mutex_fairness(void **state)
{
    (void)state;
    enum { T = 6 };
    pz_mutex_t m = PZ_MUTEX_INIT;
    _Atomic int stop = 0;
    long shared = 0;
    struct fair f[T];
    pthread_t t[T];
    for (int i = 0; i < T; i++) {
        f[i] = (struct fair){&m, &stop, 0, 0, &shared};
        CHECK_EQ(pthread_create(&t[i], NULL, fair_thread, &f[i]), 0);
    }
    usleep(1500000);
    atomic_store(&stop, 1);
    long total = 0;
    int64_t worst = 0;
    for (int i = 0; i < T; i++) {
        pthread_join(t[i], NULL);
        CHECK(f[i].count > 0);
        total += f[i].count;
        if (f[i].max_wait > worst)
            worst = f[i].max_wait;
    }
    CHECK_EQ(shared, total);
    fprintf(stderr, "fairness: %ld acquisitions, longest wait %.2f ms\n", total, (double)worst / 1e6);
    /* The measured wait includes the time the waiting thread itself was
     * not scheduled: six threads share two cores, so the kernel alone can
     * keep one off a CPU for a few hundred ms.  Starvation would show as a
     * wait of about the whole run, or a thread with almost no share. */
    CHECK(worst < 750 * MS);
    for (int i = 0; i < T; i++)
        CHECK(f[i].count * 100 * T > total); /* each gets over 1% of a fair share */
}

/* ---- pz_rwlock ---- */

struct rwx {
    pz_rwlock_t rw;
    _Atomic int readers;
    _Atomic int writers;
    _Atomic int upgradables;
    long data[4];
    long writes_done; /* under the write lock */
    long iters;
    _Atomic long upgrades;
    _Atomic long timeouts; /* reads and writes given up at a random deadline */
    _Atomic long slot_reads; /* reads taken while the read slots were open */
    void *(*task_body)(void *); /* what rwx_tasks_main runs on each task */
};

static void check_read(struct rwx *x)
{
    CHECK_EQ(atomic_load_explicit(&x->writers, memory_order_relaxed), 0);
    long d0 = x->data[0];
    for (int k = 1; k < 4; k++)
        CHECK_EQ(x->data[k], d0);
}

static void do_write(struct rwx *x)
{
    CHECK_EQ(atomic_fetch_add_explicit(&x->writers, 1, memory_order_relaxed), 0);
    CHECK_EQ(atomic_load_explicit(&x->readers, memory_order_relaxed), 0);
    CHECK_EQ(atomic_load_explicit(&x->upgradables, memory_order_relaxed), 0);
    for (int k = 0; k < 4; k++)
        x->data[k]++;
    x->writes_done++;
    atomic_fetch_sub_explicit(&x->writers, 1, memory_order_relaxed);
}

static void *rwx_thread(void *arg)
{
    struct rwx *x = arg;
    uint64_t seed = (uint64_t)(uintptr_t)&seed | 1;
    for (long i = 0; i < x->iters; i++) {
        unsigned pick = (unsigned)(test_rand(&seed) % 100);
        /* A random deadline of 0 to 50 us for the timed calls below. */
        int64_t deadline = pz_now() + (int64_t)(test_rand(&seed) % (50 * US));
        if (pick < 70) {
            int r = 0;
            if (pick < 3)
                pz_rwlock_read_recursive(&x->rw);
            else if (pick < 5)
                r = pz_rwlock_read_recursive_until(&x->rw, deadline);
            else if (pick < 8)
                CHECK_EQ(pz_rwlock_read_until(&x->rw, PZ_FOREVER), 0);
            else if (pick < 14)
                r = pz_rwlock_read_until(&x->rw, deadline);
            else if (pick < 16)
                r = pz_rwlock_try_read(&x->rw) ? 0 : -ETIMEDOUT;
            else
                pz_rwlock_read(&x->rw);
            if (r != 0) {
                CHECK_EQ(r, -ETIMEDOUT);
                atomic_fetch_add_explicit(&x->timeouts, 1, memory_order_relaxed);
                continue;
            }
            atomic_fetch_add_explicit(&x->readers, 1, memory_order_relaxed);
            check_read(x);
            atomic_fetch_sub_explicit(&x->readers, 1, memory_order_relaxed);
            pz_rwlock_read_unlock(&x->rw);
        } else if (pick < 85) {
            if (pick >= 82) {
                int r = pick == 84 ? (pz_rwlock_try_write(&x->rw) ? 0 : -ETIMEDOUT)
                                   : pz_rwlock_write_until(&x->rw, deadline);
                if (r != 0) {
                    CHECK_EQ(r, -ETIMEDOUT);
                    atomic_fetch_add_explicit(&x->timeouts, 1, memory_order_relaxed);
                    continue;
                }
            } else {
                pz_rwlock_write(&x->rw);
            }
            do_write(x);
            if (pick < 75) {
                pz_rwlock_downgrade(&x->rw);
                atomic_fetch_add_explicit(&x->readers, 1, memory_order_relaxed);
                check_read(x);
                atomic_fetch_sub_explicit(&x->readers, 1, memory_order_relaxed);
                pz_rwlock_read_unlock(&x->rw);
            } else if (pick < 78) {
                pz_rwlock_write_unlock_fair(&x->rw);
            } else {
                pz_rwlock_write_unlock(&x->rw);
            }
        } else {
            /* Upgradable: never two at once, never beside a writer. */
            pz_rwlock_upgradable(&x->rw);
            CHECK_EQ(atomic_fetch_add_explicit(&x->upgradables, 1, memory_order_relaxed), 0);
            check_read(x);
            if (pick < 95) {
                int r = pick < 88 ? pz_rwlock_upgrade_until(&x->rw, pz_now() + 1 * MS) : 0;
                if (pick >= 88)
                    pz_rwlock_upgrade(&x->rw);
                if (r == 0) {
                    atomic_fetch_sub_explicit(&x->upgradables, 1, memory_order_relaxed);
                    do_write(x);
                    atomic_fetch_add_explicit(&x->upgrades, 1, memory_order_relaxed);
                    if (pick < 91) {
                        pz_rwlock_downgrade_to_upgradable(&x->rw);
                        CHECK_EQ(atomic_fetch_add_explicit(&x->upgradables, 1, memory_order_relaxed), 0);
                        atomic_fetch_sub_explicit(&x->upgradables, 1, memory_order_relaxed);
                        pz_rwlock_upgradable_unlock(&x->rw);
                    } else {
                        pz_rwlock_write_unlock(&x->rw);
                    }
                } else {
                    CHECK_EQ(r, -ETIMEDOUT);
                    atomic_fetch_sub_explicit(&x->upgradables, 1, memory_order_relaxed);
                    pz_rwlock_upgradable_unlock(&x->rw);
                }
            } else {
                atomic_fetch_sub_explicit(&x->upgradables, 1, memory_order_relaxed);
                pz_rwlock_upgradable_downgrade(&x->rw);
                check_read(x);
                pz_rwlock_read_unlock(&x->rw);
            }
        }
    }
    return NULL;
}

/* Runs body on 8 plain threads sharing x. */
static void rwx_on_threads(struct rwx *x, void *(*body)(void *))
{
    enum { T = 8 };
    pthread_t t[T];
    for (int i = 0; i < T; i++)
        CHECK_EQ(pthread_create(&t[i], NULL, body, x), 0);
    for (int i = 0; i < T; i++)
        pthread_join(t[i], NULL);
}

/* Runs x->task_body on 16 tasks on every worker. */
static void *rwx_tasks_main(void *arg)
{
    enum { N = 16 };
    struct rwx *x = arg;
    pz_task_t *t[N];
    for (int i = 0; i < N; i++)
        t[i] = pz_spawn(x->task_body, x);
    for (int i = 0; i < N; i++)
        CHECK_EQ(pz_join(t[i], NULL), 0);
    return NULL;
}

/* What every rwlock stress checks at its end: each write reached all four
 * words, and the lock is free (SLOTS may stay set: readers shared it). */
static void rwx_check(struct rwx *x)
{
    for (int k = 0; k < 4; k++)
        CHECK_EQ(x->data[k], x->writes_done);
    CHECK_EQ(atomic_load(&x->rw.state) & ~PZ__RW_HINTS, 0);
}

static void test_rwlock_exclusion(void **state)
{
    (void)state;
    static struct rwx x;
    memset(&x, 0, sizeof x);
    x.iters = SCALED(100000);
    rwx_on_threads(&x, rwx_thread);
    rwx_check(&x);
    CHECK(atomic_load(&x.upgrades) > 0);
}

static void test_rwlock_exclusion_tasks(void **state)
{
    (void)state;
    static struct rwx x;
    memset(&x, 0, sizeof x);
    x.iters = SCALED(20000);
    x.task_body = rwx_thread;
    run_in_runtime(0, rwx_tasks_main, &x);
    rwx_check(&x);
}

/* Read-mostly, the shape the read slots are for: every thread nests a
 * second read lock (plain or recursive) in a third of its reads, so a
 * reader finds another counted and the slots open for certain, again
 * after every write closes them; writers, timed writers, try-writers,
 * upgraders and try-upgraders revoke the slots while readers enter, leave
 * and give up at random deadlines.  Checked: no writer beside a reader or
 * an upgradable reader, every write counted, the word back to no holder,
 * and reads were taken while the slots were open. */
static void *rw_slots_thread(void *arg)
{
    struct rwx *x = arg;
    uint64_t seed = (uint64_t)(uintptr_t)&seed | 1;
    for (long i = 0; i < x->iters; i++) {
        unsigned pick = (unsigned)(test_rand(&seed) % 100);
        int64_t deadline = pz_now() + (int64_t)(test_rand(&seed) % (50 * US));
        if (pick < 94) {
            int r = 0;
            if (pick < 4)
                r = pz_rwlock_read_until(&x->rw, deadline);
            else if (pick < 6)
                r = pz_rwlock_try_read(&x->rw) ? 0 : -ETIMEDOUT;
            else
                pz_rwlock_read(&x->rw);
            if (r != 0) {
                CHECK_EQ(r, -ETIMEDOUT);
                atomic_fetch_add_explicit(&x->timeouts, 1, memory_order_relaxed);
                continue;
            }
            if (atomic_load_explicit(&x->rw.state, memory_order_relaxed) & PZ__RW_SLOTS)
                atomic_fetch_add_explicit(&x->slot_reads, 1, memory_order_relaxed);
            atomic_fetch_add_explicit(&x->readers, 1, memory_order_relaxed);
            check_read(x);
            if (pick % 3 == 0) {
                /* Nested: a recursive read passes a waiting writer. */
                pz_rwlock_read_recursive(&x->rw);
                check_read(x);
                pz_rwlock_read_unlock(&x->rw);
            }
            atomic_fetch_sub_explicit(&x->readers, 1, memory_order_relaxed);
            pz_rwlock_read_unlock(&x->rw);
        } else if (pick < 97) {
            int r = 0;
            if (pick == 94)
                r = pz_rwlock_write_until(&x->rw, deadline);
            else if (pick == 95)
                r = pz_rwlock_try_write(&x->rw) ? 0 : -ETIMEDOUT;
            else
                pz_rwlock_write(&x->rw);
            if (r != 0) {
                CHECK_EQ(r, -ETIMEDOUT);
                atomic_fetch_add_explicit(&x->timeouts, 1, memory_order_relaxed);
                continue;
            }
            do_write(x);
            pz_rwlock_write_unlock(&x->rw);
        } else {
            pz_rwlock_upgradable(&x->rw);
            CHECK_EQ(atomic_fetch_add_explicit(&x->upgradables, 1, memory_order_relaxed), 0);
            check_read(x);
            int r;
            if (pick == 97)
                r = pz_rwlock_try_upgrade(&x->rw) ? 0 : -ETIMEDOUT;
            else if (pick == 98)
                r = pz_rwlock_upgrade_until(&x->rw, deadline);
            else
                r = (pz_rwlock_upgrade(&x->rw), 0);
            atomic_fetch_sub_explicit(&x->upgradables, 1, memory_order_relaxed);
            if (r == 0) {
                do_write(x);
                atomic_fetch_add_explicit(&x->upgrades, 1, memory_order_relaxed);
                pz_rwlock_write_unlock(&x->rw);
            } else {
                CHECK_EQ(r, -ETIMEDOUT);
                pz_rwlock_upgradable_unlock(&x->rw);
            }
        }
    }
    return NULL;
}

static void test_rwlock_read_slots_stress(void **state)
{
    (void)state;
    static struct rwx x;
    memset(&x, 0, sizeof x);
    x.iters = SCALED(200000);
    rwx_on_threads(&x, rw_slots_thread);
    rwx_check(&x);
    CHECK(atomic_load(&x.upgrades) > 0);
    CHECK(atomic_load(&x.slot_reads) > 0);
}

/* The same from tasks on every worker (each worker thread has its line). */
static void test_rwlock_read_slots_tasks(void **state)
{
    (void)state;
    static struct rwx x;
    memset(&x, 0, sizeof x);
    x.iters = SCALED(40000);
    x.task_body = rw_slots_thread;
    run_in_runtime(0, rwx_tasks_main, &x);
    rwx_check(&x);
    CHECK(atomic_load(&x.slot_reads) > 0);
}

/* ---- pz_condvar ---- */

#define QCAP 8
struct queue {
    pz_mutex_t m;
    pz_condvar_t not_empty, not_full;
    long items[QCAP];
    int head, len;
    bool closed;
};

struct producer {
    struct queue *q;
    long from, count;
};

static void *produce(void *arg)
{
    struct producer *p = arg;
    struct queue *q = p->q;
    for (long i = 0; i < p->count; i++) {
        pz_mutex_lock(&q->m);
        while (q->len == QCAP)
            CHECK_EQ(pz_condvar_wait(&q->not_full, &q->m), 0);
        q->items[(q->head + q->len) % QCAP] = p->from + i;
        q->len++;
        pz_mutex_unlock(&q->m);
        pz_condvar_notify_one(&q->not_empty);
    }
    return NULL;
}

struct consumer {
    struct queue *q;
    long got, sum;
};

static void *consume(void *arg)
{
    struct consumer *c = arg;
    struct queue *q = c->q;
    for (;;) {
        pz_mutex_lock(&q->m);
        while (q->len == 0 && !q->closed)
            CHECK_EQ(pz_condvar_wait_until(&q->not_empty, &q->m, PZ_FOREVER), 0);
        if (q->len == 0) {
            pz_mutex_unlock(&q->m);
            return NULL;
        }
        long v = q->items[q->head];
        q->head = (q->head + 1) % QCAP;
        q->len--;
        pz_mutex_unlock(&q->m);
        pz_condvar_notify_one(&q->not_full);
        c->got++;
        c->sum += v;
    }
}

/* 10^6 items through a queue of 8, each push and pop notifying: a lost
 * wake-up would hang it (the ctest timeout catches that). */
static void test_condvar_no_lost_wakeup(void **state)
{
    (void)state;
    enum { P = 2, C = 2 };
    static struct queue q;
    memset(&q, 0, sizeof q);
    long per = SCALED(1000000) / P;
    struct producer p[P];
    struct consumer c[C];
    pthread_t tp[P], tc[C];
    for (int i = 0; i < C; i++) {
        c[i] = (struct consumer){&q, 0, 0};
        CHECK_EQ(pthread_create(&tc[i], NULL, consume, &c[i]), 0);
    }
    for (int i = 0; i < P; i++) {
        p[i] = (struct producer){&q, 1 + i * per, per};
        CHECK_EQ(pthread_create(&tp[i], NULL, produce, &p[i]), 0);
    }
    for (int i = 0; i < P; i++)
        pthread_join(tp[i], NULL);
    pz_mutex_lock(&q.m);
    q.closed = true;
    pz_mutex_unlock(&q.m);
    pz_condvar_notify_all(&q.not_empty);
    long got = 0, sum = 0;
    for (int i = 0; i < C; i++) {
        pthread_join(tc[i], NULL);
        got += c[i].got;
        sum += c[i].sum;
    }
    long n = per * P;
    CHECK_EQ(got, n);
    CHECK_EQ(sum, n * (n + 1) / 2);
}

struct bcast {
    pz_mutex_t m;
    pz_condvar_t cv;
    long gen;     /* under m */
    int waiting;  /* under m: waiters of the current generation */
    long woken[32];
};

struct bcast_arg {
    struct bcast *b;
    int id;
    long rounds;
};

static void *bcast_waiter(void *arg)
{
    struct bcast_arg *a = arg;
    struct bcast *b = a->b;
    for (long r = 0; r < a->rounds; r++) {
        pz_mutex_lock(&b->m);
        long g = b->gen;
        b->waiting++;
        /* Each wait returns only after a notify (no spurious wake-ups), and
         * only notify_all is ever called here, once per generation. */
        CHECK_EQ(pz_condvar_wait(&b->cv, &b->m), 0);
        CHECK_EQ(b->gen, g + 1);
        b->woken[a->id]++;
        pz_mutex_unlock(&b->m);
    }
    return NULL;
}

static void test_condvar_notify_all_requeue(void **state)
{
    (void)state;
    enum { W = 16 };
    static struct bcast b;
    memset(&b, 0, sizeof b);
    long rounds = SCALED(300);
    struct bcast_arg a[W];
    pthread_t t[W];
    for (int i = 0; i < W; i++) {
        a[i] = (struct bcast_arg){&b, i, rounds};
        CHECK_EQ(pthread_create(&t[i], NULL, bcast_waiter, &a[i]), 0);
    }
    for (long r = 0; r < rounds; r++) {
        for (;;) {
            pz_mutex_lock(&b.m);
            if (b.waiting == W)
                break;
            pz_mutex_unlock(&b.m);
            sched_yield();
        }
        b.waiting = 0;
        b.gen++;
        /* Notify while holding the mutex: every waiter is moved onto it. */
        if (r % 2 == 0)
            CHECK(pz_condvar_notify_all(&b.cv));
        pz_mutex_unlock(&b.m);
        if (r % 2 == 1)
            CHECK(pz_condvar_notify_all(&b.cv));
    }
    for (int i = 0; i < W; i++) {
        pthread_join(t[i], NULL);
        CHECK_EQ(b.woken[i], rounds);
    }
    CHECK(atomic_load(&b.cv.mutex) == NULL);
    CHECK_EQ(atomic_load(&b.m.state), 0);
}

/* Waiters with short deadlines beside notifications: each wait returns 0
 * or -ETIMEDOUT, always with the mutex held, and the condvar and mutex
 * words end clean. */
struct cv_timeouts {
    pz_mutex_t m;
    pz_condvar_t cv;
    long notified;
    long iters;
    _Atomic int running;
};

static void *cv_timeout_waiter(void *arg)
{
    struct cv_timeouts *c = arg;
    for (long i = 0; i < c->iters; i++) {
        pz_mutex_lock(&c->m);
        int r = pz_condvar_wait_until(&c->cv, &c->m, pz_now() + (i % 3) * 100000);
        CHECK(r == 0 || r == -ETIMEDOUT);
        CHECK(pz_mutex_is_locked(&c->m));
        pz_mutex_unlock(&c->m);
    }
    atomic_fetch_sub(&c->running, 1);
    return NULL;
}

static void test_condvar_timeouts_with_notifies(void **state)
{
    (void)state;
    enum { W = 6 };
    static struct cv_timeouts c;
    memset(&c, 0, sizeof c);
    c.iters = SCALED(5000);
    c.running = W;
    pthread_t t[W];
    for (int i = 0; i < W; i++)
        CHECK_EQ(pthread_create(&t[i], NULL, cv_timeout_waiter, &c), 0);
    long n = 0;
    while (atomic_load(&c.running)) {
        if (n % 3 == 0) {
            pz_mutex_lock(&c.m);
            pz_condvar_notify_all(&c.cv);
            pz_mutex_unlock(&c.m);
        } else if (n % 3 == 1) {
            pz_condvar_notify_all(&c.cv);
        } else {
            pz_condvar_notify_one(&c.cv);
        }
        n++;
    }
    for (int i = 0; i < W; i++)
        pthread_join(t[i], NULL);
    CHECK(atomic_load(&c.cv.mutex) == NULL);
    CHECK_EQ(atomic_load(&c.m.state), 0);
}

/* ---- pz_once ---- */

static pz_once_t race_once = PZ_ONCE_INIT;
static _Atomic int once_runs;
static long once_value; /* written by fn only, plain */

static void once_fn(void *arg)
{
    (void)arg;
    atomic_fetch_add(&once_runs, 1);
    usleep(20000); /* let the others pile up behind it */
    once_value = 4242;
}

static _Atomic int once_go;

static void *once_caller(void *arg)
{
    (void)arg;
    while (!atomic_load(&once_go))
        ;
    pz_once(&race_once, once_fn, NULL);
    CHECK_EQ(once_value, 4242);
    return NULL;
}

static void *once_tasks_main(void *arg)
{
    (void)arg;
    enum { N = 64 };
    pz_task_t *t[N];
    for (int i = 0; i < N; i++)
        t[i] = pz_spawn(once_caller, NULL);
    for (int i = 0; i < N; i++)
        CHECK_EQ(pz_join(t[i], NULL), 0);
    return NULL;
}

static void *run_once_runtime(void *arg)
{
    (void)arg;
    run_in_runtime(2, once_tasks_main, NULL);
    return NULL;
}

static void test_once_race(void **state)
{
    (void)state;
    enum { T = 64 };
    pthread_t t[T], rt;
    for (int i = 0; i < T; i++)
        CHECK_EQ(pthread_create(&t[i], NULL, once_caller, NULL), 0);
    CHECK_EQ(pthread_create(&rt, NULL, run_once_runtime, NULL), 0);
    usleep(10000);
    atomic_store(&once_go, 1);
    for (int i = 0; i < T; i++)
        pthread_join(t[i], NULL);
    pthread_join(rt, NULL);
    CHECK_EQ(atomic_load(&once_runs), 1);
    CHECK_EQ(atomic_load(&race_once.state), PZ__ONCE_DONE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mutex_exclusion_threads),
        cmocka_unit_test(test_mutex_exclusion_tasks),
        cmocka_unit_test(test_mutex_fairness),
        cmocka_unit_test(test_rwlock_exclusion),
        cmocka_unit_test(test_rwlock_exclusion_tasks),
        cmocka_unit_test(test_rwlock_read_slots_stress),
        cmocka_unit_test(test_rwlock_read_slots_tasks),
        cmocka_unit_test(test_condvar_no_lost_wakeup),
        cmocka_unit_test(test_condvar_notify_all_requeue),
        cmocka_unit_test(test_condvar_timeouts_with_notifies),
        cmocka_unit_test(test_once_race),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
