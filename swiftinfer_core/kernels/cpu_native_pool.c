/* The worker threads of the int8 decode kernels (gemv_rows, attend_one; see cpu_native.h).
 *
 * Why not OpenMP: a decode step of the default model opens ~150 parallel regions
 * (30 layers x 5, and the LM head), 10-100 us of work each. libgomp keeps one
 * pool per calling thread; the engine's step thread and the main thread (torch
 * ops at load) each have one, so there are more OpenMP threads than the 2 cores
 * of the project's box, and libgomp then spins only ~100 iterations before a
 * worker sleeps in the kernel: every region paid a futex wake-up, and two threads
 * were no faster than one (the default model's 121 int8 products per token,
 * 134 MB, called from a second thread: 16.1 ms a pass with 2 threads against
 * 9.0 ms from the main thread, with ~120 sleeps per pass; 8.3 ms here; the decode
 * itself: bench/results/cpu_decode_threads.json).
 *
 * Here workers spin between jobs for SPIN_US (a step's jobs follow each other by
 * a few us; between steps Python samples for ~1 ms, after which they sleep on a
 * condition variable), and items are claimed one at a time from a shared counter,
 * so a worker that is late (asleep, descheduled by another process) only takes
 * fewer items: the caller never waits for a worker that has not started an item.
 * Which thread computes an item does not change its result.
 *
 * Process-wide state (one pool, `P` below): the workers live until the process
 * ends. One job runs at a time; a caller that finds the pool busy (another
 * Python thread in a kernel) runs its items itself, serially. */
#define _GNU_SOURCE
#include "cpu_native.h"
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>
#ifdef __AVX2__
#define PAUSE() _mm_pause()
#else
#define PAUSE() ((void)0)
#endif

enum { MAX_WORKERS = 63, SPIN_US = 2000 };

/* word = generation (24 bits) << 40 | nthreads (8) << 32 | items not yet claimed (32).
 * A claim is a compare-and-swap of the whole word, so it always takes an item of
 * the job that is current at that moment; the job's fields are read after the
 * claim, when the job cannot end before that item is done. */
static struct {
    pthread_mutex_t run;   /* held by the caller whose job is in the pool */
    pthread_mutex_t mu;    /* with cv: sleeping workers */
    pthread_cond_t cv;
    int nworkers;          /* started, under `run` */
    _Atomic uint64_t word;
    _Atomic int64_t done;  /* items of the current job finished */
    _Atomic int sleepers;
    int64_t n;             /* the current job: fn(ctx, i) for i < n */
    si_task fn;
    void *ctx;
    uint32_t gen;
} P = {.run = PTHREAD_MUTEX_INITIALIZER, .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static int claimable(uint64_t w, int idx) { return (uint32_t)w > 0 && idx < (int)((w >> 32) & 0xff); }

/* Claim and run items of the current job while there are any; 1 if it ran one. */
static int work(int idx) {
    int ran = 0;
    for (;;) {
        uint64_t w = atomic_load(&P.word);
        if (!claimable(w, idx)) return ran;
        if (!atomic_compare_exchange_weak(&P.word, &w, w - 1)) continue;
        P.fn(P.ctx, P.n - (int64_t)(uint32_t)w);
        atomic_fetch_add(&P.done, 1);
        ran = 1;
    }
}

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec * 1e-3;
}

static void *worker(void *arg) {
    int idx = (int)(intptr_t)arg; /* 1..: the caller is thread 0 */
    double idle_since = now_us();
    for (;;) {
        if (work(idx)) idle_since = now_us();
        for (int i = 0; i < 256 && !claimable(atomic_load(&P.word), idx); i++) PAUSE();
        if (claimable(atomic_load(&P.word), idx) || now_us() - idle_since < SPIN_US) continue;
        pthread_mutex_lock(&P.mu); /* idle for SPIN_US: sleep until a job wants this worker */
        atomic_fetch_add(&P.sleepers, 1);
        while (!claimable(atomic_load(&P.word), idx)) pthread_cond_wait(&P.cv, &P.mu);
        atomic_fetch_sub(&P.sleepers, 1);
        pthread_mutex_unlock(&P.mu);
    }
    return NULL;
}

/* A forked child has the parent's memory but only the forking thread: no workers. */
static void after_fork_child(void) {
    pthread_mutex_init(&P.run, NULL);
    pthread_mutex_init(&P.mu, NULL);
    pthread_cond_init(&P.cv, NULL);
    P.nworkers = 0;
    atomic_store(&P.word, 0);
    atomic_store(&P.sleepers, 0);
}

static void start_workers(int want) { /* under P.run; fewer if the system refuses threads */
    static int registered;
    if (!registered) registered = pthread_atfork(NULL, NULL, after_fork_child) == 0;
    while (P.nworkers < want) {
        pthread_t t;
        pthread_attr_t a;
        pthread_attr_init(&a);
        pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
        int rc = pthread_create(&t, &a, worker, (void *)(intptr_t)(P.nworkers + 1));
        pthread_attr_destroy(&a);
        if (rc != 0) break;
        P.nworkers++;
    }
}

void pool_for(int64_t n, si_task fn, void *ctx, int nthreads) {
    if (nthreads > MAX_WORKERS + 1) nthreads = MAX_WORKERS + 1;
    if (nthreads <= 1 || n <= 1 || n > UINT32_MAX || pthread_mutex_trylock(&P.run) != 0) {
        for (int64_t i = 0; i < n; i++) fn(ctx, i);
        return;
    }
    start_workers(nthreads - 1);
    if (nthreads > P.nworkers + 1) nthreads = P.nworkers + 1;
    P.n = n;
    P.fn = fn;
    P.ctx = ctx;
    atomic_store(&P.done, 0);
    P.gen = (P.gen + 1) & 0xffffff;
    atomic_store(&P.word, (uint64_t)P.gen << 40 | (uint64_t)nthreads << 32 | (uint64_t)n);
    if (atomic_load(&P.sleepers) > 0) { /* seq_cst: a worker counted after the store sees the job itself */
        pthread_mutex_lock(&P.mu);
        pthread_cond_broadcast(&P.cv);
        pthread_mutex_unlock(&P.mu);
    }
    work(0);
    while (atomic_load(&P.done) < n) PAUSE(); /* items claimed by workers, in progress */
    pthread_mutex_unlock(&P.run);
}
