/* sigaction, sigjmp_buf and SA_NODEFER are POSIX, not C11. */
#define _XOPEN_SOURCE 700

#include "guard.h"

#ifdef QK_HAVE_GUARD
#include <signal.h>
#include <string.h>

__thread sigjmp_buf *qk_guard_env = NULL;

static struct sigaction previous;

static void on_sigbus(int sig, siginfo_t *info, void *context)
{
    sigjmp_buf *env = qk_guard_env;
    if (env)
        siglongjmp(*env, 1);
    /* Not a guarded read: put the previous handler back and return, so that
     * the faulting access runs again and meets it. */
    (void)sig;
    (void)info;
    (void)context;
    sigaction(SIGBUS, &previous, NULL);
}

int qk_guard_install(void)
{
    struct sigaction current;
    if (sigaction(SIGBUS, NULL, &current) != 0)
        return -1;
    if ((current.sa_flags & SA_SIGINFO) && current.sa_sigaction == on_sigbus)
        return 0; /* still first in line */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    return sigaction(SIGBUS, &sa, &previous);
}
#else
int qk_guard_install(void) { return 0; }
#endif
