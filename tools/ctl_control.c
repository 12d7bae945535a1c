/* The client of the daemon's control socket (data_dir/control.sock): one exchange, the wake-up
 * the queue commands send after a change, and the messages for a daemon that is down or says
 * no. A leaf: it calls nothing else in tools/. */
#include "tools/ctl.h"
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
  char buf[LIM_CONTROL_REPLY + 1];
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
  while(got < LIM_CONTROL_REPLY && !memchr(buf, '\n', got)) {
    struct pollfd p = { .fd = fd, .events = POLLIN };
    long long left = deadline - mono_ms();
    ssize_t r;
    if(left <= 0 || poll(&p, 1, (int)left) <= 0) {
      fprintf(stderr, "posternctl: postern did not answer on %s\n", sa.sun_path);
      result = EX_TEMPFAIL;
      goto out;
    }
    r = read(fd, buf + got, LIM_CONTROL_REPLY - got);
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

int ctl_control_down(const struct ctl *c, const char *what)
{
  fprintf(stderr, "posternctl: postern is not running (nothing answers on %s/%s)%s%s\n",
          c->cfg->data_dir, CONTROL_SOCKET_NAME, what ? "; " : "", what ? what : "");
  return EX_UNAVAILABLE;
}

/* A reply {"ok": false, "error": ...} becomes a message and an exit code. */
int ctl_control_failed(json_t *reply, const char *cmd)
{
  const char *why;
  if(json_is_true(json_object_get(reply, "ok")))
    return 0;
  why = json_string_value(json_object_get(reply, "error"));
  fprintf(stderr, "posternctl: %s failed: %s\n", cmd, why ? why : "no reason given");
  return EX_SOFTWARE;
}
