/* What the files of the SQLite store share, and nothing outside store/ may include: the
 * connection type, the statement numbers, the writer's job call and the SQLite helpers.
 *
 * Who calls whom (no cycles): queue.c, inbound.c and records.c call store.c (the writer and
 * the read connections) and db.c (statements, binding, errors); store.c calls schema.c and db.c;
 * schema.c calls db.c; db.c calls only SQLite. The writer runs a domain's job through the
 * function pointer it was handed, never by name. */
#ifndef POSTERN_STORE_INT_H
#define POSTERN_STORE_INT_H
#include "store/store.h"
#include <stddef.h>
#include <sqlite3.h>

#define STORE_DB_NAME "postern.db"
#define STORE_BUSY_TIMEOUT_MS 10000   /* posternctl and the daemon wait for each other's writes */
#define STORE_LIST_PAGE 256           /* messages store_list holds in memory at once */
#define STORE_FULL_EVERY_MS 1000      /* relaxed commits are made FULL at least this often */
/* Read connections of a daemon's store: a slow read (a console page, posternctl over a big
 * store, a prune's count) must not stop the scheduler's due query or a worker's store_get. A
 * tool that only reads has one. */
#define STORE_READERS 4
/* Readers that overlap without a pause (the pool, under load) keep a passive checkpoint from
 * ever reaching the end of the WAL, which then grows without bound (a gigabyte in a few
 * minutes of a 100,000-message burst): past this many frames (64 MB of 4 KB pages, the
 * journal_size_limit) the writer waits for the readers once and starts the WAL afresh. */
#define STORE_WAL_RESTART_FRAMES 16384
#define STORE_WAL_RESTART_WAIT_MS 1000
#define STORE_WAL_RESTART_PAUSE_MS 10000   /* after a restart the readers did not allow */

/* Every statement Postern runs, numbered so that each connection prepares it once. Each file
 * keeps the SQL of its own statements in a table indexed by these numbers. */
enum stmt {
  /* db.c: transactions */
  ST_BEGIN, ST_BEGIN_IMMEDIATE, ST_COMMIT, ST_ROLLBACK,
  ST_SAVEPOINT, ST_RELEASE, ST_ROLLBACK_TO,
  /* store.c: store_check */
  ST_COUNT_ORPHAN_RCPTS, ST_COUNT_EMPTY_MSGS,
  /* queue.c */
  ST_MSG_INSERT, ST_RCPT_INSERT, ST_RCPT_UPDATE, ST_MSG_EXISTS, ST_MSG_DELETE,
  ST_RCPT_SET_PENDING,
  ST_RELEASE_TO,
  ST_MSG_GET, ST_RCPT_GET, ST_BODY_GET, ST_DUE, ST_DUE_DEFERRED, ST_NEXT_DUE, ST_LIST, ST_LIST_DESC,
  ST_RELEASE_UPSTREAM, ST_HELD_UPSTREAMS, ST_WAITING_BY_UPSTREAM,
  ST_FLUSH, ST_COUNT_BY_STATUS, ST_COUNT_MESSAGES, ST_OLDEST_UNFINISHED,
  ST_OVERDUE_HELD, ST_OVERDUE_UNWARNED, ST_DELAY_WARNED, ST_COUNT_PENDING,
  /* inbound.c */
  ST_INBOUND_INSERT, ST_EVENT_INSERT, ST_INBOUND_LIST, ST_EVENT_LIST, ST_INBOUND_GET,
  ST_EV_UNAPPLIED, ST_EV_APPLIED,
  /* records.c */
  ST_REC_INSERT, ST_REC_ADDR, ST_REC_BLOB, ST_REC_BLOB_LINK, ST_REC_FWD, ST_REC_MARK_QUEUE, ST_REC_MARK_INBOUND,
  ST_UNREC_QUEUE, ST_UNREC_INBOUND,
  ST_REC_BY_MSGID, ST_REC_BY_TOKEN, ST_REC_BY_PROVIDER, ST_REC_BY_ID, ST_REC_GET,
  ST_REV_INSERT, ST_REV_STATUS, ST_REC_RELAY, ST_REC_RELAY_PENDING, ST_REV_LIST,
  ST_REC_LIST, ST_FWD_HEAD, ST_FWD_DONE, ST_FWD_RETRY, ST_FWD_REFUSED, ST_FWD_SET_ASIDE, ST_FWD_RETRY_ASIDE,
  ST_FWD_COUNTS, ST_FWD_ASIDE_LIST, ST_REV_STATUS_GET, ST_FWD_STATUS, ST_REC_DEDUPE,
  /* retention.c */
  ST_PRUNE_MSG_LIST, ST_PRUNE_MSG_TEXT, ST_PRUNE_MSG, ST_PRUNE_INB_LIST, ST_PRUNE_INB,
  ST_PRUNE_EV_LIST, ST_PRUNE_EV, ST_PRUNE_REC_LIST, ST_PRUNE_REC_BLOBS, ST_PRUNE_REC,
  ST_PRUNE_BLOB, ST_STATS_OLDEST,
  ST_COUNT
};

/* One SQLite connection and its prepared statements. Used by one thread at a time: the
 * writer's by the writer thread (or under wlock without one), a reader's between
 * store_reader() and store_reader_done(). */
struct store_db {
  sqlite3 *db;
  sqlite3_stmt *stmt[ST_COUNT];
  int sync_normal;         /* the connection runs with synchronous=NORMAL right now */
  int quiet;               /* its writes are failing and that was said: db_fail logs at debug */
  long long full_ms;       /* when its last synchronous=FULL commit went through */
  int wal_restart;         /* the writer's: the WAL grew past STORE_WAL_RESTART_FRAMES */
  long long wal_restart_after_ms;   /* not before then (a restart failed) */
};

/* ---- db.c: connection helpers (call nothing but SQLite) ------------------------------------ */
long long store_now_ms(void);
/* Maps an SQLite result to ours and logs it: disk full must become 452, everything else 451. */
int db_fail(struct store_db *d, int rc, const char *what);
/* The cached statement which (its SQL is sql[which]), reset and unbound, or NULL (logged). */
sqlite3_stmt *db_stmt(struct store_db *d, enum stmt which, const char *const *sql);
/* Runs a statement that returns no rows we need; resets it so it holds no lock. */
int db_exec_stmt(struct store_db *d, sqlite3_stmt *s, const char *what);
/* Runs one of db.c's transaction statements (ST_BEGIN .. ST_ROLLBACK_TO). */
int db_simple(struct store_db *d, enum stmt which);
/* Binds text parameters 1..n of sql[which] (NULL binds NULL) and runs it. */
int db_run_text(struct store_db *d, enum stmt which, const char *const *sql, const char *const *v,
                int n);
int db_bind_text(sqlite3_stmt *s, int i, const char *v);     /* NULL binds NULL */
int db_col_text(sqlite3_stmt *s, int i, char **out);         /* a malloc'd copy; -1: no memory */
const char *db_col_str(sqlite3_stmt *s, int i);
int db_pragma_int(struct store_db *d, const char *sql, long long *out);
int db_open(struct store_db *d, const char *path, int readonly, char *err, size_t errsz);
void db_close(struct store_db *d);

/* ---- schema.c ------------------------------------------------------------------------------ */
/* Turns WAL on and applies the missing migrations in one transaction. */
int schema_migrate(struct store_db *d, const char *path, char *err, size_t errsz);
/* Is the schema of this (read) connection the one this program knows? err says why not. */
int schema_check(struct store_db *d, const char *path, char *err, size_t errsz);
/* Rewrites the file with auto_vacuum = incremental (VACUUM: the connection to itself). */
int schema_vacuum(struct store_db *d, char *err, size_t errsz);
/* A store made before incremental vacuum: small ones are rewritten now, large ones said. */
void schema_auto_vacuum(struct store_db *d, const char *path);

/* ---- store.c: the writer and the read connections ------------------------------------------- */
/* A write job: runs inside the writer's transaction, in its own savepoint; *changed is
 * handed back to the caller of store_call. */
typedef int (*store_job_fn)(struct store_db *d, void *arg, size_t *changed);
/* How a job's commit reaches the disk. RELAXED jobs (delivery results, the correspondence
 * bookkeeping) may ride on the next FULL commit: losing one to a crash only repeats work.
 * Anything that acknowledges data to a peer is FULL. */
enum store_sync { STORE_SYNC_FULL, STORE_SYNC_RELAXED };
/* Hands call(arg) to the writer and waits for its commit (or runs it directly without a writer
 * thread: posternctl). *changed (may be NULL) gets what the job reported, 0 on failure. */
int store_call(struct store *st, store_job_fn call, void *arg, enum store_sync sync,
               size_t *changed);
/* A read connection of the pool (waits while all are in use), held until store_reader_done. */
struct store_db *store_reader(struct store *st);
void store_reader_done(struct store *st, struct store_db *d);
/* The same with a read transaction around it, so that several reads see one snapshot;
 * store_read_end takes store_read_begin's result. */
int store_read_begin(struct store *st, struct store_db **d);
void store_read_end(struct store *st, struct store_db *d, int begin_result);

#endif
