/* The sendgrid transport: the queued message mapped to SendGrid's v3 mail/send JSON
 * (sendgrid_json.c) and POSTed, at most 1,000 recipients a request, with SendGrid's answers
 * turned into per-recipient replies: sent, deferred (until the rate limit resets), bounced, held. */
#include "relay/relay_int.h"
#include "auth/auth.h"
#include "lib/buf.h"
#include "lib/log.h"
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#define SENDGRID_DEFAULT_URL "https://api.sendgrid.com"

struct sendgrid_session {
  struct http_client *http;
  char name[128];
  char base[512];               /* api_url without a trailing '/' */
  char *key_file;
};

static void sg_close(void *session)
{
  struct sendgrid_session *s = session;
  if(!s)
    return;
  http_client_free(s->http);
  free(s->key_file);
  free(s);
}

/* The key, read from its file at each use (a new key needs no reload), as an Authorization
 * header line; wiped by the caller. */
static int auth_header(struct sendgrid_session *s, char **line, size_t *linelen,
                       struct smtp_reply *r)
{
  char err[256] = "", *key = NULL;
  size_t keylen = 0;
  struct buf b;
  int result = 0;
  *line = NULL;
  if(!s->key_file) {
    smtp_reply_set(r, 454, "4.7.0", "upstream %s: no api_key_file", s->name);
    return TRANSPORT_AUTH_FAILED;
  }
  if(auth_secret_read(s->key_file, &key, &keylen, err, sizeof(err))) {
    smtp_reply_set(r, 454, "4.7.0", "upstream %s: cannot use the API key file: %s", s->name, err);
    return TRANSPORT_AUTH_FAILED;
  }
  buf_init(&b, keylen + 64);
  if(buf_addstr(&b, "Authorization: Bearer ") || buf_add(&b, key, keylen)) {
    smtp_reply_set(r, 451, "4.3.0", "upstream %s: out of memory", s->name);
    result = TRANSPORT_FAILED;
    auth_secret_free(b.ptr, b.alloc);
    b.ptr = NULL;
  }
  auth_secret_free(key, keylen);
  if(!result)
    *line = buf_steal(&b, linelen);
  return result;
}

/* The session without any request made yet: HTTP handle, base URL, where the key is. */
static int sg_session_new(const struct cfg_upstream *up, struct sendgrid_session **out,
                          struct smtp_reply *r)
{
  struct sendgrid_session *s = calloc(1, sizeof(*s));
  size_t n;
  *out = NULL;
  if(!s || relay_http_new(up, &s->http))
    goto nomem;
  str_copy(s->name, sizeof(s->name), up->name);
  str_copy(s->base, sizeof(s->base), up->api_url ? up->api_url : SENDGRID_DEFAULT_URL);
  n = strlen(s->base);
  while(n && s->base[n - 1] == '/')
    s->base[--n] = '\0';
  if(up->api_key_file && !(s->key_file = str_dup_n(up->api_key_file, strlen(up->api_key_file))))
    goto nomem;
  *out = s;
  return TRANSPORT_OK;
nomem:
  smtp_reply_set(r, 451, "4.3.0", "upstream %s: out of memory", up->name);
  sg_close(s);
  return TRANSPORT_FAILED;
}

/* GET /v3/scopes with the key: the cheapest authenticated request, which sends nothing.
 * TRANSPORT_OK when SendGrid answered (any status, in resp); else r says why (no key file:
 * TRANSPORT_AUTH_FAILED; no answer: TRANSPORT_FAILED). */
static int scopes_get(struct sendgrid_session *s, struct http_response *resp,
                      struct smtp_reply *r)
{
  char url[600], *auth = NULL;
  const char *headers[3];
  size_t authlen = 0;
  int result = auth_header(s, &auth, &authlen, r);
  if(result)
    return result;
  snprintf(url, sizeof(url), "%s/v3/scopes", s->base);
  headers[0] = auth;
  headers[1] = "Accept: application/json";
  headers[2] = NULL;
  if(relay_http_request(s->http, "GET", url, headers, NULL, 0, resp)) {
    smtp_reply_set(r, 451, "4.4.1", "cannot reach SendGrid at %s: %s", s->base, resp->error);
    result = TRANSPORT_FAILED;
  }
  auth_secret_free(auth, authlen);
  return result;
}

static int sg_open(const struct config *cfg, const struct cfg_upstream *up, void **session,
                   struct smtp_reply *r)
{
  struct sendgrid_session *s = NULL;
  struct http_response resp;
  int result;

  (void)cfg;
  memset(&resp, 0, sizeof(resp));
  *session = NULL;
  result = sg_session_new(up, &s, r);
  if(result)
    goto out;
  /* The "login": a cheap authenticated GET, so that a held upstream is released only when its
   * key works again (held mail goes out by itself after a successful login). */
  result = scopes_get(s, &resp, r);
  if(result)
    goto out;
  result = TRANSPORT_FAILED;
  if(resp.status == 401 || resp.status == 403) {
    result = http_answer_reply("SendGrid", s->name, &resp, 0, NULL, r);
    goto out;
  }
  /* Only 401 and 403 prove the key wrong. Anything else (a 404 or 501 from a proxy or a
   * regional endpoint that only passes mail/send, a 429, a 5xx) says nothing about the key:
   * mail/send answers for itself, with its own deferral when SendGrid is in trouble. */
  *session = s;
  s = NULL;
  result = TRANSPORT_OK;
out:
  http_response_free(&resp);
  sg_close(s);
  return result;
}

/* Does the /v3/scopes answer list mail.send? 1 yes, 0 no, -1 not a scopes answer; *n: how
 * many scopes it lists. */
static int scopes_have_send(const struct http_response *resp, size_t *n)
{
  json_t *root = json_loadb(resp->body ? resp->body : "", resp->len, 0, NULL);
  json_t *scopes = json_object_get(root, "scopes"), *v;
  size_t i;
  int found = json_is_array(scopes) ? 0 : -1;
  *n = json_is_array(scopes) ? json_array_size(scopes) : 0;
  json_array_foreach(scopes, i, v)
    if(json_is_string(v) && !strcmp(json_string_value(v), "mail.send"))
      found = 1;
  json_decref(root);
  return found;
}

/* posternctl check: the key is read, SendGrid knows it, and it may send (mail.send). */
static int sg_check(const struct config *cfg, const struct cfg_upstream *up,
                    struct relay_check *chk)
{
  struct sendgrid_session *s = NULL;
  struct http_response resp;
  struct smtp_reply r;
  char text[300];
  size_t nscopes = 0;
  int result, send;

  (void)cfg;
  memset(&resp, 0, sizeof(resp));
  memset(&r, 0, sizeof(r));
  if(sg_session_new(up, &s, &r)) {
    result = relay_check_add(chk, "setup", 0, NULL, "%s", r.text);
    goto out;
  }
  result = scopes_get(s, &resp, &r);
  if(result == TRANSPORT_AUTH_FAILED) {
    result = relay_check_add(chk, "key", 0, "set api_key_file in this [upstream] to a file "
                             "holding the API key, readable by Postern's user only (chmod 600)",
                             "%s", r.text);
    goto out;
  }
  if(result) {
    result = relay_check_add(chk, "request", 0, "check api_url (default "
                             SENDGRID_DEFAULT_URL "), DNS and that HTTPS (443) out is allowed "
                             "by the firewall or proxy", "%s", r.text);
    goto out;
  }
  relay_check_add(chk, "request", 1, NULL, "GET %s/v3/scopes: HTTP %ld", s->base, resp.status);
  http_error_text(&resp, text, sizeof(text));
  if(resp.status == 401)
    result = relay_check_add(chk, "key", 0, "SendGrid does not know this key (mistyped, revoked "
                             "or deleted): create one under Settings > API Keys and put it in "
                             "api_key_file", "SendGrid refused the API key (HTTP 401): %s",
                             text[0] ? text : "no reason given");
  else if(resp.status == 403)
    result = relay_check_add(chk, "key", 0, "the key is known but not allowed: give it the Mail "
                             "Send permission under Settings > API Keys > Edit, or check the "
                             "account's IP Access Management list",
                             "SendGrid refused the API key (HTTP 403): %s",
                             text[0] ? text : "no reason given");
  else if(resp.status != 200)
    result = relay_check_add(chk, "key", 0, "a wrong api_url answers this way, so does "
                             "SendGrid in trouble (status.sendgrid.com), or a proxy that passes "
                             "only mail/send; deliveries still try mail/send, whose answer "
                             "decides",
                             "SendGrid answered HTTP %ld to the key check%s%s", resp.status,
                             text[0] ? ": " : "", text);
  else if((send = scopes_have_send(&resp, &nscopes)) == 1)
    result = relay_check_add(chk, "key", 1, NULL, "the API key is valid and has the mail.send "
                             "scope (%zu scopes)", nscopes);
  else if(send == 0)
    result = relay_check_add(chk, "key", 0, "edit the key under Settings > API Keys: Restricted "
                             "Access with Mail Send set to Full Access (or a Full Access key)",
                             "the API key is valid but lacks the mail.send scope (it has %zu)",
                             nscopes);
  else
    result = relay_check_add(chk, "key", 0, "api_url must point at the SendGrid v3 API",
                             "the answer to GET /v3/scopes is not a scopes list");
out:
  http_response_free(&resp);
  sg_close(s);
  return result;
}

static int sg_send(void *session, const struct store_msg *m, const char *body, size_t len,
                   struct transport_rcpt *rcpts, size_t n, struct smtp_reply *r)
{
  struct sendgrid_session *s = session;
  struct sendgrid_msg *sm = NULL;
  struct http_response resp;
  struct smtp_reply one;
  const char **addrs = NULL;
  const char *headers[4];
  struct http_batch batch;
  char why[300], url[600], accepted[160], *auth = NULL, *json = NULL;
  size_t authlen = 0, jsonlen = 0, at, k;
  int result = TRANSPORT_OK, parsed;

  memset(&resp, 0, sizeof(resp));
  parsed = sendgrid_msg_parse(body, len, m->id, m->sender, &sm, why, sizeof(why));
  if(parsed == SENDGRID_REFUSED) {
    /* decided before anything is sent: every recipient bounces with the reason */
    smtp_reply_set(&one, 554, "5.6.0", "SendGrid cannot take this message: %s", why);
    http_replies_fill(rcpts, 0, n, &one, 0);
    goto out;
  }
  if(parsed) {
    smtp_reply_set(r, 451, "4.3.0", "cannot map the message for SendGrid: %s", why);
    result = TRANSPORT_FAILED;
    goto out;
  }
  addrs = calloc(n + 1, sizeof(*addrs));
  if(!addrs) {
    smtp_reply_set(r, 451, "4.3.0", "out of memory");
    result = TRANSPORT_FAILED;
    goto out;
  }
  for(k = 0; k < n; k++)
    addrs[k] = rcpts[k].rcpt->address;
  snprintf(url, sizeof(url), "%s/v3/mail/send", s->base);
  http_batch_init(&batch, "SendGrid", s->name, s->base, rcpts, n, r);
  for(at = 0; at < n; at += SENDGRID_MAX_RCPTS) {
    size_t cnt = n - at < SENDGRID_MAX_RCPTS ? n - at : SENDGRID_MAX_RCPTS;
    int answered;
    free(json);
    json = sendgrid_msg_request(sm, addrs + at, cnt, &jsonlen, why, sizeof(why));
    if(!json) {
      smtp_reply_set(&one, 554, "5.6.0", "SendGrid cannot take this message: %s", why);
      if(!strcmp(why, "out of memory"))
        smtp_reply_set(&one, 451, "4.3.0", "cannot map the message for SendGrid: %s", why);
      http_replies_fill(rcpts, at, at + cnt, &one, 0);
      continue;
    }
    if(!auth) {
      result = auth_header(s, &auth, &authlen, r);
      if(result)
        goto out_auth;
    }
    headers[0] = auth;
    headers[1] = "Content-Type: application/json";
    headers[2] = "Accept: application/json";
    headers[3] = NULL;
    http_response_free(&resp);
    answered = !relay_http_request(s->http, "POST", url, headers, json, jsonlen, &resp);
    snprintf(accepted, sizeof(accepted), "X-Message-Id=%s",
             resp.kept[API_MESSAGE_ID][0] ? resp.kept[API_MESSAGE_ID] : "none");
    if(!http_batch_answer(&batch, at, cnt, answered, &resp, 0, accepted))
      break;
  }
  result = batch.result;
  goto out;
out_auth:
  /* the key file is gone or unreadable: held, like a refused login, unless part went out */
  if(batch.sent) {
    http_replies_fill(rcpts, 0, n, r, 0);
    result = TRANSPORT_OK;
  }
out:
  if(auth)
    auth_secret_free(auth, authlen);
  http_response_free(&resp);
  free(json);
  free(addrs);
  sendgrid_msg_free(sm);
  return result;
}

static void sg_describe(void *session, char *out, size_t outsz)
{
  struct sendgrid_session *s = session;
  http_url_host(s ? s->base : SENDGRID_DEFAULT_URL, out, outsz);
}

const struct transport transport_sendgrid = {
  .type = CFG_UP_SENDGRID,
  .delivered_status = RCPT_SENT,
  .open = sg_open,
  .send = sg_send,
  .close = sg_close,
  .describe = sg_describe,
  .check = sg_check,
};
