/*
 * pz_rwlock's reader entry: the read lock's one fetch-and-add, the
 * back-out of a reader that finds WRITER, the read unlock's one
 * fetch-and-subtract, and the WRITING bit that tells a writer inside
 * (src/sync/rwlock.c, the top of the file; include/plaza/sync.h).
 * models/sync_rwlock.md maps it to the C code.
 *
 * Checked (safety, exhaustive): a writer is never inside beside a reader
 * (plain or recursive); no lost wake-up of the writer parked at the
 * address + 1 (every process ends: a writer parked with nobody left to
 * wake it is an invalid end state); the word ends at 0.
 *
 * Known-bad variants (each must fail):
 * COUNT_TELLS_WRITING=1: the recursive reader tells a writer inside by a
 *   count of zero (the rule before WRITING): a reader passing through
 *   makes the count non-zero beside a writer inside, and the recursive
 *   reader gets in.
 * BAD_BACKOUT_NO_WAKE: the back-out only subtracts, never waking the
 *   writer: the last reader out may be one passing through, and the
 *   writer stays parked.
 *
 * Not modelled here: the main queue (readers and writers waiting to
 * acquire park on the lock's address; its protocol is unchanged, and a
 * waiter here waits for the word to let it in, which is what the lot's
 * validate and wake give it), the upgradable reader, deadlines, hand-off.
 *
 * Memory: every change of the word is a read-modify-write (fetch-and-add,
 * fetch-and-subtract, CAS) or a swap under the bucket lock; they fall in
 * the word's one modification order, which is the interleaving here.  A
 * load followed by a CAS from the loaded value is one atomic step when the
 * CAS's success is all that matters (the CAS fails if the word moved).
 */

#ifndef NR
#define NR 2 /* plain readers */
#endif
#ifndef RR
#define RR 2 /* rounds of each reader */
#endif
#ifndef WR
#define WR 2 /* rounds of the writer */
#endif
#ifndef COUNT_TELLS_WRITING
#define COUNT_TELLS_WRITING 0
#endif

#define WP 2       /* PZ__RW_WRITER_PARKED */
#define WRITER 8   /* PZ__RW_WRITER */
#define WRITING 16 /* PZ__RW_WRITING */
#define ONE 32     /* PZ__RW_ONE_READER */
#define COUNT(s) ((s) / ONE)

int st;          /* rw->state (PARKED and UPGRADABLE left out) */
bit blk;         /* the bucket lock of the address + 1 */
bit wparked;     /* the writer is queued at the address + 1 */
byte readers_in; /* readers inside their section */
bit writer_in;   /* the writer inside its section */
byte done;

#if COUNT_TELLS_WRITING
#define REC_BLOCKED(s) (((s) & WRITER) && COUNT(s) == 0)
#else
#define REC_BLOCKED(s) (((s) & WRITER) && (((s) & WRITING) || COUNT(s) == 0))
#endif

/* readers_left(n): the count has just become n; the last reader out
 * under WRITER_PARKED wakes the writer (pz_unpark_one on the address + 1
 * with clear_writer_parked as its callback, under the bucket lock). */
inline readers_left(n)
{
    if
    :: COUNT(n) == 0 && (n & WP) ->
        atomic { blk == 0 -> blk = 1 };
        if
        :: wparked -> wparked = 0
        :: else -> skip
        fi;
        st = st & ~WP; /* clear_writer_parked */
        blk = 0
    :: else -> skip
    fi
}

/* rec: 1 for pz_rwlock_read_recursive, 0 for pz_rwlock_read. */
proctype reader(bit rec)
{
    byte i = 0;
    int old, n;
    do
    :: i < RR ->
        /* pz__rwlock_read_fast: one fetch-and-add. */
        atomic { old = st; st = st + ONE };
        if
        :: !(old & WRITER) -> old = 0
        :: else ->
            old = 0;
            /* pz__rwlock_read_back_out */
#ifdef BAD_BACKOUT_NO_WAKE
            st = st - ONE;
#else
            atomic { st = st - ONE; n = st };
            readers_left(n);
            n = 0;
#endif
            /* pz__rwlock_lock_slow: waits (spins or parks on the main
             * queue) until the word lets it in, then its CAS adds a
             * reader to the word it loaded. */
            if
            :: rec -> atomic { !REC_BLOCKED(st) -> st = st + ONE }
            :: else -> atomic { !(st & WRITER) -> st = st + ONE }
            fi
        fi;
        atomic { readers_in++; assert(!writer_in) };
        readers_in--;
        /* pz_rwlock_read_unlock: one fetch-and-subtract; the slow path
         * (pz__rwlock_read_unlocked_slow) when it was the last reader
         * under WRITER_PARKED. */
        atomic { old = st; st = st - ONE };
        assert(COUNT(old) >= 1);
        if
        :: COUNT(old) == 1 && (old & WP) -> readers_left(old - ONE)
        :: else -> skip
        fi;
        old = 0;
        i++
    :: else -> break
    od;
    done++
}

proctype writer()
{
    byte i = 0;
    int s;
    do
    :: i < WR ->
        /* pz_rwlock_write's CAS from 0, or the slow path's claim: add
         * WRITER (and WRITING when no reader is counted) once no other
         * writer holds it. */
        atomic {
            !(st & WRITER) ->
            if
            :: COUNT(st) == 0 -> st = st + WRITER + WRITING
            :: else -> st = st + WRITER
            fi
        };
        /* wait_for_readers */
        do
        :: atomic { st & WRITING -> break }
        :: atomic { !(st & WRITING) && COUNT(st) == 0 -> st = (st | WRITING) & ~WP; break }
        :: else ->
            s = st;
            if
            :: COUNT(s) != 0 && !(s & WP) ->
                /* set WRITER_PARKED by CAS from the word loaded */
                atomic {
                    if
                    :: st == s -> st = s | WP
                    :: else -> skip
                    fi
                }
            :: COUNT(s) != 0 && (s & WP) ->
                /* pz_park on the address + 1 with validate_writer */
                atomic { blk == 0 -> blk = 1 };
                if
                :: (st & WP) && COUNT(st) != 0 ->
                    wparked = 1;
                    blk = 0;
                    wparked == 0 /* woken */
                :: else -> blk = 0
                fi
            :: else -> skip /* the count moved: look again */
            fi;
            s = 0
        od;
        atomic { writer_in = 1; assert(readers_in == 0) };
        writer_in = 0;
        /* pz_rwlock_write_unlock: clears WRITER and WRITING, keeping
         * the count of readers passing through. */
        atomic {
            assert((st & (WRITER | WRITING)) == (WRITER | WRITING));
            st = st & ~(WRITER | WRITING | WP)
        };
        i++
    :: else -> break
    od;
    done++
}

init {
    atomic {
        byte k = 0;
        do
        :: k < NR -> run reader(0); k++
        :: else -> break
        od;
        run reader(1);
        run writer()
    };
    done == NR + 2;
    assert(st == 0)
}
