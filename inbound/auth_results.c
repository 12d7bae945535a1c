/* DKIM and DMARC verdicts on inbound mail: every DKIM-Signature checked with libopendkim, DMARC
 * (RFC 7489) evaluated on the From: domain with libopendmarc, its organizational domains from
 * Debian's public suffix list, and the verdicts written as an Authentication-Results field
 * (RFC 8601) that is read back when the message becomes a correspondence record. */
#include "inbound/inbound.h"
#include "global/mailauth.h"
#include "lib/buf.h"
#include "lib/log.h"
#include "lib/vendor.h"
#include <arpa/inet.h>
#include <gmime/gmime.h>
#include <jansson.h>
#include <opendkim/dkim.h>
#include <opendmarc/dmarc.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define PUBLIC_SUFFIX_LIST "/usr/share/publicsuffix/public_suffix_list.dat"
#define AUTH_DNS_TIMEOUT 5        /* seconds per key or policy lookup, inside the DATA reply */

static DKIM_LIB *dkim_lib;       /* shared by every session: libopendkim is made for threads */
static int dmarc_ok;

int inbound_auth_init(FILE *errs)
{
  OPENDMARC_LIB_T lib;
  unsigned int flags = DKIM_LIBFLAGS_FIXCRLF;
  unsigned int timeout = AUTH_DNS_TIMEOUT;
  if(dkim_lib)
    return 0;
  dkim_lib = dkim_init(NULL, NULL);
  if(!dkim_lib ||
     dkim_options(dkim_lib, DKIM_OP_SETOPT, DKIM_OPTS_FLAGS, &flags, sizeof(flags)) ||
     dkim_options(dkim_lib, DKIM_OP_SETOPT, DKIM_OPTS_TIMEOUT, &timeout, sizeof(timeout))) {
    fprintf(errs, "cannot start libopendkim\n");
    return 1;
  }
  memset(&lib, 0, sizeof(lib));
  lib.tld_type = OPENDMARC_TLD_TYPE_MOZILLA;
  str_copy((char *)lib.tld_source_file, sizeof(lib.tld_source_file), PUBLIC_SUFFIX_LIST);
  if(opendmarc_policy_library_init(&lib) != DMARC_PARSE_OKAY) {
    fprintf(errs, "cannot read the public suffix list %s (install the package publicsuffix)\n",
            PUBLIC_SUFFIX_LIST);
    return 1;
  }
  dmarc_ok = 1;
  return 0;
}

void inbound_auth_done(void)
{
  if(dkim_lib)
    dkim_close(dkim_lib);
  dkim_lib = NULL;
  if(dmarc_ok)
    opendmarc_policy_library_shutdown(NULL);
  dmarc_ok = 0;
}

/* A token from the message (a domain, a selector) as it may stand in the header: DNS name
 * characters only, others shown as '?'. */
static void token_copy(char *out, size_t outsz, const char *s)
{
  size_t i, n = 0;
  for(i = 0; s && s[i] && n + 1 < outsz; i++) {
    char c = s[i];
    int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
             c == '.' || c == '-' || c == '_';
    out[n++] = ok ? c : '?';
  }
  out[n] = '\0';
}

/* The domains of the From: fields: exactly one field with one mailbox is what DMARC can judge
 * (RFC 7489 6.6.1); *count says how many fields there were. */
static void from_domain(const char *msg, size_t len, char *out, size_t outsz, int *count)
{
  size_t pos = 0, nl, vl;
  const char *n, *v;
  *count = 0;
  out[0] = '\0';
  vendor_gmime_start();
  while(mailauth_header_next(msg, len, &pos, &n, &nl, &v, &vl)) {
    InternetAddressList *list;
    char *value;
    if(str_casecmp_n(n, nl, "From"))
      continue;
    if(++*count > 1)
      continue;
    value = str_dup_n(v, vl);
    list = value ? internet_address_list_parse(NULL, value) : NULL;
    if(list && internet_address_list_length(list) == 1) {
      InternetAddress *ia = internet_address_list_get_address(list, 0);
      const char *addr = INTERNET_ADDRESS_IS_MAILBOX(ia)
                         ? internet_address_mailbox_get_addr(INTERNET_ADDRESS_MAILBOX(ia)) : NULL;
      const char *at = addr ? strrchr(addr, '@') : NULL;
      if(at && at[1])
        token_copy(out, outsz, at + 1);
    }
    if(list)
      g_object_unref(list);
    free(value);
  }
}

static const char *dkim_verdict(DKIM_SIGINFO *sig, const char **why)
{
  int err = dkim_sig_geterror(sig);
  unsigned int flags = dkim_sig_getflags(sig);
  *why = NULL;
  if((flags & DKIM_SIGFLAG_PASSED) && dkim_sig_getbh(sig) == DKIM_SIGBH_MATCH)
    return "pass";
  if(err == DKIM_SIGERROR_KEYFAIL)
    return "temperror";
  if(dkim_sig_getbh(sig) == DKIM_SIGBH_MISMATCH) {
    *why = "body hash mismatch";
    return "fail";
  }
  if(err == DKIM_SIGERROR_BADSIG) {
    *why = "signature mismatch";
    return "fail";
  }
  *why = err != DKIM_SIGERROR_OK && err != DKIM_SIGERROR_UNKNOWN ? dkim_sig_geterrorstr(err) : NULL;
  return err == DKIM_SIGERROR_EXPIRED || err == DKIM_SIGERROR_FUTURE ? "fail" : "permerror";
}

/* Hands msg to the verifier with only the first INBOUND_AUTH_DKIM_MAX DKIM-Signature fields
 * (the ones reported). The sender writes the signatures, and libopendkim looks up a key and
 * hashes the body again for each (a distinct l= each): forty cost as much as forty messages.
 * RFC 6376 6.1 lets a verifier limit how many it checks; the stored message keeps them all. */
static DKIM_STAT dkim_feed(DKIM *d, const char *msg, size_t len)
{
  size_t pos = 0, from = 0, nl, vl, nsig = 0;
  const char *n, *v;
  DKIM_STAT st = DKIM_STAT_OK;
  for(;;) {
    size_t field = pos;
    if(!mailauth_header_next(msg, len, &pos, &n, &nl, &v, &vl))
      break;
    if(str_casecmp_n(n, nl, "DKIM-Signature") || ++nsig <= INBOUND_AUTH_DKIM_MAX)
      continue;
    if(field > from && (st = dkim_chunk(d, (unsigned char *)msg + from, field - from)) !=
       DKIM_STAT_OK)
      return st;
    from = pos;
  }
  return len > from ? dkim_chunk(d, (unsigned char *)msg + from, len - from) : st;
}

static void dkim_check(const char *id, const char *msg, size_t len, struct inbound_auth *a)
{
  DKIM_STAT st;
  DKIM *d;
  DKIM_SIGINFO **sigs = NULL;
  int n = 0, i;
  if(!dkim_lib)
    return;
  d = dkim_verify(dkim_lib, (const unsigned char *)id, NULL, &st);
  if(!d)
    return;
  st = dkim_feed(d, msg, len);
  if(st == DKIM_STAT_OK)
    st = dkim_chunk(d, NULL, 0);
  if(st == DKIM_STAT_OK || st == DKIM_STAT_NOSIG)
    (void)dkim_eom(d, NULL);
  if(dkim_getsiglist(d, &sigs, &n) == DKIM_STAT_OK)
    for(i = 0; i < n && a->ndkim < INBOUND_AUTH_DKIM_MAX; i++) {
      struct inbound_auth_dkim *k = &a->dkim[a->ndkim++];
      const char *why;
      token_copy(k->domain, sizeof(k->domain), (const char *)dkim_sig_getdomain(sigs[i]));
      token_copy(k->selector, sizeof(k->selector), (const char *)dkim_sig_getselector(sigs[i]));
      str_copy(k->result, sizeof(k->result), dkim_verdict(sigs[i], &why));
      str_copy(k->why, sizeof(k->why), why ? why : "");
    }
  dkim_free(d);
}

static const char *policy_word(int p)
{
  return p == DMARC_RECORD_P_REJECT ? "reject" : p == DMARC_RECORD_P_QUARANTINE ? "quarantine"
         : "none";
}

static void dmarc_check(const struct inbound_auth_in *in, struct inbound_auth *a)
{
  DMARC_POLICY_T *pctx;
  char ip[INET6_ADDRSTRLEN] = "";
  int status, p = 0, sp = 0, spf, i;
  size_t k;

  if(in->family == AF_INET || in->family == AF_INET6)
    inet_ntop(in->family, in->addr, ip, sizeof(ip));
  pctx = opendmarc_policy_connect_init((u_char *)ip, in->family == AF_INET6);
  if(!pctx) {
    str_copy(a->dmarc, sizeof(a->dmarc), "temperror");
    return;
  }
  opendmarc_policy_store_from_domain(pctx, (u_char *)a->from_domain);
  spf = !strcmp(a->spf, "pass") ? DMARC_POLICY_SPF_OUTCOME_PASS
        : !strcmp(a->spf, "fail") || !strcmp(a->spf, "softfail") ? DMARC_POLICY_SPF_OUTCOME_FAIL
        : !strcmp(a->spf, "temperror") ? DMARC_POLICY_SPF_OUTCOME_TMPFAIL
        : DMARC_POLICY_SPF_OUTCOME_NONE;
  if(a->spf_domain[0])
    opendmarc_policy_store_spf(pctx, (u_char *)a->spf_domain, spf,
                               a->spf_helo ? DMARC_POLICY_SPF_ORIGIN_HELO
                               : DMARC_POLICY_SPF_ORIGIN_MAILFROM, NULL);
  for(k = 0; k < a->ndkim; k++) {
    const char *r = a->dkim[k].result;
    opendmarc_policy_store_dkim(pctx, (u_char *)a->dkim[k].domain, (u_char *)a->dkim[k].selector,
                                !strcmp(r, "pass") ? DMARC_POLICY_DKIM_OUTCOME_PASS
                                : !strcmp(r, "temperror") ? DMARC_POLICY_DKIM_OUTCOME_TMPFAIL
                                : DMARC_POLICY_DKIM_OUTCOME_FAIL, NULL);
  }
  status = opendmarc_policy_query_dmarc(pctx, (u_char *)a->from_domain);
  if(status == DMARC_DNS_ERROR_TMPERR) {
    str_copy(a->dmarc, sizeof(a->dmarc), "temperror");
    goto out;
  }
  if(status == DMARC_DNS_ERROR_NO_RECORD || status == DMARC_DNS_ERROR_NXDOMAIN) {
    str_copy(a->dmarc, sizeof(a->dmarc), "none");
    goto out;
  }
  if(status != DMARC_PARSE_OKAY) {
    str_copy(a->dmarc, sizeof(a->dmarc), "permerror");
    goto out;
  }
  opendmarc_policy_fetch_p(pctx, &p);
  opendmarc_policy_fetch_sp(pctx, &sp);
  {
    /* sp= applies when the From: domain is below the one whose record was found */
    u_char used[256] = "";
    opendmarc_policy_fetch_utilized_domain(pctx, used, sizeof(used));
    str_copy(a->dmarc_policy, sizeof(a->dmarc_policy),
             policy_word(strcasecmp((char *)used, a->from_domain) && sp ? sp : p));
  }
  i = opendmarc_get_policy_to_enforce(pctx);
  str_copy(a->dmarc, sizeof(a->dmarc), i == DMARC_POLICY_PASS ? "pass"
           : i == DMARC_POLICY_ABSENT ? "none" : "fail");
out:
  opendmarc_policy_connect_shutdown(pctx);
}

/* "Authentication-Results: host;" and one result per folded line (RFC 8601 2.2). */
static void header_write(const char *authserv, struct inbound_auth *a)
{
  struct buf b;
  size_t k;
  char *h;
  buf_init(&b, sizeof(a->header) - 1);
  buf_addf(&b, "Authentication-Results: %s", authserv);
  if(a->spf[0]) {
    buf_addf(&b, ";\r\n\tspf=%s", a->spf);
    if(a->spf_domain[0])
      buf_addf(&b, " smtp.%s=%s", a->spf_helo ? "helo" : "mailfrom", a->spf_domain);
  }
  if(!a->ndkim)
    buf_addstr(&b, ";\r\n\tdkim=none");
  for(k = 0; k < a->ndkim; k++) {
    const struct inbound_auth_dkim *d = &a->dkim[k];
    buf_addf(&b, ";\r\n\tdkim=%s", d->result);
    if(d->why[0])
      buf_addf(&b, " (%s)", d->why);
    buf_addf(&b, " header.d=%s header.s=%s", d->domain, d->selector);
  }
  if(a->dmarc[0]) {
    buf_addf(&b, ";\r\n\tdmarc=%s", a->dmarc);
    if(a->dmarc_policy[0])
      buf_addf(&b, " (p=%s)", a->dmarc_policy);
    if(a->from_domain[0])
      buf_addf(&b, " header.from=%s", a->from_domain);
  }
  buf_add(&b, "\r\n", 2);
  h = b.ptr;
  str_copy(a->header, sizeof(a->header), h && b.len + 1 <= sizeof(a->header) ? h : "");
  buf_free(&b);
}

void inbound_auth_check(const struct inbound_auth_in *in, const char *msg, size_t len,
                        struct inbound_auth *a)
{
  const char *at;
  int froms;
  memset(a, 0, sizeof(*a));
  str_copy(a->spf, sizeof(a->spf), in->spf ? in->spf : "");
  /* SPF's identity: the MAIL FROM domain, or the HELO name for the null sender (RFC 7208 2.4) */
  at = in->mail_from ? strrchr(in->mail_from, '@') : NULL;
  if(at && at[1])
    token_copy(a->spf_domain, sizeof(a->spf_domain), at + 1);
  else if(in->helo) {
    token_copy(a->spf_domain, sizeof(a->spf_domain), in->helo);
    a->spf_helo = 1;
  }
  dkim_check(in->id, msg, len, a);
  from_domain(msg, len, a->from_domain, sizeof(a->from_domain), &froms);
  if(froms != 1 || !a->from_domain[0])
    str_copy(a->dmarc, sizeof(a->dmarc), "permerror");   /* none, several, or unreadable */
  else if(dmarc_ok)
    dmarc_check(in, a);
  header_write(in->authserv_id, a);
}

json_t *inbound_auth_verdicts(const struct inbound_auth_in *in, const char *msg, size_t len)
{
  struct inbound_auth *a = malloc(sizeof(*a));
  json_t *j;
  if(!a)
    return NULL;
  inbound_auth_check(in, msg, len, a);
  j = inbound_auth_record(a->header, strlen(a->header), in->authserv_id);
  free(a);
  return j;
}

/* ---- fields that claim to be ours (RFC 8601 5) -------------------------------------------- */

/* Past blanks, line ends and (nested, backslash-quoted) comments from i. */
static size_t cfws_skip(const char *v, size_t len, size_t i)
{
  int depth = 0;
  for(; i < len; i++) {
    char c = v[i];
    if(depth && c == '\\')
      i++;
    else if(c == '(')
      depth++;
    else if(depth && c == ')')
      depth--;
    else if(!depth && c != ' ' && c != '\t' && c != '\r' && c != '\n')
      break;
  }
  return i;
}

/* Does an Authentication-Results value name authserv_id? Read as loosely as any reader
 * further on might read it: comments before it, a quoted-string, any case. */
static int authserv_is(const char *v, size_t len, const char *authserv_id)
{
  char id[256];
  size_t i = cfws_skip(v, len, 0), n = 0;
  if(i < len && v[i] == '"') {
    for(i++; i < len && v[i] != '"'; i++) {
      if(v[i] == '\\' && i + 1 < len)
        i++;
      if(n + 1 >= sizeof(id))
        return 0;
      id[n++] = v[i];
    }
  }
  else
    for(; i < len && v[i] != ';' && v[i] != '(' && v[i] != ' ' && v[i] != '\t' &&
          v[i] != '\r' && v[i] != '\n'; i++) {
      if(n + 1 >= sizeof(id))
        return 0;
      id[n++] = v[i];
    }
  id[n] = '\0';
  return n && !strcasecmp(id, authserv_id);
}

int inbound_auth_strip(const char *msg, size_t len, const char *authserv_id, struct buf *out,
                       size_t *removed)
{
  size_t pos = 0, start = 0, nl, vl;
  const char *n, *v;
  *removed = 0;
  for(;;) {
    size_t field = pos;
    if(!mailauth_header_next(msg, len, &pos, &n, &nl, &v, &vl))
      break;
    if(!str_casecmp_n(n, nl, "Authentication-Results") && authserv_is(v, vl, authserv_id)) {
      if(out && buf_add(out, msg + start, field - start))
        return -1;
      start = pos;
      ++*removed;
    }
  }
  return out ? buf_add(out, msg + start, len - start) : 0;
}

/* ---- back from the stored message: the record's "authentication" ------------------------- */

/* The value of ptype.property ("header.d") in one result; 0 found. */
static int prop_find(const char *s, size_t len, const char *prop, char *out, size_t outsz)
{
  size_t pl = strlen(prop), i;
  for(i = 0; i + pl + 1 <= len; i++)
    if((i == 0 || s[i - 1] == ' ') && !memcmp(s + i, prop, pl) && s[i + pl] == '=') {
      size_t j = i + pl + 1, n = 0;
      while(j < len && s[j] != ' ' && s[j] != ';' && n + 1 < outsz)
        out[n++] = s[j++];
      out[n] = '\0';
      return 0;
    }
  return -1;
}

json_t *inbound_auth_record(const char *msg, size_t len, const char *authserv_id)
{
  size_t pos = 0, nl, vl, i, start;
  const char *n, *v;
  json_t *o = NULL, *dkim = NULL, *dmarc = NULL;
  size_t al = strlen(authserv_id);

  /* only the field this server put there: the first, or the second below our Received-SPF
   * (RFC 8601 5: one further down with the same authserv-id may have come from anywhere;
   * our Received always follows ours) */
  if(!mailauth_header_next(msg, len, &pos, &n, &nl, &v, &vl))
    return NULL;
  if(!str_casecmp_n(n, nl, "Received-SPF") &&
     !mailauth_header_next(msg, len, &pos, &n, &nl, &v, &vl))
    return NULL;
  if(str_casecmp_n(n, nl, "Authentication-Results"))
    return NULL;
  while(vl && (*v == ' ' || *v == '\t')) {
    v++;
    vl--;
  }
  if(vl < al + 1 || str_casecmp_n(v, al, authserv_id) || v[al] != ';')
    return NULL;
  o = json_object();
  dkim = json_array();
  if(!o || !dkim)
    goto fail;
  json_object_set_new(o, "spf", json_null());
  for(i = al + 1; i < vl; ) {
    char method[16], result[16], buf[256];
    size_t e, k = 0;
    while(i < vl && (v[i] == ' ' || v[i] == '\t' || v[i] == '\r' || v[i] == '\n'))
      i++;
    start = i;
    for(e = i; e < vl && v[e] != ';'; e++)
      ;
    i = e + 1;
    while(start + k < e && v[start + k] != '=' && k + 1 < sizeof(method)) {
      method[k] = v[start + k];
      k++;
    }
    method[k] = '\0';
    if(start + k >= e || v[start + k] != '=')
      continue;
    {
      size_t r = 0, j = start + k + 1;
      while(j < e && v[j] != ' ' && v[j] != '\t' && v[j] != '\r' && r + 1 < sizeof(result))
        result[r++] = v[j++];
      result[r] = '\0';
    }
    if(!strcmp(method, "spf"))
      json_object_set_new(o, "spf", json_string(result));
    else if(!strcmp(method, "dkim") && strcmp(result, "none")) {
      json_t *d = json_object();
      char sel[128];
      if(!d)
        goto fail;
      json_object_set_new(d, "domain", prop_find(v + start, e - start, "header.d", buf,
                                                 sizeof(buf)) ? json_null() : json_string(buf));
      json_object_set_new(d, "selector", prop_find(v + start, e - start, "header.s", sel,
                                                   sizeof(sel)) ? json_null() : json_string(sel));
      json_object_set_new(d, "result", json_string(result));
      json_array_append_new(dkim, d);
    }
    else if(!strcmp(method, "dmarc")) {
      const char *pp = memchr(v + start, '(', e - start);
      char pol[16] = "";
      json_decref(dmarc);          /* one dmarc result is written; a second is not ours */
      dmarc = json_object();
      if(!dmarc)
        goto fail;
      if(pp && (size_t)(v + e - pp) > 3 && !memcmp(pp, "(p=", 3)) {
        size_t q = 0;
        pp += 3;
        while(pp < v + e && *pp != ')' && q + 1 < sizeof(pol))
          pol[q++] = *pp++;
        pol[q] = '\0';
      }
      json_object_set_new(dmarc, "result", json_string(result));
      json_object_set_new(dmarc, "policy", pol[0] ? json_string(pol) : json_null());
      json_object_set_new(dmarc, "from_domain", prop_find(v + start, e - start, "header.from",
                                                          buf, sizeof(buf))
                                                ? json_null() : json_string(buf));
    }
  }
  json_object_set_new(o, "dkim", dkim);
  json_object_set_new(o, "dmarc", dmarc ? dmarc : json_null());
  return o;
fail:
  json_decref(dkim);
  json_decref(dmarc);
  json_decref(o);
  return NULL;
}

/* ---- SendGrid's own verdicts (parsed-mode Inbound Parse) ---------------------------------- */

/* One word of s[0..len) from *i: letters, digits, '.', '-', '_', '@' (lower-cased into out). */
static size_t sg_word(const char *s, size_t len, size_t *i, char *out, size_t outsz)
{
  size_t n = 0;
  while(*i < len && (s[*i] == ' ' || s[*i] == '\t' || s[*i] == '{' || s[*i] == ',' ||
                     s[*i] == ':' || s[*i] == '\r' || s[*i] == '\n'))
    (*i)++;
  while(*i < len) {
    char c = s[*i];
    if(!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         c == '.' || c == '-' || c == '_' || c == '@'))
      break;
    if(n + 1 < outsz)
      out[n++] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
    (*i)++;
  }
  out[n] = '\0';
  return n;
}

json_t *inbound_auth_sendgrid(const char *dkim, size_t dkimlen, const char *spf, size_t spflen)
{
  json_t *o = json_object(), *list = json_array();
  char word[256], result[32];
  size_t i = 0;
  if(!o || !list)
    goto fail;
  json_object_set_new(o, "verdict_by", json_string("sendgrid"));
  i = 0;
  if(spf && sg_word(spf, spflen, &i, result, sizeof(result)))
    json_object_set_new(o, "spf", json_string(result));
  else
    json_object_set_new(o, "spf", json_null());
  /* "{@example.com : pass, @other.example : fail}", or "none" */
  for(i = 0; dkim && i < dkimlen && json_array_size(list) < INBOUND_AUTH_DKIM_MAX; ) {
    size_t before = i;
    json_t *d;
    if(!sg_word(dkim, dkimlen, &i, word, sizeof(word))) {
      if(i == before)
        i++;                      /* a character no word holds: past it */
      continue;
    }
    if(word[0] != '@')
      continue;                   /* "none", or a result without its domain */
    if(!sg_word(dkim, dkimlen, &i, result, sizeof(result)))
      break;
    d = json_object();
    if(!d)
      goto fail;
    json_object_set_new(d, "domain", json_string(word + 1));
    json_object_set_new(d, "selector", json_null());
    json_object_set_new(d, "result", json_string(result));
    json_array_append_new(list, d);
  }
  json_object_set_new(o, "dkim", list);
  json_object_set_new(o, "dmarc", json_null());
  return o;
fail:
  json_decref(list);
  json_decref(o);
  return NULL;
}
