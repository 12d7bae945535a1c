/* A bounded pool of reusable threads: work items run on an idle thread, or on a new one while
 * fewer than max exist. Threads that stay idle past a timeout end. Creating and tearing down a
 * thread (stack mapping, TLB shootdowns on exit) per SMTP connection cost more than a session
 * of a small message; this keeps them. */
#ifndef POSTERN_POOL_H
#define POSTERN_POOL_H
#include <stddef.h>

struct pool;

/* max: threads at most; stack: bytes per thread (0 = default); idle_ms: an idle thread ends
 * after this long (0 = never). */
struct pool *pool_new(size_t max, size_t stack, long long idle_ms);
/* Runs fn(arg) on a pool thread. 0, or -1 when no thread is free and none can be started
 * (the caller refuses the work). Never queues more work than threads. */
int pool_run(struct pool *p, void (*fn)(void *), void *arg);
/* Changes max (a reload); running work is not disturbed. */
void pool_set_max(struct pool *p, size_t max);
/* Waits for every running item to finish and every thread to end, then frees p. */
void pool_free(struct pool *p);

#endif
