/* The MX policy: a role = mx listener takes mail for the [inbound] domains only, checks SPF on
 * MAIL FROM, and commits each message raw to the inbound store before its 250. */
#include "inbound/inbound.h"
#include "tls/tls.h"
#include "lib/buf.h"
#include "lib/log.h"
#include "global/metrics.h"
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static int mx_connect(void *ctx, const struct smtp_session_info *s, struct smtp_reply *r)
{
  return 0;
}

/* Is the domain (dom[0..len), any case) one of the blank- or comma-separated domains? */
static int domain_accepted(const char *domains, const char *dom, size_t len)
{
  const char *p = domains;
  if(!p)
    return 0;
  for(;;) {
    size_t n;
    while(*p == ' ' || *p == '\t' || *p == ',')
      p++;
    if(!*p)
      return 0;
    n = strcspn(p, " \t,");
    if(n == len && !strncasecmp(p, dom, len))
      return 1;
    p += n;
  }
}

static int mx_mail(void *ctx, const struct smtp_session_info *s,
                   const struct smtp_path_params *from, struct smtp_reply *r)
{
  struct inbound_policy_ctx *p = ctx;
  enum cfg_spf mode = p->cfg->inbound.spf;
  char esc[LIM_LOG_FIELD * 4 + 8];
  struct inbound_spf_cached *c = NULL;
  size_t i;

  p->spf[0] = '\0';
  p->spf_header[0] = '\0';
  if(mode == CFG_SPF_OFF)
    return 0;
  /* the sender picks the record, and a record may cost up to 10 look-ups: a session that
   * repeats its sender does not get to have them repeated */
  for(i = 0; i < sizeof(p->spf_cache) / sizeof(p->spf_cache[0]); i++) {
    c = &p->spf_cache[i];
    if(c->used && !strcmp(c->sender, from->path) && !strcmp(c->helo, s->helo))
      break;
  }
  if(i < sizeof(p->spf_cache) / sizeof(p->spf_cache[0])) {
    str_copy(p->spf, sizeof(p->spf), c->result);
    str_copy(p->spf_header, sizeof(p->spf_header), c->header);
  }
  else {
    inbound_spf_check(s->family, s->peer_addr, s->helo, from->path, p->cfg->hostname, p->spf,
                      sizeof(p->spf), p->spf_header, sizeof(p->spf_header));
    log_debug("SPF evaluated for <%s> from [%s]: %s",
              log_repr(esc, sizeof(esc), from->path, from->pathlen), s->peer_ip, p->spf);
    if(strcmp(p->spf, "temperror")) {     /* a passing DNS outage is asked again */
      c = &p->spf_cache[p->spf_cache_next++ % (sizeof(p->spf_cache) / sizeof(p->spf_cache[0]))];
      c->used = 1;
      str_copy(c->sender, sizeof(c->sender), from->path);
      str_copy(c->helo, sizeof(c->helo), s->helo);
      str_copy(c->result, sizeof(c->result), p->spf);
      str_copy(c->header, sizeof(c->header), p->spf_header);
    }
  }
  if(mode == CFG_SPF_REJECT) {
    if(!strcmp(p->spf, "fail")) {
      log_info("NOQUEUE: reject: MAIL from %s: SPF fail for <%s>", s->peer_ip,
               log_repr(esc, sizeof(esc), from->path, from->pathlen));
      smtp_reply_set(r, 550, "5.7.23", "<%s>: Sender address rejected: SPF check failed",
                     log_repr(esc, sizeof(esc), from->path, from->pathlen));
      return 1;
    }
    if(!strcmp(p->spf, "temperror")) {
      smtp_reply_set(r, 451, "4.7.24", "SPF check temporarily failed, try again later");
      return 1;
    }
  }
  return 0;
}

static int mx_rcpt(void *ctx, const struct smtp_session_info *s, const struct smtp_envelope *env,
                   const struct smtp_path_params *to, struct smtp_reply *r)
{
  struct inbound_policy_ctx *p = ctx;
  char esc[LIM_LOG_FIELD * 4 + 8];
  size_t dl = 0;
  const char *dom = smtp_address_domain(to->path, to->pathlen, &dl);
  if(dom && dl && domain_accepted(p->cfg->inbound.domains, dom, dl))
    return 0;
  smtp_reply_set(r, 550, "5.7.1", "<%s>: Relaying denied",
                 log_repr(esc, sizeof(esc), to->path, to->pathlen));
  return 1;
}

/* DKIM and DMARC ([inbound] dmarc = tag | enforce): the verdicts in *auth (malloc'd; NULL
 * with dmarc = off). 1 with r set when enforce refuses the message: a DMARC failure under
 * p=reject (451 while a DNS failure may hide a pass); a p=quarantine failure is kept, its
 * verdict in the record. */
static int mx_authenticate(struct inbound_policy_ctx *p, const struct smtp_session_info *s,
                           const struct smtp_envelope *env, const char *msg, size_t len,
                           struct inbound_auth **auth, struct smtp_reply *r)
{
  const char *mode = p->cfg->inbound.dmarc ? p->cfg->inbound.dmarc : "off";
  struct inbound_auth_in in = { env->id, p->cfg->hostname, env->mail.path, s->helo,
                                p->spf[0] ? p->spf : NULL, s->family, s->peer_addr };
  struct inbound_auth *a;
  size_t k;
  *auth = NULL;
  if(!strcmp(mode, "off"))
    return 0;
  a = malloc(sizeof(*a));
  if(!a)
    return 0;                    /* the message is kept without verdicts rather than lost */
  inbound_auth_check(&in, msg, len, a);
  *auth = a;
  if(strcmp(mode, "enforce") || strcmp(a->dmarc, "fail") || strcmp(a->dmarc_policy, "reject"))
    return 0;
  /* a pass that a DNS failure kept from being seen is no failure: the sender is asked to come
   * back (a 5xx here would bounce mail that a working resolver would have taken) */
  for(k = 0; k < a->ndkim && strcmp(a->dkim[k].result, "temperror"); k++)
    ;
  if(k < a->ndkim || !strcmp(a->spf, "temperror")) {
    log_info("%s: deferred: DMARC policy of %s (p=reject) not met while a DNS lookup failed; "
             "client=%s", env->id, a->from_domain, s->peer_ip);
    smtp_reply_set(r, 451, "4.7.1", "DMARC of %s cannot be evaluated now (a DNS lookup "
                   "failed); try again later", a->from_domain);
    return 1;
  }
  log_info("%s: reject: DMARC policy of %s (p=reject): no aligned SPF or DKIM pass; client=%s",
           env->id, a->from_domain, s->peer_ip);
  smtp_reply_set(r, 550, "5.7.1", "Message rejected: it fails the DMARC policy of %s",
                 a->from_domain);
  return 1;
}

static void mx_message(void *ctx, const struct smtp_session_info *s,
                       const struct smtp_envelope *env, const char *msg, size_t len,
                       struct smtp_reply *r)
{
  struct inbound_policy_ctx *p = ctx;
  struct store_inbound m;
  struct buf to, body;
  char sha[TLS_SHA256_HEX_LEN + 1];
  char from[LIM_LOG_FIELD * 4 + 8];
  const char *data = msg;
  size_t datalen = len, i, hlen = strlen(p->spf_header), alen = 0, removed = 0;
  int result = STORE_ERROR;
  struct inbound_auth *auth = NULL;

  memset(&m, 0, sizeof(m));
  buf_init(&to, env->nrcpts * (LIM_SMTP_PATH + 1) + 1);
  if(mx_authenticate(p, s, env, msg, len, &auth, r))
    goto done;
  alen = auth ? strlen(auth->header) : 0;
  buf_init(&body, len + hlen + alen + 1);
  for(i = 0; i < env->nrcpts; i++)
    if((i && buf_add(&to, "\n", 1)) || buf_add(&to, env->rcpts[i].path, env->rcpts[i].pathlen))
      goto out;
  /* RFC 7208 9.1: Received-SPF goes above the Received the engine added, so it is the
   * first field; Authentication-Results right below it (RFC 8601 5), where the record builder
   * reads it. Fields that arrived claiming our name are forgeries and go (RFC 8601 5), whether
   * or not we add ours: a reader further on would take them for our verdict. */
  inbound_auth_strip(msg, len, p->cfg->hostname, NULL, &removed);     /* counts only */
  if(hlen || alen || removed) {     /* one copy of the message is the price of a change */
    if(buf_add(&body, p->spf_header, hlen) || buf_add(&body, auth ? auth->header : "", alen) ||
       inbound_auth_strip(msg, len, p->cfg->hostname, &body, &removed))
      goto out;
    data = body.ptr;
    datalen = body.len;
  }
  if(removed)
    log_info("%s: removed %zu Authentication-Results field%s that claimed to be ours "
             "(authserv-id %s)", env->id, removed, removed > 1 ? "s" : "", p->cfg->hostname);
  str_copy(m.id, sizeof(m.id), env->id);
  m.source = "mx";
  m.received_ms = time_real_ms();
  m.listener = p->listener->name;
  m.client_addr = s->peer_ip;
  m.helo = s->helo;
  m.envelope_from = env->mail.path;
  m.envelope_to = to.ptr ? to.ptr : "";
  m.spf = p->spf[0] ? p->spf : NULL;
  m.content_type = "message/rfc822";
  m.body_sha256 = tls_sha256_hex(data, datalen, sha) ? NULL : sha;
  result = store_inbound_accept(p->store, &m, data, datalen, NULL);

out:
  if(result == STORE_OK) {
    metrics_inbound(METRICS_SRC_MX);
    log_info("%s: inbound from=<%s>, size=%zu, nrcpt=%zu, client=%s, spf=%s", m.id,
             log_repr(from, sizeof(from), env->mail.path, env->mail.pathlen), datalen,
             env->nrcpts, s->peer_ip, p->spf[0] ? p->spf : "off");
    smtp_reply_set(r, 250, "2.0.0", "Ok: queued as %s", m.id);
  }
  else if(result == STORE_FULL) {
    log_warn("%s: inbound store write error: disk full (free space in data_dir; the sender was "
             "told 452 and retries)", env->id);
    smtp_reply_set(r, 452, "4.3.1", "Insufficient system storage");
  }
  else {
    log_error("%s: inbound store write error (see the store error above; the sender was told 451 "
              "and retries)", env->id);
    smtp_reply_set(r, 451, "4.3.0", "Error: queue file write error, try again later");
  }
  buf_free(&body);
done:
  free(auth);
  buf_free(&to);
}

const struct smtp_policy inbound_mx_policy = {
  .connect = mx_connect,
  .mail = mx_mail,
  .rcpt = mx_rcpt,
  .message = mx_message,
};
