/* The outbound path's whole interface: the submission policy that accepts mail into the queue,
 * and the relay engine (scheduler, router, transports) that delivers what the queue holds. */
#ifndef POSTERN_RELAY_H
#define POSTERN_RELAY_H
#include "lib/config.h"
#include "lib/store.h"
#include "smtp/smtp.h"

struct relay;

/* Starts the scheduler and cfg->delivery_workers workers over st. cfg must outlive the relay
 * or be replaced with relay_reload(). */
int relay_start(const struct config *cfg, struct store *st, struct relay **out);
/* Replaces the configuration once no delivery uses the old one; returns the old one. */
const struct config *relay_reload(struct relay *r, const struct config *cfg);
/* New mail was committed: look at the queue now instead of at the next timer. */
void relay_kick(struct relay *r);
/* Stops taking new work, waits for deliveries in progress, frees r. */
void relay_stop(struct relay *r);

/* Configuration problems only the relay can see (routes to transports this build lacks...),
 * written as FILE:LINE: message; returns how many. */
int relay_check_config(const struct config *cfg, FILE *errs);

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

#endif
