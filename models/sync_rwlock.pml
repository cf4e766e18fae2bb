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
 * BAD_NO_RECHECK: a reader that finds SLOTS trusts that first look and
 *   holds by its slot without looking at the word again after writing
 *   it: a writer's claim and scan fall between the look and the write.
 * BAD_CLEAR_BEFORE_COUNT: the revoker empties a slot before it counts
 *   the hold in the word: the reader leaving meanwhile finds neither.
 *
 * The read slots (src/sync/rwlock.c, "read slots"): each reader has one
 * slot (its thread's line); a reader whose fetch-and-add finds another
 * reader counted opens them (SLOTS); with SLOTS seen, a reader writes the
 * lock into its slot and looks at the word again (the Dekker pair with a
 * writer's claim, which clears SLOTS and sets REVOKING in one swap, then
 * scans the slots, moving each hold into the count: count, then empty the
 * slot, uncounting if the slot was emptied meanwhile).  A reader that
 * finds SLOTS gone takes its slot back, or finds it moved and holds
 * through the count.  A read unlock that sees SLOTS or REVOKING looks in
 * its own slot, then takes a reader off the count; it asserts that one
 * of the two had its hold (no misuse here, so the any-slot pass of the C
 * code is never needed).  Checked with the rest: exclusion, no lost
 * wake-up, the word ends at 0 but for SLOTS, and every slot ends empty.
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
#define NR 1 /* plain readers (besides the recursive one) */
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

#define WP 2        /* PZ__RW_WRITER_PARKED */
#define WRITER 8    /* PZ__RW_WRITER */
#define WRITING 16  /* PZ__RW_WRITING */
#define SLOTS 32    /* PZ__RW_SLOTS */
#define REVOKING 64 /* PZ__RW_REVOKING */
#define ONE 128     /* PZ__RW_ONE_READER */
#define COUNT(s) ((s) / ONE)

int st;          /* rw->state (PARKED and UPGRADABLE left out) */
bit slot[NR + 1]; /* reader k's slot holds the lock */
bit blk;         /* the bucket lock of the address + 1 */
bit wparked;     /* the writer is queued at the address + 1 */
byte readers_in; /* readers inside their section */
bit writer_in;   /* the writer inside its section */
byte done;

#if COUNT_TELLS_WRITING
#define REC_BLOCKED(s) (((s) & WRITER) && COUNT(s) == 0)
#else
#define REC_BLOCKED(s) (((s) & WRITER) && (((s) & WRITING) || (COUNT(s) == 0 && !((s) & REVOKING))))
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

/* rec: 1 for pz_rwlock_read_recursive, 0 for pz_rwlock_read; id: its slot. */
proctype reader(bit rec; byte id)
{
    byte i = 0;
    byte via;  /* 1: holds by its slot, 0: not yet in, 2: in by the count */
    bit left;
    int old, n;
    do
    :: i < RR ->
        /* pz__rwlock_read_fast: the look at the word; with SLOTS,
         * pz__rwlock_read_slot. */
        via = 0;
        if
        :: st & SLOTS ->
            slot[id] = 1;
#ifdef BAD_NO_RECHECK
            via = 1
#else
            if
            :: st & SLOTS -> via = 1
            :: else ->
                /* closed: take the slot back, or find it moved */
                atomic {
                    if
                    :: slot[id] -> slot[id] = 0
                    :: else -> via = 2
                    fi
                }
            fi
#endif
        :: else -> skip
        fi;
        if
        :: via == 0 ->
            /* one fetch-and-add */
            atomic { old = st; st = st + ONE };
            if
            :: !(old & WRITER) ->
                /* pz__rwlock_open_slots, by a reader that found another
                 * counted or the sharing score above 0: the score is not
                 * modelled, so any reader entering by the count may open
                 * the slots (or not), which covers every score. */
                if
                :: !(old & SLOTS) ->
                    atomic {
                        if
                        :: !(st & (WRITER | SLOTS | REVOKING)) -> st = st | SLOTS
                        :: else -> skip
                        fi
                    }
                :: true -> skip
                fi;
                old = 0
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
            fi
        :: else -> skip
        fi;
        atomic { readers_in++; assert(!writer_in) };
        readers_in--;
        /* pz_rwlock_read_unlock: the look at the word. */
        if
        :: st & (SLOTS | REVOKING) ->
            /* pz__rwlock_read_unlock_slots: its slot, then the count. */
            left = 0;
            atomic {
                if
                :: slot[id] -> slot[id] = 0; left = 1
                :: else -> skip
                fi
            };
            if
            :: !left ->
                atomic {
                    if
                    :: COUNT(st) > 0 -> st = st - ONE; n = st; left = 1
                    :: else -> skip
                    fi
                };
                assert(left);
                readers_left(n);
                n = 0
            :: else -> skip
            fi;
            left = 0
        :: else ->
            /* one fetch-and-subtract; the slow path
             * (pz__rwlock_read_unlocked_slow) when it was the last reader
             * under WRITER_PARKED. */
            atomic { old = st; st = st - ONE };
            assert(COUNT(old) >= 1);
            if
            :: COUNT(old) == 1 && (old & WP) -> readers_left(old - ONE)
            :: else -> skip
            fi;
            old = 0
        fi;
        via = 0;
        i++
    :: else -> break
    od;
    done++
}

proctype writer()
{
    byte i = 0;
    byte k;
    bit moved;
    int s;
    do
    :: i < WR ->
        /* pz_rwlock_write's CAS from 0, or the slow path's claim: add
         * WRITER (and WRITING when no reader is counted) once no other
         * writer holds it. */
        atomic {
            !(st & WRITER) ->
            if
            :: st & SLOTS -> st = ((st | WRITER) & ~SLOTS) | REVOKING
            :: !(st & SLOTS) && COUNT(st) == 0 -> st = st + WRITER + WRITING
            :: !(st & SLOTS) && COUNT(st) != 0 -> st = st + WRITER
            fi
        };
        /* revoke_slots: each slot holding the lock moves into the count. */
        if
        :: st & REVOKING ->
            k = 0;
            do
            :: k <= NR ->
                if
                :: slot[k] ->
#ifdef BAD_CLEAR_BEFORE_COUNT
                    atomic {
                        if
                        :: slot[k] -> slot[k] = 0; moved = 1
                        :: else -> moved = 0
                        fi
                    };
                    if
                    :: moved -> st = st + ONE
                    :: else -> skip
                    fi;
#else
                    st = st + ONE;
                    atomic {
                        if
                        :: slot[k] -> slot[k] = 0; moved = 1
                        :: else -> moved = 0
                        fi
                    };
                    if
                    :: !moved -> st = st - ONE /* it left meanwhile */
                    :: else -> skip
                    fi;
#endif
                    moved = 0
                :: else -> skip
                fi;
                k++
            :: else -> break
            od;
            k = 0;
            st = st & ~REVOKING
        :: else -> skip
        fi;
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
        :: k < NR -> run reader(0, k); k++
        :: else -> break
        od;
        run reader(1, NR);
        run writer()
    };
    done == NR + 2;
    /* SLOTS may stay open after the last writer */
    assert((st & ~SLOTS) == 0);
    byte m = 0;
    do
    :: m <= NR -> assert(!slot[m]); m++
    :: else -> break
    od
}
