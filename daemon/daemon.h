/* Private to daemon/: the listeners (bound sockets, acceptor threads, one thread per SMTP
 * session) and the configuration generations sessions hold while they run. */
#ifndef POSTERN_DAEMON_H
#define POSTERN_DAEMON_H
#include "lib/config.h"
#include "lib/store.h"
#include "relay/relay.h"

/* A configuration in use; sessions keep the one they started with until they end. */
struct generation {
  struct config *cfg;
  int refs;
};

struct daemon;

/* Binds every address of every listener (before privileges are dropped). errs gets one
 * "FILE:LINE: message" line per failure; returns the number of failures. */
int daemon_bind(struct daemon **out, struct config *cfg, FILE *errs);
/* Starts accepting: sessions use st and r. */
int daemon_serve(struct daemon *d, struct store *st, struct relay *r);
/* Installs a new configuration for new sessions (listener address changes need a restart). */
void daemon_reload(struct daemon *d, struct config *cfg);
/* Stops accepting, lets sessions finish until the grace period ends, then cuts the rest. */
void daemon_stop(struct daemon *d, long long grace_ms);
void daemon_free(struct daemon *d);
/* The configuration new sessions use (for the relay after a reload). */
struct config *daemon_config(struct daemon *d);

#endif
