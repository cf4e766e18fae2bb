/*
 * pz_rwlock slow paths.  The word encoding is described in sync.h.
 *
 * Two wait queues in the parking lot:
 * - the lock's own address holds every thread waiting to acquire (readers,
 *   upgradable readers, writers), with PARKED set while any may be there.
 *   Each parks with a token equal to what its acquisition adds to the word
 *   (ONE_READER, ONE_READER|UPGRADABLE or WRITER), so a waker can add up
 *   the tokens of the waiters it picks and, for a direct hand-off, store the
 *   sum as the new word.
 * - the address + 1 holds at most one thread: the one that owns WRITER
 *   (a writer, or an upgrader) and waits for the readers still inside to
 *   leave.  It sets WRITER_PARKED first; the reader whose unlock takes the
 *   count to zero while WRITER_PARKED is set wakes it.
 *
 * A parker always validates, under the bucket lock, that PARKED (or
 * WRITER_PARKED) is still set and that what blocks it is still there; a
 * release that clears a blocking bit while PARKED is set wakes waiters
 * through the lot, which takes the same bucket lock, so no wake-up is lost.
 * Releases that clear a blocking bit: write unlock, upgradable unlock,
 * downgrades, and a writer or upgrader giving up at its deadline.  A plain
 * reader's unlock never clears one, so it only ever wakes the address + 1.
 *
 * The reader's entry, and why a count of readers passing through is safe.
 * A read lock adds ONE_READER with one fetch-and-add and looks at the word
 * it replaced: without WRITER it is in; with WRITER it takes the reader
 * away again (pz__rwlock_read_back_out, the same step as a read unlock,
 * waking the writer at the address + 1 if that took the count to zero
 * under WRITER_PARKED) and waits in the slow path, which acquires by
 * compare-and-swap as before.  All of it is read-modify-writes of the one
 * word, so they fall in one order (the word's modification order) and
 * each sees the word left by the one before it:
 * - Exclusion.  A writer's claim adds WRITER; a reader ordered after the
 *   claim sees WRITER and does not enter; a reader ordered before it is
 *   in the count, and the writer enters only by a swap from a word whose
 *   count is zero, ordered after that reader's unlock.  Entering sets
 *   WRITING in that same swap, and the recursive reader, the one mode
 *   that gets in past WRITER, is kept out by WRITING.  Before this entry
 *   a recursive reader told a writer inside by a count of zero; a reader
 *   passing through makes that count non-zero while the writer is inside,
 *   which is why WRITING exists (models/sync_rwlock.pml, the variant
 *   COUNT_TELLS_WRITING=1, finds the two inside together).
 * - Ordering.  The entry's acquire reads a word in the release sequence
 *   of the last unlock (every later read-modify-write continues it), so
 *   the writer's section happens before the reader's; the read unlock's
 *   release and the writer's acquiring swap order the other way.
 * - No lost wake-up.  A reader passing through is a reader as far as the
 *   writer waiting at the address + 1 is concerned: its back-out is a read
 *   unlock, so the last one out under WRITER_PARKED wakes the writer,
 *   under the bucket lock against the writer's validate, as before.
 * - Progress.  Each lock call passes through at most once (the slow path
 *   loads and swaps), so a writer waiting for a count of zero waits for at
 *   most one back-out per thread.
 * What the extra count costs: a write unlock or downgrade may find readers
 * in the count and must keep them (a swap, or a sum under the bucket lock,
 * never a plain store); pz_rwlock_try_write and pz_rwlock_try_upgrade may
 * fail while a reader passes through; misuse checks look at WRITING, not
 * at a zero count.
 *
 * Read slots.  Readers on two cores that all add to the word move its
 * cache line between the cores at every lock and unlock: 8 threads
 * reading on the 2-vCPU Xeon spent ~80% of their samples on the two
 * read-modify-writes, ~100 ns of CPU an operation against 15 on one core.
 * So once a reader finds another counted (its fetch-and-add saw a count),
 * it sets SLOTS, and from then on a plain reader holds the lock through a
 * slot of its thread's line in slot_lines (a cache line of words, one per
 * thread while there are no more threads than lines): it writes the
 * lock's address into a free slot and looks at the word again; it leaves
 * by writing 0 back.  The word is only read, so its line stays shared.
 * The holders for reading are then the readers counted in the word plus
 * the slots, in any line, that hold the lock's address.
 * - Closing.  Whoever claims WRITER (a writer, a try, an upgrader) from a
 *   word with SLOTS clears SLOTS and sets REVOKING in the claiming swap,
 *   never setting WRITING there, then moves every slot holding the lock
 *   into the count (revoke_slots: count one more, then swap the slot to
 *   0; if that swap fails, its reader left meanwhile: count one less),
 *   clears REVOKING and only then waits for a count of zero as before.
 *   SLOTS is set only in a word without WRITER (pz__rwlock_open_slots),
 *   and every claim of WRITER from a word with SLOTS clears it, so SLOTS
 *   never stands beside WRITER: a write unlock, hand-off or downgrade
 *   never meets it, and REVOKING is only ever set by the holder of WRITER.
 * - Exclusion (the Dekker pair, all four steps seq_cst).  A reader writes
 *   its slot, then loads the word; the claimer swaps SLOTS out, then
 *   loads the slots (and first the number of lines handed out, which a
 *   thread raises before its first slot write).  Either the reader sees
 *   SLOTS gone, and takes its slot back (or, if the claimer has already
 *   moved it, holds the lock through the count, as a reader inside before
 *   the claim, which the writer waits for), or the claimer sees the slot
 *   and moves it.  A reader that sees SLOTS also needs it there: a slot
 *   written after a claim that it did not see would be missed by that
 *   writer's scan, and the writer after it may enter from a word of 0
 *   without any scan.
 * - Leaving.  Read holds are interchangeable.  A read unlock that sees
 *   neither SLOTS nor REVOKING has its hold in the count (a hold in a slot
 *   was put there under SLOTS, and SLOTS goes only with a revocation that
 *   moves it before clearing REVOKING) and subtracts as before.  Otherwise
 *   it releases a slot of its own line holding the lock, else takes a
 *   plain reader off the count (a revoker counts a hold before it empties
 *   its slot, so the hold is always in one of the two places), else looks
 *   in every line (a thread sharing its line took its slot and left its
 *   own counted hold: see pz__rwlock_read_unlock_slots).
 * - No lost wake-up.  A reader leaving by a slot wakes nobody, and needs
 *   to: the only thread waiting for readers to leave is the holder of
 *   WRITER at the address + 1, and it parks only after its revocation,
 *   when every hold it must wait for is in the count.
 * - Ordering.  The reader's second look is an acquire of the word (the
 *   release sequence of the last writer's unlock); its slot release pairs
 *   with the revoker's acquiring load or swap of that slot, or, for a hold
 *   moved into the count, its count release with the writer's entry.  A
 *   reader that wants its slot back (its second look saw SLOTS gone) and
 *   finds it moved enters on that revoker's swap, so the swap releases
 *   too: the claim the reader saw may be an earlier writer's, whose scan
 *   missed the slot and whose whole section has run since.  A
 *   revoker that gives WRITER up again (a failed try, a deadline) and the
 *   end of a revocation release the word, so a writer after them that
 *   finds the slots closed comes after the readers they saw leave.
 * - The recursive reader: while REVOKING, a count of zero does not mean
 *   that no reader is inside (its own earlier hold may still be on its
 *   way into the count), so REVOKING does not block it.
 * The slots cost a writer, while SLOTS is set, a scan of the lines handed
 * out (SLOT_LINES at most; the write lock's fast path fails on the SLOTS
 * bit), and every read unlock a load of the word before its
 * fetch-and-subtract.  The word is not 0 when unlocked once SLOTS is set:
 * it stays set until the next writer.
 *
 * The sharing score.  A writer closes the slots, and readers used to open
 * them again only when two met in the count.  Sections a few nanoseconds
 * long seldom meet there, so after each write the readers went through the
 * count, moving the word's line between the cores at every lock and
 * unlock, for dozens of reads (8 threads, 1% writes, on the 2-vCPU Xeon:
 * 27% of reads, most of the samples, and ~35 000 openings a run).  So the
 * word keeps a score of recent sharing in three bits: set to 7 by a reader
 * that opens the slots beside another counted reader, and by a revocation
 * that moved a hold out of a slot (both prove readers overlap); one less
 * at a revocation that found every slot empty.  A reader entering by the
 * count opens the slots whenever the score is above 0, alone or not; the
 * row above went from 22.5 to 20.5 ns per operation (docs/sync.md, "The
 * sharing score", gives the runs and their commands).  The score bounds
 * what the slots cost where readers do not overlap: seven revocations for nothing and it is 0, and only a
 * meeting in the count opens the slots again.  It changes only by
 * read-modify-writes of the word, like every other bit, and never decides
 * who may enter: SLOTS is still set only in a word without WRITER or
 * REVOKING (pz__rwlock_open_slots), which is all the proofs above use
 * (the model lets any reader entering by the count open the slots).
 * Score bits in an unlocked word send the write lock's fast path, a swap
 * from 0, to the slow path, which claims the same way; the write unlock
 * and the hand-offs keep them.  models/sync_rwlock.pml checks the
 * slots with the rest (and that a reader that does not look again, or a
 * revoker that empties a slot before counting it, breaks them).
 */
#define _GNU_SOURCE
#include "plaza/sync.h"
#include "plaza/park.h"

#include <errno.h>
#include <sched.h>

#include "../runtime/internal.h"
#include "off_cpu_note.h"
#include "spin_wait.h"

/* The spin before a yield (pz__spin_wait): rounds of 4, 32 and 128 cpu_relax between
 * looks at the word, as pz_mutex's (src/sync/mutex.c says why: each look
 * takes the word's line from the core that holds the lock).  With the
 * earlier rounds of 2, 4 and 8 a reader kept out by a writer's section of a
 * few nanoseconds gave up spinning and yielded: rwlock_read_mostly
 * threads=8 write_pct=10 under chrt -f 10 made 28 000-32 000 sched_yield
 * calls a run (each a switch to another thread) and took 61 ns/op; with
 * these rounds 500-700 calls and 46-50 ns/op, write_pct=1 unchanged
 * (17-21 ns/op either way; 2-vCPU Xeon VM, 3 alternating runs each). */

#define PARKED PZ__RW_PARKED
#define WRITER_PARKED PZ__RW_WRITER_PARKED
#define UPGRADABLE PZ__RW_UPGRADABLE
#define WRITER PZ__RW_WRITER
#define WRITING PZ__RW_WRITING
#define SLOTS PZ__RW_SLOTS
#define REVOKING PZ__RW_REVOKING
#define ONE_READER PZ__RW_ONE_READER
#define READERS PZ__RW_READERS
#define SHARE_ONE PZ__RW_SHARE_ONE
#define SHARE_MASK PZ__RW_SHARE_MASK

/* Unpark tokens: TOKEN_HANDOFF means the waker already added the waiter's
 * park token to the word: the waiter holds the lock (a writer still waits
 * for the readers to leave). */
#define TOKEN_NORMAL 0
#define TOKEN_HANDOFF 1

static const void *writer_addr(pz_rwlock_t *rw)
{
    return (const char *)rw + 1;
}

/* Whether word s keeps a thread from acquiring in mode. */
static bool blocked(int mode, uintptr_t s)
{
    switch (mode) {
    case PZ__RW_MODE_READ:
        return s & WRITER;
    case PZ__RW_MODE_READ_RECURSIVE:
        /* Only a writer that is really inside blocks, or one that has seen
         * the count reach zero and is about to enter (as before WRITING: a
         * recursive reader gets in past a writer only while readers are
         * still inside; the count may also hold readers passing through). */
        /* While REVOKING, read holds are still moving from the slots
         * into the count: a count of zero does not tell that none is
         * left (ours, perhaps). */
        return (s & WRITER) && ((s & WRITING) || !(s & (READERS | REVOKING)));
    default:
        return s & (WRITER | UPGRADABLE);
    }
}

static uintptr_t mode_token(int mode)
{
    switch (mode) {
    case PZ__RW_MODE_READ:
    case PZ__RW_MODE_READ_RECURSIVE:
        return ONE_READER;
    case PZ__RW_MODE_UPGRADABLE:
        return ONE_READER | UPGRADABLE;
    default:
        return WRITER;
    }
}

/* ---- read slots (see the top of the file) ---- */

/* Lines of slots, one cache line each; a thread uses one line (the
 * lines are handed out in turn, so past SLOT_LINES threads share them). */
#define SLOT_LINES 16
#define LINE_SLOTS (64 / (int)sizeof(uintptr_t))

static _Alignas(64) _Atomic uintptr_t slot_lines[SLOT_LINES][LINE_SLOTS];
/* How many lines have been handed out (the scans stop there). */
static _Atomic unsigned lines_given;
/* The calling thread's line, or -1 before its first read through a slot
 * (initial-exec, as src/runtime/wait.c's: no __tls_get_addr call in the
 * shared library).  A sync lock is never held across a task switch, and
 * no lock or unlock call switches, so the thread read here is the one that
 * runs the call; a read unlock on another thread than its lock (a task
 * that suspended while holding it, which is reported) still finds its
 * hold, in the count or in any line (pz__rwlock_read_unlock_slots). */
static __thread int my_line __attribute__((tls_model("initial-exec"))) = -1;

static _Atomic uintptr_t *line_mine(void)
{
    int i = my_line;
    if (i < 0) {
        /* seq_cst: before this thread's first slot write, so a revoker
         * that misses that write in its scan still counts the line (the
         * Dekker pair at the top of the file). */
        i = my_line = (int)(atomic_fetch_add_explicit(&lines_given, 1, memory_order_seq_cst) % SLOT_LINES);
    }
    return slot_lines[i];
}

static int lines_in_use(void)
{
    unsigned n = atomic_load_explicit(&lines_given, memory_order_seq_cst);
    return n < SLOT_LINES ? (int)n : SLOT_LINES;
}

/* Enters for reading through a free slot of the thread's line, SLOTS seen
 * set.  False (holding nothing) if the line is full or the slots were
 * closed meanwhile: the caller enters through the word. */
bool pz__rwlock_read_slot(pz_rwlock_t *rw)
{
    _Atomic uintptr_t *line = line_mine();
    for (int i = 0; i < LINE_SLOTS; i++) {
        uintptr_t v = 0;
        if (atomic_load_explicit(&line[i], memory_order_relaxed) != 0 ||
            !atomic_compare_exchange_strong_explicit(&line[i], &v, (uintptr_t)rw, memory_order_seq_cst,
                                                     memory_order_relaxed))
            continue;
        /* seq_cst: our half of the Dekker pair; acquire: the sections of
         * the writers before (their unlocks' release sequences). */
        if (atomic_load_explicit(&rw->state, memory_order_seq_cst) & SLOTS)
            return true;
        /* Closed meanwhile: take the slot back, unless the revoker has
         * already moved it into the count; then we hold the lock there, as
         * a reader inside before the writer's claim (it waits for us).
         * The failed swap's acquire is then our entry: it reads the
         * revoker's releasing swap (revoke_slots).  The look at the word
         * above is not enough: it may have read the claim of an earlier
         * writer whose scan missed our slot and who has entered, written
         * and left since, before a later revoker moved the slot. */
        v = (uintptr_t)rw;
        return !atomic_compare_exchange_strong_explicit(&line[i], &v, 0, memory_order_acquire, memory_order_acquire);
    }
    return false;
}

/* A reader that found another one counted, or the sharing score above 0:
 * open the slots, unless a writer holds or has claimed the lock. */
void pz__rwlock_open_slots(pz_rwlock_t *rw)
{
    uintptr_t s = atomic_load_explicit(&rw->state, memory_order_relaxed);
    while (!(s & (WRITER | SLOTS | REVOKING))) {
        /* Our own hold is in the count: more than one is sharing, seen
         * now, which renews the score. */
        uintptr_t n = s | SLOTS | ((s & READERS) > ONE_READER ? SHARE_MASK : 0);
        if (atomic_compare_exchange_weak_explicit(&rw->state, &s, n, memory_order_relaxed, memory_order_relaxed))
            return;
    }
}

/* Releases a slot of line holding rw, if there is one. */
static bool slot_leave(_Atomic uintptr_t *line, pz_rwlock_t *rw)
{
    for (int i = 0; i < LINE_SLOTS; i++) {
        uintptr_t v = (uintptr_t)rw;
        /* Release: our section before the writer that finds the slot
         * empty.  Acquire on failure is not needed: a slot emptied by a
         * revoker made its count visible to our next read-modify-write of
         * the word, which reads the latest word anyway. */
        if (atomic_load_explicit(&line[i], memory_order_relaxed) == v &&
            atomic_compare_exchange_strong_explicit(&line[i], &v, 0, memory_order_release, memory_order_relaxed))
            return true;
    }
    return false;
}

/* Moves every read hold of rw kept in a slot into the count, then clears
 * REVOKING.  The caller has just claimed WRITER, clearing SLOTS and
 * setting REVOKING in the same swap (seq_cst: our half of the Dekker
 * pair). */
static void revoke_slots(pz_rwlock_t *rw)
{
    bool moved = false;
    for (int l = 0, n = lines_in_use(); l < n; l++) {
        for (int i = 0; i < LINE_SLOTS; i++) {
            _Atomic uintptr_t *slot = &slot_lines[l][i];
            uintptr_t v = (uintptr_t)rw;
            /* Acquire: the section of a reader that left by this slot. */
            if (atomic_load_explicit(slot, memory_order_seq_cst) != v)
                continue;
            /* Count first, so that the hold is always where its reader
             * looks when it leaves (the slot, or the word). */
            atomic_fetch_add_explicit(&rw->state, ONE_READER, memory_order_relaxed);
            /* Release too: a reader still in pz__rwlock_read_slot that
             * finds its slot emptied enters on this swap alone (its look
             * at the word may have read a claim older than the section of
             * the writer before us, which our claim acquired). */
            if (atomic_compare_exchange_strong_explicit(slot, &v, 0, memory_order_acq_rel, memory_order_acquire))
                moved = true;
            else
                atomic_fetch_sub_explicit(&rw->state, ONE_READER, memory_order_relaxed); /* it left meanwhile */
        }
    }
    /* Done, and the sharing score: full if a reader was in a slot, one
     * less if the slots were open for nothing.  Release, for the same
     * reason as in undo_write. */
    uintptr_t s = atomic_load_explicit(&rw->state, memory_order_relaxed);
    uintptr_t n;
    do {
        n = s & ~REVOKING;
        if (moved)
            n |= SHARE_MASK;
        else if (n & SHARE_MASK)
            n -= SHARE_ONE;
    } while (!atomic_compare_exchange_weak_explicit(&rw->state, &s, n, memory_order_release, memory_order_relaxed));
}

/* The word after claiming WRITER from s (writer, or upgrader after it has
 * taken its own reader and UPGRADABLE off): with the slots open, closes
 * them for a revocation; else enters at once if no reader is counted. */
static uintptr_t claim(uintptr_t s)
{
    if (s & SLOTS)
        return ((s | WRITER) & ~SLOTS) | REVOKING;
    return (s & READERS) ? s | WRITER : s | WRITER | WRITING;
}

/* ---- waking the main queue ---- */

struct wake_ctx {
    pz_rwlock_t *rw;
    uintptr_t acc;   /* sum of the tokens of the waiters picked so far */
    bool force_fair; /* write unlock only: hand off whenever possible */
};

/* Picks, in queue order, every reader and at most one upgradable reader
 * or writer, stopping after a writer; an upgradable reader or writer
 * behind an already picked upgradable reader stays parked. */
static pz_filter_op_t wake_filter(uintptr_t token, void *arg)
{
    struct wake_ctx *c = arg;
    if (c->acc & WRITER)
        return PZ_FILTER_STOP;
    if ((token & (WRITER | UPGRADABLE)) && (c->acc & UPGRADABLE))
        return PZ_FILTER_SKIP;
    c->acc += token;
    return PZ_FILTER_UNPARK;
}

/* Write unlock: below the count the word is WRITER|WRITING, perhaps with
 * PARKED, and nobody else can change those bits now (every acquisition is
 * blocked by WRITER, and PARKED changes only under the bucket lock we
 * hold); only readers passing through change the count, so the new word
 * keeps it, and the sharing score too.  PARKED may be gone although the
 * unlock saw it: the last waiter can time out and clear it between that
 * look and this bucket lock (test_rwlock_exclusion's random deadlines hit
 * that window once in a few runs under TSan); the new word's PARKED comes
 * from the queue anyway. */
static uintptr_t write_unlock_decide(pz_unpark_result_t r, void *arg)
{
    struct wake_ctx *c = arg;
    uintptr_t more = r.have_more ? PARKED : 0;
    bool handoff = r.unparked && (c->force_fair || r.be_fair);
    uintptr_t s = atomic_load_explicit(&c->rw->state, memory_order_relaxed);
    /* By the writer, under the bucket lock: WRITER is still ours. */
    PZ__ASSERT((s & ~(READERS | PARKED | SHARE_MASK)) == (WRITER | WRITING));
    while (!atomic_compare_exchange_weak_explicit(&c->rw->state, &s,
                                                  (s & (READERS | SHARE_MASK)) + (handoff ? c->acc : 0) + more,
                                                  memory_order_release, memory_order_relaxed))
        ;
    return handoff ? TOKEN_HANDOFF : TOKEN_NORMAL;
}

/* Any other release: readers may come and go meanwhile, so the woken
 * waiters only compete again, and PARKED is cleared atomically. */
static uintptr_t released_decide(pz_unpark_result_t r, void *arg)
{
    struct wake_ctx *c = arg;
    if (!r.have_more)
        atomic_fetch_and_explicit(&c->rw->state, ~PARKED, memory_order_relaxed);
    return TOKEN_NORMAL;
}

/* Wakes the waiters that a release may have let in.  held: the bits the
 * releasing thread still holds (UPGRADABLE after a downgrade to it), so
 * that waiters it still blocks are left parked. */
static void wake_released(pz_rwlock_t *rw, uintptr_t held)
{
    struct wake_ctx c = {rw, held, false};
    pz_unpark_filter(rw, wake_filter, released_decide, &c);
}

/* ---- acquiring ---- */

struct park_ctx {
    pz_rwlock_t *rw;
    int mode;
};

static bool validate_main(void *arg)
{
    struct park_ctx *c = arg;
    uintptr_t s = atomic_load_explicit(&c->rw->state, memory_order_relaxed);
    return (s & PARKED) && blocked(c->mode, s);
}

static void main_timed_out(void *arg, bool was_last)
{
    struct park_ctx *c = arg;
    if (was_last)
        atomic_fetch_and_explicit(&c->rw->state, ~PARKED, memory_order_relaxed);
}

static bool validate_writer(void *arg)
{
    pz_rwlock_t *rw = arg;
    uintptr_t s = atomic_load_explicit(&rw->state, memory_order_relaxed);
    return (s & WRITER_PARKED) && (s & READERS);
}

/* Gives up a WRITER that was claimed but never fully held (deadline while
 * readers were still inside), putting back `restore` (the upgradable read
 * lock of an upgrader), and wakes the waiters WRITER kept out. */
static void undo_write(pz_rwlock_t *rw, uintptr_t restore)
{
    uintptr_t s = atomic_load_explicit(&rw->state, memory_order_relaxed);
    uintptr_t n;
    /* Release: a revocation acquired the sections of readers that left by
     * their slots, which the word itself never saw; a writer that enters
     * after this give-up, finding the slots closed, must come after them
     * too (TSan caught the upgrader after a failed try_write that way). */
    do {
        n = (s & ~(WRITER | WRITER_PARKED)) + restore;
    } while (!atomic_compare_exchange_weak_explicit(&rw->state, &s, n, memory_order_release, memory_order_relaxed));
    if (n & PARKED)
        wake_released(rw, restore & UPGRADABLE);
}

/* The caller owns WRITER; waits until no reader is inside and enters by
 * setting WRITING in a swap from a word with a count of zero.  On
 * -ETIMEDOUT WRITER is given up again (see undo_write). */
static int wait_for_readers(pz_rwlock_t *rw, int64_t deadline, uintptr_t restore)
{
    int spins = 0;
    bool parked = false; /* parked before in this call */
    uintptr_t s = atomic_load_explicit(&rw->state, memory_order_acquire);
    for (;;) {
        if (!(s & READERS)) {
            /* WRITER_PARKED may outlive the wait (the last reader clears it
             * in its wake callback, perhaps after we saw the count reach
             * zero); clear it so the write unlock's fast path works.  A late
             * callback that clears it again also wakes whoever is parked
             * then, so that is harmless. */
            if (atomic_compare_exchange_weak_explicit(&rw->state, &s, (s | WRITING) & ~WRITER_PARKED,
                                                      memory_order_acquire, memory_order_acquire))
                return 0;
            continue;
        }
        if (!(s & WRITER_PARKED) && pz__spin_wait(&spins)) {
            s = atomic_load_explicit(&rw->state, memory_order_acquire);
            continue;
        }
        if (!(s & WRITER_PARKED) &&
            !atomic_compare_exchange_weak_explicit(&rw->state, &s, s | WRITER_PARKED, memory_order_acquire,
                                                   memory_order_acquire))
            continue;
        pz__wait_note_again(PZ__WAIT_RWLOCK, rw, parked);
        parked = true;
        const pz_park_opts_t opts = {.validate = validate_writer, .ctx = rw, .flags = PZ_PARK_THREAD};
        pz__sync_note_off_cpu();
        int r = pz_park(writer_addr(rw), deadline, &opts, NULL);
        if (r == -ETIMEDOUT) {
            undo_write(rw, restore);
            return -ETIMEDOUT;
        }
        s = atomic_load_explicit(&rw->state, memory_order_acquire);
    }
}

int pz__rwlock_lock_slow(pz_rwlock_t *rw, int mode, int64_t deadline)
{
    int spins = 0;
    bool parked = false; /* parked before in this call */
    uintptr_t add = mode_token(mode);
    uintptr_t s = atomic_load_explicit(&rw->state, memory_order_relaxed);
    for (;;) {
        if (!blocked(mode, s)) {
            /* A writer that finds no reader (counted or in a slot) enters
             * at once. */
            uintptr_t n = mode == PZ__RW_MODE_WRITE ? claim(s) : s + add;
            if (!atomic_compare_exchange_strong_explicit(&rw->state, &s, n, memory_order_seq_cst,
                                                         memory_order_relaxed))
                continue;
            if (mode != PZ__RW_MODE_WRITE || (n & WRITING))
                return 0;
            if (n & REVOKING)
                revoke_slots(rw);
            return wait_for_readers(rw, deadline, 0);
        }
        if (!(s & PARKED) && pz__spin_wait(&spins)) {
            s = atomic_load_explicit(&rw->state, memory_order_relaxed);
            continue;
        }
        if (!(s & PARKED) && !atomic_compare_exchange_weak_explicit(&rw->state, &s, s | PARKED,
                                                                     memory_order_relaxed, memory_order_relaxed))
            continue;
        struct park_ctx c = {rw, mode};
        uintptr_t token = TOKEN_NORMAL;
        pz__wait_note_again(PZ__WAIT_RWLOCK, rw, parked);
        parked = true;
        const pz_park_opts_t opts = {.validate = validate_main, .timed_out = main_timed_out, .ctx = &c,
                                     .park_token = add, .flags = PZ_PARK_THREAD};
        pz__sync_note_off_cpu();
        int r = pz_park(rw, deadline, &opts, &token);
        if (r == 0 && token == TOKEN_HANDOFF) {
            /* The waker added our token to the word.  Pair with its
             * release store (the lot's wake also orders it). */
            (void)atomic_load_explicit(&rw->state, memory_order_acquire);
            return mode == PZ__RW_MODE_WRITE ? wait_for_readers(rw, deadline, 0) : 0;
        }
        if (r == -ETIMEDOUT)
            return -ETIMEDOUT;
        spins = 0;
        s = atomic_load_explicit(&rw->state, memory_order_relaxed);
    }
}

static bool try_write_slots(pz_rwlock_t *rw, uintptr_t s, uintptr_t give);

bool pz__rwlock_try_slow(pz_rwlock_t *rw, int mode)
{
    uintptr_t s = atomic_load_explicit(&rw->state, memory_order_relaxed);
    for (;;) {
        /* A try never waits, so a writer needs the readers gone too (and
         * so fails while a reader passes through). */
        if (blocked(mode, s) || (mode == PZ__RW_MODE_WRITE && (s & READERS)))
            return false;
        if (mode == PZ__RW_MODE_WRITE && (s & SLOTS))
            return try_write_slots(rw, s, 0);
        uintptr_t n = s + mode_token(mode) + (mode == PZ__RW_MODE_WRITE ? WRITING : 0);
        if (atomic_compare_exchange_weak_explicit(&rw->state, &s, n, memory_order_acquire, memory_order_relaxed))
            return true;
    }
}

/* A try that claims WRITER from s (a word with SLOTS, after `give`, the
 * upgrader's own upgradable read lock, is taken off), revokes the slots,
 * and enters only if no reader is left; otherwise gives WRITER up again
 * (putting `give` back).  False also if the word moved under the claim. */
static bool try_write_slots(pz_rwlock_t *rw, uintptr_t s, uintptr_t give)
{
    if (!atomic_compare_exchange_strong_explicit(&rw->state, &s, claim(s - give), memory_order_seq_cst,
                                                 memory_order_relaxed))
        return false;
    revoke_slots(rw);
    s = atomic_load_explicit(&rw->state, memory_order_acquire);
    while (!(s & READERS))
        if (atomic_compare_exchange_weak_explicit(&rw->state, &s, (s | WRITING) & ~WRITER_PARKED, memory_order_acquire,
                                                  memory_order_acquire))
            return true;
    undo_write(rw, give);
    return false;
}

bool pz__rwlock_try_upgrade_slots(pz_rwlock_t *rw)
{
    uintptr_t s = atomic_load_explicit(&rw->state, memory_order_relaxed);
    if (!(s & UPGRADABLE) || (s & WRITER))
        return false;
    if (!(s & SLOTS))
        return pz_rwlock_try_upgrade(rw);
    return try_write_slots(rw, s, ONE_READER | UPGRADABLE);
}

/* ---- releasing ---- */

static uintptr_t clear_writer_parked(pz_unpark_result_t r, void *arg)
{
    (void)r;
    pz_rwlock_t *rw = arg;
    atomic_fetch_and_explicit(&rw->state, ~WRITER_PARKED, memory_order_relaxed);
    return 0;
}

/* The count has just become n: the last reader out wakes the writer
 * waiting at the address + 1. */
static void readers_left(pz_rwlock_t *rw, uintptr_t n)
{
    if (!(n & READERS) && (n & WRITER_PARKED))
        pz_unpark_one(writer_addr(rw), clear_writer_parked, rw);
}

/* A reader that added itself under WRITER leaves again (see the top of
 * the file).  Relaxed: it read nothing under the lock. */
void pz__rwlock_read_back_out(pz_rwlock_t *rw)
{
    readers_left(rw, atomic_fetch_sub_explicit(&rw->state, ONE_READER, memory_order_relaxed) - ONE_READER);
}

/* The read unlock with the slots open or being revoked.  Read holds are
 * interchangeable: the thread's own line first (where its hold is, unless
 * a revoker has moved it into the count), then the count, if it counts a
 * plain reader, then any line (a thread that shares its line, or misuse).
 * While a revocation runs a look can miss the hold it is after, so a few
 * passes, with pauses, before the unlock is called a misuse. */
void pz__rwlock_read_unlock_slots(pz_rwlock_t *rw)
{
    if (my_line >= 0 && slot_leave(slot_lines[my_line], rw))
        return;
    for (int pass = 0; pass < 64; pass++) {
        uintptr_t s = atomic_load_explicit(&rw->state, memory_order_relaxed);
        for (;;) {
            uintptr_t plain = (s & READERS) - ((s & UPGRADABLE) ? ONE_READER : 0);
            if (!plain)
                break;
            if (atomic_compare_exchange_weak_explicit(&rw->state, &s, s - ONE_READER, memory_order_release,
                                                      memory_order_relaxed)) {
                readers_left(rw, s - ONE_READER);
                return;
            }
        }
        for (int l = 0, n = lines_in_use(); l < n; l++)
            if (slot_leave(slot_lines[l], rw))
                return;
        for (int i = 0; i < (1 << (pass < 10 ? pass : 10)); i++)
            pz__arch_cpu_relax();
    }
    pz__report("pz_rwlock_read_unlock: rwlock %p is not read-locked; ignored", (void *)rw);
}

/* The read unlock's fetch-and-subtract found `before`: either we were the
 * last reader under WRITER_PARKED, or there was no plain reader to take
 * away.  Then the subtraction is undone (for the moment it lasted the
 * count was one short: a writer or upgrader may have seen readers where
 * there were none, or none where one was left behind the upgradable one,
 * and waited; the undo is a count moving, so it wakes as an unlock would). */
void pz__rwlock_read_unlocked_slow(pz_rwlock_t *rw, uintptr_t before)
{
    uintptr_t readers = before & READERS;
    if (before & UPGRADABLE)
        readers -= ONE_READER; /* the upgradable reader is not ours */
    if (!readers) {
        uintptr_t n = atomic_fetch_add_explicit(&rw->state, ONE_READER, memory_order_relaxed) + ONE_READER;
        pz__report("pz_rwlock_read_unlock: rwlock %p is not read-locked; ignored", (void *)rw);
        readers_left(rw, n);
        return;
    }
    readers_left(rw, before - ONE_READER);
}

void pz__rwlock_write_unlock_slow(pz_rwlock_t *rw, bool fair)
{
    uintptr_t s = atomic_load_explicit(&rw->state, memory_order_relaxed);
    for (;;) {
        if ((s & (WRITER | WRITING)) != (WRITER | WRITING)) {
            pz__report("pz_rwlock_write_unlock: rwlock %p is not write-locked; ignored", (void *)rw);
            return;
        }
        if (s & PARKED)
            break;
        /* Readers passing through may be in the count: keep them. */
        if (atomic_compare_exchange_weak_explicit(&rw->state, &s, s & ~(WRITER | WRITING | WRITER_PARKED),
                                                  memory_order_release, memory_order_relaxed))
            return;
    }
    struct wake_ctx c = {rw, 0, fair};
    pz_unpark_filter(rw, wake_filter, write_unlock_decide, &c);
}

void pz__rwlock_upgradable_unlock_slow(pz_rwlock_t *rw)
{
    uintptr_t s = atomic_load_explicit(&rw->state, memory_order_relaxed);
    do {
        if (!(s & UPGRADABLE)) {
            pz__report("pz_rwlock_upgradable_unlock: rwlock %p is not upgradable-locked; ignored", (void *)rw);
            return;
        }
    } while (!atomic_compare_exchange_weak_explicit(&rw->state, &s, s - (ONE_READER | UPGRADABLE),
                                                    memory_order_release, memory_order_relaxed));
    if (s & PARKED)
        wake_released(rw, 0);
}

int pz__rwlock_upgrade_slow(pz_rwlock_t *rw, int64_t deadline)
{
    /* While we hold UPGRADABLE nobody else can hold or claim WRITER, so the
     * claim succeeds at once; new readers are kept out from here on. */
    uintptr_t s = atomic_load_explicit(&rw->state, memory_order_relaxed);
    uintptr_t n;
    do {
        if (!(s & UPGRADABLE) || (s & WRITER)) {
            pz__report("pz_rwlock_upgrade: rwlock %p is not upgradable-locked; ignored", (void *)rw);
            return -EINVAL;
        }
        n = claim(s - (ONE_READER | UPGRADABLE));
    } while (!atomic_compare_exchange_weak_explicit(&rw->state, &s, n, memory_order_seq_cst, memory_order_relaxed));
    if (n & WRITING)
        return 0;
    if (n & REVOKING)
        revoke_slots(rw);
    return wait_for_readers(rw, deadline, ONE_READER | UPGRADABLE);
}

/* Replaces a held WRITER by `to` (a read or upgradable read lock). */
static void downgrade(pz_rwlock_t *rw, uintptr_t to, const char *what)
{
    uintptr_t s = atomic_load_explicit(&rw->state, memory_order_relaxed);
    uintptr_t n;
    do {
        if ((s & (WRITER | WRITING)) != (WRITER | WRITING)) {
            pz__report("%s: rwlock %p is not write-locked; ignored", what, (void *)rw);
            return;
        }
        n = (s & ~(WRITER | WRITING | WRITER_PARKED)) + to;
    } while (!atomic_compare_exchange_weak_explicit(&rw->state, &s, n, memory_order_release, memory_order_relaxed));
    if (n & PARKED)
        wake_released(rw, to & UPGRADABLE);
}

void pz_rwlock_downgrade(pz_rwlock_t *rw)
{
    downgrade(rw, ONE_READER, "pz_rwlock_downgrade");
}

void pz_rwlock_downgrade_to_upgradable(pz_rwlock_t *rw)
{
    downgrade(rw, ONE_READER | UPGRADABLE, "pz_rwlock_downgrade_to_upgradable");
}

void pz_rwlock_upgradable_downgrade(pz_rwlock_t *rw)
{
    uintptr_t s = atomic_load_explicit(&rw->state, memory_order_relaxed);
    do {
        if (!(s & UPGRADABLE)) {
            pz__report("pz_rwlock_upgradable_downgrade: rwlock %p is not upgradable-locked; ignored", (void *)rw);
            return;
        }
    } while (!atomic_compare_exchange_weak_explicit(&rw->state, &s, s - UPGRADABLE, memory_order_release,
                                                    memory_order_relaxed));
    if (s & PARKED)
        wake_released(rw, 0);
}
