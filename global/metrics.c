/* The metrics registry and its Prometheus text rendering (exposition format 0.0.4). Every
 * count is a C11 atomic in a fixed array indexed by small enums and by the slot of a label value
 * registered from the configuration; the name tables only grow, so a reader may scan them
 * without a lock (a slot is written before the count that publishes it). */
#include "global/metrics.h"
#include "lib/limits.h"
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define OTHER LIM_METRICS_NAMES          /* the slot of "other" in every name set */
#define NSLOTS (LIM_METRICS_NAMES + 1)
#define MIN_STATUS 100                   /* HTTP status codes counted: 100..599 */
#define NSTATUS 500

/* latency bucket bounds, seconds: an SMTP relay answers in tens of ms, an API or a slow
 * smarthost in seconds, a stuck one at the timeouts */
static const double bucket_le[] = { 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120 };
#define NBUCKETS (sizeof(bucket_le) / sizeof(bucket_le[0]))

struct nameset {
  char names[NSLOTS][LIM_METRICS_NAME + 1];
  atomic_uint n;                         /* published slots */
};

static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static struct nameset sets[METRICS_NSETS];

static atomic_ullong accepted[NSLOTS];
static atomic_ullong rcpts[NSLOTS][METRICS_NRESULTS];
static atomic_ullong lat_buckets[NSLOTS][NBUCKETS + 1];   /* not cumulative; [NBUCKETS]: +Inf */
static atomic_ullong lat_sum_us[NSLOTS];
static atomic_ullong tls_failures[METRICS_NSIDES];
static atomic_ullong auth_failures[METRICS_NSIDES];
static atomic_ullong limit_refused[NSLOTS][METRICS_NLIMITS];
static const char *const limit_names[METRICS_NLIMITS] = {
  "max_clients", "max_clients_per_ip", "connection_rate", "message_rate", "recipient_rate",
  "table_full",
};
static atomic_ullong inbound[METRICS_NSOURCES];
static atomic_ullong webhook[METRICS_NPATHS][NSTATUS];
static atomic_llong token_expiry_ms[NSLOTS];
static atomic_ullong forward_set_aside;
static atomic_llong results_unrecorded;
static atomic_llong rate_next_ms[NSLOTS];
static atomic_int rate_slow[NSLOTS];               /* 0 never set: as configured */
static atomic_int last_result[NSLOTS];          /* enum metrics_result + 1; 0 none yet */
static atomic_llong last_result_ms[NSLOTS];
/* The last hour, a slot per minute tagged with the minute it counts (since the epoch). The
 * first increment of a new minute retags and clears the slot: an increment racing that
 * clear may be lost, which a chart can afford and the hot path's lock-freedom is worth. */
static struct {
  atomic_llong minute;
  atomic_ullong n[METRICS_NFLOWS];
} flows[METRICS_MINUTES];

static const char *const result_names[METRICS_NRESULTS] = {
  [METRICS_SENT] = "sent", [METRICS_DEFERRED] = "deferred", [METRICS_BOUNCED] = "bounced",
  [METRICS_HELD] = "held", [METRICS_CAPTURED] = "captured",
};
static const char *const side_names[METRICS_NSIDES] = {
  [METRICS_SIDE_LISTENER] = "listener", [METRICS_SIDE_UPSTREAM] = "upstream",
};
static const char *const source_names[METRICS_NSOURCES] = {
  [METRICS_SRC_MX] = "mx", [METRICS_SRC_PARSE] = "inbound-parse", [METRICS_SRC_SMS] = "sms",
};
static const char *const path_names[METRICS_NPATHS] = {
  [METRICS_PATH_PARSE] = "/emailInbound", [METRICS_PATH_EVENTS] = "/events",
  [METRICS_PATH_SMS] = "/sms", [METRICS_PATH_HEALTHZ] = "/healthz",
  [METRICS_PATH_METRICS] = "/metrics", [METRICS_PATH_OTHER] = "other",
};

/* ---- names ---------------------------------------------------------------------------------- */

static unsigned slot_of(enum metrics_nameset set, const char *name)
{
  const struct nameset *ns = &sets[set];
  unsigned n = atomic_load_explicit(&ns->n, memory_order_acquire), i;
  if(!name)
    return OTHER;
  for(i = 0; i < n; i++)
    if(!strcmp(ns->names[i], name))
      return i;
  return OTHER;
}

void metrics_name_add(enum metrics_nameset set, const char *name)
{
  struct nameset *ns = &sets[set];
  unsigned n;
  if(!name || !name[0] || strlen(name) > LIM_METRICS_NAME)
    return;
  pthread_mutex_lock(&reg_lock);
  n = atomic_load_explicit(&ns->n, memory_order_relaxed);
  if(slot_of(set, name) == OTHER && n < LIM_METRICS_NAMES) {
    str_copy(ns->names[n], sizeof(ns->names[n]), name);
    atomic_store_explicit(&ns->n, n + 1, memory_order_release);
  }
  pthread_mutex_unlock(&reg_lock);
}

void metrics_configure(const struct config *cfg)
{
  size_t i;
  for(i = 0; i < cfg->nlisteners; i++)
    metrics_name_add(METRICS_LISTENERS, cfg->listeners[i].name);
  for(i = 0; i < cfg->nupstreams; i++)
    metrics_name_add(METRICS_UPSTREAMS, cfg->upstreams[i].name);
  metrics_name_add(METRICS_UPSTREAMS, "capture");
  for(i = 0; i < cfg->noauth2s; i++)
    metrics_name_add(METRICS_IDENTITIES, cfg->oauth2s[i].name);
}

void metrics_reset(void)
{
  pthread_mutex_lock(&reg_lock);
  memset(sets, 0, sizeof(sets));
  memset(accepted, 0, sizeof(accepted));
  memset(rcpts, 0, sizeof(rcpts));
  memset(lat_buckets, 0, sizeof(lat_buckets));
  memset(lat_sum_us, 0, sizeof(lat_sum_us));
  memset(tls_failures, 0, sizeof(tls_failures));
  memset(auth_failures, 0, sizeof(auth_failures));
  memset(limit_refused, 0, sizeof(limit_refused));
  memset(inbound, 0, sizeof(inbound));
  memset(webhook, 0, sizeof(webhook));
  memset(token_expiry_ms, 0, sizeof(token_expiry_ms));
  atomic_store(&forward_set_aside, 0);
  atomic_store(&results_unrecorded, 0);
  memset(last_result, 0, sizeof(last_result));
  memset(rate_next_ms, 0, sizeof(rate_next_ms));
  memset(rate_slow, 0, sizeof(rate_slow));
  memset(last_result_ms, 0, sizeof(last_result_ms));
  memset(flows, 0, sizeof(flows));
  pthread_mutex_unlock(&reg_lock);
}

/* ---- increments ----------------------------------------------------------------------------- */

static void inc(atomic_ullong *c)
{
  atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
}

static long long wall_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void flow_add(enum metrics_flow f, long long now_ms)
{
  long long minute = now_ms / 60000, seen;
  size_t i = (size_t)(minute % METRICS_MINUTES), k;
  seen = atomic_load_explicit(&flows[i].minute, memory_order_acquire);
  if(seen != minute &&
     atomic_compare_exchange_strong_explicit(&flows[i].minute, &seen, minute,
                                             memory_order_acq_rel, memory_order_acquire))
    for(k = 0; k < METRICS_NFLOWS; k++)
      atomic_store_explicit(&flows[i].n[k], 0, memory_order_relaxed);
  inc(&flows[i].n[f]);
}

void metrics_accepted(const char *listener)
{
  inc(&accepted[slot_of(METRICS_LISTENERS, listener)]);
  flow_add(METRICS_FLOW_ACCEPTED, wall_ms());
}

void metrics_rcpt_result(const char *upstream, enum metrics_result r)
{
  unsigned s = slot_of(METRICS_UPSTREAMS, upstream);
  long long now = wall_ms();
  if((unsigned)r >= METRICS_NRESULTS)
    return;
  inc(&rcpts[s][r]);
  atomic_store_explicit(&last_result_ms[s], now, memory_order_relaxed);
  atomic_store_explicit(&last_result[s], (int)r + 1, memory_order_relaxed);
  flow_add(r == METRICS_SENT || r == METRICS_CAPTURED ? METRICS_FLOW_DELIVERED :
           METRICS_FLOW_NOT, now);
}

void metrics_throughput(long long now_ms,
                        unsigned long long out[METRICS_MINUTES][METRICS_NFLOWS])
{
  long long minute = now_ms / 60000;
  size_t j, k;
  for(j = 0; j < METRICS_MINUTES; j++) {
    long long want = minute - (long long)(METRICS_MINUTES - 1 - j);
    size_t i = (size_t)(want % METRICS_MINUTES);
    int fresh = want >= 0 &&
                atomic_load_explicit(&flows[i].minute, memory_order_acquire) == want;
    for(k = 0; k < METRICS_NFLOWS; k++)
      out[j][k] = fresh ? atomic_load_explicit(&flows[i].n[k], memory_order_relaxed) : 0;
  }
}

void metrics_upstream_get(const char *upstream, struct metrics_upstream *out)
{
  unsigned s = slot_of(METRICS_UPSTREAMS, upstream), r;
  memset(out, 0, sizeof(*out));
  out->last = -1;
  if(s == OTHER)
    return;
  for(r = 0; r < METRICS_NRESULTS; r++)
    out->results[r] = atomic_load_explicit(&rcpts[s][r], memory_order_relaxed);
  out->last = atomic_load_explicit(&last_result[s], memory_order_relaxed) - 1;
  out->last_ms = atomic_load_explicit(&last_result_ms[s], memory_order_relaxed);
}

long long metrics_oauth2_expiry_get(const char *identity)
{
  unsigned s = slot_of(METRICS_IDENTITIES, identity);
  return s == OTHER ? 0 : atomic_load_explicit(&token_expiry_ms[s], memory_order_relaxed);
}

unsigned long long metrics_inbound_get(enum metrics_source src)
{
  return (unsigned)src < METRICS_NSOURCES ?
         atomic_load_explicit(&inbound[src], memory_order_relaxed) : 0;
}

const char *metrics_source_name(enum metrics_source src)
{
  return (unsigned)src < METRICS_NSOURCES ? source_names[src] : "other";
}

void metrics_rate_state(const char *upstream, long long next_slot_ms, int slow_factor)
{
  unsigned s = slot_of(METRICS_UPSTREAMS, upstream);
  if(s == OTHER)
    return;
  atomic_store_explicit(&rate_next_ms[s], next_slot_ms, memory_order_relaxed);
  atomic_store_explicit(&rate_slow[s], slow_factor, memory_order_relaxed);
}

void metrics_rate_get(const char *upstream, long long *next_slot_ms, int *slow_factor)
{
  unsigned s = slot_of(METRICS_UPSTREAMS, upstream);
  int f = s == OTHER ? 0 : atomic_load_explicit(&rate_slow[s], memory_order_relaxed);
  *next_slot_ms = s == OTHER ? 0 : atomic_load_explicit(&rate_next_ms[s], memory_order_relaxed);
  *slow_factor = f ? f : 1;
}

long long metrics_results_unrecorded_get(void)
{
  return atomic_load_explicit(&results_unrecorded, memory_order_relaxed);
}

void metrics_delivery_time(const char *upstream, long long usec)
{
  unsigned s = slot_of(METRICS_UPSTREAMS, upstream), b;
  double secs;
  if(usec < 0)
    usec = 0;
  secs = (double)usec / 1e6;
  for(b = 0; b < NBUCKETS && secs > bucket_le[b]; b++)
    ;
  inc(&lat_buckets[s][b]);
  atomic_fetch_add_explicit(&lat_sum_us[s], (unsigned long long)usec, memory_order_relaxed);
}

void metrics_tls_failure(enum metrics_side side)
{
  if((unsigned)side < METRICS_NSIDES)
    inc(&tls_failures[side]);
}

void metrics_auth_failure(enum metrics_side side)
{
  if((unsigned)side < METRICS_NSIDES)
    inc(&auth_failures[side]);
}

void metrics_limit_refused(const char *listener, enum metrics_limit why)
{
  if((unsigned)why < METRICS_NLIMITS)
    inc(&limit_refused[slot_of(METRICS_LISTENERS, listener)][why]);
}

void metrics_inbound(enum metrics_source src)
{
  if((unsigned)src < METRICS_NSOURCES)
    inc(&inbound[src]);
}

void metrics_webhook(enum metrics_path path, unsigned status)
{
  if((unsigned)path >= METRICS_NPATHS || status < MIN_STATUS || status >= MIN_STATUS + NSTATUS)
    return;
  inc(&webhook[path][status - MIN_STATUS]);
}

void metrics_forward_set_aside(void)
{
  inc(&forward_set_aside);
}

void metrics_results_unrecorded(long long n)
{
  atomic_store_explicit(&results_unrecorded, n, memory_order_relaxed);
}

void metrics_oauth2_expiry(const char *identity, long long expires_ms)
{
  unsigned s = slot_of(METRICS_IDENTITIES, identity);
  if(s != OTHER)       /* an expiry of "other" would mix identities: meaningless */
    atomic_store_explicit(&token_expiry_ms[s], expires_ms, memory_order_relaxed);
}

/* ---- rendering ------------------------------------------------------------------------------ */

static unsigned long long get(atomic_ullong *c)
{
  return atomic_load_explicit(c, memory_order_relaxed);
}

static int family(struct buf *out, const char *name, const char *type, const char *help)
{
  return buf_addf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A label value as the exposition format wants it: backslash, double quote and line feed
 * escaped; everything else (UTF-8 included) as is. */
static int add_label_value(struct buf *out, const char *v)
{
  const char *p;
  int result = 0;
  for(p = v; *p && !result; p++) {
    if(*p == '\\')
      result = buf_add(out, "\\\\", 2);
    else if(*p == '"')
      result = buf_add(out, "\\\"", 2);
    else if(*p == '\n')
      result = buf_add(out, "\\n", 2);
    else
      result = buf_add(out, p, 1);
  }
  return result;
}

/* name{label="value"[,label2="value2"]} */
static int sample_start(struct buf *out, const char *name, const char *label, const char *value,
                        const char *label2, const char *value2)
{
  int result = buf_addstr(out, name);
  if(!result && label) {
    result = buf_addf(out, "{%s=\"", label) || add_label_value(out, value) ||
             buf_addstr(out, "\"");
    if(!result && label2)
      result = buf_addf(out, ",%s=\"", label2) || add_label_value(out, value2) ||
               buf_addstr(out, "\"");
    if(!result)
      result = buf_addstr(out, "}");
  }
  return result;
}

static int sample_u(struct buf *out, const char *name, const char *label, const char *value,
                    const char *label2, const char *value2, unsigned long long v)
{
  return sample_start(out, name, label, value, label2, value2) || buf_addf(out, " %llu\n", v);
}

/* The slots of a set to show: the registered ones, and "other" when it counted anything. */
static unsigned shown(enum metrics_nameset set)
{
  return atomic_load_explicit(&sets[set].n, memory_order_acquire);
}

static const char *slot_name(enum metrics_nameset set, unsigned s)
{
  return s == OTHER ? "other" : sets[set].names[s];
}

static int render_counters(struct buf *out)
{
  unsigned n, s, r;
  int result;

  n = shown(METRICS_LISTENERS);
  result = family(out, "postern_messages_accepted_total", "counter",
                  "Messages accepted (250 to DATA) by SMTP submission listener.");
  for(s = 0; !result && s < NSLOTS; s++) {
    if(s >= n && (s != OTHER || !get(&accepted[s])))
      continue;
    result = sample_u(out, "postern_messages_accepted_total", "listener",
                      slot_name(METRICS_LISTENERS, s), NULL, NULL, get(&accepted[s]));
  }

  n = shown(METRICS_UPSTREAMS);
  if(!result)
    result = family(out, "postern_recipients_total", "counter",
                    "Recipient delivery results by upstream (sent, deferred, bounced, held, "
                    "captured).");
  for(s = 0; !result && s < NSLOTS; s++) {
    unsigned long long any = 0;
    for(r = 0; r < METRICS_NRESULTS; r++)
      any += get(&rcpts[s][r]);
    if(s >= n && (s != OTHER || !any))
      continue;
    for(r = 0; !result && r < METRICS_NRESULTS; r++)
      result = sample_u(out, "postern_recipients_total", "upstream",
                        slot_name(METRICS_UPSTREAMS, s), "result", result_names[r],
                        get(&rcpts[s][r]));
  }

  if(!result)
    result = family(out, "postern_tls_handshake_failures_total", "counter",
                    "TLS handshakes that failed, at our listeners or to upstreams.");
  for(s = 0; !result && s < METRICS_NSIDES; s++)
    result = sample_u(out, "postern_tls_handshake_failures_total", "side", side_names[s], NULL,
                      NULL, get(&tls_failures[s]));
  if(!result)
    result = family(out, "postern_auth_failures_total", "counter",
                    "Failed AUTH of clients at our listeners, and logins refused by upstreams.");
  for(s = 0; !result && s < METRICS_NSIDES; s++)
    result = sample_u(out, "postern_auth_failures_total", "side", side_names[s], NULL, NULL,
                      get(&auth_failures[s]));
  if(!result)
    result = family(out, "postern_client_limit_refusals_total", "counter",
                    "Connections, messages and recipients refused by a listener's limits "
                    "(max_clients, and per client: max_clients_per_ip, connection_rate, "
                    "message_rate, recipient_rate).");
  for(s = 0; !result && s < NSLOTS; s++)
    for(r = 0; !result && r < METRICS_NLIMITS; r++) {
      unsigned long long v = get(&limit_refused[s][r]);
      if(!v)
        continue;
      result = sample_u(out, "postern_client_limit_refusals_total", "listener",
                        slot_name(METRICS_LISTENERS, s), "limit", limit_names[r], v);
    }
  if(!result)
    result = family(out, "postern_inbound_messages_total", "counter",
                    "Inbound messages stored, by source.");
  for(s = 0; !result && s < METRICS_NSOURCES; s++)
    result = sample_u(out, "postern_inbound_messages_total", "source", source_names[s], NULL,
                      NULL, get(&inbound[s]));
  if(!result)
    result = family(out, "postern_forward_set_aside_total", "counter",
                    "Correspondence records set aside after forward_max_attempts refusals or "
                    "forward_max_age.") ||
             buf_addf(out, "postern_forward_set_aside_total %llu\n", get(&forward_set_aside));
  if(!result)
    result = family(out, "postern_webhook_requests_total", "counter",
                    "HTTP requests answered by the HTTP listener, by path and status code.");
  for(s = 0; !result && s < METRICS_NPATHS; s++)
    for(r = 0; !result && r < NSTATUS; r++) {
      unsigned long long v = get(&webhook[s][r]);
      char code[8];
      if(!v)
        continue;
      snprintf(code, sizeof(code), "%u", r + MIN_STATUS);
      result = sample_u(out, "postern_webhook_requests_total", "path", path_names[s], "code",
                        code, v);
    }
  return result;
}

static int render_histogram(struct buf *out)
{
  const char *name = "postern_delivery_duration_seconds";
  unsigned n = shown(METRICS_UPSTREAMS), s, b;
  int result = family(out, name, "histogram",
                      "Time of one delivery attempt to an upstream (session set-up included "
                      "when a new one was needed), seconds.");
  for(s = 0; !result && s < NSLOTS; s++) {
    unsigned long long counts[NBUCKETS + 1], total = 0;
    const char *up = slot_name(METRICS_UPSTREAMS, s);
    /* one read of each bucket, so +Inf and _count agree with the buckets they sum */
    for(b = 0; b <= NBUCKETS; b++)
      total += counts[b] = get(&lat_buckets[s][b]);
    if(s >= n && (s != OTHER || !total))
      continue;
    total = 0;
    for(b = 0; !result && b <= NBUCKETS; b++) {
      char le[32];
      total += counts[b];
      if(b < NBUCKETS)
        snprintf(le, sizeof(le), "%g", bucket_le[b]);
      else
        str_copy(le, sizeof(le), "+Inf");
      result = sample_u(out, "postern_delivery_duration_seconds_bucket", "upstream", up, "le",
                        le, total);
    }
    if(!result)
      result = sample_start(out, "postern_delivery_duration_seconds_sum", "upstream", up, NULL,
                            NULL) ||
               buf_addf(out, " %.6f\n", (double)get(&lat_sum_us[s]) / 1e6);
    if(!result)
      result = sample_u(out, "postern_delivery_duration_seconds_count", "upstream", up, NULL,
                        NULL, total);
  }
  return result;
}

static int render_gauges(struct buf *out, const struct metrics_queue *q, long long now_ms)
{
  unsigned n = shown(METRICS_IDENTITIES), s;
  int result = 0;
  if(q) {
    long long age = q->oldest_created_ms > 0 ? (now_ms - q->oldest_created_ms) / 1000 : 0;
    result = family(out, "postern_queue_recipients", "gauge",
                    "Recipients waiting in the queue, by state.") ||
             buf_addf(out, "postern_queue_recipients{state=\"queued\"} %lld\n"
                      "postern_queue_recipients{state=\"deferred\"} %lld\n"
                      "postern_queue_recipients{state=\"held\"} %lld\n",
                      q->queued, q->deferred, q->held) ||
             family(out, "postern_queue_oldest_age_seconds", "gauge",
                    "Age of the oldest message with a recipient still waiting (0: none).") ||
             buf_addf(out, "postern_queue_oldest_age_seconds %lld\n", age < 0 ? 0 : age);
  }
  if(!result)
    result = family(out, "postern_results_unrecorded", "gauge",
                    "Delivery results the store refused, kept in memory until it takes them "
                    "(deliveries pause meanwhile).") ||
             buf_addf(out, "postern_results_unrecorded %lld\n",
                      (long long)atomic_load_explicit(&results_unrecorded,
                                                      memory_order_relaxed));
  if(!result)
    result = family(out, "postern_oauth2_token_expiry_seconds", "gauge",
                    "Seconds until the current OAuth2 access token of an identity expires "
                    "(negative: expired); absent while it has none.");
  for(s = 0; !result && s < n; s++) {
    long long exp = atomic_load_explicit(&token_expiry_ms[s], memory_order_relaxed);
    if(!exp)
      continue;
    result = sample_start(out, "postern_oauth2_token_expiry_seconds", "identity",
                          slot_name(METRICS_IDENTITIES, s), NULL, NULL) ||
             buf_addf(out, " %lld\n", (exp - now_ms) / 1000);
  }
  return result;
}

int metrics_render(struct buf *out, const struct metrics_queue *q, long long now_ms)
{
  int result = render_counters(out);
  if(!result)
    result = render_histogram(out);
  if(!result)
    result = render_gauges(out, q, now_ms);
  return result;
}
