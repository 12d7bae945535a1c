/* DNS look-ups through this machine's resolver (libresolv). The answer is the network's: its
 * length comes from the resolver, record data is read only within the record's rdlength, and
 * names are expanded with dn_expand's bounds, never by trusting a NUL. */
#include "lib/dns.h"
#include <arpa/nameser.h>
#include <netdb.h>
#include <resolv.h>
#include <stdio.h>
#include <string.h>

int dns_answer_parse(const unsigned char *ans, size_t len, int type, struct dns_rr *rr,
                     size_t max, size_t *n)
{
  ns_msg msg;
  ns_rr r;
  int i, count;
  size_t fixed = type == DNS_SRV ? 6 : 2;   /* the fields before the target name */

  *n = 0;
  if(len > 65535 || ns_initparse(ans, (int)len, &msg))
    return -1;
  count = ns_msg_count(msg, ns_s_an);
  for(i = 0; i < count && *n < max; i++) {
    const unsigned char *d;
    struct dns_rr *o = &rr[*n];
    if(ns_parserr(&msg, ns_s_an, i, &r) || (int)ns_rr_type(r) != type || ns_rr_rdlen(r) <= fixed)
      continue;
    d = ns_rr_rdata(r);
    /* the name must lie inside this record's data, not run on into the next */
    if(dn_expand(ns_msg_base(msg), d + ns_rr_rdlen(r), d + fixed, o->name, sizeof(o->name)) < 0)
      continue;
    o->prio = (unsigned)(d[0] << 8 | d[1]);
    o->weight = fixed == 6 ? (unsigned)(d[2] << 8 | d[3]) : 0;
    o->port = fixed == 6 ? (unsigned)(d[4] << 8 | d[5]) : 0;
    (*n)++;
  }
  return 0;
}

/* lengths from the message: a string's length byte is believed only as far as the record goes */
int dns_txt_parse(const unsigned char *ans, size_t len, struct dns_txt *txt, size_t max,
                  size_t *n)
{
  ns_msg msg;
  ns_rr r;
  int i, count;

  *n = 0;
  if(len > 65535 || ns_initparse(ans, (int)len, &msg))
    return -1;
  count = ns_msg_count(msg, ns_s_an);
  for(i = 0; i < count && *n < max; i++) {
    const unsigned char *d;
    size_t at = 0, o = 0, rdlen;
    struct dns_txt *t = &txt[*n];
    if(ns_parserr(&msg, ns_s_an, i, &r) || ns_rr_type(r) != ns_t_txt)
      continue;
    d = ns_rr_rdata(r);
    rdlen = ns_rr_rdlen(r);
    while(at < rdlen) {
      size_t sl = d[at++], take;
      if(sl > rdlen - at)
        sl = rdlen - at;
      take = o + sl < sizeof(t->text) ? sl : sizeof(t->text) - 1 - o;
      memcpy(t->text + o, d + at, take);
      o += take;
      at += sl;
    }
    t->text[o] = '\0';
    (*n)++;
  }
  return 0;
}

/* One query: the answer's length into *len, 1; 0 when the name or the record does not exist
 * (err says which); -1 when the look-up failed (err says why). */
static int dns_ask(const char *name, int type, unsigned char *ans, size_t anssz, size_t *len,
                   char *err, size_t errsz)
{
  int got;
  err[0] = '\0';
  h_errno = 0;
  got = res_query(name, ns_c_in, type, ans, (int)anssz);
  if(got < 0) {
    if(h_errno == HOST_NOT_FOUND || h_errno == NO_DATA) {
      snprintf(err, errsz, "%s", h_errno == NO_DATA ? "no record" : "no such name");
      return 0;
    }
    snprintf(err, errsz, "the DNS lookup failed (%s)", hstrerror(h_errno));
    return -1;
  }
  /* a truncated answer says so in its length: read what fits */
  *len = (size_t)got < anssz ? (size_t)got : anssz;
  return 1;
}

int dns_query(const char *name, int type, struct dns_rr *rr, size_t max, size_t *n, char *err,
              size_t errsz)
{
  unsigned char ans[4096];
  size_t len = 0;
  int got = dns_ask(name, type, ans, sizeof(ans), &len, err, errsz);

  *n = 0;
  if(got <= 0)
    return got;
  if(dns_answer_parse(ans, len, type, rr, max, n)) {
    snprintf(err, errsz, "the DNS answer could not be read");
    return -1;
  }
  if(!*n)
    snprintf(err, errsz, "no record");
  return 0;
}

int dns_txt_query(const char *name, struct dns_txt *txt, size_t max, size_t *n, char *err,
                  size_t errsz)
{
  unsigned char ans[8192];
  size_t len = 0;
  int got = dns_ask(name, DNS_TXT, ans, sizeof(ans), &len, err, errsz);

  *n = 0;
  if(got <= 0)
    return got;
  if(dns_txt_parse(ans, len, txt, max, n)) {
    snprintf(err, errsz, "the DNS answer could not be read");
    return -1;
  }
  if(!*n)
    snprintf(err, errsz, "no record");
  return 0;
}
