/* Unit tests of the queue in the store: byte-exact bodies, the due/update/list/delete cycle,
 * holds and releases, flush and the counts. */
#include "tests/unit/store_test.h"
#include <pthread.h>
#include <sqlite3.h>

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

/* id with recipients a@y, b@y, c@y: the first two set to s0 and s1 (due at next1), the third
 * left queued */
static void accept_three(struct store *st, const char *id, enum rcpt_status s0,
                         enum rcpt_status s1, long long next1)
{
  struct store_msg m;
  struct store_rcpt r[3];
  const char *addrs[3] = { "a@y", "b@y", "c@y" };
  struct store_rcpt_update u[2];
  msg_fill(&m, r, id, "s@x", 10, addrs, 3);
  CHECK_EQ_INT(store_accept(st, &m, "body", 4), STORE_OK);
  memset(u, 0, sizeof(u));
  u[0].idx = 0;
  u[0].status = s0;
  u[1].idx = 1;
  u[1].status = s1;
  u[1].next_attempt_ms = next1;
  CHECK_EQ_INT(store_update(st, id, u, 2), STORE_OK);
}

static void test_set_pending(void)
{
  struct store *st;
  struct store_msg got;
  struct store_rcpt_update u[2];
  char ids[4][LIM_QUEUE_ID + 1];
  size_t n;
  long long before;

  dir_make();
  st = open_new(0);
  accept_three(st, "SP0000000001", RCPT_SENT, RCPT_DEFERRED, wall_ms() + 3600000);

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

static void test_release_to(void)
{
  struct store *st;
  struct store_msg got;
  size_t n = 99;
  long long before;

  dir_make();
  st = open_new(0);
  accept_three(st, "RT0000000001", RCPT_CAPTURED, RCPT_CAPTURED, 0);
  CHECK_EQ_INT(store_get(st, "RT0000000001", &got), STORE_OK);
  if(got.nrcpts == 3)
    CHECK(!got.rcpts[0].route_to);                  /* routed mail has none */
  store_msg_free(&got);

  before = wall_ms();
  CHECK_EQ_INT(store_release_to(st, "RT0000000001", "office", &n), STORE_OK);
  CHECK_EQ_INT(n, 2);                               /* the captured ones only */
  CHECK_EQ_INT(store_get(st, "RT0000000001", &got), STORE_OK);
  if(got.nrcpts == 3) {
    CHECK_EQ_INT(got.rcpts[0].status, RCPT_QUEUED);
    CHECK(got.rcpts[0].next_attempt_ms >= before);
    CHECK_EQ_STR(got.rcpts[0].route_to ? got.rcpts[0].route_to : "", "office");
    CHECK_EQ_STR(got.rcpts[1].route_to ? got.rcpts[1].route_to : "", "office");
    CHECK(!got.rcpts[2].route_to);                  /* queued all along: not released */
  }
  store_msg_free(&got);
  /* a hold and a release keep where it was sent */
  CHECK_EQ_INT(store_set_pending(st, "RT0000000001", RCPT_HELD), STORE_OK);
  CHECK_EQ_INT(store_set_pending(st, "RT0000000001", RCPT_QUEUED), STORE_OK);
  CHECK_EQ_INT(store_get(st, "RT0000000001", &got), STORE_OK);
  if(got.nrcpts == 3)
    CHECK_EQ_STR(got.rcpts[1].route_to ? got.rcpts[1].route_to : "", "office");
  store_msg_free(&got);
  CHECK_EQ_INT(store_release_to(st, "RT0000000001", "office", &n), STORE_OK);
  CHECK_EQ_INT(n, 0);                               /* nothing captured any more */
  CHECK_EQ_INT(store_release_to(st, "FFFFFFFFFFFF", "office", &n), STORE_NOTFOUND);
  store_close(st);
  dir_remove();
}

struct by_upstream {
  long long deferred_up1, held_none, other;
};

static int by_upstream_cb(void *arg, const char *upstream, enum rcpt_status st, long long n)
{
  struct by_upstream *b = arg;
  if(upstream && !strcmp(upstream, "up1") && st == RCPT_DEFERRED)
    b->deferred_up1 += n;
  else if(!upstream && st == RCPT_HELD)
    b->held_none += n;
  else if(st != RCPT_QUEUED)
    b->other += n;
  return 0;
}

static void test_flush_and_counts(void)
{
  struct by_upstream bu = { 0, 0, 0 };
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
  u[1].upstream = "up1";
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
  /* the waiting ones by the upstream that last had them (the console's overview) */
  CHECK_EQ_INT(store_waiting_by_upstream(st, by_upstream_cb, &bu), STORE_OK);
  CHECK_EQ_INT(bu.deferred_up1, 1);
  CHECK_EQ_INT(bu.held_none, 1);
  CHECK_EQ_INT(bu.other, 0);
  /* the pending counts (GET /metrics) agree, and leave the history alone */
  CHECK_EQ_INT(store_counts_pending(st, &sc), STORE_OK);
  CHECK_EQ_INT(sc.rcpts[RCPT_QUEUED], 1);
  CHECK_EQ_INT(sc.rcpts[RCPT_DEFERRED], 1);
  CHECK_EQ_INT(sc.rcpts[RCPT_HELD], 1);
  CHECK_EQ_INT(sc.rcpts[RCPT_SENT], 0);
  CHECK_EQ_INT(sc.messages, -1);
  CHECK_EQ_INT(sc.oldest_unfinished_ms, 1000);

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

/* store_due merges the queued and the deferred walks of the index: earliest due first, each
 * message once (at its earliest recipient), at most max. */
static void test_due_merges_walks(void)
{
  struct store *st;
  struct store_msg m;
  struct store_rcpt r[3];
  struct store_rcpt_update u;
  const char *addrs[3] = { "a@y", "b@y", "c@y" };
  char ids[8][LIM_QUEUE_ID + 1];
  size_t n = 0;

  dir_make();
  st = open_new(0);
  msg_fill(&m, r, "00000000000X", "app@x", 5000, addrs, 3);       /* queued, due at 5000 */
  CHECK_EQ_INT(store_accept(st, &m, "x", 1), STORE_OK);
  CHECK_EQ_INT(accept_simple(st, "00000000000Z", "app@x", 3000, "z@y"), STORE_OK);
  CHECK_EQ_INT(accept_simple(st, "00000000000Y", "app@x", 4000, "y@y"), STORE_OK);
  memset(&u, 0, sizeof(u));
  u.status = RCPT_DEFERRED;
  u.next_attempt_ms = 1000;                                          /* deferred, due at 1000 */
  CHECK_EQ_INT(store_update(st, "00000000000Y", &u, 1), STORE_OK);
  CHECK_EQ_INT(store_due(st, 10000, ids, 8, &n), STORE_OK);
  CHECK_EQ_INT(n, 3);
  CHECK_EQ_STR(ids[0], "00000000000Y");
  CHECK_EQ_STR(ids[1], "00000000000Z");
  CHECK_EQ_STR(ids[2], "00000000000X");
  CHECK_EQ_INT(store_due(st, 10000, ids, 2, &n), STORE_OK);
  CHECK_EQ_INT(n, 2);
  CHECK_EQ_STR(ids[1], "00000000000Z");
  CHECK_EQ_INT(store_due(st, 3500, ids, 8, &n), STORE_OK);
  CHECK_EQ_INT(n, 2);                                /* X is not due yet */
  store_close(st);
  dir_remove();
}

/* The overdue walks: messages in the order they came, from a cursor to a cutoff, each with
 * whether it is overdue; a walk moved past them reads none of them again (a queue of waiting
 * mail is not read at every sweep), and the cutoff bounds it. */
static void test_overdue_walk(void)
{
  struct store *st;
  struct store_rcpt_update u;
  struct store_overdue_row rows[8];
  struct store_cursor at;
  size_t n = 0;

  dir_make();
  st = open_new(0);
  CHECK_EQ_INT(accept_simple(st, "00000000000A", "app@x", 1000, "a@y"), STORE_OK);  /* queued */
  CHECK_EQ_INT(accept_simple(st, "00000000000B", "app@x", 2000, "b@y"), STORE_OK);  /* sent */
  CHECK_EQ_INT(accept_simple(st, "00000000000C", "app@x", 3000, "c@y"), STORE_OK);  /* by hand */
  CHECK_EQ_INT(accept_simple(st, "00000000000D", "app@x", 4000, "d@y"), STORE_OK);  /* login */
  CHECK_EQ_INT(accept_simple(st, "00000000000E", "", 5000, "e@y"), STORE_OK);       /* a DSN */
  CHECK_EQ_INT(accept_simple(st, "00000000000F", "app@x", 9000, "f@y"), STORE_OK);  /* young */
  memset(&u, 0, sizeof(u));
  u.status = RCPT_SENT;
  CHECK_EQ_INT(store_update(st, "00000000000B", &u, 1), STORE_OK);
  CHECK_EQ_INT(store_set_pending(st, "00000000000C", RCPT_HELD), STORE_OK);
  u.status = RCPT_HELD;
  u.held_by = "up";
  CHECK_EQ_INT(store_update(st, "00000000000D", &u, 1), STORE_OK);

  memset(&at, 0, sizeof(at));
  at.ms = LLONG_MIN;
  CHECK_EQ_INT(store_overdue(st, STORE_OVERDUE_EXPIRED, &at, 6000, rows, 8, &n), STORE_OK);
  CHECK_EQ_INT(n, 5);                    /* F is younger than the cutoff */
  if(n == 5) {
    CHECK_EQ_STR(rows[0].id, "00000000000A");
    CHECK_EQ_INT(rows[0].created_ms, 1000);
    CHECK_EQ_INT(rows[0].overdue, 1);
    CHECK_EQ_INT(rows[1].overdue, 0);    /* sent */
    CHECK_EQ_INT(rows[2].overdue, 0);    /* held by hand: the operator's to end */
    CHECK_EQ_INT(rows[3].overdue, 1);    /* held after a refused login */
    CHECK_EQ_INT(rows[4].overdue, 1);
  }
  CHECK_EQ_INT(store_overdue(st, STORE_OVERDUE_UNWARNED, &at, 6000, rows, 8, &n), STORE_OK);
  CHECK_EQ_INT(n, 5);
  if(n == 5) {
    CHECK_EQ_INT(rows[0].overdue, 1);
    CHECK_EQ_INT(rows[1].overdue, 0);
    CHECK_EQ_INT(rows[2].overdue, 1);    /* held by hand: still waiting, the sender hears */
    CHECK_EQ_INT(rows[3].overdue, 1);
    CHECK_EQ_INT(rows[4].overdue, 0);    /* no sender to tell */
  }
  CHECK_EQ_INT(store_delay_warned(st, "00000000000A"), STORE_OK);
  CHECK_EQ_INT(store_overdue(st, STORE_OVERDUE_UNWARNED, &at, 6000, rows, 8, &n), STORE_OK);
  CHECK(n == 5 && rows[0].overdue == 0);

  /* a step of two, then on from the last one: each message once, in order */
  CHECK_EQ_INT(store_overdue(st, STORE_OVERDUE_EXPIRED, &at, 6000, rows, 2, &n), STORE_OK);
  CHECK(n == 2 && !strcmp(rows[1].id, "00000000000B"));
  at.ms = rows[1].created_ms;
  snprintf(at.id, sizeof(at.id), "%s", rows[1].id);
  CHECK_EQ_INT(store_overdue(st, STORE_OVERDUE_EXPIRED, &at, 6000, rows, 8, &n), STORE_OK);
  CHECK(n == 3 && !strcmp(rows[0].id, "00000000000C"));
  at.ms = rows[2].created_ms;
  snprintf(at.id, sizeof(at.id), "%s", rows[2].id);
  /* walked to the cutoff: nothing is read again, however much waits behind it */
  CHECK_EQ_INT(store_overdue(st, STORE_OVERDUE_EXPIRED, &at, 6000, rows, 8, &n), STORE_OK);
  CHECK_EQ_INT(n, 0);
  CHECK_EQ_INT(store_overdue(st, STORE_OVERDUE_UNWARNED, &at, 6000, rows, 8, &n), STORE_OK);
  CHECK_EQ_INT(n, 0);
  /* a later cutoff lets the next one in */
  CHECK_EQ_INT(store_overdue(st, STORE_OVERDUE_EXPIRED, &at, 10000, rows, 8, &n), STORE_OK);
  CHECK(n == 1 && !strcmp(rows[0].id, "00000000000F") && rows[0].overdue == 1);
  store_close(st);
  dir_remove();
}

/* The totals the store keeps agree with what a walk of every message finds, through accepts,
 * updates, deletes and pruning; and reading them costs the same however much finished mail is
 * stored (SQLite's own count of the instructions it ran, not a clock). */
struct walk_counts {
  long long rcpts[RCPT_CAPTURED + 1], messages, bytes;
};

static int walk_cb(void *arg, const struct store_msg *m)
{
  struct walk_counts *w = arg;
  size_t i;
  w->messages++;
  w->bytes += m->size;
  for(i = 0; i < m->nrcpts; i++)
    w->rcpts[m->rcpts[i].status]++;
  return 0;
}

static void counts_agree(struct store *st)
{
  struct walk_counts w;
  struct store_counts sc;
  int i;
  memset(&w, 0, sizeof(w));
  CHECK_EQ_INT(store_list(st, NULL, walk_cb, &w), STORE_OK);
  CHECK_EQ_INT(store_counts(st, &sc), STORE_OK);
  CHECK_EQ_INT(sc.messages, w.messages);
  CHECK_EQ_INT(sc.bytes, w.bytes);
  for(i = 0; i <= RCPT_CAPTURED; i++)
    CHECK_EQ_INT(sc.rcpts[i], w.rcpts[i]);
}

static long long vm_steps;

static int count_steps(void *arg)
{
  (void)arg;
  __atomic_add_fetch(&vm_steps, 1, __ATOMIC_RELAXED);
  return 0;
}

static int count_steps_init(sqlite3 *db, const char **errmsg, const void *api)
{
  sqlite3_progress_handler(db, 1, count_steps, NULL);
  return SQLITE_OK;
}

static long long counts_cost(struct store *st)
{
  struct store_counts sc;
  long long before = __atomic_load_n(&vm_steps, __ATOMIC_RELAXED);
  CHECK_EQ_INT(store_counts(st, &sc), STORE_OK);
  return __atomic_load_n(&vm_steps, __ATOMIC_RELAXED) - before;
}

static void test_counts_kept(void)
{
  struct store *st;
  struct store_msg m;
  struct store_rcpt r[3];
  const char *addrs[3] = { "a@y", "b@y", "c@y" };
  struct store_rcpt_update u[2];
  struct store_retention ret = { 1000, 1000, 0 };
  struct store_prune_counts pc;
  char id[LIM_QUEUE_ID + 1];
  long long few, many, now = wall_ms();
  int i;

  dir_make();
  st = open_new(0);
  counts_agree(st);
  msg_fill(&m, r, "CK0000000001", "s@x", now, addrs, 3);
  CHECK_EQ_INT(store_accept(st, &m, "hello", 5), STORE_OK);
  CHECK_EQ_INT(accept_simple(st, "CK0000000002", "s@x", now, "d@y"), STORE_OK);
  CHECK_EQ_INT(accept_simple(st, "CK0000000003", "s@x", now, "e@y"), STORE_OK);
  counts_agree(st);
  memset(u, 0, sizeof(u));
  u[0].idx = 0;
  u[0].status = RCPT_SENT;
  u[1].idx = 2;
  u[1].status = RCPT_DEFERRED;
  u[1].next_attempt_ms = now + 60000;
  CHECK_EQ_INT(store_update(st, "CK0000000001", u, 2), STORE_OK);
  CHECK_EQ_INT(store_update(st, "CK0000000001", u, 2), STORE_OK);   /* no move: no change */
  counts_agree(st);
  CHECK_EQ_INT(store_set_pending(st, "CK0000000001", RCPT_HELD), STORE_OK);
  CHECK_EQ_INT(store_delete(st, "CK0000000002"), STORE_OK);          /* with its recipient */
  counts_agree(st);
  u[0].idx = 0;
  u[0].status = RCPT_CAPTURED;
  CHECK_EQ_INT(store_update(st, "CK0000000003", u, 1), STORE_OK);
  CHECK_EQ_INT(store_record_skip(st, STORE_ORIGIN_QUEUE, "CK0000000003"), STORE_OK);
  CHECK_EQ_INT(store_prune(st, &ret, now + 10000, 0, &pc), STORE_OK);
  CHECK_EQ_INT(pc.messages, 1);
  counts_agree(st);
  store_close(st);

  sqlite3_auto_extension((void (*)(void))count_steps_init);
  st = open_new(0);
  few = counts_cost(st);
  for(i = 0; i < 300; i++) {
    snprintf(id, sizeof(id), "CKM%09d", i);
    CHECK_EQ_INT(accept_simple(st, id, "s@x", now, "f@y"), STORE_OK);
    u[0].idx = 0;
    u[0].status = i % 2 ? RCPT_SENT : RCPT_BOUNCED;
    CHECK_EQ_INT(store_update(st, id, u, 1), STORE_OK);
  }
  many = counts_cost(st);
  fprintf(stderr, "# store_counts: %lld SQLite steps, %lld with 300 finished messages more\n", few,
          many);
  CHECK(few > 0);
  CHECK(many <= few + 20);
  counts_agree(st);
  store_close(st);
  sqlite3_reset_auto_extension();
  dir_remove();
}

static const struct unit_case cases[] = {
  { "overdue_walk", test_overdue_walk },
  { "counts_kept", test_counts_kept },
  { "due_merges_walks", test_due_merges_walks },
  { "accept_get_body", test_accept_get_body },
  { "due_next_due", test_due_next_due },
  { "update_statuses", test_update_statuses },
  { "list_filters", test_list_filters },
  { "delete_cascade", test_delete_cascade },
  { "set_pending", test_set_pending },
  { "release_to", test_release_to },
  { "flush_and_counts", test_flush_and_counts },
};
UNIT_MAIN(cases)
