/* The record builder: a thread beside the HTTP listener that turns every new queue message
 * (outbound) and inbound message into a correspondence record, threads replies to what they
 * answer, follows outbound recipients' states, DSNs and SendGrid events, and a second thread
 * that hands each new record to forward_url, signed, in record order, until a 2xx. */
#include "inbound/inbound.h"
#include "auth/auth.h"
#include "tls/tls.h"
#include "global/http.h"
#include "global/metrics.h"
#include "lib/buf.h"
#include "lib/log.h"
#include "lib/vendor.h"
#include <arpa/inet.h>
#include <jansson.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define RECORDS_BATCH 32            /* messages made into records per look at the store */
#define RECORDS_POLL_MS 200         /* how often the builder looks for new work when idle */
#define RELAY_FOLLOW_EVERY 5        /* idle polls between looks at outbound recipients */
#define EVENT_WAIT_MS 60000         /* an event whose record is not known yet waits this long */
#define EVENT_TIME_MAX 253402300799LL  /* 9999-12-31T23:59:59Z: the last time RFC 3339 writes */
#define FORWARD_POLL_MS 200

/* What the threads need of the configuration; replaced whole on reload, and kept by a
 * reference for the length of a pass or a POST. */
struct records_settings {
  int refs;                        /* under inbound_records.lock */
  char *reply_prefix, *reply_suffix;   /* reply_address around {token}, or NULL */
  char *forward_url;               /* NULL: records are not forwarded */
  char *secret;
  size_t secretlen;
  long long retry_max_ms;
  size_t text_max;                 /* record_text_max */
  long long dedupe_window_ms;      /* dedupe_window */
  int forward_max_attempts;        /* refusals before a record is set aside */
  char *authserv_id;               /* hostname: whose Authentication-Results field to read */
  int dmarc;                       /* [inbound] dmarc is not off: raw posts are verified */
  long long forward_max_age_ms;    /* 0: no limit */
};

struct inbound_records {
  struct store *st;
  struct records_settings *set;    /* under lock */
  long long relay_cursor;          /* where relay_follow goes on from (builder thread only) */
  struct store_cursor unrec[2];    /* where build_new goes on from, by origin (builder only) */
  pthread_t builder, forwarder;
  int builder_running, forwarder_running;
  pthread_mutex_t lock;
  pthread_cond_t cond;
  int stopping;
};

static long long now_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Sleeps up to ms unless stopping; returns 1 when stopping. */
static int records_wait(struct inbound_records *r, long long ms)
{
  struct timespec ts;
  int stop;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += (time_t)(ms / 1000);
  ts.tv_nsec += (long)(ms % 1000) * 1000000L;
  if(ts.tv_nsec >= 1000000000L) {
    ts.tv_sec++;
    ts.tv_nsec -= 1000000000L;
  }
  pthread_mutex_lock(&r->lock);
  if(!r->stopping)
    pthread_cond_timedwait(&r->cond, &r->lock, &ts);
  stop = r->stopping;
  pthread_mutex_unlock(&r->lock);
  return stop;
}

static int records_stopping(struct inbound_records *r)
{
  int stop;
  pthread_mutex_lock(&r->lock);
  stop = r->stopping;
  pthread_mutex_unlock(&r->lock);
  return stop;
}

static void settings_free(struct records_settings *set)
{
  if(set->secret)
    auth_secret_free(set->secret, set->secretlen);
  free(set->forward_url);
  free(set->reply_prefix);
  free(set->reply_suffix);
  free(set->authserv_id);
  free(set);
}

static void settings_put(struct inbound_records *r, struct records_settings *set)
{
  int last;
  if(!set)
    return;
  pthread_mutex_lock(&r->lock);
  last = --set->refs == 0;
  pthread_mutex_unlock(&r->lock);
  if(last)
    settings_free(set);
}

static struct records_settings *settings_get(struct inbound_records *r)
{
  struct records_settings *set;
  pthread_mutex_lock(&r->lock);
  set = r->set;
  set->refs++;
  pthread_mutex_unlock(&r->lock);
  return set;
}

/* The settings of cfg, the forward secret read; NULL after a problem (logged). */
static struct records_settings *settings_new(const struct config *cfg)
{
  struct records_settings *set = calloc(1, sizeof(*set));
  const char *ra = cfg->inbound.reply_address, *tok = ra ? strstr(ra, "{token}") : NULL;
  char err[512];
  if(!set)
    return NULL;
  set->refs = 1;
  set->retry_max_ms = cfg->retry_max > 0 ? cfg->retry_max * 1000LL : 3600000LL;
  set->text_max = (size_t)cfg->inbound.record_text_max;
  set->dedupe_window_ms = cfg->inbound.dedupe_window * 1000LL;
  set->forward_max_attempts = cfg->inbound.forward_max_attempts > 0
                              ? (int)cfg->inbound.forward_max_attempts : 20;
  set->forward_max_age_ms = cfg->inbound.forward_max_age * 1000LL;
  set->authserv_id = str_dup_n(cfg->hostname ? cfg->hostname : "", cfg->hostname ?
                               strlen(cfg->hostname) : 0);
  if(!set->authserv_id)
    goto fail;
  set->dmarc = cfg->inbound.dmarc && strcmp(cfg->inbound.dmarc, "off");
  if(tok) {
    set->reply_prefix = str_dup_n(ra, (size_t)(tok - ra));
    set->reply_suffix = str_dup_n(tok + 7, strlen(tok + 7));
    if(!set->reply_prefix || !set->reply_suffix)
      goto fail;
  }
  if(cfg->inbound.forward_url && cfg->inbound.forward_url[0]) {
    set->forward_url = str_dup_n(cfg->inbound.forward_url, strlen(cfg->inbound.forward_url));
    if(!set->forward_url)
      goto fail;
    if(auth_secret_read(cfg->inbound.forward_secret_file, &set->secret, &set->secretlen, err,
                        sizeof(err))) {
      log_error("[inbound] forward_secret_file: %s (make it readable by Postern's user only, mode "
                "0600)", err);
      goto fail;
    }
  }
  return set;
fail:
  settings_free(set);
  return NULL;
}

static void time_iso(long long ms, char *out, size_t outsz)
{
  time_t t = (time_t)(ms / 1000);
  struct tm tm;
  if(!gmtime_r(&t, &tm) || !strftime(out, outsz, "%Y-%m-%dT%H:%M:%SZ", &tm))
    str_copy(out, outsz, "");
}

/* A JSON string, or null when s is NULL or not UTF-8 (what the store holds came off the
 * network). */
static json_t *jstr(const char *s)
{
  json_t *j = s ? json_string(s) : NULL;
  return j ? j : json_null();
}

/* A JSON string, "" when s is NULL or not UTF-8. */
static json_t *jtext(const char *s)
{
  json_t *j = s ? json_string(s) : NULL;
  return j ? j : json_string("");
}

static const char *jget(const json_t *o, const char *key)
{
  return json_string_value(json_object_get(o, key));
}

/* ---- threading ---------------------------------------------------------------------------- */

/* The token of a reply address (reply+TOKEN@domain), lower-cased into tok; 0 when addr is one. */
static int token_of(const struct records_settings *set, const char *addr, char *tok,
                    size_t toksz)
{
  size_t plen, slen, alen, n, i;
  if(!set->reply_prefix || !addr)
    return -1;
  plen = strlen(set->reply_prefix);
  slen = strlen(set->reply_suffix);
  alen = strlen(addr);
  if(alen <= plen + slen || strncasecmp(addr, set->reply_prefix, plen) ||
     strcasecmp(addr + alen - slen, set->reply_suffix))
    return -1;
  n = alen - plen - slen;
  if(n >= toksz)
    return -1;
  for(i = 0; i < n; i++) {
    char c = addr[plen + i];
    if(c >= 'A' && c <= 'Z')
      c = (char)(c - 'A' + 'a');
    if(!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
      return -1;
    tok[i] = c;
  }
  tok[n] = '\0';
  return 0;
}

static int find_by_addresses(struct inbound_records *r, const struct records_settings *set,
                             const json_t *list, char *id, char *thread)
{
  size_t i;
  json_t *v;
  json_array_foreach(list, i, v) {
    char tok[LIM_QUEUE_ID + 1];
    const char *a = json_is_string(v) ? json_string_value(v) : jget(v, "address");
    if(!token_of(set, a, tok, sizeof(tok)) &&
       !store_record_find(r->st, STORE_BY_REPLY_TOKEN, tok, id, thread))
      return 0;
  }
  return -1;
}

/* The record rec answers: by In-Reply-To, then References (nearest first), then (a DSN) the
 * Message-ID it reports on, then the reply token in the envelope recipients, To or Cc. 0 with
 * parent and thread set when found. */
static int thread_find(struct inbound_records *r, const struct records_settings *set,
                       const json_t *rec, char *parent, char *thread)
{
  const json_t *refs = json_object_get(rec, "references");
  size_t n = json_array_size(refs), k;
  if(!store_record_find(r->st, STORE_BY_MESSAGE_ID, jget(rec, "in_reply_to"), parent, thread))
    return 0;
  for(k = 0; k < n && k < LIM_RECORD_REFS; k++) {
    const char *id = json_string_value(json_array_get(refs, n - 1 - k));
    if(!store_record_find(r->st, STORE_BY_MESSAGE_ID, id, parent, thread))
      return 0;
  }
  /* a DSN belongs to the thread of the message it reports on */
  if(!store_record_find(r->st, STORE_BY_MESSAGE_ID,
                        jget(json_object_get(rec, "dsn"), "original_message_id"), parent, thread))
    return 0;
  if(!find_by_addresses(r, set, json_object_get(rec, "envelope_to"), parent, thread) ||
     !find_by_addresses(r, set, json_object_get(rec, "to"), parent, thread) ||
     !find_by_addresses(r, set, json_object_get(rec, "cc"), parent, thread))
    return 0;
  return -1;
}

/* ---- events ------------------------------------------------------------------------------- */

/* What an event does to an outbound record's status: the name it gives and its rank (a status
 * only ever moves up, so events applied out of order cannot move a record back). */
static const struct {
  const char *event, *status;
  int rank;
} event_status[] = {
  { "captured", "captured", 1 }, { "sent", "sent", 1 }, { "processed", "sent", 1 },
  { "delivered", "delivered", 2 }, { "open", "opened", 3 }, { "click", "clicked", 4 },
  { "bounce", "bounced", 5 }, { "dropped", "bounced", 5 }, { "bounced", "bounced", 5 },
  { "spamreport", "spamreport", 6 },
};

static void event_map(struct store_record_event *e)
{
  size_t i;
  for(i = 0; i < sizeof(event_status) / sizeof(event_status[0]); i++)
    if(!strcmp(e->event, event_status[i].event)) {
      e->status = event_status[i].status;
      e->rank = event_status[i].rank;
    }
}

static int event_add(struct inbound_records *r, const char *record_id,
                     struct store_record_event *e)
{
  struct records_settings *set = settings_get(r);
  int result;
  event_map(e);
  e->forward = set->forward_url != NULL;
  settings_put(r, set);
  result = store_record_event_add(r->st, record_id, e, NULL);
  if(result)     /* a store that refuses every write has said so once */
    log_msg(store_writes_failing(r->st) ? LOG_LVL_DEBUG : LOG_LVL_ERROR,
            "%s: cannot record event %s (see the store error above; free space in data_dir)",
            record_id, e->event);
  return result;
}

/* Whether a DSN's recipient block names one of the envelope recipients. */
static int dsn_names_recipient(const json_t *envelope_to, const json_t *block)
{
  const char *names[2];
  const json_t *a;
  size_t i, k;
  names[0] = jget(block, "original_recipient");
  names[1] = jget(block, "address");
  json_array_foreach(envelope_to, i, a)
    for(k = 0; k < 2; k++)
      if(names[k] && *names[k] && json_is_string(a) && !strcasecmp(names[k], json_string_value(a)))
        return 1;
  return 0;
}

/* A DSN arrived: each failed recipient bounces the outbound record it reports on. */
static void dsn_apply(struct inbound_records *r, const char *dsn_record, const json_t *dsn,
                      const char *parent)
{
  char id[LIM_QUEUE_ID + 1], thread[LIM_QUEUE_ID + 1];
  const char *orig = jget(dsn, "original_message_id");
  const json_t *rcpts = json_object_get(dsn, "recipients");
  json_t *v;
  size_t i;
  struct store_record rec;
  json_t *sent_to = NULL;
  int out;
  /* the reported Message-ID, else whatever the DSN itself was threaded to */
  if(store_record_find(r->st, STORE_BY_MESSAGE_ID, orig, id, thread)) {
    if(!parent)
      return;
    str_copy(id, sizeof(id), parent);
  }
  /* only mail Postern sent can bounce: anyone at the MX listener can name the Message-ID of a
   * message of their own (or thread to one), and an inbound record has no status to move */
  if(store_record_get(r->st, id, &rec))
    return;
  out = rec.direction && !strcmp(rec.direction, "out");
  sent_to = out && rec.json ? json_loads(rec.json, 0, NULL) : NULL;
  store_record_free(&rec);
  if(!out)
    goto out;
  json_array_foreach(rcpts, i, v) {
    struct store_record_event e;
    const char *action = jget(v, "action");
    char key[LIM_QUEUE_ID + 32];
    char *detail;
    if(!action)
      continue;
    /* Every recipient knows the Message-ID: a report moves the record only for an address
     * the message was sent to (as ORCPT brings it back, or as the final recipient). */
    if(!dsn_names_recipient(json_object_get(sent_to, "envelope_to"), v)) {
      log_info("%s: a DSN recipient block names no recipient of record %s; ignored",
               dsn_record, id);
      continue;
    }
    memset(&e, 0, sizeof(e));
    snprintf(key, sizeof(key), "dsn:%s:%zu", dsn_record, i);
    detail = json_dumps(v, JSON_COMPACT);
    e.key = key;
    e.at_ms = now_ms();
    e.event = !strcasecmp(action, "failed") ? "bounced"
            : !strcasecmp(action, "delayed") ? "deferred" : "dsn";
    e.recipient = jget(v, "address");
    e.detail = detail;
    event_add(r, id, &e);
    free(detail);
  }
out:
  json_decref(sent_to);
}

/* One stored SendGrid event onto its outbound record: found by the postern_id custom arg
 * Postern puts in every request, else by the X-Message-Id SendGrid answered the request
 * with (the sg_message_id prefix). One whose record is not known stays unapplied for a
 * while (it may be a pass ahead of its record). Always 0: the next event follows. */
static int event_apply(void *arg, const struct store_event *ev, long long received_ms)
{
  struct inbound_records *r = arg;
  char id[LIM_QUEUE_ID + 1], thread[LIM_QUEUE_ID + 1], key[300], prov[128];
  json_t *payload = json_loadb(ev->payload, ev->payloadlen, 0, NULL);
  int found = !store_record_find(r->st, STORE_BY_ID, jget(payload, "postern_id"), id, thread);
  if(!found && ev->sg_message_id) {
    str_copy(prov, sizeof(prov), ev->sg_message_id);
    prov[strcspn(prov, ".")] = '\0';
    found = !store_record_find(r->st, STORE_BY_PROVIDER_ID, prov, id, thread);
  }
  if(found && ev->event) {
    struct store_record_event e;
    memset(&e, 0, sizeof(e));
    snprintf(key, sizeof(key), "sg:%s", ev->key);
    e.key = key;
    /* the batch's integer, unchecked: past EVENT_TIME_MAX it is no time (and * 1000 could
     * overflow), so the event counts from its arrival */
    e.at_ms = ev->timestamp > 0 && ev->timestamp <= EVENT_TIME_MAX ? ev->timestamp * 1000
                                                                   : received_ms;
    e.event = ev->event;
    e.recipient = ev->email;
    e.detail = ev->payload;
    if(event_add(r, id, &e))
      found = -1;
  }
  json_decref(payload);
  /* an event may come before its record is made (the builder is a pass behind): it waits a
   * while; one for mail Postern never sent is let go */
  if(found < 0 || (!found && received_ms > now_ms() - EVENT_WAIT_MS))
    return 0;
  store_event_applied(r->st, ev->key);
  return 0;
}

/* ---- outbound recipients ------------------------------------------------------------------ */

struct keys {
  char **v;
  size_t n;
};

static int keys_collect(void *arg, const struct store_record_event *e)
{
  struct keys *k = arg;
  char **nv = realloc(k->v, (k->n + 1) * sizeof(*nv));
  if(!nv)
    return 1;
  k->v = nv;
  k->v[k->n] = str_dup_n(e->key, strlen(e->key));
  if(k->v[k->n])
    k->n++;
  return 0;
}

static int keys_have(const struct keys *k, const char *key)
{
  size_t i;
  for(i = 0; i < k->n; i++)
    if(!strcmp(k->v[i], key))
      return 1;
  return 0;
}

static void keys_free(struct keys *k)
{
  size_t i;
  for(i = 0; i < k->n; i++)
    free(k->v[i]);
  free(k->v);
}

/* The relay's results for one outbound record's recipients become its events; once every
 * recipient is final the record stops being followed. */
static void relay_follow_one(struct inbound_records *r, const char *id)
{
  struct store_msg m;
  struct keys have = { NULL, 0 };
  char provider[128] = "";
  size_t i;
  int done = 1, result = store_get(r->st, id, &m);
  if(result == STORE_NOTFOUND) {
    store_record_relay(r->st, id, NULL, 1);     /* deleted from the queue */
    return;
  }
  if(result)
    return;
  store_record_events(r->st, id, keys_collect, &have);
  for(i = 0; i < m.nrcpts; i++) {
    const struct store_rcpt *rc = &m.rcpts[i];
    struct store_record_event e;
    char key[64], *detail;
    const char *x;
    json_t *d;
    if(rc->status == RCPT_QUEUED || rc->status == RCPT_HELD) {
      done = 0;
      continue;
    }
    if(rc->status == RCPT_DEFERRED) {
      done = 0;
      snprintf(key, sizeof(key), "rcpt:%u:deferred:%d", rc->idx, rc->attempts);
    }
    else
      snprintf(key, sizeof(key), "rcpt:%u:%s", rc->idx, rcpt_status_name(rc->status));
    x = rc->last_reply ? strstr(rc->last_reply, "X-Message-Id=") : NULL;
    if(x && !provider[0] && strncmp(x + 13, "none", 4)) {
      str_copy(provider, sizeof(provider), x + 13);
      provider[strcspn(provider, " \t\r\n")] = '\0';
    }
    if(keys_have(&have, key))
      continue;
    memset(&e, 0, sizeof(e));
    d = json_pack("{s:o, s:o}", "reply", jstr(rc->last_reply), "upstream", jstr(rc->upstream));
    detail = d ? json_dumps(d, JSON_COMPACT) : NULL;
    json_decref(d);
    e.key = key;
    e.at_ms = rc->updated_ms;
    e.event = rcpt_status_name(rc->status);
    e.recipient = rc->address;
    e.detail = detail;
    if(event_add(r, id, &e))
      done = 0;
    free(detail);
  }
  if(done || provider[0])
    store_record_relay(r->st, id, provider[0] ? provider : NULL, done);
  keys_free(&have);
  store_msg_free(&m);
}

static int relay_follow(struct inbound_records *r)
{
  char ids[RECORDS_BATCH][LIM_QUEUE_ID + 1];
  size_t n = 0, i;
  if(store_records_relay_pending(r->st, &r->relay_cursor, ids, RECORDS_BATCH, &n))
    return 0;
  for(i = 0; i < n && !records_stopping(r); i++)
    relay_follow_one(r, ids[i]);
  return 0;
}

/* ---- making records ----------------------------------------------------------------------- */

static void addresses_add(struct buf *b, const json_t *v)
{
  size_t i;
  json_t *x;
  const char *a;
  if(json_is_array(v)) {
    json_array_foreach(v, i, x)
      addresses_add(b, x);
    return;
  }
  a = json_is_string(v) ? json_string_value(v) : jget(v, "address");
  if(a && *a && !strchr(a, '\n')) {
    buf_addstr(b, a);
    buf_add(b, "\n", 1);
  }
}

/* The message's record: the parser's fields plus what comes from the envelope and the store,
 * threaded, with its addresses and attachments, made in one transaction with the mark on
 * the message it came from. */
static int record_make(struct inbound_records *r, enum store_origin origin, const char *id,
                       const char *direction, const char *source, long long received_ms,
                       const char *env_from, const json_t *env_to, const char *spf,
                       const char *reply_token, const char *dedupe, json_t *parsed,
                       const struct inbound_attachment *att, size_t natt)
{
  struct store_record rec;
  struct store_blob *blobs = NULL;
  struct buf addrs;
  char when[32], parent[LIM_QUEUE_ID + 1], thread[LIM_QUEUE_ID + 1];
  json_t *o = json_object();
  struct records_settings *set = settings_get(r);
  int result = STORE_ERROR, linked;
  size_t i;

  buf_init(&addrs, LIM_INBOUND_ROW);
  if(!o)
    goto out;
  time_iso(received_ms, when, sizeof(when));
  json_object_set_new(o, "id", json_string(id));
  json_object_set_new(o, "direction", json_string(direction));
  json_object_set_new(o, "source", json_string(source));
  json_object_set_new(o, "received_at", json_string(when));
  json_object_set_new(o, "envelope_from", jstr(env_from));
  json_object_set(o, "envelope_to", (json_t *)env_to);
  json_object_update(o, parsed);
  linked = !thread_find(r, set, o, parent, thread);
  json_object_set_new(o, "thread_id", json_string(linked ? thread : id));
  json_object_set_new(o, "parent_id", linked ? json_string(parent) : json_null());
  json_object_set_new(o, "spf", jstr(spf));

  if(env_from && *env_from && !strchr(env_from, '\n')) {
    buf_addstr(&addrs, env_from);
    buf_add(&addrs, "\n", 1);
  }
  addresses_add(&addrs, env_to);
  addresses_add(&addrs, json_object_get(o, "from"));
  addresses_add(&addrs, json_object_get(o, "to"));
  addresses_add(&addrs, json_object_get(o, "cc"));
  addresses_add(&addrs, json_object_get(o, "reply_to"));

  if(natt && !(blobs = calloc(natt, sizeof(*blobs))))
    goto out;
  for(i = 0; i < natt; i++) {
    blobs[i].sha256 = att[i].sha256;
    blobs[i].data = att[i].data;
    blobs[i].size = att[i].size;
  }
  memset(&rec, 0, sizeof(rec));
  str_copy(rec.id, sizeof(rec.id), id);
  rec.direction = (char *)direction;
  rec.source = (char *)source;
  rec.received_ms = received_ms;
  rec.message_id = (char *)jget(o, "message_id");
  rec.thread_id = linked ? thread : rec.id;
  rec.parent_id = linked ? parent : NULL;
  rec.status = !strcmp(direction, "out") ? (char *)"queued" : NULL;
  rec.reply_token = (char *)reply_token;
  rec.dedupe = (char *)dedupe;
  rec.json = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
  if(!rec.json)
    goto out;
  /* a DSN's bounces go in first: they are idempotent, so a crash before the record is made
   * only means they are applied again when it is made again */
  if(json_is_object(json_object_get(o, "dsn")))
    dsn_apply(r, id, json_object_get(o, "dsn"), linked ? parent : NULL);
  result = store_record_add(r->st, origin, &rec, addrs.ptr, blobs, natt,
                            set->forward_url != NULL, NULL);
  if(!result)
    log_info("%s: record direction=%s, source=%s, thread=%s%s%s", id, direction, source,
             rec.thread_id, linked ? ", parent=" : "", linked ? parent : "");
  free(rec.json);
out:
  settings_put(r, set);
  free(blobs);
  buf_free(&addrs);
  json_decref(o);
  return result;
}

/* A raw-mode Inbound Parse post's message gets the checks an MX message gets, here rather
 * than when it was posted because the post is kept as SendGrid sent it. SendGrid's SPF
 * verdict (the only one there is: SendGrid's MX spoke to the sender) feeds DMARC. The post
 * is never refused: SendGrid has accepted the mail already. */
static void authentication_raw(struct inbound_records *r, const char *id,
                               const struct store_inbound *m, const struct inbound_mime *mime,
                               json_t *parsed)
{
  struct records_settings *set = settings_get(r);
  unsigned char addr[16];
  struct inbound_auth_in in;
  json_t *a = NULL;
  memset(&in, 0, sizeof(in));
  in.id = id;
  in.authserv_id = set->authserv_id;
  in.mail_from = m->envelope_from;
  in.spf = m->spf;
  if(m->client_addr && inet_pton(AF_INET, m->client_addr, addr) == 1)
    in.family = AF_INET;
  else if(m->client_addr && inet_pton(AF_INET6, m->client_addr, addr) == 1)
    in.family = AF_INET6;
  in.addr = in.family ? addr : NULL;
  if(set->dmarc)
    a = inbound_auth_verdicts(&in, mime->email, mime->emaillen);
  settings_put(r, set);
  if(a)
    json_object_set_new(parsed, "authentication", a);
}

/* The verdicts the MX listener wrote on top of the message (inbound/auth_results.c). */
static void authentication_add(struct inbound_records *r, const char *body, size_t len,
                               json_t *parsed)
{
  struct records_settings *set = settings_get(r);
  json_t *a = inbound_auth_record(body, len, set->authserv_id);
  settings_put(r, set);
  if(a)
    json_object_set_new(parsed, "authentication", a);
}

static size_t text_max(struct inbound_records *r)
{
  struct records_settings *set = settings_get(r);
  size_t max = set->text_max;
  settings_put(r, set);
  return max;
}

static int build_outbound(struct inbound_records *r, const char *id)
{
  struct store_msg m;
  struct inbound_mime *mime = NULL;
  json_t *parsed = NULL, *to = NULL;
  char *body = NULL;
  size_t len = 0, i;
  int result = store_get(r->st, id, &m);
  if(result == STORE_NOTFOUND)
    return STORE_OK;           /* deleted meanwhile: nothing to record */
  if(result)
    return result;
  /* only what an application submitted is correspondence; DSNs the relay wrote are not */
  if(!m.source || strcmp(m.source, "submission")) {
    result = store_record_skip(r->st, STORE_ORIGIN_QUEUE, id);
    goto out;
  }
  result = store_body(r->st, id, &body, &len);
  if(result == STORE_NOTFOUND) {
    result = store_record_skip(r->st, STORE_ORIGIN_QUEUE, id);
    goto out;
  }
  if(result)
    goto out;
  result = STORE_ERROR;
  if(inbound_mime_parse(body, len, text_max(r), &mime) ||
     !(parsed = json_loads(mime->json, 0, NULL)) || !(to = json_array()))
    goto out;
  for(i = 0; i < m.nrcpts; i++)
    json_array_append_new(to, jstr(m.rcpts[i].address));
  result = record_make(r, STORE_ORIGIN_QUEUE, id, "out", "submission", m.created_ms, m.sender,
                       to, NULL, m.reply_token, NULL, parsed, mime->att, mime->natt);
out:
  json_decref(to);
  json_decref(parsed);
  inbound_mime_free(mime);
  free(body);
  store_msg_free(&m);
  return result;
}

/* A Twilio SMS: the record is its form fields. */
static int sms_parse(const char *body, size_t len, json_t **out)
{
  struct inbound_param *params = NULL;
  char *hold = NULL;
  size_t n = 0, i;
  const char *from = NULL, *to = NULL, *text = NULL, *sid = NULL;
  json_t *o;
  *out = NULL;
  if(inbound_form_parse(body, len, LIM_WEBHOOK_FIELDS, &params, &n, &hold))
    n = 0;                     /* stored, so it was well formed; if not, an empty record */
  for(i = 0; i < n; i++) {
    if(!strcmp(params[i].name, "From")) from = params[i].value;
    else if(!strcmp(params[i].name, "To")) to = params[i].value;
    else if(!strcmp(params[i].name, "Body")) text = params[i].value;
    else if(!strcmp(params[i].name, "MessageSid")) sid = params[i].value;
  }
  /* the parser's contract: what a message lacks is "" (texts, names) or null */
  o = json_pack("{s:o, s:n, s:[], s:o, s:[o], s:[], s:[], s:s, s:n, s:o, s:s, s:o, s:[],"
                " s:b, s:o, s:n}",
                "message_id", jstr(sid), "in_reply_to", "references",
                "from", from ? json_pack("{s:o, s:s}", "address", jstr(from), "name", "")
                             : json_null(),
                "to", json_pack("{s:o, s:s}", "address", jstr(to), "name", ""),
                "cc", "reply_to", "subject", "", "date", "text", jtext(text),
                "html", "", "reply_text", jstr(text), "attachments", "auto_submitted", 0,
                "parse_error", n ? json_null() : json_string("not a form"), "dsn");
  if(o)
    json_object_set_new(o, "truncated", json_array());
  free(params);
  free(hold);
  *out = o;
  return o ? 0 : -1;
}

static json_t *lines_array(const char *s)
{
  json_t *a = json_array();
  while(a && s && *s) {
    size_t n = strcspn(s, "\n");
    char *one = str_dup_n(s, n);
    if(n)
      json_array_append_new(a, jstr(one));
    free(one);
    s += n;
    if(*s)
      s++;
  }
  return a;
}

static int build_inbound(struct inbound_records *r, const char *id)
{
  struct store_inbound m;
  struct inbound_mime *mime = NULL;
  json_t *parsed = NULL, *to = NULL;
  char *hold = NULL, *body = NULL, *dedupe = NULL;
  size_t len = 0;
  int result = store_inbound_get(r->st, id, &m, &hold);
  if(result == STORE_NOTFOUND)
    return STORE_OK;
  if(result)
    return result;
  result = store_inbound_body(r->st, id, &body, &len);
  if(result)
    goto out;
  result = STORE_ERROR;
  if(!strcmp(m.source, "sms")) {
    if(sms_parse(body, len, &parsed))
      goto out;
  }
  else {
    int bad = !strcmp(m.source, "inbound-parse")
                ? inbound_mime_parse_post(body, len, m.content_type ? m.content_type : "",
                                          text_max(r), &mime)
                : inbound_mime_parse(body, len, text_max(r), &mime);
    if(bad || !(parsed = json_loads(mime->json, 0, NULL)))
      goto out;
    if(!strcmp(m.source, "mx"))
      authentication_add(r, body, len, parsed);
  }
  if(mime && !strcmp(m.source, "inbound-parse")) {
    /* SendGrid posts a message again when our 200 did not reach it: the same Message-ID and
     * content within dedupe_window is that message, already a record */
    struct records_settings *set = settings_get(r);
    long long window = set->dedupe_window_ms;
    char first[LIM_QUEUE_ID + 1];
    settings_put(r, set);
    if(window > 0) {
      const char *mid = json_string_value(json_object_get(parsed, "message_id"));
      dedupe = malloc(strlen(mid ? mid : "") + sizeof(mime->content_sha256) + 2);
      if(!dedupe)
        goto out;
      snprintf(dedupe, strlen(mid ? mid : "") + sizeof(mime->content_sha256) + 2, "%s %s",
               mid ? mid : "", mime->content_sha256);
      result = store_record_duplicate(r->st, mid, dedupe, m.received_ms - window, first);
      if(!result) {
        log_info("%s: the same Message-ID and content as record %s: a repeated post, no new "
                 "record", id, first);
        result = store_record_skip(r->st, STORE_ORIGIN_INBOUND, id);
        goto out;
      }
      if(result != STORE_NOTFOUND)
        goto out;
      result = STORE_ERROR;
    }
  }
  if(mime && mime->email)
    authentication_raw(r, id, &m, mime, parsed);
  to = lines_array(m.envelope_to);
  if(!to)
    goto out;
  result = record_make(r, STORE_ORIGIN_INBOUND, id, "in", m.source, m.received_ms,
                       m.envelope_from, to, m.spf, NULL, dedupe, parsed, mime ? mime->att : NULL,
                       mime ? mime->natt : 0);
out:
  json_decref(to);
  json_decref(parsed);
  inbound_mime_free(mime);
  free(dedupe);
  free(body);
  free(hold);
  return result;
}

/* New messages of one origin into records; returns how many were made. One that cannot be
 * made now (memory, the store) does not hold up the others; it is tried again next poll. */
static size_t build_new(struct inbound_records *r, enum store_origin origin)
{
  char ids[RECORDS_BATCH][LIM_QUEUE_ID + 1];
  size_t n = 0, i, made = 0;
  if(store_unrecorded(r->st, origin, &r->unrec[origin == STORE_ORIGIN_QUEUE], ids,
                      RECORDS_BATCH, &n))
    return 0;
  for(i = 0; i < n && !records_stopping(r); i++) {
    int result = origin == STORE_ORIGIN_QUEUE ? build_outbound(r, ids[i])
                                              : build_inbound(r, ids[i]);
    if(result)
      log_msg(store_writes_failing(r->st) ? LOG_LVL_DEBUG : LOG_LVL_ERROR,
              "%s: cannot make its correspondence record; will try again (see the error above; "
              "`posternctl inbound list` shows the raw message)", ids[i]);
    else
      made++;
  }
  /* a batch that only failed waits a poll, or it would be retried in a tight loop; a full
   * batch that did not all fail is followed at once by the next */
  return made;
}

static void *builder_main(void *arg)
{
  struct inbound_records *r = arg;
  unsigned idle = 0;
  while(!records_stopping(r)) {
    /* queue first: an inbound reply or an event finds the outbound record it belongs to */
    size_t work = build_new(r, STORE_ORIGIN_QUEUE);
    work += build_new(r, STORE_ORIGIN_INBOUND);
    if(work || idle % RELAY_FOLLOW_EVERY == 0)
      relay_follow(r);
    store_events_unapplied(r->st, RECORDS_BATCH * 4, event_apply, r);
    if(work) {
      idle = 0;
      continue;
    }
    idle++;
    if(records_wait(r, RECORDS_POLL_MS))
      break;
  }
  tls_thread_done();
  return NULL;
}

/* ---- the record as the application sees it ---------------------------------------------- */

static int event_json(void *arg, const struct store_record_event *e)
{
  json_t *events = arg, *o, *detail = e->detail ? json_loads(e->detail, 0, NULL) : NULL;
  char when[32];
  time_iso(e->at_ms, when, sizeof(when));
  o = json_pack("{s:s, s:o, s:s, s:o}", "event", e->event, "recipient", jstr(e->recipient),
                "at", when, "detail", detail ? detail : json_null());
  if(o)
    json_array_append_new(events, o);
  return 0;
}

struct json_t *inbound_record_object(struct store *st, const struct store_record *rec)
{
  json_t *o = json_loads(rec->json, 0, NULL), *events = json_array();
  if(!o || !events) {
    json_decref(o);
    json_decref(events);
    return NULL;
  }
  json_object_set_new(o, "status", jstr(rec->status));
  if(!strcmp(rec->direction, "out"))
    store_record_events(st, rec->id, event_json, events);
  json_object_set_new(o, "events", events);
  return o;
}

/* ---- forward_url -------------------------------------------------------------------------- */

struct event_find {
  const char *key;
  json_t *found;
};

static int event_by_key(void *arg, const struct store_record_event *e)
{
  struct event_find *f = arg;
  json_t *one;
  if(strcmp(e->key, f->key))
    return 0;
  one = json_array();
  if(one) {
    event_json(one, e);
    f->found = json_incref(json_array_get(one, 0));
    json_decref(one);
  }
  return 1;
}

/* The body of a record.status POST: which record, the move, and the event that made it. */
static json_t *status_object(struct store *st, const struct store_record *rec,
                             const struct store_forward *f)
{
  struct event_find ev = { f->event_key ? f->event_key : "", NULL };
  store_record_events(st, rec->id, event_by_key, &ev);
  return json_pack("{s:s, s:s, s:o, s:o, s:o, s:o}", "id", rec->id, "direction", rec->direction,
                   "thread_id", jstr(rec->thread_id), "old_status", jstr(f->old_status),
                   "status", jstr(f->status), "event", ev.found ? ev.found : json_null());
}

/* A POST in progress gives way to shutdown instead of holding it for the whole timeout. */
static int forward_stop(void *arg)
{
  return records_stopping(arg);
}

/* POSTs body; the HTTP status, or 0 when no answer came (err says why). */
/* X-Postern-Signature: t=UNIX,v1=HEX, HEX the HMAC-SHA256 under the secret of "t.body": the
 * timestamp is signed with the body, so a receiver that refuses old ones cannot be fed a
 * captured request again later (the scheme of Stripe's and the providers' webhooks). */
static int forward_sign(const struct records_settings *set, const char *body, size_t len,
                        char *line, size_t linesz)
{
  char sig[TLS_SHA256_HEX_LEN + 1], t[32];
  struct buf signed_text;
  int n = snprintf(t, sizeof(t), "%lld.", now_ms() / 1000), result;
  buf_init(&signed_text, SIZE_MAX / 2);
  result = buf_add(&signed_text, t, (size_t)n) || buf_add(&signed_text, body, len) ||
           tls_hmac_sha256_hex(set->secret, set->secretlen, signed_text.ptr, signed_text.len,
                               sig) ? -1 : 0;
  buf_free(&signed_text);
  if(!result)
    snprintf(line, linesz, "X-Postern-Signature: t=%.*s,v1=%s", n - 1, t, sig);
  return result;
}

static long forward_post(const struct records_settings *set, struct http_client *c,
                         const char *id, const char *event, const char *body, size_t len,
                         char *err, size_t errsz)
{
  char line[TLS_SHA256_HEX_LEN + 96], idline[64], evline[64];
  const char *headers[] = { "Content-Type: application/json", line, idline, evline, NULL };
  struct http_response resp;
  long status = 0;
  err[0] = '\0';
  if(forward_sign(set, body, len, line, sizeof(line))) {
    str_copy(err, errsz, "cannot sign");
    return 0;
  }
  snprintf(idline, sizeof(idline), "X-Postern-Record: %s", id);
  snprintf(evline, sizeof(evline), "X-Postern-Event: %s", event);
  if(http_client_request(c, "POST", set->forward_url, headers, body, len, &resp))
    snprintf(err, errsz, "%s", resp.error);
  else if(resp.status < 200 || resp.status > 299)
    snprintf(err, errsz, "HTTP %ld", resp.status);
  status = resp.status;
  http_response_free(&resp);
  return status;
}

/* An answer that refuses this record, as opposed to one that says the application is away
 * (a gateway without it, a rate limit) or no answer at all: only refusals set a record aside. */
static int forward_refused(long status)
{
  return status >= 300 && status != 429 && status != 502 && status != 503 && status != 504;
}

/* What a refusal of the head record f does: it waits, or it has been refused often (or long)
 * enough to be set aside. */
static enum store_forward_outcome forward_refusal(const struct records_settings *set,
                                                  const struct store_forward *f)
{
  if(f->refusals + 1 >= set->forward_max_attempts)
    return STORE_FORWARD_SET_ASIDE;
  if(set->forward_max_age_ms > 0 && f->queued_ms > 0 &&
     now_ms() - f->queued_ms >= set->forward_max_age_ms)
    return STORE_FORWARD_SET_ASIDE;
  return STORE_FORWARD_REFUSED;
}

static void *forwarder_main(void *arg)
{
  struct inbound_records *r = arg;
  struct http_client *c = NULL;
  struct http_opts opts;
  memset(&opts, 0, sizeof(opts));
  opts.timeout_s = LIM_FORWARD_TIMEOUT_SECONDS;
  opts.max_body = LIM_FORWARD_ANSWER;     /* nobody needs a long answer */
  opts.stop = forward_stop;
  opts.stop_arg = r;
  if(http_client_new(&opts, &c))
    log_error("the record forwarder cannot start: out of memory");
  while(c && !records_stopping(r)) {
    struct store_record rec;
    struct records_settings *set;
    struct store_forward f;
    char err[300];
    const char *id = f.id;
    long long now = now_ms(), retry_max_ms;
    json_t *o;
    char *body;
    long status;
    enum store_forward_outcome outcome = STORE_FORWARD_RETRY;
    int attempts, result = store_forward_head(r->st, &f);
    attempts = f.attempts;
    if(!result && f.next_ms > now)
      store_forward_free(&f);
    if(result || f.next_ms > now) {
      long long wait = result ? FORWARD_POLL_MS : f.next_ms - now;
      if(records_wait(r, wait < 1000 ? wait : 1000))
        break;
      continue;
    }
    result = store_record_get(r->st, id, &rec);
    if(result == STORE_NOTFOUND) {
      store_forward_result(r->st, f.seq, STORE_FORWARD_DONE, 0, NULL);
      store_forward_free(&f);
      continue;
    }
    if(result) {
      store_forward_free(&f);
      records_wait(r, 1000);
      continue;
    }
    o = f.event ? status_object(r->st, &rec, &f) : inbound_record_object(r->st, &rec);
    body = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(o);
    store_record_free(&rec);
    if(!body) {
      store_forward_free(&f);
      records_wait(r, 1000);
      continue;
    }
    set = settings_get(r);
    if(!set->forward_url) {
      /* forward_url was taken out by a reload: what was queued waits for it to come back */
      settings_put(r, set);
      free(body);
      store_forward_free(&f);
      records_wait(r, 1000);
      continue;
    }
    status = forward_post(set, c, id, f.event ? f.event : "record.created", body, strlen(body),
                          err, sizeof(err));
    retry_max_ms = set->retry_max_ms;
    if(forward_refused(status))
      outcome = forward_refusal(set, &f);
    settings_put(r, set);
    free(body);
    if((status < 200 || status > 299) && records_stopping(r)) {
      store_forward_free(&f);
      break;                   /* cut short by shutdown: not an attempt that failed */
    }
    if(status >= 200 && status <= 299) {
      log_info("%s: forwarded %s, status=%ld, attempts=%d", id,
               f.event ? f.event : "record.created", status, attempts + 1);
      store_forward_result(r->st, f.seq, STORE_FORWARD_DONE, 0, NULL);
    }
    else if(outcome == STORE_FORWARD_SET_ASIDE) {
      log_warn("%s: forward set aside after %d attempts (%s): the records behind it go on; "
               "`posternctl correspondence forward retry %s` sends it again once the "
               "application takes it", id, attempts + 1, err, id);
      metrics_forward_set_aside();
      store_forward_result(r->st, f.seq, outcome, 0, err);
    }
    else {
      /* 1 s doubling up to retry_max: the application is usually only restarting */
      long long delay = 1000;
      int k;
      for(k = 0; k < attempts && delay < retry_max_ms; k++)
        delay *= 2;
      if(delay > retry_max_ms)
        delay = retry_max_ms;
      log_warn("%s: forward deferred (%s), attempts=%d, next in %llds (if it lasts, check that "
               "forward_url in [inbound] answers 2xx and forward_secret_file matches the app's)",
               id, err, attempts + 1, delay / 1000);
      store_forward_result(r->st, f.seq, outcome, now_ms() + delay, err);
    }
    store_forward_free(&f);
  }
  http_client_free(c);
  tls_thread_done();
  return NULL;
}

/* ---- start and stop ----------------------------------------------------------------------- */

/* The forwarder runs once forward_url is set, at start or by a reload; it stays (idle) when a
 * reload takes forward_url out again. */
static int forwarder_ensure(struct inbound_records *r, const struct records_settings *set)
{
  if(!set->forward_url || r->forwarder_running)
    return 0;
  vendor_curl_start();
  if(pthread_create(&r->forwarder, NULL, forwarder_main, r))
    return -1;
  r->forwarder_running = 1;
  return 0;
}

int inbound_records_start(const struct config *cfg, struct store *st,
                          struct inbound_records **out)
{
  struct inbound_records *r = calloc(1, sizeof(*r));
  *out = NULL;
  if(!r)
    return -1;
  r->st = st;
  pthread_mutex_init(&r->lock, NULL);
  pthread_cond_init(&r->cond, NULL);
  r->set = settings_new(cfg);
  if(!r->set)
    goto fail;
  if(pthread_create(&r->builder, NULL, builder_main, r))
    goto fail;
  r->builder_running = 1;
  if(forwarder_ensure(r, r->set))
    goto fail;
  *out = r;
  return 0;
fail:
  inbound_records_stop(r);
  return -1;
}

int inbound_records_reload(struct inbound_records *r, const struct config *cfg)
{
  struct records_settings *set = settings_new(cfg), *old;
  if(!set)
    return -1;
  pthread_mutex_lock(&r->lock);
  old = r->set;
  r->set = set;
  pthread_mutex_unlock(&r->lock);
  settings_put(r, old);
  return forwarder_ensure(r, set);
}

void inbound_records_stop(struct inbound_records *r)
{
  if(!r)
    return;
  pthread_mutex_lock(&r->lock);
  r->stopping = 1;
  pthread_cond_broadcast(&r->cond);
  pthread_mutex_unlock(&r->lock);
  if(r->builder_running)
    pthread_join(r->builder, NULL);
  if(r->forwarder_running)
    pthread_join(r->forwarder, NULL);
  settings_put(r, r->set);
  pthread_cond_destroy(&r->cond);
  pthread_mutex_destroy(&r->lock);
  free(r);
}
