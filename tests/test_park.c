/* The parking lot's answers to bad input and to deadlines already past
 * (include/plaza/park.h, "Bad input"): NULL addresses and unknown flags
 * are refused before any callback runs; a past deadline, 0 and negative
 * included, validates, queues and times out at once, from a task and
 * from a thread alike.  And PZ_FILTER_UNPARK_STOP: one waiter woken, the
 * first, with the filter asked about it alone. */
#include "helpers.h"

#include <errno.h>
#include <stdatomic.h>

#include "plaza/park.h"

struct calls {
    int validate, timed_out, was_last;
};

static bool count_validate(void *ctx)
{
    ((struct calls *)ctx)->validate++;
    return true;
}

static void count_timed_out(void *ctx, bool was_last)
{
    struct calls *c = ctx;
    c->timed_out++;
    c->was_last += was_last;
}

static uintptr_t never_called(pz_unpark_result_t r, void *ctx)
{
    (void)r;
    (void)ctx;
    CHECK(!"an unpark on NULL ran its callback");
    return 0;
}

static pz_filter_op_t filter_never(uintptr_t token, void *ctx)
{
    (void)token;
    (void)ctx;
    CHECK(!"an unpark_filter on NULL ran its filter");
    return PZ_FILTER_UNPARK;
}

static pz_requeue_op_t requeue_never(void *ctx)
{
    (void)ctx;
    CHECK(!"a requeue on NULL ran its validate");
    return PZ_REQUEUE_ABORT;
}

static int word;

static void *bad_input_main(void *arg)
{
    (void)arg;
    struct calls c = {0};
    pz_park_opts_t o = {.validate = count_validate, .timed_out = count_timed_out, .ctx = &c};
    CHECK_EQ(pz_park(NULL, PZ_FOREVER, &o, NULL), -EINVAL);
    CHECK_EQ(pz_park(NULL, PZ_FOREVER, NULL, NULL), -EINVAL);
    o.flags = 0x80;
    CHECK_EQ(pz_park(&word, PZ_FOREVER, &o, NULL), -EINVAL);
    o.flags = PZ_PARK_THREAD | 2;
    CHECK_EQ(pz_park(&word, PZ_FOREVER, &o, NULL), -EINVAL);
    CHECK_EQ(c.validate, 0);
    CHECK_EQ(c.timed_out, 0);
    pz_unpark_result_t r = pz_unpark_one(NULL, never_called, NULL);
    CHECK_EQ(r.unparked, 0);
    CHECK_EQ(pz_unpark_all(NULL, 0), 0);
    r = pz_unpark_filter(NULL, filter_never, never_called, NULL);
    CHECK_EQ(r.unparked, 0);
    r = pz_unpark_filter(&word, NULL, NULL, NULL);
    CHECK_EQ(r.unparked, 0);
    r = pz_requeue(NULL, &word, requeue_never, NULL, NULL);
    CHECK_EQ(r.unparked + r.requeued, 0);
    r = pz_requeue(&word, NULL, requeue_never, NULL, NULL);
    CHECK_EQ(r.unparked + r.requeued, 0);
    return NULL;
}

static void test_park_bad_input(void **state)
{
    (void)state;
    /* From a task, and from a plain thread (no runtime). */
    run_in_runtime(1, bad_input_main, NULL);
    bad_input_main(NULL);
}

static void *past_deadlines_main(void *arg)
{
    unsigned flags = (unsigned)(uintptr_t)arg;
    int64_t deadlines[] = {-1, INT64_MIN, 0, pz_now() - 1};
    for (size_t i = 0; i < sizeof deadlines / sizeof deadlines[0]; i++) {
        struct calls c = {0};
        uintptr_t token = 7;
        pz_park_opts_t o = {.validate = count_validate, .timed_out = count_timed_out, .ctx = &c, .flags = flags};
        CHECK_EQ(pz_park(&word, deadlines[i], &o, &token), -ETIMEDOUT);
        CHECK_EQ(c.validate, 1);
        CHECK_EQ(c.timed_out, 1);
        CHECK_EQ(c.was_last, 1);
        CHECK_EQ(token, 7);
    }
    /* No options at all: the same, with nothing to call. */
    CHECK_EQ(pz_park(&word, -1, &(pz_park_opts_t){.flags = flags}, NULL), -ETIMEDOUT);
    if (!flags)
        CHECK_EQ(pz_park(&word, 0, NULL, NULL), -ETIMEDOUT);
    return NULL;
}

static void test_park_past_deadlines(void **state)
{
    (void)state;
    run_in_runtime(1, past_deadlines_main, (void *)(uintptr_t)0);
    run_in_runtime(1, past_deadlines_main, (void *)(uintptr_t)PZ_PARK_THREAD);
    past_deadlines_main((void *)(uintptr_t)0);
}

/* ---- PZ_FILTER_UNPARK_STOP ---- */

static int stop_word;
static _Atomic uintptr_t stop_got[4];

static void *stop_parker(void *arg)
{
    uintptr_t i = (uintptr_t)arg, token = 0;
    pz_park_opts_t o = {.park_token = i};
    CHECK_EQ(pz_park(&stop_word, PZ_FOREVER, &o, &token), 0);
    atomic_store(&stop_got[i], token);
    return NULL;
}

struct stop_seen {
    int calls;
    uintptr_t first;
};

static pz_filter_op_t filter_unpark_stop(uintptr_t park_token, void *ctx)
{
    struct stop_seen *s = ctx;
    if (!s->calls++)
        s->first = park_token;
    return PZ_FILTER_UNPARK_STOP;
}

static uintptr_t token_of_first(pz_unpark_result_t r, void *ctx)
{
    CHECK_EQ(r.unparked, 1);
    return 100 + ((struct stop_seen *)ctx)->first;
}

static void *unpark_stop_main(void *arg)
{
    (void)arg;
    pz_task_t *t[3];
    for (uintptr_t i = 1; i <= 3; i++) {
        t[i - 1] = pz_spawn(stop_parker, (void *)i);
        wait_lot_waiters(&stop_word, (int)i); /* queued in this order */
    }
    for (uintptr_t i = 1; i <= 3; i++) {
        struct stop_seen s = {0};
        pz_unpark_result_t r = pz_unpark_filter(&stop_word, filter_unpark_stop, token_of_first, &s);
        CHECK_EQ(r.unparked, 1);
        CHECK_EQ(s.calls, 1);
        CHECK_EQ(s.first, i);
        CHECK_EQ(r.have_more, i < 3);
        CHECK_EQ(pz_join(t[i - 1], NULL), 0);
        CHECK_EQ(atomic_load(&stop_got[i]), 100 + i);
        CHECK_EQ(lot_waiters(&stop_word), (int)(3 - i));
    }
    /* Nobody left: the filter is not asked, nobody is woken. */
    struct stop_seen s = {0};
    pz_unpark_result_t r = pz_unpark_filter(&stop_word, filter_unpark_stop, NULL, &s);
    CHECK_EQ(r.unparked, 0);
    CHECK_EQ(s.calls, 0);
    return NULL;
}

static void test_park_unpark_stop(void **state)
{
    (void)state;
    run_in_runtime(2, unpark_stop_main, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_park_bad_input),
        cmocka_unit_test(test_park_past_deadlines),
        cmocka_unit_test(test_park_unpark_stop),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
