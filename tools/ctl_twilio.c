/* posternctl twilio check|setup NUMBER: is the number's SMS webhook this Postern's /sms (or,
 * when the number is bound to a TwiML App, the App's, which Twilio then uses instead), does its
 * Messaging Service (if any) defer to that webhook, is twilio_auth_token_file the account's
 * primary Auth Token (the one Twilio signs webhooks with); setup sets the webhook (and, with
 * --fix-service, the service; with --detach-app, unbinds the App from the number). */
#include "tools/ctl.h"
#include "auth/auth.h"
#include "relay/relay.h"
#include "lib/buf.h"
#include "lib/limits.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>

struct tw {
  struct ctl *c;
  struct ctl_report rep;
  struct http_client *hc;
  const struct cfg_inbound *in;
  char *sms_url;
  const char *number;
  char *token;                /* twilio_auth_token_file's token: compared, never printed */
  size_t tokenlen;
};

static const char *jstr(json_t *o, const char *key)
{
  const char *s = json_string_value(json_object_get(o, key));
  return s ? s : "";
}

/* "+" then 6 to 15 digits (E.164) */
static int number_ok(const char *n)
{
  size_t i, len = strlen(n);
  if(len < 7 || len > 16 || n[0] != '+')
    return 0;
  for(i = 1; i < len; i++)
    if(n[i] < '0' || n[i] > '9')
      return 0;
  return 1;
}

/* Twilio's SIDs: two letters and 32 hex digits; checked before they go into a path */
static int sid_ok(const char *s, const char *prefix)
{
  size_t i;
  if(strlen(s) != 34 || strncmp(s, prefix, 2))
    return 0;
  for(i = 2; i < 34; i++)
    if(!strchr("0123456789abcdefABCDEF", s[i]))
      return 0;
  return 1;
}

static void tw_failed(struct tw *t, const char *check, const char *what,
                      const struct http_response *resp)
{
  char why[300] = "";
  if(!resp->status) {
    ctl_report(&t->rep, CTL_UNCHECKED, check,
               "check the network, twilio_api_url and twilio_messaging_url",
               "%s: no answer: %s", what, resp->error);
    return;
  }
  http_error_text(resp, why, sizeof(why));
  if(resp->status == 401)
    ctl_report(&t->rep, CTL_UNCHECKED, "auth-token",
               "copy the Auth Token of the account (Twilio Console > Account > API keys & "
               "tokens) into twilio_auth_token_file, and check twilio_account_sid",
               "%s: Twilio refused twilio_account_sid with the token in %s (401): it is not the "
               "token the account signs with, so /sms would refuse Twilio's posts too", what,
               t->in->twilio_auth_token_file);
  else
    ctl_report(&t->rep, CTL_UNCHECKED, check, NULL, "%s: Twilio answered %ld%s%s", what,
               resp->status, why[0] ? ": " : "", why);
}

/* One call; *j is the JSON answer of a 2xx, else NULL and the failure reported. */
static int tw_call(struct tw *t, const char *check, const char *what, const char *method,
                   const char *base, const char *path, const char *form, json_t **j)
{
  struct http_response resp;
  int result = -1;
  if(ctl_api(t->hc, NULL, method, base, path,
             form ? "application/x-www-form-urlencoded" : NULL, form, &resp, j))
    tw_failed(t, check, what, &resp);
  else if(resp.status < 200 || resp.status >= 300)
    tw_failed(t, check, what, &resp);
  else
    result = 0;
  if(result) {
    json_decref(*j);
    *j = NULL;
  }
  http_response_free(&resp);
  return result;
}

static int tw_open(struct tw *t)
{
  struct http_opts o;
  char err[256];
  const char *missing = !t->in->public_url ? "public_url" :
                        !t->in->twilio_account_sid ? "twilio_account_sid" :
                        !t->in->twilio_auth_token_file ? "twilio_auth_token_file" : NULL;
  if(missing) {
    fprintf(stderr, "posternctl: twilio: [inbound] %s is not set\n", missing);
    return EX_CONFIG;
  }
  if(!sid_ok(t->in->twilio_account_sid, "AC")) {
    fprintf(stderr, "posternctl: twilio: twilio_account_sid is not an account SID (AC...)\n");
    return EX_CONFIG;
  }
  if(auth_secret_read(t->in->twilio_auth_token_file, &t->token, &t->tokenlen, err, sizeof(err))) {
    fprintf(stderr, "posternctl: twilio: twilio_auth_token_file: %s\n", err);
    return EX_CONFIG;
  }
  memset(&o, 0, sizeof(o));
  o.max_body = LIM_HTTP_BODY;
  t->sms_url = ctl_url_join(t->in->public_url, "/sms");
  if(!t->sms_url || http_client_new(&o, &t->hc) ||
     http_client_basic(t->hc, t->in->twilio_account_sid, t->token)) {
    fprintf(stderr, "posternctl: twilio: out of memory\n");
    return EX_OSERR;
  }
  return 0;
}

/* "Name=value&..." of the NULL-terminated name, value pairs kv, form-encoded, malloc'd */
static char *form_of(const char *const *kv)
{
  char *r = NULL;
  struct buf b;
  size_t n, i;
  buf_init(&b, 4096);
  for(i = 0; kv[i] && kv[i + 1]; i += 2)
    if(http_form_add(&b, kv[i], kv[i + 1]))
      goto out;
  r = buf_steal(&b, &n);
out:
  buf_free(&b);
  return r;
}

/* Twilio signs webhooks with the account's primary Auth Token only: a secondary token (or one
 * of another account the API also accepts) passes every API call while /sms refuses every
 * post. The account resource shows the primary as auth_token. */
static void tw_token(struct tw *t)
{
  char path[200];
  json_t *ans = NULL;
  const char *primary;
  size_t n, i;
  unsigned char diff = 0;
  snprintf(path, sizeof(path), "/2010-04-01/Accounts/%s.json", t->in->twilio_account_sid);
  if(tw_call(t, "auth-token", "reading the account", "GET", t->in->twilio_api_url, path, NULL,
             &ans))
    return;
  primary = json_string_value(json_object_get(ans, "auth_token"));
  if(!primary || !*primary)
    ctl_report(&t->rep, CTL_UNCHECKED, "auth-token", "check twilio_account_sid: it must be the "
               "account itself (AC...), not a subaccount seen from its parent",
               "Twilio's account resource shows no auth_token: whether the token in %s is the "
               "primary one, which signs webhooks, cannot be told", t->in->twilio_auth_token_file);
  else {
    n = strlen(primary);
    diff = n != t->tokenlen;
    for(i = 0; i < n && i < t->tokenlen; i++)        /* no early exit on a secret */
      diff |= (unsigned char)(primary[i] ^ t->token[i]);
    if(!diff)
      ctl_report(&t->rep, CTL_OK, "auth-token", NULL, "the token in %s is the account's primary "
                 "Auth Token: the one Twilio signs webhooks with", t->in->twilio_auth_token_file);
    else
      ctl_report(&t->rep, CTL_FINDING, "auth-token", "put the PRIMARY Auth Token in "
                 "twilio_auth_token_file (Twilio Console > Account > API keys & tokens > Auth "
                 "tokens; after a rotation, promote the secondary to primary first), then reload "
                 "the daemon (SIGHUP)", "the API accepts the token in %s, but it is not the "
                 "account's primary Auth Token (a secondary one?): Twilio signs webhooks with "
                 "the primary only, so /sms would answer 403 to every post",
                 t->in->twilio_auth_token_file);
  }
  json_decref(ans);
}

static int webhook_right(struct tw *t, const char *url, const char *method)
{
  return !strcmp(url, t->sms_url) && (!method[0] || !strcasecmp(method, "POST"));
}

/* One POST of a form to a resource of the account: 0 done, else reported. */
static int tw_set(struct tw *t, const char *check, const char *what, const char *path,
                  const char *const *kv)
{
  char *form = form_of(kv);
  json_t *ans = NULL;
  int result = -1;
  if(!form)
    ctl_report(&t->rep, CTL_UNCHECKED, check, NULL, "out of memory");
  else
    result = tw_call(t, check, what, "POST", t->in->twilio_api_url, path, form, &ans);
  free(form);
  json_decref(ans);
  return result;
}

/* The number is bound to a TwiML App: Twilio posts its incoming SMS to the App's SmsUrl and
 * ignores the number's own, so the App is what is judged and set. */
static void tw_app(struct tw *t, const char *app, int fix)
{
  char path[300];
  json_t *ans = NULL;
  const char *url, *method, *name;
  const char *kv[] = { "SmsUrl", t->sms_url, "SmsMethod", "POST", NULL };
  if(!sid_ok(app, "AP")) {
    ctl_report(&t->rep, CTL_UNCHECKED, "sms-url", NULL, "%s is bound to a TwiML App whose sid "
               "Twilio gave in a form Postern does not know", t->number);
    return;
  }
  snprintf(path, sizeof(path), "/2010-04-01/Accounts/%s/Applications/%s.json",
           t->in->twilio_account_sid, app);
  if(tw_call(t, "sms-url", "reading the number's TwiML App", "GET", t->in->twilio_api_url, path,
             NULL, &ans))
    return;
  url = jstr(ans, "sms_url");
  method = jstr(ans, "sms_method");
  name = jstr(ans, "friendly_name");
  if(webhook_right(t, url, method))
    ctl_report(&t->rep, CTL_OK, "sms-url", NULL, "%s uses TwiML App %s (%s), which sends "
               "incoming SMS to %s", t->number, app, name, t->sms_url);
  else if(!fix)
    ctl_report(&t->rep, CTL_FINDING, "sms-url", "run: posternctl twilio setup NUMBER (sets the "
               "App's SMS URL: every number using the App then posts here), or posternctl twilio "
               "setup NUMBER --detach-app (the number alone uses its own webhook)",
               "%s uses TwiML App %s (%s): Twilio sends its incoming SMS to the App's SMS URL, "
               "%s%s%s, not to this Postern's %s (the number's own SMS URL is ignored)",
               t->number, app, name, url[0] ? url : "none",
               method[0] && strcasecmp(method, "POST") ? " with " : "",
               method[0] && strcasecmp(method, "POST") ? method : "", t->sms_url);
  else if(!tw_set(t, "sms-url", "setting the TwiML App's SMS URL", path, kv))
    ctl_report(&t->rep, CTL_CHANGED, "sms-url", NULL, "TwiML App %s (%s) now sends incoming SMS "
               "to %s, for %s and every other number using it", app, name, t->sms_url,
               t->number);
  json_decref(ans);
}

/* The number's webhook: checked, and set when fix. */
static void tw_number(struct tw *t, json_t *num, int fix, int detach_app)
{
  char path[300];
  const char *url = jstr(num, "sms_url"), *method = jstr(num, "sms_method");
  const char *sid = jstr(num, "sid"), *app = jstr(num, "sms_application_sid");
  const char *kv[] = { "SmsUrl", t->sms_url, "SmsMethod", "POST", NULL, NULL, NULL };
  if(app[0] && !detach_app) {
    tw_app(t, app, fix);
    return;
  }
  if(!app[0] && webhook_right(t, url, method)) {
    ctl_report(&t->rep, CTL_OK, "sms-url", NULL, "%s sends incoming SMS to %s", t->number,
               t->sms_url);
    return;
  }
  if(!fix) {
    ctl_report(&t->rep, CTL_FINDING, "sms-url", "run: posternctl twilio setup NUMBER",
               "%s sends incoming SMS to %s%s%s, not to this Postern's %s", t->number,
               url[0] ? url : "no URL", strcmp(method, "POST") && method[0] ? " with " : "",
               strcmp(method, "POST") && method[0] ? method : "", t->sms_url);
    return;
  }
  if(!sid_ok(sid, "PN")) {
    ctl_report(&t->rep, CTL_UNCHECKED, "sms-url", NULL, "Twilio gave the number no usable sid");
    return;
  }
  snprintf(path, sizeof(path), "/2010-04-01/Accounts/%s/IncomingPhoneNumbers/%s.json",
           t->in->twilio_account_sid, sid);
  if(app[0]) {
    /* an empty SmsApplicationSid unbinds the App: the number's own webhook applies again */
    kv[4] = "SmsApplicationSid";
    kv[5] = "";
    if(!tw_set(t, "sms-url", "detaching the TwiML App and setting the SMS URL", path, kv))
      ctl_report(&t->rep, CTL_CHANGED, "sms-url", NULL, "%s no longer uses TwiML App %s and "
                 "sends incoming SMS to %s", t->number, app, t->sms_url);
  }
  else if(!tw_set(t, "sms-url", "setting the SMS URL", path, kv))
    ctl_report(&t->rep, CTL_CHANGED, "sms-url", NULL, "%s now sends incoming SMS to %s",
               t->number, t->sms_url);
}

/* Is the number (its PN sid) in this service's number pool? 1 yes, 0 no, -1 unchecked */
static int service_has(struct tw *t, const char *svc, const char *pn)
{
  char path[200];
  json_t *ans = NULL, *p;
  size_t i;
  int found = 0;
  snprintf(path, sizeof(path), "/v1/Services/%s/PhoneNumbers?PageSize=1000", svc);
  if(tw_call(t, "messaging-service", "reading a Messaging Service's numbers", "GET",
             t->in->twilio_messaging_url, path, NULL, &ans))
    return -1;
  json_array_foreach(json_object_get(ans, "phone_numbers"), i, p)
    if(!strcmp(jstr(p, "sid"), pn) || !strcmp(jstr(p, "phone_number"), t->number))
      found = 1;
  json_decref(ans);
  return found;
}

static void tw_services(struct tw *t, const char *pn, int fix, int fix_service)
{
  char path[200], why[600];
  json_t *ans = NULL, *s, *set = NULL;
  size_t i;
  int in_any = 0, r;
  const char *sid, *name, *req;

  if(tw_call(t, "messaging-service", "reading the Messaging Services", "GET",
             t->in->twilio_messaging_url, "/v1/Services?PageSize=1000", NULL, &ans))
    return;
  json_array_foreach(json_object_get(ans, "services"), i, s) {
    sid = jstr(s, "sid");
    if(!sid_ok(sid, "MG"))
      continue;
    r = service_has(t, sid, pn);
    if(r < 0)
      break;
    if(!r)
      continue;
    in_any = 1;
    name = jstr(s, "friendly_name");
    if(json_is_true(json_object_get(s, "use_inbound_webhook_on_number"))) {
      ctl_report(&t->rep, CTL_OK, "messaging-service", NULL,
                 "%s is in Messaging Service %s (%s), which defers to the number's webhook",
                 t->number, sid, name);
      continue;
    }
    req = jstr(s, "inbound_request_url");
    snprintf(why, sizeof(why), "%s is in Messaging Service %s (%s), whose integration does not "
             "defer to the number's webhook: Twilio sends replies to %s%s, never to %s: this "
             "is why replies get lost", t->number, sid, name, req[0] ? "the service's " : "",
             req[0] ? req : "nowhere (the service drops them)", t->sms_url);
    if(!fix_service) {
      ctl_report(&t->rep, CTL_FINDING, "messaging-service",
                 fix ? "run again with --fix-service, or in the Twilio Console: Messaging > "
                 "Services > the service > Integration > Incoming Messages: \"Defer to "
                 "sender's webhook\"" :
                 "run: posternctl twilio setup NUMBER --fix-service (or in the Twilio Console: "
                 "Messaging > Services > the service > Integration > Incoming Messages: "
                 "\"Defer to sender's webhook\")", "%s", why);
      continue;
    }
    snprintf(path, sizeof(path), "/v1/Services/%s", sid);
    if(!tw_call(t, "messaging-service", "setting the service's inbound behaviour", "POST",
                t->in->twilio_messaging_url, path, "UseInboundWebhookOnNumber=true", &set))
      ctl_report(&t->rep, CTL_CHANGED, "messaging-service", NULL,
                 "Messaging Service %s (%s) now defers incoming messages to the number's "
                 "webhook", sid, name);
    json_decref(set);
    set = NULL;
  }
  if(!in_any && !t->rep.unchecked)
    ctl_report(&t->rep, CTL_OK, "messaging-service", NULL,
               "%s is in no Messaging Service: its own webhook decides", t->number);
  json_decref(ans);
}

int ctl_twilio(struct ctl *c)
{
  struct tw t;
  char path[300];
  json_t *ans = NULL, *nums, *num;
  int fix, fix_service, detach_app, result;

  memset(&t, 0, sizeof(t));
  fix_service = ctl_opt(c, "--fix-service", NULL) > 0;
  detach_app = ctl_opt(c, "--detach-app", NULL) > 0;
  if(ctl_no_options(c))
    return EX_USAGE;
  if(c->nargs != 3 || (strcmp(c->args[1], "setup") && strcmp(c->args[1], "check")))
    return ctl_usage_error("twilio takes check NUMBER or setup NUMBER",
                           c->nargs > 1 ? c->args[1] : NULL);
  fix = !strcmp(c->args[1], "setup");
  if(fix_service && !fix)
    return ctl_usage_error("--fix-service goes with setup", NULL);
  if(detach_app && !fix)
    return ctl_usage_error("--detach-app goes with setup", NULL);
  t.number = c->args[2];
  if(!number_ok(t.number))
    return ctl_usage_error("not a phone number in E.164 form (+15551234567)", t.number);
  result = ctl_config(c);
  if(result)
    return result;
  t.c = c;
  t.in = &c->cfg->inbound;
  result = tw_open(&t);
  if(result)
    goto out;
  ctl_report_init(&t.rep, c->json);
  /* the number is digits after a "+", which a query string needs as %2B */
  snprintf(path, sizeof(path), "/2010-04-01/Accounts/%s/IncomingPhoneNumbers.json?PhoneNumber="
           "%%2B%s", t.in->twilio_account_sid, t.number + 1);
  if(!tw_call(&t, "sms-url", "looking the number up", "GET", t.in->twilio_api_url, path, NULL,
              &ans)) {
    tw_token(&t);
    nums = json_object_get(ans, "incoming_phone_numbers");
    num = json_array_get(nums, 0);
    if(!num)
      ctl_report(&t.rep, CTL_FINDING, "sms-url",
                 "check the number, or twilio_account_sid (a subaccount has its own)",
                 "%s is not a number of account %s", t.number, t.in->twilio_account_sid);
    else {
      tw_number(&t, num, fix, detach_app);
      tw_services(&t, jstr(num, "sid"), fix, fix_service);
    }
  }
  result = ctl_report_finish(&t.rep);
out:
  json_decref(ans);
  free(t.sms_url);
  auth_secret_free(t.token, t.tokenlen);
  http_client_free(t.hc);
  return result;
}
