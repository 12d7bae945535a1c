/* The outbound path's whole interface: the submission policy that accepts mail into the queue,
 * and the relay engine (scheduler, router, transports) that delivers what the queue holds. */
#ifndef POSTERN_RELAY_H
#define POSTERN_RELAY_H
#include <stdarg.h>
#include "global/config.h"
#include "store/store.h"
#include "smtp/smtp.h"
#include "global/http.h"

struct relay;

/* Starts the scheduler and cfg->delivery_workers workers over st. cfg must outlive the relay
 * or be replaced with relay_reload(). */
int relay_start(const struct config *cfg, struct store *st, struct relay **out);
/* Replaces the configuration at once: new deliveries use cfg, those in flight keep the one
 * they started with, and release(arg) is called (now, or from the thread that ends the last
 * delivery using it) when the previous configuration is used no more. -1: out of memory, the
 * previous one stays. */
typedef void (*relay_release_fn)(void *arg);
int relay_reload(struct relay *r, const struct config *cfg, relay_release_fn release, void *arg);
/* New mail was committed: look at the queue now instead of at the next timer. */
void relay_kick(struct relay *r);
/* Messages handed to delivery workers or waiting for one (the control socket's live stats). */
size_t relay_inflight(struct relay *r);
/* Delivery results the store refused, kept in memory until it takes them (their messages are
 * not handed out again meanwhile, and deliveries pause while there are any). */
size_t relay_unrecorded(struct relay *r);
/* The upstream the router picks for a sender/recipient pair ("capture" when mail is kept),
 * or NULL when routes exist and none matches: what posternctl's --upstream filter and queue
 * stats attribute a recipient not yet tried to. */
const char *relay_upstream_for(const struct config *cfg, const char *sender,
                               const char *recipient);
/* Stops taking new work and gives deliveries in progress early_ms to finish; then cuts the
 * connections of those still running except where an upstream is taking a message
 * (conn_cancel: their mail stays queued), and those too at late_ms; frees r. */
void relay_stop(struct relay *r, long long early_ms, long long late_ms);
/* The most a delivery in progress gets at shutdown, once the sessions have ended, before it
 * is cut (unless its upstream is taking the message: that one gets shutdown_grace) */
#define RELAY_STOP_EARLY_MS 10000

/* Configuration problems only the relay can see (routes to transports this build lacks...),
 * written as FILE:LINE: message; returns how many. */
int relay_check_config(const struct config *cfg, FILE *errs);

/* An upstream that neither a route nor another upstream's fallback reaches carries no mail:
 * one "FILE:LINE: message" line for each to warn(), which the daemon logs at start and
 * postern -n prints. Returns how many. */
int relay_route_warnings(const struct config *cfg, void (*warn)(void *arg, const char *line),
                         void *arg);
/* Where mail goes, in one line for the start-up log: "all mail -> upstream office365,
 * smtp.office365.com:587 STARTTLS, XOAUTH2", or each route in file order. */
void relay_describe_routes(const struct config *cfg, char *out, size_t outsz);

/* The smtp client settings of an [upstream] of type = smtp (host, port, tls, verify, ca_file,
 * tls_min_version, helo), as the smtp transport uses them: the doctor connects the same way. */
void relay_smtp_client_cfg(const struct config *cfg, const struct cfg_upstream *up,
                           struct smtp_client_cfg *cc);

/* ---- posternctl check: an API upstream's credentials proved without sending anything ---- */
#define RELAY_CHECK_STEPS 6
struct relay_check_step {
  char name[32];              /* "key", "request", "account", "token"... */
  int ok;                     /* 1 passed (a hint is then a warning), 0 failed */
  char detail[512];           /* what happened, in plain words; never a secret */
  char hint[512];             /* what to change and where (config key, provider setting), or "" */
};
struct relay_check {
  struct relay_check_step steps[RELAY_CHECK_STEPS];
  size_t nsteps;
};
/* Runs the check of up's transport (sendgrid: the key's scopes; ses: GetAccount; graph: a
 * token): 0 every step passed, 1 one failed, -1 the type has no such check (smtp is checked
 * step by step through smtp/ by the doctor itself). */
/* Appends one step to a caller's array of cap steps (*n of them used); the doctor keeps more
 * steps than an API check, hence the array rather than struct relay_check. */
struct relay_check_step *relay_check_vadd(struct relay_check_step *steps, size_t cap, size_t *n,
                                          const char *name, int ok, const char *hint,
                                          const char *fmt, va_list ap)
  __attribute__((format(printf, 7, 0)));
int relay_check_api(const struct config *cfg, const struct cfg_upstream *up,
                    struct relay_check *out);

/* The policy of role = submission listeners: trusted networks or AUTH may relay; accepted
 * messages are committed to the store before the 250. */
extern const struct smtp_policy relay_submission_policy;
struct relay_policy_ctx {
  const struct config *cfg;
  const struct cfg_listener *listener;
  struct store *store;
  struct relay *relay;
};

/* The SASL mechanism an smtp upstream's auth = names ("PLAIN", "XOAUTH2"...; *bearer set for
 * the two that carry an OAuth2 token), NULL for auto and none (transport_smtp.c). */
const char *relay_auth_mech(enum cfg_uauth a, int *bearer);

/* ---- API clients (http.c): global/http.h's client set up for one [upstream] (its ca_file and
 * tls_min_version), keeping the answer headers the APIs report in. Shared with posternctl's
 * provider wiring (tools/ctl_sendgrid.c, tools/ctl_twilio.c). ---------------------------- */
enum api_header {
  API_MESSAGE_ID = 0,          /* http_response.kept[]: X-Message-Id, or "" */
  API_ERROR_TYPE = 1,          /* x-amzn-ErrorType up to its ':', or "" */
};
/* up NULL: a client of no upstream (the system's CAs). HTTP_OK, or HTTP_FAILED (no memory). */
enum http_result relay_http_new(const struct cfg_upstream *up, struct http_client **out);
/* http_client_request, with kept[API_ERROR_TYPE] cut at its ':' */
enum http_result relay_http_request(struct http_client *c, const char *method, const char *url,
                                    const char *const *headers, const char *body, size_t len,
                                    struct http_response *resp);
/* errors[].message (SendGrid), message/Message (AWS), error.message (Graph) of a JSON answer,
 * as printable ASCII joined with "; "; "" when there is none. */
void http_error_text(const struct http_response *resp, char *out, size_t outsz);

#endif
