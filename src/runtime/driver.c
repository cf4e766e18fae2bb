/*
 * The poller driver: one poller (epoll, edge-triggered) per runtime, driven
 * by the workers themselves, and the readiness waiters of every descriptor.
 * There is no I/O thread: a worker with nothing to run while tasks wait for
 * I/O waits in the poller instead of on its futex, with the nearest timer as
 * its deadline, and the scheduler wakes it through an eventfd the poller
 * watches.  Busy workers poll without waiting every PZ__MAINTENANCE_INTERVAL
 * scheduling decisions while anyone waits for I/O.  The socket calls on top
 * (src/io) only try system calls and wait here; the driver belongs to the
 * runtime because the scheduler drives it (as tokio's driver owns its
 * readiness waiters), and the runtime never calls up into a higher layer.
 *
 * A source (one per descriptor, found by descriptor number in a two-level
 * table whose chunks never move or go away while the runtime runs) keeps a
 * readiness word:
 *
 *   bit 0 READ, bit 1 WRITE: the poller said ready and no call has seen
 *         EAGAIN since;
 *   bit 2 CLOSED: pz_close ran; waiters return -EBADF;
 *   bit 3 ENDED: the poller reported the peer's end of stream, a hang-up
 *         or an error; never cleared (no edge follows an end, so a clear
 *         READ bit no longer means "nothing to read": src/io/io.c);
 *   bit 4 WATCH_WRITE: the poller registration asks for writability;
 *   bits 8-63: a tick, advanced by every event.
 *
 * A call snapshots the word, tries the system call, and on EAGAIN clears
 * its bit only if the tick is unchanged (CAS): an event between the call
 * and the clear is never lost, the call just tries again.
 *
 * Writability is watched only while a writer needs it.  A descriptor is
 * registered for reading alone (pz_connect's for writing too), so a
 * request/response connection, whose writes never fill the send buffer,
 * gets no writability edges: a local socket or a pipe makes one at each
 * read by the peer, and the edge of data a task has already read when the
 * poller reports it comes out as writability alone; each brought the
 * polling worker out of epoll for nothing.  A call that finds the
 * descriptor not writable while WATCH_WRITE is clear asks for writability
 * (pz__driver_watch_write: under the lock, the registration changes first
 * and the bit is set after) and tries its call again before it may clear
 * WRITE.  The rule that keeps every edge: WRITE is cleared only by a CAS
 * from a word with WATCH_WRITE set, and WATCH_WRITE only by a CAS from a
 * word with WRITE set; so while WRITE is clear (a writer may wait), the
 * registration asks for writability.  Writability that came before the
 * registration asked for it is seen by the call tried again (the CAS that
 * clears WRITE needs a snapshot with WATCH_WRITE, so one taken after the
 * change, and the call comes after the snapshot); writability that comes
 * later is an edge, which moves the tick (the CAS fails) or wakes the
 * waiter as below.  The poller stops asking when an event reports
 * writability while no waiter of writing is in the list (the writer is
 * done): WATCH_WRITE is cleared, then the registration goes back to
 * reading alone, both under the lock, so asking and stopping never
 * interleave.  A writer that blocks again asks again.  A connection thus
 * pays two registration changes per stretch of blocked writes (none while
 * a streaming writer keeps blocking), and none if it never blocks.
 *
 * Waiters: a task that waits links a node on its own stack into the
 * source's waiter list under the source's lock, after checking under that
 * lock that its bit is still clear, and lets go of the lock only once it is
 * off its stack (the park callback).  An event sets the bit first and then,
 * under the lock, unlinks every waiter of that direction and claims it.  So
 * a waiter either sees the bit under the lock or is in the list when the
 * event's walk takes the lock: no wake-up is lost.  A node in the list
 * belongs to a task that is PARKED (the lock is released by its callback,
 * after the park word says PARKED), so a won claim always readies it here.
 * A waiter that returns by timeout or cancel unlinks its own node under the
 * lock if an event has not already done so (node.linked says which).
 */
#define _GNU_SOURCE
#include "internal.h"

#include <stdlib.h>

#ifdef PZ_TSAN
#include <sanitizer/tsan_interface.h>
#endif

#define PZ__IO_CHUNK 1024
#define PZ__IO_CHUNKS 1024 /* descriptors below 2^20 */

int pz__driver_init(pz__runtime *rt)
{
    rt->poller = pz__poller_create();
    if (rt->poller < 0)
        return rt->poller;
    rt->waker = pz__waker_create();
    if (rt->waker < 0) {
        pz__close_fd(rt->poller);
        return rt->waker;
    }
    int r = pz__poller_add(rt->poller, rt->waker, &rt->waker, PZ__EV_READ);
    rt->io_chunks = calloc(PZ__IO_CHUNKS, sizeof(*rt->io_chunks));
    if (r < 0 || !rt->io_chunks) {
        pz__close_fd(rt->waker);
        pz__close_fd(rt->poller);
        free(rt->io_chunks);
        rt->io_chunks = NULL;
        return r < 0 ? r : -ENOMEM;
    }
    return 0;
}

void pz__driver_destroy(pz__runtime *rt)
{
    if (!rt->io_chunks)
        return;
    for (int i = 0; i < PZ__IO_CHUNKS; i++)
        free(atomic_load(&rt->io_chunks[i]));
    free(rt->io_chunks);
    rt->io_chunks = NULL;
    pz__close_fd(rt->waker);
    pz__close_fd(rt->poller);
}

pz__io_source *pz__io_source_of(pz__runtime *rt, int fd)
{
    if (fd < 0 || fd >= PZ__IO_CHUNK * PZ__IO_CHUNKS)
        return NULL;
    struct pz__io_source *_Atomic *slot = &rt->io_chunks[fd / PZ__IO_CHUNK];
    pz__io_source *chunk = atomic_load_explicit(slot, memory_order_acquire);
    if (!chunk) {
        pz__spin_lock(&rt->io_table_lock);
        chunk = atomic_load_explicit(slot, memory_order_relaxed);
        if (!chunk) {
            chunk = pz__calloc(PZ__IO_CHUNK, sizeof *chunk);
            if (chunk)
                atomic_store_explicit(slot, chunk, memory_order_release);
        }
        pz__spin_unlock(&rt->io_table_lock);
        if (!chunk)
            return NULL;
    }
    return &chunk[fd % PZ__IO_CHUNK];
}

/* pz__io_source_signal; returns whether a waiter of writing was in the
 * list. */
static bool signal_source(pz__io_source *src, unsigned events)
{
    uint64_t add = 0;
    if (events & PZ__EV_READ)
        add |= PZ__IO_READ;
    if (events & PZ__EV_WRITE)
        add |= PZ__IO_WRITE;
    if (events & (PZ__EV_HUP | PZ__EV_ERR | PZ__EV_RDHUP))
        add |= PZ__IO_ENDED;
    if (events & PZ__SIG_CLOSED)
        add |= PZ__IO_CLOSED | PZ__IO_READ | PZ__IO_WRITE;
    uint64_t s = atomic_load_explicit(&src->readiness, memory_order_relaxed);
    uint64_t next;
    do {
        next = (s + PZ__IO_TICK) | add;
    } while (!atomic_compare_exchange_weak_explicit(&src->readiness, &s, next, memory_order_acq_rel,
                                                    memory_order_relaxed));
    /* The bit is set before the lock is taken: a waiter that checks under
     * the lock after us sees it, one that checked before is in the list. */
    pz__spin_lock(&src->lock);
    bool writer = false;
    pz__io_waiter **pp = &src->waiters;
    while (*pp) {
        pz__io_waiter *wt = *pp;
        writer = writer || (wt->bit & PZ__IO_WRITE);
        if (!(wt->bit & add)) {
            pp = &wt->next;
            continue;
        }
        *pp = wt->next;
        wt->linked = false;
        pz_task_t *t = wt->task;
        /* A select's node: the select fires once, by whoever closes its
         * word first (src/io/select.c); a node whose select has already
         * fired is only unlinked. */
        int none = -1;
        if (wt->fired && !atomic_compare_exchange_strong_explicit(wt->fired, &none, wt->branch, memory_order_acq_rel,
                                                                  memory_order_acquire))
            continue;
        /* wt may be gone once t runs: nothing reads it after the claim. */
        if (pz__task_claim(t, wt->gen, PZ__WAKE_UNPARK) == PZ__CLAIM_WON_READY)
            pz__task_ready(t, false);
    }
    pz__spin_unlock(&src->lock);
    return writer;
}

void pz__io_source_signal(pz__io_source *src, unsigned events)
{
    (void)signal_source(src, events);
}

int pz__driver_watch_write(pz__runtime *rt, pz__io_source *src)
{
    int r = 0;
    pz__spin_lock(&src->lock);
    uint64_t s = atomic_load_explicit(&src->readiness, memory_order_acquire);
    if (s & PZ__IO_CLOSED || atomic_load_explicit(&src->kind, memory_order_relaxed) != PZ__SRC_POLLED) {
        r = -EBADF;
    } else if (!(s & PZ__IO_WATCH_WRITE)) {
        /* The registration first: once the bit is seen, edges come. */
        r = pz__poller_mod(rt->poller, src->fd, src, PZ__EV_READ | PZ__EV_WRITE);
        if (r == 0) {
            atomic_fetch_add_explicit(&src->interest_changes, 1, memory_order_relaxed);
            atomic_fetch_or_explicit(&src->readiness, PZ__IO_WATCH_WRITE, memory_order_acq_rel);
        }
    }
    pz__spin_unlock(&src->lock);
    return r;
}

/* An event reported src writable and nobody waited to write: stop asking
 * for writability (the protocol at the top says why no edge is lost).
 * Not after a hang-up or an error (the descriptor is on its way out, and
 * they are reported whatever is asked). */
static void unwatch_write(pz__runtime *rt, pz__io_source *src)
{
    if (!(atomic_load_explicit(&src->readiness, memory_order_relaxed) & PZ__IO_WATCH_WRITE))
        return;
    pz__spin_lock(&src->lock);
    uint64_t s = atomic_load_explicit(&src->readiness, memory_order_acquire);
    bool cleared = false;
    while (atomic_load_explicit(&src->kind, memory_order_relaxed) == PZ__SRC_POLLED &&
           (s & (PZ__IO_WATCH_WRITE | PZ__IO_WRITE | PZ__IO_CLOSED)) == (PZ__IO_WATCH_WRITE | PZ__IO_WRITE)) {
        if (atomic_compare_exchange_weak_explicit(&src->readiness, &s, s & ~(uint64_t)PZ__IO_WATCH_WRITE,
                                                  memory_order_acq_rel, memory_order_acquire)) {
            cleared = true;
            break;
        }
    }
    if (cleared) {
        /* A failure leaves writability asked for: more edges than needed,
         * never fewer. */
        if (pz__poller_mod(rt->poller, src->fd, src, PZ__EV_READ) == 0)
            atomic_fetch_add_explicit(&src->interest_changes, 1, memory_order_relaxed);
    }
    pz__spin_unlock(&src->lock);
}

static bool release_source(void *arg)
{
    pz__io_source *src = arg;
    pz__spin_unlock(&src->lock);
    return true;
}

int pz__driver_wait(pz__runtime *rt, pz__io_source *src, uint64_t bit, int64_t deadline)
{
    pz__io_waiter wt = {.task = pz__current_task(), .bit = bit};
    atomic_fetch_add_explicit(&rt->io_waiters, 1, memory_order_seq_cst);
    pz__spin_lock(&src->lock);
    int r = 0;
    if (!(atomic_load_explicit(&src->readiness, memory_order_acquire) & (bit | PZ__IO_CLOSED))) {
        pz__wait_note(bit == PZ__IO_WRITE ? PZ__WAIT_FD_WRITE : PZ__WAIT_FD_READ, (const void *)(intptr_t)src->fd);
        wt.gen = pz__park_prepare(false);
        wt.next = src->waiters;
        wt.linked = true;
        src->waiters = &wt;
        r = pz__park_commit(release_source, src, deadline);
        if (r != 0) {
            pz__spin_lock(&src->lock);
            if (wt.linked) {
                pz__io_waiter **pp = &src->waiters;
                while (*pp != &wt)
                    pp = &(*pp)->next;
                *pp = wt.next;
            }
            pz__spin_unlock(&src->lock);
        }
    } else {
        pz__spin_unlock(&src->lock);
    }
    atomic_fetch_sub_explicit(&rt->io_waiters, 1, memory_order_relaxed);
    if (r == 0 && (atomic_load_explicit(&src->readiness, memory_order_acquire) & PZ__IO_CLOSED))
        return -EBADF;
    return r;
}

bool pz__driver_enqueue(pz__io_source *src, pz__io_waiter *wt)
{
    pz__spin_lock(&src->lock);
    bool queued = !(atomic_load_explicit(&src->readiness, memory_order_acquire) & (wt->bit | PZ__IO_CLOSED));
    if (queued) {
        wt->next = src->waiters;
        wt->linked = true;
        src->waiters = wt;
    }
    pz__spin_unlock(&src->lock);
    return queued;
}

bool pz__driver_leave(pz__io_source *src, pz__io_waiter *wt)
{
    pz__spin_lock(&src->lock);
    bool was = wt->linked;
    if (was) {
        pz__io_waiter **pp = &src->waiters;
        while (*pp != wt)
            pp = &(*pp)->next;
        *pp = wt->next;
        wt->linked = false;
    }
    pz__spin_unlock(&src->lock);
    return was;
}

int pz__driver_poll(pz__runtime *rt, int64_t deadline, int max_events)
{
    pz__event events[64];
    int n = pz__poller_wait(rt->poller, events, max_events < 64 ? max_events : 64, deadline);
    if (n <= 0)
        return n;
    int handled = 0;
    for (int i = 0; i < n; i++) {
        if (events[i].data == &rt->waker)
            continue; /* an edge: nothing to read (pz__waker_signal) */
#ifdef PZ_TSAN
        /* The kernel orders registration before the event; tell TSan. */
        __tsan_acquire(events[i].data);
#endif
        unsigned ev = events[i].events;
        bool writer = signal_source(events[i].data, ev);
        if ((ev & PZ__EV_WRITE) && !(ev & (PZ__EV_HUP | PZ__EV_ERR)) && !writer)
            unwatch_write(rt, events[i].data);
        handled++;
    }
    return handled;
}
