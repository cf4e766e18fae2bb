/* Error names and misuse reports. */
#define _GNU_SOURCE
#include "internal.h"

#include <stdarg.h>
#include <stdio.h>
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
    default:
        return err < 0 ? strerror(-err) : "not an error code";
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
