#define _GNU_SOURCE
#include "shm_shim.h"
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

/* ---- The tracker process ---- */

/* Receives '+name' and '-name' messages until every copy of the owner's end is closed (the owner
   ended), then unlinks what is still registered. Plain C: it runs before the Swift runtime is used. */
static void tracker_main(int sock, pid_t owner) {
    char **names = NULL;
    size_t count = 0, capacity = 0;
    char message[512];
    for (;;) {
        ssize_t n = recv(sock, message, sizeof message - 1, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 1) break; /* EOF (the owner is gone), an error, or nonsense: clean up */
        message[n] = 0;
        const char *name = message + 1;
        if (message[0] == '+') {
            if (count == capacity) {
                size_t grown = capacity ? capacity * 2 : 16;
                char **larger = realloc(names, grown * sizeof *names);
                if (larger == NULL) continue;
                names = larger;
                capacity = grown;
            }
            char *copy = strdup(name);
            if (copy != NULL) names[count++] = copy;
        } else if (message[0] == '-') {
            for (size_t i = count; i > 0; i--) {
                if (strcmp(names[i - 1], name) == 0) {
                    free(names[i - 1]);
                    names[i - 1] = names[--count];
                    break;
                }
            }
        }
    }
    size_t unlinked = 0;
    for (size_t i = 0; i < count; i++) {
        if (shm_unlink(names[i]) == 0) unlinked++;
    }
    if (unlinked > 0) {
        fprintf(stderr, "multiprocessing: unlinked %zu shared memory segment(s) that process %d created and left behind:",
                unlinked, (int)owner);
        for (size_t i = 0; i < count; i++) fprintf(stderr, " %s", names[i]);
        fprintf(stderr, "\n");
    }
}

/* Runs before the other constructors: a tracker never reaches the program's own code. */
__attribute__((constructor(101))) static void mp_shm_tracker_dispatch(void) {
    const char *value = getenv(MP_SHM_TRACKER_ENV);
    if (value == NULL) return;
    /* "<fd>:<owner pid>": the owner may be gone (and this process reparented) before this runs. */
    int sock = atoi(value);
    const char *colon = strchr(value, ':');
    pid_t owner = colon != NULL ? (pid_t)atoi(colon + 1) : getppid();
    signal(SIGINT, SIG_IGN);
    signal(SIGTERM, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);
    prctl(PR_SET_NAME, "mp-shm-tracker", 0, 0, 0);
    tracker_main(sock, owner);
    _exit(0);
}

/* ---- The owner's side ---- */

static pthread_mutex_t tracker_lock = PTHREAD_MUTEX_INITIALIZER;
static int tracker_fd = -1;
static pid_t tracker_pid = 0;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void before_fork(void) { pthread_mutex_lock(&tracker_lock); }
static void after_fork_parent(void) { pthread_mutex_unlock(&tracker_lock); }
/* A forked child is a new owner: it must not keep the parent's tracker from seeing the parent end,
   and what it creates is its own to clean up, by its own tracker. */
static void after_fork_child(void) {
    if (tracker_fd >= 0) close(tracker_fd);
    tracker_fd = -1;
    tracker_pid = 0;
    pthread_mutex_init(&tracker_lock, NULL);
}
static void register_atfork(void) { pthread_atfork(before_fork, after_fork_parent, after_fork_child); }

/* Starts the tracker; called with tracker_lock held. Returns 0 or an errno value. */
static int start_tracker(void) {
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) != 0) return errno;
    size_t count = 0;
    while (environ != NULL && environ[count] != NULL) count++;
    char **envp = malloc((count + 2) * sizeof *envp);
    if (envp == NULL) { close(pair[0]); close(pair[1]); return ENOMEM; }
    size_t used = 0;
    for (size_t i = 0; i < count; i++) {
        if (strncmp(environ[i], MP_SHM_TRACKER_ENV "=", sizeof MP_SHM_TRACKER_ENV) != 0) envp[used++] = environ[i];
    }
    char setting[64];
    snprintf(setting, sizeof setting, "%s=3:%d", MP_SHM_TRACKER_ENV, (int)getpid());
    envp[used++] = setting;
    envp[used] = NULL;
    char *argv[] = {"mp-shm-tracker", NULL};

    posix_spawn_file_actions_t actions;
    posix_spawnattr_t attr;
    int rc = posix_spawn_file_actions_init(&actions);
    if (rc == 0) rc = posix_spawnattr_init(&attr);
    if (rc == 0) rc = posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    if (rc == 0) rc = posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
    if (rc == 0) rc = posix_spawn_file_actions_adddup2(&actions, pair[1], 3);
    if (rc == 0) rc = posix_spawn_file_actions_addclosefrom_np(&actions, 4);
    sigset_t all, none;
    sigfillset(&all);
    sigdelset(&all, SIGKILL);
    sigdelset(&all, SIGSTOP);
    sigemptyset(&none);
    if (rc == 0) rc = posix_spawnattr_setsigdefault(&attr, &all);
    if (rc == 0) rc = posix_spawnattr_setsigmask(&attr, &none);
    if (rc == 0) rc = posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSID);
    pid_t pid = 0;
    if (rc == 0) rc = posix_spawn(&pid, "/proc/self/exe", &actions, &attr, argv, envp);
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
    free(envp);
    close(pair[1]);
    if (rc != 0) { close(pair[0]); return rc; }
    tracker_fd = pair[0];
    tracker_pid = pid;
    return 0;
}

static int send_message(const char *message, size_t length) {
    for (;;) {
        if (send(tracker_fd, message, length, MSG_NOSIGNAL) >= 0) return 0;
        if (errno != EINTR) return errno;
    }
}

int mp_shm_track(char op, const char *name) {
    size_t length = strlen(name);
    if (length == 0 || length > 300) return EINVAL;
    char message[304];
    message[0] = op;
    memcpy(message + 1, name, length);
    pthread_once(&atfork_once, register_atfork);
    pthread_mutex_lock(&tracker_lock);
    int rc = 0;
    if (tracker_fd < 0) {
        if (op != '+') { pthread_mutex_unlock(&tracker_lock); return 0; }
        rc = start_tracker();
    }
    if (rc == 0) rc = send_message(message, length + 1);
    if (rc == EPIPE || rc == ECONNRESET) {
        /* The tracker died (killed from outside): reap it and start another for what follows. */
        close(tracker_fd);
        waitpid(tracker_pid, NULL, WNOHANG);
        tracker_fd = -1;
        tracker_pid = 0;
        rc = op == '+' ? start_tracker() : 0;
        if (rc == 0 && op == '+') rc = send_message(message, length + 1);
    }
    pthread_mutex_unlock(&tracker_lock);
    return rc;
}

int mp_shm_tracker_pid(void) {
    pthread_mutex_lock(&tracker_lock);
    int pid = (int)tracker_pid;
    pthread_mutex_unlock(&tracker_lock);
    return pid;
}

int mp_shm_open(const char *name, int flags, unsigned int mode) { return shm_open(name, flags | O_CLOEXEC, (mode_t)mode); }

int mp_shm_unlink(const char *name) { return shm_unlink(name); }
