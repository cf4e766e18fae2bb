/* Error names and misuse reports. */
#define _GNU_SOURCE
#include "internal.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *pz_strerror(int err)
{
    switch (err) {
    case 0:
        return "success";
    case -ETIMEDOUT:
        return "deadline passed";
    case -ECANCELED:
        return "task cancelled";
    case -EINVAL:
        return "invalid argument";
    case -EAGAIN:
        return "try again";
    case -EBUSY:
        return "busy";
    case -EDEADLK:
        return "would deadlock";
    case -EPERM:
        return "not allowed from this context";
    case -ENOMEM:
        return "out of memory";
    case -EPIPE:
        return "closed";
    case PZ_EDNS_NONAME:
        return "host not known";
    case PZ_EDNS_AGAIN:
        return "temporary failure in name resolution";
    case PZ_EDNS_FAIL:
        return "name resolution failed";
    case PZ_EDNS_NODATA:
        return "no address for the host";
    case PZ_EDNS_OTHER:
        return "name resolution error";
    default:
        /* INT_MIN has no positive counterpart (negating it is undefined). */
        return err < 0 && err != INT_MIN ? strerror(-err) : "not an error code";
    }
}

void pz__report(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    pz__report_line(buf);
}

_Noreturn void pz__assert_fail(const char *cond, const char *file, int line, const char *func)
{
    fprintf(stderr, "plaza: assertion failed: %s, in %s (%s:%d); a stated invariant is broken\n", cond, func, file,
            line);
    fflush(stderr);
    abort();
}
