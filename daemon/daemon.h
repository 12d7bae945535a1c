/* Private to daemon/: the listeners (bound sockets, acceptor threads, one thread per SMTP
 * session) and the configuration generations sessions hold while they run. */
#ifndef POSTERN_DAEMON_H
#define POSTERN_DAEMON_H
#include "global/config.h"
#include "store/store.h"
#include "relay/relay.h"
#include "tls/tls.h"

/* A configuration in use; sessions keep the one they started with until they end. With it go
 * the certificates read for it: a SIGHUP reads them again into a new generation, and a session
 * that started before keeps (and may still STARTTLS with) the ones of its own. */
struct generation {
  struct config *cfg;
  struct tls_server_ctx **tls;     /* per cfg->listeners[i]; NULL where tls = none */
  int refs;
};

/* The certificate and key of every listener with tls != none, checked as secrets are (a key
 * others may read, a certificate others may write, is refused) and loaded. errs gets one
 * "FILE:LINE: message" line per problem; returns the number of problems. *out (NULL when
 * problems) is an array of cfg->nlisteners for daemon_bind or daemon_reload, which own it. */
int daemon_tls_load(const struct config *cfg, struct tls_server_ctx ***out, FILE *errs);
void daemon_tls_free(struct tls_server_ctx **tls, size_t n);

struct daemon;

/* Binds every address of every listener (before privileges are dropped). errs gets one
 * "FILE:LINE: message" line per failure; returns the number of failures. */
int daemon_bind(struct daemon **out, struct config *cfg, struct tls_server_ctx **tls,
                FILE *errs);
/* Starts accepting: sessions use st and r; auth_ok says the SASL server is set up (AUTH is
 * offered on listeners with auth != none only then). */
int daemon_serve(struct daemon *d, struct store *st, struct relay *r, int auth_ok);
/* Installs a new configuration and its certificates for new sessions (listener address
 * changes need a restart). */
void daemon_reload(struct daemon *d, struct config *cfg, struct tls_server_ctx **tls);
/* Stops accepting, lets sessions finish until the grace period ends, then cuts the rest. */
void daemon_stop(struct daemon *d, long long grace_ms);
void daemon_free(struct daemon *d);
/* The socket bound for [inbound] http_address (-1 when none); the caller owns it from here. */
int daemon_http_fd(struct daemon *d);
/* The configuration new sessions use (for the relay after a reload). */
struct config *daemon_config(struct daemon *d);
/* SMTP sessions in progress (the control socket's live stats). */
size_t daemon_sessions(struct daemon *d);

/* The control socket (control.c): data_dir/control.sock, mode 0600, owned by the daemon's
 * user; one command line in, one JSON line out (flush, reload, stats, kick). */
#define CONTROL_SOCKET_NAME "control.sock"
struct control;
struct control_env {
  struct daemon *d;
  struct store *st;
  struct relay *relay;
  /* the same reload as SIGHUP; 0 when the new configuration is in use, else err says why */
  int (*reload)(void *arg, char *err, size_t errsz);
  void *reload_arg;
};
/* Binds data_dir/control.sock (refused when another daemon answers on it) and starts its
 * thread. Call after privileges are dropped, so the socket belongs to the daemon's user. */
int control_start(const char *data_dir, const struct control_env *env, struct control **out);
/* Stops the thread, closes and unlinks the socket (NULL is fine). */
void control_stop(struct control *c);

#endif
