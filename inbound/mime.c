/* One message's bytes -> the record fields that come from the message itself.
 * GMime builds the tree; this file applies Postern's parsing rules where GMime's differ (WHATWG
 * charset labels, the first of duplicated headers, bad base64 padding, the exact bytes of an
 * attached message), decides which parts a reader would show, enforces lib/limits.h and writes
 * one JSON object with jansson. */
#include <errno.h>
#include <iconv.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <gmime/gmime.h>
#include <jansson.h>
#include "inbound/inbound.h"
#include "lib/vendor.h"
#include "inbound/mime_int.h"
#include "lib/buf.h"
#include "lib/limits.h"
#include "tls/tls.h"

/* GMime objects are per call: parsing from several threads is fine once GMime has started. */
void mime_gmime_start(void)
{
  vendor_gmime_start();
}

/* ---- charsets ------------------------------------------------------------------------------ */

/* WHATWG Encoding Standard labels -> names glibc's iconv knows. Labels not here (and not
 * iso-8859-N) are unknown: the text is then read as undeclared. */
static const struct {
  const char *label, *name;
} charset_labels[] = {
  {"utf-8", "UTF-8"}, {"utf8", "UTF-8"}, {"unicode-1-1-utf-8", "UTF-8"},
  {"unicode11utf8", "UTF-8"}, {"unicode20utf8", "UTF-8"}, {"x-unicode20utf8", "UTF-8"},
  /* Outlook labels windows-1252 text iso-8859-1 or us-ascii: its curly quotes must survive */
  {"us-ascii", "WINDOWS-1252"}, {"ascii", "WINDOWS-1252"}, {"ansi_x3.4-1968", "WINDOWS-1252"},
  {"iso-8859-1", "WINDOWS-1252"}, {"iso8859-1", "WINDOWS-1252"}, {"iso88591", "WINDOWS-1252"},
  {"iso_8859-1", "WINDOWS-1252"}, {"iso_8859-1:1987", "WINDOWS-1252"}, {"latin1", "WINDOWS-1252"},
  {"l1", "WINDOWS-1252"}, {"cp819", "WINDOWS-1252"}, {"ibm819", "WINDOWS-1252"},
  {"csisolatin1", "WINDOWS-1252"}, {"iso-ir-100", "WINDOWS-1252"}, {"cp1252", "WINDOWS-1252"},
  {"windows-1252", "WINDOWS-1252"}, {"x-cp1252", "WINDOWS-1252"},
  {"iso-8859-9", "WINDOWS-1254"}, {"iso8859-9", "WINDOWS-1254"}, {"iso88599", "WINDOWS-1254"},
  {"iso_8859-9", "WINDOWS-1254"}, {"latin5", "WINDOWS-1254"}, {"l5", "WINDOWS-1254"},
  {"iso-8859-11", "WINDOWS-874"}, {"tis-620", "WINDOWS-874"}, {"windows-874", "WINDOWS-874"},
  {"dos-874", "WINDOWS-874"},
  {"latin2", "ISO-8859-2"}, {"l2", "ISO-8859-2"}, {"latin3", "ISO-8859-3"}, {"l3", "ISO-8859-3"},
  {"latin4", "ISO-8859-4"}, {"l4", "ISO-8859-4"}, {"cyrillic", "ISO-8859-5"},
  {"arabic", "ISO-8859-6"}, {"greek", "ISO-8859-7"}, {"greek8", "ISO-8859-7"},
  {"hebrew", "ISO-8859-8"}, {"iso-8859-8-i", "ISO-8859-8"}, {"latin6", "ISO-8859-10"},
  {"l6", "ISO-8859-10"}, {"latin9", "ISO-8859-15"}, {"l9", "ISO-8859-15"},
  {"koi8-r", "KOI8-R"}, {"koi8_r", "KOI8-R"}, {"koi", "KOI8-R"}, {"koi8", "KOI8-R"},
  {"cskoi8r", "KOI8-R"}, {"koi8-u", "KOI8-U"}, {"koi8-ru", "KOI8-U"},
  {"ibm866", "IBM866"}, {"866", "IBM866"}, {"cp866", "IBM866"}, {"csibm866", "IBM866"},
  {"macintosh", "MACINTOSH"}, {"mac", "MACINTOSH"}, {"csmacintosh", "MACINTOSH"},
  {"x-mac-roman", "MACINTOSH"}, {"x-mac-cyrillic", "MAC-CYRILLIC"},
  {"gbk", "GBK"}, {"gb2312", "GBK"}, {"gb_2312", "GBK"}, {"gb_2312-80", "GBK"},
  {"chinese", "GBK"}, {"csgb2312", "GBK"}, {"csiso58gb231280", "GBK"}, {"iso-ir-58", "GBK"},
  {"x-gbk", "GBK"}, {"gb18030", "GB18030"},
  {"big5", "BIG5-HKSCS"}, {"big5-hkscs", "BIG5-HKSCS"}, {"cn-big5", "BIG5-HKSCS"},
  {"csbig5", "BIG5-HKSCS"}, {"x-x-big5", "BIG5-HKSCS"},
  {"euc-jp", "EUC-JP"}, {"x-euc-jp", "EUC-JP"}, {"cseucpkdfmtjapanese", "EUC-JP"},
  {"iso-2022-jp", "ISO-2022-JP"}, {"csiso2022jp", "ISO-2022-JP"},
  {"shift_jis", "CP932"}, {"shift-jis", "CP932"}, {"sjis", "CP932"}, {"ms_kanji", "CP932"},
  {"ms932", "CP932"}, {"windows-31j", "CP932"}, {"x-sjis", "CP932"}, {"csshiftjis", "CP932"},
  {"euc-kr", "CP949"}, {"cseuckr", "CP949"}, {"csksc56011987", "CP949"}, {"iso-ir-149", "CP949"},
  {"korean", "CP949"}, {"ks_c_5601-1987", "CP949"}, {"ks_c_5601-1989", "CP949"},
  {"ksc5601", "CP949"}, {"ksc_5601", "CP949"}, {"windows-949", "CP949"},
  {"utf-16be", "UTF-16BE"}, {"unicodefffe", "UTF-16BE"}, {"utf-16le", "UTF-16LE"},
  {"utf-16", "UTF-16LE"}, {"unicode", "UTF-16LE"}, {"unicodefeff", "UTF-16LE"},
  {"ucs-2", "UTF-16LE"}, {"csunicode", "UTF-16LE"}, {"iso-10646-ucs-2", "UTF-16LE"},
  /* not a WHATWG label (browsers refuse it in HTML), but a registered mail charset (RFC 2152)
   * that some clients still send: its text is read, not shown as "+AD4-" */
  {"utf-7", "UTF-7"}, {"unicode-1-1-utf-7", "UTF-7"}, {"csunicode11utf7", "UTF-7"},
  {"x-unicode-2-0-utf-7", "UTF-7"},
  /* WHATWG: these decode to one U+FFFD (their escapes can smuggle markup) */
  {"iso-2022-kr", "REPLACEMENT"}, {"csiso2022kr", "REPLACEMENT"}, {"hz-gb-2312", "REPLACEMENT"},
  {"iso-2022-cn", "REPLACEMENT"}, {"iso-2022-cn-ext", "REPLACEMENT"},
  {"replacement", "REPLACEMENT"},
};

const char *mime_charset_name(const char *label, size_t n)
{
  static const char *const iso[] = {NULL, "WINDOWS-1252", "ISO-8859-2", "ISO-8859-3",
                                    "ISO-8859-4", "ISO-8859-5", "ISO-8859-6", "ISO-8859-7",
                                    "ISO-8859-8", "WINDOWS-1254", "ISO-8859-10", "WINDOWS-874",
                                    NULL, "ISO-8859-13", "ISO-8859-14", "ISO-8859-15",
                                    "ISO-8859-16"};
  char low[40];
  size_t i, len = 0;
  while(n && (*label == ' ' || *label == '\t' || *label == '\r' || *label == '\n' ||
              *label == '\f')) {
    label++;
    n--;
  }
  while(n && (label[n - 1] == ' ' || label[n - 1] == '\t' || label[n - 1] == '\r' ||
              label[n - 1] == '\n' || label[n - 1] == '\f'))
    n--;
  if(!n || n >= sizeof(low))
    return NULL;
  for(i = 0; i < n; i++) {
    char ch = label[i];
    low[len++] = (ch >= 'A' && ch <= 'Z') ? (char)(ch | 0x20) : ch;
  }
  low[len] = '\0';
  for(i = 0; i < sizeof(charset_labels) / sizeof(charset_labels[0]); i++)
    if(!strcmp(low, charset_labels[i].label))
      return charset_labels[i].name;
  /* iso-8859-N, iso8859-N, iso_8859-N[:year] */
  if(!strncmp(low, "iso", 3)) {
    const char *p = low + 3;
    long num = 0;
    if(*p == '-' || *p == '_')
      p++;
    if(!strncmp(p, "8859", 4)) {
      p += 4;
      if(*p == '-')
        p++;
      while(*p >= '0' && *p <= '9' && num < 100)
        num = num * 10 + (*p++ - '0');
      if((*p == '\0' || *p == ':') && num > 0 && num <= 16 && iso[num])
        return iso[num];
    }
  }
  {
    /* windows-125N, cp125N, x-cp125N */
    static const char *const win[] = {"WINDOWS-1250", "WINDOWS-1251", "WINDOWS-1252",
                                      "WINDOWS-1253", "WINDOWS-1254", "WINDOWS-1255",
                                      "WINDOWS-1256", "WINDOWS-1257", "WINDOWS-1258"};
    const char *d = !strncmp(low, "windows-125", 11) ? low + 11 :
                    !strncmp(low, "cp125", 5) ? low + 5 :
                    !strncmp(low, "x-cp125", 7) ? low + 7 : NULL;
    if(d && d[0] >= '0' && d[0] <= '8' && !d[1])
      return win[d[0] - '0'];
  }
  return NULL;
}

int mime_utf8_valid(const void *s, size_t n)
{
  const unsigned char *p = s;
  size_t i = 0, k;
  while(i < n) {
    if(p[i] < 0x80) {
      i++;
      continue;
    }
    k = str_utf8_seq(p + i, n - i);
    if(!k)
      return 0;
    i += k;
  }
  return 1;
}

static const char fffd[] = "\xef\xbf\xbd";

/* well-formed UTF-8 as is, each ill-formed byte as U+FFFD, NUL as U+FFFD (records are C
 * strings for most of their readers) */
int mime_add_utf8(struct buf *o, const void *s, size_t n)
{
  const unsigned char *p = s;
  size_t i = 0, run = 0, k;
  while(i < n) {
    if(p[i] && p[i] < 0x80) {
      i++;
      run++;
      continue;
    }
    k = p[i] ? str_utf8_seq(p + i, n - i) : 0;
    if(k) {
      i += k;
      run += k;
      continue;
    }
    if((run && buf_add(o, p + i - run, run)) || buf_add(o, fffd, 3))
      return -1;
    run = 0;
    i++;
  }
  return run ? buf_add(o, p + i - run, run) : 0;
}

/* windows-1252 as WHATWG has it: glibc's table leaves 0x81 0x8D 0x8F 0x90 0x9D undefined,
 * WHATWG maps them to the C1 controls, so this one is a table here */
static const uint16_t cp1252_high[32] = {
  0x20ac, 0x0081, 0x201a, 0x0192, 0x201e, 0x2026, 0x2020, 0x2021,
  0x02c6, 0x2030, 0x0160, 0x2039, 0x0152, 0x008d, 0x017d, 0x008f,
  0x0090, 0x2018, 0x2019, 0x201c, 0x201d, 0x2022, 0x2013, 0x2014,
  0x02dc, 0x2122, 0x0161, 0x203a, 0x0153, 0x009d, 0x017e, 0x0178};

static int add_cp1252(struct buf *o, const unsigned char *p, size_t n)
{
  size_t i;
  if(buf_reserve(o, n * 3))
    return -1;
  for(i = 0; i < n; i++) {
    unsigned cp = p[i];
    char u[3];
    if(cp == 0) {
      if(buf_add(o, fffd, 3))
        return -1;
      continue;
    }
    if(cp < 0x80) {
      o->ptr[o->len++] = (char)cp;
      continue;
    }
    if(cp < 0xa0)
      cp = cp1252_high[cp - 0x80];
    if(cp < 0x800) {
      u[0] = (char)(0xc0 | (cp >> 6));
      u[1] = (char)(0x80 | (cp & 0x3f));
      if(buf_add(o, u, 2))
        return -1;
    }
    else {
      u[0] = (char)(0xe0 | (cp >> 12));
      u[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
      u[2] = (char)(0x80 | (cp & 0x3f));
      if(buf_add(o, u, 3))
        return -1;
    }
  }
  o->ptr[o->len] = '\0';
  return 0;
}

/* 0, -1 out of memory, 1 iconv does not know the charset */
static int add_iconv(struct buf *o, const char *name, const unsigned char *p, size_t n)
{
  iconv_t cd = iconv_open("UTF-8", name);
  char *in = (char *)p;
  size_t inleft = n;
  int result = 0;
  if(cd == (iconv_t)-1)
    return 1;
  while(inleft) {
    char *outp;
    size_t outleft, r;
    if(buf_reserve(o, inleft * 4 + 16)) {
      result = -1;
      goto out;
    }
    outp = o->ptr + o->len;
    outleft = o->alloc - o->len - 1;
    r = iconv(cd, &in, &inleft, &outp, &outleft);
    o->len = (size_t)(outp - o->ptr);
    o->ptr[o->len] = '\0';
    if(r == (size_t)-1) {
      if(errno == E2BIG)
        continue;
      /* an ill-formed or truncated sequence: one U+FFFD, then resynchronise */
      if(buf_add(o, fffd, 3)) {
        result = -1;
        goto out;
      }
      if(errno == EINVAL)
        break;
      in++;
      inleft--;
      iconv(cd, NULL, NULL, NULL, NULL);
    }
  }
out:
  iconv_close(cd);
  return result;
}

/* bytes in the charset labelled label (NULL: undeclared) appended as UTF-8 */
int mime_add_text(struct buf *o, const char *label, const void *s, size_t n)
{
  const unsigned char *p = s;
  const char *name = label ? mime_charset_name(label, strlen(label)) : NULL;
  size_t start = o->len, i, j;
  int r;
  if(!name)
    name = mime_utf8_valid(p, n) ? "UTF-8" : "WINDOWS-1252";
  if(!strcmp(name, "UTF-8")) {
    /* a BOM is not text */
    if(n >= 3 && p[0] == 0xef && p[1] == 0xbb && p[2] == 0xbf) {
      p += 3;
      n -= 3;
    }
    r = mime_add_utf8(o, p, n);
  }
  else if(!strcmp(name, "WINDOWS-1252"))
    r = add_cp1252(o, p, n);
  else if(!strcmp(name, "REPLACEMENT"))
    r = n ? buf_add(o, fffd, 3) : 0;
  else {
    struct buf tmp;
    buf_init(&tmp, SIZE_MAX / 2);
    r = add_iconv(&tmp, name, p, n);
    if(r == 1)
      r = add_cp1252(&tmp, p, n);
    if(!r)
      r = mime_add_utf8(o, tmp.ptr ? tmp.ptr : "", tmp.len);
    buf_free(&tmp);
  }
  if(r)
    return -1;
  /* CRLF and lone CR become LF: records are text for applications, not wire format */
  for(i = j = start; i < o->len; i++) {
    char ch = o->ptr[i];
    if(ch == '\r') {
      if(i + 1 < o->len && o->ptr[i + 1] == '\n')
        continue;
      ch = '\n';
    }
    o->ptr[j++] = ch;
  }
  o->len = j;
  if(o->ptr)
    o->ptr[j] = '\0';
  return 0;
}

/* ---- the parse ----------------------------------------------------------------------------- */

void mime_note(struct mime_ctx *c, const char *what)
{
  if(c->err.len && strstr(c->err.ptr, what))
    return;
  if(c->err.len)
    buf_addstr(&c->err, "; ");
  buf_addstr(&c->err, what);
}

static void on_warning(gint64 offset, GMimeParserWarning code, const gchar *item, gpointer data)
{
  struct mime_ctx *c = data;
  (void)item;
  if(code < 32)
    c->warn |= 1u << code;
  if(code == GMIME_CRIT_INVALID_HEADER_NAME && c->nbad++ < G_N_ELEMENTS(c->bad_header))
    c->bad_header[c->nbad - 1] = offset;
}

static GMimeParserOptions *options_new(struct mime_ctx *c)
{
  static const char *fallback[] = {"UTF-8", "WINDOWS-1252", NULL};
  GMimeParserOptions *o = g_mime_parser_options_new();
  g_mime_parser_options_set_fallback_charsets(o, fallback);
  g_mime_parser_options_set_address_compliance_mode(o, GMIME_RFC_COMPLIANCE_LOOSE);
  g_mime_parser_options_set_parameter_compliance_mode(o, GMIME_RFC_COMPLIANCE_LOOSE);
  g_mime_parser_options_set_rfc2047_compliance_mode(o, GMIME_RFC_COMPLIANCE_LOOSE);
  g_mime_parser_options_set_warning_callback(o, on_warning, c);
  return o;
}

static int ascii_ieq(const char *a, const char *b)
{
  return a && b && !strcasecmp(a, b);
}

/* The first field called name (the rule when a header is repeated: GMime keeps the last),
 * unfolded, cut at LIM_MIME_HEADER. g_free it. */
static char *header_first(struct mime_ctx *c, GMimeObject *o, const char *name)
{
  GMimeHeaderList *hl = o ? g_mime_object_get_header_list(o) : NULL;
  int i, n = hl ? g_mime_header_list_get_count(hl) : 0;
  for(i = 0; i < n; i++) {
    GMimeHeader *h = g_mime_header_list_get_header_at(hl, i);
    const char *raw;
    char *v;
    if(!ascii_ieq(g_mime_header_get_name(h), name))
      continue;
    raw = g_mime_header_get_raw_value(h);
    if(!raw)
      return NULL;
    if(strlen(raw) > LIM_MIME_HEADER) {
      char *cut = g_strndup(raw, LIM_MIME_HEADER);
      v = g_mime_utils_header_unfold(cut);
      g_free(cut);
      mime_note(c, "a header field is longer than the limit and was cut");
    }
    else
      v = g_mime_utils_header_unfold(raw);
    return v ? g_strstrip(v) : NULL;
  }
  return NULL;
}

/* Encoded words (=?charset?...) get their charset label replaced by the WHATWG encoding's name
 * before GMime decodes them: GMime reads iso-8859-1 as Latin-1, so Outlook's "=93" would become
 * a C1 control instead of a quote. */
static char *relabel_words(const char *v)
{
  GString *s = g_string_sized_new(strlen(v) + 16);
  const char *p = v, *q;
  while((q = strstr(p, "=?"))) {
    const char *cs = q + 2, *e = cs, *name;
    while(*e && *e != '?' && *e != '*' && (size_t)(e - cs) < 40)
      e++;
    g_string_append_len(s, p, cs - p);
    if((*e == '?' || *e == '*') && (name = mime_charset_name(cs, (size_t)(e - cs))) &&
       strcmp(name, "REPLACEMENT")) {
      g_string_append(s, name);
      p = e;
    }
    else
      p = cs;
  }
  g_string_append(s, p);
  return g_string_free(s, FALSE);
}

/* a GMime-decoded string made safe for JSON (valid UTF-8, no NUL) */
static json_t *jstr_utf8(const char *s, size_t n)
{
  struct buf b;
  json_t *j;
  buf_init(&b, SIZE_MAX / 2);
  if(mime_add_utf8(&b, s, n)) {
    buf_free(&b);
    return NULL;
  }
  j = json_stringn(b.ptr ? b.ptr : "", b.len);
  buf_free(&b);
  return j;
}

static json_t *jstr(const char *s)
{
  return jstr_utf8(s ? s : "", s ? strlen(s) : 0);
}

json_t *mime_decode_unstructured(struct mime_ctx *c, const char *v)
{
  char *re = relabel_words(v);
  char *d = g_mime_utils_header_decode_text(c->opts, re);
  json_t *j = jstr(d ? g_strstrip(d) : "");
  g_free(re);
  g_free(d);
  return j;
}

/* The length of the RFC 2047 encoded word at p ("=?charset?e?text?="), 0 when there is none. */
static size_t encoded_word_len(const char *p)
{
  size_t i = 2, q = 0;
  if(p[0] != '=' || p[1] != '?')
    return 0;
  for(; p[i] && p[i] != ' ' && p[i] != '\t' && i < 256; i++) {
    if(p[i] != '?')
      continue;
    if(++q >= 3 && p[i + 1] == '=')
      return i + 2;
  }
  return 0;
}

static int is_wsp(char ch)
{
  return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n';
}

/* s[0..n) without white space, as a JSON string */
static json_t *jstr_nows(const char *s, size_t n)
{
  char *t = g_malloc(n + 1);
  size_t i, k = 0;
  json_t *j;
  for(i = 0; i < n; i++)
    if(!is_wsp(s[i]))
      t[k++] = s[i];
  j = jstr_utf8(t, k);
  g_free(t);
  return j;
}

/* One mailbox of a list, read alone. GMime reads what is well formed; what it cannot read
 * (". <user@example.com>": a phrase of one special) still gives its <address>. The address is
 * never decoded or relabelled: encoded words are allowed in display names only (RFC 2047 5). */
static void address_element(struct mime_ctx *c, const char *e, size_t n, json_t *arr)
{
  char *el, *re;
  InternetAddressList *l;
  InternetAddressMailbox *mb = NULL;
  json_t *addr = NULL, *name = NULL;
  while(n && is_wsp(*e)) {
    e++;
    n--;
  }
  while(n && is_wsp(e[n - 1]))
    n--;
  if(!n)
    return;
  el = g_strndup(e, n);
  re = relabel_words(el);
  l = internet_address_list_parse(c->opts, re);
  if(l && internet_address_list_length(l) > 0 &&
     INTERNET_ADDRESS_IS_MAILBOX(internet_address_list_get_address(l, 0)))
    mb = INTERNET_ADDRESS_MAILBOX(internet_address_list_get_address(l, 0));
  if(mb && strcmp(re, el) && strstr(internet_address_mailbox_get_addr(mb), "=?")) {
    /* relabelling touched the address itself: read it again as written */
    InternetAddressList *raw = internet_address_list_parse(c->opts, el);
    if(raw && internet_address_list_length(raw) > 0 &&
       INTERNET_ADDRESS_IS_MAILBOX(internet_address_list_get_address(raw, 0)))
      addr = jstr(internet_address_mailbox_get_addr(
        INTERNET_ADDRESS_MAILBOX(internet_address_list_get_address(raw, 0))));
    if(raw)
      g_object_unref(raw);
  }
  if(mb) {
    if(!addr)
      addr = jstr(internet_address_mailbox_get_addr(mb));
    name = jstr(internet_address_get_name(INTERNET_ADDRESS(mb)));
  }
  else {
    const char *lt = strrchr(el, '<'), *gt = lt ? strchr(lt, '>') : NULL;
    if(lt && gt) {
      /* "phrase <address>": the phrase unquoted, then decoded as text */
      const char *a = lt + 1, *colon;
      GString *ph = g_string_new(NULL);
      const char *p;
      /* an obsolete route (<@relay:user@host>) is not part of the address */
      if(*a == '@' && (colon = memchr(a, ':', (size_t)(gt - a))))
        a = colon + 1;
      addr = jstr_nows(a, (size_t)(gt - a));
      for(p = el; p < lt; p++) {
        if(*p == '"')
          continue;
        if(*p == '\\' && p + 1 < lt)
          p++;
        g_string_append_c(ph, *p);
      }
      name = mime_decode_unstructured(c, ph->str);
      g_string_free(ph, TRUE);
    }
    else if(strchr(el, '@') && !strpbrk(el, " \t<>\"")) {
      addr = jstr(el);
      name = json_string("");
    }
  }
  if(addr && json_string_length(addr) && name)
    json_array_append_new(arr, json_pack("{s:o,s:o}", "address", addr, "name", name));
  else {
    json_decref(addr);
    json_decref(name);
  }
  if(l)
    g_object_unref(l);
  g_free(re);
  g_free(el);
}

/* An address list as [{address, name}], groups flattened. The list is split at its top-level
 * commas (not inside quotes, comments, <> or an encoded word) and each mailbox is read alone,
 * so one GMime cannot read does not take the rest with it. 8-bit bytes that are not UTF-8 are
 * read as windows-1252 first, as undeclared text is. */
json_t *mime_address_list(struct mime_ctx *c, const char *v)
{
  json_t *arr = json_array();
  struct buf u;
  const char *s;
  size_t i, start = 0;
  int quote = 0, comment = 0, angle = 0;
  if(!v || !arr)
    return arr;
  buf_init(&u, SIZE_MAX / 2);
  if(mime_add_text(&u, NULL, v, strlen(v))) {
    c->nomem = 1;
    buf_free(&u);
    return arr;
  }
  s = u.ptr ? u.ptr : "";
  for(i = 0; json_array_size(arr) < LIM_MIME_ADDRESSES; i++) {
    char ch = s[i];
    size_t ew;
    if(ch && (quote || comment) && ch == '\\' && s[i + 1]) {
      i++;
      continue;
    }
    if(ch && quote) {
      quote = ch != '"';
      continue;
    }
    if(ch && comment) {
      comment += ch == '(' ? 1 : ch == ')' ? -1 : 0;
      continue;
    }
    if(ch == '"' || ch == '(') {
      quote = ch == '"';
      comment = ch == '(';
      continue;
    }
    if(ch == '<' || ch == '>') {
      angle = ch == '<';
      continue;
    }
    if(ch && angle)
      continue;
    if(ch == '=' && (ew = encoded_word_len(s + i))) {
      i += ew - 1;
      continue;
    }
    if(ch == ':') {            /* a group's name is not a mailbox */
      start = i + 1;
      continue;
    }
    if(ch && ch != ',' && ch != ';')
      continue;
    address_element(c, s + start, i - start, arr);
    start = i + 1;
    if(!ch)
      break;
  }
  buf_free(&u);
  return arr;
}

static json_t *addresses(struct mime_ctx *c, GMimeObject *o, const char *field)
{
  char *v = header_first(c, o, field);
  json_t *arr = mime_address_list(c, v);
  g_free(v);
  return arr;
}

/* Every <...> token of v in order, white space removed, at most max of them: how mutt and
 * Thunderbird read In-Reply-To and References, where the obsolete syntax (RFC 5322 4.5.4) puts
 * phrases ("Message from x of ...") between the ids. An id is compared with its white space
 * removed, so one folded or typed with a space in it still threads. */
static void id_tokens(const char *v, json_t *arr, size_t max)
{
  const char *p = v;
  while(json_array_size(arr) < max && (p = strchr(p, '<'))) {
    const char *q = p + 1;
    json_t *id;
    while(*q && *q != '>' && *q != '<')
      q++;
    if(*q != '>') {
      if(!*q)
        break;
      p = q;                   /* "<a <b@c>": the inner one */
      continue;
    }
    id = jstr_nows(p + 1, (size_t)(q - p - 1));
    if(id && json_string_length(id))
      json_array_append_new(arr, id);
    else
      json_decref(id);
    p = q + 1;
  }
}

/* The ids of a field: its <...> tokens, or, when it has none, GMime's reading of the bare ids
 * some clients write. */
static json_t *field_ids(struct mime_ctx *c, GMimeObject *o, const char *field, size_t max)
{
  char *v = header_first(c, o, field);
  json_t *arr = json_array();
  if(!v || !arr) {
    g_free(v);
    return arr;
  }
  id_tokens(v, arr, max);
  if(!json_array_size(arr)) {
    GMimeReferences *r = g_mime_references_parse(c->opts, v);
    int i, n = r ? g_mime_references_length(r) : 0;
    for(i = 0; i < n && (size_t)i < max; i++) {
      const char *id = g_mime_references_get_message_id(r, i);
      json_t *j = jstr_nows(id, strlen(id));
      if(j && json_string_length(j))
        json_array_append_new(arr, j);
      else
        json_decref(j);
    }
    if(r)
      g_mime_references_free(r);
    if(!n && max == 1) {
      /* a lone id without <> (Message-ID: abc@host) */
      char *id = g_mime_utils_decode_message_id(v);
      if(id && *id)
        json_array_append_new(arr, jstr_nows(id, strlen(id)));
      g_free(id);
    }
  }
  g_free(v);
  return arr;
}

/* the first id of a field, null when it has none */
static json_t *message_id(struct mime_ctx *c, GMimeObject *o, const char *field)
{
  json_t *arr = field_ids(c, o, field, 1);
  json_t *j = json_array_size(arr) ? json_incref(json_array_get(arr, 0)) : json_null();
  json_decref(arr);
  return j;
}

static json_t *date_field(struct mime_ctx *c, GMimeObject *o)
{
  char *v = header_first(c, o, "Date"), *s;
  GDateTime *dt, *utc;
  json_t *j = NULL;
  if(!v)
    return json_null();
  dt = g_mime_utils_header_decode_date(v);
  g_free(v);
  if(!dt)
    return json_null();
  utc = g_date_time_to_utc(dt);
  g_date_time_unref(dt);
  if(!utc)
    return json_null();
  s = g_date_time_format(utc, "%Y-%m-%dT%H:%M:%SZ");
  g_date_time_unref(utc);
  if(s)
    j = json_string(s);
  g_free(s);
  return j ? j : json_null();
}

/* RFC 3834 and the markers out-of-office responders use instead */
static int auto_submitted(struct mime_ctx *c, GMimeObject *o)
{
  static const char *const present[] = {"X-Autoreply", "X-Autorespond", "X-Autoresponder",
                                        "X-AutoReply-From", "X-Mail-Autoreply",
                                        "X-Autogenerated", "X-FC-MachineGenerated"};
  char *v;
  size_t i;
  int yes = 0;
  if((v = header_first(c, o, "Auto-Submitted"))) {
    size_t n = strcspn(v, " \t;(");
    yes = !(n == 2 && !g_ascii_strncasecmp(v, "no", 2)) && n > 0;
    g_free(v);
    if(yes)
      return 1;
  }
  if((v = header_first(c, o, "Precedence"))) {
    yes = !g_ascii_strcasecmp(v, "auto_reply") || !g_ascii_strcasecmp(v, "bulk") ||
          !g_ascii_strcasecmp(v, "junk");
    g_free(v);
    if(yes)
      return 1;
  }
  for(i = 0; i < sizeof(present) / sizeof(present[0]); i++) {
    if((v = header_first(c, o, present[i]))) {
      yes = g_ascii_strcasecmp(v, "no") != 0;
      g_free(v);
      if(yes)
        return 1;
    }
  }
  return 0;
}

/* ---- the parts ----------------------------------------------------------------------------- */

static int is_type(GMimeObject *o, const char *type, const char *sub)
{
  GMimeContentType *ct = g_mime_object_get_content_type(o);
  return ct && g_mime_content_type_is_type(ct, type, sub);
}

static int disposition_attachment(GMimeObject *o)
{
  GMimeContentDisposition *d = g_mime_object_get_content_disposition(o);
  return d && g_mime_content_disposition_is_attachment(d);
}

/* Could this subtree give the body of type text/sub? (Mirrors walk's choices.) */
static int provides(GMimeObject *o, const char *sub, int depth)
{
  int i, n;
  if(depth > LIM_MIME_DEPTH)
    return 0;
  if(GMIME_IS_MULTIPART(o)) {
    GMimeMultipart *m = GMIME_MULTIPART(o);
    n = g_mime_multipart_get_count(m);
    if(is_type(o, "multipart", "related"))
      return n > 0 && provides(g_mime_multipart_get_part(m, 0), sub, depth + 1);
    for(i = 0; i < n && i < LIM_MIME_PARTS; i++)
      if(provides(g_mime_multipart_get_part(m, i), sub, depth + 1))
        return 1;
    return 0;
  }
  return GMIME_IS_PART(o) && is_type(o, "text", sub) && !disposition_attachment(o);
}

/* Quoted-printable input with the white space at the end of each line taken out before
 * GMime decodes it (RFC 2045 6.7 (3): it was added in transport and must be deleted), which
 * also makes "=" followed by spaces a soft line break. ws holds the run of white space at the
 * end of the previous chunk, which belongs to the line until something else follows it. */
static int qp_trim(const char *p, size_t n, struct buf *ws, struct buf *in)
{
  size_t i, run = 0, k = 0;
  buf_reset(in);
  if(buf_reserve(in, n + ws->len))
    return -1;
  for(i = 0; i < n; i++) {
    char ch = p[i];
    if(ch == ' ' || ch == '\t') {
      run++;
      continue;
    }
    if(ch == '\r' || ch == '\n')
      buf_reset(ws);
    else {
      if(ws->len) {
        memcpy(in->ptr + k, ws->ptr, ws->len);
        k += ws->len;
        buf_reset(ws);
      }
      memcpy(in->ptr + k, p + i - run, run);
      k += run;
    }
    in->ptr[k++] = ch;
    run = 0;
  }
  in->len = k;
  in->ptr[k] = '\0';
  return run ? buf_add(ws, p + n - run, run) : 0;
}

/* The decoded content of a leaf part, decoded chunk by chunk (a 10 MB attachment is not held
 * twice). Base64 with its final padding missing is completed: GMime drops an unpadded last
 * quantum. x-uuencode goes through GMime's filter, which skips to the "begin" line (the
 * encoding step alone would decode that line too). */
int mime_part_bytes(GMimePart *p, struct buf *out)
{
  return mime_part_bytes_max(p, out, SIZE_MAX, NULL);
}

int mime_part_bytes_max(GMimePart *p, struct buf *out, size_t max, int *cut)
{
  GMimeDataWrapper *w = g_mime_part_get_content(p);
  GMimeStream *s = w ? g_mime_data_wrapper_get_stream(w) : NULL;
  GMimeContentEncoding enc = w ? g_mime_data_wrapper_get_encoding(w) : GMIME_CONTENT_ENCODING_DEFAULT;
  int decode = enc == GMIME_CONTENT_ENCODING_BASE64 || enc == GMIME_CONTENT_ENCODING_QUOTEDPRINTABLE;
  GMimeFilter *uu = enc == GMIME_CONTENT_ENCODING_UUENCODE
                      ? g_mime_filter_basic_new(GMIME_CONTENT_ENCODING_UUENCODE, FALSE) : NULL;
  GMimeEncoding st;
  struct buf ws, qp;
  size_t sig = 0;
  int padded = 0, result = -1;
  char chunk[65536];
  gssize got;
  if(!s) {
    if(uu)
      g_object_unref(uu);
    return 0;
  }
  buf_init(&ws, SIZE_MAX / 2);
  buf_init(&qp, SIZE_MAX / 2);
  if(decode)
    g_mime_encoding_init_decode(&st, enc);
  g_mime_stream_reset(s);
  while(out->len < max && (got = g_mime_stream_read(s, chunk, sizeof(chunk))) > 0) {
    const char *in = chunk;
    size_t inlen = (size_t)got;
    if(uu) {
      char *fo;
      size_t folen, pre;
      g_mime_filter_filter(uu, chunk, (size_t)got, 0, &fo, &folen, &pre);
      if(buf_add(out, fo, folen))
        goto out;
      continue;
    }
    if(!decode) {
      if(buf_add(out, chunk, (size_t)got))
        goto out;
      continue;
    }
    if(enc == GMIME_CONTENT_ENCODING_BASE64) {
      gssize i;
      for(i = 0; i < got && !padded; i++) {
        unsigned char ch = (unsigned char)chunk[i];
        if(ch == '=')
          padded = 1;
        else if((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
                (ch >= '0' && ch <= '9') || ch == '+' || ch == '/')
          sig++;
      }
    }
    else {
      if(qp_trim(chunk, (size_t)got, &ws, &qp))
        goto out;
      in = qp.ptr ? qp.ptr : "";
      inlen = qp.len;
    }
    if(buf_reserve(out, g_mime_encoding_outlen(&st, inlen) + 16))
      goto out;
    out->len += g_mime_encoding_step(&st, in, inlen, out->ptr + out->len);
    out->ptr[out->len] = '\0';
  }
  if(uu) {
    char *fo;
    size_t folen, pre;
    g_mime_filter_complete(uu, (char *)"", 0, 0, &fo, &folen, &pre);
    if(buf_add(out, fo, folen))
      goto out;
  }
  if(decode) {
    static const char pad[] = "==";
    size_t padn = enc == GMIME_CONTENT_ENCODING_BASE64 && !padded &&
                  (sig % 4 == 2 || sig % 4 == 3) ? 4 - sig % 4 : 0;
    if(buf_reserve(out, g_mime_encoding_outlen(&st, padn) + 16))
      goto out;
    out->len += g_mime_encoding_flush(&st, pad, padn, out->ptr + out->len);
    out->ptr[out->len] = '\0';
  }
  if(out->len > max || (out->len == max && g_mime_stream_read(s, chunk, 1) > 0)) {
    out->len = max;
    out->ptr[max] = '\0';
    if(cut)
      *cut = 1;
  }
  result = 0;
out:
  if(uu)
    g_object_unref(uu);
  buf_free(&ws);
  buf_free(&qp);
  return result;
}

/* filename: an RFC 2231 filename* beats a plain filename (GMime returns whichever came
 * first), then the same for Content-Type's name */
const char *mime_part_filename(GMimeObject *o)
{
  GMimeContentDisposition *d = g_mime_object_get_content_disposition(o);
  GMimeContentType *ct = g_mime_object_get_content_type(o);
  GMimeParamList *lists[2];
  const char *names[2] = {"filename", "name"};
  int k;
  lists[0] = d ? g_mime_content_disposition_get_parameters(d) : NULL;
  lists[1] = ct ? g_mime_content_type_get_parameters(ct) : NULL;
  for(k = 0; k < 2; k++) {
    const char *plain = NULL;
    int i, n = lists[k] ? g_mime_param_list_length(lists[k]) : 0;
    for(i = 0; i < n; i++) {
      GMimeParam *pm = g_mime_param_list_get_parameter_at(lists[k], i);
      if(!ascii_ieq(g_mime_param_get_name(pm), names[k]))
        continue;
      if(g_mime_param_get_encoding_method(pm) == GMIME_PARAM_ENCODING_METHOD_RFC2231)
        return g_mime_param_get_value(pm);
      if(!plain)
        plain = g_mime_param_get_value(pm);
    }
    if(plain)
      return plain;
  }
  return "";
}

static void att_clear(struct inbound_attachment *a)
{
  free(a->filename);
  free(a->content_type);
  free(a->content_id);
  free(a->disposition);
  free(a->data);
}

static void att_free(struct inbound_attachment *a, size_t n)
{
  size_t i;
  for(i = 0; i < n; i++)
    att_clear(&a[i]);
  free(a);
}

int mime_attach(struct mime_ctx *c, const char *filename, const char *type, const char *cid,
                const char *disposition, unsigned char *data, size_t len)
{
  struct inbound_attachment *a;
  struct buf fn, ct;
  json_t *j;
  size_t i;
  if(c->natt == c->attcap) {
    size_t cap = c->attcap ? c->attcap * 2 : 8;
    struct inbound_attachment *na = realloc(c->att, cap * sizeof(*na));
    if(!na)
      goto nomem;
    c->att = na;
    c->attcap = cap;
  }
  a = &c->att[c->natt];
  memset(a, 0, sizeof(*a));
  buf_init(&fn, SIZE_MAX / 2);
  buf_init(&ct, 256);
  /* longer than any registered type (RFC 6838: 127/127): the sender's doing, not ours to fail
   * on (a failure here is taken for memory, and the message would never be recorded) */
  if(type && strlen(type) > ct.max) {
    mime_note(c, "a Content-Type longer than 256 characters: listed as application/octet-stream");
    type = NULL;
  }
  if(mime_add_utf8(&fn, filename ? filename : "", filename ? strlen(filename) : 0) ||
     buf_addstr(&ct, type && *type ? type : "application/octet-stream")) {
    buf_free(&fn);
    buf_free(&ct);
    goto nomem;
  }
  /* lowercase type/subtype, ASCII only (a type is a token) */
  for(i = 0; i < ct.len; i++) {
    unsigned char ch = (unsigned char)ct.ptr[i];
    ct.ptr[i] = ch >= 0x80 ? '?' : (char)g_ascii_tolower(ch);
  }
  a->filename = fn.ptr ? buf_steal(&fn, NULL) : strdup("");
  a->content_type = buf_steal(&ct, NULL);
  a->content_id = strdup(cid ? cid : "");
  a->disposition = strdup(disposition);
  a->data = data;
  a->size = len;
  data = NULL;
  if(!a->filename || !a->content_type || !a->content_id || !a->disposition ||
     tls_sha256_hex(a->data ? (const void *)a->data : "", len, a->sha256))
    goto undo;
  j = json_pack("{s:o,s:o,s:I,s:s,s:o,s:s}", "filename", jstr(a->filename), "content_type",
                jstr(a->content_type), "size", (json_int_t)len, "sha256", a->sha256,
                "content_id", jstr(a->content_id), "disposition", a->disposition);
  if(!j || json_array_append_new(c->atts, j))
    goto undo;
  c->natt++;
  return 0;
undo:
  att_clear(a);
  c->nomem = 1;
  return -1;
nomem:
  free(data);
  c->nomem = 1;
  return -1;
}

static int add_attachment(struct mime_ctx *c, GMimeObject *o, unsigned char *data, size_t len)
{
  GMimeContentType *ct = g_mime_object_get_content_type(o);
  GMimeContentDisposition *d = g_mime_object_get_content_disposition(o);
  const char *cid = g_mime_object_get_content_id(o), *disp;
  char *type = ct ? g_mime_content_type_get_mime_type(ct) : NULL;
  int r;
  /* no Content-Disposition: an inline part is one a body refers to by Content-ID */
  if(d && g_mime_content_disposition_get_disposition(d))
    disp = g_mime_content_disposition_is_attachment(d) ? "attachment" : "inline";
  else
    disp = cid && *cid ? "inline" : "attachment";
  r = mime_attach(c, mime_part_filename(o), type, cid, disp, data, len);
  g_free(type);
  return r;
}

static int line_is_boundary(const unsigned char *l, size_t n, const struct bounds *bd)
{
  for(; bd; bd = bd->up) {
    size_t k;
    if(n < bd->len + 2 || l[0] != '-' || l[1] != '-' || memcmp(l + 2, bd->b, bd->len))
      continue;
    k = bd->len + 2;
    if(n >= k + 2 && l[k] == '-' && l[k + 1] == '-')
      k += 2;
    while(k < n && (l[k] == ' ' || l[k] == '\t' || l[k] == '\r' || l[k] == '\n'))
      k++;
    if(k == n)
      return 1;
  }
  return 0;
}

/* Where the body of entity o starts in the caller's bytes: after the blank line that ends the
 * header section holding o's own header fields (GMime records each field's offset). 0 when o has
 * no field to anchor on. */
static int body_start(struct mime_ctx *c, GMimeObject *o, size_t *start)
{
  GMimeHeaderList *hl = g_mime_object_get_header_list(o);
  int i, n = hl ? g_mime_header_list_get_count(hl) : 0;
  gint64 last = -1;
  size_t at;
  for(i = 0; i < n; i++) {
    gint64 off = g_mime_header_get_offset(g_mime_header_list_get_header_at(hl, i));
    if(off > last)
      last = off;
  }
  if(last < 0 || (size_t)last >= c->parsedlen)
    return 0;
  at = (size_t)last;
  while(at < c->parsedlen) {
    const unsigned char *l = c->orig + at, *nl = memchr(l, '\n', c->parsedlen - at);
    size_t ll = nl ? (size_t)(nl - l) + 1 : c->parsedlen - at;
    int blank = ll == 1 || (ll == 2 && l[0] == '\r');
    at += ll;
    if(blank && at - ll > (size_t)last)       /* not the field's own line */
      break;
  }
  *start = at;
  return 1;
}

/* Invalid header lines inside [start, end), an attached message kept as its bytes, are not
 * the record's loss ("Message removed" where a bounce leaves the message out). */
static void forgive_headers(struct mime_ctx *c, size_t start, size_t end)
{
  size_t i, k = 0, n = c->nbad < G_N_ELEMENTS(c->bad_header) ? c->nbad : 0;
  for(i = 0; i < n; i++)
    if(c->bad_header[i] < (gint64)start || c->bad_header[i] >= (gint64)end)
      c->bad_header[k++] = c->bad_header[i];
  if(n) {
    c->nbad = k;
    if(!k)
      c->warn &= ~(1u << GMIME_CRIT_INVALID_HEADER_NAME);
  }
}

/* An attached message as the exact bytes it arrived in: the part's body, from after its own
 * header section (Content-Type: message/rfc822) to the CRLF before the next boundary of an
 * enclosing multipart. The embedded message may have no header section ("Message removed" in a
 * bounce) or begin with Content-* fields: its bytes are copied all the same. */
static int attach_message(struct mime_ctx *c, GMimeObject *o, const struct bounds *bd)
{
  GMimeMessage *m = g_mime_message_part_get_message(GMIME_MESSAGE_PART(o));
  GMimeHeaderList *hl = m ? g_mime_object_get_header_list(GMIME_OBJECT(m)) : NULL;
  unsigned char *data = NULL;
  size_t len = 0, start = 0;
  int anchored = body_start(c, o, &start);
  if(!anchored && hl && g_mime_header_list_get_count(hl) > 0) {
    /* no field of its own (a multipart/digest member): from the embedded message's first */
    gint64 first = g_mime_header_get_offset(g_mime_header_list_get_header_at(hl, 0));
    if(first >= 0 && (size_t)first <= c->parsedlen) {
      start = (size_t)first;
      anchored = 1;
    }
  }
  if(anchored) {
    size_t i = start, end = c->parsedlen;
    while(i < c->parsedlen) {
      const unsigned char *l = c->orig + i;
      const unsigned char *nl = memchr(l, '\n', c->parsedlen - i);
      size_t ll = nl ? (size_t)(nl - l) + 1 : c->parsedlen - i;
      if(line_is_boundary(l, ll, bd)) {
        end = i;
        if(end > start && c->orig[end - 1] == '\n')
          end--;
        if(end > start && c->orig[end - 1] == '\r')
          end--;
        break;
      }
      i += ll;
    }
    len = end - start;
    forgive_headers(c, start, end);
    data = malloc(len ? len : 1);
    if(!data) {
      c->nomem = 1;
      return -1;
    }
    memcpy(data, c->orig + start, len);
    return add_attachment(c, o, data, len);
  }
  /* nothing to anchor on: GMime's own rendering of it */
  if(m) {
    GMimeStream *ms = g_mime_stream_mem_new();
    GByteArray *ba;
    g_mime_object_write_to_stream(GMIME_OBJECT(m), NULL, ms);
    ba = g_mime_stream_mem_get_byte_array(GMIME_STREAM_MEM(ms));
    len = ba ? ba->len : 0;
    data = malloc(len ? len : 1);
    if(data && len)
      memcpy(data, ba->data, len);
    g_object_unref(ms);
    if(!data) {
      c->nomem = 1;
      return -1;
    }
  }
  return add_attachment(c, o, data, len);
}

/* format=flowed (RFC 3676): what a reader shows is the paragraphs re-joined. Applied to
 * b[start..] after the charset conversion; lines keep their quote depth. */
static int unflow(struct buf *b, size_t start, int delsp)
{
  struct buf o;
  size_t i = start;
  int prev_flowed = 0, prev_depth = -1, first = 1;
  buf_init(&o, SIZE_MAX / 2);
  while(i < b->len) {
    const char *l = b->ptr + i, *nl = memchr(l, '\n', b->len - i);
    size_t n = nl ? (size_t)(nl - l) : b->len - i, k = 0, depth;
    const char *t;
    size_t tn;
    int flowed;
    while(k < n && l[k] == '>')
      k++;
    depth = k;
    t = l + k;
    tn = n - k;
    if(tn && *t == ' ') {        /* space-stuffing */
      t++;
      tn--;
    }
    flowed = tn && t[tn - 1] == ' ' && !(tn == 3 && !memcmp(t, "-- ", 3));
    if(flowed && delsp)
      tn--;
    if(!(prev_flowed && (int)depth == prev_depth)) {
      size_t q;
      if(!first && buf_add(&o, "\n", 1))
        goto nomem;
      for(q = 0; q < depth; q++)
        if(buf_add(&o, ">", 1))
          goto nomem;
      if(depth && buf_add(&o, " ", 1))
        goto nomem;
    }
    if(tn && buf_add(&o, t, tn))
      goto nomem;
    first = 0;
    prev_flowed = flowed;
    prev_depth = (int)depth;
    i += n + (nl ? 1 : 0);
    if(nl && i == b->len && buf_add(&o, "\n", 1))
      goto nomem;
  }
  b->len = start;
  if(o.len && buf_add(b, o.ptr, o.len))
    goto nomem;
  if(b->ptr)
    b->ptr[b->len] = '\0';
  buf_free(&o);
  return 0;
nomem:
  buf_free(&o);
  return -1;
}

static void dsn_parse(struct mime_ctx *c, GMimeMultipart *report);

static void walk(struct mime_ctx *c, GMimeObject *o, int depth, int can_text, int can_html,
                 const struct bounds *bd)
{
  if(c->nomem)
    return;
  if(++c->entities > LIM_MIME_PARTS) {
    mime_note(c, "more than " G_STRINGIFY(LIM_MIME_PARTS) " MIME parts: the rest are not listed");
    return;
  }
  if(depth > LIM_MIME_DEPTH) {
    mime_note(c, "MIME parts nested deeper than " G_STRINGIFY(LIM_MIME_DEPTH) " are not listed");
    return;
  }
  if(GMIME_IS_MULTIPART(o)) {
    GMimeMultipart *m = GMIME_MULTIPART(o);
    int i, n = g_mime_multipart_get_count(m), tpick = -1, hpick = -1;
    struct bounds here;
    here.b = g_mime_multipart_get_boundary(m);
    here.len = here.b ? strlen(here.b) : 0;
    here.up = bd;
    if(is_type(o, "multipart", "alternative")) {
      /* the last alternative of each type is the one a reader shows */
      for(i = 0; i < n && i < LIM_MIME_PARTS; i++) {
        GMimeObject *k = g_mime_multipart_get_part(m, i);
        if(provides(k, "plain", depth + 1))
          tpick = i;
        if(provides(k, "html", depth + 1))
          hpick = i;
      }
    }
    else if(is_type(o, "multipart", "related")) {
      /* the root: the part named by start, else the first */
      const char *start = g_mime_object_get_content_type_parameter(o, "start");
      tpick = hpick = 0;
      if(start) {
        char *sid = g_mime_utils_decode_message_id(start);
        for(i = 0; sid && i < n && i < LIM_MIME_PARTS; i++) {
          const char *cid = g_mime_object_get_content_id(g_mime_multipart_get_part(m, i));
          if(cid && !strcmp(cid, sid)) {
            tpick = hpick = i;
            break;
          }
        }
        g_free(sid);
      }
    }
    else if(is_type(o, "multipart", "report")) {
      const char *rt = g_mime_object_get_content_type_parameter(o, "report-type");
      if(rt && !g_ascii_strcasecmp(rt, "delivery-status") && !c->dsn)
        dsn_parse(c, m);
    }
    for(i = 0; i < n && !c->nomem; i++) {
      int t = can_text && (tpick < 0 || i == tpick);
      int h = can_html && (hpick < 0 || i == hpick);
      walk(c, g_mime_multipart_get_part(m, i), depth + 1, t, h, here.len ? &here : bd);
      if(c->entities > LIM_MIME_PARTS)
        break;
    }
    return;
  }
  if(GMIME_IS_MESSAGE_PART(o)) {
    attach_message(c, o, bd);
    return;
  }
  if(GMIME_IS_PART(o)) {
    struct buf b, *dst = NULL;
    int body = 0, cut = 0;
    if(!disposition_attachment(o)) {
      if(can_text && !c->have_text && is_type(o, "text", "plain")) {
        dst = &c->text;
        c->have_text = 1;
      }
      else if(can_html && !c->have_html && is_type(o, "text", "html")) {
        dst = &c->html;
        c->have_html = 1;
      }
    }
    buf_init(&b, SIZE_MAX / 2);
    /* a body is decoded only as far as the record keeps of it (no charset takes more than
     * four bytes to a character of UTF-8): a 30 MB text part costs record_text_max, not 30 MB
     * and its conversions */
    if(mime_part_bytes_max(GMIME_PART(o), &b,
                           dst && c->text_max ? c->text_max * 4 + 4 : SIZE_MAX, &cut)) {
      buf_free(&b);
      c->nomem = 1;
      return;
    }
    if(dst) {
      const char *cs = g_mime_object_get_content_type_parameter(o, "charset");
      const char *fmt = g_mime_object_get_content_type_parameter(o, "format");
      const char *delsp = g_mime_object_get_content_type_parameter(o, "delsp");
      size_t start = dst->len;
      body = 1;
      if(cut)
        *(dst == &c->text ? &c->text_cut : &c->html_cut) = 1;
      if(mime_add_text(dst, cs, b.ptr ? b.ptr : "", b.len))
        c->nomem = 1;
      else if(dst == &c->text && fmt && !g_ascii_strcasecmp(fmt, "flowed") &&
              unflow(dst, start, delsp && !g_ascii_strcasecmp(delsp, "yes")))
        c->nomem = 1;
    }
    if(body)
      buf_free(&b);
    else {
      size_t len;
      char *data = buf_steal(&b, &len), *fit;
      /* the buffer grew by doubling: give back the slack, the record may live a while */
      if(data && (fit = realloc(data, len ? len : 1)))
        data = fit;
      add_attachment(c, o, (unsigned char *)data, len);
    }
  }
}

/* ---- DSN (RFC 3464) ------------------------------------------------------------------------ */

/* value of "Name: value" at line l (already unfolded) when its name is name */
static const char *dsn_field(const char *l, const char *name)
{
  size_t n = strlen(name);
  if(g_ascii_strncasecmp(l, name, n) || l[n] != ':')
    return NULL;
  l += n + 1;
  while(*l == ' ' || *l == '\t')
    l++;
  return l;
}

/* "rfc822; a@b" -> "a@b" */
static json_t *dsn_typed(const char *v)
{
  const char *semi = strchr(v, ';');
  char *s = g_strdup(semi ? semi + 1 : v);
  json_t *j = jstr(g_strstrip(s));
  g_free(s);
  return j;
}

static void dsn_parse(struct mime_ctx *c, GMimeMultipart *report)
{
  int i, n = g_mime_multipart_get_count(report);
  json_t *dsn = json_object(), *rcpts = json_array(), *cur = NULL, *orig = json_null();
  for(i = 0; i < n && i < LIM_MIME_PARTS; i++) {
    GMimeObject *k = g_mime_multipart_get_part(report, i);
    if(GMIME_IS_PART(k) && (is_type(k, "message", "delivery-status") ||
                            is_type(k, "message", "global-delivery-status"))) {
      struct buf b, u;
      char **lines;
      int li;
      buf_init(&b, SIZE_MAX / 2);
      buf_init(&u, SIZE_MAX / 2);
      if(mime_part_bytes(GMIME_PART(k), &b) || mime_add_text(&u, "utf-8", b.ptr ? b.ptr : "", b.len)) {
        buf_free(&b);
        buf_free(&u);
        c->nomem = 1;
        break;
      }
      buf_free(&b);
      /* unfold: a line starting with white space continues the previous one */
      lines = g_strsplit(u.ptr ? u.ptr : "", "\n", -1);
      buf_free(&u);
      for(li = 0; lines[li]; li++) {
        GString *f = g_string_new(lines[li]);
        const char *v;
        /* folding white space collapses to one space */
        while(lines[li + 1] && (lines[li + 1][0] == ' ' || lines[li + 1][0] == '\t') &&
              f->len < LIM_MIME_HEADER) {
          const char *cont = lines[++li];
          while(*cont == ' ' || *cont == '\t')
            cont++;
          g_string_append_c(f, ' ');
          g_string_append(f, cont);
        }
        if(!f->len) {           /* a blank line ends a group */
          cur = NULL;
        }
        else if((v = dsn_field(f->str, "Final-Recipient")) ||
                (!cur && (v = dsn_field(f->str, "Original-Recipient")))) {
          if(!cur && json_array_size(rcpts) < LIM_MIME_DSN_RECIPIENTS) {
            cur = json_pack("{s:s,s:s,s:s,s:s,s:s}", "address", "", "original_recipient", "",
                            "action", "", "status", "", "diagnostic", "");
            json_array_append_new(rcpts, cur);
          }
          if(cur && (dsn_field(f->str, "Final-Recipient") ||
                     !json_string_length(json_object_get(cur, "address"))))
            json_object_set_new(cur, "address", dsn_typed(v));
          /* the ORCPT Postern sent comes back here: it names our recipient even when the
           * final one is an alias of it */
          if(cur && dsn_field(f->str, "Original-Recipient"))
            json_object_set_new(cur, "original_recipient", dsn_typed(v));
        }
        else if(cur && (v = dsn_field(f->str, "Original-Recipient")))
          json_object_set_new(cur, "original_recipient", dsn_typed(v));
        else if(cur && (v = dsn_field(f->str, "Action"))) {
          char *a = g_ascii_strdown(v, -1);
          json_object_set_new(cur, "action", jstr(g_strstrip(a)));
          g_free(a);
        }
        else if(cur && (v = dsn_field(f->str, "Status")))
          json_object_set_new(cur, "status", jstr(v));
        else if(cur && (v = dsn_field(f->str, "Diagnostic-Code")))
          json_object_set_new(cur, "diagnostic", dsn_typed(v));
        g_string_free(f, TRUE);
      }
      g_strfreev(lines);
    }
    else if(GMIME_IS_MESSAGE_PART(k) && json_is_null(orig)) {
      GMimeMessage *m = g_mime_message_part_get_message(GMIME_MESSAGE_PART(k));
      if(m) {
        json_decref(orig);
        orig = message_id(c, GMIME_OBJECT(m), "Message-ID");
      }
    }
    else if(GMIME_IS_PART(k) && is_type(k, "text", "rfc822-headers") && json_is_null(orig)) {
      struct buf b;
      buf_init(&b, SIZE_MAX / 2);
      if(!mime_part_bytes(GMIME_PART(k), &b)) {
        GMimeStream *s = g_mime_stream_mem_new_with_buffer(b.ptr ? b.ptr : "", b.len);
        GMimeParser *p = g_mime_parser_new_with_stream(s);
        GMimeMessage *m = g_mime_parser_construct_message(p, c->opts);
        if(m) {
          json_decref(orig);
          orig = message_id(c, GMIME_OBJECT(m), "Message-ID");
          g_object_unref(m);
        }
        g_object_unref(p);
        g_object_unref(s);
      }
      buf_free(&b);
    }
  }
  json_object_set_new(dsn, "original_message_id", orig);
  json_object_set_new(dsn, "recipients", rcpts);
  c->dsn = dsn;
}

/* ---- before GMime -------------------------------------------------------------------------- */

static int ci_has(const unsigned char *p, size_t n, const char *word)
{
  size_t k = strlen(word), i;
  for(i = 0; i + k <= n; i++)
    if(!g_ascii_strncasecmp((const char *)p + i, word, k))
      return 1;
  return 0;
}

/* How much of the message GMime is given: its parser recurses once per nested multipart or
 * message and builds an object per part, so the input is cut before the LIM_MIME_NESTING-th
 * such Content-Type field or the LIM_MIME_BOUNDARY_LINES-th line that could be a boundary.
 * A cut multipart is what GMime calls a missing final boundary: it tolerates that. */
size_t mime_prescan(const unsigned char *p, size_t n, const char **why)
{
  size_t i = 0, nest = 0, dashes = 0;
  while(i < n) {
    const unsigned char *l = p + i, *nl = memchr(l, '\n', n - i);
    size_t ll = nl ? (size_t)(nl - l) + 1 : n - i;
    if(ll >= 2 && l[0] == '-' && l[1] == '-') {
      if(++dashes > LIM_MIME_BOUNDARY_LINES) {
        *why = "more than " G_STRINGIFY(LIM_MIME_BOUNDARY_LINES)
               " boundary lines: the rest of the message is not parsed";
        return i;
      }
    }
    else if(ll > 12 && !g_ascii_strncasecmp((const char *)l, "content-type", 12)) {
      /* the whole field, continuation lines included */
      size_t end = i + ll;
      while(end < n && (p[end] == ' ' || p[end] == '\t')) {
        const unsigned char *nn = memchr(p + end, '\n', n - end);
        end = nn ? (size_t)(nn - p) + 1 : n;
      }
      if(ci_has(l + 12, end - i - 12, "multipart") || ci_has(l + 12, end - i - 12, "message")) {
        if(++nest > LIM_MIME_NESTING) {
          *why = "more than " G_STRINGIFY(LIM_MIME_NESTING)
                 " multipart or message parts: the rest of the message is not parsed";
          return i;
        }
      }
      i = end;
      continue;
    }
    i += ll;
  }
  return n;
}

/* offsets of second and later Content-Type, -Transfer-Encoding and -Disposition fields of
 * every entity: GMime lets the last one count, the rule is the first */
static void find_duplicates(GMimeObject *o, int depth, GArray *offs, size_t *seen)
{
  static const char *const names[] = {"Content-Type", "Content-Transfer-Encoding",
                                      "Content-Disposition"};
  GMimeHeaderList *hl;
  int i, n, k;
  if(!o || depth > LIM_MIME_DEPTH || ++*seen > LIM_MIME_PARTS)
    return;
  hl = g_mime_object_get_header_list(o);
  n = hl ? g_mime_header_list_get_count(hl) : 0;
  for(k = 0; k < 3; k++) {
    int count = 0;
    for(i = 0; i < n; i++) {
      GMimeHeader *h = g_mime_header_list_get_header_at(hl, i);
      if(ascii_ieq(g_mime_header_get_name(h), names[k]) && count++) {
        gint64 off = g_mime_header_get_offset(h);
        g_array_append_val(offs, off);
      }
    }
  }
  if(GMIME_IS_MESSAGE(o))
    find_duplicates(g_mime_message_get_mime_part(GMIME_MESSAGE(o)), depth + 1, offs, seen);
  else if(GMIME_IS_MULTIPART(o)) {
    n = g_mime_multipart_get_count(GMIME_MULTIPART(o));
    for(i = 0; i < n; i++)
      find_duplicates(g_mime_multipart_get_part(GMIME_MULTIPART(o), i), depth + 1, offs, seen);
  }
  else if(GMIME_IS_MESSAGE_PART(o))
    find_duplicates(GMIME_OBJECT(g_mime_message_part_get_message(GMIME_MESSAGE_PART(o))),
                    depth + 1, offs, seen);
}

/* Does a Content-Type value begin with type "/" subtype (RFC 2045 5.1)? */
static int content_type_valid(const char *v)
{
  static const char tspecials[] = "()<>@,;:\\\"/[]?=";
  int k;
  for(k = 0; k < 2; k++) {
    size_t n = 0;
    while(*v == ' ' || *v == '\t')
      v++;
    while(v[n] > ' ' && (unsigned char)v[n] < 0x7f && !strchr(tspecials, v[n]))
      n++;
    if(!n)
      return 0;
    v += n;
    while(*v == ' ' || *v == '\t')
      v++;
    if(!k && *v++ != '/')
      return 0;
  }
  return 1;
}

/* A leaf whose Content-Type cannot be read is text/plain, the type a missing field has (RFC
 * 2045 5.2); GMime makes it application/octet-stream, and the body would become an
 * attachment. Without a charset parameter the text is read as undeclared, as a message without
 * the field is (us-ascii's bytes read the same). */
static void fix_content_types(struct mime_ctx *c, GMimeObject *o, int depth, size_t *seen)
{
  if(!o || depth > LIM_MIME_DEPTH || ++*seen > LIM_MIME_PARTS)
    return;
  if(GMIME_IS_MULTIPART(o)) {
    int i, n = g_mime_multipart_get_count(GMIME_MULTIPART(o));
    for(i = 0; i < n; i++)
      fix_content_types(c, g_mime_multipart_get_part(GMIME_MULTIPART(o), i), depth + 1, seen);
  }
  else if(GMIME_IS_PART(o)) {
    char *v = header_first(c, o, "Content-Type");
    if(v && !content_type_valid(v)) {
      GMimeContentType *ct = g_mime_content_type_new("text", "plain");
      g_mime_object_set_content_type(o, ct);
      g_object_unref(ct);
    }
    g_free(v);
  }
}

GMimeMessage *mime_gmime_parse(struct mime_ctx *c, GByteArray *ba)
{
  GMimeStream *s = g_mime_stream_mem_new_with_byte_array(ba);
  GMimeParser *p;
  GMimeMessage *m;
  g_mime_stream_mem_set_owner(GMIME_STREAM_MEM(s), FALSE);
  p = g_mime_parser_new_with_stream(s);
  g_mime_parser_set_format(p, GMIME_FORMAT_MESSAGE);
  g_mime_parser_set_persist_stream(p, TRUE);
  c->warn = 0;
  c->nbad = 0;
  m = g_mime_parser_construct_message(p, c->opts);
  g_object_unref(p);
  g_object_unref(s);
  return m;
}

/* ---- the record ---------------------------------------------------------------------------- */

int mime_ctx_init(struct mime_ctx *c)
{
  mime_gmime_start();
  memset(c, 0, sizeof(*c));
  buf_init(&c->text, SIZE_MAX / 2);
  buf_init(&c->html, SIZE_MAX / 2);
  buf_init(&c->err, 4096);
  c->opts = options_new(c);
  c->atts = json_array();
  c->orig = (const unsigned char *)"";
  return c->opts && c->atts ? 0 : -1;
}

void mime_ctx_free(struct mime_ctx *c)
{
  att_free(c->att, c->natt);
  json_decref(c->atts);
  json_decref(c->dsn);
  buf_free(&c->text);
  buf_free(&c->html);
  buf_free(&c->err);
  if(c->opts)
    g_mime_parser_options_free(c->opts);
}

void mime_header_fields(struct mime_ctx *c, GMimeObject *mo, json_t *rec)
{
  json_t *from = addresses(c, mo, "From");
  char *subj = header_first(c, mo, "Subject");
  json_object_set_new(rec, "message_id", message_id(c, mo, "Message-ID"));
  json_object_set_new(rec, "in_reply_to", message_id(c, mo, "In-Reply-To"));
  json_object_set_new(rec, "references", field_ids(c, mo, "References", LIM_MIME_REFERENCES));
  json_object_set_new(rec, "from", json_array_size(from) ? json_incref(json_array_get(from, 0))
                                                         : json_null());
  json_decref(from);
  json_object_set_new(rec, "to", addresses(c, mo, "To"));
  json_object_set_new(rec, "cc", addresses(c, mo, "Cc"));
  json_object_set_new(rec, "reply_to", addresses(c, mo, "Reply-To"));
  json_object_set_new(rec, "subject", subj ? mime_decode_unstructured(c, subj) : json_string(""));
  g_free(subj);
  json_object_set_new(rec, "date", date_field(c, mo));
}

/* b cut to at most max bytes (0: no cap) at a character boundary; 1 when it was cut */
static int text_cap(struct buf *b, size_t max)
{
  size_t n = max;
  if(!max || b->len <= max)
    return 0;
  while(n && ((unsigned char)b->ptr[n] & 0xc0) == 0x80)
    n--;
  b->len = n;
  b->ptr[n] = '\0';
  return 1;
}

int mime_finish(struct mime_ctx *c, json_t *rec, GMimeObject *mo, struct inbound_mime **out)
{
  struct inbound_mime *res = NULL;
  char *reply;
  json_t *truncated = json_array();
  if(c->nomem || !truncated) {
    json_decref(truncated);
    return -1;
  }
  c->text_cut |= text_cap(&c->text, c->text_max);
  c->html_cut |= text_cap(&c->html, c->text_max);
  json_object_set_new(rec, "text", json_stringn(c->text.ptr ? c->text.ptr : "", c->text.len));
  json_object_set_new(rec, "html", json_stringn(c->html.ptr ? c->html.ptr : "", c->html.len));
  if(c->text.len || c->html.len) {
    struct buf r;
    reply = inbound_reply_text(c->text.ptr, c->text.len, c->html.ptr, c->html.len);
    if(!reply) {
      json_decref(truncated);
      return -1;
    }
    memset(&r, 0, sizeof(r));
    r.ptr = reply;
    r.len = strlen(reply);
    if(text_cap(&r, c->text_max))
      json_array_append_new(truncated, json_string("reply_text"));
    json_object_set_new(rec, "reply_text", jstr(reply));
    free(reply);
  }
  else
    json_object_set_new(rec, "reply_text", json_null());
  if(c->html_cut)
    json_array_insert_new(truncated, 0, json_string("html"));
  if(c->text_cut)
    json_array_insert_new(truncated, 0, json_string("text"));
  json_object_set_new(rec, "attachments", json_incref(c->atts));
  json_object_set_new(rec, "auto_submitted", json_boolean((mo && auto_submitted(c, mo)) || c->dsn));
  if(c->warn & (1u << GMIME_CRIT_INVALID_HEADER_NAME))
    mime_note(c, "an invalid header line: part of the message may not have been read");
  if(c->warn & (1u << GMIME_CRIT_MULTIPART_WITHOUT_BOUNDARY))
    mime_note(c, "a multipart without a boundary parameter");
  if(c->warn & (1u << GMIME_CRIT_NESTING_OVERFLOW))
    mime_note(c, "MIME nesting deeper than GMime follows");
  json_object_set_new(rec, "parse_error",
                      c->err.len ? jstr_utf8(c->err.ptr, c->err.len) : json_null());
  json_object_set_new(rec, "dsn", c->dsn ? json_incref(c->dsn) : json_null());
  json_object_set_new(rec, "truncated", truncated);
  res = calloc(1, sizeof(*res));
  if(!res)
    return -1;
  res->json = json_dumps(rec, JSON_COMPACT | JSON_PRESERVE_ORDER);
  if(!res->json) {
    free(res);
    return -1;
  }
  res->att = c->att;
  res->natt = c->natt;
  c->att = NULL;
  c->natt = c->attcap = 0;
  *out = res;
  return 0;
}

int inbound_mime_parse(const void *raw, size_t len, size_t text_max, struct inbound_mime **out)
{
  struct mime_ctx c;
  GByteArray *ba = NULL;
  GMimeMessage *m = NULL;
  json_t *rec = NULL;
  const char *why = NULL;
  int pass, result = -1;

  *out = NULL;
  if(mime_ctx_init(&c))
    goto out;
  c.text_max = text_max;
  c.orig = raw ? raw : (const void *)"";
  c.origlen = raw ? len : 0;
  c.parsedlen = mime_prescan(c.orig, c.origlen, &why);
  if(c.parsedlen > G_MAXUINT / 2) {
    c.parsedlen = G_MAXUINT / 2;
    why = "a message of more than 2 GB: the rest is not parsed";
  }
  if(why)
    mime_note(&c, why);
  if(!c.origlen)
    mime_note(&c, "empty message");
  ba = g_byte_array_sized_new((guint)(c.parsedlen ? c.parsedlen : 1));
  g_byte_array_append(ba, c.orig, (guint)c.parsedlen);
  /* duplicates renamed in place ("Xontent-Type": same length, offsets stay) and parsed
   * again; an entity revealed by a pass may have its own, hence a few passes */
  for(pass = 0; pass < 4; pass++) {
    GArray *offs = g_array_new(FALSE, FALSE, sizeof(gint64));
    size_t seen = 0, i, patched = 0;
    if(m)
      g_object_unref(m);
    m = mime_gmime_parse(&c, ba);
    if(m)
      find_duplicates(GMIME_OBJECT(m), 0, offs, &seen);
    for(i = 0; i < offs->len; i++) {
      gint64 off = g_array_index(offs, gint64, i);
      if(off >= 0 && (size_t)off < ba->len && (ba->data[off] == 'C' || ba->data[off] == 'c')) {
        ba->data[off] = 'X';
        patched++;
      }
    }
    g_array_free(offs, TRUE);
    if(!patched)
      break;
  }
  rec = json_object();
  if(!rec)
    goto out;
  if(!m)
    mime_note(&c, "not a message GMime could read");
  mime_header_fields(&c, m ? GMIME_OBJECT(m) : NULL, rec);
  if(m && g_mime_message_get_mime_part(m)) {
    size_t seen = 0;
    fix_content_types(&c, g_mime_message_get_mime_part(m), 0, &seen);
    walk(&c, g_mime_message_get_mime_part(m), 0, 1, 1, NULL);
  }
  result = mime_finish(&c, rec, m ? GMIME_OBJECT(m) : NULL, out);
  if(!result && tls_sha256_hex(c.orig, c.origlen, (*out)->content_sha256)) {
    inbound_mime_free(*out);
    *out = NULL;
    result = -1;
  }
out:
  json_decref(rec);
  if(m)
    g_object_unref(m);
  if(ba)
    g_byte_array_unref(ba);
  mime_ctx_free(&c);
  return result;
}

void inbound_mime_free(struct inbound_mime *m)
{
  if(!m)
    return;
  att_free(m->att, m->natt);
  free(m->json);
  free(m->email);
  free(m);
}
