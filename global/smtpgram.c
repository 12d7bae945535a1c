/* The SMTP grammar (RFC 5321 4.1, RFC 6531, RFC 3461, RFC 1870, RFC 6152): replies as values,
 * commands, paths with their ESMTP parameters, mailboxes and HELO names. Every parser takes
 * an explicit length and never relies on NUL termination of network data. */
#include "global/smtpgram.h"
#include "lib/buf.h"
#include <arpa/inet.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* ---- replies --------------------------------------------------------------------------- */

void smtp_reply_set(struct smtp_reply *r, int code, const char *enh, const char *fmt, ...)
{
  va_list ap;
  size_t i;
  r->code = code;
  str_copy(r->enh, sizeof(r->enh), enh ? enh : "");
  va_start(ap, fmt);
  vsnprintf(r->text, sizeof(r->text), fmt, ap);
  va_end(ap);
  /* a reply is one line: whatever reached the text (an address, a policy's words) must not
   * be able to start another */
  for(i = 0; r->text[i]; i++) {
    unsigned char ch = (unsigned char)r->text[i];
    if(ch < 0x20 || ch == 0x7f)
      r->text[i] = '?';
  }
}

int smtp_reply_is_temp(const struct smtp_reply *r)
{
  return r->code >= 400 && r->code < 500;
}

int smtp_reply_is_perm(const struct smtp_reply *r)
{
  return r->code >= 500 && r->code < 600;
}

const char *smtp_reply_str(const struct smtp_reply *r, char *out, size_t outsz)
{
  if(r->enh[0])
    snprintf(out, outsz, "%03d %s %s", r->code, r->enh, r->text);
  else
    snprintf(out, outsz, "%03d %s", r->code, r->text);
  return out;
}

static int is_digit(unsigned char c)
{
  return c >= '0' && c <= '9';
}

static int is_alpha(unsigned char c)
{
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* "d.ddd.ddd" (RFC 3463: class 2/4/5, subject and detail 1-3 digits); returns its length or
 * 0 when p does not start with one followed by SP or the end */
static size_t enh_code_len(const char *p, size_t n)
{
  size_t i = 0, part, digits;
  if(n < 5 || (p[0] != '2' && p[0] != '4' && p[0] != '5') || p[1] != '.')
    return 0;
  i = 2;
  for(part = 0; part < 2; part++) {
    digits = 0;
    while(i < n && is_digit((unsigned char)p[i]) && digits < 4) {
      i++;
      digits++;
    }
    if(digits < 1 || digits > 3)
      return 0;
    if(part == 0) {
      if(i >= n || p[i] != '.')
        return 0;
      i++;
    }
  }
  if(i < n && p[i] != ' ')
    return 0;
  return i;
}

int smtp_reply_parse_line(const char *p, size_t n, struct smtp_reply *r, int *more)
{
  size_t i, e, tlen;
  if(n < 3 || !is_digit((unsigned char)p[0]) || !is_digit((unsigned char)p[1]) ||
     !is_digit((unsigned char)p[2]) || p[0] < '2' || p[0] > '5')
    return -1;
  for(i = 0; i < n; i++)
    if(p[i] == '\0' || p[i] == '\r' || p[i] == '\n')
      return -1;
  r->code = (p[0] - '0') * 100 + (p[1] - '0') * 10 + (p[2] - '0');
  r->enh[0] = '\0';
  r->text[0] = '\0';
  *more = 0;
  if(n == 3)
    return 0;
  if(p[3] == '-')
    *more = 1;
  else if(p[3] != ' ')
    return -1;
  i = 4;
  /* an enhanced code counts only when its class matches the reply's (RFC 2034 4) */
  e = enh_code_len(p + i, n - i);
  if(e && p[i] == p[0]) {
    memcpy(r->enh, p + i, e);
    r->enh[e] = '\0';
    i += e;
    if(i < n)
      i++;
  }
  tlen = n - i;
  if(tlen >= sizeof(r->text))
    tlen = sizeof(r->text) - 1;
  memcpy(r->text, p + i, tlen);
  r->text[tlen] = '\0';
  return 0;
}

/* ---- commands -------------------------------------------------------------------------- */

static const struct {
  const char *name;
  enum smtp_verb verb;
} verbs[] = {
  { "HELO", SMTP_VERB_HELO }, { "EHLO", SMTP_VERB_EHLO }, { "MAIL", SMTP_VERB_MAIL },
  { "RCPT", SMTP_VERB_RCPT }, { "DATA", SMTP_VERB_DATA }, { "BDAT", SMTP_VERB_BDAT },
  { "RSET", SMTP_VERB_RSET }, { "NOOP", SMTP_VERB_NOOP }, { "QUIT", SMTP_VERB_QUIT },
  { "VRFY", SMTP_VERB_VRFY }, { "EXPN", SMTP_VERB_EXPN }, { "HELP", SMTP_VERB_HELP },
  { "STARTTLS", SMTP_VERB_STARTTLS }, { "AUTH", SMTP_VERB_AUTH },
};

int smtp_command_parse(const char *line, size_t len, struct smtp_command *cmd)
{
  size_t i, vlen;
  cmd->verb = SMTP_VERB_UNKNOWN;
  cmd->arg = line;
  cmd->arglen = 0;
  for(i = 0; i < len; i++) {
    unsigned char ch = (unsigned char)line[i];
    /* bytes >= 0x80 may be UTF-8 arguments (RFC 6531); their validity is the path parser's */
    if((ch < 0x20 && ch != '\t') || ch == 0x7f)
      return -1;
  }
  for(vlen = 0; vlen < len && line[vlen] != ' '; vlen++)
    ;
  for(i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++)
    if(!str_casecmp_n(line, vlen, verbs[i].name)) {
      cmd->verb = verbs[i].verb;
      break;
    }
  /* tolerate extra spaces around the argument, as most servers do */
  i = vlen;
  while(i < len && line[i] == ' ')
    i++;
  cmd->arg = line + i;
  cmd->arglen = len - i;
  while(cmd->arglen && (cmd->arg[cmd->arglen - 1] == ' ' || cmd->arg[cmd->arglen - 1] == '\t'))
    cmd->arglen--;
  return 0;
}

/* ---- UTF-8, domains, mailboxes --------------------------------------------------------- */

/* Length of the well-formed UTF-8 sequence at p (RFC 3629: no overlongs, no surrogates,
 * nothing past U+10FFFF), or 0. */
static size_t utf8_seq_len(const unsigned char *p, size_t n)
{
  if(n < 1)
    return 0;
  if(p[0] < 0x80)
    return 1;
  if(p[0] >= 0xc2 && p[0] <= 0xdf)
    return (n >= 2 && (p[1] & 0xc0) == 0x80) ? 2 : 0;
  if(p[0] >= 0xe0 && p[0] <= 0xef) {
    unsigned char lo = 0x80, hi = 0xbf;
    if(p[0] == 0xe0)
      lo = 0xa0;
    else if(p[0] == 0xed)
      hi = 0x9f;
    return (n >= 3 && p[1] >= lo && p[1] <= hi && (p[2] & 0xc0) == 0x80) ? 3 : 0;
  }
  if(p[0] >= 0xf0 && p[0] <= 0xf4) {
    unsigned char lo = 0x80, hi = 0xbf;
    if(p[0] == 0xf0)
      lo = 0x90;
    else if(p[0] == 0xf4)
      hi = 0x8f;
    return (n >= 4 && p[1] >= lo && p[1] <= hi && (p[2] & 0xc0) == 0x80 &&
            (p[3] & 0xc0) == 0x80) ? 4 : 0;
  }
  return 0;
}

static int has_non_ascii(const char *p, size_t n)
{
  size_t i;
  for(i = 0; i < n; i++)
    if((unsigned char)p[i] >= 0x80)
      return 1;
  return 0;
}

int smtp_text_is_ascii(const char *p, size_t n)
{
  return !has_non_ascii(p, n);
}

static int is_atext(unsigned char c)
{
  return is_alpha(c) || is_digit(c) || (c && strchr("!#$%&'*+-/=?^_`{|}~", c));
}

/* Domain = sub-domain *("." sub-domain), labels of letters, digits and inner hyphens, at most
 * 63 octets each and 255 in all; with utf8, U-labels (RFC 6531 3.3) too. */
static int domain_valid(const char *p, size_t n, int utf8)
{
  size_t i = 0, label = 0;
  unsigned char prev = 0;
  if(n == 0 || n > LIM_SMTP_DOMAIN)
    return -1;
  while(i < n) {
    unsigned char ch = (unsigned char)p[i];
    if(ch == '.') {
      if(label == 0 || prev == '-')
        return -1;
      label = 0;
      prev = ch;
      i++;
      continue;
    }
    if(ch >= 0x80) {
      size_t l = utf8 ? utf8_seq_len((const unsigned char *)p + i, n - i) : 0;
      if(!l)
        return -1;
      i += l;
      label += l;
      prev = 'a';
    }
    else if(is_alpha(ch) || is_digit(ch) || (ch == '-' && label > 0)) {
      i++;
      label++;
      prev = ch;
    }
    else
      return -1;
    if(label > 63)
      return -1;
  }
  if(label == 0 || prev == '-')
    return -1;
  return 0;
}

/* address-literal: "[" IPv4 / "IPv6:" IPv6 "]". General literals (RFC 5321 4.1.3) have no
 * registered tag anyone uses, so they are refused rather than guessed at. */
static int literal_valid(const char *p, size_t n)
{
  char tmp[64];
  unsigned char addr[16];
  size_t inner;
  if(n < 3 || p[0] != '[' || p[n - 1] != ']')
    return -1;
  inner = n - 2;
  if(inner >= sizeof(tmp))
    return -1;
  memcpy(tmp, p + 1, inner);
  tmp[inner] = '\0';
  if(memchr(tmp, '\0', inner))
    return -1;
  if(inner > 5 && !str_casecmp_n(tmp, 5, "IPv6:"))
    return inet_pton(AF_INET6, tmp + 5, addr) == 1 ? 0 : -1;
  return inet_pton(AF_INET, tmp, addr) == 1 ? 0 : -1;
}

/* Local-part = Dot-string / Quoted-string; returns its length (the '@' follows) or 0. */
static size_t local_part_len(const char *p, size_t n, int utf8)
{
  size_t i = 0;
  if(n == 0)
    return 0;
  if(p[0] == '"') {
    i = 1;
    while(i < n && p[i] != '"') {
      unsigned char ch = (unsigned char)p[i];
      if(ch == '\\') {
        /* quoted-pairSMTP = %d92 %d32-126 */
        if(i + 1 >= n || (unsigned char)p[i + 1] < 32 || (unsigned char)p[i + 1] > 126)
          return 0;
        i += 2;
      }
      else if(ch >= 0x80) {
        size_t l = utf8 ? utf8_seq_len((const unsigned char *)p + i, n - i) : 0;
        if(!l)
          return 0;
        i += l;
      }
      else if(ch >= 32 && ch <= 126)
        i++;
      else
        return 0;
    }
    if(i >= n)
      return 0;
    return i + 1;
  }
  while(i < n && p[i] != '@') {
    unsigned char ch = (unsigned char)p[i];
    if(ch == '.') {
      if(i == 0 || p[i - 1] == '.')
        return 0;
      i++;
    }
    else if(ch >= 0x80) {
      size_t l = utf8 ? utf8_seq_len((const unsigned char *)p + i, n - i) : 0;
      if(!l)
        return 0;
      i += l;
    }
    else if(is_atext(ch))
      i++;
    else
      return 0;
  }
  if(i == 0 || p[i - 1] == '.')
    return 0;
  return i;
}

int smtp_mailbox_valid(const char *p, size_t n, int utf8)
{
  size_t l = local_part_len(p, n, utf8);
  /* RFC 5321 4.5.3.1.1 caps the local part at 64 octets, but SRS and VERP addresses in the
   * wild exceed it and receivers accept them (Postfix does not check it); only the whole path
   * is capped, by the caller. */
  if(!l || l >= n || p[l] != '@')
    return -1;
  p += l + 1;
  n -= l + 1;
  if(n && p[0] == '[')
    return literal_valid(p, n);
  return domain_valid(p, n, utf8);
}

int smtp_helo_valid(const char *p, size_t n)
{
  size_t i;
  char tmp[64];
  unsigned char addr[16];
  if(n == 0 || n > LIM_SMTP_HELO)
    return -1;
  if(p[0] == '[')
    return literal_valid(p, n);
  /* Legacy clients announce themselves with Windows host names ("CLINIC_PC01") or a bare IP;
   * any dotted token of letters, digits, '-' and '_' is accepted: the name is only recorded. */
  for(i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)p[i];
    if(!is_alpha(ch) && !is_digit(ch) && ch != '-' && ch != '_' && ch != '.' && ch != ':')
      return -1;
  }
  if(memchr(p, ':', n)) {
    if(n >= sizeof(tmp))
      return -1;
    memcpy(tmp, p, n);
    tmp[n] = '\0';
    return inet_pton(AF_INET6, tmp, addr) == 1 ? 0 : -1;
  }
  if(p[0] == '.' || memmem(p, n, "..", 2))
    return -1;
  return 0;
}

const char *smtp_address_domain(const char *addr, size_t len, size_t *domlen)
{
  size_t i = len;
  while(i > 0 && addr[i - 1] != '@')
    i--;
  if(i == 0 || i == len)
    return NULL;
  if(domlen)
    *domlen = len - i;
  return addr + i;
}

/* ---- paths and parameters -------------------------------------------------------------- */

static int is_upper_hex(unsigned char c)
{
  return is_digit(c) || (c >= 'A' && c <= 'F');
}

static unsigned hex_value(unsigned char c)
{
  return is_digit(c) ? (unsigned)(c - '0') : (unsigned)(c - 'A' + 10);
}

/* xtext (RFC 3461 4): chars 33-126 but "+" and "=", or "+" two upper-case hex digits. The
 * decoded value must be printable too (RFC 3461 4.2, 4.4): a "+0D+0A" would otherwise become
 * a line break in the header fields of a DSN. */
static int xtext_valid(const char *p, size_t n)
{
  size_t i;
  for(i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)p[i];
    if(ch == '+') {
      unsigned v;
      if(n - i < 3 || !is_upper_hex((unsigned char)p[i + 1]) ||
         !is_upper_hex((unsigned char)p[i + 2]))
        return -1;
      v = hex_value((unsigned char)p[i + 1]) << 4 | hex_value((unsigned char)p[i + 2]);
      if(v < 0x20 || v == 0x7f)
        return -1;
      i += 2;
    }
    else if(ch < 33 || ch > 126 || ch == '=')
      return -1;
  }
  return 0;
}

int smtp_dsn_value_valid(const char *v, size_t vlen, int orcpt)
{
  size_t semi = 0, i;
  if(!orcpt)    /* RFC 3461 4.4: at most 100 characters of xtext */
    return vlen == 0 || vlen > 100 || xtext_valid(v, vlen) ? -1 : 0;
  while(semi < vlen && v[semi] != ';')
    semi++;
  /* addr-type is an atom; the address after ';' is xtext for rfc822 and for utf-8
   * (RFC 6533 3: utf-8-addr-xtext keeps to the xtext alphabet) */
  if(semi == 0 || semi + 1 >= vlen || xtext_valid(v + semi + 1, vlen - semi - 1))
    return -1;
  for(i = 0; i < semi; i++)
    if(!is_atext((unsigned char)v[i]))
      return -1;
  return 0;
}

int smtp_orcpt_decode(const char *v, size_t vlen, char *out, size_t outsz)
{
  size_t i, o = 0;
  int in_addr = 0;
  if(smtp_dsn_value_valid(v, vlen, 1) || outsz <= vlen)
    return -1;
  for(i = 0; i < vlen; i++) {
    unsigned char ch = (unsigned char)v[i];
    /* xtext_valid said: each "+" of the address is followed by two upper-case hex digits */
    if(in_addr && ch == '+') {
      ch = (unsigned char)(hex_value((unsigned char)v[i + 1]) << 4 |
                           hex_value((unsigned char)v[i + 2]));
      i += 2;
    }
    else if(ch == ';')
      in_addr = 1;
    out[o++] = (char)ch;
  }
  out[o] = '\0';
  return 0;
}

static void upcase_copy(char *dst, size_t dstsz, const char *p, size_t n)
{
  size_t i;
  if(n >= dstsz)
    n = dstsz - 1;
  for(i = 0; i < n; i++) {
    char ch = p[i];
    dst[i] = (ch >= 'a' && ch <= 'z') ? (char)(ch - 32) : ch;
  }
  dst[n] = '\0';
}

enum param_bit {
  P_SIZE = 1, P_BODY = 2, P_SMTPUTF8 = 4, P_RET = 8, P_ENVID = 16, P_NOTIFY = 32, P_ORCPT = 64,
};

/* NOTIFY = "NEVER" / 1#( "SUCCESS" / "FAILURE" / "DELAY" ) (RFC 3461 4.1) */
static int notify_valid(const char *v, size_t n)
{
  unsigned seen = 0;
  size_t i = 0;
  if(!str_casecmp_n(v, n, "NEVER"))
    return 0;
  while(i <= n) {
    size_t j = i;
    unsigned bit;
    while(j < n && v[j] != ',')
      j++;
    if(!str_casecmp_n(v + i, j - i, "SUCCESS"))
      bit = 1;
    else if(!str_casecmp_n(v + i, j - i, "FAILURE"))
      bit = 2;
    else if(!str_casecmp_n(v + i, j - i, "DELAY"))
      bit = 4;
    else
      return -1;
    if(seen & bit)
      return -1;
    seen |= bit;
    i = j + 1;
  }
  return 0;
}

/* One "KEYWORD[=value]" of a MAIL or RCPT command. */
static enum smtp_path_result param_parse(const char *p, size_t n, int is_mail, unsigned *seen,
                                         struct smtp_path_params *out, struct smtp_reply *r)
{
  size_t klen = 0, vlen = 0, i;
  const char *v = NULL;
  unsigned bit = 0;
  char kw[32];
  while(klen < n && p[klen] != '=')
    klen++;
  if(klen < n) {
    v = p + klen + 1;
    vlen = n - klen - 1;
  }
  /* esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-") */
  if(klen == 0 || p[0] == '-')
    goto syntax;
  for(i = 0; i < klen; i++)
    if(!is_alpha((unsigned char)p[i]) && !is_digit((unsigned char)p[i]) && p[i] != '-')
      goto syntax;
  /* esmtp-value = 1*(%d33-60 / %d62-126) */
  if(v) {
    if(vlen == 0)
      goto syntax;
    for(i = 0; i < vlen; i++)
      if((unsigned char)v[i] < 33 || (unsigned char)v[i] > 126 || v[i] == '=')
        goto syntax;
  }
  upcase_copy(kw, sizeof(kw), p, klen < sizeof(kw) ? klen : sizeof(kw) - 1);

  if(is_mail && !str_casecmp_n(p, klen, "SIZE")) {
    long long size = 0;
    bit = P_SIZE;
    /* RFC 1870: size-value = 1*20DIGIT; past what fits, it is simply too big */
    if(!v || vlen > 20)
      goto badvalue;
    for(i = 0; i < vlen; i++) {
      if(!is_digit((unsigned char)v[i]))
        goto badvalue;
      if(size > (LLONG_MAX - 9) / 10)
        size = LLONG_MAX;
      else
        size = size * 10 + (v[i] - '0');
    }
    if(*seen & bit)
      goto duplicate;
    out->size = size;
  }
  else if(is_mail && !str_casecmp_n(p, klen, "BODY")) {
    bit = P_BODY;
    if(!v)
      goto badvalue;
    if(*seen & bit)
      goto duplicate;
    if(!str_casecmp_n(v, vlen, "7BIT"))
      out->body = SMTP_BODY_7BIT;
    else if(!str_casecmp_n(v, vlen, "8BITMIME"))
      out->body = SMTP_BODY_8BITMIME;
    else if(!str_casecmp_n(v, vlen, "BINARYMIME"))
      out->body = SMTP_BODY_BINARYMIME;
    else
      goto badvalue;
  }
  else if(is_mail && !str_casecmp_n(p, klen, "SMTPUTF8")) {
    bit = P_SMTPUTF8;
    if(v)
      goto badvalue;
    if(*seen & bit)
      goto duplicate;
    out->smtputf8 = 1;
  }
  else if(is_mail && !str_casecmp_n(p, klen, "RET")) {
    bit = P_RET;
    if(!v || (str_casecmp_n(v, vlen, "FULL") && str_casecmp_n(v, vlen, "HDRS")))
      goto badvalue;
    if(*seen & bit)
      goto duplicate;
    upcase_copy(out->ret, sizeof(out->ret), v, vlen);
  }
  else if(is_mail && !str_casecmp_n(p, klen, "ENVID")) {
    bit = P_ENVID;
    if(!v || smtp_dsn_value_valid(v, vlen, 0))
      goto badvalue;
    if(*seen & bit)
      goto duplicate;
    memcpy(out->envid, v, vlen);
    out->envid[vlen] = '\0';
  }
  else if(!is_mail && !str_casecmp_n(p, klen, "NOTIFY")) {
    bit = P_NOTIFY;
    if(!v || vlen >= sizeof(out->notify) || notify_valid(v, vlen))
      goto badvalue;
    if(*seen & bit)
      goto duplicate;
    upcase_copy(out->notify, sizeof(out->notify), v, vlen);
  }
  else if(!is_mail && !str_casecmp_n(p, klen, "ORCPT")) {
    bit = P_ORCPT;
    if(!v || vlen >= sizeof(out->orcpt) || smtp_dsn_value_valid(v, vlen, 1))
      goto badvalue;
    if(*seen & bit)
      goto duplicate;
    memcpy(out->orcpt, v, vlen);
    out->orcpt[vlen] = '\0';
  }
  else {
    if(r)
      smtp_reply_set(r, 555, "5.5.4", "Unsupported option: %s%s", kw,
                     klen >= sizeof(kw) ? "..." : "");
    return SMTP_PATH_BAD_PARAM;
  }
  *seen |= bit;
  return SMTP_PATH_OK;

syntax:
  if(r)
    smtp_reply_set(r, 501, "5.5.4", "Syntax error in parameters");
  return SMTP_PATH_SYNTAX;
badvalue:
  if(r)
    smtp_reply_set(r, 501, "5.5.4", "Bad %s parameter value", kw);
  return SMTP_PATH_SYNTAX;
duplicate:
  if(r)
    smtp_reply_set(r, 501, "5.5.4", "Duplicate %s parameter", kw);
  return SMTP_PATH_SYNTAX;
}

static enum smtp_path_result path_fail(struct smtp_reply *r, int is_mail,
                                       enum smtp_path_result why)
{
  if(!r)
    return why;
  switch(why) {
  case SMTP_PATH_TOO_LONG:
    smtp_reply_set(r, 501, is_mail ? "5.1.7" : "5.1.3", "%s address too long",
                   is_mail ? "Sender" : "Recipient");
    break;
  case SMTP_PATH_BAD_ADDRESS:
    smtp_reply_set(r, 553, "5.1.3", "Null recipient address not allowed");
    break;
  case SMTP_PATH_NEEDS_UTF8:
    smtp_reply_set(r, 553, "5.6.7", "Non-ASCII address requires SMTPUTF8");
    break;
  default:
    smtp_reply_set(r, 501, is_mail ? "5.1.7" : "5.1.3", "Bad %s address syntax",
                   is_mail ? "sender" : "recipient");
    break;
  }
  return why;
}

/* A-d-l = At-domain *( "," At-domain ), At-domain = "@" Domain: the source route RFC 5321
 * Appendix C says to accept and ignore. Returns the length up to and including ':', or 0. */
static size_t source_route_len(const char *p, size_t n)
{
  size_t i = 0;
  while(i < n && p[i] == '@') {
    size_t j = i + 1;
    while(j < n && p[j] != ',' && p[j] != ':')
      j++;
    if(j >= n || domain_valid(p + i + 1, j - i - 1, 0))
      return 0;
    if(p[j] == ':')
      return j + 1;
    i = j + 1;
  }
  return 0;
}

enum smtp_path_result smtp_path_parse(const char *arg, size_t arglen, int is_mail,
                                      struct smtp_path_params *out, struct smtp_reply *reply)
{
  const char *prefix = is_mail ? "FROM:" : "TO:";
  size_t plen = strlen(prefix);
  size_t i, j, after;
  const char *mb;
  size_t mblen;
  unsigned seen = 0;
  enum smtp_path_result result;

  memset(out, 0, sizeof(*out));
  out->size = -1;
  out->body = SMTP_BODY_7BIT;
  if(arglen < plen || str_casecmp_n(arg, plen, prefix)) {
    if(reply)
      smtp_reply_set(reply, 501, "5.5.4", "Syntax: %s", is_mail ? "MAIL FROM:<address>" :
                     "RCPT TO:<address>");
    return SMTP_PATH_SYNTAX;
  }
  /* "MAIL FROM: <a@b>" is common and harmless; Postfix tolerates it too */
  i = plen;
  while(i < arglen && arg[i] == ' ')
    i++;
  if(i < arglen && arg[i] == '<') {
    int quoted = 0;
    for(j = i + 1; j < arglen; j++) {
      if(quoted) {
        if(arg[j] == '\\')
          j++;
        else if(arg[j] == '"')
          quoted = 0;
      }
      else if(arg[j] == '"')
        quoted = 1;
      else if(arg[j] == '>')
        break;
    }
    if(j >= arglen)
      return path_fail(reply, is_mail, SMTP_PATH_SYNTAX);
    /* RFC 5321 4.5.3.1.3: 256 octets including the punctuation */
    if(j - i + 1 > LIM_SMTP_PATH)
      return path_fail(reply, is_mail, SMTP_PATH_TOO_LONG);
    mb = arg + i + 1;
    mblen = j - i - 1;
    after = j + 1;
  }
  else {
    /* Legacy clients send "MAIL FROM:user@example.com"; accepted as Postfix does by default
     * (strict_rfc821_envelopes = no). Without brackets the address ends at the first space. */
    for(j = i; j < arglen && arg[j] != ' '; j++)
      ;
    if(j == i)
      return path_fail(reply, is_mail, SMTP_PATH_SYNTAX);
    if(j - i + 2 > LIM_SMTP_PATH)
      return path_fail(reply, is_mail, SMTP_PATH_TOO_LONG);
    mb = arg + i;
    mblen = j - i;
    after = j;
    if(mb[0] == '"' || memchr(mb, '<', mblen) || memchr(mb, '>', mblen))
      return path_fail(reply, is_mail, SMTP_PATH_SYNTAX);
  }
  if(after < arglen && arg[after] != ' ')
    return path_fail(reply, is_mail, SMTP_PATH_SYNTAX);

  if(mblen && mb[0] == '@') {
    size_t rl = source_route_len(mb, mblen);
    if(!rl)
      return path_fail(reply, is_mail, SMTP_PATH_SYNTAX);
    mb += rl;
    mblen -= rl;
    if(!mblen)
      return path_fail(reply, is_mail, SMTP_PATH_SYNTAX);
  }
  if(!mblen) {
    if(!is_mail)
      return path_fail(reply, is_mail, SMTP_PATH_BAD_ADDRESS);
  }
  else if(!is_mail && !str_casecmp_n(mb, mblen, "postmaster"))
    ;   /* RFC 5321 4.1.1.3: <Postmaster> without a domain must be accepted */
  else if(smtp_mailbox_valid(mb, mblen, 1))
    return path_fail(reply, is_mail, SMTP_PATH_SYNTAX);
  memcpy(out->path, mb, mblen);
  out->path[mblen] = '\0';
  out->pathlen = mblen;

  i = after;
  while(i < arglen) {
    while(i < arglen && arg[i] == ' ')
      i++;
    if(i >= arglen)
      break;
    for(j = i; j < arglen && arg[j] != ' '; j++)
      ;
    result = param_parse(arg + i, j - i, is_mail, &seen, out, reply);
    if(result)
      return result;
    i = j;
  }
  /* RFC 6531 3.4: a non-ASCII reverse-path is only allowed with SMTPUTF8. For RCPT the
   * server checks it against the transaction's MAIL. */
  if(is_mail && has_non_ascii(out->path, out->pathlen) && !out->smtputf8)
    return path_fail(reply, is_mail, SMTP_PATH_NEEDS_UTF8);
  return SMTP_PATH_OK;
}

/* ---- message content ------------------------------------------------------------------- */

void smtp_content_init(struct smtp_content *sc, int dot, size_t max_line,
                       unsigned long long max_size)
{
  memset(sc, 0, sizeof(*sc));
  sc->dot = dot;
  sc->max_line = max_line;
  sc->max_size = max_size;
  sc->bol = 1;
  sc->crlf_before = 1;     /* DATA's 354, like the start of a BDAT transaction, is a boundary */
}

static void content_emit(struct smtp_content *sc, struct buf *out, const char *p, size_t n)
{
  sc->size += n;
  if(sc->size > sc->max_size)
    sc->bad |= SMTP_CONTENT_BAD_SIZE;
  if(!sc->bad && out && buf_add(out, p, n))
    sc->bad |= SMTP_CONTENT_BAD_SIZE;
}

static void content_line_end(struct smtp_content *sc, struct buf *out, int crlf)
{
  if(sc->dot_held) {
    sc->dot_held = 0;
    if(sc->dot && crlf && sc->crlf_before) {
      sc->ended = 1;
      return;
    }
    /* a lone dot that does not end the data is content; the relay stuffs it again */
    content_emit(sc, out, ".", 1);
  }
  content_emit(sc, out, "\r\n", 2);
  sc->line = 0;
  sc->bol = 1;
  sc->crlf_before = crlf;
}

size_t smtp_content_scan(struct smtp_content *sc, const char *p, size_t n, struct buf *out)
{
  size_t i = 0, j;
  while(i < n && !sc->ended) {
    unsigned char ch = (unsigned char)p[i];
    if(sc->cr) {
      sc->cr = 0;
      if(ch == '\n') {
        i++;
        content_line_end(sc, out, 1);
        continue;
      }
      /* a CR inside a line: what other software might take as a line end is refused */
      sc->bad |= SMTP_CONTENT_BAD_CR;
      sc->dot_held = 0;
      sc->bol = 0;
      sc->line++;
      sc->size++;
    }
    if(ch == '\r') {
      sc->cr = 1;
      i++;
      continue;
    }
    if(ch == '\n') {
      i++;
      content_line_end(sc, out, 0);
      continue;
    }
    if(sc->dot_held)
      sc->dot_held = 0;         /* RFC 5321 4.5.2: the first of a line's dots goes */
    else if(sc->bol && sc->dot && ch == '.') {
      sc->dot_held = 1;
      sc->bol = 0;
      i++;
      continue;
    }
    sc->bol = 0;
    if(ch == '\0') {
      sc->bad |= SMTP_CONTENT_BAD_NUL;
      sc->line++;
      sc->size++;
      i++;
      continue;
    }
    for(j = i; j < n && p[j] != '\r' && p[j] != '\n' && p[j] != '\0'; j++)
      ;
    sc->line += j - i;
    if(sc->line > sc->max_line)
      sc->bad |= SMTP_CONTENT_BAD_LONG;
    content_emit(sc, out, p + i, j - i);
    i = j;
  }
  return i;
}

void smtp_content_finish(struct smtp_content *sc)
{
  if(sc->cr)
    sc->bad |= SMTP_CONTENT_BAD_CR;
  sc->cr = 0;
}
