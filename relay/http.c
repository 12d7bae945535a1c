/* The API transports' side of HTTP (SendGrid, SES, Graph): global/http.h's client set up for
 * an [upstream], and the mapping of the APIs' answers to SMTP replies. */
#include "relay/relay_int.h"
#include "lib/buf.h"
#include "lib/limits.h"
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum http_result relay_http_new(const struct cfg_upstream *up, struct http_client **out)
{
  struct http_opts o;
  memset(&o, 0, sizeof(o));
  o.max_body = LIM_HTTP_BODY;
  o.keep[API_MESSAGE_ID] = "X-Message-Id";
  o.keep[API_ERROR_TYPE] = "x-amzn-ErrorType";
  if(up) {
    o.ca_file = up->ca_file;
    o.tls_min = up->tls_min_version && !strcmp(up->tls_min_version, "TLSv1.3") ?
                HTTP_TLS_1_3 : HTTP_TLS_1_2;
  }
  return http_client_new(&o, out);
}

enum http_result relay_http_request(struct http_client *c, const char *method, const char *url,
                                    const char *const *headers, const char *body, size_t len,
                                    struct http_response *resp)
{
  enum http_result result = http_client_request(c, method, url, headers, body, len, resp);
  char *t = resp->kept[API_ERROR_TYPE];
  t[strcspn(t, ":")] = '\0';
  return result;
}

static void text_add(char *out, size_t outsz, const char *s)
{
  size_t o = strlen(out);
  if(!s || !*s)
    return;
  if(o && o + 2 < outsz) {
    out[o++] = ';';
    out[o++] = ' ';
  }
  for(; *s && o + 1 < outsz; s++)
    out[o++] = (*s >= 32 && *s < 127) ? *s : '?';
  out[o] = '\0';
}

void http_error_text(const struct http_response *resp, char *out, size_t outsz)
{
  json_t *root, *v, *e;
  size_t i;
  if(!outsz)
    return;
  out[0] = '\0';
  if(!resp->body || !resp->len)
    return;
  root = json_loadb(resp->body, resp->len, 0, NULL);
  if(!root)
    return;
  v = json_object_get(root, "errors");
  json_array_foreach(v, i, e)
    text_add(out, outsz, json_string_value(json_object_get(e, "message")));
  text_add(out, outsz, json_string_value(json_object_get(root, "message")));
  text_add(out, outsz, json_string_value(json_object_get(root, "Message")));
  v = json_object_get(root, "error");
  if(json_is_object(v))
    text_add(out, outsz, json_string_value(json_object_get(v, "message")));
  json_decref(root);
}

/* ---- answers -> replies: the same for every API --------------------------------------------- */

void http_replies_fill(struct transport_rcpt *rcpts, size_t from, size_t to,
                       const struct smtp_reply *r, long long retry_at_ms)
{
  size_t i;
  for(i = from; i < to; i++)
    if(!rcpts[i].reply.code) {
      rcpts[i].reply = *r;
      rcpts[i].retry_at_ms = retry_at_ms;
    }
}

int http_answer_reply(const char *api, const char *upstream, const struct http_response *resp,
                      int temporary, const char *accepted, struct smtp_reply *r)
{
  char text[300], type[140] = "";
  long st = resp->status;
  http_error_text(resp, text, sizeof(text));
  if(resp->kept[API_ERROR_TYPE][0])
    snprintf(type, sizeof(type), " %s", resp->kept[API_ERROR_TYPE]);
  if(st >= 200 && st < 300)
    smtp_reply_set(r, 250, "2.0.0", "Ok: accepted by %s (HTTP %ld)%s%s", api, st,
                   accepted && *accepted ? ", " : "", accepted ? accepted : "");
  else if(st == 401 || st == 403) {
    /* the key or token, not the recipient: the upstream's mail is held */
    smtp_reply_set(r, 535, "5.7.8", "%s refused the credentials of upstream %s (HTTP %ld%s): %s",
                   api, upstream, st, type, text[0] ? text : "no reason given");
    return TRANSPORT_AUTH_FAILED;
  }
  else if(st == 429 || temporary)
    smtp_reply_set(r, 451, "4.7.0", "%s rate limit or sending pause (HTTP %ld%s)%s%s", api,
                   st, type, text[0] ? ": " : "", text);
  else if(st == 413)
    smtp_reply_set(r, 552, "5.3.4", "%s refused the message as too large (HTTP 413%s)%s%s",
                   api, type, text[0] ? ": " : "", text);
  else if(st == 400)
    smtp_reply_set(r, 550, "5.6.0", "%s refused the message (HTTP 400%s): %s", api, type,
                   text[0] ? text : "no reason given");
  else
    /* 5xx, and what we do not know (404 from a wrong api_url...): nothing says it is final */
    smtp_reply_set(r, 451, "4.3.0", "%s answered HTTP %ld%s%s%s", api, st, type,
                   text[0] ? ": " : "", text);
  return 0;
}

void http_batch_init(struct http_batch *b, const char *api, const char *upstream,
                     const char *base, struct transport_rcpt *rcpts, size_t n,
                     struct smtp_reply *r)
{
  b->api = api;
  b->upstream = upstream;
  b->base = base;
  b->rcpts = rcpts;
  b->n = n;
  b->sent = 0;
  b->result = TRANSPORT_OK;
  b->r = r;
}

int http_batch_answer(struct http_batch *b, size_t at, size_t cnt, int got_answer,
                      const struct http_response *resp, int temporary, const char *accepted)
{
  struct smtp_reply one;
  long long retry_at = 0;
  int auth_failed;
  if(!got_answer) {
    smtp_reply_set(&one, 451, "4.4.1", "cannot reach %s at %s: %s", b->api, b->base,
                   resp->error);
    if(!b->sent) {
      /* nothing went out: the session is suspect, the whole attempt fails */
      *b->r = one;
      b->result = TRANSPORT_FAILED;
      return 0;
    }
    http_replies_fill(b->rcpts, at, b->n, &one, 0);
    return 0;
  }
  auth_failed = http_answer_reply(b->api, b->upstream, resp, temporary, accepted, &one);
  if(auth_failed) {
    if(!b->sent) {
      *b->r = one;
      b->result = TRANSPORT_AUTH_FAILED;
      return 0;
    }
    /* part went out already: the rest waits (not held: those recipients are sent) */
    smtp_reply_set(&one, 451, "4.7.0", "%s refused the credentials (HTTP %ld) part way", b->api,
                   resp->status);
    http_replies_fill(b->rcpts, at, b->n, &one, 0);
    return 0;
  }
  if(resp->status == 429)
    retry_at = resp->retry_at_ms;
  http_replies_fill(b->rcpts, at, at + cnt, &one, retry_at);
  if(one.code >= 200 && one.code < 300) {
    b->sent += cnt;
    return 1;
  }
  if(one.code < 500) {
    /* throttled or down: the rest would fare no better now, and waits for the same reset */
    http_replies_fill(b->rcpts, at + cnt, b->n, &one, retry_at);
    return 0;
  }
  return 1;
}
