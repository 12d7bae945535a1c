/* The submission side of SASL: Cyrus's server API answering AUTH from legacy applications,
 * with users in sasldb (the Cyrus set-up it shares with the client side is sasl_common.c). */
#include "auth/auth.h"
#include "auth/auth_int.h"
#include "lib/buf.h"
#include "lib/limits.h"
#include "lib/log.h"
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sasl/saslutil.h>

#define MECH_LIST_MAX 128          /* room for AUTH_MECHS_ALL with spaces */

struct auth_server_session {
  sasl_conn_t *conn;
  struct auth_opts opts;           /* per-connection getopt answers; outlives conn */
  sasl_callback_t cbs[3];
  char *hostname;
  char allowed[MECH_LIST_MAX];     /* mechs_allowed, canonical names */
  char mechs[MECH_LIST_MAX];       /* what we advertise */
  int secure;
  int started;
};

static int is_plaintext(const char *mech)
{
  return !strcmp(mech, "PLAIN") || !strcmp(mech, "LOGIN");
}

static void list_add(char *list, size_t listsz, const char *mech)
{
  size_t used = strlen(list);
  snprintf(list + used, listsz - used, "%s%s", used ? " " : "", mech);
}

/* ---- server ------------------------------------------------------------------------------- */

int auth_server_init(const char *sasldb_path, char *err, size_t errsz)
{
  struct stat st;
  int result;
  if(!sasldb_path || !*sasldb_path) {
    snprintf(err, errsz, "no sasldb path given");
    return AUTH_ERROR;
  }
  /* It holds the plain-text passwords CRAM-MD5 needs: the same rule as any secret file. */
  if(!stat(sasldb_path, &st)) {
    if(!S_ISREG(st.st_mode)) {
      snprintf(err, errsz, "%s: the sasldb is not a regular file", sasldb_path);
      return AUTH_ERROR;
    }
    if(st.st_mode & 077) {
      snprintf(err, errsz, "%s: the sasldb may be read or written by group or others "
               "(mode %04o); run chmod 600 %s", sasldb_path, (unsigned)(st.st_mode & 07777),
               sasldb_path);
      return AUTH_ERROR;
    }
  }
  else if(errno != ENOENT) {
    snprintf(err, errsz, "%s: %s", sasldb_path, strerror(errno));
    return AUTH_ERROR;
  }
  result = auth_sasl_sasldb_set(sasldb_path, err, errsz);
  if(!result)
    result = auth_sasl_server_ready(err, errsz);
  return result;
}

static int server_result(int rc)
{
  switch(rc) {
  case SASL_OK:
    return AUTH_OK;
  case SASL_CONTINUE:
    return AUTH_CONTINUE;
  case SASL_NOMECH:
  case SASL_TOOWEAK:
  case SASL_ENCRYPT:
    return AUTH_BAD_MECH;
  /* Unknown user and wrong password look the same to the client on purpose. */
  case SASL_BADAUTH:
  case SASL_NOUSER:
  case SASL_NOAUTHZ:
  case SASL_BADPROT:
  case SASL_BADPARAM:
  case SASL_EXPIRED:
  case SASL_DISABLED:
  case SASL_NOVERIFY:
  case SASL_TRANS:
  case SASL_BADVERS:
  case SASL_WEAKPASS:
  case SASL_NOUSERPASS:
    return AUTH_FAIL;
  default:                         /* SASL_FAIL, SASL_NOMEM, SASL_TRYAGAIN, SASL_UNAVAIL... */
    return AUTH_ERROR;
  }
}

int auth_server_new(const char *service, const char *hostname, const char *mechs_allowed,
                    int secure_channel, struct auth_server_session **out)
{
  struct auth_server_session *s = NULL;
  sasl_security_properties_t secprops;
  const char *tok, *cur, *cyrus_list = NULL, *sasldb;
  size_t toklen;
  unsigned plen;
  int pcount, rc, result = AUTH_OK;
  char err[256];

  *out = NULL;
  if(!service || !hostname || !*hostname || !mechs_allowed)
    return AUTH_ERROR;
  sasldb = auth_sasl_sasldb();
  if(!sasldb)                      /* auth_server_init was not called */
    return AUTH_ERROR;
  result = auth_sasl_server_ready(err, sizeof(err));
  if(result)
    return result;
  s = calloc(1, sizeof(*s));
  if(!s)
    return AUTH_ERROR;
  s->secure = secure_channel ? 1 : 0;
  s->hostname = strdup(hostname);
  if(!s->hostname) {
    result = AUTH_ERROR;
    goto out;
  }
  cur = mechs_allowed;
  while((tok = auth_mech_next(&cur, &toklen))) {
    const char *canon = auth_mech_known(tok, toklen);
    if(!canon) {
      result = AUTH_BAD_MECH;      /* a configuration error the caller can report */
      goto out;
    }
    if(!auth_mech_listed(s->allowed, canon, strlen(canon)))
      list_add(s->allowed, sizeof(s->allowed), canon);
  }
  s->opts.sasldb_path = sasldb;
  s->opts.mech_list = s->allowed;
  auth_sasl_conn_callbacks(s->cbs, &s->opts);
  /* No user_realm: Cyrus then looks "alice" up under serverFQDN = hostname, and the
   * canonical name stays "alice" instead of becoming "alice@hostname". */
  rc = sasl_server_new(service, hostname, NULL, NULL, NULL, s->cbs, 0, &s->conn);
  if(rc != SASL_OK) {
    result = AUTH_ERROR;
    goto out;
  }
  memset(&secprops, 0, sizeof(secprops));
  secprops.min_ssf = 0;
  secprops.max_ssf = 0;            /* SMTP never uses a SASL security layer */
  secprops.maxbufsize = 0;
  secprops.security_flags = SASL_SEC_NOANONYMOUS | (s->secure ? 0 : SASL_SEC_NOPLAINTEXT);
  rc = sasl_setprop(s->conn, SASL_SEC_PROPS, &secprops);
  if(rc != SASL_OK) {
    result = AUTH_ERROR;
    goto out;
  }
  rc = sasl_listmech(s->conn, NULL, "", " ", "", &cyrus_list, &plen, &pcount);
  if(rc != SASL_OK && rc != SASL_NOMECH) {
    result = AUTH_ERROR;
    goto out;
  }
  /* The operator's order, limited to what Cyrus has loaded; PLAIN and LOGIN never in the
   * clear (Cyrus already drops them under NOPLAINTEXT; this says it where it is read). */
  cur = s->allowed;
  while((tok = auth_mech_next(&cur, &toklen))) {
    const char *canon = auth_mech_known(tok, toklen);
    if(!canon || (!s->secure && is_plaintext(canon)))
      continue;
    if(rc == SASL_OK && cyrus_list && auth_mech_listed(cyrus_list, canon, strlen(canon)))
      list_add(s->mechs, sizeof(s->mechs), canon);
  }
out:
  if(result) {
    auth_server_free(s);
    return result;
  }
  *out = s;
  return AUTH_OK;
}

const char *auth_server_mechs(struct auth_server_session *s)
{
  return s ? s->mechs : "";
}

/* The identity Postern works with: "alice@hostname" is the same sasldb entry as "alice". */
static int server_user(struct auth_server_session *s, char *user, size_t usersz)
{
  const void *p = NULL;
  const char *name;
  size_t n, hl = strlen(s->hostname);
  if(sasl_getprop(s->conn, SASL_USERNAME, &p) != SASL_OK || !p)
    return AUTH_ERROR;
  name = p;
  n = strlen(name);
  if(n > hl + 1 && name[n - hl - 1] == '@' && !str_casecmp_n(name + n - hl, hl, s->hostname))
    n -= hl + 1;
  if(!user || n >= usersz)
    return AUTH_ERROR;
  memcpy(user, name, n);
  user[n] = '\0';
  return AUTH_OK;
}

int auth_server_step(struct auth_server_session *s, const char *mech,
                     const unsigned char *in, size_t inlen,
                     const unsigned char **out, size_t *outlen,
                     char *user, size_t usersz)
{
  const char *sout = NULL;
  unsigned soutlen = 0;
  int rc, result;

  *out = (const unsigned char *)"";
  *outlen = 0;
  if(user && usersz)
    user[0] = '\0';
  if(!s || !s->conn)
    return AUTH_ERROR;
  if(inlen > LIM_SASL_B64_IN || (!in && inlen))
    return AUTH_FAIL;
  if(mech) {
    const char *canon = auth_mech_known(mech, strlen(mech));
    /* Only what we advertised: this is where "no PLAIN before TLS" is enforced. */
    if(!canon || !auth_mech_listed(s->mechs, canon, strlen(canon)))
      return AUTH_BAD_MECH;
    s->started = 1;
    rc = sasl_server_start(s->conn, canon, (const char *)in, (unsigned)inlen, &sout, &soutlen);
  }
  else {
    if(!s->started)
      return AUTH_ERROR;
    rc = sasl_server_step(s->conn, in ? (const char *)in : "", (unsigned)inlen, &sout,
                          &soutlen);
  }
  result = server_result(rc);
  if(result == AUTH_CONTINUE && sout) {
    *out = (const unsigned char *)sout;
    *outlen = soutlen;
  }
  else if(result == AUTH_OK) {
    s->started = 0;
    result = server_user(s, user, usersz);
  }
  else if(result != AUTH_CONTINUE)
    s->started = 0;
  return result;
}

void auth_server_free(struct auth_server_session *s)
{
  if(!s)
    return;
  if(s->conn)
    sasl_dispose(&s->conn);
  free(s->hostname);
  free(s);
}
