/* Reading the advisor's JSON report in tests (jansson). */
#ifndef PLAZA_TEST_ADVISOR_JSON_H
#define PLAZA_TEST_ADVISOR_JSON_H

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "helpers.h"
#include "plaza/advisor.h"

/* The report now, parsed. */
static inline json_t *report_json(void)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    CHECK(f);
    CHECK(pz_advisor_report(f, PZ_ADVISOR_JSON) == 0);
    fclose(f);
    json_error_t err;
    json_t *root = json_loads(buf, 0, &err);
    if (!root)
        fprintf(stderr, "JSON error line %d: %s\n%s\n", err.line, err.text, buf);
    CHECK(root);
    free(buf);
    return root;
}

/* The entry named name in the report's array ("locks", "channels"). */
static inline json_t *named(json_t *root, const char *array, const char *name)
{
    json_t *a = json_object_get(root, array);
    CHECK(json_is_array(a));
    size_t i;
    json_t *l;
    json_array_foreach(a, i, l)
    {
        json_t *n = json_object_get(l, "name");
        if (json_is_string(n) && strcmp(json_string_value(n), name) == 0)
            return l;
    }
    fprintf(stderr, "no %s named %s in the report\n", array, name);
    CHECK(false);
    return NULL;
}

/* l[a] (or l[a][b]), which must be an integer. */
static inline int64_t num(json_t *l, const char *a, const char *b)
{
    json_t *v = json_object_get(l, a);
    if (b)
        v = json_object_get(v, b);
    CHECK(json_is_integer(v));
    return json_integer_value(v);
}

static inline const char *str(json_t *l, const char *a)
{
    json_t *v = json_object_get(l, a);
    CHECK(json_is_string(v));
    return json_string_value(v);
}

#endif
