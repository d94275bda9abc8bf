#ifndef MP_STACK_SHIM_H
#define MP_STACK_SHIM_H

#include <stdint.h>

/* The calling thread's stack: its lowest and highest addresses. Returns 0, or -1 when they are unknown. */
int mp_thread_stack_bounds(uintptr_t *low, uintptr_t *high);

/* An address in the caller's stack frame, for telling how much stack is left. */
static inline uintptr_t mp_stack_address(void) {
    return (uintptr_t)__builtin_frame_address(0);
}

#endif
