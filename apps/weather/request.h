/*
 * The weather service's request path without sockets: HTTP/1.1 request
 * parsing (on libhttp-parser), routing, the validation of a POST's JSON
 * body (on yajl's event parser) and the writing of responses (jansson
 * spells the error bodies).  The server feeds it the
 * bytes it reads; the fuzz target feeds it arbitrary bytes.  Nothing here
 * suspends, locks or touches the database.
 *
 * Limits (protocol): the request line and headers together at most
 * WX_MAX_HEADER_BYTES (else 431), a body at most WX_MAX_BODY_BYTES (else
 * 413, decided from Content-Length before any of the body is read when it
 * is given), a POST to /readings needs Content-Length or chunked encoding
 * (else 411: decided by the router, so a POST to a GET-only path is 405),
 * anything the parser rejects is 400.  A request that fails any of these
 * ends the connection after its answer.
 */
#ifndef WX_REQUEST_H
#define WX_REQUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <http_parser.h>

#include "storage.h"

#define WX_MAX_HEADER_BYTES 8192
#define WX_MAX_BODY_BYTES (1 << 20)
#define WX_MAX_READINGS 1000
#define WX_PATH_MAX 512
#define WX_MAX_JSON_DEPTH 16 /* a readings document nests 3 deep */

/* ---- a growable byte buffer ---- */
typedef struct wx_buf {
    char *p;
    size_t len, cap;
} wx_buf;

/* 0, or -ENOMEM (the buffer is unchanged). */
int wx_buf_append(wx_buf *b, const void *data, size_t n);
int wx_buf_printf(wx_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void wx_buf_free(wx_buf *b);

/* ---- parsing ---- */
typedef struct wx_request {
    enum http_method method;
    char path[WX_PATH_MAX]; /* without the query string, NUL-terminated */
    size_t path_len;
    wx_buf body;
    bool keep_alive; /* known once the request is complete */
    bool no_length;  /* a POST with neither Content-Length nor chunked encoding */
} wx_request;

typedef enum wx_parse_state {
    WX_PARSE_MORE,  /* everything given was consumed; feed more */
    WX_PARSE_DONE,  /* a request is complete (pipelined bytes may follow) */
    WX_PARSE_ERROR, /* answer status/reason and close the connection */
} wx_parse_state;

typedef struct wx_parser {
    http_parser hp;
    wx_request req;
    size_t head_bytes;     /* header bytes of the current request so far */
    bool started;          /* some byte of the current request arrived */
    bool headers_done;
    bool complete;
    bool path_too_long;
    bool expect_continue;  /* "Expect: 100-continue" was sent */
    bool in_value;         /* the last header callback was a value */
    char field[16];        /* the current header's name (truncated) */
    size_t field_len;
    char value[16];        /* the start of its value */
    size_t value_len;
    int status;            /* the error status once WX_PARSE_ERROR */
    const char *reason;
} wx_parser;

void wx_parser_init(wx_parser *ps);
void wx_parser_free(wx_parser *ps);
/* Feeds n bytes; returns how many were consumed and the state in *state.
 * After WX_PARSE_DONE the caller answers the request, then calls
 * wx_parser_next before feeding the rest.  After WX_PARSE_ERROR the
 * parser is unusable. */
size_t wx_parser_feed(wx_parser *ps, const char *data, size_t n, wx_parse_state *state);
/* Starts the next request on the same connection. */
void wx_parser_next(wx_parser *ps);
/* True if some byte of a request not yet complete has arrived. */
static inline bool wx_parser_started(const wx_parser *ps) { return ps->started; }

/* ---- routing ---- */
typedef enum wx_route_kind {
    WX_ROUTE_NONE,
    WX_ROUTE_POST_READINGS,
    WX_ROUTE_GET_WEATHER,
    WX_ROUTE_HEALTHZ,
    WX_ROUTE_METRICS,
} wx_route_kind;

typedef struct wx_route {
    wx_route_kind kind;
    int status;         /* 0, or the error to answer: 404, 405, 411 */
    const char *reason; /* with an error */
    const char *allow;  /* with 405 */
    const char *city;   /* GET /weather/{city}: the name, in the request's path */
} wx_route;

/* Routes a complete request; the route points into req. */
void wx_route_request(wx_request *req, wx_route *out);

/* ---- cities and readings ---- */
typedef struct wx_cities {
    const wx_city *v; /* sorted by name */
    int n;
} wx_cities;

/* The index of the city named name (len bytes), or -1. */
int wx_city_find(const wx_cities *c, const char *name, size_t len);

typedef struct wx_parsed_reading {
    int city; /* index into the city table */
    double temperature;
    int64_t time_ms;
} wx_parsed_reading;

/* Validates a POST /readings body.  On success returns 0 and fills out[0..
 * *n) (out has room for WX_MAX_READINGS); readings without a time get
 * now_ms.  Otherwise returns 400 (malformed JSON or fields, 0 or more than
 * WX_MAX_READINGS readings, nesting deeper than WX_MAX_JSON_DEPTH) or 404
 * (an unknown city), or 503 when out of memory, with a reason written to
 * reason (reason_len bytes). */
int wx_parse_readings(const char *body, size_t len, const wx_cities *cities, int64_t now_ms, wx_parsed_reading *out,
                      size_t *n, char *reason, size_t reason_len);

/* ---- responses ---- */
const char *wx_status_text(int status);
/* The decimal digits of v (with a '-' if negative) at out, which has room
 * for 21 bytes; returns how many, without a NUL. */
size_t wx_fmt_int(char *out, long long v);
/* Appends a whole response with a JSON body; close adds Connection: close;
 * allow (or NULL) adds an Allow header.  0 or -ENOMEM. */
int wx_respond(wx_buf *out, int status, const char *body, size_t body_len, bool close, const char *allow);
/* True for the statuses after which the connection is closed (400, 408,
 * 413, 431): the rest of what the client sent cannot be trusted to start a
 * request. */
bool wx_status_closes(int status);
/* Appends {"error":reason} with the status (and Connection: close when
 * wx_status_closes says so). */
int wx_respond_error(wx_buf *out, int status, const char *reason, bool close, const char *allow);

#endif
