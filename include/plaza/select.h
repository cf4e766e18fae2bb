/*
 * pz_select: wait for the first of several waits, like Go's select.
 *
 *     int item;
 *     pz_sel_t cases[] = {
 *         PZ_SEL_RECV(jobs, &item),                              // 0
 *         PZ_SEL_NOTIFY(pz_shutdown_notify(), stop_epoch),       // 1
 *         PZ_SEL_FD(fd, PZ_READABLE),                            // 2
 *         PZ_SEL_DEADLINE(pz_now() + 1000000000),                // 3
 *     };
 *     int k = pz_select(cases, 4, PZ_FOREVER);
 *     if (k == 0 && cases[0].result == 0) ... item received ...
 *
 * Returns the index of the case that fired, with its outcome in
 * cases[k].result, or -ETIMEDOUT at the deadline, -ECANCELED (the
 * cancellation rule, plaza/task.h: only if it would suspend), -EINVAL,
 * -EPERM outside a task.
 *
 * Exactly one case fires, and only it takes anything: a receive that
 * fired holds its item in *dst, a send that fired has put its item in the
 * channel (or handed it to a receiver), a notify that fired consumed the
 * notification; every other case took nothing, even when its event came
 * at the same instant (it stays for the next wait).  The cases are tried
 * in turn first, from a rotating start (so none starves); only if none is
 * ready does the task queue one waiter in every case's queue, all sharing
 * one "fired" word that the first waker wins before it moves anything.
 *
 * Cases and their result:
 *   PZ_SEL_RECV(ch, dst)    0 with the item in dst; -EPIPE: closed and empty.
 *   PZ_SEL_SEND(ch, src)    0: sent; -EPIPE: closed.
 *   PZ_SEL_FD(fd, events)   the ready PZ_READABLE/PZ_WRITABLE events
 *                           (as pz_wait_fd), or a negative error.
 *   PZ_SEL_NOTIFY(n, epoch) 0: a notify_all since epoch (pz_notify_epoch),
 *                           or a stored notify_one permit (consumed).
 *   PZ_SEL_JOIN(t, &res)    0: t ended; it is joined (its handle freed)
 *                           and its result stored in *res (if not NULL).
 *   PZ_SEL_DEADLINE(dl)     0: the deadline passed.
 *   PZ_SEL_ACQUIRE(s, n)    0 with n permits of semaphore s taken; -EPIPE:
 *                           closed.  (Served in the semaphore's queue order;
 *                           permits granted to the select as another case
 *                           fires are given back at once.)
 * At most PZ_SELECT_MAX cases; a channel may appear on one side only.
 * The async mutex and rwlock are not select cases (take them after the
 * select; an async mutex can be a semaphore of 1 permit where it must be
 * raced against other events).
 */
#ifndef PLAZA_SELECT_H
#define PLAZA_SELECT_H

#include <stdint.h>

#include "async.h"
#include "runtime.h"

#ifdef __cplusplus
extern "C" {
#endif

#define PZ_SELECT_MAX 16

enum {
    PZ__SEL_RECV = 1,
    PZ__SEL_SEND,
    PZ__SEL_FD,
    PZ__SEL_NOTIFY,
    PZ__SEL_JOIN,
    PZ__SEL_DEADLINE,
    PZ__SEL_ACQUIRE,
};

typedef struct pz_sel {
    int kind;
    void *obj;        /* the channel, notify or task */
    void *item;       /* RECV: destination; SEND: source; JOIN: void ** */
    int fd, events;
    uint64_t epoch;   /* NOTIFY */
    uint64_t n;       /* ACQUIRE: permits */
    int64_t deadline;
    int result;       /* out: the fired case's outcome */
} pz_sel_t;

#define PZ_SEL_RECV(ch, dst) ((pz_sel_t){.kind = PZ__SEL_RECV, .obj = (ch), .item = (dst)})
#define PZ_SEL_SEND(ch, src) ((pz_sel_t){.kind = PZ__SEL_SEND, .obj = (ch), .item = (void *)(src)})
#define PZ_SEL_FD(f, ev) ((pz_sel_t){.kind = PZ__SEL_FD, .fd = (f), .events = (ev)})
#define PZ_SEL_NOTIFY(n, e) ((pz_sel_t){.kind = PZ__SEL_NOTIFY, .obj = (n), .epoch = (e)})
#define PZ_SEL_JOIN(t, res) ((pz_sel_t){.kind = PZ__SEL_JOIN, .obj = (t), .item = (res)})
#define PZ_SEL_DEADLINE(dl) ((pz_sel_t){.kind = PZ__SEL_DEADLINE, .deadline = (dl)})
#define PZ_SEL_ACQUIRE(sem, permits) ((pz_sel_t){.kind = PZ__SEL_ACQUIRE, .obj = (sem), .n = (permits)})

int pz_select(pz_sel_t *cases, int n, int64_t deadline);

#ifdef __cplusplus
}
#endif
#endif
