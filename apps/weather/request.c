/*
 * The request path without sockets (request.h): libhttp-parser callbacks
 * that collect one request at a time and enforce the size limits as the
 * bytes arrive, the router, the readings validator and the responses.
 *
 * Pipelining: on_message_complete pauses the parser, so http_parser_execute
 * returns right after a request's last byte; the caller answers it and
 * wx_parser_next unpauses the parser for the bytes that follow.  The
 * parser never holds more than one request: what it has not consumed stays
 * in the caller's buffer.
 *
 * Limits are checked inside the callbacks, before a byte is stored: the
 * path is kept up to WX_PATH_MAX (longer paths route to 404), the header
 * block is counted (431 past WX_MAX_HEADER_BYTES), the body is refused
 * from its Content-Length (413) or as chunks arrive past the limit.  So a
 * bad request costs at most the limits' bytes of memory.
 */
#define _GNU_SOURCE
#include "request.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>
#include <yajl/yajl_parse.h>

/* ---- buffer ---- */

static int buf_reserve(wx_buf *b, size_t extra)
{
    if (b->len + extra + 1 <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra + 1)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p)
        return -ENOMEM;
    b->p = p;
    b->cap = cap;
    return 0;
}

int wx_buf_append(wx_buf *b, const void *data, size_t n)
{
    if (buf_reserve(b, n) < 0)
        return -ENOMEM;
    memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = 0;
    return 0;
}

int wx_buf_printf(wx_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || buf_reserve(b, (size_t)n) < 0)
        return -ENOMEM;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

void wx_buf_free(wx_buf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* ---- parser callbacks ---- */

static int refuse(wx_parser *ps, int status, const char *reason)
{
    ps->status = status;
    ps->reason = reason;
    return -1;
}

static int count_head(wx_parser *ps, size_t n)
{
    ps->head_bytes += n;
    if (ps->head_bytes > WX_MAX_HEADER_BYTES)
        return refuse(ps, 431, "header block too large");
    return 0;
}

static int on_message_begin(http_parser *hp)
{
    wx_parser *ps = hp->data;
    ps->started = true;
    return 0;
}

static int on_url(http_parser *hp, const char *at, size_t n)
{
    wx_parser *ps = hp->data;
    if (count_head(ps, n) < 0)
        return -1;
    wx_request *r = &ps->req;
    if (ps->path_too_long || r->path_len + n >= WX_PATH_MAX) {
        ps->path_too_long = true;
        return 0;
    }
    memcpy(r->path + r->path_len, at, n);
    r->path_len += n;
    r->path[r->path_len] = 0;
    return 0;
}

/* Keeps up to cap - 1 bytes of a header's name or value across the
 * callbacks that deliver it in pieces. */
static void keep(char *dst, size_t *len, size_t cap, const char *at, size_t n)
{
    size_t room = cap - 1 - *len;
    if (n > room)
        n = room;
    memcpy(dst + *len, at, n);
    *len += n;
    dst[*len] = 0;
}

static void header_done(wx_parser *ps)
{
    if (ps->field_len == 6 && strcasecmp(ps->field, "expect") == 0 && strcasecmp(ps->value, "100-continue") == 0)
        ps->expect_continue = true;
}

static int on_header_field(http_parser *hp, const char *at, size_t n)
{
    wx_parser *ps = hp->data;
    if (ps->in_value) {
        header_done(ps);
        ps->field_len = ps->value_len = 0;
        ps->in_value = false;
    }
    keep(ps->field, &ps->field_len, sizeof ps->field, at, n);
    /* ": " and CRLF around each header count too. */
    return count_head(ps, n + 2);
}

static int on_header_value(http_parser *hp, const char *at, size_t n)
{
    wx_parser *ps = hp->data;
    ps->in_value = true;
    keep(ps->value, &ps->value_len, sizeof ps->value, at, n);
    return count_head(ps, n + 2);
}

static int on_headers_complete(http_parser *hp)
{
    wx_parser *ps = hp->data;
    if (ps->in_value)
        header_done(ps);
    ps->headers_done = true;
    bool chunked = (hp->flags & F_CHUNKED) != 0;
    bool has_length = (hp->flags & F_CONTENTLENGTH) != 0;
    /* Without either, the request has no body; the router answers 411 if
     * its path wants one. */
    ps->req.no_length = hp->method == HTTP_POST && !chunked && !has_length;
    if (has_length && hp->content_length > WX_MAX_BODY_BYTES)
        return refuse(ps, 413, "body larger than 1 MiB");
    return 0;
}

static int on_body(http_parser *hp, const char *at, size_t n)
{
    wx_parser *ps = hp->data;
    wx_buf *b = &ps->req.body;
    if (b->len + n > WX_MAX_BODY_BYTES)
        return refuse(ps, 413, "body larger than 1 MiB");
    if (wx_buf_append(b, at, n) < 0)
        return refuse(ps, 503, "out of memory");
    return 0;
}

static int on_message_complete(http_parser *hp)
{
    wx_parser *ps = hp->data;
    ps->complete = true;
    ps->req.method = (enum http_method)hp->method;
    ps->req.keep_alive = http_should_keep_alive(hp) != 0;
    http_parser_pause(hp, 1);
    return 0;
}

static const http_parser_settings settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

static void reset_request(wx_parser *ps)
{
    ps->req.path_len = 0;
    ps->req.path[0] = 0;
    ps->req.body.len = 0;
    ps->req.keep_alive = false;
    ps->req.no_length = false;
    ps->head_bytes = 0;
    ps->started = ps->headers_done = ps->complete = ps->path_too_long = false;
    ps->expect_continue = ps->in_value = false;
    ps->field_len = ps->value_len = 0;
    ps->field[0] = ps->value[0] = 0;
}

void wx_parser_init(wx_parser *ps)
{
    memset(ps, 0, sizeof *ps);
    http_parser_init(&ps->hp, HTTP_REQUEST);
    ps->hp.data = ps;
}

void wx_parser_free(wx_parser *ps) { wx_buf_free(&ps->req.body); }

void wx_parser_next(wx_parser *ps)
{
    reset_request(ps);
    http_parser_pause(&ps->hp, 0);
}

size_t wx_parser_feed(wx_parser *ps, const char *data, size_t n, wx_parse_state *state)
{
    if (ps->status) {
        *state = WX_PARSE_ERROR;
        return 0;
    }
    size_t used = http_parser_execute(&ps->hp, &settings, data, n);
    if (ps->complete) {
        *state = WX_PARSE_DONE;
        return used;
    }
    enum http_errno e = HTTP_PARSER_ERRNO(&ps->hp);
    if (e != HPE_OK || ps->status) {
        if (!ps->status) {
            ps->status = e == HPE_HEADER_OVERFLOW ? 431 : 400;
            ps->reason = e == HPE_HEADER_OVERFLOW ? "header block too large" : "malformed request";
        }
        *state = WX_PARSE_ERROR;
        return used;
    }
    *state = WX_PARSE_MORE;
    return used;
}

/* ---- routing ---- */

void wx_route_request(wx_request *req, wx_route *out)
{
    memset(out, 0, sizeof *out);
    char *q = memchr(req->path, '?', req->path_len);
    if (q) {
        *q = 0;
        req->path_len = (size_t)(q - req->path);
    }
    const char *p = req->path;
    bool get = req->method == HTTP_GET;
    if (strcmp(p, "/readings") == 0) {
        out->kind = WX_ROUTE_POST_READINGS;
        if (req->method != HTTP_POST) {
            out->status = 405;
            out->reason = "method not allowed";
            out->allow = "POST";
        } else if (req->no_length) {
            out->status = 411;
            out->reason = "POST needs Content-Length or chunked encoding";
        }
        return;
    }
    if (strncmp(p, "/weather/", 9) == 0 && p[9] && !strchr(p + 9, '/')) {
        out->kind = WX_ROUTE_GET_WEATHER;
        out->city = p + 9;
    } else if (strcmp(p, "/healthz") == 0) {
        out->kind = WX_ROUTE_HEALTHZ;
    } else if (strcmp(p, "/metrics") == 0) {
        out->kind = WX_ROUTE_METRICS;
    } else {
        out->status = 404;
        out->reason = "unknown path";
        return;
    }
    if (!get) {
        out->status = 405;
        out->reason = "method not allowed";
        out->allow = "GET";
    }
}

/* ---- cities and readings ---- */

int wx_city_find(const wx_cities *c, const char *name, size_t len)
{
    int lo = 0, hi = c->n - 1;
    if (len >= WX_CITY_NAME_MAX)
        return -1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        int d = strncmp(c->v[mid].name, name, len);
        if (d == 0 && c->v[mid].name[len] != 0)
            d = 1;
        if (d == 0)
            return mid;
        if (d < 0)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return -1;
}

/* ---- the readings document ----
 *
 * The body is read by yajl's event parser (libyajl), not into a tree: the
 * callbacks below follow where they are in the document and take each
 * reading's fields as they pass.  (A tree costs an allocation per value
 * and per key; on a POST of 10 readings building and freeing it took
 * about four times the CPU of this.)  yajl checks the syntax and UTF-8 of
 * the whole text, refuses comments and trailing bytes, and gives numbers
 * as integers (no fraction or exponent) or doubles, refusing one that
 * overflows either.
 *
 * The answer follows the order of checks of the document as a whole:
 * malformed JSON first (anywhere in the text, however far the readings
 * went before it), then "readings" that is not an array, then its count,
 * then the first reading that is not a reading, then an unknown city
 * (404).  So the callbacks record what they find and go on; they stop the
 * parse only for nesting deeper than WX_MAX_JSON_DEPTH (no readings
 * document nests so deep) and for what makes the text malformed for the
 * service: a key it reads given twice in one object (which value would
 * count?), and a string holding U+0000 (no city has one, and a C string
 * would end there). */

enum rd_where {
    RD_ROOT,     /* before the document's value */
    RD_TOP,      /* in the top-level object */
    RD_READINGS, /* in the "readings" array */
    RD_READING,  /* in a reading object */
    RD_SKIP,     /* inside a value no one reads (skip_depth says how deep) */
    RD_DONE,     /* after the document's value */
};

/* A reading object's known keys, and what the value after a key is for. */
enum rd_key { K_OTHER, K_READINGS, K_CITY, K_TEMPERATURE, K_TIME };

typedef struct readings_ctx {
    const wx_cities *cities;
    int64_t now_ms;
    wx_parsed_reading *out;
    size_t n;     /* readings of known cities stored in out */
    size_t count; /* readings seen (values in the array) */
    int depth;    /* arrays and objects open */
    enum rd_where where;
    enum rd_where skip_to; /* where a skipped value returns */
    int skip_depth;        /* the depth at which a skipped value started */
    enum rd_key key;       /* the last key read, for the value that follows */
    bool top_seen_readings; /* the key "readings" came */
    bool readings_array;    /* ... and its value is an array */
    /* The reading being read. */
    bool r_ok; /* its fields so far are of the right types */
    bool has_city, has_temp, has_time;
    int r_city; /* index in cities, or -1 */
    double r_temp;
    int64_t r_time;
    const char *r_field_error; /* what is wrong with a field's value */
    /* The first reading that is wrong, and why. */
    bool bad;
    size_t bad_index;
    const char *bad_what;
    /* The first unknown city, kept for the reason. */
    bool unknown;
    char unknown_name[65];
    /* Why a callback stopped the parse: nesting, or what else makes the
     * text malformed for the service. */
    bool too_deep;
    const char *stop_reason;
} readings_ctx;

static const char rd_needs[] = "needs \"city\" (string), \"temperature\" (number), optional \"time\" (integer ms)";

/* The value after a key was not a reading's field of the right type. */
static void rd_reading_wrong(readings_ctx *c, const char *what)
{
    if (c->r_ok) {
        c->r_ok = false;
        c->r_field_error = what;
    }
}

/* A container opens; false when it nests too deep (the parse stops). */
static bool rd_enter(readings_ctx *c)
{
    if (++c->depth > WX_MAX_JSON_DEPTH) {
        c->too_deep = true;
        return false;
    }
    return true;
}

/* Starts skipping the container just opened (depth already counted). */
static void rd_skip(readings_ctx *c, enum rd_where back)
{
    c->skip_to = back;
    c->skip_depth = c->depth;
    c->where = RD_SKIP;
}

/* A reading value that is not an object (a scalar or an array). */
static void rd_not_object(readings_ctx *c)
{
    if (!c->bad) {
        c->bad = true;
        c->bad_index = c->count;
        c->bad_what = rd_needs;
    }
    c->count++;
}

static void rd_reading_done(readings_ctx *c)
{
    size_t i = c->count++;
    if (!c->r_ok || !c->has_city || !c->has_temp) {
        if (!c->bad) {
            c->bad = true;
            c->bad_index = i;
            c->bad_what = c->r_ok ? rd_needs : c->r_field_error;
        }
        return;
    }
    if (c->r_city < 0)
        return; /* unknown: noted when the city was read */
    if (c->n < WX_MAX_READINGS) {
        c->out[c->n].city = c->r_city;
        c->out[c->n].temperature = c->r_temp;
        c->out[c->n].time_ms = c->has_time ? c->r_time : c->now_ms;
        c->n++;
    }
}

enum rd_kind { S_NULL, S_BOOL, S_INT, S_DOUBLE, S_STRING };

/* A scalar value: where does it go? */
static int rd_scalar(readings_ctx *c, enum rd_kind kind, long long iv, double dv, const unsigned char *sv, size_t sl)
{
    switch (c->where) {
    case RD_ROOT:
        c->where = RD_DONE; /* a scalar document: no "readings" */
        return 1;
    case RD_TOP:
        return 1; /* "readings" or not, nothing to keep */
    case RD_READINGS:
        rd_not_object(c);
        return 1;
    case RD_READING:
        switch (c->key) {
        case K_CITY:
            c->has_city = true;
            if (kind != S_STRING) {
                rd_reading_wrong(c, rd_needs);
                return 1;
            }
            c->r_city = wx_city_find(c->cities, (const char *)sv, sl);
            if (c->r_city < 0 && c->r_ok && !c->unknown) {
                c->unknown = true;
                size_t k = sl < sizeof c->unknown_name - 1 ? sl : sizeof c->unknown_name - 1;
                memcpy(c->unknown_name, sv, k);
                c->unknown_name[k] = 0;
            }
            return 1;
        case K_TEMPERATURE:
            c->has_temp = true;
            if (kind == S_INT)
                c->r_temp = (double)iv;
            else if (kind == S_DOUBLE && isfinite(dv))
                c->r_temp = dv;
            else
                rd_reading_wrong(c, kind == S_DOUBLE ? "temperature is not a finite number" : rd_needs);
            return 1;
        case K_TIME:
            c->has_time = true;
            if (kind != S_INT)
                rd_reading_wrong(c, rd_needs);
            else if (iv < 0)
                rd_reading_wrong(c, "time is negative");
            else
                c->r_time = iv;
            return 1;
        default:
            return 1; /* a field no one reads */
        }
    default: /* RD_SKIP: inside a skipped value */
        return 1;
    }
}

static int rd_null(void *ctx) { return rd_scalar(ctx, S_NULL, 0, 0, NULL, 0); }
static int rd_boolean(void *ctx, int v) { (void)v; return rd_scalar(ctx, S_BOOL, 0, 0, NULL, 0); }
static int rd_integer(void *ctx, long long v) { return rd_scalar(ctx, S_INT, v, 0, NULL, 0); }
static int rd_double(void *ctx, double v) { return rd_scalar(ctx, S_DOUBLE, 0, v, NULL, 0); }

static int rd_string(void *ctx, const unsigned char *s, size_t len)
{
    readings_ctx *c = ctx;
    if (memchr(s, 0, len)) {
        c->stop_reason = "\\u0000 in a string";
        return 0;
    }
    return rd_scalar(c, S_STRING, 0, 0, s, len);
}

/* An object or array as a reading's value: a known field so given is
 * wrong (and counts as given, so it is not also reported missing); the
 * value is skipped either way. */
static void rd_reading_container(readings_ctx *c)
{
    if (c->key == K_CITY || c->key == K_TEMPERATURE || c->key == K_TIME) {
        if (c->key == K_CITY)
            c->has_city = true;
        else if (c->key == K_TEMPERATURE)
            c->has_temp = true;
        else
            c->has_time = true;
        rd_reading_wrong(c, rd_needs);
    }
    rd_skip(c, RD_READING);
}

static int rd_start_map(void *ctx)
{
    readings_ctx *c = ctx;
    if (!rd_enter(c))
        return 0;
    switch (c->where) {
    case RD_ROOT:
        c->where = RD_TOP;
        return 1;
    case RD_TOP:
        rd_skip(c, RD_TOP);
        return 1;
    case RD_READINGS:
        c->where = RD_READING;
        c->r_ok = true;
        c->has_city = c->has_temp = c->has_time = false;
        c->r_city = -1;
        c->r_field_error = NULL;
        return 1;
    case RD_READING:
        rd_reading_container(c);
        return 1;
    default:
        return 1; /* RD_SKIP */
    }
}

static int rd_start_array(void *ctx)
{
    readings_ctx *c = ctx;
    if (!rd_enter(c))
        return 0;
    switch (c->where) {
    case RD_ROOT:
        rd_skip(c, RD_DONE); /* an array document: no "readings" */
        return 1;
    case RD_TOP:
        if (c->key == K_READINGS) {
            c->readings_array = true;
            c->where = RD_READINGS;
        } else {
            rd_skip(c, RD_TOP);
        }
        return 1;
    case RD_READINGS:
        rd_not_object(c);
        rd_skip(c, RD_READINGS);
        return 1;
    case RD_READING:
        rd_reading_container(c);
        return 1;
    default:
        return 1; /* RD_SKIP */
    }
}

/* A container closes: leave a skipped value at its own depth, or the
 * level the context was in. */
static int rd_end(readings_ctx *c)
{
    int closing = c->depth--;
    if (c->where == RD_SKIP) {
        if (closing == c->skip_depth)
            c->where = c->skip_to;
        return 1;
    }
    switch (c->where) {
    case RD_READING:
        rd_reading_done(c);
        c->where = RD_READINGS;
        break;
    case RD_READINGS:
        c->where = RD_TOP;
        break;
    default: /* RD_TOP */
        c->where = RD_DONE;
        break;
    }
    return 1;
}

static int rd_end_map(void *ctx) { return rd_end(ctx); }
static int rd_end_array(void *ctx) { return rd_end(ctx); }

static bool key_is(const unsigned char *k, size_t len, const char *name)
{
    return len == strlen(name) && memcmp(k, name, len) == 0;
}

static int rd_map_key(void *ctx, const unsigned char *k, size_t len)
{
    readings_ctx *c = ctx;
    if (memchr(k, 0, len)) {
        c->stop_reason = "\\u0000 in a string";
        return 0;
    }
    c->key = K_OTHER;
    bool again = false;
    if (c->where == RD_TOP) {
        if (key_is(k, len, "readings")) {
            again = c->top_seen_readings;
            c->top_seen_readings = true;
            c->key = K_READINGS;
        }
    } else if (c->where == RD_READING) {
        if (key_is(k, len, "city")) {
            again = c->has_city;
            c->key = K_CITY;
        } else if (key_is(k, len, "temperature")) {
            again = c->has_temp;
            c->key = K_TEMPERATURE;
        } else if (key_is(k, len, "time")) {
            again = c->has_time;
            c->key = K_TIME;
        }
    }
    if (again) {
        c->stop_reason = c->key == K_READINGS ? "duplicate key \"readings\""
                          : c->key == K_CITY  ? "duplicate key \"city\""
                          : c->key == K_TIME  ? "duplicate key \"time\""
                                              : "duplicate key \"temperature\"";
        return 0;
    }
    return 1;
}

static const yajl_callbacks readings_callbacks = {
    .yajl_null = rd_null,
    .yajl_boolean = rd_boolean,
    .yajl_integer = rd_integer,
    .yajl_double = rd_double,
    .yajl_string = rd_string,
    .yajl_start_map = rd_start_map,
    .yajl_map_key = rd_map_key,
    .yajl_end_map = rd_end_map,
    .yajl_start_array = rd_start_array,
    .yajl_end_array = rd_end_array,
};

int wx_parse_readings(const char *body, size_t len, const wx_cities *cities, int64_t now_ms, wx_parsed_reading *out,
                      size_t *n, char *reason, size_t reason_len)
{
    *n = 0;
    readings_ctx c = {.cities = cities, .now_ms = now_ms, .out = out, .where = RD_ROOT};
    yajl_handle h = yajl_alloc(&readings_callbacks, NULL, &c);
    if (!h) {
        snprintf(reason, reason_len, "out of memory");
        return 503;
    }
    yajl_status st = yajl_parse(h, (const unsigned char *)body, len);
    if (st == yajl_status_ok)
        st = yajl_complete_parse(h);
    if (st != yajl_status_ok) {
        if (st == yajl_status_client_canceled && c.too_deep) {
            snprintf(reason, reason_len, "malformed JSON: nested deeper than %d levels", WX_MAX_JSON_DEPTH);
        } else if (st == yajl_status_client_canceled) {
            snprintf(reason, reason_len, "malformed JSON: %s", c.stop_reason);
        } else {
            unsigned char *e = yajl_get_error(h, 0, NULL, 0);
            /* "parse error: premature EOF\n" and the like */
            size_t el = e ? strcspn((const char *)e, "\n") : 0;
            snprintf(reason, reason_len, "malformed JSON: %.*s", (int)el, e ? (const char *)e : "");
            if (e)
                yajl_free_error(h, e);
        }
        yajl_free(h);
        return 400;
    }
    yajl_free(h);
    int status = 0;
    if (!c.readings_array) {
        snprintf(reason, reason_len, "\"readings\" must be an array");
        status = 400;
    } else if (c.count == 0 || c.count > WX_MAX_READINGS) {
        snprintf(reason, reason_len, "\"readings\" must hold 1 to %d readings", WX_MAX_READINGS);
        status = 400;
    } else if (c.bad) {
        snprintf(reason, reason_len, "reading %zu: %s", c.bad_index, c.bad_what);
        status = 400;
    } else if (c.unknown) {
        /* Nothing of the request is stored: the caller sees 404 and no
         * readings. */
        snprintf(reason, reason_len, "unknown city: %s", c.unknown_name);
        status = 404;
    }
    *n = status ? 0 : c.n;
    return status;
}

/* ---- responses ---- */

const char *wx_status_text(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return "Unknown";
    }
}

size_t wx_fmt_int(char *out, long long v)
{
    char tmp[24];
    size_t n = 0;
    /* In unsigned arithmetic, so that LLONG_MIN has its digits too. */
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    size_t len = 0;
    if (v < 0)
        out[len++] = '-';
    while (n)
        out[len++] = tmp[--n];
    return len;
}

/* The head is put together from its pieces rather than printed: every
 * request's answer goes through here, and a printf of it (measured, then
 * written) was two passes of the format engine per response. */
int wx_respond(wx_buf *out, int status, const char *body, size_t body_len, bool close, const char *allow)
{
    static const char ctype[] = "\r\nContent-Type: application/json\r\nContent-Length: ";
    static const char conn_close[] = "Connection: close\r\n";
    static const char allow_name[] = "Allow: ";
    const char *text = wx_status_text(status);
    size_t text_len = strlen(text), allow_len = allow ? strlen(allow) : 0;
    char num[48];
    size_t need = 9 + 24 + 1 + text_len + sizeof ctype + 24 + 2 + sizeof conn_close + sizeof allow_name + allow_len +
                  2 + 2 + body_len;
    if (buf_reserve(out, need) < 0)
        return -ENOMEM;
    char *p = out->p + out->len;
#define PUT(s, n) (memcpy(p, (s), (n)), p += (n))
    PUT("HTTP/1.1 ", 9);
    PUT(num, wx_fmt_int(num, status));
    *p++ = ' ';
    PUT(text, text_len);
    PUT(ctype, sizeof ctype - 1);
    PUT(num, wx_fmt_int(num, (long long)body_len));
    PUT("\r\n", 2);
    if (close)
        PUT(conn_close, sizeof conn_close - 1);
    if (allow) {
        PUT(allow_name, sizeof allow_name - 1);
        PUT(allow, allow_len);
        PUT("\r\n", 2);
    }
    PUT("\r\n", 2);
    PUT(body, body_len);
#undef PUT
    out->len = (size_t)(p - out->p);
    out->p[out->len] = 0;
    return 0;
}

bool wx_status_closes(int status) { return status == 400 || status == 408 || status == 413 || status == 431; }

int wx_respond_error(wx_buf *out, int status, const char *reason, bool close, const char *allow)
{
    close = close || wx_status_closes(status);
    json_t *o = json_pack("{s:s}", "error", reason ? reason : wx_status_text(status));
    if (!o) /* a reason quoting the client's bytes that are not UTF-8 */
        o = json_pack("{s:s}", "error", wx_status_text(status));
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    int r = s ? wx_respond(out, status, s, strlen(s), close, allow) : -ENOMEM;
    free(s);
    return r;
}
