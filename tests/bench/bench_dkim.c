/* DKIM cost per message (BENCHMARKS.md): signing through the relay's own path (dkim.c: the CRLF
 * copy, the header scan, the canonical form, OpenSSL with the key decoded once) and verifying with libopendkim as the MX listener sets it
 * up, for RSA-2048 and Ed25519, over a realistic ~4 KB message.
 *   bench_dkim RSA_KEY ED25519_KEY [N]     (PEM private keys; N messages per case, default 2000)
 * Verification takes the public keys from a key file (libopendkim's DKIM_QUERY_FILE) so that
 * the figure is the CPU cost, not the resolver's; times are the process's CPU time. Not part of
 * the test suite. */
#include "lib/buf.h"
#include "relay/relay_int.h"
#include "tls/tls.h"
#include <opendkim/dkim.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* CPU time of the process: on a shared machine the wall clock measures the neighbours */
static double now(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void message(char *out, size_t outsz)
{
  size_t o = (size_t)snprintf(out, outsz,
    "Received: from app.clinic.test (127.0.0.1 [127.0.0.1])\r\n\tby relay.clinic.test (Postern) "
    "with ESMTP id 4F2A91C3\r\n\tfor <pat@example.net>; Mon, 7 Dec 2026 10:00:00 +0000\r\n"
    "From: Clinic <noreply@clinic.test>\r\nTo: Patient <pat@example.net>\r\n"
    "Subject: Your appointment on Tuesday\r\nDate: Mon, 7 Dec 2026 10:00:00 +0000\r\n"
    "Message-ID: <4F2A91C3.1796668885@relay.clinic.test>\r\nMIME-Version: 1.0\r\n"
    "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n");
  while(o + 80 < outsz - 1 && o < 4096)
    o += (size_t)snprintf(out + o, outsz - o, "Please come ten minutes early; bring your card "
                          "and the list of medicines.\r\n");
}

static int sign_case(const char *name, const char *key, const char *alg, int n, char **signed_out,
                     size_t *signed_len)
{
  struct config cfg;
  struct cfg_dkim d;
  struct dkim_signers *ds = NULL;
  struct smtp_reply r;
  char msg[8192], *out = NULL;
  size_t len, outlen = 0;
  double t0, t1;
  int i;

  memset(&cfg, 0, sizeof(cfg));
  memset(&d, 0, sizeof(d));
  d.name = (char *)name;
  d.domain = (char *)"clinic.test";
  d.selector = (char *)name;
  d.key_file = (char *)key;
  d.algorithm = (char *)alg;
  d.headers = (char *)"From Reply-To Sender To Cc Subject Date Message-ID In-Reply-To References "
              "MIME-Version Content-Type Content-Transfer-Encoding";
  d.canonicalization = (char *)"relaxed/relaxed";
  cfg.dkims = &d;
  cfg.ndkims = 1;
  message(msg, sizeof(msg));
  len = strlen(msg);
  if(dkim_signers_get(&cfg, &ds))
    return -1;
  t0 = now();
  for(i = 0; i < n; i++) {
    free(out);
    out = NULL;
    if(dkim_sign_message(ds, "noreply@clinic.test", msg, len, 1 << 20, &out, &outlen,
                         &r) || !out) {
      fprintf(stderr, "signing failed: %d %s %s\n", r.code, r.enh, r.text);
      return -1;
    }
  }
  t1 = now();
  printf("sign   %-8s %6d messages of %zu bytes: %8.1f us CPU/message, %8.0f messages/CPU-s\n", alg, n,
         len, (t1 - t0) * 1e6 / n, n / (t1 - t0));
  dkim_signers_put(ds);
  *signed_out = out;
  *signed_len = outlen;
  return 0;
}

static int verify_case(const char *alg, const char *keys, const char *msg, size_t len, int n)
{
  DKIM_LIB *lib = dkim_init(NULL, NULL);
  dkim_query_t q = DKIM_QUERY_FILE;
  double t0, t1;
  int i, good = 0;
  if(!lib || dkim_options(lib, DKIM_OP_SETOPT, DKIM_OPTS_QUERYMETHOD, &q, sizeof(q)) ||
     dkim_options(lib, DKIM_OP_SETOPT, DKIM_OPTS_QUERYINFO, (void *)keys, strlen(keys)))
    return -1;
  t0 = now();
  for(i = 0; i < n; i++) {
    DKIM_STAT st;
    DKIM *d = dkim_verify(lib, (const unsigned char *)"BENCH", NULL, &st);
    DKIM_SIGINFO **sigs;
    int nsigs = 0;
    dkim_chunk(d, (unsigned char *)msg, len);
    dkim_chunk(d, NULL, 0);
    dkim_eom(d, NULL);
    if(dkim_getsiglist(d, &sigs, &nsigs) == DKIM_STAT_OK && nsigs == 1 && DKIM_SIG_CHECK(sigs[0]))
      good++;
    dkim_free(d);
  }
  t1 = now();
  dkim_close(lib);
  printf("verify %-8s %6d messages of %zu bytes: %8.1f us CPU/message, %8.0f messages/CPU-s (%d passed)\n",
         alg, n, len, (t1 - t0) * 1e6 / n, n / (t1 - t0), good);
  return good == n ? 0 : -1;
}

int main(int argc, char **argv)
{
  static const char *const algs[2] = { "rsa-sha256", "ed25519-sha256" };
  long nl = 2000;
  int n, k;
  if(argc > 3 && str_to_long(argv[3], strlen(argv[3]), 1, 10000000, &nl))
    nl = 0;
  n = (int)nl;
  if(argc < 3 || n <= 0) {
    fprintf(stderr, "usage: bench_dkim RSA_KEY ED25519_KEY [N]\n");
    return 2;
  }
  for(k = 0; k < 2; k++) {
    struct tls_dkim_key info;
    char err[256], keys[2048], *out = NULL, keyfile[] = "/tmp/bench_dkim_keys.XXXXXX";
    size_t outlen = 0;
    FILE *f;
    int fd;
    if(tls_dkim_key_read(argv[1 + k], NULL, NULL, &info, err, sizeof(err))) {
      fprintf(stderr, "%s\n", err);
      return 1;
    }
    if(sign_case(k ? "ed" : "rsa", argv[1 + k], algs[k], n, &out, &outlen))
      return 1;
    fd = mkstemp(keyfile);
    f = fd >= 0 ? fdopen(fd, "w") : NULL;
    if(!f)
      return 1;
    snprintf(keys, sizeof(keys), "%s._domainkey.clinic.test v=DKIM1; k=%s; p=%s\n",
             k ? "ed" : "rsa", info.kind, info.p);
    fputs(keys, f);
    fclose(f);
    if(verify_case(algs[k], keyfile, out, outlen, n)) {
      fprintf(stderr, "verification failed\n");
      remove(keyfile);
      return 1;
    }
    remove(keyfile);
    free(out);
  }
  return 0;
}
