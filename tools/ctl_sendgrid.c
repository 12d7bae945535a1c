/* posternctl sendgrid setup|check: wires a SendGrid account to this Postern (Inbound Parse to
 * /emailInbound, the signed Event Webhook to /events, its key into event_public_key_file) and
 * says in plain words what is wrong with that wiring, each problem with its fix. */
#include "tools/ctl.h"
#include "auth/auth.h"
#include "relay/relay.h"
#include "tls/tls.h"
#include "lib/buf.h"
#include "lib/dns.h"
#include "lib/log.h"
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sysexits.h>

#define SG_DEFAULT_API "https://api.sendgrid.com"
#define SG_MX_HOST "mx.sendgrid.net"
#define SG_MAX_HOSTS 32

/* The delivery and engagement events Postern applies to outbound records. */
static const char *const sg_events[] = {
  "processed", "delivered", "deferred", "dropped", "bounce", "open", "click", "spam_report",
  "unsubscribe", "group_unsubscribe", "group_resubscribe", NULL
};

/* What the key must be allowed to do: sending, and what setup and check read and change. */
static const struct { const char *scope, *why; } sg_scopes[] = {
  { "mail.send", "sending mail (the sendgrid upstream)" },
  { "user.webhooks.parse.settings.read", "reading the Inbound Parse settings" },
  { "user.webhooks.parse.settings.create", "creating the Inbound Parse setting (setup)" },
  { "user.webhooks.parse.settings.update", "updating the Inbound Parse setting (setup)" },
  { "user.webhooks.event.settings.read", "reading the Event Webhook" },
  { "user.webhooks.event.settings.update", "changing the Event Webhook (setup)" },
  { "whitelabel.read", "reading the sender domains' authentication" },
};

struct sg {
  struct ctl *c;
  struct ctl_report rep;
  struct http_client *hc;
  const char *base;
  char *auth;                 /* "Authorization: Bearer KEY": wiped */
  size_t authlen;
  char *parse_url;            /* public_url/emailInbound with user:password@: a secret */
  size_t parse_urllen;
  char *parse_shown;          /* the same without the password, for messages */
  char *events_url;
  const char *hosts[SG_MAX_HOSTS];   /* the inbound hosts that receive replies */
  size_t nhosts;
  json_t *parse_hold;         /* the answer s->hosts point into */
  char fix_setup[400];        /* "run: posternctl sendgrid setup --inbound-host HOST" */
};


/* ---- helpers ---------------------------------------------------------------------------- */

static int host_ok(const char *h)
{
  size_t i, n = strlen(h);
  if(!n || n > 253 || h[0] == '.' || h[0] == '-')
    return 0;
  for(i = 0; i < n; i++)
    if(!((h[i] >= 'a' && h[i] <= 'z') || (h[i] >= 'A' && h[i] <= 'Z') ||
         (h[i] >= '0' && h[i] <= '9') || h[i] == '-' || h[i] == '.'))
      return 0;
  return 1;
}

/* "scheme://user:password@host/path" -> "scheme://user@host/path": safe to show */
static char *url_shown(const char *url)
{
  const char *p = strstr(url, "://"), *at, *colon;
  struct buf b;
  size_t n;
  if(!p)
    return str_dup_n(url, strlen(url));
  p += 3;
  n = strcspn(p, "/?#");
  at = memchr(p, '@', n);
  if(!at)
    return str_dup_n(url, strlen(url));
  colon = memchr(p, ':', (size_t)(at - p));
  buf_init(&b, strlen(url) + 1);
  if(buf_add(&b, url, (size_t)((colon ? colon : at) - url)) || buf_addstr(&b, at)) {
    buf_free(&b);
    return NULL;
  }
  return buf_steal(&b, &n);
}

static const char *jstr(json_t *o, const char *key)
{
  const char *s = json_string_value(json_object_get(o, key));
  return s ? s : "";
}

/* An answer that is not a success: unchecked, with the API's own words (never the key). */
static void sg_failed(struct sg *s, const char *check, const char *what,
                      const struct http_response *resp)
{
  char why[300] = "";
  if(!resp->status) {
    ctl_report(&s->rep, CTL_UNCHECKED, check,
               "check the network and the upstream's api_url", "%s: no answer from %s: %s",
               what, s->base, resp->error);
    return;
  }
  http_error_text(resp, why, sizeof(why));
  ctl_report(&s->rep, CTL_UNCHECKED, check,
             resp->status == 401 ? "put a valid API key in the upstream's api_key_file" :
             resp->status == 403 ? "give the API key the permission named above" : NULL,
             "%s: SendGrid answered %ld%s%s", what, resp->status, why[0] ? ": " : "", why);
}

/* Builds the URLs this Postern owns from [inbound]; 0, or a usage/config exit code. */
static int sg_urls(struct sg *s)
{
  const struct cfg_inbound *in = &s->c->cfg->inbound;
  char err[256], *pw = NULL, *u = NULL, *p = NULL;
  size_t pwlen = 0;
  const char *rest;
  struct buf b;
  int result = EX_CONFIG;

  if(!in->public_url) {
    fprintf(stderr, "posternctl: sendgrid: [inbound] public_url is not set: it is the address "
            "SendGrid posts to\n");
    return EX_CONFIG;
  }
  s->events_url = ctl_url_join(in->public_url, "/events");
  buf_init(&b, 8192);
  rest = strstr(in->public_url, "://");
  if(!s->events_url || !rest)
    goto out;
  rest += 3;
  if(in->http_user) {
    if(!in->http_password_file) {
      fprintf(stderr, "posternctl: sendgrid: http_user is set without http_password_file\n");
      goto out;
    }
    if(auth_secret_read(in->http_password_file, &pw, &pwlen, err, sizeof(err))) {
      fprintf(stderr, "posternctl: sendgrid: http_password_file: %s\n", err);
      goto out;
    }
    u = curl_easy_escape(NULL, in->http_user, 0);
    p = curl_easy_escape(NULL, pw, (int)pwlen);
    if(!u || !p ||
       buf_add(&b, in->public_url, (size_t)(rest - in->public_url)) ||
       buf_addf(&b, "%s:%s@", u, p) || buf_addstr(&b, rest))
      goto out;
  }
  else if(buf_addstr(&b, in->public_url))
    goto out;
  while(b.len && b.ptr[b.len - 1] == '/')
    b.len--;
  if(buf_addstr(&b, "/emailInbound"))
    goto out;
  s->parse_url = buf_steal(&b, &s->parse_urllen);
  s->parse_shown = s->parse_url ? url_shown(s->parse_url) : NULL;
  if(s->parse_shown)
    result = 0;
out:
  if(result && !s->parse_shown)
    fprintf(stderr, "posternctl: sendgrid: cannot build the webhook URLs\n");
  if(p)
    auth_secret_free(p, strlen(p));
  curl_free(u);
  auth_secret_free(pw, pwlen);
  buf_free(&b);
  return result;
}

/* The [upstream] of type sendgrid (--upstream NAME, else the first one), its key, a client. */
static int sg_open(struct sg *s, const char *upname)
{
  const struct config *cfg = s->c->cfg;
  const struct cfg_upstream *up = NULL;
  char err[256], *key = NULL;
  size_t i, keylen = 0;
  int result = EX_CONFIG;

  for(i = 0; i < cfg->nupstreams && !up; i++)
    if(cfg->upstreams[i].type == CFG_UP_SENDGRID &&
       (!upname || !strcmp(cfg->upstreams[i].name, upname)))
      up = &cfg->upstreams[i];
  if(!up) {
    fprintf(stderr, "posternctl: sendgrid: no [upstream%s%s] with type = sendgrid\n",
            upname ? " " : "", upname ? upname : "");
    return EX_CONFIG;
  }
  if(!up->api_key_file) {
    fprintf(stderr, "posternctl: sendgrid: upstream %s has no api_key_file\n", up->name);
    return EX_CONFIG;
  }
  if(auth_secret_read(up->api_key_file, &key, &keylen, err, sizeof(err))) {
    fprintf(stderr, "posternctl: sendgrid: upstream %s api_key_file: %s\n", up->name, err);
    return EX_CONFIG;
  }
  s->authlen = keylen + 64;
  s->auth = malloc(s->authlen);
  if(!s->auth || relay_http_new(up, &s->hc)) {
    fprintf(stderr, "posternctl: sendgrid: out of memory\n");
    result = EX_OSERR;
    goto out;
  }
  snprintf(s->auth, s->authlen, "Authorization: Bearer %s", key);
  s->base = up->api_url ? up->api_url : SG_DEFAULT_API;
  result = sg_urls(s);
out:
  auth_secret_free(key, keylen);
  return result;
}

static void sg_close(struct sg *s)
{
  auth_secret_free(s->auth, s->authlen);
  auth_secret_free(s->parse_url, s->parse_urllen);
  free(s->parse_shown);
  free(s->events_url);
  json_decref(s->parse_hold);
  http_client_free(s->hc);
}

/* One call; *j is the JSON answer of a 2xx (else NULL, and the failure reported). */
static int sg_call(struct sg *s, const char *check, const char *what, const char *method,
                   const char *path, json_t *body, long *status, json_t **j)
{
  struct http_response resp;
  char *text = NULL;
  int result = -1;
  *j = NULL;
  if(body) {
    text = json_dumps(body, JSON_COMPACT);
    if(!text) {
      ctl_report(&s->rep, CTL_UNCHECKED, check, NULL, "%s: out of memory", what);
      return -1;
    }
  }
  if(ctl_api(s->hc, s->auth, method, s->base, path, text ? "application/json" : NULL, text,
             &resp, j)) {
    sg_failed(s, check, what, &resp);
    goto out;
  }
  if(status)
    *status = resp.status;
  if(resp.status >= 200 && resp.status < 300)
    result = 0;
  else if(!(status && resp.status == 404))
    sg_failed(s, check, what, &resp);
  if(result) {
    json_decref(*j);
    *j = NULL;
  }
out:
  if(text)
    auth_secret_free(text, strlen(text));   /* the parse URL holds the webhook password */
  http_response_free(&resp);
  return result;
}

/* ---- Inbound Parse ------------------------------------------------------------------------ */

static int parse_is_ours(struct sg *s, json_t *set, int raw, int check_raw)
{
  const char *url = jstr(set, "url");
  return strlen(url) == s->parse_urllen && tls_memeq(url, s->parse_url, s->parse_urllen) &&
         (!check_raw || (json_is_true(json_object_get(set, "send_raw")) == raw &&
                         !json_is_true(json_object_get(set, "spam_check"))));
}

static void sg_setup_parse(struct sg *s, const char *host, int raw)
{
  char path[400];
  json_t *cur = NULL, *body = NULL, *ans = NULL;
  long status = 0;
  snprintf(path, sizeof(path), "/v3/user/webhooks/parse/settings/%s", host);
  if(sg_call(s, "inbound-parse", "reading the Inbound Parse setting", "GET", path, NULL, &status,
             &cur) && status != 404)
    goto out;
  if(cur && parse_is_ours(s, cur, raw, 1)) {
    ctl_report(&s->rep, CTL_OK, "inbound-parse", NULL, "%s already posts to %s (%s)", host,
               s->parse_shown, raw ? "raw" : "parsed");
    goto out;
  }
  body = json_pack("{s:s, s:b, s:b}", "url", s->parse_url, "spam_check", 0, "send_raw", raw);
  if(!body)
    goto out;
  if(!cur) {
    json_object_set_new(body, "hostname", json_string(host));
    if(!sg_call(s, "inbound-parse", "creating the Inbound Parse setting", "POST",
                "/v3/user/webhooks/parse/settings", body, NULL, &ans))
      ctl_report(&s->rep, CTL_CHANGED, "inbound-parse", NULL, "created: %s posts to %s (%s)",
                 host, s->parse_shown, raw ? "raw" : "parsed");
  }
  else if(!sg_call(s, "inbound-parse", "updating the Inbound Parse setting", "PATCH", path,
                   body, NULL, &ans))
    ctl_report(&s->rep, CTL_CHANGED, "inbound-parse", NULL, "updated: %s posts to %s (%s)",
               host, s->parse_shown, raw ? "raw" : "parsed");
out:
  if(body) {
    /* the body holds the webhook password */
    json_object_set_new(body, "url", json_string(""));
    json_decref(body);
  }
  json_decref(cur);
  json_decref(ans);
}

/* ---- the Event Webhook ---------------------------------------------------------------------- */

static json_t *event_body(const char *url)
{
  json_t *o = json_pack("{s:b, s:s}", "enabled", 1, "url", url);
  size_t i;
  for(i = 0; o && sg_events[i]; i++)
    json_object_set_new(o, sg_events[i], json_true());
  return o;
}

/* The webhook posting to our /events among /all's, borrowed from all. */
static json_t *event_find(struct sg *s, json_t *all)
{
  json_t *w;
  size_t i;
  json_array_foreach(json_object_get(all, "webhooks"), i, w)
    if(!strcmp(jstr(w, "url"), s->events_url))
      return w;
  return NULL;
}

/* Events we want that w does not send, blank-separated into out ("" when none). */
static void event_missing(json_t *w, char *out, size_t outsz)
{
  size_t i, o = 0;
  out[0] = '\0';
  for(i = 0; sg_events[i]; i++)
    if(!json_is_true(json_object_get(w, sg_events[i])) && o + strlen(sg_events[i]) + 2 < outsz)
      o += (size_t)snprintf(out + o, outsz - o, "%s%s", o ? " " : "", sg_events[i]);
}

/* The key file's content as canonical PEM, or "" when it cannot be read as a key. */
static void key_file_pem(const char *path, char *pem, size_t pemsz)
{
  char text[8192];
  size_t n = 0;
  FILE *f = fopen(path, "r");
  pem[0] = '\0';
  if(!f)
    return;
  n = fread(text, 1, sizeof(text), f);
  fclose(f);
  if(n && n < sizeof(text) && tls_public_key_pem(text, n, pem, pemsz))
    pem[0] = '\0';
}

static void sg_store_key(struct sg *s, const char *key)
{
  const char *path = s->c->cfg->inbound.event_public_key_file;
  char pem[TLS_PUBKEY_PEM_MAX], old[TLS_PUBKEY_PEM_MAX];
  if(tls_public_key_pem(key, strlen(key), pem, sizeof(pem))) {
    ctl_report(&s->rep, CTL_UNCHECKED, "event-key", NULL,
               "the public key SendGrid returned is not an EC P-256 key");
    return;
  }
  key_file_pem(path, old, sizeof(old));
  if(!strcmp(old, pem)) {
    ctl_report(&s->rep, CTL_OK, "event-key", NULL, "%s already holds the webhook's key", path);
    return;
  }
  /* the daemon rereads it on SIGHUP, after it has dropped root: it is its user's file */
  if(oauth2_file_write_owned(path, pem, strlen(pem), 0600, ctl_daemon_user(s->c->cfg))) {
    ctl_report(&s->rep, CTL_UNCHECKED, "event-key", "make its directory writable by this user "
               "(and, as root, check that the configured user exists)", "cannot write %s", path);
    return;
  }
  ctl_report(&s->rep, CTL_CHANGED, "event-key", NULL,
             "wrote the webhook's key to %s (reload postern: kill -HUP)", path);
}

static void sg_setup_events(struct sg *s)
{
  json_t *all = NULL, *w, *body = NULL, *ans = NULL, *signed_ans = NULL;
  char missing[256], path[300];
  const char *id, *key;

  if(sg_call(s, "event-webhook", "reading the Event Webhooks", "GET",
             "/v3/user/webhooks/event/settings/all", NULL, NULL, &all))
    goto out;
  w = event_find(s, all);
  body = event_body(s->events_url);
  if(!body)
    goto out;
  if(!w) {
    json_object_set_new(body, "friendly_name", json_string("Postern"));
    if(sg_call(s, "event-webhook", "creating the Event Webhook", "POST",
               "/v3/user/webhooks/event/settings", body, NULL, &ans))
      goto out;
    w = ans;
    ctl_report(&s->rep, CTL_CHANGED, "event-webhook", NULL, "created: events go to %s",
               s->events_url);
  }
  else {
    event_missing(w, missing, sizeof(missing));
    if(json_is_true(json_object_get(w, "enabled")) && !missing[0])
      ctl_report(&s->rep, CTL_OK, "event-webhook", NULL, "enabled, all events go to %s",
                 s->events_url);
    else {
      snprintf(path, sizeof(path), "/v3/user/webhooks/event/settings/%s", jstr(w, "id"));
      if(!host_ok(jstr(w, "id")) ||
         sg_call(s, "event-webhook", "updating the Event Webhook", "PATCH", path, body, NULL,
                 &ans))
        goto out;
      ctl_report(&s->rep, CTL_CHANGED, "event-webhook", NULL,
                 "updated: enabled, all events go to %s", s->events_url);
      if(json_is_object(ans) && json_object_get(ans, "id"))
        w = ans;
    }
  }
  id = jstr(w, "id");
  key = jstr(w, "public_key");
  if(!host_ok(id)) {
    ctl_report(&s->rep, CTL_UNCHECKED, "event-signature", NULL,
               "SendGrid gave the webhook no usable id");
    goto out;
  }
  if(!key[0]) {
    snprintf(path, sizeof(path), "/v3/user/webhooks/event/settings/signed/%s", id);
    json_decref(body);
    body = json_pack("{s:b}", "enabled", 1);
    if(!body || sg_call(s, "event-signature", "turning the signature on", "PATCH", path, body,
                        NULL, &signed_ans))
      goto out;
    key = jstr(signed_ans, "public_key");
    if(!key[0]) {
      ctl_report(&s->rep, CTL_UNCHECKED, "event-signature", NULL,
                 "SendGrid turned the signature on but returned no public key");
      goto out;
    }
    ctl_report(&s->rep, CTL_CHANGED, "event-signature", NULL, "signature turned on");
  }
  else
    ctl_report(&s->rep, CTL_OK, "event-signature", NULL, "events are signed");
  sg_store_key(s, key);
out:
  json_decref(all);
  json_decref(body);
  json_decref(ans);
  json_decref(signed_ans);
}

/* ---- check ---------------------------------------------------------------------------------- */

static void sg_check_scopes(struct sg *s)
{
  json_t *ans = NULL, *v;
  size_t i, j;
  int found, missing = 0;
  if(sg_call(s, "scopes", "reading the API key's scopes", "GET", "/v3/scopes", NULL, NULL, &ans))
    return;
  for(i = 0; i < sizeof(sg_scopes) / sizeof(sg_scopes[0]); i++) {
    found = 0;
    json_array_foreach(json_object_get(ans, "scopes"), j, v)
      if(json_is_string(v) && !strcmp(json_string_value(v), sg_scopes[i].scope))
        found = 1;
    missing += !found;
    if(!found)
      ctl_report(&s->rep, CTL_FINDING, "scopes",
                 i == 0 ? "in SendGrid, Settings > API Keys: edit the key and give it Mail Send "
                 "(Full Access), or make a new key with it and put it in api_key_file" :
                 "in SendGrid, Settings > API Keys: give the key access to Inbound Parse, "
                 "the Event Webhook (Mail Settings) and Sender Authentication",
                 "the API key lacks %s, needed for %s", sg_scopes[i].scope, sg_scopes[i].why);
  }
  if(!missing)
    ctl_report(&s->rep, CTL_OK, "scopes", NULL, "the API key may send mail and wire webhooks");
  json_decref(ans);
}

/* MX records of host: 1 when all point to SendGrid, 0 when not (found says what), -1 when the
 * lookup failed (err says why). */
static int mx_lookup(const char *host, char *found, size_t foundsz, char *err, size_t errsz)
{
  struct dns_rr rr[DNS_RR_MAX];
  size_t n, i, o = 0;
  int ours = 0, others = 0;

  found[0] = '\0';
  if(dns_query(host, DNS_MX, rr, DNS_RR_MAX, &n, err, errsz))
    return -1;
  for(i = 0; i < n; i++) {
    if(!strcasecmp(rr[i].name, SG_MX_HOST))
      ours++;
    else
      others++;
    if(o + strlen(rr[i].name) + 3 < foundsz)
      o += (size_t)snprintf(found + o, foundsz - o, "%s%s", o ? ", " : "", rr[i].name);
  }
  if(!o)
    str_copy(found, foundsz, !strcmp(err, "no such name") ? err : "no MX record");
  return ours && !others;
}

static void sg_check_mx(struct sg *s, const char *host)
{
  char found[512], err[256], fix[700];
  int r = mx_lookup(host, found, sizeof(found), err, sizeof(err));
  if(r < 0)
    ctl_report(&s->rep, CTL_UNCHECKED, "mx", "check this machine's resolver (/etc/resolv.conf)",
               "%s: %s", host, err);
  else if(r)
    ctl_report(&s->rep, CTL_OK, "mx", NULL, "%s: MX %s", host, found);
  else {
    snprintf(fix, sizeof(fix), "publish \"%s. MX 10 " SG_MX_HOST ".\" and remove any other MX "
             "record of %s", host, host);
    ctl_report(&s->rep, CTL_FINDING, "mx", fix,
               "%s: MX is %s, not " SG_MX_HOST ": replies to it never reach Inbound Parse",
               host, found);
  }
}

static void sg_check_parse(struct sg *s, const char *only)
{
  json_t *ans = NULL, *set;
  size_t i;
  char *shown;
  const char *host, *url;
  int seen = 0;

  snprintf(s->fix_setup, sizeof(s->fix_setup), "run: posternctl sendgrid setup "
           "--inbound-host %s", only ? only : "HOST");
  if(sg_call(s, "inbound-parse", "reading the Inbound Parse settings", "GET",
             "/v3/user/webhooks/parse/settings", NULL, NULL, &ans))
    return;
  json_array_foreach(json_object_get(ans, "result"), i, set) {
    host = jstr(set, "hostname");
    if(only && strcasecmp(host, only))
      continue;
    seen++;
    if(s->nhosts < SG_MAX_HOSTS && host_ok(host))
      s->hosts[s->nhosts++] = host;
    url = jstr(set, "url");
    shown = url_shown(url);
    if(parse_is_ours(s, set, 0, 0))
      ctl_report(&s->rep, CTL_OK, "inbound-parse", NULL, "%s posts to %s", host,
                 s->parse_shown);
    else if(shown && !strcmp(shown, s->parse_shown))
      ctl_report(&s->rep, CTL_FINDING, "inbound-parse", s->fix_setup,
                 "%s posts to this Postern with other credentials than http_user and "
                 "http_password_file: every reply is refused with 401", host);
    else
      ctl_report(&s->rep, CTL_FINDING, "inbound-parse", s->fix_setup,
                 "%s posts to %s, not to this Postern (%s): replies go elsewhere", host,
                 shown ? shown : "?", s->parse_shown);
    free(shown);
  }
  if(!seen)
    ctl_report(&s->rep, CTL_FINDING, "inbound-parse", s->fix_setup,
               "no Inbound Parse setting%s%s: SendGrid does not pass replies on",
               only ? " for " : "", only ? only : "");
  if(only && !seen)
    s->hosts[s->nhosts++] = only;   /* its MX still decides where replies go */
  if(!only && s->nhosts)
    snprintf(s->fix_setup, sizeof(s->fix_setup), "run: posternctl sendgrid setup "
             "--inbound-host %s", s->hosts[0]);
  for(i = 0; i < s->nhosts; i++)
    sg_check_mx(s, s->hosts[i]);
  /* the host names point into ans: kept as long as s->hosts is used */
  json_decref(s->parse_hold);
  s->parse_hold = ans;
}

/* Does the sender domain d receive replies: an inbound host, an [inbound] domain, the domain of
 * reply_address? */
static int receives_replies(struct sg *s, const char *d)
{
  const struct cfg_inbound *in = &s->c->cfg->inbound;
  const char *p, *at;
  size_t i, n = strlen(d);
  for(i = 0; i < s->nhosts; i++)
    if(!strcasecmp(s->hosts[i], d))
      return 1;
  for(p = in->domains; p && *p; p += strcspn(p, " \t,")) {
    p += strspn(p, " \t,");
    if(strcspn(p, " \t,") == n && !strncasecmp(p, d, n))
      return 1;
  }
  at = in->reply_address ? strrchr(in->reply_address, '@') : NULL;
  return at && !strcasecmp(at + 1, d);
}

/* A receiving host below the authenticated domain d (reply.clinic.test under clinic.test), or
 * NULL. */
static const char *host_below(struct sg *s, const char *d)
{
  size_t i, n = strlen(d), h;
  for(i = 0; i < s->nhosts; i++) {
    h = strlen(s->hosts[i]);
    if(h > n + 1 && s->hosts[i][h - n - 1] == '.' && !strcasecmp(s->hosts[i] + h - n, d))
      return s->hosts[i];
  }
  return NULL;
}

static void sg_check_domains(struct sg *s)
{
  json_t *ans = NULL, *d;
  size_t i;
  char fix[600];
  const char *name;
  if(sg_call(s, "domains", "reading the authenticated domains", "GET", "/v3/whitelabel/domains",
             NULL, NULL, &ans))
    return;
  if(!json_array_size(ans))
    ctl_report(&s->rep, CTL_FINDING, "domains",
               "authenticate the sending domain: SendGrid, Settings > Sender Authentication",
               "no authenticated sender domain: mail goes out unauthenticated (and to spam)");
  json_array_foreach(ans, i, d) {
    name = jstr(d, "domain");
    if(!json_is_true(json_object_get(d, "valid")))
      ctl_report(&s->rep, CTL_FINDING, "domains",
                 "publish the DNS records SendGrid lists for it (Settings > Sender "
                 "Authentication) and press Verify",
                 "%s is not validated: its DNS records are missing or wrong", name);
    else
      ctl_report(&s->rep, CTL_OK, "domains", NULL, "%s is authenticated and valid", name);
    if(json_is_true(json_object_get(d, "automatic_security")) && receives_replies(s, name)) {
      snprintf(fix, sizeof(fix), "remove this domain authentication (Settings > Sender "
               "Authentication, or DELETE /v3/whitelabel/domains/%lld) and authenticate %s "
               "again with Automated Security OFF, then publish the records it lists and keep "
               "the MX record to " SG_MX_HOST, json_integer_value(json_object_get(d, "id")),
               name);
      ctl_report(&s->rep, CTL_FINDING, "domains", fix,
                 "!!! %s RECEIVES REPLIES BUT WAS AUTHENTICATED WITH AUTOMATED SECURITY ON: "
                 "SendGrid then owns its DNS through CNAMEs, so outbound mail and opens work "
                 "while replies never arrive", name);
    }
    /* Automated Security puts three CNAMEs on names of SendGrid's own below the domain
     * (emNNNN., s1._domainkey., s2._domainkey.); Inbound Parse on a host below it needs
     * only that host's MX to mx.sendgrid.net and an authenticated parent: nothing to fix */
    else if(json_is_true(json_object_get(d, "automatic_security")) && host_below(s, name))
      ctl_report(&s->rep, CTL_OK, "domains", NULL, "%s has Automated Security on; its CNAMEs "
                 "(%s., s1._domainkey., s2._domainkey.) leave %s alone, whose MX record alone "
                 "brings replies to Inbound Parse", name,
                 *jstr(d, "subdomain") ? jstr(d, "subdomain") : "emNNNN",
                 host_below(s, name));
  }
  json_decref(ans);
}

static void sg_check_events(struct sg *s)
{
  const char *path = s->c->cfg->inbound.event_public_key_file;
  json_t *all = NULL, *w;
  char missing[256], have[TLS_PUBKEY_PEM_MAX], want[TLS_PUBKEY_PEM_MAX];
  const char *key;
  if(sg_call(s, "event-webhook", "reading the Event Webhooks", "GET",
             "/v3/user/webhooks/event/settings/all", NULL, NULL, &all))
    return;
  w = event_find(s, all);
  if(!w) {
    ctl_report(&s->rep, CTL_FINDING, "event-webhook", s->fix_setup,
               "no Event Webhook posts to %s: deliveries, opens and bounces are not recorded",
               s->events_url);
    goto out;
  }
  event_missing(w, missing, sizeof(missing));
  if(!json_is_true(json_object_get(w, "enabled")))
    ctl_report(&s->rep, CTL_FINDING, "event-webhook", s->fix_setup,
               "the Event Webhook to %s is disabled", s->events_url);
  else if(missing[0])
    ctl_report(&s->rep, CTL_FINDING, "event-webhook", s->fix_setup,
               "the Event Webhook does not send: %s", missing);
  else
    ctl_report(&s->rep, CTL_OK, "event-webhook", NULL, "enabled, all events go to %s",
               s->events_url);
  key = jstr(w, "public_key");
  if(!key[0]) {
    ctl_report(&s->rep, CTL_FINDING, "event-signature", s->fix_setup,
               "the Event Webhook is not signed: Postern cannot tell SendGrid's events from "
               "forged ones (and refuses them when event_public_key_file is set)");
    goto out;
  }
  ctl_report(&s->rep, CTL_OK, "event-signature", NULL, "events are signed");
  if(!path) {
    ctl_report(&s->rep, CTL_FINDING, "event-key",
               "set [inbound] event_public_key_file, then run posternctl sendgrid setup",
               "event_public_key_file is not set: signed events are not verified");
    goto out;
  }
  key_file_pem(path, have, sizeof(have));
  if(tls_public_key_pem(key, strlen(key), want, sizeof(want)))
    ctl_report(&s->rep, CTL_UNCHECKED, "event-key", NULL,
               "the public key SendGrid returned is not an EC P-256 key");
  else if(strcmp(have, want))
    ctl_report(&s->rep, CTL_FINDING, "event-key", s->fix_setup,
               "%s %s the webhook's key: every signed event is refused (403)", path,
               have[0] ? "does not hold" : "cannot be read as");
  else
    ctl_report(&s->rep, CTL_OK, "event-key", NULL, "%s holds the webhook's key", path);
out:
  json_decref(all);
}

int ctl_sendgrid(struct ctl *c)
{
  struct sg s;
  const char *host = NULL, *upname = NULL;
  int raw = 0, setup, result;

  memset(&s, 0, sizeof(s));
  if(ctl_opt(c, "--inbound-host", &host) < 0 || ctl_opt(c, "--upstream", &upname) < 0)
    return ctl_usage_error("an option needs a value", NULL);
  raw = ctl_opt(c, "--raw", NULL) > 0;
  if(ctl_no_options(c))
    return EX_USAGE;
  if(c->nargs != 2 || (strcmp(c->args[1], "setup") && strcmp(c->args[1], "check")))
    return ctl_usage_error("sendgrid takes setup or check", c->nargs > 1 ? c->args[1] : NULL);
  setup = !strcmp(c->args[1], "setup");
  if(setup && !host)
    return ctl_usage_error("sendgrid setup needs --inbound-host HOST", NULL);
  if(host && !host_ok(host))
    return ctl_usage_error("not a host name", host);
  result = ctl_config(c);
  if(result)
    return result;
  if(setup && !c->cfg->inbound.event_public_key_file) {
    fprintf(stderr, "posternctl: sendgrid setup: [inbound] event_public_key_file is not set: "
            "it is where the webhook's key goes\n");
    return EX_CONFIG;
  }
  s.c = c;
  result = sg_open(&s, upname);
  if(result)
    goto out;
  ctl_report_init(&s.rep, c->json);
  if(setup) {
    sg_setup_parse(&s, host, raw);
    sg_setup_events(&s);
  }
  else {
    sg_check_scopes(&s);
    sg_check_parse(&s, host);
    sg_check_domains(&s);
    sg_check_events(&s);
  }
  result = ctl_report_finish(&s.rep);
out:
  sg_close(&s);
  return result;
}
