/* The control socket: how posternctl talks to the running daemon. A UNIX stream socket in
 * data_dir, owner-only; each client sends one command line and gets one JSON line back. One
 * thread serves the clients one after another, each under a short deadline, so a silent or
 * hostile client delays other control clients by at most that deadline and never the mail. */
#include "daemon/daemon.h"
#include "lib/limits.h"
#include "lib/conn.h"
#include "lib/buf.h"
#include "lib/log.h"
#include <jansson.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#define CONTROL_CLIENT_MS 5000        /* a client's whole exchange, reload included */

struct control {
  struct control_env env;
  int fd;
  int stop_pipe[2];
  pthread_t thread;
  int started;
  long long started_ms;               /* wall clock, for uptime */
  char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
};

static json_t *reply_error(const char *why)
{
  json_t *o = json_object();
  if(o) {
    json_object_set_new(o, "ok", json_false());
    json_object_set_new(o, "error", json_string(why));
  }
  return o;
}

static json_t *reply_ok(void)
{
  json_t *o = json_object();
  if(o)
    json_object_set_new(o, "ok", json_true());
  return o;
}

static json_t *cmd_flush(struct control *c)
{
  size_t n = 0;
  json_t *o;
  if(store_flush(c->env.st, &n))
    return reply_error("the store refused the flush");
  relay_kick(c->env.relay);
  log_info("control: flush: %zu deferred recipient(s) due now", n);
  o = reply_ok();
  if(o)
    json_object_set_new(o, "flushed", json_integer((json_int_t)n));
  return o;
}

static json_t *cmd_reload(struct control *c)
{
  char err[256] = "";
  if(c->env.reload(c->env.reload_arg, err, sizeof(err)))
    return reply_error(err[0] ? err : "reload failed; the running configuration stays");
  return reply_ok();
}

static json_t *cmd_stats(struct control *c)
{
  struct store_counts sc;
  json_t *o, *q;
  int i;
  if(store_counts(c->env.st, &sc))
    return reply_error("cannot read the queue");
  o = reply_ok();
  q = json_object();
  if(!o || !q) {
    json_decref(o);
    json_decref(q);
    return NULL;
  }
  json_object_set_new(o, "uptime", json_integer((time_real_ms() - c->started_ms) / 1000));
  json_object_set_new(o, "sessions", json_integer((json_int_t)daemon_sessions(c->env.d)));
  json_object_set_new(o, "deliveries_in_flight",
                      json_integer((json_int_t)relay_inflight(c->env.relay)));
  /* results the store refused: deliveries pause while there are any */
  json_object_set_new(o, "results_unrecorded",
                      json_integer((json_int_t)relay_unrecorded(c->env.relay)));
  for(i = 0; i <= RCPT_CAPTURED; i++)
    json_object_set_new(q, rcpt_status_name((enum rcpt_status)i), json_integer(sc.rcpts[i]));
  json_object_set_new(o, "by_state", q);   /* the names of posternctl queue stats */
  json_object_set_new(o, "messages", json_integer(sc.messages));
  json_object_set_new(o, "bytes", json_integer(sc.bytes));
  json_object_set_new(o, "oldest_age", sc.oldest_unfinished_ms < 0 ? json_null() :
                      json_integer((time_real_ms() - sc.oldest_unfinished_ms) / 1000));
  return o;
}

/* One client: one line, one reply. Anything but a known command is answered, not obeyed. */
static void serve_one(struct control *c, int fd)
{
  struct conn conn;
  struct buf line;
  unsigned flags = 0;
  json_t *reply = NULL;
  char *text = NULL;
  int rc;

  conn_init(&conn, fd, CONTROL_CLIENT_MS);
  conn.deadline_ms = time_mono_ms() + CONTROL_CLIENT_MS;
  conn.wake_fd = c->stop_pipe[0];
  buf_init(&line, LIM_CONTROL_LINE);
  rc = conn_read_line(&conn, &line, LIM_CONTROL_LINE, &flags);
  if(rc == CONN_TOO_LONG)
    reply = reply_error("command line too long");
  else if(rc != CONN_OK)
    goto out;                   /* gone, silent or stopping: nobody to answer */
  else if((flags & CONN_LINE_NUL) || (flags & CONN_LINE_BARE_CR))
    reply = reply_error("bad bytes in the command line");
  else {
    const char *cmd = line.ptr ? line.ptr : "";
    if(!strcmp(cmd, "flush"))
      reply = cmd_flush(c);
    else if(!strcmp(cmd, "reload"))
      reply = cmd_reload(c);
    else if(!strcmp(cmd, "stats"))
      reply = cmd_stats(c);
    else if(!strcmp(cmd, "kick")) {
      /* posternctl changed the queue (retry, release): the scheduler looks now */
      relay_kick(c->env.relay);
      reply = reply_ok();
    }
    else
      reply = reply_error("unknown command (flush, reload, stats, kick)");
  }
  text = reply ? json_dumps(reply, JSON_COMPACT) : NULL;
  if(text) {
    conn_write(&conn, text, strlen(text));
    conn_write(&conn, "\n", 1);
  }
  else
    conn_write(&conn, "{\"ok\":false,\"error\":\"out of memory\"}\n", 36);
  conn_flush(&conn);
out:
  free(text);
  json_decref(reply);
  buf_free(&line);
  conn_free(&conn);             /* closes fd */
}

static void *control_main(void *arg)
{
  struct control *c = arg;
  struct pollfd pfd[2];
  for(;;) {
    int fd;
    pfd[0].fd = c->fd;
    pfd[0].events = POLLIN;
    pfd[1].fd = c->stop_pipe[0];
    pfd[1].events = POLLIN;
    if(poll(pfd, 2, -1) < 0) {
      if(errno == EINTR)
        continue;
      log_error("control socket: poll: %s; posternctl flush/reload/stats stop working until a "
                "restart (systemctl restart postern)", strerror(errno));
      break;
    }
    if(pfd[1].revents)
      break;
    if(!(pfd[0].revents & POLLIN))
      continue;
    fd = accept4(c->fd, NULL, NULL, SOCK_CLOEXEC);
    if(fd < 0) {
      if(errno != EINTR && errno != EAGAIN && errno != ECONNABORTED)
        log_warn("control socket: accept: %s (raise the open-file limit, LimitNOFILE= or "
                 "ulimit -n, if it repeats)", strerror(errno));
      continue;
    }
    serve_one(c, fd);
  }
  return NULL;
}

/* Is a daemon answering on this socket already? Then it is not ours to remove. */
static int socket_alive(const struct sockaddr_un *sa)
{
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), alive;
  if(fd < 0)
    return 0;
  alive = !connect(fd, (const struct sockaddr *)sa, sizeof(*sa));
  close(fd);
  return alive;
}

int control_start(const char *data_dir, const struct control_env *env, struct control **out)
{
  struct control *c = calloc(1, sizeof(*c));
  struct sockaddr_un sa;
  int n, result = -1;

  *out = NULL;
  if(!c)
    return -1;
  c->fd = -1;
  c->stop_pipe[0] = c->stop_pipe[1] = -1;
  c->env = *env;
  c->started_ms = time_real_ms();
  n = snprintf(c->path, sizeof(c->path), "%s/%s", data_dir, CONTROL_SOCKET_NAME);
  if(n < 0 || (size_t)n >= sizeof(c->path)) {
    log_error("control socket: data_dir %s is too long for a socket path (at most %zu bytes; "
              "choose a shorter data_dir in [postern])",
              data_dir, sizeof(c->path) - sizeof(CONTROL_SOCKET_NAME) - 1);
    goto out;
  }
  memset(&sa, 0, sizeof(sa));
  sa.sun_family = AF_UNIX;
  memcpy(sa.sun_path, c->path, (size_t)n + 1);
  if(socket_alive(&sa)) {
    log_error("control socket %s: another postern answers there (same data_dir? give each "
              "daemon its own data_dir in [postern], or stop the other one)", c->path);
    goto out;
  }
  {
    struct stat old;            /* left by a daemon that did not stop cleanly */
    if(!lstat(c->path, &old) && !S_ISSOCK(old.st_mode)) {
      log_error("control socket: %s exists and is not a socket; remove it", c->path);
      goto out;
    }
    unlink(c->path);
  }
  c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if(c->fd < 0 || pipe2(c->stop_pipe, O_CLOEXEC)) {
    log_error("control socket: %s (short of file descriptors or memory: check ulimit -n)",
              strerror(errno));
    goto out;
  }
  /* owner-only from the moment it exists: Linux makes the file with the socket's own mode
   * (less the umask), so it is set on the descriptor first. Neither umask(), which every
   * other thread would share meanwhile, nor chmod() by name, which follows a symlink put
   * there after bind(). */
  if(fchmod(c->fd, 0600) || bind(c->fd, (struct sockaddr *)&sa, sizeof(sa)) ||
     listen(c->fd, 16)) {
    log_error("control socket %s: %s (data_dir must be writable by Postern's user)", c->path,
              strerror(errno));
    goto out;
  }
  if(pthread_create(&c->thread, NULL, control_main, c)) {
    log_error("control socket: cannot start its thread (check ulimit -u / TasksMax= and free "
              "memory)");
    goto out;
  }
  c->started = 1;
  result = 0;
out:
  if(result)
    control_stop(c);
  else
    *out = c;
  return result;
}

void control_stop(struct control *c)
{
  if(!c)
    return;
  if(c->started) {
    if(write(c->stop_pipe[1], "x", 1) < 0)
      log_warn("control socket: stop pipe: %s; if postern does not exit, stop it with SIGKILL",
               strerror(errno));
    pthread_join(c->thread, NULL);
  }
  if(c->fd >= 0) {
    close(c->fd);
    unlink(c->path);
  }
  if(c->stop_pipe[0] >= 0)
    close(c->stop_pipe[0]);
  if(c->stop_pipe[1] >= 0)
    close(c->stop_pipe[1]);
  free(c);
}
