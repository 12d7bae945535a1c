/* posternctl's DNS look-ups through this machine's resolver (libresolv): MX records, which
 * sendgrid check compares with SendGrid's host and init reads to tell the provider, and RFC 6186
 * SRV records, where init finds a domain's submission server. */
#include "tools/ctl.h"
#include "lib/buf.h"
#include <arpa/nameser.h>
#include <netdb.h>
#include <resolv.h>
#include <stdio.h>
#include <string.h>

/* One query's answer parsed into msg: 1, 0 when the name or the record does not exist (err
 * says which), -1 when the lookup failed (err says why). */
static int dns_answer(const char *name, int type, unsigned char *ans, int anssz, ns_msg *msg,
                      char *err, size_t errsz)
{
  int len;
  err[0] = '\0';
  h_errno = 0;
  len = res_query(name, ns_c_in, type, ans, anssz);
  if(len < 0) {
    if(h_errno == HOST_NOT_FOUND || h_errno == NO_DATA) {
      snprintf(err, errsz, "%s", h_errno == NO_DATA ? "no record" : "no such name");
      return 0;
    }
    snprintf(err, errsz, "the DNS lookup failed (%s)", hstrerror(h_errno));
    return -1;
  }
  if(ns_initparse(ans, len, msg)) {
    snprintf(err, errsz, "the DNS answer could not be read");
    return -1;
  }
  return 1;
}

/* The records of one answer, each (preference, target) for MX or (priority, weight, port,
 * target) for SRV. The answer is the resolver's: lengths come from the message, never from a
 * NUL, and names are expanded with dn_expand's bounds. */
int ctl_dns_query(const char *name, int type, struct ctl_dns_rr *rr, size_t max, size_t *n,
                  char *err, size_t errsz)
{
  unsigned char ans[4096];
  ns_msg msg;
  ns_rr r;
  int got, i, count;
  size_t fixed = type == CTL_DNS_SRV ? 6 : 2;   /* the fields before the target name */

  *n = 0;
  got = dns_answer(name, type, ans, sizeof(ans), &msg, err, errsz);
  if(got <= 0)
    return got;
  count = ns_msg_count(msg, ns_s_an);
  for(i = 0; i < count && *n < max; i++) {
    const unsigned char *d;
    struct ctl_dns_rr *o = &rr[*n];
    if(ns_parserr(&msg, ns_s_an, i, &r) || (int)ns_rr_type(r) != type || ns_rr_rdlen(r) <= fixed)
      continue;
    d = ns_rr_rdata(r);
    if(dn_expand(ns_msg_base(msg), ns_msg_end(msg), d + fixed, o->name, sizeof(o->name)) < 0)
      continue;
    o->prio = (unsigned)(d[0] << 8 | d[1]);
    o->weight = fixed == 6 ? (unsigned)(d[2] << 8 | d[3]) : 0;
    o->port = fixed == 6 ? (unsigned)(d[4] << 8 | d[5]) : 0;
    (*n)++;
  }
  if(!*n)
    snprintf(err, errsz, "no record");
  return 0;
}

/* TXT records: each record's character-strings joined (RFC 7208 3.3 and RFC 6376 3.6.2.2 read
 * them so), lengths from the message. */
int ctl_dns_txt(const char *name, struct ctl_dns_txt *txt, size_t max, size_t *n, char *err,
                size_t errsz)
{
  unsigned char ans[8192];
  ns_msg msg;
  ns_rr r;
  int got, i, count;

  *n = 0;
  got = dns_answer(name, ns_t_txt, ans, sizeof(ans), &msg, err, errsz);
  if(got <= 0)
    return got;
  count = ns_msg_count(msg, ns_s_an);
  for(i = 0; i < count && *n < max; i++) {
    const unsigned char *d;
    size_t at = 0, o = 0, rdlen;
    struct ctl_dns_txt *t = &txt[*n];
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
  if(!*n)
    snprintf(err, errsz, "no record");
  return 0;
}
