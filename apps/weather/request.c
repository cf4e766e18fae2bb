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

/* The deepest nesting of arrays and objects in a JSON text (outside its
 * strings).  jansson's parser recurses once per level (up to 2048), and a
 * connection's task has a small stack: a body is refused before it is
 * parsed when it nests deeper than a readings document ever does. */
static int json_depth(const char *p, size_t len)
{
    int depth = 0, max = 0;
    bool in_string = false;
    for (size_t i = 0; i < len; i++) {
        char ch = p[i];
        if (in_string) {
            if (ch == '\\')
                i++;
            else if (ch == '"')
                in_string = false;
        } else if (ch == '"') {
            in_string = true;
        } else if (ch == '[' || ch == '{') {
            if (++depth > max)
                max = depth;
        } else if (ch == ']' || ch == '}') {
            depth--;
        }
    }
    return max;
}

int wx_parse_readings(const char *body, size_t len, const wx_cities *cities, int64_t now_ms, wx_parsed_reading *out,
                      size_t *n, char *reason, size_t reason_len)
{
    json_error_t jerr;
    int status = 0;
    *n = 0;
    if (json_depth(body, len) > WX_MAX_JSON_DEPTH) {
        snprintf(reason, reason_len, "malformed JSON: nested deeper than %d levels", WX_MAX_JSON_DEPTH);
        return 400;
    }
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        snprintf(reason, reason_len, "malformed JSON: %s", jerr.text);
        return 400;
    }
    json_t *arr = json_object_get(root, "readings");
    size_t count = json_array_size(arr);
    if (!json_is_array(arr)) {
        snprintf(reason, reason_len, "\"readings\" must be an array");
        status = 400;
        goto out;
    }
    if (count == 0 || count > WX_MAX_READINGS) {
        snprintf(reason, reason_len, "\"readings\" must hold 1 to %d readings", WX_MAX_READINGS);
        status = 400;
        goto out;
    }
    const char *unknown = NULL;
    for (size_t i = 0; i < count; i++) {
        json_t *r = json_array_get(arr, i);
        json_t *city = json_object_get(r, "city");
        json_t *temp = json_object_get(r, "temperature");
        json_t *time = json_object_get(r, "time");
        if (!json_is_object(r) || !json_is_string(city) || !json_is_number(temp) ||
            (time && !json_is_integer(time))) {
            snprintf(reason, reason_len,
                     "reading %zu: needs \"city\" (string), \"temperature\" (number), optional \"time\" (integer ms)",
                     i);
            status = 400;
            goto out;
        }
        double t = json_number_value(temp);
        if (!isfinite(t)) {
            snprintf(reason, reason_len, "reading %zu: temperature is not a finite number", i);
            status = 400;
            goto out;
        }
        if (time && json_integer_value(time) < 0) {
            snprintf(reason, reason_len, "reading %zu: time is negative", i);
            status = 400;
            goto out;
        }
        int idx = wx_city_find(cities, json_string_value(city), json_string_length(city));
        if (idx < 0) {
            if (!unknown)
                unknown = json_string_value(city);
            continue;
        }
        out[*n].city = idx;
        out[*n].temperature = t;
        out[*n].time_ms = time ? (int64_t)json_integer_value(time) : now_ms;
        (*n)++;
    }
    if (unknown) {
        /* Nothing of the request is stored: the caller sees 404 and no
         * readings. */
        snprintf(reason, reason_len, "unknown city: %.64s", unknown);
        *n = 0;
        status = 404;
    }
out:
    if (status)
        *n = 0;
    json_decref(root);
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

int wx_respond(wx_buf *out, int status, const char *body, size_t body_len, bool close, const char *allow)
{
    if (wx_buf_printf(out, "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n%s%s%s%s\r\n",
                      status, wx_status_text(status), body_len, close ? "Connection: close\r\n" : "",
                      allow ? "Allow: " : "", allow ? allow : "", allow ? "\r\n" : "") < 0)
        return -ENOMEM;
    return wx_buf_append(out, body, body_len);
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
