#include "lib/proc.h"
#include <sys/prctl.h>
#include <sys/resource.h>

int proc_no_core_dumps(void)
{
  struct rlimit none = { 0, 0 };
  int result = 0;
  if(setrlimit(RLIMIT_CORE, &none))
    result = -1;
  if(prctl(PR_SET_DUMPABLE, 0, 0, 0, 0))
    result = -1;
  return result;
}
