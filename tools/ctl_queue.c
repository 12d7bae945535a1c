/* posternctl queue: list, show, cat, retry, hold, release and delete messages, and inbound list:
 * what the inbound path stored raw. Through the store interface (never SQL), so it works the
 * same while the daemon runs. */
#include "tools/ctl.h"
#include "lib/buf.h"
#include "lib/limits.h"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>

static int status_pending(enum rcpt_status s)
{
  return s == RCPT_QUEUED || s == RCPT_DEFERRED;
}

static json_t *msg_json(const struct store_msg *m)
{
  json_t *o = json_object(), *rcpts = json_array();
  size_t i;
  if(!o || !rcpts) {
    json_decref(o);
    json_decref(rcpts);
    return NULL;
  }
  json_object_set_new(o, "id", json_string(m->id));
  json_object_set_new(o, "sender", ctl_jstr(m->sender));
  json_object_set_new(o, "size", json_integer(m->size));
  json_object_set_new(o, "created", ctl_jtime(m->created_ms));
  for(i = 0; i < m->nrcpts; i++) {
    const struct store_rcpt *r = &m->rcpts[i];
    json_t *jr = json_object();
    if(!jr)
      continue;
    json_object_set_new(jr, "address", ctl_jstr(r->address));
    json_object_set_new(jr, "status", json_string(rcpt_status_name(r->status)));
    json_object_set_new(jr, "attempts", json_integer(r->attempts));
    json_object_set_new(jr, "last_reply", ctl_jstr(r->last_reply));
    json_object_set_new(jr, "next_attempt",
                        status_pending(r->status) ? ctl_jtime(r->next_attempt_ms) : json_null());
    json_object_set_new(jr, "upstream", ctl_jstr(r->upstream));
    if(r->updated_ms)
      json_object_set_new(jr, "updated", ctl_jtime(r->updated_ms));
    ctl_jset_known(jr, "orcpt", r->orcpt);
    ctl_jset_known(jr, "notify", r->notify);
    json_array_append_new(rcpts, jr);
  }
  json_object_set_new(o, "recipients", rcpts);
  ctl_jset_known(o, "source", m->source);
  ctl_jset_known(o, "listener", m->listener);
  ctl_jset_known(o, "client_addr", m->client_addr);
  ctl_jset_known(o, "helo", m->helo);
  ctl_jset_known(o, "auth_user", m->auth_user);
  ctl_jset_known(o, "envid", m->envid);
  ctl_jset_known(o, "ret", m->ret);
  json_object_set_new(o, "body_8bit", json_boolean(m->body_8bit));
  json_object_set_new(o, "smtputf8", json_boolean(m->smtputf8));
  ctl_jset_known(o, "body_sha256", m->body_sha256);
  return o;
}

/* ---- human output ------------------------------------------------------------------------ */

static void msg_print_show(const struct store_msg *m)
{
  char t[40];
  size_t i;
  printf("id: %s\n", m->id);
  ctl_time_human(m->created_ms, t, sizeof(t));
  printf("created: %s UTC\n", t);
  printf("size: %lld\n", m->size);
  fputs("sender: <", stdout);
  ctl_put_field(stdout, m->sender);
  fputs(">\n", stdout);
#define SHOW_KNOWN(key, v) do { if(v) { fputs(key ": ", stdout); ctl_put_field(stdout, v); \
  fputc('\n', stdout); } } while(0)
  SHOW_KNOWN("source", m->source);
  SHOW_KNOWN("listener", m->listener);
  SHOW_KNOWN("client_addr", m->client_addr);
  SHOW_KNOWN("helo", m->helo);
  SHOW_KNOWN("auth_user", m->auth_user);
  SHOW_KNOWN("envid", m->envid);
  SHOW_KNOWN("ret", m->ret);
  printf("body_8bit: %s\n", m->body_8bit ? "yes" : "no");
  printf("smtputf8: %s\n", m->smtputf8 ? "yes" : "no");
  SHOW_KNOWN("body_sha256", m->body_sha256);
  for(i = 0; i < m->nrcpts; i++) {
    const struct store_rcpt *r = &m->rcpts[i];
    fputs("recipient: <", stdout);
    ctl_put_field(stdout, r->address);
    fputs(">\n", stdout);
    printf("  status: %s\n", rcpt_status_name(r->status));
    printf("  attempts: %d\n", r->attempts);
    if(status_pending(r->status)) {
      ctl_time_human(r->next_attempt_ms, t, sizeof(t));
      printf("  next_attempt: %s UTC\n", t);
    }
    SHOW_KNOWN("  last_reply", r->last_reply);
    SHOW_KNOWN("  upstream", r->upstream);
    SHOW_KNOWN("  orcpt", r->orcpt);
    SHOW_KNOWN("  notify", r->notify);
  }
#undef SHOW_KNOWN
}

/* ---- queue list -------------------------------------------------------------------------- */

struct list_state {
  int json;
  size_t count;
  long long bytes;
  int failed;                 /* a JSON element could not be built or written */
};

static int list_one(void *arg, const struct store_msg *m)
{
  struct list_state *ls = arg;
  size_t i;
  if(ls->json) {
    json_t *o = msg_json(m);
    fputs(ls->count ? ",\n" : "\n", stdout);
    if(!o || json_dumpf(o, stdout, JSON_COMPACT)) {
      ls->failed = 1;
      json_decref(o);
      return 1;
    }
    json_decref(o);
  }
  else {
    char t[40];
    if(!ls->count)
      printf("%-12s %10s  %-19s  %s\n", "-Queue ID-", "--Size--", "---Arrival (UTC)---",
             "-Sender/Recipient-------");
    ctl_time_human(m->created_ms, t, sizeof(t));
    printf("%-12s %10lld  %-19s  ", m->id, m->size, t);
    if(m->sender && *m->sender)
      ctl_put_field(stdout, m->sender);
    else
      fputs("<>", stdout);
    fputc('\n', stdout);
    for(i = 0; i < m->nrcpts; i++) {
      const struct store_rcpt *r = &m->rcpts[i];
      printf("%46s%-9s ", "", rcpt_status_name(r->status));
      ctl_put_field(stdout, r->address);
      if(r->attempts || r->last_reply) {
        printf(" (%d attempt%s", r->attempts, r->attempts == 1 ? "" : "s");
        if(r->status == RCPT_DEFERRED) {
          ctl_time_human(r->next_attempt_ms, t, sizeof(t));
          printf(", next %s", t);
        }
        if(r->last_reply) {
          fputs(": ", stdout);
          ctl_put_field(stdout, r->last_reply);
        }
        fputc(')', stdout);
      }
      fputc('\n', stdout);
    }
    fputc('\n', stdout);
  }
  ls->count++;
  ls->bytes += m->size;
  return 0;
}

static int queue_list(struct ctl *c)
{
  struct list_state ls;
  int result;
  memset(&ls, 0, sizeof(ls));
  ls.json = c->json;
  if(c->json)
    fputc('[', stdout);
  result = store_list(c->st, NULL, list_one, &ls);
  if(c->json)
    fputs(ls.count ? "\n]\n" : "]\n", stdout);
  else if(!result && !ls.count)
    puts("Mail queue is empty");
  else if(!result)
    printf("-- %lld Kbytes in %zu Request%s.\n", (ls.bytes + 1023) / 1024, ls.count,
           ls.count == 1 ? "" : "s");
  if(result) {
    fprintf(stderr, "posternctl: reading the queue failed\n");
    return EX_TEMPFAIL;
  }
  if(ls.failed) {
    fprintf(stderr, "posternctl: cannot write the JSON output\n");
    return EX_IOERR;
  }
  return 0;
}

/* ---- one message ------------------------------------------------------------------------- */

static int not_found(const struct ctl *c)
{
  fprintf(stderr, "posternctl: no message %s in the queue\n", c->id);
  return EXIT_NOTFOUND;
}

static int queue_show(struct ctl *c)
{
  struct store_msg m;
  int result = store_get(c->st, c->id, &m);
  if(result == STORE_NOTFOUND)
    return not_found(c);
  if(result)
    return ctl_store_failed("reading the message", result);
  if(c->json)
    result = ctl_print_json_one(msg_json(&m));
  else
    msg_print_show(&m);
  store_msg_free(&m);
  return result;
}

static int queue_cat(struct ctl *c)
{
  char *body = NULL;
  size_t len = 0;
  int result = store_body(c->st, c->id, &body, &len);
  if(result == STORE_NOTFOUND)
    return not_found(c);
  if(result)
    return ctl_store_failed("reading the message", result);
  /* byte-exact: the stored bytes, nothing added */
  if(fwrite(body, 1, len, stdout) != len || fflush(stdout)) {
    fprintf(stderr, "posternctl: cannot write the message: %s\n", strerror(errno));
    result = EX_IOERR;
  }
  free(body);
  return result;
}

static int queue_change(struct ctl *c, const char *verb)
{
  int result;
  const char *done;
  if(!strcmp(verb, "delete")) {
    result = store_delete(c->st, c->id);
    done = "deleted";
  }
  else if(!strcmp(verb, "hold")) {
    result = store_set_pending(c->st, c->id, RCPT_HELD);
    done = "held";
  }
  else {
    /* retry and release both make every unfinished recipient due now */
    result = store_set_pending(c->st, c->id, RCPT_QUEUED);
    done = !strcmp(verb, "retry") ? "queued for delivery now" : "released";
  }
  if(result == STORE_NOTFOUND)
    return not_found(c);
  if(result)
    return ctl_store_failed(verb, result);
  if(!c->json) {
    printf("%s: %s\n", c->id, done);
    return 0;
  }
  if(!strcmp(verb, "delete")) {
    json_t *o = json_object();
    if(o) {
      json_object_set_new(o, "id", json_string(c->id));
      json_object_set_new(o, "deleted", json_true());
    }
    return ctl_print_json_one(o);
  }
  return queue_show(c);       /* the message as it is now */
}
static int id_parse(const char *arg, char out[LIM_QUEUE_ID + 1])
{
  size_t i, n = strlen(arg);
  if(!n || n > LIM_QUEUE_ID)
    return -1;
  for(i = 0; i < n; i++) {
    char ch = arg[i];
    if(ch >= 'a' && ch <= 'f')
      ch = (char)(ch - 'a' + 'A');
    else if(!((ch >= '0' && ch <= '9') || (ch >= 'A' && ch <= 'F')))
      return -1;
    out[i] = ch;
  }
  out[n] = '\0';
  return 0;
}

int ctl_queue(struct ctl *c)
{
  static const char *const with_id[] = { "show", "cat", "retry", "hold", "release", "delete" };
  const char *verb;
  size_t i;
  int result, reads;
  if(ctl_no_options(c))
    return EX_USAGE;

  if(c->nargs < 2)
    return ctl_usage_error("queue needs a command", NULL);
  verb = c->args[1];
  if(!strcmp(verb, "list")) {
    if(c->nargs > 2)
      return ctl_usage_error("queue list takes no argument", c->args[2]);
    result = ctl_config_and_store(c, STORE_OPEN_READONLY);
    return result ? result : queue_list(c);
  }
  for(i = 0; i < sizeof(with_id) / sizeof(with_id[0]); i++)
    if(!strcmp(verb, with_id[i]))
      break;
  if(i == sizeof(with_id) / sizeof(with_id[0]))
    return ctl_usage_error("unknown queue command", verb);
  if(c->nargs != 3)
    return ctl_usage_error(c->nargs < 3 ? "this command needs a queue ID" : "too many arguments",
                       c->nargs < 3 ? verb : c->args[3]);
  if(id_parse(c->args[2], c->id))
    return ctl_usage_error("not a queue ID (1 to 24 hex digits)", c->args[2]);

  /* reads never take the write lock, so they cannot slow the daemon down */
  reads = !strcmp(verb, "show") || !strcmp(verb, "cat");
  result = ctl_config_and_store(c, reads ? STORE_OPEN_READONLY : 0);
  if(result)
    return result;
  if(!strcmp(verb, "show"))
    return queue_show(c);
  if(!strcmp(verb, "cat"))
    return queue_cat(c);
  return queue_change(c, verb);
}

/* ---- inbound list: what the MX listener and the webhooks stored, raw ------------------------ */

static int inbound_one(void *arg, const struct store_inbound *m)
{
  struct list_state *ls = arg;
  char when[40];
  if(ls->json) {
    json_t *o = json_object(), *to = json_array();
    const char *p = m->envelope_to;
    int bad = !o || !to;
    while(!bad && p && *p) {
      size_t n = strcspn(p, "\n");
      char *one = str_dup_n(p, n);
      bad = !one || json_array_append_new(to, ctl_jstr(one));
      free(one);
      p += n + (p[n] == '\n');
    }
    if(!bad)
      bad = json_object_set_new(o, "id", json_string(m->id)) ||
            json_object_set_new(o, "source", ctl_jstr(m->source)) ||
            json_object_set_new(o, "received_at", ctl_jtime(m->received_ms)) ||
            json_object_set_new(o, "listener", ctl_jstr(m->listener)) ||
            json_object_set_new(o, "client_addr", ctl_jstr(m->client_addr)) ||
            json_object_set_new(o, "helo", ctl_jstr(m->helo)) ||
            json_object_set_new(o, "envelope_from", ctl_jstr(m->envelope_from)) ||
            json_object_set_new(o, "envelope_to", to) ||
            json_object_set_new(o, "spf", ctl_jstr(m->spf)) ||
            json_object_set_new(o, "content_type", ctl_jstr(m->content_type)) ||
            json_object_set_new(o, "external_id", ctl_jstr(m->external_id)) ||
            json_object_set_new(o, "size", json_integer(m->size)) ||
            json_object_set_new(o, "body_sha256", ctl_jstr(m->body_sha256));
    else
      json_decref(to);
    fputs(ls->count ? ",\n" : "\n", stdout);
    if(bad || json_dumpf(o, stdout, JSON_COMPACT))
      ls->failed = 1;
    json_decref(o);
  }
  else {
    ctl_time_human(m->received_ms, when, sizeof(when));
    printf("%-12s %s %-13s %8lld  ", m->id, when, m->source ? m->source : "?", m->size);
    ctl_put_field(stdout, m->envelope_from ? m->envelope_from : "");
    fputs(" -> ", stdout);
    ctl_put_field(stdout, m->envelope_to ? m->envelope_to : "");
    if(m->spf) {
      fputs("  spf=", stdout);
      ctl_put_field(stdout, m->spf);
    }
    fputc('\n', stdout);
  }
  ls->count++;
  return 0;
}

int ctl_inbound(struct ctl *c)
{
  struct list_state ls;
  int result;
  if(ctl_no_options(c))
    return EX_USAGE;
  if(c->nargs != 2 || strcmp(c->args[1], "list"))
    return ctl_usage_error("inbound takes list", c->nargs > 1 ? c->args[1] : NULL);
  result = ctl_config_and_store(c, STORE_OPEN_READONLY);
  if(result)
    return result;
  memset(&ls, 0, sizeof(ls));
  ls.json = c->json;
  if(c->json)
    fputc('[', stdout);
  result = store_inbound_list(c->st, inbound_one, &ls);
  if(c->json)
    fputs(ls.count ? "\n]\n" : "]\n", stdout);
  else if(!result && !ls.count)
    puts("Nothing received");
  if(result) {
    fprintf(stderr, "posternctl: reading the inbound store failed\n");
    return EX_TEMPFAIL;
  }
  if(ls.failed) {
    fprintf(stderr, "posternctl: cannot write the JSON output\n");
    return EX_IOERR;
  }
  return 0;
}
