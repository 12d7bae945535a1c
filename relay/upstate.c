/* What the relay remembers about each upstream while it runs, by name so that it survives a
 * reload: the send-rate token bucket (`rate = N/s|m|h|d`), the slow-down a 4.7.x throttling
 * reply asks for, and the hold that follows a refused login. */
#include "relay/relay_int.h"
#include "lib/buf.h"
#include "lib/log.h"
#include "global/metrics.h"
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* A throttled upstream without a rate of its own gets one message every this many ms, times
 * the slow-down factor. */
#define UNRATED_BASE_US 500000LL
#define SLOW_FACTOR_MAX 64
#define SLOW_FOR_MS (10LL * 60 * 1000)       /* a slow-down lasts this long after the last 4.7.x */
#define SLOW_STEP_MS 10000LL                 /* at most one doubling in this long */
#define SLOT_EARLY_US 50000LL                /* a reserved slot may be used this early */
#define SLOT_STALE_US (10LL * 60 * 1000000)  /* a reservation nobody came for is dropped */

struct slot {
  char id[LIM_QUEUE_ID + 1];
  long long at_us;
};

struct upstate {
  char *name;
  /* rate */
  long long tat_us;            /* theoretical arrival time: the next free sending slot */
  struct slot *slots;          /* messages told to come back at their slot */
  size_t nslots, slotcap;
  int slow_factor;             /* 1 = as configured */
  long long slow_until_ms, slow_step_ms;
  /* hold */
  int held, probing;
  long long next_probe_ms, probe_interval_ms;
  char hold_reply[LIM_SMTP_REPLY_LINE + 64];
  unsigned long alarms;
};

struct upstates {
  pthread_mutex_t mu;
  struct upstate **v;          /* never shrinks: an index names an upstream for good */
  size_t n, cap;
};

int upstates_new(struct upstates **out)
{
  struct upstates *u = calloc(1, sizeof(*u));
  *out = u;
  if(!u)
    return -1;
  pthread_mutex_init(&u->mu, NULL);
  return 0;
}

void upstates_free(struct upstates *u)
{
  size_t i;
  if(!u)
    return;
  for(i = 0; i < u->n; i++) {
    free(u->v[i]->slots);
    free(u->v[i]->name);
    free(u->v[i]);
  }
  free(u->v);
  pthread_mutex_destroy(&u->mu);
  free(u);
}

/* The state of name, made on first use; NULL when out of memory. Called with mu held. */
static struct upstate *get(struct upstates *u, const char *name, size_t *idx)
{
  struct upstate *s;
  size_t i;
  for(i = 0; i < u->n; i++)
    if(!strcmp(u->v[i]->name, name)) {
      if(idx)
        *idx = i;
      return u->v[i];
    }
  if(u->n == u->cap) {
    size_t ncap = u->cap ? u->cap * 2 : 8;
    struct upstate **nv = realloc(u->v, ncap * sizeof(*nv));
    if(!nv)
      return NULL;
    u->v = nv;
    u->cap = ncap;
  }
  s = calloc(1, sizeof(*s));
  if(!s || !(s->name = str_dup_n(name, strlen(name)))) {
    free(s);
    return NULL;
  }
  s->slow_factor = 1;
  u->v[u->n] = s;
  if(idx)
    *idx = u->n;
  u->n++;
  return s;
}

/* ---- rate ---------------------------------------------------------------------------------- */

int rate_interval_us(const char *rate, long long *us)
{
  const char *slash;
  long n, period;
  *us = 0;
  if(!rate)
    return 0;
  slash = strchr(rate, '/');
  if(!slash || str_to_long(rate, (size_t)(slash - rate), 1, 1000000, &n) || !slash[1] ||
     slash[2])
    return -1;
  switch(slash[1]) {
  case 's': period = 1; break;
  case 'm': period = 60; break;
  case 'h': period = 3600; break;
  case 'd': period = 86400; break;
  default: return -1;
  }
  *us = period * 1000000LL / n;
  if(*us < 1)
    *us = 1;
  return 0;
}

static void slots_prune(struct upstate *s, long long now_us)
{
  size_t i = 0;
  while(i < s->nslots) {
    if(s->slots[i].at_us < now_us - SLOT_STALE_US)
      s->slots[i] = s->slots[--s->nslots];
    else
      i++;
  }
}

long long upstate_rate_admit(struct upstates *u, const struct cfg_upstream *up, const char *id,
                             long long now_ms)
{
  struct upstate *s;
  long long base = 0, eff, now_us = now_ms * 1000, at = 0;
  size_t i;

  if(rate_interval_us(up->rate, &base))
    base = 0;
  pthread_mutex_lock(&u->mu);
  s = get(u, up->name, NULL);
  if(!s)
    goto out;
  if(s->slow_factor > 1 && now_ms >= s->slow_until_ms) {
    s->slow_factor = 1;
    log_info("upstream %s: back to its configured sending rate", up->name);
  }
  if(!base && s->slow_factor == 1)
    goto out;                  /* no limit */
  eff = (base ? base : UNRATED_BASE_US) * s->slow_factor;
  /* a message that was given a slot: its turn has come (or not yet) */
  for(i = 0; i < s->nslots; i++) {
    if(strcmp(s->slots[i].id, id))
      continue;
    if(s->slots[i].at_us <= now_us + SLOT_EARLY_US) {
      s->slots[i] = s->slots[--s->nslots];
      goto out;
    }
    at = (s->slots[i].at_us + 999) / 1000;
    goto out;
  }
  if(s->tat_us <= now_us) {
    /* one token at most (a bucket of one): never a burst above the provider's rate */
    s->tat_us = now_us + eff;
    goto out;
  }
  slots_prune(s, now_us);
  if(s->nslots == s->slotcap) {
    size_t ncap = s->slotcap ? s->slotcap * 2 : 64;
    struct slot *ns = realloc(s->slots, ncap * sizeof(*ns));
    if(!ns) {
      at = (s->tat_us + 999) / 1000;   /* no reservation: it will compete again then */
      goto out;
    }
    s->slots = ns;
    s->slotcap = ncap;
  }
  str_copy(s->slots[s->nslots].id, sizeof(s->slots[s->nslots].id), id);
  s->slots[s->nslots].at_us = s->tat_us;
  s->nslots++;
  at = (s->tat_us + 999) / 1000;
  s->tat_us += eff;
out:
  if(s)   /* what the console's overview shows as the upstream's rate-limit wait */
    metrics_rate_state(up->name, s->tat_us > now_us ? (s->tat_us + 999) / 1000 : 0,
                       s->slow_factor);
  pthread_mutex_unlock(&u->mu);
  return at;
}

void upstate_throttled(struct upstates *u, const struct cfg_upstream *up, long long now_ms)
{
  struct upstate *s;
  long long base = 0;
  if(rate_interval_us(up->rate, &base))
    base = 0;
  pthread_mutex_lock(&u->mu);
  s = get(u, up->name, NULL);
  if(s) {
    s->slow_until_ms = now_ms + SLOW_FOR_MS;
    /* several workers see the same burst of 4.7.x: it counts once */
    if(now_ms >= s->slow_step_ms && s->slow_factor < SLOW_FACTOR_MAX) {
      s->slow_factor *= 2;
      s->slow_step_ms = now_ms + SLOW_STEP_MS;
      log_warn("upstream %s asks us to slow down: at most one message every %.1f s for the "
               "next %lld minutes (a lower rate = in [upstream %s] avoids it)", up->name,
               (double)((base ? base : UNRATED_BASE_US) * s->slow_factor) / 1e6,
               SLOW_FOR_MS / 60000, up->name);
      metrics_rate_state(up->name, (s->tat_us + 999) / 1000, s->slow_factor);
    }
  }
  pthread_mutex_unlock(&u->mu);
}

/* ---- holds --------------------------------------------------------------------------------- */

int upstate_hold_check(struct upstates *u, const char *name, long long now_ms, int by_hand,
                       char *reply, size_t replysz)
{
  struct upstate *s;
  int result = UPSTATE_GO;
  pthread_mutex_lock(&u->mu);
  s = get(u, name, NULL);
  if(s && s->held) {
    if(!s->probing && (by_hand || now_ms >= s->next_probe_ms)) {
      s->probing = 1;
      result = UPSTATE_PROBE;
    }
    else {
      str_copy(reply, replysz, s->hold_reply);
      result = UPSTATE_HELD;
    }
  }
  pthread_mutex_unlock(&u->mu);
  return result;
}

int upstate_is_held(struct upstates *u, const char *name)
{
  struct upstate *s;
  int held = 0;
  pthread_mutex_lock(&u->mu);
  s = get(u, name, NULL);
  if(s)
    held = s->held;
  pthread_mutex_unlock(&u->mu);
  return held;
}

int upstate_login_failed(struct upstates *u, const char *name, const char *reply,
                         long long now_ms, long long min_ms, long long max_ms)
{
  struct upstate *s;
  int newly = 0;
  pthread_mutex_lock(&u->mu);
  s = get(u, name, NULL);
  if(s) {
    newly = !s->held;
    if(newly)
      s->alarms++;
    s->held = 1;
    s->probing = 0;
    snprintf(s->hold_reply, sizeof(s->hold_reply), "%s", reply);
    /* each failed login makes the next one wait longer: providers lock accounts that keep
     * failing */
    s->probe_interval_ms = newly || !s->probe_interval_ms ? min_ms : s->probe_interval_ms * 2;
    if(s->probe_interval_ms > max_ms)
      s->probe_interval_ms = max_ms;
    s->next_probe_ms = now_ms + s->probe_interval_ms;
  }
  pthread_mutex_unlock(&u->mu);
  return newly;
}

int upstate_login_ok(struct upstates *u, const char *name)
{
  struct upstate *s;
  int was = 0;
  pthread_mutex_lock(&u->mu);
  s = get(u, name, NULL);
  if(s) {
    was = s->held;
    s->held = 0;
    s->probing = 0;
    s->probe_interval_ms = 0;
  }
  pthread_mutex_unlock(&u->mu);
  return was;
}

void upstate_probe_abort(struct upstates *u, const char *name, long long next_ms)
{
  struct upstate *s;
  pthread_mutex_lock(&u->mu);
  s = get(u, name, NULL);
  if(s) {
    s->probing = 0;
    if(next_ms)
      s->next_probe_ms = next_ms;
  }
  pthread_mutex_unlock(&u->mu);
}

void upstate_mark_held(struct upstates *u, const char *name, long long now_ms)
{
  struct upstate *s;
  pthread_mutex_lock(&u->mu);
  s = get(u, name, NULL);
  if(s && !s->held) {
    s->held = 1;
    s->next_probe_ms = now_ms;
    snprintf(s->hold_reply, sizeof(s->hold_reply),
             "454 4.7.0 held: the last login to upstream %s failed", name);
  }
  pthread_mutex_unlock(&u->mu);
}

void upstate_probe_all_now(struct upstates *u, long long now_ms)
{
  size_t i;
  pthread_mutex_lock(&u->mu);
  for(i = 0; i < u->n; i++)
    if(u->v[i]->held) {
      u->v[i]->next_probe_ms = now_ms;
      u->v[i]->probe_interval_ms = 0;
    }
  pthread_mutex_unlock(&u->mu);
}

int upstate_probe_next(struct upstates *u, long long now_ms, size_t *idx, long long *wake_ms)
{
  size_t i;
  int found = 0;
  *wake_ms = -1;
  pthread_mutex_lock(&u->mu);
  for(i = 0; i < u->n; i++) {
    struct upstate *s = u->v[i];
    if(!s->held || s->probing)
      continue;
    if(!found && s->next_probe_ms <= now_ms) {
      s->probing = 1;
      *idx = i;
      found = 1;
      continue;
    }
    if(*wake_ms < 0 || s->next_probe_ms < *wake_ms)
      *wake_ms = s->next_probe_ms;
  }
  pthread_mutex_unlock(&u->mu);
  return found;
}

int upstate_name(struct upstates *u, size_t idx, char *out, size_t outsz)
{
  int result = -1;
  pthread_mutex_lock(&u->mu);
  if(idx < u->n) {
    str_copy(out, outsz, u->v[idx]->name);
    result = 0;
  }
  pthread_mutex_unlock(&u->mu);
  return result;
}
