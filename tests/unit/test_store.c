/* Unit tests of the SQLite store as a whole: schema creation and migration, queue ids, the
 * group-commit writer under concurrent accepts, isolation of one refused job in a batch, data
 * kept across a reopen, the mapping of a full disk to STORE_FULL, reads that do not wait
 * for each other, and which commits reach the disk (synchronous=FULL). Each case works in its own mkdtemp directory (store_test.h). */
#include "tests/unit/store_test.h"
#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <sqlite3.h>

static void test_open_create_migrate(void)
{
  struct store *st = NULL;
  char err[256], p[PATH_MAX + 32];
  struct stat sb;

  dir_make();
  /* without CREATE a missing store is an error with a sentence */
  CHECK_EQ_INT(store_open(datadir, 0, &st, err, sizeof(err)), STORE_ERROR);
  CHECK(st == NULL);
  CHECK(strstr(err, "postern.db") != NULL);
  CHECK_EQ_INT(store_open(datadir, STORE_OPEN_READONLY, &st, err, sizeof(err)), STORE_ERROR);
  /* read-only and create contradict each other */
  CHECK_EQ_INT(store_open(datadir, STORE_OPEN_READONLY | STORE_OPEN_CREATE, &st, err,
                          sizeof(err)), STORE_ERROR);

  st = open_new(0);
  CHECK(st != NULL);
  CHECK(stat(datadir, &sb) == 0 && (sb.st_mode & 0777) == 0700);
  snprintf(p, sizeof(p), "%s/postern.db", datadir);
  CHECK(stat(p, &sb) == 0 && (sb.st_mode & 0777) == 0600);
  CHECK_EQ_INT(store_check(st, err, sizeof(err)), STORE_OK);
  store_close(st);

  /* opening again does not migrate twice; read-only opens too */
  st = open_new(0);
  CHECK(st != NULL);
  store_close(st);
  st = NULL;
  CHECK_EQ_INT(store_open(datadir, STORE_OPEN_READONLY, &st, err, sizeof(err)), STORE_OK);
  CHECK(st != NULL);
  /* and refuses writes */
  CHECK_EQ_INT(accept_simple(st, "AAAAAAAAAAAA", "a@x", 1, "b@y"), STORE_ERROR);
  CHECK_EQ_INT(store_delete(st, "AAAAAAAAAAAA"), STORE_ERROR);
  store_close(st);
  dir_remove();
}

static void test_new_id(void)
{
  char a[LIM_QUEUE_ID + 1], b[LIM_QUEUE_ID + 1];
  size_t i;
  int ok = 1;
  store_new_id(a);
  CHECK_EQ_INT(strlen(a), 12);
  for(i = 0; a[i]; i++)
    if(!((a[i] >= '0' && a[i] <= '9') || (a[i] >= 'A' && a[i] <= 'F')))
      ok = 0;
  CHECK(ok);
  store_new_id(b);
  CHECK(strcmp(a, b) != 0);
}

#define GC_THREADS 8
#define GC_PER_THREAD 200

struct gc_arg {
  struct store *st;
  int thread;
  int failures;
};

static void *gc_worker(void *p)
{
  struct gc_arg *a = p;
  char id[LIM_QUEUE_ID + 1];
  int i;
  for(i = 0; i < GC_PER_THREAD; i++) {
    snprintf(id, sizeof(id), "G%02d%09d", a->thread, i);
    if(accept_simple(a->st, id, "gc@x", 1000 + i, "r@y") != STORE_OK)
      a->failures++;
  }
  return NULL;
}

/* Counts write transactions through a commit hook that every new connection gets, so the
 * test sees the batching without the store exposing anything for it. */
static int commits;
static int commit_hook(void *arg)
{
  __atomic_add_fetch(&commits, 1, __ATOMIC_RELAXED);
  return 0;
}

static int commit_counter_init(sqlite3 *db, const char **errmsg, const void *api)
{
  sqlite3_commit_hook(db, commit_hook, NULL);
  return SQLITE_OK;
}

static int count_cb(void *arg, const struct store_msg *m)
{
  (*(size_t *)arg)++;
  return 0;
}

/* Reads alongside the writer, as the scheduler does while sessions accept. */
static int readers_stop;
static void *gc_reader(void *p)
{
  struct store *st = p;
  char ids[16][LIM_QUEUE_ID + 1];
  size_t n;
  long long when;
  int bad = 0;
  while(!__atomic_load_n(&readers_stop, __ATOMIC_RELAXED)) {
    struct store_msg m;
    if(store_next_due(st, &when) || store_due(st, 1LL << 62, ids, 16, &n))
      bad = 1;
    else if(n && store_get(st, ids[0], &m) == STORE_OK)
      store_msg_free(&m);
  }
  return bad ? (void *)1 : NULL;
}

static void test_group_commit(void)
{
  pthread_t reader;
  void *reader_result = NULL;
  struct store *st;
  pthread_t th[GC_THREADS];
  struct gc_arg args[GC_THREADS];
  struct timespec t0, t1;
  double secs;
  size_t count = 0;
  int i, failures = 0;
  char err[256];

  dir_make();
  sqlite3_auto_extension((void (*)(void))commit_counter_init);
  st = open_new(STORE_OPEN_WRITER);
  commits = 0;
  readers_stop = 0;
  pthread_create(&reader, NULL, gc_reader, st);
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for(i = 0; i < GC_THREADS; i++) {
    args[i].st = st;
    args[i].thread = i;
    args[i].failures = 0;
    pthread_create(&th[i], NULL, gc_worker, &args[i]);
  }
  for(i = 0; i < GC_THREADS; i++) {
    pthread_join(th[i], NULL);
    failures += args[i].failures;
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  __atomic_store_n(&readers_stop, 1, __ATOMIC_RELAXED);
  pthread_join(reader, &reader_result);
  CHECK(reader_result == NULL);
  secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
  sqlite3_reset_auto_extension();
  fprintf(stderr, "# group commit: %d accepts in %d commits, %.2f s\n",
          GC_THREADS * GC_PER_THREAD, commits, secs);
  CHECK_EQ_INT(failures, 0);
  CHECK(commits > 0 && commits < GC_THREADS * GC_PER_THREAD);
  CHECK(secs < 60);
  CHECK_EQ_INT(store_list(st, NULL, count_cb, &count), STORE_OK);
  CHECK_EQ_INT(count, GC_THREADS * GC_PER_THREAD);
  CHECK_EQ_INT(store_check(st, err, sizeof(err)), STORE_OK);
  store_close(st);

  /* everything the writer acknowledged survives a reopen */
  st = open_new(0);
  count = 0;
  CHECK_EQ_INT(store_list(st, NULL, count_cb, &count), STORE_OK);
  CHECK_EQ_INT(count, GC_THREADS * GC_PER_THREAD);
  store_close(st);
  dir_remove();
}

/* Several threads accept the same ids at once: whichever batch they land in, exactly one
 * accept per id wins, and the losers do not take the winners of their batch down. */
struct dup_arg {
  struct store *st;
  pthread_barrier_t *barrier;
  int ok;
};

static void *dup_worker(void *p)
{
  struct dup_arg *a = p;
  char id[LIM_QUEUE_ID + 1];
  int i;
  for(i = 0; i < 20; i++) {
    snprintf(id, sizeof(id), "DU%010d", i);
    pthread_barrier_wait(a->barrier);
    if(accept_simple(a->st, id, "d@x", 1, "r@y") == STORE_OK)
      a->ok++;
  }
  return NULL;
}

static void test_batch_isolation(void)
{
  struct store *st;
  pthread_t th[4];
  struct dup_arg args[4];
  pthread_barrier_t barrier;
  size_t count = 0;
  int i, ok = 0;

  dir_make();
  st = open_new(STORE_OPEN_WRITER);
  pthread_barrier_init(&barrier, NULL, 4);
  for(i = 0; i < 4; i++) {
    args[i].st = st;
    args[i].barrier = &barrier;
    args[i].ok = 0;
    pthread_create(&th[i], NULL, dup_worker, &args[i]);
  }
  for(i = 0; i < 4; i++) {
    pthread_join(th[i], NULL);
    ok += args[i].ok;
  }
  pthread_barrier_destroy(&barrier);
  CHECK_EQ_INT(ok, 20);
  CHECK_EQ_INT(store_list(st, NULL, count_cb, &count), STORE_OK);
  CHECK_EQ_INT(count, 20);
  store_close(st);
  dir_remove();
}

static void test_reopen_keeps_data(void)
{
  struct store *st;
  struct store_msg got;
  struct store_rcpt_update u;
  char *b = NULL;
  size_t blen = 0;
  char err[256];

  dir_make();
  st = open_new(STORE_OPEN_WRITER);
  CHECK_EQ_INT(accept_simple(st, "RE0000000001", "a@x", 5, "r@y"), STORE_OK);
  memset(&u, 0, sizeof(u));
  u.status = RCPT_DEFERRED;
  u.add_attempt = 1;
  u.next_attempt_ms = 77;
  u.reply = "452 4.2.2 full";
  CHECK_EQ_INT(store_update(st, "RE0000000001", &u, 1), STORE_OK);
  store_close(st);

  st = NULL;
  CHECK_EQ_INT(store_open(datadir, STORE_OPEN_READONLY, &st, err, sizeof(err)), STORE_OK);
  if(st) {
    CHECK_EQ_INT(store_get(st, "RE0000000001", &got), STORE_OK);
    CHECK_EQ_INT(got.nrcpts, 1);
    if(got.nrcpts == 1) {
      CHECK_EQ_INT(got.rcpts[0].status, RCPT_DEFERRED);
      CHECK_EQ_INT(got.rcpts[0].attempts, 1);
      CHECK_EQ_STR(got.rcpts[0].last_reply, "452 4.2.2 full");
    }
    store_msg_free(&got);
    CHECK_EQ_INT(store_body(st, "RE0000000001", &b, &blen), STORE_OK);
    CHECK(blen == 18 && !memcmp(b, "Subject: x\r\n\r\nhi\r\n", 18));
    free(b);
    CHECK_EQ_INT(store_check(st, err, sizeof(err)), STORE_OK);
    store_close(st);
  }
  dir_remove();
}

/* A test-only way to fill the disk: every connection opened from now on gets a small
 * max_page_count, which SQLite reports as SQLITE_FULL (the empty schema takes about 40 of
 * them; a few 16 KB messages fill the rest). */
static int small_db_init(sqlite3 *db, const char **errmsg, const void *api)
{
  sqlite3_exec(db, "PRAGMA max_page_count = 60", NULL, NULL, NULL);
  return SQLITE_OK;
}

static void test_full_maps_to_store_full(void)
{
  struct store *st;
  static char body[16384];
  char id[LIM_QUEUE_ID + 1], err[256];
  int i, r = STORE_OK, accepted = 0;
  size_t count = 0;

  dir_make();
  sqlite3_auto_extension((void (*)(void))small_db_init);
  st = open_new(STORE_OPEN_WRITER);
  memset(body, 'f', sizeof(body));
  for(i = 0; i < 100 && r == STORE_OK; i++) {
    snprintf(id, sizeof(id), "F%011d", i);
    r = accept_simple(st, id, "a@x", 1, "r@y");
    if(r == STORE_OK) {
      struct store_msg m;
      struct store_rcpt rc[1];
      const char *addrs[1] = { "r@y" };
      snprintf(id, sizeof(id), "FB%010d", i);
      msg_fill(&m, rc, id, "a@x", 1, addrs, 1);
      r = store_accept(st, &m, body, sizeof(body));
      if(r == STORE_OK)
        accepted++;
    }
  }
  CHECK_EQ_INT(r, STORE_FULL);
  CHECK(accepted > 0);
  /* what was acknowledged before is intact */
  CHECK_EQ_INT(store_list(st, NULL, count_cb, &count), STORE_OK);
  CHECK(count >= (size_t)accepted);
  CHECK_EQ_INT(store_check(st, err, sizeof(err)), STORE_OK);
  store_close(st);
  sqlite3_reset_auto_extension();
  dir_remove();
}

/* A test-only slow read: once stall_armed is set, the first read connection that runs a
 * statement stops inside it (SQLite's progress handler) until stall_release is posted, as a
 * long console or posternctl query would hold its connection. */
static int stall_armed;
static sem_t stall_reached, stall_release;

static int stall_progress(void *arg)
{
  sqlite3 *db = arg;
  int armed = 1;
  if(sqlite3_db_readonly(db, "main") == 1 &&
     __atomic_compare_exchange_n(&stall_armed, &armed, 0, 0, __ATOMIC_SEQ_CST,
                                 __ATOMIC_SEQ_CST)) {
    sem_post(&stall_reached);
    while(sem_wait(&stall_release) && errno == EINTR)
      ;
  }
  return 0;
}

static int stall_init(sqlite3 *db, const char **errmsg, const void *api)
{
  sqlite3_progress_handler(db, 1, stall_progress, db);
  return SQLITE_OK;
}

struct slow_read {
  struct store *st;
  long long when;
  int result;
};

static void *slow_read(void *p)
{
  struct slow_read *a = p;
  a->result = store_next_due(a->st, &a->when);
  return NULL;
}

static void *quick_read(void *p)
{
  struct slow_read *a = p;
  struct store_msg m;
  memset(&m, 0, sizeof(m));
  a->result = store_get(a->st, "POOL00000001", &m);
  store_msg_free(&m);
  return NULL;
}

/* The daemon's store reads through a pool: while one read is stuck in a long query, the
 * others (the scheduler's, a worker's store_get) go on; a tool's store has one connection. */
static void test_read_pool(void)
{
  struct store *st;
  pthread_t slow, quick;
  struct slow_read a = { 0 }, b = { 0 };
  struct timespec until;
  int joined;

  dir_make();
  st = open_new(STORE_OPEN_WRITER);
  CHECK_EQ_INT(accept_simple(st, "POOL00000001", "a@x", 1, "r@y"), STORE_OK);
  sem_init(&stall_reached, 0, 0);
  sem_init(&stall_release, 0, 0);
  sqlite3_auto_extension((void (*)(void))stall_init);
  store_close(st);
  st = open_new(STORE_OPEN_WRITER);        /* its connections now carry the handler */
  a.st = b.st = st;
  __atomic_store_n(&stall_armed, 1, __ATOMIC_SEQ_CST);
  pthread_create(&slow, NULL, slow_read, &a);
  while(sem_wait(&stall_reached) && errno == EINTR)
    ;
  /* one connection is held inside a statement: another read must not wait for it */
  pthread_create(&quick, NULL, quick_read, &b);
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += 10;
  joined = pthread_timedjoin_np(quick, NULL, &until);
  CHECK_EQ_INT(joined, 0);
  CHECK_EQ_INT(b.result, STORE_OK);
  sem_post(&stall_release);
  pthread_join(slow, NULL);
  if(joined)
    pthread_join(quick, NULL);
  CHECK_EQ_INT(a.result, STORE_OK);
  CHECK(a.when > 0);
  store_close(st);
  sqlite3_reset_auto_extension();
  sem_destroy(&stall_reached);
  sem_destroy(&stall_release);
  dir_remove();
}

/* A test-only VFS over the default one that counts the syncs of write-ahead logs: a commit
 * with synchronous=FULL syncs the WAL, one with NORMAL does not (until a checkpoint). */
static sqlite3_vfs *base_vfs;
static sqlite3_vfs sync_vfs;
static int wal_syncs;

struct sync_file {
  sqlite3_file base;
  sqlite3_file *real;          /* base_vfs's file, right after this struct */
  int wal;
};

#define REAL(f) (((struct sync_file *)(f))->real)
static int sf_close(sqlite3_file *f)
{
  return REAL(f)->pMethods ? REAL(f)->pMethods->xClose(REAL(f)) : SQLITE_OK;
}
static int sf_read(sqlite3_file *f, void *p, int n, sqlite3_int64 off)
{
  return REAL(f)->pMethods->xRead(REAL(f), p, n, off);
}
static int sf_write(sqlite3_file *f, const void *p, int n, sqlite3_int64 off)
{
  return REAL(f)->pMethods->xWrite(REAL(f), p, n, off);
}
static int sf_truncate(sqlite3_file *f, sqlite3_int64 size)
{
  return REAL(f)->pMethods->xTruncate(REAL(f), size);
}
static int sf_sync(sqlite3_file *f, int flags)
{
  if(((struct sync_file *)f)->wal)
    __atomic_add_fetch(&wal_syncs, 1, __ATOMIC_SEQ_CST);
  return REAL(f)->pMethods->xSync(REAL(f), flags);
}
static int sf_size(sqlite3_file *f, sqlite3_int64 *size)
{
  return REAL(f)->pMethods->xFileSize(REAL(f), size);
}
static int sf_lock(sqlite3_file *f, int l)
{
  return REAL(f)->pMethods->xLock(REAL(f), l);
}
static int sf_unlock(sqlite3_file *f, int l)
{
  return REAL(f)->pMethods->xUnlock(REAL(f), l);
}
static int sf_reserved(sqlite3_file *f, int *out)
{
  return REAL(f)->pMethods->xCheckReservedLock(REAL(f), out);
}
static int sf_control(sqlite3_file *f, int op, void *arg)
{
  return REAL(f)->pMethods->xFileControl(REAL(f), op, arg);
}
static int sf_sector(sqlite3_file *f)
{
  return REAL(f)->pMethods->xSectorSize(REAL(f));
}
static int sf_device(sqlite3_file *f)
{
  return REAL(f)->pMethods->xDeviceCharacteristics(REAL(f));
}
static int sf_shm_map(sqlite3_file *f, int pg, int sz, int extend, void volatile **pp)
{
  return REAL(f)->pMethods->xShmMap(REAL(f), pg, sz, extend, pp);
}
static int sf_shm_lock(sqlite3_file *f, int off, int n, int flags)
{
  return REAL(f)->pMethods->xShmLock(REAL(f), off, n, flags);
}
static void sf_shm_barrier(sqlite3_file *f)
{
  REAL(f)->pMethods->xShmBarrier(REAL(f));
}
static int sf_shm_unmap(sqlite3_file *f, int del)
{
  return REAL(f)->pMethods->xShmUnmap(REAL(f), del);
}
static int sf_fetch(sqlite3_file *f, sqlite3_int64 off, int n, void **pp)
{
  return REAL(f)->pMethods->xFetch(REAL(f), off, n, pp);
}
static int sf_unfetch(sqlite3_file *f, sqlite3_int64 off, void *p)
{
  return REAL(f)->pMethods->xUnfetch(REAL(f), off, p);
}

static const sqlite3_io_methods sync_io = {
  3, sf_close, sf_read, sf_write, sf_truncate, sf_sync, sf_size, sf_lock, sf_unlock,
  sf_reserved, sf_control, sf_sector, sf_device, sf_shm_map, sf_shm_lock, sf_shm_barrier,
  sf_shm_unmap, sf_fetch, sf_unfetch,
};

static int sync_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *f, int flags,
                     int *outflags)
{
  struct sync_file *sf = (struct sync_file *)f;
  int rc;
  (void)vfs;
  sf->real = (sqlite3_file *)(sf + 1);
  sf->wal = !!(flags & SQLITE_OPEN_WAL);
  rc = base_vfs->xOpen(base_vfs, name, sf->real, flags, outflags);
  /* SQLite calls xClose even after a failed open when pMethods is set */
  sf->base.pMethods = sf->real->pMethods ? &sync_io : NULL;
  return rc;
}

static void sync_vfs_register(void)
{
  base_vfs = sqlite3_vfs_find(NULL);
  sync_vfs = *base_vfs;
  sync_vfs.zName = "test-sync-count";
  sync_vfs.szOsFile = (int)sizeof(struct sync_file) + base_vfs->szOsFile;
  sync_vfs.xOpen = sync_open;
  sqlite3_vfs_register(&sync_vfs, 1);
}

static void sync_vfs_unregister(void)
{
  sqlite3_vfs_unregister(&sync_vfs);
  sqlite3_vfs_register(base_vfs, 1);
}

/* A 250 is said once the accept is committed with synchronous=FULL: at one accept a second
 * (nothing to group it with), every store_accept has synced the WAL before it returns.
 * Delivery results alone commit with NORMAL, but at least once a second with FULL: a power
 * cut in a long drain loses (and resends) at most a second of results, not the drain. */
static void test_full_commits(void)
{
  struct store *st;
  struct store_rcpt_update u;
  char id[LIM_QUEUE_ID + 1];
  long long t0;
  int i, before, results = 0, full_results;

  dir_make();
  sync_vfs_register();
  st = open_new(STORE_OPEN_WRITER);
  for(i = 0; i < 3; i++) {
    snprintf(id, sizeof(id), "SY%010d", i);
    before = __atomic_load_n(&wal_syncs, __ATOMIC_SEQ_CST);
    CHECK_EQ_INT(accept_simple(st, id, "a@x", 1, "r@y"), STORE_OK);
    CHECK(__atomic_load_n(&wal_syncs, __ATOMIC_SEQ_CST) > before);
    if(i < 2)
      usleep(1000000);
  }
  /* 3.5 s of delivery results and nothing else, a few ms apart */
  memset(&u, 0, sizeof(u));
  before = __atomic_load_n(&wal_syncs, __ATOMIC_SEQ_CST);
  t0 = wall_ms();
  while(wall_ms() - t0 < 3500) {
    u.status = results % 2 ? RCPT_DEFERRED : RCPT_QUEUED;
    u.next_attempt_ms = wall_ms() + 60000;
    u.add_attempt = 1;
    CHECK_EQ_INT(store_update(st, "SY0000000000", &u, 1), STORE_OK);
    results++;
    usleep(20000);
  }
  full_results = __atomic_load_n(&wal_syncs, __ATOMIC_SEQ_CST) - before;
  fprintf(stderr, "# %d delivery results in 3.5 s, %d of their commits synced\n", results,
          full_results);
  CHECK(results >= 30);
  CHECK(full_results >= 2);                /* at least once a second */
  CHECK(full_results <= 6);                /* not each of them */
  store_close(st);
  sync_vfs_unregister();
  dir_remove();
}

/* Reads that overlap without a pause (the pool under load) while 85 MB are accepted: the
 * WAL still starts afresh and is cut back to the journal_size_limit (64 MB) instead of
 * holding everything written since the readers began. */
struct hog {
  struct store *st;
  int stop;
};

/* each read takes a while (a millisecond every few dozen SQLite steps), as under load */
static int slow_read_progress(void *arg)
{
  if(sqlite3_db_readonly(arg, "main") == 1)
    usleep(1000);
  return 0;
}

static int slow_read_init(sqlite3 *db, const char **errmsg, const void *api)
{
  sqlite3_progress_handler(db, 30, slow_read_progress, db);
  return SQLITE_OK;
}

static void *read_hog(void *p)
{
  struct hog *h = p;
  long long when;
  struct store_msg m;
  while(!__atomic_load_n(&h->stop, __ATOMIC_RELAXED)) {
    store_next_due(h->st, &when);
    memset(&m, 0, sizeof(m));
    if(store_get(h->st, "WR0000000000", &m) == STORE_OK)
      store_msg_free(&m);
  }
  return NULL;
}

static void test_wal_restarts_under_readers(void)
{
  struct store *st;
  struct hog h;
  pthread_t th[3];
  struct store_msg m;
  struct store_rcpt r[1];
  const char *addrs[1] = { "r@y" };
  static char body[128 * 1024];
  char id[LIM_QUEUE_ID + 1], wal[PATH_MAX + 32];
  struct stat sb;
  int i;

  dir_make();
  sqlite3_auto_extension((void (*)(void))slow_read_init);
  st = open_new(STORE_OPEN_WRITER);
  memset(body, 'w', sizeof(body));
  h.st = st;
  h.stop = 0;
  for(i = 0; i < 3; i++) {
    pthread_create(&th[i], NULL, read_hog, &h);
    usleep(3000);                          /* staggered: some read is always under way */
  }
  for(i = 0; i < 680; i++) {
    snprintf(id, sizeof(id), "WR%010d", i);
    msg_fill(&m, r, id, "a@x", 1, addrs, 1);
    CHECK_EQ_INT(store_accept(st, &m, body, sizeof(body)), STORE_OK);
  }
  snprintf(wal, sizeof(wal), "%s/postern.db-wal", datadir);
  CHECK_EQ_INT(stat(wal, &sb), 0);
  /* on a slow machine (a sanitizer build) the readers may outlast the writer's wait once;
   * the writer tries again after its pause, as the daemon's would on its next commits */
  if(sb.st_size >= 72 * 1000 * 1000) {
    usleep(10500000);                    /* its pause after a refused restart: 10 s */
    for(i = 680; i < 700; i++) {
      snprintf(id, sizeof(id), "WR%010d", i);
      msg_fill(&m, r, id, "a@x", 1, addrs, 1);
      CHECK_EQ_INT(store_accept(st, &m, body, sizeof(body)), STORE_OK);
    }
    CHECK_EQ_INT(stat(wal, &sb), 0);
  }
  __atomic_store_n(&h.stop, 1, __ATOMIC_RELAXED);
  for(i = 0; i < 3; i++)
    pthread_join(th[i], NULL);
  fprintf(stderr, "# 85 MB accepted under readers: the WAL is %.1f MB\n", sb.st_size / 1e6);
  CHECK(sb.st_size < 72 * 1000 * 1000);
  store_close(st);
  sqlite3_reset_auto_extension();
  dir_remove();
}

/* store_flush makes deferred mail due and nothing else; store_counts sees one snapshot */
static const struct unit_case cases[] = {
  { "open_create_migrate", test_open_create_migrate },
  { "new_id", test_new_id },
  { "group_commit", test_group_commit },
  { "batch_isolation", test_batch_isolation },
  { "reopen_keeps_data", test_reopen_keeps_data },
  { "full_maps_to_store_full", test_full_maps_to_store_full },
  { "read_pool", test_read_pool },
  { "full_commits", test_full_commits },
  { "wal_restarts_under_readers", test_wal_restarts_under_readers },
};
UNIT_MAIN(cases)
