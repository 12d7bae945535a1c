/* The SMTP protocol engines. The server session is plain sequential code over a struct conn,
 * driven by the policy object its listener hands it: who may connect, which senders and
 * recipients are accepted, and where an accepted message goes. One engine serves every
 * listener (submission and MX). */
#ifndef POSTERN_SMTP_H
#define POSTERN_SMTP_H
#include <stddef.h>
#include "lib/conn.h"
#include "global/smtpgram.h"
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

/* ---- anvil: per-client limits shared by all sessions (smtp/anvil.c) ---------------------- */
#define ANVIL_KEY_LEN CONN_CLIENT_KEY_LEN /* an IPv4 address or an IPv6 /64 (lib/conn.h) */

struct anvil_limits {
  long max_conc;                      /* sessions per client at once; 0 none */
  long conn_rate, msg_rate, rcpt_rate; /* per client per minute; 0 none */
};

enum anvil_verdict {
  ANVIL_OK = 0, ANVIL_CONCURRENCY, ANVIL_CONN_RATE, ANVIL_MSG_RATE, ANVIL_RCPT_RATE,
  ANVIL_FULL,                         /* the table holds only clients with sessions open */
};

/* The client a peer address counts as (family AF_INET/AF_INET6, addr its 4 or 16 bytes). */
void anvil_key(int family, const unsigned char *addr, unsigned char key[ANVIL_KEY_LEN]);
/* A listener's id in the table, from its name. */
unsigned anvil_service(const char *name);
/* A new connection: counted, and admitted (a session held until anvil_disconnect) only on
 * ANVIL_OK. *report is set when the refusal should be logged (once a minute per client). */
enum anvil_verdict anvil_connect(unsigned service, const unsigned char *key,
                                 const struct anvil_limits *l, long long now_ms, int *report);
void anvil_disconnect(unsigned service, const unsigned char *key, long long now_ms);
/* A MAIL transaction / an accepted recipient, against the message and recipient rates. */
enum anvil_verdict anvil_message(unsigned service, const unsigned char *key,
                                 const struct anvil_limits *l, long long now_ms, int *report);
enum anvil_verdict anvil_rcpt(unsigned service, const unsigned char *key,
                              const struct anvil_limits *l, long long now_ms, int *report);
/* AUTH: how long the client stays locked out (0: not locked); a failure counted, locking the
 * client for lock_ms once it reaches max; returns the client's failures. */
long long anvil_auth_locked(const unsigned char *key, long long now_ms);
unsigned  anvil_auth_failure(const unsigned char *key, unsigned max, long long lock_ms,
                             long long now_ms);
/* Around each check of a client's credentials: begin returns the ms the client must wait
 * (locked out, or the checks already under way could reach max) and checks nothing, else 0
 * with one check reserved (*reserved) so that a burst of sessions cannot all get past the
 * limit at once. *report: the refusal is to be logged (once a minute per client). end gives
 * the reservation back and, when the check failed, counts it as anvil_auth_failure does. */
long long anvil_auth_begin(const unsigned char *key, unsigned max, long long now_ms,
                           int *reserved, int *report);
unsigned  anvil_auth_end(const unsigned char *key, int reserved, int failed, unsigned max,
                         long long lock_ms, long long now_ms);
/* Forgets everything (tests, fuzzing). */
void anvil_reset(void);

struct tls_server_ctx;

enum smtp_tls_mode {
  SMTP_TLS_NONE = 0,
  SMTP_TLS_STARTTLS,                  /* offered after EHLO */
  SMTP_TLS_IMPLICIT,                  /* the handshake comes before the greeting (port 465) */
};

struct smtp_server_cfg {
  const char *hostname;               /* greeting, Received, Message-ID */
  const char *listener;               /* name for logs and Received */
  long long max_message_size;
  long max_recipients;
  int max_errors;                     /* bad commands before 421 and close */
  int idle_ms;                        /* the time to receive one command line, DATA line or
                                         BDAT chunk (not the gap between two bytes) */
  long long helo_ms;                  /* from connect until HELO/EHLO is done; 0: none */
  unsigned max_transactions;          /* MAIL transactions per session; 0: the default */
  long long session_ms;               /* total session deadline */
  int add_missing_headers;            /* add Message-ID: and Date: when absent (submission) */
  volatile int *stopping;             /* when set, a session ends at the next command with 421 */
  int wake_fd;                        /* readable once stopping is set: wakes sessions that
                                         wait for a command outside a transaction; 0 none
                                         (configurations are zero-initialised) */

  /* TLS (RFC 3207) and AUTH (RFC 4954); all zero: neither is offered */
  enum smtp_tls_mode tls_mode;
  struct tls_server_ctx *tls;         /* the listener's certificate; NULL: no TLS */
  const char *auth_mechs;             /* auth_mechanisms; NULL or "": AUTH not offered */
  const char *auth_plaintext_mechs;   /* CRAM-MD5 / SCRAM-* offered before TLS on a listener
                                         not bound to loopback; NULL: none */
  int auth_available;                 /* auth_server_init worked (the sasldb is usable) */
  int loopback_listener;              /* the socket is bound to a loopback address: a loopback
                                         peer may use PLAIN and LOGIN without TLS */
  int max_auth_failures;              /* failed AUTHs from one client before 421 and a lockout;
                                         0: default */
  long long auth_lockout_ms;          /* how long a client is locked out; 0: default */
  /* per-client limits (anvil); anvil_service 0: none apply to this session */
  unsigned anvil_service;
  struct anvil_limits anvil;
};

/* Reads the PROXY protocol header (v1 or v2) a load balancer sends first, before
 * deadline_ms, and makes the client it names c's peer (a LOCAL/UNKNOWN header keeps the
 * balancer's). 0 ok; -1 with why set (the connection is to be closed without a word). */
int smtp_proxy_read(struct conn *c, long long deadline_ms, char *why, size_t whysz);

/* Runs one session to its end on c (already accepted), then returns; c is not freed. */
void smtp_server_run(struct conn *c, const struct smtp_server_cfg *cfg,
                     const struct smtp_policy *pol, void *pol_ctx);

/* ---- the client engine -------------------------------------------------------------------
 * One upstream session in steps the smtp transport runs in a row and the doctor
 * (`posternctl check`) runs one at a time: connect (and implicit TLS) with the greeting, EHLO,
 * STARTTLS, AUTH, transactions, RSET, QUIT. Every step returns one of enum smtp_client_result
 * and fills a reply: the server's, or one made up for what happened on our side (a refused
 * connection, a failed handshake) with the code it maps to. */

enum smtp_client_result {
  SMTP_CLIENT_OK = 0,
  SMTP_CLIENT_REPLY,      /* the server answered, not with success: r holds it; the session
                           * is still usable */
  SMTP_CLIENT_FAILED,     /* the session is unusable (I/O, timeout, TLS, protocol): r says why */
  SMTP_CLIENT_AUTH,       /* the server refused our credentials (535 and friends): r holds it */
  SMTP_CLIENT_STALE,      /* a reused connection was found dead before anything was sent:
                           * open a new one and try again */
};

enum smtp_client_tls {
  SMTP_CLIENT_TLS_NONE = 0, SMTP_CLIENT_TLS_STARTTLS, SMTP_CLIENT_TLS_OPPORTUNISTIC,
  SMTP_CLIENT_TLS_IMPLICIT,
};

struct smtp_client_cfg {
  const char *host;               /* connected to, sent as SNI, checked in the certificate */
  int port;
  enum smtp_client_tls tls;
  int verify_peer;                /* 0: verify = none */
  const char *ca_file;            /* NULL: the system's CA store */
  const char *tls_min_version;    /* "TLSv1.2" (NULL) or "TLSv1.3" */
  const char *helo;               /* our name in EHLO */
  int connect_timeout_ms;         /* per address; 0: 30 s */
  int command_timeout_ms;         /* per reply; 0: 300 s (RFC 5321 4.5.3.2) */
  int data_timeout_ms;            /* the reply to the final "."; 0: 600 s */
  const char *log_name;           /* the upstream's name in log lines */
  int trace;                      /* the transcript at debug level, AUTH payloads masked */
  /* Every line of the session as it goes: dir '>' sent (AUTH payloads masked), '<' received,
   * '*' what happened on our side (each address tried, TLS). NULL: none. The doctor's
   * transcript. */
  void (*transcript)(void *arg, char dir, const char *line, size_t len);
  void *transcript_arg;
};

#define SMTP_CAP_ESMTP       0x001  /* EHLO worked (else HELO) */
#define SMTP_CAP_SIZE        0x002
#define SMTP_CAP_PIPELINING  0x004
#define SMTP_CAP_STARTTLS    0x008
#define SMTP_CAP_AUTH        0x010
#define SMTP_CAP_8BITMIME    0x020
#define SMTP_CAP_SMTPUTF8    0x040
#define SMTP_CAP_ENHANCED    0x080  /* ENHANCEDSTATUSCODES */
#define SMTP_CAP_DSN         0x100

struct smtp_client_caps {
  unsigned flags;                 /* SMTP_CAP_* */
  long long size;                 /* SIZE value; 0 when none was given */
  char auth[256];                 /* the AUTH mechanisms offered, upper case, blank-separated */
};

/* One recipient of smtp_client_send: its reply is RCPT's when that was not 2xx, else the
 * reply to the message content. */
struct smtp_client_rcpt {
  const char *address;
  const char *notify;             /* DSN NOTIFY= value or NULL (sent when DSN is offered) */
  const char *orcpt;              /* DSN ORCPT= value or NULL */
  struct smtp_reply reply;
};

struct smtp_client_msg {
  const char *sender;             /* "" for the null reverse-path */
  int body_8bit;                  /* BODY=8BITMIME when offered */
  int smtputf8;                   /* SMTPUTF8 was asked for on submission */
  const char *envid, *ret;        /* DSN parameters of MAIL, or NULL */
  const char *body;               /* the message; lines end in CRLF on the wire whatever it uses */
  size_t len;
};

struct smtp_client;

int  smtp_client_new(const struct smtp_client_cfg *cfg, struct smtp_client **out);
/* Closes without QUIT and frees (NULL is fine). */
void smtp_client_free(struct smtp_client *c);
/* Resolves host (IPv4 and IPv6), tries each address until one answers, does the handshake for
 * implicit TLS and reads the greeting. */
int  smtp_client_connect(struct smtp_client *c, struct smtp_reply *r);
/* EHLO, falling back to HELO, and the capabilities it announces. */
int  smtp_client_ehlo(struct smtp_client *c, struct smtp_reply *r);
/* STARTTLS, the handshake (certificate and host name checked unless verify_peer is 0), then
 * EHLO again: nothing the server said before the handshake survives it (RFC 3207). */
int  smtp_client_starttls(struct smtp_client *c, struct smtp_reply *r);
/* AUTH through auth/: mechs is a preference list (NULL: the strongest both sides have).
 * PLAIN and LOGIN are never sent over an unencrypted connection. */
int  smtp_client_auth(struct smtp_client *c, const char *mechs, const char *user,
                      const char *secret, size_t secretlen, struct smtp_reply *r);
/* AUTH XOAUTH2 or OAUTHBEARER (mech) with a bearer token. */
int  smtp_client_auth_bearer(struct smtp_client *c, const char *mech, const char *user,
                             const char *token, struct smtp_reply *r);
/* One transaction: MAIL, RCPT for each recipient and the content (pipelined when the server
 * offers PIPELINING; a reused connection is RSET first). SMTP_CLIENT_OK when the transaction
 * ran, whatever each recipient's reply says (see rcpts[i].reply). A message larger than the
 * server's SIZE is not sent: each recipient gets 552 5.3.4. */
int  smtp_client_send(struct smtp_client *c, const struct smtp_client_msg *m,
                      struct smtp_client_rcpt *rcpts, size_t n, struct smtp_reply *r);
/* MAIL FROM and RCPT TO on their own (no parameters), for the doctor to probe an envelope
 * without sending anything: SMTP_CLIENT_OK on 2xx, SMTP_CLIENT_REPLY with r otherwise. */
int  smtp_client_mail(struct smtp_client *c, const char *sender, struct smtp_reply *r);
int  smtp_client_rcpt(struct smtp_client *c, const char *address, struct smtp_reply *r);
/* RSET: ends a transaction (smtp_client_send then needs no RSET of its own). */
int  smtp_client_rset(struct smtp_client *c, struct smtp_reply *r);
/* QUIT, waiting briefly for the reply; the connection is closed either way. */
void smtp_client_quit(struct smtp_client *c);

const struct smtp_client_caps *smtp_client_caps(const struct smtp_client *c);
int  smtp_client_tls_active(const struct smtp_client *c);
/* "host[address]:port", for relay= in log lines */
const char *smtp_client_peer(const struct smtp_client *c);
/* Protocol and cipher of the TLS session ("" without TLS) */
const char *smtp_client_tls_info(const struct smtp_client *c);
/* The server's certificate (tls_conn_peer_cert_info of tls/tls.h); -1 without TLS. */
int  smtp_client_peer_cert(struct smtp_client *c, char *subject, size_t subjectsz, char *issuer,
                           size_t issuersz, char *names, size_t namessz, long long *not_after);
/* Did the last reply come from the server (not made up on our side)? */
int  smtp_client_reply_from_server(const struct smtp_client *c);

#endif
