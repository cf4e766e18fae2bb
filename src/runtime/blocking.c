/*
 * The blocking pool: threads that run blocking calls for tasks, so that a
 * read of a regular file or a DNS lookup never holds a worker.
 *
 * Elastic: a job that finds no idle pool thread starts a new one, up to the
 * configured cap (then it queues); a thread idle for PZ__POOL_KEEPALIVE
 * exits.  The pool is process-wide and outlives runtimes; each job records
 * the runtime epoch it was submitted in, so a job that finishes after its
 * runtime stopped wakes nobody.
 *
 * A finished job's task is made runnable from the pool thread, which is not
 * a worker, so it goes to the runtime's wake list and runs within a few
 * scheduling decisions (the policy is in sched.c).
 *
 * Jobs live on the waiting task's stack.  The pool touches a job only under
 * the pool lock, and a task leaves pz_blocking only after it has seen, under
 * the same lock, that the job is either unstarted (and removed) or done.
 */
#define _GNU_SOURCE
#include "internal.h"
#include "../arch/arch_signal.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PZ__POOL_KEEPALIVE_S 10
#define PZ__POOL_DEFAULT_MAX 512

enum { JOB_QUEUED, JOB_RUNNING, JOB_DONE };

typedef struct pz__job {
    pz_fn fn;
    void *arg;
    void *result;
    pz_task_t *task;
    uint64_t gen;   /* the park generation to claim when done */
    uint64_t epoch;
    int state;
    struct pz__job *next;
} pz__job;

static struct {
    pthread_mutex_t lock;
    pthread_cond_t work;    /* a job was queued, or shutdown */
    pthread_cond_t exited;  /* a pool thread exited */
    pz__job *head, *tail;
    int threads, idle, max;
    int queued;             /* jobs in the queue: more than idle starts a thread */
    uint64_t epoch;
    bool draining;
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, NULL, 0, 0,
          PZ__POOL_DEFAULT_MAX, 0, 1, false};

void pz__blocking_configure(int max_threads)
{
    pthread_mutex_lock(&pool.lock);
    pool.max = max_threads > 0 ? max_threads : PZ__POOL_DEFAULT_MAX;
    pool.draining = false;
    pthread_mutex_unlock(&pool.lock);
}

static void *pool_thread(void *unused)
{
    (void)unused;
    pz__thread_set_name("plaza-blocking");
    /* Started by a worker, it inherits a mask with every asynchronous
     * signal blocked; blocked here too, whoever starts it
     * (src/runtime/sigmask.c). */
    pz__sig_block_async(NULL);
    pthread_mutex_lock(&pool.lock);
    for (;;) {
        /* More threads than the cap: a thread that was still running a
         * job when the previous runtime drained the pool, and found the
         * next runtime's (smaller) cap when it came back.  It leaves, so
         * that the cap holds. */
        if (pool.threads > pool.max)
            goto out;
        while (!pool.head && !pool.draining) {
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_sec += PZ__POOL_KEEPALIVE_S;
            pool.idle++;
            int r = pthread_cond_timedwait(&pool.work, &pool.lock, &until);
            pool.idle--;
            if (r == ETIMEDOUT && !pool.head)
                goto out;
        }
        if (!pool.head)
            break; /* draining and nothing queued */
        pz__job *job = pool.head;
        pool.queued--;
        pool.head = job->next;
        if (!pool.head)
            pool.tail = NULL;
        job->state = JOB_RUNNING;
        pthread_mutex_unlock(&pool.lock);

        void *result = job->fn(job->arg);

        pthread_mutex_lock(&pool.lock);
        job->result = result;
        job->state = JOB_DONE;
        int claim = PZ__CLAIM_LOST;
        pz_task_t *task = job->task;
        if (job->epoch == pool.epoch)
            claim = pz__task_claim(task, job->gen, PZ__WAKE_UNPARK);
        /* Ready the task under the pool lock: the runtime cannot be torn
         * down meanwhile, since pz__blocking_shutdown takes this lock. */
        if (claim == PZ__CLAIM_WON_READY)
            pz__task_ready(task, false);
    }
out:
    pool.threads--;
    pthread_cond_broadcast(&pool.exited);
    pthread_mutex_unlock(&pool.lock);
    return NULL;
}

/* Called with the pool lock held. */
static void unqueue(pz__job *job)
{
    pz__job **p = &pool.head, *prev = NULL;
    while (*p && *p != job) {
        prev = *p;
        p = &(*p)->next;
    }
    if (*p) {
        pool.queued--;
        *p = job->next;
        if (pool.tail == job)
            pool.tail = prev;
    }
}

/* Called with the pool lock held.  A job it refuses (no pool thread, and
 * none could be started) leaves the queue before the lock is let go: a
 * thread another call starts in between would otherwise take it, and run
 * it on the stack of a call that has returned.  *signal says that an idle
 * thread is to be signalled, which the caller does once it has let go of
 * the lock: signalled under it, the thread wakes only to block on the
 * lock, and the unlock must wake it a second time (two more futex calls
 * and a thread switch per job on a busy core).  Signalling after the
 * unlock loses nothing: an idle thread re-checks the queue under the lock
 * before it waits, and the condition variable lives as long as the
 * process. */
static int submit(pz__job *job, bool *signal)
{
    job->next = NULL;
    if (pool.tail)
        pool.tail->next = job;
    else
        pool.head = job;
    pool.tail = job;
    pool.queued++;
    /* An idle thread counts only once: every queued job beyond the idle
     * threads (which a signal may already have claimed but that have not
     * woken yet) needs a thread of its own, or a burst arriving while one
     * thread is idle would queue behind it. */
    if (pool.queued > pool.idle && pool.threads < pool.max) {
        pthread_t th;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int e = pz__thread_create(&th, &attr, pool_thread, NULL);
        pthread_attr_destroy(&attr);
        if (e == 0) {
            pool.threads++;
        } else if (pool.threads == 0) {
            unqueue(job); /* nobody would ever run it */
            return e;
        }
    } else {
        *signal = true;
    }
    return 0;
}

int pz_blocking(pz_fn fn, void *arg, void **result)
{
    if (!fn) {
        pz__report("pz_blocking: fn is NULL");
        return -EINVAL;
    }
    pz_task_t *self = pz__current_task();
    if (!self) {
        void *r = fn(arg);
        if (result)
            *result = r;
        return 0;
    }
    pz__job job = {.fn = fn, .arg = arg, .task = self, .state = JOB_QUEUED};
    pthread_mutex_lock(&pool.lock);
    job.epoch = pool.epoch;
    pz__wait_note(PZ__WAIT_BLOCKING, (const void *)fn);
    job.gen = pz__park_prepare(false);
    bool signal = false;
    int e = submit(&job, &signal);
    pthread_mutex_unlock(&pool.lock);
    if (signal)
        pthread_cond_signal(&pool.work);
    if (e) {
        pz__report("pz_blocking: cannot start a pool thread: %s", strerror(-e));
        /* The park prepared above never happens: the task is RUNNING again
         * (a cancel that claimed it meanwhile readied nothing, since it was
         * not PARKED), and its announced wait is dropped. */
        pz__wait_note(PZ__WAIT_NONE, NULL);
        atomic_store_explicit(&self->park_state, PZ__PS_MAKE(job.gen, 0, 0, PZ__PS_RUNNING), memory_order_relaxed);
        return e;
    }
    for (;;) {
        int r = pz__park_commit(NULL, NULL, PZ_FOREVER);
        /* Unparked (not cancelled): only the pool thread's claim does
         * that, made under the lock after it stored the result and DONE,
         * and after the claim it no longer touches the job (it readies
         * the task, not the job).  The claim's acquire, read when the task
         * resumes, makes both visible here, so the job is read without
         * the lock: taken here, the lock that the pool thread still holds
         * while it readies this task would block the worker at once, and
         * its release would have to wake it again. */
        if (r == 0) {
            PZ__ASSERT(job.state == JOB_DONE);
            goto done;
        }
        pthread_mutex_lock(&pool.lock);
        if (job.state == JOB_DONE)
            break;
        if (r == -ECANCELED && job.state == JOB_QUEUED) {
            unqueue(&job);
            pthread_mutex_unlock(&pool.lock);
            return -ECANCELED;
        }
        /* Cancelled while fn runs: wait for it, deaf to cancels now. */
        pz__wait_note(PZ__WAIT_BLOCKING, (const void *)fn);
        job.gen = pz__park_prepare(true);
        pthread_mutex_unlock(&pool.lock);
    }
    pthread_mutex_unlock(&pool.lock);
done:
    if (result)
        *result = job.result;
    return 0;
}

void pz__blocking_shutdown(void)
{
    pthread_mutex_lock(&pool.lock);
    /* Jobs of this runtime that finish later must wake nobody. */
    pool.epoch++;
    pool.head = pool.tail = NULL;
    pool.queued = 0;
    /* Idle threads exit now rather than after their keep-alive. */
    pool.draining = true;
    pthread_cond_broadcast(&pool.work);
    while (pool.idle > 0)
        pthread_cond_wait(&pool.exited, &pool.lock);
    pthread_mutex_unlock(&pool.lock);
}

void pz__blocking_after_fork(void)
{
    /* The child has only the forking thread: the pool's threads, their
     * jobs and any lock one of them held stayed in the parent. */
    pthread_mutex_init(&pool.lock, NULL);
    pthread_cond_init(&pool.work, NULL);
    pthread_cond_init(&pool.exited, NULL);
    pool.head = pool.tail = NULL;
    pool.threads = pool.idle = pool.queued = 0;
    pool.epoch++;
    pool.draining = false;
}
