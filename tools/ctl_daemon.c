/* posternctl flush, reload and stats: the commands that talk to the running daemon through its
 * control socket (data_dir/control.sock), and the client of that socket that the queue
 * commands use to wake the scheduler. When the daemon is down, what can be read or done in
 * the store is, and the output says the daemon did not answer. */
#include "tools/ctl.h"
#include "lib/buf.h"
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/un.h>

#define CONTROL_SOCKET_NAME "control.sock"   /* daemon/daemon.h says the same */
#define CONTROL_REPLY_MAX 4096
#define CONTROL_TIMEOUT_MS 30000             /* a reload reads certificates: give it time */

static long long mono_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* One exchange with the daemon. 0 with *reply set; CTL_DAEMON_DOWN when nothing listens;
 * EX_* after a message on stderr otherwise. c->cfg must be loaded. */
int ctl_control_call(struct ctl *c, const char *cmd, json_t **reply)
{
  struct sockaddr_un sa;
  char buf[CONTROL_REPLY_MAX + 1];
  size_t got = 0;
  long long deadline = mono_ms() + CONTROL_TIMEOUT_MS;
  int fd = -1, n, result = EX_PROTOCOL;
  json_error_t jerr;

  *reply = NULL;
  memset(&sa, 0, sizeof(sa));
  sa.sun_family = AF_UNIX;
  n = snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/%s", c->cfg->data_dir,
               CONTROL_SOCKET_NAME);
  if(n < 0 || (size_t)n >= sizeof(sa.sun_path))
    return CTL_DAEMON_DOWN;     /* the daemon could not have bound it either */
  fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if(fd < 0) {
    fprintf(stderr, "posternctl: socket: %s\n", strerror(errno));
    return EX_OSERR;
  }
  if(connect(fd, (struct sockaddr *)&sa, sizeof(sa))) {
    int e = errno;
    close(fd);
    if(e == ENOENT || e == ECONNREFUSED)
      return CTL_DAEMON_DOWN;
    fprintf(stderr, "posternctl: cannot reach postern at %s: %s\n", sa.sun_path, strerror(e));
    return e == EACCES ? EX_NOPERM : EX_UNAVAILABLE;
  }
  if(dprintf(fd, "%s\n", cmd) < 0) {
    fprintf(stderr, "posternctl: writing to %s: %s\n", sa.sun_path, strerror(errno));
    goto out;
  }
  while(got < CONTROL_REPLY_MAX && !memchr(buf, '\n', got)) {
    struct pollfd p = { .fd = fd, .events = POLLIN };
    long long left = deadline - mono_ms();
    ssize_t r;
    if(left <= 0 || poll(&p, 1, (int)left) <= 0) {
      fprintf(stderr, "posternctl: postern did not answer on %s\n", sa.sun_path);
      result = EX_TEMPFAIL;
      goto out;
    }
    r = read(fd, buf + got, CONTROL_REPLY_MAX - got);
    if(r <= 0)
      break;
    got += (size_t)r;
  }
  buf[got] = '\0';
  *reply = json_loadb(buf, got, JSON_DISABLE_EOF_CHECK, &jerr);
  if(!*reply || !json_is_object(*reply)) {
    fprintf(stderr, "posternctl: postern's answer on %s is not understood\n", sa.sun_path);
    json_decref(*reply);
    *reply = NULL;
    goto out;
  }
  result = 0;
out:
  close(fd);
  return result;
}

/* After a change to the queue: the daemon's scheduler looks now instead of at its next timer.
 * A daemon that is down will see the change when it starts. */
void ctl_wake_daemon(struct ctl *c)
{
  json_t *reply = NULL;
  if(!ctl_control_call(c, "kick", &reply))
    json_decref(reply);
}

static int daemon_down(const struct ctl *c, const char *what)
{
  fprintf(stderr, "posternctl: postern is not running (nothing answers on %s/%s)%s%s\n",
          c->cfg->data_dir, CONTROL_SOCKET_NAME, what ? "; " : "", what ? what : "");
  return EX_UNAVAILABLE;
}

/* A reply {"ok": false, "error": ...} becomes a message and an exit code. */
static int reply_failed(json_t *reply, const char *cmd)
{
  const char *why;
  if(json_is_true(json_object_get(reply, "ok")))
    return 0;
  why = json_string_value(json_object_get(reply, "error"));
  fprintf(stderr, "posternctl: %s failed: %s\n", cmd, why ? why : "no reason given");
  return EX_SOFTWARE;
}

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
    result = reply_failed(reply, "flush");
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
    return daemon_down(c, "they will be tried when it starts");
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
    return daemon_down(c, NULL);
  if(result)
    return result;
  result = reply_failed(reply, "reload");
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
    return daemon_down(c, NULL);
  if(result == CTL_DAEMON_DOWN) {
    daemon_down(c, "counts read from the store");
    return ctl_queue_stats(c, 1);
  }
  else if(result)
    return result;
  else if((result = reply_failed(o, "stats"))) {
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
