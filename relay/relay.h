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
