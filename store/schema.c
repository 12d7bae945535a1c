/* The SQLite store's schema: its migrations, applied when the store is opened, and the check
 * that a store is one this program knows. */
#include "store/store_int.h"
#include "lib/log.h"
#include <stdio.h>
#include <string.h>

/* migrations[v] takes the database from user_version v to v + 1; each runs inside the opening
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
  /* 4: correspondence records. One row per record, made from one queue message
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
  /* 5: the forward queue sets aside a record the application keeps refusing, so the ones
   * behind it move on: refusals counts the attempts it answered with a refusal (not those
   * when it was away), queued_ms dates its place in the queue (forward_max_age; existing rows
   * start their count now) and set_aside_ms says since when it waits for `posternctl
   * correspondence forward retry` (NULL: in the queue). */
  "ALTER TABLE forward_queue ADD COLUMN refusals INTEGER NOT NULL DEFAULT 0;"
  "ALTER TABLE forward_queue ADD COLUMN queued_ms INTEGER NOT NULL DEFAULT 0;"
  "ALTER TABLE forward_queue ADD COLUMN set_aside_ms INTEGER;"
  "UPDATE forward_queue SET queued_ms = CAST((julianday('now') - 2440587.5) * 86400000"
  " AS INTEGER);",
  /* 6: retention. record_attachments says which records use an attachment, so one that no
   * record shares any more can go with the last of them (filled from the records' JSON for
   * the records made before); the indexes find what is old enough to prune without reading
   * what is not. */
  "CREATE TABLE record_attachments("
  " sha256 TEXT NOT NULL,"
  " record_id TEXT NOT NULL REFERENCES records(id) ON DELETE CASCADE,"
  " PRIMARY KEY(sha256, record_id)) WITHOUT ROWID;"
  "CREATE INDEX record_attachments_record ON record_attachments(record_id);"
  "INSERT OR IGNORE INTO record_attachments(sha256, record_id)"
  " SELECT json_extract(j.value, '$.sha256'), r.id FROM records r,"
  " json_each(r.json, '$.attachments') j WHERE json_extract(j.value, '$.sha256') IS NOT NULL;"
  "CREATE INDEX records_received ON records(received_ms);"
  "CREATE INDEX inbound_events_applied ON inbound_events(received_ms) WHERE applied = 1;",
  /* 7: the forward queue carries status changes too: a row with event 'record.status' says
   * the record moved from old_status to status by the event event_key (NULL event: the record
   * itself, 'record.created'). Its seq is its own from now on (the queue order), no longer the
   * record's, since one record has several rows. records.dedupe is what an Inbound Parse post
   * is recognised by when SendGrid posts it again (a hash of its content; found through the
   * Message-ID's index). */
  "ALTER TABLE forward_queue ADD COLUMN event TEXT;"
  "ALTER TABLE forward_queue ADD COLUMN old_status TEXT;"
  "ALTER TABLE forward_queue ADD COLUMN status TEXT;"
  "ALTER TABLE forward_queue ADD COLUMN event_key TEXT;"
  "ALTER TABLE records ADD COLUMN dedupe TEXT;",
  /* 8: the sender of a message delayed longer than delay_warning is told once */
  "ALTER TABLE messages ADD COLUMN delay_warned INTEGER NOT NULL DEFAULT 0;",
  /* 9: captured mail released to an upstream by hand goes there, whatever the routes say */
  "ALTER TABLE recipients ADD COLUMN route_to TEXT;",
  /* 10: the queue's totals (messages, bytes, recipients by status) kept as the rows change, so
   * that `posternctl stats` and the console read six numbers instead of counting every message
   * ever stored (counted once here for an existing store). A cascaded delete fires the
   * recipients' trigger too. */
  "CREATE TABLE counts(name TEXT PRIMARY KEY NOT NULL, n INTEGER NOT NULL) WITHOUT ROWID;"
  "INSERT INTO counts(name, n) VALUES ('messages', (SELECT count(*) FROM messages)),"
  " ('bytes', (SELECT coalesce(sum(size), 0) FROM messages)),"
  " ('queued', 0), ('deferred', 0), ('sent', 0), ('bounced', 0), ('held', 0), ('captured', 0);"
  "UPDATE counts SET n = (SELECT count(*) FROM recipients r WHERE r.status = counts.name)"
  " WHERE name NOT IN ('messages', 'bytes');"
  "CREATE TRIGGER counts_message_in AFTER INSERT ON messages BEGIN"
  " UPDATE counts SET n = n + 1 WHERE name = 'messages';"
  " UPDATE counts SET n = n + new.size WHERE name = 'bytes'; END;"
  "CREATE TRIGGER counts_message_out AFTER DELETE ON messages BEGIN"
  " UPDATE counts SET n = n - 1 WHERE name = 'messages';"
  " UPDATE counts SET n = n - old.size WHERE name = 'bytes'; END;"
  "CREATE TRIGGER counts_rcpt_in AFTER INSERT ON recipients BEGIN"
  " UPDATE counts SET n = n + 1 WHERE name = new.status; END;"
  "CREATE TRIGGER counts_rcpt_out AFTER DELETE ON recipients BEGIN"
  " UPDATE counts SET n = n - 1 WHERE name = old.status; END;"
  "CREATE TRIGGER counts_rcpt_move AFTER UPDATE OF status ON recipients"
  " WHEN old.status <> new.status BEGIN"
  " UPDATE counts SET n = n - 1 WHERE name = old.status;"
  " UPDATE counts SET n = n + 1 WHERE name = new.status; END;",
};
#define SCHEMA_VERSION ((int)(sizeof(migrations) / sizeof(migrations[0])))
/* an older store up to this size is rewritten for incremental vacuum when the daemon opens it
 * (a second or so); a larger one waits for `posternctl store vacuum` */
#define SCHEMA_VACUUM_AT_START (64LL * 1024 * 1024)

/* Turns WAL on (it is persistent, but a fresh file starts in rollback mode) and applies the
 * missing migrations in one transaction, so a crash leaves either the old or the new schema. */
int schema_migrate(struct store_db *d, const char *path, char *err, size_t errsz)
{
  sqlite3_stmt *s = NULL;
  long long version = 0;
  int rc, v;
  const char *mode = NULL;

  /* a new store shrinks as it is pruned (incremental vacuum); this only takes effect before
   * anything is written to the file, and store_open converts an older small store */
  sqlite3_exec(d->db, "PRAGMA auto_vacuum = INCREMENTAL", NULL, NULL, NULL);
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

int schema_check(struct store_db *d, const char *path, char *err, size_t errsz)
{
  long long version = 0;
  if(db_pragma_int(d, "PRAGMA user_version", &version) != SQLITE_OK) {
    snprintf(err, errsz, "cannot read %s: %s", path, sqlite3_errmsg(d->db));
    return STORE_ERROR;
  }
  if(version != SCHEMA_VERSION) {
    if(!version)
      snprintf(err, errsz, "%s is not a Postern store (no schema)", path);
    else
      snprintf(err, errsz, "%s has schema version %lld, this program expects %d%s", path,
               version, SCHEMA_VERSION,
               version < SCHEMA_VERSION ? " (start postern once to migrate it)" : "");
    return STORE_ERROR;
  }
  return STORE_OK;
}

int schema_vacuum(struct store_db *d, char *err, size_t errsz)
{
  int rc = sqlite3_exec(d->db, "PRAGMA auto_vacuum = INCREMENTAL; VACUUM", NULL, NULL, NULL);
  if(rc != SQLITE_OK) {
    snprintf(err, errsz, "VACUUM failed: %s (is postern or another program using the store?)",
             sqlite3_errmsg(d->db));
    return (rc & 0xff) == SQLITE_FULL ? STORE_FULL : STORE_ERROR;
  }
  return STORE_OK;
}

void schema_auto_vacuum(struct store_db *d, const char *path)
{
  long long mode = 0, pages = 0, page_size = 0;
  char err[256];
  if(db_pragma_int(d, "PRAGMA auto_vacuum", &mode) || mode == 2)
    return;
  db_pragma_int(d, "PRAGMA page_count", &pages);
  db_pragma_int(d, "PRAGMA page_size", &page_size);
  if(pages * page_size > SCHEMA_VACUUM_AT_START) {
    log_warn("%s was made before incremental vacuum: pruning stops its growth but the file only "
             "shrinks after `posternctl store vacuum` (postern stopped; it rewrites the file, so "
             "it needs as much free space again)", path);
    return;
  }
  if(schema_vacuum(d, err, sizeof(err)))
    log_warn("%s: cannot switch to incremental vacuum now (%s); `posternctl store vacuum` does "
             "it with postern stopped", path, err);
  else
    log_info("%s: rewritten once for incremental vacuum (it shrinks as it is pruned)", path);
}
