/* TLS and the cryptographic primitives the rest of Postern needs, with OpenSSL kept behind
 * this header (vendor types stay behind our interfaces). A TLS session slides under
 * an open struct conn (lib/conn.h) through its stream function table. */
#ifndef POSTERN_TLS_H
#define POSTERN_TLS_H
#include <stddef.h>

#define TLS_SHA256_HEX_LEN 64

/* Lower-case hex SHA-256 of p[0..n) into out (NUL-terminated). 0 ok, -1 on failure. */
int tls_sha256_hex(const void *p, size_t n, char out[TLS_SHA256_HEX_LEN + 1]);
/* HMAC-SHA256 of p[0..n) with key (keylen < 2^31) into out. 0 ok, -1 on failure. */
int tls_hmac_sha256(const void *key, size_t keylen, const void *p, size_t n,
                    unsigned char out[32]);

struct conn;
struct tls_server_ctx;
struct tls_client_ctx;

/* All functions below return 0 on success and -1 on failure with a one-line reason in
 * err[0..errsz) (never a secret). min_version is NULL or "" (= "1.2"), "1.2" or "1.3".
 * Contexts may be shared by any number of threads. OpenSSL writes to the socket with write(),
 * so the process must ignore SIGPIPE (the daemon does). */

/* Server side, for STARTTLS and implicit-TLS listeners: a certificate chain file and its key,
 * OpenSSL's defaults minus compression and renegotiation, our cipher order, TLS 1.2 at least. */
int tls_server_ctx_new(const char *cert_file, const char *key_file, const char *min_version,
                       struct tls_server_ctx **out, char *err, size_t errsz);
/* Re-reads the certificate and key (SIGHUP). Handshakes that already started keep the old
 * ones; on failure the old ones stay in use and err says why. */
int tls_server_ctx_reload(struct tls_server_ctx *sctx, char *err, size_t errsz);
/* Connections already started keep working after this. NULL is fine. */
void tls_server_ctx_free(struct tls_server_ctx *sctx);
/* Runs the server handshake on c->fd within timeout_ms (and c's session deadline), then
 * installs the TLS stream under c. RFC 3207: the caller calls conn_discard_input(c) after its
 * "220 Ready to start TLS"; this function discards any buffered input again, so no plaintext
 * read before the handshake is ever taken as if it came over TLS. Output still buffered in c
 * is flushed in plaintext first. On failure c stays plaintext and should be closed. */
int tls_server_start(struct tls_server_ctx *sctx, struct conn *c, int timeout_ms,
                     char *err, size_t errsz);

/* Client side, for the upstream smtp transport and the doctor. verify is "peer" (certificate
 * chain against ca_file, or the system store when ca_file is NULL, plus the name check) or
 * "none" (no verification at all). */
int tls_client_ctx_new(const char *verify, const char *ca_file, const char *min_version,
                       struct tls_client_ctx **out, char *err, size_t errsz);
void tls_client_ctx_free(struct tls_client_ctx *cctx);
/* Runs the client handshake on c->fd and installs the TLS stream under c. servername is the
 * name checked in the certificate and sent as SNI; an IP literal (optionally in brackets) is
 * checked against the IP addresses of the certificate and sends no SNI (RFC 6066 3). On a
 * verification failure err says why, e.g. "certificate verify failed: hostname mismatch
 * (certificate is for mail.other.example)". */
int tls_client_start(struct tls_client_ctx *cctx, struct conn *c, const char *servername,
                     int timeout_ms, char *err, size_t errsz);

/* Is TLS active on c? */
int tls_conn_active(struct conn *c);
/* "TLSv1.3 TLS_AES_256_GCM_SHA384 256/256" (protocol, cipher, used/algorithm bits) for log
 * lines and Received headers; "" when c is not TLS. */
void tls_conn_describe(struct conn *c, char *out, size_t outsz);
/* The peer's certificate: subject and issuer (RFC 2253), its DNS and IP subject alternative
 * names joined by ", ", its notAfter as a Unix time. Any output may be NULL to skip it.
 * -1 when c is not TLS or the peer sent no certificate. */
int tls_conn_peer_cert_info(struct conn *c, char *subject, size_t subjectsz, char *issuer,
                            size_t issuersz, char *names, size_t namessz,
                            long long *not_after_epoch);

/* ---- webhook signatures (tls/verify.c) ---------------------------------------------------- */
#define TLS_SHA1_LEN 20

/* Base64 (RFC 4648 alphabet, padding optional, blanks and line breaks skipped) into
 * out[0..outsz); 0 ok, -1 on a character outside the alphabet or when out is too small. */
int tls_base64_decode(const char *in, size_t inlen, unsigned char *out, size_t outsz,
                      size_t *outlen);
/* NUL-terminated base64 of in; outsz must hold 4 * ceil(inlen / 3) + 1. 0 ok, -1 too small. */
int tls_base64_encode(const unsigned char *in, size_t inlen, char *out, size_t outsz);
/* Does sig (DER ECDSA) sign SHA-256(data) under key, an EC P-256 public key given as PEM or as
 * the bare base64 of its DER SubjectPublicKeyInfo? 0 yes, -1 no (or a bad key). */
int tls_ecdsa_verify_sha256(const char *key, size_t keylen, const void *data, size_t len,
                            const unsigned char *sig, size_t siglen);
/* The same check fed in pieces, so that a signed body need not be copied to be verified:
 * new (NULL on a bad key or no memory), add the data in order, end with the signature
 * (0 valid, -1 not), free. */
struct tls_verifier;
struct tls_verifier *tls_ecdsa_verifier_new(const char *key, size_t keylen);
int tls_verifier_add(struct tls_verifier *v, const void *data, size_t len);
int tls_verifier_end(struct tls_verifier *v, const unsigned char *sig, size_t siglen);
void tls_verifier_free(struct tls_verifier *v);
/* Is key (as above) a usable P-256 public key? 0 yes, -1 no. */
int tls_public_key_check(const char *key, size_t keylen);
/* The key (as above) as canonical PEM into out (NUL-terminated): the file format
 * event_public_key_file is written in, and a way to compare two spellings of one key.
 * 0 ok, -1 not a P-256 key or out too small (TLS_PUBKEY_PEM_MAX is enough). */
#define TLS_PUBKEY_PEM_MAX 512
int tls_public_key_pem(const char *key, size_t keylen, char *out, size_t outsz);
/* HMAC-SHA1 of data under key. 0 ok, -1 on failure. */
int tls_hmac_sha1(const void *key, size_t keylen, const void *data, size_t len,
                  unsigned char out[TLS_SHA1_LEN]);
/* Lower-case hex HMAC-SHA256 of data under key (forward_url signatures). 0 ok, -1 on failure. */
int tls_hmac_sha256_hex(const void *key, size_t keylen, const void *data, size_t len,
                        char out[TLS_SHA256_HEX_LEN + 1]);
/* Frees OpenSSL's per-thread state (its error queue) now. For threads that outlive their
 * work: a detached thread's own clean-up may otherwise still be running when the process
 * exits, and the sanitizers report the state as leaked. */
void tls_thread_done(void);
/* Constant-time comparison of n bytes: 1 equal, 0 not. */
int tls_memeq(const void *a, const void *b, size_t n);

/* ---- OAuth2 client assertions (tls/jwt.c) ------------------------------------------------ */
/* A JWT (RFC 7523) over claims (a JSON object) signed RS256 with the PEM RSA key, its header
 * naming the PEM certificate by SHA-1 thumbprint (x5t). *out is malloc'd and NUL-terminated. 0
 * ok, -1 with err saying why (never holding key material). */
int tls_jwt_sign_rs256(const char *key_pem, size_t keylen, const char *cert_pem, size_t certlen,
                       const char *claims, size_t claimslen, char **out, char *err,
                       size_t errsz);

/* ---- DKIM keys (tls/dkimkey.c) ------------------------------------------------------------ */
#define TLS_DKIM_P_MAX 1024
struct tls_dkim_key {
  char kind[8];                   /* "rsa" | "ed25519": the k= of the DNS record */
  int bits;
  char p[TLS_DKIM_P_MAX];         /* the p= of the DNS record (base64) */
};
/* Reads a PEM private key (RSA or Ed25519) from path: what it is and its public half. With pem,
 * the file's text is handed over too (free it with tls_dkim_key_free, which wipes it). */
int tls_dkim_key_read(const char *path, char **pem, size_t *pemlen, struct tls_dkim_key *info,
                      char *err, size_t errsz);
void tls_dkim_key_free(char *pem, size_t len);
/* Makes a new key of kind "rsa" (bits) or "ed25519" in path (created 0600, never over an
 * existing file), PKCS#8 PEM, and describes it in info. */
int tls_dkim_keygen(const char *kind, int bits, const char *path, struct tls_dkim_key *info,
                    char *err, size_t errsz);
/* A DKIM private key (PEM, RSA or Ed25519) decoded once and kept for signing: decoding costs
 * about as much as an RSA-2048 signature. Usable from several threads at once. 0 or -1. */
struct tls_dkim_signkey;
int tls_dkim_signkey_load(const char *pem, size_t len, struct tls_dkim_signkey **out);
void tls_dkim_signkey_free(struct tls_dkim_signkey *k);
#define TLS_DKIM_SIG_MAX 1024           /* an RSA-8192 signature */
/* The signature of the SHA-256 digest of the canonicalized header fields: RSASSA-PKCS1-v1_5
 * (rsa-sha256, RFC 6376) or PureEdDSA over the digest (ed25519-sha256, RFC 8463). sig holds
 * sigsz bytes; *siglen gets the length. */
int tls_dkim_sign_digest(struct tls_dkim_signkey *k, const unsigned char digest[32],
                         unsigned char *sig, size_t sigsz, size_t *siglen);
int tls_sha256(const void *data, size_t len, unsigned char out[32]);

#endif
