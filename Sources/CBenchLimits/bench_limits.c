#include "bench_limits.h"
#include <pthread.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static double seconds(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + (double)now.tv_nsec / 1e9;
}

double mpl_fork_exit_wait_ms(int count) {
    double start = seconds();
    for (int i = 0; i < count; i++) {
        pid_t pid = fork();
        if (pid == 0) _exit(0);
        if (pid < 0) return -1;
        waitpid(pid, NULL, 0);
    }
    return (seconds() - start) / count * 1000;
}

double mpl_spawn_true_ms(int count) {
    char *argv[] = {"true", NULL};
    double start = seconds();
    for (int i = 0; i < count; i++) {
        pid_t pid;
        if (posix_spawn(&pid, "/bin/true", NULL, NULL, argv, environ) != 0) return -1;
        waitpid(pid, NULL, 0);
    }
    return (seconds() - start) / count * 1000;
}

static int write_all(int fd, const char *data, size_t size) {
    while (size > 0) {
        ssize_t done = write(fd, data, size);
        if (done <= 0) return -1;
        data += done;
        size -= (size_t)done;
    }
    return 0;
}

double mpl_socketpair_mb_per_s(int count) {
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, pair) != 0) return -1;
    size_t size = 1 << 20;
    char *buffer = malloc(size);
    memset(buffer, 'x', size);
    pid_t pid = fork();
    if (pid == 0) {
        close(pair[0]);
        size_t left = (size_t)count * size;
        while (left > 0) {
            ssize_t got = read(pair[1], buffer, size);
            if (got <= 0) _exit(1);
            left -= (size_t)got;
        }
        write_all(pair[1], "d", 1);
        _exit(0);
    }
    close(pair[1]);
    double start = seconds();
    for (int i = 0; i < count; i++) write_all(pair[0], buffer, size);
    char done;
    if (read(pair[0], &done, 1) != 1) return -1;
    double elapsed = seconds() - start;
    close(pair[0]);
    waitpid(pid, NULL, 0);
    free(buffer);
    return (double)count * (double)size / 1e6 / elapsed;
}

double mpl_socketpair_roundtrip_us(int count) {
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, pair) != 0) return -1;
    char message[16];
    memset(message, 'x', sizeof message);
    int warmup = 2000;
    pid_t pid = fork();
    if (pid == 0) {
        close(pair[0]);
        char echo[16];
        for (int i = 0; i < warmup + count; i++) {
            if (read(pair[1], echo, sizeof echo) != sizeof echo) _exit(1);
            write_all(pair[1], echo, sizeof echo);
        }
        _exit(0);
    }
    close(pair[1]);
    char reply[16];
    double start = 0;
    for (int i = 0; i < warmup + count; i++) {
        if (i == warmup) start = seconds();
        write_all(pair[0], message, sizeof message);
        if (read(pair[0], reply, sizeof reply) != sizeof reply) return -1;
    }
    double elapsed = seconds() - start;
    close(pair[0]);
    waitpid(pid, NULL, 0);
    return elapsed / count * 1e6;
}

double mpl_pshared_mutex_ops_per_s(int count) {
    pthread_mutex_t *mutex = mmap(NULL, sizeof *mutex, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (mutex == MAP_FAILED) return -1;
    pthread_mutexattr_t attributes;
    pthread_mutexattr_init(&attributes);
    pthread_mutexattr_setpshared(&attributes, PTHREAD_PROCESS_SHARED);
    pthread_mutex_init(mutex, &attributes);
    double start = seconds();
    for (int i = 0; i < count; i++) {
        pthread_mutex_lock(mutex);
        pthread_mutex_unlock(mutex);
    }
    double elapsed = seconds() - start;
    pthread_mutex_destroy(mutex);
    munmap(mutex, sizeof *mutex);
    return count / elapsed;
}
