/* posternctl check [ROUTE]: the doctor. Walks each upstream (or the one a route names) step by
 * step — DNS, TCP, TLS and the certificate, EHLO, AUTH, MAIL/RCPT, RSET — with smtp/'s client
 * engine, prints the transcript with secrets masked, and says in one line what to change for
 * the failures people meet most. API upstreams get their transport's key check (relay/). */
#include "tools/ctl.h"
#include "relay/relay.h"
#include "smtp/smtp.h"
#include "auth/auth.h"
#include "lib/buf.h"
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sysexits.h>
#include <time.h>

#define CHECK_FINDINGS 1         /* something does not work: the report says what */
#define CHECK_UNCHECKED 2        /* the check itself could not run (configuration, route) */
#define CHECK_STEPS 20
#define CHECK_TRANSCRIPT_LINES 400
#define CHECK_CONNECT_MS 15000
#define CHECK_COMMAND_MS 30000
#define CHECK_CERT_WARN_DAYS 14

/* What one upstream's check found. Steps reuse relay/'s record so API checks drop in. */
struct report {
  const struct cfg_upstream *up;
  struct relay_check_step steps[CHECK_STEPS];
  size_t nsteps;
  int failed;
  json_t *transcript;             /* strings: "> EHLO ...", "< 250 ...", "* connected ..." */
  const char *secret;             /* while AUTH runs: never let it reach the transcript */
  size_t secretlen;
};

struct check_opts {
  const char *rcpt;               /* --rcpt */
  const char *from;               /* --from */
  const char *send_to;            /* --send */
};

static struct relay_check_step *step_add(struct report *rep, const char *name, int ok,
                                         const char *hint, const char *fmt, ...)
  __attribute__((format(printf, 5, 6)));
static struct relay_check_step *step_add(struct report *rep, const char *name, int ok,
                                         const char *hint, const char *fmt, ...)
{
  struct relay_check_step *st;
  va_list ap;
  va_start(ap, fmt);
  /* a failure no rule explains says so, rather than guess */
  if(!ok && !hint)
    hint = "no rule of the doctor fits this; the detail and the transcript show what happened";
  st = relay_check_vadd(rep->steps, CHECK_STEPS, &rep->nsteps, name, ok, hint, fmt, ap);
  va_end(ap);
  if(!ok)
    rep->failed = 1;
  return st;
}

/* smtp/'s transcript hook. The engine already masks AUTH payloads; a line that holds the
 * secret anyway (a server echoing it back) is masked whole. */
static void transcript_line(void *arg, char dir, const char *line, size_t len)
{
  struct report *rep = arg;
  struct buf b;
  if(json_array_size(rep->transcript) >= CHECK_TRANSCRIPT_LINES)
    return;
  buf_init(&b, LIM_SMTP_REPLY_LINE * 4 + 16);
  if(rep->secret && rep->secretlen && memmem(line, len, rep->secret, rep->secretlen)) {
    line = "***";
    len = 3;
  }
  if(!buf_addf(&b, "%c ", dir) && !buf_addrepr(&b, line, len, LIM_SMTP_REPLY_LINE) && b.ptr)
    json_array_append_new(rep->transcript, json_string(b.ptr));
  buf_free(&b);
}

/* ---- what to change: the refusals people meet most ------------------------------------ */

static int reply_is(const struct smtp_reply *r, int code, const char *enh)
{
  return r->code == code && (!enh || !strcmp(r->enh, enh));
}

static const char *hint_for_reply(const struct smtp_reply *r, const struct cfg_upstream *up)
{
  int tls_off = up->tls == CFG_UTLS_NONE || up->tls == CFG_UTLS_OPPORTUNISTIC;
  if(!strcmp(r->enh, "5.7.139"))
    return "Microsoft 365 has SMTP AUTH switched off for this mailbox or the tenant (or Security "
           "Defaults block it): turn on Authenticated SMTP for the mailbox (admin center > Users "
           "> Mail > Manage email apps) or move to auth = xoauth2 with an [oauth2] section, or "
           "type = graph";
  if(!strcmp(r->enh, "5.7.30"))
    return "the provider no longer accepts basic authentication (password): use auth = xoauth2 "
           "with oauth2 = NAME and an [oauth2 NAME] section";
  if(reply_is(r, 534, NULL) || !strcmp(r->enh, "5.7.9"))
    return "Google wants an application-specific password for this account: create one (Google "
           "Account > Security > App passwords) and put it in password_file, or use auth = "
           "xoauth2";
  if(reply_is(r, 535, "5.7.3"))
    return "wrong user name or password (Microsoft 365): check username (the full mailbox "
           "address) and the password in password_file; an account with MFA needs an app "
           "password or auth = xoauth2";
  if(r->code == 535)
    return "the server refused the credentials: check username and the password in "
           "password_file (or SMTP_PASSWORD), and auth = the mechanism the provider wants";
  if(r->code == 530 && tls_off)
    return "the server wants TLS first: set tls = starttls (or tls = implicit on port 465)";
  if(r->code == 530 && strcasestr(r->text, "STARTTLS"))
    return NULL;                  /* it asks for TLS that is already on: no rule fits */
  if(r->code == 530 || !strcmp(r->enh, "5.7.57"))
    return "the server wants a login before mail: set auth, username and password_file in this "
           "[upstream]";
  if(!strcmp(r->enh, "5.7.60"))
    return "the login may not send as this sender: use its own address (--from), or give it "
           "Send As rights on the sender's mailbox";
  if(reply_is(r, 554, "5.7.1") || reply_is(r, 550, "5.7.1"))
    return "relaying denied: this server relays only after a login (set auth, username, "
           "password_file) or only for its own domains";
  if(r->code == 421 || !strncmp(r->enh, "4.7.", 4))
    return "the server is busy or throttling this client: try again later; if it lasts, lower "
           "rate in this [upstream]";
  return NULL;
}

static const char *hint_for_tls(const struct cfg_upstream *up, const char *text)
{
  int implicit = up->tls == CFG_UTLS_IMPLICIT;
  if(strstr(text, "hostname mismatch") || strstr(text, "IP address mismatch"))
    return "the certificate does not name the host we connect to: set host to one of the names "
           "it lists (above), or fix the server's certificate";
  if(strstr(text, "self-signed") || strstr(text, "self signed") ||
     strstr(text, "local issuer") || strstr(text, "unable to get issuer"))
    return "the certificate is not signed by a CA this machine trusts: set ca_file to the CA "
           "certificate of the server (verify = none only as a last resort)";
  if(strstr(text, "expired"))
    return "the server's certificate has expired: its operator must renew it";
  if(strstr(text, "not yet valid"))
    return "the certificate is not valid yet: check this machine's clock";
  if(implicit && (strstr(text, "wrong version number") || strstr(text, "packet length") ||
                  strstr(text, "record layer failure")))
    return "the port does not start with TLS: tls = implicit is for port 465; for 587 or 25 set "
           "tls = starttls";
  if(implicit && strstr(text, "timed out"))
    return "the TLS handshake got no answer: tls = implicit on a port that waits for EHLO? "
           "(587 and 25 want tls = starttls)";
  if(strstr(text, "protocol version") || strstr(text, "no protocols available"))
    return "no TLS version in common: check tls_min_version of this [upstream] (the server may "
           "speak only older TLS)";
  return NULL;
}

/* ---- the SMTP walk ------------------------------------------------------------------------ */

static const char *tls_word(const struct cfg_upstream *up)
{
  return cfg_utls_words[up->tls];
}

static void client_cfg(const struct config *cfg, const struct cfg_upstream *up,
                       struct smtp_client_cfg *cc)
{
  relay_smtp_client_cfg(cfg, up, cc);
  cc->trace = 0;                      /* the transcript is printed, not logged */
  cc->connect_timeout_ms = CHECK_CONNECT_MS;
  cc->command_timeout_ms = CHECK_COMMAND_MS;
}

static void step_dns(struct report *rep, const struct cfg_upstream *up, int *ok)
{
  struct addrinfo hints, *res = NULL, *ai;
  char port[16], list[400] = "";
  size_t have = 0;
  int gai;
  memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  snprintf(port, sizeof(port), "%ld", up->port);
  gai = getaddrinfo(up->host, port, &hints, &res);
  if(gai) {
    step_add(rep, "dns", 0, "check host in this [upstream] (a typo?) and this machine's DNS "
             "(/etc/resolv.conf)", "%s does not resolve: %s", up->host, gai_strerror(gai));
    *ok = 0;
    return;
  }
  for(ai = res; ai; ai = ai->ai_next) {
    char addr[64] = "";
    const void *p = ai->ai_family == AF_INET
                    ? (const void *)&((const struct sockaddr_in *)(const void *)ai->ai_addr)->sin_addr
                    : (const void *)&((const struct sockaddr_in6 *)(const void *)ai->ai_addr)->sin6_addr;
    if((ai->ai_family != AF_INET && ai->ai_family != AF_INET6) ||
       !inet_ntop(ai->ai_family, p, addr, sizeof(addr)) || strstr(list, addr))
      continue;
    have = strlen(list);
    snprintf(list + have, sizeof(list) - have, "%s%s", have ? ", " : "", addr);
  }
  freeaddrinfo(res);
  step_add(rep, "dns", 1, NULL, "%s resolves to %s", up->host, list[0] ? list : "nothing usable");
  *ok = 1;
}

/* The certificate of a session, one line; 0 when there is one. */
static int cert_describe(struct smtp_client *c, char *out, size_t outsz, long long *not_after)
{
  char subject[256] = "", issuer[256] = "", names[512] = "", when[40] = "?";
  *not_after = 0;
  if(smtp_client_peer_cert(c, subject, sizeof(subject), issuer, sizeof(issuer), names,
                           sizeof(names), not_after))
    return -1;
  if(*not_after)
    ctl_time_human(*not_after * 1000, when, sizeof(when));
  snprintf(out, outsz, "subject %s; names %s; issuer %s; expires %s UTC", subject,
           names[0] ? names : "none", issuer, when);
  return 0;
}

/* After a failed verification: a second session that does not verify, only to show what the
 * server presents (nothing is sent but EHLO and STARTTLS). */
static void cert_peek(const struct config *cfg, const struct cfg_upstream *up, char *out,
                      size_t outsz)
{
  struct smtp_client_cfg cc;
  struct smtp_client *c = NULL;
  struct smtp_reply r;
  long long na;
  out[0] = '\0';
  client_cfg(cfg, up, &cc);
  cc.verify_peer = 0;
  if(smtp_client_new(&cc, &c))
    return;
  if(!smtp_client_connect(c, &r) && (cc.tls == SMTP_CLIENT_TLS_IMPLICIT ||
                                     (!smtp_client_ehlo(c, &r) && !smtp_client_starttls(c, &r))))
    cert_describe(c, out, outsz, &na);
  smtp_client_quit(c);
  smtp_client_free(c);
}

static void step_certificate(struct report *rep, const struct config *cfg,
                             const struct cfg_upstream *up, struct smtp_client *c)
{
  char desc[1200];
  long long na = 0, now = (long long)time(NULL);
  const char *how = up->ca_file ? "against ca_file" : "against the system's CA store";
  if(cert_describe(c, desc, sizeof(desc), &na)) {
    step_add(rep, "certificate", 0, NULL, "the server sent no certificate");
    return;
  }
  (void)cfg;
  if(up->verify == CFG_VERIFY_NONE)
    step_add(rep, "certificate", 1, "verify = none: anyone between here and the server can read "
             "the password; set verify = peer (and ca_file for a private CA)",
             "%s; NOT verified (verify = none)", desc);
  else if(na && na - now < CHECK_CERT_WARN_DAYS * 86400LL)
    step_add(rep, "certificate", 1, "the certificate expires soon: the server's operator must "
             "renew it", "%s; verified %s%s%s, name %s matches", desc, how,
             up->ca_file ? " " : "", up->ca_file ? up->ca_file : "", up->host);
  else
    step_add(rep, "certificate", 1, NULL, "%s; verified %s%s%s, name %s matches", desc, how,
             up->ca_file ? " " : "", up->ca_file ? up->ca_file : "", up->host);
}

/* A failed TLS step: which part, and what the server presented. */
static void tls_failed(struct report *rep, const struct config *cfg, const struct cfg_upstream *up,
                       const struct smtp_reply *r)
{
  char desc[1200];
  if(strstr(r->text, "certificate verify failed")) {
    step_add(rep, "tls", 1, NULL, "the handshake ran up to the certificate check");
    cert_peek(cfg, up, desc, sizeof(desc));
    step_add(rep, "certificate", 0, hint_for_tls(up, r->text), "%s%s%s", r->text,
             desc[0] ? "; the server presents: " : "", desc);
  }
  else
    step_add(rep, "tls", 0, hint_for_tls(up, r->text), "%s", r->text);
}

static void caps_describe(const struct smtp_client_caps *k, char *out, size_t outsz)
{
  static const struct { unsigned flag; const char *name; } names[] = {
    { SMTP_CAP_STARTTLS, "STARTTLS" }, { SMTP_CAP_PIPELINING, "PIPELINING" },
    { SMTP_CAP_8BITMIME, "8BITMIME" }, { SMTP_CAP_SMTPUTF8, "SMTPUTF8" },
    { SMTP_CAP_ENHANCED, "ENHANCEDSTATUSCODES" }, { SMTP_CAP_DSN, "DSN" },
  };
  size_t i, have;
  snprintf(out, outsz, "%s", (k->flags & SMTP_CAP_ESMTP) ? "ESMTP" : "HELO only (no extensions)");
  for(i = 0; i < sizeof(names) / sizeof(names[0]); i++)
    if(k->flags & names[i].flag) {
      have = strlen(out);
      snprintf(out + have, outsz - have, ", %s", names[i].name);
    }
  have = strlen(out);
  if(k->flags & SMTP_CAP_AUTH)
    snprintf(out + have, outsz - have, ", AUTH %s", k->auth);
  have = strlen(out);
  if(k->flags & SMTP_CAP_SIZE)
    snprintf(out + have, outsz - have, ", SIZE %lld", k->size);
}

/* The password or token, as the smtp transport finds it. 0 ok; else a failed step is added. */
static int secret_get(struct report *rep, const struct config *cfg, const struct cfg_upstream *up,
                      int bearer, char **secret, size_t *len)
{
  char err[512] = "";
  const char *path = up->password_file;
  long long until = 0;
  size_t i;
  *secret = NULL;
  *len = 0;
  if(bearer && up->oauth2 && oauth2_managed(cfg, up->oauth2)) {
    int rc = oauth2_token_get(cfg, up->oauth2, NULL, secret, &until, err, sizeof(err));
    if(rc != OAUTH2_OK) {
      step_add(rep, "token", 0, rc == OAUTH2_REAUTH
               ? "the identity provider refused us: check tenant, client_id and "
                 "client_secret_file of the [oauth2] section, or run posternctl oauth2 login NAME"
               : "the token endpoint did not answer: check the network, or token_url",
               "no OAuth2 access token for [oauth2 %s]: %s", up->oauth2, err);
      return -1;
    }
    *len = strlen(*secret);
    step_add(rep, "token", 1, NULL, "an access token for [oauth2 %s], good for %lld more "
             "minutes", up->oauth2, until ? (until - (long long)time(NULL) * 1000) / 60000 : 0);
    return 0;
  }
  for(i = 0; bearer && up->oauth2 && i < cfg->noauth2s; i++)
    if(!strcmp(cfg->oauth2s[i].name, up->oauth2) && cfg->oauth2s[i].token_file)
      path = cfg->oauth2s[i].token_file;
  if(path) {
    if(auth_secret_read(path, secret, len, err, sizeof(err))) {
      step_add(rep, "auth", 0, "password_file must be a file only Postern's user may read "
               "(chmod 600), holding the password on one line", "cannot use the secret "
               "file: %s", err);
      return -1;
    }
    return 0;
  }
  if(up->password && !bearer) {
    *len = strlen(up->password);
    *secret = str_dup_n(up->password, *len);
    if(*secret)
      return 0;
  }
  step_add(rep, "auth", 0, "set password_file in this [upstream] (or SMTP_PASSWORD in the "
           "environment)", "no %s to log in with", bearer ? "token" : "password");
  return -1;
}

/* The login ended without the server's word on it: our client refused to go on, or the
 * connection timed out or broke. The hint follows from what was configured and what happened;
 * a server that goes silent after the credentials fits no rule, and the doctor says so. */
static const char *hint_for_local_auth(const struct cfg_upstream *up, int result,
                                       const char *text)
{
  int tls_off = up->tls == CFG_UTLS_NONE || up->tls == CFG_UTLS_OPPORTUNISTIC;
  if(result == SMTP_CLIENT_FAILED)
    return strstr(text, "timed out")
           ? "no rule fits: the server went silent during AUTH (it had the credentials; TLS "
             "was already on). The transcript above shows the last exchange; the provider's "
             "sign-in log for this username may say why"
           : "no rule fits: the server closed the connection during AUTH. The transcript above "
             "shows the last exchange; the provider's sign-in log for this username may say why";
  if(tls_off && (strstr(text, "unencrypted") || strstr(text, "before TLS")))
    return "set tls = starttls (or implicit on port 465): servers offer AUTH, and Postern sends "
           "passwords, only over TLS";
  if(strstr(text, "no SASL mechanism in common") || strstr(text, "does not offer AUTH"))
    return "set auth to a mechanism the server offers (EHLO above), or auth = auto";
  if(strstr(text, "offers no AUTH"))
    return "the server offers no AUTH here: it may take mail without a login (auth = none), or "
           "this is not its submission port (587 with tls = starttls, 465 with tls = implicit)";
  return "no rule fits this refusal; the transcript above shows what was said";
}

static void step_auth(struct report *rep, const struct config *cfg, const struct cfg_upstream *up,
                      struct smtp_client *c, int *ok)
{
  const char *bearer = NULL, *mechs = NULL, *mech;
  struct smtp_reply r;
  char *secret = NULL, said[LIM_SMTP_REPLY_LINE + 32];
  size_t len = 0;
  int result, is_bearer;

  *ok = 1;
  if(!up->username || up->auth == CFG_UAUTH_NONE) {
    step_add(rep, "auth", 1, (smtp_client_caps(c)->flags & SMTP_CAP_AUTH) && !up->username
             ? "the server offers AUTH; if it refuses mail below, set auth, username and "
               "password_file" : NULL, "no login configured (auth = %s%s)",
             cfg_uauth_words[up->auth], up->username ? "" : ", no username");
    return;
  }
  mech = relay_auth_mech(up->auth, &is_bearer);
  if(is_bearer)
    bearer = mech;
  else
    mechs = mech;
  if(secret_get(rep, cfg, up, bearer != NULL, &secret, &len)) {
    *ok = 0;
    return;
  }
  rep->secret = secret;
  rep->secretlen = len;
  result = bearer ? smtp_client_auth_bearer(c, bearer, up->username, secret, &r)
                  : smtp_client_auth(c, mechs, up->username, secret, len, &r);
  rep->secret = NULL;
  rep->secretlen = 0;
  auth_secret_free(secret, len);
  smtp_reply_str(&r, said, sizeof(said));
  if(result == SMTP_CLIENT_OK) {
    step_add(rep, "auth", 1, NULL, "logged in as %s with %s: %s", up->username,
             bearer ? bearer : cfg_uauth_words[up->auth], said);
    return;
  }
  *ok = 0;
  if(smtp_client_reply_from_server(c))
    step_add(rep, "auth", 0, hint_for_reply(&r, up) ? hint_for_reply(&r, up)
             : "the server refused the login: check username, password_file and auth",
             "the server refused the login of %s: %s", up->username, said);
  else
    step_add(rep, "auth", 0, hint_for_local_auth(up, result, r.text), "%s", r.text);
}

/* The test recipient: --rcpt, else postmaster at the login's domain, else at the host's
 * parent domain (smtp.example.com -> example.com), else (an address for host) at our own. */
static void default_rcpt(const struct config *cfg, const struct cfg_upstream *up, char *out,
                         size_t outsz)
{
  const char *at = up->username ? strrchr(up->username, '@') : NULL, *dot;
  unsigned char ip[16];
  if(at && at[1]) {
    snprintf(out, outsz, "postmaster@%s", at + 1);
    return;
  }
  if(inet_pton(AF_INET, up->host, ip) == 1 || inet_pton(AF_INET6, up->host, ip) == 1) {
    snprintf(out, outsz, "postmaster@%s", up->helo ? up->helo : cfg->hostname);
    return;
  }
  dot = strchr(up->host, '.');
  snprintf(out, outsz, "postmaster@%s", dot && strchr(dot + 1, '.') ? dot + 1 : up->host);
}

static void default_from(const struct config *cfg, const struct cfg_upstream *up, char *out,
                         size_t outsz)
{
  if(up->username && strchr(up->username, '@'))
    str_copy(out, outsz, up->username);
  else
    snprintf(out, outsz, "postmaster@%s", up->helo ? up->helo : cfg->hostname);
}

static void step_send(struct report *rep, const struct cfg_upstream *up, struct smtp_client *c,
                      const char *from, const char *to)
{
  struct smtp_client_msg m;
  struct smtp_client_rcpt rc;
  struct smtp_reply r;
  struct buf b;
  char date[64], said[LIM_SMTP_REPLY_LINE + 32];
  time_t now = time(NULL);
  struct tm tm;
  int result;

  buf_init(&b, 4096);
  if(!gmtime_r(&now, &tm) || !strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S +0000", &tm))
    str_copy(date, sizeof(date), "Thu, 01 Jan 1970 00:00:00 +0000");
  if(buf_addf(&b, "From: <%s>\r\nTo: <%s>\r\nSubject: Postern check of upstream %s\r\n"
              "Date: %s\r\nMessage-ID: <check.%lld.%d@%s>\r\nMIME-Version: 1.0\r\n"
              "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
              "This test message was sent by `posternctl check --send` through the upstream\r\n"
              "%s (%s:%ld). If you can read it, the route works.\r\n", from, to, up->name, date,
              (long long)now, (int)(now % 100000), up->helo ? up->helo : "postern.invalid",
              up->name, up->host, up->port)) {
    step_add(rep, "send", 0, NULL, "out of memory");
    goto out;
  }
  memset(&m, 0, sizeof(m));
  memset(&rc, 0, sizeof(rc));
  m.sender = from;
  m.body = b.ptr;
  m.len = b.len;
  rc.address = to;
  result = smtp_client_send(c, &m, &rc, 1, &r);
  if(result) {
    step_add(rep, "send", 0, NULL, "the test message was not sent: %s", r.text);
    goto out;
  }
  smtp_reply_str(&rc.reply, said, sizeof(said));
  if(rc.reply.code >= 200 && rc.reply.code < 300)
    step_add(rep, "send", 1, NULL, "one test message sent to %s: %s", to, said);
  else
    step_add(rep, "send", 0, hint_for_reply(&rc.reply, up), "the test message to %s was "
             "refused: %s", to, said);
out:
  buf_free(&b);
}

static void check_smtp(struct report *rep, const struct config *cfg,
                       const struct cfg_upstream *up, const struct check_opts *o)
{
  struct smtp_client_cfg cc;
  struct smtp_client *c = NULL;
  struct smtp_reply r;
  char said[LIM_SMTP_REPLY_LINE + 32], caps[600], rcpt[LIM_SMTP_PATH], from[LIM_SMTP_PATH];
  int ok, result, starttls, failed_before;

  if(!up->host) {
    step_add(rep, "config", 0, "set host (and port) in this [upstream]", "no host configured");
    return;
  }
  step_dns(rep, up, &ok);
  if(!ok)
    return;
  client_cfg(cfg, up, &cc);
  cc.transcript = transcript_line;
  cc.transcript_arg = rep;
  if(smtp_client_new(&cc, &c)) {
    step_add(rep, "setup", 0, NULL, "out of memory");
    return;
  }
  result = smtp_client_connect(c, &r);
  smtp_reply_str(&r, said, sizeof(said));
  if(result && !strcmp(r.enh, "4.4.1")) {
    step_add(rep, "tcp", 0, strstr(r.text, "timed out")
             ? "no answer: a firewall drops the connection (many networks block ports 25, 465 and "
               "587 outbound) or host/port is wrong"
             : "nothing accepts connections there: check host and port (587 for tls = starttls, "
               "465 for tls = implicit), and any firewall on the way", "%s", r.text);
    goto out;
  }
  step_add(rep, "tcp", 1, NULL, "connected to %s", smtp_client_peer(c));
  if(cc.tls == SMTP_CLIENT_TLS_IMPLICIT) {
    if(result && !strcmp(r.enh, "4.7.5")) {
      tls_failed(rep, cfg, up, &r);
      goto out;
    }
    if(!result || smtp_client_tls_active(c)) {
      step_add(rep, "tls", 1, NULL, "implicit TLS: %s", smtp_client_tls_info(c));
      step_certificate(rep, cfg, up, c);
    }
  }
  if(result) {
    step_add(rep, "greeting", 0, hint_for_reply(&r, up), "%s", said);
    goto out;
  }
  step_add(rep, "greeting", 1, NULL, "%s", said);
  result = smtp_client_ehlo(c, &r);
  smtp_reply_str(&r, said, sizeof(said));
  if(result) {
    step_add(rep, "ehlo", 0, "the server refused our EHLO name: set helo in this [upstream] to "
             "this machine's real name", "%s", said);
    goto out;
  }
  caps_describe(smtp_client_caps(c), caps, sizeof(caps));
  step_add(rep, "ehlo", 1, NULL, "%s", caps);
  starttls = smtp_client_caps(c)->flags & SMTP_CAP_STARTTLS;
  if(cc.tls == SMTP_CLIENT_TLS_STARTTLS || (cc.tls == SMTP_CLIENT_TLS_OPPORTUNISTIC && starttls)) {
    if(!starttls) {
      step_add(rep, "tls", 0, "the server does not offer STARTTLS, which tls = starttls needs: "
               "is port right (465 wants tls = implicit)? If the server has no TLS at all, "
               "tls = none sends the password in clear", "%s does not offer STARTTLS; nothing "
               "more is sent (no password, no mail)", smtp_client_peer(c));
      goto out;
    }
    result = smtp_client_starttls(c, &r);
    if(result) {
      if(!strcmp(r.enh, "4.7.5"))
        tls_failed(rep, cfg, up, &r);
      else {
        smtp_reply_str(&r, said, sizeof(said));
        step_add(rep, "tls", 0, hint_for_reply(&r, up), "STARTTLS failed: %s", said);
      }
      goto out;
    }
    step_add(rep, "tls", 1, NULL, "STARTTLS: %s", smtp_client_tls_info(c));
    step_certificate(rep, cfg, up, c);
    caps_describe(smtp_client_caps(c), caps, sizeof(caps));
    step_add(rep, "ehlo-tls", 1, NULL, "after TLS: %s", caps);
  }
  else if(cc.tls != SMTP_CLIENT_TLS_IMPLICIT)
    step_add(rep, "tls", 1, starttls ? "the server offers STARTTLS: set tls = starttls so that "
             "passwords and mail are encrypted" : NULL, "not used (tls = %s)%s", tls_word(up),
             starttls ? "; the server offers STARTTLS" : "");
  step_auth(rep, cfg, up, c, &ok);
  if(!ok)
    goto out;
  if(o->from)
    str_copy(from, sizeof(from), o->from);
  else
    default_from(cfg, up, from, sizeof(from));
  if(o->rcpt)
    str_copy(rcpt, sizeof(rcpt), o->rcpt);
  else
    default_rcpt(cfg, up, rcpt, sizeof(rcpt));
  result = smtp_client_mail(c, from, &r);
  smtp_reply_str(&r, said, sizeof(said));
  step_add(rep, "mail", !result, result ? hint_for_reply(&r, up) : NULL, "MAIL FROM:<%s>: %s",
           from, said);
  if(result == SMTP_CLIENT_FAILED)
    goto out;
  if(!result) {
    result = smtp_client_rcpt(c, rcpt, &r);
    smtp_reply_str(&r, said, sizeof(said));
    step_add(rep, "rcpt", !result, result ? (hint_for_reply(&r, up) ? hint_for_reply(&r, up)
             : "the test recipient was refused: try --rcpt with an address that exists") : NULL,
             "RCPT TO:<%s>: %s", rcpt, said);
    if(result == SMTP_CLIENT_FAILED)
      goto out;
  }
  /* after a refused MAIL or RCPT the RSET is housekeeping (the transcript shows it): a server
   * that refuses it too (530 before STARTTLS) is not a second finding */
  failed_before = rep->failed;
  result = smtp_client_rset(c, &r);
  smtp_reply_str(&r, said, sizeof(said));
  if(!failed_before || result == SMTP_CLIENT_FAILED)
    step_add(rep, "rset", !result, NULL, "%s (nothing was sent)", said);
  if(!result && o->send_to && !rep->failed)
    step_send(rep, up, c, from, o->send_to);
out:
  smtp_client_quit(c);
  smtp_client_free(c);
}

static void check_api(struct report *rep, const struct config *cfg, const struct cfg_upstream *up)
{
  struct relay_check chk;
  size_t i;
  if(relay_check_api(cfg, up, &chk) < 0) {
    step_add(rep, "config", 0, NULL, "type = %s cannot be checked by this build",
             up->type ? cfg_utype_words[up->type] : "?");
    return;
  }
  for(i = 0; i < chk.nsteps; i++)
    step_add(rep, chk.steps[i].name, chk.steps[i].ok, chk.steps[i].hint[0] ? chk.steps[i].hint
             : NULL, "%s", chk.steps[i].detail);
}

static void check_one(struct report *rep, const struct config *cfg, const struct cfg_upstream *up,
                      const struct check_opts *o)
{
  rep->up = up;
  if(up->type == CFG_UP_CAPTURE)
    step_add(rep, "capture", 1, NULL, "mail is kept in the store (posternctl queue list); "
             "nothing to check");
  else if(up->type == CFG_UP_SMTP || up->type == CFG_UP_NONE)
    check_smtp(rep, cfg, up, o);
  else {
    if(o->send_to)
      step_add(rep, "send", 1, NULL, "--send is for smtp upstreams; nothing was sent");
    check_api(rep, cfg, up);
  }
}

/* ---- output --------------------------------------------------------------------------------- */

static void print_text(const struct report *rep)
{
  const struct cfg_upstream *up = rep->up;
  size_t i;
  json_t *line;
  printf("upstream %s (type = %s", up->name, cfg_utype_words[up->type ? up->type : CFG_UP_SMTP]);
  if(up->host)
    printf(", %s:%ld, tls = %s", up->host, up->port, tls_word(up));
  if(up->api_url)
    printf(", api_url = %s", up->api_url);
  printf(")\n");
  for(i = 0; i < rep->nsteps; i++) {
    printf("  %s %-12s ", rep->steps[i].ok ? "[ ok ]" : "[FAIL]", rep->steps[i].name);
    ctl_put_field(stdout, rep->steps[i].detail);
    putchar('\n');
    if(rep->steps[i].hint[0]) {
      printf("         %s ", rep->steps[i].ok ? "note:" : "fix: ");
      ctl_put_field(stdout, rep->steps[i].hint);
      putchar('\n');
    }
  }
  if(json_array_size(rep->transcript)) {
    printf("  transcript (secrets masked):\n");
    json_array_foreach(rep->transcript, i, line) {
      printf("    ");
      ctl_put_field(stdout, json_string_value(line));
      putchar('\n');
    }
  }
  printf("  => %s\n\n", rep->failed ? "PROBLEM: see [FAIL] above" : "all checks passed");
}

static json_t *report_json(const struct report *rep)
{
  json_t *o = json_object(), *steps = json_array();
  size_t i;
  if(!o || !steps) {
    json_decref(o);
    json_decref(steps);
    return NULL;
  }
  json_object_set_new(o, "upstream", ctl_jstr(rep->up->name));
  json_object_set_new(o, "type", ctl_jstr(cfg_utype_words[rep->up->type ? rep->up->type
                                                                          : CFG_UP_SMTP]));
  if(rep->up->host) {
    json_object_set_new(o, "host", ctl_jstr(rep->up->host));
    json_object_set_new(o, "port", json_integer(rep->up->port));
    json_object_set_new(o, "tls", ctl_jstr(tls_word(rep->up)));
  }
  json_object_set_new(o, "ok", json_boolean(!rep->failed));
  for(i = 0; i < rep->nsteps; i++) {
    json_t *s = json_object();
    json_object_set_new(s, "name", ctl_jstr(rep->steps[i].name));
    json_object_set_new(s, "ok", json_boolean(rep->steps[i].ok));
    json_object_set_new(s, "detail", ctl_jstr(rep->steps[i].detail));
    json_object_set_new(s, "hint", rep->steps[i].hint[0] ? ctl_jstr(rep->steps[i].hint)
                                                          : json_null());
    json_array_append_new(steps, s);
  }
  json_object_set_new(o, "steps", steps);
  json_object_set(o, "transcript", rep->transcript);
  return o;
}

/* ---- the command ---------------------------------------------------------------------------- */

/* The upstreams to check: the one ROUTE names (a route, or an upstream by its own name), else
 * every configured one (the built-in capture when there is none). */
static int pick(const struct config *cfg, const char *name, const struct cfg_upstream **list,
                size_t *n)
{
  size_t i;
  *n = 0;
  if(name) {
    const struct cfg_upstream *up = NULL;
    for(i = 0; i < cfg->nroutes; i++)
      if(!strcmp(cfg->routes[i].name, name))
        up = config_upstream(cfg, cfg->routes[i].upstream);
    if(!up)
      up = config_upstream(cfg, name);
    if(!up)
      return -1;
    list[(*n)++] = up;
    return 0;
  }
  for(i = 0; i < cfg->nupstreams; i++)
    list[(*n)++] = &cfg->upstreams[i];
  if(!*n && (list[0] = config_upstream(cfg, "capture")))
    *n = 1;
  return 0;
}

int ctl_check(struct ctl *c)
{
  struct check_opts o;
  const struct cfg_upstream **list = NULL;
  struct report *reps = NULL;
  json_t *arr = NULL;
  size_t n = 0, i;
  int found, result = 0;

  memset(&o, 0, sizeof(o));
  if(ctl_opt(c, "--rcpt", &o.rcpt) < 0 || ctl_opt(c, "--from", &o.from) < 0 ||
     ctl_opt(c, "--send", &o.send_to) < 0)
    return ctl_usage_error("--rcpt, --from and --send take an ADDRESS", NULL);
  if(ctl_no_options(c))
    return EX_USAGE;
  if(c->nargs > 2)
    return ctl_usage_error("check takes at most one ROUTE", c->args[2]);
  if((o.rcpt && (!*o.rcpt || strlen(o.rcpt) >= LIM_SMTP_PATH || strpbrk(o.rcpt, "<>\r\n "))) ||
     (o.from && (strlen(o.from) >= LIM_SMTP_PATH || strpbrk(o.from, "<>\r\n "))) ||
     (o.send_to && (!*o.send_to || strlen(o.send_to) >= LIM_SMTP_PATH ||
                    strpbrk(o.send_to, "<>\r\n "))))
    return ctl_usage_error("not an address", o.rcpt ? o.rcpt : o.from ? o.from : o.send_to);
  if(ctl_config(c))
    return CHECK_UNCHECKED;
  list = calloc(c->cfg->nupstreams + 1, sizeof(*list));
  if(!list) {
    fprintf(stderr, "posternctl: check: out of memory\n");
    return CHECK_UNCHECKED;
  }
  if(pick(c->cfg, c->nargs > 1 ? c->args[1] : NULL, list, &n)) {
    fprintf(stderr, "posternctl: check: no route or upstream named ");
    ctl_put_field(stderr, c->args[1]);
    fputc('\n', stderr);
    free(list);
    return CHECK_UNCHECKED;
  }
  reps = calloc(n ? n : 1, sizeof(*reps));
  arr = json_array();
  if(!reps || !arr) {
    fprintf(stderr, "posternctl: check: out of memory\n");
    result = CHECK_UNCHECKED;
    goto out;
  }
  for(i = 0; i < n; i++) {
    reps[i].transcript = json_array();
    if(!reps[i].transcript) {
      result = CHECK_UNCHECKED;
      goto out;
    }
    check_one(&reps[i], c->cfg, list[i], &o);
    if(reps[i].failed)
      result = CHECK_FINDINGS;
    if(c->json)
      json_array_append_new(arr, report_json(&reps[i]));
    else {
      print_text(&reps[i]);
      fflush(stdout);
    }
  }
  if(c->json) {
    found = json_dumpf(arr, stdout, JSON_INDENT(2)) || fputc('\n', stdout) == EOF;
    if(found) {
      fprintf(stderr, "posternctl: cannot write the JSON output\n");
      result = CHECK_UNCHECKED;
    }
  }
out:
  for(i = 0; reps && i < n; i++)
    json_decref(reps[i].transcript);
  free(reps);
  free(list);
  json_decref(arr);
  return result;
}
