/* Private to relay/: the transport function table every delivery method implements
 * (OpenSMTPD's queue_backend shape), and the router. */
#ifndef POSTERN_RELAY_INT_H
#define POSTERN_RELAY_INT_H
#include "relay/relay.h"

/* One recipient of one delivery attempt: the transport fills reply (and may leave it 0 to
 * mean "not attempted", which defers). */
struct transport_rcpt {
  const struct store_rcpt *rcpt;
  struct smtp_reply reply;
};

struct transport {
  const char *type;                   /* the `type =` word of an [upstream] */
  enum rcpt_status delivered_status;  /* what a 2xx reply means: SENT, or CAPTURED */
  /* Opens a session to the upstream. Non-zero: r says why (for every recipient). */
  int  (*open)(const struct cfg_upstream *up, void **session, struct smtp_reply *r);
  /* Delivers one message to rcpts; per-recipient replies go in rcpts[i].reply. Non-zero: the
   * whole attempt failed with r (the session is then closed, not reused). */
  int  (*send)(void *session, const struct store_msg *m, const char *body, size_t len,
               struct transport_rcpt *rcpts, size_t n, struct smtp_reply *r);
  void (*close)(void *session);
  /* "relay=" value for log lines */
  void (*describe)(void *session, char *out, size_t outsz);
};

extern const struct transport transport_capture;
const struct transport *transport_for(const char *type);

/* The implicit upstream used when no route exists: keep the mail in the store. */
extern const struct cfg_upstream upstream_capture;

/* The upstream for a sender/recipient pair: first route in file order whose globs match;
 * with no routes at all, capture. NULL when routes exist and none matches. */
const struct cfg_upstream *route_for(const struct config *cfg, const char *sender,
                                     const char *recipient);

#endif
