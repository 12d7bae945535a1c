/* The relay engine: a scheduler thread that finds due messages in the store and a bounded
 * pool of delivery workers that route each recipient, hand it to its transport, and write
 * the per-recipient outcome (sent / captured / deferred with backoff / bounced) back. */
#include "relay/relay_int.h"
#include "lib/log.h"
#include "lib/buf.h"
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <time.h>

#define RELAY_BATCH 256
#define RELAY_MAX_WAIT_MS 60000
#define RELAY_SESSION_IDLE_MS 30000

struct relay_worker {
  struct relay *relay;
  pthread_t thread;
  unsigned seed;
  /* the upstream session kept open between messages (providers throttle logins) */
  const struct transport *t;
  char upname[128];
  void *session;
  int open;
};

struct relay {
  pthread_mutex_t mu;
  pthread_cond_t sched_cond;
  pthread_cond_t work_cond;
  pthread_rwlock_t cfg_lock;
  const struct config *cfg;
  struct store *st;
  int stopping;
  int kicked;
  pthread_t sched;
  int sched_started;
  struct relay_worker *workers;
  size_t nworkers;
  /* ids handed to workers or waiting for one; never scheduled twice */
  char (*work)[LIM_QUEUE_ID + 1];
  size_t nwork;                     /* waiting, FIFO at the front */
  char (*inflight)[LIM_QUEUE_ID + 1];
  size_t ninflight;
  size_t cap;
};

static int inflight_find(struct relay *r, const char *id)
{
  size_t i;
  for(i = 0; i < r->ninflight; i++)
    if(!strcmp(r->inflight[i], id))
      return (int)i;
  return -1;
}

void relay_kick(struct relay *r)
{
  pthread_mutex_lock(&r->mu);
  r->kicked = 1;
  pthread_cond_signal(&r->sched_cond);
  pthread_mutex_unlock(&r->mu);
}

static void cond_wait_ms(pthread_cond_t *c, pthread_mutex_t *m, long long ms)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  ts.tv_sec += ms / 1000;
  ts.tv_nsec += (ms % 1000) * 1000000L;
  if(ts.tv_nsec >= 1000000000L) {
    ts.tv_sec++;
    ts.tv_nsec -= 1000000000L;
  }
  pthread_cond_timedwait(c, m, &ts);
}

static void *sched_main(void *arg)
{
  struct relay *r = arg;
  char (*ids)[LIM_QUEUE_ID + 1] = calloc(RELAY_BATCH, sizeof(*ids));
  if(!ids)
    log_fatal("relay: out of memory");
  pthread_mutex_lock(&r->mu);
  while(!r->stopping) {
    size_t n = 0, i;
    long long now, when = -1, wait_ms = RELAY_MAX_WAIT_MS;
    int added = 0;
    r->kicked = 0;
    pthread_mutex_unlock(&r->mu);
    now = time_real_ms();
    if(store_due(r->st, now, ids, RELAY_BATCH, &n))
      log_warn("relay: cannot read the queue; will try again");
    pthread_mutex_lock(&r->mu);
    for(i = 0; i < n && r->ninflight < r->cap; i++) {
      if(inflight_find(r, ids[i]) >= 0)
        continue;
      memcpy(r->inflight[r->ninflight++], ids[i], sizeof(ids[i]));
      memcpy(r->work[r->nwork++], ids[i], sizeof(ids[i]));
      added = 1;
    }
    if(added)
      pthread_cond_broadcast(&r->work_cond);
    pthread_mutex_unlock(&r->mu);
    if(!store_next_due(r->st, &when) && when >= 0)
      wait_ms = when - time_real_ms();
    pthread_mutex_lock(&r->mu);
    /* due mail that is already in flight: wait for a worker to finish (it signals) */
    if(wait_ms <= 0)
      wait_ms = (n == RELAY_BATCH && added) ? 0 : 1000;
    if(wait_ms > RELAY_MAX_WAIT_MS)
      wait_ms = RELAY_MAX_WAIT_MS;
    if(!r->kicked && !r->stopping && wait_ms > 0)
      cond_wait_ms(&r->sched_cond, &r->mu, wait_ms);
  }
  pthread_mutex_unlock(&r->mu);
  free(ids);
  return NULL;
}

/* retry_min doubling to retry_max, with +-10% jitter so deferred mail does not come back in
 * lockstep */
static long long backoff_ms(const struct config *cfg, int attempts, unsigned *seed)
{
  long long d = cfg->retry_min * 1000LL, max = cfg->retry_max * 1000LL;
  int i;
  for(i = 1; i < attempts && d < max; i++)
    d *= 2;
  if(d > max)
    d = max;
  if(d > 10) {
    long long span = d / 5;
    d = d - span / 2 + (long long)(rand_r(seed) % (unsigned)(span + 1));
  }
  return d;
}

static void worker_close_session(struct relay_worker *w)
{
  if(w->open && w->t)
    w->t->close(w->session);
  w->open = 0;
  w->session = NULL;
  w->t = NULL;
  w->upname[0] = '\0';
}

/* Delivers the recipients of one group (same upstream) and fills their updates. */
static void deliver_group(struct relay_worker *w, const struct config *cfg,
                          const struct store_msg *m, const char *body, size_t len,
                          const struct cfg_upstream *up, struct transport_rcpt *tr, size_t n,
                          struct store_rcpt_update *upd, char (*replies)[LIM_SMTP_REPLY_LINE + 32])
{
  const struct transport *t = up ? transport_for(up->type) : NULL;
  struct smtp_reply all;
  char relayname[256] = "none";
  long long now = time_real_ms();
  int failed = 0;
  size_t i;

  memset(&all, 0, sizeof(all));
  for(i = 0; i < n; i++)
    memset(&tr[i].reply, 0, sizeof(tr[i].reply));
  if(!up) {
    smtp_reply_set(&all, 451, "4.3.5", "No route matches this recipient (check the [route] sections)");
    failed = 1;
  }
  else if(!t) {
    smtp_reply_set(&all, 451, "4.3.5", "Upstream type %s is not available in this build", up->type);
    failed = 1;
  }
  else {
    if(w->open && (w->t != t || strcmp(w->upname, up->name)))
      worker_close_session(w);
    if(!w->open) {
      if(t->open(up, &w->session, &all))
        failed = 1;
      else {
        w->open = 1;
        w->t = t;
        str_copy(w->upname, sizeof(w->upname), up->name);
      }
    }
    if(!failed) {
      t->describe(w->session, relayname, sizeof(relayname));
      if(t->send(w->session, m, body, len, tr, n, &all)) {
        failed = 1;
        worker_close_session(w);
      }
    }
  }

  for(i = 0; i < n; i++) {
    const struct smtp_reply *rep = failed ? &all : &tr[i].reply;
    const struct store_rcpt *rc = tr[i].rcpt;
    struct store_rcpt_update *u = &upd[i];
    char dsn[16], esc[LIM_LOG_FIELD * 4 + 8];
    const char *statusword;
    u->idx = rc->idx;
    u->add_attempt = 1;
    u->upstream = up ? up->name : NULL;
    if(rep->code >= 200 && rep->code < 300) {
      u->status = t ? t->delivered_status : RCPT_SENT;
    }
    else if(rep->code >= 500) {
      u->status = RCPT_BOUNCED;
    }
    else {
      u->status = RCPT_DEFERRED;
      u->next_attempt_ms = now + backoff_ms(cfg, rc->attempts + 1, &w->seed);
      if(now - m->created_ms > cfg->queue_lifetime * 1000LL)
        u->status = RCPT_BOUNCED;
    }
    if(rep->code)
      smtp_reply_str(rep, replies[i], sizeof(replies[i]));
    else
      str_copy(replies[i], sizeof(replies[i]), "451 4.3.0 Not attempted");
    if(u->status == RCPT_BOUNCED && rep->code < 500) {
      size_t l = strlen(replies[i]);
      snprintf(replies[i] + l, sizeof(replies[i]) - l, " (message expired after queue_lifetime)");
    }
    u->reply = replies[i];
    statusword = rcpt_status_name(u->status);
    if(rep->enh[0])
      str_copy(dsn, sizeof(dsn), rep->enh);
    else
      snprintf(dsn, sizeof(dsn), "%c.0.0", rep->code >= 500 ? '5' : rep->code >= 400 ? '4' : '2');
    log_info("%s: to=<%s>, relay=%s, delay=%.2f, dsn=%s, status=%s (%s)", m->id,
             log_repr(esc, sizeof(esc), rc->address, strlen(rc->address)), relayname,
             (double)(now - m->created_ms) / 1000.0, dsn, statusword, replies[i]);
  }
}

static void deliver(struct relay_worker *w, const char *id)
{
  struct relay *r = w->relay;
  const struct config *cfg;
  struct store_msg m;
  char *body = NULL;
  size_t len = 0, i, j, nupd = 0;
  struct transport_rcpt *tr = NULL;
  struct store_rcpt_update *upd = NULL;
  const struct cfg_upstream **ups = NULL;
  char (*replies)[LIM_SMTP_REPLY_LINE + 32] = NULL;
  unsigned char *done = NULL;
  long long now = time_real_ms();

  memset(&m, 0, sizeof(m));
  pthread_rwlock_rdlock(&r->cfg_lock);
  cfg = r->cfg;
  if(store_get(r->st, id, &m) || store_body(r->st, id, &body, &len))
    goto out;     /* deleted meanwhile, or a store error: the scheduler will see it again */
  tr = calloc(m.nrcpts + 1, sizeof(*tr));
  upd = calloc(m.nrcpts + 1, sizeof(*upd));
  ups = calloc(m.nrcpts + 1, sizeof(*ups));
  replies = calloc(m.nrcpts + 1, sizeof(*replies));
  done = calloc(m.nrcpts + 1, 1);
  if(!tr || !upd || !ups || !replies || !done)
    goto out;
  for(i = 0; i < m.nrcpts; i++) {
    const struct store_rcpt *rc = &m.rcpts[i];
    int due = (rc->status == RCPT_QUEUED || rc->status == RCPT_DEFERRED) && rc->next_attempt_ms <= now;
    done[i] = !due;
    if(due)
      ups[i] = route_for(cfg, m.sender, rc->address);
  }
  /* one transport call per upstream, with all of its recipients */
  for(i = 0; i < m.nrcpts; i++) {
    size_t n = 0;
    if(done[i])
      continue;
    for(j = i; j < m.nrcpts; j++) {
      if(done[j] || ups[j] != ups[i])
        continue;
      tr[n++].rcpt = &m.rcpts[j];
      done[j] = 1;
    }
    deliver_group(w, cfg, &m, body, len, ups[i], tr, n, upd + nupd, replies + nupd);
    nupd += n;
  }
  if(nupd && store_update(r->st, m.id, upd, nupd))
    log_error("%s: cannot record delivery results; the message will be tried again", m.id);
out:
  pthread_rwlock_unlock(&r->cfg_lock);
  free(tr);
  free(upd);
  free(ups);
  free(replies);
  free(done);
  free(body);
  store_msg_free(&m);
}

static void *worker_main(void *arg)
{
  struct relay_worker *w = arg;
  struct relay *r = w->relay;
  char id[LIM_QUEUE_ID + 1];
  pthread_mutex_lock(&r->mu);
  for(;;) {
    int idx;
    while(!r->stopping && !r->nwork) {
      long long t0 = time_mono_ms();
      cond_wait_ms(&r->work_cond, &r->mu, RELAY_SESSION_IDLE_MS);
      if(!r->nwork && w->open && time_mono_ms() - t0 >= RELAY_SESSION_IDLE_MS) {
        pthread_mutex_unlock(&r->mu);
        worker_close_session(w);
        pthread_mutex_lock(&r->mu);
      }
    }
    if(r->stopping)
      break;
    memcpy(id, r->work[0], sizeof(id));
    memmove(r->work[0], r->work[1], (r->nwork - 1) * sizeof(r->work[0]));
    r->nwork--;
    pthread_mutex_unlock(&r->mu);
    deliver(w, id);
    pthread_mutex_lock(&r->mu);
    idx = inflight_find(r, id);
    if(idx >= 0)
      memcpy(r->inflight[idx], r->inflight[--r->ninflight], sizeof(r->inflight[0]));
    pthread_cond_signal(&r->sched_cond);
  }
  pthread_mutex_unlock(&r->mu);
  worker_close_session(w);
  return NULL;
}

int relay_start(const struct config *cfg, struct store *st, struct relay **out)
{
  struct relay *r = calloc(1, sizeof(*r));
  pthread_condattr_t ca;
  size_t i;
  if(!r)
    return -1;
  r->cfg = cfg;
  r->st = st;
  r->nworkers = cfg->delivery_workers > 0 ? (size_t)cfg->delivery_workers : 1;
  r->cap = RELAY_BATCH + r->nworkers;
  r->work = calloc(r->cap, sizeof(*r->work));
  r->inflight = calloc(r->cap, sizeof(*r->inflight));
  r->workers = calloc(r->nworkers, sizeof(*r->workers));
  if(!r->work || !r->inflight || !r->workers) {
    free(r->work);
    free(r->inflight);
    free(r->workers);
    free(r);
    return -1;
  }
  pthread_mutex_init(&r->mu, NULL);
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&r->sched_cond, &ca);
  pthread_cond_init(&r->work_cond, &ca);
  pthread_condattr_destroy(&ca);
  pthread_rwlock_init(&r->cfg_lock, NULL);
  for(i = 0; i < r->nworkers; i++) {
    r->workers[i].relay = r;
    r->workers[i].seed = (unsigned)(time_real_ms() ^ (long long)(i * 7919));
    if(pthread_create(&r->workers[i].thread, NULL, worker_main, &r->workers[i]))
      log_fatal("relay: cannot start delivery worker");
  }
  if(pthread_create(&r->sched, NULL, sched_main, r))
    log_fatal("relay: cannot start the scheduler");
  r->sched_started = 1;
  *out = r;
  return 0;
}

const struct config *relay_reload(struct relay *r, const struct config *cfg)
{
  const struct config *old;
  pthread_rwlock_wrlock(&r->cfg_lock);
  old = r->cfg;
  r->cfg = cfg;
  pthread_rwlock_unlock(&r->cfg_lock);
  relay_kick(r);
  return old;
}

void relay_stop(struct relay *r)
{
  size_t i;
  if(!r)
    return;
  pthread_mutex_lock(&r->mu);
  r->stopping = 1;
  pthread_cond_broadcast(&r->sched_cond);
  pthread_cond_broadcast(&r->work_cond);
  pthread_mutex_unlock(&r->mu);
  if(r->sched_started)
    pthread_join(r->sched, NULL);
  for(i = 0; i < r->nworkers; i++)
    pthread_join(r->workers[i].thread, NULL);
  pthread_rwlock_destroy(&r->cfg_lock);
  pthread_cond_destroy(&r->sched_cond);
  pthread_cond_destroy(&r->work_cond);
  pthread_mutex_destroy(&r->mu);
  free(r->work);
  free(r->inflight);
  free(r->workers);
  free(r);
}
