#include "event_shim.h"
#include <sys/epoll.h>
#include <sys/eventfd.h>

int mp_epoll_create(void) { return epoll_create1(EPOLL_CLOEXEC); }

static uint32_t to_epoll(uint32_t events) {
    uint32_t result = EPOLLONESHOT;
    if (events & MP_EVENT_READABLE) result |= EPOLLIN | EPOLLRDHUP;
    if (events & MP_EVENT_WRITABLE) result |= EPOLLOUT;
    return result;
}

int mp_epoll_watch(int epfd, int fd, uint32_t events, int rearm) {
    struct epoll_event event = {.events = to_epoll(events), .data = {.fd = fd}};
    return epoll_ctl(epfd, rearm ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, &event);
}

int mp_epoll_forget(int epfd, int fd) {
    struct epoll_event event = {0};
    return epoll_ctl(epfd, EPOLL_CTL_DEL, fd, &event);
}

int mp_epoll_wait(int epfd, int *fds, uint32_t *events, int max, int timeout_ms) {
    struct epoll_event reports[256];
    if (max > 256) max = 256;
    int count = epoll_wait(epfd, reports, max, timeout_ms);
    for (int i = 0; i < count; i++) {
        uint32_t got = 0;
        if (reports[i].events & (EPOLLIN | EPOLLRDHUP)) got |= MP_EVENT_READABLE;
        if (reports[i].events & EPOLLOUT) got |= MP_EVENT_WRITABLE;
        if (reports[i].events & (EPOLLHUP | EPOLLERR)) got |= MP_EVENT_HANGUP;
        fds[i] = reports[i].data.fd;
        events[i] = got;
    }
    return count;
}

int mp_eventfd(void) { return eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK); }
