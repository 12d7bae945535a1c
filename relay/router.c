/* The router: envelope sender and recipient to an upstream, first matching [route] in file
 * order; and the table of transports this build has. */
#include "relay/relay_int.h"
#include <fnmatch.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

const struct cfg_upstream upstream_capture = { .name = (char *)"capture", .type = CFG_UP_CAPTURE };

static const struct transport *const transports[] = {
  &transport_capture,
  &transport_smtp,
  &transport_sendgrid,
  &transport_ses,
  &transport_graph,
};

const struct transport *transport_for(enum cfg_utype type)
{
  size_t i;
  for(i = 0; i < sizeof(transports) / sizeof(transports[0]); i++)
    if(transports[i]->type == type)
      return transports[i];
  return NULL;
}

/* posternctl check for the API upstreams: the transport's own credential check */
int relay_check_api(const struct config *cfg, const struct cfg_upstream *up,
                    struct relay_check *out)
{
  const struct transport *t = transport_for(up->type);
  memset(out, 0, sizeof(*out));
  if(!t || !t->check)
    return -1;
  return t->check(cfg, up, out) ? 1 : 0;
}

static int glob_match(const char *glob, const char *s)
{
  /* addresses compare case-insensitively; "*" must match across '@' and '.' */
  return !glob || !fnmatch(glob, s, FNM_CASEFOLD);
}

const struct cfg_upstream *route_for(const struct config *cfg, const char *sender,
                                     const char *recipient)
{
  size_t i;
  if(!cfg->nroutes)
    return &upstream_capture;
  for(i = 0; i < cfg->nroutes; i++) {
    const struct cfg_route *rt = &cfg->routes[i];
    const struct cfg_upstream *up;
    if(!glob_match(rt->sender, sender) || !glob_match(rt->recipient, recipient))
      continue;
    if(!rt->upstream || !strcmp(rt->upstream, "capture"))
      return &upstream_capture;
    up = config_upstream(cfg, rt->upstream);
    if(up)
      return up;
  }
  return NULL;
}

const char *relay_upstream_for(const struct config *cfg, const char *sender,
                               const char *recipient)
{
  const struct cfg_upstream *up = route_for(cfg, sender, recipient);
  return up ? up->name : NULL;
}

int relay_route_warnings(const struct config *cfg, void (*warn)(void *arg, const char *line),
                         void *arg)
{
  size_t i, j;
  int n = 0, reached;
  char line[512];
  for(i = 0; i < cfg->nupstreams; i++) {
    const struct cfg_upstream *up = &cfg->upstreams[i];
    reached = 0;
    for(j = 0; j < cfg->nroutes && !reached; j++)
      reached = cfg->routes[j].upstream && !strcmp(cfg->routes[j].upstream, up->name);
    for(j = 0; j < cfg->nupstreams && !reached; j++)
      reached = j != i && cfg->upstreams[j].fallback &&
                !strcmp(cfg->upstreams[j].fallback, up->name);
    if(reached)
      continue;
    snprintf(line, sizeof(line), "%s:%d: upstream %s carries no mail: no [route] names "
             "it (add upstream = %s to a [route], or remove the section)", cfg->path, up->line,
             up->name, up->name);
    warn(arg, line);
    n++;
  }
  return n;
}

/* "upstream office365, smtp.office365.com:587 STARTTLS, XOAUTH2" */
static void describe_upstream(const struct cfg_upstream *up, char *out, size_t outsz)
{
  const char *type = cfg_utype_words[up->type ? up->type : CFG_UP_SMTP], *tls, *auth;
  char mech[32];
  size_t i;
  if(up->type == CFG_UP_CAPTURE) {
    snprintf(out, outsz, "%s (kept in the store: posternctl queue list shows it)",
             strcmp(up->name, "capture") ? up->name : "capture");
    return;
  }
  if(up->type != CFG_UP_SMTP && up->type != CFG_UP_NONE) {
    snprintf(out, outsz, "upstream %s, %s API%s%s%s%s", up->name, type,
             up->api_url ? " " : "", up->api_url ? up->api_url : "",
             up->fallback ? ", fallback " : "", up->fallback ? up->fallback : "");
    return;
  }
  tls = up->tls == CFG_UTLS_STARTTLS ? "STARTTLS" : up->tls == CFG_UTLS_IMPLICIT ? "TLS"
        : up->tls == CFG_UTLS_NONE ? "no TLS" : cfg_utls_words[up->tls];
  auth = cfg_uauth_words[up->auth];
  if(!up->username || up->auth == CFG_UAUTH_NONE)
    auth = "no AUTH";
  else if(up->auth == CFG_UAUTH_AUTO)
    auth = "AUTH (the best mechanism offered)";
  else {
    for(i = 0; auth[i] && i + 1 < sizeof(mech); i++)
      mech[i] = (char)((auth[i] >= 'a' && auth[i] <= 'z') ? auth[i] - 'a' + 'A' : auth[i]);
    mech[i] = '\0';
    auth = mech;
  }
  snprintf(out, outsz, "upstream %s, %s:%ld %s, %s%s%s", up->name, up->host ? up->host : "?",
           up->port ? up->port : (up->tls == CFG_UTLS_IMPLICIT ? 465 : 587), tls, auth,
           up->fallback ? ", fallback " : "", up->fallback ? up->fallback : "");
}

void relay_describe_routes(const struct config *cfg, char *out, size_t outsz)
{
  char up[256];
  size_t i, used = 0;
  int w;
  if(!outsz)
    return;
  out[0] = '\0';
  if(!cfg->nroutes) {
    describe_upstream(&upstream_capture, up, sizeof(up));
    snprintf(out, outsz, "all mail -> %s", up);
    return;
  }
  for(i = 0; i < cfg->nroutes && used < outsz; i++) {
    const struct cfg_route *rt = &cfg->routes[i];
    const struct cfg_upstream *u = config_upstream(cfg, rt->upstream);
    describe_upstream(u ? u : &upstream_capture, up, sizeof(up));
    if(!rt->sender && !rt->recipient && i == 0)
      w = snprintf(out + used, outsz - used, "all mail -> %s", up);
    else if(!rt->sender && !rt->recipient)
      w = snprintf(out + used, outsz - used, "; other mail -> %s", up);
    else
      w = snprintf(out + used, outsz - used, "%sroute %s (%s%s%s%s%s) -> %s", i ? "; " : "",
                   rt->name, rt->sender ? "sender " : "", rt->sender ? rt->sender : "",
                   rt->sender && rt->recipient ? ", " : "", rt->recipient ? "recipient " : "",
                   rt->recipient ? rt->recipient : "", up);
    if(w < 0)
      break;
    used += (size_t)w;
    if(!rt->sender && !rt->recipient)
      break;                           /* later routes are never reached */
  }
  if(cfg->implicit_route && used < outsz)
    snprintf(out + used, outsz - used, " (no [route] in %s: the one [upstream] that is no "
             "other's fallback)", cfg->path);
  for(i = 0; i < cfg->nroutes && (cfg->routes[i].sender || cfg->routes[i].recipient); i++)
    ;
  used = strlen(out);
  if(i == cfg->nroutes && used < outsz)
    snprintf(out + used, outsz - used, "; other mail is deferred (no route matches it)");
}

/* Secrets must not be readable by others: refuse to start rather than use one
 * that is. A missing file is not refused here: the mail waits, held, until it appears. */
static int secret_file_check(const struct config *cfg, const struct cfg_upstream *up,
                             const char *key, const char *path, FILE *errs)
{
  struct stat st;
  if(!path || stat(path, &st))
    return 0;
  if(!S_ISREG(st.st_mode)) {
    fprintf(errs, "%s:%d: upstream %s: %s %s is not a regular file\n", cfg->path, up->line,
            up->name, key, path);
    return 1;
  }
  if(st.st_mode & (S_IRWXG | S_IRWXO)) {
    fprintf(errs, "%s:%d: upstream %s: %s %s may be read or written by others than its owner "
            "(chmod 600 %s)\n", cfg->path, up->line, up->name, key, path, path);
    return 1;
  }
  return 0;
}

static int check_smtp_upstream(const struct config *cfg, const struct cfg_upstream *up, FILE *errs)
{
  int problems = 0, bearer, in_clear;
  const char *auth = cfg_uauth_words[up->auth];
  bearer = up->auth == CFG_UAUTH_XOAUTH2 || up->auth == CFG_UAUTH_OAUTHBEARER;
  in_clear = up->tls == CFG_UTLS_NONE;
  if(up->rate) {
    long long us;
    if(rate_interval_us(up->rate, &us)) {
      fprintf(errs, "%s:%d: upstream %s: rate = %s is not N/s, N/m, N/h or N/d\n", cfg->path,
              up->line, up->name, up->rate);
      problems++;
    }
  }
  if(!up->username || !strcmp(auth, "none"))
    return problems;
  if(in_clear && (!strcmp(auth, "plain") || !strcmp(auth, "login") || bearer)) {
    fprintf(errs, "%s:%d: upstream %s: auth = %s with tls = none would send the password in "
            "clear; Postern will not (use tls = starttls or implicit)\n", cfg->path, up->line,
            up->name, auth);
    problems++;
  }
  if(bearer) {
    const struct cfg_oauth2 *oa = NULL;
    size_t i;
    for(i = 0; up->oauth2 && i < cfg->noauth2s; i++)
      if(!strcmp(cfg->oauth2s[i].name, up->oauth2))
        oa = &cfg->oauth2s[i];
    /* with a flow the token engine gets the tokens; without one they must be there */
    if(!(oa && (oa->token_file || oa->flow)) && !up->password_file && !up->password) {
      fprintf(errs, "%s:%d: upstream %s: auth = %s needs an access token: token_file in "
              "[oauth2 %s], or password_file\n", cfg->path, up->line, up->name, auth,
              up->oauth2 ? up->oauth2 : "NAME");
      problems++;
    }
    if(oa && oa->token_file && !oa->flow)
      problems += secret_file_check(cfg, up, "token_file", oa->token_file, errs);
    if(oa && oa->flow) {
      problems += secret_file_check(cfg, up, "client_secret_file", oa->client_secret_file, errs);
      problems += secret_file_check(cfg, up, "private_key_file", oa->private_key_file, errs);
      if(!oa->client_id) {
        fprintf(errs, "%s:%d: [oauth2 %s] needs client_id\n", cfg->path, oa->line, oa->name);
        problems++;
      }
      if(oa->flow == CFG_FLOW_CLIENT_CREDENTIALS && !oa->client_secret_file &&
         !(oa->certificate_file && oa->private_key_file)) {
        fprintf(errs, "%s:%d: [oauth2 %s]: flow = client_credentials needs client_secret_file, "
                "or certificate_file and private_key_file\n", cfg->path, oa->line, oa->name);
        problems++;
      }
      if((!oa->provider || oa->provider == CFG_PROVIDER_GENERIC) && !oa->token_url) {
        fprintf(errs, "%s:%d: [oauth2 %s]: provider = generic needs token_url\n", cfg->path,
                oa->line, oa->name);
        problems++;
      }
    }
  }
  else if(!up->password_file && !up->password) {
    fprintf(errs, "%s:%d: upstream %s: username is set but there is no password: set "
            "password_file (or SMTP_PASSWORD)\n", cfg->path, up->line, up->name);
    problems++;
  }
  problems += secret_file_check(cfg, up, "password_file", up->password_file, errs);
  return problems;
}

/* An API key or a bearer token sent in clear is given away: plain http is for loopback (tests)
 * only. The HTTP client refuses such a request anyway; this says so at -n. */
static int api_url_check(const struct config *cfg, const struct cfg_upstream *up, FILE *errs)
{
  if(!config_url_cleartext(up->api_url))
    return 0;
  fprintf(errs, "%s:%d: upstream %s: api_url = %s would send the credentials in clear; use "
          "https://\n", cfg->path, up->line, up->name, up->api_url);
  return 1;
}

static int check_api_upstream(const struct config *cfg, const struct cfg_upstream *up, FILE *errs)
{
  int problems = api_url_check(cfg, up, errs);
  const struct cfg_upstream *fb;
  if(up->type == CFG_UP_SENDGRID) {
    if(!up->api_key_file) {
      fprintf(errs, "%s:%d: upstream %s: type = sendgrid needs api_key_file\n", cfg->path,
              up->line, up->name);
      problems++;
    }
    problems += secret_file_check(cfg, up, "api_key_file", up->api_key_file, errs);
  }
  if(up->type == CFG_UP_SES) {
    /* it becomes part of a host name (email.REGION.amazonaws.com) and of the signature */
    if(up->region && !config_aws_region_ok(up->region)) {
      fprintf(errs, "%s:%d: upstream %s: region = %s is not an AWS region name (eu-west-1, "
              "us-gov-west-1, ...)\n", cfg->path, up->line, up->name, up->region);
      problems++;
    }
    if(!!up->access_key_id_file != !!up->secret_access_key_file) {
      fprintf(errs, "%s:%d: upstream %s: set both access_key_id_file and "
              "secret_access_key_file, or neither (then AWS_ACCESS_KEY_ID and "
              "AWS_SECRET_ACCESS_KEY)\n", cfg->path, up->line, up->name);
      problems++;
    }
    problems += secret_file_check(cfg, up, "access_key_id_file", up->access_key_id_file, errs);
    problems += secret_file_check(cfg, up, "secret_access_key_file", up->secret_access_key_file,
                                  errs);
  }
  if(up->fallback) {
    fb = config_upstream(cfg, up->fallback);
    if(!fb || !strcmp(fb->name, up->name)) {
      fprintf(errs, "%s:%d: upstream %s: fallback = %s is not another [upstream]\n", cfg->path,
              up->line, up->name, up->fallback);
      problems++;
    }
  }
  return problems;
}

int relay_check_config(const struct config *cfg, FILE *errs)
{
  size_t i;
  int problems = 0;
  for(i = 0; i < cfg->nupstreams; i++) {
    const struct cfg_upstream *up = &cfg->upstreams[i];
    if(up->type && !transport_for(up->type)) {
      fprintf(errs, "%s:%d: upstream %s: type = %s is not available in this build of Postern\n",
              cfg->path, up->line, up->name, cfg_utype_words[up->type]);
      problems++;
    }
    if(up->type == CFG_UP_SMTP)
      problems += check_smtp_upstream(cfg, up, errs);
    if(up->type == CFG_UP_SENDGRID || up->type == CFG_UP_SES || up->type == CFG_UP_GRAPH ||
       up->fallback)
      problems += check_api_upstream(cfg, up, errs);
  }
  /* a token endpoint gets the client's secret or assertion */
  for(i = 0; i < cfg->noauth2s; i++)
    if(config_url_cleartext(cfg->oauth2s[i].token_url)) {
      fprintf(errs, "%s:%d: [oauth2 %s] token_url = %s would send the client's credentials in "
              "clear; use https://\n", cfg->path, cfg->oauth2s[i].line, cfg->oauth2s[i].name,
              cfg->oauth2s[i].token_url);
      problems++;
    }
  return problems + dkim_check_config(cfg, errs);
}
