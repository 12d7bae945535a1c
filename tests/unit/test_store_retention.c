/* Unit tests of retention in the store: what store_prune removes and what it keeps (mail not
 * final, not recorded, still forwarded; captured mail by its own retention; records with the
 * attachments only they use; applied events after 3 days), the text copies an outbound record
 * loses with its message, dry runs, and the table figures of store_stats. */
#include "tests/unit/store_test.h"

#define DAY_MS 86400000LL

/* An outbound record of id, made (recorded), following its recipients no more, not owed to
 * forward_url; received at received_ms, with the attachments given. */
static void record_out(struct store *st, const char *id, long long received_ms,
                       const struct store_blob *att, size_t natt)
{
  struct store_record r;
  int made = 0;
  memset(&r, 0, sizeof(r));
  snprintf(r.id, sizeof(r.id), "%s", id);
  r.direction = (char *)"out";
  r.source = (char *)"submission";
  r.received_ms = received_ms;
  r.json = (char *)"{\"subject\":\"s\",\"text\":\"the text\",\"html\":\"<p>x</p>\","
                   "\"reply_text\":\"the text\"}";
  CHECK_EQ_INT(store_record_add(st, STORE_ORIGIN_QUEUE, &r, NULL, att, natt, 0, &made),
               STORE_OK);
  CHECK_EQ_INT(made, 1);
  CHECK_EQ_INT(store_record_relay(st, id, NULL, 1), STORE_OK);
}

static void set_status(struct store *st, const char *id, enum rcpt_status status)
{
  struct store_rcpt_update u;
  memset(&u, 0, sizeof(u));
  u.status = status;
  u.add_attempt = 1;
  CHECK_EQ_INT(store_update(st, id, &u, 1), STORE_OK);
}

static long long rows(struct store *st, const char *table)
{
  struct store_stats s;
  int i;
  CHECK_EQ_INT(store_stats(st, &s), STORE_OK);
  for(i = 0; i < STORE_NTABLES; i++)
    if(!strcmp(s.tables[i].name, table))
      return s.tables[i].rows;
  return -1;
}

static void test_prune_messages(void)
{
  struct store *st;
  struct store_retention ret = { 2 * DAY_MS, 1 * DAY_MS, 0 };
  struct store_prune_counts c;
  struct store_record rec;
  struct store_msg m;
  long long now = wall_ms();

  dir_make();
  st = open_new(0);
  CHECK_EQ_INT(accept_simple(st, "00000000000A", "app@x", now, "a@y"), STORE_OK);  /* sent */
  set_status(st, "00000000000A", RCPT_SENT);
  record_out(st, "00000000000A", now, NULL, 0);
  CHECK_EQ_INT(accept_simple(st, "00000000000B", "app@x", now, "b@y"), STORE_OK);  /* captured */
  set_status(st, "00000000000B", RCPT_CAPTURED);
  record_out(st, "00000000000B", now, NULL, 0);
  CHECK_EQ_INT(accept_simple(st, "00000000000C", "app@x", now, "c@y"), STORE_OK);  /* deferred */
  set_status(st, "00000000000C", RCPT_DEFERRED);
  record_out(st, "00000000000C", now, NULL, 0);
  CHECK_EQ_INT(accept_simple(st, "00000000000D", "app@x", now, "d@y"), STORE_OK);  /* no record */
  set_status(st, "00000000000D", RCPT_SENT);

  /* too early for anything */
  CHECK_EQ_INT(store_prune(st, &ret, now + DAY_MS / 2, 0, &c), STORE_OK);
  CHECK_EQ_INT(c.messages, 0);
  /* captured mail goes first, by capture_retention */
  CHECK_EQ_INT(store_prune(st, &ret, now + DAY_MS + 1000, 1, &c), STORE_OK);
  CHECK_EQ_INT(c.messages, 1);
  CHECK_EQ_INT(store_prune(st, &ret, now + DAY_MS + 1000, 0, &c), STORE_OK);
  CHECK_EQ_INT(c.messages, 1);
  CHECK_EQ_INT(store_get(st, "00000000000B", &m), STORE_NOTFOUND);
  CHECK_EQ_INT(store_get(st, "00000000000A", &m), STORE_OK);
  store_msg_free(&m);
  /* then the sent one; the deferred and the unrecorded stay */
  CHECK_EQ_INT(store_prune(st, &ret, now + 3 * DAY_MS, 0, &c), STORE_OK);
  CHECK_EQ_INT(c.messages, 1);
  CHECK_EQ_INT(c.texts, 1);
  CHECK_EQ_INT(store_get(st, "00000000000A", &m), STORE_NOTFOUND);
  CHECK_EQ_INT(store_get(st, "00000000000C", &m), STORE_OK);
  store_msg_free(&m);
  CHECK_EQ_INT(store_get(st, "00000000000D", &m), STORE_OK);
  store_msg_free(&m);
  CHECK_EQ_INT(rows(st, "recipients"), 2);
  /* the record stays, without the copies of the text */
  CHECK_EQ_INT(store_record_get(st, "00000000000A", &rec), STORE_OK);
  CHECK(strstr(rec.json, "\"subject\":\"s\"") != NULL);
  CHECK(strstr(rec.json, "the text") == NULL);
  CHECK(strstr(rec.json, "\"content_pruned\":true") != NULL);
  store_record_free(&rec);
  /* retention 0 keeps everything */
  ret.retention_ms = ret.capture_ms = 0;
  set_status(st, "00000000000C", RCPT_SENT);
  CHECK_EQ_INT(store_prune(st, &ret, now + 300 * DAY_MS, 0, &c), STORE_OK);
  CHECK_EQ_INT(c.messages, 0);
  store_close(st);
  dir_remove();
}

static void test_prune_inbound_events_records(void)
{
  struct store *st;
  struct store_retention ret = { DAY_MS, DAY_MS, 2 * DAY_MS };
  struct store_prune_counts c;
  struct store_inbound in;
  struct store_event ev[2];
  struct store_blob shared = { "aa", "shared", 6 }, own = { "bb", "own", 3 };
  struct store_blob both[2];
  struct store_record rec;
  long long now = wall_ms();
  int dup = 0, made = 0;

  dir_make();
  st = open_new(0);
  memset(&in, 0, sizeof(in));
  snprintf(in.id, sizeof(in.id), "0000000000F1");
  in.source = "mx";
  in.received_ms = now;
  CHECK_EQ_INT(store_inbound_accept(st, &in, "x", 1, &dup), STORE_OK);
  memset(&rec, 0, sizeof(rec));
  snprintf(rec.id, sizeof(rec.id), "0000000000F1");
  rec.direction = (char *)"in";
  rec.source = (char *)"mx";
  rec.received_ms = now;
  rec.json = (char *)"{}";
  CHECK_EQ_INT(store_record_add(st, STORE_ORIGIN_INBOUND, &rec, NULL, NULL, 0, 0, &made),
               STORE_OK);
  memset(ev, 0, sizeof(ev));
  ev[0].key = "applied";
  ev[0].payload = "{}";
  ev[0].payloadlen = 2;
  ev[1] = ev[0];
  ev[1].key = "waiting";
  CHECK_EQ_INT(store_events_add(st, ev, 2, NULL), STORE_OK);
  CHECK_EQ_INT(store_event_applied(st, "applied"), STORE_OK);

  /* records: the old one goes with the attachment only it has; the shared one stays */
  both[0] = shared;
  both[1] = own;
  CHECK_EQ_INT(accept_simple(st, "0000000000E1", "app@x", now, "a@y"), STORE_OK);
  CHECK_EQ_INT(accept_simple(st, "0000000000E2", "app@x", now, "a@y"), STORE_OK);
  record_out(st, "0000000000E1", now - 5 * DAY_MS, both, 2);
  record_out(st, "0000000000E2", now, &shared, 1);
  CHECK_EQ_INT(rows(st, "attachments"), 2);

  /* a day and a half later: the inbound message (recorded) goes; the event is too young */
  CHECK_EQ_INT(store_prune(st, &ret, now + DAY_MS + DAY_MS / 2, 0, &c), STORE_OK);
  CHECK_EQ_INT(c.inbound, 1);
  CHECK_EQ_INT(c.events, 0);
  CHECK_EQ_INT(c.records, 1);
  CHECK_EQ_INT(c.attachments, 1);
  CHECK_EQ_INT(rows(st, "inbound_messages"), 0);
  CHECK_EQ_INT(rows(st, "attachments"), 1);
  CHECK_EQ_INT(store_record_get(st, "0000000000E1", &rec), STORE_NOTFOUND);
  CHECK_EQ_INT(store_record_get(st, "0000000000E2", &rec), STORE_OK);
  store_record_free(&rec);
  /* after three days the applied event goes, the one waiting to be applied stays */
  CHECK_EQ_INT(store_prune(st, &ret, now + 3 * DAY_MS + 1000, 1, &c), STORE_OK);
  CHECK_EQ_INT(c.events, 1);
  CHECK_EQ_INT(store_prune(st, &ret, now + 3 * DAY_MS + 1000, 0, &c), STORE_OK);
  CHECK_EQ_INT(c.events, 1);
  CHECK_EQ_INT(rows(st, "inbound_events"), 1);
  store_close(st);
  dir_remove();
}

/* The daemon's pruner walks the mail between the two cutoffs (kept for retention, captured
 * mail already past capture_retention) from where its last pass stopped: a pass reads only
 * what crossed the cutoff since, not weeks of kept mail again. */
static void test_prune_window(void)
{
  struct store *st;
  struct store_retention ret = { 30 * DAY_MS, 1 * DAY_MS, 0 };
  struct store_prune_counts c;
  struct store_cursor window;
  long long now = wall_ms();
  char id[LIM_QUEUE_ID + 1];
  int i;

  dir_make();
  st = open_new(0);
  for(i = 0; i < 300; i++) {
    snprintf(id, sizeof(id), "%012d", i);
    CHECK_EQ_INT(accept_simple(st, id, "app@x", now - 1000 + i, "a@y"), STORE_OK);
    set_status(st, id, i % 3 ? RCPT_SENT : RCPT_CAPTURED);
    record_out(st, id, now, NULL, 0);
  }
  memset(&window, 0, sizeof(window));
  window.ms = LLONG_MIN;
  CHECK_EQ_INT(store_prune_on(st, &ret, now + 2 * DAY_MS, &window, &c), STORE_OK);
  CHECK_EQ_INT(c.messages, 100);               /* the captured ones */
  CHECK_EQ_INT(c.walked, 300);
  CHECK_EQ_INT(rows(st, "messages"), 200);
  /* the next pass reads nothing it has read */
  CHECK_EQ_INT(store_prune_on(st, &ret, now + 2 * DAY_MS + 1000, &window, &c), STORE_OK);
  CHECK_EQ_INT(c.messages, 0);
  CHECK_EQ_INT(c.walked, 0);
  /* only what came since */
  CHECK_EQ_INT(accept_simple(st, "NEW000000000", "app@x", now + 500, "n@y"), STORE_OK);
  set_status(st, "NEW000000000", RCPT_CAPTURED);
  record_out(st, "NEW000000000", now, NULL, 0);
  CHECK_EQ_INT(store_prune_on(st, &ret, now + 2 * DAY_MS + 2000, &window, &c), STORE_OK);
  CHECK_EQ_INT(c.messages, 1);
  CHECK_EQ_INT(c.walked, 1);
  /* a pass without a window (posternctl store prune) reads them all, and finds the same */
  CHECK_EQ_INT(store_prune(st, &ret, now + 2 * DAY_MS + 3000, 0, &c), STORE_OK);
  CHECK_EQ_INT(c.messages, 0);
  CHECK_EQ_INT(c.walked, 200);
  /* once past retention, the kept mail goes too (older than both cutoffs) */
  CHECK_EQ_INT(store_prune_on(st, &ret, now + 31 * DAY_MS, &window, &c), STORE_OK);
  CHECK_EQ_INT(c.messages, 200);
  CHECK_EQ_INT(rows(st, "messages"), 0);
  store_close(st);
  dir_remove();
}

/* A message final but not yet old enough when the walk passes it (captured a moment after it
 * came, the cutoff in between) is read again by the next pass, not left behind. */
static void test_prune_window_waits(void)
{
  struct store *st;
  struct store_retention ret = { 30 * DAY_MS, 1 * DAY_MS, 0 };
  struct store_prune_counts c;
  struct store_cursor window;
  long long now = wall_ms();

  dir_make();
  st = open_new(0);
  CHECK_EQ_INT(accept_simple(st, "00000000000X", "app@x", now - 5000, "x@y"), STORE_OK);
  set_status(st, "00000000000X", RCPT_CAPTURED);      /* final now, not at now - 5000 */
  record_out(st, "00000000000X", now, NULL, 0);
  CHECK_EQ_INT(accept_simple(st, "00000000000Y", "app@x", now - 4000, "y@y"), STORE_OK);
  set_status(st, "00000000000Y", RCPT_SENT);
  record_out(st, "00000000000Y", now, NULL, 0);
  memset(&window, 0, sizeof(window));
  window.ms = LLONG_MIN;
  /* the capture cutoff falls between X's arrival and its capture */
  CHECK_EQ_INT(store_prune_on(st, &ret, now + DAY_MS - 3000, &window, &c), STORE_OK);
  CHECK_EQ_INT(c.messages, 0);
  CHECK_EQ_INT(c.walked, 2);
  CHECK_EQ_INT(store_prune_on(st, &ret, now + DAY_MS + 60000, &window, &c), STORE_OK);
  CHECK_EQ_INT(c.messages, 1);
  CHECK_EQ_INT(rows(st, "messages"), 1);                /* Y is kept for retention */
  CHECK_EQ_INT(store_prune_on(st, &ret, now + DAY_MS + 61000, &window, &c), STORE_OK);
  CHECK_EQ_INT(c.walked, 0);
  store_close(st);
  dir_remove();
}

/* Retention shorter than the queue's life: a message the walk between the cutoffs passes
 * while it still waits is read again once it is final, not an hour later. */
static void test_prune_window_unfinished(void)
{
  struct store *st;
  struct store_retention ret = { 60000, 1 * DAY_MS, 0 };
  struct store_prune_counts c;
  struct store_cursor window;
  long long now = wall_ms();

  dir_make();
  st = open_new(0);
  CHECK_EQ_INT(accept_simple(st, "00000000000Z", "app@x", now - 5000, "z@y"), STORE_OK);
  CHECK_EQ_INT(accept_simple(st, "0000000000ZZ", "app@x", now - 4000, "zz@y"), STORE_OK);
  set_status(st, "0000000000ZZ", RCPT_SENT);
  record_out(st, "0000000000ZZ", now, NULL, 0);
  memset(&window, 0, sizeof(window));
  window.ms = LLONG_MIN;
  CHECK_EQ_INT(store_prune_on(st, &ret, now + 120000, &window, &c), STORE_OK);
  CHECK_EQ_INT(c.messages, 1);                          /* ZZ; Z still waits */
  CHECK_EQ_INT(rows(st, "messages"), 1);
  set_status(st, "00000000000Z", RCPT_SENT);
  record_out(st, "00000000000Z", now, NULL, 0);
  CHECK_EQ_INT(store_prune_on(st, &ret, now + 180000, &window, &c), STORE_OK);
  CHECK_EQ_INT(c.messages, 1);
  CHECK_EQ_INT(rows(st, "messages"), 0);
  store_close(st);
  dir_remove();
}

static const struct unit_case cases[] = {
  { "prune_window_unfinished", test_prune_window_unfinished },
  { "prune_window_waits", test_prune_window_waits },
  { "prune_window", test_prune_window },
  { "prune_messages", test_prune_messages },
  { "prune_inbound_events_records", test_prune_inbound_events_records },
};
UNIT_MAIN(cases)
