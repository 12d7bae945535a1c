/* The relay engine: a scheduler thread that finds due messages in the store and a bounded
 * pool of delivery workers that route each recipient, hand it to its transport, and write
 * the per-recipient outcome (sent / captured / deferred with backoff / bounced with a DSN /
 * held after a refused login) back; rate limits and holds are kept per upstream. */
#include "relay/relay_int.h"
#include "auth/auth.h"
#include "lib/log.h"
#include "global/metrics.h"
#include "lib/buf.h"
#include "lib/conn.h"
#include "tls/tls.h"
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <time.h>

#define RELAY_BATCH 256
/* the longest sleep of the scheduler: held mail and delay warnings have no due time of their
 * own, so the sweep looks this often */
#define RELAY_MAX_WAIT_MS 2000
#define RELAY_SESSION_IDLE_MS 30000
/* Passes over the queue are at least this far apart: under load, one pass picks up the
 * messages of many sessions instead of one wake-up, query and hand-off per message. */
#define RELAY_PASS_MIN_MS 10
/* A delivery result the store refused is written again after 100 ms, doubling up to this. */
#define RELAY_RESULT_RETRY_MAX_MS 5000

/* A delivery result the store refused (disk full, an I/O error, a lock held elsewhere): kept
 * with its strings until the store takes it. Its message stays in flight meanwhile, so it is
 * not handed out (and sent) again. */
struct kept_result {
  char id[LIM_QUEUE_ID + 1];
  struct store_rcpt_update *upd;    /* reply, upstream and held_by owned */
  size_t n;
  long long next_ms;                /* monotonic: when to write it again */
  long long delay_ms;
  struct kept_result *next;
};

struct relay_worker {
  struct relay *relay;
  pthread_t thread;
  unsigned seed;
  /* the upstream session kept open between messages (providers throttle logins) */
  const struct transport *t;
  char upname[128];
  void *session;
  int open;
  unsigned gen;                     /* the configuration generation the session was opened in */
};

struct relay {
  pthread_mutex_t mu;
  pthread_cond_t sched_cond;
  pthread_cond_t work_cond;
  /* the configuration: each delivery keeps the snapshot it started with, and a reload only
   * swaps the pointer (under mu), so it never waits for a delivery */
  struct relay_conf *conf;
  struct store *st;
  int stopping;
  int kicked;
  /* the scheduler waits for a kick (not just out its minimum time between passes): only then
   * is a kick worth a wake-up; during the minimum wait the next pass comes anyway */
  int sched_wakeable;
  pthread_t sched;
  int sched_started;
  struct relay_worker *workers;
  size_t nworkers;
  size_t nrunning;                  /* workers that have not ended yet (relay_stop waits) */
  unsigned gen;                     /* bumped at each reload: sessions of older ones close */
  struct upstates *ups;
  /* ids handed to workers or waiting for one; never scheduled twice */
  char (*work)[LIM_QUEUE_ID + 1];
  size_t nwork;                     /* waiting, FIFO at the front */
  char (*inflight)[LIM_QUEUE_ID + 1];
  size_t ninflight;
  size_t cap;
  /* results the store refused, under mu; while there are any, deliveries pause */
  struct kept_result *kept;
  size_t nkept;
  long long failing_since_ms;       /* monotonic; 0: the store takes results */
  size_t kept_total;                /* results kept since writes started failing */
  /* the sweep's walks (scheduler thread only): where each goes on from, and when they last
   * went back to the oldest waiting message (monotonic; 0: not yet) */
  struct store_cursor sweep_at[2];
  long long sweep_reset_ms;
};

/* A configuration snapshot, reference-counted under relay.mu: one reference while it is the
 * current one, one per delivery, probe or sweep using it. When the last goes, release(arg)
 * gives the configuration back to whoever owns it (the daemon's generation). */
struct relay_conf {
  const struct config *cfg;
  unsigned refs;
  relay_release_fn release;
  void *arg;
};

static const struct config *conf_get(struct relay *r, struct relay_conf **c)
{
  pthread_mutex_lock(&r->mu);
  *c = r->conf;
  (*c)->refs++;
  pthread_mutex_unlock(&r->mu);
  return (*c)->cfg;
}

static void conf_put(struct relay *r, struct relay_conf *c)
{
  relay_release_fn release = NULL;
  void *arg = NULL;
  const struct config *gone = NULL;
  pthread_mutex_lock(&r->mu);
  if(--c->refs == 0) {
    release = c->release;
    arg = c->arg;
    gone = c->cfg;
    free(c);
  }
  pthread_mutex_unlock(&r->mu);
  if(gone)
    dkim_signers_unshare(gone);
  if(release)
    release(arg);       /* outside mu: it frees a whole configuration */
}

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
  if(r->sched_wakeable)
    pthread_cond_signal(&r->sched_cond);
  pthread_mutex_unlock(&r->mu);
}

size_t relay_inflight(struct relay *r)
{
  size_t n;
  pthread_mutex_lock(&r->mu);
  n = r->ninflight;
  pthread_mutex_unlock(&r->mu);
  return n;
}

size_t relay_unrecorded(struct relay *r)
{
  size_t n;
  pthread_mutex_lock(&r->mu);
  n = r->nkept;
  pthread_mutex_unlock(&r->mu);
  return n;
}

/* Under mu: the message leaves the in-flight set (the scheduler may hand it out again). */
static void inflight_drop(struct relay *r, const char *id)
{
  int idx = inflight_find(r, id);
  if(idx >= 0)
    memcpy(r->inflight[idx], r->inflight[--r->ninflight], sizeof(r->inflight[0]));
}

static void kept_free(struct kept_result *k)
{
  size_t i;
  if(!k)
    return;
  for(i = 0; k->upd && i < k->n; i++) {
    free((char *)k->upd[i].reply);
    free((char *)k->upd[i].upstream);
    free((char *)k->upd[i].held_by);
  }
  free(k->upd);
  free(k);
}

static int dup_opt(const char *s, const char **out)
{
  *out = NULL;
  if(!s)
    return 0;
  *out = str_dup_n(s, strlen(s));
  return *out ? 0 : -1;
}

static void results_written(struct relay *r, const struct store_rcpt_update *upd, size_t n);
static void count_results(const struct store_rcpt_update *upd, size_t n);
static void expired_reply(char *out, size_t outsz, const char *why);

/* Keeps a result the store refused; 0 kept, -1 out of memory (then it is lost, as before: the
 * message may be sent again). Logs once when the store starts refusing. */
static int result_keep(struct relay *r, const char *id, const struct store_rcpt_update *upd,
                       size_t n)
{
  struct kept_result *k = calloc(1, sizeof(*k));
  size_t i;
  int bad = !k || !(k->upd = calloc(n, sizeof(*upd)));
  for(i = 0; !bad && i < n; i++) {
    k->upd[i] = upd[i];
    k->n = i + 1;
    bad = dup_opt(upd[i].reply, &k->upd[i].reply) ||
          dup_opt(upd[i].upstream, &k->upd[i].upstream) ||
          dup_opt(upd[i].held_by, &k->upd[i].held_by);
  }
  if(bad) {
    kept_free(k);
    return -1;
  }
  str_copy(k->id, sizeof(k->id), id);
  k->delay_ms = 100;
  k->next_ms = time_mono_ms() + k->delay_ms;
  pthread_mutex_lock(&r->mu);
  k->next = r->kept;
  r->kept = k;
  r->nkept++;
  r->kept_total++;
  if(!r->failing_since_ms) {
    size_t w, keepw = 0;
    r->failing_since_ms = time_mono_ms();
    /* messages handed out but not started yet go back to the queue (login probes stay) */
    for(w = 0; w < r->nwork; w++) {
      if(r->work[w][0] == '#')
        memcpy(r->work[keepw++], r->work[w], sizeof(r->work[0]));
      else
        inflight_drop(r, r->work[w]);
    }
    r->nwork = keepw;
    log_error("relay: the store refuses delivery results (see the store error above; free "
              "space in data_dir); they are kept in memory and written again, their messages "
              "are not sent again, and deliveries pause until the store takes them");
  }
  metrics_results_unrecorded((long long)r->nkept);
  pthread_mutex_unlock(&r->mu);
  return 0;
}

/* Writes the kept results that are due again (the scheduler, without mu). Returns how long
 * until the next one is due, or -1 when none is kept. */
static long long results_retry(struct relay *r)
{
  struct kept_result *due = NULL, **pp, *k, *next;
  long long now = time_mono_ms(), wake = -1;
  pthread_mutex_lock(&r->mu);
  for(pp = &r->kept; (k = *pp);) {
    if(k->next_ms <= now) {
      *pp = k->next;
      k->next = due;
      due = k;
    }
    else
      pp = &k->next;
  }
  pthread_mutex_unlock(&r->mu);
  for(k = due; k; k = next) {
    int result = store_update(r->st, k->id, k->upd, k->n);
    next = k->next;
    pthread_mutex_lock(&r->mu);
    if(result == STORE_OK || result == STORE_NOTFOUND) {
      /* written, or the message was deleted meanwhile: nothing left to record */
      r->nkept--;
      inflight_drop(r, k->id);
      pthread_mutex_unlock(&r->mu);
      if(result == STORE_OK)
        results_written(r, k->upd, k->n);
      kept_free(k);
      continue;
    }
    k->delay_ms = k->delay_ms * 2 > RELAY_RESULT_RETRY_MAX_MS ? RELAY_RESULT_RETRY_MAX_MS
                                                               : k->delay_ms * 2;
    k->next_ms = time_mono_ms() + k->delay_ms;
    k->next = r->kept;
    r->kept = k;
    pthread_mutex_unlock(&r->mu);
  }
  pthread_mutex_lock(&r->mu);
  for(k = r->kept; k; k = k->next)
    if(wake < 0 || k->next_ms - now < wake)
      wake = k->next_ms - now > 0 ? k->next_ms - now : 1;
  if(!r->kept && r->failing_since_ms) {
    log_warn("relay: the store takes delivery results again after %.1f s; %zu result(s) kept "
             "meanwhile are written and deliveries go on", (time_mono_ms() -
             r->failing_since_ms) / 1000.0, r->kept_total);
    r->failing_since_ms = 0;
    r->kept_total = 0;
  }
  metrics_results_unrecorded((long long)r->nkept);
  pthread_mutex_unlock(&r->mu);
  return wake;
}

/* Mail that waits where no delivery pass looks: recipients held after a refused login expire
 * at queue_lifetime like any other (a DSN, then bounced), and senders of mail older than
 * delay_warning hear of it once. Runs in the scheduler, at most once a second. Each walks the
 * messages in the order they came, from where it stopped, up to its cutoff: a message is read
 * once as it crosses it, so a queue of 100,000 deferred messages costs nothing per second. */
#define SWEEP_BATCH 64
#define SWEEP_WALK_MAX 4096          /* messages one sweep walks at most, per walk */
/* How often the walks go back to the oldest waiting message: a message held by hand is
 * passed by, and may be released (and held again after a refused login) long after. */
#define SWEEP_RESET_MS 3600000LL

/* The reply recorded for a recipient that waited past queue_lifetime: the expiry is its
 * status (5.4.7 in the DSN), the reason it waited follows. */
static void expired_reply(char *out, size_t outsz, const char *why)
{
  size_t l;
  str_copy(out, outsz, "451 4.4.7 Message expired after queue_lifetime (");
  l = strlen(out);
  str_copy(out + l, outsz - l, why);
  l = strlen(out);
  str_copy(out + l, outsz - l, ")");
}
/* 1 when nothing of the message is left for the sweep: bounced, deleted meanwhile, or only
 * what a delivery or the operator ends; 0 when it must be looked at again. */
static int sweep_expire(struct relay *r, const struct config *cfg, const char *id,
                        long long now)
{
  struct store_msg m;
  struct store_rcpt_update *upd = NULL;
  char (*replies)[LIM_SMTP_REPLY_LINE + 64] = NULL, dsn[LIM_QUEUE_ID + 1];
  char esc[LIM_LOG_FIELD * 4 + 8];
  char *body = NULL;
  size_t len = 0, i, n = 0;
  int result, due = 0, done = 0;
  memset(&m, 0, sizeof(m));
  result = store_get(r->st, id, &m);
  if(!result)
    result = store_body(r->st, id, &body, &len);
  if(result) {
    /* gone, or a stored copy the database reports damaged: the delivery sets that one aside
     * and says so; waiting for it here would hold up every message behind it */
    done = result == STORE_NOTFOUND || result == STORE_DAMAGED;
    goto out;
  }
  upd = calloc(m.nrcpts + 1, sizeof(*upd));
  replies = calloc(m.nrcpts + 1, sizeof(*replies));
  if(!upd || !replies)
    goto out;
  for(i = 0; i < m.nrcpts; i++) {
    const struct store_rcpt *rc = &m.rcpts[i];
    /* a hold by hand is the operator's to end; what is due now, its delivery bounces (and
     * until it has, the walk comes back here) */
    if((rc->status == RCPT_QUEUED || rc->status == RCPT_DEFERRED) && rc->next_attempt_ms <= now)
      due = 1;
    if(rc->status == RCPT_HELD ? !rc->held_by
       : (rc->status != RCPT_QUEUED && rc->status != RCPT_DEFERRED) ||
         rc->next_attempt_ms <= now)
      continue;
    upd[n].idx = rc->idx;
    upd[n].status = RCPT_BOUNCED;
    upd[n].upstream = rc->status == RCPT_HELD ? rc->held_by : rc->upstream;
    expired_reply(replies[n], sizeof(replies[n]),
                  rc->last_reply ? rc->last_reply
                  : rc->status == RCPT_HELD ? "held: the upstream refused the login"
                  : "waiting for the rate limit of the upstream");
    upd[n].reply = replies[n];
    log_repr(esc, sizeof(esc), rc->address, strlen(rc->address));
    log_info("%s: to=<%s>, relay=%s, delay=%.2f, dsn=5.4.7, status=bounced (%s)", m.id,
             esc, upd[n].upstream ? upd[n].upstream : "none",
             (double)(now - m.created_ms) / 1000.0, replies[n]);
    n++;
  }
  if(!n) {
    done = !due;
    goto out;
  }
  /* the DSN first: a crash in between sends it twice, never zero times */
  if(dsn_bounce(r->st, cfg, &m, body, len, upd, n, dsn))
    goto out;
  if(dsn[0])
    log_info("%s: sender non-delivery notification: %s", m.id, dsn);
  if(!store_update(r->st, m.id, upd, n)) {
    count_results(upd, n);
    done = !due;
  }
out:
  free(upd);
  free(replies);
  free(body);
  store_msg_free(&m);
  return done;
}

/* 1 when the sender has been told (or the message is gone), 0 to look again. */
static int sweep_delay_warn(struct relay *r, const struct config *cfg, const char *id)
{
  struct store_msg m;
  struct store_rcpt_update *upd = NULL;
  char dsn[LIM_QUEUE_ID + 1];
  char *body = NULL;
  size_t len = 0, i, n = 0;
  int result, done = 0;
  memset(&m, 0, sizeof(m));
  result = store_get(r->st, id, &m);
  if(!result)
    result = store_body(r->st, id, &body, &len);
  if(result) {
    /* gone, or a stored copy the database reports damaged: the delivery sets that one aside
     * and says so; waiting for it here would hold up every message behind it */
    done = result == STORE_NOTFOUND || result == STORE_DAMAGED;
    goto out;
  }
  upd = calloc(m.nrcpts + 1, sizeof(*upd));
  if(!upd)
    goto out;
  for(i = 0; i < m.nrcpts; i++) {
    const struct store_rcpt *rc = &m.rcpts[i];
    if(rc->status != RCPT_QUEUED && rc->status != RCPT_DEFERRED && rc->status != RCPT_HELD)
      continue;
    upd[n].idx = rc->idx;
    upd[n].status = rc->status;
    upd[n].upstream = rc->upstream;
    upd[n].reply = rc->last_reply;
    n++;
  }
  if(n && dsn_delay(r->st, cfg, &m, body, len, upd, n, dsn))
    goto out;                 /* the store refused it: the next sweep tries again */
  if(n && dsn[0]) {
    log_info("%s: sender delay notification: %s", m.id, dsn);
    relay_kick(r);
  }
  done = !store_delay_warned(r->st, m.id);
out:
  free(upd);
  free(body);
  store_msg_free(&m);
  return done;
}

/* A message a worker has (or will have) in hand is left to its delivery. */
static int sweep_busy(struct relay *r, const char *id)
{
  int busy;
  pthread_mutex_lock(&r->mu);
  busy = inflight_find(r, id) >= 0;
  pthread_mutex_unlock(&r->mu);
  return busy;
}

/* Walks one kind of overdue mail from where it stopped to cutoff; stops at a message it could
 * not deal with (in flight, due for a delivery, the store refused), which the next sweep
 * meets first again. */
static void sweep_walk(struct relay *r, const struct config *cfg, enum store_overdue which,
                       long long cutoff, long long now)
{
  struct store_overdue_row rows[SWEEP_BATCH];
  struct store_cursor *at = &r->sweep_at[which];
  size_t n = 0, i, walked = 0;
  while(walked < SWEEP_WALK_MAX) {
    if(store_overdue(r->st, which, at, cutoff, rows, SWEEP_BATCH, &n) || !n)
      return;
    for(i = 0; i < n; i++) {
      if(rows[i].overdue) {
        int done = which == STORE_OVERDUE_EXPIRED
                   ? !sweep_busy(r, rows[i].id) && sweep_expire(r, cfg, rows[i].id, now)
                   : sweep_delay_warn(r, cfg, rows[i].id);
        if(!done)
          return;
      }
      at->ms = rows[i].created_ms;
      str_copy(at->id, sizeof(at->id), rows[i].id);
    }
    walked += n;
    if(n < SWEEP_BATCH)
      return;
  }
}

static void sweep(struct relay *r)
{
  struct relay_conf *conf;
  const struct config *cfg;
  long long now = time_real_ms();
  cfg = conf_get(r, &conf);
  if(!r->sweep_reset_ms || time_mono_ms() - r->sweep_reset_ms >= SWEEP_RESET_MS) {
    struct store_counts c;
    if(!store_counts_pending(r->st, &c)) {
      /* a minute back: mail accepted while this was read has an older time than now */
      long long from = (c.oldest_unfinished_ms >= 0 && c.oldest_unfinished_ms < now ?
                        c.oldest_unfinished_ms : now) - 60000;
      int k;
      for(k = 0; k < 2; k++) {
        r->sweep_at[k].ms = from;
        r->sweep_at[k].id[0] = '\0';
      }
      r->sweep_reset_ms = time_mono_ms();
    }
  }
  if(r->sweep_reset_ms) {
    sweep_walk(r, cfg, STORE_OVERDUE_EXPIRED, now - cfg->queue_lifetime * 1000LL, now);
    if(cfg->delay_warning > 0)
      sweep_walk(r, cfg, STORE_OVERDUE_UNWARNED, now - cfg->delay_warning * 1000LL, now);
  }
  conf_put(r, conf);
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
  long long last_pass = 0, last_sweep = 0;
  pthread_mutex_lock(&r->mu);
  while(!r->stopping) {
    size_t n = 0, i;
    long long now, when = -1, wait_ms = RELAY_MAX_WAIT_MS, probe_when = -1;
    long long since = time_mono_ms() - last_pass;
    size_t added = 0;
    long long kept_wake;
    if(since < RELAY_PASS_MIN_MS) {
      cond_wait_ms(&r->sched_cond, &r->mu, RELAY_PASS_MIN_MS - since);
      continue;
    }
    last_pass = time_mono_ms();
    r->kicked = 0;
    pthread_mutex_unlock(&r->mu);
    /* while the store refuses results, nothing new goes out: each delivery would only add
     * one more result to keep (and the store is what would fail next) */
    kept_wake = r->nkept ? results_retry(r) : -1;
    if(kept_wake >= 0) {
      pthread_mutex_lock(&r->mu);
      if(!r->stopping) {
        r->sched_wakeable = 1;
        cond_wait_ms(&r->sched_cond, &r->mu, kept_wake);
        r->sched_wakeable = 0;
      }
      continue;
    }
    if(time_mono_ms() - last_sweep >= 1000) {
      last_sweep = time_mono_ms();
      sweep(r);
    }
    now = time_real_ms();
    if(store_due(r->st, now, ids, RELAY_BATCH, &n))
      log_warn("relay: cannot read the queue; will try again (see the store error above)");
    pthread_mutex_lock(&r->mu);
    for(i = 0; i < n && r->ninflight < r->cap; i++) {
      if(inflight_find(r, ids[i]) >= 0)
        continue;
      memcpy(r->inflight[r->ninflight++], ids[i], sizeof(ids[i]));
      memcpy(r->work[r->nwork++], ids[i], sizeof(ids[i]));
      added++;
    }
    /* held upstreams whose login is due for another try */
    for(;;) {
      size_t idx;
      long long wake;
      if(r->ninflight >= r->cap || !upstate_probe_next(r->ups, now, &idx, &wake)) {
        if(r->ninflight < r->cap && wake >= 0)
          probe_when = wake;
        break;
      }
      snprintf(r->inflight[r->ninflight++], LIM_QUEUE_ID + 1, "#%zu", idx);
      snprintf(r->work[r->nwork++], LIM_QUEUE_ID + 1, "#%zu", idx);
      added++;
    }
    /* one idle worker per new job: a broadcast for a single message woke every worker, and
     * all but one went back to sleep */
    if(added >= r->nworkers)
      pthread_cond_broadcast(&r->work_cond);
    else
      for(i = 0; i < added; i++)
        pthread_cond_signal(&r->work_cond);
    pthread_mutex_unlock(&r->mu);
    if(!store_next_due(r->st, &when) && when >= 0)
      wait_ms = when - time_real_ms();
    if(probe_when >= 0 && probe_when - time_real_ms() < wait_ms)
      wait_ms = probe_when - time_real_ms() > 0 ? probe_when - time_real_ms() : 1;
    pthread_mutex_lock(&r->mu);
    /* due mail that is already in flight: wait for a worker to finish (it signals) */
    if(wait_ms <= 0)
      wait_ms = (n == RELAY_BATCH && added) ? 0 : 1000;
    if(wait_ms > RELAY_MAX_WAIT_MS)
      wait_ms = RELAY_MAX_WAIT_MS;
    if(!r->kicked && !r->stopping && wait_ms > 0) {
      r->sched_wakeable = 1;
      cond_wait_ms(&r->sched_cond, &r->mu, wait_ms);
      r->sched_wakeable = 0;
    }
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

/* A successful login to up: if it was held, its mail goes out again. */
static void login_worked(struct relay *r, const char *name)
{
  size_t released = 0;
  if(!upstate_login_ok(r->ups, name))
    return;
  if(store_release_upstream(r->st, name, &released))
    log_error("upstream %s: login works again, but its held mail could not be released; "
              "use posternctl queue release", name);
  else
    log_info("upstream %s: login works again; released %zu held recipient(s)", name, released);
  relay_kick(r);
}

/* delivery latency wants finer steps than time_mono_ms() */
static long long mono_us(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void login_refused(struct relay *r, const struct config *cfg, const char *name,
                          const struct smtp_reply *rep)
{
  char text[LIM_SMTP_REPLY_LINE + 32], esc[LIM_LOG_FIELD * 4 + 8];
  metrics_auth_failure(METRICS_SIDE_UPSTREAM);
  smtp_reply_str(rep, text, sizeof(text));
  log_repr(esc, sizeof(esc), text, strlen(text));
  if(upstate_login_failed(r->ups, name, text, time_real_ms(), cfg->retry_min * 1000LL,
                          cfg->retry_max * 1000LL))
    log_error("ALARM upstream %s: authentication failed (%s): its mail is held, not bounced; "
              "fix username and password_file (or [oauth2]) of [upstream %s] and send SIGHUP: it goes "
              "out by itself after the next successful login", name, esc, name);
  else
    log_warn("upstream %s: login still refused (%s); its mail stays held until the credentials of "
             "[upstream %s] are fixed (then SIGHUP)", name, esc, name);
}

static int is_throttle_reply(const struct smtp_reply *rep)
{
  return rep->code >= 400 && rep->code < 500 && !strncmp(rep->enh, "4.7.", 4);
}

enum group_mode { GROUP_TRIED, GROUP_RATE_WAIT, GROUP_HELD };

/* Delivers the recipients of one group (same upstream) and fills their updates. */
static void deliver_group(struct relay_worker *w, const struct config *cfg,
                          const struct store_msg *m, const char *body, size_t len,
                          const struct cfg_upstream *up, struct transport_rcpt *tr, size_t n,
                          struct store_rcpt_update *upd, char (*replies)[LIM_SMTP_REPLY_LINE + 32],
                          int may_fall_back);

/* fallback = OTHER: the recipients the primary cannot take now (down, 4xx, held) are tried
 * there at once instead of waiting; moved to the end of tr, the count that stays is returned. */
static size_t fall_back(struct relay_worker *w, const struct config *cfg,
                        const struct store_msg *m, const char *body, size_t len,
                        const struct cfg_upstream *up, int all_failed, const char *why,
                        struct transport_rcpt *tr, size_t n, struct store_rcpt_update *upd,
                        char (*replies)[LIM_SMTP_REPLY_LINE + 32])
{
  const struct cfg_upstream *fb = up->fallback ? config_upstream(cfg, up->fallback) : NULL;
  size_t keep = 0, i;
  char text[LIM_SMTP_REPLY_LINE + 32], esc[LIM_LOG_FIELD * 4 + 8];
  if(!fb || fb == up)
    return n;
  for(i = 0; i < n; i++) {
    int code = tr[i].reply.code;
    if(!all_failed && (code < 400 || code >= 500) && code) {
      struct transport_rcpt tmp = tr[keep];
      tr[keep++] = tr[i];
      tr[i] = tmp;
    }
  }
  for(i = keep; i < n; i++) {
    log_repr(esc, sizeof(esc), tr[i].rcpt->address, strlen(tr[i].rcpt->address));
    log_info("%s: to=<%s>, upstream %s cannot take it now (%s); trying its fallback %s", m->id,
             esc, up->name, why ? why : smtp_reply_str(&tr[i].reply, text, sizeof(text)),
             fb->name);
  }
  if(keep < n)
    deliver_group(w, cfg, m, body, len, fb, tr + keep, n - keep, upd + keep, replies + keep, 0);
  return keep;
}

static void deliver_group(struct relay_worker *w, const struct config *cfg,
                          const struct store_msg *m, const char *body, size_t len,
                          const struct cfg_upstream *up, struct transport_rcpt *tr, size_t n,
                          struct store_rcpt_update *upd, char (*replies)[LIM_SMTP_REPLY_LINE + 32],
                          int may_fall_back)
{
  struct relay *r = w->relay;
  const struct transport *t = up ? transport_for(up->type) : NULL;
  struct smtp_reply all;
  char relayname[256] = "none", held[LIM_SMTP_REPLY_LINE + 64];
  long long now = time_real_ms(), slot = 0;
  int failed = 0, result = TRANSPORT_OK, hold = UPSTATE_GO, by_hand = 0, throttled = 0;
  enum group_mode mode = GROUP_TRIED;
  size_t i;

  memset(&all, 0, sizeof(all));
  for(i = 0; i < n; i++) {
    memset(&tr[i].reply, 0, sizeof(tr[i].reply));
    tr[i].retry_at_ms = 0;
    tr[i].dsn_taken = 0;
    /* queued again after an attempt: released or retried by hand (the relay itself retries
     * as "deferred") */
    if(tr[i].rcpt->status == RCPT_QUEUED && tr[i].rcpt->attempts > 0)
      by_hand = 1;
  }
  if(!up) {
    smtp_reply_set(&all, 451, "4.3.5", "No route matches this recipient (check the [route] sections)");
    failed = 1;
  }
  else if(!t) {
    smtp_reply_set(&all, 451, "4.3.5", "Upstream type %s is not available in this build",
                   cfg_utype_words[up->type]);
    failed = 1;
  }
  else if((hold = upstate_hold_check(r->ups, up->name, now, by_hand, held, sizeof(held))) ==
          UPSTATE_HELD)
    mode = GROUP_HELD;
  else if((slot = upstate_rate_admit(r->ups, up, m->id, now)) > 0) {
    mode = GROUP_RATE_WAIT;
    if(hold == UPSTATE_PROBE)
      upstate_probe_abort(r->ups, up->name, 0);
  }
  else {
    long long t0 = mono_us();
    if(w->open && (w->t != t || strcmp(w->upname, up->name) || w->gen != __atomic_load_n(&r->gen, __ATOMIC_RELAXED)))
      worker_close_session(w);
    if(!w->open) {
      result = t->open(cfg, up, &w->session, &all);
      if(result)
        failed = 1;
      else {
        w->open = 1;
        w->t = t;
        w->gen = __atomic_load_n(&r->gen, __ATOMIC_RELAXED);
        str_copy(w->upname, sizeof(w->upname), up->name);
        login_worked(r, up->name);
      }
    }
    else if(hold == UPSTATE_PROBE)
      login_worked(r, up->name);     /* a session that is logged in already */
    if(!failed) {
      t->describe(w->session, relayname, sizeof(relayname));
      result = t->send(w->session, m, body, len, tr, n, &all);
      if(result) {
        failed = 1;
        worker_close_session(w);
      }
    }
    metrics_delivery_time(up->name, mono_us() - t0);
    if(result == TRANSPORT_AUTH_FAILED)
      login_refused(r, cfg, up->name, &all);
    else if(hold == UPSTATE_PROBE && failed)
      upstate_probe_abort(r->ups, up->name, now + cfg->retry_min * 1000LL);
    throttled = result == TRANSPORT_THROTTLED;
    for(i = 0; !failed && i < n; i++)
      if(is_throttle_reply(&tr[i].reply))
        throttled = 1;
    if(throttled)
      upstate_throttled(r->ups, up, now);
  }
  if(may_fall_back && up && up->fallback && mode != GROUP_RATE_WAIT) {
    char why[LIM_SMTP_REPLY_LINE + 64];
    if(mode == GROUP_HELD)
      str_copy(why, sizeof(why), held);
    else if(failed)
      smtp_reply_str(&all, why, sizeof(why));
    n = fall_back(w, cfg, m, body, len, up, mode == GROUP_HELD || failed,
                  mode == GROUP_HELD || failed ? why : NULL, tr, n, upd, replies);
  }

  for(i = 0; i < n; i++) {
    const struct smtp_reply *rep = failed ? &all : &tr[i].reply;
    const struct store_rcpt *rc = tr[i].rcpt;
    struct store_rcpt_update *u = &upd[i];
    char dsn[16], esc[LIM_LOG_FIELD * 4 + 8];
    const char *statusword;
    memset(u, 0, sizeof(*u));
    u->idx = rc->idx;
    log_repr(esc, sizeof(esc), rc->address, strlen(rc->address));
    if((mode == GROUP_RATE_WAIT || mode == GROUP_HELD) &&
       now - m->created_ms > cfg->queue_lifetime * 1000LL) {
      /* waiting for a slot or a login for longer than queue_lifetime: the sender hears */
      u->status = RCPT_BOUNCED;
      u->upstream = up->name;
      expired_reply(replies[i], sizeof(replies[i]), mode == GROUP_HELD ? held
                    : "waiting for the rate limit of the upstream");
      u->reply = replies[i];
      log_info("%s: to=<%s>, relay=%s, delay=%.2f, dsn=5.4.7, status=bounced (%s)", m->id, esc,
               up->name, (double)(now - m->created_ms) / 1000.0, replies[i]);
      continue;
    }
    if(mode == GROUP_RATE_WAIT) {
      /* over the upstream's rate: back in the queue for its slot, no attempt, no failure */
      u->status = rc->status == RCPT_DEFERRED ? RCPT_DEFERRED : RCPT_QUEUED;
      u->next_attempt_ms = slot;
      if(cfg->debug)
        log_debug("%s: to=<%s>, rate limit of upstream %s: waiting %.2f s", m->id, esc,
                  up->name, (double)(slot - now) / 1000.0);
      continue;
    }
    u->upstream = up ? up->name : NULL;
    if(mode == GROUP_HELD || result == TRANSPORT_AUTH_FAILED) {
      /* not the recipient's fault: held (not bounced) until a login to the upstream works */
      u->status = RCPT_HELD;
      u->held_by = up->name;
      u->add_attempt = mode != GROUP_HELD;
      if(mode == GROUP_HELD)
        str_copy(replies[i], sizeof(replies[i]), held);
      else
        smtp_reply_str(&all, replies[i], sizeof(replies[i]));
      u->reply = replies[i];
      log_info("%s: to=<%s>, relay=%s, delay=%.2f, status=held (%s)", m->id, esc, relayname,
               (double)(now - m->created_ms) / 1000.0, replies[i]);
      continue;
    }
    u->add_attempt = 1;
    if(rep->code >= 200 && rep->code < 300) {
      u->status = t ? t->delivered_status : RCPT_SENT;
    }
    else if(rep->code >= 500) {
      u->status = RCPT_BOUNCED;
    }
    else {
      u->status = RCPT_DEFERRED;
      u->next_attempt_ms = now + backoff_ms(cfg, rc->attempts + 1, &w->seed);
      /* the upstream named the time (HTTP 429 and its reset): sooner would be refused again;
       * but no later than retry_max, whatever it said (a reset years ahead parks mail without
       * a DSN) */
      if(!failed && tr[i].retry_at_ms > now)
        u->next_attempt_ms = tr[i].retry_at_ms < now + cfg->retry_max * 1000LL ?
                             tr[i].retry_at_ms : now + cfg->retry_max * 1000LL;
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
    log_info("%s: to=<%s>, relay=%s, delay=%.2f, dsn=%s, status=%s (%s)", m->id, esc, relayname,
             (double)(now - m->created_ms) / 1000.0, dsn, statusword, replies[i]);
  }
}

/* The outcomes just recorded, for /metrics; a recipient only waiting for the rate limit's slot
 * was not attempted and is not counted. */
static void count_results(const struct store_rcpt_update *upd, size_t n)
{
  size_t i;
  for(i = 0; i < n; i++) {
    enum metrics_result res;
    switch(upd[i].status) {
    case RCPT_SENT: res = METRICS_SENT; break;
    case RCPT_CAPTURED: res = METRICS_CAPTURED; break;
    case RCPT_BOUNCED: res = METRICS_BOUNCED; break;
    case RCPT_HELD: res = METRICS_HELD; break;
    case RCPT_DEFERRED: res = METRICS_DEFERRED; break;
    default: continue;
    }
    if(!upd[i].add_attempt && upd[i].status != RCPT_HELD)
      continue;
    metrics_rcpt_result(upd[i].upstream, res);
  }
}

/* Bounced recipients get their DSN before their status is written: a crash in between sends
 * the DSN twice, never zero times. If the DSN cannot be stored they are deferred instead. */
static void bounce_notify(struct relay_worker *w, const struct config *cfg,
                          const struct store_msg *m, const char *body, size_t len,
                          struct store_rcpt_update *upd, size_t n)
{
  char id[LIM_QUEUE_ID + 1] = "";
  size_t i, bounced = 0;
  long long now = time_real_ms();
  for(i = 0; i < n; i++)
    if(upd[i].status == RCPT_BOUNCED)
      bounced++;
  if(!bounced)
    return;
  if(!m->sender[0]) {
    log_info("%s: not sending a non-delivery notification: the sender is the null sender", m->id);
    return;
  }
  if(dsn_bounce(w->relay->st, cfg, m, body, len, upd, n, id)) {
    log_error("%s: cannot store the non-delivery notification; the bounce waits for the next "
              "attempt (see the store error above; free space in data_dir)", m->id);
    for(i = 0; i < n; i++)
      if(upd[i].status == RCPT_BOUNCED) {
        upd[i].status = RCPT_DEFERRED;
        upd[i].next_attempt_ms = now + cfg->retry_min * 1000LL;
      }
    return;
  }
  if(id[0]) {
    log_info("%s: sender non-delivery notification: %s", m->id, id);
    relay_kick(w->relay);
  }
}

/* Recipients sent that asked NOTIFY=SUCCESS from an upstream that will not report on them
 * (taken[i] 0: no DSN extension, or an HTTP API) get a "relayed" report now, before their
 * status is written (a crash in between sends it twice, never zero times). A report that
 * cannot be stored is logged, not retried: the mail itself went out. */
static void success_notify(struct relay_worker *w, const struct config *cfg,
                           const struct store_msg *m, const char *body, size_t len,
                           const struct store_rcpt_update *upd, const unsigned char *taken,
                           size_t n)
{
  struct store_rcpt_update *rel;
  char id[LIM_QUEUE_ID + 1] = "";
  size_t i, k = 0;
  if(!m->sender[0])
    return;
  rel = calloc(n + 1, sizeof(*rel));
  if(!rel) {
    log_error("%s: out of memory for the success notification", m->id);
    return;
  }
  for(i = 0; i < n; i++)
    if(upd[i].status == RCPT_SENT && !taken[i])
      rel[k++] = upd[i];
  if(k && dsn_relayed(w->relay->st, cfg, m, body, len, rel, k, id))
    log_error("%s: cannot store the success notification the sender asked for (see the store "
              "error above)", m->id);
  else if(id[0]) {
    log_info("%s: sender success notification: %s", m->id, id);
    relay_kick(w->relay);
  }
  free(rel);
}

/* After a result is on disk: /metrics, and a hold that a working login already ended. */
static void results_written(struct relay *r, const struct store_rcpt_update *upd, size_t n)
{
  size_t i;
  count_results(upd, n);
  /* a login may have worked (and released the upstream's mail) between our look at the hold
   * and the write of ours: then ours is released too, or it would wait for the next failure */
  for(i = 0; i < n; i++)
    if(upd[i].status == RCPT_HELD && upd[i].held_by && !upstate_is_held(r->ups, upd[i].held_by)) {
      store_release_upstream(r->st, upd[i].held_by, NULL);
      relay_kick(r);
    }
}

/* Is the stored copy the one accepted: its length, and its digest when one was taken? why
 * gets what differs otherwise. */
static int body_intact(const struct store_msg *m, const char *body, size_t len, char *why,
                       size_t whysz)
{
  char sha[TLS_SHA256_HEX_LEN + 1];
  if((long long)len != m->size) {
    snprintf(why, whysz, "%zu of its %lld bytes are there", len, m->size);
    return 0;
  }
  if(m->body_sha256 && m->body_sha256[0] &&
     (tls_sha256_hex(len ? body : "", len, sha) || str_casecmp_n(sha, strlen(sha), m->body_sha256))) {
    snprintf(why, whysz, "its SHA-256 digest is not the one taken when it was accepted");
    return 0;
  }
  return 1;
}

/* A message whose stored copy cannot be read would fail the same way at every pass: its
 * waiting recipients are held (a hold by hand: only the operator ends it) with the reason as
 * their last reply, which `posternctl queue` shows. Returns how many updates it filled. */
static size_t set_aside(const struct store_msg *m, const char *why,
                        struct store_rcpt_update *upd, char (*replies)[LIM_SMTP_REPLY_LINE + 32])
{
  size_t i, n = 0;
  char esc[LIM_LOG_FIELD * 4 + 8];
  log_repr(esc, sizeof(esc), why, strlen(why));
  log_error("%s: its stored copy cannot be read (%s); set aside (held): delete it, or repair "
            "it and `posternctl queue release %s`", m->id, esc, m->id);
  for(i = 0; i < m->nrcpts; i++) {
    const struct store_rcpt *rc = &m->rcpts[i];
    if(rc->status != RCPT_QUEUED && rc->status != RCPT_DEFERRED)
      continue;
    memset(&upd[n], 0, sizeof(upd[n]));
    upd[n].idx = rc->idx;
    upd[n].status = RCPT_HELD;
    snprintf(replies[n], sizeof(replies[n]), "451 4.3.0 Set aside: the stored copy of the "
             "message cannot be read (%s)", why);
    upd[n].reply = replies[n];
    n++;
  }
  return n;
}

/* Delivers the due recipients of one message. Returns 1 when its result is kept in memory
 * (the store refused it): the message then stays in flight. */
static int deliver(struct relay_worker *w, const char *id)
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
  unsigned char *done = NULL, *taken = NULL;
  struct relay_conf *conf;
  long long now = time_real_ms();
  int result, keep = 0;
  char why[160];

  memset(&m, 0, sizeof(m));
  cfg = conf_get(r, &conf);
  if(store_get(r->st, id, &m))
    goto out;     /* deleted meanwhile, or a store error: the scheduler will see it again */
  tr = calloc(m.nrcpts + 1, sizeof(*tr));
  upd = calloc(m.nrcpts + 1, sizeof(*upd));
  ups = calloc(m.nrcpts + 1, sizeof(*ups));
  replies = calloc(m.nrcpts + 1, sizeof(*replies));
  done = calloc(m.nrcpts + 1, 1);
  taken = calloc(m.nrcpts + 1, 1);
  if(!tr || !upd || !ups || !replies || !done || !taken)
    goto out;
  result = store_body(r->st, id, &body, &len);
  if(result == STORE_DAMAGED)
    str_copy(why, sizeof(why), "the database reports damage where it is stored");
  else if(result)
    goto out;     /* deleted meanwhile, or a store error: the scheduler will see it again */
  if(result || !body_intact(&m, body, len, why, sizeof(why))) {
    nupd = set_aside(&m, why, upd, replies);
    goto write;
  }
  for(i = 0; i < m.nrcpts; i++) {
    const struct store_rcpt *rc = &m.rcpts[i];
    int due = (rc->status == RCPT_QUEUED || rc->status == RCPT_DEFERRED) && rc->next_attempt_ms <= now;
    done[i] = !due;
    if(!due)
      continue;
    /* mail released to an upstream by hand goes there while that upstream exists */
    ups[i] = rc->route_to ? config_upstream(cfg, rc->route_to) : NULL;
    if(rc->route_to && !ups[i])
      log_warn("%s: %s was released to upstream %s, which is no longer configured: it is "
               "routed as usual", m.id, rc->address, rc->route_to);
    if(!ups[i])
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
    deliver_group(w, cfg, &m, body, len, ups[i], tr, n, upd + nupd, replies + nupd, 1);
    for(j = 0; j < n; j++)
      taken[nupd + j] = (unsigned char)tr[j].dsn_taken;
    nupd += n;
  }
  bounce_notify(w, cfg, &m, body, len, upd, nupd);
  success_notify(w, cfg, &m, body, len, upd, taken, nupd);
write:
  result = nupd ? store_update(r->st, m.id, upd, nupd) : STORE_OK;
  if(result == STORE_OK)
    results_written(r, upd, nupd);
  else if(result != STORE_NOTFOUND) {
    if(!result_keep(r, m.id, upd, nupd))
      keep = 1;
    else
      log_error("%s: cannot record delivery results and out of memory to keep them; the "
                "message will be tried again and may arrive twice", m.id);
  }
out:
  conf_put(r, conf);
  free(tr);
  free(upd);
  free(ups);
  free(replies);
  free(done);
  free(taken);
  free(body);
  store_msg_free(&m);
  return keep;
}

/* Tries the login of a held upstream (no message involved); on success its mail is released
 * and the session stays open for it. */
static void probe(struct relay_worker *w, size_t idx)
{
  struct relay *r = w->relay;
  const struct config *cfg;
  const struct cfg_upstream *up;
  const struct transport *t;
  struct smtp_reply rep;
  struct relay_conf *conf;
  char name[256], text[LIM_SMTP_REPLY_LINE + 32];
  int result;

  if(upstate_name(r->ups, idx, name, sizeof(name)))
    return;
  cfg = conf_get(r, &conf);
  up = config_upstream(cfg, name);
  t = up ? transport_for(up->type) : NULL;
  if(!up || !t) {
    /* gone from the configuration: its mail is routed afresh */
    login_worked(r, name);
    goto out;
  }
  worker_close_session(w);
  memset(&rep, 0, sizeof(rep));
  result = t->open(cfg, up, &w->session, &rep);
  if(!result) {
    w->open = 1;
    w->t = t;
    w->gen = __atomic_load_n(&r->gen, __ATOMIC_RELAXED);
    str_copy(w->upname, sizeof(w->upname), up->name);
    login_worked(r, name);
  }
  else if(result == TRANSPORT_AUTH_FAILED)
    login_refused(r, cfg, name, &rep);
  else {
    smtp_reply_str(&rep, text, sizeof(text));
    log_warn("upstream %s: cannot try the login now (%s); its mail stays held (check host and "
             "port of [upstream %s] and the network)", name, text, name);
    upstate_probe_abort(r->ups, name, time_real_ms() + cfg->retry_min * 1000LL);
  }
out:
  conf_put(r, conf);
}

static void *worker_main(void *arg)
{
  struct relay_worker *w = arg;
  struct relay *r = w->relay;
  char id[LIM_QUEUE_ID + 1];
  pthread_mutex_lock(&r->mu);
  for(;;) {
    int keep = 0;
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
    if(id[0] == '#')
      probe(w, (size_t)strtoul(id + 1, NULL, 10));
    else
      keep = deliver(w, id);
    pthread_mutex_lock(&r->mu);
    if(!keep)
      inflight_drop(r, id);
    /* the scheduler only needs us once the queue has drained, and only while it waits for
     * a kick (in its minimum wait between passes it comes back anyway) */
    if(!r->nwork && r->sched_wakeable)
      pthread_cond_signal(&r->sched_cond);
  }
  pthread_mutex_unlock(&r->mu);
  worker_close_session(w);
  pthread_mutex_lock(&r->mu);
  r->nrunning--;
  pthread_cond_broadcast(&r->sched_cond);     /* relay_stop waits on it */
  pthread_mutex_unlock(&r->mu);
  return NULL;
}

/* verify = none is said at every start (and reload), so nobody forgets it. */
static void warn_unverified(const struct config *cfg)
{
  size_t i;
  for(i = 0; i < cfg->nupstreams; i++) {
    const struct cfg_upstream *up = &cfg->upstreams[i];
    if(up->type == CFG_UP_SMTP && up->verify == CFG_VERIFY_NONE)
      log_warn("upstream %s: verify = none: the TLS certificate of %s is not checked; anyone "
               "on the path can read and change the mail and the password: set verify = peer (and "
               "ca_file if needed) in [upstream %s]", up->name, up->host ? up->host : "?",
               up->name);
  }
}

static int held_found(void *arg, const char *name)
{
  struct relay *r = arg;
  upstate_mark_held(r->ups, name, time_real_ms());
  log_warn("upstream %s: mail held after a refused login; trying the login again (if it is "
           "refused, fix the credentials of [upstream %s])", name, name);
  return 0;
}

int relay_start(const struct config *cfg, struct store *st, struct relay **out)
{
  struct relay *r = calloc(1, sizeof(*r));
  pthread_condattr_t ca;
  size_t i;
  if(!r)
    return -1;
  if(upstates_new(&r->ups)) {
    free(r);
    return -1;
  }
  warn_unverified(cfg);
  oauth2_start(cfg);             /* tokens are kept fresh from the start, used or not */
  r->conf = calloc(1, sizeof(*r->conf));
  if(!r->conf) {
    upstates_free(r->ups);
    free(r);
    return -1;
  }
  r->conf->cfg = cfg;
  r->conf->refs = 1;              /* the current one; its owner frees it after relay_stop */
  /* DKIM keys decoded once for all sessions; out of memory, each session makes its own */
  (void)dkim_signers_share(cfg);
  r->st = st;
  r->nworkers = cfg->delivery_workers > 0 ? (size_t)cfg->delivery_workers : 1;
  r->cap = RELAY_BATCH + r->nworkers;
  r->work = calloc(r->cap, sizeof(*r->work));
  r->inflight = calloc(r->cap, sizeof(*r->inflight));
  r->workers = calloc(r->nworkers, sizeof(*r->workers));
  if(!r->work || !r->inflight || !r->workers) {
    upstates_free(r->ups);
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
  /* mail held by a refused login before a restart: those upstreams are tried first thing */
  if(store_held_upstreams(st, held_found, r))
    log_warn("relay: cannot read which upstreams hold mail (see the store error above); held "
             "mail waits for `posternctl queue release ID`");
  for(i = 0; i < r->nworkers; i++) {
    r->workers[i].relay = r;
    r->workers[i].seed = (unsigned)(time_real_ms() ^ (long long)(i * 7919));
    r->nrunning++;
    if(pthread_create(&r->workers[i].thread, NULL, worker_main, &r->workers[i]))
      log_fatal("relay: cannot start delivery worker");
  }
  if(pthread_create(&r->sched, NULL, sched_main, r))
    log_fatal("relay: cannot start the scheduler");
  r->sched_started = 1;
  *out = r;
  return 0;
}

int relay_reload(struct relay *r, const struct config *cfg, relay_release_fn release, void *arg)
{
  struct relay_conf *c = calloc(1, sizeof(*c)), *old;
  if(!c)
    return -1;
  c->cfg = cfg;
  c->refs = 1;
  (void)dkim_signers_share(cfg);  /* the new keys, read at their first use */
  pthread_mutex_lock(&r->mu);
  old = r->conf;
  old->release = release;
  old->arg = arg;
  r->conf = c;
  __atomic_add_fetch(&r->gen, 1, __ATOMIC_RELAXED);
  pthread_mutex_unlock(&r->mu);
  conf_put(r, old);              /* released now, or by the last delivery that uses it */
  warn_unverified(cfg);
  oauth2_start(cfg);
  /* new credentials, perhaps: held upstreams get a login try now */
  upstate_probe_all_now(r->ups, time_real_ms());
  relay_kick(r);
  return 0;
}

void relay_stop(struct relay *r, long long early_ms, long long late_ms)
{
  size_t i;
  long long t0;
  if(!r)
    return;
  pthread_mutex_lock(&r->mu);
  r->stopping = 1;
  pthread_cond_broadcast(&r->sched_cond);
  pthread_cond_broadcast(&r->work_cond);
  t0 = time_mono_ms();
  while(r->nrunning && time_mono_ms() < t0 + early_ms)
    cond_wait_ms(&r->sched_cond, &r->mu, t0 + early_ms - time_mono_ms());
  if(r->nrunning) {
    /* deliveries not yet waiting for the upstream's word on a whole message are cut where
     * they are: their recipients stay queued and go again after the restart */
    log_warn("relay: %zu delivery worker(s) still busy %lld s after the stop; closing their "
             "upstream connections unless a message is being taken (the mail stays queued and "
             "is sent after the restart)", r->nrunning, early_ms / 1000);
    conn_cancel(CONN_CANCEL_EARLY);
  }
  while(r->nrunning && time_mono_ms() < t0 + late_ms)
    cond_wait_ms(&r->sched_cond, &r->mu, t0 + late_ms - time_mono_ms());
  if(r->nrunning) {
    /* the upstream had the whole message and did not answer: it may get it twice, never lost */
    log_warn("relay: %zu delivery worker(s) still waiting for an upstream's answer %lld s after "
             "the stop; closing those connections too (the upstream may get the message twice)",
             r->nrunning, late_ms / 1000);
    conn_cancel(CONN_CANCEL_LATE);
  }
  pthread_mutex_unlock(&r->mu);
  if(r->sched_started)
    pthread_join(r->sched, NULL);
  for(i = 0; i < r->nworkers; i++)
    pthread_join(r->workers[i].thread, NULL);
  /* one last try for results the store refused; what it still refuses is lost, and those
   * messages are delivered again after the restart */
  if(r->nkept) {
    struct kept_result *k;
    for(k = r->kept; k; k = k->next)
      k->next_ms = 0;
    results_retry(r);
    if(r->nkept)
      log_error("relay: %zu delivery result(s) could not be written before stopping; those "
                "messages will be delivered again after the restart", r->nkept);
    while(r->kept) {
      struct kept_result *next = r->kept->next;
      kept_free(r->kept);
      r->kept = next;
    }
  }
  dkim_signers_unshare(r->conf->cfg);
  free(r->conf);                  /* the current one: its configuration is its owner's */
  pthread_cond_destroy(&r->sched_cond);
  pthread_cond_destroy(&r->work_cond);
  pthread_mutex_destroy(&r->mu);
  free(r->work);
  free(r->inflight);
  free(r->workers);
  upstates_free(r->ups);
  free(r);
}
