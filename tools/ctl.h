/* The interface between posternctl's command files (tools/ctl_*.c): the parsed command line,
 * the configuration and store opened the same way for every command, and the output helpers
 * (terminal-safe fields, JSON conventions). One command = one ctl_NAME(struct ctl *) entry. */
#ifndef POSTERN_CTL_H
#define POSTERN_CTL_H
#include "global/config.h"
#include "lib/limits.h"
#include "store/store.h"
#include <stdio.h>
#include <jansson.h>

#define EXIT_NOTFOUND 1       /* an unknown id: the command ran, the answer is "no such" */
#define FIELD_CAP 1000        /* bytes of one stored field shown in human output */
#define CTL_MAX_ARGS 64

struct ctl {
  const char *config_arg;     /* -c FILE */
  int json;                   /* --json */
  const char *args[CTL_MAX_ARGS];  /* the words and command options, in order */
  char isopt[CTL_MAX_ARGS];   /* args[i] is an option ("-x", "--name"), not a word */
  size_t nargs;
  char id[LIM_QUEUE_ID + 1];
  struct config *cfg;         /* freed by main */
  struct store *st;           /* closed by main */
};

/* the commands */
int ctl_queue(struct ctl *c);
int ctl_inbound(struct ctl *c);
int ctl_user(struct ctl *c);
int ctl_oauth2(struct ctl *c);
int ctl_sendgrid(struct ctl *c);
int ctl_twilio(struct ctl *c);
int ctl_migrate(struct ctl *c);
int ctl_check(struct ctl *c);
int ctl_ses(struct ctl *c);
int ctl_init(struct ctl *c);
int ctl_flush(struct ctl *c);                   /* ctl_daemon.c */
int ctl_reload(struct ctl *c);
int ctl_stats(struct ctl *c);                   /* ctl_stats.c */

/* the daemon's control socket (ctl_control.c); c->cfg must be loaded */
#define CTL_DAEMON_DOWN (-1)  /* nothing answers on data_dir/control.sock */
int ctl_control_call(struct ctl *c, const char *cmd, json_t **reply);
void ctl_wake_daemon(struct ctl *c);            /* after a queue change; down is fine */
/* "postern is not running" (what: what is done instead, or NULL); EX_UNAVAILABLE */
int ctl_control_down(const struct ctl *c, const char *what);
/* A reply {"ok": false, "error": ...} becomes a message and EX_SOFTWARE; 0 when ok. */
int ctl_control_failed(json_t *reply, const char *cmd);
int ctl_correspondence(struct ctl *c);
int ctl_store_command(struct ctl *c);           /* ctl_store.c */

/* options of one command: see ctl_common.c */
int ctl_opt(struct ctl *c, const char *name, const char **value);
int ctl_no_options(struct ctl *c);

/* A secret (what: "password", for messages): one line of standard input, or typed at a
 * terminal after prompt with echo off (twice: asked again and compared). At most cap (and
 * CTL_SECRET_CAP) bytes into pw, not NUL-terminated; *len > 0. 0 or EX_DATAERR (said why). */
#define CTL_SECRET_CAP 1024
int ctl_secret_get(const char *what, const char *prompt, int twice, char *pw, size_t cap,
                   size_t *len);

/* A user of AUTH in data_dir/sasldb2 with this password (data_dir made when missing); prints
 * "NAME: password set". 0 or an exit code (said why). */
int ctl_user_set(const struct config *cfg, const char *name, const char *pw, size_t pwlen);

/* A visible answer typed at the terminal (the caller checks isatty): one line into out, at
 * most outsz - 1 bytes, NUL-terminated, blanks trimmed; def when the line is empty (def may be
 * NULL). 0, or -1 at the end of input or when the line is too long. */
int ctl_ask(const char *prompt, const char *def, char *out, size_t outsz);

/* Each program (posternctl, postern-sendmail) hands its usage text's printer over at start. */
void ctl_usage_init(void (*usage)(FILE *out));
int ctl_usage_error(const char *why, const char *what);   /* prints usage, EX_USAGE */
int ctl_config(struct ctl *c);                             /* 0 or EX_CONFIG */
int ctl_config_and_store(struct ctl *c, int flags);        /* 0, EX_CONFIG or EX_TEMPFAIL */
struct passwd;
/* Files posternctl makes for the daemon (sasldb, keys) must be readable by it after it drops
 * root: the configured user when run as root, NULL (nothing to do) otherwise. */
const struct passwd *ctl_daemon_user(const struct config *cfg);
int ctl_give_to(const char *path, const struct passwd *pw);   /* 0 or EX_NOPERM (printed) */
/* data_dir made (0700, given to the daemon's user) when it does not exist: 0 or an exit code */
int ctl_data_dir_make(const struct config *cfg);
/* A secret (what: "password", for messages) alone on one line in a new 0600 file at path,
 * owned by the postern user when run as root. hint: what to do when it cannot be written. */
int ctl_secret_write(const char *path, const char *what, const char *secret, size_t len,
                     const char *hint);
int ctl_store(struct ctl *c, int flags);         /* after ctl_config: 0 or EX_TEMPFAIL */
int ctl_store_failed(const char *what, int result);        /* message, EX_TEMPFAIL */

int ctl_id_parse(const char *arg, char out[LIM_QUEUE_ID + 1]);   /* hex id, upper-cased */
void ctl_put_field(FILE *out, const char *s);   /* network bytes escaped, capped */
/* Text of a record (names, subjects, bodies): on a UTF-8 locale, UTF-8 as is with only control
 * characters escaped; elsewhere as ctl_put_field. */
void ctl_put_text(FILE *out, const char *s);
void ctl_time_iso(long long ms, char *out, size_t outsz);
void ctl_time_human(long long ms, char *out, size_t outsz);
void ctl_age_human(long long secs, char *out, size_t outsz);
json_t *ctl_jstr(const char *s);                /* NULL -> null; bad UTF-8 escaped */
json_t *ctl_jtime(long long ms);
void ctl_jset_known(json_t *o, const char *key, const char *value);  /* skips NULL */
int ctl_print_json_one(json_t *o);              /* [o] to stdout; steals o */

/* ---- provider wiring (sendgrid, twilio): findings, exit codes, logged API calls ----------- */
#define CTL_EXIT_FINDINGS 1   /* the command ran; something is wrong (each with its fix) */
#define CTL_EXIT_UNCHECKED 2  /* something could not be checked (network, authentication) */

enum ctl_status { CTL_OK, CTL_CHANGED, CTL_FINDING, CTL_UNCHECKED };
struct ctl_report {
  int json;
  json_t *items;              /* [{check, status, detail, fix}] printed at the end with --json */
  int findings, unchecked;
};
void ctl_report_init(struct ctl_report *r, int json);
/* One result: logged, printed now as text (or kept for --json). detail and fix never hold a
 * secret. fix may be NULL. */
void ctl_report(struct ctl_report *r, enum ctl_status st, const char *check, const char *fix,
                const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* Prints the JSON array (with --json), frees r; the exit code: 2 when something could not be
 * checked, else 1 when something was found, else 0. */
int ctl_report_finish(struct ctl_report *r);

struct http_client;
struct http_response;
/* One API request to base + path, logged (method, URL without credentials, status) and its
 * answer parsed as JSON into *json when it is (NULL otherwise; decref it). 0 when an HTTP answer
 * came, -1 when none did (resp->error says why). ctype: the body's Content-Type, or NULL. */
int ctl_api(struct http_client *hc, const char *auth_header, const char *method,
            const char *base, const char *path, const char *ctype, const char *body,
            struct http_response *resp, json_t **json);
/* base + path without a trailing slash of base doubled; out is malloc'd (NULL: no memory) */
char *ctl_url_join(const char *base, const char *path);

/* ---- Amazon SES (ctl_ses.c) ----------------------------------------------------------------- */
#define SES_KEY_CAP 512               /* AWS secret keys are 40 characters */
int ctl_ses_region_ok(const char *region);      /* "eu-west-1", "us-gov-west-1": 1, else 0 */
/* The SES SMTP password for an IAM secret access key in region (AWS's derivation); *out is
 * malloc'd (free with auth_secret_free). 0 or -1. */
int ctl_ses_smtp_password(const char *key, size_t keylen, const char *region, char **out);

/* ---- DKIM keys (ctl_dkim.c) ---------------------------------------------------------------- */
int ctl_dkim(struct ctl *c);

#endif
