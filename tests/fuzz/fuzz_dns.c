/* Fuzz target for DNS answers as posternctl reads them (lib/dns.c): the same bytes parsed for
 * MX, SRV and TXT records, with the invariants callers rely on checked. */
#include "lib/dns.h"
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  static struct dns_rr rr[DNS_RR_MAX];
  static struct dns_txt txt[8];
  const int types[] = { DNS_MX, DNS_SRV };
  size_t t, i, n;
  for(t = 0; t < 2; t++) {
    if(dns_answer_parse(data, size, types[t], rr, DNS_RR_MAX, &n))
      continue;
    if(n > DNS_RR_MAX)
      abort();
    for(i = 0; i < n; i++)
      if(memchr(rr[i].name, '\0', sizeof(rr[i].name)) == NULL || rr[i].prio > 65535 ||
         rr[i].port > 65535 || rr[i].weight > 65535 ||
         (types[t] == DNS_MX && (rr[i].port || rr[i].weight)))
        abort();
  }
  if(!dns_txt_parse(data, size, txt, 8, &n)) {
    if(n > 8)
      abort();
    for(i = 0; i < n; i++)
      if(!memchr(txt[i].text, '\0', sizeof(txt[i].text)))
        abort();
  }
  return 0;
}
