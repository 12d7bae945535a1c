/* Signature checks for the inbound webhooks: ECDSA P-256 over SHA-256 (SendGrid's Event
 * Webhook), HMAC-SHA1 (Twilio), and the base64 both are written in. OpenSSL stays here. */
#include "tls/tls.h"
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdlib.h>
#include <string.h>

static int b64_value(unsigned char c)
{
  if(c >= 'A' && c <= 'Z') return c - 'A';
  if(c >= 'a' && c <= 'z') return c - 'a' + 26;
  if(c >= '0' && c <= '9') return c - '0' + 52;
  if(c == '+') return 62;
  if(c == '/') return 63;
  return -1;
}

/* Strict enough for signatures (only the alphabet, padding at the end) yet forgiving of line
 * breaks and blanks, because keys are pasted from web pages in wrapped form. EVP_DecodeBlock
 * would accept trailing garbage and miscount padding, so the loop is ours. */
int tls_base64_decode(const char *in, size_t inlen, unsigned char *out, size_t outsz,
                      size_t *outlen)
{
  unsigned acc = 0;
  int bits = 0, pad = 0;
  size_t i, n = 0;
  for(i = 0; i < inlen; i++) {
    unsigned char c = (unsigned char)in[i];
    int v;
    if(c == ' ' || c == '\t' || c == '\r' || c == '\n')
      continue;
    if(c == '=') {
      pad++;
      continue;
    }
    v = b64_value(c);
    if(v < 0 || pad)
      return -1;
    acc = (acc << 6) | (unsigned)v;
    bits += 6;
    if(bits >= 8) {
      bits -= 8;
      if(n >= outsz)
        return -1;
      out[n++] = (unsigned char)(acc >> bits);
    }
  }
  if(pad > 2 || (bits && (acc & ((1u << bits) - 1))))
    return -1;
  *outlen = n;
  return 0;
}

int tls_base64_encode(const unsigned char *in, size_t inlen, char *out, size_t outsz)
{
  size_t need = 4 * ((inlen + 2) / 3) + 1;
  if(outsz < need || inlen > 0x3fffffff)
    return -1;
  EVP_EncodeBlock((unsigned char *)out, in, (int)inlen);
  return 0;
}

/* PEM ("-----BEGIN PUBLIC KEY-----") or the bare base64 DER SendGrid's settings page shows. */
static EVP_PKEY *load_public_key(const char *key, size_t keylen)
{
  EVP_PKEY *pk = NULL;
  if(keylen >= 10 && memmem(key, keylen, "-----BEGIN", 10)) {
    BIO *bio = BIO_new_mem_buf(key, (int)keylen);
    if(bio) {
      pk = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL);
      BIO_free(bio);
    }
  }
  else {
    unsigned char der[1024];
    size_t derlen = 0;
    const unsigned char *p = der;
    if(!tls_base64_decode(key, keylen, der, sizeof(der), &derlen))
      pk = d2i_PUBKEY(NULL, &p, (long)derlen);
  }
  return pk;
}

struct tls_verifier {
  EVP_PKEY *pk;
  EVP_MD_CTX *md;
};

void tls_verifier_free(struct tls_verifier *v)
{
  if(!v)
    return;
  EVP_MD_CTX_free(v->md);
  EVP_PKEY_free(v->pk);
  free(v);
}

struct tls_verifier *tls_ecdsa_verifier_new(const char *key, size_t keylen)
{
  struct tls_verifier *v = keylen <= 8192 ? calloc(1, sizeof(*v)) : NULL;
  if(!v)
    return NULL;
  v->pk = load_public_key(key, keylen);
  if(!v->pk || EVP_PKEY_get_base_id(v->pk) != EVP_PKEY_EC || EVP_PKEY_get_bits(v->pk) != 256 ||
     !(v->md = EVP_MD_CTX_new()) ||
     EVP_DigestVerifyInit(v->md, NULL, EVP_sha256(), NULL, v->pk) != 1) {
    tls_verifier_free(v);
    return NULL;
  }
  return v;
}

int tls_verifier_add(struct tls_verifier *v, const void *data, size_t len)
{
  return EVP_DigestVerifyUpdate(v->md, data, len) == 1 ? 0 : -1;
}

int tls_verifier_end(struct tls_verifier *v, const unsigned char *sig, size_t siglen)
{
  return EVP_DigestVerifyFinal(v->md, sig, siglen) == 1 ? 0 : -1;
}

int tls_ecdsa_verify_sha256(const char *key, size_t keylen, const void *data, size_t len,
                            const unsigned char *sig, size_t siglen)
{
  struct tls_verifier *v = tls_ecdsa_verifier_new(key, keylen);
  int result = v && !tls_verifier_add(v, data, len) && !tls_verifier_end(v, sig, siglen) ? 0 : -1;
  tls_verifier_free(v);
  return result;
}

int tls_public_key_check(const char *key, size_t keylen)
{
  EVP_PKEY *pk = keylen <= 8192 ? load_public_key(key, keylen) : NULL;
  int ok = pk && EVP_PKEY_get_base_id(pk) == EVP_PKEY_EC && EVP_PKEY_get_bits(pk) == 256;
  EVP_PKEY_free(pk);
  return ok ? 0 : -1;
}

int tls_public_key_pem(const char *key, size_t keylen, char *out, size_t outsz)
{
  EVP_PKEY *pk = keylen <= 8192 ? load_public_key(key, keylen) : NULL;
  BIO *bio = NULL;
  char *mem;
  long n;
  int result = -1;
  if(!pk || EVP_PKEY_get_base_id(pk) != EVP_PKEY_EC || EVP_PKEY_get_bits(pk) != 256)
    goto out;
  bio = BIO_new(BIO_s_mem());
  if(!bio || PEM_write_bio_PUBKEY(bio, pk) != 1)
    goto out;
  n = BIO_get_mem_data(bio, &mem);
  if(n <= 0 || (size_t)n >= outsz)
    goto out;
  memcpy(out, mem, (size_t)n);
  out[n] = '\0';
  result = 0;
out:
  BIO_free(bio);
  EVP_PKEY_free(pk);
  return result;
}

int tls_hmac_sha1(const void *key, size_t keylen, const void *data, size_t len,
                  unsigned char out[TLS_SHA1_LEN])
{
  unsigned int outlen = 0;
  if(keylen > 0x7fffffff)
    return -1;
  if(!HMAC(EVP_sha1(), key, (int)keylen, data, len, out, &outlen) || outlen != TLS_SHA1_LEN)
    return -1;
  return 0;
}

int tls_hmac_sha256_hex(const void *key, size_t keylen, const void *data, size_t len,
                        char out[TLS_SHA256_HEX_LEN + 1])
{
  static const char hex[] = "0123456789abcdef";
  unsigned char mac[32];
  unsigned int outlen = 0, i;
  if(keylen > 0x7fffffff)
    return -1;
  if(!HMAC(EVP_sha256(), key, (int)keylen, data, len, mac, &outlen) || outlen != sizeof(mac))
    return -1;
  for(i = 0; i < outlen; i++) {
    out[2 * i] = hex[mac[i] >> 4];
    out[2 * i + 1] = hex[mac[i] & 15];
  }
  out[2 * outlen] = '\0';
  return 0;
}

int tls_memeq(const void *a, const void *b, size_t n)
{
  return CRYPTO_memcmp(a, b, n) == 0;
}

void tls_thread_done(void)
{
  OPENSSL_thread_stop();
}
