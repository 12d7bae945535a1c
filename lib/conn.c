/* Line and block I/O over a socket, or over the stream functions tls/ installs, with an idle
 * timeout on every wait and an absolute session deadline. The fd is made non-blocking so no
 * read or write can outlive its timeout; we poll() in the direction the stream asks for. */
#include "lib/conn.h"
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Replies collect in wbuf until a flush; past this much a write flushes on its own. */
#define CONN_WBUF_MAX (64u * 1024u)

long long time_mono_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

long long time_real_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void peer_fill(struct conn *c)
{
  c->peerlen = sizeof(c->peer);
  c->peer_port = 0;
  str_copy(c->peer_ip, sizeof(c->peer_ip), "unknown");
  if(getpeername(c->fd, (struct sockaddr *)&c->peer, &c->peerlen)) {
    memset(&c->peer, 0, sizeof(c->peer));
    c->peerlen = 0;
    return;
  }
  conn_peer_set(c, &c->peer);
}

void conn_sockaddr_unmap(struct sockaddr_storage *ss, socklen_t *len)
{
  if(ss->ss_family == AF_INET6) {
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
    if(IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr)) {
      /* a dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d; everyone downstream
       * (logs, trusted_networks, Received) wants the IPv4 address */
      struct sockaddr_in s4;
      memset(&s4, 0, sizeof(s4));
      s4.sin_family = AF_INET;
      s4.sin_port = s6->sin6_port;
      memcpy(&s4.sin_addr, &s6->sin6_addr.s6_addr[12], 4);
      memset(ss, 0, sizeof(*ss));
      memcpy(ss, &s4, sizeof(s4));
      if(len)
        *len = sizeof(s4);
    }
  }
}

void conn_peer_set(struct conn *c, const struct sockaddr_storage *ss)
{
  if(ss != &c->peer)
    memcpy(&c->peer, ss, sizeof(c->peer));
  c->peerlen = c->peer.ss_family == AF_INET ? sizeof(struct sockaddr_in) :
               c->peer.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : c->peerlen;
  conn_sockaddr_unmap(&c->peer, &c->peerlen);
  if(c->peer.ss_family == AF_INET) {
    struct sockaddr_in *s4 = (struct sockaddr_in *)&c->peer;
    inet_ntop(AF_INET, &s4->sin_addr, c->peer_ip, sizeof(c->peer_ip));
    c->peer_port = ntohs(s4->sin_port);
  }
  else if(c->peer.ss_family == AF_INET6) {
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&c->peer;
    inet_ntop(AF_INET6, &s6->sin6_addr, c->peer_ip, sizeof(c->peer_ip));
    c->peer_port = ntohs(s6->sin6_port);
  }
}

int conn_client_key(const struct sockaddr *sa, unsigned char key[CONN_CLIENT_KEY_LEN])
{
  static const unsigned char mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
  memset(key, 0, CONN_CLIENT_KEY_LEN);
  if(sa->sa_family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)(const void *)sa;
    memcpy(key, mapped, sizeof(mapped));
    memcpy(key + 12, &in->sin_addr, 4);
    return 0;
  }
  if(sa->sa_family == AF_INET6) {
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)(const void *)sa;
    if(!memcmp(in6->sin6_addr.s6_addr, mapped, sizeof(mapped)))
      memcpy(key, in6->sin6_addr.s6_addr, 16);
    else
      memcpy(key, in6->sin6_addr.s6_addr, 8);
    return 0;
  }
  return -1;
}

void conn_client_key_text(const unsigned char key[CONN_CLIENT_KEY_LEN], char *out, size_t outsz)
{
  static const unsigned char mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
  char text[INET6_ADDRSTRLEN];
  if(!memcmp(key, mapped, sizeof(mapped))) {
    if(inet_ntop(AF_INET, key + 12, text, sizeof(text)))
      snprintf(out, outsz, "%s", text);
    else
      snprintf(out, outsz, "?");
  }
  else if(inet_ntop(AF_INET6, key, text, sizeof(text)))
    snprintf(out, outsz, "%s/64", text);
  else
    snprintf(out, outsz, "?");
}

static pthread_once_t cancel_once = PTHREAD_ONCE_INIT;
static int cancel_pipe[CONN_CANCEL_LATE + 1][2];
static atomic_int cancel_level;

static void cancel_make(void)
{
  int i;
  for(i = 0; i <= CONN_CANCEL_LATE; i++)
    if(i == 0 || pipe2(cancel_pipe[i], O_CLOEXEC | O_NONBLOCK)) {
      cancel_pipe[i][0] = -1;
      cancel_pipe[i][1] = -1;
    }
}

int conn_cancel_fd(int level)
{
  pthread_once(&cancel_once, cancel_make);
  return level > 0 && level <= CONN_CANCEL_LATE ? cancel_pipe[level][0] : -1;
}

int conn_cancelled(int level)
{
  return level > 0 && atomic_load(&cancel_level) >= level;
}

void conn_cancel(int level)
{
  int i, was;
  pthread_once(&cancel_once, cancel_make);
  if(level > CONN_CANCEL_LATE)
    level = CONN_CANCEL_LATE;
  was = atomic_load(&cancel_level);
  while(was < level && !atomic_compare_exchange_weak(&cancel_level, &was, level))
    ;
  /* never read: each pipe stays readable for every wait from now on (should a write fail,
   * the level still ends each wait at its next turn) */
  for(i = was + 1; i <= level; i++)
    if(cancel_pipe[i][1] >= 0)
      while(write(cancel_pipe[i][1], "x", 1) < 0 && errno == EINTR)
        ;
}

void conn_init(struct conn *c, int fd, int idle_ms)
{
  int fl;
  memset(c, 0, sizeof(*c));
  c->wake_fd = -1;
  c->fd = fd;
  c->ops = NULL;
  c->ops_ctx = NULL;
  buf_init(&c->wbuf, CONN_WBUF_MAX);
  c->idle_ms = idle_ms;
  c->deadline_ms = 0;
  fl = fcntl(fd, F_GETFL);
  if(fl >= 0 && !(fl & O_NONBLOCK))
    fcntl(fd, F_SETFL, fl | O_NONBLOCK);
  peer_fill(c);
}

void conn_free(struct conn *c)
{
  if(c->ops && c->ops->close)
    c->ops->close(c->ops_ctx);
  c->ops = NULL;
  c->ops_ctx = NULL;
  if(c->fd >= 0)
    close(c->fd);
  c->fd = -1;
  buf_free(&c->wbuf);
}

void conn_set_stream(struct conn *c, const struct conn_stream_ops *ops, void *ctx)
{
  c->ops = ops;
  c->ops_ctx = ctx;
}

/* The earlier of the session's and the record's deadline; 0 none. */
static long long conn_deadline(const struct conn *c)
{
  if(!c->record_deadline_ms)
    return c->deadline_ms;
  if(!c->deadline_ms || c->record_deadline_ms < c->deadline_ms)
    return c->record_deadline_ms;
  return c->deadline_ms;
}

/* Waits until fd is ready for events, the idle time (counted from start) runs out, or the
 * session deadline passes. */
static int conn_wait(struct conn *c, short events, long long start)
{
  for(;;) {
    long long now = time_mono_ms();
    long long left = -1;
    struct pollfd pfd[3];
    nfds_t n = 1, cancel_at = 0;
    int r;
    if(conn_cancelled(c->cancelable)) {
      errno = ECANCELED;
      return CONN_ERROR;
    }
    if(c->idle_ms > 0) {
      left = start + c->idle_ms - now;
      if(left <= 0)
        return CONN_TIMEOUT;
    }
    if(conn_deadline(c)) {
      long long dl = conn_deadline(c) - now;
      if(dl <= 0)
        return CONN_TIMEOUT;
      if(left < 0 || dl < left)
        left = dl;
    }
    pfd[0].fd = c->fd;
    pfd[0].events = events;
    pfd[0].revents = 0;
    if(c->wake_fd >= 0 && (events & POLLIN)) {
      pfd[1].fd = c->wake_fd;
      pfd[1].events = POLLIN;
      pfd[1].revents = 0;
      n = 2;
    }
    if(conn_cancel_fd(c->cancelable) >= 0) {
      cancel_at = n;
      pfd[n].fd = conn_cancel_fd(c->cancelable);
      pfd[n].events = POLLIN;
      pfd[n].revents = 0;
      n++;
    }
    r = poll(pfd, n, left < 0 ? -1 : (int)(left > 60000 ? 60000 : left));
    if(r > 0 && cancel_at && pfd[cancel_at].revents) {
      errno = ECANCELED;
      return CONN_ERROR;
    }
    if(r > 0 && pfd[0].revents)
      return CONN_OK;      /* POLLHUP/POLLERR too: the next read or write tells what */
    if(r > 0)
      return CONN_WOKEN;
    if(r < 0 && errno != EINTR)
      return CONN_ERROR;
  }
}

static int deadline_passed(struct conn *c)
{
  return conn_deadline(c) && time_mono_ms() >= conn_deadline(c);
}

/* Reads what is available into p; *got > 0, or CONN_EOF / CONN_TIMEOUT / CONN_ERROR. */
static int stream_read(struct conn *c, void *p, size_t n, size_t *got)
{
  long long start = time_mono_ms();
  int result;
  for(;;) {
    ssize_t r;
    short want = POLLIN;
    if(deadline_passed(c))
      return CONN_TIMEOUT;
    if(c->ops) {
      int want_write = 0;
      r = c->ops->read(c->ops_ctx, p, n, &want_write);
      if(want_write)
        want = POLLOUT;
    }
    else {
      r = recv(c->fd, p, n, MSG_DONTWAIT);
      if(r < 0 && errno == ENOTSOCK)
        r = read(c->fd, p, n);
    }
    if(r > 0) {
      *got = (size_t)r;
      return CONN_OK;
    }
    if(r == 0) {
      c->eof = 1;
      return CONN_EOF;
    }
    if(errno == EINTR)
      continue;
    if(errno != EAGAIN && errno != EWOULDBLOCK) {
      /* a reset peer is, for a session, just a peer that went away */
      if(errno == ECONNRESET) {
        c->eof = 1;
        return CONN_EOF;
      }
      return CONN_ERROR;
    }
    result = conn_wait(c, want, start);
    if(result)
      return result;
  }
}

static int stream_write_all(struct conn *c, const char *p, size_t n)
{
  long long start = time_mono_ms();
  int result;
  while(n) {
    ssize_t r;
    short want = POLLOUT;
    if(deadline_passed(c))
      return CONN_TIMEOUT;
    if(c->ops) {
      int want_read = 0;
      r = c->ops->write(c->ops_ctx, p, n, &want_read);
      if(want_read)
        want = POLLIN;
    }
    else {
      /* MSG_NOSIGNAL: a vanished peer is an error to report, not a reason to die */
      r = send(c->fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
      if(r < 0 && errno == ENOTSOCK)
        r = write(c->fd, p, n);
    }
    if(r > 0) {
      p += r;
      n -= (size_t)r;
      start = time_mono_ms();   /* progress restarts the idle clock */
      continue;
    }
    if(r < 0 && errno == EINTR)
      continue;
    if(r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK))
      return CONN_ERROR;
    result = conn_wait(c, want, start);
    if(result)
      return result;
  }
  return CONN_OK;
}

/* Reads more input into rbuf, making room first. */
int conn_fill(struct conn *c)
{
  size_t got = 0;
  int result;
  if(c->rstart == c->rend)
    c->rstart = c->rend = 0;
  else if(c->rend == sizeof(c->rbuf)) {
    memmove(c->rbuf, c->rbuf + c->rstart, c->rend - c->rstart);
    c->rend -= c->rstart;
    c->rstart = 0;
  }
  if(c->eof)
    return CONN_EOF;
  if(c->rend == sizeof(c->rbuf))
    return CONN_ERROR;     /* every reader consumes what it looks at: cannot happen */
  result = stream_read(c, c->rbuf + c->rend, sizeof(c->rbuf) - c->rend, &got);
  if(result)
    return result;
  c->rend += got;
  return CONN_OK;
}

int conn_read_line(struct conn *c, struct buf *line, size_t max, unsigned *flags)
{
  size_t content = 0;     /* octets of the line so far, a CR that may end it included */
  size_t crs = 0;
  int nul = 0, any = 0;
  unsigned char last = 0;
  int result;

  buf_reset(line);
  *flags = 0;
  for(;;) {
    const char *p, *lf;
    size_t avail, seg, i;
    if(c->rstart == c->rend) {
      result = conn_fill(c);
      if(result == CONN_EOF && any) {
        *flags = CONN_LINE_EOF | (crs ? CONN_LINE_BARE_CR : 0) | (nul ? CONN_LINE_NUL : 0);
        return content > max ? CONN_TOO_LONG : CONN_OK;
      }
      if(result)
        return result;
    }
    p = c->rbuf + c->rstart;
    avail = c->rend - c->rstart;
    lf = memchr(p, '\n', avail);
    seg = lf ? (size_t)(lf - p) : avail;
    any = 1;
    for(i = 0; i < seg; i++) {
      if(p[i] == '\r')
        crs++;
      else if(p[i] == '\0')
        nul = 1;
    }
    /* store at most max octets; the rest of an over-long line is only counted */
    if(content < max) {
      size_t take = max - content < seg ? max - content : seg;
      if(buf_add(line, p, take))
        return CONN_ERROR;
    }
    if(seg)
      last = (unsigned char)p[seg - 1];
    content += seg;
    c->rstart += seg;
    if(lf) {
      size_t total;
      c->rstart++;
      if(content && last == '\r') {
        *flags |= CONN_LINE_CRLF;
        content--;
        crs--;
        if(line->len > content) {
          line->len = content;
          line->ptr[content] = '\0';
        }
      }
      if(crs)
        *flags |= CONN_LINE_BARE_CR;
      if(nul)
        *flags |= CONN_LINE_NUL;
      total = content + ((*flags & CONN_LINE_CRLF) ? 2 : 1);
      return total > max ? CONN_TOO_LONG : CONN_OK;
    }
  }
}

int conn_read_exact(struct conn *c, struct buf *out, size_t n)
{
  int result;
  while(n) {
    size_t take;
    if(c->rstart == c->rend) {
      result = conn_fill(c);
      if(result)
        return result;
    }
    take = c->rend - c->rstart;
    if(take > n)
      take = n;
    if(out && buf_add(out, c->rbuf + c->rstart, take))
      return CONN_ERROR;
    c->rstart += take;
    n -= take;
  }
  return CONN_OK;
}

ssize_t conn_read_some(struct conn *c, void *p, size_t n)
{
  size_t take;
  int result;
  if(!n)
    return 0;
  if(c->rstart == c->rend) {
    result = conn_fill(c);
    if(result == CONN_EOF)
      return 0;
    if(result) {
      errno = result == CONN_TIMEOUT ? ETIMEDOUT : EIO;
      return -1;
    }
  }
  take = c->rend - c->rstart;
  if(take > n)
    take = n;
  memcpy(p, c->rbuf + c->rstart, take);
  c->rstart += take;
  return (ssize_t)take;
}

int conn_has_input(struct conn *c)
{
  if(c->rend > c->rstart)
    return 1;
  return c->ops && c->ops->pending && c->ops->pending(c->ops_ctx) > 0;
}

void conn_discard_input(struct conn *c)
{
  c->rstart = c->rend = 0;
}

int conn_write(struct conn *c, const void *p, size_t n)
{
  int result;
  if(c->wbuf.len + n > CONN_WBUF_MAX) {
    result = conn_flush(c);
    if(result)
      return result;
    if(n > CONN_WBUF_MAX)
      return stream_write_all(c, p, n);
  }
  return buf_add(&c->wbuf, p, n) ? CONN_ERROR : CONN_OK;
}

int conn_printf(struct conn *c, const char *fmt, ...)
{
  char small[1024];
  char *p = small;
  va_list ap;
  int n, result;
  va_start(ap, fmt);
  n = vsnprintf(small, sizeof(small), fmt, ap);
  va_end(ap);
  if(n < 0)
    return CONN_ERROR;
  if((size_t)n >= sizeof(small)) {
    p = malloc((size_t)n + 1);
    if(!p)
      return CONN_ERROR;
    va_start(ap, fmt);
    vsnprintf(p, (size_t)n + 1, fmt, ap);
    va_end(ap);
  }
  result = conn_write(c, p, (size_t)n);
  if(p != small)
    free(p);
  return result;
}

int conn_flush(struct conn *c)
{
  int result;
  if(!c->wbuf.len)
    return CONN_OK;
  result = stream_write_all(c, c->wbuf.ptr, c->wbuf.len);
  buf_reset(&c->wbuf);
  return result;
}
