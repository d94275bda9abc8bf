#ifndef MP_EXECUTOR_SHIM_H
#define MP_EXECUTOR_SHIM_H

/// Routes the jobs the Swift concurrency runtime sends to the global executor (through its enqueue
/// hooks) to a queue that `mp_executor_run` drains on the calling thread, so a child's async task
/// runs on its main thread with no worker threads. (The 6.3 runtime times `Task.sleep` on Dispatch
/// without the delay hooks, and sends main-actor jobs to Dispatch's main queue; the delay and main
/// hooks are installed anyway, for runtimes that use them.) Call once, before the first task.
void mp_executor_install(void);

/// Runs queued jobs on this thread (sleeping until the next delayed job is due) until `*done`
/// becomes nonzero after a job. Jobs may be enqueued from any thread.
void mp_executor_run(const volatile int *done);

#endif
