/* The outbound path's whole interface: the submission policy that accepts mail into the queue,
 * and the relay engine (scheduler, router, transports) that delivers what the queue holds. */
#ifndef POSTERN_RELAY_H
#define POSTERN_RELAY_H
#include <stdarg.h>
#include "global/config.h"
#include "store/store.h"
#include "smtp/smtp.h"

struct relay;

/* Starts the scheduler and cfg->delivery_workers workers over st. cfg must outlive the relay
 * or be replaced with relay_reload(). */
int relay_start(const struct config *cfg, struct store *st, struct relay **out);
/* Replaces the configuration once no delivery uses the old one; returns the old one. */
const struct config *relay_reload(struct relay *r, const struct config *cfg);
/* New mail was committed: look at the queue now instead of at the next timer. */
void relay_kick(struct relay *r);
/* Messages handed to delivery workers or waiting for one (the control socket's live stats). */
size_t relay_inflight(struct relay *r);
/* The upstream the router picks for a sender/recipient pair ("capture" when mail is kept),
 * or NULL when routes exist and none matches: what posternctl's --upstream filter and queue
 * stats attribute a recipient not yet tried to. */
const char *relay_upstream_for(const struct config *cfg, const char *sender,
                               const char *recipient);
/* Stops taking new work, waits for deliveries in progress, frees r. */
void relay_stop(struct relay *r);

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

/* ---- HTTP API client (http.c): one libcurl easy handle per session, kept alive. Shared with
 * posternctl's provider wiring (tools/ctl_sendgrid.c, tools/ctl_twilio.c). ---------------- */
#define HTTP_BODY_MAX (64u * 1024u)        /* what we keep of an API's answer */
struct http_client;
struct http_response {
  long status;                 /* HTTP status; 0: no answer (error says why) */
  char *body;                  /* NUL-terminated, at most HTTP_BODY_MAX bytes kept */
  size_t len;
  long long retry_at_ms;       /* from X-RateLimit-Reset or Retry-After, wall clock; 0: none */
  char message_id[128];        /* X-Message-Id, or "" */
  char error_type[128];        /* x-amzn-ErrorType up to its ':', or "" */
  char error[256];             /* curl's reason when status is 0 */
};
/* TLS is always verified (up->ca_file for a private CA). 0 ok, -1 out of memory. */
int  http_client_new(const struct cfg_upstream *up, struct http_client **out);
/* Signs requests with SigV4 (CURLOPT_AWS_SIGV4, e.g. "aws:amz:eu-west-1:ses"); libcurl keeps
 * its own copies, so the caller may wipe key and secret at once. */
int  http_client_sigv4(struct http_client *c, const char *param, const char *key,
                       const char *secret);
/* Basic authentication (Twilio's account SID and auth token); libcurl keeps copies. */
int  http_client_basic(struct http_client *c, const char *user, const char *password);
/* method "GET", "POST" or another with a body ("PATCH", "PUT"); headers NULL-terminated
 * "Name: value" lines. 0 when an HTTP answer came (any status), -1 when none did (resp->error). Free resp after. */
int  http_client_request(struct http_client *c, const char *method, const char *url,
                         const char *const *headers, const char *body, size_t len,
                         struct http_response *resp);
void http_response_free(struct http_response *resp);
void http_client_free(struct http_client *c);
/* "https://host[:port]" of a URL, for relay= in log lines */
void http_url_host(const char *url, char *out, size_t outsz);
/* errors[].message (SendGrid), message/Message (AWS), error.message (Graph) of a JSON answer,
 * as printable ASCII joined with "; "; "" when there is none. */
void http_error_text(const struct http_response *resp, char *out, size_t outsz);

#endif
