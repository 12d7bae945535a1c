/* The SMTP client engine (RFC 5321 with PIPELINING, SIZE, 8BITMIME, SMTPUTF8, DSN, STARTTLS
 * and AUTH): one upstream session over a struct conn, in steps that the smtp transport runs in
 * a row and the doctor runs one at a time. */
#include "smtp/smtp.h"
#include "lib/limits.h"
#include "tls/tls.h"
#include "auth/auth.h"
#include "lib/buf.h"
#include "lib/log.h"
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* A reply line is at most 512 octets (RFC 5321 4.5.3.1.5), but servers that say more exist;
 * longer lines are read up to this and the rest dropped. */
/* Lines of one multi-line reply (an EHLO list is about a dozen) before it is a protocol error */
#define CLIENT_REPLY_LINES 200
#define CLIENT_CONNECT_MS 30000
#define CLIENT_COMMAND_MS 300000
#define CLIENT_DATA_MS 600000
#define CLIENT_QUIT_MS 5000
/* An AUTH line longer than this sends its initial response after an empty 334 instead
 * (RFC 4954 4: servers must take long responses, not necessarily long commands) */
#define CLIENT_AUTH_INLINE 500

struct smtp_client {
  struct smtp_client_cfg cfg;
  char *host, *helo, *ca_file, *tls_min, *log_name;   /* our copies of cfg's strings */
  struct conn conn;
  int connected;
  struct tls_client_ctx *tls;
  int tls_active;
  char tls_info[128];
  char addr[64];
  char peer[LIM_SMTP_DOMAIN + 80];
  struct smtp_client_caps caps;
  struct buf line;
  int used;          /* a transaction began and did not reach its end of data: RSET before
                        the next one (after the reply to the end of data the server has reset
                        itself, RFC 5321 4.1.1.4, so a kept connection needs no RSET) */
  int kept;          /* a transaction ran on this connection before: it may have died idle */
  int from_server;   /* the last reply is the server's */
};

/* ---- small helpers --------------------------------------------------------------------- */

/* One line of the transcript: dir is ">" (sent; AUTH payloads already masked), "<" (received)
 * or "*" (what happened on our side: addresses tried, TLS). To the debug log when trace is on,
 * and to the caller's transcript hook when it has one (the doctor). */
static void trace(struct smtp_client *c, const char *dir, const char *p, size_t n)
{
  char esc[LIM_LOG_FIELD * 4 + 8];
  if(c->cfg.transcript)
    c->cfg.transcript(c->cfg.transcript_arg, dir[0], p, n);
  if(!c->cfg.trace)
    return;
  if(dir[0] == '*')
    log_debug("upstream %s: %.*s", c->log_name, (int)n, p);
  else
    log_debug("upstream %s: %s %s", c->log_name, dir, log_repr(esc, sizeof(esc), p, n));
}

static void note(struct smtp_client *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note(struct smtp_client *c, const char *fmt, ...)
{
  char text[LIM_SMTP_REPLY_LINE + 128];
  va_list ap;
  if(!c->cfg.trace && !c->cfg.transcript)
    return;
  va_start(ap, fmt);
  vsnprintf(text, sizeof(text), fmt, ap);
  va_end(ap);
  trace(c, "*", text, strlen(text));
}

/* A reply made up on our side: what happened, with the code it maps to. */
static int fail(struct smtp_client *c, struct smtp_reply *r, int result, int code,
                const char *enh, const char *fmt, ...) __attribute__((format(printf, 6, 7)));
static int fail(struct smtp_client *c, struct smtp_reply *r, int result, int code,
                const char *enh, const char *fmt, ...)
{
  char text[LIM_SMTP_REPLY_LINE];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(text, sizeof(text), fmt, ap);
  va_end(ap);
  smtp_reply_set(r, code, enh, "%s", text);
  c->from_server = 0;
  return result;
}

static void close_conn(struct smtp_client *c)
{
  if(c->connected)
    conn_free(&c->conn);
  c->connected = 0;
  c->tls_active = 0;
  c->tls_info[0] = '\0';
  c->used = 0;
  c->kept = 0;
}

static char *dup_or_null(const char *s)
{
  return s ? str_dup_n(s, strlen(s)) : NULL;
}

int smtp_client_new(const struct smtp_client_cfg *cfg, struct smtp_client **out)
{
  struct smtp_client *c = calloc(1, sizeof(*c));
  *out = NULL;
  if(!c)
    return SMTP_CLIENT_FAILED;
  c->cfg = *cfg;
  c->host = dup_or_null(cfg->host);
  c->helo = dup_or_null(cfg->helo ? cfg->helo : "localhost");
  c->ca_file = dup_or_null(cfg->ca_file);
  c->tls_min = dup_or_null(cfg->tls_min_version);
  c->log_name = dup_or_null(cfg->log_name ? cfg->log_name : cfg->host);
  if(!c->host || !c->helo || !c->log_name || (cfg->ca_file && !c->ca_file) ||
     (cfg->tls_min_version && !c->tls_min)) {
    smtp_client_free(c);
    return SMTP_CLIENT_FAILED;
  }
  c->cfg.host = c->host;
  c->cfg.helo = c->helo;
  c->cfg.ca_file = c->ca_file;
  c->cfg.tls_min_version = c->tls_min;
  c->cfg.log_name = c->log_name;
  if(c->cfg.connect_timeout_ms <= 0)
    c->cfg.connect_timeout_ms = CLIENT_CONNECT_MS;
  if(c->cfg.command_timeout_ms <= 0)
    c->cfg.command_timeout_ms = CLIENT_COMMAND_MS;
  if(c->cfg.data_timeout_ms <= 0)
    c->cfg.data_timeout_ms = CLIENT_DATA_MS;
  buf_init(&c->line, LIM_SMTP_CLIENT_LINE + 1);
  snprintf(c->peer, sizeof(c->peer), "%s:%d", c->host, c->cfg.port);
  *out = c;
  return SMTP_CLIENT_OK;
}

void smtp_client_free(struct smtp_client *c)
{
  if(!c)
    return;
  close_conn(c);
  if(c->tls)
    tls_client_ctx_free(c->tls);
  buf_free(&c->line);
  free(c->host);
  free(c->helo);
  free(c->ca_file);
  free(c->tls_min);
  free(c->log_name);
  free(c);
}

const struct smtp_client_caps *smtp_client_caps(const struct smtp_client *c)
{
  return &c->caps;
}

int smtp_client_tls_active(const struct smtp_client *c)
{
  return c->tls_active;
}

const char *smtp_client_peer(const struct smtp_client *c)
{
  return c->peer;
}

const char *smtp_client_tls_info(const struct smtp_client *c)
{
  return c->tls_info;
}

int smtp_client_reply_from_server(const struct smtp_client *c)
{
  return c->from_server;
}

/* ---- talking ----------------------------------------------------------------------------- */

/* Queues one command line (sent at the next read or flush). mask: what the trace shows in its
 * place, for AUTH payloads. */
static int send_line(struct smtp_client *c, const char *mask, const char *fmt, ...)
  __attribute__((format(printf, 3, 4)));
static int send_line(struct smtp_client *c, const char *mask, const char *fmt, ...)
{
  struct buf b;
  va_list ap;
  int result;
  buf_init(&b, AUTH_SECRET_MAX * 2 + 1024);
  va_start(ap, fmt);
  result = buf_vaddf(&b, fmt, ap);
  va_end(ap);
  if(!result) {
    trace(c, ">", mask ? mask : b.ptr, mask ? strlen(mask) : b.len);
    result = buf_add(&b, "\r\n", 2);
  }
  if(!result)
    result = conn_write(&c->conn, b.ptr, b.len);
  /* the line may hold a password or a token */
  if(b.ptr)
    memset(b.ptr, 0, b.alloc);
  buf_free(&b);
  return result ? -1 : 0;
}

/* The server's EHLO keywords, one line at a time (the first line is its greeting name). */
static void caps_line(struct smtp_client *c, const char *p, size_t n)
{
  size_t kw = 0, rest;
  const char *arg;
  while(kw < n && p[kw] != ' ' && p[kw] != '=')
    kw++;
  arg = p + kw + (kw < n ? 1 : 0);
  rest = kw < n ? n - kw - 1 : 0;
  if(!str_casecmp_n(p, kw, "SIZE")) {
    long v = 0;
    c->caps.flags |= SMTP_CAP_SIZE;
    if(rest && !str_to_long(arg, rest, 0, 0x7fffffffL, &v))
      c->caps.size = v;
  }
  else if(!str_casecmp_n(p, kw, "PIPELINING"))
    c->caps.flags |= SMTP_CAP_PIPELINING;
  else if(!str_casecmp_n(p, kw, "STARTTLS"))
    c->caps.flags |= SMTP_CAP_STARTTLS;
  else if(!str_casecmp_n(p, kw, "8BITMIME"))
    c->caps.flags |= SMTP_CAP_8BITMIME;
  else if(!str_casecmp_n(p, kw, "SMTPUTF8"))
    c->caps.flags |= SMTP_CAP_SMTPUTF8;
  else if(!str_casecmp_n(p, kw, "ENHANCEDSTATUSCODES"))
    c->caps.flags |= SMTP_CAP_ENHANCED;
  else if(!str_casecmp_n(p, kw, "DSN"))
    c->caps.flags |= SMTP_CAP_DSN;
  else if(!str_casecmp_n(p, kw, "AUTH")) {
    /* "AUTH PLAIN LOGIN" and the old "AUTH=PLAIN LOGIN": the union of both, once each */
    size_t i = 0;
    c->caps.flags |= SMTP_CAP_AUTH;
    while(i < rest) {
      size_t j = i, have = strlen(c->caps.auth), k;
      char mech[64];
      while(j < rest && arg[j] != ' ')
        j++;
      if(j > i && j - i < sizeof(mech)) {
        for(k = 0; k < j - i; k++) {
          char ch = arg[i + k];
          mech[k] = (ch >= 'a' && ch <= 'z') ? (char)(ch - 32) : ch;
        }
        mech[j - i] = '\0';
        if(!strstr(c->caps.auth, mech) && have + (j - i) + 2 < sizeof(c->caps.auth))
          snprintf(c->caps.auth + have, sizeof(c->caps.auth) - have, "%s%s", have ? " " : "",
                   mech);
      }
      i = j + 1;
    }
  }
}

/* Reads one complete reply (sending what is queued first). what names the step for messages:
 * "lost connection with HOST while WHAT". ehlo: feed each line to caps_line. */
static int read_reply(struct smtp_client *c, struct smtp_reply *r, const char *what, int ehlo)
{
  struct smtp_reply one;
  int result, more = 1, lines = 0;
  unsigned flags;

  memset(r, 0, sizeof(*r));
  result = conn_flush(&c->conn);
  while(!result && more) {
    result = conn_read_line(&c->conn, &c->line, LIM_SMTP_CLIENT_LINE, &flags);
    if(result == CONN_TOO_LONG)
      result = CONN_OK;              /* keep the start of it */
    if(result)
      break;
    trace(c, "<", c->line.ptr, c->line.len);
    if(smtp_reply_parse_line(c->line.ptr, c->line.len, &one, &more) ||
       (lines && one.code != r->code) || ++lines > CLIENT_REPLY_LINES)
      return fail(c, r, SMTP_CLIENT_FAILED, 451, "4.5.0",
                  "malformed reply from %s while %s", c->peer, what);
    if(ehlo && lines > 1 && c->line.len > 4)
      caps_line(c, c->line.ptr + 4, c->line.len - 4);
    if(lines == 1)
      *r = one;
    else if(one.text[0]) {
      /* providers spread their reasons over several lines: keep them all, in one line */
      size_t have = strlen(r->text);
      snprintf(r->text + have, sizeof(r->text) - have, "%s%s", have ? " " : "", one.text);
    }
  }
  if(result == CONN_TIMEOUT)
    return fail(c, r, SMTP_CLIENT_FAILED, 451, "4.4.2", "conversation with %s timed out while %s",
                c->peer, what);
  if(result && conn_cancelled(c->conn.cancelable))
    return fail(c, r, SMTP_CLIENT_FAILED, 451, "4.3.2", "conversation with %s interrupted "
                "while %s: postern is stopping", c->peer, what);
  if(result)
    return fail(c, r, SMTP_CLIENT_FAILED, 451, "4.4.2", "lost connection with %s while %s",
                c->peer, what);
  c->from_server = 1;
  return SMTP_CLIENT_OK;
}

/* A refusal during the opening of a session is about us or the server, never about one
 * message: it defers (5xx becomes 4xx) and names who said it. */
static int refused(struct smtp_client *c, struct smtp_reply *r, const char *what)
{
  char said[LIM_SMTP_REPLY_LINE + 32];
  char enh[16] = "4.4.0";
  int code = r->code, throttle = r->code >= 400 && r->code < 500;
  smtp_reply_str(r, said, sizeof(said));
  if(r->enh[0] && r->enh[0] == '4')
    str_copy(enh, sizeof(enh), r->enh);
  if(code < 400 || code >= 500)
    code = 451;
  smtp_reply_set(r, code, enh, "%s %s: %s", c->peer, what, said);
  c->from_server = throttle;   /* a 4xx is still the server's word (throttling, say) */
  return SMTP_CLIENT_FAILED;
}

/* ---- connect, TLS, EHLO ------------------------------------------------------------------- */

static int tls_begin(struct smtp_client *c, struct smtp_reply *r)
{
  char err[256];
  err[0] = '\0';
  if(!c->tls && tls_client_ctx_new(c->cfg.verify_peer ? "peer" : "none", c->ca_file, c->tls_min,
                                   &c->tls, err, sizeof(err)))
    return fail(c, r, SMTP_CLIENT_FAILED, 451, "4.7.5", "TLS setup for %s failed: %s",
                c->peer, err);
  err[0] = '\0';
  if(tls_client_start(c->tls, &c->conn, c->host, c->cfg.command_timeout_ms, err, sizeof(err)))
    return fail(c, r, SMTP_CLIENT_FAILED, 451, "4.7.5", "TLS handshake with %s failed: %s",
                c->peer, err);
  c->tls_active = 1;
  tls_conn_describe(&c->conn, c->tls_info, sizeof(c->tls_info));
  note(c, "TLS with %s: %s", c->peer, c->tls_info);
  return SMTP_CLIENT_OK;
}

/* Non-blocking connect bounded by the connect timeout; 0 or an errno. */
static int connect_one(const struct addrinfo *ai, int timeout_ms, int *fdp)
{
  int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0), err = 0;
  socklen_t elen = sizeof(err);
  struct pollfd pfd[2];
  *fdp = -1;
  if(fd < 0)
    return errno;
  if(connect(fd, ai->ai_addr, ai->ai_addrlen)) {
    int pr;
    if(errno != EINPROGRESS) {
      err = errno;
      close(fd);
      return err;
    }
    pfd[0].fd = fd;
    pfd[0].events = POLLOUT;
    pfd[0].revents = 0;
    pfd[1].fd = conn_cancel_fd(CONN_CANCEL_EARLY);   /* -1 is ignored by poll */
    pfd[1].events = POLLIN;
    pfd[1].revents = 0;
    do
      pr = conn_cancelled(CONN_CANCEL_EARLY) ? 0 : poll(pfd, 2, timeout_ms);
    while(pr < 0 && errno == EINTR);
    if(conn_cancelled(CONN_CANCEL_EARLY))
      err = ECANCELED;
    else if(pr == 0)
      err = ETIMEDOUT;
    else if(pr < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen))
      err = errno;
    if(err) {
      close(fd);
      return err;
    }
  }
  *fdp = fd;
  return 0;
}

static void addr_string(const struct sockaddr *sa, char *out, size_t outsz)
{
  out[0] = '\0';
  if(sa->sa_family == AF_INET)
    inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, out,
              (socklen_t)outsz);
  else if(sa->sa_family == AF_INET6)
    inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, out,
              (socklen_t)outsz);
}

int smtp_client_connect(struct smtp_client *c, struct smtp_reply *r)
{
  struct addrinfo hints, *res = NULL, *ai;
  char port[16], last[LIM_SMTP_REPLY_LINE / 2] = "";
  int gai, fd = -1, result;

  close_conn(c);
  memset(&c->caps, 0, sizeof(c->caps));
  memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  snprintf(port, sizeof(port), "%d", c->cfg.port);
  gai = getaddrinfo(c->host, port, &hints, &res);
  if(gai)
    return fail(c, r, SMTP_CLIENT_FAILED, 451, "4.4.4",
                "Host or domain name not found. Name service error for name=%s: %s", c->host,
                gai_strerror(gai));
  /* every address in the resolver's order (RFC 6724), IPv6 and IPv4 alike */
  for(ai = res; ai; ai = ai->ai_next) {
    char addr[64];
    int err;
    if(ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
      continue;
    addr_string(ai->ai_addr, addr, sizeof(addr));
    err = connect_one(ai, c->cfg.connect_timeout_ms, &fd);
    if(!err) {
      str_copy(c->addr, sizeof(c->addr), addr);
      break;
    }
    snprintf(last, sizeof(last), "connect to %s[%s]:%d: %s", c->host, addr, c->cfg.port,
             strerror(err));
    note(c, "%s", last);
  }
  freeaddrinfo(res);
  if(fd < 0)
    return fail(c, r, SMTP_CLIENT_FAILED, 451, "4.4.1", "%s",
                last[0] ? last : "no usable address for the upstream host");
  conn_init(&c->conn, fd, c->cfg.command_timeout_ms);
  c->conn.cancelable = CONN_CANCEL_EARLY;   /* a shutdown does not wait for a silent upstream */
  c->connected = 1;
  snprintf(c->peer, sizeof(c->peer), "%s[%s]:%d", c->host, c->addr, c->cfg.port);
  note(c, "connected to %s", c->peer);
  if(c->cfg.tls == SMTP_CLIENT_TLS_IMPLICIT) {
    result = tls_begin(c, r);
    if(result) {
      close_conn(c);
      return result;
    }
  }
  result = read_reply(c, r, "receiving the initial server greeting", 0);
  if(!result && r->code != 220)
    result = refused(c, r, "refused to talk to me");
  if(result)
    close_conn(c);
  return result;
}

int smtp_client_ehlo(struct smtp_client *c, struct smtp_reply *r)
{
  int result;
  if(!c->connected)
    return fail(c, r, SMTP_CLIENT_FAILED, 451, "4.4.2", "not connected to %s", c->peer);
  memset(&c->caps, 0, sizeof(c->caps));
  if(send_line(c, NULL, "EHLO %s", c->helo))
    return fail(c, r, SMTP_CLIENT_FAILED, 451, "4.4.2", "cannot send EHLO to %s", c->peer);
  result = read_reply(c, r, "sending EHLO", 1);
  if(result)
    goto out;
  if(r->code == 250) {
    c->caps.flags |= SMTP_CAP_ESMTP;
    return SMTP_CLIENT_OK;
  }
  /* an old server: HELO, and no extensions at all */
  memset(&c->caps, 0, sizeof(c->caps));
  if(r->code >= 500 && r->code != 554) {
    if(send_line(c, NULL, "HELO %s", c->helo))
      return fail(c, r, SMTP_CLIENT_FAILED, 451, "4.4.2", "cannot send HELO to %s", c->peer);
    result = read_reply(c, r, "sending HELO", 0);
    if(!result && r->code == 250)
      return SMTP_CLIENT_OK;
  }
  if(!result)
    result = refused(c, r, "refused our EHLO");
out:
  close_conn(c);
  return result;
}

int smtp_client_starttls(struct smtp_client *c, struct smtp_reply *r)
{
  int result;
  if(c->tls_active)
    return SMTP_CLIENT_OK;
  if(!(c->caps.flags & SMTP_CAP_STARTTLS))
    return fail(c, r, SMTP_CLIENT_REPLY, 451, "4.7.4", "%s does not offer STARTTLS", c->peer);
  if(send_line(c, NULL, "STARTTLS"))
    return fail(c, r, SMTP_CLIENT_FAILED, 451, "4.4.2", "cannot send STARTTLS to %s", c->peer);
  result = read_reply(c, r, "sending STARTTLS", 0);
  if(result)
    goto out;
  if(r->code != 220) {
    result = refused(c, r, "refused STARTTLS");
    goto out;
  }
  /* anything the server sent after its 220 came before the handshake: it cannot be trusted
   * and must not be read as if it came over TLS (the STARTTLS injection of CVE-2011-0411) */
  if(conn_has_input(&c->conn)) {
    result = fail(c, r, SMTP_CLIENT_FAILED, 451, "4.7.5",
                  "%s sent data after its STARTTLS reply; not starting TLS", c->peer);
    goto out;
  }
  result = tls_begin(c, r);
  if(result)
    goto out;
  /* RFC 3207 4.2: forget what was learnt before the handshake and ask again */
  result = smtp_client_ehlo(c, r);
  if(result)
    return result;
  return SMTP_CLIENT_OK;
out:
  close_conn(c);
  return result;
}

/* ---- AUTH ---------------------------------------------------------------------------------- */

/* Is this refusal about our credentials (hold the mail), or about something else (defer)? */
static int auth_refusal(const struct smtp_reply *r)
{
  if(r->code == 535 || r->code == 534)
    return 1;
  return r->code >= 500 && (!strcmp(r->enh, "5.7.8") || !strcmp(r->enh, "5.7.9") ||
                            !strcmp(r->enh, "5.7.139"));
}

static int mech_offered(const struct smtp_client *c, const char *mech)
{
  const char *p = c->caps.auth;
  size_t n = strlen(mech);
  while((p = strstr(p, mech))) {
    if((p == c->caps.auth || p[-1] == ' ') && (p[n] == ' ' || p[n] == '\0'))
      return 1;
    p += n;
  }
  return 0;
}

/* Sends "AUTH MECH [initial]" (the initial response after an empty 334 when it is long). */
static int auth_send_initial(struct smtp_client *c, const char *mech, const unsigned char *in,
                             size_t inlen, int has_initial, struct smtp_reply *r)
{
  char *b64 = NULL, mask[96];
  size_t b64len = 0;
  int result;
  if(!has_initial) {
    if(send_line(c, NULL, "AUTH %s", mech))
      return fail(c, r, SMTP_CLIENT_FAILED, 451, "4.4.2", "cannot send AUTH to %s", c->peer);
    return read_reply(c, r, "sending AUTH", 0);
  }
  if(inlen && auth_b64_encode(in, inlen, &b64, &b64len))
    return fail(c, r, SMTP_CLIENT_FAILED, 451, "4.3.0", "out of memory");
  snprintf(mask, sizeof(mask), "AUTH %s ***", mech);
  if(b64len + strlen(mech) + 6 <= CLIENT_AUTH_INLINE) {
    result = send_line(c, mask, "AUTH %s %s", mech, b64len ? b64 : "=");
    result = result ? fail(c, r, SMTP_CLIENT_FAILED, 451, "4.4.2", "cannot send AUTH to %s",
                           c->peer)
                    : read_reply(c, r, "sending AUTH", 0);
  }
  else {
    result = send_line(c, NULL, "AUTH %s", mech)
             ? fail(c, r, SMTP_CLIENT_FAILED, 451, "4.4.2", "cannot send AUTH to %s", c->peer)
             : read_reply(c, r, "sending AUTH", 0);
    if(!result && r->code == 334) {
      result = send_line(c, "***", "%s", b64len ? b64 : "")
               ? fail(c, r, SMTP_CLIENT_FAILED, 451, "4.4.2", "cannot send AUTH to %s", c->peer)
               : read_reply(c, r, "sending AUTH", 0);
    }
  }
  auth_secret_free(b64, b64len);
  return result;
}

/* The 334 challenge of the last line read, decoded. */
static int challenge_decode(struct smtp_client *c, unsigned char **out, size_t *outlen)
{
  const char *p = c->line.ptr + 4;
  size_t n = c->line.len > 4 ? c->line.len - 4 : 0;
  while(n && (p[n - 1] == ' ' || p[n - 1] == '\t'))
    n--;
  return auth_b64_decode(p, n, out, outlen);
}

/* What a finished exchange's reply means. */
static int auth_outcome(struct smtp_client *c, struct smtp_reply *r, const char *mech)
{
  if(r->code == 235) {
    note(c, "authenticated with %s", mech);
    return SMTP_CLIENT_OK;
  }
  if(auth_refusal(r))
    return SMTP_CLIENT_AUTH;
  return SMTP_CLIENT_REPLY;
}

int smtp_client_auth(struct smtp_client *c, const char *mechs, const char *user,
                     const char *secret, size_t secretlen, struct smtp_reply *r)
{
  struct auth_client_session *s = NULL;
  const char *mech = NULL;
  const unsigned char *initial = NULL, *out = NULL;
  size_t initiallen = 0, outlen = 0;
  int has_initial = 0, ar, result, steps = 0;

  if(!c->connected)
    return fail(c, r, SMTP_CLIENT_FAILED, 451, "4.4.2", "not connected to %s", c->peer);
  if(!(c->caps.flags & SMTP_CAP_AUTH))
    return fail(c, r, SMTP_CLIENT_REPLY, 451, "4.7.0", "%s offers no AUTH%s", c->peer,
                c->tls_active ? "" : " (before TLS)");
  ar = auth_client_new("smtp", c->host, user, secret, secretlen, mechs, c->tls_active, &s);
  if(ar)
    return fail(c, r, SMTP_CLIENT_REPLY, 454, "4.7.0", "cannot start SASL for %s", c->peer);
  ar = auth_client_start(s, c->caps.auth, &mech, &initial, &initiallen, &has_initial);
  if(ar == AUTH_BAD_MECH) {
    if(!c->tls_active && (mech_offered(c, "PLAIN") || mech_offered(c, "LOGIN")))
      result = fail(c, r, SMTP_CLIENT_REPLY, 451, "4.7.0",
                    "not sending a password to %s over an unencrypted connection "
                    "(it offers AUTH %s; use tls = starttls or implicit)", c->peer, c->caps.auth);
    else
      result = fail(c, r, SMTP_CLIENT_REPLY, 451, "4.7.0",
                    "no SASL mechanism in common with %s (it offers %s; we want %s)", c->peer,
                    c->caps.auth, mechs ? mechs : AUTH_MECHS_ALL);
    goto out;
  }
  if(ar != AUTH_OK && ar != AUTH_CONTINUE) {
    result = fail(c, r, SMTP_CLIENT_REPLY, 454, "4.7.0", "SASL client error for %s", c->peer);
    goto out;
  }
  /* belt and braces: whatever the SASL layer chose, a password never goes out in clear */
  if(!c->tls_active && (!strcmp(mech, "PLAIN") || !strcmp(mech, "LOGIN"))) {
    result = fail(c, r, SMTP_CLIENT_REPLY, 451, "4.7.0",
                  "not sending a password to %s with AUTH %s over an unencrypted connection",
                  c->peer, mech);
    goto out;
  }
  result = auth_send_initial(c, mech, initial, initiallen, has_initial, r);
  while(!result && r->code == 334 && steps++ < 10) {
    unsigned char *ch = NULL;
    size_t chlen = 0;
    if(challenge_decode(c, &ch, &chlen)) {
      /* cancel the exchange (RFC 4954 4) */
      if(send_line(c, NULL, "*"))
        result = SMTP_CLIENT_FAILED;
      else
        result = read_reply(c, r, "cancelling AUTH", 0);
      if(!result)
        result = fail(c, r, SMTP_CLIENT_REPLY, 451, "4.7.0",
                      "%s sent a malformed AUTH challenge", c->peer);
      break;
    }
    ar = auth_client_step(s, ch, chlen, &out, &outlen);
    free(ch);
    if(ar == AUTH_OK || ar == AUTH_CONTINUE) {
      char *b64 = NULL;
      size_t b64len = 0;
      if(outlen && auth_b64_encode(out, outlen, &b64, &b64len)) {
        result = fail(c, r, SMTP_CLIENT_FAILED, 451, "4.3.0", "out of memory");
        break;
      }
      result = send_line(c, "***", "%s", b64len ? b64 : "")
               ? fail(c, r, SMTP_CLIENT_FAILED, 451, "4.4.2", "cannot send AUTH to %s", c->peer)
               : read_reply(c, r, "sending AUTH", 0);
      auth_secret_free(b64, b64len);
    }
    else {
      if(send_line(c, NULL, "*"))
        result = SMTP_CLIENT_FAILED;
      else
        result = read_reply(c, r, "cancelling AUTH", 0);
      if(!result)
        result = fail(c, r, SMTP_CLIENT_REPLY, 451, "4.7.0",
                      "the AUTH %s exchange with %s failed on our side (the server did not "
                      "prove it knows the password)", mech, c->peer);
      break;
    }
  }
  if(!result)
    result = auth_outcome(c, r, mech);
out:
  auth_client_free(s);
  if(result == SMTP_CLIENT_FAILED)
    close_conn(c);
  return result;
}

int smtp_client_auth_bearer(struct smtp_client *c, const char *mech, const char *user,
                            const char *token, struct smtp_reply *r)
{
  struct buf b;
  int result, oauthbearer = !strcmp(mech, "OAUTHBEARER");

  if(!c->connected)
    return fail(c, r, SMTP_CLIENT_FAILED, 451, "4.4.2", "not connected to %s", c->peer);
  /* a bearer token is as good as a password to whoever sees it */
  if(!c->tls_active)
    return fail(c, r, SMTP_CLIENT_REPLY, 451, "4.7.0",
                "not sending an OAuth2 token to %s over an unencrypted connection", c->peer);
  if(!(c->caps.flags & SMTP_CAP_AUTH) || !mech_offered(c, mech))
    return fail(c, r, SMTP_CLIENT_REPLY, 451, "4.7.0", "%s does not offer AUTH %s (it offers %s)",
                c->peer, mech, c->caps.auth[0] ? c->caps.auth : "none");
  buf_init(&b, AUTH_SECRET_MAX + 1024);
  if(oauthbearer ? auth_oauthbearer_initial(user, c->host, c->cfg.port, token, &b)
                 : auth_xoauth2_initial(user, token, &b)) {
    result = fail(c, r, SMTP_CLIENT_REPLY, 451, "4.7.0",
                  "the OAuth2 token for %s is not usable (not an RFC 6750 bearer token)", c->peer);
    goto out;
  }
  result = auth_send_initial(c, mech, (const unsigned char *)b.ptr, b.len, 1, r);
  if(!result && r->code == 334) {
    /* the server's error details (JSON); the final reply comes after a dummy response: ^A for
     * OAUTHBEARER (RFC 7628 3.2.3), an empty line for XOAUTH2 (Google's and Microsoft's docs) */
    result = send_line(c, NULL, "%s", oauthbearer ? "AQ==" : "")
             ? fail(c, r, SMTP_CLIENT_FAILED, 451, "4.4.2", "cannot send AUTH to %s", c->peer)
             : read_reply(c, r, "sending AUTH", 0);
  }
  if(!result)
    result = auth_outcome(c, r, mech);
out:
  if(b.ptr)
    memset(b.ptr, 0, b.alloc);
  buf_free(&b);
  if(result == SMTP_CLIENT_FAILED)
    close_conn(c);
  return result;
}

/* ---- transactions -------------------------------------------------------------------------- */

/* The content, dot-stuffed, every line ended with CRLF (a bare LF or CR becomes CRLF: nothing
 * that could be read as a line ending in one place and not another goes upstream), then ".". */
static int send_body(struct smtp_client *c, const char *p, size_t n)
{
  size_t i = 0;
  int bol = 1;
  while(i < n) {
    size_t j = i;
    if(bol && p[i] == '.' && conn_write(&c->conn, ".", 1))
      return -1;
    while(j < n && p[j] != '\r' && p[j] != '\n')
      j++;
    if(j > i && conn_write(&c->conn, p + i, j - i))
      return -1;
    if(j == n) {
      bol = 0;
      break;
    }
    if(conn_write(&c->conn, "\r\n", 2))
      return -1;
    i = (p[j] == '\r' && j + 1 < n && p[j + 1] == '\n') ? j + 2 : j + 1;
    bol = 1;
  }
  if(!bol && conn_write(&c->conn, "\r\n", 2))
    return -1;
  return conn_write(&c->conn, ".\r\n", 3) ? -1 : 0;
}

/* A stored DSN value goes out only in its checked xtext form; one that is not (a row written
 * before the check existed) is left out rather than sent as command-line bytes. */
static const char *dsn_value(const char *v, int orcpt)
{
  return v && !smtp_dsn_value_valid(v, strlen(v), orcpt) ? v : NULL;
}

static int rcpt_send(struct smtp_client *c, const struct smtp_client_rcpt *rc)
{
  int dsn = (c->caps.flags & SMTP_CAP_DSN) != 0;
  const char *orcpt = dsn_value(rc->orcpt, 1);
  return send_line(c, NULL, "RCPT TO:<%s>%s%s%s%s", rc->address,
                   dsn && rc->notify ? " NOTIFY=" : "", dsn && rc->notify ? rc->notify : "",
                   dsn && orcpt ? " ORCPT=" : "", dsn && orcpt ? orcpt : "");
}

static int needs_utf8(const struct smtp_client_msg *m, const struct smtp_client_rcpt *rcpts,
                      size_t n)
{
  size_t i;
  if(!smtp_text_is_ascii(m->sender, strlen(m->sender)))
    return 1;
  for(i = 0; i < n; i++)
    if(!smtp_text_is_ascii(rcpts[i].address, strlen(rcpts[i].address)))
      return 1;
  return 0;
}

int smtp_client_send(struct smtp_client *c, const struct smtp_client_msg *m,
                     struct smtp_client_rcpt *rcpts, size_t n, struct smtp_reply *r)
{
  struct smtp_reply mail, data, rset;
  struct smtp_reply *last = &mail;   /* where the reply being read goes */
  int pipelining = (c->caps.flags & SMTP_CAP_PIPELINING) != 0;
  int dsn = (c->caps.flags & SMTP_CAP_DSN) != 0, rset_first = c->used;
  /* a kept connection with no RSET to send: the reply to MAIL is the first sign that it is
   * still alive, so its loss (or a 421) is a stale connection, as a lost RSET reply is */
  int probe = c->kept && !c->used;
  int utf8 = 0, result;
  size_t i, accepted = 0;
  char size[32] = "";

  memset(r, 0, sizeof(*r));
  memset(&mail, 0, sizeof(mail));
  for(i = 0; i < n; i++)
    memset(&rcpts[i].reply, 0, sizeof(rcpts[i].reply));
  if(!c->connected)
    return fail(c, r, SMTP_CLIENT_STALE, 451, "4.4.2", "not connected to %s", c->peer);
  /* refusals we can tell in advance: nothing is sent, every recipient bounces */
  if((c->caps.flags & SMTP_CAP_SIZE) && c->caps.size > 0 && (long long)m->len > c->caps.size) {
    for(i = 0; i < n; i++)
      smtp_reply_set(&rcpts[i].reply, 552, "5.3.4",
                     "Message size (%zu bytes) exceeds the size limit of %s (%lld bytes)",
                     m->len, c->peer, c->caps.size);
    c->from_server = 0;
    return SMTP_CLIENT_OK;
  }
  if(needs_utf8(m, rcpts, n)) {
    if(!(c->caps.flags & SMTP_CAP_SMTPUTF8)) {
      for(i = 0; i < n; i++)
        smtp_reply_set(&rcpts[i].reply, 553, "5.6.7",
                       "%s does not support SMTPUTF8, which these addresses need", c->peer);
      c->from_server = 0;
      return SMTP_CLIENT_OK;
    }
    utf8 = 1;
  }
  else if(m->smtputf8 && (c->caps.flags & SMTP_CAP_SMTPUTF8))
    utf8 = 1;       /* asked for on submission (UTF-8 headers, say): passed on when offered */
  if(c->caps.flags & SMTP_CAP_SIZE)
    snprintf(size, sizeof(size), " SIZE=%zu", m->len);

  c->used = 1;
  c->kept = 1;
  if(rset_first && send_line(c, NULL, "RSET"))
    goto stale;
  if(rset_first && !pipelining) {
    if(read_reply(c, &rset, "sending RSET", 0) || rset.code == 421)
      goto stale;
    if(rset.code != 250) {
      *r = rset;
      refused(c, r, "refused RSET");
      close_conn(c);
      return SMTP_CLIENT_FAILED;
    }
  }
  if(send_line(c, NULL, "MAIL FROM:<%s>%s%s%s%s%s%s%s", m->sender, size,
               m->body_8bit && (c->caps.flags & SMTP_CAP_8BITMIME) ? " BODY=8BITMIME" : "",
               utf8 ? " SMTPUTF8" : "", dsn && m->ret ? " RET=" : "", dsn && m->ret ? m->ret : "",
               dsn && dsn_value(m->envid, 0) ? " ENVID=" : "",
               dsn && dsn_value(m->envid, 0) ? m->envid : ""))
    goto mail_lost;
  if(pipelining) {
    /* RFC 2920: the whole envelope and DATA in one go, then the replies in order */
    for(i = 0; i < n; i++)
      if(rcpt_send(c, &rcpts[i]))
        goto lost;
    if(send_line(c, NULL, "DATA"))
      goto lost;
    if(rset_first && (read_reply(c, &rset, "sending RSET", 0) || rset.code == 421))
      goto stale;
    if(read_reply(c, last = &mail, "sending MAIL FROM", 0))
      goto mail_failed;
    if(probe && mail.code == 421)
      goto stale;
    for(i = 0; i < n; i++) {
      if(read_reply(c, last = &rcpts[i].reply, "sending RCPT TO", 0))
        goto failed;
      if(mail.code >= 300)
        rcpts[i].reply = mail;
      else if(rcpts[i].reply.code >= 200 && rcpts[i].reply.code < 300)
        accepted++;
    }
    if(read_reply(c, last = &data, "sending DATA", 0))
      goto failed;
    if(data.code == 354 && !accepted) {
      /* nobody to deliver to, yet the server wants the content: end it empty */
      if(conn_write(&c->conn, ".\r\n", 3))
        goto lost;
      if(read_reply(c, last = &data, "sending end of data", 0))
        goto failed;
      c->used = 0;
      return SMTP_CLIENT_OK;
    }
  }
  else {
    if(read_reply(c, last = &mail, "sending MAIL FROM", 0))
      goto mail_failed;
    if(probe && mail.code == 421)
      goto stale;
    if(mail.code >= 300) {
      for(i = 0; i < n; i++)
        rcpts[i].reply = mail;
      return SMTP_CLIENT_OK;
    }
    for(i = 0; i < n; i++) {
      if(rcpt_send(c, &rcpts[i]))
        goto lost;
      if(read_reply(c, last = &rcpts[i].reply, "sending RCPT TO", 0))
        goto failed;
      if(rcpts[i].reply.code >= 200 && rcpts[i].reply.code < 300)
        accepted++;
    }
    if(!accepted)
      return SMTP_CLIENT_OK;
    if(send_line(c, NULL, "DATA"))
      goto lost;
    if(read_reply(c, last = &data, "sending DATA", 0))
      goto failed;
  }
  if(!accepted)
    return SMTP_CLIENT_OK;
  if(data.code == 354) {
    if(send_body(c, m->body, m->len))
      goto lost;
    /* the upstream has the whole message now: cutting this wait at a stop could make it send
     * the message twice, so only the last stage of a stop does */
    c->conn.idle_ms = c->cfg.data_timeout_ms;
    c->conn.cancelable = CONN_CANCEL_LATE;
    result = read_reply(c, last = &data,
                        "sending end of data -- message may be sent more than once", 0);
    c->conn.idle_ms = c->cfg.command_timeout_ms;
    c->conn.cancelable = CONN_CANCEL_EARLY;
    if(result)
      goto failed;
    c->used = 0;        /* accepted or refused, the transaction is over */
  }
  for(i = 0; i < n; i++)
    if(rcpts[i].reply.code >= 200 && rcpts[i].reply.code < 300)
      rcpts[i].reply = data;
  return SMTP_CLIENT_OK;

stale:
  /* nothing of this transaction was acknowledged: the caller may reconnect and try again */
  close_conn(c);
  return fail(c, r, SMTP_CLIENT_STALE, 451, "4.4.2", "the connection to %s was closed", c->peer);
mail_lost:
  if(probe)
    goto stale;
lost:
  close_conn(c);
  return fail(c, r, SMTP_CLIENT_FAILED, 451, "4.4.2", "lost connection with %s", c->peer);
mail_failed:
  if(probe)
    goto stale;
failed:
  /* a read failed: the connection is gone and *last says how */
  *r = *last;
  close_conn(c);
  return SMTP_CLIENT_FAILED;
}

/* One command of a transaction on its own, for the doctor: 2xx is SMTP_CLIENT_OK. */
static int one_command(struct smtp_client *c, const char *what, const char *line,
                       struct smtp_reply *r)
{
  int result;
  if(!c->connected)
    return fail(c, r, SMTP_CLIENT_FAILED, 451, "4.4.2", "not connected to %s", c->peer);
  if(send_line(c, NULL, "%s", line))
    return fail(c, r, SMTP_CLIENT_FAILED, 451, "4.4.2", "lost connection with %s", c->peer);
  result = read_reply(c, r, what, 0);
  if(!result && (r->code < 200 || r->code >= 300))
    result = SMTP_CLIENT_REPLY;
  if(result == SMTP_CLIENT_FAILED)
    close_conn(c);
  return result;
}

int smtp_client_mail(struct smtp_client *c, const char *sender, struct smtp_reply *r)
{
  char line[LIM_SMTP_PATH + 32];
  snprintf(line, sizeof(line), "MAIL FROM:<%s>", sender);
  c->used = 1;
  c->kept = 1;
  return one_command(c, "sending MAIL FROM", line, r);
}

int smtp_client_rcpt(struct smtp_client *c, const char *address, struct smtp_reply *r)
{
  char line[LIM_SMTP_PATH + 32];
  snprintf(line, sizeof(line), "RCPT TO:<%s>", address);
  return one_command(c, "sending RCPT TO", line, r);
}

int smtp_client_rset(struct smtp_client *c, struct smtp_reply *r)
{
  int result = one_command(c, "sending RSET", "RSET", r);
  if(!result)
    c->used = 0;
  return result;
}

int smtp_client_peer_cert(struct smtp_client *c, char *subject, size_t subjectsz, char *issuer,
                          size_t issuersz, char *names, size_t namessz, long long *not_after)
{
  if(!c->connected || !c->tls_active)
    return -1;
  return tls_conn_peer_cert_info(&c->conn, subject, subjectsz, issuer, issuersz, names, namessz,
                                 not_after);
}

void smtp_client_quit(struct smtp_client *c)
{
  struct smtp_reply r;
  if(!c || !c->connected)
    return;
  c->conn.idle_ms = CLIENT_QUIT_MS;
  if(!send_line(c, NULL, "QUIT"))
    read_reply(c, &r, "sending QUIT", 0);
  close_conn(c);
}
