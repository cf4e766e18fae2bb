/*
 * libFuzzer target of the weather service's request path (request.h):
 * HTTP/1.1 parsing in arbitrary pieces, pipelining, routing, the readings
 * validator and the responses, without sockets or a runtime.
 *
 * Each input is fed in chunks whose size comes from its first byte, so
 * requests split at every possible point are exercised.  Besides what
 * AddressSanitizer catches, the target checks the contract: a request the
 * parser completes respects the limits, an error is one of the protocol's
 * statuses, validation accepts 1..1000 readings of known cities or answers
 * 400/404 with nothing accepted, and every response is well formed.
 */
#include "request.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REQUIRE(c)                                                                                                   \
    do {                                                                                                             \
        if (!(c)) {                                                                                                  \
            fprintf(stderr, "fuzz_request: broken: %s (line %d)\n", #c, __LINE__);                                   \
            abort();                                                                                                 \
        }                                                                                                            \
    } while (0)

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);

static wx_city table[WX_SEED_CITIES];
static wx_cities cities;
static wx_parsed_reading parsed[WX_MAX_READINGS];

static void check_response(const wx_buf *out, int status)
{
    char head[32];
    snprintf(head, sizeof head, "HTTP/1.1 %d ", status);
    REQUIRE(out->len > strlen(head) && memcmp(out->p, head, strlen(head)) == 0);
    const char *body = strstr(out->p, "\r\n\r\n");
    REQUIRE(body != NULL);
    const char *cl = strstr(out->p, "Content-Length: ");
    REQUIRE(cl != NULL && cl < body);
    REQUIRE((size_t)strtoul(cl + 16, NULL, 10) == out->len - (size_t)(body + 4 - out->p));
}

static void answer(wx_request *req)
{
    wx_route rt;
    wx_buf out = {0};
    wx_route_request(req, &rt);
    if (rt.status) {
        REQUIRE(rt.status == 404 || rt.status == 405 || rt.status == 411);
        REQUIRE(wx_respond_error(&out, rt.status, rt.reason, false, rt.allow) == 0);
        check_response(&out, rt.status);
    } else if (rt.kind == WX_ROUTE_POST_READINGS) {
        char reason[256];
        size_t n = 12345;
        int st = wx_parse_readings(req->body.p ? req->body.p : "", req->body.len, &cities, 1, parsed, &n, reason,
                                   sizeof reason);
        REQUIRE(st == 0 || st == 400 || st == 404 || st == 503);
        if (st == 0) {
            REQUIRE(n >= 1 && n <= WX_MAX_READINGS);
            for (size_t i = 0; i < n; i++)
                REQUIRE(parsed[i].city >= 0 && parsed[i].city < cities.n && parsed[i].time_ms >= 0);
        } else {
            REQUIRE(n == 0 && reason[0]);
            REQUIRE(wx_respond_error(&out, st, reason, false, NULL) == 0);
            check_response(&out, st);
        }
    } else if (rt.kind == WX_ROUTE_GET_WEATHER) {
        REQUIRE(rt.city && rt.city[0] && !strchr(rt.city, '/'));
        wx_city_find(&cities, rt.city, strlen(rt.city));
    }
    wx_buf_free(&out);
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    if (cities.n == 0) {
        for (int i = 0; i < WX_SEED_CITIES; i++) {
            snprintf(table[i].name, sizeof table[i].name, "city%02d", i);
            table[i].base = i;
        }
        cities.v = table;
        cities.n = WX_SEED_CITIES;
    }
    size_t step = size ? 1 + data[0] % 97 : 1;
    wx_parser ps;
    wx_parser_init(&ps);
    size_t off = 0;
    bool stop = false;
    while (off < size && !stop) {
        size_t end = off + step < size ? off + step : size;
        while (off < end && !stop) {
            wx_parse_state st;
            size_t used = wx_parser_feed(&ps, (const char *)data + off, end - off, &st);
            REQUIRE(used <= end - off);
            off += used;
            if (st == WX_PARSE_DONE) {
                REQUIRE(ps.req.body.len <= WX_MAX_BODY_BYTES);
                REQUIRE(ps.req.path_len < WX_PATH_MAX);
                answer(&ps.req);
                wx_parser_next(&ps);
            } else if (st == WX_PARSE_ERROR) {
                REQUIRE(ps.status == 400 || ps.status == 411 || ps.status == 413 || ps.status == 431 ||
                        ps.status == 503);
                wx_buf out = {0};
                REQUIRE(wx_respond_error(&out, ps.status, ps.reason, true, NULL) == 0);
                check_response(&out, ps.status);
                wx_buf_free(&out);
                stop = true;
            } else {
                REQUIRE(off == end); /* MORE: everything given was consumed */
                break;
            }
        }
    }
    wx_parser_free(&ps);
    return 0;
}
