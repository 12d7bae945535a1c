/* Message digests through OpenSSL's EVP interface. */
#include "tls/tls.h"
#include <openssl/evp.h>

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
