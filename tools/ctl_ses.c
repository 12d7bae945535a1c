/* posternctl ses smtp-password --region R [--key-file FILE]: the Amazon SES SMTP password for
 * an IAM secret access key, by AWS's published derivation (a SigV4 signing-key chain over a
 * fixed date and the message "SendRawEmail", version byte 4, base64), for those who send
 * through the SES SMTP endpoint rather than the ses transport. The key comes from standard
 * input, a prompt or a 0600 file, never from an argument (argv is visible to every user). */
#include "tools/ctl.h"
#include "auth/auth.h"
#include "tls/tls.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>

/* a region name as AWS spells them: "eu-west-1", "us-gov-west-1" */
int ctl_ses_region_ok(const char *r)
{
  return config_aws_region_ok(r);
}

/* sig = HMAC("AWS4" + key, "11111111"), then over region, "ses", "aws4_request" and
 * "SendRawEmail" in turn; the password is base64(0x04 || sig). */
int ctl_ses_smtp_password(const char *key, size_t keylen, const char *region, char **out)
{
  static const char *const chain[] = { "11111111", NULL, "ses", "aws4_request",
                                       "SendRawEmail" };
  unsigned char k[4 + SES_KEY_CAP], sig[32], versioned[33];
  size_t i, outlen = 0;
  int result = -1;
  if(keylen > SES_KEY_CAP)
    return -1;
  memcpy(k, "AWS4", 4);
  memcpy(k + 4, key, keylen);
  if(tls_hmac_sha256(k, 4 + keylen, chain[0], strlen(chain[0]), sig))
    goto out;
  for(i = 1; i < sizeof(chain) / sizeof(chain[0]); i++) {
    const char *m = chain[i] ? chain[i] : region;
    if(tls_hmac_sha256(sig, sizeof(sig), m, strlen(m), sig))
      goto out;
  }
  versioned[0] = 0x04;
  memcpy(versioned + 1, sig, sizeof(sig));
  result = auth_b64_encode(versioned, sizeof(versioned), out, &outlen) ? -1 : 0;
out:
  explicit_bzero(k, sizeof(k));
  explicit_bzero(sig, sizeof(sig));
  explicit_bzero(versioned, sizeof(versioned));
  return result;
}

int ctl_ses(struct ctl *c)
{
  const char *region = NULL, *key_file = NULL;
  char key[SES_KEY_CAP + 1], err[256], *file_key = NULL, *pw = NULL;
  size_t keylen = 0, file_len = 0;
  int result;

  if(ctl_opt(c, "--region", &region) < 0 || ctl_opt(c, "--key-file", &key_file) < 0)
    return ctl_usage_error("--region and --key-file take a value", NULL);
  if(ctl_no_options(c))
    return EX_USAGE;
  if(c->nargs != 2 || strcmp(c->args[1], "smtp-password"))
    /* the words are not echoed: a key typed as an argument must not end up on the screen */
    return ctl_usage_error("ses takes smtp-password --region REGION [--key-file FILE]; the "
                           "secret access key is read from standard input", NULL);
  if(!region)
    return ctl_usage_error("ses smtp-password needs --region (the SES SMTP endpoint's region, "
                           "e.g. eu-west-1)", NULL);
  if(!ctl_ses_region_ok(region))
    return ctl_usage_error("not an AWS region name", region);
  if(key_file) {
    /* the same rules as every secret file: a regular file only its owner may read */
    if(auth_secret_read(key_file, &file_key, &file_len, err, sizeof(err))) {
      fprintf(stderr, "posternctl: %s\n", err);
      return EX_NOINPUT;
    }
    if(file_len > SES_KEY_CAP || memchr(file_key, '\n', file_len)) {
      fprintf(stderr, "posternctl: %s does not hold one secret access key\n", key_file);
      result = EX_DATAERR;
      goto out;
    }
    memcpy(key, file_key, file_len);
    keylen = file_len;
  }
  else {
    result = ctl_secret_get("secret access key", "AWS secret access key: ", 0, key, SES_KEY_CAP,
                            &keylen);
    if(result)
      goto out;
  }
  /* keys pasted with a trailing blank are common; no key has one */
  while(keylen && (key[keylen - 1] == ' ' || key[keylen - 1] == '\t'))
    keylen--;
  if(!keylen) {
    fprintf(stderr, "posternctl: an empty secret access key is not allowed\n");
    result = EX_DATAERR;
    goto out;
  }
  if(ctl_ses_smtp_password(key, keylen, region, &pw)) {
    fprintf(stderr, "posternctl: cannot compute the SMTP password\n");
    result = EX_SOFTWARE;
    goto out;
  }
  printf("%s\n", pw);
  result = 0;
out:
  explicit_bzero(key, sizeof(key));
  if(file_key)
    auth_secret_free(file_key, file_len);
  if(pw)
    auth_secret_free(pw, strlen(pw));
  return result;
}
