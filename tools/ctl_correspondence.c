/* posternctl correspondence: list and show correspondence records (what was received and
 * sent, threaded, with outbound status and events), filtered by address or thread. Through
 * the store and the inbound path's record view, so it shows what forward_url receives. */
#include "tools/ctl.h"
#include "inbound/inbound.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sysexits.h>

struct corr_list {
  struct store *st;
  int json;
  size_t count;
  int failed;
};

static const char *jval(const json_t *o, const char *key)
{
  const char *s = json_string_value(json_object_get(o, key));
  return s ? s : "";
}

/* "Name <address>", or the address alone */
static void put_mailbox(const json_t *m)
{
  const char *name = jval(m, "name");
  if(*name) {
    ctl_put_text(stdout, name);
    fputs(" <", stdout);
  }
  ctl_put_text(stdout, jval(m, "address"));
  if(*name)
    fputc('>', stdout);
}

static int has_address(const json_t *list, const char *a)
{
  size_t i;
  json_t *v;
  json_array_foreach(list, i, v)
    if(!strcasecmp(json_is_string(v) ? json_string_value(v) : jval(v, "address"), a))
      return 1;
  return 0;
}

/* One line: id, when, direction and source, from -> the envelope recipient (and how many more),
 * To: where it names someone else (a reply address, a list, a Bcc), status, subject. */
static void record_line(const struct store_record *r, const json_t *o)
{
  char t[40];
  const json_t *env = json_object_get(o, "envelope_to"), *to = json_object_get(o, "to");
  const json_t *to0 = json_array_get(to, 0);
  const char *rcpt = json_string_value(json_array_get(env, 0));
  ctl_time_human(r->received_ms, t, sizeof(t));
  printf("%s  %s  %-3s %-13s ", r->id, t, r->direction, r->source);
  put_mailbox(json_object_get(o, "from"));
  fputs(" -> ", stdout);
  if(rcpt) {
    ctl_put_text(stdout, rcpt);
    if(json_array_size(env) > 1)
      printf(" +%zu", json_array_size(env) - 1);
  }
  if(to0 && (!rcpt || !has_address(env, jval(to0, "address")))) {
    fputs(rcpt ? " (To: " : "To: ", stdout);
    put_mailbox(to0);
    if(json_array_size(to) > 1)
      printf(" +%zu", json_array_size(to) - 1);
    if(rcpt)
      fputc(')', stdout);
  }
  printf("  thread=%s", r->thread_id ? r->thread_id : "");
  if(r->status)
    printf("  status=%s", r->status);
  fputs("  ", stdout);
  ctl_put_text(stdout, jval(o, "subject"));
  fputc('\n', stdout);
}

static int list_one(void *arg, const struct store_record *r)
{
  struct corr_list *l = arg;
  json_t *o = inbound_record_object(l->st, r);
  if(!o) {
    l->failed = 1;
    return 1;
  }
  if(l->json) {
    fputs(l->count ? ",\n" : "\n", stdout);
    if(json_dumpf(o, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER))
      l->failed = 1;
  }
  else
    record_line(r, o);
  json_decref(o);
  l->count++;
  return l->failed;
}

static void show_human(const struct store_record *r, const json_t *o)
{
  static const char *const fields[] = { "direction", "source", "received_at", "envelope_from",
    "message_id", "in_reply_to", "thread_id", "parent_id", "subject", "date", "spf", "status",
    "parse_error", NULL };
  const json_t *events = json_object_get(o, "events"), *e;
  size_t i;
  printf("id: %s\n", r->id);
  for(i = 0; fields[i]; i++) {
    const char *v = json_string_value(json_object_get(o, fields[i]));
    if(!v)
      continue;
    printf("%s: ", fields[i]);
    ctl_put_text(stdout, v);
    fputc('\n', stdout);
  }
  printf("from: ");
  put_mailbox(json_object_get(o, "from"));
  fputs("\nenvelope_to: ", stdout);
  for(i = 0; i < json_array_size(json_object_get(o, "envelope_to")); i++) {
    if(i)
      fputs(", ", stdout);
    ctl_put_text(stdout, json_string_value(json_array_get(json_object_get(o, "envelope_to"), i)));
  }
  fputs("\nto: ", stdout);
  for(i = 0; i < json_array_size(json_object_get(o, "to")); i++) {
    if(i)
      fputs(", ", stdout);
    put_mailbox(json_array_get(json_object_get(o, "to"), i));
  }
  printf("\nattachments: %zu\n", json_array_size(json_object_get(o, "attachments")));
  json_array_foreach(events, i, e) {
    /* the name is the webhook's text, like the recipient */
    printf("event: %s ", jval(e, "at"));
    ctl_put_field(stdout, jval(e, "event"));
    fputc(' ', stdout);
    ctl_put_field(stdout, jval(e, "recipient"));
    fputc('\n', stdout);
  }
  fputs("\n", stdout);
  ctl_put_text(stdout, json_string_value(json_object_get(o, "reply_text")) ?
                       jval(o, "reply_text") : jval(o, "text"));
  fputc('\n', stdout);
}

static int corr_show(struct ctl *c)
{
  struct store_record r;
  json_t *o;
  int result = store_record_get(c->st, c->id, &r);
  if(result == STORE_NOTFOUND) {
    fprintf(stderr, "posternctl: no correspondence record %s\n", c->id);
    return EXIT_NOTFOUND;
  }
  if(result)
    return ctl_store_failed("reading the record", result);
  o = inbound_record_object(c->st, &r);
  if(!o) {
    store_record_free(&r);
    return ctl_store_failed("reading the record", STORE_ERROR);
  }
  if(c->json)
    result = ctl_print_json_one(o);
  else {
    show_human(&r, o);
    json_decref(o);
  }
  store_record_free(&r);
  return result;
}

/* ---- correspondence forward: the records set aside from the forward queue ----------------- */

static int aside_line(void *arg, const struct store_forward *e)
{
  json_t *a = arg, *o;
  char t[40];
  if(a) {
    o = json_object();
    if(!o)
      return 1;
    json_object_set_new(o, "id", json_string(e->id));
    json_object_set_new(o, "attempts", json_integer(e->attempts));
    json_object_set_new(o, "refusals", json_integer(e->refusals));
    json_object_set_new(o, "queued", ctl_jtime(e->queued_ms));
    json_object_set_new(o, "set_aside", ctl_jtime(e->set_aside_ms));
    json_object_set_new(o, "last_error", ctl_jstr(e->last_error));
    return json_array_append_new(a, o) ? 1 : 0;
  }
  ctl_time_human(e->set_aside_ms, t, sizeof(t));
  printf("%s  set aside %s  attempts=%d refusals=%d  ", e->id, t, e->attempts, e->refusals);
  ctl_put_field(stdout, e->last_error ? e->last_error : "");
  fputc('\n', stdout);
  return 0;
}

/* forward list | forward retry ID | forward retry --all */
static int corr_forward(struct ctl *c)
{
  int all = ctl_opt(c, "--all", NULL) == 1, result;
  size_t n = 0;
  if(ctl_no_options(c))
    return EX_USAGE;
  if(c->nargs == 3 && !strcmp(c->args[2], "list") && !all) {
    json_t *a = c->json ? json_array() : NULL;
    result = ctl_config_and_store(c, STORE_OPEN_READONLY);
    if(result) {
      json_decref(a);
      return result;
    }
    result = store_forward_set_aside_list(c->st, aside_line, a);
    if(result) {
      json_decref(a);
      return ctl_store_failed("reading the forward queue", result);
    }
    if(a) {
      if(json_dumpf(a, stdout, JSON_INDENT(2)) || fputc('\n', stdout) == EOF)
        result = EX_IOERR;
      json_decref(a);
    }
    return 0;
  }
  if(c->nargs == 3 && !strcmp(c->args[2], "retry") && all)
    c->id[0] = '\0';
  else if(c->nargs == 4 && !strcmp(c->args[2], "retry") && !all) {
    if(ctl_id_parse(c->args[3], c->id))
      return ctl_usage_error("not a record ID", c->args[3]);
  }
  else
    return ctl_usage_error("correspondence forward takes list, retry ID or retry --all", NULL);
  result = ctl_config_and_store(c, 0);
  if(result)
    return result;
  result = store_forward_retry(c->st, c->id[0] ? c->id : NULL, &n);
  if(result)
    return ctl_store_failed("changing the forward queue", result);
  if(!n && c->id[0]) {
    fprintf(stderr, "posternctl: record %s is not set aside\n", c->id);
    return EXIT_NOTFOUND;
  }
  printf("%zu record(s) back in the forward queue\n", n);
  return 0;
}

int ctl_correspondence(struct ctl *c)
{
  const char *address = NULL, *thread = NULL;
  char tid[LIM_QUEUE_ID + 1];
  struct corr_list l;
  int result;

  if(c->nargs >= 2 && !strcmp(c->args[1], "forward"))
    return corr_forward(c);

  if(ctl_opt(c, "--address", &address) < 0 || ctl_opt(c, "--thread", &thread) < 0)
    return ctl_usage_error("this option needs a value", NULL);
  if(ctl_no_options(c))
    return EX_USAGE;
  if(c->nargs < 2)
    return ctl_usage_error("correspondence needs a command", NULL);
  if(thread && ctl_id_parse(thread, tid))
    return ctl_usage_error("not a record ID", thread);
  if(!strcmp(c->args[1], "show")) {
    if(c->nargs != 3 || address || thread)
      return ctl_usage_error("correspondence show takes one record ID", NULL);
    if(ctl_id_parse(c->args[2], c->id))
      return ctl_usage_error("not a record ID", c->args[2]);
    result = ctl_config_and_store(c, STORE_OPEN_READONLY);
    return result ? result : corr_show(c);
  }
  if(strcmp(c->args[1], "list") || c->nargs != 2)
    return ctl_usage_error("correspondence takes list or show ID", c->args[1]);
  result = ctl_config_and_store(c, STORE_OPEN_READONLY);
  if(result)
    return result;
  memset(&l, 0, sizeof(l));
  l.st = c->st;
  l.json = c->json;
  if(c->json)
    fputc('[', stdout);
  result = store_record_list(c->st, address, thread ? tid : NULL, list_one, &l);
  if(c->json)
    fputs(l.count ? "\n]\n" : "]\n", stdout);
  else if(!result && !l.failed && !l.count)
    puts("No correspondence");
  if(result)
    return ctl_store_failed("listing records", result);
  if(l.failed) {
    fprintf(stderr, "posternctl: cannot write the output\n");
    return EX_IOERR;
  }
  return 0;
}
