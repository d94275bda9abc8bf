#ifndef CMPI_H
#define CMPI_H

#include <mpi.h>
#ifdef __linux__
#include <sys/prctl.h>
/* How late the calling thread's timed waits may end (Linux's timer slack, 50 us by default), so that a
   thread polling in short naps wakes when asked. 0 where there is no such setting. */
static inline int cmpi_set_timer_slack(unsigned long nanoseconds) {
#ifdef __linux__
    return prctl(PR_SET_TIMERSLACK, nanoseconds, 0, 0, 0);
#else
    (void)nanoseconds;
    return 0;
#endif
}

#endif

/* Open MPI's handles are macros over the addresses of global objects, which Swift does not import;
   these accessors give them to Swift. Under MPICH they are integers, and the same accessors work. */
static inline MPI_Comm cmpi_comm_world(void) { return MPI_COMM_WORLD; }
static inline MPI_Comm cmpi_comm_null(void) { return MPI_COMM_NULL; }
static inline MPI_Comm cmpi_comm_self(void) { return MPI_COMM_SELF; }
static inline char **cmpi_argv_null(void) { return MPI_ARGV_NULL; }
static inline MPI_Datatype cmpi_byte(void) { return MPI_BYTE; }
static inline MPI_Info cmpi_info_null(void) { return MPI_INFO_NULL; }
static inline MPI_Errhandler cmpi_errors_return(void) { return MPI_ERRORS_RETURN; }
static inline MPI_Status *cmpi_status_ignore(void) { return MPI_STATUS_IGNORE; }
static inline int *cmpi_errcodes_ignore(void) { return MPI_ERRCODES_IGNORE; }
static inline int cmpi_is_null_comm(MPI_Comm comm) { return comm == MPI_COMM_NULL; }
static inline int cmpi_status_source(const MPI_Status *status) { return status->MPI_SOURCE; }
static inline int cmpi_status_tag(const MPI_Status *status) { return status->MPI_TAG; }

#endif
