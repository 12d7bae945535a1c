/* Correspondence records in the SQLite store: the record made of each message, its addresses,
 * attachments and events, the walk over messages not yet recorded, and the forward queue of
 * records owed to forward_url. */
#include "store/store_int.h"
#include "lib/buf.h"
#include "lib/log.h"
#include <stdlib.h>
#include <string.h>

#define REC_COLUMNS "seq, id, direction, source, received_ms, message_id, thread_id," \
  " parent_id, status, reply_token, provider_id, json"

static const char *const sql[ST_COUNT] = {
  [ST_REC_INSERT] = "INSERT INTO records(id, direction, source, received_ms, message_id,"
    " thread_id, parent_id, status, status_rank, reply_token, provider_id, relay_done, json,"
    " dedupe) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0, ?9, ?10, ?11, ?12, ?13)"
    " ON CONFLICT(id) DO NOTHING",
  [ST_REC_ADDR] = "INSERT INTO record_addresses(record_id, address) VALUES(?1, lower(?2))"
    " ON CONFLICT DO NOTHING",
  [ST_REC_BLOB] = "INSERT INTO attachments(sha256, size, data) VALUES(?1, ?2, ?3)"
    " ON CONFLICT(sha256) DO NOTHING",
  /* which records use it: the last one to go takes it along (retention) */
  [ST_REC_BLOB_LINK] = "INSERT INTO record_attachments(sha256, record_id) VALUES(?1, ?2)"
    " ON CONFLICT DO NOTHING",
  /* seq left to SQLite: one past the largest, so the queue keeps the order rows join it in */
  [ST_REC_FWD] = "INSERT INTO forward_queue(record_id, next_attempt_ms, queued_ms)"
    " SELECT id, ?2, ?2 FROM records WHERE id = ?1",
  [ST_FWD_STATUS] = "INSERT INTO forward_queue(record_id, next_attempt_ms, queued_ms, event,"
    " old_status, status, event_key) VALUES(?1, ?2, ?2, 'record.status', ?3, ?4, ?5)",
  [ST_REV_STATUS_GET] = "SELECT status, status_rank FROM records WHERE id = ?1",
  [ST_REC_DEDUPE] = "SELECT id FROM records WHERE message_id IS ?1 AND dedupe = ?2"
    " AND received_ms >= ?3 ORDER BY seq LIMIT 1",
  [ST_REC_MARK_QUEUE] = "UPDATE messages SET recorded = 1 WHERE id = ?1",
  [ST_REC_MARK_INBOUND] = "UPDATE inbound_messages SET recorded = 1 WHERE id = ?1",
  [ST_UNREC_QUEUE] = "SELECT id, created_ms FROM messages WHERE recorded = 0"
    " AND (created_ms, id) > (?2, ?3) ORDER BY created_ms, id LIMIT ?1",
  [ST_UNREC_INBOUND] = "SELECT id, received_ms FROM inbound_messages WHERE recorded = 0"
    " AND (received_ms, id) > (?2, ?3) ORDER BY received_ms, id LIMIT ?1",
  [ST_REC_BY_MSGID] = "SELECT id, thread_id FROM records WHERE message_id = ?1"
    " ORDER BY seq LIMIT 1",
  [ST_REC_BY_TOKEN] = "SELECT id, thread_id FROM records WHERE reply_token = ?1",
  [ST_REC_BY_PROVIDER] = "SELECT id, thread_id FROM records WHERE provider_id = ?1"
    " ORDER BY seq LIMIT 1",
  [ST_REC_BY_ID] = "SELECT id, thread_id FROM records WHERE id = ?1",
  [ST_REC_GET] = "SELECT " REC_COLUMNS " FROM records WHERE id = ?1",
  [ST_REV_INSERT] = "INSERT INTO record_events(record_id, event_key, n, at_ms, event,"
    " recipient, detail) SELECT ?1, ?2, (SELECT count(*) FROM record_events WHERE"
    " record_id = ?1), ?3, ?4, ?5, ?6 WHERE EXISTS (SELECT 1 FROM records WHERE id = ?1)"
    " ON CONFLICT DO NOTHING",
  [ST_REV_STATUS] = "UPDATE records SET status = ?2, status_rank = ?3"
    " WHERE id = ?1 AND status_rank < ?3",
  [ST_REC_RELAY] = "UPDATE records SET provider_id = coalesce(?2, provider_id),"
    " relay_done = ?3 WHERE id = ?1",
  [ST_REC_RELAY_PENDING] = "SELECT id, seq FROM records WHERE relay_done = 0 AND seq > ?2"
    " ORDER BY seq LIMIT ?1",
  /* SendGrid's timestamps are whole seconds: within one second, the order applied */
  [ST_REV_LIST] = "SELECT event_key, at_ms, event, recipient, detail FROM record_events"
    " WHERE record_id = ?1 ORDER BY at_ms / 1000, n",
  [ST_REC_LIST] = "SELECT " REC_COLUMNS " FROM records r WHERE seq > ?1"
    " AND (?2 IS NULL OR EXISTS (SELECT 1 FROM record_addresses a"
    "  WHERE a.address = lower(?2) AND a.record_id = r.id))"
    " AND (?3 IS NULL OR thread_id = ?3) ORDER BY seq LIMIT ?4",
  /* set-aside rows are few (each one a record the application refused many times) */
  /* a record's later entries wait behind one of its entries set aside: its changes reach the
   * application in order once `forward retry` sends that one again */
  [ST_FWD_HEAD] = "SELECT seq, record_id, attempts, refusals, next_attempt_ms, queued_ms,"
    " set_aside_ms, NULL, event, old_status, status, event_key FROM forward_queue f"
    " WHERE set_aside_ms IS NULL AND NOT EXISTS (SELECT 1 FROM forward_queue g WHERE"
    " g.record_id = f.record_id AND g.seq < f.seq AND g.set_aside_ms IS NOT NULL)"
    " ORDER BY seq LIMIT 1",
  [ST_FWD_DONE] = "DELETE FROM forward_queue WHERE seq = ?1",
  [ST_FWD_RETRY] = "UPDATE forward_queue SET attempts = attempts + 1, next_attempt_ms = ?2,"
    " last_error = ?3 WHERE seq = ?1",
  [ST_FWD_REFUSED] = "UPDATE forward_queue SET attempts = attempts + 1,"
    " refusals = refusals + 1, next_attempt_ms = ?2, last_error = ?3 WHERE seq = ?1",
  [ST_FWD_SET_ASIDE] = "UPDATE forward_queue SET attempts = attempts + 1,"
    " refusals = refusals + 1, set_aside_ms = ?2, last_error = ?3 WHERE seq = ?1",
  /* back in the queue with fresh counts: the operator decided it is worth trying again */
  [ST_FWD_RETRY_ASIDE] = "UPDATE forward_queue SET set_aside_ms = NULL, attempts = 0, refusals = 0,"
    " next_attempt_ms = ?1, queued_ms = ?1"
    " WHERE set_aside_ms IS NOT NULL AND (?2 IS NULL OR record_id = ?2)",
  [ST_FWD_COUNTS] = "SELECT count(*) - count(set_aside_ms), count(set_aside_ms)"
    " FROM forward_queue",
  [ST_FWD_ASIDE_LIST] = "SELECT seq, record_id, attempts, refusals, next_attempt_ms, queued_ms,"
    " set_aside_ms, last_error, event, old_status, status, event_key FROM forward_queue"
    " WHERE set_aside_ms IS NOT NULL ORDER BY seq",
};

void store_record_free(struct store_record *r)
{
  if(!r)
    return;
  free(r->direction);
  free(r->source);
  free(r->message_id);
  free(r->thread_id);
  free(r->parent_id);
  free(r->status);
  free(r->reply_token);
  free(r->provider_id);
  free(r->json);
  memset(r, 0, sizeof(*r));
}

struct record_add {
  enum store_origin origin;
  const struct store_record *r;
  const char *addresses;
  const struct store_blob *att;
  size_t natt;
  int forward;
};

static int job_record_mark(struct store_db *d, enum store_origin origin, const char *id)
{
  const char *v[1] = { id };
  return db_run_text(d, origin == STORE_ORIGIN_QUEUE ? ST_REC_MARK_QUEUE : ST_REC_MARK_INBOUND,
                     sql, v, 1);
}

static int job_record_add(struct store_db *d, void *arg, size_t *changed)
{
  const struct record_add *a = arg;
  const struct store_record *r = a->r;
  sqlite3_stmt *s = db_stmt(d, ST_REC_INSERT, sql);
  const char *p;
  size_t i;
  int rc, result;

  if(!s)
    return STORE_ERROR;
  rc = db_bind_text(s, 1, r->id);
  if(!rc) rc = db_bind_text(s, 2, r->direction);
  if(!rc) rc = db_bind_text(s, 3, r->source);
  if(!rc) rc = sqlite3_bind_int64(s, 4, r->received_ms > 0 ? r->received_ms : store_now_ms());
  if(!rc) rc = db_bind_text(s, 5, r->message_id);
  if(!rc) rc = db_bind_text(s, 6, r->thread_id ? r->thread_id : r->id);
  if(!rc) rc = db_bind_text(s, 7, r->parent_id);
  if(!rc) rc = db_bind_text(s, 8, r->status);
  if(!rc) rc = db_bind_text(s, 9, r->reply_token);
  if(!rc) rc = db_bind_text(s, 10, r->provider_id);
  if(!rc) rc = sqlite3_bind_int(s, 11, strcmp(r->direction, "out") ? 1 : 0);
  if(!rc) rc = db_bind_text(s, 12, r->json);
  if(!rc) rc = db_bind_text(s, 13, r->dedupe);
  if(rc) {
    sqlite3_reset(s);
    return db_fail(d, rc, "bind record");
  }
  result = db_exec_stmt(d, s, "insert record");
  if(result)
    return result;
  *changed = (size_t)sqlite3_changes(d->db);
  if(*changed) {
    /* addresses: LF-separated, each stored once */
    for(p = a->addresses ? a->addresses : ""; !result && *p;) {
      size_t n = strcspn(p, "\n");
      if(n) {
        char *addr = str_dup_n(p, n);
        const char *v[2] = { r->id, addr };
        result = addr ? db_run_text(d, ST_REC_ADDR, sql, v, 2) : STORE_ERROR;
        free(addr);
      }
      p += n;
      if(*p)
        p++;
    }
    for(i = 0; !result && i < a->natt; i++) {
      s = db_stmt(d, ST_REC_BLOB, sql);
      if(!s)
        return STORE_ERROR;
      rc = db_bind_text(s, 1, a->att[i].sha256);
      if(!rc) rc = sqlite3_bind_int64(s, 2, (sqlite3_int64)a->att[i].size);
      if(!rc) rc = sqlite3_bind_blob64(s, 3, a->att[i].size ? a->att[i].data : (const void *)"",
                                       (sqlite3_uint64)a->att[i].size, SQLITE_STATIC);
      if(rc) {
        sqlite3_reset(s);
        return db_fail(d, rc, "bind attachment");
      }
      result = db_exec_stmt(d, s, "insert attachment");
      sqlite3_clear_bindings(s);
      if(!result) {
        const char *v[2] = { a->att[i].sha256, r->id };
        result = db_run_text(d, ST_REC_BLOB_LINK, sql, v, 2);
      }
    }
    if(!result && a->forward) {
      s = db_stmt(d, ST_REC_FWD, sql);
      if(!s)
        return STORE_ERROR;
      rc = db_bind_text(s, 1, r->id);
      if(!rc) rc = sqlite3_bind_int64(s, 2, store_now_ms());
      if(rc) {
        sqlite3_reset(s);
        return db_fail(d, rc, "bind forward");
      }
      result = db_exec_stmt(d, s, "queue forward");
    }
  }
  if(!result)
    result = job_record_mark(d, a->origin, r->id);
  return result;
}

int store_record_add(struct store *st, enum store_origin origin, const struct store_record *r,
                     const char *addresses, const struct store_blob *att, size_t natt,
                     int forward, int *made)
{
  struct record_add a = { origin, r, addresses, att, natt, forward };
  size_t changed = 0;
  int result;
  if(!r->id[0] || !r->direction || !r->source || !r->json)
    return STORE_ERROR;
  result = store_call(st, job_record_add, &a, STORE_SYNC_RELAXED, &changed);
  if(made)
    *made = changed != 0;
  return result;
}

struct record_skip {
  enum store_origin origin;
  const char *id;
};

static int job_record_skip(struct store_db *d, void *arg, size_t *changed)
{
  const struct record_skip *k = arg;
  return job_record_mark(d, k->origin, k->id);
}

int store_record_skip(struct store *st, enum store_origin origin, const char *id)
{
  struct record_skip k = { origin, id };
  return store_call(st, job_record_skip, &k, STORE_SYNC_RELAXED, NULL);
}

/* Ids from a query with LIMIT ?1 (and, with after, seq > ?2 and the last seq as column 1). */
static int read_ids(struct store *st, enum stmt which, char (*ids)[LIM_QUEUE_ID + 1],
                    size_t max, size_t *n, long long *after)
{
  struct store_db *d;
  sqlite3_stmt *s;
  int rc = SQLITE_DONE, result = STORE_OK;
  *n = 0;
  d = store_reader(st);
  s = db_stmt(d, which, sql);
  if(!s) {
    store_reader_done(st, d);
    return STORE_ERROR;
  }
  sqlite3_bind_int64(s, 1, (sqlite3_int64)max);
  if(after)
    sqlite3_bind_int64(s, 2, *after);
  while(*n < max && (rc = sqlite3_step(s)) == SQLITE_ROW) {
    str_copy(ids[*n], LIM_QUEUE_ID + 1, db_col_str(s, 0) ? db_col_str(s, 0) : "");
    if(after)
      *after = sqlite3_column_int64(s, 1);
    (*n)++;
  }
  if(*n < max && rc != SQLITE_DONE)
    result = db_fail(d, rc, sql[which]);
  sqlite3_reset(s);
  store_reader_done(st, d);
  return result;
}

int store_unrecorded(struct store *st, enum store_origin origin, struct store_cursor *at,
                     char (*ids)[LIM_QUEUE_ID + 1], size_t max, size_t *n)
{
  struct store_db *d;
  enum stmt which = origin == STORE_ORIGIN_QUEUE ? ST_UNREC_QUEUE : ST_UNREC_INBOUND;
  sqlite3_stmt *s;
  int rc = SQLITE_DONE, result = STORE_OK;
  *n = 0;
  d = store_reader(st);
  s = db_stmt(d, which, sql);
  if(!s) {
    store_reader_done(st, d);
    return STORE_ERROR;
  }
  sqlite3_bind_int64(s, 1, (sqlite3_int64)max);
  sqlite3_bind_int64(s, 2, at->ms);
  db_bind_text(s, 3, at->id);
  while(*n < max && (rc = sqlite3_step(s)) == SQLITE_ROW) {
    str_copy(ids[*n], LIM_QUEUE_ID + 1, db_col_str(s, 0) ? db_col_str(s, 0) : "");
    str_copy(at->id, sizeof(at->id), ids[*n]);
    at->ms = sqlite3_column_int64(s, 1);
    (*n)++;
  }
  if(*n < max && rc != SQLITE_DONE)
    result = db_fail(d, rc, sql[which]);
  sqlite3_reset(s);
  store_reader_done(st, d);
  if(result || *n < max)
    memset(at, 0, sizeof(*at));  /* the end: the next walk starts from the oldest again */
  return result;
}

int store_records_relay_pending(struct store *st, long long *after,
                                char (*ids)[LIM_QUEUE_ID + 1], size_t max, size_t *n)
{
  int result = read_ids(st, ST_REC_RELAY_PENDING, ids, max, n, after);
  if(!result && *n < max)
    *after = 0;                  /* the end: the next call starts from the oldest again */
  return result;
}

int store_record_find(struct store *st, enum store_record_key key, const char *value,
                      char id[LIM_QUEUE_ID + 1], char thread[LIM_QUEUE_ID + 1])
{
  struct store_db *d;
  static const enum stmt which[] = { [STORE_BY_MESSAGE_ID] = ST_REC_BY_MSGID,
    [STORE_BY_REPLY_TOKEN] = ST_REC_BY_TOKEN, [STORE_BY_PROVIDER_ID] = ST_REC_BY_PROVIDER,
    [STORE_BY_ID] = ST_REC_BY_ID };
  sqlite3_stmt *s;
  int rc, result;
  if(!value || !*value)
    return STORE_NOTFOUND;
  d = store_reader(st);
  s = db_stmt(d, which[key], sql);
  if(!s) {
    store_reader_done(st, d);
    return STORE_ERROR;
  }
  db_bind_text(s, 1, value);
  rc = sqlite3_step(s);
  if(rc == SQLITE_ROW) {
    str_copy(id, LIM_QUEUE_ID + 1, db_col_str(s, 0) ? db_col_str(s, 0) : "");
    str_copy(thread, LIM_QUEUE_ID + 1, db_col_str(s, 1) ? db_col_str(s, 1) : "");
    result = STORE_OK;
  }
  else if(rc == SQLITE_DONE)
    result = STORE_NOTFOUND;
  else
    result = db_fail(d, rc, "find record");
  sqlite3_reset(s);
  store_reader_done(st, d);
  return result;
}

static int record_from_row(sqlite3_stmt *s, struct store_record *r)
{
  int bad = 0;
  memset(r, 0, sizeof(*r));
  r->seq = sqlite3_column_int64(s, 0);
  str_copy(r->id, sizeof(r->id), db_col_str(s, 1) ? db_col_str(s, 1) : "");
  bad |= db_col_text(s, 2, &r->direction);
  bad |= db_col_text(s, 3, &r->source);
  r->received_ms = sqlite3_column_int64(s, 4);
  bad |= db_col_text(s, 5, &r->message_id);
  bad |= db_col_text(s, 6, &r->thread_id);
  bad |= db_col_text(s, 7, &r->parent_id);
  bad |= db_col_text(s, 8, &r->status);
  bad |= db_col_text(s, 9, &r->reply_token);
  bad |= db_col_text(s, 10, &r->provider_id);
  bad |= db_col_text(s, 11, &r->json);
  if(bad || !r->json) {
    store_record_free(r);
    return STORE_ERROR;
  }
  return STORE_OK;
}

int store_record_get(struct store *st, const char *id, struct store_record *out)
{
  struct store_db *d;
  sqlite3_stmt *s;
  int rc, result;
  memset(out, 0, sizeof(*out));
  d = store_reader(st);
  s = db_stmt(d, ST_REC_GET, sql);
  if(!s) {
    store_reader_done(st, d);
    return STORE_ERROR;
  }
  db_bind_text(s, 1, id);
  rc = sqlite3_step(s);
  if(rc == SQLITE_ROW)
    result = record_from_row(s, out);
  else if(rc == SQLITE_DONE)
    result = STORE_NOTFOUND;
  else
    result = db_fail(d, rc, "read record");
  sqlite3_reset(s);
  store_reader_done(st, d);
  return result;
}

struct record_event_add {
  const char *record_id;
  const struct store_record_event *e;
};

static int job_record_event(struct store_db *d, void *arg, size_t *changed)
{
  const struct record_event_add *a = arg;
  const struct store_record_event *e = a->e;
  sqlite3_stmt *s = db_stmt(d, ST_REV_INSERT, sql);
  int rc, result;
  if(!s)
    return STORE_ERROR;
  rc = db_bind_text(s, 1, a->record_id);
  if(!rc) rc = db_bind_text(s, 2, e->key);
  if(!rc) rc = sqlite3_bind_int64(s, 3, e->at_ms > 0 ? e->at_ms : store_now_ms());
  if(!rc) rc = db_bind_text(s, 4, e->event);
  if(!rc) rc = db_bind_text(s, 5, e->recipient);
  if(!rc) rc = db_bind_text(s, 6, e->detail);
  if(rc) {
    sqlite3_reset(s);
    return db_fail(d, rc, "bind record event");
  }
  result = db_exec_stmt(d, s, "insert record event");
  if(result)
    return result;
  *changed = (size_t)sqlite3_changes(d->db);
  if(*changed && e->status) {
    char *old = NULL;
    int old_rank = 0;
    s = db_stmt(d, ST_REV_STATUS_GET, sql);
    if(!s)
      return STORE_ERROR;
    rc = db_bind_text(s, 1, a->record_id);
    rc = rc ? rc : sqlite3_step(s);
    if(rc == SQLITE_ROW) {
      old_rank = sqlite3_column_int(s, 1);
      if(db_col_text(s, 0, &old)) {
        sqlite3_reset(s);
        return STORE_ERROR;
      }
    }
    sqlite3_reset(s);
    if(rc != SQLITE_ROW && rc != SQLITE_DONE)
      return db_fail(d, rc, "record status");
    s = db_stmt(d, ST_REV_STATUS, sql);
    if(!s) {
      free(old);
      return STORE_ERROR;
    }
    rc = db_bind_text(s, 1, a->record_id);
    if(!rc) rc = db_bind_text(s, 2, e->status);
    if(!rc) rc = sqlite3_bind_int(s, 3, e->rank);
    if(rc) {
      sqlite3_reset(s);
      free(old);
      return db_fail(d, rc, "bind record status");
    }
    result = db_exec_stmt(d, s, "record status");
    /* the move goes to forward_url in the same transaction: never lost, never twice */
    if(!result && e->forward && e->rank > old_rank) {
      s = db_stmt(d, ST_FWD_STATUS, sql);
      if(!s) {
        free(old);
        return STORE_ERROR;
      }
      rc = db_bind_text(s, 1, a->record_id);
      if(!rc) rc = sqlite3_bind_int64(s, 2, store_now_ms());
      if(!rc) rc = db_bind_text(s, 3, old);
      if(!rc) rc = db_bind_text(s, 4, e->status);
      if(!rc) rc = db_bind_text(s, 5, e->key);
      if(rc) {
        sqlite3_reset(s);
        free(old);
        return db_fail(d, rc, "bind forward status");
      }
      result = db_exec_stmt(d, s, "queue forward status");
    }
    free(old);
  }
  return result;
}

int store_record_event_add(struct store *st, const char *record_id,
                           const struct store_record_event *e, int *added)
{
  struct record_event_add a = { record_id, e };
  size_t changed = 0;
  int result = store_call(st, job_record_event, &a, STORE_SYNC_RELAXED, &changed);
  if(added)
    *added = changed != 0;
  return result;
}

struct record_relay {
  const char *id, *provider_id;
  int done;
};

static int job_record_relay(struct store_db *d, void *arg, size_t *changed)
{
  const struct record_relay *a = arg;
  sqlite3_stmt *s = db_stmt(d, ST_REC_RELAY, sql);
  int rc;
  if(!s)
    return STORE_ERROR;
  rc = db_bind_text(s, 1, a->id);
  if(!rc) rc = db_bind_text(s, 2, a->provider_id);
  if(!rc) rc = sqlite3_bind_int(s, 3, a->done ? 1 : 0);
  if(rc) {
    sqlite3_reset(s);
    return db_fail(d, rc, "bind record relay");
  }
  return db_exec_stmt(d, s, "record relay");
}

int store_record_relay(struct store *st, const char *record_id, const char *provider_id,
                       int relay_done)
{
  struct record_relay a = { record_id, provider_id, relay_done };
  return store_call(st, job_record_relay, &a, STORE_SYNC_RELAXED, NULL);
}

int store_record_events(struct store *st, const char *record_id, store_record_event_cb cb,
                        void *arg)
{
  struct store_db *d;
  sqlite3_stmt *s;
  struct store_record_event *ev = NULL;
  char **strs = NULL;
  size_t n = 0, cap = 0, i;
  int rc, result = STORE_OK;
  /* collected first so that the callback runs without the read lock */
  d = store_reader(st);
  s = db_stmt(d, ST_REV_LIST, sql);
  if(!s) {
    store_reader_done(st, d);
    return STORE_ERROR;
  }
  db_bind_text(s, 1, record_id);
  while((rc = sqlite3_step(s)) == SQLITE_ROW) {
    int bad = 0;
    if(n == cap) {
      size_t nc = cap ? cap * 2 : 8;
      struct store_record_event *ne = realloc(ev, nc * sizeof(*ev));
      char **ns = ne ? realloc(strs, nc * 4 * sizeof(*strs)) : NULL;
      if(ne)
        ev = ne;
      if(!ns) {
        result = STORE_ERROR;
        break;
      }
      strs = ns;
      cap = nc;
    }
    memset(&ev[n], 0, sizeof(ev[n]));
    bad |= db_col_text(s, 0, &strs[4 * n]);
    ev[n].at_ms = sqlite3_column_int64(s, 1);
    bad |= db_col_text(s, 2, &strs[4 * n + 1]);
    bad |= db_col_text(s, 3, &strs[4 * n + 2]);
    bad |= db_col_text(s, 4, &strs[4 * n + 3]);
    ev[n].key = strs[4 * n];
    ev[n].event = strs[4 * n + 1];
    ev[n].recipient = strs[4 * n + 2];
    ev[n].detail = strs[4 * n + 3];
    n++;
    if(bad) {
      result = STORE_ERROR;
      break;
    }
  }
  if(!result && rc != SQLITE_DONE)
    result = db_fail(d, rc, "record events");
  sqlite3_reset(s);
  store_reader_done(st, d);
  for(i = 0; !result && i < n; i++)
    if(cb(arg, &ev[i]))
      break;
  for(i = 0; i < 4 * n; i++)
    free(strs[i]);
  free(strs);
  free(ev);
  return result;
}

int store_record_list(struct store *st, const char *address, const char *thread,
                      store_record_cb cb, void *arg)
{
  struct store_db *d;
  long long after = -1;
  int result = STORE_OK, stop = 0;
  while(!result && !stop) {
    struct store_record page[64];
    size_t n = 0, i;
    sqlite3_stmt *s;
    int rc;
    d = store_reader(st);
    s = db_stmt(d, ST_REC_LIST, sql);
    if(!s) {
      store_reader_done(st, d);
      return STORE_ERROR;
    }
    sqlite3_bind_int64(s, 1, after);
    db_bind_text(s, 2, address);
    db_bind_text(s, 3, thread);
    sqlite3_bind_int(s, 4, 64);
    while(n < 64 && (rc = sqlite3_step(s)) == SQLITE_ROW) {
      if(record_from_row(s, &page[n])) {
        result = STORE_ERROR;
        break;
      }
      n++;
    }
    if(!result && n < 64 && rc != SQLITE_DONE)
      result = db_fail(d, rc, "list records");
    sqlite3_reset(s);
    store_reader_done(st, d);
    for(i = 0; i < n; i++) {
      if(!result && !stop && cb(arg, &page[i]))
        stop = 1;
      after = page[i].seq;
      store_record_free(&page[i]);
    }
    if(n < 64)
      break;
  }
  return result;
}

/* One forward_queue row from the columns of ST_FWD_HEAD and ST_FWD_ASIDE_LIST; -1: no memory. */
static int forward_from_row(sqlite3_stmt *s, struct store_forward *f)
{
  memset(f, 0, sizeof(*f));
  f->seq = sqlite3_column_int64(s, 0);
  str_copy(f->id, sizeof(f->id), db_col_str(s, 1) ? db_col_str(s, 1) : "");
  f->attempts = sqlite3_column_int(s, 2);
  f->refusals = sqlite3_column_int(s, 3);
  f->next_ms = sqlite3_column_int64(s, 4);
  f->queued_ms = sqlite3_column_int64(s, 5);
  f->set_aside_ms = sqlite3_column_int64(s, 6);
  if(db_col_text(s, 7, &f->last_error) || db_col_text(s, 8, &f->event) ||
     db_col_text(s, 9, &f->old_status) || db_col_text(s, 10, &f->status) ||
     db_col_text(s, 11, &f->event_key)) {
    store_forward_free(f);
    return -1;
  }
  return 0;
}

void store_forward_free(struct store_forward *f)
{
  free(f->last_error);
  free(f->event);
  free(f->old_status);
  free(f->status);
  free(f->event_key);
  f->last_error = f->event = f->old_status = f->status = f->event_key = NULL;
}

int store_record_duplicate(struct store *st, const char *message_id, const char *dedupe,
                           long long since_ms, char id[LIM_QUEUE_ID + 1])
{
  struct store_db *d = store_reader(st);
  sqlite3_stmt *s = db_stmt(d, ST_REC_DEDUPE, sql);
  int rc, result;
  if(!s) {
    store_reader_done(st, d);
    return STORE_ERROR;
  }
  rc = db_bind_text(s, 1, message_id);
  if(!rc) rc = db_bind_text(s, 2, dedupe);
  if(!rc) rc = sqlite3_bind_int64(s, 3, since_ms);
  rc = rc ? rc : sqlite3_step(s);
  if(rc == SQLITE_ROW) {
    str_copy(id, LIM_QUEUE_ID + 1, db_col_str(s, 0) ? db_col_str(s, 0) : "");
    result = STORE_OK;
  }
  else if(rc == SQLITE_DONE)
    result = STORE_NOTFOUND;
  else
    result = db_fail(d, rc, "record dedupe");
  sqlite3_reset(s);
  store_reader_done(st, d);
  return result;
}

int store_forward_head(struct store *st, struct store_forward *out)
{
  struct store_db *d;
  sqlite3_stmt *s;
  int rc, result;
  d = store_reader(st);
  s = db_stmt(d, ST_FWD_HEAD, sql);
  if(!s) {
    store_reader_done(st, d);
    return STORE_ERROR;
  }
  rc = sqlite3_step(s);
  if(rc == SQLITE_ROW)
    result = forward_from_row(s, out) ? STORE_ERROR : STORE_OK;
  else if(rc == SQLITE_DONE)
    result = STORE_NOTFOUND;
  else
    result = db_fail(d, rc, "forward queue");
  sqlite3_reset(s);
  store_reader_done(st, d);
  return result;
}

struct forward_result {
  long long seq, next_ms;
  enum store_forward_outcome outcome;
  const char *error;
};

static int job_forward_result(struct store_db *d, void *arg, size_t *changed)
{
  static const enum stmt which[] = { [STORE_FORWARD_RETRY] = ST_FWD_RETRY,
    [STORE_FORWARD_DONE] = ST_FWD_DONE, [STORE_FORWARD_REFUSED] = ST_FWD_REFUSED,
    [STORE_FORWARD_SET_ASIDE] = ST_FWD_SET_ASIDE };
  const struct forward_result *a = arg;
  int done = a->outcome == STORE_FORWARD_DONE;
  sqlite3_stmt *s;
  int rc;
  if((unsigned)a->outcome > STORE_FORWARD_SET_ASIDE)
    return STORE_ERROR;
  s = db_stmt(d, which[a->outcome], sql);
  if(!s)
    return STORE_ERROR;
  rc = sqlite3_bind_int64(s, 1, a->seq);
  if(!rc && !done) rc = sqlite3_bind_int64(s, 2, a->outcome == STORE_FORWARD_SET_ASIDE
                                                   ? store_now_ms() : a->next_ms);
  if(!rc && !done) rc = db_bind_text(s, 3, a->error);
  if(rc) {
    sqlite3_reset(s);
    return db_fail(d, rc, "bind forward result");
  }
  return db_exec_stmt(d, s, "forward result");
}

int store_forward_result(struct store *st, long long seq, enum store_forward_outcome outcome,
                         long long next_ms, const char *error)
{
  struct forward_result a = { seq, next_ms, outcome, error };
  return store_call(st, job_forward_result, &a, STORE_SYNC_RELAXED, NULL);
}

static int job_forward_retry(struct store_db *d, void *arg, size_t *changed)
{
  const char *id = arg;
  sqlite3_stmt *s = db_stmt(d, ST_FWD_RETRY_ASIDE, sql);
  int rc, result;
  if(!s)
    return STORE_ERROR;
  rc = sqlite3_bind_int64(s, 1, store_now_ms());
  if(!rc) rc = db_bind_text(s, 2, id);
  if(rc) {
    sqlite3_reset(s);
    return db_fail(d, rc, "bind forward retry");
  }
  result = db_exec_stmt(d, s, "forward retry");
  if(!result)
    *changed = (size_t)sqlite3_changes(d->db);
  return result;
}

int store_forward_retry(struct store *st, const char *id, size_t *n)
{
  size_t changed = 0;
  int result = store_call(st, job_forward_retry, (void *)id, STORE_SYNC_FULL, &changed);
  if(n)
    *n = changed;
  return result;
}

int store_forward_counts(struct store *st, long long *waiting, long long *set_aside)
{
  struct store_db *d = store_reader(st);
  sqlite3_stmt *s = db_stmt(d, ST_FWD_COUNTS, sql);
  int rc, result = STORE_OK;
  *waiting = *set_aside = 0;
  if(!s) {
    store_reader_done(st, d);
    return STORE_ERROR;
  }
  rc = sqlite3_step(s);
  if(rc == SQLITE_ROW) {
    *waiting = sqlite3_column_int64(s, 0);
    *set_aside = sqlite3_column_int64(s, 1);
  }
  else
    result = db_fail(d, rc, "forward counts");
  sqlite3_reset(s);
  store_reader_done(st, d);
  return result;
}

int store_forward_set_aside_list(struct store *st, store_forward_cb cb, void *arg)
{
  struct store_forward *ev = NULL;
  size_t n = 0, cap = 0, i;
  struct store_db *d = store_reader(st);
  sqlite3_stmt *s = db_stmt(d, ST_FWD_ASIDE_LIST, sql);
  int rc = SQLITE_DONE, result = STORE_OK;
  /* collected first so that the callback runs without the read connection */
  while(s && (rc = sqlite3_step(s)) == SQLITE_ROW) {
    if(n == cap) {
      size_t nc = cap ? cap * 2 : 8;
      struct store_forward *ne = realloc(ev, nc * sizeof(*ev));
      if(!ne) {
        result = STORE_ERROR;
        break;
      }
      ev = ne;
      cap = nc;
    }
    if(forward_from_row(s, &ev[n++])) {
      result = STORE_ERROR;
      break;
    }
  }
  if(!s)
    result = STORE_ERROR;
  else if(!result && rc != SQLITE_DONE)
    result = db_fail(d, rc, "set-aside forwards");
  if(s)
    sqlite3_reset(s);
  store_reader_done(st, d);
  for(i = 0; !result && i < n; i++)
    if(cb(arg, &ev[i]))
      break;
  for(i = 0; i < n; i++)
    store_forward_free(&ev[i]);
  free(ev);
  return result;
}
