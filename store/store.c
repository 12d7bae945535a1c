/* The SQLite store: opening and closing it, the group-commit writer thread that runs every
 * write job, the pool of read connections, and the checks of the whole database. What is
 * stored lives in the domain files (queue.c, inbound.c, records.c; the schema in schema.c);
 * nothing of SQLite leaks through store.h, so a PostgreSQL store can later stand behind the
 * same interface. */
#include "store/store_int.h"
#include "lib/buf.h"
#include "lib/log.h"
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* One write waiting for the writer; lives on the waiting caller's stack. */
struct store_job {
  store_job_fn call;
  void *arg;
  enum store_sync sync;
  size_t changed;                 /* what the job reported (rows added, recipients changed) */
  int result;
  sem_t done;                     /* posted by the writer once result is final */
  struct store_job *next;
};

struct store {
  int readonly;
  struct store_db r[STORE_READERS];   /* reads: a pool, so one slow read stops no other */
  unsigned char rbusy[STORE_READERS];
  size_t nreaders;
  struct store_db w;              /* writes; closed when readonly */
  pthread_mutex_t rlock;          /* guards rbusy */
  pthread_cond_t rcond;           /* a reader waits here while every connection is in use */
  pthread_mutex_t wlock;          /* direct writes when there is no writer thread */
  int writer_running;
  pthread_t writer;
  pthread_mutex_t qlock;          /* guards the queue below */
  pthread_cond_t qcond;           /* the writer waits here for work */
  struct store_job *head, **tailp;
  int stopping;
  /* while commits fail (w.quiet): since when, and how many batches were refused */
  long long failing_since_ms;
  unsigned long long refused;
};

/* store_check's counts: a recipient always belongs to a message and a message has one */
static const char *const sql[ST_COUNT] = {
  [ST_COUNT_ORPHAN_RCPTS] = "SELECT count(*) FROM recipients r"
    " WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE m.id = r.message_id)",
  [ST_COUNT_EMPTY_MSGS] = "SELECT count(*) FROM messages m"
    " WHERE NOT EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id)",
};

/* 48 random bits: a collision is astronomically unlikely at any real queue size, and if one
 * happens the PRIMARY KEY refuses the insert, so the client gets a 451 and tries again. */
void store_new_id(char out[LIM_QUEUE_ID + 1])
{
  static const char hex[] = "0123456789ABCDEF";
  unsigned char r[6];
  size_t got = 0, i;
  while(got < sizeof(r)) {
    ssize_t n = getrandom(r + got, sizeof(r) - got, 0);
    if(n < 0) {
      if(errno == EINTR)
        continue;
      break;
    }
    got += (size_t)n;
  }
  if(got < sizeof(r)) {
    /* no getrandom (ancient kernel): time, pid and a counter still make a workable id */
    static unsigned counter;
    struct timespec ts;
    unsigned long long x;
    clock_gettime(CLOCK_REALTIME, &ts);
    x = (unsigned long long)ts.tv_nsec ^ ((unsigned long long)ts.tv_sec << 20) ^
        ((unsigned long long)getpid() << 32) ^
        ((unsigned long long)__atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED) << 8);
    for(i = 0; i < sizeof(r); i++)
      r[i] = (unsigned char)(x >> (8 * i));
  }
  for(i = 0; i < sizeof(r); i++) {
    out[2 * i] = hex[r[i] >> 4];
    out[2 * i + 1] = hex[r[i] & 15];
  }
  out[2 * sizeof(r)] = '\0';
}

static void batch_fail(struct store_job *jobs, int result)
{
  struct store_job *j;
  for(j = jobs; j; j = j->next)
    j->result = result;
}

/* Runs a list of jobs in one transaction, each in its own savepoint so that one refused job
 * (a constraint, an unknown id) does not take the others down. Results are only final once
 * COMMIT is on disk: if it fails, every job gets its error. */
static int db_run_batch(struct store_db *d, struct store_job *jobs)
{
  struct store_job *j;
  int result, relaxed = 1;

  /* Delivery results need not cost an fsync of their own: in WAL mode the next FULL commit
   * (the next accepted message) syncs them too, and losing one to a crash only means the
   * message is delivered again — the at-least-once side of the durability contract. Anything
   * else (an accepted message above all) is committed with synchronous=FULL. */
  /* The same holds for the correspondence jobs: a record lost to a crash loses its source's
   * recorded mark with it and is made again; an event, its applied mark; a forward_url
   * result, so the record is forwarded again (at least once). Each job says which it is. */
  for(j = jobs; j; j = j->next)
    if(j->sync != STORE_SYNC_RELAXED)
      relaxed = 0;
  /* but at least once a second: a power cut during a long drain with nothing accepted must
   * not lose (and so resend) more than a second of results */
  if(relaxed && store_now_ms() - d->full_ms >= STORE_FULL_EVERY_MS)
    relaxed = 0;
  if(relaxed != d->sync_normal &&
     sqlite3_exec(d->db, relaxed ? "PRAGMA synchronous = NORMAL" : "PRAGMA synchronous = FULL",
                  NULL, NULL, NULL) == SQLITE_OK)
    d->sync_normal = relaxed;
  if(!relaxed && d->sync_normal) {
    batch_fail(jobs, STORE_ERROR);   /* never commit an accept without FULL */
    return STORE_ERROR;
  }
  result = db_simple(d, ST_BEGIN_IMMEDIATE);
  if(result) {
    batch_fail(jobs, result);
    return result;
  }
  for(j = jobs; j; j = j->next) {
    result = db_simple(d, ST_SAVEPOINT);
    if(result)
      break;
    j->result = j->call(d, j->arg, &j->changed);
    if(j->result != STORE_OK) {
      /* disk full or an I/O error may roll back the whole transaction behind our back */
      if(sqlite3_get_autocommit(d->db)) {
        result = j->result;
        break;
      }
      result = db_simple(d, ST_ROLLBACK_TO);
      if(result)
        break;
    }
    result = db_simple(d, ST_RELEASE);
    if(result)
      break;
  }
  if(!result)
    result = db_simple(d, ST_COMMIT);
  if(!result && !relaxed)
    d->full_ms = store_now_ms();
  if(result) {
    if(!sqlite3_get_autocommit(d->db))
      db_simple(d, ST_ROLLBACK);
    batch_fail(jobs, result);
  }
  return result;
}

/* SQLite's automatic checkpoint (passive, from 1000 frames), and a note when the WAL has grown
 * so far that the passive ones cannot be keeping up. */
static int wal_grown(void *arg, sqlite3 *db, const char *name, int frames)
{
  struct store_db *d = arg;
  if(frames >= 1000)
    sqlite3_wal_checkpoint_v2(db, name, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
  if(frames >= STORE_WAL_RESTART_FRAMES && store_now_ms() >= d->wal_restart_after_ms)
    d->wal_restart = 1;
  return SQLITE_OK;
}

/* After a batch's waiters have their answer: a checkpoint that waits (busy timeout) for the
 * readers of older snapshots, so the next commit starts the WAL from its beginning and
 * journal_size_limit gives the file back. Accepts queue behind it (at most about a second)
 * once per 64 MB written. */
static void wal_restart(struct store_db *d)
{
  int logged = 0, done = 0, rc;
  if(!d->wal_restart)
    return;
  d->wal_restart = 0;
  /* a read longer than this (a big posternctl query) only puts it off to a later commit */
  sqlite3_busy_timeout(d->db, STORE_WAL_RESTART_WAIT_MS);
  rc = sqlite3_wal_checkpoint_v2(d->db, NULL, SQLITE_CHECKPOINT_RESTART, &logged, &done);
  sqlite3_busy_timeout(d->db, STORE_BUSY_TIMEOUT_MS);
  /* a reader that outlasted the wait: not again for a while, or every commit would wait */
  if(rc != SQLITE_OK)
    d->wal_restart_after_ms = store_now_ms() + STORE_WAL_RESTART_PAUSE_MS;
  if(rc != SQLITE_OK && (rc & 0xff) != SQLITE_BUSY)
    db_fail(d, rc, "checkpoint");
  else if(rc == SQLITE_OK)
    log_debug("store: write-ahead log checkpointed and restarted (%d frames)", logged);
}

int store_writes_failing(struct store *st)
{
  return __atomic_load_n(&st->w.quiet, __ATOMIC_RELAXED);
}

/* Says once that commits fail (a full disk, an I/O error, a lock held elsewhere: the first
 * failure's own line says which) and once that they work again, instead of one error per
 * refused write. Called by whoever owns the write connection. */
static void write_health(struct store *st, int result)
{
  if(result) {
    st->refused++;
    if(!st->w.quiet) {
      __atomic_store_n(&st->w.quiet, 1, __ATOMIC_RELAXED);
      st->failing_since_ms = store_now_ms();
      log_error("store: writes to postern.db fail (the line above says why); further "
                "failures are logged at debug level until writes work again");
    }
  }
  else if(st->w.quiet) {
    __atomic_store_n(&st->w.quiet, 0, __ATOMIC_RELAXED);
    log_warn("store: writes to postern.db work again after %.1f s (%llu write batch(es) "
             "refused meanwhile)", (store_now_ms() - st->failing_since_ms) / 1000.0,
             st->refused);
    st->refused = 0;
  }
}

static void *store_writer(void *arg)
{
  struct store *st = arg;
  struct store_job *batch, *j, *next;

  pthread_mutex_lock(&st->qlock);
  for(;;) {
    while(!st->head && !st->stopping)
      pthread_cond_wait(&st->qcond, &st->qlock);
    if(!st->head)
      break;                         /* stopping, and drained */
    batch = st->head;
    st->head = NULL;
    st->tailp = &st->head;
    pthread_mutex_unlock(&st->qlock);

    write_health(st, db_run_batch(&st->w, batch));

    /* Woken without qlock held: waking each waiter under the lock made every one of them
     * block on it again at once (half the futex calls of a busy listener). */
    for(j = batch; j; j = next) {
      next = j->next;                /* j belongs to its waiter once posted */
      sem_post(&j->done);
    }
    wal_restart(&st->w);
    pthread_mutex_lock(&st->qlock);
  }
  pthread_mutex_unlock(&st->qlock);
  return NULL;
}

/* Hands a job to the writer and waits for its commit, or runs it directly (posternctl). */
static int store_submit(struct store *st, struct store_job *j)
{
  int result;
  j->next = NULL;
  j->result = STORE_ERROR;
  if(!st || st->readonly) {
    log_error("store: write on a read-only store (a bug in Postern: please report it)");
    return STORE_ERROR;
  }
  if(!st->writer_running) {
    pthread_mutex_lock(&st->wlock);
    write_health(st, db_run_batch(&st->w, j));
    wal_restart(&st->w);
    pthread_mutex_unlock(&st->wlock);
    return j->result;
  }
  if(sem_init(&j->done, 0, 0))
    return STORE_ERROR;
  pthread_mutex_lock(&st->qlock);
  if(st->stopping) {
    pthread_mutex_unlock(&st->qlock);
    sem_destroy(&j->done);
    log_error("store: write after close (a bug in Postern: please report it)");
    return STORE_ERROR;
  }
  *st->tailp = j;
  st->tailp = &j->next;
  pthread_cond_signal(&st->qcond);
  pthread_mutex_unlock(&st->qlock);
  while(sem_wait(&j->done) && errno == EINTR)
    ;
  result = j->result;
  sem_destroy(&j->done);
  return result;
}

struct store_db *store_reader(struct store *st)
{
  size_t i;
  pthread_mutex_lock(&st->rlock);
  for(;;) {
    for(i = 0; i < st->nreaders && st->rbusy[i]; i++)
      ;
    if(i < st->nreaders)
      break;
    pthread_cond_wait(&st->rcond, &st->rlock);
  }
  st->rbusy[i] = 1;
  pthread_mutex_unlock(&st->rlock);
  return &st->r[i];
}

void store_reader_done(struct store *st, struct store_db *d)
{
  sqlite3_stmt *s = NULL;
  /* a statement left part-way (its caller read the row it wanted) keeps its read snapshot
   * while the connection waits in the pool, and no checkpoint can pass it: the WAL would grow
   * from there on */
  while((s = sqlite3_next_stmt(d->db, s)))
    if(sqlite3_stmt_busy(s))
      sqlite3_reset(s);
  pthread_mutex_lock(&st->rlock);
  st->rbusy[d - st->r] = 0;
  pthread_cond_signal(&st->rcond);
  pthread_mutex_unlock(&st->rlock);
}

/* A read transaction makes the envelope and its recipients one snapshot. */
int store_read_begin(struct store *st, struct store_db **d)
{
  *d = store_reader(st);
  return db_simple(*d, ST_BEGIN);
}

void store_read_end(struct store *st, struct store_db *d, int begin_result)
{
  if(!begin_result)
    db_simple(d, ST_COMMIT);
  store_reader_done(st, d);
}

static int job_nothing(struct store_db *d, void *arg, size_t *changed)
{
  (void)d;
  (void)arg;
  (void)changed;
  return STORE_OK;
}

/* An empty FULL commit: it fails when an accepted message would. */
int store_ping(struct store *st)
{
  return store_call(st, job_nothing, NULL, STORE_SYNC_FULL, NULL);
}

static int db_count(struct store_db *d, enum stmt which, long long *count)
{
  sqlite3_stmt *s = db_stmt(d, which, sql);
  int rc, result = STORE_OK;
  if(!s)
    return STORE_ERROR;
  rc = sqlite3_step(s);
  if(rc == SQLITE_ROW)
    *count = sqlite3_column_int64(s, 0);
  else
    result = db_fail(d, rc, "count");
  sqlite3_reset(s);
  return result;
}

int store_call(struct store *st, store_job_fn call, void *arg, enum store_sync sync,
               size_t *changed)
{
  struct store_job j;
  int result;
  memset(&j, 0, sizeof(j));
  j.call = call;
  j.arg = arg;
  j.sync = sync;
  result = store_submit(st, &j);
  if(changed)
    *changed = result ? 0 : j.changed;
  return result;
}

int store_check(struct store *st, char *err, size_t errsz)
{
  sqlite3_stmt *s = NULL;
  long long orphans = 0, empty = 0;
  int rc, result = STORE_OK;
  struct store_db *d;

  snprintf(err, errsz, "ok");
  d = store_reader(st);
  rc = sqlite3_prepare_v2(d->db, "PRAGMA integrity_check", -1, &s, NULL);
  if(rc == SQLITE_OK)
    rc = sqlite3_step(s);
  if(rc == SQLITE_ROW) {
    const char *verdict = (const char *)sqlite3_column_text(s, 0);
    if(!verdict || strcmp(verdict, "ok")) {
      snprintf(err, errsz, "integrity check failed: %s", verdict ? verdict : "(no answer)");
      result = STORE_ERROR;
    }
  }
  else {
    snprintf(err, errsz, "integrity check could not run: %s", sqlite3_errmsg(d->db));
    result = STORE_ERROR;
  }
  sqlite3_finalize(s);
  if(!result) {
    result = db_count(d, ST_COUNT_ORPHAN_RCPTS, &orphans);
    if(!result)
      result = db_count(d, ST_COUNT_EMPTY_MSGS, &empty);
    if(result)
      snprintf(err, errsz, "cannot count orphans: %s", sqlite3_errmsg(d->db));
    else if(orphans || empty) {
      snprintf(err, errsz, "%lld recipient(s) without a message, %lld message(s) without "
               "recipients", orphans, empty);
      result = STORE_ERROR;
    }
  }
  store_reader_done(st, d);
  return result;
}

int store_open(const char *data_dir, int flags, struct store **out, char *err, size_t errsz)
{
  struct store *st = NULL;
  char path[PATH_MAX];
  int readonly = !!(flags & STORE_OPEN_READONLY);
  int result = STORE_ERROR, n;

  *out = NULL;
  if(errsz)
    err[0] = '\0';
  /* SQLite's allocation statistics take one process-wide mutex on every malloc, which every
   * session, worker and the writer then queue on; Postern never reads them. (Only possible
   * before SQLite initialises; later calls are refused harmlessly.) */
  sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
  if(readonly && (flags & (STORE_OPEN_WRITER | STORE_OPEN_CREATE))) {
    snprintf(err, errsz, "a read-only store can neither be created nor written");
    return STORE_ERROR;
  }
  if(!data_dir || !*data_dir) {
    snprintf(err, errsz, "no data_dir is configured");
    return STORE_ERROR;
  }
  n = snprintf(path, sizeof(path), "%s/%s", data_dir, STORE_DB_NAME);
  if(n < 0 || (size_t)n >= sizeof(path)) {
    snprintf(err, errsz, "data_dir is too long");
    return STORE_ERROR;
  }

  if(flags & STORE_OPEN_CREATE) {
    int fd;
    if(mkdir(data_dir, 0700) && errno != EEXIST) {
      snprintf(err, errsz, "cannot create %s: %s", data_dir, strerror(errno));
      return STORE_ERROR;
    }
    /* create the file ourselves: the queue holds mail, and SQLite would make it 0644 (its WAL
     * and shm files copy the database file's mode) */
    fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if(fd < 0) {
      snprintf(err, errsz, "cannot create %s: %s", path, strerror(errno));
      return STORE_ERROR;
    }
    close(fd);
  }
  else if(access(path, F_OK)) {
    snprintf(err, errsz, "no store at %s: %s", path, strerror(errno));
    return STORE_ERROR;
  }

  st = calloc(1, sizeof(*st));
  if(!st) {
    snprintf(err, errsz, "out of memory");
    return STORE_ERROR;
  }
  st->readonly = readonly;
  st->tailp = &st->head;
  pthread_mutex_init(&st->rlock, NULL);
  pthread_cond_init(&st->rcond, NULL);
  pthread_mutex_init(&st->wlock, NULL);
  pthread_mutex_init(&st->qlock, NULL);
  pthread_cond_init(&st->qcond, NULL);

  if(!readonly) {
    result = db_open(&st->w, path, 0, err, errsz);
    if(!result)
      result = schema_migrate(&st->w, path, err, errsz);
    if(result)
      goto out;
    sqlite3_wal_hook(st->w.db, wal_grown, &st->w);
  }
  /* the read connections cannot write even by mistake */
  result = db_open(&st->r[0], path, 1, err, errsz);
  if(!result)
    result = schema_check(&st->r[0], path, err, errsz);
  if(result)
    goto out;
  st->nreaders = 1;
  while(!result && (flags & STORE_OPEN_WRITER) && st->nreaders < STORE_READERS) {
    result = db_open(&st->r[st->nreaders], path, 1, err, errsz);
    if(!result)
      st->nreaders++;
  }
  if(result)
    goto out;

  if(flags & STORE_OPEN_WRITER) {
    schema_auto_vacuum(&st->w, path);
    if(pthread_create(&st->writer, NULL, store_writer, st)) {
      snprintf(err, errsz, "cannot start the store writer thread");
      result = STORE_ERROR;
      goto out;
    }
    st->writer_running = 1;
  }
  result = STORE_OK;

out:
  if(result) {
    store_close(st);
    st = NULL;
  }
  *out = st;
  return result;
}

int store_vacuum(struct store *st, char *err, size_t errsz)
{
  int result;
  if(st->readonly || st->writer_running) {
    snprintf(err, errsz, "the store is open read-only or has a writer thread");
    return STORE_ERROR;
  }
  pthread_mutex_lock(&st->wlock);
  result = schema_vacuum(&st->w, err, errsz);
  pthread_mutex_unlock(&st->wlock);
  return result;
}

void store_close(struct store *st)
{
  size_t i;
  if(!st)
    return;
  if(st->writer_running) {
    pthread_mutex_lock(&st->qlock);
    st->stopping = 1;
    pthread_cond_signal(&st->qcond);
    pthread_mutex_unlock(&st->qlock);
    pthread_join(st->writer, NULL);
  }
  for(i = 0; i < STORE_READERS; i++)
    db_close(&st->r[i]);
  db_close(&st->w);
  pthread_cond_destroy(&st->rcond);
  pthread_cond_destroy(&st->qcond);
  pthread_mutex_destroy(&st->qlock);
  pthread_mutex_destroy(&st->wlock);
  pthread_mutex_destroy(&st->rlock);
  free(st);
}
