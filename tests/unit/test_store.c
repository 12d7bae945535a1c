/* Unit tests of the SQLite store: schema creation, byte-exact bodies, the due/update/list/delete
 * cycle, the group-commit writer under concurrent accepts, and the mapping of a full disk to
 * STORE_FULL. Each case works in its own mkdtemp directory. */
#include "store/store.h"
#include "tests/unit/unit.h"
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <sqlite3.h>

static char tmpdir[PATH_MAX];     /* the mkdtemp parent */
static char datadir[PATH_MAX + 8];  /* tmpdir/data: created by the store */

static void dir_make(void)
{
  const char *base = getenv("TMPDIR");
  snprintf(tmpdir, sizeof(tmpdir), "%s/test_store.XXXXXX", base && *base ? base : "/tmp");
  if(!mkdtemp(tmpdir)) {
    perror("mkdtemp");
    exit(1);
  }
  snprintf(datadir, sizeof(datadir), "%s/data", tmpdir);
}

static void dir_remove(void)
{
  static const char *const names[] = { "postern.db", "postern.db-wal", "postern.db-shm",
                                       "postern.db-journal" };
  char p[PATH_MAX + 32];
  size_t i;
  for(i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
    snprintf(p, sizeof(p), "%s/%s", datadir, names[i]);
    unlink(p);
  }
  rmdir(datadir);
  rmdir(tmpdir);
}

static long long wall_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static struct store *open_new(int flags)
{
  struct store *st = NULL;
  char err[256];
  int r = store_open(datadir, flags | STORE_OPEN_CREATE, &st, err, sizeof(err));
  if(r)
    fprintf(stderr, "store_open: %s\n", err);
  CHECK_EQ_INT(r, STORE_OK);
  return st;
}

/* Fills m (pointing into static-lifetime strings) with an envelope and n recipients. */
static void msg_fill(struct store_msg *m, struct store_rcpt *rcpts, const char *id,
                     const char *sender, long long created, const char *const *addrs, size_t n)
{
  size_t i;
  memset(m, 0, sizeof(*m));
  snprintf(m->id, sizeof(m->id), "%s", id);
  m->sender = (char *)sender;
  m->created_ms = created;
  m->source = (char *)"submission";
  m->listener = (char *)"submission";
  m->client_addr = (char *)"127.0.0.1";
  m->helo = (char *)"app.example";
  for(i = 0; i < n; i++) {
    memset(&rcpts[i], 0, sizeof(rcpts[i]));
    rcpts[i].idx = (unsigned)i;
    rcpts[i].address = (char *)addrs[i];
  }
  m->rcpts = rcpts;
  m->nrcpts = n;
}

static int accept_simple(struct store *st, const char *id, const char *sender, long long created,
                         const char *rcpt)
{
  struct store_msg m;
  struct store_rcpt r[1];
  const char *addrs[1] = { rcpt };
  msg_fill(&m, r, id, sender, created, addrs, 1);
  return store_accept(st, &m, "Subject: x\r\n\r\nhi\r\n", 18);
}

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

static void test_accept_get_body(void)
{
  /* 8-bit, UTF-8 and a NUL: stored and returned byte for byte */
  static const unsigned char body[] = "From: a@x\r\nSubject: \xc3\xa9t\xe9\r\n\r\n"
                                      "nul:\0:\xff\x80\r\n";
  struct store *st;
  struct store_msg m, got;
  struct store_rcpt r[3];
  const char *addrs[3] = { "one@example.net", "Two@Example.NET", "three@example.org" };
  char *b = NULL;
  size_t blen = 0;
  long long before = wall_ms();

  dir_make();
  st = open_new(0);
  msg_fill(&m, r, "0123456789AB", "app@clinic.example", 1700000000123LL, addrs, 3);
  m.body_8bit = 1;
  m.smtputf8 = 1;
  m.auth_user = (char *)"app";
  m.envid = (char *)"env-1";
  m.ret = (char *)"HDRS";
  m.body_sha256 = (char *)"abc123";
  r[1].orcpt = (char *)"rfc822;Two@Example.NET";
  r[1].notify = (char *)"FAILURE,DELAY";
  r[2].idx = 7;    /* ignored: idx is the position in the envelope */
  CHECK_EQ_INT(store_accept(st, &m, body, sizeof(body) - 1), STORE_OK);

  CHECK_EQ_INT(store_get(st, "0123456789AB", &got), STORE_OK);
  CHECK_EQ_STR(got.id, "0123456789AB");
  CHECK_EQ_STR(got.sender, "app@clinic.example");
  CHECK_EQ_INT(got.created_ms, 1700000000123LL);
  CHECK_EQ_INT(got.size, sizeof(body) - 1);
  CHECK_EQ_INT(got.body_8bit, 1);
  CHECK_EQ_INT(got.smtputf8, 1);
  CHECK_EQ_STR(got.source, "submission");
  CHECK_EQ_STR(got.listener, "submission");
  CHECK_EQ_STR(got.client_addr, "127.0.0.1");
  CHECK_EQ_STR(got.helo, "app.example");
  CHECK_EQ_STR(got.auth_user, "app");
  CHECK_EQ_STR(got.envid, "env-1");
  CHECK_EQ_STR(got.ret, "HDRS");
  CHECK_EQ_STR(got.body_sha256, "abc123");
  CHECK_EQ_INT(got.nrcpts, 3);
  if(got.nrcpts == 3) {
    CHECK_EQ_STR(got.rcpts[0].address, "one@example.net");
    CHECK(got.rcpts[0].orcpt == NULL);
    CHECK_EQ_STR(got.rcpts[1].address, "Two@Example.NET");
    CHECK_EQ_STR(got.rcpts[1].orcpt, "rfc822;Two@Example.NET");
    CHECK_EQ_STR(got.rcpts[1].notify, "FAILURE,DELAY");
    CHECK_EQ_INT(got.rcpts[2].idx, 2);
    CHECK_EQ_INT(got.rcpts[0].status, RCPT_QUEUED);
    CHECK_EQ_INT(got.rcpts[0].attempts, 0);
    /* due from arrival (created_ms), which lies before the accept here */
    CHECK_EQ_INT(got.rcpts[0].next_attempt_ms, 1700000000123LL);
    CHECK(got.rcpts[0].updated_ms >= before && got.rcpts[0].updated_ms <= wall_ms());
    CHECK(got.rcpts[0].last_reply == NULL);
    CHECK(got.rcpts[0].upstream == NULL);
  }
  store_msg_free(&got);

  CHECK_EQ_INT(store_body(st, "0123456789AB", &b, &blen), STORE_OK);
  CHECK_EQ_INT(blen, sizeof(body) - 1);
  CHECK(b && memcmp(b, body, sizeof(body) - 1) == 0);
  free(b);

  /* an empty body and the null reverse-path round-trip too */
  msg_fill(&m, r, "EMPTY0000000", "", 1, addrs, 1);
  CHECK_EQ_INT(store_accept(st, &m, NULL, 0), STORE_OK);
  CHECK_EQ_INT(store_body(st, "EMPTY0000000", &b, &blen), STORE_OK);
  CHECK_EQ_INT(blen, 0);
  CHECK(b != NULL);
  free(b);
  CHECK_EQ_INT(store_get(st, "EMPTY0000000", &got), STORE_OK);
  CHECK_EQ_STR(got.sender, "");
  CHECK(got.auth_user == NULL);
  store_msg_free(&got);

  /* the same id twice is refused and the first stays intact */
  msg_fill(&m, r, "0123456789AB", "other@x", 5, addrs, 1);
  CHECK_EQ_INT(store_accept(st, &m, "x", 1), STORE_ERROR);
  CHECK_EQ_INT(store_get(st, "0123456789AB", &got), STORE_OK);
  CHECK_EQ_STR(got.sender, "app@clinic.example");
  CHECK_EQ_INT(got.nrcpts, 3);
  store_msg_free(&got);

  /* no recipients: refused */
  msg_fill(&m, r, "NORCPT000000", "a@x", 5, addrs, 0);
  CHECK_EQ_INT(store_accept(st, &m, "x", 1), STORE_ERROR);

  CHECK_EQ_INT(store_get(st, "FFFFFFFFFFFF", &got), STORE_NOTFOUND);
  CHECK_EQ_INT(store_body(st, "FFFFFFFFFFFF", &b, &blen), STORE_NOTFOUND);
  store_close(st);
  dir_remove();
}

static void test_due_next_due(void)
{
  struct store *st;
  char ids[8][LIM_QUEUE_ID + 1];
  size_t n = 0;
  long long when = 0, now;
  struct store_rcpt_update u;

  dir_make();
  st = open_new(0);
  CHECK_EQ_INT(store_next_due(st, &when), STORE_OK);
  CHECK_EQ_INT(when, -1);
  CHECK_EQ_INT(store_due(st, wall_ms(), ids, 8, &n), STORE_OK);
  CHECK_EQ_INT(n, 0);

  /* created out of order: due from arrival, so the oldest comes first */
  CHECK_EQ_INT(accept_simple(st, "BBBBBBBBBBBB", "a@x", 2000, "r@y"), STORE_OK);
  CHECK_EQ_INT(accept_simple(st, "AAAAAAAAAAAA", "a@x", 1000, "r@y"), STORE_OK);
  CHECK_EQ_INT(accept_simple(st, "CCCCCCCCCCCC", "a@x", 3000, "r@y"), STORE_OK);
  now = wall_ms();
  CHECK_EQ_INT(store_due(st, now, ids, 8, &n), STORE_OK);
  CHECK_EQ_INT(n, 3);
  if(n == 3) {
    CHECK_EQ_STR(ids[0], "AAAAAAAAAAAA");
    CHECK_EQ_STR(ids[1], "BBBBBBBBBBBB");
    CHECK_EQ_STR(ids[2], "CCCCCCCCCCCC");
  }
  CHECK_EQ_INT(store_due(st, now, ids, 2, &n), STORE_OK);
  CHECK_EQ_INT(n, 2);
  /* nothing is due before it was queued */
  CHECK_EQ_INT(store_due(st, 0, ids, 8, &n), STORE_OK);
  CHECK_EQ_INT(n, 0);

  /* deferred an hour: no longer due now, and next_due says when */
  memset(&u, 0, sizeof(u));
  u.status = RCPT_DEFERRED;
  u.add_attempt = 1;
  u.next_attempt_ms = now + 3600000;
  u.reply = "451 4.7.0 try later";
  CHECK_EQ_INT(store_update(st, "AAAAAAAAAAAA", &u, 1), STORE_OK);
  u.status = RCPT_SENT;
  u.next_attempt_ms = 0;
  u.reply = "250 2.0.0 ok";
  CHECK_EQ_INT(store_update(st, "BBBBBBBBBBBB", &u, 1), STORE_OK);
  CHECK_EQ_INT(store_due(st, now, ids, 8, &n), STORE_OK);
  CHECK_EQ_INT(n, 1);
  CHECK_EQ_STR(ids[0], "CCCCCCCCCCCC");
  CHECK_EQ_INT(store_next_due(st, &when), STORE_OK);
  CHECK(when > 0 && when <= now);
  CHECK_EQ_INT(store_due(st, now + 3600000, ids, 8, &n), STORE_OK);
  CHECK_EQ_INT(n, 2);

  u.status = RCPT_BOUNCED;
  u.reply = "550 5.1.1 no such user";
  CHECK_EQ_INT(store_update(st, "CCCCCCCCCCCC", &u, 1), STORE_OK);
  CHECK_EQ_INT(store_next_due(st, &when), STORE_OK);
  CHECK_EQ_INT(when, now + 3600000);
  store_close(st);
  dir_remove();
}

static void test_update_statuses(void)
{
  struct store *st;
  struct store_msg m, got;
  struct store_rcpt r[2];
  const char *addrs[2] = { "a@y", "b@y" };
  struct store_rcpt_update u[2];

  dir_make();
  st = open_new(0);
  msg_fill(&m, r, "D00000000001", "s@x", 10, addrs, 2);
  CHECK_EQ_INT(store_accept(st, &m, "body", 4), STORE_OK);

  memset(u, 0, sizeof(u));
  u[0].idx = 0;
  u[0].status = RCPT_SENT;
  u[0].add_attempt = 1;
  u[0].reply = "250 2.0.0 OK";
  u[0].upstream = "office365";
  u[1].idx = 1;
  u[1].status = RCPT_DEFERRED;
  u[1].add_attempt = 1;
  u[1].next_attempt_ms = 123456;
  u[1].reply = "421 4.4.2 timeout";
  u[1].upstream = "office365";
  CHECK_EQ_INT(store_update(st, "D00000000001", u, 2), STORE_OK);
  /* a second attempt without a reply keeps the last one */
  u[1].reply = NULL;
  u[1].upstream = NULL;
  u[1].next_attempt_ms = 999999;
  CHECK_EQ_INT(store_update(st, "D00000000001", &u[1], 1), STORE_OK);
  CHECK_EQ_INT(store_get(st, "D00000000001", &got), STORE_OK);
  CHECK_EQ_INT(got.nrcpts, 2);
  if(got.nrcpts == 2) {
    CHECK_EQ_INT(got.rcpts[0].status, RCPT_SENT);
    CHECK_EQ_INT(got.rcpts[0].attempts, 1);
    CHECK_EQ_STR(got.rcpts[0].last_reply, "250 2.0.0 OK");
    CHECK_EQ_STR(got.rcpts[0].upstream, "office365");
    CHECK_EQ_INT(got.rcpts[1].status, RCPT_DEFERRED);
    CHECK_EQ_INT(got.rcpts[1].attempts, 2);
    CHECK_EQ_INT(got.rcpts[1].next_attempt_ms, 999999);
    CHECK_EQ_STR(got.rcpts[1].last_reply, "421 4.4.2 timeout");
    CHECK_EQ_STR(got.rcpts[1].upstream, "office365");
    CHECK(got.rcpts[1].updated_ms > 0);
  }
  store_msg_free(&got);

  /* unknown message, or an unknown recipient: nothing of the update is applied */
  CHECK_EQ_INT(store_update(st, "FFFFFFFFFFFF", u, 1), STORE_NOTFOUND);
  u[0].status = RCPT_BOUNCED;
  u[1].idx = 9;
  CHECK_EQ_INT(store_update(st, "D00000000001", u, 2), STORE_NOTFOUND);
  CHECK_EQ_INT(store_get(st, "D00000000001", &got), STORE_OK);
  if(got.nrcpts == 2)
    CHECK_EQ_INT(got.rcpts[0].status, RCPT_SENT);
  store_msg_free(&got);
  store_close(st);
  dir_remove();
}

struct list_acc {
  char ids[400][LIM_QUEUE_ID + 1];
  size_t n;
  size_t stop_after;       /* 0: never */
  long long last_created;
  int ordered;
  int have_rcpts;
  struct store *st;        /* when set, the callback reads the store itself */
  int nested_ok;
};

static int list_cb(void *arg, const struct store_msg *m)
{
  struct list_acc *a = arg;
  if(a->n < 400)
    snprintf(a->ids[a->n], sizeof(a->ids[0]), "%s", m->id);
  if(m->created_ms < a->last_created)
    a->ordered = 0;
  a->last_created = m->created_ms;
  if(!m->nrcpts || !m->rcpts[0].address)
    a->have_rcpts = 0;
  if(a->st) {
    struct store_msg again;
    if(store_get(a->st, m->id, &again) != STORE_OK)
      a->nested_ok = 0;
    store_msg_free(&again);
  }
  a->n++;
  return a->stop_after && a->n >= a->stop_after;
}

static size_t list_count(struct store *st, const struct store_filter *f, struct list_acc *a)
{
  memset(a, 0, sizeof(*a));
  a->ordered = 1;
  a->have_rcpts = 1;
  a->last_created = -1;
  CHECK_EQ_INT(store_list(st, f, list_cb, a), STORE_OK);
  CHECK(a->ordered);
  CHECK(a->have_rcpts);
  return a->n;
}

static void test_list_filters(void)
{
  static struct list_acc a;
  struct store *st;
  struct store_filter f;
  struct store_rcpt_update u;
  struct store_msg m;
  struct store_rcpt r[2];
  const char *addrs[2] = { "Pat@Example.NET", "bob@other.org" };
  char id[LIM_QUEUE_ID + 1];
  long long now = wall_ms();
  int i;

  dir_make();
  st = open_new(STORE_OPEN_WRITER);
  msg_fill(&m, r, "L00000000001", "App@Clinic.Example", now - 7200000, addrs, 2);
  CHECK_EQ_INT(store_accept(st, &m, "x", 1), STORE_OK);
  CHECK_EQ_INT(accept_simple(st, "L00000000002", "cron@clinic.example", now - 60000,
                             "ops@example.net"), STORE_OK);
  CHECK_EQ_INT(accept_simple(st, "L00000000003", "", now, "x@third.example"), STORE_OK);
  memset(&u, 0, sizeof(u));
  u.idx = 1;
  u.status = RCPT_DEFERRED;
  u.next_attempt_ms = now + 1000;
  CHECK_EQ_INT(store_update(st, "L00000000001", &u, 1), STORE_OK);

  CHECK_EQ_INT(list_count(st, NULL, &a), 3);
  CHECK_EQ_STR(a.ids[0], "L00000000001");
  CHECK_EQ_STR(a.ids[2], "L00000000003");

  memset(&f, 0, sizeof(f));
  f.status = -1;
  f.sender_glob = "app@*";                    /* case-insensitive */
  CHECK_EQ_INT(list_count(st, &f, &a), 1);
  CHECK_EQ_STR(a.ids[0], "L00000000001");
  f.sender_glob = "*@clinic.example";
  CHECK_EQ_INT(list_count(st, &f, &a), 2);
  f.sender_glob = NULL;
  f.recipient_glob = "*@example.net";
  CHECK_EQ_INT(list_count(st, &f, &a), 2);
  f.recipient_glob = "pat@*";
  CHECK_EQ_INT(list_count(st, &f, &a), 1);
  f.recipient_glob = NULL;
  f.status = RCPT_DEFERRED;
  CHECK_EQ_INT(list_count(st, &f, &a), 1);
  CHECK_EQ_STR(a.ids[0], "L00000000001");
  /* recipient and status must hold for the same recipient */
  f.recipient_glob = "pat@*";
  CHECK_EQ_INT(list_count(st, &f, &a), 0);
  f.recipient_glob = "bob@*";
  CHECK_EQ_INT(list_count(st, &f, &a), 1);
  f.recipient_glob = NULL;
  f.status = RCPT_QUEUED;
  CHECK_EQ_INT(list_count(st, &f, &a), 3);
  f.status = RCPT_SENT;
  CHECK_EQ_INT(list_count(st, &f, &a), 0);
  f.status = -1;
  f.older_than_ms = 30000;
  CHECK_EQ_INT(list_count(st, &f, &a), 2);
  f.older_than_ms = 3600000;
  CHECK_EQ_INT(list_count(st, &f, &a), 1);
  f.older_than_ms = 0;
  f.status = 99;
  CHECK_EQ_INT(store_list(st, &f, list_cb, &a), STORE_ERROR);

  /* more than one page, a callback that reads the store, and one that stops early */
  for(i = 0; i < 300; i++) {
    snprintf(id, sizeof(id), "P%011d", i);
    CHECK_EQ_INT(accept_simple(st, id, "bulk@x", now + 1000 + i / 3, "r@y"), STORE_OK);
  }
  memset(&f, 0, sizeof(f));
  f.status = -1;
  f.sender_glob = "bulk@x";
  memset(&a, 0, sizeof(a));
  a.ordered = a.have_rcpts = a.nested_ok = 1;
  a.st = st;
  CHECK_EQ_INT(store_list(st, &f, list_cb, &a), STORE_OK);
  CHECK_EQ_INT(a.n, 300);
  CHECK(a.ordered);
  CHECK(a.nested_ok);
  CHECK_EQ_STR(a.ids[0], "P00000000000");
  CHECK_EQ_STR(a.ids[299], "P00000000299");
  memset(&a, 0, sizeof(a));
  a.ordered = a.have_rcpts = 1;
  a.stop_after = 5;
  CHECK_EQ_INT(store_list(st, NULL, list_cb, &a), STORE_OK);
  CHECK_EQ_INT(a.n, 5);
  store_close(st);
  dir_remove();
}

static void test_delete_cascade(void)
{
  struct store *st;
  struct store_msg got;
  char err[256];
  char *b;
  size_t blen;

  dir_make();
  st = open_new(0);
  CHECK_EQ_INT(accept_simple(st, "DE0000000001", "a@x", 1, "r@y"), STORE_OK);
  CHECK_EQ_INT(accept_simple(st, "DE0000000002", "a@x", 2, "r@y"), STORE_OK);
  CHECK_EQ_INT(store_delete(st, "DE0000000001"), STORE_OK);
  CHECK_EQ_INT(store_get(st, "DE0000000001", &got), STORE_NOTFOUND);
  CHECK_EQ_INT(store_body(st, "DE0000000001", &b, &blen), STORE_NOTFOUND);
  CHECK_EQ_INT(store_delete(st, "DE0000000001"), STORE_NOTFOUND);
  /* the recipients went with it: no orphans */
  CHECK_EQ_INT(store_check(st, err, sizeof(err)), STORE_OK);
  CHECK_EQ_INT(store_get(st, "DE0000000002", &got), STORE_OK);
  store_msg_free(&got);
  store_close(st);
  dir_remove();
}

static void test_set_pending(void)
{
  struct store *st;
  struct store_msg m, got;
  struct store_rcpt r[3];
  const char *addrs[3] = { "a@y", "b@y", "c@y" };
  struct store_rcpt_update u[2];
  char ids[4][LIM_QUEUE_ID + 1];
  size_t n;
  long long before;

  dir_make();
  st = open_new(0);
  msg_fill(&m, r, "SP0000000001", "s@x", 10, addrs, 3);
  CHECK_EQ_INT(store_accept(st, &m, "body", 4), STORE_OK);
  memset(u, 0, sizeof(u));
  u[0].idx = 0;
  u[0].status = RCPT_SENT;
  u[1].idx = 1;
  u[1].status = RCPT_DEFERRED;
  u[1].next_attempt_ms = wall_ms() + 3600000;
  CHECK_EQ_INT(store_update(st, "SP0000000001", u, 2), STORE_OK);

  CHECK_EQ_INT(store_set_pending(st, "SP0000000001", RCPT_HELD), STORE_OK);
  CHECK_EQ_INT(store_get(st, "SP0000000001", &got), STORE_OK);
  if(got.nrcpts == 3) {
    CHECK_EQ_INT(got.rcpts[0].status, RCPT_SENT);    /* final: untouched */
    CHECK_EQ_INT(got.rcpts[1].status, RCPT_HELD);
    CHECK_EQ_INT(got.rcpts[2].status, RCPT_HELD);
  }
  store_msg_free(&got);
  CHECK_EQ_INT(store_due(st, wall_ms() + 7200000, ids, 4, &n), STORE_OK);
  CHECK_EQ_INT(n, 0);

  before = wall_ms();
  CHECK_EQ_INT(store_set_pending(st, "SP0000000001", RCPT_QUEUED), STORE_OK);
  CHECK_EQ_INT(store_get(st, "SP0000000001", &got), STORE_OK);
  if(got.nrcpts == 3) {
    CHECK_EQ_INT(got.rcpts[0].status, RCPT_SENT);
    CHECK_EQ_INT(got.rcpts[1].status, RCPT_QUEUED);
    CHECK(got.rcpts[1].next_attempt_ms >= before);
  }
  store_msg_free(&got);
  CHECK_EQ_INT(store_due(st, wall_ms(), ids, 4, &n), STORE_OK);
  CHECK_EQ_INT(n, 1);

  /* a hold by hand while a delivery is in flight: its pending result (deferred, or held by an
   * upstream's AUTH failure) leaves the hand's hold; a final one (sent) ends it */
  CHECK_EQ_INT(store_set_pending(st, "SP0000000001", RCPT_HELD), STORE_OK);
  memset(u, 0, sizeof(u));
  u[0].idx = 1;
  u[0].status = RCPT_DEFERRED;
  u[0].next_attempt_ms = wall_ms();
  u[1].idx = 2;
  u[1].status = RCPT_HELD;
  u[1].held_by = "up";
  CHECK_EQ_INT(store_update(st, "SP0000000001", u, 2), STORE_OK);
  CHECK_EQ_INT(store_get(st, "SP0000000001", &got), STORE_OK);
  if(got.nrcpts == 3) {
    CHECK_EQ_INT(got.rcpts[1].status, RCPT_HELD);
    CHECK_EQ_INT(got.rcpts[2].status, RCPT_HELD);
  }
  store_msg_free(&got);
  CHECK_EQ_INT(store_release_upstream(st, "up", &n), STORE_OK);
  CHECK_EQ_INT(n, 0);                                 /* not the upstream's hold to release */
  u[0].status = RCPT_SENT;
  CHECK_EQ_INT(store_update(st, "SP0000000001", u, 1), STORE_OK);
  CHECK_EQ_INT(store_get(st, "SP0000000001", &got), STORE_OK);
  if(got.nrcpts == 3)
    CHECK_EQ_INT(got.rcpts[1].status, RCPT_SENT);
  store_msg_free(&got);

  CHECK_EQ_INT(store_set_pending(st, "FFFFFFFFFFFF", RCPT_QUEUED), STORE_NOTFOUND);
  CHECK_EQ_INT(store_set_pending(st, "SP0000000001", RCPT_SENT), STORE_ERROR);
  store_close(st);
  dir_remove();
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
 * max_page_count, which SQLite reports as SQLITE_FULL. */
static int small_db_init(sqlite3 *db, const char **errmsg, const void *api)
{
  sqlite3_exec(db, "PRAGMA max_page_count = 40", NULL, NULL, NULL);
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

/* store_flush makes deferred mail due and nothing else; store_counts sees one snapshot */
static void test_flush_and_counts(void)
{
  struct store *st;
  struct store_msg m, got;
  struct store_rcpt r[4];
  const char *addrs[4] = { "a@y", "b@y", "c@y", "d@y" };
  struct store_rcpt_update u[3];
  struct store_counts sc;
  char ids[4][LIM_QUEUE_ID + 1];
  size_t n = 99;

  dir_make();
  st = open_new(0);
  CHECK_EQ_INT(store_counts(st, &sc), STORE_OK);
  CHECK_EQ_INT(sc.messages, 0);
  CHECK_EQ_INT(sc.oldest_unfinished_ms, -1);
  CHECK_EQ_INT(store_flush(st, &n), STORE_OK);
  CHECK_EQ_INT(n, 0);

  msg_fill(&m, r, "FL0000000001", "s@x", 1000, addrs, 4);
  CHECK_EQ_INT(store_accept(st, &m, "body", 4), STORE_OK);
  CHECK_EQ_INT(accept_simple(st, "FL0000000002", "s@x", 2000, "e@y"), STORE_OK);
  memset(u, 0, sizeof(u));
  u[0].idx = 0;
  u[0].status = RCPT_SENT;
  u[1].idx = 1;
  u[1].status = RCPT_DEFERRED;
  u[1].next_attempt_ms = wall_ms() + 3600000;
  u[2].idx = 2;
  u[2].status = RCPT_HELD;
  CHECK_EQ_INT(store_update(st, "FL0000000001", u, 3), STORE_OK);
  u[0].status = RCPT_CAPTURED;
  CHECK_EQ_INT(store_update(st, "FL0000000002", u, 1), STORE_OK);

  CHECK_EQ_INT(store_counts(st, &sc), STORE_OK);
  CHECK_EQ_INT(sc.messages, 2);
  CHECK_EQ_INT(sc.bytes, 4 + 18);
  CHECK_EQ_INT(sc.rcpts[RCPT_SENT], 1);
  CHECK_EQ_INT(sc.rcpts[RCPT_DEFERRED], 1);
  CHECK_EQ_INT(sc.rcpts[RCPT_HELD], 1);
  CHECK_EQ_INT(sc.rcpts[RCPT_QUEUED], 1);
  CHECK_EQ_INT(sc.rcpts[RCPT_CAPTURED], 1);
  CHECK_EQ_INT(sc.oldest_unfinished_ms, 1000);   /* the second one is finished */

  /* the deferred one (not the held one) is due now; a second flush finds nothing */
  CHECK_EQ_INT(store_due(st, wall_ms() + 1000, ids, 4, &n), STORE_OK);
  CHECK_EQ_INT(n, 1);                            /* the queued recipient d@y */
  CHECK_EQ_INT(store_flush(st, &n), STORE_OK);
  CHECK_EQ_INT(n, 1);
  CHECK_EQ_INT(store_get(st, "FL0000000001", &got), STORE_OK);
  if(got.nrcpts == 4) {
    CHECK_EQ_INT(got.rcpts[1].status, RCPT_DEFERRED);
    CHECK(got.rcpts[1].next_attempt_ms <= wall_ms());
    CHECK_EQ_INT(got.rcpts[2].status, RCPT_HELD);
  }
  store_msg_free(&got);
  CHECK_EQ_INT(store_flush(st, &n), STORE_OK);
  CHECK_EQ_INT(n, 0);
  store_close(st);
  dir_remove();
}

static int count_records(void *arg, const struct store_record *r)
{
  (void)r;
  (*(size_t *)arg)++;
  return 0;
}

static int event_names(void *arg, const struct store_record_event *e)
{
  char *out = arg;
  size_t n = strlen(out);
  snprintf(out + n, 256 - n, "%s%s", n ? "," : "", e->event);
  return 0;
}

/* Records: made once with the source's mark, found by Message-ID, token and provider id,
 * events idempotent with a status that only rises, filters, and the forward queue in order. */
static void test_records(void)
{
  struct store *st;
  struct store_record r, got;
  struct store_record_event e;
  struct store_blob blob = { "aa11", "data", 4 };
  struct store_cursor cur;
  char ids[4][LIM_QUEUE_ID + 1], id[LIM_QUEUE_ID + 1], thread[LIM_QUEUE_ID + 1], names[256];
  size_t n = 0, count = 0;
  long long seq = 0, next;
  int made = -1, added = -1, attempts;

  dir_make();
  st = open_new(0);
  CHECK_EQ_INT(accept_simple(st, "00000000000A", "app@x", 1, "pat@y"), STORE_OK);
  memset(&cur, 0, sizeof(cur));
  CHECK_EQ_INT(store_unrecorded(st, STORE_ORIGIN_QUEUE, &cur, ids, 4, &n), STORE_OK);
  CHECK_EQ_INT(n, 1);
  CHECK_EQ_STR(ids[0], "00000000000A");
  CHECK_EQ_STR(cur.id, "");           /* fewer than asked: the walk starts again */
  /* a walk in batches of one goes past a message still unrecorded, then starts again */
  CHECK_EQ_INT(accept_simple(st, "00000000000B", "app@x", 1, "pat@y"), STORE_OK);
  CHECK_EQ_INT(store_unrecorded(st, STORE_ORIGIN_QUEUE, &cur, ids, 1, &n), STORE_OK);
  CHECK_EQ_STR(ids[0], "00000000000A");
  CHECK_EQ_INT(store_unrecorded(st, STORE_ORIGIN_QUEUE, &cur, ids, 1, &n), STORE_OK);
  CHECK_EQ_STR(ids[0], "00000000000B");
  CHECK_EQ_INT(store_unrecorded(st, STORE_ORIGIN_QUEUE, &cur, ids, 1, &n), STORE_OK);
  CHECK_EQ_INT(n, 0);
  CHECK_EQ_INT(store_unrecorded(st, STORE_ORIGIN_QUEUE, &cur, ids, 1, &n), STORE_OK);
  CHECK_EQ_STR(ids[0], "00000000000A");
  memset(&cur, 0, sizeof(cur));

  memset(&r, 0, sizeof(r));
  snprintf(r.id, sizeof(r.id), "00000000000A");
  r.direction = (char *)"out";
  r.source = (char *)"submission";
  r.received_ms = 1000;
  r.message_id = (char *)"m1@x";
  r.status = (char *)"queued";
  r.reply_token = (char *)"abc123";
  r.json = (char *)"{\"id\":\"00000000000A\"}";
  CHECK_EQ_INT(store_record_add(st, STORE_ORIGIN_QUEUE, &r, "App@X\npat@y\n", &blob, 1, 1,
                                &made), STORE_OK);
  CHECK_EQ_INT(made, 1);
  CHECK_EQ_INT(store_unrecorded(st, STORE_ORIGIN_QUEUE, &cur, ids, 4, &n), STORE_OK);
  CHECK_EQ_INT(n, 1);                 /* B, not yet recorded */
  CHECK_EQ_STR(ids[0], "00000000000B");
  CHECK_EQ_INT(store_record_add(st, STORE_ORIGIN_QUEUE, &r, NULL, NULL, 0, 1, &made), STORE_OK);
  CHECK_EQ_INT(made, 0);

  CHECK_EQ_INT(store_record_find(st, STORE_BY_MESSAGE_ID, "m1@x", id, thread), STORE_OK);
  CHECK_EQ_STR(id, "00000000000A");
  CHECK_EQ_STR(thread, "00000000000A");
  CHECK_EQ_INT(store_record_find(st, STORE_BY_REPLY_TOKEN, "abc123", id, thread), STORE_OK);
  CHECK_EQ_INT(store_record_find(st, STORE_BY_REPLY_TOKEN, "nope", id, thread), STORE_NOTFOUND);
  CHECK_EQ_INT(store_record_relay(st, "00000000000A", "sgid", 0), STORE_OK);
  CHECK_EQ_INT(store_record_find(st, STORE_BY_PROVIDER_ID, "sgid", id, thread), STORE_OK);
  CHECK_EQ_INT(store_records_relay_pending(st, &seq, ids, 4, &n), STORE_OK);
  CHECK_EQ_INT(n, 1);
  CHECK_EQ_INT(seq, 0);        /* fewer than asked for: the walk starts over next time */

  /* a reply in the same thread */
  snprintf(r.id, sizeof(r.id), "00000000000B");
  r.direction = (char *)"in";
  r.source = (char *)"mx";
  r.message_id = (char *)"m2@y";
  r.thread_id = (char *)"00000000000A";
  r.parent_id = (char *)"00000000000A";
  r.status = NULL;
  r.reply_token = NULL;
  CHECK_EQ_INT(store_record_add(st, STORE_ORIGIN_INBOUND, &r, "pat@y\n", NULL, 0, 1, &made),
               STORE_OK);
  CHECK_EQ_INT(store_record_list(st, "PAT@Y", NULL, count_records, &count), STORE_OK);
  CHECK_EQ_INT(count, 2);
  count = 0;
  CHECK_EQ_INT(store_record_list(st, "app@x", NULL, count_records, &count), STORE_OK);
  CHECK_EQ_INT(count, 1);
  count = 0;
  CHECK_EQ_INT(store_record_list(st, NULL, "00000000000A", count_records, &count), STORE_OK);
  CHECK_EQ_INT(count, 2);
  count = 0;
  CHECK_EQ_INT(store_record_list(st, NULL, "00000000000B", count_records, &count), STORE_OK);
  CHECK_EQ_INT(count, 0);

  /* events: opened (rank 3) then a late delivered (rank 2): status stays opened */
  memset(&e, 0, sizeof(e));
  e.key = "sg:1";
  e.at_ms = 2000;
  e.event = "open";
  e.status = "opened";
  e.rank = 3;
  CHECK_EQ_INT(store_record_event_add(st, "00000000000A", &e, &added), STORE_OK);
  CHECK_EQ_INT(added, 1);
  CHECK_EQ_INT(store_record_event_add(st, "00000000000A", &e, &added), STORE_OK);
  CHECK_EQ_INT(added, 0);
  e.key = "sg:2";
  e.at_ms = 1500;
  e.event = "delivered";
  e.status = "delivered";
  e.rank = 2;
  CHECK_EQ_INT(store_record_event_add(st, "00000000000A", &e, &added), STORE_OK);
  CHECK_EQ_INT(store_record_event_add(st, "FFFFFFFFFFFF", &e, &added), STORE_OK);
  CHECK_EQ_INT(added, 0);
  CHECK_EQ_INT(store_record_get(st, "00000000000A", &got), STORE_OK);
  CHECK_EQ_STR(got.status, "opened");
  store_record_free(&got);
  names[0] = '\0';
  CHECK_EQ_INT(store_record_events(st, "00000000000A", event_names, names), STORE_OK);
  CHECK_EQ_STR(names, "delivered,open");

  /* the forward queue: record order, retry keeps the head, done moves on */
  CHECK_EQ_INT(store_forward_head(st, &seq, id, &attempts, &next), STORE_OK);
  CHECK_EQ_STR(id, "00000000000A");
  CHECK_EQ_INT(store_forward_result(st, seq, 0, 99, "HTTP 500"), STORE_OK);
  CHECK_EQ_INT(store_forward_head(st, &seq, id, &attempts, &next), STORE_OK);
  CHECK_EQ_STR(id, "00000000000A");
  CHECK_EQ_INT(attempts, 1);
  CHECK_EQ_INT(next, 99);
  CHECK_EQ_INT(store_forward_result(st, seq, 1, 0, NULL), STORE_OK);
  CHECK_EQ_INT(store_forward_head(st, &seq, id, &attempts, &next), STORE_OK);
  CHECK_EQ_STR(id, "00000000000B");
  CHECK_EQ_INT(store_forward_result(st, seq, 1, 0, NULL), STORE_OK);
  CHECK_EQ_INT(store_forward_head(st, &seq, id, &attempts, &next), STORE_NOTFOUND);
  store_close(st);
  dir_remove();
}

static const struct unit_case cases[] = {
  { "open_create_migrate", test_open_create_migrate },
  { "new_id", test_new_id },
  { "accept_get_body", test_accept_get_body },
  { "due_next_due", test_due_next_due },
  { "update_statuses", test_update_statuses },
  { "list_filters", test_list_filters },
  { "delete_cascade", test_delete_cascade },
  { "set_pending", test_set_pending },
  { "flush_and_counts", test_flush_and_counts },
  { "group_commit", test_group_commit },
  { "batch_isolation", test_batch_isolation },
  { "reopen_keeps_data", test_reopen_keeps_data },
  { "full_maps_to_store_full", test_full_maps_to_store_full },
  { "records", test_records },
};
UNIT_MAIN(cases)
