/* What every Postern process holding secrets does at start. */
#ifndef POSTERN_PROC_H
#define POSTERN_PROC_H
/* No core dump and no ptrace by other processes of the same user: keys, tokens and passwords
 * (and libcurl's copies of them) must not land in a core file. PR_SET_DUMPABLE is reset by a
 * change of user: call again after dropping root. 0 ok, -1 (errno) if either call failed. */
int proc_no_core_dumps(void);
#endif
