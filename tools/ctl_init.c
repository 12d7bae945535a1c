/* posternctl init [ADDRESS]: a first configuration, the way msmtp --configure makes one, and
 * further: the provider is told from the sender's domain (MX hosts, RFC 6186 SRV records),
 * only what is still missing is asked for (and only on a terminal: scripts give flags), the
 * secrets go to 0600 files beside the configuration, the application's AUTH user is added if
 * wanted, then the doctor runs and the one line the application needs is printed. */
#include "tools/ctl.h"
#include "auth/auth.h"
#include "lib/buf.h"
#include "lib/dns.h"
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sysexits.h>
#include <time.h>
#include <unistd.h>

#define INIT_VALUE_MAX 512          /* a host, a user name, a tenant, a path written as a value */
#define INIT_SECRETS 3              /* at most: a key id and a secret, or one password */
#define INIT_CONF_MAX (64u * 1024u)

enum init_kind { K_UNKNOWN, K_MICROSOFT, K_GOOGLE, K_SES, K_SENDGRID, K_SMTP };

static const struct provider {
  const char *word;           /* --provider WORD */
  enum init_kind kind;
  const char *title;          /* for people */
  const char *section;        /* the [upstream] (and [oauth2]) name written */
} providers[] = {
  { "microsoft", K_MICROSOFT, "Microsoft 365", "microsoft365" },
  { "m365", K_MICROSOFT, "Microsoft 365", "microsoft365" },
  { "office365", K_MICROSOFT, "Microsoft 365", "microsoft365" },
  { "google", K_GOOGLE, "Google (Gmail, Workspace)", "google" },
  { "gmail", K_GOOGLE, "Google (Gmail, Workspace)", "google" },
  { "ses", K_SES, "Amazon SES", "ses" },
  { "sendgrid", K_SENDGRID, "SendGrid", "sendgrid" },
  { "smtp", K_SMTP, "an SMTP server", "smarthost" },
};
#define NPROVIDERS (sizeof(providers) / sizeof(providers[0]))

/* The command line: every option is taken before anything is asked or looked up. */
struct init_opts {
  const char *address, *output, *provider, *host, *port, *tls, *ca_file, *username;
  const char *password_file, *api_key_file, *tenant, *client_id, *client_secret_file, *flow;
  const char *region, *access_key_id, *secret_access_key_file, *transport;
  const char *app_user, *app_password_file, *api_url, *token_url, *data_dir, *listen;
  int yes, dry_run, no_check;
};

struct init_secret {
  char path[4096];
  const char *key;            /* the configuration key that names the file */
  const char *what;           /* for messages */
  char *data;                 /* auth_secret_free */
  size_t len;
};

struct init {
  struct init_opts o;
  int tty;                    /* questions may be asked */
  const struct provider *prov;
  char address[INIT_VALUE_MAX], domain[256];
  char how[2400];             /* how the provider was told: a comment in the file */
  char host[INIT_VALUE_MAX], tls[16], auth[16], username[INIT_VALUE_MAX];
  long port;
  char tenant[INIT_VALUE_MAX], client_id[INIT_VALUE_MAX], flow[32], region[64];
  char transport[8];          /* ses: api | smtp */
  char dir[3000];             /* where the configuration goes; secrets beside it */
  char output[3100];          /* the configuration: an absolute path, as the daemon reads it */
  struct init_secret sec[INIT_SECRETS];
  size_t nsec;
  char app_user[INIT_VALUE_MAX];
};

/* ---- answers: flags first, then the terminal, else say which flag is missing --------------- */

/* A value written into the INI file must stay one value: no line breaks, no comment
 * characters, no controls. */
static int value_ok(const char *v)
{
  size_t i, n = strlen(v);
  if(!n || n >= INIT_VALUE_MAX)
    return 0;
  for(i = 0; i < n; i++)
    if((unsigned char)v[i] < 0x20 || v[i] == 0x7f || v[i] == ';' || v[i] == '#')
      return 0;
  return v[0] != '[' && v[0] != ' ';
}

static int bad_value(const char *what, const char *v)
{
  fprintf(stderr, "posternctl: init: not a usable %s: ", what);
  ctl_put_field(stderr, v);
  fputc('\n', stderr);
  return EX_USAGE;
}

/* out = flag value, else (on a terminal) the answer to prompt, else def; EX_USAGE naming the
 * flag when none of them gives one. def may be NULL (the value is required). */
static int answer(struct init *in, const char *flagval, const char *flag, const char *prompt,
                  const char *def, char *out, size_t outsz)
{
  int tries;
  if(flagval) {
    if(!value_ok(flagval))
      return bad_value(flag, flagval);
    str_copy(out, outsz, flagval);
    return 0;
  }
  if(!in->tty || (def && in->o.yes)) {
    if(def) {
      str_copy(out, outsz, def);
      return 0;
    }
    fprintf(stderr, "posternctl: init: %s is needed: give %s (questions are asked only on a "
            "terminal)\n", prompt, flag);
    return EX_USAGE;
  }
  for(tries = 0; tries < 3; tries++) {
    if(ctl_ask(prompt, def, out, outsz))
      break;
    if(out[0] && value_ok(out))
      return 0;
    if(out[0])
      fprintf(stderr, "posternctl: init: that is not a usable value\n");
  }
  fprintf(stderr, "posternctl: init: no %s given\n", prompt);
  return EX_USAGE;
}

/* A secret for the file beside the configuration named fname (key: the configuration key):
 * copied from the 0600 file a flag names, else typed at the terminal with echo off; never an
 * argument. blanks_out: the provider shows it in groups ("abcd efgh ijkl mnop") */
static int secret_take(struct init *in, const char *file, const char *flag, const char *prompt,
                       const char *what, const char *key, const char *fname, int blanks_out)
{
  struct init_secret *s = &in->sec[in->nsec];
  char err[512], typed[CTL_SECRET_CAP + 1];
  size_t i, j;
  int result;

  if(file) {
    if(auth_secret_read(file, &s->data, &s->len, err, sizeof(err))) {
      fprintf(stderr, "posternctl: init: %s\n", err);
      return EX_NOINPUT;
    }
  }
  else if(!in->tty) {
    fprintf(stderr, "posternctl: init: the %s is needed: give %s FILE (a file only you may "
            "read; secrets are never arguments)\n", what, flag);
    return EX_USAGE;
  }
  else {
    result = ctl_secret_get(what, prompt, 0, typed, CTL_SECRET_CAP, &s->len);
    if(result)
      return result;
    s->data = malloc(s->len + 1);
    if(s->data) {
      memcpy(s->data, typed, s->len);
      s->data[s->len] = '\0';
    }
    explicit_bzero(typed, sizeof(typed));
    if(!s->data)
      return EX_OSERR;
  }
  for(i = j = 0; i < s->len; i++)
    if(!blanks_out || (s->data[i] != ' ' && s->data[i] != '\t'))
      s->data[j++] = s->data[i];
  s->len = j;
  s->data[j] = '\0';
  if(!s->len || memchr(s->data, '\n', s->len) || memchr(s->data, '\0', s->len)) {
    fprintf(stderr, "posternctl: init: the %s must be one line\n", what);
    auth_secret_free(s->data, s->len);
    s->data = NULL;
    return EX_DATAERR;
  }
  if(snprintf(s->path, sizeof(s->path), "%s/%s", in->dir, fname) >= (int)sizeof(s->path)) {
    auth_secret_free(s->data, s->len);
    s->data = NULL;
    return bad_value("directory", in->dir);
  }
  s->key = key;
  s->what = what;
  in->nsec++;
  return 0;
}

static const char *secret_path(const struct init *in, const char *key)
{
  size_t i;
  for(i = 0; i < in->nsec; i++)
    if(!strcmp(in->sec[i].key, key))
      return in->sec[i].path;
  return NULL;
}

/* ---- telling the provider ------------------------------------------------------------------ */

static int ends_with(const char *s, const char *tail)
{
  size_t n = strlen(s), t = strlen(tail);
  return n >= t && !strcasecmp(s + n - t, tail);
}

static const struct provider *provider_named(const char *word)
{
  size_t i;
  for(i = 0; i < NPROVIDERS; i++)
    if(!strcasecmp(providers[i].word, word))
      return &providers[i];
  return NULL;
}

/* Microsoft 365 and Google are known by the hosts their customers' MX records name. */
static const struct provider *provider_of_mx(const char *mx)
{
  if(ends_with(mx, ".mail.protection.outlook.com") || ends_with(mx, ".mail.protection.outlook.de"))
    return provider_named("microsoft");
  if(ends_with(mx, ".google.com") || ends_with(mx, ".googlemail.com") ||
     !strcasecmp(mx, "smtp.google.com"))
    return provider_named("google");
  return NULL;
}

/* RFC 6186: the submission server of a domain, the record of lowest priority (then highest
 * weight); a target of "." says there is none. 1 found, 0 not. */
static int srv_find(const char *service, const char *domain, char *host, size_t hostsz,
                    long *port, char *err, size_t errsz)
{
  struct dns_rr rr[DNS_RR_MAX];
  char name[600];
  size_t n, i, best = DNS_RR_MAX;
  snprintf(name, sizeof(name), "%s.%s", service, domain);
  if(dns_query(name, DNS_SRV, rr, DNS_RR_MAX, &n, err, errsz))
    return 0;
  for(i = 0; i < n; i++) {
    if(!rr[i].name[0] || !strcmp(rr[i].name, ".") || !rr[i].port)
      continue;
    if(best == DNS_RR_MAX || rr[i].prio < rr[best].prio ||
       (rr[i].prio == rr[best].prio && rr[i].weight > rr[best].weight))
      best = i;
  }
  if(best == DNS_RR_MAX)
    return 0;
  str_copy(host, hostsz, rr[best].name);
  *port = (long)rr[best].port;
  return 1;
}

/* From the domain's DNS: the provider, or an SMTP server (host, port), or nothing known. */
static void provider_guess(struct init *in)
{
  struct dns_rr rr[DNS_RR_MAX];
  char err[256], host[sizeof(rr[0].name)];
  size_t n = 0, i;
  long port = 0;
  int failed = dns_query(in->domain, DNS_MX, rr, DNS_RR_MAX, &n, err, sizeof(err));

  size_t best = DNS_RR_MAX;
  /* the most preferred MX host that names a provider */
  for(i = 0; !failed && i < n; i++)
    if(provider_of_mx(rr[i].name) && (best == DNS_RR_MAX || rr[i].prio < rr[best].prio))
      best = i;
  if(best < DNS_RR_MAX) {
    in->prov = provider_of_mx(rr[best].name);
    snprintf(in->how, sizeof(in->how), "told by the MX record of %s: %s", in->domain,
             rr[best].name);
    return;
  }
  if((srv_find("_submission._tcp", in->domain, host, sizeof(host), &port, err, sizeof(err)) ||
      srv_find("_submissions._tcp", in->domain, host, sizeof(host), &port, err, sizeof(err))) &&
     value_ok(host)) {
    in->prov = provider_named("smtp");
    str_copy(in->host, sizeof(in->host), host);
    in->port = port;
    snprintf(in->how, sizeof(in->how), "found by the RFC 6186 SRV record of %s: %s port %ld",
             in->domain, host, port);
    return;
  }
  snprintf(in->how, sizeof(in->how), "the provider of %s could not be told (MX %s%s, no "
           "_submission._tcp SRV record)", in->domain, n ? rr[0].name : "none",
           n > 1 ? ", ..." : "");
}

/* ---- what each provider needs ------------------------------------------------------------- */

static int ask_smtp_login(struct init *in, const char *default_user)
{
  int result;
  char prompt[1200];
  if(!in->o.username && !in->o.password_file && !in->tty) {
    str_copy(in->auth, sizeof(in->auth), "none");
    return 0;
  }
  snprintf(prompt, sizeof(prompt), "Login at %s (- for none)", in->host);
  result = answer(in, in->o.username, "--username", prompt, default_user[0] ? default_user : NULL,
                  in->username, sizeof(in->username));
  if(result)
    return result;
  if(!strcmp(in->username, "-")) {
    str_copy(in->auth, sizeof(in->auth), "none");
    in->username[0] = '\0';
    return 0;
  }
  str_copy(in->auth, sizeof(in->auth), "auto");      /* the best mechanism the server offers */
  snprintf(prompt, sizeof(prompt), "Password for %s at %s: ", in->username, in->host);
  return secret_take(in, in->o.password_file, "--password-file", prompt, "password",
                     "password_file", "smarthost.secret", 0);
}

static int need_microsoft(struct init *in)
{
  int result;
  if(in->o.password_file)
    return ctl_usage_error("Microsoft 365 is set up with OAuth2, its SMTP basic authentication "
                           "being switched off (a password: --provider smtp --host "
                           "smtp.office365.com)", "--password-file");
  result = answer(in, in->o.username, "--username", "Mailbox that sends (the login)",
                  in->address[0] ? in->address : NULL, in->username, sizeof(in->username));
  if(!result)
    result = answer(in, in->o.flow, "--flow", "OAuth2 flow: client_credentials (an app with a "
                    "secret) or device_code (someone signs in once)", "client_credentials",
                    in->flow, sizeof(in->flow));
  if(!result && strcmp(in->flow, "client_credentials") && strcmp(in->flow, "device_code"))
    return bad_value("--flow (client_credentials or device_code)", in->flow);
  if(!result)
    result = answer(in, in->o.tenant, "--tenant", "Tenant (its domain or directory ID)",
                    in->domain[0] ? in->domain : NULL, in->tenant, sizeof(in->tenant));
  if(!result)
    result = answer(in, in->o.client_id, "--client-id", "Application (client) ID", NULL,
                    in->client_id, sizeof(in->client_id));
  if(!result && !strcmp(in->flow, "client_credentials"))
    result = secret_take(in, in->o.client_secret_file, "--client-secret-file",
                         "Client secret (its value): ", "client secret", "client_secret_file",
                         "microsoft365-client.secret", 0);
  str_copy(in->auth, sizeof(in->auth), "xoauth2");
  return result;
}

static int need_google(struct init *in)
{
  char prompt[700];
  int result = answer(in, in->o.username, "--username", "Google account that sends",
                      in->address[0] ? in->address : NULL, in->username, sizeof(in->username));
  if(result)
    return result;
  snprintf(prompt, sizeof(prompt), "App password for %s (myaccount.google.com/apppasswords): ",
           in->username);
  str_copy(in->auth, sizeof(in->auth), "plain");
  return secret_take(in, in->o.password_file, "--password-file", prompt, "app password",
                     "password_file", "google.secret", 1);
}

static int need_ses(struct init *in)
{
  struct init_secret *id;
  char *pw = NULL;
  int result = answer(in, in->o.transport, "--transport", "Send through the SES API or its SMTP "
                      "endpoint (api or smtp)", "api", in->transport, sizeof(in->transport));
  if(!result && strcmp(in->transport, "api") && strcmp(in->transport, "smtp"))
    return bad_value("--transport (api or smtp)", in->transport);
  if(!result)
    result = answer(in, in->o.region, "--region", "AWS region of SES (e.g. eu-west-1)", NULL,
                    in->region, sizeof(in->region));
  if(!result && !ctl_ses_region_ok(in->region))
    return bad_value("--region", in->region);
  if(result)
    return result;
  /* the key id is no secret (it is the SMTP user name), but the ses transport reads it from
   * a file, as it reads the secret */
  id = &in->sec[in->nsec];
  result = answer(in, in->o.access_key_id, "--access-key-id", "AWS access key ID", NULL,
                  in->username, sizeof(in->username));
  if(result)
    return result;
  if(!strcmp(in->transport, "api")) {
    id->data = strdup(in->username);
    if(!id->data)
      return EX_OSERR;
    id->len = strlen(id->data);
    id->key = "access_key_id_file";
    id->what = "access key ID";
    snprintf(id->path, sizeof(id->path), "%s/aws.id", in->dir);
    in->nsec++;
    in->username[0] = '\0';
  }
  result = secret_take(in, in->o.secret_access_key_file, "--secret-access-key-file",
                       "AWS secret access key: ", "secret access key", "secret_access_key_file",
                       "aws.secret", 1);
  if(result || !strcmp(in->transport, "api"))
    return result;
  /* the SMTP endpoint wants the password derived from the secret key, not the key itself */
  id = &in->sec[in->nsec - 1];
  if(ctl_ses_smtp_password(id->data, id->len, in->region, &pw)) {
    fprintf(stderr, "posternctl: init: cannot compute the SES SMTP password\n");
    return EX_SOFTWARE;
  }
  auth_secret_free(id->data, id->len);
  id->data = pw;
  id->len = strlen(pw);
  id->key = "password_file";
  id->what = "SES SMTP password";
  snprintf(id->path, sizeof(id->path), "%s/ses-smtp.secret", in->dir);
  snprintf(in->host, sizeof(in->host), "email-smtp.%s.amazonaws.com", in->region);
  str_copy(in->auth, sizeof(in->auth), "plain");
  return 0;
}

static int need_what(struct init *in)
{
  int result;
  char portstr[16];
  long port;
  switch(in->prov->kind) {
  case K_MICROSOFT:
    str_copy(in->host, sizeof(in->host), "smtp.office365.com");
    in->port = 587;
    return need_microsoft(in);
  case K_GOOGLE:
    str_copy(in->host, sizeof(in->host), "smtp.gmail.com");
    in->port = 587;
    return need_google(in);
  case K_SES:
    in->port = 587;
    return need_ses(in);
  case K_SENDGRID:
    return secret_take(in, in->o.api_key_file, "--api-key-file", "SendGrid API key (SG...): ",
                       "API key", "api_key_file", "sendgrid.key", 1);
  case K_SMTP:
  case K_UNKNOWN:
    break;
  }
  if(!in->host[0] || in->o.host) {
    result = answer(in, in->o.host, "--host", "SMTP server to send through (host name)", NULL,
                    in->host, sizeof(in->host));
    if(result)
      return result;
  }
  if(!in->port || in->o.port) {
    result = answer(in, in->o.port, "--port", "Its port (587 STARTTLS, 465 TLS)", "587",
                    portstr, sizeof(portstr));
    if(result)
      return result;
    if(str_to_long(portstr, strlen(portstr), 1, 65535, &port))
      return bad_value("--port", portstr);
    in->port = port;
  }
  return ask_smtp_login(in, in->address);
}

/* Flags that aim a preset at another server (a test's loopback peer, a relay in between). */
static int overrides(struct init *in)
{
  long port;
  if(in->o.host) {
    if(!value_ok(in->o.host))
      return bad_value("--host", in->o.host);
    str_copy(in->host, sizeof(in->host), in->o.host);
  }
  if(in->o.port) {
    if(str_to_long(in->o.port, strlen(in->o.port), 1, 65535, &port))
      return bad_value("--port", in->o.port);
    in->port = port;
  }
  if(in->o.tls) {
    if(strcmp(in->o.tls, "starttls") && strcmp(in->o.tls, "implicit") &&
       strcmp(in->o.tls, "none"))
      return bad_value("--tls (starttls, implicit or none)", in->o.tls);
    str_copy(in->tls, sizeof(in->tls), in->o.tls);
  }
  else
    str_copy(in->tls, sizeof(in->tls), in->port == 465 ? "implicit" : "starttls");
  if(in->o.ca_file && !value_ok(in->o.ca_file))
    return bad_value("--ca-file", in->o.ca_file);
  if(in->o.api_url && !value_ok(in->o.api_url))
    return bad_value("--api-url", in->o.api_url);
  if(in->o.token_url && !value_ok(in->o.token_url))
    return bad_value("--token-url", in->o.token_url);
  if(in->o.data_dir && !value_ok(in->o.data_dir))
    return bad_value("--data-dir", in->o.data_dir);
  if(in->o.listen && !value_ok(in->o.listen))
    return bad_value("--listen", in->o.listen);
  return 0;
}

/* ---- the file ------------------------------------------------------------------------------ */

static void conf_upstream(const struct init *in, struct buf *b)
{
  const char *name = in->prov->section;
  buf_addf(b, "[upstream %s]\n", name);
  if(in->prov->kind == K_SENDGRID) {
    buf_addf(b, "type = sendgrid\napi_key_file = %s            ; mode 600; read at each use\n",
             secret_path(in, "api_key_file"));
    buf_addf(b, "%sapi_url = %s\n", in->o.api_url ? "" : ";",
             in->o.api_url ? in->o.api_url : "https://api.eu.sendgrid.com   ; EU subusers");
    return;
  }
  if(in->prov->kind == K_SES && !strcmp(in->transport, "api")) {
    buf_addf(b, "type = ses\nregion = %s\naccess_key_id_file = %s\nsecret_access_key_file = %s\n",
             in->region, secret_path(in, "access_key_id_file"),
             secret_path(in, "secret_access_key_file"));
    if(in->o.api_url)
      buf_addf(b, "api_url = %s\n", in->o.api_url);
    buf_addstr(b, "; the IAM user needs ses:SendRawEmail and ses:GetAccount; a new account is in "
               "the sandbox\n; (only verified recipients) until production access is granted\n");
    return;
  }
  buf_addf(b, "type = smtp\nhost = %s\nport = %ld\ntls = %s                 ; starttls | implicit "
           "| none\nverify = peer                   ; the certificate and its name are checked\n",
           in->host, in->port, in->tls);
  if(in->o.ca_file)
    buf_addf(b, "ca_file = %s\n", in->o.ca_file);
  buf_addf(b, "auth = %s\n", in->auth);
  if(strcmp(in->auth, "none"))
    buf_addf(b, "username = %s\n", in->username);
  if(in->prov->kind == K_MICROSOFT)
    buf_addf(b, "oauth2 = %s\n", name);
  else if(secret_path(in, "password_file"))
    buf_addf(b, "password_file = %s\n", secret_path(in, "password_file"));
  if(in->prov->kind == K_GOOGLE)
    buf_addstr(b, "; an app password needs 2-Step Verification on the account; a Workspace "
               "admin may have to allow them\n");
  if(in->prov->kind != K_MICROSOFT)
    return;
  buf_addf(b, "\n[oauth2 %s]\nprovider = microsoft\nflow = %s\ntenant = %s\nclient_id = %s\n",
           name, in->flow, in->tenant, in->client_id);
  if(!strcmp(in->flow, "client_credentials")) {
    buf_addf(b, "client_secret_file = %s\n", secret_path(in, "client_secret_file"));
    buf_addstr(b, "; the app needs the Office 365 Exchange Online permission SMTP.SendAsApp "
               "(admin consent), and\n; Exchange must know it: New-ServicePrincipal, then "
               "Add-MailboxPermission for the mailbox\n");
  }
  else
    buf_addstr(b, "; a public client (\"Allow public client flows\") with the delegated "
               "permission SMTP.Send;\n; sign in again with: posternctl oauth2 login "
               "microsoft365\n");
  if(in->o.token_url)
    buf_addf(b, "token_url = %s\n", in->o.token_url);
}

static int conf_text(const struct init *in, struct buf *b)
{
  char when[40];
  time_t now = time(NULL);
  struct tm tm;
  if(!gmtime_r(&now, &tm) || !strftime(when, sizeof(when), "%Y-%m-%d %H:%M UTC", &tm))
    str_copy(when, sizeof(when), "?");
  buf_addf(b, "; Postern's configuration, written by posternctl init on %s.\n", when);
  buf_addf(b, "; Check it with postern -n; test the upstream with posternctl check. Every key: "
           "postern.conf(5).\n\n");
  buf_addf(b, "[postern]\n;hostname = relay.example.org    ; default: this host's name\n"
           "data_dir = %s\n\n", in->o.data_dir ? in->o.data_dir : "/var/lib/postern");
  buf_addf(b, "; where the application sends: loopback only; from 127.0.0.1 no AUTH is needed,\n"
           "; users added with posternctl user add may log in all the same\n"
           "[listener submission]\naddress = %s\nrole = submission\n\n",
           in->o.listen ? in->o.listen : "127.0.0.1:587");
  buf_addf(b, "; %s: %s\n", in->prov->title, in->how);
  conf_upstream(in, b);
  buf_addf(b, "\n; all mail goes to it\n[route default]\nupstream = %s\n", in->prov->section);
  return b->ptr ? 0 : EX_OSERR;
}

/* ---- after the file: the AUTH user, the sign-in, the doctor, the line for the application -- */

static int sub_command(const struct init *in, int (*run)(struct ctl *), const char *a0,
                       const char *a1, const char *a2)
{
  struct ctl sub;
  int result;
  memset(&sub, 0, sizeof(sub));
  sub.config_arg = in->o.output;
  sub.args[sub.nargs++] = a0;
  if(a1)
    sub.args[sub.nargs++] = a1;
  if(a2)
    sub.args[sub.nargs++] = a2;
  result = run(&sub);
  store_close(sub.st);
  if(sub.cfg)
    config_free(sub.cfg);
  return result;
}

static int conf_check(struct ctl *c)
{
  return ctl_config(c) ? EX_SOFTWARE : 0;
}

/* the sasldb and the OAuth2 tokens go there; a first install may not have it yet */
static int data_dir_make(struct ctl *c)
{
  int result = ctl_config(c);
  return result ? result : ctl_data_dir_make(c->cfg);
}

static int app_user_add(const struct init *in)
{
  struct ctl c;
  char pw[CTL_SECRET_CAP + 1], prompt[INIT_VALUE_MAX + 64], err[512], *filepw = NULL;
  size_t len = 0;
  int result;

  memset(&c, 0, sizeof(c));
  c.config_arg = in->o.output;
  result = ctl_config(&c);
  if(result)
    return result;
  if(in->o.app_password_file) {
    if(auth_secret_read(in->o.app_password_file, &filepw, &len, err, sizeof(err))) {
      fprintf(stderr, "posternctl: init: %s\n", err);
      result = EX_NOINPUT;
    }
    else
      result = ctl_user_set(c.cfg, in->app_user, filepw, len);
    auth_secret_free(filepw, len);
  }
  else {
    snprintf(prompt, sizeof(prompt), "Password the application will log in with as %s: ",
             in->app_user);
    result = ctl_secret_get("password", prompt, 1, pw, sizeof(pw) - 1, &len);
    if(!result)
      result = ctl_user_set(c.cfg, in->app_user, pw, len);
    explicit_bzero(pw, sizeof(pw));
  }
  config_free(c.cfg);
  return result;
}

/* "host 127.0.0.1, port 587, STARTTLS off, AUTH LOGIN, user app": what to type into the
 * application's mail settings. */
static void app_line(const struct init *in)
{
  const char *listen = in->o.listen ? in->o.listen : "127.0.0.1:587";
  const char *colon = strrchr(listen, ':');
  int hostlen = colon ? (int)(colon - listen) : (int)strlen(listen);
  if(listen[0] == '[' && hostlen >= 2 && listen[hostlen - 1] == ']') {
    listen++;
    hostlen -= 2;
  }
  printf("The application: host %.*s, port %s, STARTTLS off, ", hostlen, listen,
         colon ? colon + 1 : "587");
  if(in->app_user[0])
    printf("AUTH LOGIN (or PLAIN), user %s with the password given\n", in->app_user);
  else
    printf("no AUTH (a loopback client needs none)\n");
}

static int files_write(struct init *in, struct buf *text)
{
  struct stat st;
  size_t i;
  int result;
  if(stat(in->dir, &st) && (errno != ENOENT || mkdir(in->dir, 0755))) {
    fprintf(stderr, "posternctl: init: cannot create %s: %s\n", in->dir, strerror(errno));
    return EX_CANTCREAT;
  }
  for(i = 0; i < in->nsec; i++) {
    result = ctl_secret_write(in->sec[i].path, in->sec[i].what, in->sec[i].data, in->sec[i].len,
                              "choose another place with --output");
    if(result)
      return result;
  }
  /* no secret in it: readable by the daemon's user, whoever owns it */
  if(oauth2_file_write(in->o.output, text->ptr, text->len, 0644)) {
    fprintf(stderr, "posternctl: init: cannot write %s: %s\n", in->o.output, strerror(errno));
    return EX_CANTCREAT;
  }
  fprintf(stderr, "posternctl: wrote the configuration to %s\n", in->o.output);
  return 0;
}

/* An existing configuration is replaced only when the operator says so. */
static int may_replace(const struct init *in)
{
  struct stat st;
  char yes[8];
  if(in->o.dry_run || in->o.yes || stat(in->o.output, &st))
    return 0;
  if(in->tty) {
    char prompt[4200];
    snprintf(prompt, sizeof(prompt), "%s exists; replace it? (yes/no)", in->o.output);
    if(!ctl_ask(prompt, "no", yes, sizeof(yes)) && (!strcmp(yes, "yes") || !strcmp(yes, "y")))
      return 0;
  }
  fprintf(stderr, "posternctl: init: %s exists; nothing written (--yes replaces it, --output "
          "chooses another file)\n", in->o.output);
  return EX_CANTCREAT;
}

/* ---- the command --------------------------------------------------------------------------- */

static int opts_take(struct ctl *c, struct init_opts *o)
{
  static const struct { const char *flag; size_t off; } valued[] = {
#define V(f, m) { f, offsetof(struct init_opts, m) }
    V("--output", output), V("--provider", provider), V("--host", host), V("--port", port),
    V("--tls", tls), V("--ca-file", ca_file), V("--username", username),
    V("--password-file", password_file), V("--api-key-file", api_key_file),
    V("--tenant", tenant), V("--client-id", client_id),
    V("--client-secret-file", client_secret_file), V("--flow", flow), V("--region", region),
    V("--access-key-id", access_key_id), V("--secret-access-key-file", secret_access_key_file),
    V("--transport", transport), V("--app-user", app_user),
    V("--app-password-file", app_password_file), V("--api-url", api_url),
    V("--token-url", token_url), V("--data-dir", data_dir), V("--listen", listen),
#undef V
  };
  size_t i;
  for(i = 0; i < sizeof(valued) / sizeof(valued[0]); i++)
    if(ctl_opt(c, valued[i].flag, (const char **)((char *)o + valued[i].off)) < 0)
      return ctl_usage_error("this option needs its value", valued[i].flag);
  o->yes = ctl_opt(c, "--yes", NULL) > 0;
  o->dry_run = ctl_opt(c, "--dry-run", NULL) > 0;
  o->no_check = ctl_opt(c, "--no-check", NULL) > 0;
  if(ctl_no_options(c))
    return EX_USAGE;
  if(c->nargs > 2)
    return ctl_usage_error("init takes at most one ADDRESS", c->args[2]);
  o->address = c->nargs > 1 ? c->args[1] : NULL;
  if(!o->output)
    o->output = c->config_arg ? c->config_arg : CONFIG_DEFAULT_PATH;
  return 0;
}

static int address_take(struct init *in)
{
  const char *at;
  int result = 0;
  if(in->o.address || (in->tty && !in->o.provider && !in->o.host))
    result = answer(in, in->o.address, "ADDRESS", "Address the application sends from", NULL,
                    in->address, sizeof(in->address));
  if(result || !in->address[0])
    return result;
  at = strrchr(in->address, '@');
  if(!at || at == in->address || !at[1] || strpbrk(in->address, " <>\"") ||
     strlen(at + 1) >= sizeof(in->domain))
    return bad_value("sender address", in->address);
  str_copy(in->domain, sizeof(in->domain), at + 1);
  return 0;
}

int ctl_init(struct ctl *c)
{
  struct init *in = calloc(1, sizeof(*in));
  struct buf text;
  const char *slash;
  size_t i;
  int result, checked = 0;

  buf_init(&text, INIT_CONF_MAX);
  if(!in)
    return EX_OSERR;
  result = opts_take(c, &in->o);
  if(result)
    goto out;
  in->tty = isatty(STDIN_FILENO);
  /* the secrets are named in the file by absolute paths: the daemon's directory is not ours */
  if(in->o.output[0] != '/') {
    char cwd[2048];
    if(!getcwd(cwd, sizeof(cwd)) ||
       snprintf(in->output, sizeof(in->output), "%s/%s", cwd, in->o.output) >=
       (int)sizeof(in->output)) {
      result = bad_value("--output (too long)", in->o.output);
      goto out;
    }
    in->o.output = in->output;
  }
  slash = strrchr(in->o.output, '/');
  if(slash == in->o.output)
    str_copy(in->dir, sizeof(in->dir), "/");
  else
    snprintf(in->dir, sizeof(in->dir), "%.*s", (int)(slash - in->o.output), in->o.output);
  if(!value_ok(in->o.output) || !value_ok(in->dir) || strlen(in->dir) >= sizeof(in->dir) - 64) {
    result = bad_value("--output", in->o.output);
    goto out;
  }
  result = may_replace(in);
  if(!result)
    result = address_take(in);
  if(result)
    goto out;

  if(in->o.provider) {
    in->prov = provider_named(in->o.provider);
    if(!in->prov) {
      result = bad_value("--provider (microsoft, google, ses, sendgrid or smtp)", in->o.provider);
      goto out;
    }
    snprintf(in->how, sizeof(in->how), "chosen with --provider %s", in->prov->word);
  }
  else if(in->domain[0])
    provider_guess(in);
  if(!in->prov && in->o.host) {
    in->prov = provider_named("smtp");
    snprintf(in->how, sizeof(in->how), "the server given with --host");
  }
  if(!in->prov) {
    if(in->how[0])
      fprintf(stderr, "posternctl: init: %s\n", in->how);
    in->prov = provider_named("smtp");
  }
  else
    fprintf(stderr, "posternctl: init: %s, %s\n", in->prov->title, in->how);

  result = need_what(in);
  if(!result)
    result = overrides(in);
  if(!result && !in->o.app_user && in->tty && !in->o.yes && !in->o.dry_run)
    result = answer(in, NULL, "--app-user", "Local user for the application's AUTH (- for "
                    "none)", "-", in->app_user, sizeof(in->app_user));
  else if(!result && in->o.app_user)
    result = answer(in, in->o.app_user, "--app-user", "", NULL, in->app_user,
                    sizeof(in->app_user));
  if(!strcmp(in->app_user, "-"))
    in->app_user[0] = '\0';
  if(!result)
    result = conf_text(in, &text);
  if(result)
    goto out;

  if(in->o.dry_run) {
    fwrite(text.ptr, 1, text.len, stdout);
    for(i = 0; i < in->nsec; i++)
      fprintf(stderr, "posternctl: init: would write the %s to %s (mode 0600)\n",
              in->sec[i].what, in->sec[i].path);
    fprintf(stderr, "posternctl: init: --dry-run: nothing written to %s\n", in->o.output);
    app_line(in);
    goto out;
  }
  result = files_write(in, &text);
  if(result)
    goto out;
  /* read back as postern -n reads it: a file it refuses is ours to fix, not the operator's */
  result = sub_command(in, conf_check, "init", NULL, NULL);
  if(!result && (in->app_user[0] || in->prov->kind == K_MICROSOFT))
    result = sub_command(in, data_dir_make, "init", NULL, NULL);
  if(!result && in->app_user[0])
    result = app_user_add(in);
  if(!result && in->prov->kind == K_MICROSOFT && !strcmp(in->flow, "device_code"))
    result = sub_command(in, ctl_oauth2, "oauth2", "login", in->prov->section);
  if(!result && !in->o.no_check) {
    checked = 1;
    printf("\nThe doctor (posternctl -c %s check):\n", in->o.output);
    fflush(stdout);
    result = sub_command(in, ctl_check, "check", NULL, NULL);
  }
  printf("\n");
  app_line(in);
  if(result && checked)
    fprintf(stderr, "posternctl: init: the doctor found a problem (above); fix it in %s or "
            "run posternctl init again\n", in->o.output);
out:
  for(i = 0; i < in->nsec; i++)
    auth_secret_free(in->sec[i].data, in->sec[i].len);
  buf_free(&text);
  free(in);
  return result;
}
