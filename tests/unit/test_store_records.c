/* Unit tests of correspondence records in the store: making a record once, finding it by its
 * keys, its events and status, the walk over unrecorded messages and the forward queue. */
#include "tests/unit/store_test.h"
#include <pthread.h>
#include <sqlite3.h>

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
  struct store_forward f;
  long long seq = 0;
  int made = -1, added = -1;

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
  CHECK_EQ_INT(store_forward_head(st, &f), STORE_OK);
  CHECK_EQ_STR(f.id, "00000000000A");
  CHECK_EQ_INT(store_forward_result(st, f.seq, STORE_FORWARD_RETRY, 99, "HTTP 500"), STORE_OK);
  CHECK_EQ_INT(store_forward_head(st, &f), STORE_OK);
  CHECK_EQ_STR(f.id, "00000000000A");
  CHECK_EQ_INT(f.attempts, 1);
  CHECK_EQ_INT(f.next_ms, 99);
  CHECK_EQ_INT(store_forward_result(st, f.seq, STORE_FORWARD_DONE, 0, NULL), STORE_OK);
  CHECK_EQ_INT(store_forward_head(st, &f), STORE_OK);
  CHECK_EQ_STR(f.id, "00000000000B");
  CHECK_EQ_INT(store_forward_result(st, f.seq, STORE_FORWARD_DONE, 0, NULL), STORE_OK);
  CHECK_EQ_INT(store_forward_head(st, &f), STORE_NOTFOUND);
  store_close(st);
  dir_remove();
}
/* A record made from the queue message id, owed to forward_url. */
static void record_forwarded(struct store *st, const char *id)
{
  struct store_record r;
  int made = 0;
  CHECK_EQ_INT(accept_simple(st, id, "app@x", 1, "pat@y"), STORE_OK);
  memset(&r, 0, sizeof(r));
  snprintf(r.id, sizeof(r.id), "%s", id);
  r.direction = (char *)"out";
  r.source = (char *)"submission";
  r.received_ms = 1000;
  r.json = (char *)"{}";
  CHECK_EQ_INT(store_record_add(st, STORE_ORIGIN_QUEUE, &r, NULL, NULL, 0, 1, &made), STORE_OK);
  CHECK_EQ_INT(made, 1);
}

static int aside_ids(void *arg, const struct store_forward *e)
{
  char *out = arg;
  size_t n = strlen(out);
  snprintf(out + n, 256 - n, "%s%s:%d:%d:%s", n ? "," : "", e->id, e->attempts, e->refusals,
           e->last_error ? e->last_error : "");
  return 0;
}

/* A record set aside leaves the head to the next one, is listed with its last answer and
 * counted, and comes back at the head with fresh attempts when retried (by id or all). */
static void test_forward_set_aside(void)
{
  struct store *st;
  struct store_forward f;
  char listed[256] = "";
  long long before = wall_ms(), waiting = -1, aside = -1;
  size_t n = 99;

  dir_make();
  st = open_new(0);
  record_forwarded(st, "00000000000A");
  record_forwarded(st, "00000000000B");
  CHECK_EQ_INT(store_forward_head(st, &f), STORE_OK);
  CHECK_EQ_STR(f.id, "00000000000A");
  CHECK(f.queued_ms >= before && f.queued_ms <= wall_ms());
  CHECK_EQ_INT(store_forward_result(st, f.seq, STORE_FORWARD_RETRY, 5, "HTTP 503"), STORE_OK);
  CHECK_EQ_INT(store_forward_result(st, f.seq, STORE_FORWARD_REFUSED, 5, "HTTP 422"), STORE_OK);
  CHECK_EQ_INT(store_forward_head(st, &f), STORE_OK);
  CHECK_EQ_INT(f.attempts, 2);
  CHECK_EQ_INT(f.refusals, 1);
  CHECK_EQ_INT(store_forward_result(st, f.seq, STORE_FORWARD_SET_ASIDE, 0, "HTTP 400"), STORE_OK);
  CHECK_EQ_INT(store_forward_head(st, &f), STORE_OK);
  CHECK_EQ_STR(f.id, "00000000000B");
  CHECK_EQ_INT(store_forward_counts(st, &waiting, &aside), STORE_OK);
  CHECK_EQ_INT(waiting, 1);
  CHECK_EQ_INT(aside, 1);
  CHECK_EQ_INT(store_forward_set_aside_list(st, aside_ids, listed), STORE_OK);
  CHECK_EQ_STR(listed, "00000000000A:3:2:HTTP 400");

  /* B is not set aside: nothing to retry */
  CHECK_EQ_INT(store_forward_retry(st, "00000000000B", &n), STORE_OK);
  CHECK_EQ_INT(n, 0);
  CHECK_EQ_INT(store_forward_retry(st, "00000000000A", &n), STORE_OK);
  CHECK_EQ_INT(n, 1);
  CHECK_EQ_INT(store_forward_head(st, &f), STORE_OK);
  CHECK_EQ_STR(f.id, "00000000000A");
  CHECK_EQ_INT(f.attempts, 0);
  CHECK_EQ_INT(f.refusals, 0);
  CHECK(f.next_ms >= before);

  /* both set aside: the queue is empty for the forwarder, --all brings both back */
  CHECK_EQ_INT(store_forward_result(st, f.seq, STORE_FORWARD_SET_ASIDE, 0, "HTTP 500"), STORE_OK);
  CHECK_EQ_INT(store_forward_head(st, &f), STORE_OK);
  CHECK_EQ_INT(store_forward_result(st, f.seq, STORE_FORWARD_SET_ASIDE, 0, NULL), STORE_OK);
  CHECK_EQ_INT(store_forward_head(st, &f), STORE_NOTFOUND);
  CHECK_EQ_INT(store_forward_retry(st, NULL, &n), STORE_OK);
  CHECK_EQ_INT(n, 2);
  CHECK_EQ_INT(store_forward_counts(st, &waiting, &aside), STORE_OK);
  CHECK_EQ_INT(waiting, 2);
  CHECK_EQ_INT(aside, 0);
  store_close(st);
  dir_remove();
}

/* A status move with forward set joins the queue once, in the transaction that makes it; a
 * record's entries wait behind one of its entries set aside, other records' go on. */
static void test_forward_status(void)
{
  struct store *st;
  struct store_forward f;
  struct store_record_event e;
  int added = 0;
  size_t n = 0;

  dir_make();
  st = open_new(0);
  record_forwarded(st, "00000000000A");
  record_forwarded(st, "00000000000B");
  memset(&e, 0, sizeof(e));
  e.key = "rcpt:0:sent";
  e.event = "sent";
  e.status = "sent";
  e.rank = 1;
  e.forward = 1;
  CHECK_EQ_INT(store_record_event_add(st, "00000000000A", &e, &added), STORE_OK);
  CHECK_EQ_INT(added, 1);
  CHECK_EQ_INT(store_record_event_add(st, "00000000000A", &e, &added), STORE_OK);  /* again */
  CHECK_EQ_INT(added, 0);
  e.key = "sg:late";                          /* a new event that moves nothing */
  CHECK_EQ_INT(store_record_event_add(st, "00000000000A", &e, &added), STORE_OK);
  CHECK_EQ_INT(added, 1);
  e.key = "sg:open";                          /* moves, but not owed to forward_url */
  e.status = "opened";
  e.rank = 3;
  e.forward = 0;
  CHECK_EQ_INT(store_record_event_add(st, "00000000000B", &e, &added), STORE_OK);

  /* A's record set aside: B goes on, A's status waits behind its record */
  CHECK_EQ_INT(store_forward_head(st, &f), STORE_OK);
  CHECK_EQ_STR(f.id, "00000000000A");
  CHECK(f.event == NULL);
  CHECK_EQ_INT(store_forward_result(st, f.seq, STORE_FORWARD_SET_ASIDE, 0, "HTTP 400"), STORE_OK);
  CHECK_EQ_INT(store_forward_head(st, &f), STORE_OK);
  CHECK_EQ_STR(f.id, "00000000000B");
  CHECK_EQ_INT(store_forward_result(st, f.seq, STORE_FORWARD_DONE, 0, NULL), STORE_OK);
  CHECK_EQ_INT(store_forward_head(st, &f), STORE_NOTFOUND);

  /* retried: the record, then its move */
  CHECK_EQ_INT(store_forward_retry(st, "00000000000A", &n), STORE_OK);
  CHECK_EQ_INT(n, 1);
  CHECK_EQ_INT(store_forward_head(st, &f), STORE_OK);
  CHECK_EQ_STR(f.id, "00000000000A");
  CHECK(f.event == NULL);
  CHECK_EQ_INT(store_forward_result(st, f.seq, STORE_FORWARD_DONE, 0, NULL), STORE_OK);
  CHECK_EQ_INT(store_forward_head(st, &f), STORE_OK);
  CHECK_EQ_STR(f.id, "00000000000A");
  CHECK_EQ_STR(f.event ? f.event : "", "record.status");
  CHECK(f.old_status == NULL);
  CHECK_EQ_STR(f.status ? f.status : "", "sent");
  CHECK_EQ_STR(f.event_key ? f.event_key : "", "rcpt:0:sent");
  CHECK_EQ_INT(store_forward_result(st, f.seq, STORE_FORWARD_DONE, 0, NULL), STORE_OK);
  store_forward_free(&f);
  CHECK_EQ_INT(store_forward_head(st, &f), STORE_NOTFOUND);
  store_close(st);
  dir_remove();
}

static const struct unit_case cases[] = {
  { "records", test_records },
  { "forward_set_aside", test_forward_set_aside },
  { "forward_status", test_forward_status },
};
UNIT_MAIN(cases)
