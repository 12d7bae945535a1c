/* OpenSSL contexts and the TLS stream that slides under a struct conn: reloadable server
 * certificates, client verification with host or IP checks, minimum versions and SNI. The
 * handshake runs here on a non-blocking fd with poll(); afterwards lib/conn.c drives I/O. */
#include "tls/tls.h"
#include "lib/buf.h"
#include "lib/conn.h"
#include "global/metrics.h"
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

/* Only TLS <= 1.2 reads this list; TLS 1.3 keeps OpenSSL's default suites, all of them AEAD. */
#define TLS_CIPHERS_12 "HIGH:!aNULL:!MD5:!RC4:!3DES"
#define TLS_NAMES_MAX 1024          /* certificate names quoted in one error message */

struct tls_server_ctx {
  pthread_mutex_t lock;             /* guards ctx: a reload swaps it while sessions start */
  SSL_CTX *ctx;
  char *cert_file;
  char *key_file;
  int min_version;
};

struct tls_client_ctx {
  SSL_CTX *ctx;
  int verify;                       /* verify = peer */
};

struct tls_stream {
  SSL *ssl;
  int broken;                       /* after a fatal error OpenSSL forbids SSL_shutdown */
};

static void errf(char *err, size_t errsz, const char *fmt, ...)
  __attribute__((format(printf, 3, 4)));

static void errf(char *err, size_t errsz, const char *fmt, ...)
{
  va_list ap;
  if(!err || !errsz)
    return;
  va_start(ap, fmt);
  vsnprintf(err, errsz, fmt, ap);
  va_end(ap);
}

/* The first error OpenSSL queued is the root cause ("No such file or directory", "no shared
 * cipher"); the ones after it are the calls above it. Empties this thread's queue, so a stale
 * error can never be blamed on a later call. */
static const char *ossl_reason(char *out, size_t outsz)
{
  unsigned long e = ERR_peek_error();
  const char *r = e ? ERR_reason_error_string(e) : NULL;
  out[0] = '\0';
  if(e && ERR_SYSTEM_ERROR(e)) {
    char tmp[128];
    str_copy(out, outsz, strerror_r(ERR_GET_REASON(e), tmp, sizeof(tmp)));
  }
  else if(r)
    str_copy(out, outsz, r);
  else if(e)
    ERR_error_string_n(e, out, outsz);
  else
    str_copy(out, outsz, "unknown error");
  ERR_clear_error();
  return out;
}

static int parse_min_version(const char *s, int *out, char *err, size_t errsz)
{
  if(!s || !*s || !strcmp(s, "1.2") || !strcmp(s, "TLSv1.2"))
    *out = TLS1_2_VERSION;
  else if(!strcmp(s, "1.3") || !strcmp(s, "TLSv1.3"))
    *out = TLS1_3_VERSION;
  else {
    errf(err, errsz, "unknown TLS minimum version \"%.20s\" (use 1.2 or 1.3)", s);
    return -1;
  }
  return 0;
}

/* What both sides share: the floor, no compression (CRIME), no renegotiation, and writes that
 * conn.c may retry with the same bytes at a moved address. */
static int ctx_common(SSL_CTX *ctx, int min_version, char *err, size_t errsz)
{
  char why[256];
  if(SSL_CTX_set_min_proto_version(ctx, min_version) != 1) {
    errf(err, errsz, "cannot set the TLS minimum version: %s", ossl_reason(why, sizeof(why)));
    return -1;
  }
  /* SMTP frames its own end (QUIT, the final "." and reply lines), so a peer that closes
   * without close_notify is an ordinary EOF rather than a truncation attack; most do. */
  SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                      SSL_OP_IGNORE_UNEXPECTED_EOF);
  if(SSL_CTX_set_cipher_list(ctx, TLS_CIPHERS_12) != 1) {
    errf(err, errsz, "cannot set the TLS cipher list: %s", ossl_reason(why, sizeof(why)));
    return -1;
  }
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  return 0;
}

static int server_ssl_ctx_build(const char *cert_file, const char *key_file, int min_version,
                                SSL_CTX **out, char *err, size_t errsz)
{
  char why[256];
  SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
  int result = -1;
  if(!ctx) {
    errf(err, errsz, "cannot create a TLS context: %s", ossl_reason(why, sizeof(why)));
    goto out;
  }
  if(ctx_common(ctx, min_version, err, errsz))
    goto out;
  SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE);
  if(SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1) {
    errf(err, errsz, "cannot load certificate %s: %s", cert_file,
         ossl_reason(why, sizeof(why)));
    goto out;
  }
  if(SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) != 1) {
    unsigned long e = ERR_peek_error();
    if(ERR_GET_LIB(e) == ERR_LIB_X509 && ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH) {
      ERR_clear_error();
      errf(err, errsz, "private key %s does not match certificate %s", key_file, cert_file);
      goto out;
    }
    errf(err, errsz, "cannot load private key %s: %s", key_file, ossl_reason(why, sizeof(why)));
    goto out;
  }
  if(SSL_CTX_check_private_key(ctx) != 1) {
    ERR_clear_error();
    errf(err, errsz, "private key %s does not match certificate %s", key_file, cert_file);
    goto out;
  }
  *out = ctx;
  ctx = NULL;
  result = 0;
out:
  SSL_CTX_free(ctx);
  return result;
}

int tls_server_ctx_new(const char *cert_file, const char *key_file, const char *min_version,
                       struct tls_server_ctx **out, char *err, size_t errsz)
{
  struct tls_server_ctx *s = NULL;
  int min = 0, result = -1;
  *out = NULL;
  if(!cert_file || !*cert_file || !key_file || !*key_file) {
    errf(err, errsz, "TLS needs both a certificate file and a key file");
    goto out;
  }
  if(parse_min_version(min_version, &min, err, errsz))
    goto out;
  s = calloc(1, sizeof(*s));
  if(!s || !(s->cert_file = strdup(cert_file)) || !(s->key_file = strdup(key_file))) {
    errf(err, errsz, "out of memory");
    goto out;
  }
  s->min_version = min;
  if(server_ssl_ctx_build(cert_file, key_file, min, &s->ctx, err, errsz))
    goto out;
  if(pthread_mutex_init(&s->lock, NULL)) {
    errf(err, errsz, "cannot create a lock");
    goto out;
  }
  *out = s;
  s = NULL;
  result = 0;
out:
  if(s) {
    SSL_CTX_free(s->ctx);
    free(s->cert_file);
    free(s->key_file);
    free(s);
  }
  return result;
}

int tls_server_ctx_reload(struct tls_server_ctx *sctx, char *err, size_t errsz)
{
  SSL_CTX *fresh = NULL, *old;
  if(server_ssl_ctx_build(sctx->cert_file, sctx->key_file, sctx->min_version, &fresh,
                          err, errsz))
    return -1;
  pthread_mutex_lock(&sctx->lock);
  old = sctx->ctx;
  sctx->ctx = fresh;
  pthread_mutex_unlock(&sctx->lock);
  /* only our reference: every SSL made from the old context holds its own */
  SSL_CTX_free(old);
  return 0;
}

void tls_server_ctx_free(struct tls_server_ctx *sctx)
{
  if(!sctx)
    return;
  SSL_CTX_free(sctx->ctx);
  pthread_mutex_destroy(&sctx->lock);
  free(sctx->cert_file);
  free(sctx->key_file);
  free(sctx);
}

int tls_client_ctx_new(const char *verify, const char *ca_file, const char *min_version,
                       struct tls_client_ctx **out, char *err, size_t errsz)
{
  char why[256];
  struct tls_client_ctx *cc = NULL;
  int min = 0, peer, result = -1;
  *out = NULL;
  if(!verify || !strcmp(verify, "peer"))
    peer = 1;
  else if(!strcmp(verify, "none"))
    peer = 0;
  else {
    errf(err, errsz, "unknown verify mode \"%.20s\" (use peer or none)", verify);
    goto out;
  }
  if(parse_min_version(min_version, &min, err, errsz))
    goto out;
  cc = calloc(1, sizeof(*cc));
  if(!cc) {
    errf(err, errsz, "out of memory");
    goto out;
  }
  cc->verify = peer;
  cc->ctx = SSL_CTX_new(TLS_client_method());
  if(!cc->ctx) {
    errf(err, errsz, "cannot create a TLS context: %s", ossl_reason(why, sizeof(why)));
    goto out;
  }
  if(ctx_common(cc->ctx, min, err, errsz))
    goto out;
  if(ca_file && *ca_file) {
    /* a CA file the operator named must load, whatever the verify mode */
    if(SSL_CTX_load_verify_locations(cc->ctx, ca_file, NULL) != 1) {
      errf(err, errsz, "cannot load CA file %s: %s", ca_file, ossl_reason(why, sizeof(why)));
      goto out;
    }
  }
  else if(SSL_CTX_set_default_verify_paths(cc->ctx) != 1) {
    if(peer) {
      errf(err, errsz, "cannot load the system CA store: %s", ossl_reason(why, sizeof(why)));
      goto out;
    }
    ERR_clear_error();
  }
  SSL_CTX_set_verify(cc->ctx, peer ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
  *out = cc;
  cc = NULL;
  result = 0;
out:
  tls_client_ctx_free(cc);
  return result;
}

void tls_client_ctx_free(struct tls_client_ctx *cctx)
{
  if(!cctx)
    return;
  SSL_CTX_free(cctx->ctx);
  free(cctx);
}

/* ---- the stream under struct conn ------------------------------------------------------ */

/* Maps SSL_get_error() to conn.c's convention: -1 with EAGAIN, and *want_other set when
 * OpenSSL needs the direction opposite to the call (other_want); 0 for the peer's EOF. */
static ssize_t stream_result(struct tls_stream *st, int e, int saved_errno, int is_read,
                             int *want_other)
{
  int other_want = is_read ? SSL_ERROR_WANT_WRITE : SSL_ERROR_WANT_READ;
  if(e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
    if(e == other_want && want_other)
      *want_other = 1;
    errno = EAGAIN;
    return -1;
  }
  if(e == SSL_ERROR_ZERO_RETURN) {
    if(is_read)
      return 0;
    errno = EPIPE;
    return -1;
  }
  ERR_clear_error();
  if(e == SSL_ERROR_SYSCALL || e == SSL_ERROR_SSL)
    st->broken = 1;
  if(e == SSL_ERROR_SYSCALL) {
    if(!saved_errno && is_read)
      return 0;
    errno = saved_errno ? saved_errno : EPIPE;
    return -1;
  }
  errno = e == SSL_ERROR_SSL ? EPROTO : EIO;
  return -1;
}

static ssize_t tls_stream_read(void *ctx, void *p, size_t n, int *want_write)
{
  struct tls_stream *st = ctx;
  size_t got = 0;
  int r, saved;
  ERR_clear_error();
  errno = 0;
  r = SSL_read_ex(st->ssl, p, n, &got);
  saved = errno;
  if(r == 1)
    return (ssize_t)got;
  return stream_result(st, SSL_get_error(st->ssl, r), saved, 1, want_write);
}

static ssize_t tls_stream_write(void *ctx, const void *p, size_t n, int *want_read)
{
  struct tls_stream *st = ctx;
  size_t put = 0;
  int r, saved;
  ERR_clear_error();
  errno = 0;
  r = SSL_write_ex(st->ssl, p, n, &put);
  saved = errno;
  if(r == 1)
    return (ssize_t)put;
  return stream_result(st, SSL_get_error(st->ssl, r), saved, 0, want_read);
}

static size_t tls_stream_pending(void *ctx)
{
  struct tls_stream *st = ctx;
  int n = SSL_pending(st->ssl);
  return n > 0 ? (size_t)n : 0;
}

static void tls_stream_close(void *ctx)
{
  struct tls_stream *st = ctx;
  if(!st)
    return;
  /* one non-blocking try at close_notify; a session that is closing does not wait for it */
  if(!st->broken) {
    ERR_clear_error();
    SSL_shutdown(st->ssl);
  }
  ERR_clear_error();
  SSL_free(st->ssl);
  free(st);
}

static const struct conn_stream_ops tls_stream_ops = {
  tls_stream_read, tls_stream_write, tls_stream_pending, tls_stream_close
};

static struct tls_stream *stream_of(struct conn *c)
{
  return c && c->ops == &tls_stream_ops ? c->ops_ctx : NULL;
}

/* ---- handshakes ------------------------------------------------------------------------- */

/* The DNS and IP subject alternative names of cert, escaped, joined by ", "; the common name
 * when there are none and cn_fallback is set (what a mismatch message should show). */
static void cert_names(X509 *cert, int cn_fallback, struct buf *out)
{
  GENERAL_NAMES *gens = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
  int i, n = gens ? sk_GENERAL_NAME_num(gens) : 0;
  for(i = 0; i < n; i++) {
    const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
    const unsigned char *d;
    int len;
    if(g->type == GEN_DNS) {
      d = ASN1_STRING_get0_data(g->d.dNSName);
      len = ASN1_STRING_length(g->d.dNSName);
      if(len < 0 || (out->len && buf_add(out, ", ", 2)) || buf_addrepr(out, d, (size_t)len, 255))
        break;
    }
    else if(g->type == GEN_IPADD) {
      char ip[INET6_ADDRSTRLEN];
      d = ASN1_STRING_get0_data(g->d.iPAddress);
      len = ASN1_STRING_length(g->d.iPAddress);
      if((len != 4 && len != 16) || !inet_ntop(len == 4 ? AF_INET : AF_INET6, d, ip, sizeof(ip)))
        continue;
      if((out->len && buf_add(out, ", ", 2)) || buf_addstr(out, ip))
        break;
    }
  }
  GENERAL_NAMES_free(gens);
  if(!out->len && cn_fallback) {
    X509_NAME *subj = X509_get_subject_name(cert);
    int at = X509_NAME_get_index_by_NID(subj, NID_commonName, -1);
    ASN1_STRING *cn = at >= 0 ? X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subj, at)) : NULL;
    if(cn && ASN1_STRING_length(cn) > 0)
      buf_addrepr(out, ASN1_STRING_get0_data(cn), (size_t)ASN1_STRING_length(cn), 255);
  }
}

/* Why a handshake failed, in words an operator can act on. */
static void handshake_error(SSL *ssl, int e, int saved_errno, int verify_peer, char *err,
                            size_t errsz)
{
  char why[256];
  long v = verify_peer ? SSL_get_verify_result(ssl) : X509_V_OK;
  if(v != X509_V_OK) {
    /* the chain is kept even when verification stopped the handshake; [0] is the leaf */
    STACK_OF(X509) *chain = SSL_get_peer_cert_chain(ssl);
    X509 *leaf = chain && sk_X509_num(chain) > 0 ? sk_X509_value(chain, 0) : NULL;
    struct buf names;
    buf_init(&names, TLS_NAMES_MAX);
    if(leaf && (v == X509_V_ERR_HOSTNAME_MISMATCH || v == X509_V_ERR_IP_ADDRESS_MISMATCH))
      cert_names(leaf, 1, &names);
    if(names.len)
      errf(err, errsz, "certificate verify failed: %s (certificate is for %s)",
           X509_verify_cert_error_string(v), names.ptr);
    else
      errf(err, errsz, "certificate verify failed: %s", X509_verify_cert_error_string(v));
    buf_free(&names);
    ERR_clear_error();
    return;
  }
  if(e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && !saved_errno &&
                                    !ERR_peek_error())) {
    ERR_clear_error();
    errf(err, errsz, "TLS handshake failed: connection closed by peer");
  }
  else if(e == SSL_ERROR_SYSCALL && saved_errno && !ERR_peek_error()) {
    char tmp[128];
    errf(err, errsz, "TLS handshake failed: %s", strerror_r(saved_errno, tmp, sizeof(tmp)));
  }
  else
    errf(err, errsz, "TLS handshake failed: %s", ossl_reason(why, sizeof(why)));
}

/* Drives the handshake on the non-blocking fd, waiting with poll() in the direction OpenSSL
 * asks for, until timeout_ms (c->idle_ms when <= 0) or c's session deadline. */
static int handshake_run(SSL *ssl, struct conn *c, int is_server, int verify_peer,
                         int timeout_ms, char *err, size_t errsz)
{
  long long start = time_mono_ms();
  int limit = timeout_ms > 0 ? timeout_ms : c->idle_ms;
  for(;;) {
    struct pollfd pfd[2];
    int r, e, saved;
    ERR_clear_error();
    errno = 0;
    r = is_server ? SSL_accept(ssl) : SSL_connect(ssl);
    saved = errno;
    if(r == 1)
      return 0;
    e = SSL_get_error(ssl, r);
    if(e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
      handshake_error(ssl, e, saved, verify_peer, err, errsz);
      return -1;
    }
    for(;;) {
      int bounded = 0;
      long long now = time_mono_ms(), left = 0;
      if(limit > 0) {
        bounded = 1;
        left = start + limit - now;
      }
      if(c->deadline_ms && (!bounded || c->deadline_ms - now < left)) {
        bounded = 1;
        left = c->deadline_ms - now;
      }
      if(bounded && left <= 0) {
        errf(err, errsz, "TLS handshake timed out");
        return -1;
      }
      if(conn_cancelled(c->cancelable)) {
        errf(err, errsz, "TLS handshake interrupted: postern is stopping");
        return -1;
      }
      pfd[0].fd = c->fd;
      pfd[0].events = e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT;
      pfd[0].revents = 0;
      pfd[1].fd = conn_cancel_fd(c->cancelable);
      pfd[1].events = POLLIN;
      pfd[1].revents = 0;
      r = poll(pfd, 2, !bounded ? -1 : (int)(left > 60000 ? 60000 : left));
      if(r > 0 && pfd[1].revents)
        continue;      /* the check above ends it */
      if(r > 0)
        break;         /* POLLHUP/POLLERR too: OpenSSL's next call says what happened */
      if(r < 0 && errno != EINTR) {
        char tmp[128];
        errf(err, errsz, "TLS handshake: poll: %s", strerror_r(errno, tmp, sizeof(tmp)));
        return -1;
      }
    }
  }
}

/* Common to both sides; takes ssl over: it ends up in c's stream or freed. */
static int stream_start(SSL *ssl, struct conn *c, int is_server, int verify_peer,
                        int timeout_ms, char *err, size_t errsz)
{
  struct tls_stream *st = NULL;
  char why[256];
  int fl, result = -1;
  /* OpenSSL must never block in read() or write(): timeouts are ours, taken in poll() */
  fl = fcntl(c->fd, F_GETFL);
  if(fl < 0 || (!(fl & O_NONBLOCK) && fcntl(c->fd, F_SETFL, fl | O_NONBLOCK) < 0)) {
    char tmp[128];
    errf(err, errsz, "TLS: cannot make the socket non-blocking: %s",
         strerror_r(errno, tmp, sizeof(tmp)));
    goto out;
  }
  if(SSL_set_fd(ssl, c->fd) != 1) {
    errf(err, errsz, "TLS: cannot attach the socket: %s", ossl_reason(why, sizeof(why)));
    goto out;
  }
  if(handshake_run(ssl, c, is_server, verify_peer, timeout_ms, err, errsz)) {
    metrics_tls_failure(is_server ? METRICS_SIDE_LISTENER : METRICS_SIDE_UPSTREAM);
    goto out;
  }
  st = calloc(1, sizeof(*st));
  if(!st) {
    errf(err, errsz, "out of memory");
    goto out;
  }
  st->ssl = ssl;
  ssl = NULL;
  conn_set_stream(c, &tls_stream_ops, st);
  result = 0;
out:
  if(ssl) {
    ERR_clear_error();
    SSL_free(ssl);
  }
  return result;
}

/* Before a handshake: nothing read in plaintext may be taken later as if it came over TLS
 * (RFC 3207 section 5, the STARTTLS command/response injection class), and what we wrote in
 * plaintext (the 220 or the STARTTLS) goes out as plaintext. */
static int conn_prepare(struct conn *c, char *err, size_t errsz)
{
  if(c->ops) {
    errf(err, errsz, "TLS is already active on this connection");
    return -1;
  }
  conn_discard_input(c);
  if(c->wbuf.len && conn_flush(c)) {
    errf(err, errsz, "TLS: cannot send pending output before the handshake");
    return -1;
  }
  return 0;
}

int tls_server_start(struct tls_server_ctx *sctx, struct conn *c, int timeout_ms,
                     char *err, size_t errsz)
{
  char why[256];
  SSL_CTX *ctx;
  SSL *ssl;
  if(conn_prepare(c, err, errsz))
    return -1;
  /* hold the current context across SSL_new, so a reload that swaps it meanwhile cannot free
   * it under us; the SSL then keeps its own reference for its whole life */
  pthread_mutex_lock(&sctx->lock);
  ctx = sctx->ctx;
  SSL_CTX_up_ref(ctx);
  pthread_mutex_unlock(&sctx->lock);
  ssl = SSL_new(ctx);
  SSL_CTX_free(ctx);
  if(!ssl) {
    errf(err, errsz, "TLS: cannot create a session: %s", ossl_reason(why, sizeof(why)));
    return -1;
  }
  return stream_start(ssl, c, 1, 0, timeout_ms, err, errsz);
}

int tls_client_start(struct tls_client_ctx *cctx, struct conn *c, const char *servername,
                     int timeout_ms, char *err, size_t errsz)
{
  char why[256], host[256];
  unsigned char addr[sizeof(struct in6_addr)];
  size_t n = servername ? strlen(servername) : 0;
  int is_ip;
  SSL *ssl = NULL;
  if(conn_prepare(c, err, errsz))
    return -1;
  /* "[2001:db8::1]" as written in a host setting; "mx.example." as written in DNS */
  if(n >= 2 && servername[0] == '[' && servername[n - 1] == ']') {
    servername++;
    n -= 2;
  }
  else if(n > 1 && servername[n - 1] == '.')
    n--;
  if(n >= sizeof(host)) {
    errf(err, errsz, "TLS: server name too long");
    return -1;
  }
  if(n)
    memcpy(host, servername, n);
  host[n] = '\0';
  if(!n && cctx->verify) {
    errf(err, errsz, "TLS: verify = peer needs a server name to check");
    return -1;
  }
  is_ip = n && (inet_pton(AF_INET, host, addr) == 1 || inet_pton(AF_INET6, host, addr) == 1);
  ssl = SSL_new(cctx->ctx);
  if(!ssl) {
    errf(err, errsz, "TLS: cannot create a session: %s", ossl_reason(why, sizeof(why)));
    return -1;
  }
  /* RFC 6066 3: SNI carries host names only, never address literals */
  if(n && !is_ip && SSL_set_tlsext_host_name(ssl, host) != 1) {
    errf(err, errsz, "TLS: cannot set the server name: %s", ossl_reason(why, sizeof(why)));
    goto fail;
  }
  if(cctx->verify) {
    X509_VERIFY_PARAM *vp = SSL_get0_param(ssl);
    int ok;
    if(is_ip)
      ok = X509_VERIFY_PARAM_set1_ip_asc(vp, host);
    else {
      X509_VERIFY_PARAM_set_hostflags(vp, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
      ok = X509_VERIFY_PARAM_set1_host(vp, host, 0);
    }
    if(ok != 1) {
      errf(err, errsz, "TLS: cannot check the name: %s", ossl_reason(why, sizeof(why)));
      goto fail;
    }
  }
  return stream_start(ssl, c, 0, cctx->verify, timeout_ms, err, errsz);
fail:
  SSL_free(ssl);
  return -1;
}

/* ---- what the rest of Postern may ask about a TLS connection ------------------------------ */

int tls_conn_active(struct conn *c)
{
  return stream_of(c) != NULL;
}

void tls_conn_describe(struct conn *c, char *out, size_t outsz)
{
  struct tls_stream *st = stream_of(c);
  const SSL_CIPHER *cipher;
  int bits, alg_bits = 0;
  if(!outsz)
    return;
  out[0] = '\0';
  if(!st || !(cipher = SSL_get_current_cipher(st->ssl)))
    return;
  bits = SSL_CIPHER_get_bits(cipher, &alg_bits);
  snprintf(out, outsz, "%s %s %d/%d", SSL_get_version(st->ssl), SSL_CIPHER_get_name(cipher),
           bits, alg_bits);
}

/* A name in RFC 2253 form with everything but printable ASCII escaped (it is the peer's). */
static void name_print(X509_NAME *name, char *out, size_t outsz)
{
  BIO *b = BIO_new(BIO_s_mem());
  char *p = NULL;
  long n;
  struct buf tmp;
  out[0] = '\0';
  if(!b)
    return;
  buf_init(&tmp, outsz > 1 ? outsz - 1 : 0);
  if(X509_NAME_print_ex(b, name, 0, XN_FLAG_RFC2253) >= 0 && (n = BIO_get_mem_data(b, &p)) > 0) {
    buf_addrepr(&tmp, p, (size_t)n, outsz);
    if(tmp.ptr)
      str_copy(out, outsz, tmp.ptr);
  }
  buf_free(&tmp);
  BIO_free(b);
}

int tls_conn_peer_cert_info(struct conn *c, char *subject, size_t subjectsz, char *issuer,
                            size_t issuersz, char *names, size_t namessz,
                            long long *not_after_epoch)
{
  struct tls_stream *st = stream_of(c);
  X509 *cert = st ? SSL_get0_peer_certificate(st->ssl) : NULL;
  if(!cert)
    return -1;
  if(subject && subjectsz)
    name_print(X509_get_subject_name(cert), subject, subjectsz);
  if(issuer && issuersz)
    name_print(X509_get_issuer_name(cert), issuer, issuersz);
  if(names && namessz) {
    struct buf b;
    buf_init(&b, TLS_NAMES_MAX);
    cert_names(cert, 0, &b);
    str_copy(names, namessz, b.ptr ? b.ptr : "");
    buf_free(&b);
  }
  if(not_after_epoch) {
    struct tm tm;
    memset(&tm, 0, sizeof(tm));
    *not_after_epoch = ASN1_TIME_to_tm(X509_get0_notAfter(cert), &tm) == 1 ? timegm(&tm) : 0;
  }
  ERR_clear_error();
  return 0;
}
