/* What the files of auth/ share and nothing outside auth/ may include: the Cyrus set-up, callback
 * tables and mechanism-list helpers of sasl_common.c (relay/relay_int.h is the precedent). */
#ifndef POSTERN_AUTH_INT_H
#define POSTERN_AUTH_INT_H
#include <stddef.h>
#include <sasl/sasl.h>

/* sasl_callback_t.proc is int (*)(void); going through void (*)(void) keeps
 * -Wcast-function-type quiet about a cast Cyrus's API demands. */
#define AUTH_SASL_CB(fn) ((int (*)(void))(void (*)(void))(fn))

/* What our getopt callback answers (Cyrus asks it instead of reading a config file). */
struct auth_opts {
  const char *sasldb_path;   /* NULL: not answered */
  const char *mech_list;     /* NULL: not answered */
};

/* Fills cbs[0..2] with GETOPT (answering from opts, which must outlive the connection), LOG
 * and the list end: the per-connection table for sasl_server_new. */
void auth_sasl_conn_callbacks(sasl_callback_t cbs[3], const struct auth_opts *opts);

/* Cyrus's log lines at debug level, escaped; TRACE and PASS levels dropped. */
int auth_sasl_log(void *context, int level, const char *message);

/* sasl_server_init once per process (auth_server_init or, in tools, the first user call). */
int auth_sasl_server_ready(char *err, size_t errsz);

/* The sasldb every server connection reads (auth_server_init sets it once; a second, different
 * path is refused); NULL before. */
int  auth_sasl_sasldb_set(const char *sasldb_path, char *err, size_t errsz);
const char *auth_sasl_sasldb(void);
/* sasl_server_done / sasl_client_done when that side was initialised (called by auth_done). */
void auth_sasl_server_done(void);
/* sasl_client_init once per process. AUTH_OK or AUTH_ERROR. */
int  auth_sasl_client_ready(void);
void auth_sasl_client_done(void);

/* Walks a space-separated mechanism list: returns the next token and its length, NULL at
 * the end. */
const char *auth_mech_next(const char **cursor, size_t *len);
/* The canonical (upper-case) name from AUTH_MECHS_ALL, or NULL when not one of ours. */
const char *auth_mech_known(const char *mech, size_t len);
/* 1 when list holds mech (case-insensitively). */
int auth_mech_listed(const char *list, const char *mech, size_t len);

#endif
