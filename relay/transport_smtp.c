/* The smtp transport: an [upstream] of type = smtp reached with smtp/'s client engine —
 * connected, upgraded to TLS as its `tls` says, logged in as its `auth` says — and a session
 * that carries one message after another (providers throttle logins, not messages). */
#include "relay/relay_int.h"
#include "auth/auth.h"
#include "lib/buf.h"
#include "lib/log.h"
#include <stdlib.h>
#include <string.h>

struct smtp_session {
  struct smtp_client *c;
  char name[128];
  /* what a new login needs when the connection has to be made again (paths, not secrets;
   * SMTP_PASSWORD from the environment is the exception and is wiped on close) */
  enum smtp_client_tls tls;
  char *user, *password_file, *password, *token_file;
  char *mechs;                 /* NULL: the strongest both sides have */
  const char *bearer;          /* "XOAUTH2" / "OAUTHBEARER", or NULL */
  int want_auth;
  char *oauth2;                /* the [oauth2] identity the token engine manages, or NULL */
  long long token_until_ms;    /* the session's login token is good until then; 0: no token */
  struct dkim_signers *dkim;   /* the [dkim] keys, or NULL */
  long long max_size;          /* what a signed message may grow to */
};

static enum smtp_client_tls tls_mode(enum cfg_utls t)
{
  switch(t) {
  case CFG_UTLS_OPPORTUNISTIC: return SMTP_CLIENT_TLS_OPPORTUNISTIC;
  case CFG_UTLS_IMPLICIT: return SMTP_CLIENT_TLS_IMPLICIT;
  case CFG_UTLS_NONE: return SMTP_CLIENT_TLS_NONE;
  case CFG_UTLS_STARTTLS: break;
  }
  return SMTP_CLIENT_TLS_STARTTLS;
}

const char *relay_auth_mech(enum cfg_uauth a, int *bearer)
{
  *bearer = a == CFG_UAUTH_XOAUTH2 || a == CFG_UAUTH_OAUTHBEARER;
  switch(a) {
  case CFG_UAUTH_XOAUTH2: return "XOAUTH2";
  case CFG_UAUTH_OAUTHBEARER: return "OAUTHBEARER";
  case CFG_UAUTH_PLAIN: return "PLAIN";
  case CFG_UAUTH_LOGIN: return "LOGIN";
  case CFG_UAUTH_CRAM_MD5: return "CRAM-MD5";
  case CFG_UAUTH_NONE: case CFG_UAUTH_AUTO: break;
  }
  return NULL;
}

/* A 4.7.x from the server is how providers say "too fast" (Gmail 4.7.0, Microsoft 4.7.x). */
static int is_throttle(const struct smtp_client *c, const struct smtp_reply *r)
{
  return smtp_client_reply_from_server(c) && r->code >= 400 && r->code < 500 &&
         !strncmp(r->enh, "4.7.", 4);
}

static int failed(struct smtp_session *s, const struct smtp_reply *r)
{
  return is_throttle(s->c, r) ? TRANSPORT_THROTTLED : TRANSPORT_FAILED;
}

static void session_free(struct smtp_session *s)
{
  if(!s)
    return;
  smtp_client_free(s->c);
  free(s->user);
  free(s->password_file);
  if(s->password)
    auth_secret_free(s->password, strlen(s->password));
  free(s->token_file);
  free(s->mechs);
  free(s->oauth2);
  dkim_signers_put(s->dkim);
  free(s);
}

/* Reads the password or token: from its file each time (a fixed file needs no reload), else
 * the environment's SMTP_PASSWORD. */
static int secret_get(struct smtp_session *s, const char *path, char **secret, size_t *len,
                      struct smtp_reply *r)
{
  char err[256];
  *secret = NULL;
  *len = 0;
  if(path) {
    err[0] = '\0';
    if(auth_secret_read(path, secret, len, err, sizeof(err))) {
      smtp_reply_set(r, 454, "4.7.0", "upstream %s: cannot use the secret file: %s", s->name, err);
      return -1;
    }
    return 0;
  }
  if(s->password) {
    *len = strlen(s->password);
    *secret = str_dup_n(s->password, *len);
    if(*secret)
      return 0;
  }
  smtp_reply_set(r, 454, "4.7.0", "upstream %s: no password (set password_file)", s->name);
  return -1;
}

/* A token from the engine: OAUTH2_TRANSIENT defers the mail, OAUTH2_REAUTH holds it. */
static int token_get(struct smtp_session *s, const struct config *cfg, const char *rejected,
                     char **token, struct smtp_reply *r)
{
  char err[512];
  int result = oauth2_token_get(cfg, s->oauth2, rejected, token, &s->token_until_ms, err,
                                sizeof(err));
  if(result == OAUTH2_OK)
    return TRANSPORT_OK;
  s->token_until_ms = 0;
  smtp_reply_set(r, 454, "4.7.0", "upstream %s: no OAuth2 access token: %s", s->name, err);
  return result == OAUTH2_REAUTH ? TRANSPORT_AUTH_FAILED : TRANSPORT_FAILED;
}

/* XOAUTH2/OAUTHBEARER with the engine's token. A 535 for a token that should be good (revoked,
 * or the provider's cache disagrees with its expiry) gets one forced refresh and one retry; a
 * 535 for that fresh token too defers the mail, not holds it: the endpoint still issues tokens, so
 * the grant is alive, and the provider's side (propagation of a new consent, a cache) is the
 * likelier cause than anything the operator must do. A refused refresh holds it instead. */
static int session_login_managed(struct smtp_session *s, const struct config *cfg,
                                 struct smtp_reply *r)
{
  char *token = NULL, *fresh = NULL, why[32];
  int result = token_get(s, cfg, NULL, &token, r), again = TRANSPORT_OK, retried = 0;
  if(result)
    return result;
  result = smtp_client_auth_bearer(s->c, s->bearer, s->user, token, r);
  if(result == SMTP_CLIENT_AUTH) {
    again = token_get(s, NULL, token, &fresh, r);
    if(!again && strcmp(fresh, token)) {
      log_info("upstream %s: the OAuth2 token was refused (%d %s); trying once more with a new "
               "one", s->name, r->code, r->enh);
      result = smtp_client_auth_bearer(s->c, s->bearer, s->user, fresh, r);
      retried = 1;
    }
  }
  auth_secret_free(token, token ? strlen(token) : 0);
  auth_secret_free(fresh, fresh ? strlen(fresh) : 0);
  /* no new token: the endpoint is down (defer) or refuses the grant (hold) */
  if(again)
    return again;
  if(result == SMTP_CLIENT_AUTH) {
    s->token_until_ms = 0;
    if(!retried)
      return TRANSPORT_AUTH_FAILED;     /* the endpoint gave the same token back */
    snprintf(why, sizeof(why), "%d %s", r->code, r->enh);
    log_warn("upstream %s: a freshly obtained OAuth2 token was refused as well (%s); deferring "
             "the mail", s->name, why);
    smtp_reply_set(r, 454, "4.7.0", "upstream %s refused a new OAuth2 token too (%s); will try "
                   "again", s->name, why);
    return TRANSPORT_FAILED;
  }
  return result ? failed(s, r) : TRANSPORT_OK;
}

static int session_login(struct smtp_session *s, const struct config *cfg, struct smtp_reply *r)
{
  char *secret = NULL;
  size_t len = 0;
  int result;
  if(s->bearer && s->oauth2)
    return session_login_managed(s, cfg, r);
  if(s->bearer) {
    result = secret_get(s, s->token_file ? s->token_file : s->password_file, &secret, &len, r);
    if(result)
      return TRANSPORT_AUTH_FAILED;
    result = smtp_client_auth_bearer(s->c, s->bearer, s->user, secret, r);
  }
  else {
    result = secret_get(s, s->password_file, &secret, &len, r);
    if(result)
      return TRANSPORT_AUTH_FAILED;
    result = smtp_client_auth(s->c, s->mechs, s->user, secret, len, r);
  }
  auth_secret_free(secret, len);
  if(result == SMTP_CLIENT_AUTH)
    return TRANSPORT_AUTH_FAILED;
  return result ? failed(s, r) : TRANSPORT_OK;
}

/* Connect, greeting, EHLO, TLS as configured, AUTH. cfg: at open (NULL on a reconnect, when
 * the token engine already knows the identity). */
static int session_connect(struct smtp_session *s, const struct config *cfg,
                           struct smtp_reply *r)
{
  int result = smtp_client_connect(s->c, r);
  if(result)
    return failed(s, r);
  result = smtp_client_ehlo(s->c, r);
  if(result)
    return failed(s, r);
  if(s->tls == SMTP_CLIENT_TLS_STARTTLS ||
     (s->tls == SMTP_CLIENT_TLS_OPPORTUNISTIC &&
      (smtp_client_caps(s->c)->flags & SMTP_CAP_STARTTLS))) {
    result = smtp_client_starttls(s->c, r);
    if(result == SMTP_CLIENT_REPLY && s->tls == SMTP_CLIENT_TLS_STARTTLS &&
       !(smtp_client_caps(s->c)->flags & SMTP_CAP_STARTTLS))
      smtp_reply_set(r, 451, "4.7.4", "%s does not offer STARTTLS, which tls = starttls "
                     "requires; nothing was sent (no password, no mail)", smtp_client_peer(s->c));
    if(result) {
      smtp_client_quit(s->c);
      return TRANSPORT_FAILED;
    }
  }
  if(s->want_auth) {
    result = session_login(s, cfg, r);
    if(result)
      return result;
  }
  return TRANSPORT_OK;
}

void relay_smtp_client_cfg(const struct config *cfg, const struct cfg_upstream *up,
                           struct smtp_client_cfg *cc)
{
  memset(cc, 0, sizeof(*cc));
  cc->host = up->host;
  cc->port = (int)up->port;
  cc->tls = tls_mode(up->tls);
  cc->verify_peer = up->verify != CFG_VERIFY_NONE;
  cc->ca_file = up->ca_file;
  /* the config says "TLSv1.2" / "TLSv1.3", tls/ takes "1.2" / "1.3" */
  cc->tls_min_version = up->tls_min_version && !strncmp(up->tls_min_version, "TLSv", 4)
                        ? up->tls_min_version + 4 : up->tls_min_version;
  cc->helo = up->helo ? up->helo : cfg->hostname;
  cc->log_name = up->name;
  cc->trace = cfg->debug;
}

static int smtp_open(const struct config *cfg, const struct cfg_upstream *up, void **session,
                     struct smtp_reply *r)
{
  struct smtp_session *s = calloc(1, sizeof(*s));
  struct smtp_client_cfg cc;
  int result = TRANSPORT_FAILED, bearer;

  *session = NULL;
  if(!s) {
    smtp_reply_set(r, 451, "4.3.0", "out of memory");
    return TRANSPORT_FAILED;
  }
  str_copy(s->name, sizeof(s->name), up->name);
  s->tls = tls_mode(up->tls);
  s->want_auth = up->username && up->auth != CFG_UAUTH_NONE;
  if(s->want_auth) {
    const struct cfg_oauth2 *oa = NULL;
    size_t i;
    for(i = 0; up->oauth2 && i < cfg->noauth2s; i++)
      if(!strcmp(cfg->oauth2s[i].name, up->oauth2))
        oa = &cfg->oauth2s[i];
    s->user = str_dup_n(up->username, strlen(up->username));
    if(up->password_file)
      s->password_file = str_dup_n(up->password_file, strlen(up->password_file));
    if(up->password)
      s->password = str_dup_n(up->password, strlen(up->password));
    /* an [oauth2] section with a flow: the token engine; without one, a ready access token in
     * its token_file, else in password_file */
    if(oa && oa->flow)
      s->oauth2 = str_dup_n(oa->name, strlen(oa->name));
    else if(oa && oa->token_file)
      s->token_file = str_dup_n(oa->token_file, strlen(oa->token_file));
    const char *mech = relay_auth_mech(up->auth, &bearer);
    if(bearer)
      s->bearer = mech;
    else if(mech)
      s->mechs = str_dup_n(mech, strlen(mech));
  }
  relay_smtp_client_cfg(cfg, up, &cc);
  s->max_size = cfg->max_message_size;
  if(dkim_signers_get(cfg, &s->dkim)) {
    smtp_reply_set(r, 451, "4.3.0", "upstream %s: out of memory", up->name);
    goto out;
  }
  if(!up->host || smtp_client_new(&cc, &s->c) || (s->want_auth && !s->user)) {
    smtp_reply_set(r, 451, "4.3.0", "upstream %s: out of memory or no host", up->name);
    goto out;
  }
  result = session_connect(s, cfg, r);
out:
  if(result) {
    if(s->c)
      smtp_client_quit(s->c);
    session_free(s);
    return result;
  }
  *session = s;
  return TRANSPORT_OK;
}

static int smtp_send(void *session, const struct store_msg *m, const char *body, size_t len,
                     struct transport_rcpt *rcpts, size_t n, struct smtp_reply *r)
{
  struct smtp_session *s = session;
  struct smtp_client_rcpt *cr = calloc(n ? n : 1, sizeof(*cr));
  struct smtp_client_msg msg;
  char *signed_body = NULL, *fitted_body = NULL;
  size_t i, signed_len = 0, fitted_len = 0;
  int result, tries;

  if(!cr) {
    smtp_reply_set(r, 451, "4.3.0", "out of memory");
    return TRANSPORT_FAILED;
  }
  /* strict upstreams refuse lines over 998 octets, which legacy applications write: such
   * parts go quoted-printable (what a reader sees is the same) */
  if(longlines_encode(body, len, &fitted_body, &fitted_len)) {
    smtp_reply_set(r, 451, "4.3.0", "out of memory re-encoding long lines");
    result = TRANSPORT_FAILED;
    goto out;
  }
  if(fitted_body) {
    log_info("%s: lines over 998 octets re-encoded as quoted-printable for %s (%zu -> %zu "
             "bytes)", m->id, s->name, len, fitted_len);
    body = fitted_body;
    len = fitted_len;
  }
  /* the last change to the message: a signature covers what goes on the wire */
  if(dkim_sign_message(s->dkim, m->sender, body, len,
                       2 * (long long)len + s->max_size / 8 + 65536, &signed_body, &signed_len,
                       r)) {
    result = TRANSPORT_FAILED;
    goto out;
  }
  if(signed_body) {
    body = signed_body;
    len = signed_len;
  }
  for(i = 0; i < n; i++) {
    cr[i].address = rcpts[i].rcpt->address;
    cr[i].notify = rcpts[i].rcpt->notify;
    cr[i].orcpt = rcpts[i].rcpt->orcpt;
  }
  memset(&msg, 0, sizeof(msg));
  msg.sender = m->sender ? m->sender : "";
  msg.body_8bit = m->body_8bit;
  msg.smtputf8 = m->smtputf8;
  msg.envid = m->envid;
  msg.ret = m->ret;
  msg.body = body;
  msg.len = len;
  /* a kept session never carries mail on an expired token: some providers end such sessions
   * mid-transaction; a new login takes the current token */
  if(s->c && s->token_until_ms && time_real_ms() >= s->token_until_ms) {
    smtp_client_quit(s->c);
    result = session_connect(s, NULL, r);
    if(result)
      goto out;
  }
  for(tries = 0; ; tries++) {
    result = s->c ? smtp_client_send(s->c, &msg, cr, n, r) : SMTP_CLIENT_STALE;
    /* a reused connection the server had closed meanwhile: one new one, then the same */
    if(result != SMTP_CLIENT_STALE || tries)
      break;
    if(!s->c) {
      smtp_reply_set(r, 451, "4.3.0", "upstream %s: no session", s->name);
      result = TRANSPORT_FAILED;
      goto out;
    }
    result = session_connect(s, NULL, r);
    if(result)
      goto out;
  }
  if(result == SMTP_CLIENT_OK) {
    /* an upstream offering DSN got NOTIFY= and reports success and failure from there on */
    int taken = s->c && (smtp_client_caps(s->c)->flags & SMTP_CAP_DSN);
    for(i = 0; i < n; i++) {
      rcpts[i].reply = cr[i].reply;
      rcpts[i].dsn_taken = taken;
    }
    result = TRANSPORT_OK;
  }
  else
    result = s->c ? failed(s, r) : TRANSPORT_FAILED;
out:
  free(cr);
  free(signed_body);
  free(fitted_body);
  return result;
}

static void smtp_close(void *session)
{
  struct smtp_session *s = session;
  if(!s)
    return;
  if(s->c)
    smtp_client_quit(s->c);
  session_free(s);
}

static void smtp_describe(void *session, char *out, size_t outsz)
{
  struct smtp_session *s = session;
  str_copy(out, outsz, s && s->c ? smtp_client_peer(s->c) : "none");
}

const struct transport transport_smtp = {
  .type = CFG_UP_SMTP,
  .delivered_status = RCPT_SENT,
  .open = smtp_open,
  .send = smtp_send,
  .close = smtp_close,
  .describe = smtp_describe,
};
