/* Unit tests for global/config.c: value parsers, networks, whole files good and bad (each
 * mistake one FILE:LINE line), the SMTP_* environment, the embedded default and the shipped
 * example conf/postern.conf. */
#if !defined(_GNU_SOURCE) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L
#endif
#include "tests/unit/unit.h"
#include "global/config.h"
#include "lib/buf.h"

#include <arpa/inet.h>
#include <pwd.h>
#include <sys/socket.h>
#include <unistd.h>

/* ---- helpers --------------------------------------------------------------------------- */

static char tmpdir[64];

static void tmpdir_remove(void)
{
  if(tmpdir[0])
    rmdir(tmpdir);
}

static const char *tmpdir_get(void)
{
  if(!tmpdir[0]) {
    str_copy(tmpdir, sizeof(tmpdir), "/tmp/postern-test-config-XXXXXX");
    if(!mkdtemp(tmpdir)) {
      perror("mkdtemp");
      exit(1);
    }
    atexit(tmpdir_remove);
  }
  return tmpdir;
}

static void env_clear(void)
{
  static const char *const vars[] = { "SMTP_HOST", "SMTP_PORT", "SMTP_START_TLS",
    "SMTP_OPENSSL_VERIFY_MODE", "SMTP_AUTH", "SMTP_USERNAME", "SMTP_PASSWORD", "SMTP_DOMAIN",
    "POSTERN_CONFIG", NULL };
  size_t i;
  for(i = 0; vars[i]; i++)
    unsetenv(vars[i]);
}

struct loaded {
  int nerr;
  struct config *cfg;
  char path[128];
  char *errs;                   /* everything config_load wrote */
  size_t errlen;
};

/* Writes text to a fresh file, loads it (with the environment as it is now), removes it. */
static void load_text(const char *text, struct loaded *l)
{
  static int seq;
  FILE *f, *es;
  memset(l, 0, sizeof(*l));
  snprintf(l->path, sizeof(l->path), "%s/t%d.conf", tmpdir_get(), ++seq);
  f = fopen(l->path, "w");
  if(!f) {
    perror(l->path);
    exit(1);
  }
  fputs(text, f);
  fclose(f);
  es = open_memstream(&l->errs, &l->errlen);
  l->nerr = config_load(l->path, es, &l->cfg);
  fclose(es);
  remove(l->path);
}

static void loaded_free(struct loaded *l)
{
  config_free(l->cfg);
  free(l->errs);
  l->cfg = NULL;
  l->errs = NULL;
}

static size_t count_lines(const char *s)
{
  size_t n = 0;
  for(; *s; s++)
    n += *s == '\n';
  return n;
}

/* The messages are exactly these lines, in order: "PATH:LINE: " then text containing want. */
static void check_errors(const struct loaded *l, size_t n, const int *lines,
                         const char *const *want)
{
  const char *p = l->errs;
  char prefix[200];
  size_t i;
  CHECK_EQ_INT(l->nerr, n);
  CHECK_EQ_INT(count_lines(l->errs), n);
  for(i = 0; i < n && p && *p; i++) {
    const char *eol = strchr(p, '\n');
    size_t len = eol ? (size_t)(eol - p) : strlen(p);
    char *line = str_dup_n(p, len);
    snprintf(prefix, sizeof(prefix), "%s:%d: ", l->path, lines[i]);
    if(strncmp(line, prefix, strlen(prefix)) || (want[i] && !strstr(line, want[i]))) {
      fprintf(stderr, "message %zu: \"%s\", expected \"%s...%s\"\n", i, line, prefix,
              want[i] ? want[i] : "");
      unit_failed = 1;
    }
    free(line);
    p = eol ? eol + 1 : NULL;
  }
  if(l->nerr != (int)n)
    fprintf(stderr, "messages were:\n%s", l->errs);
}

/* One bad file, one expected message on one line. */
static void expect_one(const char *text, int line, const char *want)
{
  struct loaded l;
  load_text(text, &l);
  check_errors(&l, 1, &line, &want);
  CHECK(l.cfg == NULL);
  loaded_free(&l);
}

static void expect_ok(const char *text, struct loaded *l)
{
  load_text(text, l);
  CHECK_EQ_INT(l->nerr, 0);
  CHECK(l->cfg != NULL);
  if(l->nerr)
    fprintf(stderr, "unexpected messages:\n%s", l->errs);
}

/* ---- value parsers --------------------------------------------------------------------- */

struct num_case { const char *s; int rc; long long want; };

static void t_sizes(void)
{
  static const struct num_case cases[] = {
    { "35M", 0, 35LL << 20 }, { "512K", 0, 512LL << 10 }, { "100", 0, 100 },
    { "1G", 0, 1LL << 30 }, { "1g", 0, 1LL << 30 }, { "2k", 0, 2048 }, { "0", 0, 0 },
    { "9223372036854775807", 0, 9223372036854775807LL },
    { "", -1, 0 }, { "M", -1, 0 }, { "-1", -1, 0 }, { "+1", -1, 0 }, { "10X", -1, 0 },
    { "1.5M", -1, 0 }, { "5 M", -1, 0 }, { " 5", -1, 0 }, { "5MB", -1, 0 },
    { "9223372036854775808", -1, 0 }, { "99999999999999999999999", -1, 0 },
    { "9007199254740992K", -1, 0 }, { "8589934592G", -1, 0 },
  };
  size_t i;
  for(i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    long long v = -7;
    int rc = config_parse_size(cases[i].s, &v);
    if(rc != cases[i].rc || (!rc && v != cases[i].want)) {
      fprintf(stderr, "size '%s': rc %d value %lld\n", cases[i].s, rc, v);
      unit_failed = 1;
    }
  }
  CHECK(config_parse_size(NULL, &(long long){0}) == -1);
}

/* Credentials may go over plain http only to this machine: the host part must be exactly a
 * loopback name or literal, not merely begin like one. */
static void t_url_cleartext(void)
{
  static const struct { const char *url; int want; } t[] = {
    { "https://api.sendgrid.com", 0 }, { "HTTPS://x.example/", 0 },
    { "http://127.0.0.1:8080/v3", 0 }, { "http://127.1.2.3", 0 }, { "http://localhost:99/x", 0 },
    { "http://LOCALHOST", 0 }, { "http://[::1]:8025/token", 0 }, { "http://user@127.0.0.1/", 0 },
    { "http://api.sendgrid.com", 1 }, { "http://localhost.evil.example/", 1 },
    { "http://127.evil.example/", 1 }, { "http://127.0.0.1.evil.example/", 1 },
    { "http://[::1].evil.example/", 1 }, { "http://127.0.0.1@evil.example/", 1 },
    { "http://10.0.0.1/", 1 }, { "http://", 1 }, { "http://[::2]/", 1 },
  };
  size_t i;
  for(i = 0; i < sizeof(t) / sizeof(t[0]); i++)
    if(config_url_cleartext(t[i].url) != t[i].want) {
      fprintf(stderr, "config_url_cleartext(%s) != %d\n", t[i].url, t[i].want);
      unit_failed = 1;
    }
}

static void t_durations(void)
{
  static const struct num_case cases[] = {
    { "5d", 0, 432000 }, { "1h", 0, 3600 }, { "30s", 0, 30 }, { "10m", 0, 600 },
    { "90", 0, 90 }, { "0", 0, 0 }, { "0s", 0, 0 },
    { "", -1, 0 }, { "5x", -1, 0 }, { "-1", -1, 0 }, { "-5m", -1, 0 }, { "1.5h", -1, 0 },
    { "5M", -1, 0 }, { "5 m", -1, 0 }, { "m", -1, 0 }, { "5mm", -1, 0 },
    { "99999999999999999999", -1, 0 }, { "106751991167301d", -1, 0 },
  };
  size_t i;
  for(i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    long long v = -7;
    int rc = config_parse_duration(cases[i].s, &v);
    if(rc != cases[i].rc || (!rc && v != cases[i].want)) {
      fprintf(stderr, "duration '%s': rc %d value %lld\n", cases[i].s, rc, v);
      unit_failed = 1;
    }
  }
}

/* ---- networks -------------------------------------------------------------------------- */

static void t_cidr_parse(void)
{
  static const struct { const char *s; int rc, family, prefix; } cases[] = {
    { "10.0.0.0/8", 0, AF_INET, 8 }, { "127.0.0.1", 0, AF_INET, 32 },
    { "0.0.0.0/0", 0, AF_INET, 0 }, { "::1", 0, AF_INET6, 128 },
    { "::1/128", 0, AF_INET6, 128 }, { "2001:db8::/32", 0, AF_INET6, 32 },
    { "::ffff:10.0.0.0/104", 0, AF_INET6, 104 }, { "10.1.2.3/8", 0, AF_INET, 8 },
    { "", -1, 0, 0 }, { "/8", -1, 0, 0 }, { "10.0.0.0/33", -1, 0, 0 },
    { "10.0.0.0/", -1, 0, 0 }, { "10.0.0.0/-1", -1, 0, 0 }, { "10.0.0.0/+8", -1, 0, 0 },
    { "10.0.0.0/8x", -1, 0, 0 }, { "10.0.0/8", -1, 0, 0 }, { "::1/129", -1, 0, 0 },
    { "example.com", -1, 0, 0 }, { "10.0.0.256", -1, 0, 0 }, { "1:2:3:4:5:6:7:8:9", -1, 0, 0 },
  };
  size_t i;
  for(i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    struct cidr c;
    int rc = cidr_parse(cases[i].s, &c);
    if(rc != cases[i].rc ||
       (!rc && (c.family != cases[i].family || c.prefix != cases[i].prefix))) {
      fprintf(stderr, "cidr '%s': rc %d\n", cases[i].s, rc);
      unit_failed = 1;
    }
  }
}

static int match_one(const char *nets, const char *peer)
{
  struct cidr c[4];
  size_t n = 0;
  unsigned char a[16];
  const char *p = nets;
  char one[64];
  while(*p && n < 4) {
    size_t len = strcspn(p, " ");
    memcpy(one, p, len);
    one[len] = '\0';
    if(cidr_parse(one, &c[n++]))
      return -1;
    p += len + (p[len] == ' ');
  }
  if(inet_pton(AF_INET, peer, a) == 1)
    return cidr_match(c, n, AF_INET, a);
  if(inet_pton(AF_INET6, peer, a) == 1)
    return cidr_match(c, n, AF_INET6, a);
  return -1;
}

static void t_cidr_match(void)
{
  static const struct { const char *nets, *peer; int want; } cases[] = {
    { "127.0.0.0/8 ::1/128", "127.0.0.1", 1 },
    { "127.0.0.0/8 ::1/128", "127.255.1.2", 1 },
    { "127.0.0.0/8 ::1/128", "::1", 1 },
    { "127.0.0.0/8 ::1/128", "128.0.0.1", 0 },
    { "127.0.0.0/8 ::1/128", "::2", 0 },
    { "127.0.0.0/8", "::ffff:127.0.0.1", 1 },          /* a dual-stack socket's IPv4 peer */
    { "127.0.0.0/8", "::ffff:128.0.0.1", 0 },
    { "::ffff:10.0.0.0/104", "10.9.8.7", 1 },          /* and the other way round */
    { "::ffff:10.0.0.0/104", "11.9.8.7", 0 },
    { "192.168.16.0/20", "192.168.31.255", 1 },        /* a prefix inside a byte */
    { "192.168.16.0/20", "192.168.32.0", 0 },
    { "192.168.16.0/20", "192.168.15.255", 0 },
    { "10.1.2.3/8", "10.200.0.1", 1 },                 /* host bits are ignored */
    { "192.0.2.1", "192.0.2.1", 1 },
    { "192.0.2.1", "192.0.2.2", 0 },
    { "0.0.0.0/0", "203.0.113.9", 1 },
    { "0.0.0.0/0", "2001:db8::1", 0 },
    { "2001:db8::/32", "2001:db8:ffff::1", 1 },
    { "2001:db8::/33", "2001:db8:8000::1", 0 },
    { "2001:db8::/32", "2001:db9::1", 0 },
    { "::/0", "2001:db8::1", 1 },
  };
  size_t i;
  unsigned char a[4] = { 127, 0, 0, 1 };
  for(i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    int got = match_one(cases[i].nets, cases[i].peer);
    if(got != cases[i].want) {
      fprintf(stderr, "cidr_match(%s, %s) = %d, expected %d\n", cases[i].nets, cases[i].peer,
              got, cases[i].want);
      unit_failed = 1;
    }
  }
  CHECK(!cidr_match(NULL, 0, AF_INET, a));
  CHECK(!cidr_match(NULL, 0, AF_UNIX, a));
}

/* ---- whole files ----------------------------------------------------------------------- */

static const char full_conf[] =
  "; a configuration that uses every section\n"
  "[postern]\n"
  "hostname = relay.clinic.example   ; inline comment\n"
  "data_dir = /srv/postern\n"
  "user = mail\n"
  "max_message_size = 10M\n"
  "max_recipients = 50\n"
  "max_clients = 20\n"
  "queue_lifetime = 2d\n"
  "retry_min = 30s\n"
  "retry_max = 2h\n"
  "idle_timeout = 90\n"
  "session_timeout = 30m\n"
  "shutdown_grace = 5s\n"
  "delivery_workers = 8\n"
  "max_errors = 3\n"
  "debug = yes\n"
  "\n"
  "[listener submission]\n"
  "address = 127.0.0.1:587\n"
  "  address = [::1]:587      ; indented: still a key, not a continuation\n"
  "role = submission\n"
  "tls = starttls\n"
  "tls_cert = /etc/postern/tls/cert.pem\n"
  "tls_key = /etc/postern/tls/key.pem\n"
  "auth = required\n"
  "auth_mechanisms = plain, scram-sha-256 PLAIN\n"
  "trusted_networks = 10.0.0.0/8\n"
  "trusted_networks = 2001:db8::/32\n"
  "\n"
  "[listener mx]\n"
  "address = 0.0.0.0:25 [::]:25\n"
  "role = mx\n"
  "auth = none\n"
  "\n"
  "[upstream office365]\n"
  "type = smtp\n"
  "host = smtp.office365.com\n"
  "verify = none\n"
  "ca_file = /etc/ssl/certs/ca-certificates.crt\n"
  "helo = clinic.example\n"
  "auth = xoauth2\n"
  "username = noreply@clinic.example\n"
  "oauth2 = contoso\n"
  "rate = 30/m\n"
  "tls_min_version = TLSv1.3\n"
  "\n"
  "[upstream smarthost]\n"
  "type = SMTP\n"
  "host = mail.example.net\n"
  "tls = implicit\n"
  "auth = login\n"
  "password_file = /etc/postern/smarthost.secret\n"
  "\n"
  "[upstream sendgrid]\n"
  "type = sendgrid\n"
  "api_key_file = /etc/postern/sendgrid.key\n"
  "api_url = http://127.0.0.1:8999\n"
  "\n"
  "[upstream ses]\n"
  "type = ses\n"
  "region = eu-west-1\n"
  "\n"
  "[oauth2 contoso]\n"
  "provider = microsoft\n"
  "flow = client_credentials\n"
  "tenant = contoso.onmicrosoft.com\n"
  "client_id = 00000000-0000-0000-0000-000000000000\n"
  "client_secret_file = /etc/postern/contoso.secret\n"
  "token_url = https://login.example/token\n"
  "scope = https://outlook.office365.com/.default\n"
  "certificate_file = /etc/postern/c.pem\n"
  "private_key_file = /etc/postern/k.pem\n"
  "token_file = /var/lib/postern/contoso.token\n"
  "\n"
  "[route recruiting]\n"
  "sender = *@recruiting.clinic.example\n"
  "upstream = sendgrid\n"
  "\n"
  "[route partners]\n"
  "recipient = *@partner.example\n"
  "upstream = smarthost\n"
  "\n"
  "[route default]\n"
  "upstream = office365\n"
  "\n"
  "[inbound]\n"
  "domains = reply.clinic.example\n"
  "spf = reject\n"
  "http_address = 127.0.0.1:8025\n"
  "http_user = sendgrid\n"
  "http_password_file = /etc/postern/inbound.secret\n"
  "event_public_key_file = /etc/postern/sendgrid-event.pem\n"
  "event_max_age = 0\n"
  "twilio_auth_token_file = /etc/postern/twilio.token\n"
  "public_url = https://relay.clinic.example\n"
  "reply_address = reply+{token}@reply.clinic.example\n"
  "forward_url = https://app.clinic.example/hooks\n"
  "forward_secret_file = /etc/postern/forward.secret\n"
  "max_http_size = 1M\n"
  "\n"
  "[user frontdesk@clinic.example]\n"
  "senders = frontdesk@clinic.example *@appointments.clinic.example\n";

static void t_full(void)
{
  struct loaded l;
  const struct config *c;
  const struct cfg_listener *li;
  const struct cfg_upstream *u;
  const struct cfg_oauth2 *o;
  unsigned char v4[4] = { 10, 1, 2, 3 }, lo[4] = { 127, 0, 0, 1 };

  env_clear();
  expect_ok(full_conf, &l);
  c = l.cfg;
  if(!c)
    goto out;
  CHECK_EQ_STR(c->path, l.path);
  CHECK_EQ_STR(c->hostname, "relay.clinic.example");
  CHECK_EQ_STR(c->data_dir, "/srv/postern");
  CHECK_EQ_STR(c->user, "mail");
  CHECK_EQ_INT(c->max_message_size, 10 << 20);
  CHECK_EQ_INT(c->max_recipients, 50);
  CHECK_EQ_INT(c->max_clients, 20);
  CHECK_EQ_INT(c->queue_lifetime, 2 * 86400);
  CHECK_EQ_INT(c->retry_min, 30);
  CHECK_EQ_INT(c->retry_max, 7200);
  CHECK_EQ_INT(c->idle_timeout, 90);
  CHECK_EQ_INT(c->session_timeout, 1800);
  CHECK_EQ_INT(c->shutdown_grace, 5);
  CHECK_EQ_INT(c->delivery_workers, 8);
  CHECK_EQ_INT(c->max_errors, 3);
  CHECK_EQ_INT(c->debug, 1);

  CHECK_EQ_INT(c->nlisteners, 2);
  li = &c->listeners[0];
  CHECK_EQ_STR(li->name, "submission");
  CHECK_EQ_INT(li->line, 19);
  CHECK_EQ_INT(li->naddresses, 2);
  CHECK_EQ_STR(li->addresses[0], "127.0.0.1:587");
  CHECK_EQ_STR(li->addresses[1], "[::1]:587");
  CHECK_EQ_INT(li->role, CFG_ROLE_SUBMISSION);
  CHECK_EQ_INT(li->tls, CFG_TLS_STARTTLS);
  CHECK_EQ_STR(li->tls_cert, "/etc/postern/tls/cert.pem");
  CHECK_EQ_STR(li->tls_key, "/etc/postern/tls/key.pem");
  CHECK_EQ_INT(li->auth, CFG_AUTH_REQUIRED);
  CHECK_EQ_STR(li->auth_mechanisms, "PLAIN SCRAM-SHA-256");
  CHECK_EQ_INT(li->ntrusted, 2);         /* the default 127.0.0.0/8 ::1/128 was replaced */
  CHECK(cidr_match(li->trusted, li->ntrusted, AF_INET, v4));
  CHECK(!cidr_match(li->trusted, li->ntrusted, AF_INET, lo));
  li = &c->listeners[1];
  CHECK_EQ_STR(li->name, "mx");
  CHECK_EQ_INT(li->naddresses, 2);
  CHECK_EQ_STR(li->addresses[1], "[::]:25");
  CHECK_EQ_INT(li->role, CFG_ROLE_MX);
  CHECK_EQ_INT(li->tls, CFG_TLS_NONE);
  CHECK_EQ_INT(li->auth, CFG_AUTH_NONE);
  CHECK_EQ_STR(li->auth_mechanisms, "PLAIN LOGIN CRAM-MD5");
  CHECK_EQ_INT(li->ntrusted, 2);
  CHECK(cidr_match(li->trusted, li->ntrusted, AF_INET, lo));

  CHECK_EQ_INT(c->nupstreams, 4);
  u = config_upstream(c, "office365");
  CHECK(u != NULL);
  if(u) {
    CHECK_EQ_STR(cfg_utype_words[u->type], "smtp");
    CHECK_EQ_STR(u->host, "smtp.office365.com");
    CHECK_EQ_INT(u->port, 587);
    CHECK_EQ_STR(cfg_utls_words[u->tls], "starttls");
    CHECK_EQ_STR(cfg_verify_words[u->verify], "none");
    CHECK_EQ_STR(u->ca_file, "/etc/ssl/certs/ca-certificates.crt");
    CHECK_EQ_STR(u->helo, "clinic.example");
    CHECK_EQ_STR(cfg_uauth_words[u->auth], "xoauth2");
    CHECK_EQ_STR(u->username, "noreply@clinic.example");
    CHECK_EQ_STR(u->oauth2, "contoso");
    CHECK_EQ_STR(u->rate, "30/m");
    CHECK_EQ_STR(u->tls_min_version, "TLSv1.3");
    CHECK(u->password == NULL);
  }
  u = config_upstream(c, "smarthost");
  CHECK(u != NULL);
  if(u) {
    CHECK_EQ_STR(cfg_utype_words[u->type], "smtp");   /* words match whatever their case */
    CHECK_EQ_INT(u->port, 465);         /* tls = implicit */
    CHECK_EQ_STR(cfg_verify_words[u->verify], "peer");
    CHECK_EQ_STR(u->password_file, "/etc/postern/smarthost.secret");
  }
  u = config_upstream(c, "sendgrid");
  CHECK(u && !strcmp(u->api_url, "http://127.0.0.1:8999") && u->port == 0);
  u = config_upstream(c, "ses");
  CHECK(u && !strcmp(u->region, "eu-west-1"));
  CHECK(config_upstream(c, "nope") == NULL);

  CHECK_EQ_INT(c->noauth2s, 1);
  o = &c->oauth2s[0];
  CHECK_EQ_STR(cfg_provider_words[o->provider], "microsoft");
  CHECK_EQ_STR(cfg_flow_words[o->flow], "client_credentials");
  CHECK_EQ_STR(o->tenant, "contoso.onmicrosoft.com");
  CHECK_EQ_STR(o->client_secret_file, "/etc/postern/contoso.secret");
  CHECK_EQ_STR(o->token_url, "https://login.example/token");
  CHECK_EQ_STR(o->scope, "https://outlook.office365.com/.default");
  CHECK_EQ_STR(o->certificate_file, "/etc/postern/c.pem");
  CHECK_EQ_STR(o->private_key_file, "/etc/postern/k.pem");
  CHECK_EQ_STR(o->token_file, "/var/lib/postern/contoso.token");

  CHECK_EQ_INT(c->nroutes, 3);           /* in file order */
  CHECK_EQ_STR(c->routes[0].name, "recruiting");
  CHECK_EQ_STR(c->routes[0].sender, "*@recruiting.clinic.example");
  CHECK(c->routes[0].recipient == NULL);
  CHECK_EQ_STR(c->routes[1].recipient, "*@partner.example");
  CHECK_EQ_STR(c->routes[2].name, "default");
  CHECK_EQ_STR(c->routes[2].upstream, "office365");

  CHECK_EQ_INT(c->inbound.present, 1);
  CHECK_EQ_STR(c->inbound.domains, "reply.clinic.example");
  CHECK_EQ_STR(cfg_spf_words[c->inbound.spf], "reject");
  CHECK_EQ_STR(c->inbound.http_address, "127.0.0.1:8025");
  CHECK_EQ_STR(c->inbound.http_user, "sendgrid");
  CHECK_EQ_STR(c->inbound.http_password_file, "/etc/postern/inbound.secret");
  CHECK_EQ_STR(c->inbound.event_public_key_file, "/etc/postern/sendgrid-event.pem");
  CHECK_EQ_INT(c->inbound.event_max_age, 0);
  CHECK_EQ_STR(c->inbound.twilio_auth_token_file, "/etc/postern/twilio.token");
  CHECK_EQ_STR(c->inbound.public_url, "https://relay.clinic.example");
  CHECK_EQ_STR(c->inbound.reply_address, "reply+{token}@reply.clinic.example");
  CHECK_EQ_STR(c->inbound.forward_url, "https://app.clinic.example/hooks");
  CHECK_EQ_STR(c->inbound.forward_secret_file, "/etc/postern/forward.secret");
  CHECK_EQ_INT(c->inbound.max_http_size, 1 << 20);

  CHECK_EQ_INT(c->nusers, 1);
  CHECK_EQ_STR(c->users[0].name, "frontdesk@clinic.example");
  CHECK_EQ_STR(c->users[0].senders, "frontdesk@clinic.example *@appointments.clinic.example");
out:
  loaded_free(&l);
}

static void t_defaults(void)
{
  struct loaded l;
  const struct config *c;
  char host[256];
  env_clear();
  expect_ok("[listener a]\naddress = 127.0.0.1:2525\n"
            "[upstream up]\ntype = smtp\nhost = mail.example.net\n", &l);
  c = l.cfg;
  if(!c)
    goto out;
  if(!gethostname(host, sizeof(host)))
    CHECK_EQ_STR(c->hostname, host);
  CHECK_EQ_STR(c->data_dir, "/var/lib/postern");
  CHECK_EQ_STR(c->user, "postern");
  CHECK_EQ_INT(c->max_message_size, 35 << 20);
  CHECK_EQ_INT(c->max_recipients, 100);
  CHECK_EQ_INT(c->max_clients, 200);
  CHECK_EQ_INT(c->queue_lifetime, 5 * 86400);
  CHECK_EQ_INT(c->retry_min, 60);
  CHECK_EQ_INT(c->retry_max, 3600);
  CHECK_EQ_INT(c->idle_timeout, 300);
  CHECK_EQ_INT(c->session_timeout, 3600);
  CHECK_EQ_INT(c->shutdown_grace, 30);
  CHECK_EQ_INT(c->delivery_workers, 4);
  CHECK_EQ_INT(c->max_errors, 10);
  CHECK_EQ_INT(c->debug, 0);
  CHECK_EQ_INT(c->listeners[0].role, CFG_ROLE_SUBMISSION);
  CHECK_EQ_INT(c->listeners[0].tls, CFG_TLS_NONE);
  CHECK_EQ_INT(c->listeners[0].auth, CFG_AUTH_OPTIONAL);
  CHECK_EQ_STR(c->listeners[0].auth_mechanisms, "PLAIN LOGIN CRAM-MD5");
  CHECK_EQ_INT(c->listeners[0].ntrusted, 2);
  CHECK_EQ_INT(c->upstreams[0].port, 587);
  CHECK_EQ_STR(cfg_utls_words[c->upstreams[0].tls], "starttls");
  CHECK_EQ_STR(cfg_verify_words[c->upstreams[0].verify], "peer");
  CHECK_EQ_STR(cfg_uauth_words[c->upstreams[0].auth], "auto");
  CHECK_EQ_INT(c->inbound.present, 0);
  CHECK_EQ_STR(cfg_spf_words[c->inbound.spf], "tag");
  CHECK_EQ_INT(c->inbound.event_max_age, 600);
  CHECK_EQ_INT(c->inbound.max_http_size, 0);   /* derived from max_message_size */
  CHECK_EQ_STR(c->inbound.http_auth, "basic");
  CHECK_EQ_STR(c->inbound.events_auth, "signature");
  /* the one upstream and no [route]: it carries all mail, through an implicit catch-all */
  CHECK_EQ_INT(c->nroutes, 1);
  CHECK_EQ_INT(c->implicit_route, 1);
  CHECK_EQ_STR(c->routes[0].upstream, "up");
  CHECK(!c->routes[0].sender && !c->routes[0].recipient);
  loaded_free(&l);

  /* an empty [inbound] is still there; an empty value unsets a string */
  expect_ok("[inbound]\n[postern]\nuser =\n", &l);
  if(l.cfg) {
    CHECK_EQ_INT(l.cfg->inbound.present, 1);
    CHECK(l.cfg->user == NULL);
  }
out:
  loaded_free(&l);
}

static void t_three_mistakes(void)
{
  static const int lines[] = { 3, 6, 10 };
  static const char *const want[] = {
    "max_clients: 0 is out of range (1 to 100000)",
    "role: 'relay' is not one of: submission mx",
    "unknown key 'colour' in [upstream u]",
  };
  struct loaded l;
  env_clear();
  load_text("[postern]\n"                  /* 1 */
            "data_dir = /tmp/x\n"
            "max_clients = 0\n"            /* 3 */
            "[listener a]\n"
            "address = 127.0.0.1:2525\n"
            "role = relay\n"               /* 6 */
            "\n"
            "[upstream u]\n"
            "type = capture\n"
            "colour = blue\n", &l);        /* 10 */
  check_errors(&l, 3, lines, want);
  CHECK(l.cfg == NULL);
  loaded_free(&l);
}

static void t_unknown(void)
{
  env_clear();
  expect_one("[postern]\ndata_dir = /x\nfrobnicate = 3\n", 3,
             "unknown key 'frobnicate' in [postern]");
  expect_one("[listener a]\naddress = 127.0.0.1:1\nhostname = x\n", 3,
             "unknown key 'hostname' in [listener a]");
  /* the keys under an unknown section are not reported one by one */
  expect_one("[postern]\n\n[relay x]\nfoo = 1\nbar = 2\n", 3, "unknown section [relay x]");
  expect_one("data_dir = /x\n[postern]\n", 1, "'data_dir' is outside any section");
  expect_one("[postern x]\n", 1, "section [postern] takes no name");
  expect_one("[upstream]\n", 1, "section [upstream] needs a name");
  expect_one("[route a b]\nupstream = capture\n", 1, "section name 'a b'");
}

static void t_syntax(void)
{
  static const int lines[] = { 3, 4, 5, 6, 7, 9, 10, 11 };
  static const char *const want[] = {
    "expected KEY = VALUE",
    "duplicate key 'data_dir' (first at line 2)",
    "missing key before '='",
    "line too long (more than",
    "control character in line",
    "section header without ']'",
    "unexpected text after ']'",
    "duplicate section [postern] (first at line 1)",
  };
  struct loaded l;
  char text[2048], longline[400];
  memset(longline, 'x', sizeof(longline) - 1);
  longline[sizeof(longline) - 1] = '\0';
  snprintf(text, sizeof(text),
           "[postern]\n"                  /* 1 */
           "data_dir = /x\r\n"            /* 2: CRLF is fine */
           "just words\n"                 /* 3 */
           "data_dir = /y\n"              /* 4 */
           "= value\n"                    /* 5 */
           "hostname = %s\n"              /* 6 */
           "user = a\rb\n"                /* 7 */
           "   ; comment\n"               /* 8 */
           "[listener a\n"                /* 9 */
           "[listener b] junk\n"          /* 10 */
           "[postern]\n",                 /* 11 */
           longline);
  env_clear();
  load_text(text, &l);
  check_errors(&l, 8, lines, want);
  loaded_free(&l);

  /* a byte order mark on line 1 is fine */
  expect_ok("\xEF\xBB\xBF[postern]\ndata_dir = /x\n", &l);
  loaded_free(&l);
}

static void t_bad_values(void)
{
  static const struct { const char *text; int line; const char *want; } cases[] = {
    { "[postern]\nmax_message_size = 2G\n", 2, "max_message_size: 2G is out of range (1 to 900M)" },
    { "[postern]\nmax_message_size = 35MB\n", 2, "max_message_size: '35MB' is not a size" },
    { "[postern]\nqueue_lifetime = -1d\n", 2, "queue_lifetime: '-1d' is not a duration" },
    { "[postern]\nqueue_lifetime = 400d\n", 2,
      "queue_lifetime: 400d is out of range (1s to 365d)" },
    { "[postern]\nmax_recipients = many\n", 2, "max_recipients: 'many' is not a number" },
    { "[postern]\nmax_recipients = 99999999999999999999\n", 2, "is not a number" },
    { "[postern]\ndebug = maybe\n", 2, "debug: 'maybe' is not yes or no" },
    { "[postern]\nretry_min = 2h\nretry_max = 1h\n", 1,
      "retry_min (2h) is longer than retry_max (1h)" },
    { "[postern]\nmax_clients =\n", 2, "max_clients needs a value" },
    { "[listener a]\naddress = 127.0.0.1\n", 2, "address: '127.0.0.1' is not HOST:PORT" },
    { "[listener a]\naddress = ::1:25\n", 2, "address: '::1:25' is not HOST:PORT" },
    { "[listener a]\naddress = 127.0.0.1:0\n", 2, "is not HOST:PORT" },
    { "[listener a]\naddress = [::1]:70000\n", 2, "is not HOST:PORT" },
    { "[listener a]\naddress = [nope]:25\n", 2, "is not HOST:PORT" },
    { "[listener a]\naddress = 127.0.0.1:25\ntls = sometimes\n", 3,
      "tls: 'sometimes' is not one of: none starttls implicit" },
    { "[listener a]\naddress = 127.0.0.1:25\ntrusted_networks = 10.0.0.0/8 10.0.0.0/33\n", 3,
      "trusted_networks: bad network '10.0.0.0/33'" },
    { "[listener a]\naddress = 127.0.0.1:25\nauth_mechanisms = PLAIN GSSAPI\n", 3,
      "auth_mechanisms: 'GSSAPI' is not one of: PLAIN LOGIN CRAM-MD5 SCRAM-SHA-1 SCRAM-SHA-256" },
    { "[listener a]\naddress = 127.0.0.1:25\nauth_mechanisms = ,\n", 3,
      "auth_mechanisms needs a value" },
    { "[listener a]\nrole = mx\n", 1, "listener a: address is missing" },
    { "[listener sub]\naddress = 127.0.0.1:25\ntls = starttls\ntls_cert = /c.pem\n", 1,
      "listener sub: tls = starttls needs tls_cert and tls_key" },
    { "[listener sub]\naddress = 127.0.0.1:25\ntls = implicit\n", 1,
      "listener sub: tls = implicit needs tls_cert and tls_key" },
    { "[upstream u]\nhost = x\n", 1, "upstream u: type is missing" },
    { "[upstream u]\ntype = smtp\n", 1, "upstream u: type = smtp needs host" },
    { "[upstream u]\ntype = pigeon\n", 2,
      "type: 'pigeon' is not one of: smtp sendgrid ses graph capture" },
    { "[upstream u]\ntype = smtp\nhost = h\nport = 0\n", 4,
      "port: 0 is out of range (1 to 65535)" },
    { "[upstream u]\ntype = smtp\nhost = h\nrate = 30 per minute\n", 4, "rate: '30 per minute'" },
    { "[upstream u]\ntype = smtp\nhost = h\nrate = 30/w\n", 4, "is not a rate" },
    { "[upstream u]\ntype = sendgrid\napi_url = ftp://x\n", 3,
      "is not an http:// or https:// URL" },
    { "[upstream u]\ntype = smtp\nhost = h\nauth = xoauth2\n", 1,
      "upstream u: auth = xoauth2 needs oauth2 = NAME" },
    { "[upstream u]\ntype = smtp\nhost = h\nauth = xoauth2\noauth2 = nope\n", 1,
      "upstream u: oauth2 'nope' names no [oauth2] section" },
    { "[upstream u]\ntype = graph\nusername = a@b.example\n", 1,
      "upstream u: type = graph needs oauth2" },
    { "[upstream u]\ntype = smtp\nhost = h\n\n[route r]\nupstream = office365\n", 5,
      "route r: upstream 'office365' names no [upstream] section" },
    { "[route r]\nsender = *@x\n", 1, "route r: upstream is missing" },
    { "[oauth2 o]\nflow = implicit\n", 2,
      "flow: 'implicit' is not one of: client_credentials refresh_token device_code" },
    { "[inbound]\nspf = strict\n", 2, "spf: 'strict' is not one of: off tag reject" },
    { "[inbound]\nhttp_address = 8025\n", 2, "http_address: '8025' is not HOST:PORT" },
  };
  size_t i;
  env_clear();
  for(i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
    expect_one(cases[i].text, cases[i].line, cases[i].want);
}

static void t_routes(void)
{
  struct loaded l;
  const struct cfg_upstream *u;
  env_clear();
  /* capture needs no section; file order is kept */
  expect_ok("[route b]\nrecipient = *@b.example\nupstream = capture\n"
            "[route a]\nupstream = capture\n", &l);
  if(l.cfg) {
    CHECK_EQ_INT(l.cfg->nroutes, 2);
    CHECK_EQ_STR(l.cfg->routes[0].name, "b");
    CHECK_EQ_STR(l.cfg->routes[1].name, "a");
    u = config_upstream(l.cfg, "capture");
    CHECK(u && u->type == CFG_UP_CAPTURE && !strcmp(u->name, "capture"));
  }
  loaded_free(&l);
  u = config_upstream(NULL, "capture");
  CHECK(u && u->type == CFG_UP_CAPTURE);
  CHECK(config_upstream(NULL, "other") == NULL);
}

/* ---- the environment ------------------------------------------------------------------- */

static void t_env(void)
{
  struct loaded l;
  const struct cfg_upstream *u;

  env_clear();
  setenv("SMTP_HOST", "smtp.example.net", 1);
  setenv("SMTP_PORT", "2587", 1);
  setenv("SMTP_START_TLS", "false", 1);
  setenv("SMTP_OPENSSL_VERIFY_MODE", "none", 1);
  setenv("SMTP_AUTH", "cram_md5", 1);
  setenv("SMTP_USERNAME", "app", 1);
  setenv("SMTP_PASSWORD", "s3cret", 1);
  setenv("SMTP_DOMAIN", "clinic.example", 1);
  /* the catch-all route is pointed at "env"; the other routes stay */
  expect_ok("[upstream office365]\ntype = smtp\nhost = smtp.office365.com\n"
            "[route special]\nsender = *@x.example\nupstream = office365\n"
            "[route default]\nupstream = office365\n", &l);
  if(l.cfg) {
    u = config_upstream(l.cfg, "env");
    CHECK(u != NULL);
    if(u) {
      CHECK_EQ_STR(cfg_utype_words[u->type], "smtp");
      CHECK_EQ_STR(u->host, "smtp.example.net");
      CHECK_EQ_INT(u->port, 2587);
      CHECK_EQ_STR(cfg_utls_words[u->tls], "none");
      CHECK_EQ_STR(cfg_verify_words[u->verify], "none");
      CHECK_EQ_STR(cfg_uauth_words[u->auth], "cram-md5");
      CHECK_EQ_STR(u->username, "app");
      CHECK_EQ_STR(u->password, "s3cret");
      CHECK_EQ_STR(u->helo, "clinic.example");
    }
    CHECK_EQ_INT(l.cfg->nroutes, 2);
    CHECK_EQ_STR(l.cfg->routes[0].upstream, "office365");
    CHECK_EQ_STR(l.cfg->routes[1].upstream, "env");
    CHECK_EQ_STR(config_upstream(l.cfg, "office365")->host, "smtp.office365.com");
  }
  loaded_free(&l);

  /* no catch-all: one is appended; defaults for what is not set */
  env_clear();
  setenv("SMTP_HOST", "smtp.example.net", 1);
  setenv("SMTP_START_TLS", "true", 1);
  expect_ok("[route special]\nsender = *@x.example\nupstream = capture\n", &l);
  if(l.cfg) {
    u = config_upstream(l.cfg, "env");
    CHECK(u && u->port == 587 && u->tls == CFG_UTLS_STARTTLS && u->verify == CFG_VERIFY_PEER &&
          u->auth == CFG_UAUTH_AUTO && !u->password && !u->username);
    CHECK_EQ_INT(l.cfg->nroutes, 2);
    CHECK_EQ_STR(l.cfg->routes[1].name, "default");
    CHECK_EQ_STR(l.cfg->routes[1].upstream, "env");
    CHECK(!l.cfg->routes[1].sender && !l.cfg->routes[1].recipient);
  }
  loaded_free(&l);

  /* a route may name "env" when the environment provides it; an [upstream env] is overridden */
  expect_ok("[upstream env]\ntype = smtp\nhost = old.example\nport = 25\nusername = u\n"
            "[route r]\nrecipient = *@y\nupstream = env\n", &l);
  if(l.cfg) {
    u = config_upstream(l.cfg, "env");
    CHECK(u && !strcmp(u->host, "smtp.example.net") && u->port == 25 &&
          !strcmp(u->username, "u"));
    CHECK_EQ_INT(l.cfg->nupstreams, 1);
  }
  loaded_free(&l);

  /* bad values are reported as ENV:NAME, and change nothing */
  setenv("SMTP_PORT", "smtp", 1);
  setenv("SMTP_AUTH", "kerberos", 1);
  load_text("[postern]\n", &l);
  CHECK_EQ_INT(l.nerr, 2);
  CHECK(l.cfg == NULL);
  CHECK(l.errs && !strncmp(l.errs, "ENV:SMTP_PORT: 'smtp' is not a port", 35));
  CHECK(l.errs && strstr(l.errs, "\nENV:SMTP_AUTH: 'kerberos' is not one of: plain login "
                         "cram_md5 none\n"));
  loaded_free(&l);

  /* without SMTP_HOST the others do nothing */
  env_clear();
  setenv("SMTP_PORT", "smtp", 1);
  expect_ok("[postern]\n", &l);
  if(l.cfg)
    CHECK(config_upstream(l.cfg, "env") == NULL && l.cfg->nroutes == 0);
  loaded_free(&l);
  env_clear();
}

/* ---- defaults without a file, the path, the example ------------------------------------ */

static void t_embedded(void)
{
  struct config *c = NULL;
  char want[32];
  int n;
  env_clear();
  n = config_load(NULL, stderr, &c);
  CHECK_EQ_INT(n, 0);
  if(!c)
    return;
  CHECK_EQ_STR(c->path, "(embedded default)");
  CHECK_EQ_INT(c->nlisteners, 1);
  CHECK_EQ_STR(c->listeners[0].name, "submission");
  CHECK_EQ_INT(c->listeners[0].naddresses, 1);
  snprintf(want, sizeof(want), "127.0.0.1:%d", geteuid() == 0 ? 587 : 2525);
  CHECK_EQ_STR(c->listeners[0].addresses[0], want);
  CHECK_EQ_INT(c->listeners[0].role, CFG_ROLE_SUBMISSION);
  CHECK_EQ_INT(c->listeners[0].ntrusted, 2);
  CHECK_EQ_INT(c->nupstreams, 0);
  CHECK_EQ_INT(c->nroutes, 0);
  CHECK_EQ_STR(c->data_dir, "./postern-data");
  if(getpwnam("postern"))
    CHECK_EQ_STR(c->user, "postern");
  else
    CHECK(c->user == NULL);
  CHECK(c->hostname && *c->hostname);
  CHECK_EQ_INT(c->max_message_size, 35 << 20);
  config_free(c);

  /* with the environment: a relay with no file at all */
  setenv("SMTP_HOST", "smtp.example.net", 1);
  c = NULL;
  CHECK_EQ_INT(config_load(NULL, stderr, &c), 0);
  if(c) {
    CHECK_EQ_INT(c->nroutes, 1);
    CHECK_EQ_STR(c->routes[0].upstream, "env");
  }
  config_free(c);
  env_clear();

  c = NULL;
  n = config_load("/nonexistent/postern.conf", NULL, &c);
  CHECK_EQ_INT(n, 1);
  CHECK(c == NULL);
}

static void t_choose_path(void)
{
  env_clear();
  CHECK_EQ_STR(config_choose_path("/x.conf"), "/x.conf");
  setenv("POSTERN_CONFIG", "/env.conf", 1);
  CHECK_EQ_STR(config_choose_path("/x.conf"), "/x.conf");
  CHECK_EQ_STR(config_choose_path(NULL), "/env.conf");
  unsetenv("POSTERN_CONFIG");
  if(access(CONFIG_DEFAULT_PATH, F_OK))
    CHECK(config_choose_path(NULL) == NULL);
  else
    CHECK_EQ_STR(config_choose_path(NULL), CONFIG_DEFAULT_PATH);
}

/* conf/postern.conf, found from this file's name or $POSTERN_SRCDIR */
static char *example_read(void)
{
  char path[512];
  const char *src = getenv("POSTERN_SRCDIR");
  const char *me = __FILE__, *tail = strstr(me, "tests/unit/test_config.c");
  FILE *f = NULL;
  char *text = NULL;
  size_t len = 0;
  if(src) {
    snprintf(path, sizeof(path), "%s/conf/postern.conf", src);
    f = fopen(path, "r");
  }
  if(!f && tail) {
    snprintf(path, sizeof(path), "%.*sconf/postern.conf", (int)(tail - me), me);
    f = fopen(path, "r");
  }
  if(!f)
    f = fopen("conf/postern.conf", "r");
  if(!f)
    return NULL;
  {
    FILE *m = open_memstream(&text, &len);
    int c;
    while((c = getc(f)) != EOF)
      putc(c, m);
    fclose(m);
  }
  fclose(f);
  return text;
}

static void t_example(void)
{
  struct loaded l;
  char *text = example_read(), *p, *q;
  if(!text) {
    fprintf(stderr, "# conf/postern.conf not found (set POSTERN_SRCDIR): not checked\n");
    return;
  }
  env_clear();
  expect_ok(text, &l);
  if(l.cfg) {
    CHECK_EQ_INT(l.cfg->nlisteners, 1);
    CHECK_EQ_INT(l.cfg->nroutes, 1);
    CHECK_EQ_STR(l.cfg->routes[0].upstream, "capture");
  }
  loaded_free(&l);

  /* every commented-out setting (";key = ..." and ";[section]") is valid too */
  for(p = q = text; *p; p++) {
    if(*p == ';' && (p == text || p[-1] == '\n') &&
       ((p[1] >= 'a' && p[1] <= 'z') || p[1] == '['))
      continue;
    *q++ = *p;
  }
  *q = '\0';
  expect_ok(text, &l);
  if(l.cfg) {
    CHECK_EQ_INT(l.cfg->nlisteners, 2);
    CHECK_EQ_INT(l.cfg->nupstreams, 5);
    CHECK_EQ_INT(l.cfg->noauth2s, 3);
    CHECK_EQ_INT(l.cfg->nroutes, 3);
    CHECK_EQ_INT(l.cfg->nusers, 1);
    CHECK_EQ_INT(l.cfg->inbound.present, 1);
    CHECK(l.cfg->hostname && !strcmp(l.cfg->hostname, "relay.clinic.example"));
  }
  loaded_free(&l);
  free(text);
}

static const struct unit_case cases[] = {
  { "sizes", t_sizes },
  { "durations", t_durations },
    { "url_cleartext", t_url_cleartext },
  { "cidr_parse", t_cidr_parse },
  { "cidr_match", t_cidr_match },
  { "full", t_full },
  { "defaults", t_defaults },
  { "three_mistakes", t_three_mistakes },
  { "unknown", t_unknown },
  { "syntax", t_syntax },
  { "bad_values", t_bad_values },
  { "routes", t_routes },
  { "env", t_env },
  { "embedded", t_embedded },
  { "choose_path", t_choose_path },
  { "example", t_example },
};
UNIT_MAIN(cases)
