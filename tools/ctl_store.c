/* posternctl store: what the store holds (file and WAL size, rows and oldest row per table,
 * what the next pruning pass removes), pruning by hand, and the one-off rewrite of an older
 * store for incremental vacuum. */
#include "tools/ctl.h"
#include <stdio.h>
#include <string.h>
#include <sysexits.h>
#include <time.h>

static void retention_of(const struct config *cfg, struct store_retention *ret)
{
  ret->retention_ms = cfg->retention * 1000LL;
  ret->capture_ms = cfg->capture_retention * 1000LL;
  ret->records_ms = cfg->records_retention * 1000LL;
}

static long long wall_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static json_t *counts_json(const struct store_prune_counts *p, int dry_run)
{
  json_t *o = json_object();
  if(!o)
    return NULL;
  json_object_set_new(o, "messages", json_integer(p->messages));
  if(!dry_run)
    json_object_set_new(o, "record_texts", json_integer(p->texts));
  json_object_set_new(o, "inbound_messages", json_integer(p->inbound));
  json_object_set_new(o, "inbound_events", json_integer(p->events));
  json_object_set_new(o, "records", json_integer(p->records));
  if(!dry_run)
    json_object_set_new(o, "attachments", json_integer(p->attachments));
  return o;
}

static void counts_print(const char *what, const struct store_prune_counts *p, int dry_run)
{
  printf("%s: %lld message(s)", what, p->messages);
  if(!dry_run)
    printf(" (%lld record text(s))", p->texts);
  printf(", %lld inbound message(s), %lld event(s), %lld record(s)", p->inbound, p->events,
         p->records);
  if(!dry_run)
    printf(", %lld attachment(s)", p->attachments);
  putchar('\n');
}

static int store_stats_cmd(struct ctl *c)
{
  struct store_stats s;
  struct store_prune_counts next;
  struct store_retention ret;
  int i, result = store_stats(c->st, &s);
  if(result)
    return ctl_store_failed("reading the store", result);
  retention_of(c->cfg, &ret);
  result = store_prune(c->st, &ret, wall_ms(), 1, &next);
  if(result)
    return ctl_store_failed("counting what retention removes", result);
  if(c->json) {
    json_t *o = json_object(), *t = json_object();
    if(!o || !t) {
      json_decref(o);
      json_decref(t);
      return EX_OSERR;
    }
    json_object_set_new(o, "file_bytes", json_integer(s.file_bytes));
    json_object_set_new(o, "wal_bytes", json_integer(s.wal_bytes));
    json_object_set_new(o, "free_bytes", json_integer(s.free_bytes));
    for(i = 0; i < STORE_NTABLES; i++) {
      json_t *row = json_object();
      if(!row)
        continue;
      json_object_set_new(row, "rows", json_integer(s.tables[i].rows));
      json_object_set_new(row, "oldest", s.tables[i].oldest_ms < 0 ? json_null()
                                                                    : ctl_jtime(s.tables[i].oldest_ms));
      json_object_set_new(t, s.tables[i].name, row);
    }
    json_object_set_new(o, "tables", t);
    json_object_set_new(o, "next_prune", counts_json(&next, 1));
    return ctl_print_json_one(o);
  }
  printf("file:                  %lld Kbytes (%lld Kbytes free, given back as it is pruned)\n",
         (s.file_bytes + 1023) / 1024, (s.free_bytes + 1023) / 1024);
  printf("write-ahead log:       %lld Kbytes\n", (s.wal_bytes + 1023) / 1024);
  for(i = 0; i < STORE_NTABLES; i++) {
    char t[40] = "";
    if(s.tables[i].oldest_ms >= 0)
      ctl_time_human(s.tables[i].oldest_ms, t, sizeof(t));
    printf("%-22s %10lld rows%s%s\n", s.tables[i].name, s.tables[i].rows, t[0] ? "  oldest " : "",
           t);
  }
  counts_print("next pruning removes", &next, 1);
  return 0;
}

static int store_prune_cmd(struct ctl *c, int dry_run)
{
  struct store_prune_counts p;
  struct store_retention ret;
  int result;
  retention_of(c->cfg, &ret);
  result = store_prune(c->st, &ret, wall_ms(), dry_run, &p);
  if(result)
    return ctl_store_failed("pruning the store", result);
  if(c->json)
    return ctl_print_json_one(counts_json(&p, dry_run));
  counts_print(dry_run ? "would remove" : "removed", &p, dry_run);
  return 0;
}

int ctl_store_command(struct ctl *c)
{
  int dry_run = ctl_opt(c, "--dry-run", NULL) == 1, result;
  const char *cmd;
  char err[256];
  if(ctl_no_options(c))
    return EX_USAGE;
  if(c->nargs != 2)
    return ctl_usage_error("store takes stats, prune [--dry-run] or vacuum", NULL);
  cmd = c->args[1];
  if(strcmp(cmd, "stats") && strcmp(cmd, "prune") && strcmp(cmd, "vacuum"))
    return ctl_usage_error("store takes stats, prune [--dry-run] or vacuum", cmd);
  if(dry_run && strcmp(cmd, "prune"))
    return ctl_usage_error("--dry-run goes with store prune", NULL);
  result = ctl_config(c);
  if(result)
    return result;
  if(!strcmp(cmd, "vacuum")) {
    /* the rewrite holds the write lock for as long as it takes: a running daemon's accepts
     * would wait, then answer 451, for all of it */
    json_t *o = NULL;
    if(ctl_control_call(c, "stats", &o) != CTL_DAEMON_DOWN) {
      json_decref(o);
      fprintf(stderr, "posternctl: postern is running: stop it before store vacuum\n");
      return EX_TEMPFAIL;
    }
  }
  result = ctl_store(c, !strcmp(cmd, "stats") || dry_run ? STORE_OPEN_READONLY : 0);
  if(result)
    return result;
  if(!strcmp(cmd, "stats"))
    return store_stats_cmd(c);
  if(!strcmp(cmd, "prune"))
    return store_prune_cmd(c, dry_run);
  result = store_vacuum(c->st, err, sizeof(err));
  if(result) {
    fprintf(stderr, "posternctl: %s\n", err);
    return EX_TEMPFAIL;
  }
  puts("postern.db rewritten: it shrinks as it is pruned from now on");
  return 0;
}
