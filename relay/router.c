/* The router: envelope sender and recipient to an upstream, first matching [route] in file
 * order; and the table of transports this build has. */
#include "relay/relay_int.h"
#include <fnmatch.h>
#include <string.h>
#include <sys/stat.h>

const struct cfg_upstream upstream_capture = { .name = (char *)"capture", .type = (char *)"capture" };

static const struct transport *const transports[] = {
  &transport_capture,
  &transport_smtp,
};

const struct transport *transport_for(const char *type)
{
  size_t i;
  for(i = 0; type && i < sizeof(transports) / sizeof(transports[0]); i++)
    if(!strcmp(transports[i]->type, type))
      return transports[i];
  return NULL;
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

/* Secrets must not be readable by others (DESIGN.md): refuse to start rather than use one
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
  const char *auth = up->auth ? up->auth : "auto";
  bearer = !strcmp(auth, "xoauth2") || !strcmp(auth, "oauthbearer");
  in_clear = up->tls && !strcmp(up->tls, "none");
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
    if(!(oa && oa->token_file) && !up->password_file && !up->password) {
      fprintf(errs, "%s:%d: upstream %s: auth = %s needs an access token: token_file in "
              "[oauth2 %s], or password_file\n", cfg->path, up->line, up->name, auth,
              up->oauth2 ? up->oauth2 : "NAME");
      problems++;
    }
    if(oa && oa->token_file)
      problems += secret_file_check(cfg, up, "token_file", oa->token_file, errs);
  }
  else if(!up->password_file && !up->password) {
    fprintf(errs, "%s:%d: upstream %s: username is set but there is no password: set "
            "password_file (or SMTP_PASSWORD)\n", cfg->path, up->line, up->name);
    problems++;
  }
  problems += secret_file_check(cfg, up, "password_file", up->password_file, errs);
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
              cfg->path, up->line, up->name, up->type);
      problems++;
    }
    if(up->type && !strcmp(up->type, "smtp"))
      problems += check_smtp_upstream(cfg, up, errs);
  }
  return problems;
}
