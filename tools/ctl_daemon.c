/* posternctl flush and reload: commands the running daemon carries out, asked through its
 * control socket (ctl_control.c). */
#include "tools/ctl.h"
#include "lib/buf.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>

int ctl_flush(struct ctl *c)
{
  json_t *reply = NULL, *o;
  size_t n = 0;
  int result, live;
  if(ctl_no_options(c))
    return EX_USAGE;
  if(c->nargs > (size_t)(1 + !strcmp(c->args[0], "queue")))
    return ctl_usage_error("flush takes no argument", c->args[c->nargs - 1]);
  result = ctl_config(c);
  if(result)
    return result;
  result = ctl_control_call(c, "flush", &reply);
  live = result != CTL_DAEMON_DOWN;
  if(live && result)
    return result;
  if(live) {
    result = ctl_control_failed(reply, "flush");
    n = (size_t)json_integer_value(json_object_get(reply, "flushed"));
    json_decref(reply);
    if(result)
      return result;
  }
  else {
    /* nothing to wake: make the mail due, so it goes as soon as the daemon starts */
    if(ctl_store(c, 0))
      return EX_TEMPFAIL;
    result = store_flush(c->st, &n);
    if(result)
      return ctl_store_failed("flush", result);
  }
  if(c->json) {
    o = json_object();
    if(o) {
      json_object_set_new(o, "flushed", json_integer((json_int_t)n));
      json_object_set_new(o, "live", json_boolean(live));
    }
    result = ctl_print_json_one(o);
  }
  else
    printf("%zu deferred recipient(s) due now\n", n);
  if(!live)
    return ctl_control_down(c, "they will be tried when it starts");
  return result;
}

int ctl_reload(struct ctl *c)
{
  json_t *reply = NULL;
  int result;
  if(ctl_no_options(c))
    return EX_USAGE;
  if(c->nargs > 1)
    return ctl_usage_error("reload takes no argument", c->args[1]);
  result = ctl_config(c);     /* a configuration with problems is refused here, with lines */
  if(result)
    return result;
  result = ctl_control_call(c, "reload", &reply);
  if(result == CTL_DAEMON_DOWN)
    return ctl_control_down(c, NULL);
  if(result)
    return result;
  result = ctl_control_failed(reply, "reload");
  json_decref(reply);
  if(!result && !c->json)
    puts("postern reloaded its configuration");
  else if(!result) {
    json_t *o = json_object();
    if(o)
      json_object_set_new(o, "reloaded", json_true());
    result = ctl_print_json_one(o);
  }
  return result;
}
