/* Per-client counters shared by every session, as Postfix's anvil keeps them (but in-process):
 * open sessions, connection, message and recipient rates per listener and client, and failed
 * AUTHs per client across listeners. A client is an IPv4 address or an IPv6 /64, the block one
 * subscriber gets, so that rotating addresses inside it does not escape the limits. Both tables
 * are fixed in size; when one is full the idle (or unlocked) client seen longest ago goes. */
#include "smtp/smtp.h"
#include <pthread.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>

#define ANVIL_WINDOW_MS 60000LL    /* rates are per minute */

struct anvil_slot {
  int used;
  unsigned service;
  unsigned char key[ANVIL_KEY_LEN];
  unsigned conc;                   /* sessions open now */
  unsigned conns, msgs, rcpts;     /* in the current window */
  long long window_ms;             /* when the current window started */
  long long seen_ms;               /* the latest connect, message or recipient */
  long long logged_ms[ANVIL_FULL]; /* per limit, the latest refusal that was logged; 0 never */
};

struct anvil_auth_slot {
  int used;
  unsigned char key[ANVIL_KEY_LEN];
  unsigned failures;               /* within LIM_AUTH_FAILURE_MEMORY of the latest */
  long long last_ms;               /* the latest failure */
  long long locked_until_ms;       /* 0: not locked */
  unsigned pending;                /* checks under way (anvil_auth_begin .. anvil_auth_end) */
  long long logged_ms;             /* the latest refusal that was logged; 0 never */
};

static pthread_mutex_t anvil_lock = PTHREAD_MUTEX_INITIALIZER;
static struct anvil_slot slots[LIM_ANVIL_CLIENTS];
static struct anvil_auth_slot auth_slots[LIM_AUTH_FAILURE_ADDRS];

void anvil_key(int family, const unsigned char *addr, unsigned char key[ANVIL_KEY_LEN])
{
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof(ss));
  ss.ss_family = (sa_family_t)family;
  if(family == AF_INET)
    memcpy(&((struct sockaddr_in *)&ss)->sin_addr, addr, 4);
  else if(family == AF_INET6)
    memcpy(&((struct sockaddr_in6 *)&ss)->sin6_addr, addr, 16);
  if(conn_client_key((const struct sockaddr *)&ss, key))
    memset(key, 0, ANVIL_KEY_LEN);   /* a local socket: one client */
}

unsigned anvil_service(const char *name)
{
  unsigned h = 2166136261u;        /* FNV-1a: listener names are ours, not attacker bytes */
  for(; name && *name; name++)
    h = (h ^ (unsigned char)*name) * 16777619u;
  return h ? h : 1;                /* 0 means "no limits" to a session */
}

static void window_roll(struct anvil_slot *a, long long now)
{
  if(now - a->window_ms >= ANVIL_WINDOW_MS || now < a->window_ms) {
    a->window_ms = now;
    a->conns = a->msgs = a->rcpts = 0;
  }
}

/* The client's slot, made if need be (NULL when every slot has a session open). */
static struct anvil_slot *slot_get(unsigned service, const unsigned char *key, long long now,
                                   int create)
{
  size_t i, pick = LIM_ANVIL_CLIENTS;
  for(i = 0; i < LIM_ANVIL_CLIENTS; i++) {
    struct anvil_slot *a = &slots[i];
    if(a->used && a->service == service && !memcmp(a->key, key, ANVIL_KEY_LEN))
      return a;
    if(!create)
      continue;
    if(!a->used) {
      if(pick == LIM_ANVIL_CLIENTS || slots[pick].used)
        pick = i;
    }
    else if(!a->conc && (pick == LIM_ANVIL_CLIENTS ||
                         (slots[pick].used && a->seen_ms < slots[pick].seen_ms)))
      pick = i;
  }
  if(!create || pick == LIM_ANVIL_CLIENTS)
    return NULL;
  memset(&slots[pick], 0, sizeof(slots[pick]));
  slots[pick].used = 1;
  slots[pick].service = service;
  memcpy(slots[pick].key, key, ANVIL_KEY_LEN);
  slots[pick].window_ms = now;
  return &slots[pick];
}

/* A refusal is logged at most once a minute per client, listener and limit. */
static int report_due(struct anvil_slot *a, enum anvil_verdict v, long long now)
{
  long long *t = &a->logged_ms[(unsigned)v % ANVIL_FULL];
  if(*t && now - *t < ANVIL_WINDOW_MS && now >= *t)
    return 0;
  *t = now;
  return 1;
}

enum anvil_verdict anvil_connect(unsigned service, const unsigned char *key,
                                 const struct anvil_limits *l, long long now, int *report)
{
  struct anvil_slot *a;
  enum anvil_verdict v = ANVIL_OK;
  *report = 0;
  pthread_mutex_lock(&anvil_lock);
  a = slot_get(service, key, now, 1);
  if(!a) {
    v = ANVIL_FULL;
    *report = 1;
    goto out;
  }
  window_roll(a, now);
  a->seen_ms = now;
  a->conns++;
  if(l->max_conc > 0 && a->conc >= (unsigned long)l->max_conc)
    v = ANVIL_CONCURRENCY;
  else if(l->conn_rate > 0 && a->conns > (unsigned long)l->conn_rate)
    v = ANVIL_CONN_RATE;
  else
    a->conc++;
  if(v)
    *report = report_due(a, v, now);
out:
  pthread_mutex_unlock(&anvil_lock);
  return v;
}

void anvil_disconnect(unsigned service, const unsigned char *key, long long now)
{
  struct anvil_slot *a;
  pthread_mutex_lock(&anvil_lock);
  a = slot_get(service, key, now, 0);
  if(a && a->conc)
    a->conc--;
  pthread_mutex_unlock(&anvil_lock);
}

static enum anvil_verdict counted(unsigned service, const unsigned char *key, long rate,
                                  int rcpt, long long now, int *report)
{
  struct anvil_slot *a;
  enum anvil_verdict v = ANVIL_OK;
  unsigned *n;
  *report = 0;
  pthread_mutex_lock(&anvil_lock);
  a = slot_get(service, key, now, 0);
  if(a) {                          /* a session always has its slot: it holds conc */
    window_roll(a, now);
    a->seen_ms = now;
    n = rcpt ? &a->rcpts : &a->msgs;
    if(rate > 0 && *n >= (unsigned long)rate) {
      v = rcpt ? ANVIL_RCPT_RATE : ANVIL_MSG_RATE;
      *report = report_due(a, v, now);
    }
    else
      (*n)++;
  }
  pthread_mutex_unlock(&anvil_lock);
  return v;
}

enum anvil_verdict anvil_message(unsigned service, const unsigned char *key,
                                 const struct anvil_limits *l, long long now, int *report)
{
  return counted(service, key, l->msg_rate, 0, now, report);
}

enum anvil_verdict anvil_rcpt(unsigned service, const unsigned char *key,
                              const struct anvil_limits *l, long long now, int *report)
{
  return counted(service, key, l->rcpt_rate, 1, now, report);
}

/* ---- AUTH failures ----------------------------------------------------------------------- */

static struct anvil_auth_slot *auth_find(const unsigned char *key, long long now)
{
  size_t i;
  for(i = 0; i < LIM_AUTH_FAILURE_ADDRS; i++) {
    struct anvil_auth_slot *f = &auth_slots[i];
    if(!f->used || memcmp(f->key, key, ANVIL_KEY_LEN))
      continue;
    /* an expired lock, or failures long past, are forgotten */
    if(f->locked_until_ms && now >= f->locked_until_ms) {
      f->locked_until_ms = 0;
      f->failures = 0;
    }
    if(!f->locked_until_ms && now - f->last_ms > LIM_AUTH_FAILURE_MEMORY * 1000LL)
      f->failures = 0;
    return f;
  }
  return NULL;
}

long long anvil_auth_locked(const unsigned char *key, long long now)
{
  struct anvil_auth_slot *f;
  long long left = 0;
  pthread_mutex_lock(&anvil_lock);
  f = auth_find(key, now);
  if(f && f->locked_until_ms)
    left = f->locked_until_ms - now;
  pthread_mutex_unlock(&anvil_lock);
  return left > 0 ? left : 0;
}

/* A slot for a client not in the table: a free one, else the unlocked client without checks
 * under way that failed longest ago; a locked client is never forgotten while its lock runs.
 * NULL when every slot is locked or busy. Called with anvil_lock held. */
static struct anvil_auth_slot *auth_make(const unsigned char *key, long long now)
{
  struct anvil_auth_slot *f;
  size_t i, pick = LIM_AUTH_FAILURE_ADDRS;
  for(i = 0; i < LIM_AUTH_FAILURE_ADDRS; i++) {
    struct anvil_auth_slot *g = &auth_slots[i];
    if(g->used && g->locked_until_ms && now >= g->locked_until_ms)
      g->locked_until_ms = 0;
    if(!g->used || (!g->locked_until_ms && !g->pending &&
                    now - g->last_ms > LIM_AUTH_FAILURE_MEMORY * 1000LL)) {
      pick = i;
      break;
    }
    if(!g->locked_until_ms && !g->pending &&
       (pick == LIM_AUTH_FAILURE_ADDRS || g->last_ms < auth_slots[pick].last_ms))
      pick = i;
  }
  if(pick == LIM_AUTH_FAILURE_ADDRS)
    return NULL;
  f = &auth_slots[pick];
  memset(f, 0, sizeof(*f));
  f->used = 1;
  f->last_ms = now;
  memcpy(f->key, key, ANVIL_KEY_LEN);
  return f;
}

/* A refusal of a locked client is logged at most once a minute per client. */
static int auth_report_due(struct anvil_auth_slot *f, long long now)
{
  if(f->logged_ms && now - f->logged_ms < ANVIL_WINDOW_MS && now >= f->logged_ms)
    return 0;
  f->logged_ms = now;
  return 1;
}

long long anvil_auth_begin(const unsigned char *key, unsigned max, long long now, int *reserved,
                           int *report)
{
  struct anvil_auth_slot *f;
  long long left = 0;
  *reserved = 0;
  *report = 0;
  pthread_mutex_lock(&anvil_lock);
  f = auth_find(key, now);
  if(!f)
    f = auth_make(key, now);
  if(!f)
    goto out;              /* a full table: the first failure will count as the last */
  if(f->locked_until_ms)
    left = f->locked_until_ms - now;
  else if(max && f->failures + f->pending >= max)
    left = 1000;           /* the checks under way may reach the limit: none more until then */
  if(left > 0) {
    *report = auth_report_due(f, now);
    goto out;
  }
  left = 0;
  f->pending++;
  *reserved = 1;
out:
  pthread_mutex_unlock(&anvil_lock);
  return left;
}

unsigned anvil_auth_end(const unsigned char *key, int reserved, int failed, unsigned max,
                        long long lock_ms, long long now)
{
  struct anvil_auth_slot *f;
  unsigned n = 0;
  pthread_mutex_lock(&anvil_lock);
  f = auth_find(key, now);
  if(f && reserved && f->pending)
    f->pending--;
  if(!failed)
    goto out;
  if(!f && !(f = auth_make(key, now))) {
    n = max ? max : 1;     /* every slot holds a locked client: this one is treated as one */
    goto out;
  }
  n = ++f->failures;
  f->last_ms = now;
  if(max && n >= max && !f->locked_until_ms)
    f->locked_until_ms = now + (lock_ms > 0 ? lock_ms : 1);
out:
  pthread_mutex_unlock(&anvil_lock);
  return n;
}

unsigned anvil_auth_failure(const unsigned char *key, unsigned max, long long lock_ms,
                            long long now)
{
  return anvil_auth_end(key, 0, 1, max, lock_ms, now);
}

void anvil_reset(void)
{
  pthread_mutex_lock(&anvil_lock);
  memset(slots, 0, sizeof(slots));
  memset(auth_slots, 0, sizeof(auth_slots));
  pthread_mutex_unlock(&anvil_lock);
}
