/* The queue in the SQLite store: messages accepted for relay, their recipients' states, and
 * the reads the scheduler, the listeners and posternctl make of them. */
#include "store/store_int.h"
#include "lib/buf.h"
#include "lib/log.h"
#include <limits.h>
#include <stdlib.h>
#include <string.h>

/* the columns msg_from_row() reads, in its order */
#define MSG_COLUMNS "id, sender, created_ms, size, body_8bit, smtputf8, source, listener," \
  " client_addr, helo, auth_user, envid, ret, body_sha256, reply_token"
#define PENDING "('queued','deferred')"

static const char *const sql[ST_COUNT] = {
  [ST_MSG_INSERT] = "INSERT INTO messages(id, sender, created_ms, size, body_8bit, smtputf8,"
    " source, listener, client_addr, helo, auth_user, envid, ret, body_sha256, body,"
    " reply_token) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
  [ST_RCPT_INSERT] = "INSERT INTO recipients(message_id, idx, address, orcpt, notify, status,"
    " attempts, next_attempt_ms, updated_ms) VALUES(?1, ?2, ?3, ?4, ?5, 'queued', 0, ?6, ?7)",
  /* a NULL reply or upstream keeps the one already recorded: no news is not erasure */
  /* A hold by hand (held, held_by NULL) made while the delivery was in flight outlives a
   * result that leaves the recipient pending: only sent or bounced end it. */
  [ST_RCPT_UPDATE] = "UPDATE recipients SET"
    " status = CASE WHEN status = 'held' AND held_by IS NULL"
    "   AND ?1 IN ('queued','deferred','held') THEN 'held' ELSE ?1 END,"
    " held_by = CASE WHEN status = 'held' AND held_by IS NULL"
    "   AND ?1 IN ('queued','deferred','held') THEN NULL ELSE ?9 END,"
    " attempts = attempts + ?2,"
    " next_attempt_ms = ?3, last_reply = coalesce(?4, last_reply),"
    " upstream = coalesce(?5, upstream), updated_ms = ?6"
    " WHERE message_id = ?7 AND idx = ?8",
  [ST_MSG_EXISTS] = "SELECT 1 FROM messages WHERE id = ?1",
  [ST_MSG_DELETE] = "DELETE FROM messages WHERE id = ?1",
  [ST_RCPT_SET_PENDING] = "UPDATE recipients SET status = ?1, next_attempt_ms = ?2,"
    " updated_ms = ?2, held_by = NULL"
    " WHERE message_id = ?3 AND status IN ('queued','deferred','held')",
  [ST_MSG_GET] = "SELECT " MSG_COLUMNS " FROM messages WHERE id = ?1",
  [ST_RCPT_GET] = "SELECT idx, address, orcpt, notify, status, attempts, next_attempt_ms,"
    " updated_ms, last_reply, upstream, held_by, route_to FROM recipients"
    " WHERE message_id = ?1"
    " ORDER BY idx",
  /* A step of a walk over the messages in the order they came (messages_created), from a
   * cursor to a cutoff: each message is looked at as it crosses the cutoff, not the whole
   * queue at every sweep. The third column says whether it is overdue; the row's own columns
   * are read only for a message that still waits (a deferred seek). */
  [ST_OVERDUE_HELD] = "SELECT m.id, m.created_ms, EXISTS (SELECT 1 FROM recipients r"
    " WHERE r.message_id = m.id AND (r.status IN ('queued','deferred')"
    " OR r.status = 'held' AND r.held_by IS NOT NULL)) FROM messages m"
    " WHERE (m.created_ms, m.id) > (?1, ?2) AND m.created_ms < ?3"
    " ORDER BY m.created_ms, m.id LIMIT ?4",
  [ST_OVERDUE_UNWARNED] = "SELECT m.id, m.created_ms, CASE WHEN EXISTS (SELECT 1 FROM"
    " recipients r WHERE r.message_id = m.id AND r.status IN ('queued','deferred','held'))"
    " THEN m.delay_warned = 0 AND m.sender <> '' ELSE 0 END FROM messages m"
    " WHERE (m.created_ms, m.id) > (?1, ?2) AND m.created_ms < ?3"
    " ORDER BY m.created_ms, m.id LIMIT ?4",
  [ST_DELAY_WARNED] = "UPDATE messages SET delay_warned = 1 WHERE id = ?1",
  /* three range counts of recipients_due: the cost follows the queue, not the history */
  [ST_COUNT_PENDING] = "SELECT (SELECT count(*) FROM recipients WHERE status = 'queued'),"
    " (SELECT count(*) FROM recipients WHERE status = 'deferred'),"
    " (SELECT count(*) FROM recipients WHERE status = 'held')",
  [ST_BODY_GET] = "SELECT body FROM messages WHERE id = ?1",
  /* each walks recipients_due in its order (no sort of the whole due set, which made a large
   * drain quadratic); store_due merges the two walks and keeps each message once */
  [ST_DUE] = "SELECT message_id, next_attempt_ms FROM recipients"
    " WHERE status = 'queued' AND next_attempt_ms <= ?1 ORDER BY next_attempt_ms",
  [ST_DUE_DEFERRED] = "SELECT message_id, next_attempt_ms FROM recipients"
    " WHERE status = 'deferred' AND next_attempt_ms <= ?1 ORDER BY next_attempt_ms",
  /* one min() per status, so each is a single probe of recipients_due instead of a scan */
  [ST_NEXT_DUE] = "SELECT (SELECT min(next_attempt_ms) FROM recipients WHERE status = 'queued'),"
    " (SELECT min(next_attempt_ms) FROM recipients WHERE status = 'deferred')",
  /* keyset pagination on (created_ms, id); addresses compare case-insensitively (ASCII) */
  [ST_LIST] = "SELECT " MSG_COLUMNS " FROM messages m"
    " WHERE (created_ms, id) > (?1, ?2)"
    " AND (?3 IS NULL OR lower(sender) GLOB lower(?3))"
    " AND (?4 IS NULL AND ?5 IS NULL OR EXISTS (SELECT 1 FROM recipients r"
    "  WHERE r.message_id = m.id AND (?4 IS NULL OR lower(r.address) GLOB lower(?4))"
    "  AND (?5 IS NULL OR r.status = ?5)))"
    " AND (?6 IS NULL OR created_ms < ?6)"
    " ORDER BY created_ms, id LIMIT ?7",
  [ST_LIST_DESC] = "SELECT " MSG_COLUMNS " FROM messages m"
    " WHERE (created_ms, id) < (?1, ?2)"
    " AND (?3 IS NULL OR lower(sender) GLOB lower(?3))"
    " AND (?4 IS NULL AND ?5 IS NULL OR EXISTS (SELECT 1 FROM recipients r"
    "  WHERE r.message_id = m.id AND (?4 IS NULL OR lower(r.address) GLOB lower(?4))"
    "  AND (?5 IS NULL OR r.status = ?5)))"
    " AND (?6 IS NULL OR created_ms < ?6)"
    " ORDER BY created_ms DESC, id DESC LIMIT ?7",
  [ST_RELEASE_TO] = "UPDATE recipients SET status = 'queued', route_to = ?2,"
    " next_attempt_ms = ?1, updated_ms = ?1 WHERE message_id = ?3 AND status = 'captured'",
  [ST_RELEASE_UPSTREAM] = "UPDATE recipients SET status = 'queued', held_by = NULL,"
    " next_attempt_ms = ?1, updated_ms = ?1 WHERE status = 'held' AND held_by = ?2",
  /* through recipients_due: only the waiting states are read */
  [ST_WAITING_BY_UPSTREAM] = "SELECT upstream, status, count(*) FROM recipients"
    " WHERE status IN ('queued', 'deferred', 'held') GROUP BY upstream, status",
  [ST_HELD_UPSTREAMS] = "SELECT DISTINCT held_by FROM recipients"
    " WHERE status = 'held' AND held_by IS NOT NULL",
  /* flush: deferred mail is due now; held mail stays held (release is a decision) */
  [ST_FLUSH] = "UPDATE recipients SET next_attempt_ms = ?1, updated_ms = ?1"
    " WHERE status = 'deferred' AND next_attempt_ms > ?1",
  /* the totals the triggers keep (schema 9): their cost does not grow with the mail stored */
  [ST_COUNT_BY_STATUS] = "SELECT name, n FROM counts WHERE name NOT IN ('messages', 'bytes')",
  [ST_COUNT_MESSAGES] = "SELECT (SELECT n FROM counts WHERE name = 'messages'),"
    " (SELECT n FROM counts WHERE name = 'bytes')",
  /* driven by recipients_due over the waiting states: GET /metrics reads it every scrape, and
   * sent or captured mail (which stays in the store) must not make it slower */
  [ST_OLDEST_UNFINISHED] = "SELECT min(m.created_ms) FROM recipients r"
    " JOIN messages m ON m.id = r.message_id WHERE r.status IN ('queued','deferred','held')",
};

static const char *const status_names[] = {
  [RCPT_QUEUED] = "queued", [RCPT_DEFERRED] = "deferred", [RCPT_SENT] = "sent",
  [RCPT_BOUNCED] = "bounced", [RCPT_HELD] = "held", [RCPT_CAPTURED] = "captured",
};
#define NSTATUS (sizeof(status_names) / sizeof(status_names[0]))

const char *rcpt_status_name(enum rcpt_status s)
{
  if((unsigned)s >= NSTATUS)
    return "unknown";
  return status_names[s];
}

int rcpt_status_parse(const char *s, enum rcpt_status *out)
{
  size_t i;
  for(i = 0; s && i < NSTATUS; i++) {
    if(!strcmp(s, status_names[i])) {
      *out = (enum rcpt_status)i;
      return 0;
    }
  }
  return -1;
}

void store_msg_free(struct store_msg *m)
{
  size_t i;
  if(!m)
    return;
  for(i = 0; i < m->nrcpts; i++) {
    struct store_rcpt *r = &m->rcpts[i];
    free(r->address);
    free(r->orcpt);
    free(r->notify);
    free(r->last_reply);
    free(r->upstream);
    free(r->held_by);
    free(r->route_to);
  }
  free(m->rcpts);
  free(m->sender);
  free(m->source);
  free(m->listener);
  free(m->client_addr);
  free(m->helo);
  free(m->auth_user);
  free(m->envid);
  free(m->ret);
  free(m->body_sha256);
  free(m->reply_token);
  memset(m, 0, sizeof(*m));
}

/* ---- the write jobs: the same code runs in the writer's batch or directly ------------------- */

/* What a queue write works on; each job reads the fields it needs. */
struct queue_job {
  const char *id;
  const struct store_msg *msg;            /* accept */
  const void *body;
  size_t bodylen;
  const struct store_rcpt_update *u;      /* update */
  size_t nu;
  enum rcpt_status status;                /* set pending */
  const char *upstream;                   /* release upstream */
  int flush;                              /* release every deferred recipient instead */
};

static int job_accept(struct store_db *d, void *arg, size_t *changed)
{
  const struct queue_job *j = arg;
  const struct store_msg *m = j->msg;
  long long now = store_now_ms();
  sqlite3_stmt *s;
  size_t i;
  int rc, result;

  if(!m->id[0] || !m->nrcpts) {
    log_error("store: accept without %s (a bug in Postern: please report it)",
              m->id[0] ? "recipients" : "an id");
    return STORE_ERROR;
  }
  s = db_stmt(d, ST_MSG_INSERT, sql);
  if(!s)
    return STORE_ERROR;
  rc = db_bind_text(s, 1, m->id);
  if(!rc) rc = db_bind_text(s, 2, m->sender ? m->sender : "");
  if(!rc) rc = sqlite3_bind_int64(s, 3, m->created_ms > 0 ? m->created_ms : now);
  if(!rc) rc = sqlite3_bind_int64(s, 4, (sqlite3_int64)j->bodylen);
  if(!rc) rc = sqlite3_bind_int(s, 5, !!m->body_8bit);
  if(!rc) rc = sqlite3_bind_int(s, 6, !!m->smtputf8);
  if(!rc) rc = db_bind_text(s, 7, m->source);
  if(!rc) rc = db_bind_text(s, 8, m->listener);
  if(!rc) rc = db_bind_text(s, 9, m->client_addr);
  if(!rc) rc = db_bind_text(s, 10, m->helo);
  if(!rc) rc = db_bind_text(s, 11, m->auth_user);
  if(!rc) rc = db_bind_text(s, 12, m->envid);
  if(!rc) rc = db_bind_text(s, 13, m->ret);
  if(!rc) rc = db_bind_text(s, 14, m->body_sha256);
  /* a non-NULL pointer even for 0 bytes, or SQLite would store NULL */
  if(!rc) rc = sqlite3_bind_blob64(s, 15, j->bodylen ? j->body : (const void *)"",
                                   (sqlite3_uint64)j->bodylen, SQLITE_STATIC);
  if(!rc) rc = db_bind_text(s, 16, m->reply_token);
  if(rc) {
    result = db_fail(d, rc, "bind message");
    sqlite3_reset(s);
    return result;
  }
  result = db_exec_stmt(d, s, "insert message");
  sqlite3_clear_bindings(s);      /* drop the pointer to the caller's body */

  for(i = 0; !result && i < m->nrcpts; i++) {
    const struct store_rcpt *r = &m->rcpts[i];
    s = db_stmt(d, ST_RCPT_INSERT, sql);
    if(!s)
      return STORE_ERROR;
    /* idx is the position in the envelope as accepted, whatever the caller put in it */
    rc = db_bind_text(s, 1, m->id);
    if(!rc) rc = sqlite3_bind_int64(s, 2, (sqlite3_int64)i);
    if(!rc) rc = db_bind_text(s, 3, r->address ? r->address : "");
    if(!rc) rc = db_bind_text(s, 4, r->orcpt);
    if(!rc) rc = db_bind_text(s, 5, r->notify);
    /* due from arrival, so the first pass takes the queue in the order mail came in */
    if(!rc) rc = sqlite3_bind_int64(s, 6, m->created_ms > 0 && m->created_ms < now ? m->created_ms : now);
    if(!rc) rc = sqlite3_bind_int64(s, 7, now);
    if(rc) {
      result = db_fail(d, rc, "bind recipient");
      sqlite3_reset(s);
      break;
    }
    result = db_exec_stmt(d, s, "insert recipient");
  }
  return result;
}

static int job_exists(struct store_db *d, const char *id)
{
  sqlite3_stmt *s = db_stmt(d, ST_MSG_EXISTS, sql);
  int rc;
  if(!s)
    return STORE_ERROR;
  rc = db_bind_text(s, 1, id);
  if(!rc)
    rc = sqlite3_step(s);
  sqlite3_reset(s);
  if(rc == SQLITE_ROW)
    return STORE_OK;
  if(rc == SQLITE_DONE)
    return STORE_NOTFOUND;
  return db_fail(d, rc, "look up message");
}

static int job_update(struct store_db *d, void *arg, size_t *changed)
{
  const struct queue_job *j = arg;
  long long now = store_now_ms();
  size_t i;
  int rc, result = job_exists(d, j->id);

  for(i = 0; !result && i < j->nu; i++) {
    const struct store_rcpt_update *u = &j->u[i];
    sqlite3_stmt *s = db_stmt(d, ST_RCPT_UPDATE, sql);
    if(!s)
      return STORE_ERROR;
    rc = db_bind_text(s, 1, rcpt_status_name(u->status));
    if(!rc) rc = sqlite3_bind_int(s, 2, u->add_attempt ? 1 : 0);
    if(!rc) rc = sqlite3_bind_int64(s, 3, u->next_attempt_ms);
    if(!rc) rc = db_bind_text(s, 4, u->reply);
    if(!rc) rc = db_bind_text(s, 5, u->upstream);
    if(!rc) rc = sqlite3_bind_int64(s, 6, now);
    if(!rc) rc = db_bind_text(s, 7, j->id);
    if(!rc) rc = sqlite3_bind_int64(s, 8, (sqlite3_int64)u->idx);
    if(!rc) rc = db_bind_text(s, 9, u->status == RCPT_HELD ? u->held_by : NULL);
    if(rc) {
      result = db_fail(d, rc, "bind update");
      sqlite3_reset(s);
      break;
    }
    result = db_exec_stmt(d, s, "update recipient");
    if(!result && sqlite3_changes(d->db) != 1)
      result = STORE_NOTFOUND;     /* no such recipient: the savepoint undoes the others */
  }
  return result;
}

static int job_delete(struct store_db *d, void *arg, size_t *changed)
{
  const struct queue_job *j = arg;
  sqlite3_stmt *s = db_stmt(d, ST_MSG_DELETE, sql);
  int result;
  if(!s)
    return STORE_ERROR;
  if(db_bind_text(s, 1, j->id))
    return db_fail(d, SQLITE_ERROR, "bind delete");
  result = db_exec_stmt(d, s, "delete message");
  if(!result && sqlite3_changes(d->db) == 0)
    result = STORE_NOTFOUND;
  return result;
}

static int job_set_pending(struct store_db *d, void *arg, size_t *changed)
{
  const struct queue_job *j = arg;
  sqlite3_stmt *s;
  int rc, result = job_exists(d, j->id);
  if(result)
    return result;
  s = db_stmt(d, ST_RCPT_SET_PENDING, sql);
  if(!s)
    return STORE_ERROR;
  rc = db_bind_text(s, 1, rcpt_status_name(j->status));
  if(!rc) rc = sqlite3_bind_int64(s, 2, store_now_ms());
  if(!rc) rc = db_bind_text(s, 3, j->id);
  if(rc) {
    sqlite3_reset(s);
    return db_fail(d, rc, "bind set pending");
  }
  return db_exec_stmt(d, s, "set pending");
}

/* release upstream, flush (the same shape without an upstream), and release one message's
 * captured recipients to an upstream (j->id set) */
static int job_release_upstream(struct store_db *d, void *arg, size_t *changed)
{
  const struct queue_job *j = arg;
  int one = *j->id != '\0';
  sqlite3_stmt *s;
  int rc, result = one ? job_exists(d, j->id) : STORE_OK;
  if(result)
    return result;
  s = db_stmt(d, j->flush ? ST_FLUSH : one ? ST_RELEASE_TO : ST_RELEASE_UPSTREAM, sql);
  if(!s)
    return STORE_ERROR;
  rc = sqlite3_bind_int64(s, 1, store_now_ms());
  if(!rc && !j->flush) rc = db_bind_text(s, 2, j->upstream);
  if(!rc && one) rc = db_bind_text(s, 3, j->id);
  if(rc) {
    sqlite3_reset(s);
    return db_fail(d, rc, "bind release upstream");
  }
  result = db_exec_stmt(d, s, "release upstream");
  if(!result)
    *changed = (size_t)sqlite3_changes(d->db);
  return result;
}

int store_accept(struct store *st, const struct store_msg *m, const void *body, size_t bodylen)
{
  struct queue_job j;
  memset(&j, 0, sizeof(j));
  j.id = m->id;
  j.msg = m;
  j.body = body;
  j.bodylen = bodylen;
  return store_call(st, job_accept, &j, STORE_SYNC_FULL, NULL);
}

int store_update(struct store *st, const char *id, const struct store_rcpt_update *u, size_t n)
{
  struct queue_job j;
  memset(&j, 0, sizeof(j));
  j.id = id;
  j.u = u;
  j.nu = n;
  return store_call(st, job_update, &j, STORE_SYNC_RELAXED, NULL);
}

int store_delete(struct store *st, const char *id)
{
  struct queue_job j;
  memset(&j, 0, sizeof(j));
  j.id = id;
  return store_call(st, job_delete, &j, STORE_SYNC_FULL, NULL);
}

int store_set_pending(struct store *st, const char *id, enum rcpt_status status)
{
  struct queue_job j;
  if(status != RCPT_QUEUED && status != RCPT_DEFERRED && status != RCPT_HELD)
    return STORE_ERROR;
  memset(&j, 0, sizeof(j));
  j.id = id;
  j.status = status;
  return store_call(st, job_set_pending, &j, STORE_SYNC_FULL, NULL);
}

/* the three releases: id "" for every message; the count of recipients changed to *count */
static int release(struct store *st, const char *id, const char *upstream, int flush,
                   size_t *count)
{
  struct queue_job j;
  size_t changed = 0;
  int result;
  memset(&j, 0, sizeof(j));
  j.id = id;
  j.upstream = upstream;
  j.flush = flush;
  result = store_call(st, job_release_upstream, &j, STORE_SYNC_FULL, &changed);
  if(count)
    *count = changed;
  return result;
}

int store_release_upstream(struct store *st, const char *upstream, size_t *released)
{
  return release(st, "", upstream, 0, released);
}

int store_release_to(struct store *st, const char *id, const char *upstream, size_t *released)
{
  return release(st, id, upstream, 0, released);
}

int store_flush(struct store *st, size_t *flushed)
{
  return release(st, "", NULL, 1, flushed);
}

/* ---- reads ---------------------------------------------------------------------------------- */

static int msg_from_row(sqlite3_stmt *s, struct store_msg *m)
{
  const unsigned char *id = sqlite3_column_text(s, 0);
  int bad = 0;
  str_copy(m->id, sizeof(m->id), id ? (const char *)id : "");
  bad |= db_col_text(s, 1, &m->sender);
  m->created_ms = sqlite3_column_int64(s, 2);
  m->size = sqlite3_column_int64(s, 3);
  m->body_8bit = sqlite3_column_int(s, 4);
  m->smtputf8 = sqlite3_column_int(s, 5);
  bad |= db_col_text(s, 6, &m->source);
  bad |= db_col_text(s, 7, &m->listener);
  bad |= db_col_text(s, 8, &m->client_addr);
  bad |= db_col_text(s, 9, &m->helo);
  bad |= db_col_text(s, 10, &m->auth_user);
  bad |= db_col_text(s, 11, &m->envid);
  bad |= db_col_text(s, 12, &m->ret);
  bad |= db_col_text(s, 13, &m->body_sha256);
  bad |= db_col_text(s, 14, &m->reply_token);
  if(bad || !m->sender) {
    log_error("store: out of memory reading a message (free memory or lower max_clients in "
              "[postern])");
    return STORE_ERROR;
  }
  return STORE_OK;
}

static int db_get_rcpts(struct store_db *d, struct store_msg *m)
{
  sqlite3_stmt *s = db_stmt(d, ST_RCPT_GET, sql);
  size_t alloc = 0;
  int rc, result = STORE_OK;

  if(!s)
    return STORE_ERROR;
  if(db_bind_text(s, 1, m->id))
    return db_fail(d, SQLITE_ERROR, "bind recipients");
  while((rc = sqlite3_step(s)) == SQLITE_ROW) {
    struct store_rcpt *r;
    int bad = 0;
    if(m->nrcpts == alloc) {
      size_t na = alloc ? alloc * 2 : 4;
      struct store_rcpt *nr = realloc(m->rcpts, na * sizeof(*nr));
      if(!nr) {
        result = STORE_ERROR;
        break;
      }
      m->rcpts = nr;
      alloc = na;
    }
    r = &m->rcpts[m->nrcpts];
    memset(r, 0, sizeof(*r));
    m->nrcpts++;
    r->idx = (unsigned)sqlite3_column_int64(s, 0);
    bad |= db_col_text(s, 1, &r->address);
    bad |= db_col_text(s, 2, &r->orcpt);
    bad |= db_col_text(s, 3, &r->notify);
    if(rcpt_status_parse((const char *)sqlite3_column_text(s, 4), &r->status)) {
      log_error("store: message %s has a recipient with an unknown status (the database was "
              "changed outside Postern: `posternctl queue delete %s` removes it)", m->id, m->id);
      result = STORE_ERROR;
      break;
    }
    r->attempts = sqlite3_column_int(s, 5);
    r->next_attempt_ms = sqlite3_column_int64(s, 6);
    r->updated_ms = sqlite3_column_int64(s, 7);
    bad |= db_col_text(s, 8, &r->last_reply);
    bad |= db_col_text(s, 9, &r->upstream);
    bad |= db_col_text(s, 10, &r->held_by);
    bad |= db_col_text(s, 11, &r->route_to);
    if(bad || !r->address) {
      log_error("store: out of memory reading recipients (free memory or lower max_clients in "
              "[postern])");
      result = STORE_ERROR;
      break;
    }
  }
  if(!result && rc != SQLITE_DONE)
    result = db_fail(d, rc, "read recipients");
  sqlite3_reset(s);
  return result;
}

/* A read transaction makes the envelope and its recipients one snapshot. */
static int db_get(struct store_db *d, const char *id, struct store_msg *out)
{
  sqlite3_stmt *s = db_stmt(d, ST_MSG_GET, sql);
  int rc, result;
  if(!s)
    return STORE_ERROR;
  if(db_bind_text(s, 1, id))
    return db_fail(d, SQLITE_ERROR, "bind get");
  rc = sqlite3_step(s);
  if(rc == SQLITE_ROW)
    result = msg_from_row(s, out);
  else if(rc == SQLITE_DONE)
    result = STORE_NOTFOUND;
  else
    result = db_fail(d, rc, "read message");
  sqlite3_reset(s);
  if(!result)
    result = db_get_rcpts(d, out);
  return result;
}

int store_get(struct store *st, const char *id, struct store_msg *out)
{
  struct store_db *d;
  int begin_result, result;
  memset(out, 0, sizeof(*out));
  begin_result = store_read_begin(st, &d);
  result = begin_result ? begin_result : db_get(d, id, out);
  store_read_end(st, d, begin_result);
  if(result)
    store_msg_free(out);
  return result;
}

int store_body(struct store *st, const char *id, char **body, size_t *len)
{
  struct store_db *d;
  sqlite3_stmt *s;
  int rc, result;
  *body = NULL;
  *len = 0;
  d = store_reader(st);
  s = db_stmt(d, ST_BODY_GET, sql);
  if(!s) {
    result = STORE_ERROR;
    goto out;
  }
  if(db_bind_text(s, 1, id)) {
    result = db_fail(d, SQLITE_ERROR, "bind body");
    goto out;
  }
  rc = sqlite3_step(s);
  if(rc == SQLITE_ROW) {
    const void *p = sqlite3_column_blob(s, 0);
    size_t n = (size_t)sqlite3_column_bytes(s, 0);
    *body = malloc(n ? n : 1);
    if(!*body) {
      log_error("store: out of memory reading the body of %s (free memory or lower "
                "max_clients in [postern])", id);
      result = STORE_ERROR;
    }
    else {
      if(n)
        memcpy(*body, p, n);
      *len = n;
      result = STORE_OK;
    }
  }
  else if(rc == SQLITE_DONE)
    result = STORE_NOTFOUND;
  else {
    result = db_fail(d, rc, "read body");
    /* a damaged page stays damaged: the caller sets the message aside instead of retrying */
    if((rc & 0xff) == SQLITE_CORRUPT || (rc & 0xff) == SQLITE_NOTADB)
      result = STORE_DAMAGED;
  }
  sqlite3_reset(s);
out:
  store_reader_done(st, d);
  return result;
}

static int due_seen(char (*ids)[LIM_QUEUE_ID + 1], size_t n, const char *id)
{
  size_t i;
  for(i = 0; i < n; i++)
    if(!strcmp(ids[i], id))
      return 1;
  return 0;
}

int store_due(struct store *st, long long now, char (*ids)[LIM_QUEUE_ID + 1], size_t max, size_t *n)
{
  struct store_db *d;
  sqlite3_stmt *s[2] = { NULL, NULL };
  int rc[2] = { SQLITE_DONE, SQLITE_DONE }, k, result = STORE_OK;
  *n = 0;
  if(!max)
    return STORE_OK;
  d = store_reader(st);
  for(k = 0; k < 2; k++) {
    s[k] = db_stmt(d, k ? ST_DUE_DEFERRED : ST_DUE, sql);
    if(!s[k]) {
      result = STORE_ERROR;
      goto out;
    }
    sqlite3_bind_int64(s[k], 1, now);
    rc[k] = sqlite3_step(s[k]);
  }
  /* earliest due first across both walks; a message comes once, at its earliest recipient */
  while(*n < max && (rc[0] == SQLITE_ROW || rc[1] == SQLITE_ROW)) {
    const char *id;
    k = rc[0] != SQLITE_ROW ? 1 : rc[1] != SQLITE_ROW ? 0
        : sqlite3_column_int64(s[1], 1) < sqlite3_column_int64(s[0], 1);
    id = db_col_str(s[k], 0) ? db_col_str(s[k], 0) : "";
    if(!due_seen(ids, *n, id)) {
      str_copy(ids[*n], LIM_QUEUE_ID + 1, id);
      (*n)++;
    }
    rc[k] = sqlite3_step(s[k]);
  }
  for(k = 0; k < 2; k++)
    if(rc[k] != SQLITE_DONE && rc[k] != SQLITE_ROW)
      result = db_fail(d, rc[k], "due messages");
out:
  for(k = 0; k < 2; k++)
    if(s[k])
      sqlite3_reset(s[k]);
  store_reader_done(st, d);
  return result;
}

int store_waiting_by_upstream(struct store *st, store_upstream_count_cb cb, void *arg)
{
  struct store_db *d;
  sqlite3_stmt *s;
  struct row { char *upstream; enum rcpt_status status; long long n; } *rows = NULL;
  size_t n = 0, cap = 0, i;
  int rc, result = STORE_OK;
  /* collected first: the callback runs without the reader */
  d = store_reader(st);
  s = db_stmt(d, ST_WAITING_BY_UPSTREAM, sql);
  if(!s) {
    store_reader_done(st, d);
    return STORE_ERROR;
  }
  while((rc = sqlite3_step(s)) == SQLITE_ROW) {
    if(n == cap) {
      struct row *nr = realloc(rows, (cap ? cap * 2 : 8) * sizeof(*rows));
      if(!nr) {
        result = STORE_ERROR;
        break;
      }
      rows = nr;
      cap = cap ? cap * 2 : 8;
    }
    rows[n].upstream = NULL;
    if(db_col_text(s, 0, &rows[n].upstream) ||
       rcpt_status_parse((const char *)sqlite3_column_text(s, 1), &rows[n].status)) {
      free(rows[n].upstream);
      result = STORE_ERROR;
      break;
    }
    rows[n].n = sqlite3_column_int64(s, 2);
    n++;
  }
  if(!result && rc != SQLITE_DONE)
    result = db_fail(d, rc, "waiting by upstream");
  sqlite3_reset(s);
  store_reader_done(st, d);
  for(i = 0; i < n; i++)
    if(!result && cb(arg, rows[i].upstream, rows[i].status, rows[i].n))
      break;
  for(i = 0; i < n; i++)
    free(rows[i].upstream);
  free(rows);
  return result;
}

int store_held_upstreams(struct store *st, int (*cb)(void *arg, const char *upstream), void *arg)
{
  struct store_db *d;
  sqlite3_stmt *s;
  char **names = NULL;
  size_t n = 0, cap = 0, i;
  int rc, result = STORE_OK;
  /* collected first: the callback may well use the store itself */
  d = store_reader(st);
  s = db_stmt(d, ST_HELD_UPSTREAMS, sql);
  if(!s) {
    store_reader_done(st, d);
    return STORE_ERROR;
  }
  while((rc = sqlite3_step(s)) == SQLITE_ROW) {
    char *name = NULL;
    if(n == cap) {
      char **nn = realloc(names, (cap ? cap * 2 : 8) * sizeof(*names));
      if(!nn) {
        result = STORE_ERROR;
        break;
      }
      names = nn;
      cap = cap ? cap * 2 : 8;
    }
    if(db_col_text(s, 0, &name) || !name) {
      result = STORE_ERROR;
      break;
    }
    names[n++] = name;
  }
  if(!result && rc != SQLITE_DONE)
    result = db_fail(d, rc, "held upstreams");
  sqlite3_reset(s);
  store_reader_done(st, d);
  for(i = 0; i < n; i++) {
    if(!result && cb(arg, names[i]))
      break;
  }
  for(i = 0; i < n; i++)
    free(names[i]);
  free(names);
  return result;
}

int store_next_due(struct store *st, long long *when_ms)
{
  struct store_db *d;
  sqlite3_stmt *s;
  int rc, result = STORE_OK;
  *when_ms = -1;
  d = store_reader(st);
  s = db_stmt(d, ST_NEXT_DUE, sql);
  if(!s) {
    result = STORE_ERROR;
    goto out;
  }
  rc = sqlite3_step(s);
  if(rc == SQLITE_ROW) {
    int i;
    for(i = 0; i < 2; i++) {
      long long t;
      if(sqlite3_column_type(s, i) == SQLITE_NULL)
        continue;
      t = sqlite3_column_int64(s, i);
      if(*when_ms < 0 || t < *when_ms)
        *when_ms = t;
    }
  }
  else
    result = db_fail(d, rc, "next due");
  sqlite3_reset(s);
out:
  store_reader_done(st, d);
  return result;
}

/* Reads up to STORE_LIST_PAGE matching messages after the key (after_ms, after_id). */
static int db_list_page(struct store_db *d, const struct store_filter *f, long long cutoff,
                        long long after_ms, const char *after_id, struct store_msg *page,
                        size_t *n)
{
  sqlite3_stmt *s = db_stmt(d, f && f->newest_first ? ST_LIST_DESC : ST_LIST, sql);
  int rc, result = STORE_OK;
  *n = 0;
  if(!s)
    return STORE_ERROR;
  rc = sqlite3_bind_int64(s, 1, after_ms);
  if(!rc) rc = db_bind_text(s, 2, after_id);
  if(!rc) rc = db_bind_text(s, 3, f ? f->sender_glob : NULL);
  if(!rc) rc = db_bind_text(s, 4, f ? f->recipient_glob : NULL);
  if(!rc) rc = db_bind_text(s, 5, f && f->status >= 0 ? rcpt_status_name(f->status) : NULL);
  if(!rc && cutoff != LLONG_MIN) rc = sqlite3_bind_int64(s, 6, cutoff);
  if(!rc) rc = sqlite3_bind_int(s, 7, STORE_LIST_PAGE);
  if(rc) {
    sqlite3_reset(s);
    return db_fail(d, rc, "bind list");
  }
  while((rc = sqlite3_step(s)) == SQLITE_ROW) {
    struct store_msg *m = &page[*n];
    memset(m, 0, sizeof(*m));
    (*n)++;
    result = msg_from_row(s, m);
    if(!result)
      result = db_get_rcpts(d, m);
    if(result)
      break;
  }
  if(!result && rc != SQLITE_DONE)
    result = db_fail(d, rc, "list messages");
  sqlite3_reset(s);
  return result;
}

int store_list(struct store *st, const struct store_filter *f, store_msg_cb cb, void *arg)
{
  struct store_db *d;
  struct store_msg *page;
  char after_id[LIM_QUEUE_ID + 1] = "";
  long long after_ms = LLONG_MIN, cutoff = LLONG_MIN;
  size_t n = 0, i;
  int result = STORE_OK, stop = 0;

  if(f && f->status >= (int)NSTATUS)
    return STORE_ERROR;
  if(f && f->older_than_ms > 0)
    cutoff = store_now_ms() - f->older_than_ms;
  if(f && f->newest_first) {
    after_ms = LLONG_MAX;
    str_copy(after_id, sizeof(after_id), "~");   /* after every id: ids are hex */
  }
  if(f && f->after_id) {
    after_ms = f->after_ms;
    str_copy(after_id, sizeof(after_id), f->after_id);
  }
  page = calloc(STORE_LIST_PAGE, sizeof(*page));
  if(!page)
    return STORE_ERROR;
  /* the callback runs without the read lock, so it may call the store itself */
  while(!stop) {
    int begin_result = store_read_begin(st, &d);
    n = 0;
    result = begin_result ? begin_result
                          : db_list_page(d, f, cutoff, after_ms, after_id, page, &n);
    store_read_end(st, d, begin_result);
    for(i = 0; !result && !stop && i < n; i++)
      stop = cb(arg, &page[i]);
    if(n) {
      after_ms = page[n - 1].created_ms;
      str_copy(after_id, sizeof(after_id), page[n - 1].id);
    }
    for(i = 0; i < n; i++)
      store_msg_free(&page[i]);
    if(result || n < STORE_LIST_PAGE)
      break;
  }
  free(page);
  return result;
}

static int db_counts(struct store_db *d, struct store_counts *out, int all)
{
  sqlite3_stmt *s = db_stmt(d, all ? ST_COUNT_BY_STATUS : ST_COUNT_PENDING, sql);
  int rc, result = STORE_OK;
  enum rcpt_status status;
  if(!s)
    return STORE_ERROR;
  if(!all) {
    rc = sqlite3_step(s);
    if(rc == SQLITE_ROW) {
      out->rcpts[RCPT_QUEUED] = sqlite3_column_int64(s, 0);
      out->rcpts[RCPT_DEFERRED] = sqlite3_column_int64(s, 1);
      out->rcpts[RCPT_HELD] = sqlite3_column_int64(s, 2);
      rc = SQLITE_DONE;
    }
  }
  else
    while((rc = sqlite3_step(s)) == SQLITE_ROW)
      if(!rcpt_status_parse((const char *)sqlite3_column_text(s, 0), &status))
        out->rcpts[status] = sqlite3_column_int64(s, 1);
  if(rc != SQLITE_DONE)
    result = db_fail(d, rc, "count by status");
  sqlite3_reset(s);
  if(!all) {
    out->messages = out->bytes = -1;
    goto oldest;
  }
  if(result || !(s = db_stmt(d, ST_COUNT_MESSAGES, sql)))
    return result ? result : STORE_ERROR;
  rc = sqlite3_step(s);
  if(rc == SQLITE_ROW) {
    out->messages = sqlite3_column_int64(s, 0);
    out->bytes = sqlite3_column_int64(s, 1);
  }
  else
    result = db_fail(d, rc, "count messages");
  sqlite3_reset(s);
oldest:
  if(result || !(s = db_stmt(d, ST_OLDEST_UNFINISHED, sql)))
    return result ? result : STORE_ERROR;
  rc = sqlite3_step(s);
  if(rc == SQLITE_ROW && sqlite3_column_type(s, 0) != SQLITE_NULL)
    out->oldest_unfinished_ms = sqlite3_column_int64(s, 0);
  else if(rc != SQLITE_ROW)
    result = db_fail(d, rc, "oldest message");
  sqlite3_reset(s);
  return result;
}

static int counts(struct store *st, struct store_counts *out, int all)
{
  struct store_db *d;
  int begin_result, result;
  memset(out, 0, sizeof(*out));
  out->oldest_unfinished_ms = -1;
  begin_result = store_read_begin(st, &d);
  result = begin_result ? begin_result : db_counts(d, out, all);
  store_read_end(st, d, begin_result);
  return result;
}

int store_counts(struct store *st, struct store_counts *out)
{
  return counts(st, out, 1);
}

int store_counts_pending(struct store *st, struct store_counts *out)
{
  return counts(st, out, 0);
}

int store_overdue(struct store *st, enum store_overdue which, const struct store_cursor *at,
                  long long cutoff_ms, struct store_overdue_row *rows, size_t max, size_t *n)
{
  struct store_db *d = store_reader(st);
  sqlite3_stmt *s = db_stmt(d, which == STORE_OVERDUE_EXPIRED ? ST_OVERDUE_HELD
                                                           : ST_OVERDUE_UNWARNED, sql);
  int rc = SQLITE_DONE, result = STORE_OK;
  *n = 0;
  if(!s) {
    store_reader_done(st, d);
    return STORE_ERROR;
  }
  rc = sqlite3_bind_int64(s, 1, at->ms);
  if(!rc) rc = db_bind_text(s, 2, at->id);
  if(!rc) rc = sqlite3_bind_int64(s, 3, cutoff_ms);
  if(!rc) rc = sqlite3_bind_int64(s, 4, max > (size_t)LLONG_MAX ? LLONG_MAX : (sqlite3_int64)max);
  if(rc) {
    sqlite3_reset(s);
    store_reader_done(st, d);
    return db_fail(d, rc, "bind overdue");
  }
  while(*n < max && (rc = sqlite3_step(s)) == SQLITE_ROW) {
    struct store_overdue_row *o = &rows[*n];
    str_copy(o->id, sizeof(o->id), db_col_str(s, 0) ? db_col_str(s, 0) : "");
    o->created_ms = sqlite3_column_int64(s, 1);
    o->overdue = sqlite3_column_int(s, 2);
    (*n)++;
  }
  if(*n < max && rc != SQLITE_DONE)
    result = db_fail(d, rc, "overdue messages");
  sqlite3_reset(s);
  store_reader_done(st, d);
  return result;
}

static int job_delay_warned(struct store_db *d, void *arg, size_t *changed)
{
  const char *v[1] = { arg };
  (void)changed;
  return db_run_text(d, ST_DELAY_WARNED, sql, v, 1);
}

int store_delay_warned(struct store *st, const char *id)
{
  /* relaxed: lost to a crash, the warning is sent again */
  return store_call(st, job_delay_warned, (void *)id, STORE_SYNC_RELAXED, NULL);
}
