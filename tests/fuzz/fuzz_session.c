/* Fuzz target for the server engine: the input is everything a client sends in one session.
 * It runs through smtp_server_run over a socketpair, a helper thread writing the bytes and
 * draining the replies, with a policy that accepts everything and throws messages away. */
#include "smtp/smtp.h"
#include "lib/conn.h"
#include "lib/log.h"
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct client {
  int fd;
  const uint8_t *p;
  size_t n;
};

/* Writes the session and reads whatever comes back, at the same time, so neither side can
 * fill its socket buffer and wait for the other. */
static void *client_run(void *arg)
{
  struct client *cl = arg;
  size_t off = 0;
  int wr_open = 1;
  char sink[8192];
  if(!cl->n) {
    shutdown(cl->fd, SHUT_WR);
    wr_open = 0;
  }
  for(;;) {
    struct pollfd pfd = { cl->fd, (short)(POLLIN | (wr_open ? POLLOUT : 0)), 0 };
    if(poll(&pfd, 1, 10000) <= 0)
      abort();                          /* the engine hung: that is a finding */
    if(pfd.revents & (POLLIN | POLLHUP | POLLERR)) {
      ssize_t r = recv(cl->fd, sink, sizeof(sink), MSG_DONTWAIT);
      if(r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR))
        break;
    }
    if(wr_open && (pfd.revents & POLLOUT)) {
      ssize_t w = send(cl->fd, cl->p + off, cl->n - off, MSG_DONTWAIT | MSG_NOSIGNAL);
      if(w > 0)
        off += (size_t)w;
      else if(w < 0 && errno != EAGAIN && errno != EINTR)
        off = cl->n;                    /* the server hung up early */
      if(off >= cl->n) {
        shutdown(cl->fd, SHUT_WR);
        wr_open = 0;
      }
    }
  }
  return NULL;
}

static int accept_all(void *ctx, const struct smtp_session_info *s,
                      const struct smtp_path_params *from, struct smtp_reply *r)
{
  return 0;
}

static void discard(void *ctx, const struct smtp_session_info *s,
                    const struct smtp_envelope *env, const char *msg, size_t len,
                    struct smtp_reply *r)
{
  /* touch every byte so sanitizers see the whole message */
  volatile unsigned char x = 0;
  size_t i;
  for(i = 0; i < len; i++)
    x ^= (unsigned char)msg[i];
  (void)x;
  if(env->nrcpts == 0 || !env->id[0])
    abort();
  smtp_reply_set(r, 250, "2.0.0", "Ok: queued as %s", env->id);
}

static const struct smtp_policy fuzz_policy = { NULL, accept_all, NULL, discard };

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  static int logged;
  static volatile int stopping;
  int sv[2];
  pthread_t t;
  struct client cl;
  struct conn c;
  struct smtp_server_cfg cfg;
  if(!logged) {
    /* errors only would be nicer; until lib/log has levels, run libFuzzer with
     * -close_fd_mask=2 to keep the session log lines off the terminal */
    log_open("postern-fuzz", 1, 0);
    logged = 1;
  }
  if(socketpair(AF_UNIX, SOCK_STREAM, 0, sv))
    return 0;
  memset(&cfg, 0, sizeof(cfg));
  cfg.hostname = "fuzz.test";
  cfg.listener = "fuzz";
  cfg.max_message_size = 512;       /* small limits reach the limit paths quickly */
  cfg.max_recipients = 4;
  cfg.max_errors = 8;
  cfg.idle_ms = 2000;
  cfg.session_ms = 8000;
  cfg.add_missing_headers = 1;
  cfg.stopping = &stopping;
  cl.fd = sv[1];
  cl.p = data;
  cl.n = size;
  if(pthread_create(&t, NULL, client_run, &cl)) {
    close(sv[0]);
    close(sv[1]);
    return 0;
  }
  conn_init(&c, sv[0], 2000);
  smtp_server_run(&c, &cfg, &fuzz_policy, NULL);
  conn_free(&c);
  pthread_join(t, NULL);
  close(sv[1]);
  return 0;
}
