/*
 * The advisor's verdicts and reports (text and JSON), built from the
 * records of advisor.c.  docs/advisor.md gives the rules and justifies
 * the thresholds with the benchmark figures.
 *
 * Verdict rules, for a lock with timed exclusive holds:
 *   waited    = share of timed holds in which the holder waited (its task
 *               suspended, or its thread blocked after a voluntary switch)
 *   share     = waiting time / hold time, over the timed holds
 *   waits     = waited >= WAITED_HOLDS and share >= WAITING_SHARE
 *   sync lock:  logic_behind_sync if waits, or if any hold suspended its
 *               task (always a mistake on a sync lock); else data
 *   async lock: data_behind_async if not waits; section_too_long if the
 *               holder runs more than RUNNING_SHARE of the hold and
 *               RUNNING_NS per hold on average; else logic
 * A lock with no timed hold (only shared holds) is judged by its kind:
 * there is no evidence against it, and the advice says so.
 *
 * A report takes one spin flag of its own (not a plaza lock) so that two
 * reports at once do not share the symbol resolver.
 */
#define _GNU_SOURCE
#include "plaza/advisor.h"
#include "plaza/runtime.h"

#include <errno.h>
#include <sched.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef PLAZA_HAVE_DW
#include <dwarf.h>
#include <elfutils/libdw.h>
#include <elfutils/libdwfl.h>
#endif

#include "advisor_internal.h"
#include "report.h"

#define WAITED_HOLDS 0.01
#define WAITING_SHARE 0.05
#define RUNNING_SHARE 0.5
#define RUNNING_NS 100000

static atomic_flag report_busy = ATOMIC_FLAG_INIT;

static void report_lock(void)
{
    while (atomic_flag_test_and_set_explicit(&report_busy, memory_order_acquire))
        sched_yield();
}

static void report_unlock(void)
{
    atomic_flag_clear_explicit(&report_busy, memory_order_release);
}

/* ---- symbols ----------------------------------------------------------- */

#ifdef PLAZA_HAVE_DW
static Dwfl *dwfl;
static char *debuginfo_path;
static const Dwfl_Callbacks dwfl_callbacks = {
    .find_elf = dwfl_linux_proc_find_elf,
    .find_debuginfo = dwfl_standard_find_debuginfo,
    .debuginfo_path = &debuginfo_path,
};
#endif

/* Called with report_busy held. */
bool pz__advisor_resolve(const void *addr, char *where, size_t where_size, char *func, size_t func_size)
{
    snprintf(where, where_size, "%p", addr);
    snprintf(func, func_size, "?");
#ifdef PLAZA_HAVE_DW
    if (!addr)
        return false;
    if (!dwfl) {
        dwfl = dwfl_begin(&dwfl_callbacks);
        if (!dwfl)
            return false;
        if (dwfl_linux_proc_report(dwfl, getpid()) != 0 || dwfl_report_end(dwfl, NULL, NULL) != 0) {
            dwfl_end(dwfl);
            dwfl = NULL;
            return false;
        }
    }
    /* A return address: the call is the instruction before it. */
    Dwarf_Addr a = (Dwarf_Addr)(uintptr_t)addr - 1;
    Dwfl_Module *mod = dwfl_addrmodule(dwfl, a);
    if (!mod)
        return false;
    GElf_Off off;
    GElf_Sym sym;
    const char *name = dwfl_module_addrinfo(mod, a, &off, &sym, NULL, NULL, NULL);
    if (name)
        snprintf(func, func_size, "%s", name);
    Dwarf_Addr bias;
    Dwarf_Die *cu = dwfl_module_addrdie(mod, a, &bias);
    if (!cu) {
        /* A .debug_aranges that leaves units out (clang's objects beside
         * others): look through the units themselves. */
        Dwarf_Die *c = NULL;
        while ((c = dwfl_module_nextcu(mod, c, &bias)) != NULL) {
            if (dwarf_haspc(c, a - bias) > 0) {
                cu = c;
                break;
            }
        }
    }
    Dwfl_Line *line = dwfl_module_getsrc(mod, a);
    int lineno = 0;
    const char *file = line ? dwfl_lineinfo(line, NULL, &lineno, NULL, NULL, NULL) : NULL;
    if (!file && cu) {
        /* Some line tables (clang's) are found through the unit only. */
        Dwarf_Line *l = dwarf_getsrc_die(cu, a - bias);
        if (l) {
            file = dwarf_linesrc(l, NULL, NULL);
            dwarf_lineno(l, &lineno);
        }
    }
    if (!file)
        return name != NULL;
    /* The address lies in the inlined body of a plaza lock call (sync.h,
     * async.h): step out through the inlined scopes to the line that
     * called it. */
    Dwarf_Die *scopes = NULL;
    int n = cu ? dwarf_getscopes(cu, a - bias, &scopes) : 0;
    Dwarf_Die cur;
    bool have = false;
    for (int i = 0; i < n && !have; i++) {
        if (dwarf_tag(&scopes[i]) == DW_TAG_inlined_subroutine) {
            cur = scopes[i];
            have = true;
        } else if (dwarf_tag(&scopes[i]) == DW_TAG_subprogram) {
            break;
        }
    }
    free(scopes);
    Dwarf_Files *files;
    size_t nfiles;
    while (have && strstr(file, "plaza/") && strstr(file, ".h") && dwarf_getsrcfiles(cu, &files, &nfiles) == 0) {
        Dwarf_Attribute fa, la;
        Dwarf_Word cf, cl;
        if (dwarf_formudata(dwarf_attr(&cur, DW_AT_call_file, &fa), &cf) != 0 ||
            dwarf_formudata(dwarf_attr(&cur, DW_AT_call_line, &la), &cl) != 0 || cf >= nfiles)
            break;
        const char *f = dwarf_filesrc(files, cf, NULL, NULL);
        if (!f)
            break;
        file = f;
        lineno = (int)cl;
        /* The concrete scopes around this inlined call (up[0] is itself). */
        Dwarf_Die *up = NULL;
        int m = dwarf_getscopes_die(&cur, &up);
        have = false;
        for (int k = 1; k < m; k++) {
            int tag = dwarf_tag(&up[k]);
            if (tag == DW_TAG_inlined_subroutine) {
                cur = up[k];
                have = true;
                break;
            }
            if (tag == DW_TAG_subprogram)
                break;
        }
        free(up);
    }
    const char *base = strrchr(file, '/');
    snprintf(where, where_size, "%s:%d", base ? base + 1 : file, lineno);
    return true;
#else
    return false;
#endif
}

/* ---- figures and verdicts --------------------------------------------- */

static uint64_t ld(_Atomic uint64_t *p)
{
    return atomic_load_explicit(p, memory_order_relaxed);
}

/* A histogram's counts, read from its atomic buckets. */
static void hist_read(_Atomic uint32_t *h, uint32_t *into)
{
    for (int i = 0; i < HIST_BUCKETS; i++)
        into[i] = atomic_load_explicit(&h[i], memory_order_relaxed);
}

/* The percentile rule of hist.h over a histogram's counts, capped by the
 * exact maximum (a bucket's midpoint may lie above it). */
static uint64_t permille(const uint32_t *h, uint64_t pm, uint64_t max, uint64_t zeros)
{
    uint64_t n = zeros;
    for (int i = 0; i < HIST_BUCKETS; i++)
        n += h[i];
    if (n == 0)
        return 0;
    uint64_t rank = n * pm / 1000;
    if (rank > n - 1)
        rank = n - 1;
    uint64_t seen = zeros;
    if (seen > rank)
        return 0;
    for (int i = 0; i < HIST_BUCKETS; i++) {
        seen += h[i];
        if (seen > rank) {
            uint64_t v = (uint64_t)hist_value(i);
            return v > max ? max : v;
        }
    }
    return max;
}

static bool is_sync(unsigned kind)
{
    return kind == PZ__LOCK_MUTEX || kind == PZ__LOCK_RWLOCK;
}

void pz__advisor_figures(pz__advisor_lock *r, pz__advisor_figures_t *f)
{
    memset(f, 0, sizeof *f);
    f->kind = atomic_load_explicit(&r->kind, memory_order_relaxed);
    /* The record's figures, then what the threads' slots still hold. */
    hist_read(r->wait_hist, f->wait_hist);
    pz__advisor_count_t c;
    pz__advisor_thread_counts(r, NULL, &c, f->wait_hist);
    f->acquisitions = ld(&r->acquisitions) + c.acquisitions;
    f->shared = ld(&r->shared) + c.shared;
    f->contended = ld(&r->contended) + c.contended;
    if (f->kind != PZ__LOCK_CHAN && f->contended > f->acquisitions) /* counted while the report ran */
        f->contended = f->acquisitions;
    f->gave_up = ld(&r->gave_up);
    f->send_waits = ld(&r->send_waits);
    f->recv_waits = ld(&r->recv_waits);
    f->owner_changes = ld(&r->owner_changes);
    f->owner_probes = ld(&r->owner_probes);
    f->blocked_worker_ns = ld(&r->blocked_worker_ns) + c.blocked_worker_ns;
    f->timed_holds = ld(&r->timed_holds);
    f->timed_shared = ld(&r->timed_shared);
    f->suspended_holds = ld(&r->suspended_holds);
    f->blocked_holds = ld(&r->blocked_holds);
    uint64_t hold_sum = ld(&r->hold_sum), waiting = ld(&r->waiting_sum);
    f->wait_max = ld(&r->wait_max);
    if (c.wait_max > f->wait_max)
        f->wait_max = c.wait_max;
    uint64_t uncontended = f->acquisitions > f->contended ? f->acquisitions - f->contended : 0;
    f->wait_p50 = permille(f->wait_hist, 500, f->wait_max, uncontended);
    f->wait_p99 = permille(f->wait_hist, 990, f->wait_max, uncontended);
    f->hold_max = ld(&r->hold_max);
    static uint32_t holds[HIST_BUCKETS]; /* under report_lock, as f */
    hist_read(r->hold_hist, holds);
    f->hold_p50 = permille(holds, 500, f->hold_max, 0);
    f->hold_p99 = permille(holds, 990, f->hold_max, 0);
    f->suspended_share = hold_sum ? (double)waiting / (double)hold_sum : 0;
    f->running_mean_ns = f->timed_holds ? (double)(hold_sum - waiting) / (double)f->timed_holds : 0;
    double waited = f->timed_holds ? (double)(f->suspended_holds + f->blocked_holds) / (double)f->timed_holds : 0;
    bool waits = waited >= WAITED_HOLDS && f->suspended_share >= WAITING_SHARE;
    double mutex_ns = (double)pz__advisor_cost_mutex_ps / 1000, async_ns = (double)pz__advisor_cost_async_ps / 1000;
    char *a = f->advice;
    size_t an = sizeof f->advice;

    if (f->kind == PZ__LOCK_CHAN) {
        f->verdict = "channel";
        snprintf(a, an, "%" PRIu64 " sends and %" PRIu64 " receives waited (%" PRIu64 " of them gave up).",
                 f->send_waits, f->recv_waits, f->gave_up);
        return;
    }
    if (f->timed_holds == 0) {
        f->verdict = is_sync(f->kind) ? "data" : "logic";
        snprintf(a, an, "No hold was timed (%" PRIu64 " acquisitions), so there is no evidence against this %s.",
                 f->acquisitions, pz__advisor_kind_name(f->kind));
        return;
    }
    char waited_for[160];
    if (f->gave_up)
        snprintf(waited_for, sizeof waited_for,
                 "made %" PRIu64 " acquisitions wait and %" PRIu64 " give up (deadline or cancel)", f->contended,
                 f->gave_up);
    else
        snprintf(waited_for, sizeof waited_for, "made %" PRIu64 " acquisitions wait", f->contended);
    if (is_sync(f->kind)) {
        if (waits || f->suspended_holds > 0) {
            f->verdict = "logic_behind_sync";
            snprintf(a, an,
                     "A sync lock held across waits (%.0f%% of its hold time, %" PRIu64 " of %" PRIu64
                     " timed holds suspended, %" PRIu64 " blocked in a system call): it blocked worker threads "
                     "for %.3f ms and %s; use %s.",
                     100 * f->suspended_share, f->suspended_holds, f->timed_holds, f->blocked_holds,
                     (double)f->blocked_worker_ns / 1e6, waited_for,
                     f->kind == PZ__LOCK_RWLOCK ? "pz_async_rwlock" : "pz_async_mutex");
        } else {
            f->verdict = "data";
            snprintf(a, an, "Holds are short (p99 %.1f us) and never wait: a sync lock is right.",
                     (double)f->hold_p99 / 1e3);
        }
        return;
    }
    if (!waits) {
        f->verdict = "data_behind_async";
        if (async_ns - mutex_ns < 5 && async_ns < 2 * mutex_ns)
            snprintf(a, an,
                     "Holds never wait (p99 %.1f us), so %s would do; but here an uncontended "
                     "pz_async_mutex costs %.1f ns per lock and unlock against %.1f ns for pz_mutex: fine either way.",
                     (double)f->hold_p99 / 1e3, f->kind == PZ__LOCK_ASYNC_RWLOCK ? "pz_rwlock" : "pz_mutex",
                     async_ns, mutex_ns);
        else
            snprintf(a, an,
                     "Holds never wait (p99 %.1f us): use %s (pz_mutex costs %.1f ns per lock and unlock here "
                     "against %.1f ns for pz_async_mutex).",
                     (double)f->hold_p99 / 1e3, f->kind == PZ__LOCK_ASYNC_RWLOCK ? "pz_rwlock" : "pz_mutex",
                     mutex_ns, async_ns);
        return;
    }
    if (1 - f->suspended_share > RUNNING_SHARE && f->running_mean_ns > RUNNING_NS) {
        f->verdict = "section_too_long";
        snprintf(a, an,
                 "Holders run %.0f us per hold inside the lock (%.0f%% of the hold) besides waiting: move that "
                 "computation out of the critical section.",
                 f->running_mean_ns / 1e3, 100 * (1 - f->suspended_share));
        return;
    }
    f->verdict = "logic";
    snprintf(a, an, "Holders wait %.0f%% of the hold (I/O, sleep or other tasks): an async lock is right.",
             100 * f->suspended_share);
}

void pz__advisor_label(pz__advisor_lock *r, char *name, size_t name_size, char *site, size_t site_size)
{
    char func[128];
    pz__advisor_resolve(atomic_load_explicit(&r->first_site, memory_order_relaxed), site, site_size, func,
                        sizeof func);
    const char *given = atomic_load_explicit(&r->name, memory_order_acquire);
    if (given)
        snprintf(name, name_size, "%s", given);
    else
        snprintf(name, name_size, "%s@%s", func, site);
}

/* ---- output ------------------------------------------------------------ */

static void json_string(FILE *out, const char *s)
{
    fputc('"', out);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(out, "\\%c", c);
        else if (c < 0x20)
            fprintf(out, "\\u%04x", c);
        else
            fputc(c, out);
    }
    fputc('"', out);
}

static void text_lock(FILE *out, pz__advisor_lock *r, const pz__advisor_figures_t *f)
{
    char name[256], site[256];
    pz__advisor_label(r, name, sizeof name, site, sizeof site);
    fprintf(out, "\n%s (%s, first taken at %s)\n", name, pz__advisor_kind_name(f->kind), site);
    fprintf(out, "  verdict: %s\n  advice:  %s\n", f->verdict, f->advice);
    if (f->kind == PZ__LOCK_CHAN) {
        fprintf(out, "  waits: %" PRIu64 " sends, %" PRIu64 " receives, %" PRIu64 " gave up\n", f->send_waits,
                f->recv_waits, f->gave_up);
        fprintf(out, "  wait ns  p50 %" PRIu64 "  p99 %" PRIu64 "  max %" PRIu64 " (waits that took time)\n",
                f->wait_p50, f->wait_p99, f->wait_max);
        return;
    }
    fprintf(out,
            "  acquisitions %" PRIu64 " (shared %" PRIu64 "), contended %" PRIu64 " (%.1f%%), gave up %" PRIu64
            ", owner changes %" PRIu64 " (from %" PRIu64 " probes)\n",
            f->acquisitions, f->shared, f->contended,
            f->acquisitions ? 100.0 * (double)f->contended / (double)f->acquisitions : 0.0, f->gave_up,
            f->owner_changes, f->owner_probes);
    fprintf(out, "  hold ns  p50 %" PRIu64 "  p99 %" PRIu64 "  max %" PRIu64 "  (%" PRIu64 " holds timed, %" PRIu64
                 " shared)\n",
            f->hold_p50, f->hold_p99, f->hold_max, f->timed_holds, f->timed_shared);
    fprintf(out, "  wait ns  p50 %" PRIu64 "  p99 %" PRIu64 "  max %" PRIu64 "\n", f->wait_p50, f->wait_p99,
            f->wait_max);
    fprintf(out,
            "  holder waiting: %.1f%% of hold time; %" PRIu64 " holds suspended, %" PRIu64
            " blocked in the kernel; running %.1f us per hold\n",
            100 * f->suspended_share, f->suspended_holds, f->blocked_holds, f->running_mean_ns / 1e3);
    if (f->blocked_worker_ns)
        fprintf(out, "  worker threads blocked in its slow path: %.3f ms\n", (double)f->blocked_worker_ns / 1e6);
    for (int i = 0; i < PZ__ADVISOR_SITES; i++) {
        pz__advisor_site *s = &r->sites[i];
        const void *addr = atomic_load_explicit(&s->addr, memory_order_acquire);
        if (!addr)
            break;
        char where[256], func[128];
        pz__advisor_resolve(addr, where, sizeof where, func, sizeof func);
        uint64_t th = ld(&s->timed_holds);
        pz__advisor_count_t c;
        pz__advisor_thread_counts(r, addr, &c, NULL);
        fprintf(out, "  site %s (%s): %" PRIu64 " acquisitions, %" PRIu64 " contended, hold mean %.1f us\n", where,
                func, ld(&s->acquisitions) + c.acquisitions, ld(&s->contended) + c.contended,
                th ? (double)ld(&s->hold_sum) / (double)th / 1e3 : 0.0);
    }
}

static void json_lock(FILE *out, pz__advisor_lock *r, const pz__advisor_figures_t *f, bool first)
{
    char name[256], site[256];
    pz__advisor_label(r, name, sizeof name, site, sizeof site);
    fprintf(out, "%s\n    {\"name\": ", first ? "" : ",");
    json_string(out, name);
    fprintf(out, ", \"kind\": \"%s\", \"site\": ", pz__advisor_kind_name(f->kind));
    json_string(out, site);
    fprintf(out,
            ", \"address\": \"%p\", \"acquisitions\": %" PRIu64 ", \"shared\": %" PRIu64 ", \"contended\": %" PRIu64
            ", \"gave_up\": %" PRIu64 ", \"send_waits\": %" PRIu64 ", \"recv_waits\": %" PRIu64
            ", \"owner_changes\": %" PRIu64 ", \"owner_probes\": %" PRIu64 ",\n     \"hold_ns\": {\"p50\": %" PRIu64 ", \"p99\": %" PRIu64
            ", \"max\": %" PRIu64 "}, \"wait_ns\": {\"p50\": %" PRIu64 ", \"p99\": %" PRIu64 ", \"max\": %" PRIu64
            "},\n     \"timed_holds\": %" PRIu64 ", \"timed_shared\": %" PRIu64 ", \"suspended_holds\": %" PRIu64 ", \"blocked_holds\": %" PRIu64
            ", \"suspended_share\": %.4f, \"running_mean_ns\": %.0f, \"blocked_worker_ns\": %" PRIu64
            ",\n     \"verdict\": \"%s\", \"advice\": ",
            r->lock, f->acquisitions, f->shared, f->contended, f->gave_up, f->send_waits, f->recv_waits,
            f->owner_changes, f->owner_probes, f->hold_p50,
            f->hold_p99, f->hold_max, f->wait_p50, f->wait_p99, f->wait_max, f->timed_holds, f->timed_shared,
            f->suspended_holds,
            f->blocked_holds, f->suspended_share, f->running_mean_ns, f->blocked_worker_ns, f->verdict);
    json_string(out, f->advice);
    fprintf(out, ",\n     \"hold_hist\": [");
    /* Non-empty buckets as [midpoint ns, count], for the live page. */
    bool any = false;
    for (int i = 0; i < HIST_BUCKETS; i++) {
        uint32_t c = atomic_load_explicit(&r->hold_hist[i], memory_order_relaxed);
        if (c) {
            fprintf(out, "%s[%.0f, %" PRIu32 "]", any ? ", " : "", hist_value(i), c);
            any = true;
        }
    }
    fprintf(out, "],\n     \"wait_hist\": [");
    /* The same for the waits that took time (a channel's only figures). */
    any = false;
    for (int i = 0; i < HIST_BUCKETS; i++) {
        uint32_t c = f->wait_hist[i];
        if (c) {
            fprintf(out, "%s[%.0f, %" PRIu32 "]", any ? ", " : "", hist_value(i), c);
            any = true;
        }
    }
    fprintf(out, "],\n     \"sites\": [");
    for (int i = 0; i < PZ__ADVISOR_SITES; i++) {
        pz__advisor_site *s = &r->sites[i];
        const void *addr = atomic_load_explicit(&s->addr, memory_order_acquire);
        if (!addr)
            break;
        char where[256], func[128];
        pz__advisor_resolve(addr, where, sizeof where, func, sizeof func);
        fprintf(out, "%s{\"site\": ", i ? ", " : "");
        json_string(out, where);
        fprintf(out, ", \"function\": ");
        json_string(out, func);
        pz__advisor_count_t c;
        pz__advisor_thread_counts(r, addr, &c, NULL);
        fprintf(out, ", \"acquisitions\": %" PRIu64 ", \"contended\": %" PRIu64 ", \"timed_holds\": %" PRIu64
                     ", \"hold_sum_ns\": %" PRIu64 ", \"waiting_sum_ns\": %" PRIu64 "}",
                ld(&s->acquisitions) + c.acquisitions, ld(&s->contended) + c.contended,
                ld(&s->timed_holds), ld(&s->hold_sum),
                ld(&s->waiting_sum));
    }
    fprintf(out, "]}");
}

int pz_advisor_report(FILE *out, int format)
{
    if (!out || (format != PZ_ADVISOR_TEXT && format != PZ_ADVISOR_JSON))
        return -EINVAL;
    report_lock();
    double mutex_ns = (double)pz__advisor_cost_mutex_ps / 1000, async_ns = (double)pz__advisor_cost_async_ps / 1000;
    if (format == PZ_ADVISOR_TEXT)
        fprintf(out,
                "plaza advisor: every lock seen, its verdict and the evidence (docs/advisor.md)\n"
                "uncontended lock+unlock here: pz_mutex %.1f ns, pz_async_mutex %.1f ns\n",
                mutex_ns, async_ns);
    else
        fprintf(out, "{\"plaza_advisor\": 1, \"cost_ns\": {\"pz_mutex\": %.1f, \"pz_async_mutex\": %.1f}, \"locks\": [",
                mutex_ns, async_ns);
    bool first = true, any_chan = false;
    unsigned n = pz__advisor_table_size();
    /* The locks, then the channels (no hold, no verdict: their waits). */
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1) {
            if (format == PZ_ADVISOR_JSON)
                fprintf(out, "\n], \"channels\": [");
            else if (first)
                fprintf(out, "no lock was taken while the advisor was on\n");
            first = true;
        }
        for (unsigned i = 0; i < n; i++) {
            pz__advisor_lock *r = pz__advisor_record_at(i);
            if (!r || !atomic_load_explicit(&r->first_site, memory_order_relaxed))
                continue;
            if ((atomic_load_explicit(&r->kind, memory_order_relaxed) == PZ__LOCK_CHAN) != (pass == 1))
                continue;
            /* Static (its histogram is 17 KiB, too much for a small task
             * stack): report_lock serialises the reports. */
            static pz__advisor_figures_t f;
            pz__advisor_figures(r, &f);
            if (format == PZ_ADVISOR_TEXT) {
                if (pass == 1 && !any_chan)
                    fprintf(out, "\nchannels whose sends or receives waited:\n");
                any_chan = pass == 1;
                text_lock(out, r, &f);
            } else {
                json_lock(out, r, &f, first);
            }
            first = false;
        }
    }
    if (format == PZ_ADVISOR_JSON)
        fprintf(out, "\n]}\n");
    report_unlock();
    fflush(out);
    return ferror(out) ? -EIO : 0;
}
