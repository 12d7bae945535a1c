/* SPF (RFC 7208) with libspf2: one check per transaction, its result name and the
 * Received-SPF: field. The test suite replaces DNS with a zone file ($POSTERN_SPF_ZONE_FILE). */
#include <sys/types.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <arpa/nameser.h>
#include <spf2/spf.h>
#include <spf2/spf_dns_zone.h>
#include "inbound/inbound.h"
#include "lib/buf.h"
#include "lib/log.h"
#include <stdlib.h>
#include <string.h>

/* Test-only: a libspf2 zone DNS layer read from the file named by POSTERN_SPF_ZONE_FILE (lines
 * "NAME TXT RECORD", "NAME A 192.0.2.1", "NAME AAAA ::1", "NAME TEMPFAIL"), and with it
 * POSTERN_SPF_TEST_CLIENT_IP, the address checked instead of the peer's (the suite's clients
 * are all on loopback, which libspf2 always passes). Never set these in production. */
static SPF_dns_server_t *test_zone;
static int test_family;
static unsigned char test_addr[16];

/* Cuts the word at s (after blanks) with a NUL; *rest is what follows it, blanks skipped. */
static char *next_word(char *s, char **rest)
{
  char *w;
  while(*s == ' ' || *s == '\t')
    s++;
  w = s;
  while(*s && *s != ' ' && *s != '\t')
    s++;
  if(*s)
    *s++ = '\0';
  while(*s == ' ' || *s == '\t')
    s++;
  *rest = s;
  return w;
}

static int zone_load(const char *path, FILE *errs)
{
  FILE *f = fopen(path, "r");
  char line[2048];
  int lineno = 0, problems = 0;
  if(!f) {
    fprintf(errs, "POSTERN_SPF_ZONE_FILE %s: cannot open\n", path);
    return 1;
  }
  test_zone = SPF_dns_zone_new(NULL, "postern-test", 0);
  if(!test_zone) {
    fclose(f);
    fprintf(errs, "POSTERN_SPF_ZONE_FILE: cannot create the zone\n");
    return 1;
  }
  while(fgets(line, sizeof(line), f)) {
    char *name, *type, *data, *end;
    ns_type t;
    int herr = NETDB_SUCCESS;
    lineno++;
    end = line + strlen(line);
    while(end > line && (end[-1] == '\n' || end[-1] == '\r'))
      *--end = '\0';
    name = next_word(line, &data);
    if(!name[0] || name[0] == '#')
      continue;
    type = next_word(data, &data);
    if(!type[0]) {
      fprintf(errs, "%s:%d: NAME TYPE DATA expected\n", path, lineno);
      problems++;
      continue;
    }
    if(!strcmp(type, "TXT")) t = ns_t_txt;
    else if(!strcmp(type, "A")) t = ns_t_a;
    else if(!strcmp(type, "AAAA")) t = ns_t_aaaa;
    else if(!strcmp(type, "MX")) t = ns_t_mx;
    else if(!strcmp(type, "TEMPFAIL")) {
      t = ns_t_txt;
      herr = TRY_AGAIN;
      data = NULL;
    }
    else {
      fprintf(errs, "%s:%d: unknown type %s\n", path, lineno, type);
      problems++;
      continue;
    }
    if(SPF_dns_zone_add_str(test_zone, name, t, herr, data) != SPF_E_SUCCESS) {
      fprintf(errs, "%s:%d: the zone refused this record\n", path, lineno);
      problems++;
    }
  }
  fclose(f);
  return problems;
}

int inbound_init(FILE *errs)
{
  const char *zone = getenv("POSTERN_SPF_ZONE_FILE");
  const char *ip = getenv("POSTERN_SPF_TEST_CLIENT_IP");
  int problems = inbound_auth_init(errs);
  if(!zone || !zone[0])
    return problems;
  problems += zone_load(zone, errs);
  if(ip && ip[0]) {
    if(inet_pton(AF_INET, ip, test_addr) == 1)
      test_family = AF_INET;
    else if(inet_pton(AF_INET6, ip, test_addr) == 1)
      test_family = AF_INET6;
    else {
      fprintf(errs, "POSTERN_SPF_TEST_CLIENT_IP %s is not an address\n", ip);
      problems++;
    }
  }
  if(!problems)
    log_warn("SPF uses the test zone %s instead of DNS (POSTERN_SPF_ZONE_FILE is for the test "
             "suite only: unset it outside tests)", zone);
  return problems;
}

void inbound_done(void)
{
  inbound_auth_done();
  if(test_zone)
    SPF_dns_free(test_zone);
  test_zone = NULL;
}

/* A header value as an RFC 5322 quoted-string: attacker bytes that could break the field
 * (controls, quotes) are escaped or replaced. */
static void add_quoted(struct buf *b, const char *s)
{
  buf_add(b, "\"", 1);
  for(; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if(c == '"' || c == '\\' || c == '(' || c == ')')
      buf_add(b, "\\", 1);
    if(c < 0x20 || c == 0x7f)
      c = '?';
    buf_add(b, &c, 1);
  }
  buf_add(b, "\"", 1);
}

/* The comment after the result: who said what about the client's address. */
static void spf_comment(struct buf *b, SPF_result_t r, const char *ip)
{
  switch(r) {
  case SPF_RESULT_PASS: buf_addf(b, "designates %s as permitted sender", ip); break;
  case SPF_RESULT_FAIL: buf_addf(b, "does not designate %s as permitted sender", ip); break;
  case SPF_RESULT_SOFTFAIL:
    buf_addf(b, "does not designate %s as permitted sender (softfail)", ip);
    break;
  case SPF_RESULT_NEUTRAL: buf_addf(b, "neither permits nor denies %s", ip); break;
  case SPF_RESULT_NONE: buf_addf(b, "publishes no SPF record (client %s)", ip); break;
  case SPF_RESULT_TEMPERROR:
    buf_addf(b, "could not be checked for %s: temporary DNS error", ip);
    break;
  default: buf_addf(b, "has a broken SPF record (client %s)", ip); break;
  }
}

int inbound_spf_check(int family, const unsigned char *addr, const char *helo,
                      const char *from, const char *receiver, char *result, size_t resultsz,
                      char *header, size_t headersz)
{
  SPF_server_t *server = NULL;
  SPF_request_t *req = NULL;
  SPF_response_t *resp = NULL;
  SPF_result_t r = SPF_RESULT_TEMPERROR;
  char ip[INET6_ADDRSTRLEN] = "", identity[LIM_SMTP_PATH + LIM_SMTP_HELO + 16];
  struct buf b;
  int rc = -1, use_helo = !from || !from[0];

  buf_init(&b, headersz ? headersz - 1 : 0);
  if(test_family) {
    family = test_family;
    addr = test_addr;
  }
  /* a dual-stack socket shows IPv4 clients as ::ffff:a.b.c.d; SPF must see them as IPv4
   * (RFC 7208 5: ip4 mechanisms match them) */
  if(family == AF_INET6 && !memcmp(addr, "\0\0\0\0\0\0\0\0\0\0\xff\xff", 12)) {
    family = AF_INET;
    addr += 12;
  }
  inet_ntop(family, addr, ip, sizeof(ip));
  if(use_helo)
    snprintf(identity, sizeof(identity), "postmaster@%s", helo ? helo : "");
  else
    str_copy(identity, sizeof(identity), from);

  server = test_zone ? SPF_server_new_dns(test_zone, 0) : SPF_server_new(SPF_DNS_RESOLV, 0);
  if(!server)
    goto out;
  req = SPF_request_new(server);
  if(!req)
    goto out;
  if(family == AF_INET) {
    struct in_addr a4;
    memcpy(&a4, addr, 4);
    rc = SPF_request_set_ipv4(req, a4);
  }
  else {
    struct in6_addr a6;
    memcpy(&a6, addr, 16);
    rc = SPF_request_set_ipv6(req, a6);
  }
  /* libspf2 checks postmaster@HELO itself when env_from is empty (RFC 7208 2.4) */
  if(!rc && helo && helo[0])
    rc = SPF_request_set_helo_dom(req, helo);
  if(!rc)
    rc = SPF_request_set_env_from(req, use_helo ? (helo ? helo : "") : from);
  if(rc) {
    /* an identity libspf2 cannot even parse has no valid record: RFC 7208 4.3 says none */
    r = SPF_RESULT_NONE;
    rc = 0;
    goto out;
  }
  rc = SPF_request_query_mailfrom(req, &resp);
  r = resp ? SPF_response_result(resp) : SPF_RESULT_TEMPERROR;
  /* libspf2 reports a DNS failure (SERVFAIL, timeout) as an error code with a permerror-ish
   * result; RFC 7208 2.6.6 calls it temperror */
  if(rc == SPF_E_DNS_ERROR)
    r = SPF_RESULT_TEMPERROR;
  if(r == SPF_RESULT_INVALID)
    r = SPF_RESULT_PERMERROR;
  rc = 0;

out:
  str_copy(result, resultsz, SPF_strresult(r));
  {
    const char *dom = strchr(identity, '@');
    buf_addf(&b, "Received-SPF: %s (%s: domain of ", result, receiver);
    /* the comment repeats attacker bytes: keep them inside the quoted form */
    add_quoted(&b, dom ? dom + 1 : identity);
    buf_add(&b, " ", 1);
    spf_comment(&b, r, ip);
    buf_addf(&b, ")\r\n\tclient-ip=%s;\r\n\tenvelope-from=", ip);
    add_quoted(&b, identity);
    buf_addstr(&b, ";\r\n\thelo=");
    add_quoted(&b, helo ? helo : "");
    buf_addf(&b, ";\r\n\treceiver=%s;\r\n\tidentity=%s\r\n", receiver, use_helo ? "helo" : "mailfrom");
  }
  if(headersz) {
    if(b.len < headersz && b.ptr)
      memcpy(header, b.ptr, b.len + 1);
    else
      header[0] = '\0';
  }
  buf_free(&b);
  SPF_response_free(resp);
  SPF_request_free(req);
  if(server)
    SPF_server_free(server);
  return rc;
}
