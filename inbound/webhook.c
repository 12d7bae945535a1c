/* The parts of the webhooks that read attacker bytes, kept free of sockets and of the store so
 * that the fuzz targets can run them: SendGrid event batches, the Inbound Parse envelope, and
 * Twilio's request signature. */
#include "inbound/inbound.h"
#include "lib/limits.h"
#include "tls/tls.h"
#include "lib/buf.h"
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

struct inbound_events {
  json_t *root;
  struct store_event *ev;
  char **strs;            /* payload and key strings made here */
  size_t nstrs;
};

void inbound_events_free(struct inbound_events *e)
{
  size_t i;
  if(!e)
    return;
  for(i = 0; i < e->nstrs; i++)
    free(e->strs[i]);
  free(e->strs);
  free(e->ev);
  json_decref(e->root);
  free(e);
}

static const char *str_member(json_t *o, const char *name)
{
  json_t *v = json_object_get(o, name);
  return json_is_string(v) ? json_string_value(v) : NULL;
}

int inbound_events_parse(const char *body, size_t len, size_t max, struct inbound_events **out,
                         const struct store_event **evout, size_t *nout, const char **why)
{
  struct inbound_events *e = calloc(1, sizeof(*e));
  json_error_t jerr;
  size_t i, n;
  *out = NULL;
  *why = "out of memory";
  if(!e)
    return -1;
  /* JSON_REJECT_DUPLICATES: two sg_event_id members must not let the key differ from what a
   * reader of the payload believes */
  e->root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
  if(e->root && json_is_object(e->root)) {
    /* SendGrid posts arrays; a lone event (its published test payload is one) is a batch of
     * one */
    json_t *arr = json_array();
    if(!arr || json_array_append_new(arr, e->root)) {
      json_decref(arr);
      goto fail;
    }
    e->root = arr;
  }
  if(!e->root || !json_is_array(e->root)) {
    *why = "the body is not a JSON array of events";
    goto fail;
  }
  n = json_array_size(e->root);
  if(n > max) {
    *why = "too many events in one batch";
    goto fail;
  }
  e->ev = calloc(n ? n : 1, sizeof(*e->ev));
  e->strs = calloc(2 * (n ? n : 1), sizeof(*e->strs));
  if(!e->ev || !e->strs)
    goto fail;
  for(i = 0; i < n; i++) {
    json_t *o = json_array_get(e->root, i), *ts;
    struct store_event *ev = &e->ev[i];
    char *payload;
    const char *id;
    if(!json_is_object(o)) {
      *why = "an event is not a JSON object";
      goto fail;
    }
    payload = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
    if(!payload)
      goto fail;
    e->strs[e->nstrs++] = payload;
    ev->payload = payload;
    ev->payloadlen = strlen(payload);
    ev->event = str_member(o, "event");
    ev->sg_message_id = str_member(o, "sg_message_id");
    ev->email = str_member(o, "email");
    ts = json_object_get(o, "timestamp");
    ev->timestamp = json_is_integer(ts) ? (long long)json_integer_value(ts) : 0;
    id = str_member(o, "sg_event_id");
    if(id && id[0] && strlen(id) <= 256)
      ev->key = id;
    else {
      /* no id (test events have none): the canonical form's digest still makes a replayed
       * event a duplicate */
      char hex[TLS_SHA256_HEX_LEN + 1], *key;
      if(tls_sha256_hex(payload, ev->payloadlen, hex))
        goto fail;
      key = malloc(sizeof("sha256:") + TLS_SHA256_HEX_LEN);
      if(!key)
        goto fail;
      snprintf(key, sizeof("sha256:") + TLS_SHA256_HEX_LEN, "sha256:%s", hex);
      e->strs[e->nstrs++] = key;
      ev->key = key;
    }
  }
  *out = e;
  *evout = e->ev;
  *nout = n;
  *why = NULL;
  return 0;

fail:
  inbound_events_free(e);
  return -1;
}

int inbound_parse_envelope(const char *json, size_t len, char **from, char **to)
{
  json_error_t jerr;
  json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr), *list;
  struct buf b;
  const char *f;
  size_t i;
  int result = -1;
  *from = *to = NULL;
  buf_init(&b, len + 1);
  if(!root || !json_is_object(root))
    goto out;
  f = str_member(root, "from");
  list = json_object_get(root, "to");
  if(!json_is_array(list) && !json_is_null(list) && list)
    goto out;
  for(i = 0; list && json_is_array(list) && i < json_array_size(list); i++) {
    json_t *a = json_array_get(list, i);
    const char *s = json_is_string(a) ? json_string_value(a) : NULL;
    /* an address with a line break would split into two in the LF-joined list */
    if(!s || strpbrk(s, "\r\n"))
      goto out;
    if((b.len && buf_add(&b, "\n", 1)) || buf_addstr(&b, s))
      goto out;
  }
  if(f && strpbrk(f, "\r\n"))
    goto out;
  *from = f ? str_dup_n(f, strlen(f)) : NULL;
  *to = str_dup_n(b.ptr ? b.ptr : "", b.len);
  if((f && !*from) || !*to) {
    free(*from);
    free(*to);
    *from = *to = NULL;
    goto out;
  }
  result = 0;
out:
  buf_free(&b);
  json_decref(root);
  return result;
}

static int param_cmp(const void *a, const void *b)
{
  const struct inbound_param *x = *(const struct inbound_param *const *)a;
  const struct inbound_param *y = *(const struct inbound_param *const *)b;
  size_t n = x->namelen < y->namelen ? x->namelen : y->namelen;
  int c = memcmp(x->name, y->name, n);
  if(c)
    return c;
  if(x->namelen != y->namelen)
    return x->namelen < y->namelen ? -1 : 1;
  n = x->valuelen < y->valuelen ? x->valuelen : y->valuelen;
  c = memcmp(x->value, y->value, n);
  if(c)
    return c;
  return x->valuelen < y->valuelen ? -1 : x->valuelen > y->valuelen;
}

int inbound_twilio_signature(const char *token, size_t tokenlen, const char *url,
                             const struct inbound_param *params, size_t n, char *out,
                             size_t outsz)
{
  const struct inbound_param **sorted = calloc(n ? n : 1, sizeof(*sorted));
  unsigned char mac[TLS_SHA1_LEN];
  struct buf b;
  size_t i;
  int result = -1;
  buf_init(&b, LIM_WEBHOOK_SIGNED);
  if(!sorted)
    goto out;
  for(i = 0; i < n; i++)
    sorted[i] = &params[i];
  qsort(sorted, n, sizeof(*sorted), param_cmp);
  if(buf_addstr(&b, url))
    goto out;
  for(i = 0; i < n; i++)
    if(buf_add(&b, sorted[i]->name, sorted[i]->namelen) ||
       buf_add(&b, sorted[i]->value, sorted[i]->valuelen))
      goto out;
  if(tls_hmac_sha1(token, tokenlen, b.ptr, b.len, mac))
    goto out;
  result = tls_base64_encode(mac, sizeof(mac), out, outsz);
out:
  free(sorted);
  buf_free(&b);
  return result;
}

static int hexval(char c)
{
  if(c >= '0' && c <= '9') return c - '0';
  if(c >= 'a' && c <= 'f') return c - 'a' + 10;
  if(c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Decodes p[0..n) into out (which has room for n bytes); returns the decoded length or -1. */
static long form_decode(const char *p, size_t n, char *out)
{
  size_t i, o = 0;
  for(i = 0; i < n; i++) {
    if(p[i] == '+')
      out[o++] = ' ';
    else if(p[i] == '%') {
      int hi, lo;
      if(i + 2 >= n)
        return -1;
      hi = hexval(p[i + 1]);
      lo = hexval(p[i + 2]);
      if(hi < 0 || lo < 0)
        return -1;
      out[o++] = (char)(hi * 16 + lo);
      i += 2;
    }
    else
      out[o++] = p[i];
  }
  return (long)o;
}

int inbound_form_parse(const char *body, size_t len, size_t max, struct inbound_param **out,
                       size_t *nout, char **hold)
{
  struct inbound_param *params = NULL;
  char *mem = NULL;
  size_t n = 0, i = 0, used = 0;
  *out = NULL;
  *nout = 0;
  *hold = NULL;
  mem = malloc(len + 2 * (max + 1) + 1);
  params = calloc(max + 1, sizeof(*params));
  if(!mem || !params)
    goto fail;
  while(i < len) {
    size_t start = i, eq, end;
    long dn, dv;
    while(i < len && body[i] != '&')
      i++;
    end = i;
    if(i < len)
      i++;                             /* the '&' */
    if(end == start)
      continue;                        /* "a=1&&b=2" */
    if(n == max)
      goto fail;
    for(eq = start; eq < end && body[eq] != '='; eq++)
      ;
    dn = form_decode(body + start, eq - start, mem + used);
    if(dn < 0)
      goto fail;
    params[n].name = mem + used;
    params[n].namelen = (size_t)dn;
    used += (size_t)dn;
    mem[used++] = '\0';
    dv = eq < end ? form_decode(body + eq + 1, end - eq - 1, mem + used) : 0;
    if(dv < 0)
      goto fail;
    params[n].value = mem + used;
    params[n].valuelen = (size_t)dv;
    used += (size_t)dv;
    mem[used++] = '\0';
    n++;
  }
  *out = params;
  *nout = n;
  *hold = mem;
  return 0;
fail:
  free(params);
  free(mem);
  return -1;
}

void inbound_parse_form_init(struct inbound_parse_form *f)
{
  memset(f, 0, sizeof(*f));
  buf_init(&f->envelope, LIM_WEBHOOK_FIELD);
  /* kept whole (finish takes them only in their expected shape) */
  buf_init(&f->spf, LIM_WEBHOOK_FIELD);
  buf_init(&f->sender_ip, LIM_WEBHOOK_FIELD);
  buf_init(&f->attachments, 16);
}

void inbound_parse_form_free(struct inbound_parse_form *f)
{
  buf_free(&f->envelope);
  buf_free(&f->spf);
  buf_free(&f->sender_ip);
  buf_free(&f->attachments);
  free(f->from);
  free(f->to);
  f->from = f->to = NULL;
}

void inbound_parse_form_field(struct inbound_parse_form *f, const char *key,
                              const char *filename, const char *data, uint64_t off, size_t size)
{
  struct buf *keep = NULL;
  if(!key)
    return;
  /* a new part begins at offset 0; file parts are counted, their bytes stay in the raw body */
  if(off == 0 && (strncmp(f->last_key, key, sizeof(f->last_key)) || filename)) {
    str_copy(f->last_key, sizeof(f->last_key), key);
    if(filename)
      f->files++;
    if(!strcmp(key, "email"))
      f->has_email = 1;
    if(!strcmp(key, "headers"))
      f->has_headers = 1;
  }
  if(filename)
    return;
  if(!strcmp(key, "envelope"))
    keep = &f->envelope;
  else if(!strcmp(key, "SPF"))
    keep = &f->spf;
  else if(!strcmp(key, "sender_ip"))
    keep = &f->sender_ip;
  else if(!strcmp(key, "attachments"))
    keep = &f->attachments;
  if(keep && size && buf_add(keep, data, size))
    f->error = 1;               /* longer than any real field of its kind: malformed */
}

const char *inbound_parse_form_finish(struct inbound_parse_form *f)
{
  long nattach = -1;
  size_t i;
  if(f->attachments.len &&
     str_to_long(f->attachments.ptr, f->attachments.len, 0, 100000, &nattach))
    f->error = 1;
  if(f->error)
    return "malformed form data\n";
  if(!f->has_email && !f->has_headers)
    return "neither an email field (raw mode) nor a headers field (parsed mode)\n";
  if(nattach >= 0 && (size_t)nattach != f->files)
    return "the attachments count does not match the files posted\n";
  if(f->envelope.len && inbound_parse_envelope(f->envelope.ptr, f->envelope.len, &f->from, &f->to))
    return "the envelope field is not valid JSON\n";
  /* SPF and sender_ip come from SendGrid: kept only in their expected shape */
  f->spf_result[0] = f->ip[0] = '\0';
  if(f->spf.len && f->spf.len < sizeof(f->spf_result)) {
    for(i = 0; i < f->spf.len; i++) {
      char ch = f->spf.ptr[i];
      if(!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z')))
        break;
      f->spf_result[i] = (char)(ch | 0x20);
    }
    f->spf_result[i == f->spf.len ? i : 0] = '\0';
  }
  if(f->sender_ip.len && f->sender_ip.len < sizeof(f->ip) &&
     memchr(f->sender_ip.ptr, '\0', f->sender_ip.len) == NULL &&
     strspn(f->sender_ip.ptr, "0123456789abcdefABCDEF.:") == f->sender_ip.len) {
    memcpy(f->ip, f->sender_ip.ptr, f->sender_ip.len);
    f->ip[f->sender_ip.len] = '\0';
  }
  return NULL;
}
