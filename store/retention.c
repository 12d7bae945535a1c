/* Retention in the SQLite store: what may be forgotten, found on the read connection and
 * removed by the writer in small batches (so no commit waits long behind it), then the freed
 * pages given back with incremental vacuum; the pruner thread that does it in the daemon; and
 * the figures of `posternctl store stats`. */
#include "store/store_int.h"
#include "lib/buf.h"
#include "lib/log.h"
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define PRUNE_BATCH 64                       /* rows one writer job removes at most */
#define PRUNE_VACUUM_PAGES 512               /* pages one incremental vacuum step frees */
#define PRUNE_VACUUM_STEPS 64                /* steps per pass at most */
#define PRUNE_EVENT_KEEP_MS (3LL * 86400000) /* SendGrid retries an event for 72 hours */
#define PRUNE_INTERVAL_MAX_MS 60000
#define PRUNE_INTERVAL_MIN_MS 1000
#define PRUNE_WALK_STEP 256                  /* messages one read of the walk takes at most */
/* how often the pruner's walk between the two cutoffs starts again from its beginning (what
 * it passed while a record was still owed to forward_url is found then) */
#define PRUNE_WINDOW_RESET_MS 3600000LL

/* A message whose recipients are all final, whose record is made (recorded), forwarded and
 * no longer follows them, final before ?1 (?2 when every recipient was captured). */
#define MSG_FINAL \
  " m.recorded = 1" \
  " AND NOT EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id" \
  "  AND r.status NOT IN ('sent','bounced','captured'))" \
  " AND NOT EXISTS (SELECT 1 FROM forward_queue f WHERE f.record_id = m.id)" \
  " AND NOT EXISTS (SELECT 1 FROM records c WHERE c.id = m.id AND c.relay_done = 0)"
#define MSG_FINAL_MS "(SELECT max(r.updated_ms) FROM recipients r WHERE r.message_id = m.id)"
#define MSG_CUTOFF \
  " CASE WHEN EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id" \
  "   AND r.status <> 'captured') THEN ?1 ELSE ?2 END"
#define MSG_PRUNABLE MSG_FINAL " AND " MSG_FINAL_MS " <" MSG_CUTOFF
/* an inbound message made into its record (and forwarded) before ?1 */
#define INB_PRUNABLE \
  " i.recorded = 1 AND i.received_ms < ?1" \
  " AND NOT EXISTS (SELECT 1 FROM forward_queue f WHERE f.record_id = i.id)"
/* a record older than ?1 that nothing will change or send any more */
#define REC_PRUNABLE \
  " c.received_ms < ?1 AND c.relay_done = 1" \
  " AND NOT EXISTS (SELECT 1 FROM forward_queue f WHERE f.record_id = c.id)"

static const char *const sql[ST_COUNT] = {
  /* a bounded step of the walk over messages_created from a cursor (?4, ?5) to ?6, each row
   * with whether it may go (1), or will under the rule this walk applies once it is final and
   * its time comes (2: a later pass must read it again; ?7 is the cutoff of a rule that does
   * not apply, whose messages are 0) */
  [ST_PRUNE_MSG_LIST] = "SELECT m.id, m.created_ms, CASE WHEN" MSG_FINAL " THEN CASE WHEN "
    MSG_FINAL_MS " <" MSG_CUTOFF " THEN 1 WHEN" MSG_CUTOFF " <> ?7 THEN 2 ELSE 0 END"
    " WHEN" MSG_CUTOFF " <> ?7 THEN 2 ELSE 0"
    " END FROM messages m WHERE (m.created_ms, m.id) > (?4, ?5) AND m.created_ms < ?6"
    " ORDER BY m.created_ms, m.id LIMIT ?3",
  /* what threading and status need stays; the copies of the text go with the message */
  [ST_PRUNE_MSG_TEXT] = "UPDATE records SET json = json_set(json, '$.text', '', '$.html', '',"
    " '$.reply_text', '', '$.content_pruned', json('true'))"
    " WHERE id = ?4 AND direction = 'out'"
    " AND EXISTS (SELECT 1 FROM messages m WHERE m.id = ?4 AND" MSG_PRUNABLE ")",
  [ST_PRUNE_MSG] = "DELETE FROM messages WHERE id IN"
    " (SELECT m.id FROM messages m WHERE m.id = ?4 AND" MSG_PRUNABLE ")",
  [ST_PRUNE_INB_LIST] = "SELECT i.id FROM inbound_messages i WHERE" INB_PRUNABLE
    " ORDER BY i.received_ms, i.id LIMIT ?3",
  [ST_PRUNE_INB] = "DELETE FROM inbound_messages WHERE id IN"
    " (SELECT i.id FROM inbound_messages i WHERE i.id = ?4 AND" INB_PRUNABLE ")",
  /* by rowid: an event key is whatever the provider sent */
  [ST_PRUNE_EV_LIST] = "SELECT rowid FROM inbound_events WHERE applied = 1"
    " AND received_ms < ?1 ORDER BY received_ms LIMIT ?3",
  [ST_PRUNE_EV] = "DELETE FROM inbound_events WHERE rowid = CAST(?4 AS INTEGER) AND applied = 1"
    " AND received_ms < ?1",
  [ST_PRUNE_REC_LIST] = "SELECT c.id FROM records c WHERE" REC_PRUNABLE
    " ORDER BY c.received_ms LIMIT ?3",
  [ST_PRUNE_REC_BLOBS] = "SELECT sha256 FROM record_attachments WHERE record_id = ?4",
  /* its events, addresses and attachment links go with it (ON DELETE CASCADE) */
  [ST_PRUNE_REC] = "DELETE FROM records WHERE id IN"
    " (SELECT c.id FROM records c WHERE c.id = ?4 AND" REC_PRUNABLE ")",
  [ST_PRUNE_BLOB] = "DELETE FROM attachments WHERE sha256 = ?4"
    " AND NOT EXISTS (SELECT 1 FROM record_attachments WHERE sha256 = ?4)",
};

enum prune_kind { PRUNE_MESSAGES, PRUNE_INBOUND, PRUNE_EVENTS, PRUNE_RECORDS, PRUNE_KINDS };
static const enum stmt list_stmt[PRUNE_KINDS] = { ST_PRUNE_MSG_LIST, ST_PRUNE_INB_LIST,
                                                  ST_PRUNE_EV_LIST, ST_PRUNE_REC_LIST };

/* One batch for the writer: the keys found on the read connection, checked again there. */
struct prune_job {
  enum prune_kind kind;
  long long cut1, cut2;
  char (*keys)[LIM_PRUNE_KEY];
  size_t n;
  struct store_prune_counts *counts;
};

/* Binds the cutoffs, the limit and a key to whichever of ?1..?4 the statement has. */
static int bind_prune(sqlite3_stmt *s, long long cut1, long long cut2, long long limit,
                      const char *key)
{
  int np = sqlite3_bind_parameter_count(s), rc = SQLITE_OK;
  if(np >= 1) rc = sqlite3_bind_int64(s, 1, cut1);
  if(!rc && np >= 2) rc = sqlite3_bind_int64(s, 2, cut2);
  if(!rc && np >= 3) rc = sqlite3_bind_int64(s, 3, limit);
  if(!rc && np >= 4) rc = db_bind_text(s, 4, key);
  return rc;
}

static int db_changes_run(struct store_db *d, enum stmt which, long long cut1, long long cut2,
                          const char *key, long long *count)
{
  sqlite3_stmt *s = db_stmt(d, which, sql);
  int rc, result;
  if(!s)
    return STORE_ERROR;
  rc = bind_prune(s, cut1, cut2, 0, key);
  if(rc) {
    sqlite3_reset(s);
    return db_fail(d, rc, "bind prune");
  }
  result = db_exec_stmt(d, s, "prune");
  if(!result && count)
    *count += sqlite3_changes(d->db);
  return result;
}

/* A record's attachments that no other record uses go with it. */
static int prune_record(struct store_db *d, const struct prune_job *j, const char *id)
{
  char (*blobs)[64 + 1] = NULL;        /* hex SHA-256 */
  size_t nb = 0, cap = 0, i;
  sqlite3_stmt *s = db_stmt(d, ST_PRUNE_REC_BLOBS, sql);
  long long gone = 0;
  int rc, result = STORE_OK;
  if(!s)
    return STORE_ERROR;
  rc = bind_prune(s, 0, 0, 0, id);
  if(rc == SQLITE_OK)
    rc = sqlite3_step(s);
  for(; rc == SQLITE_ROW && !result; rc = sqlite3_step(s)) {
    if(nb == cap) {
      size_t nc = cap ? cap * 2 : 8;
      char (*nbl)[64 + 1] = realloc(blobs, nc * sizeof(*blobs));
      if(!nbl) {
        result = STORE_ERROR;
        break;
      }
      blobs = nbl;
      cap = nc;
    }
    str_copy(blobs[nb++], sizeof(blobs[0]), db_col_str(s, 0) ? db_col_str(s, 0) : "");
  }
  sqlite3_reset(s);
  if(!result && rc != SQLITE_DONE)
    result = db_fail(d, rc, "record attachments");
  if(!result)
    result = db_changes_run(d, ST_PRUNE_REC, j->cut1, 0, id, &gone);
  j->counts->records += gone;
  for(i = 0; !result && gone && i < nb; i++)
    result = db_changes_run(d, ST_PRUNE_BLOB, 0, 0, blobs[i], &j->counts->attachments);
  free(blobs);
  return result;
}

static int job_prune(struct store_db *d, void *arg, size_t *changed)
{
  const struct prune_job *j = arg;
  size_t i;
  int result = STORE_OK;
  long long before = j->counts->messages + j->counts->inbound + j->counts->events +
                     j->counts->records;
  for(i = 0; !result && i < j->n; i++) {
    switch(j->kind) {
    case PRUNE_MESSAGES:
      result = db_changes_run(d, ST_PRUNE_MSG_TEXT, j->cut1, j->cut2, j->keys[i],
                              &j->counts->texts);
      if(!result)
        result = db_changes_run(d, ST_PRUNE_MSG, j->cut1, j->cut2, j->keys[i],
                                &j->counts->messages);
      break;
    case PRUNE_INBOUND:
      result = db_changes_run(d, ST_PRUNE_INB, j->cut1, 0, j->keys[i], &j->counts->inbound);
      break;
    case PRUNE_EVENTS:
      result = db_changes_run(d, ST_PRUNE_EV, j->cut1, 0, j->keys[i], &j->counts->events);
      break;
    default:
      result = prune_record(d, j, j->keys[i]);
      break;
    }
  }
  *changed = (size_t)(j->counts->messages + j->counts->inbound + j->counts->events +
                      j->counts->records - before);
  return result;
}

/* Keys of what may go, from the read connection: at most max (0 only counts, into *n). */
static int prune_list(struct store *st, enum prune_kind kind, long long cut1, long long cut2,
                      char (*keys)[LIM_PRUNE_KEY], size_t max, size_t *n)
{
  struct store_db *d = store_reader(st);
  sqlite3_stmt *s = db_stmt(d, list_stmt[kind], sql);
  int rc = SQLITE_DONE, result = STORE_OK;
  *n = 0;
  if(!s) {
    store_reader_done(st, d);
    return STORE_ERROR;
  }
  rc = bind_prune(s, cut1, cut2, max ? (long long)max : LLONG_MAX, NULL);
  if(rc == SQLITE_OK)
    rc = sqlite3_step(s);
  for(; rc == SQLITE_ROW; rc = sqlite3_step(s)) {
    if(max)
      str_copy(keys[*n], sizeof(keys[0]), db_col_str(s, 0) ? db_col_str(s, 0) : "");
    (*n)++;
  }
  if(rc != SQLITE_DONE)
    result = db_fail(d, rc, "prune candidates");
  sqlite3_reset(s);
  store_reader_done(st, d);
  return result;
}

static long long cutoff(long long now, long long keep_ms)
{
  return keep_ms > 0 ? now - keep_ms : LLONG_MIN;
}

/* Gives back free pages a few at a time (auto_vacuum = incremental), each step a writer job. */
static int job_vacuum(struct store_db *d, void *arg, size_t *changed)
{
  char q[64];
  long long before = 0, after = 0;
  int rc;
  (void)arg;
  db_pragma_int(d, "PRAGMA freelist_count", &before);
  snprintf(q, sizeof(q), "PRAGMA incremental_vacuum(%d)", PRUNE_VACUUM_PAGES);
  rc = sqlite3_exec(d->db, q, NULL, NULL, NULL);
  if(rc != SQLITE_OK)
    return db_fail(d, rc, "incremental vacuum");
  db_pragma_int(d, "PRAGMA freelist_count", &after);
  *changed = before > after ? (size_t)(before - after) : 0;
  return STORE_OK;
}

/* Hands a batch of listed keys to the writer, which checks each again before it goes. */
static int prune_batch(struct store *st, enum prune_kind kind, long long cut1, long long cut2,
                       char (*keys)[LIM_PRUNE_KEY], size_t n, struct store_prune_counts *out,
                       size_t *gone)
{
  struct prune_job j;
  memset(&j, 0, sizeof(j));
  j.kind = kind;
  j.cut1 = cut1;
  j.cut2 = cut2;
  j.keys = keys;
  j.n = n;
  j.counts = out;
  /* relaxed: a batch lost to a crash is only pruned again */
  return store_call(st, job_prune, &j, STORE_SYNC_RELAXED, gone);
}

/* One step of the walk over messages from *at to before upto, at most PRUNE_WALK_STEP rows:
 * the keys of those that may go (under cut1, cut2) appended to keys at *n, up to max (keys
 * NULL: only counted); *at moves past every row read, *safe (when given) only up to the first
 * one that is not final or not old enough yet (*held then), which a later pass must read again
 * (with retention shorter than the queue's life, mail still waiting is in that span);
 * *end once upto is reached. */
static int prune_msg_step(struct store *st, long long cut1, long long cut2, long long upto,
                          struct store_cursor *at, struct store_cursor *safe, int *held,
                          char (*keys)[LIM_PRUNE_KEY], size_t max, size_t *n, int *end,
                          long long *out_walked)
{
  struct store_db *d = store_reader(st);
  sqlite3_stmt *s = db_stmt(d, ST_PRUNE_MSG_LIST, sql);
  int rc = SQLITE_DONE, result = STORE_OK;
  size_t walked = 0;
  *end = 0;
  if(!s) {
    store_reader_done(st, d);
    return STORE_ERROR;
  }
  rc = bind_prune(s, cut1, cut2, PRUNE_WALK_STEP, NULL);
  if(!rc) rc = sqlite3_bind_int64(s, 4, at->ms);
  if(!rc) rc = db_bind_text(s, 5, at->id);
  if(!rc) rc = sqlite3_bind_int64(s, 6, upto);
  if(!rc) rc = sqlite3_bind_int64(s, 7, LLONG_MIN);
  if(rc == SQLITE_OK)
    rc = sqlite3_step(s);
  for(; rc == SQLITE_ROW; rc = sqlite3_step(s)) {
    const char *id = db_col_str(s, 0) ? db_col_str(s, 0) : "";
    int state = sqlite3_column_int(s, 2);
    at->ms = sqlite3_column_int64(s, 1);
    str_copy(at->id, sizeof(at->id), id);
    walked++;
    (*out_walked)++;
    if(state == 2)
      *held = 1;
    if(safe && !*held)
      *safe = *at;
    if(state == 1) {
      if(keys)
        str_copy(keys[*n], sizeof(keys[0]), id);
      (*n)++;
      if(keys && *n == max)
        break;                       /* the batch is full: the walk goes on after this row */
    }
  }
  if(rc == SQLITE_DONE)
    *end = walked < PRUNE_WALK_STEP;
  else if(rc != SQLITE_ROW)
    result = db_fail(d, rc, "prune candidates");
  sqlite3_reset(s);
  store_reader_done(st, d);
  return result;
}

/* Walks the messages from *from to before upto and removes (dry: counts) those that may go,
 * a writer job per batch; the read lock is let go between steps, so nothing waits long behind
 * a walk over weeks of mail. *safe (may be NULL) is moved as far as a later pass need not
 * read again. */
static int prune_msg_walk(struct store *st, long long cut1, long long cut2, long long upto,
                          const struct store_cursor *from, struct store_cursor *safe,
                          int dry_run, char (*keys)[LIM_PRUNE_KEY],
                          struct store_prune_counts *out)
{
  struct store_cursor at = *from;
  size_t n = 0;
  int result = STORE_OK, end = 0, held = 0;
  while(!result && !end) {
    result = prune_msg_step(st, cut1, cut2, upto, &at, safe, &held, dry_run ? NULL : keys,
                            PRUNE_BATCH, &n, &end, &out->walked);
    if(dry_run) {
      out->messages += (long long)n;
      n = 0;
    }
    else if(!result && n && (n == PRUNE_BATCH || end)) {
      result = prune_batch(st, PRUNE_MESSAGES, cut1, cut2, keys, n, out, NULL);
      n = 0;
    }
  }
  return result;
}

/* Messages: those older than both cutoffs may go under either rule and are walked from the
 * oldest at every pass (what stays there is mail that cannot go yet: waiting, or owed to
 * forward_url); between the two cutoffs only the later rule applies (the default: captured
 * mail after capture_retention, the rest of it kept for retention), and that span is walked
 * on from *window (NULL: from its start), so a pass does not read weeks of kept mail again. */
static int prune_messages(struct store *st, long long cut1, long long cut2,
                          struct store_cursor *window, int dry_run,
                          char (*keys)[LIM_PRUNE_KEY], struct store_prune_counts *out)
{
  long long early = cut1 < cut2 ? cut1 : cut2, late = cut1 < cut2 ? cut2 : cut1;
  struct store_cursor start;
  int result = STORE_OK;
  memset(&start, 0, sizeof(start));
  start.ms = LLONG_MIN;
  if(early != LLONG_MIN)
    result = prune_msg_walk(st, cut1, cut2, early, &start, NULL, dry_run, keys, out);
  if(result || late == early)
    return result;
  start.ms = early;                  /* (early, "") is before every message of that time */
  if(window && window->ms < early)
    *window = start;
  /* in the span, the earlier rule cannot match yet; what the later rule will take once it is
   * final holds the window there (read again at the next pass), the rest goes by the earlier
   * rule once that one's time comes */
  return prune_msg_walk(st, cut1 == late ? cut1 : LLONG_MIN, cut2 == late ? cut2 : LLONG_MIN,
                        late, window ? window : &start, window, dry_run, keys, out);
}

static int prune_all(struct store *st, const struct store_retention *ret, long long now,
                     struct store_cursor *window, int dry_run, struct store_prune_counts *out)
{
  char (*keys)[LIM_PRUNE_KEY] = NULL;
  long long cuts[PRUNE_KINDS][2];
  int k, result = STORE_OK, steps;
  memset(out, 0, sizeof(*out));
  cuts[PRUNE_MESSAGES][0] = cutoff(now, ret->retention_ms);
  cuts[PRUNE_MESSAGES][1] = cutoff(now, ret->capture_ms);
  cuts[PRUNE_INBOUND][0] = cutoff(now, ret->retention_ms);
  /* applied events are a copy of what their record holds: kept only to know a retry */
  cuts[PRUNE_EVENTS][0] = ret->retention_ms > 0 ? now - PRUNE_EVENT_KEEP_MS : LLONG_MIN;
  cuts[PRUNE_RECORDS][0] = cutoff(now, ret->records_ms);
  cuts[PRUNE_INBOUND][1] = cuts[PRUNE_EVENTS][1] = cuts[PRUNE_RECORDS][1] = LLONG_MIN;
  if(!dry_run && !(keys = calloc(PRUNE_BATCH, sizeof(*keys))))
    return STORE_ERROR;
  for(k = 0; !result && k < PRUNE_KINDS; k++) {
    long long *slot[PRUNE_KINDS] = { &out->messages, &out->inbound, &out->events, &out->records };
    if(cuts[k][0] == LLONG_MIN && cuts[k][1] == LLONG_MIN)
      continue;
    if(k == PRUNE_MESSAGES) {
      result = prune_messages(st, cuts[k][0], cuts[k][1], window, dry_run, keys, out);
      continue;
    }
    if(dry_run) {
      size_t n = 0;
      result = prune_list(st, (enum prune_kind)k, cuts[k][0], cuts[k][1], NULL, 0, &n);
      *slot[k] = (long long)n;
      continue;
    }
    for(;;) {
      size_t n = 0, gone = 0;
      result = prune_list(st, (enum prune_kind)k, cuts[k][0], cuts[k][1], keys, PRUNE_BATCH, &n);
      if(result || !n)
        break;
      result = prune_batch(st, (enum prune_kind)k, cuts[k][0], cuts[k][1], keys, n, out,
                           &gone);
      if(result || !gone || n < PRUNE_BATCH)
        break;                 /* done, or what was listed changed meanwhile */
    }
  }
  free(keys);
  for(steps = 0; !result && !dry_run && steps < PRUNE_VACUUM_STEPS; steps++) {
    size_t freed = 0;
    if(out->messages + out->inbound + out->events + out->records + out->attachments == 0)
      break;
    result = store_call(st, job_vacuum, NULL, STORE_SYNC_RELAXED, &freed);
    if(!freed)
      break;
  }
  return result;
}

int store_prune(struct store *st, const struct store_retention *ret, long long now,
                int dry_run, struct store_prune_counts *out)
{
  return prune_all(st, ret, now, NULL, dry_run, out);
}

int store_prune_on(struct store *st, const struct store_retention *ret, long long now,
                   struct store_cursor *window, struct store_prune_counts *out)
{
  return prune_all(st, ret, now, window, 0, out);
}

/* ---- the pruner thread of the daemon -------------------------------------------------------- */

struct store_pruner {
  struct store *st;
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t cond;
  struct store_retention ret;     /* under mu */
  int stopping;
  /* where the walk between the two cutoffs goes on from (pruner thread only), and since when
   * (monotonic) */
  struct store_cursor window;
  long long window_since_ms;
};

static long long mono_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Often enough that a short retention is kept, seldom enough to cost nothing. */
static long long prune_interval(const struct store_retention *r)
{
  long long shortest = LLONG_MAX, v[3] = { r->retention_ms, r->capture_ms, r->records_ms };
  int i;
  for(i = 0; i < 3; i++)
    if(v[i] > 0 && v[i] < shortest)
      shortest = v[i];
  shortest /= 4;
  if(shortest > PRUNE_INTERVAL_MAX_MS)
    return PRUNE_INTERVAL_MAX_MS;
  return shortest < PRUNE_INTERVAL_MIN_MS ? PRUNE_INTERVAL_MIN_MS : shortest;
}

static void *pruner_main(void *arg)
{
  struct store_pruner *p = arg;
  pthread_mutex_lock(&p->mu);
  while(!p->stopping) {
    struct store_retention ret = p->ret;
    struct store_prune_counts c;
    struct timespec ts;
    long long wait;
    pthread_mutex_unlock(&p->mu);
    if(!p->window_since_ms || mono_ms() - p->window_since_ms >= PRUNE_WINDOW_RESET_MS) {
      memset(&p->window, 0, sizeof(p->window));
      p->window.ms = LLONG_MIN;
      p->window_since_ms = mono_ms();
    }
    if(!store_prune_on(p->st, &ret, store_now_ms(), &p->window, &c) &&
       c.messages + c.inbound + c.events + c.records > 0)
      log_info("store: pruned %lld message(s) (%lld record text(s)), %lld inbound message(s), "
               "%lld event(s), %lld record(s), %lld attachment(s)", c.messages, c.texts,
               c.inbound, c.events, c.records, c.attachments);
    pthread_mutex_lock(&p->mu);
    wait = prune_interval(&p->ret);
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += wait / 1000;
    ts.tv_nsec += (wait % 1000) * 1000000L;
    if(ts.tv_nsec >= 1000000000L) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000L;
    }
    if(!p->stopping)
      pthread_cond_timedwait(&p->cond, &p->mu, &ts);
  }
  pthread_mutex_unlock(&p->mu);
  return NULL;
}

int store_pruner_start(struct store *st, const struct store_retention *ret,
                       struct store_pruner **out)
{
  struct store_pruner *p = calloc(1, sizeof(*p));
  *out = NULL;
  if(!p)
    return -1;
  p->st = st;
  p->ret = *ret;
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->cond, NULL);
  if(pthread_create(&p->thread, NULL, pruner_main, p)) {
    pthread_cond_destroy(&p->cond);
    pthread_mutex_destroy(&p->mu);
    free(p);
    return -1;
  }
  *out = p;
  return 0;
}

void store_pruner_set(struct store_pruner *p, const struct store_retention *ret)
{
  if(!p)
    return;
  pthread_mutex_lock(&p->mu);
  p->ret = *ret;
  pthread_cond_signal(&p->cond);      /* a shorter retention applies now */
  pthread_mutex_unlock(&p->mu);
}

void store_pruner_stop(struct store_pruner *p)
{
  if(!p)
    return;
  pthread_mutex_lock(&p->mu);
  p->stopping = 1;
  pthread_cond_signal(&p->cond);
  pthread_mutex_unlock(&p->mu);
  pthread_join(p->thread, NULL);
  pthread_cond_destroy(&p->cond);
  pthread_mutex_destroy(&p->mu);
  free(p);
}

/* ---- the figures of posternctl store stats -------------------------------------------------- */

static const struct {
  const char *name, *oldest;
} tables[STORE_NTABLES] = {
  { "messages", "SELECT count(*), min(created_ms) FROM messages" },
  { "recipients", "SELECT count(*), NULL FROM recipients" },
  { "inbound_messages", "SELECT count(*), min(received_ms) FROM inbound_messages" },
  { "inbound_events", "SELECT count(*), min(received_ms) FROM inbound_events" },
  { "records", "SELECT count(*), min(received_ms) FROM records" },
  { "record_events", "SELECT count(*), min(at_ms) FROM record_events" },
  { "attachments", "SELECT count(*), NULL FROM attachments" },
  { "forward_queue", "SELECT count(*), min(queued_ms) FROM forward_queue" },
};

int store_stats(struct store *st, struct store_stats *out)
{
  struct store_db *d;
  sqlite3_stmt *s = NULL;
  long long pages = 0, page_size = 0, free_pages = 0;
  int i, rc = SQLITE_OK, result = STORE_OK;
  memset(out, 0, sizeof(*out));
  d = store_reader(st);
  if(db_pragma_int(d, "PRAGMA page_count", &pages) ||
     db_pragma_int(d, "PRAGMA page_size", &page_size) ||
     db_pragma_int(d, "PRAGMA freelist_count", &free_pages))
    result = STORE_ERROR;
  out->file_bytes = pages * page_size;
  out->free_bytes = free_pages * page_size;
  {
    const char *file = sqlite3_db_filename(d->db, "main");
    char wal[PATH_MAX + 8];
    struct stat sb;
    if(file && snprintf(wal, sizeof(wal), "%s-wal", file) < (int)sizeof(wal) &&
       !stat(wal, &sb))
      out->wal_bytes = (long long)sb.st_size;
  }
  for(i = 0; !result && i < STORE_NTABLES; i++) {
    out->tables[i].name = tables[i].name;
    out->tables[i].oldest_ms = -1;
    rc = sqlite3_prepare_v2(d->db, tables[i].oldest, -1, &s, NULL);
    if(rc == SQLITE_OK && (rc = sqlite3_step(s)) == SQLITE_ROW) {
      out->tables[i].rows = sqlite3_column_int64(s, 0);
      if(sqlite3_column_type(s, 1) != SQLITE_NULL)
        out->tables[i].oldest_ms = sqlite3_column_int64(s, 1);
      rc = SQLITE_OK;
    }
    if(rc != SQLITE_OK)
      result = db_fail(d, rc, "store stats");
    sqlite3_finalize(s);
    s = NULL;
  }
  store_reader_done(st, d);
  return result;
}
