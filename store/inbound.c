/* Inbound data in the SQLite store: messages the MX listener and the webhooks received, kept
 * as received, and the provider events (SendGrid) waiting to be applied to records. */
#include "store/store_int.h"
#include "lib/buf.h"
#include "lib/log.h"
#include <stdlib.h>
#include <string.h>

static const char *const sql[ST_COUNT] = {
  /* a repeated external_id (a retried SMS post) changes nothing: it is already stored */
  [ST_INBOUND_INSERT] = "INSERT INTO inbound_messages(id, source, received_ms, listener,"
    " client_addr, helo, envelope_from, envelope_to, spf, content_type, external_id, size,"
    " body_sha256, body) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
    " ON CONFLICT(external_id) DO NOTHING",
  [ST_EVENT_INSERT] = "INSERT INTO inbound_events(event_key, received_ms, event, sg_message_id,"
    " email, timestamp, payload) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)"
    " ON CONFLICT(event_key) DO NOTHING",
  [ST_INBOUND_LIST] = "SELECT id, source, received_ms, listener, client_addr, helo,"
    " envelope_from, envelope_to, spf, content_type, external_id, size, body_sha256"
    " FROM inbound_messages WHERE (received_ms, id) > (?1, ?2)"
    " ORDER BY received_ms, id LIMIT ?3",
  [ST_EVENT_LIST] = "SELECT event_key, received_ms, event, sg_message_id, email, timestamp,"
    " payload FROM inbound_events WHERE (received_ms, event_key) > (?1, ?2)"
    " ORDER BY received_ms, event_key LIMIT ?3",
  [ST_INBOUND_GET] = "SELECT id, source, received_ms, listener, client_addr, helo,"
    " envelope_from, envelope_to, spf, content_type, external_id, size, body_sha256"
    " FROM inbound_messages WHERE id = ?1",
  [ST_EV_UNAPPLIED] = "SELECT event_key, received_ms, event, sg_message_id, email, timestamp,"
    " payload FROM inbound_events WHERE applied = 0 ORDER BY received_ms, event_key LIMIT ?1",
  [ST_EV_APPLIED] = "UPDATE inbound_events SET applied = 1 WHERE event_key = ?1",
};

/* What an inbound write works on. */
struct inbound_job {
  const struct store_inbound *in;         /* a message */
  const void *body;
  size_t bodylen;
  const struct store_event *ev;           /* events */
  size_t nev;
};

static int job_inbound(struct store_db *d, void *arg, size_t *changed)
{
  const struct inbound_job *j = arg;
  const struct store_inbound *m = j->in;
  sqlite3_stmt *s = db_stmt(d, ST_INBOUND_INSERT, sql);
  int rc, result;
  if(!s)
    return STORE_ERROR;
  rc = db_bind_text(s, 1, m->id);
  if(!rc) rc = db_bind_text(s, 2, m->source);
  if(!rc) rc = sqlite3_bind_int64(s, 3, m->received_ms > 0 ? m->received_ms : store_now_ms());
  if(!rc) rc = db_bind_text(s, 4, m->listener);
  if(!rc) rc = db_bind_text(s, 5, m->client_addr);
  if(!rc) rc = db_bind_text(s, 6, m->helo);
  if(!rc) rc = db_bind_text(s, 7, m->envelope_from);
  if(!rc) rc = db_bind_text(s, 8, m->envelope_to);
  if(!rc) rc = db_bind_text(s, 9, m->spf);
  if(!rc) rc = db_bind_text(s, 10, m->content_type);
  if(!rc) rc = db_bind_text(s, 11, m->external_id);
  if(!rc) rc = sqlite3_bind_int64(s, 12, (sqlite3_int64)j->bodylen);
  if(!rc) rc = db_bind_text(s, 13, m->body_sha256);
  if(!rc) rc = sqlite3_bind_blob64(s, 14, j->bodylen ? j->body : (const void *)"",
                                   (sqlite3_uint64)j->bodylen, SQLITE_STATIC);
  if(rc) {
    result = db_fail(d, rc, "bind inbound message");
    sqlite3_reset(s);
    return result;
  }
  result = db_exec_stmt(d, s, "insert inbound message");
  sqlite3_clear_bindings(s);      /* drop the pointer to the caller's body */
  if(!result)
    *changed = (size_t)sqlite3_changes(d->db);
  return result;
}

static int job_events(struct store_db *d, void *arg, size_t *changed)
{
  const struct inbound_job *j = arg;
  long long now = store_now_ms();
  size_t i;
  int rc, result = STORE_OK;
  *changed = 0;
  for(i = 0; !result && i < j->nev; i++) {
    const struct store_event *e = &j->ev[i];
    sqlite3_stmt *s = db_stmt(d, ST_EVENT_INSERT, sql);
    if(!s)
      return STORE_ERROR;
    rc = db_bind_text(s, 1, e->key);
    if(!rc) rc = sqlite3_bind_int64(s, 2, now);
    if(!rc) rc = db_bind_text(s, 3, e->event);
    if(!rc) rc = db_bind_text(s, 4, e->sg_message_id);
    if(!rc) rc = db_bind_text(s, 5, e->email);
    if(!rc) rc = e->timestamp ? sqlite3_bind_int64(s, 6, e->timestamp) : sqlite3_bind_null(s, 6);
    if(!rc) rc = sqlite3_bind_text(s, 7, e->payload ? e->payload : "", (int)e->payloadlen,
                                   SQLITE_STATIC);
    if(rc) {
      result = db_fail(d, rc, "bind event");
      sqlite3_reset(s);
      break;
    }
    result = db_exec_stmt(d, s, "insert event");
    if(!result)
      *changed += (size_t)sqlite3_changes(d->db);
  }
  return result;
}

int store_inbound_accept(struct store *st, const struct store_inbound *m, const void *body,
                         size_t bodylen, int *duplicate)
{
  struct inbound_job j;
  size_t changed = 0;
  int result;
  memset(&j, 0, sizeof(j));
  j.in = m;
  j.body = body;
  j.bodylen = bodylen;
  result = store_call(st, job_inbound, &j, STORE_SYNC_FULL, &changed);
  if(duplicate)
    *duplicate = !result && changed == 0;
  return result;
}

int store_events_add(struct store *st, const struct store_event *ev, size_t n, size_t *added)
{
  struct inbound_job j;
  size_t changed = 0;
  int result;
  memset(&j, 0, sizeof(j));
  j.ev = ev;
  j.nev = n;
  result = store_call(st, job_events, &j, STORE_SYNC_FULL, &changed);
  if(added)
    *added = changed;
  return result;
}

int store_inbound_list(struct store *st, store_inbound_cb cb, void *arg)
{
  struct store_db *d;
  long long after_ms = -1;
  char after_id[LIM_QUEUE_ID + 1] = "";
  int result = STORE_OK, stop = 0;
  while(!result && !stop) {
    struct store_inbound page[STORE_LIST_PAGE];
    char *strs[STORE_LIST_PAGE][10];
    size_t n = 0, i, k;
    sqlite3_stmt *s;
    int rc;
    memset(strs, 0, sizeof(strs));
    d = store_reader(st);
    s = db_stmt(d, ST_INBOUND_LIST, sql);
    if(!s) {
      store_reader_done(st, d);
      return STORE_ERROR;
    }
    sqlite3_bind_int64(s, 1, after_ms);
    db_bind_text(s, 2, after_id);
    sqlite3_bind_int(s, 3, STORE_LIST_PAGE);
    while((rc = sqlite3_step(s)) == SQLITE_ROW && n < STORE_LIST_PAGE) {
      struct store_inbound *m = &page[n];
      static const int cols[10] = { 1, 3, 4, 5, 6, 7, 8, 9, 10, 12 };
      memset(m, 0, sizeof(*m));
      str_copy(m->id, sizeof(m->id), db_col_str(s, 0) ? db_col_str(s, 0) : "");
      m->received_ms = sqlite3_column_int64(s, 2);
      m->size = sqlite3_column_int64(s, 11);
      for(k = 0; k < 10; k++)
        if(db_col_text(s, cols[k], &strs[n][k]))
          rc = SQLITE_NOMEM;
      m->source = strs[n][0]; m->listener = strs[n][1]; m->client_addr = strs[n][2];
      m->helo = strs[n][3]; m->envelope_from = strs[n][4]; m->envelope_to = strs[n][5];
      m->spf = strs[n][6]; m->content_type = strs[n][7]; m->external_id = strs[n][8];
      m->body_sha256 = strs[n][9];
      n++;
      if(rc == SQLITE_NOMEM)
        break;
    }
    if(rc != SQLITE_ROW && rc != SQLITE_DONE)
      result = db_fail(d, rc, "list inbound messages");
    sqlite3_reset(s);
    store_reader_done(st, d);
    /* the callback runs without the lock, so it may read the store itself */
    for(i = 0; i < n; i++) {
      if(!result && !stop && cb(arg, &page[i]))
        stop = 1;
      for(k = 0; k < 10; k++)
        free(strs[i][k]);
    }
    if(n < STORE_LIST_PAGE)
      break;
    after_ms = page[n - 1].received_ms;
    str_copy(after_id, sizeof(after_id), page[n - 1].id);
  }
  return result;
}

int store_inbound_body(struct store *st, const char *id, char **body, size_t *len)
{
  struct store_db *d;
  sqlite3_stmt *s = NULL;
  int rc, result = STORE_NOTFOUND;
  *body = NULL;
  *len = 0;
  d = store_reader(st);
  rc = sqlite3_prepare_v2(d->db, "SELECT body FROM inbound_messages WHERE id = ?1", -1, &s,
                          NULL);
  if(rc == SQLITE_OK)
    rc = db_bind_text(s, 1, id);
  if(rc == SQLITE_OK)
    rc = sqlite3_step(s);
  if(rc == SQLITE_ROW) {
    size_t n = (size_t)sqlite3_column_bytes(s, 0);
    const void *p = sqlite3_column_blob(s, 0);
    *body = malloc(n + 1);
    if(*body) {
      if(n)
        memcpy(*body, p, n);
      (*body)[n] = '\0';
      *len = n;
      result = STORE_OK;
    }
    else
      result = STORE_ERROR;
  }
  else if(rc != SQLITE_DONE)
    result = db_fail(d, rc, "read inbound body");
  sqlite3_finalize(s);
  store_reader_done(st, d);
  return result;
}

int store_inbound_get(struct store *st, const char *id, struct store_inbound *m, char **hold)
{
  struct store_db *d;
  sqlite3_stmt *s;
  struct buf b;
  const char **fields[9];
  size_t offs[9], k;
  int rc, result = STORE_OK;
  static const int cols[9] = { 1, 3, 4, 5, 6, 7, 8, 9, 10 };

  memset(m, 0, sizeof(*m));
  *hold = NULL;
  buf_init(&b, LIM_INBOUND_ROW);
  fields[0] = &m->source; fields[1] = &m->listener; fields[2] = &m->client_addr;
  fields[3] = &m->helo; fields[4] = &m->envelope_from; fields[5] = &m->envelope_to;
  fields[6] = &m->spf; fields[7] = &m->content_type; fields[8] = &m->external_id;
  d = store_reader(st);
  s = db_stmt(d, ST_INBOUND_GET, sql);
  if(!s) {
    store_reader_done(st, d);
    return STORE_ERROR;
  }
  db_bind_text(s, 1, id);
  rc = sqlite3_step(s);
  if(rc == SQLITE_ROW) {
    str_copy(m->id, sizeof(m->id), db_col_str(s, 0) ? db_col_str(s, 0) : "");
    m->received_ms = sqlite3_column_int64(s, 2);
    m->size = sqlite3_column_int64(s, 11);
    /* the strings go into one block: offsets now, pointers once it stops moving */
    for(k = 0; k < 9; k++) {
      offs[k] = (size_t)-1;
      if(db_col_str(s, cols[k])) {
        offs[k] = b.len;
        if(buf_add(&b, db_col_str(s, cols[k]), (size_t)sqlite3_column_bytes(s, cols[k]) + 1))
          result = STORE_ERROR;
      }
    }
  }
  else if(rc == SQLITE_DONE)
    result = STORE_NOTFOUND;
  else
    result = db_fail(d, rc, "read inbound message");
  sqlite3_reset(s);
  store_reader_done(st, d);
  if(!result) {
    size_t len;
    char *p = buf_steal(&b, &len);
    if(!p && len)
      result = STORE_ERROR;
    for(k = 0; !result && k < 9; k++)
      *fields[k] = offs[k] == (size_t)-1 ? NULL : p + offs[k];
    *hold = p;
  }
  buf_free(&b);
  if(result)
    memset(m, 0, sizeof(*m));
  return result;
}

int store_events_unapplied(struct store *st, size_t max, store_event_cb cb, void *arg)
{
  struct store_db *d;
  struct store_event *ev;
  long long *rcv;
  char **strs;
  size_t n = 0, i;
  sqlite3_stmt *s;
  int rc = SQLITE_DONE, result = STORE_OK;
  if(!max)
    return STORE_OK;
  ev = calloc(max, sizeof(*ev));
  rcv = calloc(max, sizeof(*rcv));
  strs = calloc(max * 5, sizeof(*strs));
  if(!ev || !rcv || !strs) {
    result = STORE_ERROR;
    goto out;
  }
  d = store_reader(st);
  s = db_stmt(d, ST_EV_UNAPPLIED, sql);
  if(!s) {
    store_reader_done(st, d);
    result = STORE_ERROR;
    goto out;
  }
  sqlite3_bind_int64(s, 1, (sqlite3_int64)max);
  while(n < max && (rc = sqlite3_step(s)) == SQLITE_ROW) {
    int bad = 0;
    bad |= db_col_text(s, 0, &strs[5 * n]);
    rcv[n] = sqlite3_column_int64(s, 1);
    bad |= db_col_text(s, 2, &strs[5 * n + 1]);
    bad |= db_col_text(s, 3, &strs[5 * n + 2]);
    bad |= db_col_text(s, 4, &strs[5 * n + 3]);
    ev[n].timestamp = sqlite3_column_int64(s, 5);
    bad |= db_col_text(s, 6, &strs[5 * n + 4]);
    ev[n].key = strs[5 * n];
    ev[n].event = strs[5 * n + 1];
    ev[n].sg_message_id = strs[5 * n + 2];
    ev[n].email = strs[5 * n + 3];
    ev[n].payload = strs[5 * n + 4] ? strs[5 * n + 4] : "";
    ev[n].payloadlen = strlen(ev[n].payload);
    n++;
    if(bad || !ev[n - 1].key) {
      result = STORE_ERROR;
      break;
    }
  }
  if(!result && n < max && rc != SQLITE_DONE)
    result = db_fail(d, rc, "unapplied events");
  sqlite3_reset(s);
  store_reader_done(st, d);
  for(i = 0; !result && i < n; i++)
    if(cb(arg, &ev[i], rcv[i]))
      break;
out:
  if(strs)
    for(i = 0; i < 5 * n; i++)
      free(strs[i]);
  free(strs);
  free(rcv);
  free(ev);
  return result;
}

static int job_event_applied(struct store_db *d, void *arg, size_t *changed)
{
  const char *v[1] = { arg };
  (void)changed;
  return db_run_text(d, ST_EV_APPLIED, sql, v, 1);
}

int store_event_applied(struct store *st, const char *key)
{
  return store_call(st, job_event_applied, (void *)key, STORE_SYNC_RELAXED, NULL);
}
