// pbw_cuda_trace.cu: PBW_PROFILE=gpu, the time each op keeps the GPU busy, from CUPTI's
// activity records (kernels, copies, memsets with their device timestamps), without
// synchronizing at op boundaries. Each op pushes an external correlation id as it begins; every
// launch made inside it (ours, cuBLAS's, cuDNN's) carries that id, so library kernels are booked
// to the op that called them. libcupti is opened at run time (dlopen), so pbw needs it only when
// this profiler is asked for.
#include <cuda_runtime.h>
#include <cupti.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <mutex>
#include <string>
#include <map>
#include <unordered_map>
#include <vector>

#include "cuda/pbw_cuda.h"
#include "cuda/pbw_cuda_internal.cuh"

namespace {

struct api {
    CUptiResult (*enable)(CUpti_ActivityKind);
    CUptiResult (*register_callbacks)(CUpti_BuffersCallbackRequestFunc,
                                      CUpti_BuffersCallbackCompleteFunc);
    CUptiResult (*next_record)(uint8_t *, size_t, CUpti_Activity **);
    CUptiResult (*flush_all)(uint32_t);
    CUptiResult (*push)(CUpti_ExternalCorrelationKind, uint64_t);
    CUptiResult (*pop)(CUpti_ExternalCorrelationKind, uint64_t *);
    CUptiResult (*timestamp)(uint64_t *);
};

struct span {
    uint64_t start, end;
    uint32_t corr;
    int name; // index into g_names (kernels), -1 copy, -2 memset
    int kind; // copies: CUpti_ActivityMemcpyKind
    uint32_t stream;
};

api g_api;
int g_state; // 0 not tried, 1 on, -1 failed
std::mutex g_mu;
std::vector<span> g_spans;                        // completed activity since the last clear
std::unordered_map<uint32_t, uint64_t> g_ext;     // correlation id -> op id
std::vector<std::string> g_names;                 // kernel names
std::unordered_map<std::string, int> g_name_ix;
std::vector<std::pair<const char *, int>> g_ops;  // op id - 1 -> (name, backward)
int g_pushed;
uint64_t g_t0;      // device timestamp of the last clear
double g_wall0;     // host time of the last clear

double wall_now() {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

void CUPTIAPI buffer_requested(uint8_t **buf, size_t *size, size_t *max_records) {
    const size_t n = 8u << 20;
    *buf = (uint8_t *)aligned_alloc(8, n);
    *size = *buf ? n : 0;
    *max_records = 0;
}

int kernel_name(const char *s) {
    std::string k = s ? s : "?";
    auto it = g_name_ix.find(k);
    if (it != g_name_ix.end()) return it->second;
    g_names.push_back(k);
    g_name_ix.emplace(k, (int)g_names.size() - 1);
    return (int)g_names.size() - 1;
}

void CUPTIAPI buffer_completed(CUcontext, uint32_t, uint8_t *buf, size_t, size_t valid) {
    std::lock_guard<std::mutex> lk(g_mu);
    CUpti_Activity *r = nullptr;
    while (g_api.next_record(buf, valid, &r) == CUPTI_SUCCESS) {
        switch (r->kind) {
        case CUPTI_ACTIVITY_KIND_KERNEL:
        case CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL: {
            auto *k = (CUpti_ActivityKernel10 *)r;
            g_spans.push_back({k->start, k->end, k->correlationId, kernel_name(k->name), 0, k->streamId});
            break;
        }
        case CUPTI_ACTIVITY_KIND_MEMCPY: {
            auto *m = (CUpti_ActivityMemcpy6 *)r;
            g_spans.push_back({m->start, m->end, m->correlationId, -1, (int)m->copyKind, m->streamId});
            break;
        }
        case CUPTI_ACTIVITY_KIND_MEMSET: {
            auto *m = (CUpti_ActivityMemset4 *)r;
            g_spans.push_back({m->start, m->end, m->correlationId, -2, 0, m->streamId});
            break;
        }
        case CUPTI_ACTIVITY_KIND_EXTERNAL_CORRELATION: {
            auto *e = (CUpti_ActivityExternalCorrelation *)r;
            if (e->externalKind == CUPTI_EXTERNAL_CORRELATION_KIND_CUSTOM0)
                g_ext[e->correlationId] = e->externalId;
            break;
        }
        default:
            break;
        }
    }
    free(buf);
}

bool start() {
    if (g_state) return g_state > 0;
    g_state = -1;
    static const char *const names[] = {"libcupti.so", "libcupti.so.13", "libcupti.so.12"};
    void *h = pbw_dlopen_first(names, 3);
    if (!h) {
        fprintf(stderr, "pbw: PBW_PROFILE=gpu needs libcupti (CUDA's profiling library) on the "
                        "library path: %s\n", dlerror());
        return false;
    }
    api a;
    if (!pbw_dlsym(h, "cuptiActivityEnable", a.enable) ||
        !pbw_dlsym(h, "cuptiActivityRegisterCallbacks", a.register_callbacks) ||
        !pbw_dlsym(h, "cuptiActivityGetNextRecord", a.next_record) ||
        !pbw_dlsym(h, "cuptiActivityFlushAll", a.flush_all) ||
        !pbw_dlsym(h, "cuptiActivityPushExternalCorrelationId", a.push) ||
        !pbw_dlsym(h, "cuptiActivityPopExternalCorrelationId", a.pop) ||
        !pbw_dlsym(h, "cuptiGetTimestamp", a.timestamp)) {
        fprintf(stderr, "pbw: PBW_PROFILE=gpu: libcupti lacks a function it needs\n");
        return false;
    }
    g_api = a;
    if (a.register_callbacks(buffer_requested, buffer_completed) != CUPTI_SUCCESS ||
        a.enable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) != CUPTI_SUCCESS ||
        a.enable(CUPTI_ACTIVITY_KIND_MEMCPY) != CUPTI_SUCCESS ||
        a.enable(CUPTI_ACTIVITY_KIND_MEMSET) != CUPTI_SUCCESS ||
        a.enable(CUPTI_ACTIVITY_KIND_EXTERNAL_CORRELATION) != CUPTI_SUCCESS ||
        // external correlation records come with the API calls' own records
        a.enable(CUPTI_ACTIVITY_KIND_RUNTIME) != CUPTI_SUCCESS ||
        a.enable(CUPTI_ACTIVITY_KIND_DRIVER) != CUPTI_SUCCESS) {
        fprintf(stderr, "pbw: PBW_PROFILE=gpu: CUPTI refused activity tracing\n");
        return false;
    }
    g_state = 1;
    a.timestamp(&g_t0);
    g_wall0 = wall_now();
    return true;
}

// Waits for the device, then has CUPTI hand over every completed record.
void drain() {
    cudaDeviceSynchronize();
    g_api.flush_all(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);
}

struct row {
    double ns = 0;
    long n = 0;
};

// The op whose launch a span is: its index in g_ops plus 1, or 0 for none (outside ops).
size_t op_of(const span &x) {
    auto it = g_ext.find(x.corr);
    const size_t op = it == g_ext.end() ? 0 : (size_t)it->second;
    return op > g_ops.size() ? 0 : op;
}
// Op i's name and pass (op_of's numbering), none for 0.
const char *op_name(size_t i, const char *none) { return i ? g_ops[i - 1].first : none; }
const char *op_pass(size_t i, const char *none) {
    return i ? (g_ops[i - 1].second ? "backward" : "forward") : none;
}

// PBW_PROFILE_SPANS=FILE: every span of the report appended to FILE as tab-separated rows
// (start and end in ns from the report's first span, CUPTI's stream id, op, pass, kernel), one
// "# report" line before each report's rows: a timeline to read the critical path from
// (bench/spans.py). Under CUDA graphs the ops are "(outside ops)".
void dump_spans(const std::vector<span> &s) {
    const char *path = getenv("PBW_PROFILE_SPANS");
    if (!path || !*path || s.empty()) return;
    FILE *f = fopen(path, "a");
    if (!f) {
        fprintf(stderr, "pbw: PBW_PROFILE_SPANS: cannot open %s\n", path);
        return;
    }
    fprintf(f, "# report\n");
    const uint64_t t0 = s[0].start;
    for (const span &x : s) {
        const size_t op = op_of(x);
        const char *name = x.name >= 0 ? g_names[(size_t)x.name].c_str()
                           : x.name == -1 ? "[memcpy]" : "[memset]";
        fprintf(f, "%llu\t%llu\t%u\t%s\t%s\t%s\n", (unsigned long long)(x.start - t0),
                (unsigned long long)(x.end - t0), x.stream, op_name(op, "-"), op_pass(op, "-"),
                name);
    }
    if (fclose(f)) fprintf(stderr, "pbw: PBW_PROFILE_SPANS: cannot write %s\n", path);
}

} // namespace

extern "C" int pbw_cuda_trace_on(void) { return start() ? 1 : 0; }

extern "C" void pbw_cuda_trace_op(const char *op, int backward) {
    if (g_state <= 0) return;
    uint64_t last;
    if (g_pushed) g_api.pop(CUPTI_EXTERNAL_CORRELATION_KIND_CUSTOM0, &last);
    g_pushed = 0;
    if (!op) return;
    size_t i = 0;
    while (i < g_ops.size() && (g_ops[i].second != backward || strcmp(g_ops[i].first, op))) i++;
    if (i == g_ops.size()) g_ops.push_back({op, backward});
    g_api.push(CUPTI_EXTERNAL_CORRELATION_KIND_CUSTOM0, (uint64_t)i + 1);
    g_pushed = 1;
}

extern "C" void pbw_cuda_trace_clear(void) {
    if (g_state <= 0) return;
    drain();
    std::lock_guard<std::mutex> lk(g_mu);
    g_spans.clear();
    g_ext.clear();
    g_api.timestamp(&g_t0);
    g_wall0 = wall_now();
}

extern "C" void pbw_cuda_trace_report(FILE *f, double scale) {
    if (g_state <= 0) return;
    drain();
    double wall = wall_now() - g_wall0;
    std::lock_guard<std::mutex> lk(g_mu);
    std::vector<span> s;
    for (const span &x : g_spans)
        if (x.start >= g_t0 && x.end >= x.start) s.push_back(x);
    std::sort(s.begin(), s.end(), [](const span &a, const span &b) { return a.start < b.start; });
    dump_spans(s);
    // busy time: the union of the spans (one stream, but library kernels may overlap)
    double busy = 0, total = 0;
    uint64_t cur_s = 0, cur_e = 0;
    for (const span &x : s) {
        total += (double)(x.end - x.start);
        if (x.start > cur_e) {
            busy += (double)(cur_e - cur_s);
            cur_s = x.start;
            cur_e = x.end;
        } else if (x.end > cur_e) {
            cur_e = x.end;
        }
    }
    busy += (double)(cur_e - cur_s);
    // idle stretches of the GPU longer than 20 us, booked to the op whose work ended them
    // (what the GPU was waiting for the host to launch)
    std::vector<row> idle(g_ops.size() + 1);
    {
        uint64_t end = 0;
        for (const span &x : s) {
            if (end && x.start > end + 20000) {
                const size_t op = op_of(x);
                idle[op].ns += (double)(x.start - end);
                idle[op].n++;
            }
            if (x.end > end) end = x.end;
        }
    }
    std::vector<row> ops(g_ops.size() + 1);
    std::vector<row> kern(g_names.size());
    std::map<std::pair<size_t, size_t>, row> opk; // (op, kernel)
    for (const span &x : s) {
        const size_t op = op_of(x);
        ops[op].ns += (double)(x.end - x.start);
        ops[op].n++;
        size_t k;
        if (x.name >= 0) {
            k = (size_t)x.name;
        } else { // copies and memsets: one row per kind and op, e.g. "[memcpy HtoD] in linear"
            static const char *kinds[] = {"?", "HtoD", "DtoH", "HtoA", "AtoH", "AtoA", "AtoD",
                                          "DtoA", "DtoD", "HtoH", "PtoP"};
            char nm[160];
            const char *opn = op_name(op, "no op");
            if (x.name == -1)
                snprintf(nm, sizeof nm, "[memcpy %s] in %s",
                         x.kind >= 0 && x.kind <= 10 ? kinds[x.kind] : "?", opn);
            else
                snprintf(nm, sizeof nm, "[memset] in %s", opn);
            k = (size_t)kernel_name(nm);
            if (k >= kern.size()) kern.resize(k + 1);
        }
        kern[k].ns += (double)(x.end - x.start);
        kern[k].n++;
        row &ok = opk[{op, k}];
        ok.ns += (double)(x.end - x.start);
        ok.n++;
    }
    fprintf(f, "GPU time per op and step (PBW_PROFILE=gpu, CUPTI activity; device time of the "
               "kernels, copies and memsets each op launched):\n");
    fprintf(f, "  wall %.2f ms, GPU busy %.2f ms (%.0f%% of wall), %ld launches a step\n",
            1e3 * wall * scale, 1e-6 * busy * scale, wall > 0 ? 100 * 1e-9 * busy / wall : 0,
            (long)((double)s.size() * scale + 0.5));
    std::vector<size_t> order(ops.size());
    for (size_t i = 0; i < order.size(); i++) order[i] = i;
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return ops[a].ns > ops[b].ns; });
    fprintf(f, "%-24s %-9s %10s %9s %6s\n", "op", "pass", "GPU ms", "launches", "%");
    for (size_t i : order) {
        if (!ops[i].n) continue;
        fprintf(f, "%-24s %-9s %10.3f %9.0f %6.1f\n", op_name(i, "(outside ops)"), op_pass(i, ""),
                1e-6 * ops[i].ns * scale, (double)ops[i].n * scale,
                total > 0 ? 100 * ops[i].ns / total : 0);
    }
    {
        std::vector<size_t> io(idle.size());
        for (size_t i = 0; i < io.size(); i++) io[i] = i;
        std::sort(io.begin(), io.end(), [&](size_t a, size_t b) { return idle[a].ns > idle[b].ns; });
        fprintf(f, "GPU idle over 20 us, by the op whose work ended it (top 12):\n%-24s %-9s %10s %9s\n",
                "op", "pass", "idle ms", "times");
        int shown = 0;
        for (size_t i : io) {
            if (!idle[i].n || shown++ == 12) break;
            fprintf(f, "%-24s %-9s %10.3f %9.1f\n", op_name(i, "(outside ops)"), op_pass(i, ""),
                    1e-6 * idle[i].ns * scale, (double)idle[i].n * scale);
        }
    }
    order.resize(kern.size());
    for (size_t i = 0; i < order.size(); i++) order[i] = i;
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return kern[a].ns > kern[b].ns; });
    fprintf(f, "kernels by GPU time (top 30):\n%10s %9s %9s  %s\n", "GPU ms", "launches", "us each",
            "kernel");
    int shown = 0;
    for (size_t i : order) {
        if (!kern[i].n || shown++ == 30) break;
        const char *name = g_names[i].c_str();
        fprintf(f, "%10.3f %9.0f %9.1f  %.150s\n", 1e-6 * kern[i].ns * scale,
                (double)kern[i].n * scale, 1e-3 * kern[i].ns / (double)kern[i].n, name);
    }
    std::vector<std::pair<std::pair<size_t, size_t>, row>> ok(opk.begin(), opk.end());
    std::sort(ok.begin(), ok.end(), [](const auto &a, const auto &b) { return a.second.ns > b.second.ns; });
    fprintf(f, "kernels by op and GPU time (top 40):\n%-24s %-9s %10s %9s %9s  %s\n", "op", "pass",
            "GPU ms", "launches", "us each", "kernel");
    shown = 0;
    for (const auto &e : ok) {
        if (shown++ == 40) break;
        const size_t i = e.first.first;
        fprintf(f, "%-24s %-9s %10.3f %9.0f %9.1f  %.110s\n", op_name(i, "(outside ops)"),
                op_pass(i, ""),
                1e-6 * e.second.ns * scale, (double)e.second.n * scale,
                1e-3 * e.second.ns / (double)e.second.n, g_names[e.first.second].c_str());
    }
    g_spans.clear();
    g_ext.clear();
    g_api.timestamp(&g_t0);
    g_wall0 = wall_now();
}
