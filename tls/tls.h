/* TLS and the cryptographic primitives the rest of Postern needs, with OpenSSL kept behind
 * this header (DESIGN.md: vendor types stay behind our interfaces). */
#ifndef POSTERN_TLS_H
#define POSTERN_TLS_H
#include <stddef.h>

#define TLS_SHA256_HEX_LEN 64

/* Lower-case hex SHA-256 of p[0..n) into out (NUL-terminated). 0 ok, -1 on failure. */
int tls_sha256_hex(const void *p, size_t n, char out[TLS_SHA256_HEX_LEN + 1]);

#endif
