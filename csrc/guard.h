/* Rows read from memory-mapped files can vanish under the reader: another
 * process truncates the file and the next touch of a page raises SIGBUS,
 * which kills the process. The public entry points run each row under a
 * guard: such a fault ends that row with QK_READ_FAULT instead, and Python
 * raises a clear error. A fault outside a guarded call goes to the handler
 * that was there before (Python's faulthandler, or the default). */
#ifndef QUANTKL_GUARD_H
#define QUANTKL_GUARD_H

#include <setjmp.h>

#if defined(__unix__) || defined(__APPLE__)
#define QK_HAVE_GUARD 1
/* The jump target of the guarded call running in this thread, or NULL. */
extern __thread sigjmp_buf *qk_guard_env;

/* Runs CALL; on SIGBUS inside it, runs ON_FAULT instead of dying. The
 * handler is installed with SA_NODEFER, so the mask need not be saved. */
#define QK_GUARDED(CALL, ON_FAULT)                                                             \
    do {                                                                                       \
        sigjmp_buf env_;                                                                       \
        if (sigsetjmp(env_, 0)) {                                                              \
            qk_guard_env = NULL;                                                               \
            ON_FAULT;                                                                          \
        } else {                                                                               \
            qk_guard_env = &env_;                                                              \
            CALL;                                                                              \
            qk_guard_env = NULL;                                                               \
        }                                                                                      \
    } while (0)
#else
#define QK_GUARDED(CALL, ON_FAULT) CALL
#endif

/* Puts the SIGBUS handler first in line (again, if something such as
 * Python's faulthandler took its place since), keeping the one it displaces
 * for faults outside guarded calls; 0 on success. Cheap: called before
 * every kernel call. */
int qk_guard_install(void);

#endif
