/* The inbound path's whole interface: the policy of role = mx listeners (our domains only,
 * SPF through libspf2) and the HTTP listener for SendGrid and Twilio webhooks. Everything it
 * receives is committed to the store raw before it is acknowledged. */
#ifndef POSTERN_INBOUND_H
#define POSTERN_INBOUND_H
#include <stdio.h>
#include <jansson.h>
#include "global/config.h"
#include "store/store.h"
#include "smtp/smtp.h"
#include "lib/buf.h"
#include "global/web.h"
#include <stdint.h>

/* Process-wide set-up, once before any session: the SPF resolver (or, for the test suite
 * only, the zone named by $POSTERN_SPF_ZONE_FILE). errs gets a line per problem; returns how
 * many. */
int inbound_init(FILE *errs);
void inbound_done(void);

/* Configuration problems only the inbound path can see (FILE:LINE: message); returns how
 * many. Reads the secret and key files named in [inbound]. */
int inbound_check_config(const struct config *cfg, FILE *errs);

/* The policy of role = mx listeners. One context per session (it carries the SPF result of
 * the transaction in progress). */
extern const struct smtp_policy inbound_mx_policy;
struct inbound_policy_ctx {
  const struct config *cfg;
  const struct cfg_listener *listener;
  struct store *store;
  char spf[16];                  /* result for the current transaction; "" when not checked */
  char spf_header[1024];         /* the Received-SPF: field to prepend, CRLF-terminated */
  /* this session's latest evaluations (the client does not change): a transaction with a
   * sender and HELO seen before reuses the result instead of paying the look-ups again */
  struct inbound_spf_cached {
    int used;
    char sender[LIM_SMTP_PATH + 1];
    char helo[LIM_SMTP_HELO + 1];
    char result[16];
    char header[1024];
  } spf_cache[4];
  unsigned spf_cache_next;
};

/* ---- SPF (inbound/spf.c) ------------------------------------------------------------------- */
/* Checks the MAIL FROM identity (the HELO identity when from is empty) of a client at
 * (family, addr) and writes the result name ("pass", "fail", ...) and a complete
 * Received-SPF: field (RFC 7208 9.1, folded, CRLF-terminated) for receiver. */
int inbound_spf_check(int family, const unsigned char *addr, const char *helo,
                      const char *from, const char *receiver, char *result, size_t resultsz,
                      char *header, size_t headersz);

/* ---- DKIM and DMARC (inbound/auth_results.c) ---------------------------------------------- */
/* libopendkim and libopendmarc with the public suffix list, once per process (inbound_init
 * does it); problems are written to errs and counted. */
int inbound_auth_init(FILE *errs);
void inbound_auth_done(void);
#define INBOUND_AUTH_DKIM_MAX 8          /* signatures of one message checked and reported */
struct inbound_auth_in {
  const char *id;                        /* queue id, for libopendkim's messages */
  const char *authserv_id;               /* our hostname: the Authentication-Results id */
  const char *mail_from, *helo;          /* SPF's identities */
  const char *spf;                       /* SPF's result, or NULL when not checked */
  int family;                            /* the client: AF_INET / AF_INET6 and its address */
  const unsigned char *addr;
};
struct inbound_auth_dkim {
  char domain[256], selector[128], result[16], why[64];
};
struct inbound_auth {
  char spf[16], spf_domain[256];
  int spf_helo;
  struct inbound_auth_dkim dkim[INBOUND_AUTH_DKIM_MAX];
  size_t ndkim;
  char dmarc[16];                        /* pass | fail | none | temperror | permerror */
  char dmarc_policy[16];                 /* the policy for the From: domain: none | quarantine |
                                            reject; "" without a record */
  char from_domain[256];
  char header[4096];                     /* the Authentication-Results: field, CRLF-ended */
};
/* Every DKIM signature of msg (the DATA as received, our Received on top) verified, DMARC
 * evaluated on its From: domain; DNS is asked with a few seconds' bound. */
void inbound_auth_check(const struct inbound_auth_in *in, const char *msg, size_t len,
                        struct inbound_auth *a);
/* msg appended to out without the Authentication-Results fields of its header section that
 * claim authserv_id (RFC 8601 5: only this server may write them, so one that arrives with
 * the message is a forgery); *removed counts them (out NULL: counts only, copies nothing).
 * 0, or -1 when out is full. */
int inbound_auth_strip(const char *msg, size_t len, const char *authserv_id, struct buf *out,
                       size_t *removed);
/* inbound_auth_check, its field read back by inbound_auth_record: the record's
 * "authentication" for a message no Authentication-Results field can be put on (a raw-mode
 * Inbound Parse post is kept as SendGrid posted it). NULL when memory runs out. */
json_t *inbound_auth_verdicts(const struct inbound_auth_in *in, const char *msg, size_t len);
/* The verdicts of the Authentication-Results field this server put first on a stored message:
 * {spf, dkim: [{domain, selector, result}], dmarc: {result, policy, from_domain}}; NULL when
 * the first field is not ours. */
json_t *inbound_auth_record(const char *msg, size_t len, const char *authserv_id);
/* SendGrid's verdicts from a parsed-mode Inbound Parse post ("dkim": "{@d : pass, ...}",
 * "SPF": "pass"), marked as SendGrid's: {verdict_by: "sendgrid", spf, dkim: [{domain,
 * selector: null, result}], dmarc: null}. Either may be NULL. */
json_t *inbound_auth_sendgrid(const char *dkim, size_t dkimlen, const char *spf, size_t spflen);

/* ---- the HTTP listener (inbound/http.c) ---------------------------------------------------- */
struct inbound_http;
/* Serves the webhooks on fd (bound and listening, http_address) with cfg's [inbound]; cfg must
 * outlive the listener. Secrets are read here. */
int inbound_http_start(const struct config *cfg, struct store *st, int fd,
                       struct inbound_http **out);
/* Stops accepting, lets requests in progress finish, frees h (NULL is fine). */
/* A reload: credentials, keys, public_url and size limits from cfg take effect for requests
 * that begin from now on (the address stays: it was bound at start). 0, or -1 when the new
 * secrets cannot be read (logged; the old ones stay). */
int inbound_http_reload(struct inbound_http *h, const struct config *cfg);
void inbound_http_stop(struct inbound_http *h);
/* Mounts an application under /console/ (the daemon registers the web console before traffic
 * comes): its requests go through the per-client limits and lockout like every other. */
void inbound_http_set_console(struct inbound_http *h, web_handler fn, void *arg);

/* ---- webhook parsing (inbound/webhook.c): pure functions, fuzzed -------------------------- */

/* The fields of an Inbound Parse post (multipart/form-data) the listener keeps, fed part by
 * part as libmicrohttpd's post processor reads them. The whole post is stored; of its fields
 * only these are taken out, each within LIM_WEBHOOK_FIELD. */
struct inbound_parse_form {
  struct buf envelope, spf, sender_ip, attachments;
  int has_email, has_headers;
  int error;                    /* a kept field longer than any real one, or a bad form */
  size_t files;                 /* file parts seen */
  char last_key[64];            /* the field the post processor is in */
  /* set by inbound_parse_form_finish */
  char *from, *to;              /* from the envelope: the sender, the recipients one a line */
  char spf_result[16];          /* the SPF field in its expected shape (lower case), or "" */
  char ip[64];                  /* sender_ip in its expected shape, or "" */
};
void inbound_parse_form_init(struct inbound_parse_form *f);
void inbound_parse_form_free(struct inbound_parse_form *f);
/* One piece of a field: data[0..size) at offset off of field key (filename set for a file). */
void inbound_parse_form_field(struct inbound_parse_form *f, const char *key,
                              const char *filename, const char *data, uint64_t off, size_t size);
/* After the last piece: NULL when the post is one SendGrid could have sent (the results set),
 * else the reason, a static sentence ending in a newline (answered 400). */
const char *inbound_parse_form_finish(struct inbound_parse_form *f);

/* Twilio's X-Twilio-Signature: base64 HMAC-SHA1, under token, of url followed by each POST
 * parameter's name and value, sorted by name. out holds at least 29 bytes. */
struct inbound_param {
  const char *name, *value;
  size_t namelen, valuelen;
};
int inbound_twilio_signature(const char *token, size_t tokenlen, const char *url,
                             const struct inbound_param *params, size_t n, char *out,
                             size_t outsz);

/* A SendGrid Event Webhook batch: a JSON array of objects (a lone object is a batch of one). On success *ev (n entries) points
 * into *hold, which the caller frees with inbound_events_free. -1 with why set when the body
 * is not such an array or holds more than max events. */
struct inbound_events;
int inbound_events_parse(const char *body, size_t len, size_t max, struct inbound_events **out,
                         const struct store_event **ev, size_t *n, const char **why);
void inbound_events_free(struct inbound_events *e);

/* The envelope field of an Inbound Parse post ({"to":["a@x"],"from":"b@y"}): from and the
 * LF-joined recipients, malloc'd. -1 when it is not such JSON. */
int inbound_parse_envelope(const char *json, size_t len, char **from, char **to);

/* An application/x-www-form-urlencoded body (Twilio's) split into decoded parameters: names
 * and values are malloc'd in one block *hold (free it), at most max of them. -1 when the body is
 * not well formed (a bad %-escape) or holds more. MHD's post processor is not used here because
 * the signature needs every parameter exactly, empty values included. */
int inbound_form_parse(const char *body, size_t len, size_t max, struct inbound_param **out,
                       size_t *n, char **hold);

/* ---- MIME -> correspondence record (inbound/mime.c, inbound/reply.c): pure functions, fuzzed --
 * The parsing half of correspondence records. Given the bytes of one message it
 * yields the record fields that come from the message itself, as one JSON object text, plus
 * the decoded attachments. The caller (the record builder) adds what comes from the envelope
 * and the store: id, direction, source, received_at, envelope_*, thread_id, parent_id, spf,
 * status, events. */
struct inbound_attachment {
  char *filename;                /* UTF-8 (RFC 2231 / 2047 decoded), "" when none */
  char *content_type;            /* lowercase type/subtype, no parameters */
  char *content_id;              /* without <>, "" when none */
  char *disposition;             /* "inline" | "attachment" */
  char sha256[65];               /* hex of the decoded bytes */
  unsigned char *data;           /* the decoded bytes (an attached message/rfc822: exact bytes) */
  size_t size;
};
struct inbound_mime {
  /* {"message_id", "in_reply_to": string|null (no <>), "references": [ids],
   *  "from": {address, name}|null, "to", "cc", "reply_to": [{address, name}],
   *  "subject", "date": "YYYY-MM-DDTHH:MM:SSZ"|null, "text", "html", "reply_text": string|null,
   *  "attachments": [{filename, content_type, size, sha256, content_id, disposition}] (same order
   *  as att), "auto_submitted": bool, "parse_error": string|null,
   *  "dsn": null | {"original_message_id", "recipients": [{address, action, status,
   *  diagnostic}]}, "truncated": ["text"|"html"|"reply_text"]}
   * Strings are UTF-8 without NUL; what is missing is "" (subject, text, html, names,
   * filename, content_id, dsn fields) or null (message_id, in_reply_to, from, date,
   * reply_text when there is neither text nor html, original_message_id). text and html have
   * LF line ends (format=flowed re-joined); dsn is set for multipart/report;
   * report-type=delivery-status, action lowercase, diagnostic without its "smtp;" type. */
  char *json;
  struct inbound_attachment *att;
  size_t natt;
  char content_sha256[65];       /* hex SHA-256 of the message's bytes (a parsed-mode post: of
                                    its headers, text and html), what a repeat is known by */
  char *email;                   /* a raw-mode post's message as posted, NULL for any other */
  size_t emaillen;
};
/* Any bytes give a record: what could not be read is left empty and parse_error says why
 * (caps of lib/limits.h LIM_MIME_*, an unreadable header section). text, html and reply_text
 * keep at most text_max bytes each (0: all; cut at a character), and "truncated" lists those
 * that were cut; a body part is decoded only as far as that. -1 only when memory runs out.
 * Callable from any thread. */
int inbound_mime_parse(const void *raw, size_t len, size_t text_max, struct inbound_mime **out);
/* An Inbound Parse post as stored (content_type "multipart/form-data; boundary=..."): raw mode
 * (an "email" field) goes through inbound_mime_parse; parsed mode is built from the posted
 * headers, text, html, charsets and attachment files. Same contract as inbound_mime_parse. */
int inbound_mime_parse_post(const void *body, size_t len, const char *content_type,
                            size_t text_max, struct inbound_mime **out);
void inbound_mime_free(struct inbound_mime *m);
/* The reply's own words: text (or, when text is empty, html's text rendering) without quoted
 * history and signature. malloc'd UTF-8; NULL when memory runs out. */
char *inbound_reply_text(const char *text, size_t textlen, const char *html, size_t htmllen);

/* ---- correspondence records (inbound/records.c) --------------------------------------------
 * The record builder (a thread: new queue and inbound messages become records, threaded;
 * outbound recipients' states, DSNs and SendGrid events update outbound records) and, with
 * forward_url, the forwarder (a thread: each new record and each status change POSTed once a
 * 2xx says so, in the order they happened, X-Postern-Event record.created | record.status,
 * signed X-Postern-Signature: t=UNIX,v1=HEX, the HMAC-SHA256 of "UNIX.body" under
 * forward_secret_file). What they need of cfg is copied (at start and on reload). */
struct inbound_records;
int inbound_records_start(const struct config *cfg, struct store *st,
                          struct inbound_records **out);
/* A reload: reply_address, forward_url, its secret and retry_max from cfg, for records made
 * and POSTs begun from now on. 0, or -1 when the new secret cannot be read (logged; the old
 * settings stay). */
int inbound_records_reload(struct inbound_records *r, const struct config *cfg);
void inbound_records_stop(struct inbound_records *r);     /* NULL is fine */
/* A record as the application sees it (the stored record with its status and events): a
 * jansson object the caller decrefs, NULL when memory runs out. */
struct json_t;
struct json_t *inbound_record_object(struct store *st, const struct store_record *rec);

#endif
