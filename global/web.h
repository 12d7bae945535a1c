/* What the HTTP listener hands to an application mounted under a prefix (the web console under
 * /console/), and what it gets back: plain structs, so that the listener (inbound/) and the
 * application (console/) need not know each other, and the application never sees
 * libmicrohttpd. The listener keeps what it does for every request: the per-client limits,
 * the lockout after wrong credentials, the body cap. */
#ifndef POSTERN_GLOBAL_WEB_H
#define POSTERN_GLOBAL_WEB_H
#include "lib/buf.h"
#include <stddef.h>
#include <sys/types.h>

#define WEB_BODY_MAX (256u * 1024u)   /* a request body (forms) the listener collects */
#define WEB_HEADERS_MAX 8             /* headers one response may add */
/* A POST here checks a password: the listener reserves the check (and refuses it while the
 * client is locked out) before the application sees it */
#define WEB_LOGIN_PATH "/console/login"

enum web_kind { WEB_HEADER, WEB_COOKIE, WEB_QUERY };

struct web_request {
  const char *method;          /* "GET", "POST", ... */
  const char *path;            /* the whole path, "/console/queue" (no query string) */
  const char *client;          /* the client's printable address, for logs */
  const char *body;            /* the request body (POST), NUL-terminated; "" when none */
  size_t bodylen;
  int secure;                  /* the request came over TLS */
  /* a request header, cookie or query argument by name; NULL when absent */
  const char *(*value)(void *ctx, enum web_kind kind, const char *name);
  void *ctx;
};

/* A response streamed piece by piece (Server-Sent Events): read() fills up to max bytes of
 * out and returns how many, 0 to be called again (after waiting a second at most: the
 * listener can only stop between calls), -1 at the end; done() frees arg once the client has
 * gone or the stream ended. */
struct web_stream {
  ssize_t (*read)(void *arg, char *out, size_t max);
  void (*done)(void *arg);
  void *arg;
};

struct web_response {
  unsigned status;             /* 0: 500 */
  const char *content_type;    /* static */
  struct buf body;             /* initialised by the listener, capped */
  struct { const char *name; char *value; } headers[WEB_HEADERS_MAX];   /* values malloc'd */
  size_t nheaders;
  int auth_failed;             /* wrong credentials: counted for the client's lockout */
  struct web_stream stream;    /* read set: the body is this stream, not body */
};

/* Adds a header (value copied); -1 without memory or room. */
int web_header(struct web_response *r, const char *name, const char *value);
void web_response_free(struct web_response *r);

/* The application's entry point: answers rq in out. Called from the listener's threads, any
 * number at once. */
typedef void (*web_handler)(void *arg, const struct web_request *rq, struct web_response *out);

#endif
