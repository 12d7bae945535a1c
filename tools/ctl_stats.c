/* posternctl stats: live from the daemon (ctl_control.c), or the same queue figures read from
 * the store's kept totals when it is down; the output says which. */
#include "tools/ctl.h"
#include <stdio.h>
#include <sysexits.h>
#include <time.h>

/* With the daemon down: the totals the store keeps and the oldest waiting message, in the
 * daemon's words; like the daemon's, their cost does not grow with the mail stored (`queue
 * stats` is the one that reads every message, by upstream). */
static int stats_from_store(struct ctl *c, json_t **out)
{
  struct store_counts sc;
  json_t *o, *q;
  int i, result;
  *out = NULL;
  if(ctl_store(c, STORE_OPEN_READONLY))
    return EX_TEMPFAIL;
  result = store_counts(c->st, &sc);
  if(result)
    return ctl_store_failed("reading the queue's counts", result);
  o = json_object();
  q = json_object();
  if(!o || !q) {
    json_decref(o);
    json_decref(q);
    return EX_OSERR;
  }
  for(i = 0; i <= RCPT_CAPTURED; i++)
    json_object_set_new(q, rcpt_status_name((enum rcpt_status)i), json_integer(sc.rcpts[i]));
  json_object_set_new(o, "by_state", q);
  json_object_set_new(o, "messages", json_integer(sc.messages));
  json_object_set_new(o, "bytes", json_integer(sc.bytes));
  json_object_set_new(o, "oldest_age", sc.oldest_unfinished_ms < 0 ? json_null() :
                      json_integer(((long long)time(NULL) * 1000 - sc.oldest_unfinished_ms) /
                                   1000));
  *out = o;
  return 0;
}

/* stats: live from the daemon, or queue stats read from the store when it is down (and --live
 * was not asked for); "live" says which. */
int ctl_stats(struct ctl *c)
{
  json_t *o = NULL;
  int result, want_live = ctl_opt(c, "--live", NULL) == 1;
  if(ctl_no_options(c))
    return EX_USAGE;
  if(c->nargs > 1)
    return ctl_usage_error("stats takes no argument", c->args[1]);
  result = ctl_config(c);
  if(result)
    return result;
  result = ctl_control_call(c, "stats", &o);
  if(result == CTL_DAEMON_DOWN && want_live)
    return ctl_control_down(c, NULL);
  if(result == CTL_DAEMON_DOWN) {
    ctl_control_down(c, "counts read from the store");
    result = stats_from_store(c, &o);
    if(result)
      return result;
    json_object_set_new(o, "live", json_false());
  }
  else if(result)
    return result;
  else if((result = ctl_control_failed(o, "stats"))) {
    json_decref(o);
    return result;
  }
  else {
    json_object_del(o, "ok");
    json_object_set_new(o, "live", json_true());
  }
  if(c->json)
    return ctl_print_json_one(o);
  {
    const char *key;
    json_t *v;
    char age[64];
    if(json_is_true(json_object_get(o, "live"))) {
      ctl_age_human(json_integer_value(json_object_get(o, "uptime")), age, sizeof(age));
      printf("uptime:                %s\n", age);
      printf("sessions:              %lld\n",
             (long long)json_integer_value(json_object_get(o, "sessions")));
      printf("deliveries in flight:  %lld\n",
             (long long)json_integer_value(json_object_get(o, "deliveries_in_flight")));
    }
    if(json_integer_value(json_object_get(o, "results_unrecorded")) > 0)
      printf("results unrecorded:    %lld (the store refuses writes; deliveries pause)\n",
             (long long)json_integer_value(json_object_get(o, "results_unrecorded")));
    printf("messages:              %lld (%lld Kbytes)\n",
           (long long)json_integer_value(json_object_get(o, "messages")),
           ((long long)json_integer_value(json_object_get(o, "bytes")) + 1023) / 1024);
    json_object_foreach(json_object_get(o, "by_state"), key, v)
      printf("recipients %-10s %lld\n", key, (long long)json_integer_value(v));
    v = json_object_get(o, "oldest_age");
    if(json_is_integer(v)) {
      ctl_age_human(json_integer_value(v), age, sizeof(age));
      printf("oldest unfinished:     %s\n", age);
    }
  }
  json_decref(o);
  return 0;
}
