/* Unit tests of tls/tls.c over real TCP connections on 127.0.0.1: handshakes and line exchange
 * through lib/conn.c, certificate verification outcomes, minimum versions, reloading, and the
 * STARTTLS plaintext-injection class. Certificates are made at run time with openssl(1). */
#include "tls/tls.h"
#include "lib/buf.h"
#include "lib/conn.h"
#include "tests/unit/unit.h"
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#define T_TIMEOUT 10000
#define BIG_LINES 2000
#define BIG_LEN 500

static char dir[512];

static void cleanup_dir(void)
{
  char cmd[700];
  if(dir[0]) {
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if(system(cmd) != 0)
      fprintf(stderr, "could not remove %s\n", dir);
  }
}

static int run(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int run(const char *fmt, ...)
{
  char cmd[4096];
  va_list ap;
  int n;
  va_start(ap, fmt);
  n = vsnprintf(cmd, sizeof(cmd), fmt, ap);
  va_end(ap);
  if(n < 0 || (size_t)n >= sizeof(cmd))
    return -1;
  if(system(cmd) != 0) {
    fprintf(stderr, "command failed: %s\n", cmd);
    return -1;
  }
  return 0;
}

static const char *path(const char *name)
{
  static char p[8][600];
  static int next;
  char *out = p[next++ % 8];
  snprintf(out, sizeof(p[0]), "%s/%s", dir, name);
  return out;
}

/* One CA, one leaf key shared by every leaf (keys are slow to make; the tests are about the
 * certificates): self.pem self-signed for localhost, leaf.pem CA-signed for localhost and
 * 127.0.0.1, other.pem CA-signed for mail.other.example, old.pem CA-signed but expired. */
static int setup(void)
{
  const char *tmp = getenv("TMPDIR");
  static int done, ok;
  if(done)
    return ok ? 0 : -1;
  done = 1;
  signal(SIGPIPE, SIG_IGN);
  snprintf(dir, sizeof(dir), "%s/test_tls.XXXXXX", tmp && *tmp ? tmp : "/tmp");
  if(!mkdtemp(dir)) {
    dir[0] = '\0';
    return -1;
  }
  atexit(cleanup_dir);
#define Q "'%s'"
  if(run("openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj '/CN=Postern Test CA' "
         "-keyout " Q " -out " Q " 2>/dev/null", path("ca.key"), path("ca.pem")) ||
     run("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out " Q " 2>/dev/null",
         path("leaf.key")) ||
     run("openssl req -x509 -new -key " Q " -days 30 -subj /CN=localhost "
         "-addext subjectAltName=DNS:localhost,IP:127.0.0.1 -out " Q " 2>/dev/null",
         path("leaf.key"), path("self.pem")))
    return -1;
  {
    static const struct { const char *name, *cn, *san, *days; } leafs[] = {
      { "leaf", "localhost", "DNS:localhost,IP:127.0.0.1", "30" },
      { "other", "mail.other.example", "DNS:mail.other.example", "30" },
      { "old", "localhost", "DNS:localhost", "-1" },      /* notAfter before now */
    };
    size_t i;
    for(i = 0; i < sizeof(leafs) / sizeof(leafs[0]); i++) {
      char csr[64], ext[64], pem[64];
      snprintf(csr, sizeof(csr), "%s.csr", leafs[i].name);
      snprintf(ext, sizeof(ext), "%s.ext", leafs[i].name);
      snprintf(pem, sizeof(pem), "%s.pem", leafs[i].name);
      if(run("openssl req -new -key " Q " -subj /CN=%s -out " Q " 2>/dev/null",
             path("leaf.key"), leafs[i].cn, path(csr)) ||
         run("printf 'subjectAltName=%s\\n' > " Q, leafs[i].san, path(ext)) ||
         run("openssl x509 -req -in " Q " -CA " Q " -CAkey " Q " -CAcreateserial -days %s "
             "-extfile " Q " -out " Q " 2>/dev/null", path(csr), path("ca.pem"), path("ca.key"),
             leafs[i].days, path(ext), path(pem)))
        return -1;
    }
  }
#undef Q
  ok = 1;
  return 0;
}

static int listen_local(int *port)
{
  struct sockaddr_in sa;
  socklen_t len = sizeof(sa);
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if(fd < 0)
    return -1;
  memset(&sa, 0, sizeof(sa));
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if(bind(fd, (struct sockaddr *)&sa, sizeof(sa)) || listen(fd, 8) ||
     getsockname(fd, (struct sockaddr *)&sa, &len)) {
    close(fd);
    return -1;
  }
  *port = ntohs(sa.sin_port);
  return fd;
}

static int accept_timed(int lfd)
{
  struct pollfd pfd = { lfd, POLLIN, 0 };
  if(poll(&pfd, 1, T_TIMEOUT) != 1)
    return -1;
  return accept(lfd, NULL, NULL);
}

static int connect_local(int port)
{
  struct sockaddr_in sa;
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if(fd < 0)
    return -1;
  memset(&sa, 0, sizeof(sa));
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  sa.sin_port = htons((unsigned short)port);
  if(connect(fd, (struct sockaddr *)&sa, sizeof(sa))) {
    close(fd);
    return -1;
  }
  return fd;
}

/* ---- the server side: one thread per accepted connection ---------------------------------- */

struct srv {
  int lfd;
  struct tls_server_ctx *sctx;
  int starttls;           /* a plaintext "STARTTLS" / "220 go" exchange first */
  int discard;            /* call conn_discard_input() itself before tls_server_start() */
  int inject;             /* send a forged plaintext reply right after the 220 */
  int timeout_ms;
  pthread_t th;
  /* results, read after the join */
  int accepted;
  int start_result;
  int had_input;          /* plaintext was buffered when STARTTLS was answered */
  int active_before;
  char err[512];
  char describe[128];
  char first[256];        /* the first line read over TLS */
  int data_lines;
  long long data_bytes;
};

static void *srv_main(void *arg)
{
  struct srv *s = arg;
  struct conn c;
  struct buf line;
  unsigned flags;
  int fd = accept_timed(s->lfd);
  s->start_result = -2;
  if(fd < 0)
    return NULL;
  s->accepted = 1;
  conn_init(&c, fd, T_TIMEOUT);
  buf_init(&line, 4096);
  if(s->starttls) {
    if(conn_read_line(&c, &line, 512, &flags) || strcmp(line.ptr, "STARTTLS"))
      goto out;
    s->had_input = conn_has_input(&c);
    conn_printf(&c, "220 go\r\n%s", s->inject ? "250 forged\r\n" : "");
    if(conn_flush(&c))
      goto out;
    if(s->discard)
      conn_discard_input(&c);
  }
  s->active_before = tls_conn_active(&c);
  s->start_result = tls_server_start(s->sctx, &c, s->timeout_ms ? s->timeout_ms : T_TIMEOUT,
                                     s->err, sizeof(s->err));
  if(s->start_result)
    goto out;
  tls_conn_describe(&c, s->describe, sizeof(s->describe));
  while(conn_read_line(&c, &line, 4096, &flags) == CONN_OK) {
    if(!s->first[0])
      str_copy(s->first, sizeof(s->first), line.len ? line.ptr : "(empty)");
    if(!strncmp(line.ptr, "DATA ", 5)) {
      s->data_lines++;
      s->data_bytes += (long long)line.len;
      continue;        /* no reply: the client is still sending */
    }
    if(!strcmp(line.ptr, "COUNT"))
      conn_printf(&c, "COUNT %d %lld\r\n", s->data_lines, s->data_bytes);
    else if(!strcmp(line.ptr, "BIG")) {
      char row[BIG_LEN + 3];
      int i;
      memset(row, 'y', BIG_LEN);
      memcpy(row + BIG_LEN, "\r\n", 3);
      for(i = 0; i < BIG_LINES; i++)
        if(conn_write(&c, row, BIG_LEN + 2))
          break;
      conn_printf(&c, "END\r\n");
    }
    else
      conn_printf(&c, "ECHO %s\r\n", line.ptr);
    if(conn_flush(&c))
      break;
  }
out:
  buf_free(&line);
  conn_free(&c);
  return NULL;
}

static int srv_spawn(struct srv *s, int lfd, struct tls_server_ctx *sctx)
{
  s->lfd = lfd;
  s->sctx = sctx;
  return pthread_create(&s->th, NULL, srv_main, s);
}

/* ---- the client side ---------------------------------------------------------------------- */

static int client_open(int port, struct conn *c)
{
  int fd = connect_local(port);
  if(fd < 0)
    return -1;
  conn_init(c, fd, T_TIMEOUT);
  return 0;
}

static int client_starttls(struct conn *c)
{
  struct buf line;
  unsigned flags;
  int result;
  buf_init(&line, 512);
  result = conn_printf(c, "STARTTLS\r\n");
  if(!result)
    result = conn_flush(c);
  if(!result)
    result = conn_read_line(c, &line, 512, &flags);
  if(!result && strcmp(line.ptr, "220 go"))
    result = -1;
  buf_free(&line);
  return result;
}

/* Sends msg, expects "ECHO msg" back. */
static int client_echo(struct conn *c, const char *msg)
{
  struct buf line;
  char want[300];
  unsigned flags;
  int result;
  buf_init(&line, 512);
  snprintf(want, sizeof(want), "ECHO %s", msg);
  result = conn_printf(c, "%s\r\n", msg);
  if(!result)
    result = conn_flush(c);
  if(!result)
    result = conn_read_line(c, &line, 512, &flags);
  if(!result && strcmp(line.ptr, want)) {
    fprintf(stderr, "got \"%s\", expected \"%s\"\n", line.ptr, want);
    result = -1;
  }
  buf_free(&line);
  return result;
}

/* One connection: server thread on sctx, client with cctx checking name. Returns the client's
 * tls_client_start() result; the server's is in *s. */
static int one_session(struct tls_server_ctx *sctx, struct tls_client_ctx *cctx,
                       const char *name, struct srv *s, char *err, size_t errsz)
{
  struct conn c;
  int lfd, port, result = -1;
  lfd = listen_local(&port);
  if(lfd < 0)
    return -1;
  if(srv_spawn(s, lfd, sctx)) {
    close(lfd);
    return -1;
  }
  if(!client_open(port, &c)) {
    result = tls_client_start(cctx, &c, name, T_TIMEOUT, err, errsz);
    if(!result && client_echo(&c, "HELLO"))
      result = -2;
    conn_free(&c);
  }
  pthread_join(s->th, NULL);
  close(lfd);
  return result;
}

static struct tls_server_ctx *server_ctx(const char *cert, const char *minv)
{
  struct tls_server_ctx *s = NULL;
  char err[512];
  if(setup())
    return NULL;
  if(tls_server_ctx_new(path(cert), path("leaf.key"), minv, &s, err, sizeof(err))) {
    fprintf(stderr, "tls_server_ctx_new: %s\n", err);
    return NULL;
  }
  return s;
}

static struct tls_client_ctx *client_ctx(const char *verify, const char *ca, const char *minv)
{
  struct tls_client_ctx *cc = NULL;
  char err[512];
  if(tls_client_ctx_new(verify, ca ? path(ca) : NULL, minv, &cc, err, sizeof(err))) {
    fprintf(stderr, "tls_client_ctx_new: %s\n", err);
    return NULL;
  }
  return cc;
}

/* ---- cases -------------------------------------------------------------------------------- */

static void test_handshake_exchange(void)
{
  struct tls_server_ctx *sctx = server_ctx("leaf.pem", NULL);
  struct tls_client_ctx *cctx = client_ctx("peer", "ca.pem", NULL);
  struct srv s;
  struct conn c;
  struct buf line;
  char err[512] = "", desc[128], subject[256], issuer[256], names[256];
  long long not_after = 0;
  unsigned flags;
  int lfd, port, i;
  CHECK(sctx && cctx);
  if(!sctx || !cctx)
    goto out;
  memset(&s, 0, sizeof(s));
  s.starttls = 1;
  s.discard = 1;
  buf_init(&line, 1024);
  lfd = listen_local(&port);
  CHECK(lfd >= 0);
  CHECK_EQ_INT(srv_spawn(&s, lfd, sctx), 0);
  CHECK_EQ_INT(client_open(port, &c), 0);
  CHECK_EQ_INT(tls_conn_active(&c), 0);
  tls_conn_describe(&c, desc, sizeof(desc));
  CHECK_EQ_STR(desc, "");
  CHECK_EQ_INT(tls_conn_peer_cert_info(&c, subject, sizeof(subject), NULL, 0, NULL, 0, NULL), -1);
  CHECK_EQ_INT(client_starttls(&c), 0);
  CHECK_EQ_INT(tls_client_start(cctx, &c, "localhost", T_TIMEOUT, err, sizeof(err)), 0);
  if(err[0])
    fprintf(stderr, "client: %s\n", err);
  CHECK_EQ_INT(tls_conn_active(&c), 1);
  tls_conn_describe(&c, desc, sizeof(desc));
  CHECK(!strcmp(desc, "TLSv1.3 TLS_AES_256_GCM_SHA384 256/256") ||
        !strcmp(desc, "TLSv1.3 TLS_CHACHA20_POLY1305_SHA256 256/256"));
  fprintf(stderr, "client sees: %s\n", desc);
  CHECK_EQ_INT(tls_conn_peer_cert_info(&c, subject, sizeof(subject), issuer, sizeof(issuer),
                                       names, sizeof(names), &not_after), 0);
  CHECK_EQ_STR(subject, "CN=localhost");
  CHECK_EQ_STR(issuer, "CN=Postern Test CA");
  CHECK_EQ_STR(names, "localhost, 127.0.0.1");
  CHECK(not_after > (long long)time(NULL) + 20 * 86400 &&
        not_after < (long long)time(NULL) + 40 * 86400);
  /* both ways, several times, and a second line written before the first reply was read */
  for(i = 0; i < 5; i++)
    CHECK_EQ_INT(client_echo(&c, i % 2 ? "EHLO client.example" : "NOOP"), 0);
  CHECK_EQ_INT(conn_printf(&c, "ONE\r\nTWO\r\n"), 0);
  CHECK_EQ_INT(conn_flush(&c), 0);
  CHECK_EQ_INT(conn_read_line(&c, &line, 512, &flags), CONN_OK);
  CHECK_EQ_STR(line.ptr, "ECHO ONE");
  CHECK_EQ_INT(conn_read_line(&c, &line, 512, &flags), CONN_OK);
  CHECK_EQ_STR(line.ptr, "ECHO TWO");
  CHECK(flags & CONN_LINE_CRLF);
  conn_free(&c);
  pthread_join(s.th, NULL);
  close(lfd);
  CHECK_EQ_INT(s.start_result, 0);
  CHECK_EQ_INT(s.active_before, 0);
  CHECK_EQ_STR(s.describe, desc);
  CHECK_EQ_STR(s.first, "NOOP");
  buf_free(&line);
out:
  tls_server_ctx_free(sctx);
  tls_client_ctx_free(cctx);
}

/* A megabyte each way: partial writes, full socket buffers, records split across reads. */
static void test_bulk_transfer(void)
{
  struct tls_server_ctx *sctx = server_ctx("self.pem", NULL);
  struct tls_client_ctx *cctx = client_ctx("none", NULL, NULL);
  struct srv s;
  struct conn c;
  struct buf line;
  char err[512] = "", row[BIG_LEN + 8], want[64];
  unsigned flags;
  int lfd, port, i, got = 0, bad = 0;
  CHECK(sctx && cctx);
  if(!sctx || !cctx)
    goto out;
  memset(&s, 0, sizeof(s));
  buf_init(&line, 4096);
  lfd = listen_local(&port);
  CHECK_EQ_INT(srv_spawn(&s, lfd, sctx), 0);
  CHECK_EQ_INT(client_open(port, &c), 0);
  CHECK_EQ_INT(tls_client_start(cctx, &c, "localhost", T_TIMEOUT, err, sizeof(err)), 0);
  memcpy(row, "DATA ", 5);
  memset(row + 5, 'x', BIG_LEN - 5);
  memcpy(row + BIG_LEN, "\r\n", 2);
  for(i = 0; i < BIG_LINES; i++)
    CHECK_EQ_INT(conn_write(&c, row, BIG_LEN + 2), 0);
  CHECK_EQ_INT(conn_printf(&c, "COUNT\r\n"), 0);
  CHECK_EQ_INT(conn_flush(&c), 0);
  CHECK_EQ_INT(conn_read_line(&c, &line, 512, &flags), CONN_OK);
  snprintf(want, sizeof(want), "COUNT %d %d", BIG_LINES, BIG_LINES * BIG_LEN);
  CHECK_EQ_STR(line.ptr, want);
  CHECK_EQ_INT(conn_printf(&c, "BIG\r\n"), 0);
  CHECK_EQ_INT(conn_flush(&c), 0);
  for(;;) {
    if(conn_read_line(&c, &line, 4096, &flags) != CONN_OK)
      break;
    if(!strcmp(line.ptr, "END"))
      break;
    if(line.len != BIG_LEN || line.ptr[0] != 'y' || line.ptr[BIG_LEN - 1] != 'y')
      bad++;
    got++;
  }
  CHECK_EQ_INT(got, BIG_LINES);
  CHECK_EQ_INT(bad, 0);
  CHECK_EQ_INT(client_echo(&c, "after"), 0);
  conn_free(&c);
  pthread_join(s.th, NULL);
  close(lfd);
  CHECK_EQ_INT(s.start_result, 0);
  buf_free(&line);
out:
  tls_server_ctx_free(sctx);
  tls_client_ctx_free(cctx);
}

static void test_verify_peer_accepts_ca_signed(void)
{
  struct tls_server_ctx *sctx = server_ctx("leaf.pem", NULL);
  struct tls_client_ctx *cctx = client_ctx("peer", "ca.pem", NULL);
  static const char *const names[] = { "localhost", "LOCALHOST.", "127.0.0.1" };
  size_t i;
  CHECK(sctx && cctx);
  for(i = 0; sctx && cctx && i < sizeof(names) / sizeof(names[0]); i++) {
    struct srv s;
    char err[512] = "";
    memset(&s, 0, sizeof(s));
    CHECK_EQ_INT(one_session(sctx, cctx, names[i], &s, err, sizeof(err)), 0);
    if(err[0])
      fprintf(stderr, "%s: %s\n", names[i], err);
    CHECK_EQ_INT(s.start_result, 0);
    CHECK_EQ_STR(s.first, "HELLO");
  }
  tls_server_ctx_free(sctx);
  tls_client_ctx_free(cctx);
}

static void expect_refusal(const char *cert, const char *ca, const char *name, const char *text,
                           const char *text2)
{
  struct tls_server_ctx *sctx = server_ctx(cert, NULL);
  struct tls_client_ctx *cctx = client_ctx("peer", ca, NULL);
  struct srv s;
  char err[512] = "";
  CHECK(sctx && cctx);
  if(sctx && cctx) {
    memset(&s, 0, sizeof(s));
    CHECK_EQ_INT(one_session(sctx, cctx, name, &s, err, sizeof(err)), -1);
    fprintf(stderr, "%s for %s: %s\n", cert, name, err);
    CHECK(strstr(err, text) != NULL);
    CHECK(!text2 || strstr(err, text2) != NULL);
    CHECK(!strncmp(err, "certificate verify failed: ", 27));
    /* the server saw the client's alert and gave up too */
    CHECK_EQ_INT(s.start_result, -1);
    CHECK(s.err[0] != '\0');
    fprintf(stderr, "  server: %s\n", s.err);
  }
  tls_server_ctx_free(sctx);
  tls_client_ctx_free(cctx);
}

static void test_verify_peer_refuses_wrong_name(void)
{
  expect_refusal("leaf.pem", "ca.pem", "mail.wrong.example", "hostname mismatch",
                 "(certificate is for localhost, 127.0.0.1)");
  expect_refusal("other.pem", "ca.pem", "localhost", "hostname mismatch",
                 "(certificate is for mail.other.example)");
  expect_refusal("leaf.pem", "ca.pem", "127.0.0.2", "IP address mismatch",
                 "(certificate is for localhost, 127.0.0.1)");
  /* a wildcard-free certificate never matches a longer name */
  expect_refusal("leaf.pem", "ca.pem", "x.localhost", "hostname mismatch", NULL);
}

static void test_verify_peer_refuses_untrusted(void)
{
  /* the message varies across OpenSSL 3 releases: "self signed" / "self-signed" */
  expect_refusal("self.pem", "ca.pem", "localhost", "self", "signed certificate");
  expect_refusal("leaf.pem", NULL, "localhost", "unable to get local issuer certificate", NULL);
  expect_refusal("old.pem", "ca.pem", "localhost", "certificate has expired", NULL);
}

static void test_verify_none_accepts_all(void)
{
  static const struct { const char *cert, *name; } rows[] = {
    { "self.pem", "localhost" }, { "leaf.pem", "mail.wrong.example" }, { "old.pem", "x" },
    { "other.pem", "127.0.0.9" }, { "leaf.pem", "" },
  };
  size_t i;
  for(i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
    struct tls_server_ctx *sctx = server_ctx(rows[i].cert, NULL);
    struct tls_client_ctx *cctx = client_ctx("none", "ca.pem", NULL);
    struct srv s;
    char err[512] = "";
    CHECK(sctx && cctx);
    if(sctx && cctx) {
      memset(&s, 0, sizeof(s));
      CHECK_EQ_INT(one_session(sctx, cctx, rows[i].name, &s, err, sizeof(err)), 0);
      if(err[0])
        fprintf(stderr, "%s for %s: %s\n", rows[i].cert, rows[i].name, err);
      CHECK_EQ_INT(s.start_result, 0);
    }
    tls_server_ctx_free(sctx);
    tls_client_ctx_free(cctx);
  }
}

/* A peer made with OpenSSL directly, capped at TLS 1.2: our API has no maximum to set. */
struct raw_peer {
  int fd;
  int server;
  const char *cert, *key;
  int ok;
  char version[32], cipher[64];
};

static void *raw_peer_main(void *arg)
{
  struct raw_peer *p = arg;
  SSL_CTX *ctx = SSL_CTX_new(p->server ? TLS_server_method() : TLS_client_method());
  SSL *ssl = NULL;
  if(!ctx)
    goto out;
  SSL_CTX_set_max_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
  if(p->server && (SSL_CTX_use_certificate_chain_file(ctx, p->cert) != 1 ||
                   SSL_CTX_use_PrivateKey_file(ctx, p->key, SSL_FILETYPE_PEM) != 1))
    goto out;
  ssl = SSL_new(ctx);
  if(!ssl || SSL_set_fd(ssl, p->fd) != 1)
    goto out;
  if((p->server ? SSL_accept(ssl) : SSL_connect(ssl)) == 1) {
    char reply[64];
    size_t n = 0;
    p->ok = 1;
    str_copy(p->version, sizeof(p->version), SSL_get_version(ssl));
    str_copy(p->cipher, sizeof(p->cipher), SSL_CIPHER_get_name(SSL_get_current_cipher(ssl)));
    if(!p->server && SSL_write_ex(ssl, "HI\r\n", 4, &n) == 1)
      SSL_read_ex(ssl, reply, sizeof(reply), &n);
    SSL_shutdown(ssl);
  }
out:
  SSL_free(ssl);
  SSL_CTX_free(ctx);
  ERR_clear_error();
  return NULL;
}

static void test_min_version(void)
{
  struct tls_server_ctx *s13 = server_ctx("leaf.pem", "1.3");
  struct tls_server_ctx *s12 = server_ctx("leaf.pem", "1.2");
  struct tls_client_ctx *c13 = client_ctx("none", NULL, "1.3");
  struct raw_peer p;
  struct srv s;
  struct conn c;
  char err[512] = "";
  int lfd, port;
  pthread_t th;
  CHECK(s13 && s12 && c13);
  if(!s13 || !s12 || !c13)
    goto out;
  lfd = listen_local(&port);

  /* our 1.3 server, a 1.2 client: refused */
  memset(&s, 0, sizeof(s));
  memset(&p, 0, sizeof(p));
  CHECK_EQ_INT(srv_spawn(&s, lfd, s13), 0);
  p.fd = connect_local(port);
  raw_peer_main(&p);
  pthread_join(s.th, NULL);
  close(p.fd);
  CHECK_EQ_INT(p.ok, 0);
  CHECK_EQ_INT(s.start_result, -1);
  fprintf(stderr, "1.3 server vs 1.2 client: %s\n", s.err);
  CHECK(strstr(s.err, "unsupported protocol") != NULL);

  /* our default (1.2) server, the same client: TLS 1.2 with the server's choice of cipher */
  memset(&s, 0, sizeof(s));
  memset(&p, 0, sizeof(p));
  CHECK_EQ_INT(srv_spawn(&s, lfd, s12), 0);
  p.fd = connect_local(port);
  raw_peer_main(&p);
  pthread_join(s.th, NULL);
  close(p.fd);
  CHECK_EQ_INT(p.ok, 1);
  CHECK_EQ_INT(s.start_result, 0);
  CHECK_EQ_STR(s.first, "HI");
  CHECK_EQ_STR(s.describe, "TLSv1.2 ECDHE-RSA-AES256-GCM-SHA384 256/256");

  /* our 1.3 client, a 1.2 server: refused */
  memset(&p, 0, sizeof(p));
  p.server = 1;
  p.cert = path("leaf.pem");
  p.key = path("leaf.key");
  CHECK_EQ_INT(client_open(port, &c), 0);
  p.fd = accept_timed(lfd);
  CHECK_EQ_INT(pthread_create(&th, NULL, raw_peer_main, &p), 0);
  CHECK_EQ_INT(tls_client_start(c13, &c, "localhost", T_TIMEOUT, err, sizeof(err)), -1);
  fprintf(stderr, "1.3 client vs 1.2 server: %s\n", err);
  CHECK(!strncmp(err, "TLS handshake failed: ", 22));
  CHECK_EQ_INT(tls_conn_active(&c), 0);
  conn_free(&c);
  pthread_join(th, NULL);
  close(p.fd);
  CHECK_EQ_INT(p.ok, 0);
  close(lfd);
out:
  tls_server_ctx_free(s13);
  tls_server_ctx_free(s12);
  tls_client_ctx_free(c13);
}

static void test_server_reload(void)
{
  struct tls_server_ctx *sctx = NULL;
  struct tls_client_ctx *cctx = client_ctx("none", NULL, NULL);
  struct srv a, b;
  struct conn ca, cb;
  char err[512] = "", subject[256];
  int lfd, port;
  CHECK_EQ_INT(setup(), 0);
  CHECK_EQ_INT(run("cp '%s' '%s'", path("leaf.pem"), path("srv.pem")), 0);
  CHECK_EQ_INT(tls_server_ctx_new(path("srv.pem"), path("leaf.key"), NULL, &sctx, err,
                                  sizeof(err)), 0);
  CHECK(sctx && cctx);
  if(!sctx || !cctx)
    goto out;
  lfd = listen_local(&port);
  memset(&a, 0, sizeof(a));
  memset(&b, 0, sizeof(b));

  CHECK_EQ_INT(srv_spawn(&a, lfd, sctx), 0);
  CHECK_EQ_INT(client_open(port, &ca), 0);
  CHECK_EQ_INT(tls_client_start(cctx, &ca, "localhost", T_TIMEOUT, err, sizeof(err)), 0);
  CHECK_EQ_INT(client_echo(&ca, "before"), 0);

  /* a broken file: the reload fails and the old certificate stays */
  CHECK_EQ_INT(run("echo garbage > '%s'", path("srv.pem")), 0);
  CHECK_EQ_INT(tls_server_ctx_reload(sctx, err, sizeof(err)), -1);
  fprintf(stderr, "bad reload: %s\n", err);
  CHECK(strstr(err, path("srv.pem")) != NULL);

  CHECK_EQ_INT(run("cp '%s' '%s'", path("other.pem"), path("srv.pem")), 0);
  CHECK_EQ_INT(tls_server_ctx_reload(sctx, err, sizeof(err)), 0);

  CHECK_EQ_INT(srv_spawn(&b, lfd, sctx), 0);
  CHECK_EQ_INT(client_open(port, &cb), 0);
  CHECK_EQ_INT(tls_client_start(cctx, &cb, "mail.other.example", T_TIMEOUT, err, sizeof(err)), 0);
  CHECK_EQ_INT(tls_conn_peer_cert_info(&cb, subject, sizeof(subject), NULL, 0, NULL, 0, NULL), 0);
  CHECK_EQ_STR(subject, "CN=mail.other.example");
  CHECK_EQ_INT(client_echo(&cb, "new"), 0);

  /* the connection made before the reload goes on with its certificate */
  CHECK_EQ_INT(client_echo(&ca, "still here"), 0);
  CHECK_EQ_INT(tls_conn_peer_cert_info(&ca, subject, sizeof(subject), NULL, 0, NULL, 0, NULL), 0);
  CHECK_EQ_STR(subject, "CN=localhost");

  /* freeing the context leaves started connections working */
  tls_server_ctx_free(sctx);
  sctx = NULL;
  CHECK_EQ_INT(client_echo(&ca, "after free"), 0);
  CHECK_EQ_INT(client_echo(&cb, "after free"), 0);

  conn_free(&ca);
  conn_free(&cb);
  pthread_join(a.th, NULL);
  pthread_join(b.th, NULL);
  close(lfd);
  CHECK_EQ_INT(a.start_result, 0);
  CHECK_EQ_INT(b.start_result, 0);
out:
  tls_server_ctx_free(sctx);
  tls_client_ctx_free(cctx);
}

/* RFC 3207 section 5: "STARTTLS\r\nRSET\r\n" in one packet must not leave an RSET that the
 * server then reads as if it had come over TLS; likewise a reply injected after the 220 must
 * not reach the client as a TLS reply. Run with and without the caller's own discard. */
static void test_starttls_injection(void)
{
  struct tls_server_ctx *sctx = server_ctx("self.pem", NULL);
  struct tls_client_ctx *cctx = client_ctx("none", NULL, NULL);
  int discard;
  CHECK(sctx && cctx);
  for(discard = 1; sctx && cctx && discard >= 0; discard--) {
    struct srv s;
    struct conn c;
    struct buf line;
    char err[512] = "";
    unsigned flags;
    int lfd, port;
    memset(&s, 0, sizeof(s));
    s.starttls = 1;
    s.discard = discard;
    s.inject = 1;
    buf_init(&line, 512);
    lfd = listen_local(&port);
    CHECK_EQ_INT(srv_spawn(&s, lfd, sctx), 0);
    CHECK_EQ_INT(client_open(port, &c), 0);
    CHECK_EQ_INT(conn_printf(&c, "STARTTLS\r\nRSET\r\nMAIL FROM:<evil@example>\r\n"), 0);
    CHECK_EQ_INT(conn_flush(&c), 0);
    CHECK_EQ_INT(conn_read_line(&c, &line, 512, &flags), CONN_OK);
    CHECK_EQ_STR(line.ptr, "220 go");
    /* wait until the forged line is surely buffered here too */
    usleep(100 * 1000);
    CHECK_EQ_INT(tls_client_start(cctx, &c, "localhost", T_TIMEOUT, err, sizeof(err)), 0);
    if(err[0])
      fprintf(stderr, "client: %s\n", err);
    CHECK_EQ_INT(client_echo(&c, "EHLO after.tls"), 0);
    conn_free(&c);
    pthread_join(s.th, NULL);
    close(lfd);
    CHECK_EQ_INT(s.had_input, 1);
    CHECK_EQ_INT(s.start_result, 0);
    CHECK_EQ_STR(s.first, "EHLO after.tls");
    buf_free(&line);
  }
  tls_server_ctx_free(sctx);
  tls_client_ctx_free(cctx);
}

static void test_handshake_failures(void)
{
  struct tls_server_ctx *sctx = server_ctx("self.pem", NULL);
  struct srv s;
  struct conn c;
  long long t0;
  int lfd, port;
  CHECK(sctx != NULL);
  if(!sctx)
    return;
  lfd = listen_local(&port);

  /* a silent client: the handshake gives up at its timeout */
  memset(&s, 0, sizeof(s));
  s.timeout_ms = 300;
  CHECK_EQ_INT(srv_spawn(&s, lfd, sctx), 0);
  CHECK_EQ_INT(client_open(port, &c), 0);
  t0 = time_mono_ms();
  pthread_join(s.th, NULL);
  CHECK(time_mono_ms() - t0 < 3000);
  CHECK_EQ_INT(s.start_result, -1);
  CHECK_EQ_STR(s.err, "TLS handshake timed out");
  conn_free(&c);

  /* a client speaking plaintext */
  memset(&s, 0, sizeof(s));
  CHECK_EQ_INT(srv_spawn(&s, lfd, sctx), 0);
  CHECK_EQ_INT(client_open(port, &c), 0);
  CHECK_EQ_INT(conn_printf(&c, "EHLO plain.example\r\n"), 0);
  CHECK_EQ_INT(conn_flush(&c), 0);
  pthread_join(s.th, NULL);
  CHECK_EQ_INT(s.start_result, -1);
  fprintf(stderr, "plaintext client: %s\n", s.err);
  CHECK(!strncmp(s.err, "TLS handshake failed: ", 22));
  conn_free(&c);

  /* a client that hangs up at once */
  memset(&s, 0, sizeof(s));
  CHECK_EQ_INT(srv_spawn(&s, lfd, sctx), 0);
  CHECK_EQ_INT(client_open(port, &c), 0);
  conn_free(&c);
  pthread_join(s.th, NULL);
  CHECK_EQ_INT(s.start_result, -1);
  CHECK_EQ_STR(s.err, "TLS handshake failed: connection closed by peer");

  close(lfd);
  tls_server_ctx_free(sctx);
}

static void test_context_errors(void)
{
  struct tls_server_ctx *s = NULL;
  struct tls_client_ctx *cc = NULL;
  char err[512];
  CHECK_EQ_INT(setup(), 0);
  CHECK_EQ_INT(tls_server_ctx_new(path("missing.pem"), path("leaf.key"), NULL, &s, err,
                                  sizeof(err)), -1);
  fprintf(stderr, "%s\n", err);
  CHECK(strstr(err, "missing.pem") != NULL);
  CHECK(s == NULL);
  CHECK_EQ_INT(tls_server_ctx_new(path("leaf.pem"), path("missing.key"), NULL, &s, err,
                                  sizeof(err)), -1);
  fprintf(stderr, "%s\n", err);
  CHECK(strstr(err, "missing.key") != NULL);
  CHECK_EQ_INT(tls_server_ctx_new(path("leaf.pem"), path("ca.key"), NULL, &s, err,
                                  sizeof(err)), -1);
  fprintf(stderr, "%s\n", err);
  CHECK(strstr(err, "does not match") != NULL);
  CHECK_EQ_INT(tls_server_ctx_new(path("leaf.pem"), path("leaf.key"), "1.1", &s, err,
                                  sizeof(err)), -1);
  CHECK(strstr(err, "1.1") != NULL);
  CHECK_EQ_INT(tls_server_ctx_new(path("leaf.pem"), path("leaf.key"), "TLSv1.3", &s, err,
                                  sizeof(err)), 0);
  tls_server_ctx_free(s);
  tls_server_ctx_free(NULL);
  CHECK_EQ_INT(tls_client_ctx_new("sometimes", NULL, NULL, &cc, err, sizeof(err)), -1);
  CHECK(strstr(err, "sometimes") != NULL);
  CHECK_EQ_INT(tls_client_ctx_new("peer", path("missing-ca.pem"), NULL, &cc, err,
                                  sizeof(err)), -1);
  fprintf(stderr, "%s\n", err);
  CHECK(strstr(err, "missing-ca.pem") != NULL);
  CHECK(cc == NULL);
  CHECK_EQ_INT(tls_client_ctx_new("peer", NULL, "1.3", &cc, err, sizeof(err)), 0);
  tls_client_ctx_free(cc);
  tls_client_ctx_free(NULL);
}

static const struct unit_case cases[] = {
  { "handshake_exchange", test_handshake_exchange },
  { "bulk_transfer", test_bulk_transfer },
  { "verify_peer_accepts_ca_signed", test_verify_peer_accepts_ca_signed },
  { "verify_peer_refuses_wrong_name", test_verify_peer_refuses_wrong_name },
  { "verify_peer_refuses_untrusted", test_verify_peer_refuses_untrusted },
  { "verify_none_accepts_all", test_verify_none_accepts_all },
  { "min_version", test_min_version },
  { "server_reload", test_server_reload },
  { "starttls_injection", test_starttls_injection },
  { "handshake_failures", test_handshake_failures },
  { "context_errors", test_context_errors },
};

UNIT_MAIN(cases)
