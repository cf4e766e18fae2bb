/*
 * Run queues.
 *
 * Local queue: a ring of PZ__RUNQ_CAP slots.  tail is written only by the
 * owning worker; head is advanced by CAS by the owner (pop) and by thieves
 * (steal).  Invariant: tail - head <= PZ__RUNQ_CAP (unsigned arithmetic, so
 * the counters may wrap).  A thief copies the slots it means to take before
 * its CAS on head: the owner cannot overwrite slot i while head <= i, so if
 * the CAS succeeds the copies are exactly the tasks it now owns.
 *
 * Injection queue: two singly linked lists under one spin lock, with
 * atomic lengths so that an empty queue costs one load to check.  The wake
 * list holds tasks woken by an event (sched.c says why they go first); the
 * ordinary list the overflow of full local queues.  inject_len counts both
 * lists, wake_len the wake list; both change only under the lock.
 */
#include "internal.h"

void pz__runq_init(pz__runq *q)
{
    atomic_init(&q->head, 0);
    atomic_init(&q->tail, 0);
    for (unsigned i = 0; i < PZ__RUNQ_CAP; i++)
        atomic_init(&q->slots[i], NULL);
}




size_t pz__runq_take_half(pz__runq *q, pz_task_t **out)
{
    uint32_t head = atomic_load_explicit(&q->head, memory_order_acquire);
    for (;;) {
        uint32_t tail = atomic_load_explicit(&q->tail, memory_order_relaxed);
        uint32_t n = (tail - head) / 2;
        if (n == 0)
            return 0;
        for (uint32_t i = 0; i < n; i++)
            out[i] = atomic_load_explicit(&q->slots[(head + i) % PZ__RUNQ_CAP], memory_order_relaxed);
        if (atomic_compare_exchange_weak_explicit(&q->head, &head, head + n, memory_order_acq_rel,
                                                  memory_order_acquire))
            return n;
    }
}

pz_task_t *pz__runq_steal(pz__runq *victim, pz__runq *dst)
{
    /* dst belongs to the caller and is empty when it steals, so the copied
     * tasks fit; they are published by one store of dst's tail. */
    uint32_t dtail = atomic_load_explicit(&dst->tail, memory_order_relaxed);
    uint32_t head = atomic_load_explicit(&victim->head, memory_order_acquire);
    for (;;) {
        uint32_t tail = atomic_load_explicit(&victim->tail, memory_order_acquire);
        uint32_t avail = tail - head;
        if (avail == 0 || avail > PZ__RUNQ_CAP)
            return NULL;
        uint32_t n = avail - avail / 2; /* half, rounded up */
        if (n > PZ__RUNQ_CAP / 2)
            n = PZ__RUNQ_CAP / 2;
        for (uint32_t i = 0; i < n; i++) {
            pz_task_t *t = atomic_load_explicit(&victim->slots[(head + i) % PZ__RUNQ_CAP],
                                                memory_order_relaxed);
            atomic_store_explicit(&dst->slots[(dtail + i) % PZ__RUNQ_CAP], t, memory_order_relaxed);
        }
        if (atomic_compare_exchange_weak_explicit(&victim->head, &head, head + n, memory_order_acq_rel,
                                                  memory_order_acquire)) {
            /* Run the last one at once; publish the rest. */
            pz_task_t *run = atomic_load_explicit(&dst->slots[(dtail + n - 1) % PZ__RUNQ_CAP],
                                                  memory_order_relaxed);
            if (n > 1)
                atomic_store_explicit(&dst->tail, dtail + n - 1, memory_order_release);
            return run;
        }
    }
}

void pz__inject_push(pz__runtime *rt, pz_task_t *first, pz_task_t *last, size_t n)
{
    last->next = NULL;
    pz__spin_lock(&rt->inject_lock);
    if (rt->inject_tail)
        rt->inject_tail->next = first;
    else
        rt->inject_head = first;
    rt->inject_tail = last;
    atomic_store_explicit(&rt->inject_len, atomic_load_explicit(&rt->inject_len, memory_order_relaxed) + n,
                          memory_order_release);
    pz__spin_unlock(&rt->inject_lock);
}

void pz__wake_push(pz__runtime *rt, pz_task_t *first, pz_task_t *last, size_t n)
{
    last->next = NULL;
    pz__spin_lock(&rt->inject_lock);
    if (rt->wake_tail)
        rt->wake_tail->next = first;
    else
        rt->wake_head = first;
    rt->wake_tail = last;
    atomic_store_explicit(&rt->wake_len, atomic_load_explicit(&rt->wake_len, memory_order_relaxed) + n,
                          memory_order_release);
    atomic_store_explicit(&rt->inject_len, atomic_load_explicit(&rt->inject_len, memory_order_relaxed) + n,
                          memory_order_release);
    pz__spin_unlock(&rt->inject_lock);
}

pz_task_t *pz__wake_pop(pz__runtime *rt)
{
    if (atomic_load_explicit(&rt->wake_len, memory_order_acquire) == 0)
        return NULL;
    pz__spin_lock(&rt->inject_lock);
    pz_task_t *t = rt->wake_head;
    if (t) {
        rt->wake_head = t->next;
        if (!rt->wake_head)
            rt->wake_tail = NULL;
        atomic_store_explicit(&rt->wake_len, atomic_load_explicit(&rt->wake_len, memory_order_relaxed) - 1,
                              memory_order_release);
        atomic_store_explicit(&rt->inject_len, atomic_load_explicit(&rt->inject_len, memory_order_relaxed) - 1,
                              memory_order_release);
    }
    pz__spin_unlock(&rt->inject_lock);
    if (t)
        t->next = NULL;
    return t;
}

pz_task_t *pz__inject_pop(pz__runtime *rt, pz__worker *w)
{
    if (atomic_load_explicit(&rt->inject_len, memory_order_acquire) ==
        atomic_load_explicit(&rt->wake_len, memory_order_acquire))
        return NULL;
    pz__spin_lock(&rt->inject_lock);
    size_t all = atomic_load_explicit(&rt->inject_len, memory_order_relaxed);
    size_t len = all - atomic_load_explicit(&rt->wake_len, memory_order_relaxed);
    if (len == 0) {
        pz__spin_unlock(&rt->inject_lock);
        return NULL;
    }
    /* Take a fair share: one to run and, when the local queue is empty, up
     * to len / nworkers more into it, so the queue's lock is taken less. */
    size_t take = 1;
    if (w && pz__runq_len(&w->runq) == 0) {
        take = len / (size_t)rt->nworkers + 1;
        if (take > PZ__RUNQ_CAP / 2)
            take = PZ__RUNQ_CAP / 2;
    }
    if (take > len)
        take = len;
    pz_task_t *run = rt->inject_head;
    pz_task_t *t = run->next;
    for (size_t i = 1; i < take; i++) {
        pz_task_t *nx = t->next;
        pz__runq_push(&w->runq, t); /* cannot fail: the queue was empty */
        t = nx;
    }
    rt->inject_head = t;
    if (!t)
        rt->inject_tail = NULL;
    atomic_store_explicit(&rt->inject_len, all - take, memory_order_release);
    pz__spin_unlock(&rt->inject_lock);
    run->next = NULL;
    return run;
}
