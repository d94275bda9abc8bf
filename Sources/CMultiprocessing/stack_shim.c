#define _GNU_SOURCE
#include "stack_shim.h"
#include <pthread.h>

int mp_thread_stack_bounds(uintptr_t *low, uintptr_t *high) {
#if defined(__APPLE__)
    pthread_t self = pthread_self();
    uintptr_t top = (uintptr_t)pthread_get_stackaddr_np(self);
    *high = top;
    *low = top - pthread_get_stacksize_np(self);
    return 0;
#else
    pthread_attr_t attr;
    if (pthread_getattr_np(pthread_self(), &attr) != 0) return -1;
    void *address = 0;
    size_t size = 0;
    int result = pthread_attr_getstack(&attr, &address, &size);
    pthread_attr_destroy(&attr);
    if (result != 0 || address == 0 || size == 0) return -1;
    *low = (uintptr_t)address;
    *high = (uintptr_t)address + size;
    return 0;
#endif
}
