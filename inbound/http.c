/* The HTTP listener (libmicrohttpd, one thread per connection so that each request can wait for
 * its group commit): SendGrid Inbound Parse, the SendGrid Event Webhook, Twilio SMS, /healthz
 * and /metrics (Prometheus).
 * Nothing is answered 2xx before what it acknowledges is committed to the store. */
#include "inbound/inbound.h"
#include "auth/auth.h"
#include "tls/tls.h"
#include "lib/buf.h"
#include "lib/conn.h"
#include "lib/log.h"
#include "global/metrics.h"
#include "global/web.h"
#include <microhttpd.h>
#include <pthread.h>
#include <poll.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

/* The per-client limits ([inbound] http_clients_per_ip ...); 0 = no limit. */
struct http_limits {
  long per_ip;                  /* connections at once */
  long rate_per_minute;         /* requests a minute */
  long auth_failures;           /* wrong credentials before the lockout */
  long long lockout_ms;
};

/* What a reload may change: copies (a reload frees the configuration they came from), shared
 * by reference count so that a request finishes with the settings it began with. */
struct http_settings {
  int refs;                     /* under inbound_http.mu */
  char *http_user, *public_url;
  long long event_max_age;
  int auth_none;                /* http_auth = none: no basic auth anywhere */
  int events_basic;             /* events_auth = basic: /events takes basic auth, not a signature */
  /* the digest of "user:password" (HMAC under a fixed key): what a request's credentials are
   * compared with, so that the comparison takes the same time whatever their lengths */
  unsigned char cred_digest[32];
  char *password;               /* http_password_file */
  size_t passwordlen;
  char *event_key;              /* event_public_key_file (PEM or base64 DER) */
  size_t event_keylen;
  /* event_public_key_file is named but not written yet (a first install, before `posternctl
   * sendgrid setup`): /events answers 503 until a SIGHUP finds it */
  char *event_key_missing;
  int event_key_warned;         /* under inbound_http.mu: warned once per settings */
  char *twilio_token;
  size_t twilio_tokenlen;
  size_t max_size;
  struct http_limits lim;
  struct cidr *exempt;          /* http_exempt_networks */
  size_t nexempt;
  long long request_ms;         /* http_request_timeout */
};

/* A refusal anyone on the internet can cause (a forged signature) is logged at most once a
 * minute, with how many went unlogged: a forged post costs its sender a request, not the
 * operator a log line. */
enum log_gate_kind { GATE_EVENTS_SIG, GATE_SMS_SIG, GATE_DEADLINE, GATE_N };
struct log_gate {
  long long last_ms;            /* the latest line; 0 never */
  unsigned long skipped;        /* refusals since then */
};

/* An open connection, for http_request_timeout: MHD's own timeout restarts on every byte, so
 * one byte a minute would hold a connection (and its thread) for ever. */
struct http_conn {
  int fd;
  long long since_ms;           /* the start of its current request; 0 while it is answered */
  int cut;                      /* shut down for taking too long */
  int counted;                  /* holds a place in anvil (not exempt when it came) */
  struct http_conn *next, *prev;
};

struct inbound_http {
  struct MHD_Daemon *mhd;
  struct store *st;
  pthread_mutex_t mu;
  struct http_settings *set;    /* the current ones; under mu */
  unsigned service;             /* its id in anvil, the per-client table */
  /* the application under /console/ (registered by the daemon before any traffic), or NULL */
  web_handler console;
  void *console_arg;
  /* queue figures for /metrics, read at most once a second whatever the scrape rate */
  pthread_mutex_t qmu;
  long long q_at_ms;            /* monotonic time of the last read; 0 never */
  int q_ok;
  struct metrics_queue q;
  struct log_gate gates[GATE_N];  /* under mu */
  struct http_conn *conns;      /* under mu */
  int watch_pipe[2];            /* written to stop the watcher */
  pthread_t watcher;
  int watcher_started;
};

#define QUEUE_STATS_CACHE_MS 1000

/* 1 when the refusal is to be logged now (*skipped: those left unlogged since the last line) */
static int log_gate_due(struct inbound_http *h, enum log_gate_kind k, unsigned long *skipped)
{
  struct log_gate *g = &h->gates[k];
  long long now = time_mono_ms();
  int due;
  pthread_mutex_lock(&h->mu);
  due = !g->last_ms || now - g->last_ms >= 60000 || now < g->last_ms;
  *skipped = g->skipped;
  if(due) {
    g->last_ms = now;
    g->skipped = 0;
  }
  else
    g->skipped++;
  pthread_mutex_unlock(&h->mu);
  return due;
}

enum endpoint { EP_NONE, EP_PARSE, EP_EVENTS, EP_SMS, EP_HEALTH, EP_METRICS, EP_CONSOLE };
static const enum metrics_path endpoint_path[] = {
  [EP_NONE] = METRICS_PATH_OTHER, [EP_PARSE] = METRICS_PATH_PARSE,
  [EP_EVENTS] = METRICS_PATH_EVENTS, [EP_SMS] = METRICS_PATH_SMS,
  [EP_HEALTH] = METRICS_PATH_HEALTHZ, [EP_METRICS] = METRICS_PATH_METRICS,
  [EP_CONSOLE] = METRICS_PATH_OTHER,
};

/* One request in progress. The raw body is kept once (capped); for Inbound Parse the post
 * processor reads it as it arrives and keeps only the small fields the record needs. */
struct request {
  enum endpoint ep;
  struct inbound_http *h;
  struct http_settings *set;    /* a reference, taken when the request began */
  unsigned char client[ANVIL_KEY_LEN];
  char client_text[INET6_ADDRSTRLEN];
  int has_client;               /* a client the per-client limits apply to */
  int has_key;                  /* client is known: its wrong passwords count (exempt or not) */
  int answered;                 /* a response was queued on an early call */
  int too_big;
  size_t dropped;               /* bytes read past the cap (or past an early answer) */
  int form_error;               /* /events: the signature check failed to take the body */
  struct buf body;
  /* /events: the signature, decoded from its header before the body is read, and the check
   * fed with the timestamp and then the body as it arrives (no copy of the body is made) */
  struct tls_verifier *verifier;
  unsigned char sig[256];
  size_t siglen;
  struct MHD_PostProcessor *pp;
  struct inbound_parse_form form;   /* Inbound Parse fields */
};

/* Counted as the answer is queued, so that a client that has its answer sees it counted. */
static void counted(const struct request *rq, unsigned status)
{
  metrics_webhook(endpoint_path[rq->ep], status);
}

static enum MHD_Result respond(struct request *rq, struct MHD_Connection *c, unsigned status,
                               const char *type, const char *text)
{
  struct MHD_Response *r = MHD_create_response_from_buffer(strlen(text), (void *)text,
                                                           MHD_RESPMEM_PERSISTENT);
  enum MHD_Result ret;
  if(!r)
    return MHD_NO;
  counted(rq, status);
  MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
  ret = MHD_queue_response(c, status, r);
  MHD_destroy_response(r);
  return ret;
}

static enum MHD_Result respond_text(struct request *rq, struct MHD_Connection *c, unsigned status,
                                    const char *text)
{
  return respond(rq, c, status, "text/plain; charset=utf-8", text);
}

static void settings_release(struct inbound_http *h, struct http_settings *set);

static void request_free(struct request *rq)
{
  if(!rq)
    return;
  if(rq->set)
    settings_release(rq->h, rq->set);
  if(rq->pp)
    MHD_destroy_post_processor(rq->pp);
  tls_verifier_free(rq->verifier);
  buf_free(&rq->body);
  inbound_parse_form_free(&rq->form);
  free(rq);
}

static void request_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                              enum MHD_RequestTerminationCode toe)
{
  struct inbound_http *h = cls;
  const union MHD_ConnectionInfo *ci =
    MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
  struct http_conn *hc = ci ? ci->socket_context : NULL;
  request_free(*con_cls);
  *con_cls = NULL;
  if(hc) {                      /* the next request on this connection has its own time */
    pthread_mutex_lock(&h->mu);
    hc->since_ms = time_mono_ms();
    pthread_mutex_unlock(&h->mu);
  }
}

/* The whole request has arrived: the answer (a console stream may last) is not timed by
 * http_request_timeout; the next request on the connection is (request_completed). */
static void request_received(struct inbound_http *h, struct MHD_Connection *c)
{
  const union MHD_ConnectionInfo *ci =
    MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
  struct http_conn *hc = ci ? ci->socket_context : NULL;
  if(hc) {
    pthread_mutex_lock(&h->mu);
    hc->since_ms = 0;
    pthread_mutex_unlock(&h->mu);
  }
}

static const char cred_key[] = "postern basic auth";

/* The digest credentials are compared by: user ":" password. */
static int cred_digest(const char *user, size_t userlen, const char *pass, size_t passlen,
                       unsigned char out[32])
{
  struct buf b;
  int result;
  buf_init(&b, userlen + passlen + 2);
  result = buf_add(&b, user, userlen) || buf_add(&b, ":", 1) || buf_add(&b, pass, passlen) ||
           tls_hmac_sha256(cred_key, sizeof(cred_key) - 1, b.ptr, b.len, out) ? -1 : 0;
  if(b.ptr)
    explicit_bzero(b.ptr, b.len);
  buf_free(&b);
  return result;
}

/* Basic auth against http_user / http_password_file. The digests are compared, in constant
 * time: neither the lengths nor the first differing byte show in the time taken. */
static int auth_ok(const struct http_settings *h, struct MHD_Connection *c)
{
  char *pass = NULL, *user;
  unsigned char got[32];
  int ok;
  if(h->auth_none)
    return 1;
  if(!h->http_user)
    return 0;
  user = MHD_basic_auth_get_username_password(c, &pass);
  ok = user && pass && !cred_digest(user, strlen(user), pass, strlen(pass), got) &&
       tls_memeq(got, h->cred_digest, sizeof(got));
  explicit_bzero(got, sizeof(got));
  if(pass) {
    explicit_bzero(pass, strlen(pass));
    MHD_free(pass);
  }
  if(user)
    MHD_free(user);
  return ok;
}

static const char *header(struct MHD_Connection *c, const char *name)
{
  return MHD_lookup_connection_value(c, MHD_HEADER_KIND, name);
}

static enum MHD_Result refuse_auth(struct request *rq, struct MHD_Connection *c)
{
  static const char text[] = "authentication required\n";
  struct MHD_Response *r = MHD_create_response_from_buffer(sizeof(text) - 1, (void *)text,
                                                           MHD_RESPMEM_PERSISTENT);
  enum MHD_Result ret;
  if(!r)
    return MHD_NO;
  counted(rq, MHD_HTTP_UNAUTHORIZED);
  ret = MHD_queue_basic_auth_fail_response(c, "postern", r);
  MHD_destroy_response(r);
  return ret;
}

static enum MHD_Result post_field(void *cls, enum MHD_ValueKind kind, const char *key,
                                  const char *filename, const char *content_type,
                                  const char *transfer_encoding, const char *data, uint64_t off,
                                  size_t size)
{
  struct request *rq = cls;
  inbound_parse_form_field(&rq->form, key, filename, data, off, size);
  return MHD_YES;
}

static enum MHD_Result answer_store(struct request *rq, struct MHD_Connection *c, int result,
                                    const char *ok_type, const char *ok_text)
{
  if(result == STORE_OK)
    return respond(rq, c, MHD_HTTP_OK, ok_type, ok_text);
  /* SendGrid and Twilio retry on 5xx: the input is not lost */
  return respond_text(rq, c, result == STORE_FULL ? MHD_HTTP_INSUFFICIENT_STORAGE :
                      MHD_HTTP_SERVICE_UNAVAILABLE, "store error, try again later\n");
}

static enum MHD_Result finish_parse(struct inbound_http *h, struct MHD_Connection *c,
                                    struct request *rq)
{
  struct store_inbound m;
  struct inbound_parse_form *f = &rq->form;
  char sha[TLS_SHA256_HEX_LEN + 1];
  const char *ctype = header(c, MHD_HTTP_HEADER_CONTENT_TYPE);
  const char *why = inbound_parse_form_finish(f);
  int result;

  if(why)
    return respond_text(rq, c, MHD_HTTP_BAD_REQUEST, why);   /* a static sentence */
  memset(&m, 0, sizeof(m));
  store_new_id(m.id);
  m.source = "inbound-parse";
  m.received_ms = time_real_ms();
  m.listener = "http";
  m.client_addr = f->ip[0] ? f->ip : NULL;
  m.envelope_from = f->from;
  m.envelope_to = f->to;
  m.spf = f->spf_result[0] ? f->spf_result : NULL;
  /* the whole post is kept: the next stage reads the fields (or the raw email) from it */
  m.content_type = ctype;
  m.body_sha256 = tls_sha256_hex(rq->body.ptr ? rq->body.ptr : "", rq->body.len, sha) ? NULL : sha;
  result = store_inbound_accept(h->st, &m, rq->body.ptr ? rq->body.ptr : "", rq->body.len, NULL);
  if(result == STORE_OK)
    metrics_inbound(METRICS_SRC_PARSE);
  if(result == STORE_OK)
    log_info("%s: inbound-parse mode=%s, size=%zu, files=%zu", m.id,
             f->has_email ? "raw" : "parsed", rq->body.len, f->files);
  else
    log_error("%s: inbound-parse store write error (see the store error above; free space in "
              "data_dir): answered 5xx, SendGrid posts it again", m.id);
  return answer_store(rq, c, result, "text/plain; charset=utf-8", "OK\n");
}

static enum MHD_Result finish_events(struct inbound_http *h, struct MHD_Connection *c,
                                     struct request *rq)
{
  struct inbound_events *evs = NULL;
  const struct store_event *ev = NULL;
  const char *why = NULL;
  size_t n = 0, added = 0;
  int result;

  if(rq->form_error)
    return respond_text(rq, c, MHD_HTTP_SERVICE_UNAVAILABLE, "out of memory\n");
  if(rq->verifier && tls_verifier_end(rq->verifier, rq->sig, rq->siglen)) {
    unsigned long skipped;
    if(log_gate_due(h, GATE_EVENTS_SIG, &skipped))
      log_warn("events: signature verification failed from %s; batch refused (if SendGrid sent "
               "it, event_public_key_file in [inbound] is not its current verification key; "
               "logged once a minute, %lu more refused since the last such line)",
               rq->client_text, skipped);
    return respond_text(rq, c, MHD_HTTP_FORBIDDEN, "signature verification failed\n");
  }
  if(inbound_events_parse(rq->body.ptr ? rq->body.ptr : "", rq->body.len, LIM_WEBHOOK_EVENTS,
                          &evs, &ev, &n, &why))
    return respond_text(rq, c, strcmp(why, "out of memory") ? MHD_HTTP_BAD_REQUEST :
                        MHD_HTTP_SERVICE_UNAVAILABLE, why);   /* why is a static sentence */
  result = store_events_add(h->st, ev, n, &added);
  inbound_events_free(evs);
  if(result == STORE_OK)
    log_info("events: batch of %zu, %zu new", n, added);
  else
    log_error("events: store write error (batch of %zu; see the store error above, free space in "
              "data_dir): answered 5xx, SendGrid posts it again", n);
  return answer_store(rq, c, result, "text/plain; charset=utf-8", "OK\n");
}

static void sms_refused(struct inbound_http *h, const struct request *rq, const char *what)
{
  unsigned long skipped;
  if(log_gate_due(h, GATE_SMS_SIG, &skipped))
    log_warn("sms: X-Twilio-Signature %s from %s; request refused (if Twilio sent it, check "
             "twilio_auth_token_file and public_url in [inbound]: public_url must be the URL "
             "configured in Twilio, before any proxy; logged once a minute, %lu more refused "
             "since the last such line)", what, rq->client_text, skipped);
}

static enum MHD_Result finish_sms(struct inbound_http *h, struct MHD_Connection *c,
                                  struct request *rq, const char *url)
{
  struct inbound_param *params = NULL;
  struct store_inbound m;
  struct buf full;
  char *hold = NULL, expect[64], sha[TLS_SHA256_HEX_LEN + 1];
  const char *sig = header(c, "X-Twilio-Signature");
  const char *sid = NULL, *from = NULL, *to = NULL;
  size_t n = 0, i, baselen;
  int result, dup = 0;
  enum MHD_Result ret;
  const struct http_settings *set = rq->set;

  if(!set->twilio_token || !set->public_url)
    return respond_text(rq, c, MHD_HTTP_FORBIDDEN, "twilio_auth_token_file is not configured\n");
  if(inbound_form_parse(rq->body.ptr ? rq->body.ptr : "", rq->body.len, LIM_WEBHOOK_FIELDS,
                        &params, &n, &hold))
    return respond_text(rq, c, MHD_HTTP_BAD_REQUEST, "malformed form data\n");
  /* Twilio signs the URL it was given: public_url (Postern is usually behind a proxy) with
   * this path */
  baselen = strlen(set->public_url);
  while(baselen && set->public_url[baselen - 1] == '/')
    baselen--;
  buf_init(&full, baselen + strlen(url) + 1);
  if(buf_add(&full, set->public_url, baselen) || buf_addstr(&full, url) ||
     inbound_twilio_signature(set->twilio_token, set->twilio_tokenlen, full.ptr, params, n, expect,
                              sizeof(expect)) ||
     !sig || strlen(sig) != strlen(expect) || !tls_memeq(sig, expect, strlen(expect))) {
    buf_free(&full);
    free(params);
    free(hold);
    sms_refused(h, rq, sig ? "does not match" : "missing");
    return respond_text(rq, c, MHD_HTTP_FORBIDDEN, "signature verification failed\n");
  }
  buf_free(&full);
  for(i = 0; i < n; i++) {
    if(!strcmp(params[i].name, "MessageSid") && params[i].valuelen <= 64)
      sid = params[i].value;
    else if(!strcmp(params[i].name, "From") && !memchr(params[i].value, '\n', params[i].valuelen))
      from = params[i].value;
    else if(!strcmp(params[i].name, "To") && !memchr(params[i].value, '\n', params[i].valuelen))
      to = params[i].value;
  }
  memset(&m, 0, sizeof(m));
  store_new_id(m.id);
  m.source = "sms";
  m.received_ms = time_real_ms();
  m.listener = "http";
  m.envelope_from = from;
  m.envelope_to = to;
  m.content_type = "application/x-www-form-urlencoded";
  m.external_id = sid;
  m.body_sha256 = tls_sha256_hex(rq->body.ptr ? rq->body.ptr : "", rq->body.len, sha) ? NULL : sha;
  result = store_inbound_accept(h->st, &m, rq->body.ptr ? rq->body.ptr : "", rq->body.len, &dup);
  if(result == STORE_OK && !dup)
    metrics_inbound(METRICS_SRC_SMS);
  if(result == STORE_OK)
    log_info("%s: sms size=%zu%s", m.id, rq->body.len, dup ? " (a repeat: already stored)" : "");
  else
    log_error("%s: sms store write error (see the store error above; free space in data_dir): "
              "answered 5xx, Twilio posts it again", m.id);
  ret = answer_store(rq, c, result, "text/xml", "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response/>");
  free(params);
  free(hold);
  return ret;
}

/* The queue figures, at most a second old; NULL when the store cannot be read. */
static const struct metrics_queue *queue_figures(struct inbound_http *h, struct metrics_queue *out)
{
  long long now = time_mono_ms();
  int ok;
  pthread_mutex_lock(&h->qmu);
  if(!h->q_at_ms || now - h->q_at_ms >= QUEUE_STATS_CACHE_MS) {
    struct store_counts sc;
    h->q_ok = !store_counts_pending(h->st, &sc);
    h->q.queued = sc.rcpts[RCPT_QUEUED];
    h->q.deferred = sc.rcpts[RCPT_DEFERRED];
    h->q.held = sc.rcpts[RCPT_HELD];
    h->q.oldest_created_ms = sc.oldest_unfinished_ms > 0 ? sc.oldest_unfinished_ms : 0;
    h->q_at_ms = now;
  }
  ok = h->q_ok;
  *out = h->q;
  pthread_mutex_unlock(&h->qmu);
  return ok ? out : NULL;
}

static enum MHD_Result finish_metrics(struct inbound_http *h, struct MHD_Connection *c,
                                      struct request *rq)
{
  struct metrics_queue q;
  struct MHD_Response *r;
  struct buf out;
  char *body;
  size_t len;
  enum MHD_Result ret;
  const struct metrics_queue *qp = queue_figures(h, &q);
  buf_init(&out, LIM_METRICS_BODY);
  if(metrics_render(&out, qp, time_real_ms())) {
    buf_free(&out);
    log_error("metrics: the exposition does not fit in LIM_METRICS_BODY (lib/limits.h) or "
              "memory ran out; raise the cap and rebuild");
    return respond_text(rq, c, MHD_HTTP_INTERNAL_SERVER_ERROR, "metrics unavailable\n");
  }
  if(!qp)
    log_warn("metrics: the queue gauges are left out: the store cannot be read (see the store "
             "error above; `posternctl queue list` shows whether it opens)");
  body = buf_steal(&out, &len);
  r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
  if(!r) {
    free(body);
    return MHD_NO;
  }
  MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE,
                          "text/plain; version=0.0.4; charset=utf-8");
  counted(rq, MHD_HTTP_OK);
  ret = MHD_queue_response(c, MHD_HTTP_OK, r);
  MHD_destroy_response(r);
  return ret;
}

/* 429 with the seconds to wait. */
static enum MHD_Result respond_wait(struct request *rq, struct MHD_Connection *c, long wait,
                                    int locked)
{
  static const char busy[] = "too many requests from this client\n";
  static const char lock[] = "too many wrong credentials from this client\n";
  struct MHD_Response *r = MHD_create_response_from_buffer(
    locked ? sizeof(lock) - 1 : sizeof(busy) - 1, (void *)(locked ? lock : busy),
    MHD_RESPMEM_PERSISTENT);
  char secs[24];
  enum MHD_Result ret;
  if(!r)
    return MHD_NO;
  snprintf(secs, sizeof(secs), "%ld", wait);
  MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; charset=utf-8");
  MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, secs);
  counted(rq, MHD_HTTP_TOO_MANY_REQUESTS);
  ret = MHD_queue_response(c, MHD_HTTP_TOO_MANY_REQUESTS, r);
  MHD_destroy_response(r);
  return ret;
}

/* Around every check of a password on this listener (basic auth, the console's login), the
 * reservation SMTP AUTH makes (anvil_auth_begin/end): many requests at once get no more
 * guesses than one at a time, and a password cannot be tried faster over HTTP than over
 * SMTP. It holds for http_exempt_networks too: they are spared the connection and request
 * limits, never the failed-login throttling (AUTH on a loopback listener is not either).
 * Returns the ms the client must wait (nothing checked), else 0 with *reserved set. */
static long long cred_check_begin(struct request *rq, int *reserved)
{
  long long left;
  int report = 0;
  *reserved = 0;
  if(!rq->has_key)
    return 0;
  left = anvil_auth_begin(rq->client, (unsigned)rq->set->lim.auth_failures, time_mono_ms(),
                          reserved, &report);
  if(left > 0 && report)
    log_warn("http: %s is locked out after wrong credentials (http_auth_failures, "
             "http_auth_lockout in [inbound]); answered 429 without a check (logged once a "
             "minute)", rq->client_text);
  return left;
}

static void cred_check_end(struct request *rq, int reserved, int failed, const char *what)
{
  long max = rq->set->lim.auth_failures;
  if(!rq->has_key)
    return;
  if(anvil_auth_end(rq->client, reserved, failed, (unsigned)max, rq->set->lim.lockout_ms,
                    time_mono_ms()) >= (unsigned)max && failed && max > 0)
    log_warn("%s: %s sent wrong credentials %ld times; locked out for %lld s, its password "
             "checks get 429 (http_auth_failures, http_auth_lockout in [inbound])", what,
             rq->client_text, max, rq->set->lim.lockout_ms / 1000);
}

/* Basic auth for rq: 1 the credentials are right (or http_auth = none), else 0 with the
 * answer queued in *ret: 429 while the client is locked out (no password is checked), else
 * 401. Wrong credentials count towards the lockout; none at all (a client that waits for the
 * challenge) do not. */
static int auth_check(struct request *rq, struct MHD_Connection *c, enum MHD_Result *ret)
{
  long long left;
  int reserved, ok;
  if(rq->set->auth_none)
    return 1;
  left = cred_check_begin(rq, &reserved);
  if(left > 0) {
    *ret = respond_wait(rq, c, (long)((left + 999) / 1000), 1);
    return 0;
  }
  ok = auth_ok(rq->set, c);
  cred_check_end(rq, reserved, !ok && header(c, MHD_HTTP_HEADER_AUTHORIZATION), "http");
  if(!ok)
    *ret = refuse_auth(rq, c);
  return ok;
}

/* /events before its body is read: basic auth (events_auth = basic), or the signature headers
 * decoded and their timestamp judged, the check started. 0 go on, 1 answered. */
static int events_begin(struct request *rq, struct MHD_Connection *c, enum MHD_Result *ret)
{
  const struct http_settings *set = rq->set;
  const char *sig64, *ts;
  long t = 0;
  size_t tslen;
  *ret = MHD_YES;
  if(set->events_basic)
    return auth_check(rq, c, ret) ? 0 : 1;
  if(set->event_key_missing) {
    int warn;
    pthread_mutex_lock(&rq->h->mu);
    warn = !rq->set->event_key_warned;
    rq->set->event_key_warned = 1;
    pthread_mutex_unlock(&rq->h->mu);
    if(warn)
      log_warn("events: event_public_key_file %s does not exist yet: /events answers 503 (SendGrid "
               "retries) until `posternctl sendgrid setup` writes it and the daemon reloads "
               "(SIGHUP)", set->event_key_missing);
    *ret = respond_text(rq, c, MHD_HTTP_SERVICE_UNAVAILABLE,
                        "the Event Webhook key is not installed yet (posternctl sendgrid setup)\n");
    return 1;
  }
  if(!set->event_key) {
    *ret = respond_text(rq, c, MHD_HTTP_FORBIDDEN, "events are not accepted: set "
                        "event_public_key_file (or events_auth = basic) in [inbound]\n");
    return 1;
  }
  sig64 = header(c, "X-Twilio-Email-Event-Webhook-Signature");
  ts = header(c, "X-Twilio-Email-Event-Webhook-Timestamp");
  if(!sig64 || !ts) {
    *ret = respond_text(rq, c, MHD_HTTP_FORBIDDEN, "signature headers missing\n");
    return 1;
  }
  tslen = strlen(ts);
  if(str_to_long(ts, tslen, 0, 0x7fffffffL, &t)) {
    *ret = respond_text(rq, c, MHD_HTTP_FORBIDDEN, "bad signature timestamp\n");
    return 1;
  }
  if(set->event_max_age > 0) {
    long long now = (long long)time(NULL), age = now - t;
    /* a timestamp from the future is as suspect as an old one */
    if(age > set->event_max_age || -age > set->event_max_age) {
      *ret = respond_text(rq, c, MHD_HTTP_FORBIDDEN, "stale signature timestamp\n");
      return 1;
    }
  }
  if(tls_base64_decode(sig64, strlen(sig64), rq->sig, sizeof(rq->sig), &rq->siglen)) {
    *ret = respond_text(rq, c, MHD_HTTP_FORBIDDEN, "bad signature encoding\n");
    return 1;
  }
  rq->verifier = tls_ecdsa_verifier_new(set->event_key, set->event_keylen);
  if(!rq->verifier || tls_verifier_add(rq->verifier, ts, tslen)) {
    *ret = respond_text(rq, c, MHD_HTTP_SERVICE_UNAVAILABLE, "out of memory\n");
    return 1;
  }
  return 0;
}

/* The per-client table is the SMTP listeners' (anvil): the same client key, and a lockout
 * earned by wrong passwords on either side holds on both. The listener's id in it is made from
 * a name no [listener] section can have. */
#define HTTP_ANVIL_SERVICE "[inbound] http_address"

/* The client behind sa: its key (*keyed set when there is one), printable address, and
 * whether the per-client limits apply (not to http_exempt_networks: by default loopback, local
 * processes or a proxy in front that keeps its own limits). A v4-mapped IPv6 address is the
 * IPv4 client. 1 limited, 0 not. */
static int client_of(const struct http_settings *set, const struct sockaddr *sa,
                     unsigned char key[ANVIL_KEY_LEN], char *text, size_t textsz, int *keyed)
{
  const unsigned char *addr;
  int family = AF_INET;
  if(keyed)
    *keyed = 0;
  if(!sa)
    return 0;
  if(sa->sa_family == AF_INET)
    addr = (const unsigned char *)&((const struct sockaddr_in *)(const void *)sa)->sin_addr;
  else if(sa->sa_family == AF_INET6) {
    const struct in6_addr *a6 = &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr;
    addr = a6->s6_addr;
    if(IN6_IS_ADDR_V4MAPPED(a6))
      addr += 12;
    else
      family = AF_INET6;
  }
  else
    return 0;
  anvil_key(family, addr, key);
  if(keyed)
    *keyed = 1;
  if(text && !inet_ntop(family, addr, text, (socklen_t)textsz))
    str_copy(text, textsz, "?");
  return !cidr_match(set->exempt, set->nexempt, family, addr);
}

static const struct sockaddr *client_addr(struct MHD_Connection *c)
{
  const union MHD_ConnectionInfo *ci =
    MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
  return ci ? ci->client_addr : NULL;
}

static void anvil_limits_of(const struct http_settings *set, struct anvil_limits *l)
{
  memset(l, 0, sizeof(*l));
  l->max_conc = set->lim.per_ip;
  l->msg_rate = set->lim.rate_per_minute;     /* a request is what a message is to SMTP */
}

/* A client over http_clients_per_ip is refused at accept, before it takes a thread; an
 * admitted one holds its place in anvil until the connection closes. */
static enum MHD_Result accept_client(void *cls, const struct sockaddr *addr, socklen_t addrlen)
{
  struct inbound_http *h = cls;
  unsigned char key[ANVIL_KEY_LEN];
  char who[INET6_ADDRSTRLEN];
  struct anvil_limits lim;
  int report = 0, limited;
  enum anvil_verdict v;
  (void)addrlen;
  pthread_mutex_lock(&h->mu);
  limited = client_of(h->set, addr, key, who, sizeof(who), NULL);
  anvil_limits_of(h->set, &lim);
  pthread_mutex_unlock(&h->mu);
  if(!limited)
    return MHD_YES;
  v = anvil_connect(h->service, key, &lim, time_mono_ms(), &report);
  if(v == ANVIL_OK)
    return MHD_YES;
  metrics_webhook(METRICS_PATH_OTHER, MHD_HTTP_TOO_MANY_REQUESTS);
  if(report)
    log_warn("http: %s has %ld connections open (http_clients_per_ip in [inbound]); further "
             "ones are closed at once (logged once a minute)", who, lim.max_conc);
  return MHD_NO;
}

static void connection_event(void *cls, struct MHD_Connection *c, void **socket_context,
                             enum MHD_ConnectionNotificationCode toe)
{
  struct inbound_http *h = cls;
  unsigned char key[ANVIL_KEY_LEN];
  int limited;
  struct http_conn *hc = *socket_context;
  if(toe == MHD_CONNECTION_NOTIFY_STARTED) {
    const union MHD_ConnectionInfo *ci =
      MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    if(!ci || !(hc = calloc(1, sizeof(*hc))))
      return;                   /* MHD's idle timeout still applies */
    hc->fd = ci->connect_fd;
    hc->since_ms = time_mono_ms();
    pthread_mutex_lock(&h->mu);
    /* what accept_client decided, kept: a reload that changes http_exempt_networks while the
     * connection is open must not release a place it never took, or keep one for good */
    hc->counted = client_of(h->set, client_addr(c), key, NULL, 0, NULL);
    hc->next = h->conns;
    if(h->conns)
      h->conns->prev = hc;
    h->conns = hc;
    pthread_mutex_unlock(&h->mu);
    *socket_context = hc;
    return;
  }
  if(toe != MHD_CONNECTION_NOTIFY_CLOSED)
    return;
  pthread_mutex_lock(&h->mu);
  limited = client_of(h->set, client_addr(c), key, NULL, 0, NULL);
  if(hc) {                      /* before MHD closes the descriptor: never shut down a reused one */
    limited = hc->counted;
    if(hc->prev)
      hc->prev->next = hc->next;
    else
      h->conns = hc->next;
    if(hc->next)
      hc->next->prev = hc->prev;
    free(hc);
    *socket_context = NULL;
  }
  pthread_mutex_unlock(&h->mu);
  if(limited)
    anvil_disconnect(h->service, key, time_mono_ms());
}

static const char *console_value(void *ctx, enum web_kind kind, const char *name)
{
  return MHD_lookup_connection_value(ctx, kind == WEB_HEADER ? MHD_HEADER_KIND :
                                     kind == WEB_COOKIE ? MHD_COOKIE_KIND : MHD_GET_ARGUMENT_KIND,
                                     name);
}

static ssize_t console_stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
  struct web_stream *s = cls;
  ssize_t n;
  (void)pos;
  /* one thread per connection: the stream's read waits a little when it has nothing, and 0
   * goes back to libmicrohttpd, which calls again unless the listener is stopping */
  n = s->read(s->arg, buf, max);
  return n < 0 ? MHD_CONTENT_READER_END_OF_STREAM : n;
}

static void console_stream_free(void *cls)
{
  struct web_stream *s = cls;
  if(s->done)
    s->done(s->arg);
  free(s);
}

/* Hands the request to the console and sends what it answers. */
static enum MHD_Result finish_console(struct inbound_http *h, struct MHD_Connection *c,
                                      struct request *rq, const char *url, const char *method)
{
  struct web_request wr = {
    .method = method, .path = url, .client = rq->client_text,
    .body = rq->body.ptr ? rq->body.ptr : "", .bodylen = rq->body.len,
    .value = console_value, .ctx = c,
  };
  struct web_response out = { 0 };
  struct MHD_Response *r = NULL;
  enum MHD_Result ret = MHD_NO;
  size_t i;
  /* a login is a check of a password like AUTH's: the same reservation and lockout, for
   * every client (an SSH tunnel arrives from loopback) */
  int login = !strcmp(url, WEB_LOGIN_PATH) && !strcmp(method, MHD_HTTP_METHOD_POST);
  int reserved = 0;
  if(login) {
    long long left = cred_check_begin(rq, &reserved);
    if(left > 0)
      return respond_wait(rq, c, (long)((left + 999) / 1000), 1);
  }
  buf_init(&out.body, LIM_CONSOLE_PAGE);
  h->console(h->console_arg, &wr, &out);
  if(login)
    cred_check_end(rq, reserved, out.auth_failed, "console");
  if(out.stream.read) {
    struct web_stream *s = malloc(sizeof(*s));
    if(s) {
      *s = out.stream;
      r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, console_stream_read, s,
                                            console_stream_free);
      if(!r)
        console_stream_free(s);
    }
    else if(out.stream.done)
      out.stream.done(out.stream.arg);
  }
  else {
    size_t len = 0;
    char *body = buf_steal(&out.body, &len);
    r = MHD_create_response_from_buffer(len, body ? body : (void *)"",
                                        body ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
    if(!r)
      free(body);
  }
  if(r) {
    unsigned status = out.status ? out.status : MHD_HTTP_INTERNAL_SERVER_ERROR;
    if(out.content_type)
      MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, out.content_type);
    for(i = 0; i < out.nheaders; i++)
      MHD_add_response_header(r, out.headers[i].name, out.headers[i].value);
    counted(rq, status);
    ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
  }
  web_response_free(&out);
  return ret;
}

void inbound_http_set_console(struct inbound_http *h, web_handler fn, void *arg)
{
  h->console = fn;
  h->console_arg = arg;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url,
                              const char *method, const char *version, const char *upload,
                              size_t *upload_size, void **con_cls)
{
  struct inbound_http *h = cls;
  struct request *rq = *con_cls;

  if(!rq) {
    const char *clen;
    unsigned long long declared = 0;
    size_t cap;
    rq = calloc(1, sizeof(*rq));
    if(!rq)
      return MHD_NO;
    *con_cls = rq;
    rq->h = h;
    pthread_mutex_lock(&h->mu);
    rq->set = h->set;
    rq->set->refs++;
    pthread_mutex_unlock(&h->mu);
    if(!strcmp(url, "/healthz"))
      rq->ep = EP_HEALTH;
    else if(!strcmp(url, "/metrics"))
      rq->ep = EP_METRICS;
    else if(!strcmp(url, "/emailInbound"))
      rq->ep = EP_PARSE;
    else if(!strcmp(url, "/events"))
      rq->ep = EP_EVENTS;
    else if(!strcmp(url, "/sms"))
      rq->ep = EP_SMS;
    else if(h->console && (!strcmp(url, "/console") || !strncmp(url, "/console/", 9)))
      rq->ep = EP_CONSOLE;
    rq->has_client = client_of(rq->set, client_addr(c), rq->client, rq->client_text,
                               sizeof(rq->client_text), &rq->has_key);
    /* /healthz stays cheap and open for load balancers and probes */
    if(rq->ep != EP_HEALTH && rq->has_client) {
      long long now = time_mono_ms(), locked = anvil_auth_locked(rq->client, now);
      struct anvil_limits lim;
      int report = 0;
      if(locked) {
        rq->answered = 1;
        return respond_wait(rq, c, (long)((locked + 999) / 1000), 1);
      }
      anvil_limits_of(rq->set, &lim);
      if(anvil_message(h->service, rq->client, &lim, now, &report) != ANVIL_OK) {
        if(report)
          log_warn("http: %s sends more than %ld requests a minute (http_request_rate in "
                   "[inbound]); answered 429 (logged once a minute)", rq->client_text,
                   lim.msg_rate);
        rq->answered = 1;
        return respond_wait(rq, c, 60, 0);
      }
    }
    if(rq->ep == EP_NONE) {
      rq->answered = 1;
      return respond_text(rq, c, MHD_HTTP_NOT_FOUND, "not found\n");
    }
    if(rq->ep == EP_CONSOLE) {
      /* the console keeps its own logins; its wrong passwords count for the lockout above */
      if(strcmp(method, MHD_HTTP_METHOD_GET) && strcmp(method, MHD_HTTP_METHOD_HEAD) &&
         strcmp(method, MHD_HTTP_METHOD_POST)) {
        rq->answered = 1;
        return respond_text(rq, c, MHD_HTTP_METHOD_NOT_ALLOWED, "GET or POST only\n");
      }
      buf_init(&rq->body, WEB_BODY_MAX);
      return MHD_YES;
    }
    if(rq->ep == EP_HEALTH || rq->ep == EP_METRICS) {
      if(strcmp(method, MHD_HTTP_METHOD_GET) && strcmp(method, MHD_HTTP_METHOD_HEAD)) {
        rq->answered = 1;
        return respond_text(rq, c, MHD_HTTP_METHOD_NOT_ALLOWED, "GET only\n");
      }
      /* /healthz stays open for load balancers; /metrics names the upstreams and the traffic,
       * and this listener often faces the internet for the webhooks: it takes http_user */
      if(rq->ep == EP_METRICS) {
        enum MHD_Result ret;
        if(!auth_check(rq, c, &ret)) {
          rq->answered = 1;
          return ret;
        }
      }
      return MHD_YES;
    }
    if(strcmp(method, MHD_HTTP_METHOD_POST)) {
      rq->answered = 1;
      return respond_text(rq, c, MHD_HTTP_METHOD_NOT_ALLOWED, "POST only\n");
    }
    /* who may post is decided here, from the headers, before any of the body is read (a
     * client sending Expect: 100-continue sends none of it) */
    if(rq->ep == EP_PARSE) {
      enum MHD_Result ret;
      if(!auth_check(rq, c, &ret)) {
        rq->answered = 1;
        return ret;
      }
    }
    if(rq->ep == EP_EVENTS) {
      enum MHD_Result ret;
      if(events_begin(rq, c, &ret)) {
        rq->answered = 1;
        return ret;
      }
    }
    if(rq->ep == EP_SMS && (!rq->set->twilio_token || !rq->set->public_url)) {
      rq->answered = 1;
      return respond_text(rq, c, MHD_HTTP_FORBIDDEN, "twilio_auth_token_file is not configured\n");
    }
    if(rq->ep == EP_SMS && !header(c, "X-Twilio-Signature")) {
      rq->answered = 1;
      sms_refused(h, rq, "missing");
      return respond_text(rq, c, MHD_HTTP_FORBIDDEN, "signature verification failed\n");
    }
    cap = rq->ep == EP_PARSE ? rq->set->max_size :
          rq->ep == EP_EVENTS ? LIM_WEBHOOK_EVENTS_BODY : LIM_WEBHOOK_SMS_BODY;
    clen = header(c, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if(clen) {
      char *end = NULL;
      errno = 0;
      declared = strtoull(clen, &end, 10);
      if(errno || !end || *end || declared > cap) {
        rq->answered = 1;
        return respond_text(rq, c, MHD_HTTP_CONTENT_TOO_LARGE, "request too large\n");
      }
    }
    buf_init(&rq->body, cap);
    inbound_parse_form_init(&rq->form);
    if(rq->ep == EP_PARSE) {
      rq->pp = MHD_create_post_processor(c, 64 * 1024, post_field, rq);
      if(!rq->pp) {
        rq->answered = 1;
        return respond_text(rq, c, MHD_HTTP_BAD_REQUEST,
                            "the body must be multipart/form-data\n");
      }
    }
    return MHD_YES;
  }

  if(*upload_size) {
    if(!rq->answered && !rq->too_big) {
      if(buf_add(&rq->body, upload, *upload_size)) {
        rq->too_big = 1;
        buf_free(&rq->body);    /* nothing of it will be used */
      }
      else if(rq->verifier && tls_verifier_add(rq->verifier, upload, *upload_size))
        rq->form_error = 1;
      else if(rq->pp && MHD_post_process(rq->pp, upload, *upload_size) != MHD_YES)
        rq->form.error = 1;
    }
    else if((rq->dropped += *upload_size) > LIM_WEBHOOK_DISCARD)
      return MHD_NO;            /* a body without end (chunked): close, unanswered */
    *upload_size = 0;           /* consumed (or, past a cap or an answer, dropped) */
    return MHD_YES;
  }
  if(rq->answered)
    return MHD_YES;
  rq->answered = 1;
  request_received(h, c);
  if(rq->too_big)
    return respond_text(rq, c, MHD_HTTP_CONTENT_TOO_LARGE, "request too large\n");
  switch(rq->ep) {
  case EP_HEALTH:
    return store_ping(h->st) ? respond_text(rq, c, MHD_HTTP_SERVICE_UNAVAILABLE, "store error\n")
                             : respond_text(rq, c, MHD_HTTP_OK, "ok\n");
  case EP_METRICS:
    return finish_metrics(h, c, rq);
  case EP_PARSE:
    return finish_parse(h, c, rq);
  case EP_EVENTS:
    return finish_events(h, c, rq);
  case EP_SMS:
    return finish_sms(h, c, rq, url);
  case EP_CONSOLE:
    return finish_console(h, c, rq, url, method);
  default:
    return respond_text(rq, c, MHD_HTTP_NOT_FOUND, "not found\n");
  }
}

static void secret_clear(char **p, size_t *len)
{
  if(*p)
    auth_secret_free(*p, *len);
  *p = NULL;
  *len = 0;
}

static void settings_free(struct http_settings *set)
{
  if(!set)
    return;
  secret_clear(&set->password, &set->passwordlen);
  secret_clear(&set->twilio_token, &set->twilio_tokenlen);
  free(set->event_key);
  free(set->event_key_missing);
  free(set->exempt);
  explicit_bzero(set->cred_digest, sizeof(set->cred_digest));
  free(set->http_user);
  free(set->public_url);
  free(set);
}

static void settings_release(struct inbound_http *h, struct http_settings *set)
{
  int last;
  pthread_mutex_lock(&h->mu);
  last = --set->refs == 0;
  pthread_mutex_unlock(&h->mu);
  if(last)
    settings_free(set);
}

/* Once a second: a connection whose current request has taken longer than
 * http_request_timeout is shut down (its thread sees the end and closes it). */
static void *watch_main(void *arg)
{
  struct inbound_http *h = arg;
  for(;;) {
    struct pollfd p;
    struct http_conn *hc;
    unsigned long cut = 0, skipped;
    long long now, limit;
    p.fd = h->watch_pipe[0];
    p.events = POLLIN;
    p.revents = 0;
    if(poll(&p, 1, 1000) > 0)
      break;
    now = time_mono_ms();
    pthread_mutex_lock(&h->mu);
    limit = h->set->request_ms;
    for(hc = h->conns; hc; hc = hc->next)
      if(!hc->cut && hc->since_ms && limit > 0 && now - hc->since_ms >= limit) {
        shutdown(hc->fd, SHUT_RDWR);
        hc->cut = 1;
        cut++;
      }
    pthread_mutex_unlock(&h->mu);
    if(cut && log_gate_due(h, GATE_DEADLINE, &skipped))
      log_warn("http: %lu connection(s) took longer than http_request_timeout (%llds, [inbound]) "
               "for one request and were closed (logged once a minute, %lu more since the last "
               "such line)", cut, limit / 1000, skipped);
  }
  return NULL;
}

void inbound_http_stop(struct inbound_http *h)
{
  if(!h)
    return;
  if(h->watcher_started) {
    if(write(h->watch_pipe[1], "x", 1) != 1) {
      /* a pipe of one byte: cannot be full */
    }
    pthread_join(h->watcher, NULL);
  }
  if(h->watch_pipe[0] >= 0) {
    close(h->watch_pipe[0]);
    close(h->watch_pipe[1]);
  }
  if(h->mhd)
    MHD_stop_daemon(h->mhd);      /* requests have completed: theirs references are gone */
  if(h->set)
    settings_release(h, h->set);
  pthread_mutex_destroy(&h->mu);
  pthread_mutex_destroy(&h->qmu);
  free(h);
}

/* Reads the secrets and the key named in [inbound]; problems go to errs (or the log). */
static int read_secrets(const struct cfg_inbound *in, struct http_settings *h, FILE *errs,
                        const char *path)
{
  int line = in->line;
  char err[512];
  int problems = 0;
  int has_user = in->http_user && in->http_user[0];
  h->auth_none = in->http_auth && !strcmp(in->http_auth, "none");
  h->events_basic = in->events_auth && !strcmp(in->events_auth, "basic");
  if(h->auth_none && has_user) {
    fprintf(errs, "%s:%d: [inbound] http_auth = none and http_user contradict each other: "
            "remove http_auth = none to require the credentials, or http_user to leave the "
            "webhooks open\n", path, line);
    problems++;
  }
  /* this listener faces the internet for the webhooks: open only when the file says so */
  if(in->http_address && !h->auth_none && !has_user) {
    fprintf(errs, "%s:%d: [inbound] http_address needs http_user and http_password_file (the "
            "basic auth /emailInbound and /metrics require); to leave them open on purpose "
            "(a proxy in front authenticates), set http_auth = none\n", path, line);
    problems++;
  }
  if(has_user) {
    if(!in->http_password_file) {
      fprintf(errs, "%s:%d: [inbound] http_user needs http_password_file\n", path, line);
      problems++;
    }
    else if(auth_secret_read(in->http_password_file, &h->password, &h->passwordlen, err,
                             sizeof(err))) {
      fprintf(errs, "%s:%d: [inbound] http_password_file: %s\n", path, line, err);
      problems++;
    }
    else if(cred_digest(in->http_user, strlen(in->http_user), h->password, h->passwordlen,
                        h->cred_digest)) {
      fprintf(errs, "%s:%d: [inbound] http_password_file: out of memory\n", path, line);
      problems++;
    }
  }
  if(in->twilio_auth_token_file) {
    if(!in->public_url) {
      fprintf(errs, "%s:%d: [inbound] twilio_auth_token_file needs public_url (the URL Twilio "
              "signs)\n", path, line);
      problems++;
    }
    if(auth_secret_read(in->twilio_auth_token_file, &h->twilio_token, &h->twilio_tokenlen, err,
                        sizeof(err))) {
      fprintf(errs, "%s:%d: [inbound] twilio_auth_token_file: %s\n", path, line, err);
      problems++;
    }
  }
  if(in->event_public_key_file) {
    /* a public key is no secret: any permissions will do */
    FILE *f = fopen(in->event_public_key_file, "r");
    char key[8192];
    size_t n = f ? fread(key, 1, sizeof(key), f) : 0;
    if(f)
      fclose(f);
    if(!f && errno == ENOENT) {
      /* written by `posternctl sendgrid setup`, which a first install runs after starting the
       * daemon: not a reason to refuse to start */
      fprintf(errs, "%s:%d: warning: [inbound] event_public_key_file %s does not exist yet: "
              "/events answers 503 until `posternctl sendgrid setup` writes it and the daemon "
              "reloads (SIGHUP)\n", path, line, in->event_public_key_file);
      h->event_key_missing = str_dup_n(in->event_public_key_file,
                                       strlen(in->event_public_key_file));
      if(!h->event_key_missing)
        problems++;
    }
    else if(!f || !n || n == sizeof(key) || tls_public_key_check(key, n)) {
      fprintf(errs, "%s:%d: [inbound] event_public_key_file %s: %s\n", path, line,
              in->event_public_key_file,
              !f ? strerror(errno) : "not an EC P-256 public key (PEM or base64)");
      problems++;
    }
    else {
      h->event_key = str_dup_n(key, n);
      h->event_keylen = n;
      if(!h->event_key)
        problems++;
    }
  }
  return problems;
}

/* reply_address and forward_url: the settings of correspondence records */
static int records_check_config(const struct cfg_inbound *in, FILE *errs, const char *path)
{
  const char *tok = in->reply_address ? strstr(in->reply_address, "{token}") : NULL;
  char err[512], *secret = NULL;
  size_t len = 0;
  int problems = 0;
  if(in->reply_address && (!tok || strstr(tok + 7, "{token}") || !strchr(tok + 7, '@') ||
                           strchr(in->reply_address, '<') || strchr(in->reply_address, '>') ||
                           strpbrk(in->reply_address, " \t\r\n\"") || tok == in->reply_address)) {
    fprintf(errs, "%s:%d: [inbound] reply_address must be an address with one {token} in its "
            "local part, like reply+{token}@reply.example.org\n", path, in->line);
    problems++;
  }
  if(in->forward_url && in->forward_url[0]) {
    if(!in->forward_secret_file) {
      fprintf(errs, "%s:%d: [inbound] forward_url needs forward_secret_file (the key of the "
              "X-Postern-Signature header)\n", path, in->line);
      problems++;
    }
    else if(auth_secret_read(in->forward_secret_file, &secret, &len, err, sizeof(err))) {
      fprintf(errs, "%s:%d: [inbound] forward_secret_file: %s\n", path, in->line, err);
      problems++;
    }
    else if(!len) {
      fprintf(errs, "%s:%d: [inbound] forward_secret_file is empty\n", path, in->line);
      problems++;
    }
    if(secret)
      auth_secret_free(secret, len);
  }
  return problems;
}

/* Records (forward_url), the webhook password inside the Inbound Parse URL made from public_url,
 * Twilio's token: what these URLs carry must not cross a network in clear. The HTTP client
 * refuses such a request anyway (global/http.c); this says so at -n, before any is made. */
static int urls_check(const struct config *cfg, FILE *errs)
{
  const struct { const char *key, *url; } urls[] = {
    { "public_url", cfg->inbound.public_url }, { "forward_url", cfg->inbound.forward_url },
    { "twilio_api_url", cfg->inbound.twilio_api_url },
    { "twilio_messaging_url", cfg->inbound.twilio_messaging_url },
  };
  size_t i;
  int problems = 0;
  for(i = 0; i < sizeof(urls) / sizeof(urls[0]); i++)
    if(config_url_cleartext(urls[i].url)) {
      fprintf(errs, "%s:%d: [inbound] %s = %s would go over the network in clear; use https:// "
              "(plain http only to this machine)\n", cfg->path, cfg->inbound.line, urls[i].key,
              urls[i].url);
      problems++;
    }
  return problems;
}

int inbound_check_config(const struct config *cfg, FILE *errs)
{
  struct http_settings h;
  int problems;
  size_t i;
  memset(&h, 0, sizeof(h));
  problems = read_secrets(&cfg->inbound, &h, errs, cfg->path);
  secret_clear(&h.password, &h.passwordlen);
  secret_clear(&h.twilio_token, &h.twilio_tokenlen);
  free(h.event_key);
  free(h.event_key_missing);
  explicit_bzero(h.cred_digest, sizeof(h.cred_digest));
  problems += records_check_config(&cfg->inbound, errs, cfg->path);
  problems += urls_check(cfg, errs);
  for(i = 0; i < cfg->nlisteners; i++) {
    const struct cfg_listener *l = &cfg->listeners[i];
    if(l->role == CFG_ROLE_MX && (!cfg->inbound.domains || !cfg->inbound.domains[0])) {
      fprintf(errs, "%s:%d: listener %s: role = mx needs [inbound] domains\n", cfg->path,
              l->line, l->name);
      problems++;
    }
  }
  return problems;
}

/* The settings of cfg's [inbound], secrets read; NULL after a problem (logged). */
static struct http_settings *settings_new(const struct config *cfg)
{
  struct http_settings *set = calloc(1, sizeof(*set));
  if(!set)
    return NULL;
  set->refs = 1;
  set->max_size = cfg->inbound.max_http_size ? (size_t)cfg->inbound.max_http_size :
                  (size_t)cfg->max_message_size + LIM_WEBHOOK_FORM_OVERHEAD;
  set->event_max_age = cfg->inbound.event_max_age;
  set->lim.per_ip = cfg->inbound.http_clients_per_ip;
  set->lim.rate_per_minute = cfg->inbound.http_request_rate;
  set->lim.auth_failures = cfg->inbound.http_auth_failures;
  set->lim.lockout_ms = cfg->inbound.http_auth_lockout * 1000;
  set->request_ms = cfg->inbound.http_request_timeout * 1000;
  if(cfg->inbound.nhttp_exempt) {
    set->exempt = calloc(cfg->inbound.nhttp_exempt, sizeof(*set->exempt));
    if(!set->exempt) {
      settings_free(set);
      return NULL;
    }
    memcpy(set->exempt, cfg->inbound.http_exempt,
           cfg->inbound.nhttp_exempt * sizeof(*set->exempt));
    set->nexempt = cfg->inbound.nhttp_exempt;
  }
  if((cfg->inbound.http_user && cfg->inbound.http_user[0] &&
      !(set->http_user = str_dup_n(cfg->inbound.http_user, strlen(cfg->inbound.http_user)))) ||
     (cfg->inbound.public_url &&
      !(set->public_url = str_dup_n(cfg->inbound.public_url, strlen(cfg->inbound.public_url)))) ||
     read_secrets(&cfg->inbound, set, stderr, cfg->path)) {
    settings_free(set);
    return NULL;
  }
  if(set->event_key_missing)
    log_warn("event_public_key_file %s does not exist yet: /events answers 503 until "
             "`posternctl sendgrid setup` writes it and the daemon reloads (SIGHUP)",
             set->event_key_missing);
  return set;
}

int inbound_http_reload(struct inbound_http *h, const struct config *cfg)
{
  struct http_settings *set = settings_new(cfg), *old;
  if(!set)
    return -1;
  pthread_mutex_lock(&h->mu);
  old = h->set;
  h->set = set;
  pthread_mutex_unlock(&h->mu);
  settings_release(h, old);
  return 0;
}

int inbound_http_start(const struct config *cfg, struct store *st, int fd,
                       struct inbound_http **out)
{
  struct inbound_http *h = calloc(1, sizeof(*h));
  int result = -1;
  *out = NULL;
  if(!h)
    goto out;
  pthread_mutex_init(&h->mu, NULL);
  pthread_mutex_init(&h->qmu, NULL);
  h->watch_pipe[0] = h->watch_pipe[1] = -1;
  h->st = st;
  h->service = anvil_service(HTTP_ANVIL_SERVICE);
  if(!(h->set = settings_new(cfg)))
    goto out;
  h->mhd = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION |
                            MHD_USE_POLL | MHD_USE_ERROR_LOG, 0, accept_client, h, handle, h,
                            MHD_OPTION_LISTEN_SOCKET, fd,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)cfg->max_clients,
                            MHD_OPTION_CONNECTION_TIMEOUT,
                            (unsigned)LIM_WEBHOOK_TIMEOUT_SECONDS,
                            MHD_OPTION_NOTIFY_COMPLETED, request_completed, h,
                            MHD_OPTION_NOTIFY_CONNECTION, connection_event, h,
                            MHD_OPTION_END);
  if(!h->mhd) {
    log_error("cannot start the HTTP listener on %s (check http_address in [inbound])",
              cfg->inbound.http_address);
    goto out;
  }
  if(pipe2(h->watch_pipe, O_CLOEXEC)) {
    h->watch_pipe[0] = h->watch_pipe[1] = -1;
    log_error("cannot start the HTTP listener: pipe: %s", strerror(errno));
    goto out;
  }
  if(pthread_create(&h->watcher, NULL, watch_main, h)) {
    log_error("cannot start the HTTP listener's request timer (out of threads?)");
    goto out;
  }
  h->watcher_started = 1;
  log_info("HTTP listener on %s: /emailInbound /events /sms /healthz /metrics%s",
           cfg->inbound.http_address, cfg->console.enabled ? " /console/" : "");
  *out = h;
  h = NULL;
  result = 0;
out:
  inbound_http_stop(h);
  return result;
}
