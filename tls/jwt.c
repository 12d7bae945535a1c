/* JWT client assertions (RFC 7523) signed with OpenSSL: how an OAuth2 client proves it holds a
 * certificate's private key instead of sending a client secret (Microsoft's certificate
 * credentials). The claims come from auth/; the header, encoding and signature are made here. */
#include "tls/tls.h"
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* base64url without padding (RFC 7515 section 2) of in, appended at out[*len]. */
static int b64url(const unsigned char *in, size_t inlen, char *out, size_t outsz, size_t *len)
{
  size_t need = 4 * ((inlen + 2) / 3) + 1, i, n;
  int w;
  if(outsz - *len < need || inlen > 0x3fffffff)
    return -1;
  w = EVP_EncodeBlock((unsigned char *)out + *len, in, (int)inlen);
  if(w < 0)
    return -1;
  n = (size_t)w;
  while(n && out[*len + n - 1] == '=')
    n--;
  for(i = 0; i < n; i++) {
    if(out[*len + i] == '+')
      out[*len + i] = '-';
    else if(out[*len + i] == '/')
      out[*len + i] = '_';
  }
  *len += n;
  out[*len] = '\0';
  return 0;
}

int tls_jwt_sign_rs256(const char *key_pem, size_t keylen, const char *cert_pem, size_t certlen,
                       const char *claims, size_t claimslen, char **out, char *err,
                       size_t errsz)
{
  BIO *kb = NULL, *cb = NULL;
  EVP_PKEY *key = NULL;
  X509 *cert = NULL;
  EVP_MD_CTX *md = NULL;
  unsigned char thumb[EVP_MAX_MD_SIZE], *sig = NULL;
  unsigned int thumblen = 0;
  char header[256], x5t[64], x5t256[64];
  size_t x5tlen = 0, x5t256len = 0, siglen = 0, len = 0, cap;
  char *jwt = NULL;
  int result = -1;

  *out = NULL;
  kb = BIO_new_mem_buf(key_pem, (int)keylen);
  cb = BIO_new_mem_buf(cert_pem, (int)certlen);
  if(!kb || !cb) {
    snprintf(err, errsz, "out of memory");
    goto out;
  }
  key = PEM_read_bio_PrivateKey(kb, NULL, NULL, NULL);
  if(!key || EVP_PKEY_get_base_id(key) != EVP_PKEY_RSA) {
    snprintf(err, errsz, "private_key_file is not an unencrypted PEM RSA private key");
    goto out;
  }
  cert = PEM_read_bio_X509(cb, NULL, NULL, NULL);
  if(!cert) {
    snprintf(err, errsz, "certificate_file is not a PEM certificate");
    goto out;
  }
  if(X509_check_private_key(cert, key) != 1) {
    snprintf(err, errsz, "certificate_file and private_key_file do not belong together");
    goto out;
  }
  /* x5t and x5t#S256 name the certificate the application registered: its SHA-1 thumbprint,
   * which Microsoft's endpoints read, and its SHA-256 one (RFC 7515 4.1.8), for endpoints that
   * no longer accept SHA-1 */
  if(!X509_digest(cert, EVP_sha1(), thumb, &thumblen) ||
     b64url(thumb, thumblen, x5t, sizeof(x5t), &x5tlen) ||
     !X509_digest(cert, EVP_sha256(), thumb, &thumblen) ||
     b64url(thumb, thumblen, x5t256, sizeof(x5t256), &x5t256len)) {
    snprintf(err, errsz, "cannot take the certificate's thumbprint");
    goto out;
  }
  snprintf(header, sizeof(header),
           "{\"alg\":\"RS256\",\"typ\":\"JWT\",\"x5t\":\"%s\",\"x5t#S256\":\"%s\"}", x5t, x5t256);
  cap = 4 * ((strlen(header) + 2) / 3) + 4 * ((claimslen + 2) / 3) +
        4 * (((size_t)EVP_PKEY_get_size(key) + 2) / 3) + 8;
  jwt = malloc(cap);
  if(!jwt || b64url((const unsigned char *)header, strlen(header), jwt, cap, &len)) {
    snprintf(err, errsz, "out of memory");
    goto out;
  }
  jwt[len++] = '.';
  if(b64url((const unsigned char *)claims, claimslen, jwt, cap, &len)) {
    snprintf(err, errsz, "out of memory");
    goto out;
  }
  md = EVP_MD_CTX_new();
  if(!md || EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, key) != 1 ||
     EVP_DigestSign(md, NULL, &siglen, (const unsigned char *)jwt, len) != 1 ||
     !(sig = malloc(siglen)) ||
     EVP_DigestSign(md, sig, &siglen, (const unsigned char *)jwt, len) != 1) {
    snprintf(err, errsz, "cannot sign the client assertion");
    goto out;
  }
  jwt[len++] = '.';
  if(b64url(sig, siglen, jwt, cap, &len)) {
    snprintf(err, errsz, "out of memory");
    goto out;
  }
  *out = jwt;
  jwt = NULL;
  result = 0;
out:
  free(jwt);
  free(sig);
  EVP_MD_CTX_free(md);
  X509_free(cert);
  EVP_PKEY_free(key);
  BIO_free(kb);
  BIO_free(cb);
  return result;
}
