/* The thread pool of lib/pool.h: one mutex, one condition for idle threads, and a hand-off
 * slot per item so an item never waits behind another. */
#include "lib/pool.h"
#include <pthread.h>
#include <stdlib.h>
#include <errno.h>
#include <time.h>

struct pool_item {
  void (*fn)(void *);
  void *arg;
  struct pool_item *next;
};

/* One per thread, handed to it at creation; the thread links it into dead as its last act so
 * that somebody joins it: a detached thread may still be running its exit path (thread-local
 * destructors, OpenSSL's per-thread state) after pool_free returned and the process ended. */
struct pool_thr {
  pthread_t th;
  struct pool *p;
  struct pool_thr *next;
};

struct pool {
  pthread_mutex_t mu;
  pthread_cond_t work;         /* idle threads wait here */
  pthread_cond_t gone;         /* pool_free waits here for threads to end */
  struct pool_item *head, **tailp;
  struct pool_thr *dead;       /* ended threads not joined yet */
  size_t max, threads, idle;
  size_t stack;
  long long idle_ms;
  int stopping;
};

/* Joins the threads that have ended; called without p->mu held. */
static void pool_reap(struct pool_thr *t)
{
  while(t) {
    struct pool_thr *next = t->next;
    pthread_join(t->th, NULL);
    free(t);
    t = next;
  }
}

static struct pool_thr *pool_take_dead(struct pool *p)
{
  struct pool_thr *t = p->dead;
  p->dead = NULL;
  return t;
}

static void *pool_thread(void *arg)
{
  struct pool_thr *self = arg;
  struct pool *p = self->p;
  pthread_mutex_lock(&p->mu);
  for(;;) {
    struct pool_item *it;
    while(!p->head && !p->stopping) {
      int rc;
      p->idle++;
      if(p->idle_ms > 0) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_sec += p->idle_ms / 1000;
        ts.tv_nsec += (p->idle_ms % 1000) * 1000000L;
        if(ts.tv_nsec >= 1000000000L) {
          ts.tv_sec++;
          ts.tv_nsec -= 1000000000L;
        }
        rc = pthread_cond_timedwait(&p->work, &p->mu, &ts);
      }
      else
        rc = pthread_cond_wait(&p->work, &p->mu);
      p->idle--;
      if(rc == ETIMEDOUT && !p->head)
        goto out;
    }
    if(!p->head)
      break;                      /* stopping and nothing left */
    it = p->head;
    p->head = it->next;
    if(!p->head)
      p->tailp = &p->head;
    pthread_mutex_unlock(&p->mu);
    it->fn(it->arg);
    free(it);
    pthread_mutex_lock(&p->mu);
    if(p->threads > p->max)
      goto out;                   /* max was lowered by a reload */
  }
out:
  p->threads--;
  self->next = p->dead;
  p->dead = self;
  pthread_cond_broadcast(&p->gone);
  pthread_mutex_unlock(&p->mu);
  return NULL;
}

struct pool *pool_new(size_t max, size_t stack, long long idle_ms)
{
  struct pool *p = calloc(1, sizeof(*p));
  pthread_condattr_t ca;
  if(!p)
    return NULL;
  pthread_mutex_init(&p->mu, NULL);
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&p->work, &ca);
  pthread_condattr_destroy(&ca);
  pthread_cond_init(&p->gone, NULL);
  p->tailp = &p->head;
  p->max = max ? max : 1;
  p->stack = stack;
  p->idle_ms = idle_ms;
  return p;
}

int pool_run(struct pool *p, void (*fn)(void *), void *arg)
{
  struct pool_item *it = malloc(sizeof(*it));
  size_t queued = 0;
  struct pool_item *q;
  struct pool_thr *dead;
  if(!it)
    return -1;
  it->fn = fn;
  it->arg = arg;
  it->next = NULL;
  pthread_mutex_lock(&p->mu);
  dead = pool_take_dead(p);
  for(q = p->head; q; q = q->next)
    queued++;
  if(p->stopping || (queued >= p->idle && p->threads >= p->max))
    goto refuse;
  if(queued >= p->idle) {
    pthread_attr_t attr;
    struct pool_thr *t = malloc(sizeof(*t));
    int rc;
    if(!t)
      goto refuse;
    t->p = p;
    t->next = NULL;
    pthread_attr_init(&attr);
    if(p->stack)
      pthread_attr_setstacksize(&attr, p->stack);
    rc = pthread_create(&t->th, &attr, pool_thread, t);
    pthread_attr_destroy(&attr);
    if(rc) {
      free(t);
      goto refuse;
    }
    p->threads++;
  }
  *p->tailp = it;
  p->tailp = &it->next;
  pthread_cond_signal(&p->work);
  pthread_mutex_unlock(&p->mu);
  pool_reap(dead);
  return 0;
refuse:
  pthread_mutex_unlock(&p->mu);
  pool_reap(dead);
  free(it);
  return -1;
}

void pool_set_max(struct pool *p, size_t max)
{
  pthread_mutex_lock(&p->mu);
  p->max = max ? max : 1;
  pthread_mutex_unlock(&p->mu);
}

void pool_free(struct pool *p)
{
  if(!p)
    return;
  pthread_mutex_lock(&p->mu);
  p->stopping = 1;
  pthread_cond_broadcast(&p->work);
  while(p->threads)
    pthread_cond_wait(&p->gone, &p->mu);
  pthread_mutex_unlock(&p->mu);
  pool_reap(pool_take_dead(p));
  pthread_cond_destroy(&p->work);
  pthread_cond_destroy(&p->gone);
  pthread_mutex_destroy(&p->mu);
  free(p);
}
