/* Message digests and HMAC through OpenSSL. */
#include "tls/tls.h"
#include <openssl/evp.h>
#include <openssl/hmac.h>

int tls_sha256_hex(const void *p, size_t n, char out[TLS_SHA256_HEX_LEN + 1])
{
  static const char hex[] = "0123456789abcdef";
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int mdlen = 0, i;
  if(!EVP_Digest(p, n, md, &mdlen, EVP_sha256(), NULL) || mdlen != 32)
    return -1;
  for(i = 0; i < mdlen; i++) {
    out[2 * i] = hex[md[i] >> 4];
    out[2 * i + 1] = hex[md[i] & 15];
  }
  out[2 * mdlen] = '\0';
  return 0;
}

int tls_hmac_sha256(const void *key, size_t keylen, const void *p, size_t n,
                    unsigned char out[32])
{
  unsigned int outlen = 0;
  if(!HMAC(EVP_sha256(), key, (int)keylen, p, n, out, &outlen) || outlen != 32)
    return -1;
  return 0;
}
