/* DNS look-ups through this machine's resolver (libresolv): the records of one answer, for the
 * tools that tell a provider from a domain's MX hosts or find its submission server by SRV. */
#ifndef POSTERN_DNS_H
#define POSTERN_DNS_H
#include <stddef.h>

enum { DNS_MX = 15, DNS_TXT = 16, DNS_SRV = 33 };   /* the RR types, as ns_t_mx ... */
#define DNS_RR_MAX 16                 /* records of one answer looked at */

struct dns_rr {
  char name[1025];            /* the target host (NS_MAXDNAME), without the final dot */
  unsigned prio;              /* MX preference, SRV priority */
  unsigned weight, port;      /* SRV only */
};

/* The records of type in a DNS answer message of len bytes (at most max into rr): 0, or -1
 * when the message cannot be read. Records of other types, or too short, are skipped. */
int dns_answer_parse(const unsigned char *ans, size_t len, int type, struct dns_rr *rr,
                     size_t max, size_t *n);

/* The type's records of name. 0: *n records, and when there are none err says "no such name"
 * or "no record"; -1: the look-up failed (err says why). */
int dns_query(const char *name, int type, struct dns_rr *rr, size_t max, size_t *n, char *err,
              size_t errsz);

/* TXT records: each record's character-strings joined (RFC 7208 3.3 and RFC 6376 3.6.2.2 read
 * them so), cut at the end of text. */
struct dns_txt {
  char text[4096];            /* NUL-terminated */
};
int dns_txt_parse(const unsigned char *ans, size_t len, struct dns_txt *txt, size_t max,
                  size_t *n);                 /* 0, or -1 when the message cannot be read */
int dns_txt_query(const char *name, struct dns_txt *txt, size_t max, size_t *n, char *err,
                  size_t errsz);              /* as dns_query answers */

#endif
