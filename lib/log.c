/* Log lines in the Postfix shape ("postern[PID]: QUEUEID: key=value, ..."): syslog when
 * running as a service, stderr in the foreground (with "<N>" priorities when that is the
 * journal). One write per line so threads never mix. */
#include "lib/log.h"
#include "lib/buf.h"
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>
#include <time.h>
#include <sys/stat.h>
#include <sys/time.h>

static const char *log_ident = "postern";
static int log_to_stderr = 1;
static int log_to_journal;
static int log_debug_on;

/* Is stderr the journal (systemd sets JOURNAL_STREAM=DEV:INODE of the stream it connected)?
 * Then the journal adds the time and the identifier itself, and reads the priority from a
 * "<N>" prefix, so lines are written in that shape instead. */
static int stderr_is_journal(void)
{
  const char *v = getenv("JOURNAL_STREAM");
  unsigned long long dev, ino;
  char *end;
  struct stat st;
  if(!v || !*v || fstat(STDERR_FILENO, &st))
    return 0;
  errno = 0;
  dev = strtoull(v, &end, 10);
  if(errno || *end != ':')
    return 0;
  ino = strtoull(end + 1, &end, 10);
  if(errno || *end)
    return 0;
  return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

void log_open(const char *ident, int to_stderr, int debug)
{
  log_ident = ident;
  log_to_stderr = to_stderr;
  log_to_journal = to_stderr && stderr_is_journal();
  log_debug_on = debug;
  if(!to_stderr)
    openlog(ident, LOG_PID | LOG_NDELAY, LOG_MAIL);
}

/* m is what snprintf returned: a line cut to the buffer still ends with its newline */
static void stderr_put(char *out, size_t outsz, int m)
{
  size_t len;
  if(m <= 0)
    return;
  len = (size_t)m < outsz ? (size_t)m : outsz - 1;
  if(len == outsz - 1)
    out[len - 1] = '\n';
  if(write(STDERR_FILENO, out, len) < 0) {
    /* nowhere left to report it */
  }
}

__attribute__((format(printf, 2, 0)))
static void log_vwrite(enum log_level lvl, const char *fmt, va_list ap)
{
  static const char *const prefix[] = { "debug: ", "", "warning: ", "error: ", "fatal: ", "panic: " };
  static const int prio[] = { LOG_DEBUG, LOG_INFO, LOG_WARNING, LOG_ERR, LOG_CRIT, LOG_CRIT };
  char line[2048];
  int n;
  if(lvl == LOG_LVL_DEBUG && !log_debug_on)
    return;
  n = vsnprintf(line, sizeof(line), fmt, ap);
  if(n < 0)
    return;
  if(log_to_journal) {
    char out[2300];
    stderr_put(out, sizeof(out),
               snprintf(out, sizeof(out), "<%d>%s%s\n", prio[lvl], prefix[lvl], line));
  }
  else if(log_to_stderr) {
    char out[2300];
    struct timeval tv;
    struct tm tm;
    char ts[32];
    int m;
    gettimeofday(&tv, NULL);
    localtime_r(&tv.tv_sec, &tm);
    strftime(ts, sizeof(ts), "%b %e %H:%M:%S", &tm);
    m = snprintf(out, sizeof(out), "%s %s[%ld]: %s%s\n", ts, log_ident, (long)getpid(),
                 prefix[lvl], line);
    stderr_put(out, sizeof(out), m);
  }
  else
    syslog(prio[lvl], "%s%s", prefix[lvl], line);
}

void log_msg(enum log_level lvl, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  log_vwrite(lvl, fmt, ap);
  va_end(ap);
}

void log_fatal(const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  log_vwrite(LOG_LVL_FATAL, fmt, ap);
  va_end(ap);
  exit(1);
}

void log_panic(const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  log_vwrite(LOG_LVL_PANIC, fmt, ap);
  va_end(ap);
  abort();
}

const char *log_repr(char *out, size_t outsz, const void *p, size_t n)
{
  struct buf b;
  size_t cap = n > LOG_REPR_CAP ? LOG_REPR_CAP : n;
  buf_init(&b, outsz ? outsz - 1 : 0);
  if(!outsz)
    return out;
  out[0] = '\0';
  /* each input byte may take 4 output bytes; fit what the output can hold */
  while(cap && buf_addrepr(&b, p, n, cap) == BUF_TOO_BIG) {
    buf_reset(&b);
    cap = cap / 2;
  }
  if(b.ptr)
    str_copy(out, outsz, b.ptr);
  buf_free(&b);
  return out;
}
