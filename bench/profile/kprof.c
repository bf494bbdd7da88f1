// kprof: where a CUDA program's GPU time goes, without nsys. Loaded by the CUDA driver as an
// injection library, it records every kernel, memcpy and memset through CUPTI's activity API and,
// at exit, prints per kernel name the calls and total time, plus how busy the GPU was over the
// span the kernels cover.
//
//   CUDA_INJECTION64_PATH=/abs/path/kprof.so KPROF_TAIL_S=8 forge bench sft ...
//
// KPROF_TAIL_S: keep only the records of the last N seconds of GPU activity (the steady state of
// a benchmark, not its setup). KPROF_TOP: how many names to print (default 40). Output goes to
// stderr, or to the file KPROF_OUT. Built by bench/profile/build.sh against CUPTI's headers.
#include <cupti.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    uint64_t start, end;
    const char *name;  // interned by CUPTI for kernels; static strings for copies and sets
} Rec;

static Rec *recs;
static size_t nrecs, caprecs, nbuffers, ndropped;
static void report(void);

static void push(uint64_t start, uint64_t end, const char *name) {
    if (nrecs == caprecs) {
        caprecs = caprecs ? 2 * caprecs : 1 << 16;
        recs = realloc(recs, caprecs * sizeof(Rec));
        if (!recs) abort();
    }
    recs[nrecs++] = (Rec){start, end, name};
}

static void CUPTIAPI requested(uint8_t **buffer, size_t *size, size_t *max_records) {
    // The report must run before the CUDA libraries' own exit handlers tear CUPTI down: handlers
    // run in reverse order of registration, and this is the first call after CUDA started.
    if (nbuffers++ == 0) atexit(report);
    *size = 8 << 20;
    *buffer = aligned_alloc(8, *size);
    *max_records = 0;
}

static const char *memcpy_name(uint8_t kind) {
    switch (kind) {
    case CUPTI_ACTIVITY_MEMCPY_KIND_HTOD: return "[memcpy HtoD]";
    case CUPTI_ACTIVITY_MEMCPY_KIND_DTOH: return "[memcpy DtoH]";
    case CUPTI_ACTIVITY_MEMCPY_KIND_DTOD: return "[memcpy DtoD]";
    default: return "[memcpy other]";
    }
}

static void CUPTIAPI completed(CUcontext ctx, uint32_t stream, uint8_t *buffer, size_t size,
                               size_t valid) {
    (void)size;
    CUpti_Activity *r = NULL;
    while (cuptiActivityGetNextRecord(buffer, valid, &r) == CUPTI_SUCCESS) {
        switch (r->kind) {
        case CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL: {
            CUpti_ActivityKernel10 *k = (CUpti_ActivityKernel10 *)r;
            push(k->start, k->end, k->name);
            break;
        }
        case CUPTI_ACTIVITY_KIND_MEMCPY: {
            CUpti_ActivityMemcpy6 *m = (CUpti_ActivityMemcpy6 *)r;
            push(m->start, m->end, memcpy_name(m->copyKind));
            break;
        }
        case CUPTI_ACTIVITY_KIND_MEMSET: {
            CUpti_ActivityMemset4 *m = (CUpti_ActivityMemset4 *)r;
            push(m->start, m->end, "[memset]");
            break;
        }
        default: break;
        }
    }
    size_t dropped = 0;
    if (cuptiActivityGetNumDroppedRecords(ctx, stream, &dropped) == CUPTI_SUCCESS) ndropped += dropped;
    free(buffer);
}

typedef struct {
    const char *name;
    uint64_t total, calls;
} Agg;

static int by_start(const void *a, const void *b) {
    uint64_t x = ((const Rec *)a)->start, y = ((const Rec *)b)->start;
    return x < y ? -1 : x > y;
}

static int by_name(const void *a, const void *b) {
    return strcmp(((const Rec *)a)->name, ((const Rec *)b)->name);
}

static int by_total(const void *a, const void *b) {
    uint64_t x = ((const Agg *)a)->total, y = ((const Agg *)b)->total;
    return x > y ? -1 : x < y;
}

static void report(void) {
    static int done;
    if (done++) return;
    CUptiResult flushed = cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);
    const char *path = getenv("KPROF_OUT");
    FILE *out = path ? fopen(path, "w") : stderr;
    if (!out) out = stderr;
    if (nrecs == 0) {
        const char *why = "";
        cuptiGetResultString(flushed, &why);
        fprintf(out, "kprof: no GPU activity recorded (%zu buffers; flush: %s)\n", nbuffers, why);
        return;
    }
    if (ndropped) fprintf(out, "kprof: CUPTI dropped %zu records\n", ndropped);
    qsort(recs, nrecs, sizeof(Rec), by_start);
    uint64_t last = 0;
    for (size_t i = 0; i < nrecs; i++)
        if (recs[i].end > last) last = recs[i].end;
    double tail = getenv("KPROF_TAIL_S") ? atof(getenv("KPROF_TAIL_S")) : 0;
    size_t first = 0;
    if (tail > 0)
        while (first < nrecs && recs[first].start + (uint64_t)(tail * 1e9) < last) first++;
    Rec *w = recs + first;
    size_t n = nrecs - first;
    // Busy time: the union of the intervals (concurrent kernels count once).
    uint64_t busy = 0, cur_s = w[0].start, cur_e = w[0].end, sum = 0;
    for (size_t i = 0; i < n; i++) {
        sum += w[i].end - w[i].start;
        if (w[i].start > cur_e) {
            busy += cur_e - cur_s;
            cur_s = w[i].start;
            cur_e = w[i].end;
        } else if (w[i].end > cur_e) {
            cur_e = w[i].end;
        }
    }
    busy += cur_e - cur_s;
    uint64_t span = last - w[0].start;
    fprintf(out, "kprof: %zu records over %.3f s; GPU busy %.3f s (%.1f%%); %.0f launches/s\n", n,
            span / 1e9, busy / 1e9, 100.0 * busy / span, n / (span / 1e9));
    qsort(w, n, sizeof(Rec), by_name);
    Agg *aggs = calloc(n, sizeof(Agg));
    size_t na = 0;
    for (size_t i = 0; i < n; i++) {
        if (na == 0 || strcmp(aggs[na - 1].name, w[i].name) != 0) aggs[na++].name = w[i].name;
        aggs[na - 1].total += w[i].end - w[i].start;
        aggs[na - 1].calls++;
    }
    qsort(aggs, na, sizeof(Agg), by_total);
    int top = getenv("KPROF_TOP") ? atoi(getenv("KPROF_TOP")) : 40;
    fprintf(out, "%8s %6s %9s %9s  %s\n", "ms", "%", "calls", "us/call", "name");
    for (size_t i = 0; i < na && (int)i < top; i++)
        fprintf(out, "%8.1f %6.2f %9lu %9.1f  %.110s\n", aggs[i].total / 1e6,
                100.0 * aggs[i].total / sum, (unsigned long)aggs[i].calls,
                aggs[i].total / 1e3 / aggs[i].calls, aggs[i].name);
    if (out != stderr) fclose(out);
}

// Called by the driver inside cuInit when CUDA_INJECTION64_PATH names this library.
int InitializeInjection(void) {
    if (cuptiActivityRegisterCallbacks(requested, completed) != CUPTI_SUCCESS ||
        cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) != CUPTI_SUCCESS ||
        cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMCPY) != CUPTI_SUCCESS ||
        cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMSET) != CUPTI_SUCCESS) {
        fprintf(stderr, "kprof: CUPTI did not start\n");
        return 0;
    }
    atexit(report);  // for a program that never gets as far as a buffer
    return 1;
}
