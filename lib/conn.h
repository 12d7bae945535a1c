/* Line and block I/O over a socket or a TLS stream, with timeouts and capped buffers.
 * The stream underneath is a small function table, so tls/ can slide under an open
 * connection (STARTTLS) without the protocol engines knowing. */
#ifndef POSTERN_CONN_H
#define POSTERN_CONN_H
#include <stddef.h>
#include <sys/types.h>
#include <sys/socket.h>
#include "lib/buf.h"

struct conn_stream_ops {
  /* return bytes (>0), 0 on orderly EOF, -1 error with errno; EAGAIN/EWOULDBLOCK when the
   * caller must poll(want) and retry */
  ssize_t (*read)(void *ctx, void *p, size_t n, int *want_write);
  ssize_t (*write)(void *ctx, const void *p, size_t n, int *want_read);
  size_t  (*pending)(void *ctx);          /* bytes the stream already holds decrypted */
  void    (*close)(void *ctx);            /* frees ctx; does not close the fd */
};

enum conn_result {
  CONN_OK = 0,
  CONN_EOF,          /* peer closed */
  CONN_TIMEOUT,      /* idle timeout or session deadline */
  CONN_TOO_LONG,     /* line longer than allowed; the rest of it was discarded */
  CONN_ERROR,        /* I/O error */
  CONN_WOKEN,        /* wake_fd became readable while waiting for input */
};

struct conn {
  int fd;
  const struct conn_stream_ops *ops;   /* NULL: plain socket */
  void *ops_ctx;
  char rbuf[16384];
  size_t rstart, rend;                  /* unread input is rbuf[rstart..rend) */
  struct buf wbuf;                      /* replies waiting for conn_flush() */
  int idle_ms;                          /* per-read/write timeout */
  long long deadline_ms;                /* absolute monotonic ms, 0 = none */
  long long record_deadline_ms;         /* the same for the record being read (a command line,
                                           a DATA line, a BDAT chunk): the idle timeout bounds
                                           the whole of it, not the gap between two bytes;
                                           0 = none */
  struct sockaddr_storage peer;
  socklen_t peerlen;
  char peer_ip[64];                     /* printable peer address */
  int peer_port;
  int eof;
  int wake_fd;                          /* -1, or an fd whose readability ends a read wait
                                           (the daemon's stop signal for idle sessions) */
  int cancelable;                       /* 0, or the conn_cancel() level that ends its waits */
};

/* An IPv4-mapped IPv6 address (a dual-stack socket's IPv4 client) made the IPv4 address it
 * is; *len (may be NULL) follows. */
void conn_sockaddr_unmap(struct sockaddr_storage *ss, socklen_t *len);
/* Makes ss (unmapped) the connection's peer, with peer_ip and peer_port (a PROXY protocol
 * header names the client behind a balancer). */
void conn_peer_set(struct conn *c, const struct sockaddr_storage *ss);

/* The key per-client limits count under: an IPv4 address (also when v4-mapped), or the /64 an
 * IPv6 address is in (one host usually holds a whole /64, so counting /128s would let it rotate
 * addresses past any limit). 16 bytes; printable with conn_client_key_text. 0 ok, -1 for a
 * family that is neither. */
#define CONN_CLIENT_KEY_LEN 16
int conn_client_key(const struct sockaddr *sa, unsigned char key[CONN_CLIENT_KEY_LEN]);
/* "192.0.2.7" or "2001:db8:1:2::/64" */
void conn_client_key_text(const unsigned char key[CONN_CLIENT_KEY_LEN], char *out, size_t outsz);

/* The stop for outbound connections at shutdown, in two stages so that a message an upstream
 * may be taking is not cut with the rest: once conn_cancel(level) has run, every wait of a
 * connection whose cancelable level is at most level, and every wait that polls
 * conn_cancel_fd(level), ends at once as an error with errno ECANCELED, so that stopping never
 * waits for an upstream that went silent. Process-wide and one-way: it is only called when the
 * process is on its way out. */
#define CONN_CANCEL_EARLY 1     /* nothing the peer has taken is at stake: cut at the first stage */
#define CONN_CANCEL_LATE  2     /* the peer may be taking a message: cut only at the last */
void conn_cancel(int level);
int  conn_cancelled(int level);          /* level reached (0: never) */
int  conn_cancel_fd(int level);          /* readable once level is reached; -1 if none */

void conn_init(struct conn *c, int fd, int idle_ms);
void conn_free(struct conn *c);          /* closes stream ops and fd */
void conn_set_stream(struct conn *c, const struct conn_stream_ops *ops, void *ctx);

/* What conn_read_line saw in the line it returns. */
#define CONN_LINE_CRLF    0x1   /* ended in CR LF (otherwise a bare LF, or EOF) */
#define CONN_LINE_BARE_CR 0x2   /* a CR not followed by LF inside the line */
#define CONN_LINE_NUL     0x4   /* a NUL byte inside the line */
#define CONN_LINE_EOF     0x8   /* ended by the peer's EOF, without any LF */

/* Reads one line ending in LF into line (reset first; the CR LF or LF is not stored; the line
 * may hold any byte). Lines longer than max octets, ending included, are drained up to their
 * end and CONN_TOO_LONG returned with line holding the first max bytes. A last line cut short
 * by EOF comes back as CONN_OK with CONN_LINE_EOF; the call after it returns CONN_EOF. */
int conn_read_line(struct conn *c, struct buf *line, size_t max, unsigned *flags);
/* Reads exactly n bytes, appending them to out (out == NULL discards them). */
int conn_read_exact(struct conn *c, struct buf *out, size_t n);
/* Waits for more input and appends it to rbuf[rstart..rend), for readers that scan the
 * buffer in place and advance rstart past what they consumed. */
int conn_fill(struct conn *c);
/* Reads up to n bytes that are available or arrive within the timeout. */
ssize_t conn_read_some(struct conn *c, void *p, size_t n);
/* Is unread input already buffered (pipelining)? */
int conn_has_input(struct conn *c);
/* Drops buffered input (RFC 3207: nothing read before the TLS handshake survives it). */
void conn_discard_input(struct conn *c);

int conn_write(struct conn *c, const void *p, size_t n);   /* buffered */
int conn_printf(struct conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int conn_flush(struct conn *c);

long long time_mono_ms(void);
long long time_real_ms(void);

#endif
