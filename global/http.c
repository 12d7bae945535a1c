/* The one HTTP client: libcurl set up once, for every caller, with the rules of global/http.h. */
#include "global/http.h"
#include "global/config.h"
#include "lib/conn.h"
#include "lib/vendor.h"
#include <curl/curl.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#define HTTP_CONNECT_TIMEOUT_S 30L
#define HTTP_TOTAL_TIMEOUT_S 600L         /* a 30 MB upload over a slow line */
#define HTTP_LOW_SPEED_TIME_S 60L         /* ... but not one that has stalled */
#define HTTP_RETRY_AT_MAX_S 100000000000LL  /* numbers past this are not times */

struct http_client {
  CURL *curl;
  struct http_opts o;
  struct buf body;
  struct http_response *resp;            /* the request under way */
  int plain;                             /* the request under way is plain http */
  int refused;                           /* ... and its address was not loopback */
  int signed_v4;                         /* requests are SigV4-signed */
  char errbuf[CURL_ERROR_SIZE];
};

/* Plain http goes to loopback only, whatever the name in the URL resolved to. */
static curl_socket_t on_open_socket(void *arg, curlsocktype purpose, struct curl_sockaddr *a)
{
  struct http_client *c = arg;
  (void)purpose;
  if(c->plain) {
    int loopback = 0;
    if(a->family == AF_INET)
      loopback = (ntohl(((const struct sockaddr_in *)&a->addr)->sin_addr.s_addr) >> 24) == 127;
    else if(a->family == AF_INET6)
      loopback = IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)&a->addr)->sin6_addr);
    if(!loopback) {
      c->refused = 1;
      return CURL_SOCKET_BAD;
    }
  }
  return socket(a->family, a->socktype, a->protocol);
}

static int on_progress(void *arg, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow)
{
  struct http_client *c = arg;
  (void)dltotal;
  (void)dlnow;
  (void)ultotal;
  (void)ulnow;
  /* a shutdown does not wait for a silent API; the request may be one the API is taking, so
   * only the last stage of the stop cuts it */
  return conn_cancelled(CONN_CANCEL_LATE) || (c->o.stop && c->o.stop(c->o.stop_arg));
}

enum http_result http_client_new(const struct http_opts *o, struct http_client **out)
{
  struct http_client *c;
  enum http_result result = HTTP_FAILED;
  *out = NULL;
  vendor_curl_start();
  c = calloc(1, sizeof(*c));
  if(!c)
    return HTTP_FAILED;
  c->o = *o;
  if(!c->o.connect_timeout_s)
    c->o.connect_timeout_s = HTTP_CONNECT_TIMEOUT_S;
  if(!c->o.timeout_s)
    c->o.timeout_s = HTTP_TOTAL_TIMEOUT_S;
  if(!c->o.low_speed_time_s)
    c->o.low_speed_time_s = HTTP_LOW_SPEED_TIME_S;
  buf_init(&c->body, c->o.max_body);
  c->curl = curl_easy_init();
  if(!c->curl)
    goto out;
  /* verification is not configurable on purpose: a key over an unverified channel is a key
   * given away; ca_file is for private CAs (and the tests). No redirects: a key is sent to the
   * URL it was configured for and nowhere else. */
  if(curl_easy_setopt(c->curl, CURLOPT_SSL_VERIFYPEER, 1L) ||
     curl_easy_setopt(c->curl, CURLOPT_SSL_VERIFYHOST, 2L) ||
     (c->o.ca_file && curl_easy_setopt(c->curl, CURLOPT_CAINFO, c->o.ca_file)) ||
     curl_easy_setopt(c->curl, CURLOPT_SSLVERSION, c->o.tls_min == HTTP_TLS_1_3 ?
                      (long)CURL_SSLVERSION_TLSv1_3 : (long)CURL_SSLVERSION_TLSv1_2) ||
     curl_easy_setopt(c->curl, CURLOPT_PROTOCOLS_STR, "https,http") ||
     curl_easy_setopt(c->curl, CURLOPT_FOLLOWLOCATION, 0L) ||
     curl_easy_setopt(c->curl, CURLOPT_NOSIGNAL, 1L) ||
     curl_easy_setopt(c->curl, CURLOPT_CONNECTTIMEOUT, c->o.connect_timeout_s) ||
     curl_easy_setopt(c->curl, CURLOPT_TIMEOUT, c->o.timeout_s) ||
     curl_easy_setopt(c->curl, CURLOPT_LOW_SPEED_LIMIT, 1L) ||
     curl_easy_setopt(c->curl, CURLOPT_LOW_SPEED_TIME, c->o.low_speed_time_s) ||
     curl_easy_setopt(c->curl, CURLOPT_TCP_KEEPALIVE, 1L) ||
     curl_easy_setopt(c->curl, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS) ||
     curl_easy_setopt(c->curl, CURLOPT_USERAGENT, "Postern") ||
     curl_easy_setopt(c->curl, CURLOPT_ERRORBUFFER, c->errbuf) ||
     curl_easy_setopt(c->curl, CURLOPT_OPENSOCKETFUNCTION, on_open_socket) ||
     curl_easy_setopt(c->curl, CURLOPT_OPENSOCKETDATA, c) ||
     /* a large body goes at once: the APIs answer at once anyway, and a signed request must
      * not carry an "Expect:" header of its own (see http_client_request) */
     curl_easy_setopt(c->curl, CURLOPT_EXPECT_100_TIMEOUT_MS, 0L))
    goto out;
  if((curl_easy_setopt(c->curl, CURLOPT_NOPROGRESS, 0L) ||
      curl_easy_setopt(c->curl, CURLOPT_XFERINFOFUNCTION, on_progress) ||
      curl_easy_setopt(c->curl, CURLOPT_XFERINFODATA, c)))
    goto out;
  /* A benchmark knob, not a setting: tests/bench/bench_sendgrid.py measures what keep-alive
   * is worth by turning it off (a new connection, and TLS handshake, for every request). */
  if(getenv("POSTERN_BENCH_HTTP_NO_REUSE") &&
     (curl_easy_setopt(c->curl, CURLOPT_FORBID_REUSE, 1L) ||
      curl_easy_setopt(c->curl, CURLOPT_FRESH_CONNECT, 1L)))
    goto out;
  *out = c;
  c = NULL;
  result = HTTP_OK;
out:
  http_client_free(c);
  return result;
}

enum http_result http_client_sigv4(struct http_client *c, const char *param, const char *key,
                                   const char *secret)
{
  if(curl_easy_setopt(c->curl, CURLOPT_AWS_SIGV4, param) ||
     curl_easy_setopt(c->curl, CURLOPT_USERNAME, key) ||
     curl_easy_setopt(c->curl, CURLOPT_PASSWORD, secret))
    return HTTP_FAILED;
  c->signed_v4 = 1;
  return HTTP_OK;
}

enum http_result http_client_basic(struct http_client *c, const char *user, const char *password)
{
  if(curl_easy_setopt(c->curl, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC) ||
     curl_easy_setopt(c->curl, CURLOPT_USERNAME, user) ||
     curl_easy_setopt(c->curl, CURLOPT_PASSWORD, password))
    return HTTP_FAILED;
  return HTTP_OK;
}

static size_t on_body(char *p, size_t size, size_t nmemb, void *arg)
{
  struct http_client *c = arg;
  size_t n = size * nmemb, room = c->body.max - c->body.len;
  if(n > room) {
    /* keep the start, and stop reading: an answer past the cap is not downloaded to its end */
    if(room && buf_add(&c->body, p, room) != BUF_OK)
      return 0;
    c->resp->truncated = 1;
    return 0;
  }
  if(buf_add(&c->body, p, n) != BUF_OK)
    return 0;
  return n;
}

/* "Name: value" for name, the value trimmed (printable ASCII) into out; 0 when it is that
 * header. */
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
    if(*s < '0' || *s > '9' || v > HTTP_RETRY_AT_MAX_S)
      return -1;
    v = v * 10 + (*s - '0');
  }
  return v;
}

static size_t on_header(char *p, size_t size, size_t nmemb, void *arg)
{
  struct http_client *c = arg;
  struct http_response *resp = c->resp;
  size_t n = size * nmemb, i;
  char v[HTTP_KEPT_VALUE];
  long long now = (long long)time(NULL), x;
  for(i = 0; i < HTTP_KEEP_MAX; i++)
    if(c->o.keep[i] && header_is(p, n, c->o.keep[i], v, sizeof(v)) == 0) {
      str_copy(resp->kept[i], sizeof(resp->kept[i]), v);
      return n;
    }
  if(header_is(p, n, "X-RateLimit-Reset", v, sizeof(v)) == 0 && (x = parse_num(v)) >= 0)
    /* SendGrid sends epoch seconds; a small number can only be seconds from now */
    resp->retry_at_ms = (x > 1000000000LL ? x : now + x) * 1000LL;
  else if(header_is(p, n, "Retry-After", v, sizeof(v)) == 0 && (x = parse_num(v)) >= 0 &&
          !resp->retry_at_ms)
    resp->retry_at_ms = (now + x) * 1000LL;
  return n;
}

static enum http_result fail(struct http_response *resp, const char *why)
{
  str_copy(resp->error, sizeof(resp->error), why);
  return HTTP_FAILED;
}

enum http_result http_client_request(struct http_client *c, const char *method,
                                     const char *url, const char *const *headers,
                                     const char *body, size_t len, struct http_response *resp)
{
  struct curl_slist *hl = NULL, *nl;
  CURLcode rc;
  enum http_result result = HTTP_FAILED;
  size_t i;

  memset(resp, 0, sizeof(*resp));
  resp->wipe = c->o.wipe;
  buf_reset(&c->body);
  c->resp = resp;
  c->errbuf[0] = '\0';
  c->refused = 0;
  /* answers that hold secrets are read into memory that never moves (no realloc leaves a
   * copy behind) */
  if(c->o.wipe && buf_reserve(&c->body, c->o.max_body)) {
    fail(resp, "out of memory");
    goto out;
  }
  if(config_url_cleartext(url)) {
    snprintf(resp->error, sizeof(resp->error), "plain http to a host that is not this machine "
             "would send in clear what the request carries: use https://");
    goto out;
  }
  c->plain = !strncasecmp(url, "http://", 7);
  for(i = 0; headers && headers[i]; i++) {
    /* a value from elsewhere (a token, an id) must not end the line and add one of its own */
    if(strpbrk(headers[i], "\r\n")) {
      fail(resp, "a request header holds CR or LF; not sent");
      goto out;
    }
    nl = curl_slist_append(hl, headers[i]);
    if(!nl) {
      fail(resp, "out of memory");
      goto out;
    }
    hl = nl;
  }
  /* No "Expect: 100-continue" round trip for large bodies (EXPECT_100_TIMEOUT_MS 0 sends at
   * once). An empty "Expect:" that removes the header is not used on signed requests: libcurl
   * 7.88 signs it as a header ("expect:") and then does not send it, and the signature fails. */
  if(!c->signed_v4) {
    nl = curl_slist_append(hl, "Expect:");
    if(!nl) {
      fail(resp, "out of memory");
      goto out;
    }
    hl = nl;
  }
  if(curl_easy_setopt(c->curl, CURLOPT_URL, url) ||
     curl_easy_setopt(c->curl, CURLOPT_HTTPHEADER, hl) ||
     curl_easy_setopt(c->curl, CURLOPT_WRITEFUNCTION, on_body) ||
     curl_easy_setopt(c->curl, CURLOPT_WRITEDATA, c) ||
     curl_easy_setopt(c->curl, CURLOPT_HEADERFUNCTION, on_header) ||
     curl_easy_setopt(c->curl, CURLOPT_HEADERDATA, c)) {
    fail(resp, "cannot set up the request");
    goto out;
  }
  if(strcmp(method, "GET")) {
    /* PATCH and PUT go as a POST with its verb replaced: the body is sent the same way */
    if(curl_easy_setopt(c->curl, CURLOPT_POST, 1L) ||
       curl_easy_setopt(c->curl, CURLOPT_CUSTOMREQUEST, strcmp(method, "POST") ? method : NULL) ||
       curl_easy_setopt(c->curl, CURLOPT_POSTFIELDS, body ? body : "") ||
       curl_easy_setopt(c->curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len)) {
      fail(resp, "cannot set up the request");
      goto out;
    }
  }
  else if(curl_easy_setopt(c->curl, CURLOPT_CUSTOMREQUEST, NULL) ||
          curl_easy_setopt(c->curl, CURLOPT_HTTPGET, 1L)) {
    fail(resp, "cannot set up the request");
    goto out;
  }
  rc = curl_easy_perform(c->curl);
  curl_easy_getinfo(c->curl, CURLINFO_RESPONSE_CODE, &resp->status);
  if(c->refused) {
    resp->status = 0;
    fail(resp, "plain http to an address that is not this machine's (loopback) is refused: "
         "use https://");
    goto out;
  }
  /* a body cut at the cap ends the transfer with a write error: the answer (status, the start
   * of its body) is still the answer */
  if(rc && !(rc == CURLE_WRITE_ERROR && resp->truncated)) {
    resp->status = 0;
    snprintf(resp->error, sizeof(resp->error), "%s", c->errbuf[0] ? c->errbuf :
             curl_easy_strerror(rc));
    goto out;
  }
  if(!resp->status) {
    fail(resp, "no HTTP status in the answer");
    goto out;
  }
  result = HTTP_OK;
out:
  resp->body = buf_steal(&c->body, &resp->len);
  if(!resp->body) {
    resp->body = str_dup_n("", 0);
    resp->len = 0;
  }
  /* the headers may hold a key: libcurl must not keep pointers to freed (wiped) memory */
  curl_easy_setopt(c->curl, CURLOPT_HTTPHEADER, NULL);
  curl_easy_setopt(c->curl, CURLOPT_POSTFIELDS, NULL);
  curl_slist_free_all(hl);
  c->resp = NULL;
  return result;
}

void http_response_free(struct http_response *resp)
{
  if(resp->body && resp->wipe)
    memset(resp->body, 0, resp->len);
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
  if(c->body.ptr && c->o.wipe)
    memset(c->body.ptr, 0, c->body.alloc);
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

int http_form_add(struct buf *b, const char *key, const char *value)
{
  char *e;
  int result;
  if(!value)
    return 0;
  vendor_curl_start();
  e = curl_easy_escape(NULL, value, 0);
  if(!e)
    return -1;
  result = buf_addf(b, "%s%s=%s", b->len ? "&" : "", key, e);
  memset(e, 0, strlen(e));
  curl_free(e);
  return result;
}
