#include "child_shim.h"
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

/* Written before the handlers are installed, read only by them: async-signal-safe by construction. */
static char *mp_crash_messages[65];
static char *mp_memory_message;
static int mp_memory_report_fd = -1;
static void *mp_alternate_stack;

static void mp_write_text(int fd, const char *text) {
    size_t length = strlen(text);
    while (length > 0) {
        ssize_t written = write(fd, text, length);
        if (written < 0 && errno == EINTR) continue;
        if (written <= 0) return;
        text += written;
        length -= (size_t)written;
    }
}

static void mp_crash_handler(int sig) {
    int saved = errno;
    if (saved == ENOMEM && mp_memory_message != NULL) {
        mp_write_text(2, mp_memory_message);
        if (mp_memory_report_fd >= 0) {
            char mark = 'm';
            ssize_t ignored = write(mp_memory_report_fd, &mark, 1);
            (void)ignored;
        }
    } else if (sig > 0 && sig < 65 && mp_crash_messages[sig] != NULL) {
        mp_write_text(2, mp_crash_messages[sig]);
    }
    /* The disposition was reset on entry (SA_RESETHAND) and the signal is not blocked (SA_NODEFER):
       raising it again ends the process with it, so the parent sees the real signal. */
    raise(sig);
}

int mp_crash_report_set(int sig, const char *message) {
    if (sig <= 0 || sig >= 65) { errno = EINVAL; return -1; }
    if (mp_alternate_stack == NULL) {
        size_t size = 64 * 1024;
        mp_alternate_stack = malloc(size);
        if (mp_alternate_stack != NULL) {
            stack_t stack = {.ss_sp = mp_alternate_stack, .ss_size = size, .ss_flags = 0};
            sigaltstack(&stack, NULL);
        }
    }
    char *copy = message != NULL ? strdup(message) : NULL;
    char *old = mp_crash_messages[sig];
    mp_crash_messages[sig] = copy;
    free(old);
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = mp_crash_handler;
    action.sa_flags = SA_RESETHAND | SA_NODEFER | SA_ONSTACK;
    sigemptyset(&action.sa_mask);
    return sigaction(sig, &action, NULL);
}

void mp_crash_report_memory(const char *message, int report_fd) {
    char *old = mp_memory_message;
    mp_memory_message = message != NULL ? strdup(message) : NULL;
    free(old);
    mp_memory_report_fd = report_fd;
}

int mp_set_resource_limit(int resource, long soft, long hard) {
    struct rlimit limit;
    if (getrlimit(resource, &limit) != 0) return -1;
    if (soft >= 0) limit.rlim_cur = (rlim_t)soft;
    /* An unprivileged process cannot raise its hard limit: a wish above it gets the hard limit. */
    if (hard >= 0 && (limit.rlim_max == RLIM_INFINITY || (rlim_t)hard < limit.rlim_max)) limit.rlim_max = (rlim_t)hard;
    if (limit.rlim_max != RLIM_INFINITY && limit.rlim_cur > limit.rlim_max) limit.rlim_cur = limit.rlim_max;
    return setrlimit(resource, &limit);
}
