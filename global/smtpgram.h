/* The SMTP grammar shared by the server and client engines: replies as values, command
 * parsing with explicit lengths (RFC 5321 4.1), paths and ESMTP parameters. No I/O here. */
#ifndef POSTERN_SMTPGRAM_H
#define POSTERN_SMTPGRAM_H
#include <stddef.h>
#include "lib/limits.h"

/* A reply, the currency of every error path: a failure deep in a transport becomes the right
 * SMTP answer, log line and DSN without translation tables. */
struct smtp_reply {
  int code;                 /* 0 = none/ok-without-reply */
  char enh[16];             /* "5.1.1", or "" */
  char text[LIM_SMTP_REPLY_LINE];
};

void smtp_reply_set(struct smtp_reply *r, int code, const char *enh, const char *fmt, ...)
  __attribute__((format(printf, 4, 5)));
int  smtp_reply_is_temp(const struct smtp_reply *r);   /* 4xx */
int  smtp_reply_is_perm(const struct smtp_reply *r);   /* 5xx */
/* "250 2.0.0 text" form, for logs and records */
const char *smtp_reply_str(const struct smtp_reply *r, char *out, size_t outsz);
/* Parses one reply line "ddd[- ]d.d.d text"; 0 ok, -1 malformed. *more = continuation. */
int  smtp_reply_parse_line(const char *p, size_t n, struct smtp_reply *r, int *more);

enum smtp_verb {
  SMTP_VERB_UNKNOWN = 0, SMTP_VERB_HELO, SMTP_VERB_EHLO, SMTP_VERB_MAIL, SMTP_VERB_RCPT,
  SMTP_VERB_DATA, SMTP_VERB_BDAT, SMTP_VERB_RSET, SMTP_VERB_NOOP, SMTP_VERB_QUIT,
  SMTP_VERB_VRFY, SMTP_VERB_EXPN, SMTP_VERB_HELP, SMTP_VERB_STARTTLS, SMTP_VERB_AUTH,
};

struct smtp_command {
  enum smtp_verb verb;
  const char *arg;          /* points into the line; not NUL-terminated */
  size_t arglen;
};

/* line excludes CRLF. Returns 0, or -1 if the line holds bytes no command may hold (NUL, CR,
 * LF, other controls than HT), which is answered 500 5.5.2. */
int smtp_command_parse(const char *line, size_t len, struct smtp_command *cmd);

/* MAIL FROM / RCPT TO */
enum smtp_body { SMTP_BODY_7BIT = 0, SMTP_BODY_8BITMIME, SMTP_BODY_BINARYMIME };

struct smtp_path_params {
  char path[LIM_SMTP_PATH + 1];   /* address without <>; "" for the null reverse-path */
  size_t pathlen;
  long long size;                 /* SIZE=, -1 if absent */
  enum smtp_body body;
  int smtputf8;
  char orcpt[LIM_SMTP_PATH + 16]; /* RCPT ORCPT=, kept verbatim */
  char notify[64];                /* RCPT NOTIFY= */
  char ret[8];                    /* MAIL RET= */
  char envid[104];                /* MAIL ENVID= */
};

enum smtp_path_result {
  SMTP_PATH_OK = 0,
  SMTP_PATH_SYNTAX,          /* 501 5.5.2 / 5.1.3 */
  SMTP_PATH_BAD_ADDRESS,     /* 553 5.1.3 */
  SMTP_PATH_TOO_LONG,        /* 501 5.1.3 (path over 256) */
  SMTP_PATH_BAD_PARAM,       /* 555 5.5.4 */
  SMTP_PATH_NEEDS_UTF8,      /* 553 5.6.7: non-ASCII address without SMTPUTF8 */
};

/* arg is what follows the verb, e.g. "FROM:<a@b> SIZE=10". is_mail selects MAIL or RCPT rules.
 * On failure, reply (if non-NULL) holds the answer to send. */
enum smtp_path_result smtp_path_parse(const char *arg, size_t arglen, int is_mail,
                                      struct smtp_path_params *out, struct smtp_reply *reply);

/* A DSN value as it travels in SMTP: ENVID (orcpt 0) or ORCPT's "type;xtext" (orcpt 1), with
 * no control character once decoded. 0 good, -1 bad. Checked on the way in and again before a
 * stored value goes out. */
int smtp_dsn_value_valid(const char *v, size_t vlen, int orcpt);

/* ORCPT's value as a DSN's Original-Recipient field carries it (RFC 3461 4.2, RFC 3464
 * 2.3.1): the addr-type as it is, ";", the address decoded from xtext ("rfc822;a+2Bb@x" ->
 * "rfc822;a+b@x"), NUL-terminated in out. 0 good, -1 when v is no valid ORCPT value (see
 * smtp_dsn_value_valid) or does not fit in outsz (which vlen + 1 always does). */
int smtp_orcpt_decode(const char *v, size_t vlen, char *out, size_t outsz);

/* Checks a mailbox "local@domain" (RFC 5321 4.1.2, with RFC 6531 UTF-8 when utf8 != 0).
 * 0 good, -1 bad. */
int smtp_mailbox_valid(const char *p, size_t n, int utf8);

/* HELO/EHLO argument: a domain or an address literal, bounded. 0 good, -1 bad. */
int smtp_helo_valid(const char *p, size_t n);

/* Does p[0..n) hold only ASCII (no octet >= 0x80)? A RCPT path that does not needs SMTPUTF8
 * on the transaction's MAIL (RFC 6531 3.4). */
int smtp_text_is_ascii(const char *p, size_t n);

/* The domain of an address (after the last '@'), or NULL. */
const char *smtp_address_domain(const char *addr, size_t len, size_t *domlen);

/* ---- message content (DATA and BDAT) -------------------------------------------------------
 * One scanner for both ways a message arrives, fed in pieces of any size (the state carries
 * across reads and BDAT chunks). A bare LF is taken as a line end and stored as CR LF, as
 * Postfix's smtpd_forbid_bare_newline = normalize does; a bare CR or a NUL spoils the message
 * (the SMTP smuggling class), and so does a line past max_line or content past max_size. With
 * dot set (DATA) the RFC 5321 4.5.2 transparency dot is removed and the content ends only at
 * CR LF "." CR LF: a "." line ended by a bare LF, or after one, is content and is kept as ".". */
struct buf;

#define SMTP_CONTENT_BAD_CR   0x01
#define SMTP_CONTENT_BAD_NUL  0x02
#define SMTP_CONTENT_BAD_LONG 0x04
#define SMTP_CONTENT_BAD_SIZE 0x08

struct smtp_content {
  int dot;                        /* DATA: dot transparency and the CR LF . CR LF end */
  size_t max_line;                /* longest line, its end not counted */
  unsigned long long max_size;    /* the stored (normalised) content */
  unsigned long long size;        /* stored octets so far, counted on after a violation */
  size_t line;                    /* octets of the current line so far */
  unsigned bad;                   /* SMTP_CONTENT_BAD_*; once set nothing more is stored */
  int bol;                        /* at the start of a line */
  int cr;                         /* the last octet was a CR, its LF not seen yet */
  int dot_held;                   /* DATA: the line so far is a single '.' */
  int crlf_before;                /* the line before ended in CR LF (an end needs that) */
  int ended;                      /* DATA: the end line was read */
};

void   smtp_content_init(struct smtp_content *sc, int dot, size_t max_line,
                         unsigned long long max_size);
/* Scans p[0..n), appending the stored form to out (NULL: count only) while nothing is wrong.
 * Returns the octets consumed: n, or with dot set up to and including the end line. */
size_t smtp_content_scan(struct smtp_content *sc, const char *p, size_t n, struct buf *out);
/* BDAT LAST: the content ends here; a CR still waiting for its LF was a bare one. */
void   smtp_content_finish(struct smtp_content *sc);

#endif
