/*
 * Backtraces of suspended contexts and symbols for addresses: the platform
 * half of the task dump (src/runtime/dump.c).
 *
 * A suspended task's registers are on its own stack, where the context
 * switch pushed them (src/arch/<arch>/switch.S gives the layout).  From
 * them we build the machine context the task would have if it were
 * stopped just after the switch returns, and hand that to libunwind, which
 * walks the frames by the DWARF call-frame information of each function.
 * Frame pointers would be simpler but are absent from code built with -O2
 * (as Debian builds, and as plaza's release build does), so the walk would
 * stop at the first such frame; the CFI is always there (.eh_frame).
 *
 * Symbols and lines come from libdw (elfutils' dwfl): the module of an
 * address, its ELF symbol, and the line from the DWARF line table, so a
 * report names "fn (file.c:42)" instead of "./prog(+0x3585)".  One Dwfl
 * session per report: a report is rare and the modules may have changed.
 *
 * Without libunwind or libdw (PLAZA_HAVE_UNWIND / PLAZA_HAVE_DW unset) the
 * functions say so (no frames, or the bare address).
 */
#define _GNU_SOURCE
#include "arch.h"

#include <pthread.h>

#include <stdio.h>
#include <string.h>
#include <unistd.h>

#if defined(PLAZA_HAVE_UNWIND) && defined(__x86_64__)
#define UNW_LOCAL_ONLY
#include <libunwind.h>
#include <ucontext.h>
#endif
#ifdef PLAZA_HAVE_DW
#include <dwarf.h>
#include <elfutils/libdw.h>
#include <elfutils/libdwfl.h>
#include <stdlib.h>
#endif

int pz__arch_backtrace_saved(void *sp, void **frames, int max)
{
#if defined(PLAZA_HAVE_UNWIND) && defined(__x86_64__)
    /* switch.S: [sp+0] MXCSR/x87 CW, [sp+8] r15 r14 r13 r12 rbx rbp,
     * [sp+56] the return address into the code that called the switch. */
    uint64_t *f = sp;
    ucontext_t uc;
    memset(&uc, 0, sizeof uc);
    uc.uc_mcontext.gregs[REG_R15] = (greg_t)f[1];
    uc.uc_mcontext.gregs[REG_R14] = (greg_t)f[2];
    uc.uc_mcontext.gregs[REG_R13] = (greg_t)f[3];
    uc.uc_mcontext.gregs[REG_R12] = (greg_t)f[4];
    uc.uc_mcontext.gregs[REG_RBX] = (greg_t)f[5];
    uc.uc_mcontext.gregs[REG_RBP] = (greg_t)f[6];
    uc.uc_mcontext.gregs[REG_RIP] = (greg_t)f[7];
    uc.uc_mcontext.gregs[REG_RSP] = (greg_t)(uintptr_t)(f + 8);
    unw_cursor_t cur;
    if (unw_init_local(&cur, (unw_context_t *)&uc) < 0)
        return 0;
    int n = 0;
    do {
        unw_word_t ip = 0;
        if (unw_get_reg(&cur, UNW_REG_IP, &ip) < 0 || ip == 0)
            break;
        frames[n++] = (void *)ip;
    } while (n < max && unw_step(&cur) > 0);
    return n;
#else
    (void)sp;
    (void)frames;
    (void)max;
    return 0;
#endif
}

#ifdef PLAZA_HAVE_DW
/* When a is inside code inlined into its function (a lock's inline fast
 * path, say), the line table gives the inlined header's line; what a
 * report wants is the line in the function itself, where the outermost
 * inlined call was made (DW_AT_call_file/_line of that scope). */
/* The compile unit of a: through .debug_aranges where the compiler wrote
 * them (gcc), else by walking the units' address ranges (clang writes no
 * aranges unless asked, and libdw then finds no unit by address). */
static Dwarf_Die *unit_of(Dwfl_Module *mod, Dwarf_Addr a, Dwarf_Addr *bias)
{
    Dwarf_Die *cu = dwfl_module_addrdie(mod, a, bias);
    if (cu)
        return cu;
    for (cu = dwfl_module_nextcu(mod, NULL, bias); cu; cu = dwfl_module_nextcu(mod, cu, bias))
        if (dwarf_haspc(cu, a - *bias) > 0)
            return cu;
    return NULL;
}

static bool call_site_line(Dwfl_Module *mod, Dwarf_Addr a, const char **file, int *line)
{
    Dwarf_Addr bias;
    Dwarf_Die *cu = unit_of(mod, a, &bias);
    if (!cu)
        return false;
    Dwarf_Die *scopes = NULL;
    int n = dwarf_getscopes(cu, a - bias, &scopes);
    int outer = -1;
    for (int i = 0; i < n; i++)
        if (dwarf_tag(&scopes[i]) == DW_TAG_inlined_subroutine)
            outer = i;
    bool ok = false;
    Dwarf_Attribute at;
    Dwarf_Word fidx, lno;
    Dwarf_Files *files;
    size_t nfiles;
    if (outer >= 0 && dwarf_formudata(dwarf_attr(&scopes[outer], DW_AT_call_file, &at), &fidx) == 0 &&
        dwarf_formudata(dwarf_attr(&scopes[outer], DW_AT_call_line, &at), &lno) == 0 &&
        dwarf_getsrcfiles(cu, &files, &nfiles) == 0 && fidx < nfiles) {
        const char *f = dwarf_filesrc(files, fidx, NULL, NULL);
        if (f) {
            *file = f;
            *line = (int)lno;
            ok = true;
        }
    }
    free(scopes);
    return ok;
}

static Dwfl *session_open(void)
{
    static char *debuginfo_path;
    static const Dwfl_Callbacks cb = {
        .find_elf = dwfl_linux_proc_find_elf,
        .find_debuginfo = dwfl_standard_find_debuginfo,
        .debuginfo_path = &debuginfo_path,
    };
    Dwfl *d = dwfl_begin(&cb);
    if (!d)
        return NULL;
    if (dwfl_linux_proc_report(d, getpid()) != 0 || dwfl_report_end(d, NULL, NULL) != 0) {
        dwfl_end(d);
        return NULL;
    }
    return d;
}
#endif

void *pz__arch_symbols_open(void)
{
#ifdef PLAZA_HAVE_DW
    return session_open();
#else
    return NULL;
#endif
}

void pz__arch_symbols_close(void *session)
{
#ifdef PLAZA_HAVE_DW
    if (session)
        dwfl_end(session);
#else
    (void)session;
#endif
}

void pz__arch_symbolize(void *session, void *addr, bool is_return, char *buf, size_t size)
{
#ifdef PLAZA_HAVE_DW
    Dwfl *d = session;
    /* A return address points after the call: look up the call itself. */
    Dwarf_Addr a = (Dwarf_Addr)(uintptr_t)addr - (is_return ? 1 : 0);
    Dwfl_Module *mod = d ? dwfl_addrmodule(d, a) : NULL;
    if (mod) {
        const char *sym = dwfl_module_addrname(mod, a);
        int lineno = 0;
        const char *file = NULL;
        if (!call_site_line(mod, a, &file, &lineno)) {
            Dwarf_Addr bias;
            Dwarf_Die *cu = unit_of(mod, a, &bias);
            Dwarf_Line *line = cu ? dwarf_getsrc_die(cu, a - bias) : NULL;
            if (line && (file = dwarf_linesrc(line, NULL, NULL)))
                dwarf_lineno(line, &lineno);
        }
        if (file) {
            const char *base = strrchr(file, '/');
            snprintf(buf, size, "%s (%s:%d)", sym ? sym : "??", base ? base + 1 : file, lineno);
            return;
        }
        if (sym) {
            const char *mname = dwfl_module_info(mod, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
            const char *base = mname ? strrchr(mname, '/') : NULL;
            snprintf(buf, size, "%s (%s)", sym, base ? base + 1 : (mname ? mname : "?"));
            return;
        }
    }
#else
    (void)session;
    (void)is_return;
#endif
    snprintf(buf, size, "%p", addr);
}

struct own_stack_call {
    void (*fn)(void *);
    void *arg;
};

static void *own_stack_main(void *p)
{
    struct own_stack_call *c = p;
    c->fn(c->arg);
    return NULL;
}

void pz__arch_run_on_own_stack(void (*fn)(void *), void *arg)
{
    struct own_stack_call c = {fn, arg};
    pthread_t th;
    if (pz__thread_create(&th, NULL, own_stack_main, &c) != 0) {
        fn(arg);
        return;
    }
    pthread_join(th, NULL);
}
