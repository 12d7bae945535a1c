/* The PROXY protocol header (HAProxy's proxy-protocol.txt, versions 1 and 2) that a load
 * balancer in front of a listener sends before the client's first byte, naming the client it
 * accepted. A parser over explicit lengths; no I/O here. */
#ifndef POSTERN_PROXY_H
#define POSTERN_PROXY_H
#include <stddef.h>

#define PROXY_V1_MAX 107          /* the longest version 1 line, CR LF included */
#define PROXY_V2_MAX 1024         /* longest version 2 header taken (TLVs included) */

enum proxy_result {
  PROXY_OK = 0,
  PROXY_MORE,                     /* a valid beginning: read more and call again */
  PROXY_BAD,                      /* not a PROXY header, or a malformed one */
};

struct proxy_info {
  int local;                      /* v2 LOCAL or v1 UNKNOWN: the connection's own addresses hold */
  int family;                     /* AF_INET / AF_INET6 when !local */
  unsigned char src[16], dst[16]; /* 4 or 16 bytes */
  unsigned src_port, dst_port;
};

/* Parses the header at p[0..n). On PROXY_OK *used is its length (what follows is the client's). */
enum proxy_result proxy_parse(const unsigned char *p, size_t n, struct proxy_info *out,
                              size_t *used);

#endif
