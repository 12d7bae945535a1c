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
  long long retry_at_ms;     /* with a 4xx reply: the upstream said when to come back (HTTP
                              * 429 with a reset time), wall clock; 0: the usual backoff */
  int dsn_taken;             /* the upstream was handed NOTIFY= (it offers DSN): it reports
                              * on the recipient from now on, not us */
};

/* What open and send return. */
enum transport_result {
  TRANSPORT_OK = 0,
  TRANSPORT_FAILED,          /* r applies to every recipient: deferred, or bounced if 5xx */
  TRANSPORT_AUTH_FAILED,     /* the upstream refused our credentials: the mail is held, not
                              * bounced, until a login works again */
  TRANSPORT_THROTTLED,       /* as FAILED, and the upstream asked us to slow down (4.7.x) */
};

struct transport {
  enum cfg_utype type;                /* the `type =` of an [upstream] */
  enum rcpt_status delivered_status;  /* what a 2xx reply means: SENT, or CAPTURED */
  /* Opens a session to the upstream (for the smtp transport: connected, TLS as configured,
   * logged in). Non-zero (enum transport_result): r says why. */
  int  (*open)(const struct config *cfg, const struct cfg_upstream *up, void **session,
               struct smtp_reply *r);
  /* Delivers one message to rcpts; per-recipient replies go in rcpts[i].reply. Non-zero (enum
   * transport_result): the whole attempt failed with r (the session is then closed, not
   * reused). */
  int  (*send)(void *session, const struct store_msg *m, const char *body, size_t len,
               struct transport_rcpt *rcpts, size_t n, struct smtp_reply *r);
  void (*close)(void *session);
  /* "relay=" value for log lines */
  void (*describe)(void *session, char *out, size_t outsz);
  /* posternctl check (relay_check_api): proves the credentials without sending; NULL: none.
   * 0 every step passed, 1 one failed. */
  int  (*check)(const struct config *cfg, const struct cfg_upstream *up, struct relay_check *chk);
};

/* Appends a step to chk (the last one is overwritten when it is full); hint may be NULL.
 * Returns !ok, so a check can end with `return relay_check_add(...)`. */
int relay_check_add(struct relay_check *chk, const char *name, int ok, const char *hint,
                    const char *fmt, ...) __attribute__((format(printf, 5, 6)));

extern const struct transport transport_capture;
extern const struct transport transport_smtp;
extern const struct transport transport_sendgrid;
extern const struct transport transport_ses;
extern const struct transport transport_graph;
const struct transport *transport_for(enum cfg_utype type);

/* ---- per-upstream state (upstate.c), by name, kept across reloads -------------------- */
struct upstates;
int  upstates_new(struct upstates **out);
void upstates_free(struct upstates *u);
/* `rate = N/s|m|h|d` as microseconds between messages (0: no rate); 0 ok, -1 malformed. */
int  rate_interval_us(const char *rate, long long *us);
/* May message id go to up now? 0: yes (its token is taken); else the wall-clock ms of the slot
 * kept for it: it waits in the queue until then, no attempt counted. */
long long upstate_rate_admit(struct upstates *u, const struct cfg_upstream *up, const char *id,
                             long long now_ms);
/* The upstream answered 4.7.x: halve its rate for a while. */
void upstate_throttled(struct upstates *u, const struct cfg_upstream *up, long long now_ms);

enum { UPSTATE_GO = 0, UPSTATE_PROBE, UPSTATE_HELD };
/* Is the upstream held after a refused login? UPSTATE_HELD: do not try (reply gets the
 * reason); UPSTATE_PROBE: held, but this caller is to try a login now (due, or by_hand: mail
 * released by the operator); call login_ok / login_failed / probe_abort after. */
int  upstate_hold_check(struct upstates *u, const char *name, long long now_ms, int by_hand,
                        char *reply, size_t replysz);
int  upstate_is_held(struct upstates *u, const char *name);
/* A login was refused: hold (1 when it was not held before: log the alarm). The next try
 * comes after min_ms, doubling up to max_ms. */
int  upstate_login_failed(struct upstates *u, const char *name, const char *reply,
                          long long now_ms, long long min_ms, long long max_ms);
/* A login worked: 1 when the upstream was held (release its mail). */
int  upstate_login_ok(struct upstates *u, const char *name);
/* A probe could not tell (no connection): try again at next_ms (0: as planned). */
void upstate_probe_abort(struct upstates *u, const char *name, long long next_ms);
/* The store holds mail for name (found at start): held until a login works. */
void upstate_mark_held(struct upstates *u, const char *name, long long now_ms);
/* After a reload (new credentials, perhaps): every held upstream is tried at once. */
void upstate_probe_all_now(struct upstates *u, long long now_ms);
/* The next held upstream whose login is due (marked as being probed; 1), and when the next one
 * after it is due (-1: none). */
int  upstate_probe_next(struct upstates *u, long long now_ms, size_t *idx, long long *wake_ms);
int  upstate_name(struct upstates *u, size_t idx, char *out, size_t outsz);

/* ---- DKIM signing (dkim.c) ------------------------------------------------------------------ */
/* A message with a line over 998 octets, made fit for an SMTP upstream: each MIME part with
 * such a line re-encoded as quoted-printable, each header field with one folded. *out: the
 * message to send instead (CRLF line ends), malloc'd; NULL when no line is too long (the
 * message goes byte for byte). 0, or -1 out of memory. Applied before DKIM signing. */
int  longlines_encode(const char *body, size_t len, char **out, size_t *outlen);

/* The [dkim] sections of cfg as signers (NULL when there are none); keys are read and decoded
 * at their first use, then kept. The relay shares one set among all sessions of a
 * configuration it runs (dkim_signers_share when it starts with or reloads to cfg, unshare
 * when cfg is used no more); for any other cfg, get makes a set of its own. A session holds a
 * reference from get to put. 0 ok, -1 out of memory. */
struct dkim_signers;
int  dkim_signers_share(const struct config *cfg);
void dkim_signers_unshare(const struct config *cfg);
int  dkim_signers_get(const struct config *cfg, struct dkim_signers **out);
void dkim_signers_put(struct dkim_signers *ds);
/* Signs body (the message as it will be sent) with every signer whose domain is its From:
 * domain (or, with match = sender, the envelope sender's) and that has not signed it already.
 * *out: the message to send instead (DKIM-Signature fields in front, line ends CRLF), malloc'd;
 * NULL when nothing was signed. 0 ok; -1 with r (a 4xx: the mail waits rather than leaving
 * unsigned). max caps the message's growth. */
int  dkim_sign_message(struct dkim_signers *ds, const char *sender,
                       const char *body, size_t len, long long max, char **out, size_t *outlen,
                       struct smtp_reply *r);
/* postern -n: the [dkim] sections are complete and their keys usable; problems counted. */
int  dkim_check_config(const struct config *cfg, FILE *errs);

/* ---- DSN (dsn.c) --------------------------------------------------------------------------- */
/* One delivery status notification (RFC 3464) to m's sender for the recipients of upd that
 * bounced, accepted into the store (sender "", source "dsn") like any message. Nothing for the
 * null sender or for recipients whose NOTIFY excludes FAILURE. 0 ok (or nothing to do; *id
 * is then ""), else a store error. */
/* The same as a delay warning (Action: delayed, Will-Retry-Until) for the recipients of upd
 * still waiting, as Postfix's delay_warning_time sends it: once per message. */
int dsn_delay(struct store *st, const struct config *cfg, const struct store_msg *m,
              const char *body, size_t len, const struct store_rcpt_update *upd, size_t n,
              char id[LIM_QUEUE_ID + 1]);
int dsn_bounce(struct store *st, const struct config *cfg, const struct store_msg *m,
               const char *body, size_t len, const struct store_rcpt_update *upd, size_t n,
               char id[LIM_QUEUE_ID + 1]);
/* The same as a success report (Action: relayed, RFC 3461 6.2.2.3) for the recipients of upd
 * that were sent and asked NOTIFY=SUCCESS: the caller passes only those whose upstream will
 * not report on them (no DSN extension, or an HTTP API). */
int dsn_relayed(struct store *st, const struct config *cfg, const struct store_msg *m,
                const char *body, size_t len, const struct store_rcpt_update *upd, size_t n,
                char id[LIM_QUEUE_ID + 1]);

/* ---- API transports' answers -> replies (http.c; the client itself is in relay.h) ------- */
/* Sets every reply of rcpts[from..to) that has none yet. */
void http_replies_fill(struct transport_rcpt *rcpts, size_t from, size_t to,
                       const struct smtp_reply *r, long long retry_at_ms);

/* The reply for one API answer (the rules of http_batch_answer below); TRANSPORT_AUTH_FAILED
 * for refused credentials (401/403), else 0. */
int http_answer_reply(const char *api, const char *upstream, const struct http_response *resp,
                      int temporary, const char *accepted, struct smtp_reply *r);

/* One send attempt of an API transport, made of one request per batch of recipients; the
 * answers become replies the same way for every API (http_batch_answer). */
struct http_batch {
  const char *api;             /* "SendGrid", "SES", "Microsoft Graph": for the texts */
  const char *upstream;        /* the [upstream] name */
  const char *base;            /* the API's URL, for "cannot reach" */
  struct transport_rcpt *rcpts;
  size_t n, sent;              /* recipients in all; accepted so far */
  int result;                  /* the attempt's TRANSPORT_* result */
  struct smtp_reply *r;        /* the attempt's reply when result is not TRANSPORT_OK */
};
void http_batch_init(struct http_batch *b, const char *api, const char *upstream,
                     const char *base, struct transport_rcpt *rcpts, size_t n,
                     struct smtp_reply *r);
/* Records the answer to rcpts[at..at+cnt): got_answer 0 means no HTTP answer (resp->error).
 * 2xx: sent ("Ok: accepted by API (HTTP 202)" then accepted, e.g. "X-Message-Id=..."); 401/403:
 * the credentials (the whole attempt held when nothing went out yet); 429 (until its reset),
 * 5xx and other statuses: deferred; 400 and 413: bounced with the API's error text. temporary:
 * the API says beyond its status that it is its account's state (SES's throttling types).
 * Returns 1 to go on with the next batch, 0 to stop: a deferral or a failure applies to the
 * rest as well. */
int http_batch_answer(struct http_batch *b, size_t at, size_t cnt, int got_answer,
                      const struct http_response *resp, int temporary, const char *accepted);

/* ---- SendGrid v3 mail/send mapping (sendgrid_json.c) ----------------------------------- */
#define SENDGRID_MAX_RCPTS 1000
#define SENDGRID_MAX_SIZE (30u * 1024u * 1024u)
enum { SENDGRID_OK = 0, SENDGRID_REFUSED, SENDGRID_NOMEM };
struct sendgrid_msg;
/* Parses a queued message once. SENDGRID_REFUSED: SendGrid cannot take it (why says; a
 * permanent failure); SENDGRID_NOMEM: try again later. */
int   sendgrid_msg_parse(const char *body, size_t len, const char *queue_id, const char *sender,
                         struct sendgrid_msg **out, char *why, size_t whysz);
/* The mail/send request for rcpts[0..n), n <= SENDGRID_MAX_RCPTS: malloc'd compact JSON, or
 * NULL (why says: over the size limit, or out of memory). */
char *sendgrid_msg_request(const struct sendgrid_msg *sm, const char *const *rcpts, size_t n,
                           size_t *len, char *why, size_t whysz);
void  sendgrid_msg_free(struct sendgrid_msg *sm);

/* The implicit upstream used when no route exists: keep the mail in the store. */
extern const struct cfg_upstream upstream_capture;

/* The upstream for a sender/recipient pair: first route in file order whose globs match;
 * with no routes at all, capture. NULL when routes exist and none matches. */
const struct cfg_upstream *route_for(const struct config *cfg, const char *sender,
                                     const char *recipient);

#endif
