/* posternctl queue: list (with filters), show, cat, stats, and retry, hold, release and delete
 * one message or every message a filter selects; and inbound list: what the inbound path stored
 * raw. Through the store interface (never SQL), so it works the same while the daemon runs;
 * after a change the daemon's scheduler is woken through its control socket. */
#include "tools/ctl.h"
#include "lib/buf.h"
#include "lib/limits.h"
#include "relay/relay.h"
#include <errno.h>
#include <fnmatch.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>
#include <time.h>

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
  const struct queue_sel *sel;
};

/* Which messages a list, stats or bulk action is about: the store filters what it can, the
 * upstream is the router's business (a recipient not tried yet goes where the routes say). */
struct queue_sel {
  struct store_filter f;
  const char *upstream;
  const struct config *cfg;
  int all;                    /* --all */
  int filtered;               /* any filter given */
};

#define NO_ROUTE "(no route)"

/* The upstream a recipient belongs to: the one that last handled it, else the route's. */
static const char *rcpt_upstream(const struct config *cfg, const struct store_msg *m,
                                 const struct store_rcpt *r)
{
  const char *up = r->upstream;
  if(!up)
    up = relay_upstream_for(cfg, m->sender, r->address);
  return up ? up : NO_ROUTE;
}

static int sel_matches(const struct queue_sel *q, const struct store_msg *m)
{
  size_t i;
  if(!q->upstream)
    return 1;
  /* the recipient that is on this upstream must be the one the other filters chose */
  for(i = 0; i < m->nrcpts; i++) {
    const struct store_rcpt *r = &m->rcpts[i];
    if(q->f.status >= 0 && (int)r->status != q->f.status)
      continue;
    if(q->f.recipient_glob && fnmatch(q->f.recipient_glob, r->address, FNM_CASEFOLD))
      continue;
    if(!strcmp(rcpt_upstream(q->cfg, m, r), q->upstream))
      return 1;
  }
  return 0;
}

/* Takes the filter options (and --all) out of c->args. 0 or EX_USAGE. */
static int sel_parse(struct ctl *c, struct queue_sel *q)
{
  const char *v;
  int r;
  memset(q, 0, sizeof(*q));
  q->f.status = -1;
#define SEL_OPT(name, dest) \
  if((r = ctl_opt(c, name, &v)) < 0) \
    return ctl_usage_error(name " needs a value", NULL); \
  if(r) { \
    dest = v; \
    q->filtered = 1; \
  }
  SEL_OPT("--sender", q->f.sender_glob);
  SEL_OPT("--recipient", q->f.recipient_glob);
  SEL_OPT("--upstream", q->upstream);
  v = NULL;
  if((r = ctl_opt(c, "--state", &v)) < 0)
    return ctl_usage_error("--state needs a value", NULL);
  if(r) {
    enum rcpt_status st;
    if(rcpt_status_parse(v, &st))
      return ctl_usage_error("--state is one of queued, deferred, sent, bounced, held, captured",
                             v);
    q->f.status = (int)st;
    q->filtered = 1;
  }
  if((r = ctl_opt(c, "--older-than", &v)) < 0)
    return ctl_usage_error("--older-than needs a duration", NULL);
  if(r) {
    long long secs;
    if(config_parse_duration(v, &secs) || secs <= 0)
      return ctl_usage_error("--older-than takes a duration like 90, 30s, 10m, 1h or 5d", v);
    /* past LLONG_MAX ms the product would wrap to "no age limit" for a bulk delete; that
     * long ago is before any message anyway */
    q->f.older_than_ms = secs > LLONG_MAX / 1000 ? LLONG_MAX / 1000 * 1000 : secs * 1000;
    q->filtered = 1;
  }
#undef SEL_OPT
  q->all = ctl_opt(c, "--all", NULL) == 1;
  return ctl_no_options(c) ? EX_USAGE : 0;
}

static int list_one(void *arg, const struct store_msg *m)
{
  struct list_state *ls = arg;
  size_t i;
  if(ls->sel && !sel_matches(ls->sel, m))
    return 0;
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

static int queue_list(struct ctl *c, const struct queue_sel *q)
{
  struct list_state ls;
  int result;
  memset(&ls, 0, sizeof(ls));
  ls.json = c->json;
  ls.sel = q;
  if(c->json)
    fputc('[', stdout);
  result = store_list(c->st, q ? &q->f : NULL, list_one, &ls);
  if(c->json)
    fputs(ls.count ? "\n]\n" : "]\n", stdout);
  else if(!result && !ls.count)
    puts(q && q->filtered ? "No message matches" : "Mail queue is empty");
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

/* One message's change; *done says it for people. A store result. */
static int change_one(struct store *st, const char *id, const char *verb, const char **done)
{
  if(!strcmp(verb, "delete")) {
    *done = "deleted";
    return store_delete(st, id);
  }
  if(!strcmp(verb, "hold")) {
    *done = "held";
    return store_set_pending(st, id, RCPT_HELD);
  }
  /* retry and release both make every unfinished recipient due now */
  *done = !strcmp(verb, "retry") ? "queued for delivery now" : "released";
  return store_set_pending(st, id, RCPT_QUEUED);
}

static int queue_change(struct ctl *c, const char *verb)
{
  const char *done;
  int result = change_one(c->st, c->id, verb, &done);
  if(result == STORE_NOTFOUND)
    return not_found(c);
  if(result)
    return ctl_store_failed(verb, result);
  ctl_wake_daemon(c);
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

/* ---- bulk actions: every message a filter (or --all) selects ----------------------------- */

struct id_list {
  const struct queue_sel *sel;
  char (*ids)[LIM_QUEUE_ID + 1];
  size_t n, cap;
  int oom;
};

static int collect_one(void *arg, const struct store_msg *m)
{
  struct id_list *l = arg;
  if(!sel_matches(l->sel, m))
    return 0;
  if(l->n == l->cap) {
    size_t ncap = l->cap ? l->cap * 2 : 64;
    void *p = realloc(l->ids, ncap * sizeof(*l->ids));
    if(!p) {
      l->oom = 1;
      return 1;
    }
    l->ids = p;
    l->cap = ncap;
  }
  memcpy(l->ids[l->n++], m->id, sizeof(m->id));
  return 0;
}

/* The ids are read first and changed after: a change never runs inside the list's snapshot,
 * and a message that went away in between is skipped, not an error. */
static int queue_bulk(struct ctl *c, const struct queue_sel *q, const char *verb)
{
  struct id_list l;
  json_t *arr = NULL;
  const char *done = "";
  size_t i, changed = 0;
  int result;
  memset(&l, 0, sizeof(l));
  l.sel = q;
  result = store_list(c->st, &q->f, collect_one, &l);
  if(result || l.oom) {
    free(l.ids);
    return l.oom ? EX_OSERR : ctl_store_failed("reading the queue", result);
  }
  if(c->json && !(arr = json_array())) {
    free(l.ids);
    return EX_OSERR;
  }
  for(i = 0; i < l.n; i++) {
    result = change_one(c->st, l.ids[i], verb, &done);
    if(result == STORE_NOTFOUND)
      continue;
    if(result)
      break;
    changed++;
    if(arr) {
      json_t *o = json_object();
      if(o) {
        json_object_set_new(o, "id", json_string(l.ids[i]));
        json_object_set_new(o, "done", json_string(verb));
        json_array_append_new(arr, o);
      }
    }
    else
      printf("%s: %s\n", l.ids[i], done);
  }
  free(l.ids);
  if(changed)
    ctl_wake_daemon(c);
  if(result) {
    json_decref(arr);
    fprintf(stderr, "posternctl: stopped after %zu message(s)\n", changed);
    return ctl_store_failed(verb, result);
  }
  if(arr) {
    int bad = json_dumpf(arr, stdout, JSON_INDENT(2)) || fputc('\n', stdout) == EOF;
    json_decref(arr);
    if(bad) {
      fprintf(stderr, "posternctl: cannot write the JSON output\n");
      return EX_IOERR;
    }
  }
  else
    printf("%zu message%s %s\n", changed, changed == 1 ? "" : "s",
           !strcmp(verb, "retry") ? "queued for delivery now" : done);
  return 0;
}

/* ---- queue stats ------------------------------------------------------------------------- */

#define NSTATES (RCPT_CAPTURED + 1)

struct up_count {
  char *name;
  long long n[NSTATES];
};

struct stats_state {
  const struct queue_sel *sel;
  long long by_state[NSTATES];
  struct up_count *ups;
  size_t nups;
  long long messages, bytes, oldest_ms;
  char oldest_id[LIM_QUEUE_ID + 1];
  int oom;
};

static int stats_one(void *arg, const struct store_msg *m)
{
  struct stats_state *ss = arg;
  size_t i, j;
  int unfinished = 0;
  if(!sel_matches(ss->sel, m))
    return 0;
  ss->messages++;
  ss->bytes += m->size;
  for(i = 0; i < m->nrcpts; i++) {
    const struct store_rcpt *r = &m->rcpts[i];
    const char *up = rcpt_upstream(ss->sel->cfg, m, r);
    if((unsigned)r->status >= NSTATES)
      continue;
    ss->by_state[r->status]++;
    unfinished |= status_pending(r->status) || r->status == RCPT_HELD;
    for(j = 0; j < ss->nups && strcmp(ss->ups[j].name, up); j++)
      ;
    if(j == ss->nups) {
      struct up_count *p = realloc(ss->ups, (ss->nups + 1) * sizeof(*p));
      if(!p || !(up = strdup(up))) {
        if(p)
          ss->ups = p;
        ss->oom = 1;
        return 1;
      }
      ss->ups = p;
      memset(&p[j], 0, sizeof(p[j]));
      p[j].name = (char *)up;
      ss->nups++;
    }
    ss->ups[j].n[r->status]++;
  }
  /* oldest first from the store: the first unfinished one is the oldest */
  if(unfinished && ss->oldest_ms < 0) {
    ss->oldest_ms = m->created_ms;
    memcpy(ss->oldest_id, m->id, sizeof(m->id));
  }
  return 0;
}

static json_t *states_json(const long long *n)
{
  json_t *o = json_object();
  int i;
  for(i = 0; o && i < NSTATES; i++)
    json_object_set_new(o, rcpt_status_name((enum rcpt_status)i), json_integer(n[i]));
  return o;
}

static int stats_print(struct ctl *c, const struct stats_state *ss, int not_live)
{
  long long now = (long long)time(NULL) * 1000;
  size_t j;
  int i;
  char age[64];
  if(c->json) {
    json_t *o = json_object(), *ups = json_object();
    if(!o || !ups) {
      json_decref(o);
      json_decref(ups);
      return EX_OSERR;
    }
    json_object_set_new(o, "messages", json_integer(ss->messages));
    json_object_set_new(o, "bytes", json_integer(ss->bytes));
    json_object_set_new(o, "oldest_age", ss->oldest_ms < 0 ? json_null() :
                        json_integer((now - ss->oldest_ms) / 1000));
    json_object_set_new(o, "oldest_id", ss->oldest_ms < 0 ? json_null() :
                        json_string(ss->oldest_id));
    json_object_set_new(o, "by_state", states_json(ss->by_state));
    for(j = 0; j < ss->nups; j++)
      json_object_set_new(ups, ss->ups[j].name, states_json(ss->ups[j].n));
    json_object_set_new(o, "by_upstream", ups);
    if(not_live)
      json_object_set_new(o, "live", json_false());
    return ctl_print_json_one(o);
  }
  printf("messages: %lld (%lld Kbytes)\n", ss->messages, (ss->bytes + 1023) / 1024);
  if(ss->oldest_ms >= 0) {
    ctl_age_human((now - ss->oldest_ms) / 1000, age, sizeof(age));
    printf("oldest unfinished: %s (%s)\n", age, ss->oldest_id);
  }
  printf("\n%-24s", "recipients by upstream");
  for(i = 0; i < NSTATES; i++)
    printf(" %9s", rcpt_status_name((enum rcpt_status)i));
  putchar('\n');
  for(j = 0; j < ss->nups; j++) {
    char name[25];
    snprintf(name, sizeof(name), "%s", ss->ups[j].name);
    printf("%-24s", name);
    for(i = 0; i < NSTATES; i++)
      printf(" %9lld", ss->ups[j].n[i]);
    putchar('\n');
  }
  printf("%-24s", "total");
  for(i = 0; i < NSTATES; i++)
    printf(" %9lld", ss->by_state[i]);
  putchar('\n');
  return 0;
}

static int queue_stats(struct ctl *c, const struct queue_sel *q, int not_live)
{
  struct stats_state ss;
  size_t j;
  int result;
  memset(&ss, 0, sizeof(ss));
  ss.sel = q;
  ss.oldest_ms = -1;
  result = store_list(c->st, &q->f, stats_one, &ss);
  if(!result && !ss.oom)
    result = stats_print(c, &ss, not_live);
  else
    result = ss.oom ? EX_OSERR : ctl_store_failed("reading the queue", result);
  for(j = 0; j < ss.nups; j++)
    free(ss.ups[j].name);
  free(ss.ups);
  return result;
}

static int is_change(const char *verb)
{
  return !strcmp(verb, "retry") || !strcmp(verb, "hold") || !strcmp(verb, "release") ||
         !strcmp(verb, "delete");
}

int ctl_queue(struct ctl *c)
{
  struct queue_sel q;
  const char *verb;
  int result, reads;

  result = sel_parse(c, &q);
  if(result)
    return result;
  if(c->nargs < 2)
    return ctl_usage_error("queue needs a command", NULL);
  verb = c->args[1];
  if(!strcmp(verb, "flush")) {
    if(q.filtered || q.all)
      return ctl_usage_error("queue flush takes no filter (it flushes every deferred message)",
                             NULL);
    return ctl_flush(c);
  }
  if(!strcmp(verb, "list") || !strcmp(verb, "stats")) {
    if(c->nargs > 2)
      return ctl_usage_error("too many arguments", c->args[2]);
    if(q.all)
      return ctl_usage_error("--all is for retry, hold, release and delete", NULL);
    result = ctl_config_and_store(c, STORE_OPEN_READONLY);
    if(result)
      return result;
    q.cfg = c->cfg;
    return !strcmp(verb, "list") ? queue_list(c, &q) : queue_stats(c, &q, 0);
  }
  if(strcmp(verb, "show") && strcmp(verb, "cat") && !is_change(verb))
    return ctl_usage_error("unknown queue command", verb);
  if(q.all || q.filtered) {
    /* a bulk action: filters or --all stand for the ID, never both */
    if(!is_change(verb))
      return ctl_usage_error("filters are for list, stats and the bulk actions", verb);
    if(c->nargs > 2)
      return ctl_usage_error("a bulk action takes --all or filters instead of an ID",
                             c->args[2]);
    if(q.all && q.filtered)
      return ctl_usage_error("--all or filters, not both", NULL);
    result = ctl_config_and_store(c, 0);
    if(result)
      return result;
    q.cfg = c->cfg;
    return queue_bulk(c, &q, verb);
  }
  if(c->nargs != 3)
    return ctl_usage_error(c->nargs < 3 ? (is_change(verb) ? "this command needs a queue ID, "
                           "or --all or filters for every message they select"
                           : "this command needs a queue ID") : "too many arguments",
                           c->nargs < 3 ? verb : c->args[3]);
  if(ctl_id_parse(c->args[2], c->id))
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
