/* The SQLite connection helpers every file of the store uses: opening, the prepared-statement
 * cache, binding and reading columns, and turning SQLite's errors into ours with a hint for the
 * operator. They call nothing but SQLite. */
#include "store/store_int.h"
#include "lib/buf.h"
#include "lib/log.h"
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

/* the statements of a transaction; the other files keep their own */
static const char *const core_sql[ST_COUNT] = {
  [ST_BEGIN] = "BEGIN",
  [ST_BEGIN_IMMEDIATE] = "BEGIN IMMEDIATE",
  [ST_COMMIT] = "COMMIT",
  [ST_ROLLBACK] = "ROLLBACK",
  [ST_SAVEPOINT] = "SAVEPOINT job",
  [ST_RELEASE] = "RELEASE job",
  [ST_ROLLBACK_TO] = "ROLLBACK TO job",
};

long long store_now_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}


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
int db_fail(struct store_db *d, int rc, const char *what)
{
  int prim = rc & 0xff;
  int sys = d->db ? sqlite3_system_errno(d->db) : 0;
  log_msg(d->quiet ? LOG_LVL_DEBUG : LOG_LVL_ERROR, "store: %s: %s (%s); %s", what,
          d->db ? sqlite3_errmsg(d->db) : "no database", sqlite3_errstr(rc),
          db_fail_hint(prim, sys));
  if(prim == SQLITE_FULL)
    return STORE_FULL;
  if(prim == SQLITE_IOERR && (sys == ENOSPC || sys == EDQUOT))
    return STORE_FULL;
  return STORE_ERROR;
}

/* The cached statement, reset and unbound, or NULL (logged). */
sqlite3_stmt *db_stmt(struct store_db *d, enum stmt which, const char *const *sql)
{
  sqlite3_stmt *s = d->stmt[which];
  if(!s) {
    int rc = sqlite3_prepare_v3(d->db, sql[which], -1, SQLITE_PREPARE_PERSISTENT, &s, NULL);
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
int db_exec_stmt(struct store_db *d, sqlite3_stmt *s, const char *what)
{
  int rc = sqlite3_step(s);
  int result = STORE_OK;
  if(rc != SQLITE_DONE && rc != SQLITE_ROW)
    result = db_fail(d, rc, what);
  sqlite3_reset(s);
  return result;
}

int db_simple(struct store_db *d, enum stmt which)
{
  sqlite3_stmt *s = db_stmt(d, which, core_sql);
  if(!s)
    return STORE_ERROR;
  return db_exec_stmt(d, s, core_sql[which]);
}

int db_run_text(struct store_db *d, enum stmt which, const char *const *sql, const char *const *v,
                int n)
{
  sqlite3_stmt *s = db_stmt(d, which, sql);
  int i, rc = SQLITE_OK;
  if(!s)
    return STORE_ERROR;
  for(i = 0; !rc && i < n; i++)
    rc = db_bind_text(s, i + 1, v[i]);
  if(rc) {
    sqlite3_reset(s);
    return db_fail(d, rc, "bind");
  }
  return db_exec_stmt(d, s, sql[which]);
}


int db_bind_text(sqlite3_stmt *s, int i, const char *v)
{
  if(!v)
    return sqlite3_bind_null(s, i);
  return sqlite3_bind_text(s, i, v, -1, SQLITE_STATIC);
}

/* Copies a nullable text column; -1 only when out of memory. */
int db_col_text(sqlite3_stmt *s, int i, char **out)
{
  const unsigned char *p = sqlite3_column_text(s, i);
  *out = NULL;
  if(!p)
    return sqlite3_column_type(s, i) == SQLITE_NULL ? 0 : -1;
  *out = str_dup_n(p, (size_t)sqlite3_column_bytes(s, i));
  return *out ? 0 : -1;
}

const char *db_col_str(sqlite3_stmt *s, int i)
{
  return (const char *)sqlite3_column_text(s, i);
}

void db_close(struct store_db *d)
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

int db_pragma_int(struct store_db *d, const char *sql, long long *out)
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

int db_open(struct store_db *d, const char *path, int readonly, char *err, size_t errsz)
{
  int flags = (readonly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE) | SQLITE_OPEN_NOMUTEX;
  int rc = sqlite3_open_v2(path, &d->db, flags, NULL);
  if(rc == SQLITE_OK) {
    sqlite3_extended_result_codes(d->db, 1);
    rc = sqlite3_busy_timeout(d->db, STORE_BUSY_TIMEOUT_MS);
  }
  if(rc == SQLITE_OK)
    /* journal_size_limit: a burst grows the WAL; once checkpointed it shrinks back to this */
    rc = sqlite3_exec(d->db, "PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL;"
                      " PRAGMA journal_size_limit = 67108864", NULL, NULL,
                      NULL);
  if(rc != SQLITE_OK) {
    snprintf(err, errsz, "cannot open %s: %s", path,
             d->db ? sqlite3_errmsg(d->db) : sqlite3_errstr(rc));
    db_close(d);
    return STORE_ERROR;
  }
  return STORE_OK;
}
