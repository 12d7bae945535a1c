/* The upstream side of SASL: Cyrus's client API logging Postern in to a smarthost with the
 * strongest mechanism both sides have, never PLAIN or LOGIN in the clear; and the XOAUTH2 and
 * OAUTHBEARER initial responses, which are not Cyrus mechanisms but two string formats. */
#include "auth/auth.h"
#include "lib/limits.h"
#include "auth/auth_int.h"
#include "lib/buf.h"
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MECH_LIST_MAX 128

struct auth_client_session {
  sasl_conn_t *conn;
  sasl_callback_t cbs[5];
  char *user;
  sasl_secret_t *secret;           /* Cyrus's shape for a password; wiped on free */
  size_t secretsz;
  char wanted[MECH_LIST_MAX];      /* canonical names, in preference order */
  const char *mech;                /* chosen, one of auth_mech_known's strings */
  int secure;
};

static int get_simple(void *context, int id, const char **result, unsigned *len)
{
  struct auth_client_session *c = context;
  const char *v;
  if(!c || !result)
    return SASL_BADPARAM;
  if(id == SASL_CB_AUTHNAME)
    v = c->user;
  else if(id == SASL_CB_USER)
    v = "";                        /* no authorization identity: act as ourselves */
  else
    return SASL_BADPARAM;
  *result = v;
  if(len)
    *len = (unsigned)strlen(v);
  return SASL_OK;
}

static int get_secret(sasl_conn_t *conn, void *context, int id, sasl_secret_t **psecret)
{
  struct auth_client_session *c = context;
  if(!c || id != SASL_CB_PASS || !psecret)
    return SASL_BADPARAM;
  *psecret = c->secret;
  return SASL_OK;
}

static int has_ctl(const char *s)
{
  for(; *s; s++)
    if((unsigned char)*s < 0x20 || *s == 0x7f)
      return 1;
  return 0;
}

int auth_client_new(const char *service, const char *server_host, const char *username,
                    const char *password, size_t pwlen, const char *mechs_wanted,
                    int secure_channel, struct auth_client_session **out)
{
  struct auth_client_session *c = NULL;
  sasl_security_properties_t secprops;
  const char *tok, *cur;
  size_t toklen;
  int rc, result = AUTH_OK;

  *out = NULL;
  if(!service || !server_host || !username || !*username || has_ctl(username) ||
     (!password && pwlen) || pwlen > UINT_MAX / 2)
    return AUTH_FAIL;
  result = auth_sasl_client_ready();
  if(result)
    return result;
  c = calloc(1, sizeof(*c));
  if(!c)
    return AUTH_ERROR;
  c->secure = secure_channel ? 1 : 0;
  cur = mechs_wanted ? mechs_wanted : AUTH_MECHS_ALL;
  while((tok = auth_mech_next(&cur, &toklen))) {
    const char *canon = auth_mech_known(tok, toklen);
    size_t used = strlen(c->wanted);
    if(!canon) {
      result = AUTH_BAD_MECH;      /* XOAUTH2 and friends are not ours to run */
      goto out;
    }
    if(!auth_mech_listed(c->wanted, canon, strlen(canon)))
      snprintf(c->wanted + used, sizeof(c->wanted) - used, "%s%s", used ? " " : "", canon);
  }
  if(!c->wanted[0]) {
    result = AUTH_BAD_MECH;
    goto out;
  }
  c->user = strdup(username);
  c->secretsz = sizeof(sasl_secret_t) + pwlen;
  c->secret = calloc(1, c->secretsz);
  if(!c->user || !c->secret) {
    result = AUTH_ERROR;
    goto out;
  }
  c->secret->len = pwlen;
  if(pwlen)
    memcpy(c->secret->data, password, pwlen);
  c->cbs[0].id = SASL_CB_USER;
  c->cbs[0].proc = AUTH_SASL_CB(get_simple);
  c->cbs[0].context = c;
  c->cbs[1].id = SASL_CB_AUTHNAME;
  c->cbs[1].proc = AUTH_SASL_CB(get_simple);
  c->cbs[1].context = c;
  c->cbs[2].id = SASL_CB_PASS;
  c->cbs[2].proc = AUTH_SASL_CB(get_secret);
  c->cbs[2].context = c;
  c->cbs[3].id = SASL_CB_LOG;
  c->cbs[3].proc = AUTH_SASL_CB(auth_sasl_log);
  c->cbs[3].context = NULL;
  c->cbs[4].id = SASL_CB_LIST_END;
  rc = sasl_client_new(service, server_host, NULL, NULL, c->cbs, 0, &c->conn);
  if(rc != SASL_OK) {
    result = AUTH_ERROR;
    goto out;
  }
  memset(&secprops, 0, sizeof(secprops));
  secprops.max_ssf = 0;            /* TLS protects the session; no SASL security layer */
  secprops.maxbufsize = 0;
  secprops.security_flags = SASL_SEC_NOANONYMOUS | (c->secure ? 0 : SASL_SEC_NOPLAINTEXT);
  rc = sasl_setprop(c->conn, SASL_SEC_PROPS, &secprops);
  if(rc != SASL_OK) {
    result = AUTH_ERROR;
    goto out;
  }
out:
  if(result) {
    auth_client_free(c);
    return result;
  }
  *out = c;
  return AUTH_OK;
}

int auth_client_start(struct auth_client_session *c, const char *server_mechs,
                      const char **mech_chosen, const unsigned char **initial,
                      size_t *initiallen, int *has_initial)
{
  const char *tok, *cur;
  size_t toklen;

  *mech_chosen = NULL;
  *initial = NULL;
  *initiallen = 0;
  *has_initial = 0;
  if(!c || !c->conn || !server_mechs)
    return AUTH_ERROR;
  /* Our preference order decides, not the server's: the first wanted mechanism the server
   * offers and Cyrus can run. */
  cur = c->wanted;
  while((tok = auth_mech_next(&cur, &toklen))) {
    const char *canon = auth_mech_known(tok, toklen), *used = NULL, *cout = NULL;
    unsigned coutlen = 0;
    sasl_interact_t *interact = NULL;
    int rc;
    if(!canon || !auth_mech_listed(server_mechs, canon, strlen(canon)))
      continue;
    if(!c->secure && (!strcmp(canon, "PLAIN") || !strcmp(canon, "LOGIN")))
      continue;                    /* the password would cross in the clear */
    rc = sasl_client_start(c->conn, canon, &interact, &cout, &coutlen, &used);
    if(rc == SASL_NOMECH || rc == SASL_TOOWEAK)
      continue;                    /* no client plugin for it here: try the next */
    if(rc != SASL_OK && rc != SASL_CONTINUE)
      return AUTH_ERROR;
    c->mech = canon;
    *mech_chosen = canon;
    /* NULL output means "no initial response"; non-NULL and empty means an empty one. */
    if(cout) {
      *initial = (const unsigned char *)cout;
      *initiallen = coutlen;
      *has_initial = 1;
    }
    return AUTH_OK;
  }
  return AUTH_BAD_MECH;
}

int auth_client_step(struct auth_client_session *c, const unsigned char *challenge, size_t len,
                     const unsigned char **out, size_t *outlen)
{
  const char *cout = NULL;
  unsigned coutlen = 0;
  sasl_interact_t *interact = NULL;
  int rc;

  *out = (const unsigned char *)"";
  *outlen = 0;
  if(!c || !c->conn || !c->mech)
    return AUTH_ERROR;
  if(len > LIM_SASL_CHALLENGE || (!challenge && len))
    return AUTH_FAIL;
  rc = sasl_client_step(c->conn, challenge ? (const char *)challenge : "", (unsigned)len,
                        &interact, &cout, &coutlen);
  if(rc != SASL_OK && rc != SASL_CONTINUE) {
    /* BADSERV: the server could not prove it knows the password (SCRAM) */
    if(rc == SASL_BADPROT || rc == SASL_BADSERV || rc == SASL_BADAUTH)
      return AUTH_FAIL;
    return AUTH_ERROR;
  }
  if(cout) {
    *out = (const unsigned char *)cout;
    *outlen = coutlen;
  }
  return rc == SASL_OK ? AUTH_OK : AUTH_CONTINUE;
}

void auth_client_free(struct auth_client_session *c)
{
  if(!c)
    return;
  if(c->conn)
    sasl_dispose(&c->conn);
  if(c->user)
    auth_secret_free(c->user, strlen(c->user));
  auth_secret_free(c->secret, c->secretsz);
  free(c);
}

/* ---- XOAUTH2 / OAUTHBEARER ---------------------------------------------------------------- */

/* RFC 6750's b64token: the only bytes a bearer token may hold, so a token file with a stray
 * space or a \x01 cannot forge fields. */
static int bad_token(const char *t)
{
  size_t i = 0;
  if(!t || !*t)
    return 1;
  for(; t[i] && t[i] != '='; i++) {
    char ch = t[i];
    if(!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
         ch == '-' || ch == '.' || ch == '_' || ch == '~' || ch == '+' || ch == '/'))
      return 1;
  }
  if(!i)
    return 1;
  for(; t[i]; i++)
    if(t[i] != '=')
      return 1;
  return 0;
}

int auth_xoauth2_initial(const char *user, const char *token, struct buf *out)
{
  if(!user || !*user || has_ctl(user) || bad_token(token) || !out)
    return AUTH_FAIL;
  if(buf_addf(out, "user=%s\001auth=Bearer %s\001\001", user, token))
    return AUTH_ERROR;
  return AUTH_OK;
}

int auth_oauthbearer_initial(const char *user, const char *host, int port, const char *token,
                             struct buf *out)
{
  const char *p;
  int r = 0;
  if((user && has_ctl(user)) || (host && (!*host || has_ctl(host))) || port < 0 ||
     port > 65535 || bad_token(token) || !out)
    return AUTH_FAIL;
  /* gs2-header: "n," [ "a=" saslname ] "," with ',' and '=' escaped (RFC 5801) */
  r |= buf_addstr(out, "n,");
  if(user && *user) {
    r |= buf_addstr(out, "a=");
    for(p = user; *p && !r; p++) {
      if(*p == ',')
        r |= buf_addstr(out, "=2C");
      else if(*p == '=')
        r |= buf_addstr(out, "=3D");
      else
        r |= buf_add(out, p, 1);
    }
  }
  r |= buf_addstr(out, ",\001");
  if(host)
    r |= buf_addf(out, "host=%s\001", host);
  if(port)
    r |= buf_addf(out, "port=%d\001", port);
  r |= buf_addf(out, "auth=Bearer %s\001\001", token);
  return r ? AUTH_ERROR : AUTH_OK;
}
