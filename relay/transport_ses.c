/* The ses transport: Amazon SES v2 SendEmail with the queued message as Content.Raw.Data
 * (byte for byte, base64) and the envelope as Destination, at most 50 recipients a request,
 * signed with SigV4 by libcurl; credentials from *_file keys or the AWS environment variables. */
#include "relay/relay_int.h"
#include "auth/auth.h"
#include "lib/buf.h"
#include "lib/log.h"
#include <glib.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#define SES_MAX_RCPTS 50
#define SES_MAX_SIZE (40u * 1024u * 1024u)      /* SES v2: the whole message, base64 counted */

struct ses_session {
  struct http_client *http;
  char name[128];
  char base[512];
  char region[64];
};

static void ses_close(void *session)
{
  struct ses_session *s = session;
  if(!s)
    return;
  http_client_free(s->http);
  free(s);
}

/* One credential: its file, read at each open (rotated keys need no reload), else the
 * environment variable. */
static int cred_get(const char *name, const char *path, const char *env, char **out,
                    size_t *len, struct smtp_reply *r)
{
  char err[256] = "";
  const char *v;
  *out = NULL;
  *len = 0;
  if(path) {
    if(auth_secret_read(path, out, len, err, sizeof(err))) {
      smtp_reply_set(r, 454, "4.7.0", "upstream %s: cannot use the credentials file: %s", name,
                     err);
      return -1;
    }
    return 0;
  }
  v = getenv(env);
  if(v && *v) {
    *len = strlen(v);
    *out = str_dup_n(v, *len);
    if(*out)
      return 0;
  }
  smtp_reply_set(r, 454, "4.7.0", "upstream %s: no AWS credentials (set access_key_id_file and "
                 "secret_access_key_file, or %s)", name, env);
  return -1;
}

static int ses_open(const struct config *cfg, const struct cfg_upstream *up, void **session,
                    struct smtp_reply *r)
{
  struct ses_session *s = calloc(1, sizeof(*s));
  char *key = NULL, *secret = NULL, param[128];
  size_t keylen = 0, secretlen = 0, n;
  int result = TRANSPORT_FAILED;

  *session = NULL;
  if(!s || relay_http_new(up, &s->http)) {
    smtp_reply_set(r, 451, "4.3.0", "upstream %s: out of memory", up->name);
    goto out;
  }
  str_copy(s->name, sizeof(s->name), up->name);
  str_copy(s->region, sizeof(s->region), up->region ? up->region :
           getenv("AWS_REGION") ? getenv("AWS_REGION") : "us-east-1");
  if(!config_aws_region_ok(s->region)) {
    smtp_reply_set(r, 451, "4.3.5", "upstream %s: region %s is not an AWS region name", up->name,
                   s->region);
    goto out;
  }
  if(up->api_url)
    str_copy(s->base, sizeof(s->base), up->api_url);
  else
    snprintf(s->base, sizeof(s->base), "https://email.%s.amazonaws.com", s->region);
  n = strlen(s->base);
  while(n && s->base[n - 1] == '/')
    s->base[--n] = '\0';
  if(cred_get(up->name, up->access_key_id_file, "AWS_ACCESS_KEY_ID", &key, &keylen, r) ||
     cred_get(up->name, up->secret_access_key_file, "AWS_SECRET_ACCESS_KEY", &secret,
              &secretlen, r)) {
    result = TRANSPORT_AUTH_FAILED;
    goto out;
  }
  snprintf(param, sizeof(param), "aws:amz:%s:ses", s->region);
  if(http_client_sigv4(s->http, param, key, secret)) {
    smtp_reply_set(r, 451, "4.3.0", "upstream %s: this libcurl cannot sign requests (SigV4)",
                   up->name);
    goto out;
  }
  *session = s;
  s = NULL;
  result = TRANSPORT_OK;
out:
  auth_secret_free(key, keylen);
  auth_secret_free(secret, secretlen);
  ses_close(s);
  return result;
}

/* SES's error types that are the account's state, not the message's: they pass */
static int is_temporary_type(const char *type)
{
  return !strcmp(type, "TooManyRequestsException") || !strcmp(type, "LimitExceededException") ||
         !strcmp(type, "SendingPausedException") || !strcmp(type, "AccountSuspendedException") ||
         !strcmp(type, "ThrottlingException");
}

/* The MessageId of a 2xx answer as "MessageId=..." (printable, capped). */
static void accepted_text(const struct http_response *resp, char *out, size_t outsz)
{
  json_t *root = json_loadb(resp->body ? resp->body : "", resp->len, 0, NULL);
  const char *id = json_string_value(json_object_get(root, "MessageId"));
  char clean[128] = "";
  size_t i, o = 0;
  for(i = 0; id && id[i] && o + 1 < sizeof(clean); i++)
    if(id[i] > 32 && id[i] < 127)
      clean[o++] = id[i];
  clean[o] = '\0';
  snprintf(out, outsz, "MessageId=%s", clean[0] ? clean : "none");
  json_decref(root);
}

/* {"Destination":{"ToAddresses":[...]},"Content":{"Raw":{"Data":B64}},"EmailTags":[...]} */
static char *request_build(const char *b64, const struct transport_rcpt *rcpts, size_t n,
                           const char *id, size_t *len)
{
  json_t *to = json_array(), *req = NULL;
  char *out = NULL;
  size_t i;
  if(!to)
    return NULL;
  for(i = 0; i < n; i++)
    if(json_array_append_new(to, json_string(rcpts[i].rcpt->address)))
      goto out;
  /* the tag lets SES events (through SNS or EventBridge) be matched to the queue entry */
  req = json_pack("{s:{s:O}, s:{s:{s:s}}, s:[{s:s, s:s}]}", "Destination", "ToAddresses", to,
                  "Content", "Raw", "Data", b64, "EmailTags", "Name", "postern_id", "Value", id);
  if(req)
    out = json_dumps(req, JSON_COMPACT);
  if(out)
    *len = strlen(out);
out:
  json_decref(to);
  json_decref(req);
  return out;
}

static int ses_send(void *session, const struct store_msg *m, const char *body, size_t len,
                    struct transport_rcpt *rcpts, size_t n, struct smtp_reply *r)
{
  struct ses_session *s = session;
  struct http_response resp;
  struct smtp_reply one;
  const char *headers[3] = { "Content-Type: application/json", "Accept: application/json", NULL };
  struct http_batch batch;
  char url[600], accepted[160], *b64 = NULL, *json = NULL;
  size_t jsonlen = 0, at;
  int result = TRANSPORT_OK;

  memset(&resp, 0, sizeof(resp));
  if(len / 3 * 4 + 4 > SES_MAX_SIZE) {
    smtp_reply_set(&one, 552, "5.3.4", "message is larger than SES's 40 MB limit (base64 "
                   "counted)");
    http_replies_fill(rcpts, 0, n, &one, 0);
    goto out;
  }
  /* GLib's base64 (GMime's foundation, already linked); the SASL one is sized for AUTH lines */
  b64 = g_base64_encode((const guchar *)body, len);
  if(!b64) {
    smtp_reply_set(r, 451, "4.3.0", "out of memory");
    result = TRANSPORT_FAILED;
    goto out;
  }
  snprintf(url, sizeof(url), "%s/v2/email/outbound-emails", s->base);
  http_batch_init(&batch, "SES", s->name, s->base, rcpts, n, r);
  for(at = 0; at < n; at += SES_MAX_RCPTS) {
    size_t cnt = n - at < SES_MAX_RCPTS ? n - at : SES_MAX_RCPTS;
    int answered;
    free(json);
    json = request_build(b64, rcpts + at, cnt, m->id, &jsonlen);
    if(!json) {
      smtp_reply_set(&one, 451, "4.3.0", "out of memory");
      http_replies_fill(rcpts, at, at + cnt, &one, 0);
      continue;
    }
    http_response_free(&resp);
    answered = !relay_http_request(s->http, "POST", url, headers, json, jsonlen, &resp);
    accepted[0] = '\0';
    if(answered && resp.status >= 200 && resp.status < 300)
      accepted_text(&resp, accepted, sizeof(accepted));
    if(!http_batch_answer(&batch, at, cnt, answered, &resp,
                          answered && is_temporary_type(resp.kept[API_ERROR_TYPE]), accepted))
      break;
  }
  result = batch.result;
out:
  http_response_free(&resp);
  free(json);
  g_free(b64);
  return result;
}

/* What to change for a refusal of GetAccount, by SES's error type. */
static const char *refusal_hint(const char *type)
{
  if(!strcmp(type, "UnrecognizedClientException") || !strcmp(type, "InvalidClientTokenId"))
    return "AWS does not know this access key id: put a current one in access_key_id_file "
           "(IAM > Users > Security credentials), or set AWS_ACCESS_KEY_ID";
  if(!strcmp(type, "SignatureDoesNotMatch") || !strcmp(type, "InvalidSignatureException"))
    return "the secret access key does not belong to the key id: fix secret_access_key_file "
           "(or AWS_SECRET_ACCESS_KEY), and check region";
  if(!strcmp(type, "AccessDeniedException"))
    return "the IAM user may not call SES here: allow ses:SendEmail (and ses:GetAccount for "
           "this check) in its policy, in this region";
  return "check access_key_id_file, secret_access_key_file and region of this [upstream]";
}

/* posternctl check: GetAccount (GET /v2/email/account), signed like a send: the credentials
 * work, sending is enabled, and whether the account is still in the sandbox. */
static int ses_check(const struct config *cfg, const struct cfg_upstream *up,
                     struct relay_check *chk)
{
  struct ses_session *s = NULL;
  struct http_response resp;
  struct smtp_reply r;
  const char *headers[2] = { "Accept: application/json", NULL };
  char url[600], text[300];
  json_t *root = NULL;
  int result;

  memset(&resp, 0, sizeof(resp));
  memset(&r, 0, sizeof(r));
  result = ses_open(cfg, up, (void **)&s, &r);
  if(result) {
    result = relay_check_add(chk, "credentials", 0, "set access_key_id_file and "
                             "secret_access_key_file in this [upstream] (files readable by "
                             "Postern's user only), or AWS_ACCESS_KEY_ID and "
                             "AWS_SECRET_ACCESS_KEY", "%s", r.text);
    goto out;
  }
  snprintf(url, sizeof(url), "%s/v2/email/account", s->base);
  if(relay_http_request(s->http, "GET", url, headers, NULL, 0, &resp)) {
    result = relay_check_add(chk, "request", 0, "check region (or api_url), DNS and that HTTPS "
                             "(443) out is allowed by the firewall or proxy",
                             "cannot reach SES at %s: %s", s->base, resp.error);
    goto out;
  }
  relay_check_add(chk, "request", 1, NULL, "GET %s (GetAccount, region %s): HTTP %ld", url,
                  s->region, resp.status);
  http_error_text(&resp, text, sizeof(text));
  if(resp.status == 401 || resp.status == 403) {
    result = relay_check_add(chk, "credentials", 0, refusal_hint(resp.kept[API_ERROR_TYPE]),
                             "SES refused the credentials (HTTP %ld %s): %s", resp.status,
                             resp.kept[API_ERROR_TYPE], text[0] ? text : "no reason given");
    goto out;
  }
  if(resp.status != 200) {
    result = relay_check_add(chk, "credentials", 0, "a wrong region or api_url answers this "
                             "way", "SES answered HTTP %ld %s%s%s", resp.status,
                             resp.kept[API_ERROR_TYPE], text[0] ? ": " : "", text);
    goto out;
  }
  relay_check_add(chk, "credentials", 1, NULL, "the access key is valid in %s", s->region);
  root = json_loadb(resp.body ? resp.body : "", resp.len, 0, NULL);
  if(!json_is_true(json_object_get(root, "SendingEnabled")))
    result = relay_check_add(chk, "account", 0, "sending is paused for this account in this "
                             "region: see the SES console, Account dashboard (a review after "
                             "bounces or complaints, or a pause by the owner)",
                             "SendingEnabled is false: SES will not send");
  else if(!json_is_true(json_object_get(root, "ProductionAccessEnabled")))
    result = relay_check_add(chk, "account", 1, "request production access in the SES console "
                             "(Account dashboard); until then verify each recipient, or mail to "
                             "others fails with \"Email address is not verified\"",
                             "sending is enabled, but the account is in the SES sandbox: only "
                             "verified identities may receive");
  else
    result = relay_check_add(chk, "account", 1, NULL, "sending is enabled (production access; "
                             "%.0f sent of %.0f in the last 24 hours)",
                             json_number_value(json_object_get(json_object_get(root, "SendQuota"),
                                                               "SentLast24Hours")),
                             json_number_value(json_object_get(json_object_get(root, "SendQuota"),
                                                               "Max24HourSend")));
out:
  json_decref(root);
  http_response_free(&resp);
  ses_close(s);
  return result;
}

static void ses_describe(void *session, char *out, size_t outsz)
{
  struct ses_session *s = session;
  http_url_host(s ? s->base : "ses", out, outsz);
}

const struct transport transport_ses = {
  .type = CFG_UP_SES,
  .delivered_status = RCPT_SENT,
  .open = ses_open,
  .send = ses_send,
  .close = ses_close,
  .describe = ses_describe,
  .check = ses_check,
};
