/* One line per event, key=value, keyed by queue id; to syslog as a service, stderr in the
 * foreground. Attacker-controlled bytes go through log_repr(). */
#ifndef POSTERN_LOG_H
#define POSTERN_LOG_H
#include <stddef.h>
#include "lib/limits.h"

#define LOG_REPR_CAP LIM_LOG_FIELD

enum log_level { LOG_LVL_DEBUG, LOG_LVL_INFO, LOG_LVL_WARN, LOG_LVL_ERROR, LOG_LVL_FATAL, LOG_LVL_PANIC };

void log_open(const char *ident, int to_stderr, int debug);
void log_msg(enum log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define log_debug(...) log_msg(LOG_LVL_DEBUG, __VA_ARGS__)
#define log_info(...)  log_msg(LOG_LVL_INFO, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_LVL_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_LVL_ERROR, __VA_ARGS__)
/* fatal: the environment is unusable (exit 1); panic: our own bug (abort) */
void log_fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
void log_panic(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

/* Writes p[0..n) escaped and capped into out (always NUL-terminated); returns out. */
const char *log_repr(char *out, size_t outsz, const void *p, size_t n);

#endif
