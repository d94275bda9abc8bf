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

/// Marks the calling thread (not the executor thread) as a helper: until `mp_executor_help_end`,
/// the ready jobs it enqueues do not wake the executor thread. Does nothing unless installed.
void mp_executor_help_begin(void);

/// Runs the ready jobs (main-actor jobs excepted: those are left to, and wake, the executor thread)
/// on this thread until none is left, then ends helping. The global executor is a concurrent one,
/// so its jobs may run on two threads at once; actors still order their own.
void mp_executor_help_end(void);

#endif
