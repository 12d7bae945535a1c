/* The configuration: one INI file read with inih, checked against one table of
 * {section, key, type, default, min, max} (Postfix's CONFIG_*_TABLE, redis's static_configs[]).
 * Adding a setting is one line in config.c plus a field here. */
#ifndef POSTERN_CONFIG_H
#define POSTERN_CONFIG_H
#include <stddef.h>
#include <stdio.h>
#include <netinet/in.h>

#define CONFIG_DEFAULT_PATH "/etc/postern/postern.conf"

struct cidr {
  int family;                 /* AF_INET or AF_INET6 */
  unsigned char addr[16];
  int prefix;
};
/* Is the address (family, 4 or 16 bytes) inside one of the nets? */
int cidr_match(const struct cidr *nets, size_t n, int family, const void *addr);
int cidr_parse(const char *s, struct cidr *out);   /* "10.0.0.0/8", "::1", ...; 0 ok */

enum cfg_role { CFG_ROLE_SUBMISSION = 0, CFG_ROLE_MX };
enum cfg_tls { CFG_TLS_NONE = 0, CFG_TLS_STARTTLS, CFG_TLS_IMPLICIT, CFG_TLS_OPPORTUNISTIC };
enum cfg_auth { CFG_AUTH_NONE = 0, CFG_AUTH_OPTIONAL, CFG_AUTH_REQUIRED };
/* an smtp [upstream]'s tls, verify and auth; cfg_*_words[] spell them as the file does */
enum cfg_utls { CFG_UTLS_STARTTLS = 0, CFG_UTLS_OPPORTUNISTIC, CFG_UTLS_IMPLICIT, CFG_UTLS_NONE };
enum cfg_verify { CFG_VERIFY_PEER = 0, CFG_VERIFY_NONE };
enum cfg_uauth { CFG_UAUTH_NONE = 0, CFG_UAUTH_AUTO, CFG_UAUTH_PLAIN, CFG_UAUTH_LOGIN,
                 CFG_UAUTH_CRAM_MD5, CFG_UAUTH_XOAUTH2, CFG_UAUTH_OAUTHBEARER };
/* an [upstream]'s type; CFG_UP_NONE: the file gave none (an error) */
enum cfg_utype { CFG_UP_NONE = 0, CFG_UP_SMTP, CFG_UP_SENDGRID, CFG_UP_SES, CFG_UP_GRAPH,
                 CFG_UP_CAPTURE };
extern const char *const cfg_utype_words[];     /* [CFG_UP_NONE] is "" */
/* an [oauth2]'s provider, flow and cloud; NONE: not set */
enum cfg_provider { CFG_PROVIDER_NONE = 0, CFG_PROVIDER_MICROSOFT, CFG_PROVIDER_GOOGLE,
                    CFG_PROVIDER_GENERIC };
enum cfg_flow { CFG_FLOW_NONE = 0, CFG_FLOW_CLIENT_CREDENTIALS, CFG_FLOW_REFRESH_TOKEN,
                CFG_FLOW_DEVICE_CODE };
enum cfg_cloud { CFG_CLOUD_GLOBAL = 0, CFG_CLOUD_USGOV, CFG_CLOUD_USGOV_DOD, CFG_CLOUD_CHINA };
extern const char *const cfg_provider_words[];  /* [CFG_PROVIDER_NONE] is "" */
extern const char *const cfg_flow_words[];      /* [CFG_FLOW_NONE] is "" */
extern const char *const cfg_cloud_words[];
/* [inbound] spf: what a failing SPF check does to mail for our domains */
enum cfg_spf { CFG_SPF_OFF = 0, CFG_SPF_TAG, CFG_SPF_REJECT };
extern const char *const cfg_spf_words[];
extern const char *const cfg_utls_words[];
extern const char *const cfg_verify_words[];
extern const char *const cfg_uauth_words[];

enum cfg_exempt { CFG_EXEMPT_AUTO = 0, CFG_EXEMPT_NONE, CFG_EXEMPT_LOOPBACK, CFG_EXEMPT_TRUSTED };

struct cfg_listener {
  char *name;
  int line;                       /* where the section starts, for messages */
  char **addresses;               /* "127.0.0.1:587", "[::1]:587" */
  size_t naddresses;
  enum cfg_role role;
  enum cfg_tls tls;
  char *tls_cert, *tls_key;
  enum cfg_auth auth;
  char *auth_mechanisms;          /* "PLAIN LOGIN CRAM-MD5" */
  char *auth_plaintext_mechanisms; /* CRAM-MD5 / SCRAM-* offered before TLS on a listener not
                                     bound to loopback; NULL: none */
  struct cidr *trusted;           /* trusted_networks */
  size_t ntrusted;
  /* per-listener limits; 0 = unset, the daemon applies the [postern] value or the role's */
  long max_clients;               /* sessions on this listener at once */
  long max_clients_per_ip;        /* sessions from one client (IPv4 address, IPv6 /64) */
  long connection_rate;           /* connections per client per minute; 0 none */
  long message_rate;              /* MAIL transactions per client per minute; 0 none */
  long recipient_rate;            /* accepted RCPTs per client per minute; 0 none */
  enum cfg_exempt limits_exempt;  /* who the per-client limits spare */
  long long helo_timeout;         /* seconds from connect to HELO/EHLO */
  int proxy_protocol;             /* a PROXY v1/v2 header comes first from proxy_networks */
  struct cidr *proxy_nets;        /* proxy_networks */
  size_t nproxy_nets;
};

struct cfg_upstream {
  char *name;
  int line;
  enum cfg_utype type;
  char *host;
  long port;
  enum cfg_utls tls;
  enum cfg_verify verify;
  char *ca_file;
  char *helo;
  enum cfg_uauth auth;
  char *username;
  char *password_file;
  char *password;                 /* from the environment only (SMTP_PASSWORD); never logged */
  char *oauth2;
  char *rate;
  char *api_key_file;
  char *api_url;
  char *region;
  char *access_key_id_file;       /* ses; else AWS_ACCESS_KEY_ID from the environment */
  char *secret_access_key_file;   /* ses; else AWS_SECRET_ACCESS_KEY from the environment */
  char *fallback;                 /* the [upstream] that takes the mail while this one is down */
  char *tls_min_version;
};

struct cfg_route {
  char *name;
  int line;
  char *sender;                   /* glob on the envelope sender, or NULL */
  char *recipient;                /* glob on the recipient, or NULL */
  char *upstream;
};

struct cfg_oauth2 {
  char *name;
  int line;
  enum cfg_provider provider;
  enum cfg_flow flow;             /* NONE: token_file holds a ready access token */
  char *tenant, *client_id, *client_secret_file, *token_url, *scope;
  char *certificate_file, *private_key_file, *token_file;
  enum cfg_cloud cloud;           /* Microsoft's national clouds */
};

/* [user NAME]: what an authenticated submission user may put in MAIL FROM */
struct cfg_user {
  char *name;                     /* the SASL user name */
  int line;
  char *senders;                  /* globs on the envelope sender, blank-separated, or NULL */
};

/* [dkim NAME]: a key that signs mail leaving through an smtp upstream */
struct cfg_dkim {
  char *name;
  int line;
  char *domain, *selector, *key_file;
  char *algorithm;                /* rsa-sha256 | ed25519-sha256 */
  char *headers;                  /* field names to sign (over-signed), blank- or colon-separated */
  char *canonicalization;         /* header/body: relaxed/relaxed, simple/simple, ... */
  char *match;                    /* from (the From: domain) | sender (the envelope sender's) */
};

struct cfg_inbound {
  int present;
  int line;                       /* where [inbound] starts, for messages */
  char *domains;
  enum cfg_spf spf;
  char *dmarc;                    /* off | tag | enforce */
  char *http_address, *http_user, *http_password_file, *event_public_key_file;
  char *http_auth;                /* basic | none (the webhooks open on purpose) */
  char *events_auth;              /* signature | basic (accounts without signed events) */
  /* per client (IPv4 address, IPv6 /64): connections at once, requests a minute (0 = no
   * limit), wrong credentials before a lockout of http_auth_lockout seconds */
  long http_clients_per_ip, http_request_rate, http_auth_failures;
  long long http_auth_lockout;
  long long http_request_timeout;     /* seconds for one whole request, headers and body */
  struct cidr *http_exempt;       /* http_exempt_networks: clients no per-client limit applies to */
  size_t nhttp_exempt;
  long long event_max_age;
  char *twilio_auth_token_file, *public_url, *reply_address, *forward_url, *forward_secret_file;
  long forward_max_attempts;      /* refusals before a record is set aside */
  long long forward_max_age;      /* seconds of refusals before it is set aside; 0: no limit */
  /* posternctl twilio: the account and the API hosts (tests point them at loopback) */
  char *twilio_account_sid, *twilio_api_url, *twilio_messaging_url;
  long long max_http_size;        /* 0: max_message_size plus LIM_WEBHOOK_FORM_OVERHEAD */
  long long record_text_max;      /* bytes of text, html, reply_text a record keeps; 0 all */
  long long dedupe_window;        /* seconds an Inbound Parse repeat is recognised; 0 never */
};

/* [console]: the web console on the HTTP listener */
struct cfg_console {
  int present;
  int line;
  int enabled;
  char *users;                    /* "name:crypt-hash name:crypt-hash" */
  char *users_file;               /* lines name:crypt-hash */
  long long session_timeout;      /* seconds a login lasts without use */
  int secure_cookie;              /* Secure on the cookie: behind a TLS reverse proxy */
};

struct config {
  char *path;
  int embedded;                   /* no file: the embedded default */
  /* [postern] */
  char *hostname;
  char *data_dir;
  char *user;
  long long max_message_size;
  long max_recipients;
  long max_clients;
  long long queue_lifetime;       /* seconds */
  long long delay_warning;        /* seconds before the sender hears of a delay; 0: never */
  long long retention;            /* seconds final mail is kept; 0: for ever */
  long long capture_retention;    /* seconds captured mail is kept; 0: for ever */
  long long records_retention;    /* seconds correspondence records are kept; 0: for ever */
  long long retry_min;            /* seconds */
  long long retry_max;            /* seconds */
  long long idle_timeout;         /* seconds */
  long long session_timeout;      /* seconds */
  long long shutdown_grace;       /* seconds SIGTERM waits for sessions */
  long delivery_workers;
  long max_errors;
  long max_auth_failures;         /* failed AUTHs from one address before 421 and close */
  long max_transactions;          /* MAIL transactions in one SMTP session */
  long long auth_lockout;         /* seconds a client stays locked out after max_auth_failures */
  int debug;

  struct cfg_listener *listeners; size_t nlisteners;
  struct cfg_upstream *upstreams; size_t nupstreams;
  struct cfg_route *routes;       size_t nroutes;
  int implicit_route;             /* no [route]: the one upstream got the catch-all "default" */
  struct cfg_oauth2 *oauth2s;     size_t noauth2s;
  struct cfg_inbound inbound;
  struct cfg_console console;
  struct cfg_user *users;         size_t nusers;
  struct cfg_dkim *dkims;         size_t ndkims;
};

/* Reads path (or, when path is NULL, the embedded default: one loopback submission listener on
 * 127.0.0.1:587 — 2525 when not root —, the capture route, data under ./postern-data).
 * Each problem is written to errs as "FILE:LINE: message\n" and counted; the environment
 * variables SMTP_HOST ... SMTP_DOMAIN then configure and override the default
 * upstream. Returns the number of problems; *out is set only when it is 0. */
int config_load(const char *path, FILE *errs, struct config **out);
void config_free(struct config *cfg);

/* -c FILE, else $POSTERN_CONFIG, else CONFIG_DEFAULT_PATH; NULL when the chosen default
 * file does not exist (meaning: the embedded default). */
const char *config_choose_path(const char *arg);

/* Parsers shared with other settings-like input. Return 0 or -1. */
int config_parse_size(const char *s, long long *out);       /* 35M, 512K, 100 */
int config_parse_duration(const char *s, long long *secs);  /* 5d, 1h, 30s, 10m, 90 */
/* 1 when sending credentials to url would put them on the network in clear: http:// to a host
 * other than localhost, an IPv4 literal in 127.0.0.0/8 or [::1] (plain http is for tests). */
int config_url_cleartext(const char *url);
/* 1 when r is spelled as AWS names regions ("eu-west-1", "us-gov-west-1"): it goes into host
 * names and signatures. */
int config_aws_region_ok(const char *r);

/* The [upstream NAME] section; "capture" is always there (a built-in one unless the file
 * defines its own). NULL when there is none. */
const struct cfg_upstream *config_upstream(const struct config *cfg, const char *name);

#endif
