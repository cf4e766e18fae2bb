/* The parking lot's answers to bad input and to deadlines already past
 * (include/plaza/park.h, "Bad input"): NULL addresses and unknown flags
 * are refused before any callback runs; a past deadline, 0 and negative
 * included, validates, queues and times out at once, from a task and
 * from a thread alike. */
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_park_bad_input),
        cmocka_unit_test(test_park_past_deadlines),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
