/* The router: envelope sender and recipient to an upstream, first matching [route] in file
 * order; and the table of transports this build has. */
#include "relay/relay_int.h"
#include <fnmatch.h>
#include <string.h>

const struct cfg_upstream upstream_capture = { .name = (char *)"capture", .type = (char *)"capture" };

static const struct transport *const transports[] = {
  &transport_capture,
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
  }
  return problems;
}
