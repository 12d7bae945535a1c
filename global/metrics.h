/* Counters, gauges and a latency histogram for GET /metrics, rendered in the Prometheus text
 * exposition format 0.0.4. Hot paths (sessions, the store writer, delivery workers) only do
 * atomic increments: no lock and no allocation on the way in; the work is done at scrape time. */
#ifndef POSTERN_METRICS_H
#define POSTERN_METRICS_H
#include "lib/buf.h"
#include "global/config.h"

/* Label values taken from the configuration. Each set holds up to LIM_METRICS_NAMES names;
 * a name that was never registered (or came past the cap) is counted as "other". */
enum metrics_nameset { METRICS_LISTENERS, METRICS_UPSTREAMS, METRICS_IDENTITIES, METRICS_NSETS };

enum metrics_result {
  METRICS_SENT, METRICS_DEFERRED, METRICS_BOUNCED, METRICS_HELD, METRICS_CAPTURED,
  METRICS_NRESULTS
};
enum metrics_side { METRICS_SIDE_LISTENER, METRICS_SIDE_UPSTREAM, METRICS_NSIDES };
enum metrics_source { METRICS_SRC_MX, METRICS_SRC_PARSE, METRICS_SRC_SMS, METRICS_NSOURCES };
/* Why a client was refused by a per-listener or per-client limit */
enum metrics_limit {
  METRICS_LIMIT_MAX_CLIENTS, METRICS_LIMIT_PER_IP, METRICS_LIMIT_CONN_RATE,
  METRICS_LIMIT_MSG_RATE, METRICS_LIMIT_RCPT_RATE, METRICS_LIMIT_TABLE, METRICS_NLIMITS
};
enum metrics_path {
  METRICS_PATH_PARSE, METRICS_PATH_EVENTS, METRICS_PATH_SMS, METRICS_PATH_HEALTHZ,
  METRICS_PATH_METRICS, METRICS_PATH_OTHER, METRICS_NPATHS
};

/* Registers name in a set (idempotent; thread-safe, but meant for start-up and reload). */
void metrics_name_add(enum metrics_nameset set, const char *name);
/* Registers the listeners, upstreams (and the built-in capture) and OAuth2 identities of cfg.
 * Names of an earlier configuration stay: counters never go back. */
void metrics_configure(const struct config *cfg);

/* the hot-path increments */
void metrics_accepted(const char *listener);
void metrics_rcpt_result(const char *upstream, enum metrics_result r);
void metrics_delivery_time(const char *upstream, long long usec);
void metrics_tls_failure(enum metrics_side side);
void metrics_auth_failure(enum metrics_side side);
void metrics_limit_refused(const char *listener, enum metrics_limit why);
void metrics_inbound(enum metrics_source src);
void metrics_webhook(enum metrics_path path, unsigned status);
/* A correspondence record the application kept refusing was set aside. */
void metrics_forward_set_aside(void);
/* Delivery results the store refused, kept in memory by the relay until it takes them. */
void metrics_results_unrecorded(long long n);
/* The expiry of an identity's current access token (wall clock ms), 0 when it has none. */
void metrics_oauth2_expiry(const char *identity, long long expires_ms);

/* What the store says about the queue at scrape time (recipients by state, oldest message). */
struct metrics_queue {
  long long queued, deferred, held;
  long long oldest_created_ms;   /* created_ms of the oldest message still waiting; 0 none */
};

/* Appends the whole exposition to out (whose cap bounds it). q may be NULL (store unreadable:
 * the queue gauges are left out). now_ms is the wall clock. 0 ok, else a buf_result. */
int metrics_render(struct buf *out, const struct metrics_queue *q, long long now_ms);

/* ---- what the console's overview reads ------------------------------------------------------- */
#define METRICS_MINUTES 60
enum metrics_flow {
  METRICS_FLOW_ACCEPTED,         /* messages accepted by a listener */
  METRICS_FLOW_DELIVERED,        /* recipients sent or captured */
  METRICS_FLOW_NOT,              /* recipients deferred, bounced or held */
  METRICS_NFLOWS
};
/* Per minute over the last hour, out[METRICS_MINUTES - 1] being the minute of now_ms (wall
 * clock). Counted since the daemon started. */
void metrics_throughput(long long now_ms,
                        unsigned long long out[METRICS_MINUTES][METRICS_NFLOWS]);
struct metrics_upstream {
  unsigned long long results[METRICS_NRESULTS];   /* recipients since the daemon started */
  int last;                      /* the enum metrics_result of the latest, -1 none yet */
  long long last_ms;             /* when, wall clock */
};
void metrics_upstream_get(const char *upstream, struct metrics_upstream *out);
long long metrics_oauth2_expiry_get(const char *identity);   /* wall clock ms, 0 none */
unsigned long long metrics_inbound_get(enum metrics_source src);
const char *metrics_source_name(enum metrics_source src);
long long metrics_results_unrecorded_get(void);
/* An upstream's sending pace (rate =, or slowed after 4.7.x replies): the wall-clock ms of its
 * next free sending slot (0: one may go now) and how many times slower than configured it
 * sends (1: as configured). Set by the relay, read by the console. */
void metrics_rate_state(const char *upstream, long long next_slot_ms, int slow_factor);
void metrics_rate_get(const char *upstream, long long *next_slot_ms, int *slow_factor);

/* Forgets every count and name (unit tests). */
void metrics_reset(void);

#endif
