/* The PROXY protocol header, versions 1 (a text line) and 2 (binary), as a load balancer
 * sends it (HAProxy's proxy-protocol.txt). Strict: addresses must parse, ports be in range,
 * and nothing but what the specification allows is taken. */
#include "global/proxy.h"
#include <arpa/inet.h>
#include <string.h>
#include <sys/socket.h>

static const unsigned char v2_sig[12] = { 0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51,
                                          0x55, 0x49, 0x54, 0x0A };

/* A decimal port of 1..5 digits without a leading zero (but "0" itself), 0..65535 */
static int port_parse(const char *p, size_t n, unsigned *out)
{
  unsigned v = 0;
  size_t i;
  if(!n || n > 5 || (n > 1 && p[0] == '0'))
    return -1;
  for(i = 0; i < n; i++) {
    if(p[i] < '0' || p[i] > '9')
      return -1;
    v = v * 10 + (unsigned)(p[i] - '0');
  }
  if(v > 65535)
    return -1;
  *out = v;
  return 0;
}

static int addr_parse(int family, const char *p, size_t n, unsigned char *out)
{
  char tmp[64];
  if(!n || n >= sizeof(tmp))
    return -1;
  memcpy(tmp, p, n);
  tmp[n] = '\0';
  return inet_pton(family, tmp, out) == 1 ? 0 : -1;
}

static enum proxy_result v1_parse(const unsigned char *p, size_t n, struct proxy_info *out,
                                  size_t *used)
{
  const char *s = (const char *)p;
  const char *f[6];
  size_t fl[6], i, len, nf = 0, start;
  const unsigned char *lf = memchr(p, '\n', n < PROXY_V1_MAX ? n : PROXY_V1_MAX);
  if(!lf)
    return n >= PROXY_V1_MAX ? PROXY_BAD : PROXY_MORE;
  len = (size_t)(lf - p) + 1;
  if(len < 2 || p[len - 2] != '\r')
    return PROXY_BAD;
  /* fields separated by single spaces: "PROXY" proto src dst sport dport */
  for(i = 0, start = 0; i <= len - 2; i++) {
    if(i == len - 2 || s[i] == ' ') {
      if(nf == 6 || i == start)
        return PROXY_BAD;
      f[nf] = s + start;
      fl[nf++] = i - start;
      start = i + 1;
    }
  }
  if(nf < 2 || fl[0] != 5 || memcmp(f[0], "PROXY", 5))
    return PROXY_BAD;
  memset(out, 0, sizeof(*out));
  if(fl[1] == 7 && !memcmp(f[1], "UNKNOWN", 7)) {
    out->local = 1;              /* whatever follows UNKNOWN is to be ignored */
    *used = len;
    return PROXY_OK;
  }
  if(nf != 6 || fl[1] != 4 || (memcmp(f[1], "TCP4", 4) && memcmp(f[1], "TCP6", 4)))
    return PROXY_BAD;
  out->family = f[1][3] == '4' ? AF_INET : AF_INET6;
  for(i = 0; i < len - 2; i++)
    if((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e)
      return PROXY_BAD;
  if(addr_parse(out->family, f[2], fl[2], out->src) || addr_parse(out->family, f[3], fl[3], out->dst) ||
     port_parse(f[4], fl[4], &out->src_port) || port_parse(f[5], fl[5], &out->dst_port))
    return PROXY_BAD;
  *used = len;
  return PROXY_OK;
}

static enum proxy_result v2_parse(const unsigned char *p, size_t n, struct proxy_info *out,
                                  size_t *used)
{
  size_t len;
  unsigned ver_cmd, fam;
  if(n < 16)
    return PROXY_MORE;
  ver_cmd = p[12];
  fam = p[13];
  len = (size_t)p[14] << 8 | p[15];
  if((ver_cmd >> 4) != 2 || (ver_cmd & 0x0f) > 1 || 16 + len > PROXY_V2_MAX)
    return PROXY_BAD;
  if(n < 16 + len)
    return PROXY_MORE;
  memset(out, 0, sizeof(*out));
  *used = 16 + len;
  if((ver_cmd & 0x0f) == 0) {    /* LOCAL: a health check of the balancer itself */
    out->local = 1;
    return PROXY_OK;
  }
  switch(fam) {
  case 0x11:                     /* TCP over IPv4 */
  case 0x21: {                   /* TCP over IPv6 */
    size_t a = fam == 0x11 ? 4 : 16;
    const unsigned char *q = p + 16;
    if(len < 2 * a + 4)
      return PROXY_BAD;
    out->family = fam == 0x11 ? AF_INET : AF_INET6;
    memcpy(out->src, q, a);
    memcpy(out->dst, q + a, a);
    out->src_port = (unsigned)q[2 * a] << 8 | q[2 * a + 1];
    out->dst_port = (unsigned)q[2 * a + 2] << 8 | q[2 * a + 3];
    return PROXY_OK;
  }
  case 0x00:                     /* UNSPEC: keep the connection's addresses */
    out->local = 1;
    return PROXY_OK;
  default:                       /* UDP, unix sockets: not for an SMTP listener */
    return PROXY_BAD;
  }
}

enum proxy_result proxy_parse(const unsigned char *p, size_t n, struct proxy_info *out,
                              size_t *used)
{
  size_t k = n < sizeof(v2_sig) ? n : sizeof(v2_sig);
  *used = 0;
  if(!n)
    return PROXY_MORE;
  if(!memcmp(p, v2_sig, k))
    return k < sizeof(v2_sig) ? PROXY_MORE : v2_parse(p, n, out, used);
  k = n < 6 ? n : 6;
  if(!memcmp(p, "PROXY ", k))
    return k < 6 ? PROXY_MORE : v1_parse(p, n, out, used);
  return PROXY_BAD;
}
