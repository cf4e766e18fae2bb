/*
 * pz_mutex: the one-byte thread-blocking mutex (src/sync/mutex.c, the
 * inline parts of include/plaza/sync.h), on the parking lot reduced to
 * what it relies on (park.pml checks the lot itself): a bucket lock, a
 * FIFO queue, validate under the bucket lock, the unpark with its filter
 * and callback under the bucket lock, and the lot's be_fair.  models/sync_mutex.md maps
 * it to the C code.
 *
 * Checked: mutual exclusion and no lost wake-up (safety, three threads
 * with a few rounds each), and that a waiter gets the lock while two
 * others lock and unlock for ever (PROGRESS, ltl p3_gets_lock).
 *
 * The hand-off: the unlock hands the lock to the waiter it takes from the
 * queue when that waiter has waited FAIR_NS since it began to wait (its
 * first spin over) in this lock call (long_w, src/sync/mutex.c's
 * waited_long(since, now)),
 * when it has been parked FAIR_NS in this park (old_park: the lot's own
 * be_fair), or when the bucket's random interval has run out (fair_due);
 * otherwise a free choice (an interval may run out at any moment).  The
 * clocks (long_w, old_park, fair_due) are set by a process that weak
 * fairness makes tick; a thread's long_w is cleared when its lock call
 * returns.  The progress check of the fixed protocol leaves old_park and
 * fair_due false, so the lot's be_fair is a free choice at every unlock:
 * they only force hand-offs the free choice can make too, so the check is
 * stronger without them (the waiter gets the lock even if the lot's own
 * fairness never comes), and the search far smaller.  The old protocol's
 * check keeps them: it fails in spite of them.  A waiter that has parked before looks at its long_w each time
 * it finds the word held (lw); once set, it neither spins nor sets PARKED
 * outside the lot, and its validate cannot refuse it (lw_validate: set
 * PARKED, then take the word if LOCKED is clear, else queue).
 *
 * PROGRESS_FIX=0: the protocol before that rule (no long_w, no lw): the
 * progress check must fail (the waiter loses for ever; sync_mutex.md).
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
#ifndef PROGRESS_FIX
#define PROGRESS_FIX 1
#endif
/* LOST_CAS_COUNTS=1 (default, mutex.c as it is): the slow path's load of
 * a free word and its CAS are two steps; a lost CAS is a spin round (the
 * end of the spin once the rounds are spent), and a long-waiting waiter
 * that lost one parks (lw_validate takes a free word or queues).  0: the
 * code before, where a lost CAS looks again at once (the progress check
 * must fail: the waiter can lose that race for ever). */
#ifndef LOST_CAS_COUNTS
#define LOST_CAS_COUNTS 1
#endif
/* LW12=0: threads 1 and 2 never become long-waiting (a smaller search;
 * sync_mutex.md says why it still shows thread 3's progress). */
#ifndef LW12
#define LW12 1
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
bit began[4];    /* has begun to wait in this lock call (since != 0) */
bit long_w[4];   /* FAIR_NS have passed since then */

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
        :: 
           /* the load, and the CAS when it reads the word free: two
            * steps, so another thread may take the word in between */
           s = state;
           if
           :: (s & LOCKED) == 0 ->
               atomic {
                   if
                   :: state == s -> state = s | LOCKED; ok = 1
                   :: else -> skip
                   fi
               }
               if
               :: ok -> break
               :: else -> skip
               fi;
#if LOST_CAS_COUNTS
               /* lost the free word: a spin round, or the end of the
                * spin; a waiter that has begun to wait looks at its
                * clock, and a long-waiting one goes on to park (its
                * validate takes a free word or queues) */
               if
               :: !began[me] && spins < SPINS -> spins++
               :: !began[me] && spins >= SPINS -> began[me] = 1
               :: began[me] -> lw = lw || long_w[me]; lost = lw
               fi
#endif
           :: else -> skip
           fi;
           if
           :: (s & LOCKED) == 0 && !lost -> skip   /* look again */
           :: (s & LOCKED) != 0 || lost ->
#if PROGRESS_FIX
           /* a waiter that has begun to wait looks at its clock */
           lw = lw || long_w[me];
#endif
           if
           :: !lw && (s & PARKED) == 0 && spins < SPINS -> spins++
           :: else ->
#if PROGRESS_FIX
               began[me] = 1;   /* the spin is over: since is set */
#endif
               /* set PARKED if clear (a CAS from s: fails, and loops, if
                * the byte changed); not by a long-waiting waiter, whose
                * validate does it */
               atomic {
                   if
                   :: lw -> cas = 1
                   :: !lw && (s & PARKED) == 0 && state == s -> state = s | PARKED; cas = 1
                   :: !lw && (s & PARKED) == 0 && state != s -> cas = 0
                   :: !lw && (s & PARKED) != 0 -> cas = 1
                   fi
               }
               if
               :: cas ->
                   /* pz_park: validate under the bucket lock */
                   BUCKET_TICKET
                   atomic {
                       BUCKET_ACQ;
                       if
                       :: lw ->
                           /* lw_validate, first step: the fetch_or of
                            * PARKED (old value in s) */
                           s = state; state = state | PARKED; r = 2
                       #ifdef BAD_VALIDATE
                       /* known bad: validate checks LOCKED only, so a
                        * waiter may park after an unlock that emptied the
                        * queue cleared PARKED */
                       :: !lw && (state & LOCKED) -> q[qn] = me; qn++; pw[me] = 1; old_park[me] = 0; r = 1
#else
                       :: !lw && state == (LOCKED | PARKED) -> q[qn] = me; qn++; pw[me] = 1; old_park[me] = 0; r = 1
#endif
                       :: else -> r = 0
                       fi;
                       if
                       :: r != 2 -> BUCKET_REL
                       :: else -> skip
                       fi
                   }
                   if
                   :: r == 2 ->
                       /* lw_validate, second step (still under the bucket
                        * lock; a running thread may have set LOCKED in
                        * between): held, queue; free, take it by CAS from
                        * PARKED, clearing PARKED if we set it */
                       atomic {
                           if
                           :: s & LOCKED -> q[qn] = me; qn++; pw[me] = 1; old_park[me] = 0; r = 1
                           :: (s & LOCKED) == 0 && state == PARKED -> state = LOCKED | (s & PARKED); r = 3
                           :: (s & LOCKED) == 0 && state != PARKED ->
                               assert(state == (LOCKED | PARKED));
                               q[qn] = me; qn++; pw[me] = 1; old_park[me] = 0; r = 1
                           fi;
                           BUCKET_REL
                       }
                   :: else -> skip
                   fi;
                   if
                   :: r == 3 -> ok = 1; break   /* took the free word */
                   :: r == 1 ->
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
           fi
           fi;
           atomic { s = 0; cas = 0; r = 0; lost = 0 }
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
        /* pz__mutex_unlock_slow: pz_unpark_filter(m, unlock_filter,
         * unlock_decide): the filter takes the first waiter and notes its
         * first park (one step with the unlink: both under the bucket
         * lock) */
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
            /* the lot's be_fair: the waiter's current park first (the
             * random interval is then left alone), else the interval */
            if
            :: chosen != 0 && old_park[chosen] -> fair = 1
            :: chosen != 0 && !old_park[chosen] && fair_due -> fair = 1; fair_due = 0
            :: chosen != 0 && !old_park[chosen] && !fair_due -> fair = 0
            :: chosen != 0 && !old_park[chosen] && !fair_due -> fair = 1  /* ran out just now */
            :: chosen == 0 -> fair = 0
            fi;
#if PROGRESS_FIX
            /* unlock_decide: or the waiter has waited FAIR_NS since it
             * began to wait */
            fair = fair || (chosen != 0 && long_w[chosen]);
#endif
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
    byte s, spins, i, chosen, myt, r;
    bit ok, cas, done, fair, lw, lost;
    byte n = 0;
    do
    :: rounds == 0 || n < rounds ->
        lock();
        atomic { ok = 0; spins = 0; lw = 0; began[me] = 0; long_w[me] = 0 }
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

/* The bucket's fairness interval runs out eventually; a parked waiter's
 * FAIR_NS passes eventually while it stays parked; a waiter's FAIR_NS
 * since it began to wait passes eventually while its lock call lasts.  The
 * safety check ticks only the last (at any moment): the unlock's free
 * choice already covers the other two. */
#if (defined(PROGRESS) && !PROGRESS_FIX) || (PROGRESS_FIX && LW12)
active proctype clocks()
{
end_clocks:
    do
#if defined(PROGRESS) && !PROGRESS_FIX
    :: atomic { !fair_due -> fair_due = 1 }
    :: atomic { pw[1] == 1 && !old_park[1] -> old_park[1] = 1 }
    :: atomic { pw[2] == 1 && !old_park[2] -> old_park[2] = 1 }
    :: atomic { pw[3] == 1 && !old_park[3] -> old_park[3] = 1 }
#endif
#if PROGRESS_FIX && LW12
    :: atomic { began[1] && !long_w[1] -> long_w[1] = 1 }
    :: atomic { began[2] && !long_w[2] -> long_w[2] = 1 }
#endif
    od
}
#endif

#if PROGRESS_FIX
/* Thread 3's FAIR_NS since it began to wait, in a process of its own: weak
 * fairness is per process, so only a process with this one step must
 * take it once it stays enabled (in clocks, the other steps could always
 * go first). */
active proctype waited3()
{
end_waited3:
    do
    :: atomic { began[3] && !long_w[3] -> long_w[3] = 1 }
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
