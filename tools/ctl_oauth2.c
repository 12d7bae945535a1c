/* posternctl oauth2: login NAME (the device code flow: shows the code, waits, polls) and status
 * NAME [--json]. The token engine (auth/oauth2.c) does the HTTP and keeps the tokens; what a
 * person reads is made here. */
#include "tools/ctl.h"
#include "auth/auth.h"
#include "lib/conn.h"
#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <sysexits.h>
#include <time.h>
#include <unistd.h>

static int login(const struct config *cfg, const char *name, FILE *out, char *err, size_t errsz)
{
  struct oauth2_device dev;
  char stored[4096];
  int got_refresh = 0, result;
  long long interval;

  result = oauth2_device_start(cfg, name, &dev, err, errsz);
  if(result)
    return result;
  fprintf(out, "To authorise Postern for [oauth2 %s], open\n\n    %s\n\nand enter the code\n\n"
          "    %s\n\nWaiting for the approval...\n", name, dev.verification_uri, dev.user_code);
  fflush(out);
  interval = dev.interval_s;
  for(;;) {
    if(time_real_ms() > dev.expires_at_ms) {
      snprintf(err, errsz, "the code expired before it was approved; run the login again");
      result = OAUTH2_REAUTH;
      break;
    }
    sleep((unsigned)interval);
    result = oauth2_device_poll(cfg, name, &dev, stored, sizeof(stored), &got_refresh, err,
                                errsz);
    if(result == OAUTH2_PENDING)
      continue;
    if(result == OAUTH2_SLOW_DOWN) {
      interval += 5;
      continue;
    }
    break;
  }
  if(!result)
    fprintf(out, "Authorised. The tokens are stored in %s%s.\n", stored,
            got_refresh ? "" : " (the endpoint gave no refresh token: ask for offline_access)");
  oauth2_device_free(&dev);
  return result;
}

static void when_words(long long at_s, char *out, size_t outsz)
{
  time_t t = (time_t)at_s;
  struct tm tm;
  char stamp[64];
  long long d = at_s - time_real_ms() / 1000;
  gmtime_r(&t, &tm);
  strftime(stamp, sizeof(stamp), "%Y-%m-%d %H:%M:%S UTC", &tm);
  if(d >= 0)
    snprintf(out, outsz, "%s (in %lld min %lld s)", stamp, d / 60, d % 60);
  else
    snprintf(out, outsz, "%s (%lld min %lld s ago)", stamp, -d / 60, -d % 60);
}

static json_t *iso_time(long long at_s)
{
  time_t t = (time_t)at_s;
  struct tm tm;
  char stamp[40];
  if(!at_s || !gmtime_r(&t, &tm) || !strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%SZ", &tm))
    return json_null();
  return json_string(stamp);
}

/* What the state word means, for people. */
static const char *state_sentence(const char *state)
{
  if(!state)
    return "the daemon has not used this identity yet";
  if(!strcmp(state, "ok"))
    return "an access token is at hand and refreshed before it expires";
  if(!strcmp(state, "retrying"))
    return "the token endpoint cannot be reached or is failing; retrying with backoff, mail "
           "waits (deferred)";
  if(!strcmp(state, "reauthorize"))
    return "the token endpoint refused the grant; mail for upstreams using it is held until a "
           "token is obtained";
  return "no access token yet";
}

/* json: one object in an array (posternctl's --json convention). */
static int status_print(const struct config *cfg, const char *name, int json, FILE *out,
                        char *err, size_t errsz)
{
  struct oauth2_status st;
  char when[128];
  json_t *o = NULL, *arr = NULL;
  const char *state, *last;
  int result = -1;

  if(oauth2_status_get(cfg, name, &st, err, errsz))
    return -1;
  state = st.state[0] ? st.state : NULL;
  last = st.last_error[0] ? st.last_error : NULL;
  if(json) {
    o = json_object();
    arr = json_array();
    if(!o || !arr) {
      snprintf(err, errsz, "out of memory");
      goto out;
    }
    json_object_set_new(o, "name", json_string(name));
    json_object_set_new(o, "state", json_string(state ? state : "unknown"));
    json_object_set_new(o, "state_text", json_string(state_sentence(state)));
    json_object_set_new(o, "flow", st.flow ? json_string(st.flow) : json_null());
    json_object_set_new(o, "provider", st.provider ? json_string(st.provider) : json_null());
    json_object_set_new(o, "cloud", json_string(st.cloud));
    json_object_set_new(o, "token_endpoint",
                        st.token_endpoint[0] ? json_string(st.token_endpoint) : json_null());
    json_object_set_new(o, "scope", st.has_scope ? json_string(st.scope) : json_null());
    json_object_set_new(o, "expires_at", iso_time(st.expires_at));
    json_object_set_new(o, "expires_in_s", st.expires_at ?
                        json_integer(st.expires_at - time_real_ms() / 1000) : json_null());
    json_object_set_new(o, "last_refresh", iso_time(st.last_refresh));
    json_object_set_new(o, "next_refresh", iso_time(st.refresh_due > 0 ? st.refresh_due : 0));
    json_object_set_new(o, "has_refresh_token", json_boolean(st.has_refresh_token));
    json_object_set_new(o, "mail_held", json_boolean(state && !strcmp(state, "reauthorize")));
    json_object_set_new(o, "last_error", last ? json_string(last) : json_null());
    json_object_set_new(o, "token_file", json_string(st.token_file));
    json_array_append(arr, o);
    json_dumpf(arr, out, JSON_INDENT(2));
    fputc('\n', out);
    result = 0;
    goto out;
  }
  fprintf(out, "oauth2 %s: state=%s\n  %s\n", name, state ? state : "unknown",
          state_sentence(state));
  if(st.have) {
    if(st.expires_at) {
      when_words(st.expires_at, when, sizeof(when));
      fprintf(out, "  access token expires: %s\n", when);
    }
    else
      fprintf(out, "  access token: none\n");
    if(st.last_refresh) {
      when_words(st.last_refresh, when, sizeof(when));
      fprintf(out, "  last refresh attempt: %s\n", when);
    }
    if(st.refresh_due > 0) {
      when_words(st.refresh_due, when, sizeof(when));
      fprintf(out, "  next refresh: %s\n", when);
    }
    fprintf(out, "  refresh token stored: %s\n", st.has_refresh_token ? "yes" : "no");
    fprintf(out, "  last error: %s\n", last ? last : "none");
  }
  else
    fprintf(out, "  (no %s)\n", st.status_file);
  if(st.token_endpoint[0])
    fprintf(out, "  token endpoint: %s\n", st.token_endpoint);
  fprintf(out, "  token file: %s%s\n", st.token_file,
          !st.have && access(st.token_file, F_OK) ? " (none: run `posternctl oauth2 login` for "
                                                    "delegated flows)" : "");
  result = 0;
out:
  json_decref(o);
  json_decref(arr);
  return result;
}

int ctl_oauth2(struct ctl *c)
{
  char err[512] = "";
  int problems, result;
  if(ctl_no_options(c))
    return EX_USAGE;
  if(c->nargs != 3 || (strcmp(c->args[1], "login") && strcmp(c->args[1], "status")))
    return ctl_usage_error("oauth2 takes login NAME or status NAME", c->nargs > 1 ? c->args[1] : NULL);
  problems = ctl_config(c);
  if(problems)
    return problems;
  if(!strcmp(c->args[1], "status")) {
    if(status_print(c->cfg, c->args[2], c->json, stdout, err, sizeof(err))) {
      fprintf(stderr, "posternctl: %s\n", err);
      return EXIT_NOTFOUND;
    }
    return 0;
  }
  result = login(c->cfg, c->args[2], stdout, err, sizeof(err));
  if(result) {
    fprintf(stderr, "posternctl: oauth2 login %s: %s\n", c->args[2], err);
    return result == OAUTH2_TRANSIENT ? EX_TEMPFAIL : EX_NOPERM;
  }
  return 0;
}
