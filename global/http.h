/* The one HTTP client (libcurl) of Postern: the API transports, the OAuth2 token endpoints, the
 * record forwarder and posternctl's provider wiring all make their requests here, so that the
 * rules for every request live in one place:
 *   - https, or plain http to a loopback address only (checked on the URL and again on the
 *     address connected to): a key, a token or a record never crosses a network in clear;
 *   - certificates and host names always verified (ca_file for a private CA), TLS 1.2 or newer;
 *   - bounded answers: reading stops (the transfer is aborted) once max_body bytes are in;
 *   - no redirects, timeouts always set.
 * Nothing here knows a provider. */
#ifndef POSTERN_GLOBAL_HTTP_H
#define POSTERN_GLOBAL_HTTP_H
#include "lib/buf.h"
#include <stddef.h>

#define HTTP_KEEP_MAX 2            /* answer headers a client can be asked to keep */
#define HTTP_KEPT_VALUE 128        /* bytes kept of each one's value */

enum http_tls_min { HTTP_TLS_1_2 = 0, HTTP_TLS_1_3 };

struct http_opts {
  const char *ca_file;             /* a private CA bundle; NULL: the system's */
  enum http_tls_min tls_min;
  long connect_timeout_s;          /* 0: 30 s */
  long timeout_s;                  /* a whole request and its answer; 0: 600 s */
  long low_speed_time_s;           /* a transfer that moves nothing this long fails; 0: 60 s */
  size_t max_body;                 /* the answer kept; reading stops past it (required) */
  int wipe;                        /* answers hold secrets (tokens): wiped when freed */
  const char *keep[HTTP_KEEP_MAX]; /* names of answer headers whose values resp->kept holds */
  /* asked while a transfer runs: non-zero aborts it (shutdown); NULL: never */
  int (*stop)(void *arg);
  void *stop_arg;
};

enum http_result {
  HTTP_OK = 0,                     /* an HTTP answer came (any status) */
  HTTP_FAILED = -1,                /* none did: resp->error says why */
};

struct http_response {
  long status;                     /* HTTP status; 0: no answer (error says why) */
  char *body;                      /* NUL-terminated, at most max_body bytes */
  size_t len;
  int truncated;                   /* the answer was longer than max_body: reading stopped */
  long long retry_at_ms;           /* from X-RateLimit-Reset or Retry-After, wall clock; 0: none */
  char kept[HTTP_KEEP_MAX][HTTP_KEPT_VALUE];  /* opts.keep's header values (printable), or "" */
  char error[256];                 /* why there is no answer */
  int wipe;
};

struct http_client;

/* One client is one libcurl handle: connections are reused between its requests. Not shared
 * between threads. HTTP_OK, or HTTP_FAILED when out of memory. */
enum http_result http_client_new(const struct http_opts *o, struct http_client **out);
void http_client_free(struct http_client *c);
/* Signs every request with SigV4 (e.g. "aws:amz:eu-west-1:ses"); libcurl keeps its own
 * copies, so the caller may wipe key and secret at once. */
enum http_result http_client_sigv4(struct http_client *c, const char *param, const char *key,
                                   const char *secret);
/* Basic authentication on every request; libcurl keeps copies. */
enum http_result http_client_basic(struct http_client *c, const char *user,
                                   const char *password);
/* method "GET", or "POST" or another with a body ("PATCH", "PUT"); headers NULL-terminated
 * "Name: value" lines. HTTP_OK when an answer came; free resp after in both cases. */
enum http_result http_client_request(struct http_client *c, const char *method,
                                     const char *url, const char *const *headers,
                                     const char *body, size_t len, struct http_response *resp);
void http_response_free(struct http_response *resp);

/* "https://host[:port]" of a URL, for log lines */
void http_url_host(const char *url, char *out, size_t outsz);
/* Appends "&key=value" (form-encoded; no "&" first) to b; value NULL adds nothing. The escaped
 * copy is wiped (values are often secrets). 0 ok. */
int  http_form_add(struct buf *b, const char *key, const char *value);

#endif
