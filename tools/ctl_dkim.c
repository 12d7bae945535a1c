/* posternctl dkim keygen DOMAIN SELECTOR: a new signing key (0600, the daemon's) and the DNS TXT
 * record that publishes it; posternctl dkim check [DOMAIN]: is each [dkim] key's record in DNS,
 * and is it that key, with the record to publish when it is not. */
#include "tools/ctl.h"
#include "global/mailauth.h"
#include "lib/buf.h"
#include "lib/dns.h"
#include "tls/tls.h"
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sysexits.h>
#include <unistd.h>

#define DKIM_RECORD_MAX (TLS_DKIM_P_MAX + 64)
#define DKIM_DEFAULT_DIR SYSCONFDIR "/postern/dkim"

/* Domain and selector end up in a file name and a DNS name: letters, digits, '-', '_', '.'. */
static int name_ok(const char *s)
{
  size_t i, n = strlen(s);
  if(!n || n > LIM_SMTP_DOMAIN || s[0] == '.' || s[0] == '-' || strstr(s, ".."))
    return 0;
  for(i = 0; i < n; i++)
    if(!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
         (s[i] >= '0' && s[i] <= '9') || s[i] == '-' || s[i] == '_' || s[i] == '.'))
      return 0;
  return 1;
}

static const struct cfg_dkim *section_for(const struct config *cfg, const char *domain,
                                          const char *selector)
{
  size_t i;
  for(i = 0; i < cfg->ndkims; i++)
    if(cfg->dkims[i].domain && cfg->dkims[i].selector &&
       !strcasecmp(cfg->dkims[i].domain, domain) && !strcmp(cfg->dkims[i].selector, selector))
      return &cfg->dkims[i];
  return NULL;
}

static void record_text(const struct tls_dkim_key *k, char *out, size_t outsz)
{
  snprintf(out, outsz, "v=DKIM1; k=%s; p=%s", k->kind, k->p);
}

/* The record as a zone-file line: character-strings of at most 255 octets (RFC 1035 3.3). */
static void zone_line(const char *domain, const char *selector, const char *rec, char *out,
                      size_t outsz)
{
  size_t n = strlen(rec), i, o;
  o = (size_t)snprintf(out, outsz, "%s._domainkey.%s. IN TXT (", selector, domain);
  for(i = 0; i < n && o < outsz; i += 250)
    o += (size_t)snprintf(out + o, outsz - o, " \"%.*s\"", (int)(n - i < 250 ? n - i : 250),
                          rec + i);
  if(o < outsz)
    snprintf(out + o, outsz - o, " )");
}

static int dkim_keygen(struct ctl *c)
{
  const char *alg = NULL, *bits_s = NULL, *file = NULL, *domain, *selector, *kind;
  const struct cfg_dkim *sec;
  struct tls_dkim_key k;
  char path[4096], err[512], rec[DKIM_RECORD_MAX], zone[DKIM_RECORD_MAX + 256];
  long bits = 2048;
  int result;

  if(ctl_opt(c, "--algorithm", &alg) < 0 || ctl_opt(c, "--bits", &bits_s) < 0 ||
     ctl_opt(c, "--key-file", &file) < 0)
    return ctl_usage_error("--algorithm, --bits and --key-file take a value", NULL);
  if(ctl_no_options(c))
    return EX_USAGE;
  if(c->nargs != 4)
    return ctl_usage_error("dkim keygen takes DOMAIN SELECTOR", NULL);
  domain = c->args[2];
  selector = c->args[3];
  if(!name_ok(domain) || !name_ok(selector))
    return ctl_usage_error("not a domain or selector name", !name_ok(domain) ? domain : selector);
  if(bits_s && (str_to_long(bits_s, strlen(bits_s), 1024, 4096, &bits)))
    return ctl_usage_error("--bits is 1024 to 4096", bits_s);
  result = ctl_config(c);
  if(result)
    return result;
  sec = section_for(c->cfg, domain, selector);
  if(!alg)
    alg = sec && sec->algorithm ? sec->algorithm : "rsa-sha256";
  if(!strcmp(alg, "rsa-sha256"))
    kind = "rsa";
  else if(!strcmp(alg, "ed25519-sha256"))
    kind = "ed25519";
  else
    return ctl_usage_error("--algorithm is rsa-sha256 or ed25519-sha256", alg);
  if(sec && sec->algorithm && strcmp(sec->algorithm, alg)) {
    fprintf(stderr, "posternctl: [dkim %s] says algorithm = %s; a %s key would not be used\n",
            sec->name, sec->algorithm, alg);
    return EX_USAGE;
  }
  if(file)
    str_copy(path, sizeof(path), file);
  else if(sec && sec->key_file)
    str_copy(path, sizeof(path), sec->key_file);
  else {
    snprintf(path, sizeof(path), "%s/%s.%s.pem", DKIM_DEFAULT_DIR, domain, selector);
    if(mkdir(DKIM_DEFAULT_DIR, 0700) == 0) {
      result = ctl_give_to(DKIM_DEFAULT_DIR, ctl_daemon_user(c->cfg));
      if(result)
        return result;
    }
  }
  if(!access(path, F_OK)) {
    fprintf(stderr, "posternctl: %s exists; a key that may be in DNS is never replaced (remove "
            "it first, or make the new key under a new selector)\n", path);
    return EX_CANTCREAT;
  }
  if(tls_dkim_keygen(kind, (int)bits, path, &k, err, sizeof(err))) {
    fprintf(stderr, "posternctl: %s\n", err);
    return EX_CANTCREAT;
  }
  result = ctl_give_to(path, ctl_daemon_user(c->cfg));
  if(result)
    return result;
  record_text(&k, rec, sizeof(rec));
  zone_line(domain, selector, rec, zone, sizeof(zone));
  printf("wrote %s (%s, %d bits, mode 600%s%s)\n", path, alg, k.bits,
         ctl_daemon_user(c->cfg) ? ", owner " : "",
         ctl_daemon_user(c->cfg) ? ctl_daemon_user(c->cfg)->pw_name : "");
  printf("publish this DNS TXT record:\n%s\n", zone);
  if(!sec)
    printf("and sign with it: add to %s\n[dkim %s-%s]\ndomain = %s\nselector = %s\n"
           "key_file = %s\nalgorithm = %s\n", c->cfg->path ? c->cfg->path : "postern.conf",
           domain, selector, domain, selector, path, alg);
  printf("then: posternctl dkim check %s\n", domain);
  return 0;
}

/* Of the TXT records at the key's name, the DKIM one (RFC 6376 3.6.2.2: v=DKIM1 first, or a
 * p= tag); compared with the key. */
static void check_one(struct ctl_report *rep, const struct cfg_dkim *d)
{
  struct tls_dkim_key k;
  struct dns_txt txt[8];
  char name[600], err[512], rec[DKIM_RECORD_MAX], zone[DKIM_RECORD_MAX + 256];
  char fix[2 * DKIM_RECORD_MAX + 512], check[128];
  const char *found = NULL, *v, *p, *kk;
  size_t n = 0, i, vl, pl, kl, dkims = 0;
  const char *want = d->algorithm && !strcmp(d->algorithm, "ed25519-sha256") ? "ed25519" : "rsa";

  snprintf(check, sizeof(check), "dkim %s", d->name);
  if(!d->domain || !d->selector || !d->key_file) {
    ctl_report(rep, CTL_FINDING, check, "give the section domain, selector and key_file",
               "[dkim %s] is incomplete", d->name);
    return;
  }
  snprintf(name, sizeof(name), "%s._domainkey.%s", d->selector, d->domain);
  if(tls_dkim_key_read(d->key_file, NULL, NULL, &k, err, sizeof(err))) {
    snprintf(fix, sizeof(fix), "posternctl dkim keygen %s %s --algorithm %s", d->domain,
             d->selector, d->algorithm ? d->algorithm : "rsa-sha256");
    ctl_report(rep, CTL_FINDING, check, fix, "%s: %s", name, err);
    return;
  }
  if(strcmp(k.kind, want)) {
    ctl_report(rep, CTL_FINDING, check, "make a key of the kind algorithm names (posternctl "
               "dkim keygen), or change algorithm", "%s is an %s key; algorithm = %s",
               d->key_file, k.kind, d->algorithm ? d->algorithm : "rsa-sha256");
    return;
  }
  record_text(&k, rec, sizeof(rec));
  zone_line(d->domain, d->selector, rec, zone, sizeof(zone));
  if(dns_txt_query(name, txt, sizeof(txt) / sizeof(txt[0]), &n, err, sizeof(err))) {
    ctl_report(rep, CTL_UNCHECKED, check, "check this machine's resolver (/etc/resolv.conf)",
               "%s: %s", name, err);
    return;
  }
  for(i = 0; i < n; i++) {
    size_t len = strlen(txt[i].text);
    if((!mailauth_tag_find(txt[i].text, len, "v", &v, &vl) && vl == 5 && !memcmp(v, "DKIM1", 5))
       || !mailauth_tag_find(txt[i].text, len, "p", &p, &pl)) {
      found = txt[i].text;
      dkims++;
    }
  }
  snprintf(fix, sizeof(fix), "publish: %s", zone);
  if(!found) {
    ctl_report(rep, CTL_FINDING, check, fix, "%s: %s: receivers cannot check the signatures",
               name, n ? "no DKIM record among its TXT records" : err);
    return;
  }
  if(dkims > 1) {
    snprintf(fix, sizeof(fix), "keep one TXT record at %s: %s", name, zone);
    ctl_report(rep, CTL_FINDING, check, fix, "%s has %zu DKIM records; verifiers take none or "
               "any one", name, dkims);
    return;
  }
  if(mailauth_tag_find(found, strlen(found), "p", &p, &pl) || !pl) {
    ctl_report(rep, CTL_FINDING, check, fix, "%s: the record has no key (p= empty: revoked)",
               name);
    return;
  }
  if(mailauth_tag_find(found, strlen(found), "k", &kk, &kl)) {
    kk = "rsa";
    kl = 3;
  }
  {
    /* p= may be written with blanks between the base64 pieces */
    char pub[TLS_DKIM_P_MAX];
    size_t o = 0;
    for(i = 0; i < pl && o + 1 < sizeof(pub); i++)
      if(p[i] != ' ' && p[i] != '\t' && p[i] != '\r' && p[i] != '\n')
        pub[o++] = p[i];
    pub[o] = '\0';
    if(kl != strlen(k.kind) || strncasecmp(kk, k.kind, kl) || strcmp(pub, k.p)) {
      snprintf(fix, sizeof(fix), "replace the record with: %s", zone);
      ctl_report(rep, CTL_FINDING, check, fix, "%s publishes %s key than %s holds: signatures "
                 "made with it fail", name, kl != strlen(k.kind) || strncasecmp(kk, k.kind, kl)
                 ? "another kind of" : "another", d->key_file);
      return;
    }
  }
  ctl_report(rep, CTL_OK, check, NULL, "%s publishes the key of %s (%s, %d bits)", name,
             d->key_file, d->algorithm ? d->algorithm : "rsa-sha256", k.bits);
}

static int dkim_check(struct ctl *c)
{
  struct ctl_report rep;
  const char *domain;
  size_t i, seen = 0;
  int result;

  if(ctl_no_options(c))
    return EX_USAGE;
  if(c->nargs > 3)
    return ctl_usage_error("dkim check takes at most one DOMAIN", c->args[3]);
  domain = c->nargs == 3 ? c->args[2] : NULL;
  result = ctl_config(c);
  if(result)
    return result;
  ctl_report_init(&rep, c->json);
  for(i = 0; i < c->cfg->ndkims; i++) {
    const struct cfg_dkim *d = &c->cfg->dkims[i];
    if(domain && (!d->domain || strcasecmp(d->domain, domain)))
      continue;
    seen++;
    check_one(&rep, d);
  }
  if(!seen) {
    char fix[512];
    snprintf(fix, sizeof(fix), "posternctl dkim keygen %s SELECTOR, then add the [dkim] "
             "section it prints", domain ? domain : "DOMAIN");
    ctl_report(&rep, CTL_FINDING, "dkim", fix, "no [dkim] section%s%s: nothing is signed",
               domain ? " for " : "", domain ? domain : "");
  }
  return ctl_report_finish(&rep);
}

int ctl_dkim(struct ctl *c)
{
  if(c->nargs >= 2 && !strcmp(c->args[1], "keygen"))
    return dkim_keygen(c);
  if(c->nargs >= 2 && !strcmp(c->args[1], "check"))
    return dkim_check(c);
  return ctl_usage_error("dkim takes keygen DOMAIN SELECTOR or check [DOMAIN]",
                         c->nargs >= 2 ? c->args[1] : NULL);
}
