/* DKIM keys: reading a private key file (PEM, RSA or Ed25519), the public half as the p= of its
 * DNS TXT record (RFC 6376 3.6.1, RFC 8463 4), and making new keys. The signing and checking
 * themselves are libopendkim's, above this layer; OpenSSL stays here. */
#include "tls/tls.h"
#include <errno.h>
#include <fcntl.h>
#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define DKIM_KEY_FILE_MAX (64 * 1024)
_Static_assert(TLS_DKIM_P_MAX >= 4 * ((1 + 4096 / 8 + 64) / 3 + 1) + 1, "p= of an RSA-4096 key");

void tls_dkim_key_free(char *pem, size_t len)
{
  if(!pem)
    return;
  OPENSSL_cleanse(pem, len);
  free(pem);
}

/* p= of key: Ed25519 as its 32 raw octets (RFC 8463 4.2), RSA as the DER SubjectPublicKeyInfo
 * (what opendkim-genkey and every verifier use). */
static int pubkey_b64(EVP_PKEY *key, char *p, size_t psz, char *err, size_t errsz)
{
  unsigned char raw[32], *der = NULL;
  size_t rawlen = sizeof(raw);
  int derlen, result = -1;
  if(EVP_PKEY_get_base_id(key) == EVP_PKEY_ED25519) {
    if(EVP_PKEY_get_raw_public_key(key, raw, &rawlen) != 1 || rawlen != 32)
      snprintf(err, errsz, "cannot take the Ed25519 public key");
    else if(tls_base64_encode(raw, rawlen, p, psz))
      snprintf(err, errsz, "the public key does not fit");
    else
      result = 0;
    return result;
  }
  derlen = i2d_PUBKEY(key, &der);
  if(derlen <= 0)
    snprintf(err, errsz, "cannot encode the public key");
  else if(tls_base64_encode(der, (size_t)derlen, p, psz))
    snprintf(err, errsz, "the public key does not fit");
  else
    result = 0;
  OPENSSL_free(der);
  return result;
}

static const char *key_kind(EVP_PKEY *key)
{
  switch(EVP_PKEY_get_base_id(key)) {
  case EVP_PKEY_RSA: return "rsa";
  case EVP_PKEY_ED25519: return "ed25519";
  default: return NULL;
  }
}

int tls_dkim_key_read(const char *path, char **pem, size_t *pemlen, struct tls_dkim_key *info,
                      char *err, size_t errsz)
{
  FILE *f = NULL;
  char *text = NULL;
  size_t n = 0;
  BIO *bio = NULL;
  EVP_PKEY *key = NULL;
  const char *kind;
  int result = -1;

  if(pem)
    *pem = NULL;
  memset(info, 0, sizeof(*info));
  f = fopen(path, "rb");
  if(!f) {
    snprintf(err, errsz, "cannot open %s: %s", path, strerror(errno));
    goto out;
  }
  text = malloc(DKIM_KEY_FILE_MAX + 1);
  if(!text) {
    snprintf(err, errsz, "out of memory");
    goto out;
  }
  n = fread(text, 1, DKIM_KEY_FILE_MAX + 1, f);
  if(ferror(f) || n > DKIM_KEY_FILE_MAX) {
    snprintf(err, errsz, "cannot read %s (a key file is a PEM private key under 64 KiB)", path);
    goto out;
  }
  text[n] = '\0';
  bio = BIO_new_mem_buf(text, (int)n);
  key = bio ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
  ERR_clear_error();
  kind = key ? key_kind(key) : NULL;
  if(!kind) {
    snprintf(err, errsz, "%s is not an RSA or Ed25519 private key in PEM", path);
    goto out;
  }
  snprintf(info->kind, sizeof(info->kind), "%s", kind);
  info->bits = EVP_PKEY_get_bits(key);
  if(pubkey_b64(key, info->p, sizeof(info->p), err, errsz))
    goto out;
  if(pem) {
    *pem = text;
    *pemlen = n;
    text = NULL;
  }
  result = 0;
out:
  EVP_PKEY_free(key);
  BIO_free(bio);
  if(text)
    tls_dkim_key_free(text, n);
  if(f)
    fclose(f);
  return result;
}

int tls_dkim_keygen(const char *kind, int bits, const char *path, struct tls_dkim_key *info,
                    char *err, size_t errsz)
{
  EVP_PKEY *key = NULL;
  BIO *bio = NULL;
  char *pem = NULL;
  long pemlen;
  int fd = -1, result = -1;

  memset(info, 0, sizeof(*info));
  if(!strcmp(kind, "ed25519"))
    key = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
  else if(!strcmp(kind, "rsa"))
    key = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)bits);
  if(!key) {
    snprintf(err, errsz, "cannot make a %s key", kind);
    goto out;
  }
  bio = BIO_new(BIO_s_mem());
  if(!bio || PEM_write_bio_PrivateKey(bio, key, NULL, NULL, 0, NULL, NULL) != 1) {
    snprintf(err, errsz, "cannot encode the key");
    goto out;
  }
  pemlen = BIO_get_mem_data(bio, &pem);
  /* O_EXCL: an existing key is never overwritten (it may be the one in DNS) */
  fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if(fd < 0) {
    snprintf(err, errsz, "cannot create %s: %s", path, strerror(errno));
    goto out;
  }
  if(fchmod(fd, 0600) || write(fd, pem, (size_t)pemlen) != (ssize_t)pemlen || fsync(fd)) {
    snprintf(err, errsz, "cannot write %s: %s", path, strerror(errno));
    close(fd);
    fd = -1;
    unlink(path);
    goto out;
  }
  if(close(fd)) {
    fd = -1;
    snprintf(err, errsz, "cannot write %s: %s", path, strerror(errno));
    unlink(path);
    goto out;
  }
  fd = -1;
  snprintf(info->kind, sizeof(info->kind), "%s", kind);
  info->bits = EVP_PKEY_get_bits(key);
  if(pubkey_b64(key, info->p, sizeof(info->p), err, errsz))
    goto out;
  result = 0;
out:
  if(bio) {
    char *mem = NULL;
    long len = BIO_get_mem_data(bio, &mem);
    if(mem && len > 0)
      OPENSSL_cleanse(mem, (size_t)len);
  }
  BIO_free(bio);
  EVP_PKEY_free(key);
  return result;
}

/* ---- Ed25519 signing, kept loaded ----------------------------------------------------------- */
struct tls_dkim_signkey {
  EVP_PKEY *pkey;
  int rsa;
};

int tls_dkim_signkey_load(const char *pem, size_t len, struct tls_dkim_signkey **out)
{
  BIO *bio = BIO_new_mem_buf(pem, (int)len);
  EVP_PKEY *k = bio ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
  int id = k ? EVP_PKEY_get_base_id(k) : 0;
  BIO_free(bio);
  ERR_clear_error();
  *out = NULL;
  if((id != EVP_PKEY_ED25519 && id != EVP_PKEY_RSA) || !(*out = calloc(1, sizeof(**out)))) {
    EVP_PKEY_free(k);
    return -1;
  }
  (*out)->pkey = k;
  (*out)->rsa = id == EVP_PKEY_RSA;
  return 0;
}

void tls_dkim_signkey_free(struct tls_dkim_signkey *k)
{
  if(!k)
    return;
  EVP_PKEY_free(k->pkey);
  free(k);
}

int tls_dkim_sign_digest(struct tls_dkim_signkey *k, const unsigned char digest[32],
                         unsigned char *sig, size_t sigsz, size_t *siglen)
{
  int ok;
  *siglen = sigsz;
  if(k->rsa) {
    /* RSASSA-PKCS1-v1_5 over the SHA-256 digest (RFC 6376 3.3.1): the DigestInfo is built by
     * OpenSSL from the signature digest named here */
    EVP_PKEY_CTX *pc = EVP_PKEY_CTX_new(k->pkey, NULL);
    ok = pc && EVP_PKEY_sign_init(pc) == 1 &&
         EVP_PKEY_CTX_set_rsa_padding(pc, RSA_PKCS1_PADDING) == 1 &&
         EVP_PKEY_CTX_set_signature_md(pc, EVP_sha256()) == 1 &&
         EVP_PKEY_sign(pc, sig, siglen, digest, 32) == 1;
    EVP_PKEY_CTX_free(pc);
  }
  else {
    /* PureEdDSA over the digest itself (RFC 8463 3) */
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    ok = md && EVP_DigestSignInit(md, NULL, NULL, NULL, k->pkey) == 1 &&
         EVP_DigestSign(md, sig, siglen, digest, 32) == 1 && *siglen == 64;
    EVP_MD_CTX_free(md);
  }
  ERR_clear_error();
  return ok ? 0 : -1;
}

int tls_sha256(const void *data, size_t len, unsigned char out[32])
{
  unsigned int n = 32;
  return EVP_Digest(data, len, out, &n, EVP_sha256(), NULL) == 1 && n == 32 ? 0 : -1;
}
