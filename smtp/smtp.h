/* The SMTP protocol engines. The server session is plain sequential code over a struct conn,
 * driven by the policy object its listener hands it: who may connect, which senders and
 * recipients are accepted, and where an accepted message goes. One engine serves every
 * listener (submission and MX). */
#ifndef POSTERN_SMTP_H
#define POSTERN_SMTP_H
#include <stddef.h>
#include "lib/conn.h"
#include "lib/smtpgram.h"
#include "lib/limits.h"

/* What a policy may read about the session it is asked about. */
struct smtp_session_info {
  const char *listener;               /* listener name */
  const char *peer_ip;                /* printable */
  int peer_port;
  int family;                         /* AF_INET / AF_INET6 */
  unsigned char peer_addr[16];        /* 4 or 16 bytes */
  int peer_loopback;
  char helo[LIM_SMTP_HELO + 1];       /* "" before HELO/EHLO */
  int esmtp;                          /* EHLO was used */
  int tls;                            /* the session is encrypted */
  const char *auth_user;              /* NULL unless authenticated */
};

struct smtp_envelope {
  char id[LIM_QUEUE_ID + 1];          /* set when the message content starts */
  struct smtp_path_params mail;
  struct smtp_path_params *rcpts;
  size_t nrcpts;
};

/* Each decision returns 0 to accept, or non-zero with r set to the answer. */
struct smtp_policy {
  int  (*connect)(void *ctx, const struct smtp_session_info *s, struct smtp_reply *r);
  int  (*mail)(void *ctx, const struct smtp_session_info *s, const struct smtp_path_params *from,
               struct smtp_reply *r);
  int  (*rcpt)(void *ctx, const struct smtp_session_info *s, const struct smtp_envelope *env,
               const struct smtp_path_params *to, struct smtp_reply *r);
  /* The message is complete (Received, and for submission Message-ID/Date, added): make it
   * durable and set r to "250 2.0.0 Ok: queued as ID" only once it is, else to the 4xx/5xx. */
  void (*message)(void *ctx, const struct smtp_session_info *s, const struct smtp_envelope *env,
                  const char *msg, size_t len, struct smtp_reply *r);
};

struct smtp_server_cfg {
  const char *hostname;               /* greeting, Received, Message-ID */
  const char *listener;               /* name for logs and Received */
  long long max_message_size;
  long max_recipients;
  int max_errors;                     /* bad commands before 421 and close */
  int idle_ms;                        /* per-command idle timeout */
  long long session_ms;               /* total session deadline */
  int add_missing_headers;            /* add Message-ID: and Date: when absent (submission) */
  volatile int *stopping;             /* when set, a session ends at the next command with 421 */
};

/* Runs one session to its end on c (already accepted), then returns; c is not freed. */
void smtp_server_run(struct conn *c, const struct smtp_server_cfg *cfg,
                     const struct smtp_policy *pol, void *pol_ctx);

#endif
