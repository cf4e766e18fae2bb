/*
 * The live page (PLAZA_ADVISOR_HTTP=ADDR:PORT).
 */
#include <stdio.h>
#include <stdlib.h>

#include "advisor_internal.h"

void pz__advisor_http_start_from_env(void)
{
    const char *addr = getenv("PLAZA_ADVISOR_HTTP");
    if (addr && *addr)
        fprintf(stderr, "plaza: PLAZA_ADVISOR_HTTP=%s: the live page is not built in this version\n", addr);
}
