/* Unit tests of lib/pool.c: threads are reused, never more than max, refusal when full,
 * idle threads end, and pool_free waits for running work. */
#include "lib/pool.h"
#include "tests/unit/unit.h"
#include <pthread.h>
#include <unistd.h>
#include <time.h>

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static int running, peak, done_count;
static pthread_t seen[64];
static int nseen;

static void work(void *arg)
{
  long ms = (long)arg;
  pthread_t me = pthread_self();
  int i, known = 0;
  struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
  pthread_mutex_lock(&mu);
  running++;
  if(running > peak)
    peak = running;
  for(i = 0; i < nseen; i++)
    if(pthread_equal(seen[i], me))
      known = 1;
  if(!known && nseen < 64)
    seen[nseen++] = me;
  pthread_mutex_unlock(&mu);
  nanosleep(&ts, NULL);
  pthread_mutex_lock(&mu);
  running--;
  done_count++;
  pthread_mutex_unlock(&mu);
}

static void reset(void)
{
  running = peak = done_count = nseen = 0;
}

static void test_reuse(void)
{
  /* a bound far above what sequential work needs, so reuse is not the bound's doing */
  struct pool *p = pool_new(50, 0, 0);
  int i, d;
  reset();
  for(i = 0; i < 50; i++) {
    CHECK_EQ_INT(pool_run(p, work, (void *)0L), 0);
    do {                        /* each job ends before the next is handed over */
      usleep(1000);
      pthread_mutex_lock(&mu);
      d = done_count;
      pthread_mutex_unlock(&mu);
    } while(d <= i);
    usleep(5000);               /* and its thread has had time to go back to idle */
  }
  pool_free(p);
  CHECK_EQ_INT(done_count, 50);
  /* sequential work keeps reusing a thread: a loaded machine may now and then be slower to
   * put one back than the next job is to come, but never for most of the 50 */
  CHECK(nseen <= 5);
}

static void test_bounded_and_refuses(void)
{
  struct pool *p = pool_new(3, 256 * 1024, 0);
  int i, refused = 0;
  reset();
  for(i = 0; i < 10; i++)
    if(pool_run(p, work, (void *)200L))
      refused++;
  CHECK_EQ_INT(refused, 7);
  pool_free(p);
  CHECK_EQ_INT(done_count, 3);
  CHECK(peak <= 3);
}

static int task_count(void)
{
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  int n = -1;
  while(f && fgets(line, sizeof(line), f))
    if(!strncmp(line, "Threads:", 8))
      n = (int)strtol(line + 8, NULL, 10);
  if(f)
    fclose(f);
  return n;
}

static void test_idle_threads_end(void)
{
  struct pool *p = pool_new(2, 0, 50);
  reset();
  CHECK_EQ_INT(pool_run(p, work, (void *)0L), 0);
  usleep(20000);
  CHECK_EQ_INT(task_count(), 2);
  usleep(300000);
  CHECK_EQ_INT(task_count(), 1); /* the idle thread has ended */
  CHECK_EQ_INT(pool_run(p, work, (void *)0L), 0);
  pool_free(p);
  CHECK_EQ_INT(done_count, 2);
}

static const struct unit_case cases[] = {
  { "reuse", test_reuse },
  { "bounded_and_refuses", test_bounded_and_refuses },
  { "idle_threads_end", test_idle_threads_end },
};
UNIT_MAIN(cases)
