/* Per-client limits of the HTTP listener: connections at once, requests a minute, and wrong
 * passwords before a lockout, counted per client key (an IPv4 address, an IPv6 /64). A fixed
 * table: when it is full the oldest idle, unlocked client is forgotten first, so that rotating
 * through addresses cannot wash a lockout out of it. Free of sockets and of time sources: the
 * caller passes the key and the clock (the unit test drives it). */
#include "inbound/inbound.h"
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct client {
  unsigned char key[CONN_CLIENT_KEY_LEN];
  int used;
  long conns;                   /* connections open now */
  long long window_ms;          /* start of the current minute of requests */
  long requests;                /* requests in it */
  long failures;                /* wrong credentials since fail_ms */
  long long fail_ms;
  long long locked_until_ms;
  long long seen_ms;
  long long logged_ms;          /* the last refusal logged (once a minute per client) */
};

struct http_clients {
  pthread_mutex_t mu;
  size_t cap;
  struct client *c;
};

struct http_clients *http_clients_new(size_t cap)
{
  struct http_clients *t = calloc(1, sizeof(*t));
  if(!t)
    return NULL;
  t->cap = cap ? cap : 1;
  t->c = calloc(t->cap, sizeof(*t->c));
  if(!t->c) {
    free(t);
    return NULL;
  }
  pthread_mutex_init(&t->mu, NULL);
  return t;
}

void http_clients_free(struct http_clients *t)
{
  if(!t)
    return;
  pthread_mutex_destroy(&t->mu);
  free(t->c);
  free(t);
}

/* The client's entry, made when create is set (forgetting another when the table is full);
 * NULL when absent, or when every entry has connections open. Under t->mu. */
static struct client *find(struct http_clients *t, const unsigned char *key, int create,
                           long long now)
{
  struct client *free_slot = NULL, *idle = NULL, *idle_locked = NULL, *e;
  size_t i;
  for(i = 0; i < t->cap; i++) {
    e = &t->c[i];
    if(!e->used) {
      if(!free_slot)
        free_slot = e;
      continue;
    }
    if(!memcmp(e->key, key, CONN_CLIENT_KEY_LEN))
      return e;
    if(e->conns)
      continue;
    if(e->locked_until_ms > now) {
      if(!idle_locked || e->seen_ms < idle_locked->seen_ms)
        idle_locked = e;
    }
    else if(!idle || e->seen_ms < idle->seen_ms)
      idle = e;
  }
  if(!create)
    return NULL;
  e = free_slot ? free_slot : idle ? idle : idle_locked;
  if(e) {
    memset(e, 0, sizeof(*e));
    e->used = 1;
    memcpy(e->key, key, CONN_CLIENT_KEY_LEN);
    e->seen_ms = now;
  }
  return e;
}

static int log_due(struct client *e, long long now)
{
  if(e->logged_ms && now - e->logged_ms < 60000)
    return 0;
  e->logged_ms = now;
  return 1;
}

int http_clients_admit(struct http_clients *t, const unsigned char *key,
                       const struct http_limits *lim, long long now, int *log_now)
{
  struct client *e;
  int result = 0;
  *log_now = 0;
  pthread_mutex_lock(&t->mu);
  e = find(t, key, 0, now);
  if(e && lim->per_ip > 0 && e->conns >= lim->per_ip) {
    result = -1;
    *log_now = log_due(e, now);
  }
  pthread_mutex_unlock(&t->mu);
  return result;
}

void http_clients_connected(struct http_clients *t, const unsigned char *key, long long now)
{
  struct client *e;
  pthread_mutex_lock(&t->mu);
  e = find(t, key, 1, now);
  if(e) {
    e->conns++;
    e->seen_ms = now;
  }
  pthread_mutex_unlock(&t->mu);
}

void http_clients_closed(struct http_clients *t, const unsigned char *key, long long now)
{
  struct client *e;
  pthread_mutex_lock(&t->mu);
  e = find(t, key, 0, now);
  if(e && e->conns > 0) {
    e->conns--;
    e->seen_ms = now;
  }
  pthread_mutex_unlock(&t->mu);
}

long http_clients_request(struct http_clients *t, const unsigned char *key,
                          const struct http_limits *lim, long long now, int *locked,
                          int *log_now)
{
  struct client *e;
  long wait = 0;
  *locked = *log_now = 0;
  pthread_mutex_lock(&t->mu);
  e = find(t, key, 1, now);
  if(!e) {
    /* every entry has connections open: more clients than connection slots cannot be */
    pthread_mutex_unlock(&t->mu);
    return 1;
  }
  e->seen_ms = now;
  if(e->locked_until_ms > now) {
    *locked = 1;
    wait = (long)((e->locked_until_ms - now + 999) / 1000);
  }
  else if(lim->rate_per_minute > 0) {
    if(!e->window_ms || now - e->window_ms >= 60000) {
      e->window_ms = now;
      e->requests = 0;
    }
    if(e->requests >= lim->rate_per_minute)
      wait = (long)((e->window_ms + 60000 - now + 999) / 1000);
    else
      e->requests++;
  }
  if(wait)
    *log_now = log_due(e, now);
  pthread_mutex_unlock(&t->mu);
  return wait;
}

int http_clients_auth_failed(struct http_clients *t, const unsigned char *key,
                             const struct http_limits *lim, long long now)
{
  struct client *e;
  int locked = 0;
  pthread_mutex_lock(&t->mu);
  e = find(t, key, 1, now);
  if(e) {
    if(!e->fail_ms || now - e->fail_ms >= lim->lockout_ms) {
      e->fail_ms = now;
      e->failures = 0;
    }
    if(++e->failures >= lim->auth_failures) {
      e->locked_until_ms = now + lim->lockout_ms;
      e->failures = 0;
      e->fail_ms = 0;
      locked = 1;
    }
  }
  pthread_mutex_unlock(&t->mu);
  return locked;
}
