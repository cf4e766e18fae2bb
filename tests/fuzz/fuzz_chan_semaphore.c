/* Differential fuzzing of pz_chan and pz_semaphore against sequential
 * models.
 *
 * An input is a channel capacity, a semaphore's initial permits, then one
 * operation per two bytes.  Each operation runs in a task of its own (a
 * fresh task per operation, on a two-worker runtime, so consecutive
 * operations run on either worker), and the main task joins it before the
 * next: the operations are sequential, and each result must equal what the
 * model says.  Only operations whose outcome is decided at once are used
 * (try_ forms, and waits whose deadline has passed, -1 included), so the
 * model needs no notion of time.  A mismatch aborts with both results. */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "plaza.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define QCAP 8

struct model {
    size_t cap;      /* channel capacity, 0: rendezvous */
    long items[QCAP];
    size_t head, len;
    bool closed;
    uint64_t permits;
    bool sem_closed;
};

struct op {
    uint8_t code, arg;
    long sent;  /* the value a send sends */
    int result; /* what the library returned */
    long got;   /* what a receive received */
    uint64_t count;
};

static pz_chan_t *ch;
static pz_semaphore_t sem;

static void *run_op(void *arg)
{
    struct op *o = arg;
    o->got = -1;
    switch (o->code % 10) {
    case 0:
        o->result = pz_chan_try_send(ch, &o->sent);
        break;
    case 1:
        o->result = pz_chan_send_until(ch, &o->sent, o->arg & 1 ? -1 : pz_now() - 1);
        break;
    case 2:
        o->result = pz_chan_try_recv(ch, &o->got);
        break;
    case 3:
        o->result = pz_chan_recv_until(ch, &o->got, o->arg & 1 ? -1 : 0);
        break;
    case 4:
        o->count = pz_chan_len(ch);
        o->result = 0;
        break;
    case 5:
        o->result = pz_semaphore_try_acquire(&sem, o->arg % 6);
        break;
    case 6:
        o->result = pz_semaphore_acquire_until(&sem, o->arg % 6, o->arg & 1 ? -1 : pz_now() - 1);
        break;
    case 7:
        o->result = pz_semaphore_release(&sem, o->arg % 6);
        break;
    case 8:
        o->count = pz_semaphore_available(&sem);
        o->result = 0;
        break;
    default:
        if (o->arg % 8 == 0)
            pz_chan_close(ch);
        else if (o->arg % 8 == 1)
            pz_semaphore_close(&sem);
        o->result = 0;
    }
    return NULL;
}

/* What the model says the operation returns; updates the model. */
static int model_op(struct model *m, struct op *o, long *got, uint64_t *count)
{
    uint64_t n = o->arg % 6;
    bool timed = (o->code % 10) == 1 || (o->code % 10) == 3 || (o->code % 10) == 6;
    int busy = timed ? -ETIMEDOUT : -EAGAIN;
    *got = -1;
    switch (o->code % 10) {
    case 0:
    case 1:
        if (m->closed)
            return -EPIPE;
        if (m->len == m->cap) /* a rendezvous has no receiver waiting here */
            return busy;
        m->items[(m->head + m->len++) % QCAP] = o->sent;
        return 0;
    case 2:
    case 3:
        if (m->len) {
            *got = m->items[m->head];
            m->head = (m->head + 1) % QCAP;
            m->len--;
            return 0;
        }
        return m->closed ? -EPIPE : busy;
    case 4:
        *count = m->len;
        return 0;
    case 5:
    case 6:
        if (m->sem_closed)
            return -EPIPE;
        if (m->permits < n)
            return busy;
        m->permits -= n;
        return 0;
    case 7:
        if (m->permits + n > PZ_SEMAPHORE_MAX_PERMITS)
            return -EOVERFLOW;
        m->permits += n;
        return 0;
    case 8:
        *count = m->permits;
        return 0;
    default:
        if (o->arg % 8 == 0)
            m->closed = true;
        else if (o->arg % 8 == 1)
            m->sem_closed = true;
        return 0;
    }
}

struct input {
    const uint8_t *data;
    size_t size;
};

static void mismatch(const char *what, size_t i, int code, long want, long got)
{
    fprintf(stderr, "fuzz: operation %zu (code %d): %s: model %ld, library %ld\n", i, code, what, want, got);
    abort();
}

static void *fuzz_main(void *arg)
{
    struct input *in = arg;
    struct model m = {0};
    m.cap = in->data[0] % 5;
    m.permits = in->data[1] % 8;
    ch = pz_chan_create(sizeof(long), m.cap);
    if (!ch)
        abort();
    pz_semaphore_init(&sem, m.permits);
    long next = 1;
    for (size_t i = 2; i + 1 < in->size; i += 2) {
        struct op o = {in->data[i], in->data[i + 1], next++, 0, -1, 0};
        pz_task_t *t = pz_spawn(run_op, &o);
        if (!t || pz_join(t, NULL) != 0)
            abort();
        long got;
        uint64_t count = 0;
        int want = model_op(&m, &o, &got, &count);
        if (o.result != want)
            mismatch("result", i / 2, o.code % 10, want, o.result);
        if (o.got != got)
            mismatch("item received", i / 2, o.code % 10, got, o.got);
        if (count != o.count && (o.code % 10 == 4 || o.code % 10 == 8))
            mismatch("count", i / 2, o.code % 10, (long)count, (long)o.count);
    }
    pz_chan_destroy(ch);
    return NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2 || size > 4096)
        return 0;
    struct input in = {data, size};
    pz_config_t cfg = {.workers = 2};
    if (pz_run(&cfg, fuzz_main, &in, NULL) != 0)
        abort();
    return 0;
}
