/* What the SASL server and client sides share: Cyrus's process-wide set-up (options given by
 * callback, no /etc/sasl2 file to install; its log lines; init and done of each side), the
 * mechanism lists, and base64 for the SMTP layer. Calls nothing else in auth/. */
#include "auth/auth.h"
#include "auth/auth_int.h"
#include "lib/buf.h"
#include "lib/limits.h"
#include "lib/log.h"
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sasl/saslutil.h>

static pthread_mutex_t server_lock = PTHREAD_MUTEX_INITIALIZER;
static int server_ready;
static char *server_sasldb;        /* set once by auth_sasl_sasldb_set */
static struct auth_opts global_opts = { NULL, AUTH_MECHS_ALL };

/* ---- Cyrus callbacks ---------------------------------------------------------------------- */

static int opt_get(void *context, const char *plugin_name, const char *option,
                   const char **result, unsigned *len)
{
  const struct auth_opts *o = context;
  const char *v = NULL;
  if(!option || !result)
    return SASL_BADPARAM;
  /* Plain-text checks go through the auxprop store rather than saslauthd, and that store is
   * sasldb: the one place CRAM-MD5 and SCRAM can find what they verify against. */
  if(!strcmp(option, "pwcheck_method"))
    v = "auxprop";
  else if(!strcmp(option, "auxprop_plugin"))
    v = "sasldb";
  else if(!strcmp(option, "canon_user_plugin"))
    v = "INTERNAL";
  else if(!strcmp(option, "sasldb_path"))
    v = o ? o->sasldb_path : NULL;
  else if(!strcmp(option, "mech_list"))
    v = o ? o->mech_list : NULL;
  if(!v)
    return SASL_FAIL;              /* Cyrus falls back to its default */
  *result = v;
  if(len)
    *len = (unsigned)strlen(v);
  return SASL_OK;
}

int auth_sasl_log(void *context, int level, const char *message)
{
  char safe[LOG_REPR_CAP * 4 + 8];
  /* TRACE and PASS are protocol traces that may hold passwords; never let them through. */
  if(!message || level > SASL_LOG_DEBUG)
    return SASL_OK;
  log_debug("sasl: %s", log_repr(safe, sizeof(safe), message, strlen(message)));
  return SASL_OK;
}

static const sasl_callback_t global_cbs[] = {
  { SASL_CB_GETOPT, AUTH_SASL_CB(opt_get), &global_opts },
  { SASL_CB_LOG, AUTH_SASL_CB(auth_sasl_log), NULL },
  { SASL_CB_LIST_END, NULL, NULL }
};

void auth_sasl_conn_callbacks(sasl_callback_t cbs[3], const struct auth_opts *opts)
{
  cbs[0].id = SASL_CB_GETOPT;
  cbs[0].proc = AUTH_SASL_CB(opt_get);
  cbs[0].context = (void *)opts;
  cbs[1].id = SASL_CB_LOG;
  cbs[1].proc = AUTH_SASL_CB(auth_sasl_log);
  cbs[1].context = NULL;
  cbs[2].id = SASL_CB_LIST_END;
  cbs[2].proc = NULL;
  cbs[2].context = NULL;
}

int auth_sasl_server_ready(char *err, size_t errsz)
{
  int result = AUTH_OK;
  pthread_mutex_lock(&server_lock);
  if(!server_ready) {
    int rc = sasl_server_init(global_cbs, "postern");
    if(rc != SASL_OK) {
      snprintf(err, errsz, "cannot initialise Cyrus SASL: %s",
               sasl_errstring(rc, NULL, NULL));
      result = AUTH_ERROR;
    }
    else
      server_ready = 1;
  }
  pthread_mutex_unlock(&server_lock);
  return result;
}

int auth_sasl_sasldb_set(const char *sasldb_path, char *err, size_t errsz)
{
  int result = AUTH_OK;
  pthread_mutex_lock(&server_lock);
  if(server_sasldb && strcmp(server_sasldb, sasldb_path)) {
    snprintf(err, errsz, "the SASL server was already set up with %s", server_sasldb);
    result = AUTH_ERROR;
  }
  else if(!server_sasldb) {
    server_sasldb = strdup(sasldb_path);
    global_opts.sasldb_path = server_sasldb;
    if(!server_sasldb) {
      snprintf(err, errsz, "out of memory");
      result = AUTH_ERROR;
    }
  }
  pthread_mutex_unlock(&server_lock);
  return result;
}

const char *auth_sasl_sasldb(void)
{
  const char *p;
  pthread_mutex_lock(&server_lock);
  p = server_sasldb;
  pthread_mutex_unlock(&server_lock);
  return p;
}

void auth_sasl_server_done(void)
{
  pthread_mutex_lock(&server_lock);
  if(server_ready) {
    sasl_server_done();
    server_ready = 0;
  }
  pthread_mutex_unlock(&server_lock);
}

static pthread_mutex_t client_lock = PTHREAD_MUTEX_INITIALIZER;
static int client_ready;

static const sasl_callback_t client_global_cbs[] = {
  { SASL_CB_LOG, AUTH_SASL_CB(auth_sasl_log), NULL },
  { SASL_CB_LIST_END, NULL, NULL }
};

int auth_sasl_client_ready(void)
{
  int result = AUTH_OK;
  pthread_mutex_lock(&client_lock);
  if(!client_ready) {
    if(sasl_client_init(client_global_cbs) == SASL_OK)
      client_ready = 1;
    else
      result = AUTH_ERROR;
  }
  pthread_mutex_unlock(&client_lock);
  return result;
}

void auth_sasl_client_done(void)
{
  pthread_mutex_lock(&client_lock);
  if(client_ready) {
    sasl_client_done();
    client_ready = 0;
  }
  pthread_mutex_unlock(&client_lock);
}

/* ---- mechanism lists ---------------------------------------------------------------------- */

const char *auth_mech_next(const char **cursor, size_t *len)
{
  const char *p = *cursor, *start;
  while(*p == ' ' || *p == '\t' || *p == ',')
    p++;
  if(!*p) {
    *cursor = p;
    return NULL;
  }
  start = p;
  while(*p && *p != ' ' && *p != '\t' && *p != ',')
    p++;
  *len = (size_t)(p - start);
  *cursor = p;
  return start;
}

const char *auth_mech_known(const char *mech, size_t len)
{
  static const char *const known[] = { "SCRAM-SHA-256", "SCRAM-SHA-1", "CRAM-MD5", "PLAIN",
                                       "LOGIN" };
  size_t i;
  for(i = 0; i < sizeof(known) / sizeof(known[0]); i++)
    if(strlen(known[i]) == len && !str_casecmp_n(mech, len, known[i]))
      return known[i];
  return NULL;
}

int auth_mech_listed(const char *list, const char *mech, size_t len)
{
  const char *tok, *cur = list;
  size_t toklen;
  while((tok = auth_mech_next(&cur, &toklen)))
    if(toklen == len && !str_casecmp_n(tok, len, mech))
      return 1;
  return 0;
}

/* ---- base64 ------------------------------------------------------------------------------- */

int auth_b64_encode(const unsigned char *in, size_t inlen, char **out, size_t *outlen)
{
  size_t cap;
  unsigned n = 0;
  char *b;
  *out = NULL;
  *outlen = 0;
  if(inlen > LIM_SASL_B64_IN || (!in && inlen))
    return AUTH_FAIL;
  cap = (inlen + 2) / 3 * 4 + 1;
  b = malloc(cap);
  if(!b)
    return AUTH_ERROR;
  if(sasl_encode64((const char *)in, (unsigned)inlen, b, (unsigned)cap, &n) != SASL_OK) {
    free(b);
    return AUTH_ERROR;
  }
  *out = b;
  *outlen = n;
  return AUTH_OK;
}

int auth_b64_decode(const char *in, size_t inlen, unsigned char **out, size_t *outlen)
{
  size_t cap;
  unsigned n = 0;
  char *b, *again = NULL;
  size_t againlen = 0;
  int rc, result = AUTH_OK;
  *out = NULL;
  *outlen = 0;
  /* Whole quanta only: Cyrus would call a short tail "more to come" (SASL_CONTINUE). */
  if(inlen > LIM_SASL_B64_IN || inlen % 4 || (!in && inlen))
    return AUTH_FAIL;
  cap = inlen / 4 * 3 + 1;
  b = malloc(cap + 1);
  if(!b)
    return AUTH_ERROR;
  rc = sasl_decode64(in ? in : "", (unsigned)inlen, b, (unsigned)cap, &n);
  if(rc != SASL_OK) {
    result = AUTH_FAIL;
    goto out;
  }
  /* Cyrus ignores the unused bits of the last quantum ("QR==" reads as "A"); strict means
   * the one canonical spelling, which re-encoding gives us. */
  result = auth_b64_encode((unsigned char *)b, n, &again, &againlen);
  if(result)
    goto out;
  if(againlen != inlen || memcmp(again, in, inlen))
    result = AUTH_FAIL;
out:
  free(again);
  if(result) {
    auth_secret_free(b, cap + 1);
    return result;
  }
  b[n] = '\0';
  *out = (unsigned char *)b;
  *outlen = n;
  return AUTH_OK;
}
