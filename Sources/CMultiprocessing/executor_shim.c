#include "executor_shim.h"
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

/* The runtime's hooks and entry points (Swift calling convention; the job is opaque here). */
typedef struct { void *identity; uintptr_t implementation; } mp_executor_ref;
typedef __attribute__((swiftcall)) void (*mp_enqueue_original)(void *job);
typedef __attribute__((swiftcall)) void (*mp_enqueue_delay_original)(unsigned long long delay, void *job);
typedef __attribute__((swiftcall)) void (*mp_enqueue_deadline_original)(
    long long sec, long long nsec, long long tsec, long long tnsec, int clock, void *job);

extern __attribute__((swiftcall)) void (*swift_task_enqueueGlobal_hook)(void *job, mp_enqueue_original original);
extern __attribute__((swiftcall)) void (*swift_task_enqueueGlobalWithDelay_hook)(
    unsigned long long delay, void *job, mp_enqueue_delay_original original);
extern __attribute__((swiftcall)) void (*swift_task_enqueueGlobalWithDeadline_hook)(
    long long sec, long long nsec, long long tsec, long long tnsec, int clock, void *job,
    mp_enqueue_deadline_original original);
extern __attribute__((swiftcall)) void (*swift_task_enqueueMainExecutor_hook)(void *job, mp_enqueue_original original);
extern __attribute__((swiftcall)) void swift_job_run(void *job, mp_executor_ref executor);
extern __attribute__((swiftcall)) void swift_get_time(long long *seconds, long long *nanoseconds, int clock);

struct mp_job {
    void *job;
    uint64_t due; /* CLOCK_MONOTONIC nanoseconds; 0 for now */
    int main_only; /* a main-actor job: only the executor thread runs it */
    struct mp_job *next;
};

static int mp_installed;
/* Set on a thread between mp_executor_help_begin and the end of mp_executor_help_end: the ready
   jobs it enqueues meanwhile are its to run, so they wake nobody. */
static _Thread_local int mp_helping;

static pthread_mutex_t mp_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t mp_wake;
static struct mp_job *mp_ready_head, *mp_ready_tail; /* FIFO */
static struct mp_job *mp_timers;                      /* sorted by due */

static uint64_t mp_now(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec;
}

static void mp_push(void *job, uint64_t due, int main_only) {
    struct mp_job *node = malloc(sizeof *node);
    if (node == NULL) abort();
    node->job = job;
    node->due = due;
    node->main_only = main_only;
    node->next = NULL;
    pthread_mutex_lock(&mp_lock);
    if (due == 0) {
        if (mp_ready_tail) mp_ready_tail->next = node; else mp_ready_head = node;
        mp_ready_tail = node;
    } else {
        struct mp_job **slot = &mp_timers;
        while (*slot && (*slot)->due <= due) slot = &(*slot)->next;
        node->next = *slot;
        *slot = node;
    }
    if (!(mp_helping && due == 0 && !main_only)) pthread_cond_signal(&mp_wake);
    pthread_mutex_unlock(&mp_lock);
}

static __attribute__((swiftcall)) void mp_enqueue(void *job, mp_enqueue_original original) {
    (void)original;
    mp_push(job, 0, 0);
}

static __attribute__((swiftcall)) void mp_enqueue_main(void *job, mp_enqueue_original original) {
    (void)original;
    mp_push(job, 0, 1);
}

static __attribute__((swiftcall)) void mp_enqueue_delay(unsigned long long delay, void *job, mp_enqueue_delay_original original) {
    (void)original;
    mp_push(job, mp_now() + delay + (delay == 0 ? 1 : 0), 0);
}

static __attribute__((swiftcall)) void mp_enqueue_deadline(
    long long sec, long long nsec, long long tsec, long long tnsec, int clock, void *job,
    mp_enqueue_deadline_original original) {
    (void)tsec; (void)tnsec; (void)original;
    long long now_sec = 0, now_nsec = 0;
    swift_get_time(&now_sec, &now_nsec, clock);
    long long left = (sec - now_sec) * 1000000000LL + (nsec - now_nsec);
    mp_push(job, mp_now() + (left > 0 ? (uint64_t)left : 1), 0);
}

void mp_executor_install(void) {
    pthread_condattr_t attributes;
    pthread_condattr_init(&attributes);
    pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC);
    pthread_cond_init(&mp_wake, &attributes);
    pthread_condattr_destroy(&attributes);
    swift_task_enqueueGlobal_hook = mp_enqueue;
    swift_task_enqueueGlobalWithDelay_hook = mp_enqueue_delay;
    swift_task_enqueueGlobalWithDeadline_hook = mp_enqueue_deadline;
    swift_task_enqueueMainExecutor_hook = mp_enqueue_main;
    mp_installed = 1;
}

/* Takes the first ready job off the queue and runs it as a generic job; called and returns with mp_lock held. */
static void mp_run_head_locked(void) {
    mp_executor_ref generic = {0, 0};
    struct mp_job *node = mp_ready_head;
    mp_ready_head = node->next;
    if (mp_ready_head == NULL) mp_ready_tail = NULL;
    pthread_mutex_unlock(&mp_lock);
    void *job = node->job;
    free(node);
    swift_job_run(job, generic);
    pthread_mutex_lock(&mp_lock);
}

void mp_executor_help_begin(void) {
    if (mp_installed) mp_helping = 1;
}

void mp_executor_help_end(void) {
    if (!mp_helping) return;
    pthread_mutex_lock(&mp_lock);
    while (mp_ready_head != NULL) {
        if (mp_ready_head->main_only) {
            pthread_cond_signal(&mp_wake);
            break;
        }
        mp_run_head_locked();
    }
    mp_helping = 0;
    pthread_mutex_unlock(&mp_lock);
}

void mp_executor_run(const volatile int *done) {
    pthread_mutex_lock(&mp_lock);
    while (!*done) {
        uint64_t now = mp_now();
        while (mp_timers && mp_timers->due <= now) {
            struct mp_job *due = mp_timers;
            mp_timers = due->next;
            due->next = NULL;
            if (mp_ready_tail) mp_ready_tail->next = due; else mp_ready_head = due;
            mp_ready_tail = due;
        }
        if (mp_ready_head == NULL) {
            if (mp_timers) {
                struct timespec until = {(time_t)(mp_timers->due / 1000000000u), (long)(mp_timers->due % 1000000000u)};
                pthread_cond_timedwait(&mp_wake, &mp_lock, &until);
            } else {
                pthread_cond_wait(&mp_wake, &mp_lock);
            }
            continue;
        }
        mp_run_head_locked();
    }
    pthread_mutex_unlock(&mp_lock);
}
