/* The step records of posternctl check that the transports' credential checks fill for the
 * doctor to print (the check itself is run through the function table: router.c). A leaf: the
 * transports call it, it calls nothing in relay/. */
#include "relay/relay_int.h"
#include "lib/buf.h"
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

struct relay_check_step *relay_check_vadd(struct relay_check_step *steps, size_t cap, size_t *n,
                                          const char *name, int ok, const char *hint,
                                          const char *fmt, va_list ap)
{
  struct relay_check_step *st;
  if(*n < cap)            /* full: the last step is overwritten, the verdict still counts */
    (*n)++;
  st = &steps[*n - 1];
  memset(st, 0, sizeof(*st));
  str_copy(st->name, sizeof(st->name), name);
  st->ok = ok;
  vsnprintf(st->detail, sizeof(st->detail), fmt, ap);
  if(hint)
    str_copy(st->hint, sizeof(st->hint), hint);
  return st;
}

int relay_check_add(struct relay_check *chk, const char *name, int ok, const char *hint,
                    const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  relay_check_vadd(chk->steps, RELAY_CHECK_STEPS, &chk->nsteps, name, ok, hint, fmt, ap);
  va_end(ap);
  return !ok;
}
