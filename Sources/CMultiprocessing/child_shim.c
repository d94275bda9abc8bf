#include "child_shim.h"
#include <errno.h>
#include <signal.h>
#include <stdio.h>
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

/* The parts of the crash signals' message (mp_crash_report_install): who, when, and the hint. The
   handler puts the message together, so that a child does not build one string per signal at start. */
static char *mp_crash_who;
static const char *mp_crash_when;
static char *mp_crash_hint;

static const char *mp_crash_signal_name(int sig) {
    switch (sig) {
    case SIGSEGV: return "SIGSEGV";
    case SIGBUS: return "SIGBUS";
    case SIGILL: return "SIGILL";
    case SIGTRAP: return "SIGTRAP";
    case SIGABRT: return "SIGABRT";
    case SIGFPE: return "SIGFPE";
    default: return NULL;
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
    } else if (mp_crash_who != NULL && mp_crash_signal_name(sig) != NULL) {
        mp_write_text(2, mp_crash_who);
        mp_write_text(2, " was killed by ");
        mp_write_text(2, mp_crash_signal_name(sig));
        mp_write_text(2, " ");
        mp_write_text(2, mp_crash_when);
        mp_write_text(2, ".\n");
        if (mp_crash_hint != NULL && (sig == SIGSEGV || sig == SIGBUS)) {
            mp_write_text(2, mp_crash_hint);
            mp_write_text(2, "\n");
        }
    }
    /* The disposition was reset on entry (SA_RESETHAND) and the signal is not blocked (SA_NODEFER):
       raising it again ends the process with it, so the parent sees the real signal. */
    raise(sig);
}

/* Installs the crash handler for `sig`, on an alternate stack (allocated once). */
static int mp_crash_handler_install(int sig) {
    if (mp_alternate_stack == NULL) {
        size_t size = 64 * 1024;
        mp_alternate_stack = malloc(size);
        if (mp_alternate_stack != NULL) {
            stack_t stack = {.ss_sp = mp_alternate_stack, .ss_size = size, .ss_flags = 0};
            sigaltstack(&stack, NULL);
        }
    }
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = mp_crash_handler;
    action.sa_flags = SA_RESETHAND | SA_NODEFER | SA_ONSTACK;
    sigemptyset(&action.sa_mask);
    return sigaction(sig, &action, NULL);
}

int mp_crash_report_set(int sig, const char *message) {
    if (sig <= 0 || sig >= 65) { errno = EINVAL; return -1; }
    char *copy = message != NULL ? strdup(message) : NULL;
    char *old = mp_crash_messages[sig];
    mp_crash_messages[sig] = copy;
    free(old);
    return mp_crash_handler_install(sig);
}

int mp_crash_report_install(const char *process, const char *task, int running, const char *hint) {
    char pid[24];
    int pid_length = snprintf(pid, sizeof pid, "%d", (int)getpid());
    size_t length = strlen("A child process") + strlen("Process ") + (process != NULL ? strlen(process) : 0)
        + strlen(" (pid )") + (size_t)pid_length + strlen(", task ") + (task != NULL ? strlen(task) : 0) + 1;
    char *who = malloc(length);
    if (who == NULL) { errno = ENOMEM; return -1; }
    if (process != NULL) {
        snprintf(who, length, "Process %s (pid %s%s%s)", process, pid, task != NULL ? ", task " : "", task != NULL ? task : "");
    } else {
        snprintf(who, length, "A child process (pid %s%s%s)", pid, task != NULL ? ", task " : "", task != NULL ? task : "");
    }
    char *old_who = mp_crash_who;
    char *old_hint = mp_crash_hint;
    mp_crash_who = who;
    mp_crash_when = running ? "while running its task" : "before its task started";
    mp_crash_hint = hint != NULL ? strdup(hint) : NULL;
    free(old_who);
    free(old_hint);
    static const int signals[] = {SIGSEGV, SIGBUS, SIGILL, SIGTRAP, SIGABRT, SIGFPE};
    int result = 0;
    for (size_t i = 0; i < sizeof signals / sizeof signals[0]; i++) {
        if (mp_crash_handler_install(signals[i]) != 0) result = -1;
    }
    return result;
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
