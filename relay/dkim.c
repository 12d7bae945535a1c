/* DKIM signing (RFC 6376; Ed25519 by RFC 8463) of mail leaving through an smtp upstream. The
 * message is signed exactly as it goes on the wire: line ends made CRLF the way the client's
 * DATA writer makes them, after every change Postern makes to it. */
#include "relay/relay_int.h"
#include "global/mailauth.h"
#include "lib/buf.h"
#include "lib/log.h"
#include "lib/vendor.h"
#include "tls/tls.h"
#include <gmime/gmime.h>
#include <opendkim/dkim.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#define DKIM_HEADERS_MAX 64       /* field names in one `headers =` */

struct dkim_signer {
  char *name, *domain, *selector, *key_file;
  int ed25519, match_sender;
  dkim_canon_t hcanon, bcanon;
  char *names;                    /* the `headers` list, NUL-separated */
  const char *hdrs[DKIM_HEADERS_MAX + 1];
  struct tls_dkim_signkey *key;   /* decoded once, at first use (see signer_key) */
};

struct dkim_signers {
  struct dkim_signer *v;
  size_t n;
  pthread_mutex_t mu;             /* the keys' first load, when sessions share the signers */
  unsigned refs;                  /* under shared_mu */
  const struct config *cfg;       /* shared: the configuration they were made for */
  struct dkim_signers *next;      /* in the shared list */
};

/* The signers of each configuration the relay runs, shared by all its sessions, so that a key
 * is read and decoded once per configuration (again after a reload, which brings a new one). */
static pthread_mutex_t shared_mu = PTHREAD_MUTEX_INITIALIZER;
static struct dkim_signers *shared;

/* ---- the header section, as it will be sent ------------------------------------------------ */

/* The domain of the first mailbox of a From: value (GMime's RFC 5322 parser), into out. */
static int from_domain(const char *value, size_t len, char *out, size_t outsz)
{
  char *v = str_dup_n(value, len);
  InternetAddressList *list;
  int i, count, result = -1;
  if(!v)
    return -1;
  vendor_gmime_start();
  list = internet_address_list_parse(NULL, v);
  count = list ? internet_address_list_length(list) : 0;
  for(i = 0; i < count && result; i++) {
    InternetAddress *ia = internet_address_list_get_address(list, i);
    const char *addr, *at;
    if(!INTERNET_ADDRESS_IS_MAILBOX(ia))
      continue;
    addr = internet_address_mailbox_get_addr(INTERNET_ADDRESS_MAILBOX(ia));
    at = addr ? strrchr(addr, '@') : NULL;
    if(at && at[1] && strlen(at + 1) < outsz) {
      str_copy(out, outsz, at + 1);
      result = 0;
    }
  }
  if(list)
    g_object_unref(list);
  free(v);
  return result;
}

/* The message with every line ended by CRLF and a CRLF at the end: what send_body() of the
 * smtp client puts on the wire (less the dot-stuffing), so the signature covers those bytes. */
static int crlf_copy(const char *p, size_t n, struct buf *out)
{
  size_t i = 0;
  if(buf_reserve(out, n + n / 16 + 2))
    return -1;
  while(i < n) {
    size_t j = i;
    while(j < n && p[j] != '\r' && p[j] != '\n')
      j++;
    if(buf_add(out, p + i, j - i) || (j < n && buf_add(out, "\r\n", 2)))
      return -1;
    if(j == n)
      return buf_add(out, "\r\n", 2);
    i = (p[j] == '\r' && j + 1 < n && p[j + 1] == '\n') ? j + 2 : j + 1;
  }
  return 0;
}

/* ---- signers ------------------------------------------------------------------------------- */

static void signer_clear(struct dkim_signer *s)
{
  free(s->name);
  free(s->domain);
  free(s->selector);
  free(s->key_file);
  free(s->names);
  tls_dkim_signkey_free(s->key);
}

static void signers_free(struct dkim_signers *ds)
{
  size_t i;
  if(!ds)
    return;
  for(i = 0; i < ds->n; i++)
    signer_clear(&ds->v[i]);
  pthread_mutex_destroy(&ds->mu);
  free(ds->v);
  free(ds);
}

/* `headers = From To ...` (blanks, commas or colons between names) into s->hdrs. */
static int headers_split(struct dkim_signer *s, const char *list)
{
  size_t n = 0, i, len = strlen(list);
  s->names = str_dup_n(list, len);
  if(!s->names)
    return -1;
  for(i = 0; i < len; i++) {
    char c = s->names[i];
    if(c == ' ' || c == '\t' || c == ',' || c == ':')
      s->names[i] = '\0';
  }
  for(i = 0; i < len; i++)
    if(s->names[i] && (i == 0 || !s->names[i - 1])) {
      if(n == DKIM_HEADERS_MAX)
        return -1;
      s->hdrs[n++] = s->names + i;
    }
  s->hdrs[n] = NULL;
  return n ? 0 : -1;
}

static int signer_init(struct dkim_signer *s, const struct cfg_dkim *d)
{
  const char *canon = d->canonicalization ? d->canonicalization : "relaxed/relaxed";
  const char *slash = strchr(canon, '/');
  s->name = str_dup_n(d->name, strlen(d->name));
  s->domain = str_dup_n(d->domain, strlen(d->domain));
  s->selector = str_dup_n(d->selector, strlen(d->selector));
  s->key_file = str_dup_n(d->key_file, strlen(d->key_file));
  s->ed25519 = d->algorithm && !strcmp(d->algorithm, "ed25519-sha256");
  s->match_sender = d->match && !strcmp(d->match, "sender");
  /* "relaxed" alone is relaxed/simple (RFC 6376 3.5, c=) */
  s->hcanon = !strncmp(canon, "relaxed", 7) ? DKIM_CANON_RELAXED : DKIM_CANON_SIMPLE;
  s->bcanon = slash && !strcmp(slash + 1, "relaxed") ? DKIM_CANON_RELAXED : DKIM_CANON_SIMPLE;
  if(!s->name || !s->domain || !s->selector || !s->key_file ||
     headers_split(s, d->headers ? d->headers : "From"))
    return -1;
  return 0;
}

static int signers_new(const struct config *cfg, struct dkim_signers **out)
{
  struct dkim_signers *ds;
  size_t i;
  *out = NULL;
  if(!cfg->ndkims)
    return 0;
  ds = calloc(1, sizeof(*ds));
  if(!ds)
    return -1;
  pthread_mutex_init(&ds->mu, NULL);
  ds->refs = 1;
  ds->v = calloc(cfg->ndkims, sizeof(*ds->v));
  if(!ds->v) {
    signers_free(ds);
    return -1;
  }
  for(i = 0; i < cfg->ndkims; i++) {
    ds->n++;
    if(signer_init(&ds->v[i], &cfg->dkims[i])) {
      signers_free(ds);
      return -1;
    }
  }
  *out = ds;
  return 0;
}

int dkim_signers_share(const struct config *cfg)
{
  struct dkim_signers *ds;
  if(signers_new(cfg, &ds))
    return -1;
  if(!ds)
    return 0;
  ds->cfg = cfg;
  pthread_mutex_lock(&shared_mu);
  ds->next = shared;
  shared = ds;
  pthread_mutex_unlock(&shared_mu);
  return 0;
}

void dkim_signers_unshare(const struct config *cfg)
{
  struct dkim_signers **p, *ds = NULL;
  pthread_mutex_lock(&shared_mu);
  for(p = &shared; *p; p = &(*p)->next)
    if((*p)->cfg == cfg) {
      ds = *p;
      *p = ds->next;
      ds->cfg = NULL;
      break;
    }
  pthread_mutex_unlock(&shared_mu);
  dkim_signers_put(ds);           /* the list's reference; sessions may hold theirs a while */
}

int dkim_signers_get(const struct config *cfg, struct dkim_signers **out)
{
  struct dkim_signers *ds;
  pthread_mutex_lock(&shared_mu);
  for(ds = shared; ds && ds->cfg != cfg; ds = ds->next)
    ;
  if(ds)
    ds->refs++;
  pthread_mutex_unlock(&shared_mu);
  if(ds) {
    *out = ds;
    return 0;
  }
  return signers_new(cfg, out);   /* a configuration the relay does not run: its own */
}

void dkim_signers_put(struct dkim_signers *ds)
{
  unsigned left;
  if(!ds)
    return;
  pthread_mutex_lock(&shared_mu);
  left = --ds->refs;
  pthread_mutex_unlock(&shared_mu);
  if(!left)
    signers_free(ds);
}

/* The key, read and decoded at its first use (by the daemon's user, after root is dropped),
 * then kept for every session of the configuration: decoding a PEM key costs about as much as
 * an RSA-2048 signature. */
static int signer_key(struct dkim_signer *s, struct smtp_reply *r)
{
  struct tls_dkim_key info;
  char err[256], *pem = NULL;
  size_t pemlen = 0;
  int result = -1;
  if(s->key)
    return 0;
  if(tls_dkim_key_read(s->key_file, &pem, &pemlen, &info, err, sizeof(err))) {
    log_error("[dkim %s]: %s", s->name, err);
    smtp_reply_set(r, 451, "4.3.0", "DKIM key of [dkim %s] cannot be used: %s", s->name, err);
    return -1;
  }
  if(strcmp(info.kind, s->ed25519 ? "ed25519" : "rsa")) {
    log_error("[dkim %s]: key_file %s holds an %s key, not what algorithm says", s->name,
              s->key_file, info.kind);
    smtp_reply_set(r, 451, "4.3.0", "DKIM key of [dkim %s] is of the wrong kind", s->name);
    goto out;
  }
  if(tls_dkim_signkey_load(pem, pemlen, &s->key)) {
    smtp_reply_set(r, 451, "4.3.0", "DKIM key of [dkim %s] cannot be loaded", s->name);
    goto out;
  }
  result = 0;
out:
  tls_dkim_key_free(pem, pemlen);
  return result;
}

/* ---- the signature, made here -------------------------------------------------------------
 * Not by libopendkim, measured: 2.11 signs Ed25519 correctly only with relaxed header
 * canonicalization and leaks the decoded key (about 1.3 KB) with every Ed25519 signature, and
 * its API takes the key as text, so it decodes the PEM again for every signature (about 0.9 ms
 * of the 1.7 ms an RSA-2048 signature cost through it; BENCHMARKS.md). So both algorithms are
 * signed here, with the key decoded once (OpenSSL, in tls/), over the canonical form RFC 6376
 * 3.4 defines; the verifiers in the tests (dkimpy, opendkim-testmsg) check what comes out. */

static int is_wsp(char c)
{
  return c == ' ' || c == '\t';
}

/* RFC 6376 3.4.2: lower-case name, unfolded value, blanks squeezed and trimmed. */
static int canon_relaxed_field(struct buf *b, const char *n, size_t nl, const char *v, size_t vl)
{
  size_t i;
  int blank = 0, any = 0;
  for(i = 0; i < nl; i++) {
    char c = n[i];
    if(buf_add(b, c >= 'A' && c <= 'Z' ? (char[]){ (char)(c + 32) } : &n[i], 1))
      return -1;
  }
  if(buf_add(b, ":", 1))
    return -1;
  for(i = 0; i < vl; i++) {
    char c = v[i];
    if(c == '\r' || c == '\n')
      continue;
    if(is_wsp(c)) {
      blank = 1;
      continue;
    }
    if(blank && any && buf_add(b, " ", 1))
      return -1;
    blank = 0;
    any = 1;
    if(buf_add(b, &c, 1))
      return -1;
  }
  return buf_add(b, "\r\n", 2);
}

/* RFC 6376 3.4.3 / 3.4.4 over the body (CRLF lines, ends with CRLF). */
static int canon_body(const char *p, size_t n, int relaxed, struct buf *b)
{
  size_t i = 0, keep;
  while(i < n) {
    size_t e = i, end;
    while(e < n && p[e] != '\n')
      e++;
    end = e > i && p[e - 1] == '\r' ? e - 1 : e;     /* the line without CRLF */
    if(relaxed) {
      size_t j;
      int blank = 0;
      while(end > i && is_wsp(p[end - 1]))
        end--;
      for(j = i; j < end; j++) {
        if(is_wsp(p[j])) {
          blank = 1;
          continue;
        }
        if((blank && buf_add(b, " ", 1)) || buf_add(b, &p[j], 1))
          return -1;
        blank = 0;
      }
    }
    else if(buf_add(b, p + i, end - i))
      return -1;
    if(buf_add(b, "\r\n", 2))
      return -1;
    i = e + 1;
  }
  /* no empty lines at the end; an empty body is CRLF for simple, nothing for relaxed */
  keep = b->len;
  while(keep >= 2 && b->ptr[keep - 1] == '\n' && b->ptr[keep - 2] == '\r' &&
        (keep == 2 || (b->ptr[keep - 3] == '\n')))
    keep -= 2;
  b->len = keep;
  if(!b->len && !relaxed)
    return buf_add(b, "\r\n", 2);
  return 0;
}

/* The i-th (0-based) field called name, counted from the bottom; 0 found. */
static int field_from_bottom(const char *msg, size_t len, const char *name, size_t k,
                             const char **fn, size_t *fnl, const char **fv, size_t *fvl)
{
  size_t pos = 0, nl, vl, count = 0, seen = 0;
  const char *n, *v;
  while(mailauth_header_next(msg, len, &pos, &n, &nl, &v, &vl))
    count += !str_casecmp_n(n, nl, name);
  if(k >= count)
    return -1;
  pos = 0;
  while(mailauth_header_next(msg, len, &pos, &n, &nl, &v, &vl))
    if(!str_casecmp_n(n, nl, name) && seen++ == count - 1 - k) {
      *fn = n;
      *fnl = nl;
      *fv = v;
      *fvl = vl;
      return 0;
    }
  return -1;
}

static int signature_make(struct dkim_signer *s, const struct buf *msg, struct buf *sigs,
                          struct smtp_reply *r)
{
  struct buf body, hashed, field, hlist;
  unsigned char bh[32], digest[32], sig[TLS_DKIM_SIG_MAX];
  char bh64[64], sig64[TLS_DKIM_SIG_MAX / 3 * 4 + 8];
  size_t pos = 0, nl, vl, i, k, line, siglen = 0;
  const char *n, *v;
  int relaxed_h = s->hcanon == DKIM_CANON_RELAXED, result = -1;

  buf_init(&body, msg->len + 2);
  buf_init(&hashed, msg->len + 4096);
  buf_init(&field, 64u * 1024u);
  buf_init(&hlist, 64u * 1024u);
  /* the body: after the empty line that ends the header section */
  while(mailauth_header_next(msg->ptr, msg->len, &pos, &n, &nl, &v, &vl))
    ;
  if(pos + 2 <= msg->len && msg->ptr[pos] == '\r' && msg->ptr[pos + 1] == '\n')
    pos += 2;
  else
    pos = msg->len;
  if(canon_body(msg->ptr + pos, msg->len - pos, s->bcanon == DKIM_CANON_RELAXED, &body) ||
     tls_sha256(body.ptr ? body.ptr : "", body.len, bh) || tls_base64_encode(bh, 32, bh64,
                                                                              sizeof(bh64)))
    goto nomem;
  /* each listed field bottom up as often as it occurs, and its name once more (over-signed) */
  for(i = 0; s->hdrs[i]; i++)
    for(k = 0; ; k++) {
      const char *fn, *fv;
      size_t fnl, fvl;
      int found = !field_from_bottom(msg->ptr, msg->len, s->hdrs[i], k, &fn, &fnl, &fv, &fvl);
      if(buf_addf(&hlist, "%s%s", hlist.len ? ":" : "", s->hdrs[i]))
        goto nomem;
      if(!found)
        break;
      if(relaxed_h ? canon_relaxed_field(&hashed, fn, fnl, fv, fvl)
                   : (buf_add(&hashed, fn, (size_t)(fv + fvl - fn)) || buf_add(&hashed, "\r\n", 2)))
        goto nomem;
    }
  /* the field as it goes out, b= last and empty while hashed (RFC 6376 3.7) */
  if(buf_addf(&field, DKIM_SIGNHEADER ": v=1; a=%s; c=%s/%s; d=%s; s=%s;\r\n"
              "\tt=%lld; bh=%s;\r\n\th=", s->ed25519 ? "ed25519-sha256" : "rsa-sha256",
              relaxed_h ? "relaxed" : "simple",
              s->bcanon == DKIM_CANON_RELAXED ? "relaxed" : "simple", s->domain, s->selector,
              time_real_ms() / 1000, bh64))
    goto nomem;
  for(i = 0, line = 3; i < hlist.len; i++) {
    if(hlist.ptr[i] == ':' && line > 64) {
      if(buf_addstr(&field, ":\r\n\t "))
        goto nomem;
      line = 2;
      continue;
    }
    if(buf_add(&field, &hlist.ptr[i], 1))
      goto nomem;
    line++;
  }
  if(buf_addstr(&field, ";\r\n\tb="))
    goto nomem;
  if(relaxed_h) {
    const char *colon = memchr(field.ptr, ':', field.len);
    if(canon_relaxed_field(&hashed, field.ptr, (size_t)(colon - field.ptr), colon + 1,
                           field.len - (size_t)(colon + 1 - field.ptr)))
      goto nomem;
    hashed.len -= 2;                 /* without its CRLF */
  }
  else if(buf_add(&hashed, field.ptr, field.len))
    goto nomem;
  if(tls_sha256(hashed.ptr, hashed.len, digest) ||
     tls_dkim_sign_digest(s->key, digest, sig, sizeof(sig), &siglen) ||
     tls_base64_encode(sig, siglen, sig64, sizeof(sig64))) {
    smtp_reply_set(r, 451, "4.3.0", "DKIM signing with [dkim %s] failed", s->name);
    goto out;
  }
  if(buf_add(sigs, field.ptr, field.len) || buf_addstr(sigs, sig64) || buf_add(sigs, "\r\n", 2))
    goto nomem;
  result = 0;
  goto out;
nomem:
  smtp_reply_set(r, 451, "4.3.0", "out of memory");
out:
  buf_free(&body);
  buf_free(&hashed);
  buf_free(&field);
  buf_free(&hlist);
  return result;
}

/* One DKIM-Signature field for msg (CRLF form), appended to sigs. */
static int signer_sign(struct dkim_signers *ds, struct dkim_signer *s, const struct buf *msg,
                       struct buf *sigs, struct smtp_reply *r)
{
  int bad;
  pthread_mutex_lock(&ds->mu);    /* after the first load the key only is read */
  bad = signer_key(s, r);
  pthread_mutex_unlock(&ds->mu);
  return bad ? -1 : signature_make(s, msg, sigs, r);
}

/* Does the header section carry a DKIM-Signature of domain and selector already? */
static int signed_by(const char *msg, size_t len, const char *domain, const char *selector)
{
  size_t pos = 0, nl, vl, dl, sl;
  const char *n, *v, *dv, *sv;
  while(mailauth_header_next(msg, len, &pos, &n, &nl, &v, &vl))
    if(!str_casecmp_n(n, nl, DKIM_SIGNHEADER) &&
       !mailauth_tag_find(v, vl, "d", &dv, &dl) && !str_casecmp_n(dv, dl, domain) &&
       !mailauth_tag_find(v, vl, "s", &sv, &sl) && sl == strlen(selector) &&
       !memcmp(sv, selector, sl))
      return 1;
  return 0;
}

static const char *address_domain(const char *addr)
{
  const char *at = addr ? strrchr(addr, '@') : NULL;
  return at && at[1] ? at + 1 : NULL;
}

int dkim_sign_message(struct dkim_signers *ds, const char *sender,
                      const char *body, size_t len, long long max, char **out, size_t *outlen,
                      struct smtp_reply *r)
{
  struct buf msg, sigs;
  char from[LIM_SMTP_DOMAIN + 1] = "";
  const char *n, *v, *env = address_domain(sender);
  size_t pos = 0, nl, vl, i;
  int result = -1;

  *out = NULL;
  *outlen = 0;
  if(!ds || !ds->n)
    return 0;
  buf_init(&msg, (size_t)max);
  /* the signature fields, then the whole message after them */
  buf_init(&sigs, 64u * 1024u + (size_t)max);
  if(crlf_copy(body, len, &msg)) {
    smtp_reply_set(r, 451, "4.3.0", "out of memory");
    goto out;
  }
  while(mailauth_header_next(msg.ptr, msg.len, &pos, &n, &nl, &v, &vl))
    if(!str_casecmp_n(n, nl, "From")) {
      if(from_domain(v, vl, from, sizeof(from)))
        from[0] = '\0';
      break;
    }
  for(i = 0; i < ds->n; i++) {
    struct dkim_signer *s = &ds->v[i];
    const char *want = s->match_sender ? env : from;
    if(!want || !*want || strcasecmp(want, s->domain) ||
       signed_by(msg.ptr, msg.len, s->domain, s->selector))
      continue;
    if(signer_sign(ds, s, &msg, &sigs, r))
      goto out;
  }
  if(!sigs.len) {
    result = 0;
    goto out;
  }
  if(buf_add(&sigs, msg.ptr, msg.len)) {
    smtp_reply_set(r, 451, "4.3.0", "out of memory");
    goto out;
  }
  *out = buf_steal(&sigs, outlen);
  result = 0;
out:
  buf_free(&msg);
  buf_free(&sigs);
  return result;
}

/* [dkim] sections at start (postern -n, SIGHUP): complete, keys there, private and of the kind
 * algorithm names. */
int dkim_check_config(const struct config *cfg, FILE *errs)
{
  size_t i, j;
  int problems = 0;
  for(i = 0; i < cfg->ndkims; i++) {
    const struct cfg_dkim *d = &cfg->dkims[i];
    struct tls_dkim_key info;
    struct stat st;
    char err[256];
    const char *want = d->algorithm && !strcmp(d->algorithm, "ed25519-sha256") ? "ed25519" : "rsa";
    if(!d->domain || !d->selector || !d->key_file) {
      fprintf(errs, "%s:%d: [dkim %s] needs domain, selector and key_file\n", cfg->path,
              d->line, d->name);
      problems++;
      continue;
    }
    for(j = 0; j < i; j++)
      if(cfg->dkims[j].domain && cfg->dkims[j].selector &&
         !strcasecmp(cfg->dkims[j].domain, d->domain) &&
         !strcmp(cfg->dkims[j].selector, d->selector)) {
        fprintf(errs, "%s:%d: [dkim %s]: domain %s and selector %s are those of [dkim %s]; "
                "two keys cannot share one DNS record\n", cfg->path, d->line, d->name,
                d->domain, d->selector, cfg->dkims[j].name);
        problems++;
      }
    if(stat(d->key_file, &st)) {
      fprintf(errs, "%s:%d: [dkim %s]: key_file %s does not exist (make one: posternctl dkim "
              "keygen %s %s --algorithm %s)\n", cfg->path, d->line, d->name, d->key_file,
              d->domain, d->selector, d->algorithm ? d->algorithm : "rsa-sha256");
      problems++;
      continue;
    }
    if(!S_ISREG(st.st_mode) || (st.st_mode & (S_IRWXG | S_IRWXO))) {
      fprintf(errs, "%s:%d: [dkim %s]: key_file %s must be a regular file that only its owner "
              "may read or write (chmod 600 %s)\n", cfg->path, d->line, d->name, d->key_file,
              d->key_file);
      problems++;
      continue;
    }
    if(tls_dkim_key_read(d->key_file, NULL, NULL, &info, err, sizeof(err))) {
      fprintf(errs, "%s:%d: [dkim %s]: %s\n", cfg->path, d->line, d->name, err);
      problems++;
    }
    else if(strcmp(info.kind, want)) {
      fprintf(errs, "%s:%d: [dkim %s]: key_file %s is an %s key; algorithm = %s needs an %s "
              "key\n", cfg->path, d->line, d->name, d->key_file, info.kind,
              d->algorithm ? d->algorithm : "rsa-sha256", want);
      problems++;
    }
    else if(!strcmp(info.kind, "rsa") && info.bits < 1024) {
      fprintf(errs, "%s:%d: [dkim %s]: the RSA key has %d bits; verifiers ignore keys under "
              "1024 bits (RFC 8301): make a 2048-bit one\n", cfg->path, d->line, d->name,
              info.bits);
      problems++;
    }
  }
  return problems;
}
