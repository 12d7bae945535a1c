/* The HTTP side of the API transports (SendGrid, SES, Graph): one libcurl easy handle per
 * session so connections are reused, bounded answers, the rate-limit headers, TLS always
 * verified. Nothing here knows a provider. */
#include "relay/relay_int.h"
#include "lib/vendor.h"
#include "lib/buf.h"
#include <curl/curl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define HTTP_CONNECT_TIMEOUT_S 30L
#define HTTP_TOTAL_TIMEOUT_S 600L         /* a 30 MB upload over a slow line */
#define HTTP_LOW_SPEED_TIME_S 60L         /* ... but not one that has stalled */

struct http_client {
  CURL *curl;
  struct buf body;
  struct http_response *resp;            /* the request under way */
  char errbuf[CURL_ERROR_SIZE];
};

int http_client_new(const struct cfg_upstream *up, struct http_client **out)
{
  struct http_client *c;
  int result = -1;
  *out = NULL;
  vendor_curl_start();
  c = calloc(1, sizeof(*c));
  if(!c)
    return -1;
  buf_init(&c->body, HTTP_BODY_MAX);
  c->curl = curl_easy_init();
  if(!c->curl)
    goto out;
  /* verification is not configurable on purpose: an API key over an unverified channel is a
   * key given away; ca_file is for private CAs (and the tests) */
  if(curl_easy_setopt(c->curl, CURLOPT_SSL_VERIFYPEER, 1L) ||
     curl_easy_setopt(c->curl, CURLOPT_SSL_VERIFYHOST, 2L) ||
     (up->ca_file && curl_easy_setopt(c->curl, CURLOPT_CAINFO, up->ca_file)) ||
     curl_easy_setopt(c->curl, CURLOPT_PROTOCOLS_STR, "https,http") ||
     curl_easy_setopt(c->curl, CURLOPT_NOSIGNAL, 1L) ||
     curl_easy_setopt(c->curl, CURLOPT_CONNECTTIMEOUT, HTTP_CONNECT_TIMEOUT_S) ||
     curl_easy_setopt(c->curl, CURLOPT_TIMEOUT, HTTP_TOTAL_TIMEOUT_S) ||
     curl_easy_setopt(c->curl, CURLOPT_LOW_SPEED_LIMIT, 1L) ||
     curl_easy_setopt(c->curl, CURLOPT_LOW_SPEED_TIME, HTTP_LOW_SPEED_TIME_S) ||
     curl_easy_setopt(c->curl, CURLOPT_TCP_KEEPALIVE, 1L) ||
     curl_easy_setopt(c->curl, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS) ||
     curl_easy_setopt(c->curl, CURLOPT_USERAGENT, "Postern") ||
     curl_easy_setopt(c->curl, CURLOPT_ERRORBUFFER, c->errbuf))
    goto out;
  /* A benchmark knob, not a setting: tests/bench/bench_sendgrid.py measures what keep-alive
   * is worth by turning it off (a new connection, and TLS handshake, for every request). */
  if(getenv("POSTERN_BENCH_HTTP_NO_REUSE") &&
     (curl_easy_setopt(c->curl, CURLOPT_FORBID_REUSE, 1L) ||
      curl_easy_setopt(c->curl, CURLOPT_FRESH_CONNECT, 1L)))
    goto out;
  if(up->tls_min_version &&
     curl_easy_setopt(c->curl, CURLOPT_SSLVERSION, !strcmp(up->tls_min_version, "TLSv1.3") ?
                      (long)CURL_SSLVERSION_TLSv1_3 : (long)CURL_SSLVERSION_TLSv1_2))
    goto out;
  *out = c;
  c = NULL;
  result = 0;
out:
  http_client_free(c);
  return result;
}

int http_client_sigv4(struct http_client *c, const char *param, const char *key,
                      const char *secret)
{
  if(curl_easy_setopt(c->curl, CURLOPT_AWS_SIGV4, param) ||
     curl_easy_setopt(c->curl, CURLOPT_USERNAME, key) ||
     curl_easy_setopt(c->curl, CURLOPT_PASSWORD, secret))
    return -1;
  return 0;
}

static size_t on_body(char *p, size_t size, size_t nmemb, void *arg)
{
  struct http_client *c = arg;
  size_t n = size * nmemb, room = c->body.max - c->body.len;
  /* an answer larger than we keep is cut, not refused: only its start is ever read */
  if(buf_add(&c->body, p, n < room ? n : room) != BUF_OK)
    return 0;
  return n;
}

/* "Name: value" for name, the value trimmed into out; 0 when it is that header. */
static int header_is(const char *line, size_t n, const char *name, char *out, size_t outsz)
{
  size_t nl = strlen(name), i, o = 0;
  if(n <= nl || line[nl] != ':' || strncasecmp(line, name, nl))
    return -1;
  for(i = nl + 1; i < n && (line[i] == ' ' || line[i] == '\t'); i++)
    ;
  for(; i < n && line[i] != '\r' && line[i] != '\n' && o + 1 < outsz; i++)
    if(line[i] > 32 && line[i] < 127)
      out[o++] = line[i];
  out[o] = '\0';
  return 0;
}

static long long parse_num(const char *s)
{
  long long v = 0;
  if(!*s)
    return -1;
  for(; *s; s++) {
    if(*s == '.')
      break;          /* some send fractional seconds */
    if(*s < '0' || *s > '9' || v > 100000000000LL)
      return -1;
    v = v * 10 + (*s - '0');
  }
  return v;
}

static size_t on_header(char *p, size_t size, size_t nmemb, void *arg)
{
  struct http_client *c = arg;
  struct http_response *resp = c->resp;
  size_t n = size * nmemb;
  char v[128];
  long long now = (long long)time(NULL), x;
  if(header_is(p, n, "X-Message-Id", v, sizeof(v)) == 0)
    str_copy(resp->message_id, sizeof(resp->message_id), v);
  else if(header_is(p, n, "x-amzn-ErrorType", v, sizeof(v)) == 0) {
    v[strcspn(v, ":")] = '\0';
    str_copy(resp->error_type, sizeof(resp->error_type), v);
  }
  else if(header_is(p, n, "X-RateLimit-Reset", v, sizeof(v)) == 0 && (x = parse_num(v)) >= 0)
    /* SendGrid sends epoch seconds; a small number can only be seconds from now */
    resp->retry_at_ms = (x > 1000000000LL ? x : now + x) * 1000LL;
  else if(header_is(p, n, "Retry-After", v, sizeof(v)) == 0 && (x = parse_num(v)) >= 0 &&
          !resp->retry_at_ms)
    resp->retry_at_ms = (now + x) * 1000LL;
  return n;
}

int http_client_request(struct http_client *c, const char *method, const char *url,
                        const char *const *headers, const char *body, size_t len,
                        struct http_response *resp)
{
  struct curl_slist *hl = NULL, *nl;
  CURLcode rc;
  int result = -1;
  size_t i;

  memset(resp, 0, sizeof(*resp));
  buf_reset(&c->body);
  c->resp = resp;
  c->errbuf[0] = '\0';
  for(i = 0; headers && headers[i]; i++) {
    nl = curl_slist_append(hl, headers[i]);
    if(!nl) {
      str_copy(resp->error, sizeof(resp->error), "out of memory");
      goto out;
    }
    hl = nl;
  }
  /* no "Expect: 100-continue" round trip for large bodies: the APIs answer at once anyway */
  nl = curl_slist_append(hl, "Expect:");
  if(!nl) {
    str_copy(resp->error, sizeof(resp->error), "out of memory");
    goto out;
  }
  hl = nl;
  if(curl_easy_setopt(c->curl, CURLOPT_URL, url) ||
     curl_easy_setopt(c->curl, CURLOPT_HTTPHEADER, hl) ||
     curl_easy_setopt(c->curl, CURLOPT_WRITEFUNCTION, on_body) ||
     curl_easy_setopt(c->curl, CURLOPT_WRITEDATA, c) ||
     curl_easy_setopt(c->curl, CURLOPT_HEADERFUNCTION, on_header) ||
     curl_easy_setopt(c->curl, CURLOPT_HEADERDATA, c)) {
    str_copy(resp->error, sizeof(resp->error), "cannot set up the request");
    goto out;
  }
  if(strcmp(method, "GET")) {
    /* PATCH and PUT go as a POST with its verb replaced: the body is sent the same way */
    if(curl_easy_setopt(c->curl, CURLOPT_POST, 1L) ||
       curl_easy_setopt(c->curl, CURLOPT_CUSTOMREQUEST, strcmp(method, "POST") ? method : NULL) ||
       curl_easy_setopt(c->curl, CURLOPT_POSTFIELDS, body) ||
       curl_easy_setopt(c->curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len)) {
      str_copy(resp->error, sizeof(resp->error), "cannot set up the request");
      goto out;
    }
  }
  else if(curl_easy_setopt(c->curl, CURLOPT_CUSTOMREQUEST, NULL) ||
          curl_easy_setopt(c->curl, CURLOPT_HTTPGET, 1L)) {
    str_copy(resp->error, sizeof(resp->error), "cannot set up the request");
    goto out;
  }
  rc = curl_easy_perform(c->curl);
  if(rc) {
    snprintf(resp->error, sizeof(resp->error), "%s", c->errbuf[0] ? c->errbuf :
             curl_easy_strerror(rc));
    goto out;
  }
  curl_easy_getinfo(c->curl, CURLINFO_RESPONSE_CODE, &resp->status);
  resp->body = buf_steal(&c->body, &resp->len);
  if(!resp->body) {
    resp->body = str_dup_n("", 0);
    resp->len = 0;
  }
  result = resp->status ? 0 : -1;
  if(result)
    str_copy(resp->error, sizeof(resp->error), "no HTTP status in the answer");
out:
  /* the headers may hold a key: libcurl must not keep pointers to freed (wiped) memory */
  curl_easy_setopt(c->curl, CURLOPT_HTTPHEADER, NULL);
  curl_easy_setopt(c->curl, CURLOPT_POSTFIELDS, NULL);
  curl_slist_free_all(hl);
  c->resp = NULL;
  return result;
}

int http_client_basic(struct http_client *c, const char *user, const char *password)
{
  if(curl_easy_setopt(c->curl, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC) ||
     curl_easy_setopt(c->curl, CURLOPT_USERNAME, user) ||
     curl_easy_setopt(c->curl, CURLOPT_PASSWORD, password))
    return -1;
  return 0;
}

void http_response_free(struct http_response *resp)
{
  free(resp->body);
  resp->body = NULL;
  resp->len = 0;
}

void http_client_free(struct http_client *c)
{
  if(!c)
    return;
  if(c->curl)
    curl_easy_cleanup(c->curl);
  buf_free(&c->body);
  free(c);
}

void http_url_host(const char *url, char *out, size_t outsz)
{
  const char *p = strstr(url, "://"), *e;
  size_t n;
  p = p ? p + 3 : url;
  e = p + strcspn(p, "/?#");
  n = (size_t)(e - url);
  if(n + 1 < outsz)
    outsz = n + 1;
  str_copy(out, outsz, url);
}

static void text_add(char *out, size_t outsz, const char *s)
{
  size_t o = strlen(out);
  if(!s || !*s)
    return;
  if(o && o + 2 < outsz) {
    out[o++] = ';';
    out[o++] = ' ';
  }
  for(; *s && o + 1 < outsz; s++)
    out[o++] = (*s >= 32 && *s < 127) ? *s : '?';
  out[o] = '\0';
}

void http_error_text(const struct http_response *resp, char *out, size_t outsz)
{
  json_t *root, *v, *e;
  size_t i;
  if(!outsz)
    return;
  out[0] = '\0';
  if(!resp->body || !resp->len)
    return;
  root = json_loadb(resp->body, resp->len, 0, NULL);
  if(!root)
    return;
  v = json_object_get(root, "errors");
  json_array_foreach(v, i, e)
    text_add(out, outsz, json_string_value(json_object_get(e, "message")));
  text_add(out, outsz, json_string_value(json_object_get(root, "message")));
  text_add(out, outsz, json_string_value(json_object_get(root, "Message")));
  v = json_object_get(root, "error");
  if(json_is_object(v))
    text_add(out, outsz, json_string_value(json_object_get(v, "message")));
  json_decref(root);
}

/* ---- answers -> replies: the same for every API --------------------------------------------- */

void http_replies_fill(struct transport_rcpt *rcpts, size_t from, size_t to,
                       const struct smtp_reply *r, long long retry_at_ms)
{
  size_t i;
  for(i = from; i < to; i++)
    if(!rcpts[i].reply.code) {
      rcpts[i].reply = *r;
      rcpts[i].retry_at_ms = retry_at_ms;
    }
}

int http_answer_reply(const char *api, const char *upstream, const struct http_response *resp,
                      int temporary, const char *accepted, struct smtp_reply *r)
{
  char text[300], type[140] = "";
  long st = resp->status;
  http_error_text(resp, text, sizeof(text));
  if(resp->error_type[0])
    snprintf(type, sizeof(type), " %s", resp->error_type);
  if(st >= 200 && st < 300)
    smtp_reply_set(r, 250, "2.0.0", "Ok: accepted by %s (HTTP %ld)%s%s", api, st,
                   accepted && *accepted ? ", " : "", accepted ? accepted : "");
  else if(st == 401 || st == 403) {
    /* the key or token, not the recipient: the upstream's mail is held (DESIGN.md) */
    smtp_reply_set(r, 535, "5.7.8", "%s refused the credentials of upstream %s (HTTP %ld%s): %s",
                   api, upstream, st, type, text[0] ? text : "no reason given");
    return TRANSPORT_AUTH_FAILED;
  }
  else if(st == 429 || temporary)
    smtp_reply_set(r, 451, "4.7.0", "%s rate limit or sending pause (HTTP %ld%s)%s%s", api,
                   st, type, text[0] ? ": " : "", text);
  else if(st == 413)
    smtp_reply_set(r, 552, "5.3.4", "%s refused the message as too large (HTTP 413%s)%s%s",
                   api, type, text[0] ? ": " : "", text);
  else if(st == 400)
    smtp_reply_set(r, 550, "5.6.0", "%s refused the message (HTTP 400%s): %s", api, type,
                   text[0] ? text : "no reason given");
  else
    /* 5xx, and what we do not know (404 from a wrong api_url...): nothing says it is final */
    smtp_reply_set(r, 451, "4.3.0", "%s answered HTTP %ld%s%s%s", api, st, type,
                   text[0] ? ": " : "", text);
  return 0;
}

void http_batch_init(struct http_batch *b, const char *api, const char *upstream,
                     const char *base, struct transport_rcpt *rcpts, size_t n,
                     struct smtp_reply *r)
{
  b->api = api;
  b->upstream = upstream;
  b->base = base;
  b->rcpts = rcpts;
  b->n = n;
  b->sent = 0;
  b->result = TRANSPORT_OK;
  b->r = r;
}

int http_batch_answer(struct http_batch *b, size_t at, size_t cnt, int got_answer,
                      const struct http_response *resp, int temporary, const char *accepted)
{
  struct smtp_reply one;
  long long retry_at = 0;
  int auth_failed;
  if(!got_answer) {
    smtp_reply_set(&one, 451, "4.4.1", "cannot reach %s at %s: %s", b->api, b->base,
                   resp->error);
    if(!b->sent) {
      /* nothing went out: the session is suspect, the whole attempt fails */
      *b->r = one;
      b->result = TRANSPORT_FAILED;
      return 0;
    }
    http_replies_fill(b->rcpts, at, b->n, &one, 0);
    return 0;
  }
  auth_failed = http_answer_reply(b->api, b->upstream, resp, temporary, accepted, &one);
  if(auth_failed) {
    if(!b->sent) {
      *b->r = one;
      b->result = TRANSPORT_AUTH_FAILED;
      return 0;
    }
    /* part went out already: the rest waits (not held: those recipients are sent) */
    smtp_reply_set(&one, 451, "4.7.0", "%s refused the credentials (HTTP %ld) part way", b->api,
                   resp->status);
    http_replies_fill(b->rcpts, at, b->n, &one, 0);
    return 0;
  }
  if(resp->status == 429)
    retry_at = resp->retry_at_ms;
  http_replies_fill(b->rcpts, at, at + cnt, &one, retry_at);
  if(one.code >= 200 && one.code < 300) {
    b->sent += cnt;
    return 1;
  }
  if(one.code < 500) {
    /* throttled or down: the rest would fare no better now, and waits for the same reset */
    http_replies_fill(b->rcpts, at + cnt, b->n, &one, retry_at);
    return 0;
  }
  return 1;
}
