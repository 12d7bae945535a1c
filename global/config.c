/* Reads postern.conf: inih splits the lines, one table of {section, key, type, default, min,
 * max} checks and stores every value, and each problem becomes one "FILE:LINE: message" line.
 * Then the SMTP_* environment variables configure the default upstream. */
#if !defined(_GNU_SOURCE) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L   /* gethostname, inet_pton under -std=c11 */
#endif
#include "global/config.h"
#include "lib/buf.h"
#include "lib/limits.h"

#include <ini.h>
#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define EMBEDDED_NAME "(embedded default)"
#define DAY (24LL * 3600)

/* ---- the sections ---------------------------------------------------------------------- */

enum sec_kind {
  SEC_POSTERN, SEC_LISTENER, SEC_UPSTREAM, SEC_ROUTE, SEC_OAUTH2, SEC_INBOUND, SEC_USER,
  SEC_DKIM, SEC_CONSOLE, SEC_COUNT
};

struct sec_desc {
  const char *word;        /* [word] or [word NAME] */
  int named;               /* any number of [word NAME], or exactly one [word] */
  size_t base_off;         /* unnamed: where its fields live in struct config */
  size_t arr_off, n_off;   /* named: the array and its count in struct config */
  size_t size;             /* named: one element */
  size_t name_off, line_off;
};

#define SEC_ONE(w, off) { w, 0, off, 0, 0, 0, 0, 0 }
#define SEC_NAMED(w, type, arr, n) { w, 1, 0, offsetof(struct config, arr), \
  offsetof(struct config, n), sizeof(struct type), offsetof(struct type, name), \
  offsetof(struct type, line) }

static const struct sec_desc sections[SEC_COUNT] = {
  [SEC_POSTERN]  = SEC_ONE("postern", 0),
  [SEC_LISTENER] = SEC_NAMED("listener", cfg_listener, listeners, nlisteners),
  [SEC_UPSTREAM] = SEC_NAMED("upstream", cfg_upstream, upstreams, nupstreams),
  [SEC_ROUTE]    = SEC_NAMED("route", cfg_route, routes, nroutes),
  [SEC_OAUTH2]   = SEC_NAMED("oauth2", cfg_oauth2, oauth2s, noauth2s),
  [SEC_INBOUND]  = SEC_ONE("inbound", offsetof(struct config, inbound)),
  [SEC_USER]     = SEC_NAMED("user", cfg_user, users, nusers),
  [SEC_DKIM]     = SEC_NAMED("dkim", cfg_dkim, dkims, ndkims),
  [SEC_CONSOLE]  = SEC_ONE("console", offsetof(struct config, console)),
};

/* ---- the settings ---------------------------------------------------------------------- */

enum opt_type {
  T_STR,          /* any text; an empty value unsets it */
  T_WORD,         /* one of words, stored as the table spells it (char *) */
  T_ENUM,         /* one of words, stored as its index (an enum field) */
  T_BOOL,         /* yes/no, true/false, on/off, 1/0 */
  T_LONG,         /* a number within min..max */
  T_SIZE,         /* bytes, K/M/G suffixes, within min..max */
  T_DURATION,     /* seconds, s/m/h/d suffixes, within min..max */
  T_HOSTPORT,     /* HOST:PORT or [IPV6]:PORT */
  T_HOSTPORTS,    /* a list of them; the key may repeat, each use appends */
  T_CIDRS,        /* networks; the key may repeat, each use appends */
  T_WORDLIST,     /* words from words, stored as "A B C" */
  T_RATE,         /* N/s, N/m, N/h or N/d */
  T_URL           /* http:// or https:// */
};

struct opt {
  enum sec_kind sec;
  const char *key;
  enum opt_type type;
  size_t off;                 /* the field in its section's struct */
  size_t off_n;               /* list types: the count beside the field */
  const char *def;            /* read by the same code as a value from the file */
  long long min, max;
  const char *const *words;   /* T_WORD, T_ENUM, T_WORDLIST */
};

/* T_ENUM word lists are in the order of their enum */
_Static_assert(CFG_ROLE_MX == 1, "w_role follows enum cfg_role");
_Static_assert(CFG_TLS_STARTTLS == 1 && CFG_TLS_IMPLICIT == 2, "w_ltls follows enum cfg_tls");
_Static_assert(CFG_AUTH_OPTIONAL == 1 && CFG_AUTH_REQUIRED == 2, "w_lauth follows enum cfg_auth");
static const char *const w_role[] = { "submission", "mx", NULL };
static const char *const w_ltls[] = { "none", "starttls", "implicit", NULL };
static const char *const w_lauth[] = { "none", "optional", "required", NULL };
static const char *const w_mechs[] = {
  "PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-1", "SCRAM-SHA-256", NULL };
/* "" stands for no word: an enum whose 0 means "not set" (never matched, never listed) */
_Static_assert(CFG_UP_CAPTURE == 5, "cfg_utype_words follows enum cfg_utype");
const char *const cfg_utype_words[] = { "", "smtp", "sendgrid", "ses", "graph", "capture", NULL };
_Static_assert(CFG_UTLS_NONE == 3, "cfg_utls_words follows enum cfg_utls");
_Static_assert(CFG_VERIFY_NONE == 1, "cfg_verify_words follows enum cfg_verify");
_Static_assert(CFG_UAUTH_OAUTHBEARER == 6, "cfg_uauth_words follows enum cfg_uauth");
const char *const cfg_utls_words[] = { "starttls", "opportunistic", "implicit", "none", NULL };
const char *const cfg_verify_words[] = { "peer", "none", NULL };
const char *const cfg_uauth_words[] = {
  "none", "auto", "plain", "login", "cram-md5", "xoauth2", "oauthbearer", NULL };
static const char *const w_tlsver[] = { "TLSv1.2", "TLSv1.3", NULL };
_Static_assert(CFG_PROVIDER_GENERIC == 3, "cfg_provider_words follows enum cfg_provider");
_Static_assert(CFG_FLOW_DEVICE_CODE == 3, "cfg_flow_words follows enum cfg_flow");
_Static_assert(CFG_CLOUD_CHINA == 3, "cfg_cloud_words follows enum cfg_cloud");
const char *const cfg_provider_words[] = { "", "microsoft", "google", "generic", NULL };
const char *const cfg_flow_words[] = { "", "client_credentials", "refresh_token", "device_code",
                                       NULL };
const char *const cfg_cloud_words[] = { "global", "usgov", "usgov-dod", "china", NULL };
_Static_assert(CFG_SPF_REJECT == 2, "cfg_spf_words follows enum cfg_spf");
const char *const cfg_spf_words[] = { "off", "tag", "reject", NULL };
static const char *const w_dmarc[] = { "off", "tag", "enforce", NULL };
static const char *const w_dkalg[] = { "rsa-sha256", "ed25519-sha256", NULL };
static const char *const w_dkcanon[] = { "relaxed/relaxed", "relaxed/simple", "simple/relaxed",
  "simple/simple", "relaxed", "simple", NULL };
static const char *const w_dkmatch[] = { "from", "sender", NULL };
static const char *const w_http_auth[] = { "basic", "none", NULL };
static const char *const w_exempt[] = { "auto", "none", "loopback", "trusted", NULL };
static const char *const w_events_auth[] = { "signature", "basic", NULL };

#define PO(f) offsetof(struct config, f)
#define LI(f) offsetof(struct cfg_listener, f)
#define UP(f) offsetof(struct cfg_upstream, f)
#define RO(f) offsetof(struct cfg_route, f)
#define OA(f) offsetof(struct cfg_oauth2, f)
#define IN(f) offsetof(struct cfg_inbound, f)
#define CO(f) offsetof(struct cfg_console, f)
#define US(f) offsetof(struct cfg_user, f)
#define DK(f) offsetof(struct cfg_dkim, f)

/* Adding a setting is one line here (and its field in config.h). */
static const struct opt opts[] = {
  /* hostname defaults to gethostname(), filled in after reading */
  { SEC_POSTERN, "hostname", T_STR, PO(hostname), 0, NULL, 0, 0, NULL },
  { SEC_POSTERN, "data_dir", T_STR, PO(data_dir), 0, "/var/lib/postern", 0, 0, NULL },
  { SEC_POSTERN, "user", T_STR, PO(user), 0, "postern", 0, 0, NULL },
  { SEC_POSTERN, "max_message_size", T_SIZE, PO(max_message_size), 0, "35M",
    1, LIM_MESSAGE_SIZE_MAX, NULL },
  { SEC_POSTERN, "max_recipients", T_LONG, PO(max_recipients), 0, "100", 1, 100000, NULL },
  { SEC_POSTERN, "max_clients", T_LONG, PO(max_clients), 0, "200", 1, 100000, NULL },
  { SEC_POSTERN, "queue_lifetime", T_DURATION, PO(queue_lifetime), 0, "5d", 1, 365 * DAY, NULL },
  { SEC_POSTERN, "delay_warning", T_DURATION, PO(delay_warning), 0, "4h", 0, 365 * DAY, NULL },
  { SEC_POSTERN, "retention", T_DURATION, PO(retention), 0, "30d", 0, 3650 * DAY, NULL },
  { SEC_POSTERN, "capture_retention", T_DURATION, PO(capture_retention), 0, "7d", 0, 3650 * DAY,
    NULL },
  { SEC_POSTERN, "records_retention", T_DURATION, PO(records_retention), 0, "0", 0, 3650 * DAY,
    NULL },
  { SEC_POSTERN, "retry_min", T_DURATION, PO(retry_min), 0, "1m", 1, DAY, NULL },
  { SEC_POSTERN, "retry_max", T_DURATION, PO(retry_max), 0, "1h", 1, 7 * DAY, NULL },
  { SEC_POSTERN, "idle_timeout", T_DURATION, PO(idle_timeout), 0, "5m", 1, DAY, NULL },
  { SEC_POSTERN, "session_timeout", T_DURATION, PO(session_timeout), 0, "1h", 1, 7 * DAY, NULL },
  { SEC_POSTERN, "shutdown_grace", T_DURATION, PO(shutdown_grace), 0, "30s", 0, 3600, NULL },
  { SEC_POSTERN, "delivery_workers", T_LONG, PO(delivery_workers), 0, "4", 1, 256, NULL },
  { SEC_POSTERN, "max_errors", T_LONG, PO(max_errors), 0, "10", 1, 1000, NULL },
  { SEC_POSTERN, "max_auth_failures", T_LONG, PO(max_auth_failures), 0, "5", 1, 1000, NULL },
  { SEC_POSTERN, "auth_lockout", T_DURATION, PO(auth_lockout), 0, "10m", 1, 7 * DAY, NULL },
  { SEC_POSTERN, "max_transactions", T_LONG, PO(max_transactions), 0, "100", 1, 100000, NULL },
  { SEC_POSTERN, "debug", T_BOOL, PO(debug), 0, "no", 0, 0, NULL },

  { SEC_LISTENER, "address", T_HOSTPORTS, LI(addresses), LI(naddresses), NULL, 0, 0, NULL },
  { SEC_LISTENER, "role", T_ENUM, LI(role), 0, "submission", 0, 0, w_role },
  { SEC_LISTENER, "tls", T_ENUM, LI(tls), 0, "none", 0, 0, w_ltls },
  { SEC_LISTENER, "tls_cert", T_STR, LI(tls_cert), 0, NULL, 0, 0, NULL },
  { SEC_LISTENER, "tls_key", T_STR, LI(tls_key), 0, NULL, 0, 0, NULL },
  { SEC_LISTENER, "auth", T_ENUM, LI(auth), 0, "optional", 0, 0, w_lauth },
  { SEC_LISTENER, "auth_mechanisms", T_WORDLIST, LI(auth_mechanisms), 0, "PLAIN LOGIN CRAM-MD5",
    0, 0, w_mechs },
  { SEC_LISTENER, "auth_plaintext_mechanisms", T_WORDLIST, LI(auth_plaintext_mechanisms), 0, NULL,
    0, 0, w_mechs },
  { SEC_LISTENER, "trusted_networks", T_CIDRS, LI(trusted), LI(ntrusted), "127.0.0.0/8 ::1/128",
    0, 0, NULL },
  /* unset (0): the [postern] value, or the role's default (daemon/listener.c) */
  { SEC_LISTENER, "max_clients", T_LONG, LI(max_clients), 0, NULL, 1, 100000, NULL },
  { SEC_LISTENER, "max_clients_per_ip", T_LONG, LI(max_clients_per_ip), 0, NULL, 1, 100000, NULL },
  { SEC_LISTENER, "connection_rate", T_LONG, LI(connection_rate), 0, "0", 0, 1000000, NULL },
  { SEC_LISTENER, "message_rate", T_LONG, LI(message_rate), 0, "0", 0, 1000000, NULL },
  { SEC_LISTENER, "recipient_rate", T_LONG, LI(recipient_rate), 0, "0", 0, 10000000, NULL },
  { SEC_LISTENER, "limits_exempt", T_ENUM, LI(limits_exempt), 0, "auto", 0, 0, w_exempt },
  { SEC_LISTENER, "proxy_protocol", T_BOOL, LI(proxy_protocol), 0, "no", 0, 0, NULL },
  { SEC_LISTENER, "proxy_networks", T_CIDRS, LI(proxy_nets), LI(nproxy_nets), NULL, 0, 0, NULL },
  { SEC_LISTENER, "helo_timeout", T_DURATION, LI(helo_timeout), 0, NULL, 1, DAY, NULL },

  { SEC_UPSTREAM, "type", T_ENUM, UP(type), 0, NULL, 0, 0, cfg_utype_words },
  { SEC_UPSTREAM, "host", T_STR, UP(host), 0, NULL, 0, 0, NULL },
  /* port 0 = unset: smtp upstreams get 587, or 465 with tls = implicit, once all is read */
  { SEC_UPSTREAM, "port", T_LONG, UP(port), 0, NULL, 1, 65535, NULL },
  { SEC_UPSTREAM, "tls", T_ENUM, UP(tls), 0, "starttls", 0, 0, cfg_utls_words },
  { SEC_UPSTREAM, "verify", T_ENUM, UP(verify), 0, "peer", 0, 0, cfg_verify_words },
  { SEC_UPSTREAM, "ca_file", T_STR, UP(ca_file), 0, NULL, 0, 0, NULL },
  { SEC_UPSTREAM, "helo", T_STR, UP(helo), 0, NULL, 0, 0, NULL },
  { SEC_UPSTREAM, "auth", T_ENUM, UP(auth), 0, "auto", 0, 0, cfg_uauth_words },
  { SEC_UPSTREAM, "username", T_STR, UP(username), 0, NULL, 0, 0, NULL },
  { SEC_UPSTREAM, "password_file", T_STR, UP(password_file), 0, NULL, 0, 0, NULL },
  { SEC_UPSTREAM, "oauth2", T_STR, UP(oauth2), 0, NULL, 0, 0, NULL },
  { SEC_UPSTREAM, "rate", T_RATE, UP(rate), 0, NULL, 0, 0, NULL },
  { SEC_UPSTREAM, "api_key_file", T_STR, UP(api_key_file), 0, NULL, 0, 0, NULL },
  { SEC_UPSTREAM, "api_url", T_URL, UP(api_url), 0, NULL, 0, 0, NULL },
  { SEC_UPSTREAM, "region", T_STR, UP(region), 0, NULL, 0, 0, NULL },
  { SEC_UPSTREAM, "access_key_id_file", T_STR, UP(access_key_id_file), 0, NULL, 0, 0, NULL },
  { SEC_UPSTREAM, "secret_access_key_file", T_STR, UP(secret_access_key_file), 0, NULL, 0, 0, NULL },
  { SEC_UPSTREAM, "fallback", T_STR, UP(fallback), 0, NULL, 0, 0, NULL },
  { SEC_UPSTREAM, "tls_min_version", T_WORD, UP(tls_min_version), 0, NULL, 0, 0, w_tlsver },

  { SEC_ROUTE, "sender", T_STR, RO(sender), 0, NULL, 0, 0, NULL },
  { SEC_ROUTE, "recipient", T_STR, RO(recipient), 0, NULL, 0, 0, NULL },
  { SEC_ROUTE, "upstream", T_STR, RO(upstream), 0, NULL, 0, 0, NULL },

  { SEC_OAUTH2, "provider", T_ENUM, OA(provider), 0, NULL, 0, 0, cfg_provider_words },
  { SEC_OAUTH2, "flow", T_ENUM, OA(flow), 0, NULL, 0, 0, cfg_flow_words },
  { SEC_OAUTH2, "tenant", T_STR, OA(tenant), 0, NULL, 0, 0, NULL },
  { SEC_OAUTH2, "client_id", T_STR, OA(client_id), 0, NULL, 0, 0, NULL },
  { SEC_OAUTH2, "client_secret_file", T_STR, OA(client_secret_file), 0, NULL, 0, 0, NULL },
  { SEC_OAUTH2, "token_url", T_URL, OA(token_url), 0, NULL, 0, 0, NULL },
  { SEC_OAUTH2, "scope", T_STR, OA(scope), 0, NULL, 0, 0, NULL },
  { SEC_OAUTH2, "certificate_file", T_STR, OA(certificate_file), 0, NULL, 0, 0, NULL },
  { SEC_OAUTH2, "private_key_file", T_STR, OA(private_key_file), 0, NULL, 0, 0, NULL },
  { SEC_OAUTH2, "token_file", T_STR, OA(token_file), 0, NULL, 0, 0, NULL },
  { SEC_OAUTH2, "cloud", T_ENUM, OA(cloud), 0, "global", 0, 0, cfg_cloud_words },

  { SEC_INBOUND, "domains", T_STR, IN(domains), 0, NULL, 0, 0, NULL },
  { SEC_INBOUND, "spf", T_ENUM, IN(spf), 0, "tag", 0, 0, cfg_spf_words },
  { SEC_INBOUND, "dmarc", T_WORD, IN(dmarc), 0, "off", 0, 0, w_dmarc },
  { SEC_INBOUND, "http_address", T_HOSTPORT, IN(http_address), 0, NULL, 0, 0, NULL },
  { SEC_INBOUND, "http_user", T_STR, IN(http_user), 0, NULL, 0, 0, NULL },
  { SEC_INBOUND, "http_password_file", T_STR, IN(http_password_file), 0, NULL, 0, 0, NULL },
  { SEC_INBOUND, "http_auth", T_WORD, IN(http_auth), 0, "basic", 0, 0, w_http_auth },
  { SEC_INBOUND, "events_auth", T_WORD, IN(events_auth), 0, "signature", 0, 0, w_events_auth },
  { SEC_INBOUND, "http_clients_per_ip", T_LONG, IN(http_clients_per_ip), 0, "20", 0, 100000, NULL },
  { SEC_INBOUND, "http_request_rate", T_LONG, IN(http_request_rate), 0, "600", 0, 1000000, NULL },
  { SEC_INBOUND, "http_auth_failures", T_LONG, IN(http_auth_failures), 0, "5", 1, 1000, NULL },
  { SEC_INBOUND, "http_auth_lockout", T_DURATION, IN(http_auth_lockout), 0, "10m", 1, DAY, NULL },
  { SEC_INBOUND, "http_request_timeout", T_DURATION, IN(http_request_timeout), 0, "5m", 1, DAY, NULL },
  { SEC_INBOUND, "http_exempt_networks", T_CIDRS, IN(http_exempt), IN(nhttp_exempt),
    "127.0.0.0/8 ::1/128", 0, 0, NULL },
  { SEC_INBOUND, "event_public_key_file", T_STR, IN(event_public_key_file), 0, NULL, 0, 0, NULL },
  { SEC_INBOUND, "event_max_age", T_DURATION, IN(event_max_age), 0, "10m", 0, 365 * DAY, NULL },
  { SEC_INBOUND, "twilio_auth_token_file", T_STR, IN(twilio_auth_token_file), 0, NULL,
    0, 0, NULL },
  { SEC_INBOUND, "public_url", T_URL, IN(public_url), 0, NULL, 0, 0, NULL },
  { SEC_INBOUND, "twilio_account_sid", T_STR, IN(twilio_account_sid), 0, NULL, 0, 0, NULL },
  { SEC_INBOUND, "twilio_api_url", T_URL, IN(twilio_api_url), 0, "https://api.twilio.com",
    0, 0, NULL },
  { SEC_INBOUND, "twilio_messaging_url", T_URL, IN(twilio_messaging_url), 0,
    "https://messaging.twilio.com", 0, 0, NULL },
  { SEC_INBOUND, "reply_address", T_STR, IN(reply_address), 0, NULL, 0, 0, NULL },
  { SEC_INBOUND, "forward_url", T_URL, IN(forward_url), 0, NULL, 0, 0, NULL },
  { SEC_INBOUND, "forward_secret_file", T_STR, IN(forward_secret_file), 0, NULL, 0, 0, NULL },
  { SEC_INBOUND, "forward_max_attempts", T_LONG, IN(forward_max_attempts), 0, "20", 1, 1000000,
    NULL },
  { SEC_INBOUND, "forward_max_age", T_DURATION, IN(forward_max_age), 0, "0", 0, 365 * DAY, NULL },
  { SEC_INBOUND, "max_http_size", T_SIZE, IN(max_http_size), 0, NULL,
    1, LIM_MESSAGE_SIZE_MAX, NULL },
  { SEC_INBOUND, "dedupe_window", T_DURATION, IN(dedupe_window), 0, "3d", 0, 365 * DAY, NULL },
  { SEC_INBOUND, "record_text_max", T_SIZE, IN(record_text_max), 0, "1M",
    0, LIM_MESSAGE_SIZE_MAX, NULL },

  { SEC_USER, "senders", T_STR, US(senders), 0, NULL, 0, 0, NULL },

  { SEC_CONSOLE, "enabled", T_BOOL, CO(enabled), 0, "no", 0, 0, NULL },
  { SEC_CONSOLE, "users", T_STR, CO(users), 0, NULL, 0, 0, NULL },
  { SEC_CONSOLE, "users_file", T_STR, CO(users_file), 0, NULL, 0, 0, NULL },
  { SEC_CONSOLE, "session_timeout", T_DURATION, CO(session_timeout), 0, "8h", 60, 30 * DAY, NULL },
  { SEC_CONSOLE, "secure_cookie", T_BOOL, CO(secure_cookie), 0, "no", 0, 0, NULL },

  { SEC_DKIM, "domain", T_STR, DK(domain), 0, NULL, 0, 0, NULL },
  { SEC_DKIM, "selector", T_STR, DK(selector), 0, NULL, 0, 0, NULL },
  { SEC_DKIM, "key_file", T_STR, DK(key_file), 0, NULL, 0, 0, NULL },
  { SEC_DKIM, "algorithm", T_WORD, DK(algorithm), 0, "rsa-sha256", 0, 0, w_dkalg },
  /* every name is signed once more than it occurs (RFC 6376 8.15): nobody can add one */
  { SEC_DKIM, "headers", T_STR, DK(headers), 0, "From Reply-To Sender To Cc Subject Date "
    "Message-ID In-Reply-To References MIME-Version Content-Type Content-Transfer-Encoding "
    "Content-Disposition Content-ID List-Unsubscribe List-Unsubscribe-Post", 0, 0, NULL },
  { SEC_DKIM, "canonicalization", T_WORD, DK(canonicalization), 0, "relaxed/relaxed", 0, 0,
    w_dkcanon },
  { SEC_DKIM, "match", T_WORD, DK(match), 0, "from", 0, 0, w_dkmatch },
};
#define NOPTS (sizeof(opts) / sizeof(opts[0]))

/* ---- the loader's state and its messages ----------------------------------------------- */

#define CUR_NONE (-1)   /* before the first section header */
#define CUR_SKIP (-2)   /* under a header already reported as wrong: its keys say nothing more */

struct loader {
  struct config *cfg;
  FILE *errs;
  const char *file;              /* as messages name it */
  int nerr;
  FILE *fp;                      /* the file, or... */
  const char *mem;               /* ...the embedded default */
  size_t mem_len, mem_pos;
  int lineno;                    /* the line inih is working on */
  int cur;                       /* enum sec_kind, CUR_NONE or CUR_SKIP */
  size_t cur_index;              /* named kinds: which element */
  char label[128];               /* "listener submission", for messages */
  int seen[NOPTS];               /* line where each key of the current section was set */
  int unnamed_line[SEC_COUNT];   /* where [postern] and [inbound] start */
  struct rejected *rejected;     /* keys whose value was refused... */
  size_t nrejected;              /* ...so that "KEY is missing" does not say it twice */
};

struct rejected {
  int kind;
  size_t index;
  size_t opt;
};

__attribute__((format(printf, 4, 0)))
static void vreport(struct loader *ld, const char *where, int line, const char *fmt, va_list ap)
{
  ld->nerr++;
  if(!ld->errs)
    return;
  if(line > 0)
    fprintf(ld->errs, "%s:%d: ", where, line);
  else
    fprintf(ld->errs, "%s: ", where);
  vfprintf(ld->errs, fmt, ap);
  fputc('\n', ld->errs);
}

/* "FILE:LINE: message"; line 0 (a default, something the environment made) drops the LINE */
__attribute__((format(printf, 3, 4)))
static void report(struct loader *ld, int line, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  vreport(ld, ld->file, line, fmt, ap);
  va_end(ap);
}

/* "ENV:SMTP_PORT: message" */
__attribute__((format(printf, 3, 4)))
static void report_env(struct loader *ld, const char *var, const char *fmt, ...)
{
  char where[64];
  va_list ap;
  snprintf(where, sizeof(where), "ENV:%s", var);
  va_start(ap, fmt);
  vreport(ld, where, 0, fmt, ap);
  va_end(ap);
}

/* ---- value parsers --------------------------------------------------------------------- */

struct scale { char unit; long long mult; };
static const struct scale size_units[] = {
  { 'K', 1LL << 10 }, { 'M', 1LL << 20 }, { 'G', 1LL << 30 }, { 0, 0 } };
static const struct scale time_units[] = {
  { 's', 1 }, { 'm', 60 }, { 'h', 3600 }, { 'd', DAY }, { 0, 0 } };

/* digits and at most one unit letter; fold accepts a lower-case unit for an upper-case one */
static int scaled_parse(const char *s, const struct scale *units, int fold, long long *out)
{
  unsigned long long v = 0, mult = 1;
  size_t i;
  if(!s)
    return -1;
  for(i = 0; s[i] >= '0' && s[i] <= '9'; i++) {
    unsigned d = (unsigned)(s[i] - '0');
    if(v > (unsigned long long)(LLONG_MAX - d) / 10)
      return -1;
    v = v * 10 + d;
  }
  if(!i)
    return -1;                     /* also refuses "-5m" and " 5" */
  if(s[i]) {
    char c = s[i];
    size_t u;
    if(fold && c >= 'a' && c <= 'z')
      c = (char)(c - 'a' + 'A');
    for(u = 0; units[u].unit && units[u].unit != c; u++)
      ;
    if(!units[u].unit || s[i + 1])
      return -1;
    mult = (unsigned long long)units[u].mult;
  }
  if(v > (unsigned long long)LLONG_MAX / mult)
    return -1;
  *out = (long long)(v * mult);
  return 0;
}

/* the largest unit that divides v: 35M, 5d, 90s */
static const char *scaled_fmt(char *out, size_t outsz, long long v, const struct scale *units)
{
  size_t u;
  for(u = 0; units[u].unit; u++)
    ;
  while(u-- > 0) {
    if(v && v % units[u].mult == 0) {
      snprintf(out, outsz, "%lld%c", v / units[u].mult, units[u].unit);
      return out;
    }
  }
  snprintf(out, outsz, "%lld", v);
  return out;
}

int config_parse_size(const char *s, long long *out)
{
  return scaled_parse(s, size_units, 1, out);
}

/* Lower case only: "5M" could be read as five months. */
int config_parse_duration(const char *s, long long *secs)
{
  return scaled_parse(s, time_units, 0, secs);
}

static int digits_only(const char *s, size_t n)
{
  size_t i;
  for(i = 0; i < n; i++)
    if(s[i] < '0' || s[i] > '9')
      return 0;
  return n > 0;
}

static int bool_parse(const char *s)
{
  static const char *const yes[] = { "yes", "true", "on", "1", NULL };
  static const char *const no[] = { "no", "false", "off", "0", NULL };
  size_t i, n = strlen(s);
  for(i = 0; yes[i]; i++)
    if(!str_casecmp_n(s, n, yes[i]))
      return 1;
  for(i = 0; no[i]; i++)
    if(!str_casecmp_n(s, n, no[i]))
      return 0;
  return -1;
}

static int word_find(const char *const *words, const char *s, size_t n)
{
  int i;
  for(i = 0; words[i]; i++)
    if(words[i][0] && !str_casecmp_n(s, n, words[i]))
      return i;
  return -1;
}

static const char *words_join(char *out, size_t outsz, const char *const *words)
{
  size_t i, used = 0;
  out[0] = '\0';
  for(i = 0; words[i] && used < outsz; i++) {
    int n;
    if(!words[i][0])
      continue;
    n = snprintf(out + used, outsz - used, "%s%s", used ? " " : "", words[i]);
    if(n < 0)
      break;
    used += (size_t)n;
  }
  return out;
}

/* The next item of a list value; items are separated by blanks or commas. */
static int token_next(const char **pp, const char **tok, size_t *len)
{
  const char *p = *pp;
  while(*p == ' ' || *p == '\t' || *p == ',')
    p++;
  if(!*p)
    return 0;
  *tok = p;
  while(*p && *p != ' ' && *p != '\t' && *p != ',')
    p++;
  *len = (size_t)(p - *tok);
  *pp = p;
  return 1;
}

static int port_ok(const char *s, size_t n)
{
  long port;
  return digits_only(s, n) && !str_to_long(s, n, 1, 65535, &port);
}

/* HOST:PORT, or [IPV6]:PORT: an IPv6 address without brackets would be ambiguous */
static int hostport_ok(const char *s, size_t n)
{
  char v6[INET6_ADDRSTRLEN];
  unsigned char addr[16];
  const char *close, *colon = NULL;
  size_t i;
  if(n && s[0] == '[') {
    close = memchr(s, ']', n);
    if(!close || close == s + 1 || (size_t)(close - s - 1) >= sizeof(v6))
      return 0;
    memcpy(v6, s + 1, (size_t)(close - s - 1));
    v6[close - s - 1] = '\0';
    if(inet_pton(AF_INET6, v6, addr) != 1)
      return 0;
    i = (size_t)(close - s) + 1;
    return i < n && s[i] == ':' && port_ok(s + i + 1, n - i - 1);
  }
  for(i = 0; i < n; i++) {
    if(s[i] == ':') {
      if(colon)
        return 0;
      colon = s + i;
    }
  }
  return colon && colon > s && port_ok(colon + 1, n - (size_t)(colon - s) - 1);
}

/* N/s, N/m, N/h or N/d */
static int rate_ok(const char *s)
{
  const char *slash = strchr(s, '/');
  long n;
  if(!slash || !digits_only(s, (size_t)(slash - s)) ||
     str_to_long(s, (size_t)(slash - s), 1, 1000000, &n))
    return 0;
  return slash[1] && strchr("smhd", slash[1]) && !slash[2];
}

static int url_ok(const char *s)
{
  size_t n = strlen(s);
  return (n > 7 && !str_casecmp_n(s, 7, "http://")) ||
         (n > 8 && !str_casecmp_n(s, 8, "https://"));
}

/* ---- networks -------------------------------------------------------------------------- */

int cidr_parse(const char *s, struct cidr *out)
{
  char host[INET6_ADDRSTRLEN];
  const char *slash;
  size_t hl;
  int max, i;
  long prefix;

  if(!s || !out)
    return -1;
  slash = strchr(s, '/');
  hl = slash ? (size_t)(slash - s) : strlen(s);
  if(!hl || hl >= sizeof(host))
    return -1;
  memcpy(host, s, hl);
  host[hl] = '\0';
  memset(out, 0, sizeof(*out));
  if(inet_pton(AF_INET, host, out->addr) == 1) {
    out->family = AF_INET;
    max = 32;
  }
  else if(inet_pton(AF_INET6, host, out->addr) == 1) {
    out->family = AF_INET6;
    max = 128;
  }
  else
    return -1;
  prefix = max;
  if(slash && (!digits_only(slash + 1, strlen(slash + 1)) ||
               str_to_long(slash + 1, strlen(slash + 1), 0, max, &prefix)))
    return -1;
  out->prefix = (int)prefix;
  /* 10.1.2.3/8 means 10.0.0.0/8: clear the host bits so matching can compare bytes */
  for(i = 0; i < 16; i++) {
    int bits = (int)prefix - i * 8;
    if(bits <= 0)
      out->addr[i] = 0;
    else if(bits < 8)
      out->addr[i] &= (unsigned char)(0xff << (8 - bits));
  }
  return 0;
}

static int prefix_equal(const unsigned char *a, const unsigned char *b, int prefix)
{
  size_t full = (size_t)prefix / 8;
  int rest = prefix % 8;
  unsigned char mask;
  if(memcmp(a, b, full))
    return 0;
  if(!rest)
    return 1;
  mask = (unsigned char)(0xff << (8 - rest));
  return !((a[full] ^ b[full]) & mask);
}

/* A peer looks the same whether it came in on an IPv4 socket or, as ::ffff:a.b.c.d, on a
 * dual-stack one: it is compared in both forms, so either kind of net matches it. */
int cidr_match(const struct cidr *nets, size_t n, int family, const void *addr)
{
  static const unsigned char mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
  unsigned char a4[4], a6[16];
  int have4 = 0;
  size_t i;

  if(!nets || !addr)
    return 0;
  if(family == AF_INET) {
    memcpy(a4, addr, 4);
    memcpy(a6, mapped, 12);
    memcpy(a6 + 12, addr, 4);
    have4 = 1;
  }
  else if(family == AF_INET6) {
    memcpy(a6, addr, 16);
    if(!memcmp(a6, mapped, 12)) {
      memcpy(a4, a6 + 12, 4);
      have4 = 1;
    }
  }
  else
    return 0;
  for(i = 0; i < n; i++) {
    if(nets[i].family == AF_INET && have4 && prefix_equal(nets[i].addr, a4, nets[i].prefix))
      return 1;
    if(nets[i].family == AF_INET6 && prefix_equal(nets[i].addr, a6, nets[i].prefix))
      return 1;
  }
  return 0;
}

/* ---- storing values -------------------------------------------------------------------- */

/* Sections live in arrays of different struct types that the table reaches by offset; the
 * array pointer is copied in and out with memcpy (all object pointers share one
 * representation on the platforms Postern runs on), never read through a cast. */
static char *section_array(const struct config *cfg, int kind)
{
  char *arr;
  memcpy(&arr, (const char *)cfg + sections[kind].arr_off, sizeof(arr));
  return arr;
}

static size_t section_count(const struct config *cfg, int kind)
{
  if(!sections[kind].named)
    return 1;
  return *(const size_t *)(const void *)((const char *)cfg + sections[kind].n_off);
}

static char *section_base(struct config *cfg, int kind, size_t i)
{
  if(!sections[kind].named)
    return (char *)cfg + sections[kind].base_off;
  return section_array(cfg, kind) + i * sections[kind].size;
}

static const char *section_name(struct config *cfg, int kind, size_t i)
{
  return *(char **)(void *)(section_base(cfg, kind, i) + sections[kind].name_off);
}

static int section_find(struct config *cfg, int kind, const char *name, size_t n)
{
  size_t i, count = section_count(cfg, kind);
  for(i = 0; i < count; i++) {
    const char *s = section_name(cfg, kind, i);
    if(strlen(s) == n && !memcmp(s, name, n))
      return (int)i;
  }
  return -1;
}

static int set_str(char **field, const char *v, size_t n)
{
  char *dup = NULL;
  if(v) {
    dup = str_dup_n(v, n);
    if(!dup)
      return -1;
  }
  free(*field);
  *field = dup;
  return 0;
}

/* Secrets are wiped before their memory goes back to the allocator. */
static void secret_free(char **field)
{
  volatile char *p = *field;
  if(!p)
    return;
  while(*p)
    *p++ = '\0';
  free(*field);
  *field = NULL;
}

static int opt_is_list(const struct opt *o)
{
  return o->type == T_HOSTPORTS || o->type == T_CIDRS;
}

static void opt_clear(const struct opt *o, char *base)
{
  char *f = base + o->off;
  size_t *np = (size_t *)(void *)(base + o->off_n);
  size_t i;
  switch(o->type) {
  case T_STR: case T_WORD: case T_HOSTPORT: case T_WORDLIST: case T_RATE: case T_URL:
    free(*(char **)(void *)f);
    *(char **)(void *)f = NULL;
    break;
  case T_HOSTPORTS: {
    char ***list = (char ***)(void *)f;
    for(i = 0; i < *np; i++)
      free((*list)[i]);
    free(*list);
    *list = NULL;
    *np = 0;
    break;
  }
  case T_CIDRS:
    free(*(struct cidr **)(void *)f);
    *(struct cidr **)(void *)f = NULL;
    *np = 0;
    break;
  case T_ENUM: case T_BOOL: case T_LONG: case T_SIZE: case T_DURATION:
    break;                          /* numbers own no memory */
  }
}

static void nomem(struct loader *ld, int line)
{
  report(ld, line, "out of memory");
}

static void range_error(struct loader *ld, int line, const struct opt *o, long long v,
                        const struct scale *units)
{
  char a[32], b[32], c[32];
  if(units)
    report(ld, line, "%s: %s is out of range (%s to %s)", o->key,
           scaled_fmt(a, sizeof(a), v, units), scaled_fmt(b, sizeof(b), o->min, units),
           scaled_fmt(c, sizeof(c), o->max, units));
  else
    report(ld, line, "%s: %lld is out of range (%lld to %lld)", o->key, v, o->min, o->max);
}

static void list_values(struct loader *ld, const struct opt *o, char *base, const char *v,
                        int line)
{
  size_t *np = (size_t *)(void *)(base + o->off_n);
  const char *tok;
  size_t len;
  while(token_next(&v, &tok, &len)) {
    if(o->type == T_HOSTPORTS) {
      char ***list = (char ***)(void *)(base + o->off);
      char **grown, *dup;
      if(!hostport_ok(tok, len)) {
        report(ld, line, "%s: '%.*s' is not HOST:PORT (IPv6 in brackets: [::1]:25)", o->key,
               (int)len, tok);
        continue;
      }
      dup = str_dup_n(tok, len);
      grown = dup ? realloc(*list, (*np + 1) * sizeof(**list)) : NULL;
      if(!grown) {
        free(dup);
        nomem(ld, line);
        return;
      }
      grown[(*np)++] = dup;
      *list = grown;
    }
    else {
      struct cidr **list = (struct cidr **)(void *)(base + o->off);
      struct cidr net, *grown;
      char one[INET6_ADDRSTRLEN + 8];
      if(len < sizeof(one)) {
        memcpy(one, tok, len);
        one[len] = '\0';
      }
      if(len >= sizeof(one) || cidr_parse(one, &net)) {
        report(ld, line, "%s: bad network '%.*s'", o->key, (int)len, tok);
        continue;
      }
      grown = realloc(*list, (*np + 1) * sizeof(**list));
      if(!grown) {
        nomem(ld, line);
        return;
      }
      grown[(*np)++] = net;
      *list = grown;
    }
  }
}

/* auth_mechanisms: known words only, stored upper case, once each */
static void wordlist_value(struct loader *ld, const struct opt *o, char *base, const char *v,
                           int line)
{
  char known[256];
  struct buf b;
  const char *tok;
  size_t len;
  unsigned long have = 0;
  int bad = 0, w;

  buf_init(&b, LIM_CONFIG_VALUE);
  while(token_next(&v, &tok, &len)) {
    w = word_find(o->words, tok, len);
    if(w < 0) {
      report(ld, line, "%s: '%.*s' is not one of: %s", o->key, (int)len, tok,
             words_join(known, sizeof(known), o->words));
      bad = 1;
      continue;
    }
    if(have & (1UL << w))
      continue;
    have |= 1UL << w;
    if(buf_addf(&b, "%s%s", b.len ? " " : "", o->words[w])) {
      nomem(ld, line);
      bad = 1;
      break;
    }
  }
  if(!bad && !have) {
    report(ld, line, "%s needs a value", o->key);
    bad = 1;
  }
  if(!bad) {
    char **field = (char **)(void *)(base + o->off);
    free(*field);
    *field = buf_steal(&b, NULL);
    if(!*field)
      nomem(ld, line);
  }
  buf_free(&b);
}

/* Stores one value, from the file or from the table's default, into its field. A bad value
 * is reported and leaves the field as it was. */
static void opt_set(struct loader *ld, const struct opt *o, char *base, const char *v, int line)
{
  char *f = base + o->off;
  char known[256];
  long long n;
  long l;
  int w;

  if(!*v && o->type != T_STR) {
    report(ld, line, "%s needs a value", o->key);
    return;
  }
  switch(o->type) {
  case T_STR:
    if(set_str((char **)(void *)f, *v ? v : NULL, strlen(v)))
      nomem(ld, line);
    break;
  case T_WORD:
  case T_ENUM:
    w = word_find(o->words, v, strlen(v));
    if(w < 0)
      report(ld, line, "%s: '%s' is not one of: %s", o->key, v,
             words_join(known, sizeof(known), o->words));
    else if(o->type == T_ENUM)
      *(int *)(void *)f = w;
    else if(set_str((char **)(void *)f, o->words[w], strlen(o->words[w])))
      nomem(ld, line);
    break;
  case T_BOOL:
    w = bool_parse(v);
    if(w < 0)
      report(ld, line, "%s: '%s' is not yes or no", o->key, v);
    else
      *(int *)(void *)f = w;
    break;
  case T_LONG:
    if(str_to_long(v, strlen(v), LONG_MIN, LONG_MAX, &l))
      report(ld, line, "%s: '%s' is not a number", o->key, v);
    else if(l < o->min || l > o->max)
      range_error(ld, line, o, l, NULL);
    else
      *(long *)(void *)f = l;
    break;
  case T_SIZE:
  case T_DURATION:
    if(o->type == T_SIZE ? config_parse_size(v, &n) : config_parse_duration(v, &n))
      report(ld, line, o->type == T_SIZE ?
             "%s: '%s' is not a size (like 100, 512K, 35M or 1G)" :
             "%s: '%s' is not a duration (like 90, 30s, 10m, 1h or 5d)", o->key, v);
    else if(n < o->min || n > o->max)
      range_error(ld, line, o, n, o->type == T_SIZE ? size_units : time_units);
    else
      *(long long *)(void *)f = n;
    break;
  case T_HOSTPORT:
    if(!hostport_ok(v, strlen(v)))
      report(ld, line, "%s: '%s' is not HOST:PORT (IPv6 in brackets: [::1]:25)", o->key, v);
    else if(set_str((char **)(void *)f, v, strlen(v)))
      nomem(ld, line);
    break;
  case T_HOSTPORTS:
  case T_CIDRS:
    list_values(ld, o, base, v, line);
    break;
  case T_WORDLIST:
    wordlist_value(ld, o, base, v, line);
    break;
  case T_RATE:
    if(!rate_ok(v))
      report(ld, line, "%s: '%s' is not a rate (like 30/m or 1000/h)", o->key, v);
    else if(set_str((char **)(void *)f, v, strlen(v)))
      nomem(ld, line);
    break;
  case T_URL:
    if(!url_ok(v))
      report(ld, line, "%s: '%s' is not an http:// or https:// URL", o->key, v);
    else if(set_str((char **)(void *)f, v, strlen(v)))
      nomem(ld, line);
    break;
  }
}

static void defaults_apply(struct loader *ld, int kind, char *base)
{
  size_t i;
  for(i = 0; i < NOPTS; i++)
    if(opts[i].sec == (enum sec_kind)kind && opts[i].def)
      opt_set(ld, &opts[i], base, opts[i].def, 0);
}

/* Appends a named section with its defaults; NULL when out of memory. */
static char *section_add(struct loader *ld, int kind, const char *name, size_t n, int line)
{
  const struct sec_desc *d = &sections[kind];
  size_t count = section_count(ld->cfg, kind);
  char *arr = section_array(ld->cfg, kind), *el, *dup;

  dup = str_dup_n(name, n);
  if(!dup)
    return NULL;
  arr = realloc(arr, (count + 1) * d->size);
  if(!arr) {
    free(dup);
    return NULL;
  }
  memcpy((char *)ld->cfg + d->arr_off, &arr, sizeof(arr));
  el = arr + count * d->size;
  memset(el, 0, d->size);
  memcpy(el + d->name_off, &dup, sizeof(dup));
  memcpy(el + d->line_off, &line, sizeof(line));
  count++;
  memcpy((char *)ld->cfg + d->n_off, &count, sizeof(count));
  defaults_apply(ld, kind, el);
  return el;
}

/* ---- reading the file ------------------------------------------------------------------ */

static int is_blank(char c)
{
  return c == ' ' || c == '\t';
}

static int name_char_ok(char c)
{
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         c == '.' || c == '_' || c == '-' || c == '@' || c == '+';
}

/* [postern], [inbound] or [KIND NAME]. Returns 1 when it opened a section. */
static int header_read(struct loader *ld, const char *s)
{
  const char *close = strchr(s, ']'), *p, *kw, *name;
  size_t kwlen, namelen, i;
  int kind, line = ld->lineno, found;

  ld->cur = CUR_SKIP;
  if(!close) {
    report(ld, line, "section header without ']'");
    return 0;
  }
  for(p = close + 1; is_blank(*p); p++)
    ;
  if(*p && *p != ';' && *p != '#') {
    report(ld, line, "unexpected text after ']'");
    return 0;
  }
  for(kw = s + 1; is_blank(*kw); kw++)
    ;
  for(p = kw; p < close && !is_blank(*p); p++)
    ;
  kwlen = (size_t)(p - kw);
  for(name = p; name < close && is_blank(*name); name++)
    ;
  for(p = close; p > name && is_blank(p[-1]); p--)
    ;
  namelen = (size_t)(p - name);

  for(kind = 0; kind < SEC_COUNT; kind++)
    if(strlen(sections[kind].word) == kwlen && !memcmp(sections[kind].word, kw, kwlen))
      break;
  if(kind == SEC_COUNT) {
    report(ld, line, "unknown section [%.*s] (known: postern listener upstream route oauth2 "
           "inbound user)", (int)(p - kw), kw);
    return 0;
  }
  if(!sections[kind].named) {
    if(namelen) {
      report(ld, line, "section [%s] takes no name", sections[kind].word);
      return 0;
    }
    if(ld->unnamed_line[kind]) {
      report(ld, line, "duplicate section [%s] (first at line %d)", sections[kind].word,
             ld->unnamed_line[kind]);
      return 0;
    }
    ld->unnamed_line[kind] = line;
    if(kind == SEC_INBOUND) {
      ld->cfg->inbound.present = 1;
      ld->cfg->inbound.line = line;
    }
    if(kind == SEC_CONSOLE) {
      ld->cfg->console.present = 1;
      ld->cfg->console.line = line;
    }
    ld->cur_index = 0;
    snprintf(ld->label, sizeof(ld->label), "%s", sections[kind].word);
  }
  else {
    if(!namelen) {
      report(ld, line, "section [%s] needs a name, as in [%s NAME]", sections[kind].word,
             sections[kind].word);
      return 0;
    }
    for(i = 0; i < namelen; i++) {
      if(!name_char_ok(name[i])) {
        report(ld, line, "section name '%.*s': use letters, digits and . _ - @ +",
               (int)namelen, name);
        return 0;
      }
    }
    found = section_find(ld->cfg, kind, name, namelen);
    if(found >= 0) {
      int first;
      memcpy(&first, section_base(ld->cfg, kind, (size_t)found) + sections[kind].line_off,
             sizeof(first));
      report(ld, line, "duplicate section [%s %.*s] (first at line %d)", sections[kind].word,
             (int)namelen, name, first);
      return 0;
    }
    if(!section_add(ld, kind, name, namelen, line)) {
      nomem(ld, line);
      return 0;
    }
    ld->cur_index = section_count(ld->cfg, kind) - 1;
    snprintf(ld->label, sizeof(ld->label), "%s %.*s", sections[kind].word, (int)namelen, name);
  }
  ld->cur = kind;
  memset(ld->seen, 0, sizeof(ld->seen));
  return 1;
}

/* KEY = VALUE (or KEY: VALUE), where inih will find it: before any inline " ;" comment */
static int key_line_ok(struct loader *ld, const char *s)
{
  const char *p;
  int was_blank = 0;
  for(p = s; *p; p++) {
    if(*p == '=' || *p == ':' || (was_blank && *p == ';'))
      break;
    was_blank = is_blank(*p);
  }
  if(*p != '=' && *p != ':') {
    report(ld, ld->lineno, "expected KEY = VALUE");
    return 0;
  }
  if(p == s) {
    report(ld, ld->lineno, "missing key before '%c'", *p);
    return 0;
  }
  return 1;
}

static int src_getc(struct loader *ld)
{
  if(ld->fp)
    return getc(ld->fp);
  if(ld->mem_pos < ld->mem_len)
    return (unsigned char)ld->mem[ld->mem_pos++];
  return EOF;
}

/* inih's line source. It counts lines (Debian builds inih without INI_HANDLER_LINENO),
 * checks each line's shape so that every mistake is reported rather than only inih's first,
 * and opens sections itself (inih says nothing about a section that has no keys). Leading
 * blanks are dropped so that inih never takes an indented line for a continuation. A
 * rejected line reaches inih as an empty one. */
static char *reader_gets(char *str, int num, void *stream)
{
  struct loader *ld = stream;
  size_t cap, len = 0, n;
  int c, got = 0, too_long = 0, ctl = 0, cr = 0;
  char *s, *e;

  if(num < 3)
    return NULL;
  cap = (size_t)num - 2;                 /* room for "\n" and the NUL */
  while((c = src_getc(ld)) != EOF) {
    got = 1;
    if(c == '\n')
      break;
    if(cr || c == '\0' || (c < 0x20 && c != '\t' && c != '\r') || c == 0x7f)
      ctl = 1;                           /* a CR is only welcome right before the LF */
    cr = c == '\r';
    if(len < cap)
      str[len++] = (char)c;
    else
      too_long = 1;
  }
  if(!got)
    return NULL;
  ld->lineno++;
  str[len] = '\0';

  s = str;
  if(ld->lineno == 1 && len >= 3 && !memcmp(s, "\xEF\xBB\xBF", 3))
    s += 3;                              /* a UTF-8 byte order mark */
  while(is_blank(*s))
    s++;
  for(e = s + strlen(s); e > s && (is_blank(e[-1]) || e[-1] == '\r'); e--)
    ;
  *e = '\0';
  if(too_long)
    report(ld, ld->lineno, "line too long (more than %zu characters)", cap);
  else if(ctl)
    report(ld, ld->lineno, "control character in line");
  else if(*s && *s != ';' && *s != '#' &&
          (*s == '[' ? header_read(ld, s) : key_line_ok(ld, s))) {
    n = strlen(s);
    memmove(str, s, n);
    str[n] = '\n';
    str[n + 1] = '\0';
    return str;
  }
  str[0] = '\n';
  str[1] = '\0';
  return str;
}

static void rejected_add(struct loader *ld, int kind, size_t index, size_t opt)
{
  struct rejected *grown = realloc(ld->rejected, (ld->nrejected + 1) * sizeof(*grown));
  if(!grown)
    return;                              /* at worst a second message about the same key */
  grown[ld->nrejected].kind = kind;
  grown[ld->nrejected].index = index;
  grown[ld->nrejected].opt = opt;
  ld->rejected = grown;
  ld->nrejected++;
}

/* Was KEY given in that section but refused? Then its absence is already reported. */
static int rejected(const struct loader *ld, int kind, size_t index, const char *key)
{
  size_t i;
  for(i = 0; i < ld->nrejected; i++)
    if(ld->rejected[i].kind == kind && ld->rejected[i].index == index &&
       !strcmp(opts[ld->rejected[i].opt].key, key))
      return 1;
  return 0;
}

#if INI_HANDLER_LINENO
static int on_value(void *user, const char *section, const char *key, const char *value,
                    int lineno)
#else
static int on_value(void *user, const char *section, const char *key, const char *value)
#endif
{
  struct loader *ld = user;
  int line = ld->lineno, nerr;
  size_t i;
  char *base;

  (void)section;                         /* ours is ld->cur: the reader opened it */
  if(ld->cur == CUR_SKIP)
    return 1;
  if(ld->cur == CUR_NONE) {
    report(ld, line, "'%s' is outside any section (start with a header such as [postern])",
           key);
    return 1;
  }
  for(i = 0; i < NOPTS; i++)
    if(opts[i].sec == (enum sec_kind)ld->cur && !strcmp(opts[i].key, key))
      break;
  if(i == NOPTS) {
    report(ld, line, "unknown key '%s' in [%s]", key, ld->label);
    return 1;
  }
  base = section_base(ld->cfg, ld->cur, ld->cur_index);
  if(opt_is_list(&opts[i])) {
    if(!ld->seen[i])
      opt_clear(&opts[i], base);         /* the first use replaces the default, more append */
  }
  else if(ld->seen[i]) {
    report(ld, line, "duplicate key '%s' (first at line %d)", key, ld->seen[i]);
    return 1;
  }
  ld->seen[i] = line;
  nerr = ld->nerr;
  opt_set(ld, &opts[i], base, value, line);
  if(ld->nerr != nerr)
    rejected_add(ld, ld->cur, ld->cur_index, i);
  return 1;                              /* errors are counted by us, not by inih */
}

/* ---- whole-configuration checks -------------------------------------------------------- */

static const char *tls_word(enum cfg_tls tls)
{
  return tls == CFG_TLS_IMPLICIT ? "implicit" : "starttls";
}

static void check_sections(struct loader *ld)
{
  struct config *cfg = ld->cfg;
  char a[32], b[32];
  size_t i;

  if(cfg->retry_min > cfg->retry_max)
    report(ld, ld->unnamed_line[SEC_POSTERN], "retry_min (%s) is longer than retry_max (%s)",
           scaled_fmt(a, sizeof(a), cfg->retry_min, time_units),
           scaled_fmt(b, sizeof(b), cfg->retry_max, time_units));

  for(i = 0; i < cfg->nlisteners; i++) {
    struct cfg_listener *l = &cfg->listeners[i];
    if(!l->naddresses && !rejected(ld, SEC_LISTENER, i, "address"))
      report(ld, l->line, "listener %s: address is missing (address = HOST:PORT)", l->name);
    if(l->proxy_protocol && !l->nproxy_nets)
      report(ld, l->line, "listener %s: proxy_protocol = yes needs proxy_networks (the load "
             "balancers' addresses: only they may name the client)", l->name);
    if((l->tls == CFG_TLS_STARTTLS || l->tls == CFG_TLS_IMPLICIT) &&
       (!l->tls_cert || !l->tls_key))
      report(ld, l->line, "listener %s: tls = %s needs tls_cert and tls_key", l->name,
             tls_word(l->tls));
  }

  for(i = 0; i < cfg->nupstreams; i++) {
    struct cfg_upstream *u = &cfg->upstreams[i];
    if(u->type == CFG_UP_NONE) {
      if(!rejected(ld, SEC_UPSTREAM, i, "type"))
        report(ld, u->line, "upstream %s: type is missing (smtp sendgrid ses graph capture)",
               u->name);
      continue;
    }
    if(u->type == CFG_UP_SMTP) {
      if(!u->host)
        report(ld, u->line, "upstream %s: type = smtp needs host", u->name);
      if(!u->port)
        u->port = u->tls == CFG_UTLS_IMPLICIT ? 465 : 587;
    }
    if(u->type == CFG_UP_GRAPH && !u->oauth2)
      report(ld, u->line, "upstream %s: type = graph needs oauth2 = NAME", u->name);
    /* without it the envelope sender would pick the mailbox: any local program that may submit
     * could send as any mailbox the application may use */
    if(u->type == CFG_UP_GRAPH && !u->username)
      report(ld, u->line, "upstream %s: type = graph needs username = the mailbox to send as "
             "(limit the application to it with an Exchange application access policy)", u->name);
    if((u->auth == CFG_UAUTH_XOAUTH2 || u->auth == CFG_UAUTH_OAUTHBEARER) && !u->oauth2)
      report(ld, u->line, "upstream %s: auth = %s needs oauth2 = NAME", u->name,
             cfg_uauth_words[u->auth]);
    if(u->oauth2 && section_find(cfg, SEC_OAUTH2, u->oauth2, strlen(u->oauth2)) < 0)
      report(ld, u->line, "upstream %s: oauth2 '%s' names no [oauth2] section", u->name,
             u->oauth2);
  }
}

static void check_routes(struct loader *ld)
{
  struct config *cfg = ld->cfg;
  size_t i;
  for(i = 0; i < cfg->nroutes; i++) {
    struct cfg_route *r = &cfg->routes[i];
    if(!r->upstream)
      report(ld, r->line, "route %s: upstream is missing", r->name);
    else if(!config_upstream(cfg, r->upstream))
      report(ld, r->line, "route %s: upstream '%s' names no [upstream] section", r->name,
             r->upstream);
  }
}

/* An [upstream] with no [route] used to be silently unused: every message stayed in the store
 * as captured while the operator believed it was relayed. With no route, the one upstream no
 * other names as its fallback carries all mail; with several, which one is the operator's to
 * say. */
static void implicit_route(struct loader *ld)
{
  struct config *cfg = ld->cfg;
  const struct cfg_upstream *only = NULL;
  struct cfg_route *r;
  char names[256];
  size_t i, j, n = 0, used = 0;
  if(cfg->nroutes || !cfg->nupstreams || ld->nerr)
    return;
  names[0] = '\0';
  for(i = 0; i < cfg->nupstreams; i++) {
    const struct cfg_upstream *u = &cfg->upstreams[i];
    int fallback_of_other = 0;
    for(j = 0; j < cfg->nupstreams; j++)
      if(j != i && cfg->upstreams[j].fallback && !strcmp(cfg->upstreams[j].fallback, u->name))
        fallback_of_other = 1;
    if(fallback_of_other)
      continue;
    only = u;
    n++;
    if(used < sizeof(names)) {
      int w = snprintf(names + used, sizeof(names) - used, "%s%s", n > 1 ? ", " : "", u->name);
      used += w > 0 ? (size_t)w : 0;
    }
  }
  if(n > 1) {
    report(ld, cfg->upstreams[0].line, "%zu upstreams (%s) and no [route]: say which carries the "
           "mail, e.g. [route default] with upstream = %s (a route with neither sender nor "
           "recipient takes all mail)", n, names, cfg->upstreams[0].name);
    return;
  }
  if(!only)
    return;
  r = (struct cfg_route *)(void *)section_add(ld, SEC_ROUTE, "default", 7, 0);
  if(!r || set_str(&r->upstream, only->name, strlen(only->name))) {
    nomem(ld, 0);
    return;
  }
  cfg->implicit_route = 1;
}

/* ---- the environment ------------------------------------------------------------------- */

static const char *env_get(const char *name)
{
  const char *v = getenv(name);
  return v && *v ? v : NULL;
}

/* The variables hosted applications already use make an upstream "env" and send
 * the catch-all route through it. All are checked before anything changes. */
static void env_apply(struct loader *ld)
{
  static const char *const w_envauth[] = { "plain", "login", "cram_md5", "none", "cram-md5",
                                           NULL };
  static const enum cfg_uauth auth_as[] = { CFG_UAUTH_PLAIN, CFG_UAUTH_LOGIN, CFG_UAUTH_CRAM_MD5,
                                            CFG_UAUTH_NONE, CFG_UAUTH_CRAM_MD5 };
  struct config *cfg = ld->cfg;
  const char *host = env_get("SMTP_HOST"), *v;
  int tls = -1, verify = -1, auth = -1;
  const char *user = env_get("SMTP_USERNAME"), *pass = env_get("SMTP_PASSWORD");
  const char *helo = env_get("SMTP_DOMAIN");
  struct cfg_upstream *u;
  struct cfg_route *catchall = NULL;
  long port = 0;
  int nerr = ld->nerr, w, found;
  size_t i;

  if(!host)
    return;
  v = env_get("SMTP_PORT");
  if(v && (!digits_only(v, strlen(v)) || str_to_long(v, strlen(v), 1, 65535, &port)))
    report_env(ld, "SMTP_PORT", "'%s' is not a port (1 to 65535)", v);
  if((v = env_get("SMTP_START_TLS"))) {
    w = bool_parse(v);
    if(w < 0)
      report_env(ld, "SMTP_START_TLS", "'%s' is not true or false", v);
    else
      tls = w ? CFG_UTLS_STARTTLS : CFG_UTLS_NONE;
  }
  if((v = env_get("SMTP_OPENSSL_VERIFY_MODE"))) {
    w = word_find(cfg_verify_words, v, strlen(v));
    if(w < 0)
      report_env(ld, "SMTP_OPENSSL_VERIFY_MODE", "'%s' is not peer or none", v);
    else
      verify = w;
  }
  if((v = env_get("SMTP_AUTH"))) {
    w = word_find(w_envauth, v, strlen(v));
    if(w < 0)
      report_env(ld, "SMTP_AUTH", "'%s' is not one of: plain login cram_md5 none", v);
    else
      auth = (int)auth_as[w];
  }
  if(ld->nerr != nerr)
    return;

  found = section_find(cfg, SEC_UPSTREAM, "env", 3);
  if(found >= 0)
    u = &cfg->upstreams[found];
  else if(!(u = (struct cfg_upstream *)(void *)section_add(ld, SEC_UPSTREAM, "env", 3, 0)))
    goto oom;
  u->type = CFG_UP_SMTP;
  if(set_str(&u->host, host, strlen(host)) ||
     (user && set_str(&u->username, user, strlen(user))) ||
     (helo && set_str(&u->helo, helo, strlen(helo))))
    goto oom;
  if(tls >= 0)
    u->tls = (enum cfg_utls)tls;
  if(verify >= 0)
    u->verify = (enum cfg_verify)verify;
  if(auth >= 0)
    u->auth = (enum cfg_uauth)auth;
  if(pass) {
    secret_free(&u->password);
    if(!(u->password = str_dup_n(pass, strlen(pass))))
      goto oom;
  }
  if(port)
    u->port = port;
  else if(!u->port)
    u->port = u->tls == CFG_UTLS_IMPLICIT ? 465 : 587;

  for(i = 0; i < cfg->nroutes && !catchall; i++)
    if(!cfg->routes[i].sender && !cfg->routes[i].recipient)
      catchall = &cfg->routes[i];
  if(!catchall) {
    const char *name = section_find(cfg, SEC_ROUTE, "default", 7) < 0 ? "default" : "env";
    catchall = (struct cfg_route *)(void *)section_add(ld, SEC_ROUTE, name, strlen(name), 0);
    if(!catchall)
      goto oom;
  }
  if(set_str(&catchall->upstream, "env", 3))
    goto oom;
  return;
oom:
  report_env(ld, "SMTP_HOST", "out of memory");
}

/* ---- the interface --------------------------------------------------------------------- */

const struct cfg_upstream *config_upstream(const struct config *cfg, const char *name)
{
  static const struct cfg_upstream capture = { .name = "capture", .type = CFG_UP_CAPTURE };
  size_t i;
  if(!name)
    return NULL;
  for(i = 0; cfg && i < cfg->nupstreams; i++)
    if(!strcmp(cfg->upstreams[i].name, name))
      return &cfg->upstreams[i];
  return strcmp(name, "capture") ? NULL : &capture;
}

const char *config_choose_path(const char *arg)
{
  const char *env;
  if(arg && *arg)
    return arg;
  env = getenv("POSTERN_CONFIG");
  if(env && *env)
    return env;
  if(!access(CONFIG_DEFAULT_PATH, F_OK))
    return CONFIG_DEFAULT_PATH;
  return NULL;
}

void config_free(struct config *cfg)
{
  int kind;
  size_t i, j, n;
  if(!cfg)
    return;
  for(kind = 0; kind < SEC_COUNT; kind++) {
    n = section_count(cfg, kind);
    for(i = 0; i < n; i++) {
      char *base = section_base(cfg, kind, i);
      for(j = 0; j < NOPTS; j++)
        if(opts[j].sec == (enum sec_kind)kind)
          opt_clear(&opts[j], base);
      if(kind == SEC_UPSTREAM)
        secret_free(&((struct cfg_upstream *)(void *)base)->password);
      if(sections[kind].named)
        free(*(char **)(void *)(base + sections[kind].name_off));
    }
    if(sections[kind].named)
      free(section_array(cfg, kind));
  }
  free(cfg->path);
  free(cfg);
}

int config_load(const char *path, FILE *errs, struct config **out)
{
  struct loader ld;
  char text[256];
  int rc;

  memset(&ld, 0, sizeof(ld));
  ld.errs = errs;
  ld.file = path ? path : EMBEDDED_NAME;
  ld.cur = CUR_NONE;
  ld.cfg = calloc(1, sizeof(*ld.cfg));
  if(!ld.cfg) {
    report(&ld, 0, "out of memory");
    return ld.nerr;
  }
  if(set_str(&ld.cfg->path, ld.file, strlen(ld.file))) {
    nomem(&ld, 0);
    goto out;
  }
  defaults_apply(&ld, SEC_POSTERN, section_base(ld.cfg, SEC_POSTERN, 0));
  defaults_apply(&ld, SEC_INBOUND, section_base(ld.cfg, SEC_INBOUND, 0));
  defaults_apply(&ld, SEC_CONSOLE, section_base(ld.cfg, SEC_CONSOLE, 0));

  if(path) {
    ld.fp = fopen(path, "r");
    if(!ld.fp) {
      report(&ld, 0, "cannot open: %s", strerror(errno));
      goto out;
    }
  }
  else {
    /* the embedded default is INI text too, read by the same code. It stays as started: its
     * data is ./postern-data wherever the reader is (a checkout under /root, 0700), which a
     * system user made by a package cannot reach; the listener is loopback only */
    rc = snprintf(text, sizeof(text),
                  "[postern]\ndata_dir = ./postern-data\nuser =\n\n"
                  "[listener submission]\naddress = 127.0.0.1:%d\nrole = submission\n",
                  geteuid() == 0 ? 587 : 2525);
    ld.mem = text;
    ld.cfg->embedded = 1;
    ld.mem_len = (size_t)rc;
  }

  rc = ini_parse_stream(reader_gets, &ld, on_value, &ld);
  if(rc == -2)
    nomem(&ld, 0);
  else if(rc > 0)                        /* a line our reader let through but inih did not */
    report(&ld, rc, "cannot parse this line");
  if(ld.fp && ferror(ld.fp))
    report(&ld, 0, "read error: %s", strerror(errno));

  if(!ld.cfg->hostname) {
    char name[256];
    if(gethostname(name, sizeof(name)) || !name[0])
      str_copy(name, sizeof(name), "localhost");
    name[sizeof(name) - 1] = '\0';
    if(set_str(&ld.cfg->hostname, name, strlen(name)))
      nomem(&ld, 0);
  }
  check_sections(&ld);
  env_apply(&ld);
  check_routes(&ld);                     /* after the environment: it may add upstream "env" */
  implicit_route(&ld);

out:
  if(ld.fp)
    fclose(ld.fp);
  free(ld.rejected);
  if(ld.nerr)
    config_free(ld.cfg);
  else
    *out = ld.cfg;
  return ld.nerr;
}

int config_aws_region_ok(const char *r)
{
  size_t i, n = r ? strlen(r) : 0;
  if(!n || n > LIM_AWS_REGION || r[0] == '-' || r[n - 1] == '-')
    return 0;
  for(i = 0; i < n; i++)
    if(!((r[i] >= 'a' && r[i] <= 'z') || (r[i] >= '0' && r[i] <= '9') || r[i] == '-'))
      return 0;
  return 1;
}

int config_url_cleartext(const char *url)
{
  const char *h, *end;
  char host[64];
  struct in_addr a4;
  size_t n;
  if(!url || strncasecmp(url, "http://", 7))
    return 0;
  h = url + 7;
  end = h + strcspn(h, "/?#");
  if(memchr(h, '@', (size_t)(end - h)))      /* userinfo: the host follows the last '@' */
    for(const char *p = h; p < end; p++)
      if(*p == '@')
        h = p + 1;
  if(*h == '[')
    n = strcspn(h, "]") + 1;
  else
    n = strcspn(h, ":/?#");
  if(n >= sizeof(host) || h + n > end || (h + n < end && h[n] != ':'))
    return 1;
  memcpy(host, h, n);
  host[n] = '\0';
  if(!strcasecmp(host, "localhost") || !strcmp(host, "[::1]"))
    return 0;
  if(inet_pton(AF_INET, host, &a4) == 1 && (ntohl(a4.s_addr) >> 24) == 127)
    return 0;
  return 1;
}
