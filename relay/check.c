/* posternctl check for the API upstreams: the transport's own credential check, run through
 * its function table, and the step records it fills for the doctor to print. */
#include "relay/relay_int.h"
#include "lib/buf.h"
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int relay_check_add(struct relay_check *chk, const char *name, int ok, const char *hint,
                    const char *fmt, ...)
{
  struct relay_check_step *st;
  va_list ap;
  if(chk->nsteps < RELAY_CHECK_STEPS)
    chk->nsteps++;
  st = &chk->steps[chk->nsteps - 1];
  memset(st, 0, sizeof(*st));
  str_copy(st->name, sizeof(st->name), name);
  st->ok = ok;
  va_start(ap, fmt);
  vsnprintf(st->detail, sizeof(st->detail), fmt, ap);
  va_end(ap);
  if(hint)
    str_copy(st->hint, sizeof(st->hint), hint);
  return !ok;
}

int relay_check_api(const struct config *cfg, const struct cfg_upstream *up,
                    struct relay_check *out)
{
  const struct transport *t = transport_for(up->type);
  memset(out, 0, sizeof(*out));
  if(!t || !t->check)
    return -1;
  return t->check(cfg, up, out) ? 1 : 0;
}
