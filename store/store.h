/* The store: the one interface to Postern's durable state, and the only code that speaks SQL.
 * The SQLite store (the files of store/: WAL, synchronous=FULL) is the embedded default;
 * nothing here names SQLite, so a second backend (PostgreSQL) implements these same functions
 * in its own files.
 *
 * The contract every backend keeps:
 *  - Results are enum store_result: STORE_FULL only when the disk (or quota) is full, so the
 *    listener can answer 452 4.3.1; any other failure is STORE_ERROR (451 4.3.0).
 *  - A write returns once it is committed. store_accept, store_inbound_accept and
 *    store_events_add are durable on return (they acknowledge data to a peer); delivery
 *    results and the correspondence bookkeeping may be lost to a power cut, which only repeats
 *    work (a delivery or a forward happens again: at least once, never lost).
 *  - Every function may be called from any thread. A daemon's writes go through one writer
 *    that commits whatever is pending in one transaction (group commit); one refused write in
 *    a group does not fail the others.
 *  - Callbacks (store_list, store_inbound_list, ...) run without any store lock held, so they
 *    may call the store themselves; strings they get live until they return.
 *  - Times are wall-clock milliseconds since the epoch unless a field says otherwise. */
#ifndef POSTERN_STORE_H
#define POSTERN_STORE_H
#include <stddef.h>
#include "lib/limits.h"

struct store;

/* ---- results and the queue's types --------------------------------------------------------- */

enum store_result {
  STORE_OK = 0,
  STORE_NOTFOUND,
  STORE_FULL,        /* disk full: the listener answers 452 4.3.1 */
  STORE_ERROR,       /* anything else: 451 4.3.0 */
  STORE_DAMAGED,     /* what was stored cannot be read back (the database reports damage):
                        trying again will not help */
};

enum rcpt_status {
  RCPT_QUEUED = 0, RCPT_DEFERRED, RCPT_SENT, RCPT_BOUNCED, RCPT_HELD, RCPT_CAPTURED,
};
const char *rcpt_status_name(enum rcpt_status s);
int rcpt_status_parse(const char *s, enum rcpt_status *out);   /* 0 ok, -1 unknown */

struct store_rcpt {
  unsigned idx;              /* position in the envelope, 0-based; stable key */
  char *address;
  char *orcpt;               /* DSN ORCPT= as given, or NULL */
  char *notify;              /* DSN NOTIFY= as given, or NULL */
  enum rcpt_status status;
  int attempts;
  long long next_attempt_ms; /* wall clock, ms since the epoch */
  long long updated_ms;
  char *last_reply;          /* "250 2.0.0 ..." or NULL */
  char *upstream;            /* the upstream that last handled it, or NULL */
  char *held_by;             /* RCPT_HELD by the relay: the upstream whose login failed;
                                NULL for a hold by hand */
  char *route_to;            /* the upstream it was released to by hand (store_release_to):
                                the routes are not asked; NULL for routed mail */
};

struct store_msg {
  char id[LIM_QUEUE_ID + 1];
  char *sender;              /* "" for the null reverse-path */
  long long created_ms;
  long long size;            /* bytes of the stored message */
  int body_8bit;             /* BODY=8BITMIME or BINARYMIME */
  int smtputf8;
  char *source;              /* "submission" | "mx" | ... */
  char *listener;
  char *client_addr;         /* printable address of the peer */
  char *helo;
  char *auth_user;           /* NULL if not authenticated */
  char *envid, *ret;         /* DSN parameters of MAIL, or NULL */
  char *body_sha256;         /* hex, computed by the store on accept */
  char *reply_token;         /* the token of its per-message Reply-To, or NULL */
  struct store_rcpt *rcpts;
  size_t nrcpts;
};

void store_msg_free(struct store_msg *m);   /* frees members, not m */

/* ---- opening, closing, the whole store ------------------------------------------------------ */

#define STORE_OPEN_WRITER   0x1   /* start the group-commit writer thread (the daemon) */
#define STORE_OPEN_READONLY 0x2   /* tools that only read */
#define STORE_OPEN_CREATE   0x4   /* create data_dir/postern.db and the schema if missing */

/* Opens (and migrates) data_dir/postern.db. err receives a sentence on failure. */
int store_open(const char *data_dir, int flags, struct store **out, char *err, size_t errsz);
void store_close(struct store *st);        /* stops the writer after draining it */

/* An empty durable commit through the writer: is the store writable right now? (/healthz) */
int store_ping(struct store *st);

/* 1 while the store's commits fail (it said so once, and says once when they work again):
 * callers that retry on their own log their failures at debug level meanwhile. */
int store_writes_failing(struct store *st);

/* Checks the database (integrity, orphans); 0 ok, else err says what. */
int store_check(struct store *st, char *err, size_t errsz);

/* ---- the queue: writes ---------------------------------------------------------------------- */

/* Makes a message durable. m->id must be set (store_new_id); m->created_ms, recipients'
 * addresses/orcpt/notify and the envelope fields are stored, recipients start as RCPT_QUEUED
 * due now. Blocks until the group commit that holds it is on disk. */
int store_accept(struct store *st, const struct store_msg *m, const void *body, size_t bodylen);

/* A fresh queue id: 12 upper-case hex digits, 48 random bits (a collision is refused by the
 * primary key and answered 451). */
void store_new_id(char out[LIM_QUEUE_ID + 1]);

/* One recipient's outcome after a delivery attempt (through the writer). */
struct store_rcpt_update {
  unsigned idx;
  enum rcpt_status status;
  int add_attempt;             /* 1: attempts += 1 */
  long long next_attempt_ms;   /* for DEFERRED */
  const char *reply;           /* "250 2.0.0 ..." */
  const char *upstream;
  const char *held_by;         /* RCPT_HELD by the relay: the upstream whose login failed */
};
int store_update(struct store *st, const char *id, const struct store_rcpt_update *u, size_t n);

int store_delete(struct store *st, const char *id);   /* STORE_NOTFOUND if absent */
/* Sets every not-final recipient of a message (QUEUED/DEFERRED/HELD) to status, due now. */
int store_set_pending(struct store *st, const char *id, enum rcpt_status status);

/* Makes every recipient the relay held for upstream (held_by, after a failed login) due now,
 * once a login to it works again; holds by hand stay. *released gets the count (may be NULL). */
int store_release_upstream(struct store *st, const char *upstream, size_t *released);

/* Captured mail sent on after all: every RCPT_CAPTURED recipient of message id becomes queued,
 * due now, for upstream (route_to) whatever the routes say. *released gets the count (may be
 * NULL; 0 when nothing of it was captured). STORE_NOTFOUND without such a message. */
int store_release_to(struct store *st, const char *id, const char *upstream, size_t *released);

/* Makes every deferred recipient due now (held ones stay held); *flushed gets the count. */
int store_flush(struct store *st, size_t *flushed);

/* The sender of this message was told it is delayed (one delay DSN per message). */
int store_delay_warned(struct store *st, const char *id);

/* ---- the queue: reads ----------------------------------------------------------------------- */

/* Ids of messages that have a recipient in QUEUED or DEFERRED due at or before now_ms, oldest
 * first, at most max. Returns the count in *n. */
int store_due(struct store *st, long long now_ms, char (*ids)[LIM_QUEUE_ID + 1], size_t max, size_t *n);
/* Earliest next_attempt_ms of any QUEUED/DEFERRED recipient, or -1 if none. */
int store_next_due(struct store *st, long long *when_ms);

/* Reads one message's envelope and recipients (no body). */
int store_get(struct store *st, const char *id, struct store_msg *out);
/* Reads the stored message bytes; *body is malloc'd. STORE_DAMAGED: they cannot be read. */
int store_body(struct store *st, const char *id, char **body, size_t *len);

/* Filters for listing; NULL / 0 fields do not filter. */
struct store_filter {
  const char *sender_glob;
  const char *recipient_glob;
  int status;                  /* -1 any, else enum rcpt_status: messages with such a recipient */
  long long older_than_ms;     /* created before now - this */
  int newest_first;            /* newest first, else oldest first */
  /* keyset paging: begin after the message (after_ms = its created_ms, after_id) in the
   * order listed; after_id NULL: from the first */
  long long after_ms;
  const char *after_id;
};
typedef int (*store_msg_cb)(void *arg, const struct store_msg *m);  /* non-zero stops */
int store_list(struct store *st, const struct store_filter *f, store_msg_cb cb, void *arg);

/* Messages that wait too long: one step of a walk over the messages created before
 * cutoff_ms, oldest first, from after *at, at most max of them, each with whether it is
 * overdue: EXPIRED (queue_lifetime), a recipient queued, deferred or held by the relay
 * (held_by); UNWARNED (delay_warning), a sender, not warned yet and a recipient queued,
 * deferred or held. The caller moves *at past what it has dealt with, so a message is read
 * as it crosses the cutoff, not at every sweep (the cost follows the traffic, not the queue). */
enum store_overdue { STORE_OVERDUE_EXPIRED, STORE_OVERDUE_UNWARNED };
struct store_overdue_row {
  char id[LIM_QUEUE_ID + 1];
  long long created_ms;
  int overdue;
};
struct store_cursor;
int store_overdue(struct store *st, enum store_overdue which, const struct store_cursor *at,
                  long long cutoff_ms, struct store_overdue_row *rows, size_t max, size_t *n);
/* Waiting recipients (queued, deferred, held) counted by the upstream that last had them
 * (NULL: none has yet), in one read; cb gets each upstream and state with its count. */
typedef int (*store_upstream_count_cb)(void *arg, const char *upstream, enum rcpt_status s,
                                       long long n);
int store_waiting_by_upstream(struct store *st, store_upstream_count_cb cb, void *arg);

/* Calls cb with the name of each upstream that holds recipients (held_by); non-zero stops. */
int store_held_upstreams(struct store *st, int (*cb)(void *arg, const char *upstream), void *arg);

/* The queue at a glance, in one read snapshot. */
struct store_counts {
  long long rcpts[RCPT_CAPTURED + 1];  /* recipients by enum rcpt_status */
  long long messages, bytes;           /* stored messages and their size */
  long long oldest_unfinished_ms;      /* created_ms of the oldest message with a queued,
                                          deferred or held recipient; -1 when none */
};
int store_counts(struct store *st, struct store_counts *out);
/* Only what waits (queued, deferred, held and the oldest of them; messages and bytes -1): its
 * cost follows the queue, not the mail stored, for GET /metrics every scrape. */
int store_counts_pending(struct store *st, struct store_counts *out);

/* ---- inbound: the raw input of the MX listener and the webhooks, and provider events -------- */

/* One received message, SMS or Inbound Parse post, as received. Strings may be NULL. */
struct store_inbound {
  char id[LIM_QUEUE_ID + 1];     /* store_new_id */
  const char *source;            /* "mx" | "inbound-parse" | "sms" */
  long long received_ms;         /* 0: now */
  const char *listener;          /* the SMTP listener, or "http" */
  const char *client_addr;
  const char *helo;
  const char *envelope_from;
  const char *envelope_to;       /* addresses separated by LF (an address never holds one) */
  const char *spf;               /* pass | fail | softfail | neutral | none | temperror |
                                    permerror, or NULL when not checked */
  const char *content_type;      /* of body: "message/rfc822", "multipart/form-data; ..." */
  const char *external_id;       /* the sender's id (Twilio MessageSid): stored once */
  const char *body_sha256;       /* hex, or NULL */
  long long size;                /* filled by store_inbound_list */
};
/* Commits one inbound message (through the group-commit writer: durable on return). A second
 * message with an external_id already stored is not added, and *duplicate (may be NULL) is 1. */
int store_inbound_accept(struct store *st, const struct store_inbound *m, const void *body,
                         size_t bodylen, int *duplicate);

/* One SendGrid event. key is its sg_event_id, or a digest of the event when it has none. */
struct store_event {
  const char *key;
  const char *event, *sg_message_id, *email;   /* may be NULL */
  long long timestamp;                         /* the event's, seconds; 0 when absent */
  const char *payload;                         /* the event object, JSON */
  size_t payloadlen;
};
/* Commits a batch in one transaction; events whose key is already stored are skipped, and
 * *added (may be NULL) gets how many were new. */
int store_events_add(struct store *st, const struct store_event *ev, size_t n, size_t *added);

typedef int (*store_inbound_cb)(void *arg, const struct store_inbound *m);  /* non-zero stops */
/* Every inbound message, oldest first (no bodies). */
int store_inbound_list(struct store *st, store_inbound_cb cb, void *arg);
/* The stored bytes of one inbound message; *body is malloc'd (NUL-terminated for convenience). */
int store_inbound_body(struct store *st, const char *id, char **body, size_t *len);

/* ---- correspondence records -----------------------------------------------------------------
 * A record is made once from one queue message (direction out) or one inbound message
 * (direction in); its JSON is kept as made, status and events change afterwards. */

enum store_origin { STORE_ORIGIN_QUEUE, STORE_ORIGIN_INBOUND };

struct store_blob {
  const char *sha256;            /* hex */
  const void *data;
  size_t size;
};

struct store_record {
  char id[LIM_QUEUE_ID + 1];     /* the id of the message it was made from */
  char *direction;               /* "in" | "out" */
  char *source;                  /* submission | mx | inbound-parse | sms */
  long long received_ms;
  char *message_id, *thread_id, *parent_id;   /* parent_id may be NULL */
  char *status;                  /* outbound: queued, sent, ...; NULL for inbound */
  char *reply_token, *provider_id;            /* may be NULL */
  char *json;                    /* the record as made (a JSON object) */
  long long seq;                 /* the record order (read side) */
  char *dedupe;                  /* with message_id, what a repeat of the message is known by,
                                    or NULL (write side) */
};
void store_record_free(struct store_record *r);   /* frees members, not r */

/* Makes a record, in one transaction with: its addresses (LF-separated, for --address), its
 * attachments (kept once per sha256), a place in the forward queue when forward is set, the
 * recorded mark of the message it was made from (origin) and, for outbound records,
 * relay_done = 0 so the record follows its recipients' states. A record whose id exists is
 * not made again (STORE_OK, *made = 0). */
int store_record_add(struct store *st, enum store_origin origin, const struct store_record *r,
                     const char *addresses, const struct store_blob *att, size_t natt,
                     int forward, int *made);
/* Marks a message that cannot become a record (it is gone, or a DSN we sent) as recorded. */
int store_record_skip(struct store *st, enum store_origin origin, const char *id);
/* Where a walk over unrecorded messages goes on from: zeroed, the oldest. */
struct store_cursor {
  long long ms;
  char id[LIM_QUEUE_ID + 1];
};
/* Ids of messages not yet made into records, oldest first, at most max, after *at (which is
 * moved past them, and back to the start once the walk reaches the end): queue messages that
 * came through a submission listener, or inbound messages. A message that keeps failing is
 * then met once per walk instead of standing in front of the ones behind it. */
int store_unrecorded(struct store *st, enum store_origin origin, struct store_cursor *at,
                     char (*ids)[LIM_QUEUE_ID + 1], size_t max, size_t *n);
/* One inbound message's row (strings malloc'd in *hold, which the caller frees). */
int store_inbound_get(struct store *st, const char *id, struct store_inbound *out, char **hold);

/* The record with that Message-ID (without <>), reply token or provider message id:
 * id and thread id copied out. STORE_NOTFOUND when there is none. */
enum store_record_key { STORE_BY_MESSAGE_ID, STORE_BY_REPLY_TOKEN, STORE_BY_PROVIDER_ID,
                        STORE_BY_ID };
int store_record_find(struct store *st, enum store_record_key key, const char *value,
                      char id[LIM_QUEUE_ID + 1], char thread[LIM_QUEUE_ID + 1]);
int store_record_get(struct store *st, const char *id, struct store_record *out);
/* The first record made since since_ms with that Message-ID (NULL: none) and dedupe key
 * (STORE_NOTFOUND: none). */
int store_record_duplicate(struct store *st, const char *message_id, const char *dedupe,
                           long long since_ms, char id[LIM_QUEUE_ID + 1]);

/* Appends an event to a record's history unless one with the same key is there (so applying
 * it twice changes nothing), and moves its status to status when rank is above the current
 * one. *added (may be NULL) says whether it was new. */
struct store_record_event {
  const char *key;               /* unique per record: "sg:EVENT_KEY", "rcpt:0:sent", ... */
  long long at_ms;               /* when it happened */
  const char *event;             /* delivered, open, bounce, sent, ... */
  const char *recipient;         /* may be NULL */
  const char *detail;            /* a JSON object, or NULL */
  const char *status;            /* the record status it implies, or NULL */
  int rank;
  int forward;                   /* a status it moves goes to the forward queue (record.status) */
};
int store_record_event_add(struct store *st, const char *record_id,
                           const struct store_record_event *e, int *added);
/* The provider's message id (SendGrid X-Message-Id) of an outbound record, once known, and
 * whether its recipients have all reached a final state (no more relay events to follow). */
int store_record_relay(struct store *st, const char *record_id, const char *provider_id,
                       int relay_done);
/* Outbound records whose recipients are still moving (relay_done = 0), in record order after
 * the cursor *after (0: from the start), which moves on; it goes back to 0 at the end, so
 * calls in a row walk all of them however many wait for a long-deferred recipient. */
int store_records_relay_pending(struct store *st, long long *after,
                                char (*ids)[LIM_QUEUE_ID + 1], size_t max, size_t *n);
/* A record's events, oldest first (by the second of at_ms, then the order applied). */
typedef int (*store_record_event_cb)(void *arg, const struct store_record_event *e);
int store_record_events(struct store *st, const char *record_id, store_record_event_cb cb,
                        void *arg);
/* Records in record order; address (any address it carries, case-insensitive) and thread
 * filter when not NULL. */
typedef int (*store_record_cb)(void *arg, const struct store_record *r);
int store_record_list(struct store *st, const char *address, const char *thread,
                      store_record_cb cb, void *arg);

/* SendGrid events not applied to records yet, oldest first (at most max); the callback gets
 * each event (payload NUL-terminated) and returns non-zero to stop. */
typedef int (*store_event_cb)(void *arg, const struct store_event *e, long long received_ms);
int store_events_unapplied(struct store *st, size_t max, store_event_cb cb, void *arg);
int store_event_applied(struct store *st, const char *key);

/* ---- retention: what the store forgets, and when ------------------------------------------- */

/* How long things are kept; 0 keeps them. */
struct store_retention {
  long long retention_ms;   /* a message whose recipients are all final (sent, bounced,
                               captured), whose record is made and forwarded, counted from when
                               it became final; inbound messages once recorded; with it, the
                               text and HTML copies in an outbound record, and applied events
                               (after at least 3 days) */
  long long capture_ms;     /* a message whose recipients were all captured */
  long long records_ms;     /* correspondence records, their events and the attachments no
                               other record uses */
};
struct store_prune_counts {
  long long messages, texts, inbound, events, records, attachments;
  long long walked;        /* messages read to find them */
};
/* Removes what ret allows at now_ms, in small batches through the writer (each a short
 * transaction), then gives freed pages back to the file system; with dry_run, only counts
 * (texts is not counted then). */
int store_prune(struct store *st, const struct store_retention *ret, long long now_ms,
                int dry_run, struct store_prune_counts *out);
/* The same, as the daemon's pruner runs it: between the two cutoffs (where only the later
 * rule applies: by default captured mail past capture_retention) the walk goes on from
 * *window, which it moves, instead of reading weeks of kept mail at every pass; a window
 * zeroed with ms = LLONG_MIN starts at the beginning. */
struct store_cursor;
int store_prune_on(struct store *st, const struct store_retention *ret, long long now_ms,
                   struct store_cursor *window, struct store_prune_counts *out);
/* The daemon's pruner: a thread that calls store_prune_on regularly (a quarter of the shortest
 * retention, between 1 s and 1 min). */
struct store_pruner;
int store_pruner_start(struct store *st, const struct store_retention *ret,
                       struct store_pruner **out);
void store_pruner_set(struct store_pruner *p, const struct store_retention *ret);
void store_pruner_stop(struct store_pruner *p);

#define STORE_NTABLES 8
struct store_stats {
  long long file_bytes, wal_bytes, free_bytes;   /* free: pages a vacuum would give back */
  struct {
    const char *name;
    long long rows;
    long long oldest_ms;           /* -1: none, or the table has no time */
  } tables[STORE_NTABLES];
};
int store_stats(struct store *st, struct store_stats *out);
/* Rewrites the whole file so that it shrinks as it is pruned (an older store, made before
 * incremental vacuum); needs the writer to itself (posternctl, daemon stopped). */
int store_vacuum(struct store *st, char *err, size_t errsz);

/* ---- the forward queue: records owed to forward_url ----------------------------------------- */

/* One entry in the forward queue: a record made, or a status it moved to. */
struct store_forward {
  long long seq;                 /* its place: the order entries joined the queue */
  char id[LIM_QUEUE_ID + 1];
  int attempts;                  /* every attempt */
  int refusals;                  /* attempts the application answered with a refusal */
  long long next_ms;             /* when it is due */
  long long queued_ms;           /* since when it waits (or since the last retry by hand) */
  long long set_aside_ms;        /* 0: in the queue */
  char *last_error;              /* the last answer (set-aside list only), or NULL */
  char *event;                   /* NULL: record.created; "record.status" */
  char *old_status, *status;     /* record.status: the move (old_status may be NULL) */
  char *event_key;               /* record.status: the record event that moved it */
};
void store_forward_free(struct store_forward *f);   /* frees members, not f */
/* The oldest entry still owed to forward_url, not set aside and not behind an entry of its
 * record that is (STORE_NOTFOUND: none); free it with store_forward_free. */
int store_forward_head(struct store *st, struct store_forward *out);
enum store_forward_outcome {
  STORE_FORWARD_RETRY = 0,     /* attempts + 1, due again at next_ms, error kept */
  STORE_FORWARD_DONE = 1,      /* a 2xx came: it leaves the queue */
  STORE_FORWARD_REFUSED,       /* RETRY, and refusals + 1 */
  STORE_FORWARD_SET_ASIDE,     /* attempts and refusals + 1, error kept, and no more tries
                                  until store_forward_retry: the records behind it move on */
};
int store_forward_result(struct store *st, long long seq, enum store_forward_outcome outcome,
                         long long next_ms, const char *error);
/* Puts the set-aside record id (NULL: every one) back in the queue, due now, attempts and age
 * counted afresh; *n (may be NULL) gets how many. Durable on return. */
int store_forward_retry(struct store *st, const char *id, size_t *n);
/* Records in the forward queue, and how many of them are set aside. */
int store_forward_counts(struct store *st, long long *waiting, long long *set_aside);
typedef int (*store_forward_cb)(void *arg, const struct store_forward *e);
/* The set-aside records, in record order; non-zero from cb stops. */
int store_forward_set_aside_list(struct store *st, store_forward_cb cb, void *arg);

#endif
