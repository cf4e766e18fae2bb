/*
 * pz_mutex: the one-byte thread-blocking mutex (src/sync/mutex.c, the
 * inline parts of include/plaza/sync.h), on the parking lot reduced to
 * what it relies on (park.pml checks the lot itself): a bucket lock, a
 * FIFO queue, validate under the bucket lock, unpark_one with its callback
 * under the bucket lock, and the lot's be_fair.  models/sync_mutex.md maps
 * it to the C code.
 *
 * Checked: mutual exclusion and no lost wake-up (safety, three threads
 * with a few rounds each), and whether a waiter gets the lock while two
 * others lock and unlock for ever (PROGRESS, ltl p3_gets_lock: the header
 * used to say "so nobody starves").
 *
 * be_fair: true when the chosen waiter has been parked for FAIR_NS in
 * this park (old_park), or when the bucket's random interval has run out
 * (fair_due, set by a clock that weak fairness makes tick); otherwise a
 * free choice (an interval may run out at any moment).
 *
 * BAD_VALIDATE: validate checks LOCKED only (must fail: lost wake-up).
 *
 * Memory: sequentially consistent (every change of the byte is a CAS or
 * a store under the bucket lock; the relaxed loads are hints that a CAS or
 * validate confirms).
 */

#ifndef R1
#define R1 2
#endif
#ifndef R2
#define R2 2
#endif
#ifndef R3
#define R3 1
#endif
#ifndef SPINS
#define SPINS 1
#endif

#define LOCKED 1
#define PARKED 2
#define TOKEN_NORMAL 0
#define TOKEN_HANDOFF 1

byte state;
byte blk;
byte q[3];
byte qn;
#ifdef PROGRESS
byte tnext, tserve;   /* the bucket lock as a ticket lock (see mutex.md) */
#define BUCKET_TICKET atomic { myt = tnext; tnext = (tnext + 1) % 4 };
#define BUCKET_ACQ tserve == myt -> blk = me; myt = 0
#define BUCKET_REL blk = 0; tserve = (tserve + 1) % 4
#else
#define BUCKET_TICKET
#define BUCKET_ACQ blk == 0 -> blk = me
#define BUCKET_REL blk = 0
#endif
byte pw[4];      /* 0 running, 1 parked, 4 claimed, 2 woken */
byte tok[4];
byte in_cs;
bit got[4];
bit old_park[4]; /* parked for FAIR_NS in this park */
bit fair_due;    /* the bucket's random fairness interval has run out */

inline lock() {
    atomic {
        if
        :: state == 0 -> state = LOCKED; ok = 1
        :: else -> ok = 0
        fi
    }
    if
    :: ok -> skip
    :: else ->
        /* pz__mutex_lock_slow */
        spins = 0;
        do
        :: atomic {
               s = state;
               if
               :: (s & LOCKED) == 0 -> state = s | LOCKED; ok = 1   /* the CAS, folded with its load */
               :: else -> skip
               fi
           }
           if
           :: ok -> break
           :: else -> skip
           fi;
           if
           :: (s & PARKED) == 0 && spins < SPINS -> spins++
           :: else ->
               /* set PARKED if clear (a CAS from s: fails, and loops, if
                * the byte changed) */
               atomic {
                   if
                   :: (s & PARKED) == 0 && state == s -> state = s | PARKED; cas = 1
                   :: (s & PARKED) == 0 && state != s -> cas = 0
                   :: (s & PARKED) != 0 -> cas = 1
                   fi
               }
               if
               :: cas ->
                   /* pz_park: validate under the bucket lock */
                   BUCKET_TICKET
                   atomic {
                       BUCKET_ACQ;
                       if
                       #ifdef BAD_VALIDATE
                       /* known bad: validate checks LOCKED only, so a
                        * waiter may park after an unlock that emptied the
                        * queue cleared PARKED */
                       :: state & LOCKED -> q[qn] = me; qn++; pw[me] = 1; old_park[me] = 0; r = 1
#else
                       :: state == (LOCKED | PARKED) -> q[qn] = me; qn++; pw[me] = 1; old_park[me] = 0; r = 1
#endif
                       :: else -> r = 0
                       fi;
                       BUCKET_REL
                   }
                   if
                   :: r ->
                       atomic { pw[me] == 2 -> pw[me] = 0 }
                       if
                       :: tok[me] == TOKEN_HANDOFF -> tok[me] = 0; ok = 1; break
                       :: else -> skip
                       fi
                   :: else -> skip
                   fi;
                   spins = 0
               :: else -> skip
               fi
           fi;
           atomic { s = 0; cas = 0; r = 0 }
        od
    fi
}

inline unlock() {
    atomic {
        if
        :: state == LOCKED -> state = 0; done = 1
        :: else -> done = 0
        fi
    }
    if
    :: done -> skip
    :: else ->
        /* pz__mutex_unlock_slow: unpark_one with unlock_decide */
        BUCKET_TICKET
        atomic {
            BUCKET_ACQ;
            if
            :: qn > 0 ->
                chosen = q[0]; pw[chosen] = 4;
                i = 0;
                do
                :: i + 1 < qn -> q[i] = q[i + 1]; i++
                :: else -> break
                od;
                qn--; q[qn] = 0; i = 0
            :: else -> chosen = 0
            fi
        }
        atomic {
            if
            :: chosen != 0 && (fair_due || old_park[chosen]) -> fair = 1; fair_due = 0
            :: chosen != 0 -> fair = 0
            :: chosen != 0 -> fair = 1
            :: chosen == 0 -> fair = 0
            fi;
            if
            :: chosen != 0 && fair ->
                if
                :: qn == 0 -> state = LOCKED
                :: else -> skip
                fi;
                tok[chosen] = TOKEN_HANDOFF
            :: else ->
                state = (qn > 0 -> PARKED : 0);
                if
                :: chosen != 0 -> tok[chosen] = TOKEN_NORMAL
                :: else -> skip
                fi
            fi;
            BUCKET_REL
        }
        atomic {
            if
            :: chosen != 0 -> pw[chosen] = 2
            :: else -> skip
            fi;
            chosen = 0; fair = 0
        }
    fi;
    done = 0
}

proctype thread(byte me; byte rounds)
{
    byte s, spins, i, chosen, myt;
    bit ok, cas, r, done, fair;
    byte n = 0;
    do
    :: rounds == 0 || n < rounds ->
        lock();
        atomic { ok = 0; spins = 0 }
        in_cs++;
        assert(in_cs == 1);
#ifdef PROGRESS
        got[me] = 1;
#endif
        in_cs--;
        unlock();
        n = (rounds == 0 -> 0 : n + 1)
    :: rounds != 0 && n >= rounds -> break
    od
}

#ifdef PROGRESS
/* The bucket's fairness interval runs out eventually; a parked waiter's
 * FAIR_NS passes eventually while it stays parked. */
active proctype clocks()
{
end_clocks:
    do
    :: atomic { !fair_due -> fair_due = 1 }
    :: atomic { pw[1] == 1 && !old_park[1] -> old_park[1] = 1 }
    :: atomic { pw[2] == 1 && !old_park[2] -> old_park[2] = 1 }
    :: atomic { pw[3] == 1 && !old_park[3] -> old_park[3] = 1 }
    od
}
#endif

init {
    atomic {
#ifdef PROGRESS
        run thread(1, 0);
        run thread(2, 0);
        run thread(3, 1);
#else
        run thread(1, R1);
        run thread(2, R2);
        run thread(3, R3);
#endif
    }
}

#ifdef PROGRESS
ltl p3_gets_lock { <> (got[3] > 0) }
#endif
