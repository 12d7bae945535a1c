/* The graph transport: Microsoft Graph sendMail with the queued message as base64 MIME, for
 * tenants where SMTP AUTH is off; the bearer token comes from the OAuth2 engine ([oauth2 NAME]
 * with a flow) or from a token file kept fresh by something else. */
#include "relay/relay_int.h"
#include "lib/vendor.h"
#include "auth/auth.h"
#include "lib/buf.h"
#include "lib/log.h"
#include <gmime/gmime.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define GRAPH_DEFAULT_URL "https://graph.microsoft.com"
#define GRAPH_MAX_SIZE (4u * 1024u * 1024u)     /* sendMail's request limit, base64 counted */

struct graph_session {
  struct http_client *http;
  char name[128];
  char base[512];
  char *oauth2;                 /* managed [oauth2] name, or NULL */
  char *token_file;             /* else: a file holding a ready access token */
  char *mailbox;                /* username: the mailbox to send as; NULL: the envelope sender */
};

static void graph_close(void *session)
{
  struct graph_session *s = session;
  if(!s)
    return;
  http_client_free(s->http);
  free(s->oauth2);
  free(s->token_file);
  free(s->mailbox);
  free(s);
}

static char *dup_or_null(const char *s)
{
  return s ? str_dup_n(s, strlen(s)) : NULL;
}

/* A bearer token: TRANSPORT_OK, or AUTH_FAILED (hold: the operator must act) / FAILED (later). */
static int token_get(struct graph_session *s, const struct config *cfg, const char *rejected,
                     char **tok, size_t *toklen, struct smtp_reply *r)
{
  char err[256] = "";
  long long exp = 0;
  int rc;
  *tok = NULL;
  *toklen = 0;
  if(s->oauth2) {
    rc = oauth2_token_get(cfg, s->oauth2, rejected, tok, &exp, err, sizeof(err));
    if(rc == OAUTH2_OK && *tok) {
      *toklen = strlen(*tok);
      return TRANSPORT_OK;
    }
    if(rc == OAUTH2_REAUTH) {
      smtp_reply_set(r, 454, "4.7.0", "upstream %s: no OAuth2 token for [oauth2 %s]: %s", s->name,
                     s->oauth2, err);
      return TRANSPORT_AUTH_FAILED;
    }
    smtp_reply_set(r, 451, "4.4.1", "upstream %s: no OAuth2 token for [oauth2 %s] yet: %s",
                   s->name, s->oauth2, err);
    return TRANSPORT_FAILED;
  }
  if(!s->token_file) {
    smtp_reply_set(r, 454, "4.7.0", "upstream %s: no token: set oauth2 (an [oauth2] section "
                   "with a flow) or password_file", s->name);
    return TRANSPORT_AUTH_FAILED;
  }
  if(auth_secret_read(s->token_file, tok, toklen, err, sizeof(err))) {
    smtp_reply_set(r, 454, "4.7.0", "upstream %s: cannot use the token file: %s", s->name, err);
    return TRANSPORT_AUTH_FAILED;
  }
  return TRANSPORT_OK;
}

static int graph_open(const struct config *cfg, const struct cfg_upstream *up, void **session,
                      struct smtp_reply *r)
{
  struct graph_session *s = calloc(1, sizeof(*s));
  const struct cfg_oauth2 *oa = NULL;
  char *tok = NULL;
  size_t toklen = 0, i, n;
  int result = TRANSPORT_FAILED;

  *session = NULL;
  if(!s || relay_http_new(up, &s->http))
    goto nomem;
  str_copy(s->name, sizeof(s->name), up->name);
  /* the Graph of the identity's cloud (national clouds have their own) unless api_url says */
  str_copy(s->base, sizeof(s->base),
           up->api_url ? up->api_url : oauth2_graph_url(cfg, up->oauth2));
  n = strlen(s->base);
  while(n && s->base[n - 1] == '/')
    s->base[--n] = '\0';
  for(i = 0; up->oauth2 && i < cfg->noauth2s; i++)
    if(!strcmp(cfg->oauth2s[i].name, up->oauth2))
      oa = &cfg->oauth2s[i];
  if(up->oauth2 && oauth2_managed(cfg, up->oauth2)) {
    if(!(s->oauth2 = dup_or_null(up->oauth2)))
      goto nomem;
  }
  else if((oa && oa->token_file) || up->password_file) {
    if(!(s->token_file = dup_or_null(oa && oa->token_file ? oa->token_file : up->password_file)))
      goto nomem;
  }
  if(up->username && !(s->mailbox = dup_or_null(up->username)))
    goto nomem;
  /* the "login": a token can be had (registers the identity with the engine) */
  result = token_get(s, cfg, NULL, &tok, &toklen, r);
  if(result)
    goto out;
  *session = s;
  s = NULL;
  goto out;
nomem:
  smtp_reply_set(r, 451, "4.3.0", "upstream %s: out of memory", up->name);
  result = TRANSPORT_FAILED;
out:
  auth_secret_free(tok, toklen);
  graph_close(s);
  return result;
}

/* Graph takes the recipients from the MIME header: envelope recipients the header does not
 * name (Bcc) are added as a Bcc: field in front, which Exchange removes before delivery. */
static int bcc_prefix(const char *body, size_t len, struct transport_rcpt *rcpts, size_t n,
                      struct buf *out)
{
  GMimeStream *stream;
  GMimeParser *parser = NULL;
  GMimeMessage *msg = NULL;
  InternetAddressList *all = NULL;
  size_t i, added = 0;
  int j, count, result = -1;

  vendor_gmime_start();
  stream = g_mime_stream_mem_new_with_buffer(body, len);
  if(!stream)
    return -1;
  parser = g_mime_parser_new_with_stream(stream);
  msg = parser ? g_mime_parser_construct_message(parser, NULL) : NULL;
  all = msg ? g_mime_message_get_all_recipients(msg) : NULL;
  count = all ? internet_address_list_length(all) : 0;
  for(i = 0; i < n; i++) {
    const char *a = rcpts[i].rcpt->address;
    int found = 0;
    for(j = 0; j < count && !found; j++) {
      InternetAddress *ia = internet_address_list_get_address(all, j);
      found = INTERNET_ADDRESS_IS_MAILBOX(ia) &&
              !strcasecmp(internet_address_mailbox_get_addr(INTERNET_ADDRESS_MAILBOX(ia)), a);
    }
    if(found)
      continue;
    if(buf_addstr(out, added ? ",\r\n <" : "Bcc: <") || buf_addstr(out, a) || buf_addstr(out, ">"))
      goto out;
    added++;
  }
  if(added && buf_addstr(out, "\r\n"))
    goto out;
  result = 0;
out:
  if(all)
    g_object_unref(all);
  if(msg)
    g_object_unref(msg);
  if(parser)
    g_object_unref(parser);
  g_object_unref(stream);
  return result;
}

static void url_escape_add(struct buf *b, const char *s)
{
  static const char hex[] = "0123456789ABCDEF";
  for(; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
       strchr("-._~@", c))
      buf_add(b, s, 1);
    else {
      char e[3] = { '%', hex[c >> 4], hex[c & 15] };
      buf_add(b, e, 3);
    }
  }
}

static int graph_send(void *session, const struct store_msg *m, const char *body, size_t len,
                      struct transport_rcpt *rcpts, size_t n, struct smtp_reply *r)
{
  struct graph_session *s = session;
  struct http_response resp;
  struct smtp_reply one;
  struct buf mime, url, auth;
  const char *headers[4], *from = s->mailbox ? s->mailbox : m->sender;
  struct http_batch batch;
  char *tok = NULL, *b64 = NULL;
  size_t toklen = 0;
  int result = TRANSPORT_OK, tries, answered = 0;

  memset(&resp, 0, sizeof(resp));
  buf_init(&mime, (size_t)len + (LIM_SMTP_PATH + 8) * (n + 1) + 16);
  buf_init(&url, 2048);
  buf_init(&auth, 16384);
  if(!from || !*from) {
    smtp_reply_set(&one, 550, "5.1.7", "upstream %s: Graph needs a mailbox to send as: set "
                   "username (the null sender has none)", s->name);
    http_replies_fill(rcpts, 0, n, &one, 0);
    goto out;
  }
  if(bcc_prefix(body, len, rcpts, n, &mime) || buf_add(&mime, body, len) ||
     buf_addstr(&url, s->base) || buf_addstr(&url, "/v1.0/users/")) {
    smtp_reply_set(r, 451, "4.3.0", "out of memory");
    result = TRANSPORT_FAILED;
    goto out;
  }
  url_escape_add(&url, from);
  if(buf_addstr(&url, "/sendMail")) {
    smtp_reply_set(r, 451, "4.3.0", "out of memory");
    result = TRANSPORT_FAILED;
    goto out;
  }
  if(mime.len / 3 * 4 + 4 > GRAPH_MAX_SIZE) {
    smtp_reply_set(&one, 552, "5.3.4", "message is larger than Graph's 4 MB sendMail limit "
                   "(base64 counted)");
    http_replies_fill(rcpts, 0, n, &one, 0);
    goto out;
  }
  b64 = g_base64_encode((const guchar *)mime.ptr, mime.len);
  if(!b64) {
    smtp_reply_set(r, 451, "4.3.0", "out of memory");
    result = TRANSPORT_FAILED;
    goto out;
  }
  /* a 401 may be a token revoked early: one fresh token, one more try */
  for(tries = 0; tries < 2; tries++) {
    char *old = tok;
    size_t oldlen = toklen;
    result = token_get(s, NULL, old, &tok, &toklen, r);
    auth_secret_free(old, oldlen);
    if(result)
      goto out;
    if(auth.ptr)
      auth_secret_free(auth.ptr, auth.alloc);
    buf_init(&auth, toklen + 64);
    if(buf_addstr(&auth, "Authorization: Bearer ") || buf_add(&auth, tok, toklen)) {
      smtp_reply_set(r, 451, "4.3.0", "out of memory");
      result = TRANSPORT_FAILED;
      goto out;
    }
    headers[0] = auth.ptr;
    headers[1] = "Content-Type: text/plain";
    headers[2] = "Accept: application/json";
    headers[3] = NULL;
    http_response_free(&resp);
    answered = !relay_http_request(s->http, "POST", url.ptr, headers, b64, strlen(b64), &resp);
    if(!answered || resp.status != 401 || !s->oauth2)
      break;
  }
  http_batch_init(&batch, "Microsoft Graph", s->name, s->base, rcpts, n, r);
  /* one request for every recipient: sendMail takes them from the MIME */
  http_batch_answer(&batch, 0, n, answered, &resp, 0, NULL);
  result = batch.result;
out:
  auth_secret_free(tok, toklen);
  if(auth.ptr)
    auth_secret_free(auth.ptr, auth.alloc);
  http_response_free(&resp);
  g_free(b64);
  buf_free(&mime);
  buf_free(&url);
  return result;
}

static void graph_describe(void *session, char *out, size_t outsz)
{
  struct graph_session *s = session;
  http_url_host(s ? s->base : GRAPH_DEFAULT_URL, out, outsz);
}

/* posternctl check: Graph has no request that proves Mail.Send without sending, so the check
 * is the token acquisition the transport's open does. */
static int graph_check(const struct config *cfg, const struct cfg_upstream *up,
                       struct relay_check *chk)
{
  struct smtp_reply r;
  void *s = NULL;
  int result;
  memset(&r, 0, sizeof(r));
  result = graph_open(cfg, up, &s, &r);
  graph_close(s);
  if(result)
    return relay_check_add(chk, "token", 0, up->oauth2
                           ? "check tenant, client_id and client_secret_file (or the certificate) "
                             "of the [oauth2] section; the Entra app needs the Mail.Send "
                             "application permission with admin consent"
                           : "set oauth2 = NAME (an [oauth2] section with a flow) in this "
                             "[upstream]", "%s", r.text);
  relay_check_add(chk, "token", 1, NULL, "an access token was obtained%s%s%s",
                  up->oauth2 ? " for [oauth2 " : "", up->oauth2 ? up->oauth2 : "",
                  up->oauth2 ? "]" : "");
  return relay_check_add(chk, "mailbox", 1, up->username ? NULL
                         : "set username to the mailbox to send as, or each message goes out as "
                           "its envelope sender's mailbox",
                         "Graph cannot be asked whether the app may send without sending: "
                         "Mail.Send is proved by the first message%s%s",
                         up->username ? "; sends as " : "", up->username ? up->username : "");
}

const struct transport transport_graph = {
  .type = CFG_UP_GRAPH,
  .delivered_status = RCPT_SENT,
  .open = graph_open,
  .check = graph_check,
  .send = graph_send,
  .close = graph_close,
  .describe = graph_describe,
};
