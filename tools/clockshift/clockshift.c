/*
 * clockshift: an LD_PRELOAD shim that shifts a process's wall clock, for clock-skew tests and
 * the drill's nemesis. It adds an offset in milliseconds to CLOCK_REALTIME (and its coarse
 * variant) in clock_gettime, and to gettimeofday and time. Monotonic clocks are untouched, as
 * a wrong wall clock leaves them.
 *
 * The offset is read from the file named by MERIDIAN_CLOCKSHIFT_FILE (one integer, e.g.
 * "2000" or "-500"; missing, empty or malformed means 0) and re-read at most every 100 ms, so
 * a test can change it while the process runs. The kernel's own clock (file times, the
 * database server's clock) stays true: that is what the shifted process is measured against.
 *
 * Build: cc -shared -fPIC -O2 -o libclockshift.so clockshift.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define REREAD_NS (100LL * 1000 * 1000)

typedef int (*clock_gettime_fn)(clockid_t, struct timespec *);

static _Atomic(clock_gettime_fn) real_clock_gettime_ptr;
static _Atomic long long offset_ms;
/* Monotonic time of the last read of the file; 0: never read. */
static _Atomic long long read_at_ns;

static clock_gettime_fn real_clock_gettime(void) {
    clock_gettime_fn real = atomic_load(&real_clock_gettime_ptr);
    if (real == NULL) {
        real = (clock_gettime_fn)dlsym(RTLD_NEXT, "clock_gettime");
        atomic_store(&real_clock_gettime_ptr, real);
    }
    return real;
}

static long long monotonic_ns(void) {
    struct timespec now;
    if (real_clock_gettime()(CLOCK_MONOTONIC, &now) != 0) {
        return 0;
    }
    return (long long)now.tv_sec * 1000000000LL + now.tv_nsec;
}

/* The offset from the file; only plain syscalls, so it is safe from any thread. */
static long long read_offset_ms(void) {
    const char *path = getenv("MERIDIAN_CLOCKSHIFT_FILE");
    if (path == NULL) {
        return 0;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return 0;
    }
    char text[32];
    ssize_t length = read(fd, text, sizeof text - 1);
    close(fd);
    if (length <= 0) {
        return 0;
    }
    text[length] = '\0';
    char *end = NULL;
    long long value = strtoll(text, &end, 10);
    return end == text ? 0 : value;
}

static long long current_offset_ms(void) {
    long long now = monotonic_ns();
    long long last = atomic_load(&read_at_ns);
    if (last == 0 || now - last >= REREAD_NS) {
        /* Several threads may re-read at once; each stores the same value. */
        atomic_store(&offset_ms, read_offset_ms());
        atomic_store(&read_at_ns, now == 0 ? 1 : now);
    }
    return atomic_load(&offset_ms);
}

static void shift(struct timespec *time, long long shift_ms) {
    long long nanos = (long long)time->tv_nsec + (shift_ms % 1000) * 1000000LL;
    time_t seconds = time->tv_sec + (time_t)(shift_ms / 1000);
    if (nanos < 0) {
        nanos += 1000000000LL;
        seconds -= 1;
    } else if (nanos >= 1000000000LL) {
        nanos -= 1000000000LL;
        seconds += 1;
    }
    time->tv_sec = seconds;
    time->tv_nsec = (long)nanos;
}

int clock_gettime(clockid_t clock, struct timespec *time) {
    int result = real_clock_gettime()(clock, time);
    if (result == 0 && (clock == CLOCK_REALTIME || clock == CLOCK_REALTIME_COARSE)) {
        shift(time, current_offset_ms());
    }
    return result;
}

int gettimeofday(struct timeval *restrict tv, void *restrict tz) {
    (void)tz;
    struct timespec now;
    int result = clock_gettime(CLOCK_REALTIME, &now);
    if (result == 0) {
        tv->tv_sec = now.tv_sec;
        tv->tv_usec = now.tv_nsec / 1000;
    }
    return result;
}

time_t time(time_t *out) {
    struct timespec now;
    if (clock_gettime(CLOCK_REALTIME, &now) != 0) {
        return (time_t)-1;
    }
    if (out != NULL) {
        *out = now.tv_sec;
    }
    return now.tv_sec;
}
