/* The submission policy: who may relay through a role = submission listener, and the
 * hand-over of an accepted message to the queue — "250" only once it is on disk. */
#include "relay/relay_int.h"
#include "tls/tls.h"
#include "lib/log.h"
#include "global/metrics.h"
#include "lib/buf.h"
#include <fnmatch.h>
#include <stdlib.h>
#include <string.h>

static int sub_connect(void *ctx, const struct smtp_session_info *s, struct smtp_reply *r)
{
  return 0;
}

/* Does one `senders` word allow the address? "app@clinic.example" is that address, "@domain"
 * and "*@domain" any address at the domain, other words are globs ("*@*.clinic.example");
 * "<>" allows the null sender. Addresses compare case-insensitively, as routes do. */
static int sender_word_matches(const char *w, size_t wlen, const char *addr)
{
  char glob[LIM_SMTP_PATH + 8];
  if(wlen == 2 && !memcmp(w, "<>", 2))
    return !addr[0];
  if(!addr[0] || wlen + 2 > sizeof(glob))
    return 0;
  if(w[0] == '@') {
    glob[0] = '*';
    memcpy(glob + 1, w, wlen);
    glob[wlen + 1] = '\0';
  }
  else {
    memcpy(glob, w, wlen);
    glob[wlen] = '\0';
  }
  return !fnmatch(glob, addr, FNM_CASEFOLD);
}

/* An authenticated user with a [user NAME] section that lists senders may use only those in
 * MAIL FROM. A user without one (or without senders) may send as anyone: the section is how an
 * operator opts in, as Postfix's smtpd_sender_login_maps only restricts the logins it lists. */
static const struct cfg_user *user_restriction(const struct config *cfg, const char *name)
{
  size_t i;
  for(i = 0; i < cfg->nusers; i++)
    if(cfg->users[i].senders && !strcmp(cfg->users[i].name, name))
      return &cfg->users[i];
  return NULL;
}

static int sender_allowed(const struct cfg_user *u, const char *addr)
{
  const char *p = u->senders;
  for(;;) {
    size_t n;
    while(*p == ' ' || *p == '\t' || *p == ',')
      p++;
    if(!*p)
      return 0;
    n = strcspn(p, " \t,");
    if(sender_word_matches(p, n, addr))
      return 1;
    p += n;
  }
}

static int sub_mail(void *ctx, const struct smtp_session_info *s,
                    const struct smtp_path_params *from, struct smtp_reply *r)
{
  struct relay_policy_ctx *p = ctx;
  const struct cfg_user *u;
  char esc[LIM_LOG_FIELD * 4 + 8];
  if(p->listener->auth == CFG_AUTH_REQUIRED && !s->auth_user) {
    smtp_reply_set(r, 530, "5.7.0", "Authentication required");
    return 1;
  }
  if(s->auth_user && (u = user_restriction(p->cfg, s->auth_user)) &&
     !sender_allowed(u, from->path)) {
    smtp_reply_set(r, 553, "5.7.1", "<%s>: Sender address rejected: not owned by user %s",
                   log_repr(esc, sizeof(esc), from->path, from->pathlen), u->name);
    return 1;
  }
  return 0;
}

static int peer_trusted(const struct cfg_listener *l, const struct smtp_session_info *s)
{
  return cidr_match(l->trusted, l->ntrusted, s->family, s->peer_addr);
}

static int sub_rcpt(void *ctx, const struct smtp_session_info *s, const struct smtp_envelope *env,
                    const struct smtp_path_params *to, struct smtp_reply *r)
{
  struct relay_policy_ctx *p = ctx;
  char esc[LIM_LOG_FIELD * 4 + 8];
  /* never an open relay: a peer outside trusted_networks must have authenticated */
  if(s->auth_user || peer_trusted(p->listener, s))
    return 0;
  smtp_reply_set(r, 554, "5.7.1", "<%s>: Relay access denied",
                 log_repr(esc, sizeof(esc), to->path, to->pathlen));
  return 1;
}

/* Does the header section of msg hold a Reply-To field? The application's own Reply-To wins:
 * replies then go where it asked, and thread by In-Reply-To alone. */
static int has_reply_to(const char *msg, size_t len)
{
  size_t pos = 0;
  while(pos < len && pos < LIM_HEADER_SCAN) {
    const char *nl = memchr(msg + pos, '\n', len - pos);
    size_t llen = (nl ? (size_t)(nl - msg) : len) - pos;
    if(llen == 0 || (llen == 1 && msg[pos] == '\r'))
      return 0;                 /* the empty line that ends the header section */
    if(llen > 9 && !str_casecmp_n(msg + pos, 9, "reply-to:"))
      return 1;
    if(!nl)
      break;
    pos = (size_t)(nl - msg) + 1;
  }
  return 0;
}

/* With [inbound] reply_address = reply+{token}@domain, the message gets a Reply-To naming a
 * fresh random token, which the store keeps with the message: a reply to it finds its way
 * back to this message even when the replying client dropped In-Reply-To and References.
 * *out is the message with the field in front (malloc'd), or NULL when none is added. */
static int reply_to_add(const char *pattern, const char *msg, size_t len, char *token,
                        char **out, size_t *outlen)
{
  const char *at = pattern ? strstr(pattern, "{token}") : NULL;
  struct buf b;
  size_t i;
  *out = NULL;
  *outlen = 0;
  if(!at || has_reply_to(msg, len))
    return 0;
  store_new_id(token);
  for(i = 0; token[i]; i++)
    if(token[i] >= 'A' && token[i] <= 'Z')
      token[i] = (char)(token[i] - 'A' + 'a');   /* local parts meet case-folding MTAs */
  buf_init(&b, len + LIM_CONFIG_VALUE + 64);
  if(buf_addf(&b, "Reply-To: <%.*s%s%s>\r\n", (int)(at - pattern), pattern, token,
              at + 7) || buf_add(&b, msg, len)) {
    buf_free(&b);
    return -1;
  }
  *out = buf_steal(&b, outlen);
  return *out ? 0 : -1;
}

static void sub_message(void *ctx, const struct smtp_session_info *s,
                        const struct smtp_envelope *env, const char *msg, size_t len,
                        struct smtp_reply *r)
{
  struct relay_policy_ctx *p = ctx;
  struct store_msg m;
  struct store_rcpt *rcpts = NULL;
  char sha[TLS_SHA256_HEX_LEN + 1], token[LIM_QUEUE_ID + 1];
  char *withreply = NULL;
  size_t withlen = 0;
  char from[LIM_LOG_FIELD * 4 + 8];
  size_t i;
  int result;

  memset(&m, 0, sizeof(m));
  rcpts = calloc(env->nrcpts ? env->nrcpts : 1, sizeof(*rcpts));
  if(!rcpts || reply_to_add(p->cfg->inbound.reply_address, msg, len, token, &withreply,
                            &withlen)) {
    free(rcpts);
    smtp_reply_set(r, 451, "4.3.0", "Error: out of memory, try again later");
    return;
  }
  if(withreply) {
    msg = withreply;
    len = withlen;
    m.reply_token = token;
  }
  str_copy(m.id, sizeof(m.id), env->id);
  m.sender = (char *)env->mail.path;
  m.created_ms = time_real_ms();
  m.size = (long long)len;
  m.body_8bit = env->mail.body != SMTP_BODY_7BIT;
  m.smtputf8 = env->mail.smtputf8;
  m.source = (char *)"submission";
  m.listener = (char *)p->listener->name;
  m.client_addr = (char *)s->peer_ip;
  m.helo = (char *)s->helo;
  m.auth_user = (char *)s->auth_user;
  m.envid = env->mail.envid[0] ? (char *)env->mail.envid : NULL;
  m.ret = env->mail.ret[0] ? (char *)env->mail.ret : NULL;
  m.body_sha256 = tls_sha256_hex(msg, len, sha) ? NULL : sha;
  for(i = 0; i < env->nrcpts; i++) {
    rcpts[i].idx = (unsigned)i;
    rcpts[i].address = (char *)env->rcpts[i].path;
    rcpts[i].orcpt = env->rcpts[i].orcpt[0] ? (char *)env->rcpts[i].orcpt : NULL;
    rcpts[i].notify = env->rcpts[i].notify[0] ? (char *)env->rcpts[i].notify : NULL;
  }
  m.rcpts = rcpts;
  m.nrcpts = env->nrcpts;

  result = store_accept(p->store, &m, msg, len);
  if(result == STORE_OK) {
    metrics_accepted(p->listener->name);
    log_info("%s: from=<%s>, size=%zu, nrcpt=%zu (queue active)", m.id,
             log_repr(from, sizeof(from), env->mail.path, env->mail.pathlen), len, env->nrcpts);
    smtp_reply_set(r, 250, "2.0.0", "Ok: queued as %s", m.id);
    if(p->relay)
      relay_kick(p->relay);
  }
  else if(result == STORE_FULL) {
    log_warn("%s: queue file write error: disk full (free space in data_dir; the client was told "
             "452 and retries)", m.id);
    smtp_reply_set(r, 452, "4.3.1", "Insufficient system storage");
  }
  else {
    log_error("%s: queue file write error (see the store error above; the client was told 451 and "
              "retries)", m.id);
    smtp_reply_set(r, 451, "4.3.0", "Error: queue file write error, try again later");
  }
  free(withreply);
  free(rcpts);
}

const struct smtp_policy relay_submission_policy = {
  .connect = sub_connect,
  .mail = sub_mail,
  .rcpt = sub_rcpt,
  .message = sub_message,
};
