/* The SQLite store: the schema and its migrations, the group-commit writer thread and every SQL
 * statement Postern runs. Nothing else in the project speaks SQL, and nothing of SQLite leaks
 * through store.h, so a PostgreSQL store can later stand behind the same interface. */
#include "store/store.h"
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
#include <sqlite3.h>

#define STORE_DB_NAME "postern.db"
#define STORE_BUSY_TIMEOUT_MS 10000   /* posternctl and the daemon wait for each other's writes */
#define STORE_LIST_PAGE 256           /* messages store_list holds in memory at once */

/* ---- schema ---------------------------------------------------------------------------------
 * migrations[v] takes the database from user_version v to v + 1; each runs inside the opening
 * transaction. Append, never edit: a later issue adds its tables as the next entry. */
static const char *const migrations[] = {
  /* 1: the queue. The body is the last column so that reading the envelope never touches the
   * overflow pages that hold it. */
  "CREATE TABLE messages("
  " id TEXT PRIMARY KEY NOT NULL,"
  " sender TEXT NOT NULL,"
  " created_ms INTEGER NOT NULL,"
  " size INTEGER NOT NULL,"
  " body_8bit INTEGER NOT NULL DEFAULT 0,"
  " smtputf8 INTEGER NOT NULL DEFAULT 0,"
  " source TEXT, listener TEXT, client_addr TEXT, helo TEXT, auth_user TEXT,"
  " envid TEXT, ret TEXT, body_sha256 TEXT,"
  " body BLOB NOT NULL);"
  "CREATE INDEX messages_created ON messages(created_ms, id);"
  "CREATE TABLE recipients("
  " message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,"
  " idx INTEGER NOT NULL,"
  " address TEXT NOT NULL,"
  " orcpt TEXT, notify TEXT,"
  " status TEXT NOT NULL"
  "  CHECK(status IN ('queued','deferred','sent','bounced','held','captured')),"
  " attempts INTEGER NOT NULL DEFAULT 0,"
  " next_attempt_ms INTEGER NOT NULL,"
  " updated_ms INTEGER NOT NULL,"
  " last_reply TEXT, upstream TEXT,"
  " PRIMARY KEY(message_id, idx)) WITHOUT ROWID;"
  "CREATE INDEX recipients_due ON recipients(status, next_attempt_ms);",
  /* 2: who holds a held recipient: the name of the upstream whose login failed (the relay
   * releases those by itself once a login succeeds), NULL for a hold by hand */
  "ALTER TABLE recipients ADD COLUMN held_by TEXT;",
  /* 3: what the inbound path received, raw: mail from the MX listener, SendGrid Inbound Parse
   * posts and Twilio SMS (body as received, content_type saying what it is), and SendGrid
   * delivery events keyed by sg_event_id so a retried batch is stored once. external_id
   * (Twilio's MessageSid) makes a repeated SMS post a no-op too. */
  "CREATE TABLE inbound_messages("
  " id TEXT PRIMARY KEY NOT NULL,"
  " source TEXT NOT NULL CHECK(source IN ('mx','inbound-parse','sms')),"
  " received_ms INTEGER NOT NULL,"
  " listener TEXT, client_addr TEXT, helo TEXT,"
  " envelope_from TEXT, envelope_to TEXT,"
  " spf TEXT, content_type TEXT, external_id TEXT UNIQUE,"
  " size INTEGER NOT NULL, body_sha256 TEXT,"
  " body BLOB NOT NULL);"
  "CREATE INDEX inbound_messages_received ON inbound_messages(received_ms, id);"
  "CREATE TABLE inbound_events("
  " event_key TEXT PRIMARY KEY NOT NULL,"
  " received_ms INTEGER NOT NULL,"
  " event TEXT, sg_message_id TEXT, email TEXT, timestamp INTEGER,"
  " payload TEXT NOT NULL);"
  "CREATE INDEX inbound_events_message ON inbound_events(sg_message_id);",
  /* 4: correspondence records (issue 8). One row per record, made from one queue message
   * (direction out) or one inbound message (direction in) in the same transaction that sets
   * the source row's `recorded` mark, so a crash never makes a record twice or never. json is
   * the record as made; status and events change afterwards (status_rank only rises, so
   * events applied out of order cannot move a record back). record_addresses serves
   * --address, attachments are kept once per sha256, forward_queue is the durable list of
   * records still owed to forward_url (seq is the record order), and applied marks which
   * SendGrid events have been applied. */
  "ALTER TABLE messages ADD COLUMN recorded INTEGER NOT NULL DEFAULT 0;"
  "ALTER TABLE messages ADD COLUMN reply_token TEXT;"
  "CREATE INDEX messages_unrecorded ON messages(created_ms, id) WHERE recorded = 0;"
  "ALTER TABLE inbound_messages ADD COLUMN recorded INTEGER NOT NULL DEFAULT 0;"
  "CREATE INDEX inbound_messages_unrecorded ON inbound_messages(received_ms, id)"
  " WHERE recorded = 0;"
  "ALTER TABLE inbound_events ADD COLUMN applied INTEGER NOT NULL DEFAULT 0;"
  "CREATE INDEX inbound_events_unapplied ON inbound_events(received_ms, event_key)"
  " WHERE applied = 0;"
  "CREATE TABLE records("
  " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
  " id TEXT UNIQUE NOT NULL,"
  " direction TEXT NOT NULL CHECK(direction IN ('in','out')),"
  " source TEXT NOT NULL CHECK(source IN ('submission','mx','inbound-parse','sms')),"
  " received_ms INTEGER NOT NULL,"
  " message_id TEXT, thread_id TEXT NOT NULL, parent_id TEXT,"
  " status TEXT, status_rank INTEGER NOT NULL DEFAULT 0,"
  " reply_token TEXT, provider_id TEXT,"
  " relay_done INTEGER NOT NULL DEFAULT 1,"
  " json TEXT NOT NULL);"
  "CREATE INDEX records_message_id ON records(message_id);"
  "CREATE INDEX records_thread ON records(thread_id, seq);"
  "CREATE INDEX records_reply_token ON records(reply_token);"
  "CREATE INDEX records_provider ON records(provider_id);"
  "CREATE INDEX records_relay_pending ON records(seq) WHERE relay_done = 0;"
  "CREATE TABLE record_addresses("
  " record_id TEXT NOT NULL REFERENCES records(id) ON DELETE CASCADE,"
  " address TEXT NOT NULL,"
  " PRIMARY KEY(address, record_id)) WITHOUT ROWID;"
  "CREATE TABLE record_events("
  " record_id TEXT NOT NULL REFERENCES records(id) ON DELETE CASCADE,"
  " event_key TEXT NOT NULL,"
  " n INTEGER NOT NULL,"
  " at_ms INTEGER NOT NULL,"
  " event TEXT NOT NULL, recipient TEXT, detail TEXT,"
  " PRIMARY KEY(record_id, event_key)) WITHOUT ROWID;"
  "CREATE TABLE attachments("
  " sha256 TEXT PRIMARY KEY NOT NULL,"
  " size INTEGER NOT NULL,"
  " data BLOB NOT NULL);"
  "CREATE TABLE forward_queue("
  " seq INTEGER PRIMARY KEY NOT NULL,"
  " record_id TEXT NOT NULL,"
  " attempts INTEGER NOT NULL DEFAULT 0,"
  " next_attempt_ms INTEGER NOT NULL,"
  " last_error TEXT);",
};
#define SCHEMA_VERSION ((int)(sizeof(migrations) / sizeof(migrations[0])))

/* ---- statements: all SQL in one table, prepared once per connection ------------------------ */
enum stmt {
  ST_BEGIN, ST_BEGIN_IMMEDIATE, ST_COMMIT, ST_ROLLBACK,
  ST_SAVEPOINT, ST_RELEASE, ST_ROLLBACK_TO,
  ST_MSG_INSERT, ST_RCPT_INSERT, ST_RCPT_UPDATE, ST_MSG_EXISTS, ST_MSG_DELETE,
  ST_RCPT_SET_PENDING,
  ST_MSG_GET, ST_RCPT_GET, ST_BODY_GET, ST_DUE, ST_NEXT_DUE, ST_LIST,
  ST_COUNT_ORPHAN_RCPTS, ST_COUNT_EMPTY_MSGS,
  ST_RELEASE_UPSTREAM, ST_HELD_UPSTREAMS,
  ST_INBOUND_INSERT, ST_EVENT_INSERT, ST_INBOUND_LIST, ST_EVENT_LIST,
  ST_FLUSH, ST_COUNT_BY_STATUS, ST_COUNT_MESSAGES, ST_OLDEST_UNFINISHED,
  ST_REC_INSERT, ST_REC_ADDR, ST_REC_BLOB, ST_REC_FWD, ST_REC_MARK_QUEUE, ST_REC_MARK_INBOUND,
  ST_UNREC_QUEUE, ST_UNREC_INBOUND, ST_INBOUND_GET,
  ST_REC_BY_MSGID, ST_REC_BY_TOKEN, ST_REC_BY_PROVIDER, ST_REC_BY_ID, ST_REC_GET,
  ST_REV_INSERT, ST_REV_STATUS, ST_REC_RELAY, ST_REC_RELAY_PENDING, ST_REV_LIST,
  ST_REC_LIST, ST_EV_UNAPPLIED, ST_EV_APPLIED, ST_FWD_HEAD, ST_FWD_DONE, ST_FWD_RETRY,
  ST_COUNT
};

/* the columns msg_from_row() reads, in its order */
#define MSG_COLUMNS "id, sender, created_ms, size, body_8bit, smtputf8, source, listener," \
  " client_addr, helo, auth_user, envid, ret, body_sha256, reply_token"
#define REC_COLUMNS "seq, id, direction, source, received_ms, message_id, thread_id," \
  " parent_id, status, reply_token, provider_id, json"
#define PENDING "('queued','deferred')"

static const char *const stmt_sql[ST_COUNT] = {
  [ST_BEGIN] = "BEGIN",
  [ST_BEGIN_IMMEDIATE] = "BEGIN IMMEDIATE",
  [ST_COMMIT] = "COMMIT",
  [ST_ROLLBACK] = "ROLLBACK",
  [ST_SAVEPOINT] = "SAVEPOINT job",
  [ST_RELEASE] = "RELEASE job",
  [ST_ROLLBACK_TO] = "ROLLBACK TO job",
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
    " updated_ms, last_reply, upstream FROM recipients WHERE message_id = ?1 ORDER BY idx",
  [ST_BODY_GET] = "SELECT body FROM messages WHERE id = ?1",
  /* driven by recipients_due, so the cost follows the due set, not the size of the store
   * (captured and sent mail stays there); earliest due first */
  [ST_DUE] = "SELECT message_id, min(next_attempt_ms) AS due FROM recipients"
    " WHERE status IN " PENDING " AND next_attempt_ms <= ?1"
    " GROUP BY message_id ORDER BY due, message_id LIMIT ?2",
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
  [ST_COUNT_ORPHAN_RCPTS] = "SELECT count(*) FROM recipients r"
    " WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE m.id = r.message_id)",
  [ST_COUNT_EMPTY_MSGS] = "SELECT count(*) FROM messages m"
    " WHERE NOT EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id)",
  [ST_RELEASE_UPSTREAM] = "UPDATE recipients SET status = 'queued', held_by = NULL,"
    " next_attempt_ms = ?1, updated_ms = ?1 WHERE status = 'held' AND held_by = ?2",
  [ST_HELD_UPSTREAMS] = "SELECT DISTINCT held_by FROM recipients"
    " WHERE status = 'held' AND held_by IS NOT NULL",
  /* flush: deferred mail is due now; held mail stays held (release is a decision) */
  [ST_FLUSH] = "UPDATE recipients SET next_attempt_ms = ?1, updated_ms = ?1"
    " WHERE status = 'deferred' AND next_attempt_ms > ?1",
  [ST_COUNT_BY_STATUS] = "SELECT status, count(*) FROM recipients GROUP BY status",
  [ST_COUNT_MESSAGES] = "SELECT count(*), coalesce(sum(size), 0) FROM messages",
  /* driven by recipients_due over the waiting states: GET /metrics reads it every scrape, and
   * sent or captured mail (which stays in the store) must not make it slower */
  [ST_OLDEST_UNFINISHED] = "SELECT min(m.created_ms) FROM recipients r"
    " JOIN messages m ON m.id = r.message_id WHERE r.status IN ('queued','deferred','held')",
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
  [ST_REC_INSERT] = "INSERT INTO records(id, direction, source, received_ms, message_id,"
    " thread_id, parent_id, status, status_rank, reply_token, provider_id, relay_done, json)"
    " VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0, ?9, ?10, ?11, ?12)"
    " ON CONFLICT(id) DO NOTHING",
  [ST_REC_ADDR] = "INSERT INTO record_addresses(record_id, address) VALUES(?1, lower(?2))"
    " ON CONFLICT DO NOTHING",
  [ST_REC_BLOB] = "INSERT INTO attachments(sha256, size, data) VALUES(?1, ?2, ?3)"
    " ON CONFLICT(sha256) DO NOTHING",
  [ST_REC_FWD] = "INSERT INTO forward_queue(seq, record_id, next_attempt_ms)"
    " SELECT seq, id, ?2 FROM records WHERE id = ?1",
  [ST_REC_MARK_QUEUE] = "UPDATE messages SET recorded = 1 WHERE id = ?1",
  [ST_REC_MARK_INBOUND] = "UPDATE inbound_messages SET recorded = 1 WHERE id = ?1",
  [ST_UNREC_QUEUE] = "SELECT id, created_ms FROM messages WHERE recorded = 0"
    " AND (created_ms, id) > (?2, ?3) ORDER BY created_ms, id LIMIT ?1",
  [ST_UNREC_INBOUND] = "SELECT id, received_ms FROM inbound_messages WHERE recorded = 0"
    " AND (received_ms, id) > (?2, ?3) ORDER BY received_ms, id LIMIT ?1",
  [ST_INBOUND_GET] = "SELECT id, source, received_ms, listener, client_addr, helo,"
    " envelope_from, envelope_to, spf, content_type, external_id, size, body_sha256"
    " FROM inbound_messages WHERE id = ?1",
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
  [ST_EV_UNAPPLIED] = "SELECT event_key, received_ms, event, sg_message_id, email, timestamp,"
    " payload FROM inbound_events WHERE applied = 0 ORDER BY received_ms, event_key LIMIT ?1",
  [ST_EV_APPLIED] = "UPDATE inbound_events SET applied = 1 WHERE event_key = ?1",
  [ST_FWD_HEAD] = "SELECT seq, record_id, attempts, next_attempt_ms FROM forward_queue"
    " ORDER BY seq LIMIT 1",
  [ST_FWD_DONE] = "DELETE FROM forward_queue WHERE seq = ?1",
  [ST_FWD_RETRY] = "UPDATE forward_queue SET attempts = attempts + 1, next_attempt_ms = ?2,"
    " last_error = ?3 WHERE seq = ?1",
};

/* One SQLite connection and its prepared statements. Used by one thread at a time: the
 * writer's by the writer thread (or under wlock without one), the reader's under rlock. */
struct store_db {
  sqlite3 *db;
  sqlite3_stmt *stmt[ST_COUNT];
  int sync_normal;         /* the connection runs with synchronous=NORMAL right now */
};

enum job_kind { JOB_ACCEPT, JOB_UPDATE, JOB_DELETE, JOB_SET_PENDING, JOB_RELEASE_UPSTREAM,
                JOB_INBOUND, JOB_EVENTS, JOB_FLUSH, JOB_CALL };
struct store_db;
struct store_job;

/* One write waiting for the writer; lives on the waiting caller's stack. */
struct store_job {
  enum job_kind kind;
  const char *id;
  const struct store_msg *msg;            /* JOB_ACCEPT */
  const void *body;
  size_t bodylen;
  const struct store_rcpt_update *u;      /* JOB_UPDATE */
  size_t nu;
  enum rcpt_status status;                /* JOB_SET_PENDING */
  const char *upstream;                   /* JOB_RELEASE_UPSTREAM */
  size_t changed;                         /* JOB_RELEASE_UPSTREAM, JOB_FLUSH: recipients;
                                             JOB_INBOUND, JOB_EVENTS: rows added */
  const struct store_inbound *in;         /* JOB_INBOUND */
  const struct store_event *ev;           /* JOB_EVENTS */
  size_t nev;
  int (*call)(struct store_db *d, struct store_job *j);   /* JOB_CALL */
  void *arg;
  int result;
  sem_t done;                     /* posted by the writer once result is final */
  struct store_job *next;
};

struct store {
  int readonly;
  struct store_db r;              /* reads */
  struct store_db w;              /* writes; closed when readonly */
  pthread_mutex_t rlock;
  pthread_mutex_t wlock;          /* direct writes when there is no writer thread */
  int writer_running;
  pthread_t writer;
  pthread_mutex_t qlock;          /* guards the queue below */
  pthread_cond_t qcond;           /* the writer waits here for work */
  struct store_job *head, **tailp;
  int stopping;
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

static long long now_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

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

/* ---- connection helpers --------------------------------------------------------------------- */

/* What the operator can do about a failed statement, by its class. */
static const char *db_fail_hint(int prim, int sys)
{
  if(prim == SQLITE_FULL || sys == ENOSPC || sys == EDQUOT)
    return "free space in data_dir";
  switch(prim) {
  case SQLITE_CONSTRAINT:
    return "nothing to change: the write was refused and answered as a temporary error";
  case SQLITE_BUSY:
  case SQLITE_LOCKED:
    return "another program holds postern.db (a long sqlite3 or posternctl session?)";
  case SQLITE_READONLY:
  case SQLITE_PERM:
  case SQLITE_CANTOPEN:
  case SQLITE_AUTH:
    return "data_dir and postern.db must be writable by Postern's user";
  case SQLITE_CORRUPT:
  case SQLITE_NOTADB:
    return "postern.db is damaged: stop postern, keep a copy, and run `sqlite3 postern.db "
           "\"PRAGMA integrity_check\"`";
  default:
    return "check data_dir/postern.db (permissions, disk) and `sqlite3 postern.db \"PRAGMA "
           "integrity_check\"`";
  }
}

/* Maps an SQLite result to ours and logs it: disk full must become 452, everything else 451. */
static int db_fail(struct store_db *d, int rc, const char *what)
{
  int prim = rc & 0xff;
  int sys = d->db ? sqlite3_system_errno(d->db) : 0;
  log_error("store: %s: %s (%s); %s", what, d->db ? sqlite3_errmsg(d->db) : "no database",
            sqlite3_errstr(rc), db_fail_hint(prim, sys));
  if(prim == SQLITE_FULL)
    return STORE_FULL;
  if(prim == SQLITE_IOERR && (sys == ENOSPC || sys == EDQUOT))
    return STORE_FULL;
  return STORE_ERROR;
}

/* The cached statement, reset and unbound, or NULL (logged). */
static sqlite3_stmt *db_stmt(struct store_db *d, enum stmt which)
{
  sqlite3_stmt *s = d->stmt[which];
  if(!s) {
    int rc = sqlite3_prepare_v3(d->db, stmt_sql[which], -1, SQLITE_PREPARE_PERSISTENT, &s, NULL);
    if(rc != SQLITE_OK) {
      db_fail(d, rc, "prepare");
      sqlite3_finalize(s);
      return NULL;
    }
    d->stmt[which] = s;
  }
  sqlite3_reset(s);
  sqlite3_clear_bindings(s);
  return s;
}

/* Runs a statement that returns no rows we need; resets it so it holds no lock. */
static int db_exec_stmt(struct store_db *d, sqlite3_stmt *s, const char *what)
{
  int rc = sqlite3_step(s);
  int result = STORE_OK;
  if(rc != SQLITE_DONE && rc != SQLITE_ROW)
    result = db_fail(d, rc, what);
  sqlite3_reset(s);
  return result;
}

static int db_simple(struct store_db *d, enum stmt which)
{
  sqlite3_stmt *s = db_stmt(d, which);
  if(!s)
    return STORE_ERROR;
  return db_exec_stmt(d, s, stmt_sql[which]);
}

static int bind_text(sqlite3_stmt *s, int i, const char *v)
{
  if(!v)
    return sqlite3_bind_null(s, i);
  return sqlite3_bind_text(s, i, v, -1, SQLITE_STATIC);
}

/* Copies a nullable text column; -1 only when out of memory. */
static int col_text(sqlite3_stmt *s, int i, char **out)
{
  const unsigned char *p = sqlite3_column_text(s, i);
  *out = NULL;
  if(!p)
    return sqlite3_column_type(s, i) == SQLITE_NULL ? 0 : -1;
  *out = str_dup_n(p, (size_t)sqlite3_column_bytes(s, i));
  return *out ? 0 : -1;
}

static void db_close(struct store_db *d)
{
  size_t i;
  for(i = 0; i < ST_COUNT; i++) {
    sqlite3_finalize(d->stmt[i]);
    d->stmt[i] = NULL;
  }
  if(d->db)
    sqlite3_close(d->db);
  d->db = NULL;
}

static int db_pragma_int(struct store_db *d, const char *sql, long long *out)
{
  sqlite3_stmt *s = NULL;
  int rc = sqlite3_prepare_v2(d->db, sql, -1, &s, NULL);
  if(rc == SQLITE_OK) {
    rc = sqlite3_step(s);
    if(rc == SQLITE_ROW) {
      *out = sqlite3_column_int64(s, 0);
      rc = SQLITE_OK;
    }
  }
  sqlite3_finalize(s);
  return rc;
}

static int db_open(struct store_db *d, const char *path, int readonly, char *err, size_t errsz)
{
  int flags = (readonly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE) | SQLITE_OPEN_NOMUTEX;
  int rc = sqlite3_open_v2(path, &d->db, flags, NULL);
  if(rc == SQLITE_OK) {
    sqlite3_extended_result_codes(d->db, 1);
    rc = sqlite3_busy_timeout(d->db, STORE_BUSY_TIMEOUT_MS);
  }
  if(rc == SQLITE_OK)
    rc = sqlite3_exec(d->db, "PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL", NULL, NULL,
                      NULL);
  if(rc != SQLITE_OK) {
    snprintf(err, errsz, "cannot open %s: %s", path,
             d->db ? sqlite3_errmsg(d->db) : sqlite3_errstr(rc));
    db_close(d);
    return STORE_ERROR;
  }
  return STORE_OK;
}

/* Turns WAL on (it is persistent, but a fresh file starts in rollback mode) and applies the
 * missing migrations in one transaction, so a crash leaves either the old or the new schema. */
static int db_migrate(struct store_db *d, const char *path, char *err, size_t errsz)
{
  sqlite3_stmt *s = NULL;
  long long version = 0;
  int rc, v;
  const char *mode = NULL;

  rc = sqlite3_prepare_v2(d->db, "PRAGMA journal_mode = WAL", -1, &s, NULL);
  if(rc == SQLITE_OK && sqlite3_step(s) == SQLITE_ROW)
    mode = (const char *)sqlite3_column_text(s, 0);
  if(!mode || strcmp(mode, "wal")) {
    snprintf(err, errsz, "cannot switch %s to WAL mode: %s", path, sqlite3_errmsg(d->db));
    sqlite3_finalize(s);
    return STORE_ERROR;
  }
  sqlite3_finalize(s);

  rc = sqlite3_exec(d->db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
  if(rc == SQLITE_OK)
    rc = db_pragma_int(d, "PRAGMA user_version", &version);
  if(rc != SQLITE_OK)
    goto fail;
  if(version > SCHEMA_VERSION) {
    snprintf(err, errsz, "%s has schema version %lld, newer than this program knows (%d)",
             path, version, SCHEMA_VERSION);
    sqlite3_exec(d->db, "ROLLBACK", NULL, NULL, NULL);
    return STORE_ERROR;
  }
  for(v = (int)version; v < SCHEMA_VERSION; v++) {
    char sql[64];
    rc = sqlite3_exec(d->db, migrations[v], NULL, NULL, NULL);
    if(rc != SQLITE_OK)
      goto fail;
    /* PRAGMA takes no parameters; the number is ours, not input */
    snprintf(sql, sizeof(sql), "PRAGMA user_version = %d", v + 1);
    rc = sqlite3_exec(d->db, sql, NULL, NULL, NULL);
    if(rc != SQLITE_OK)
      goto fail;
  }
  rc = sqlite3_exec(d->db, "COMMIT", NULL, NULL, NULL);
  if(rc != SQLITE_OK)
    goto fail;
  return STORE_OK;

fail:
  snprintf(err, errsz, "cannot migrate %s to schema version %d: %s", path, SCHEMA_VERSION,
           sqlite3_errmsg(d->db));
  if(!sqlite3_get_autocommit(d->db))
    sqlite3_exec(d->db, "ROLLBACK", NULL, NULL, NULL);
  return (rc & 0xff) == SQLITE_FULL ? STORE_FULL : STORE_ERROR;
}

/* ---- the write jobs: the same code runs in the writer's batch or directly ------------------- */

static int job_accept(struct store_db *d, const struct store_job *j)
{
  const struct store_msg *m = j->msg;
  long long now = now_ms();
  sqlite3_stmt *s;
  size_t i;
  int rc, result;

  if(!m->id[0] || !m->nrcpts) {
    log_error("store: accept without %s (a bug in Postern: please report it)",
              m->id[0] ? "recipients" : "an id");
    return STORE_ERROR;
  }
  s = db_stmt(d, ST_MSG_INSERT);
  if(!s)
    return STORE_ERROR;
  rc = bind_text(s, 1, m->id);
  if(!rc) rc = bind_text(s, 2, m->sender ? m->sender : "");
  if(!rc) rc = sqlite3_bind_int64(s, 3, m->created_ms > 0 ? m->created_ms : now);
  if(!rc) rc = sqlite3_bind_int64(s, 4, (sqlite3_int64)j->bodylen);
  if(!rc) rc = sqlite3_bind_int(s, 5, !!m->body_8bit);
  if(!rc) rc = sqlite3_bind_int(s, 6, !!m->smtputf8);
  if(!rc) rc = bind_text(s, 7, m->source);
  if(!rc) rc = bind_text(s, 8, m->listener);
  if(!rc) rc = bind_text(s, 9, m->client_addr);
  if(!rc) rc = bind_text(s, 10, m->helo);
  if(!rc) rc = bind_text(s, 11, m->auth_user);
  if(!rc) rc = bind_text(s, 12, m->envid);
  if(!rc) rc = bind_text(s, 13, m->ret);
  if(!rc) rc = bind_text(s, 14, m->body_sha256);
  /* a non-NULL pointer even for 0 bytes, or SQLite would store NULL */
  if(!rc) rc = sqlite3_bind_blob64(s, 15, j->bodylen ? j->body : (const void *)"",
                                   (sqlite3_uint64)j->bodylen, SQLITE_STATIC);
  if(!rc) rc = bind_text(s, 16, m->reply_token);
  if(rc) {
    result = db_fail(d, rc, "bind message");
    sqlite3_reset(s);
    return result;
  }
  result = db_exec_stmt(d, s, "insert message");
  sqlite3_clear_bindings(s);      /* drop the pointer to the caller's body */

  for(i = 0; !result && i < m->nrcpts; i++) {
    const struct store_rcpt *r = &m->rcpts[i];
    s = db_stmt(d, ST_RCPT_INSERT);
    if(!s)
      return STORE_ERROR;
    /* idx is the position in the envelope as accepted, whatever the caller put in it */
    rc = bind_text(s, 1, m->id);
    if(!rc) rc = sqlite3_bind_int64(s, 2, (sqlite3_int64)i);
    if(!rc) rc = bind_text(s, 3, r->address ? r->address : "");
    if(!rc) rc = bind_text(s, 4, r->orcpt);
    if(!rc) rc = bind_text(s, 5, r->notify);
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
  sqlite3_stmt *s = db_stmt(d, ST_MSG_EXISTS);
  int rc;
  if(!s)
    return STORE_ERROR;
  rc = bind_text(s, 1, id);
  if(!rc)
    rc = sqlite3_step(s);
  sqlite3_reset(s);
  if(rc == SQLITE_ROW)
    return STORE_OK;
  if(rc == SQLITE_DONE)
    return STORE_NOTFOUND;
  return db_fail(d, rc, "look up message");
}

static int job_update(struct store_db *d, const struct store_job *j)
{
  long long now = now_ms();
  size_t i;
  int rc, result = job_exists(d, j->id);

  for(i = 0; !result && i < j->nu; i++) {
    const struct store_rcpt_update *u = &j->u[i];
    sqlite3_stmt *s = db_stmt(d, ST_RCPT_UPDATE);
    if(!s)
      return STORE_ERROR;
    rc = bind_text(s, 1, rcpt_status_name(u->status));
    if(!rc) rc = sqlite3_bind_int(s, 2, u->add_attempt ? 1 : 0);
    if(!rc) rc = sqlite3_bind_int64(s, 3, u->next_attempt_ms);
    if(!rc) rc = bind_text(s, 4, u->reply);
    if(!rc) rc = bind_text(s, 5, u->upstream);
    if(!rc) rc = sqlite3_bind_int64(s, 6, now);
    if(!rc) rc = bind_text(s, 7, j->id);
    if(!rc) rc = sqlite3_bind_int64(s, 8, (sqlite3_int64)u->idx);
    if(!rc) rc = bind_text(s, 9, u->status == RCPT_HELD ? u->held_by : NULL);
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

static int job_delete(struct store_db *d, const struct store_job *j)
{
  sqlite3_stmt *s = db_stmt(d, ST_MSG_DELETE);
  int result;
  if(!s)
    return STORE_ERROR;
  if(bind_text(s, 1, j->id))
    return db_fail(d, SQLITE_ERROR, "bind delete");
  result = db_exec_stmt(d, s, "delete message");
  if(!result && sqlite3_changes(d->db) == 0)
    result = STORE_NOTFOUND;
  return result;
}

static int job_set_pending(struct store_db *d, const struct store_job *j)
{
  sqlite3_stmt *s;
  int rc, result = job_exists(d, j->id);
  if(result)
    return result;
  s = db_stmt(d, ST_RCPT_SET_PENDING);
  if(!s)
    return STORE_ERROR;
  rc = bind_text(s, 1, rcpt_status_name(j->status));
  if(!rc) rc = sqlite3_bind_int64(s, 2, now_ms());
  if(!rc) rc = bind_text(s, 3, j->id);
  if(rc) {
    sqlite3_reset(s);
    return db_fail(d, rc, "bind set pending");
  }
  return db_exec_stmt(d, s, "set pending");
}

/* JOB_RELEASE_UPSTREAM, and JOB_FLUSH (the same shape without an upstream) */
static int job_release_upstream(struct store_db *d, struct store_job *j)
{
  sqlite3_stmt *s = db_stmt(d, j->kind == JOB_FLUSH ? ST_FLUSH : ST_RELEASE_UPSTREAM);
  int rc, result;
  if(!s)
    return STORE_ERROR;
  rc = sqlite3_bind_int64(s, 1, now_ms());
  if(!rc && j->kind != JOB_FLUSH) rc = bind_text(s, 2, j->upstream);
  if(rc) {
    sqlite3_reset(s);
    return db_fail(d, rc, "bind release upstream");
  }
  result = db_exec_stmt(d, s, "release upstream");
  if(!result)
    j->changed = (size_t)sqlite3_changes(d->db);
  return result;
}

static int job_inbound(struct store_db *d, struct store_job *j)
{
  const struct store_inbound *m = j->in;
  sqlite3_stmt *s = db_stmt(d, ST_INBOUND_INSERT);
  int rc, result;
  if(!s)
    return STORE_ERROR;
  rc = bind_text(s, 1, m->id);
  if(!rc) rc = bind_text(s, 2, m->source);
  if(!rc) rc = sqlite3_bind_int64(s, 3, m->received_ms > 0 ? m->received_ms : now_ms());
  if(!rc) rc = bind_text(s, 4, m->listener);
  if(!rc) rc = bind_text(s, 5, m->client_addr);
  if(!rc) rc = bind_text(s, 6, m->helo);
  if(!rc) rc = bind_text(s, 7, m->envelope_from);
  if(!rc) rc = bind_text(s, 8, m->envelope_to);
  if(!rc) rc = bind_text(s, 9, m->spf);
  if(!rc) rc = bind_text(s, 10, m->content_type);
  if(!rc) rc = bind_text(s, 11, m->external_id);
  if(!rc) rc = sqlite3_bind_int64(s, 12, (sqlite3_int64)j->bodylen);
  if(!rc) rc = bind_text(s, 13, m->body_sha256);
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
    j->changed = (size_t)sqlite3_changes(d->db);
  return result;
}

static int job_events(struct store_db *d, struct store_job *j)
{
  long long now = now_ms();
  size_t i;
  int rc, result = STORE_OK;
  j->changed = 0;
  for(i = 0; !result && i < j->nev; i++) {
    const struct store_event *e = &j->ev[i];
    sqlite3_stmt *s = db_stmt(d, ST_EVENT_INSERT);
    if(!s)
      return STORE_ERROR;
    rc = bind_text(s, 1, e->key);
    if(!rc) rc = sqlite3_bind_int64(s, 2, now);
    if(!rc) rc = bind_text(s, 3, e->event);
    if(!rc) rc = bind_text(s, 4, e->sg_message_id);
    if(!rc) rc = bind_text(s, 5, e->email);
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
      j->changed += (size_t)sqlite3_changes(d->db);
  }
  return result;
}

static int job_run(struct store_db *d, struct store_job *j)
{
  switch(j->kind) {
  case JOB_ACCEPT: return job_accept(d, j);
  case JOB_UPDATE: return job_update(d, j);
  case JOB_DELETE: return job_delete(d, j);
  case JOB_SET_PENDING: return job_set_pending(d, j);
  case JOB_RELEASE_UPSTREAM:
  case JOB_FLUSH: return job_release_upstream(d, j);
  case JOB_INBOUND: return job_inbound(d, j);
  case JOB_EVENTS: return job_events(d, j);
  case JOB_CALL: return j->call(d, j);
  }
  return STORE_ERROR;
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
static void db_run_batch(struct store_db *d, struct store_job *jobs)
{
  struct store_job *j;
  int result, relaxed = 1;

  /* Delivery results need not cost an fsync of their own: in WAL mode the next FULL commit
   * (the next accepted message) syncs them too, and losing one to a crash only means the
   * message is delivered again — the at-least-once side of the durability contract. Anything
   * else (an accepted message above all) is committed with synchronous=FULL. */
  /* The same holds for the correspondence jobs (JOB_CALL): a record lost to a crash loses
   * its source's recorded mark with it and is made again; an event, its applied mark; a
   * forward_url result, so the record is forwarded again (at least once). */
  for(j = jobs; j; j = j->next)
    if(j->kind != JOB_UPDATE && j->kind != JOB_CALL)
      relaxed = 0;
  if(relaxed != d->sync_normal &&
     sqlite3_exec(d->db, relaxed ? "PRAGMA synchronous = NORMAL" : "PRAGMA synchronous = FULL",
                  NULL, NULL, NULL) == SQLITE_OK)
    d->sync_normal = relaxed;
  if(!relaxed && d->sync_normal) {
    batch_fail(jobs, STORE_ERROR);   /* never commit an accept without FULL */
    return;
  }
  result = db_simple(d, ST_BEGIN_IMMEDIATE);
  if(result) {
    batch_fail(jobs, result);
    return;
  }
  for(j = jobs; j; j = j->next) {
    result = db_simple(d, ST_SAVEPOINT);
    if(result)
      break;
    j->result = job_run(d, j);
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
  if(result) {
    if(!sqlite3_get_autocommit(d->db))
      db_simple(d, ST_ROLLBACK);
    batch_fail(jobs, result);
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

    db_run_batch(&st->w, batch);

    /* Woken without qlock held: waking each waiter under the lock made every one of them
     * block on it again at once (half the futex calls of a busy listener). */
    for(j = batch; j; j = next) {
      next = j->next;                /* j belongs to its waiter once posted */
      sem_post(&j->done);
    }
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
    db_run_batch(&st->w, j);
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

int store_accept(struct store *st, const struct store_msg *m, const void *body, size_t bodylen)
{
  struct store_job j;
  memset(&j, 0, sizeof(j));
  j.kind = JOB_ACCEPT;
  j.id = m->id;
  j.msg = m;
  j.body = body;
  j.bodylen = bodylen;
  return store_submit(st, &j);
}

int store_update(struct store *st, const char *id, const struct store_rcpt_update *u, size_t n)
{
  struct store_job j;
  memset(&j, 0, sizeof(j));
  j.kind = JOB_UPDATE;
  j.id = id;
  j.u = u;
  j.nu = n;
  return store_submit(st, &j);
}

int store_delete(struct store *st, const char *id)
{
  struct store_job j;
  memset(&j, 0, sizeof(j));
  j.kind = JOB_DELETE;
  j.id = id;
  return store_submit(st, &j);
}

int store_set_pending(struct store *st, const char *id, enum rcpt_status status)
{
  struct store_job j;
  if(status != RCPT_QUEUED && status != RCPT_DEFERRED && status != RCPT_HELD)
    return STORE_ERROR;
  memset(&j, 0, sizeof(j));
  j.kind = JOB_SET_PENDING;
  j.id = id;
  j.status = status;
  return store_submit(st, &j);
}

int store_release_upstream(struct store *st, const char *upstream, size_t *released)
{
  struct store_job j;
  int result;
  memset(&j, 0, sizeof(j));
  j.kind = JOB_RELEASE_UPSTREAM;
  j.id = "";
  j.upstream = upstream;
  result = store_submit(st, &j);
  if(released)
    *released = result ? 0 : j.changed;
  return result;
}

int store_flush(struct store *st, size_t *flushed)
{
  struct store_job j;
  int result;
  memset(&j, 0, sizeof(j));
  j.kind = JOB_FLUSH;
  j.id = "";
  result = store_submit(st, &j);
  if(flushed)
    *flushed = result ? 0 : j.changed;
  return result;
}

/* ---- reads ---------------------------------------------------------------------------------- */

static int msg_from_row(sqlite3_stmt *s, struct store_msg *m)
{
  const unsigned char *id = sqlite3_column_text(s, 0);
  int bad = 0;
  str_copy(m->id, sizeof(m->id), id ? (const char *)id : "");
  bad |= col_text(s, 1, &m->sender);
  m->created_ms = sqlite3_column_int64(s, 2);
  m->size = sqlite3_column_int64(s, 3);
  m->body_8bit = sqlite3_column_int(s, 4);
  m->smtputf8 = sqlite3_column_int(s, 5);
  bad |= col_text(s, 6, &m->source);
  bad |= col_text(s, 7, &m->listener);
  bad |= col_text(s, 8, &m->client_addr);
  bad |= col_text(s, 9, &m->helo);
  bad |= col_text(s, 10, &m->auth_user);
  bad |= col_text(s, 11, &m->envid);
  bad |= col_text(s, 12, &m->ret);
  bad |= col_text(s, 13, &m->body_sha256);
  bad |= col_text(s, 14, &m->reply_token);
  if(bad || !m->sender) {
    log_error("store: out of memory reading a message (free memory or lower max_clients in "
              "[postern])");
    return STORE_ERROR;
  }
  return STORE_OK;
}

static int db_get_rcpts(struct store_db *d, struct store_msg *m)
{
  sqlite3_stmt *s = db_stmt(d, ST_RCPT_GET);
  size_t alloc = 0;
  int rc, result = STORE_OK;

  if(!s)
    return STORE_ERROR;
  if(bind_text(s, 1, m->id))
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
    bad |= col_text(s, 1, &r->address);
    bad |= col_text(s, 2, &r->orcpt);
    bad |= col_text(s, 3, &r->notify);
    if(rcpt_status_parse((const char *)sqlite3_column_text(s, 4), &r->status)) {
      log_error("store: message %s has a recipient with an unknown status (the database was "
              "changed outside Postern: `posternctl queue delete %s` removes it)", m->id, m->id);
      result = STORE_ERROR;
      break;
    }
    r->attempts = sqlite3_column_int(s, 5);
    r->next_attempt_ms = sqlite3_column_int64(s, 6);
    r->updated_ms = sqlite3_column_int64(s, 7);
    bad |= col_text(s, 8, &r->last_reply);
    bad |= col_text(s, 9, &r->upstream);
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
static int read_begin(struct store *st)
{
  pthread_mutex_lock(&st->rlock);
  return db_simple(&st->r, ST_BEGIN);
}

static void read_end(struct store *st, int begin_result)
{
  if(!begin_result)
    db_simple(&st->r, ST_COMMIT);
  pthread_mutex_unlock(&st->rlock);
}

static int db_get(struct store_db *d, const char *id, struct store_msg *out)
{
  sqlite3_stmt *s = db_stmt(d, ST_MSG_GET);
  int rc, result;
  if(!s)
    return STORE_ERROR;
  if(bind_text(s, 1, id))
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
  int begin_result, result;
  memset(out, 0, sizeof(*out));
  begin_result = read_begin(st);
  result = begin_result ? begin_result : db_get(&st->r, id, out);
  read_end(st, begin_result);
  if(result)
    store_msg_free(out);
  return result;
}

int store_body(struct store *st, const char *id, char **body, size_t *len)
{
  sqlite3_stmt *s;
  int rc, result;
  *body = NULL;
  *len = 0;
  pthread_mutex_lock(&st->rlock);
  s = db_stmt(&st->r, ST_BODY_GET);
  if(!s) {
    result = STORE_ERROR;
    goto out;
  }
  if(bind_text(s, 1, id)) {
    result = db_fail(&st->r, SQLITE_ERROR, "bind body");
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
  else
    result = db_fail(&st->r, rc, "read body");
  sqlite3_reset(s);
out:
  pthread_mutex_unlock(&st->rlock);
  return result;
}

int store_due(struct store *st, long long now, char (*ids)[LIM_QUEUE_ID + 1], size_t max, size_t *n)
{
  sqlite3_stmt *s;
  int rc = SQLITE_DONE, result = STORE_OK;
  *n = 0;
  if(!max)
    return STORE_OK;
  pthread_mutex_lock(&st->rlock);
  s = db_stmt(&st->r, ST_DUE);
  if(!s) {
    result = STORE_ERROR;
    goto out;
  }
  sqlite3_bind_int64(s, 1, now);
  sqlite3_bind_int64(s, 2, max > (size_t)LLONG_MAX ? LLONG_MAX : (sqlite3_int64)max);
  while(*n < max && (rc = sqlite3_step(s)) == SQLITE_ROW) {
    const unsigned char *id = sqlite3_column_text(s, 0);
    str_copy(ids[*n], LIM_QUEUE_ID + 1, id ? (const char *)id : "");
    (*n)++;
  }
  if(*n < max && rc != SQLITE_DONE)
    result = db_fail(&st->r, rc, "due messages");
  sqlite3_reset(s);
out:
  pthread_mutex_unlock(&st->rlock);
  return result;
}

int store_held_upstreams(struct store *st, int (*cb)(void *arg, const char *upstream), void *arg)
{
  sqlite3_stmt *s;
  char **names = NULL;
  size_t n = 0, cap = 0, i;
  int rc, result = STORE_OK;
  /* collected first: the callback may well use the store itself */
  pthread_mutex_lock(&st->rlock);
  s = db_stmt(&st->r, ST_HELD_UPSTREAMS);
  if(!s) {
    pthread_mutex_unlock(&st->rlock);
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
    if(col_text(s, 0, &name) || !name) {
      result = STORE_ERROR;
      break;
    }
    names[n++] = name;
  }
  if(!result && rc != SQLITE_DONE)
    result = db_fail(&st->r, rc, "held upstreams");
  sqlite3_reset(s);
  pthread_mutex_unlock(&st->rlock);
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
  sqlite3_stmt *s;
  int rc, result = STORE_OK;
  *when_ms = -1;
  pthread_mutex_lock(&st->rlock);
  s = db_stmt(&st->r, ST_NEXT_DUE);
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
    result = db_fail(&st->r, rc, "next due");
  sqlite3_reset(s);
out:
  pthread_mutex_unlock(&st->rlock);
  return result;
}

/* Reads up to STORE_LIST_PAGE matching messages after the key (after_ms, after_id). */
static int db_list_page(struct store_db *d, const struct store_filter *f, long long cutoff,
                        long long after_ms, const char *after_id, struct store_msg *page,
                        size_t *n)
{
  sqlite3_stmt *s = db_stmt(d, ST_LIST);
  int rc, result = STORE_OK;
  *n = 0;
  if(!s)
    return STORE_ERROR;
  rc = sqlite3_bind_int64(s, 1, after_ms);
  if(!rc) rc = bind_text(s, 2, after_id);
  if(!rc) rc = bind_text(s, 3, f ? f->sender_glob : NULL);
  if(!rc) rc = bind_text(s, 4, f ? f->recipient_glob : NULL);
  if(!rc) rc = bind_text(s, 5, f && f->status >= 0 ? rcpt_status_name(f->status) : NULL);
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
  struct store_msg *page;
  char after_id[LIM_QUEUE_ID + 1] = "";
  long long after_ms = LLONG_MIN, cutoff = LLONG_MIN;
  size_t n = 0, i;
  int result = STORE_OK, stop = 0;

  if(f && f->status >= (int)NSTATUS)
    return STORE_ERROR;
  if(f && f->older_than_ms > 0)
    cutoff = now_ms() - f->older_than_ms;
  page = calloc(STORE_LIST_PAGE, sizeof(*page));
  if(!page)
    return STORE_ERROR;
  /* the callback runs without the read lock, so it may call the store itself */
  while(!stop) {
    int begin_result = read_begin(st);
    n = 0;
    result = begin_result ? begin_result
                          : db_list_page(&st->r, f, cutoff, after_ms, after_id, page, &n);
    read_end(st, begin_result);
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

static int db_count(struct store_db *d, enum stmt which, long long *count)
{
  sqlite3_stmt *s = db_stmt(d, which);
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

static int db_counts(struct store_db *d, struct store_counts *out)
{
  sqlite3_stmt *s = db_stmt(d, ST_COUNT_BY_STATUS);
  int rc, result = STORE_OK;
  enum rcpt_status status;
  if(!s)
    return STORE_ERROR;
  while((rc = sqlite3_step(s)) == SQLITE_ROW)
    if(!rcpt_status_parse((const char *)sqlite3_column_text(s, 0), &status))
      out->rcpts[status] = sqlite3_column_int64(s, 1);
  if(rc != SQLITE_DONE)
    result = db_fail(d, rc, "count by status");
  sqlite3_reset(s);
  if(result || !(s = db_stmt(d, ST_COUNT_MESSAGES)))
    return result ? result : STORE_ERROR;
  rc = sqlite3_step(s);
  if(rc == SQLITE_ROW) {
    out->messages = sqlite3_column_int64(s, 0);
    out->bytes = sqlite3_column_int64(s, 1);
  }
  else
    result = db_fail(d, rc, "count messages");
  sqlite3_reset(s);
  if(result || !(s = db_stmt(d, ST_OLDEST_UNFINISHED)))
    return result ? result : STORE_ERROR;
  rc = sqlite3_step(s);
  if(rc == SQLITE_ROW && sqlite3_column_type(s, 0) != SQLITE_NULL)
    out->oldest_unfinished_ms = sqlite3_column_int64(s, 0);
  else if(rc != SQLITE_ROW)
    result = db_fail(d, rc, "oldest message");
  sqlite3_reset(s);
  return result;
}

int store_counts(struct store *st, struct store_counts *out)
{
  int begin_result, result;
  memset(out, 0, sizeof(*out));
  out->oldest_unfinished_ms = -1;
  begin_result = read_begin(st);
  result = begin_result ? begin_result : db_counts(&st->r, out);
  read_end(st, begin_result);
  return result;
}

/* ---- inbound ------------------------------------------------------------------------------- */

int store_inbound_accept(struct store *st, const struct store_inbound *m, const void *body,
                         size_t bodylen, int *duplicate)
{
  struct store_job j;
  int result;
  memset(&j, 0, sizeof(j));
  j.kind = JOB_INBOUND;
  j.id = m->id;
  j.in = m;
  j.body = body;
  j.bodylen = bodylen;
  result = store_submit(st, &j);
  if(duplicate)
    *duplicate = !result && j.changed == 0;
  return result;
}

int store_events_add(struct store *st, const struct store_event *ev, size_t n, size_t *added)
{
  struct store_job j;
  int result;
  memset(&j, 0, sizeof(j));
  j.kind = JOB_EVENTS;
  j.ev = ev;
  j.nev = n;
  result = store_submit(st, &j);
  if(added)
    *added = result ? 0 : j.changed;
  return result;
}

int store_ping(struct store *st)
{
  return store_events_add(st, NULL, 0, NULL);
}

static const char *col_str(sqlite3_stmt *s, int i)
{
  return (const char *)sqlite3_column_text(s, i);
}

int store_inbound_list(struct store *st, store_inbound_cb cb, void *arg)
{
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
    pthread_mutex_lock(&st->rlock);
    s = db_stmt(&st->r, ST_INBOUND_LIST);
    if(!s) {
      pthread_mutex_unlock(&st->rlock);
      return STORE_ERROR;
    }
    sqlite3_bind_int64(s, 1, after_ms);
    bind_text(s, 2, after_id);
    sqlite3_bind_int(s, 3, STORE_LIST_PAGE);
    while((rc = sqlite3_step(s)) == SQLITE_ROW && n < STORE_LIST_PAGE) {
      struct store_inbound *m = &page[n];
      static const int cols[10] = { 1, 3, 4, 5, 6, 7, 8, 9, 10, 12 };
      memset(m, 0, sizeof(*m));
      str_copy(m->id, sizeof(m->id), col_str(s, 0) ? col_str(s, 0) : "");
      m->received_ms = sqlite3_column_int64(s, 2);
      m->size = sqlite3_column_int64(s, 11);
      for(k = 0; k < 10; k++)
        if(col_text(s, cols[k], &strs[n][k]))
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
      result = db_fail(&st->r, rc, "list inbound messages");
    sqlite3_reset(s);
    pthread_mutex_unlock(&st->rlock);
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
  sqlite3_stmt *s = NULL;
  int rc, result = STORE_NOTFOUND;
  *body = NULL;
  *len = 0;
  pthread_mutex_lock(&st->rlock);
  rc = sqlite3_prepare_v2(st->r.db, "SELECT body FROM inbound_messages WHERE id = ?1", -1, &s,
                          NULL);
  if(rc == SQLITE_OK)
    rc = bind_text(s, 1, id);
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
    result = db_fail(&st->r, rc, "read inbound body");
  sqlite3_finalize(s);
  pthread_mutex_unlock(&st->rlock);
  return result;
}

/* ---- correspondence records ---------------------------------------------------------------- */

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

/* Binds text parameters 1..n (NULL binds NULL) and runs the statement. */
static int db_run_text(struct store_db *d, enum stmt which, const char *const *v, int n)
{
  sqlite3_stmt *s = db_stmt(d, which);
  int i, rc = SQLITE_OK;
  if(!s)
    return STORE_ERROR;
  for(i = 0; !rc && i < n; i++)
    rc = bind_text(s, i + 1, v[i]);
  if(rc) {
    sqlite3_reset(s);
    return db_fail(d, rc, "bind");
  }
  return db_exec_stmt(d, s, stmt_sql[which]);
}

static int job_record_mark(struct store_db *d, enum store_origin origin, const char *id)
{
  const char *v[1] = { id };
  return db_run_text(d, origin == STORE_ORIGIN_QUEUE ? ST_REC_MARK_QUEUE : ST_REC_MARK_INBOUND,
                     v, 1);
}

static int job_record_add(struct store_db *d, struct store_job *j)
{
  const struct record_add *a = j->arg;
  const struct store_record *r = a->r;
  sqlite3_stmt *s = db_stmt(d, ST_REC_INSERT);
  const char *p;
  size_t i;
  int rc, result;

  if(!s)
    return STORE_ERROR;
  rc = bind_text(s, 1, r->id);
  if(!rc) rc = bind_text(s, 2, r->direction);
  if(!rc) rc = bind_text(s, 3, r->source);
  if(!rc) rc = sqlite3_bind_int64(s, 4, r->received_ms > 0 ? r->received_ms : now_ms());
  if(!rc) rc = bind_text(s, 5, r->message_id);
  if(!rc) rc = bind_text(s, 6, r->thread_id ? r->thread_id : r->id);
  if(!rc) rc = bind_text(s, 7, r->parent_id);
  if(!rc) rc = bind_text(s, 8, r->status);
  if(!rc) rc = bind_text(s, 9, r->reply_token);
  if(!rc) rc = bind_text(s, 10, r->provider_id);
  if(!rc) rc = sqlite3_bind_int(s, 11, strcmp(r->direction, "out") ? 1 : 0);
  if(!rc) rc = bind_text(s, 12, r->json);
  if(rc) {
    sqlite3_reset(s);
    return db_fail(d, rc, "bind record");
  }
  result = db_exec_stmt(d, s, "insert record");
  if(result)
    return result;
  j->changed = (size_t)sqlite3_changes(d->db);
  if(j->changed) {
    /* addresses: LF-separated, each stored once */
    for(p = a->addresses ? a->addresses : ""; !result && *p;) {
      size_t n = strcspn(p, "\n");
      if(n) {
        char *addr = str_dup_n(p, n);
        const char *v[2] = { r->id, addr };
        result = addr ? db_run_text(d, ST_REC_ADDR, v, 2) : STORE_ERROR;
        free(addr);
      }
      p += n;
      if(*p)
        p++;
    }
    for(i = 0; !result && i < a->natt; i++) {
      s = db_stmt(d, ST_REC_BLOB);
      if(!s)
        return STORE_ERROR;
      rc = bind_text(s, 1, a->att[i].sha256);
      if(!rc) rc = sqlite3_bind_int64(s, 2, (sqlite3_int64)a->att[i].size);
      if(!rc) rc = sqlite3_bind_blob64(s, 3, a->att[i].size ? a->att[i].data : (const void *)"",
                                       (sqlite3_uint64)a->att[i].size, SQLITE_STATIC);
      if(rc) {
        sqlite3_reset(s);
        return db_fail(d, rc, "bind attachment");
      }
      result = db_exec_stmt(d, s, "insert attachment");
      sqlite3_clear_bindings(s);
    }
    if(!result && a->forward) {
      s = db_stmt(d, ST_REC_FWD);
      if(!s)
        return STORE_ERROR;
      rc = bind_text(s, 1, r->id);
      if(!rc) rc = sqlite3_bind_int64(s, 2, now_ms());
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

static int store_call(struct store *st, int (*call)(struct store_db *, struct store_job *),
                      void *arg, size_t *changed)
{
  struct store_job j;
  int result;
  memset(&j, 0, sizeof(j));
  j.kind = JOB_CALL;
  j.id = "";
  j.call = call;
  j.arg = arg;
  result = store_submit(st, &j);
  if(changed)
    *changed = result ? 0 : j.changed;
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
  result = store_call(st, job_record_add, &a, &changed);
  if(made)
    *made = changed != 0;
  return result;
}

struct record_skip {
  enum store_origin origin;
  const char *id;
};

static int job_record_skip(struct store_db *d, struct store_job *j)
{
  const struct record_skip *k = j->arg;
  return job_record_mark(d, k->origin, k->id);
}

int store_record_skip(struct store *st, enum store_origin origin, const char *id)
{
  struct record_skip k = { origin, id };
  return store_call(st, job_record_skip, &k, NULL);
}

/* Ids from a query with LIMIT ?1 (and, with after, seq > ?2 and the last seq as column 1). */
static int read_ids(struct store *st, enum stmt which, char (*ids)[LIM_QUEUE_ID + 1],
                    size_t max, size_t *n, long long *after)
{
  sqlite3_stmt *s;
  int rc = SQLITE_DONE, result = STORE_OK;
  *n = 0;
  pthread_mutex_lock(&st->rlock);
  s = db_stmt(&st->r, which);
  if(!s) {
    pthread_mutex_unlock(&st->rlock);
    return STORE_ERROR;
  }
  sqlite3_bind_int64(s, 1, (sqlite3_int64)max);
  if(after)
    sqlite3_bind_int64(s, 2, *after);
  while(*n < max && (rc = sqlite3_step(s)) == SQLITE_ROW) {
    str_copy(ids[*n], LIM_QUEUE_ID + 1, col_str(s, 0) ? col_str(s, 0) : "");
    if(after)
      *after = sqlite3_column_int64(s, 1);
    (*n)++;
  }
  if(*n < max && rc != SQLITE_DONE)
    result = db_fail(&st->r, rc, stmt_sql[which]);
  sqlite3_reset(s);
  pthread_mutex_unlock(&st->rlock);
  return result;
}

int store_unrecorded(struct store *st, enum store_origin origin, struct store_cursor *at,
                     char (*ids)[LIM_QUEUE_ID + 1], size_t max, size_t *n)
{
  enum stmt which = origin == STORE_ORIGIN_QUEUE ? ST_UNREC_QUEUE : ST_UNREC_INBOUND;
  sqlite3_stmt *s;
  int rc = SQLITE_DONE, result = STORE_OK;
  *n = 0;
  pthread_mutex_lock(&st->rlock);
  s = db_stmt(&st->r, which);
  if(!s) {
    pthread_mutex_unlock(&st->rlock);
    return STORE_ERROR;
  }
  sqlite3_bind_int64(s, 1, (sqlite3_int64)max);
  sqlite3_bind_int64(s, 2, at->ms);
  bind_text(s, 3, at->id);
  while(*n < max && (rc = sqlite3_step(s)) == SQLITE_ROW) {
    str_copy(ids[*n], LIM_QUEUE_ID + 1, col_str(s, 0) ? col_str(s, 0) : "");
    str_copy(at->id, sizeof(at->id), ids[*n]);
    at->ms = sqlite3_column_int64(s, 1);
    (*n)++;
  }
  if(*n < max && rc != SQLITE_DONE)
    result = db_fail(&st->r, rc, stmt_sql[which]);
  sqlite3_reset(s);
  pthread_mutex_unlock(&st->rlock);
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

int store_inbound_get(struct store *st, const char *id, struct store_inbound *m, char **hold)
{
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
  pthread_mutex_lock(&st->rlock);
  s = db_stmt(&st->r, ST_INBOUND_GET);
  if(!s) {
    pthread_mutex_unlock(&st->rlock);
    return STORE_ERROR;
  }
  bind_text(s, 1, id);
  rc = sqlite3_step(s);
  if(rc == SQLITE_ROW) {
    str_copy(m->id, sizeof(m->id), col_str(s, 0) ? col_str(s, 0) : "");
    m->received_ms = sqlite3_column_int64(s, 2);
    m->size = sqlite3_column_int64(s, 11);
    /* the strings go into one block: offsets now, pointers once it stops moving */
    for(k = 0; k < 9; k++) {
      offs[k] = (size_t)-1;
      if(col_str(s, cols[k])) {
        offs[k] = b.len;
        if(buf_add(&b, col_str(s, cols[k]), (size_t)sqlite3_column_bytes(s, cols[k]) + 1))
          result = STORE_ERROR;
      }
    }
  }
  else if(rc == SQLITE_DONE)
    result = STORE_NOTFOUND;
  else
    result = db_fail(&st->r, rc, "read inbound message");
  sqlite3_reset(s);
  pthread_mutex_unlock(&st->rlock);
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

int store_record_find(struct store *st, enum store_record_key key, const char *value,
                      char id[LIM_QUEUE_ID + 1], char thread[LIM_QUEUE_ID + 1])
{
  static const enum stmt which[] = { [STORE_BY_MESSAGE_ID] = ST_REC_BY_MSGID,
    [STORE_BY_REPLY_TOKEN] = ST_REC_BY_TOKEN, [STORE_BY_PROVIDER_ID] = ST_REC_BY_PROVIDER,
    [STORE_BY_ID] = ST_REC_BY_ID };
  sqlite3_stmt *s;
  int rc, result;
  if(!value || !*value)
    return STORE_NOTFOUND;
  pthread_mutex_lock(&st->rlock);
  s = db_stmt(&st->r, which[key]);
  if(!s) {
    pthread_mutex_unlock(&st->rlock);
    return STORE_ERROR;
  }
  bind_text(s, 1, value);
  rc = sqlite3_step(s);
  if(rc == SQLITE_ROW) {
    str_copy(id, LIM_QUEUE_ID + 1, col_str(s, 0) ? col_str(s, 0) : "");
    str_copy(thread, LIM_QUEUE_ID + 1, col_str(s, 1) ? col_str(s, 1) : "");
    result = STORE_OK;
  }
  else if(rc == SQLITE_DONE)
    result = STORE_NOTFOUND;
  else
    result = db_fail(&st->r, rc, "find record");
  sqlite3_reset(s);
  pthread_mutex_unlock(&st->rlock);
  return result;
}

static int record_from_row(sqlite3_stmt *s, struct store_record *r)
{
  int bad = 0;
  memset(r, 0, sizeof(*r));
  r->seq = sqlite3_column_int64(s, 0);
  str_copy(r->id, sizeof(r->id), col_str(s, 1) ? col_str(s, 1) : "");
  bad |= col_text(s, 2, &r->direction);
  bad |= col_text(s, 3, &r->source);
  r->received_ms = sqlite3_column_int64(s, 4);
  bad |= col_text(s, 5, &r->message_id);
  bad |= col_text(s, 6, &r->thread_id);
  bad |= col_text(s, 7, &r->parent_id);
  bad |= col_text(s, 8, &r->status);
  bad |= col_text(s, 9, &r->reply_token);
  bad |= col_text(s, 10, &r->provider_id);
  bad |= col_text(s, 11, &r->json);
  if(bad || !r->json) {
    store_record_free(r);
    return STORE_ERROR;
  }
  return STORE_OK;
}

int store_record_get(struct store *st, const char *id, struct store_record *out)
{
  sqlite3_stmt *s;
  int rc, result;
  memset(out, 0, sizeof(*out));
  pthread_mutex_lock(&st->rlock);
  s = db_stmt(&st->r, ST_REC_GET);
  if(!s) {
    pthread_mutex_unlock(&st->rlock);
    return STORE_ERROR;
  }
  bind_text(s, 1, id);
  rc = sqlite3_step(s);
  if(rc == SQLITE_ROW)
    result = record_from_row(s, out);
  else if(rc == SQLITE_DONE)
    result = STORE_NOTFOUND;
  else
    result = db_fail(&st->r, rc, "read record");
  sqlite3_reset(s);
  pthread_mutex_unlock(&st->rlock);
  return result;
}

struct record_event_add {
  const char *record_id;
  const struct store_record_event *e;
};

static int job_record_event(struct store_db *d, struct store_job *j)
{
  const struct record_event_add *a = j->arg;
  const struct store_record_event *e = a->e;
  sqlite3_stmt *s = db_stmt(d, ST_REV_INSERT);
  int rc, result;
  if(!s)
    return STORE_ERROR;
  rc = bind_text(s, 1, a->record_id);
  if(!rc) rc = bind_text(s, 2, e->key);
  if(!rc) rc = sqlite3_bind_int64(s, 3, e->at_ms > 0 ? e->at_ms : now_ms());
  if(!rc) rc = bind_text(s, 4, e->event);
  if(!rc) rc = bind_text(s, 5, e->recipient);
  if(!rc) rc = bind_text(s, 6, e->detail);
  if(rc) {
    sqlite3_reset(s);
    return db_fail(d, rc, "bind record event");
  }
  result = db_exec_stmt(d, s, "insert record event");
  if(result)
    return result;
  j->changed = (size_t)sqlite3_changes(d->db);
  if(j->changed && e->status) {
    s = db_stmt(d, ST_REV_STATUS);
    if(!s)
      return STORE_ERROR;
    rc = bind_text(s, 1, a->record_id);
    if(!rc) rc = bind_text(s, 2, e->status);
    if(!rc) rc = sqlite3_bind_int(s, 3, e->rank);
    if(rc) {
      sqlite3_reset(s);
      return db_fail(d, rc, "bind record status");
    }
    result = db_exec_stmt(d, s, "record status");
  }
  return result;
}

int store_record_event_add(struct store *st, const char *record_id,
                           const struct store_record_event *e, int *added)
{
  struct record_event_add a = { record_id, e };
  size_t changed = 0;
  int result = store_call(st, job_record_event, &a, &changed);
  if(added)
    *added = changed != 0;
  return result;
}

struct record_relay {
  const char *id, *provider_id;
  int done;
};

static int job_record_relay(struct store_db *d, struct store_job *j)
{
  const struct record_relay *a = j->arg;
  sqlite3_stmt *s = db_stmt(d, ST_REC_RELAY);
  int rc;
  if(!s)
    return STORE_ERROR;
  rc = bind_text(s, 1, a->id);
  if(!rc) rc = bind_text(s, 2, a->provider_id);
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
  return store_call(st, job_record_relay, &a, NULL);
}

int store_record_events(struct store *st, const char *record_id, store_record_event_cb cb,
                        void *arg)
{
  sqlite3_stmt *s;
  struct store_record_event *ev = NULL;
  char **strs = NULL;
  size_t n = 0, cap = 0, i;
  int rc, result = STORE_OK;
  /* collected first so that the callback runs without the read lock */
  pthread_mutex_lock(&st->rlock);
  s = db_stmt(&st->r, ST_REV_LIST);
  if(!s) {
    pthread_mutex_unlock(&st->rlock);
    return STORE_ERROR;
  }
  bind_text(s, 1, record_id);
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
    bad |= col_text(s, 0, &strs[4 * n]);
    ev[n].at_ms = sqlite3_column_int64(s, 1);
    bad |= col_text(s, 2, &strs[4 * n + 1]);
    bad |= col_text(s, 3, &strs[4 * n + 2]);
    bad |= col_text(s, 4, &strs[4 * n + 3]);
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
    result = db_fail(&st->r, rc, "record events");
  sqlite3_reset(s);
  pthread_mutex_unlock(&st->rlock);
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
  long long after = -1;
  int result = STORE_OK, stop = 0;
  while(!result && !stop) {
    struct store_record page[64];
    size_t n = 0, i;
    sqlite3_stmt *s;
    int rc;
    pthread_mutex_lock(&st->rlock);
    s = db_stmt(&st->r, ST_REC_LIST);
    if(!s) {
      pthread_mutex_unlock(&st->rlock);
      return STORE_ERROR;
    }
    sqlite3_bind_int64(s, 1, after);
    bind_text(s, 2, address);
    bind_text(s, 3, thread);
    sqlite3_bind_int(s, 4, 64);
    while(n < 64 && (rc = sqlite3_step(s)) == SQLITE_ROW) {
      if(record_from_row(s, &page[n])) {
        result = STORE_ERROR;
        break;
      }
      n++;
    }
    if(!result && n < 64 && rc != SQLITE_DONE)
      result = db_fail(&st->r, rc, "list records");
    sqlite3_reset(s);
    pthread_mutex_unlock(&st->rlock);
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

int store_events_unapplied(struct store *st, size_t max, store_event_cb cb, void *arg)
{
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
  pthread_mutex_lock(&st->rlock);
  s = db_stmt(&st->r, ST_EV_UNAPPLIED);
  if(!s) {
    pthread_mutex_unlock(&st->rlock);
    result = STORE_ERROR;
    goto out;
  }
  sqlite3_bind_int64(s, 1, (sqlite3_int64)max);
  while(n < max && (rc = sqlite3_step(s)) == SQLITE_ROW) {
    int bad = 0;
    bad |= col_text(s, 0, &strs[5 * n]);
    rcv[n] = sqlite3_column_int64(s, 1);
    bad |= col_text(s, 2, &strs[5 * n + 1]);
    bad |= col_text(s, 3, &strs[5 * n + 2]);
    bad |= col_text(s, 4, &strs[5 * n + 3]);
    ev[n].timestamp = sqlite3_column_int64(s, 5);
    bad |= col_text(s, 6, &strs[5 * n + 4]);
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
    result = db_fail(&st->r, rc, "unapplied events");
  sqlite3_reset(s);
  pthread_mutex_unlock(&st->rlock);
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

static int job_event_applied(struct store_db *d, struct store_job *j)
{
  const char *v[1] = { j->arg };
  return db_run_text(d, ST_EV_APPLIED, v, 1);
}

int store_event_applied(struct store *st, const char *key)
{
  return store_call(st, job_event_applied, (void *)key, NULL);
}

int store_forward_head(struct store *st, long long *seq, char id[LIM_QUEUE_ID + 1],
                       int *attempts, long long *next_ms)
{
  sqlite3_stmt *s;
  int rc, result;
  pthread_mutex_lock(&st->rlock);
  s = db_stmt(&st->r, ST_FWD_HEAD);
  if(!s) {
    pthread_mutex_unlock(&st->rlock);
    return STORE_ERROR;
  }
  rc = sqlite3_step(s);
  if(rc == SQLITE_ROW) {
    *seq = sqlite3_column_int64(s, 0);
    str_copy(id, LIM_QUEUE_ID + 1, col_str(s, 1) ? col_str(s, 1) : "");
    *attempts = sqlite3_column_int(s, 2);
    *next_ms = sqlite3_column_int64(s, 3);
    result = STORE_OK;
  }
  else if(rc == SQLITE_DONE)
    result = STORE_NOTFOUND;
  else
    result = db_fail(&st->r, rc, "forward queue");
  sqlite3_reset(s);
  pthread_mutex_unlock(&st->rlock);
  return result;
}

struct forward_result {
  long long seq, next_ms;
  int done;
  const char *error;
};

static int job_forward_result(struct store_db *d, struct store_job *j)
{
  const struct forward_result *a = j->arg;
  sqlite3_stmt *s = db_stmt(d, a->done ? ST_FWD_DONE : ST_FWD_RETRY);
  int rc;
  if(!s)
    return STORE_ERROR;
  rc = sqlite3_bind_int64(s, 1, a->seq);
  if(!rc && !a->done) rc = sqlite3_bind_int64(s, 2, a->next_ms);
  if(!rc && !a->done) rc = bind_text(s, 3, a->error);
  if(rc) {
    sqlite3_reset(s);
    return db_fail(d, rc, "bind forward result");
  }
  return db_exec_stmt(d, s, "forward result");
}

int store_forward_result(struct store *st, long long seq, int done, long long next_ms,
                         const char *error)
{
  struct forward_result a = { seq, next_ms, done, error };
  return store_call(st, job_forward_result, &a, NULL);
}

int store_check(struct store *st, char *err, size_t errsz)
{
  sqlite3_stmt *s = NULL;
  long long orphans = 0, empty = 0;
  int rc, result = STORE_OK;

  snprintf(err, errsz, "ok");
  pthread_mutex_lock(&st->rlock);
  rc = sqlite3_prepare_v2(st->r.db, "PRAGMA integrity_check", -1, &s, NULL);
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
    snprintf(err, errsz, "integrity check could not run: %s", sqlite3_errmsg(st->r.db));
    result = STORE_ERROR;
  }
  sqlite3_finalize(s);
  if(!result) {
    result = db_count(&st->r, ST_COUNT_ORPHAN_RCPTS, &orphans);
    if(!result)
      result = db_count(&st->r, ST_COUNT_EMPTY_MSGS, &empty);
    if(result)
      snprintf(err, errsz, "cannot count orphans: %s", sqlite3_errmsg(st->r.db));
    else if(orphans || empty) {
      snprintf(err, errsz, "%lld recipient(s) without a message, %lld message(s) without "
               "recipients", orphans, empty);
      result = STORE_ERROR;
    }
  }
  pthread_mutex_unlock(&st->rlock);
  return result;
}

/* ---- open and close ------------------------------------------------------------------------- */

int store_open(const char *data_dir, int flags, struct store **out, char *err, size_t errsz)
{
  struct store *st = NULL;
  char path[PATH_MAX];
  int readonly = !!(flags & STORE_OPEN_READONLY);
  int result = STORE_ERROR, n;
  long long version = 0;

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
  pthread_mutex_init(&st->wlock, NULL);
  pthread_mutex_init(&st->qlock, NULL);
  pthread_cond_init(&st->qcond, NULL);

  if(!readonly) {
    result = db_open(&st->w, path, 0, err, errsz);
    if(!result)
      result = db_migrate(&st->w, path, err, errsz);
    if(result)
      goto out;
  }
  /* the read connection cannot write even by mistake */
  result = db_open(&st->r, path, 1, err, errsz);
  if(result)
    goto out;
  if(db_pragma_int(&st->r, "PRAGMA user_version", &version) != SQLITE_OK) {
    snprintf(err, errsz, "cannot read %s: %s", path, sqlite3_errmsg(st->r.db));
    result = STORE_ERROR;
    goto out;
  }
  if(version != SCHEMA_VERSION) {
    if(!version)
      snprintf(err, errsz, "%s is not a Postern store (no schema)", path);
    else
      snprintf(err, errsz, "%s has schema version %lld, this program expects %d%s", path,
               version, SCHEMA_VERSION,
               version < SCHEMA_VERSION ? " (start postern once to migrate it)" : "");
    result = STORE_ERROR;
    goto out;
  }

  if(flags & STORE_OPEN_WRITER) {
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

void store_close(struct store *st)
{
  if(!st)
    return;
  if(st->writer_running) {
    pthread_mutex_lock(&st->qlock);
    st->stopping = 1;
    pthread_cond_signal(&st->qcond);
    pthread_mutex_unlock(&st->qlock);
    pthread_join(st->writer, NULL);
  }
  db_close(&st->r);
  db_close(&st->w);
  pthread_cond_destroy(&st->qcond);
  pthread_mutex_destroy(&st->qlock);
  pthread_mutex_destroy(&st->wlock);
  pthread_mutex_destroy(&st->rlock);
  free(st);
}
