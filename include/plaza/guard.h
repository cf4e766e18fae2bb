/*
 * plaza lock guards: a lock released when the variable holding it goes
 * out of scope (gcc and clang, __attribute__((cleanup))).
 *
 *     PZ_GUARD(pz_mutex, g, &m);               // pz_mutex_lock(&m)
 *     ... every return, break or fall-through unlocks ...
 *
 *     PZ_GUARD(pz_async_mutex, g, &am);        // may fail: check it
 *     if (g.err)
 *         return g.err;                        // -ECANCELED: not held, nothing to unlock
 *
 *     PZ_GUARD_UNTIL(pz_semaphore, g, deadline, &sem, 3);   // 3 permits
 *
 * Kinds: pz_mutex, pz_rwlock_read, pz_rwlock_write (thread-blocking; their
 * guards cannot fail without a deadline), pz_async_mutex,
 * pz_async_rwlock_read, pz_async_rwlock_write, pz_semaphore (takes a
 * permit count).  A guard's .err is 0 when it holds the lock, else the
 * lock call's error (-ECANCELED, -ETIMEDOUT, -EPIPE), and then the guard
 * holds nothing and releases nothing.  pz_guard_release(&g) releases
 * early (once; the scope's end then does nothing).
 *
 * Limits:
 * - The cleanup runs when the scope is left by return, break, continue,
 *   goto or falling off its end; not when it is left by longjmp (or a
 *   task that never resumes): never jump out of a guard's scope.
 * - An async guard must be checked (.err) before the section: under the
 *   cancellation rule (plaza/task.h) a cancelled task's lock returns
 *   -ECANCELED whenever it would wait.
 * - The rules of the lock itself still hold: a task must not suspend while
 *   a sync guard holds its lock, and an async lock's guard must end in the
 *   task that took it.
 * - The guard is the variable: do not copy it (the copy would release
 *   too).
 */
#ifndef PLAZA_GUARD_H
#define PLAZA_GUARD_H

#include <errno.h>
#include <stdint.h>

#include "async.h"
#include "runtime.h"
#include "sync.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct pz_guard {
    void *lock;    /* NULL once released, or if the lock was not taken */
    uint64_t n;    /* permits (semaphore) */
    int err;
    void (*drop)(struct pz_guard *g);
} pz_guard_t;

static inline void pz_guard_release(pz_guard_t *g)
{
    if (g->lock && g->err == 0)
        g->drop(g);
    g->lock = NULL;
}

#define PZ_GUARD(kind, name, ...) \
    __attribute__((cleanup(pz_guard_release), unused)) pz_guard_t name = pz__guard_##kind(PZ_FOREVER, __VA_ARGS__)
#define PZ_GUARD_UNTIL(kind, name, deadline, ...) \
    __attribute__((cleanup(pz_guard_release), unused)) pz_guard_t name = pz__guard_##kind((deadline), __VA_ARGS__)

static inline pz_guard_t pz__guard_made(void *lock, int err, uint64_t n, void (*drop)(pz_guard_t *))
{
    pz_guard_t g = {err == 0 ? lock : NULL, n, err, drop};
    return g;
}

static inline void pz__guard_drop_mutex(pz_guard_t *g)
{
    pz_mutex_unlock((pz_mutex_t *)g->lock);
}
static inline pz_guard_t pz__guard_pz_mutex(int64_t deadline, pz_mutex_t *m)
{
    return pz__guard_made(m, pz_mutex_lock_until(m, deadline), 0, pz__guard_drop_mutex);
}

static inline void pz__guard_drop_rwlock_read(pz_guard_t *g)
{
    pz_rwlock_read_unlock((pz_rwlock_t *)g->lock);
}
static inline pz_guard_t pz__guard_pz_rwlock_read(int64_t deadline, pz_rwlock_t *l)
{
    return pz__guard_made(l, pz_rwlock_read_until(l, deadline), 0, pz__guard_drop_rwlock_read);
}

static inline void pz__guard_drop_rwlock_write(pz_guard_t *g)
{
    pz_rwlock_write_unlock((pz_rwlock_t *)g->lock);
}
static inline pz_guard_t pz__guard_pz_rwlock_write(int64_t deadline, pz_rwlock_t *l)
{
    return pz__guard_made(l, pz_rwlock_write_until(l, deadline), 0, pz__guard_drop_rwlock_write);
}

static inline void pz__guard_drop_async_mutex(pz_guard_t *g)
{
    pz_async_mutex_unlock((pz_async_mutex_t *)g->lock);
}
static inline pz_guard_t pz__guard_pz_async_mutex(int64_t deadline, pz_async_mutex_t *m)
{
    return pz__guard_made(m, pz_async_mutex_lock_until(m, deadline), 0, pz__guard_drop_async_mutex);
}

static inline void pz__guard_drop_async_rwlock_read(pz_guard_t *g)
{
    pz_async_rwlock_read_unlock((pz_async_rwlock_t *)g->lock);
}
static inline pz_guard_t pz__guard_pz_async_rwlock_read(int64_t deadline, pz_async_rwlock_t *l)
{
    return pz__guard_made(l, pz_async_rwlock_read_until(l, deadline), 0, pz__guard_drop_async_rwlock_read);
}

static inline void pz__guard_drop_async_rwlock_write(pz_guard_t *g)
{
    pz_async_rwlock_write_unlock((pz_async_rwlock_t *)g->lock);
}
static inline pz_guard_t pz__guard_pz_async_rwlock_write(int64_t deadline, pz_async_rwlock_t *l)
{
    return pz__guard_made(l, pz_async_rwlock_write_until(l, deadline), 0, pz__guard_drop_async_rwlock_write);
}

static inline void pz__guard_drop_semaphore(pz_guard_t *g)
{
    pz_semaphore_release((pz_semaphore_t *)g->lock, g->n);
}
static inline pz_guard_t pz__guard_pz_semaphore(int64_t deadline, pz_semaphore_t *s, uint64_t permits)
{
    return pz__guard_made(s, pz_semaphore_acquire_until(s, permits, deadline), permits, pz__guard_drop_semaphore);
}

#ifdef __cplusplus
}
#endif
#endif
