/* posternctl stats: live from the daemon (ctl_control.c), or the queue's counts read from the
 * store when it is down (ctl_queue.c); the output says which. */
#include "tools/ctl.h"
#include <stdio.h>
#include <sysexits.h>

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
    return ctl_queue_stats(c, 1);
  }
  else if(result)
    return result;
  else if((result = ctl_control_failed(o, "stats"))) {
    json_decref(o);
    return result;
  }
  json_object_del(o, "ok");
  json_object_set_new(o, "live", json_true());
  if(c->json)
    return ctl_print_json_one(o);
  {
    const char *key;
    json_t *v;
    char age[64];
    ctl_age_human(json_integer_value(json_object_get(o, "uptime")), age, sizeof(age));
    printf("uptime:                %s\n", age);
    printf("sessions:              %lld\n",
           (long long)json_integer_value(json_object_get(o, "sessions")));
    printf("deliveries in flight:  %lld\n",
           (long long)json_integer_value(json_object_get(o, "deliveries_in_flight")));
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
