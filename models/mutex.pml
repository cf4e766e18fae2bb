/*
 * pz_async_mutex: the lock word, the waiter word and their slow paths
 * (src/async/mutex.c, the inline parts of include/plaza/async.h).
 * models/mutex.md maps every variable and step to the C code.
 *
 * Three tasks lock and unlock one mutex.  The parking lot is reduced to
 * what the mutex relies on (its own protocol is checked in park.pml): a
 * bucket lock, a FIFO queue, validate under the bucket lock, unpark_one
 * with a callback under the bucket lock, a timer that may claim a parked
 * waiter whose deadline has passed, and the timed-out waiter leaving the
 * queue under the bucket lock with was_last.
 *
 * Memory: sequentially consistent, except the plain-store unlock, whose
 * store of 0 to the lock word goes through a store buffer: it becomes
 * visible at a nondeterministic later step, at the unlocker's next
 * read-modify-write, or at a waiter's heavy fence (membarrier).
 *
 * Switches (-D on the spin command line):
 *   GIVEUP_FIX   0: the -EAGAIN give-up exit of the lock slow path returns
 *                without passing the wake-up on (mutex.c as it is: must
 *                fail); 1 (default, the fix as mutex.c has it,
 *                give_up_refused_park): it wakes a waiter when PARKED is
 *                set, whatever WOKEN says.
 *   FENCES       1 (default): asymmetric fences available, the plain-store
 *                unlock in use; 0: every unlock is a read-modify-write.
 *   BAD_NO_FENCE the first parker skips the heavy fence (must fail).
 *   BAD_STOP_ON_SEEN an unlock that came to the lot for the head's age
 *                (it saw WOKEN) leaves a young head alone without looking
 *                at WOKEN again under the bucket lock (must fail).
 *   R1 R2 R3     rounds of lock/unlock per task; D1 D2 D3: whether the
 *                task's lock calls have a deadline (may time out or be
 *                cancelled).
 *   SPINS        spin rounds before parking (default 1).
 *   LOST_CAS_COUNTS 1 (default, mutex.c as it is): a CAS that loses the
 *                free lock word counts as a spin round, and a waiter whose
 *                rounds are spent announces and parks even though it read
 *                the word free; 0: the code before (loops on the word).
 *   STALE        the slow path's relaxed load may read a free lock word as
 *                held.
 *   HEAD_AGE     1 (default, mutex.c as it is): an unlock that finds
 *                PARKED | WOKEN goes through the lot all the same when
 *                head_since says the head has waited FAIR_NS (or is
 *                unknown); 0: it never does (the protocol without the
 *                head's age and without a timer: the progress check must
 *                fail).
 *   RELEASED_HANDOFF 1 (default, mutex.c as it is): a wake after a late
 *                release hands a long-waiting head the free word (or leaves
 *                it queued when the word is held); 0: it wakes it to
 *                compete like any other.
 *   PROGRESS     tasks 1 and 2 lock and unlock forever (no deadline), task
 *                3 locks once without deadline; checked with -a -f against
 *                the never claim of ltl p3_gets_lock: no cycle in a
 *                complete search; fails with HEAD_AGE=0,
 *                RELEASED_HANDOFF=0 or LOST_CAS_COUNTS=0 (mutex.md).  RACE_WON
 *                makes task 3's load of a free word and its CAS one step
 *                (the assumption the check needed before the lost CAS
 *                counted).  The progress model leaves out
 *                what no step reads (mutex.md, "What the progress check
 *                leaves out"): the bucket lock's ticket counters, the
 *                clocks of tasks 1 and 2, a separate drain process, dead
 *                values (FORGET).
 */

#ifndef GIVEUP_FIX
#define GIVEUP_FIX 1
#endif
#ifndef HEAD_AGE
#define HEAD_AGE 1
#endif
#ifndef RELEASED_HANDOFF
#define RELEASED_HANDOFF 1
#endif
#ifndef FENCES
#define FENCES 1
#endif
#ifndef R1
#define R1 1
#endif
#ifndef R2
#define R2 1
#endif
#ifndef R3
#define R3 1
#endif
#ifndef D1
#define D1 0
#endif
#ifndef D2
#define D2 1
#endif
#ifndef D3
#define D3 1
#endif
#ifndef SPINS
#define SPINS 1   /* spin rounds before parking (pz__async_spin_rounds) */
#endif
#ifndef LOST_CAS_COUNTS
#define LOST_CAS_COUNTS 1
#endif

/* state: LOCKED | id << 1 (id 1..3); LOCKED alone during a hand-off. */
#define LOCKED 1
/* waiters */
#define PARKED 1
#define FENCED 2
#define WOKEN 4
#define CONTENDED 16
/* head_since: 0 nobody queued, an id (that task's since: the start of its
 * wait), or HS_UNK (unknown: the head was served or a waiter left) */
#define HS_UNK 4

#define TOKEN_NORMAL 0
#define TOKEN_HANDOFF 1

#define R_OK 0
#define R_TIMEDOUT 1
#define R_AGAIN 2
#define R_TOOK 3   /* a long-waiting validate took the free lock */

/* serve_filter leaves a young head alone only if WOKEN is still set under
 * the bucket lock (its owner has not parked); BAD_STOP_ON_SEEN trusts the
 * WOKEN the unlock saw before it took the bucket lock (must fail: that
 * owner may have parked since) */
#ifdef BAD_STOP_ON_SEEN
#define STILL_WOKEN 1
#else
#define STILL_WOKEN (waiters & WOKEN)
#endif

/* serve_filter's answers */
#define OP_UNPARK_STOP 1
#define OP_STOP 2

/* FORGET(v): v is dead here (every path writes it before reading it
 * again); the progress model sets it back to 0 so that its old value does
 * not split states.  The safety model's figures (mutex.md) were measured
 * without it; a dead value changes no step either way. */
#ifdef PROGRESS
#define FORGET(v) v = 0
#else
#define FORGET(v) skip
#endif

byte state;      /* m->state, as the other cores see it */
byte waiters;    /* m->waiters */
byte holder;     /* m->holder (an id, or 0) */
byte hs;         /* m->head_since: 0, an id, or HS_UNK */
bit sb_pend;     /* a plain store of 0 to state sits in sb_who's store buffer */
byte sb_who;

/* the lot, for the mutex's address */
byte blk;        /* bucket lock: 0 or the holder's id */
byte q[3];       /* queue of ids, FIFO */
byte qn;
/* The bucket lock is a test-and-set spin lock held for a few instructions.
 * Safety checks model it as such (blk == 0 -> blk = me).  The progress
 * check assumes what the hardware gives such a lock in practice, that
 * every contender gets it eventually: FAIR_BUCKET (set by PROGRESS) makes
 * it a ticket lock, so that weak fairness lets a waiting task in. */
#if defined(PROGRESS) && !defined(UNFAIR_BUCKET)
#define FAIR_BUCKET
#endif
/* RACE_WON (only with PROGRESS, and only to compare): task 3's load of a
 * free lock word and its CAS are one step, the assumption the progress
 * check needed before a lost race counted as a spin round (mutex.md, "The
 * barging race"). */
#if defined(RACE_WON) && defined(STALE)
#error "RACE_WON and STALE are not meant to be combined"
#endif
#ifdef FAIR_BUCKET
/* The ticket lock, kept as the FIFO of the ids holding a ticket not yet
 * served (a ticket lock serves in ticket order; the queue is the same
 * order without the free-running counters, whose values would split
 * every state four ways).  Taking a ticket and the first look at the
 * serving counter are one step: the look can only succeed when the ticket
 * is served at once, and then nobody else can take the lock in between;
 * otherwise the atomic sequence blocks on the guard with the ticket held,
 * and goes on when the lock comes to it. */
byte bq[3];
byte bqn;
#define BUCKET_TICKET
#define BUCKET_ACQ bq[bqn] = me; bqn++; bq[0] == me && blk == 0 -> blk = me; bq[0] = bq[1]; bq[1] = bq[2]; bq[2] = 0; bqn--
#define BUCKET_REL blk = 0
#else
#define BUCKET_TICKET
#define BUCKET_ACQ blk == 0 -> blk = me
#define BUCKET_REL blk = 0
#endif
/* park word of each task (index id): 0 running, 1 parked, 3 claimed by
 * the timer or a cancel, 4 claimed by an unparker (not yet runnable),
 * 2 woken by the unparker (token in tok) */
byte pw[4];
byte tok[4];

byte in_cs;      /* tasks in the critical section */
bit got[4];      /* PROGRESS: the task has had the lock */
/* Time.  Whether a waiter has waited FAIR_NS since its first announce
 * (long-waiting), or whether head_since is that old, is a free choice
 * (MAY_OLD and not MUST_OLD), except once old[id] is set: then it has.
 * Only PROGRESS runs a clock, task 3's, that sets old[3] once task 3 has
 * announced (trying[3], set at its first announce, where its since
 * begins); weak fairness makes it move eventually, and until it moves task
 * 3 is young.  Tasks 1 and 2 have no clock: every choice that depends on
 * their age stays free, at every step: more behaviours than with a clock,
 * none fewer. */
bit old[4];
bit trying[4];
#ifdef PROGRESS
#define MUST_OLD(id) old[id]
#define MAY_OLD(id) (old[id] || (id) != 3)
#define TRY_BEGIN if :: me == 3 -> trying[3] = 1 :: else -> skip fi
#else
#define MUST_OLD(id) 0
#define MAY_OLD(id) 1
#define TRY_BEGIN skip
#endif
#define TRY_END atomic { trying[me] = 0; old[me] = 0 }

/* Makes the caller's buffered store visible: a locked instruction (any
 * read-modify-write) drains the store buffer first. */
inline flush_mine() {
    if
    :: sb_pend && sb_who == me -> state = 0; sb_pend = 0; FORGET(sb_who)
    :: else -> skip
    fi
}

/* The heavy fence (membarrier): every core's store buffer is drained. */
inline heavy_fence() {
    atomic {
        if
        :: sb_pend -> state = 0; sb_pend = 0; FORGET(sb_who)
        :: else -> skip
        fi
    }
}

/* Takes the bucket lock (a locked instruction: drains our store buffer). */
inline lock_bucket() {
    BUCKET_TICKET
    atomic { flush_mine(); BUCKET_ACQ }
}

/* waiters_after(f, r, handoff), mutex.c */
inline after(f, unparked, have_more, handoff) {
    waiters = (f & (WOKEN | CONTENDED | FENCED)) |
              (have_more -> (f & PARKED) : 0) |
              ((unparked && !handoff) -> WOKEN : 0)
}

/* head_waited_long: head_since is unknown, or an id whose wait the clock
 * says is FAIR_NS old (a free choice unless old[] fixes it) */
inline look_hs() {
    if
    :: hs == 0 -> st = 0
    :: hs == HS_UNK -> st = HEAD_AGE
    :: hs != 0 && hs != HS_UNK && MAY_OLD(hs) -> st = HEAD_AGE
    :: hs != 0 && hs != HS_UNK && !MUST_OLD(hs) -> st = 0
    fi
}

/* should_serve(m, f): sets sv */
inline should_serve() {
    if
    :: (f & PARKED) && (f & WOKEN) == 0 -> sv = 1
    :: (f & (PARKED | WOKEN)) == (PARKED | WOKEN) -> atomic { look_hs(); sv = st; st = 0 }
    :: (f & PARKED) == 0 -> sv = 0
    fi
}

/* pz_unpark_filter(m, serve_filter, serve_decide, &c): by an unlock that
 * holds the lock (released == 0) or after a release or a give-up
 * (pz__async_mutex_wake_released, released == 1).  Steps that touch only
 * what the bucket lock guards (the queue) are folded into the
 * neighbouring step. */
inline unpark_one(released) {
    /* lock the bucket; serve_filter decides on each waiter in order before
     * its claim (ws: the unlock came although it saw WOKEN, for the head's
     * age: a young head is then left alone if WOKEN is still set, since
     * its owner has not parked); a claim that loses (the
     * waiter timed out) goes on to the next; have_more counts every node
     * left, timed-out ones still in the queue included (has_waiter) */
    BUCKET_TICKET
    atomic {
        flush_mine();
        BUCKET_ACQ;
        chosen = 0; i = 0; stopped = 0; looked = 0;
        do
        :: i >= qn -> break
        :: i < qn ->
            looked = 1;
            /* the waiter's age, from its park token */
            if
            :: MAY_OLD(q[i]) -> cold = 1
            :: !MUST_OLD(q[i]) -> cold = 0
            fi;
            if
            :: released && kept -> op = OP_UNPARK_STOP
            :: !(released && kept) && cold && !released -> op = OP_UNPARK_STOP
#if RELEASED_HANDOFF
            :: !(released && kept) && cold && released ->
                /* take the word back for a hand-off, if still free */
                if
                :: state == 0 -> state = LOCKED; kept = 1; op = OP_UNPARK_STOP
                :: else -> op = OP_STOP
                fi
            :: !(released && kept) && !cold && ws && STILL_WOKEN -> op = OP_STOP
            :: !(released && kept) && !cold && !(ws && STILL_WOKEN) -> op = OP_UNPARK_STOP
#else
            :: !(released && kept) && released && ws && (waiters & WOKEN) -> op = OP_STOP
            :: !(released && kept) && released && !(ws && (waiters & WOKEN)) -> op = OP_UNPARK_STOP
            :: !(released && kept) && !cold && !released && ws && (waiters & WOKEN) -> op = OP_STOP
            :: !(released && kept) && !cold && !released && !(ws && (waiters & WOKEN)) -> op = OP_UNPARK_STOP
#endif
            fi;
            if
            :: op == OP_STOP -> stopped = q[i]; break
            :: op == OP_UNPARK_STOP && pw[q[i]] == 1 -> chosen = q[i]; pw[chosen] = 4; break
            :: op == OP_UNPARK_STOP && pw[q[i]] != 1 -> i++
            fi
        od;
        if
        :: chosen != 0 ->
            do
            :: i + 1 < qn -> q[i] = q[i + 1]; i++
            :: else -> break
            od;
            qn--; q[qn] = 0;
            unparked = 1
        :: else -> unparked = 0
        fi;
        have_more = (qn > 0);
        i = 0; op = 0
    }
    /* serve_decide: the CAS loop is one read-modify-write; be_fair (the
     * lot's random clock, or a long park) is free; head_since: nobody,
     * unknown once the head was served (or nobody was looked at), exact
     * if the filter stopped at the head */
    atomic {
        if
        :: unparked && !released -> fair = 1
        :: true -> fair = 0
        fi;
        f = waiters;
        handoff = unparked && (released -> kept : (cold || fair));
        after(f, unparked, have_more, handoff);
        if
        :: !have_more -> hs = 0
        :: have_more && (unparked || !looked) -> hs = HS_UNK
        :: have_more && !unparked && looked -> hs = stopped
        fi
    }
    if
    :: released == 0 ->
        if
        :: handoff -> state = LOCKED; t = TOKEN_HANDOFF
        :: else -> atomic { flush_mine(); state = 0 }; t = TOKEN_NORMAL
        fi
    :: else ->
        /* a word taken for nobody (every claim lost) is released again */
        if
        :: kept && !unparked -> atomic { flush_mine(); state = 0 }
        :: else -> skip
        fi;
        t = (handoff -> TOKEN_HANDOFF : TOKEN_NORMAL)
    fi;
    /* grant the token, release the bucket lock */
    atomic {
        if
        :: chosen != 0 -> tok[chosen] = t
        :: else -> skip
        fi;
        BUCKET_REL
#ifndef PROGRESS
    }
    /* wake the chosen one, after the bucket lock is released */
    atomic {
#else
        ;
        /* the wake in the same step: between the release and the wake the
         * chosen task is claimed (pw 4), which only the chosen task itself
         * reads (its wait); its timer cannot claim it, the queue no longer
         * holds it; so another task's steps in between have the same
         * effect after the wake, with the chosen task not yet scheduled */
#endif
        if
        :: chosen != 0 -> pw[chosen] = 2
        :: else -> skip
        fi;
        /* dead locals back to 0, so that they do not split states */
        chosen = 0; t = 0; f = 0; unparked = 0; have_more = 0; fair = 0; handoff = 0;
        kept = 0; cold = 0; stopped = 0; looked = 0; ws = 0
    }
}

/* pz__async_mutex_take when the lock word reads 0: the CAS, and the
 * holder word if the waiter word is 0 (its load folded in: a change of
 * the waiter word in between only sends the unlock to the slow path). */
inline take() {
    atomic {
        flush_mine();
        if
        :: state == 0 ->
            state = LOCKED | (me << 1); took = 1;
            if
            :: waiters == 0 -> holder = me
            :: else -> skip
            fi
        :: else -> took = 0
        fi
    }
}

/* note_queued: the first waiter in an empty queue records its since */
#define NOTE_QUEUED if :: hs == 0 -> hs = me :: else -> skip fi

/* pz_park(m, until, {park_validate, mutex_timed_out, &c, token &c}) */
inline park() {
    if
    :: plw ->
        /* park_validate, long-waiting: under the bucket lock, set PARKED
         * again (an emptied queue may have cleared it since the announce)
         * by a seq_cst read-modify-write, then load the lock word: held,
         * queue; free, take it (the CAS; the waiter word is not 0, so the
         * holder word stays 0) and do not park. */
        BUCKET_TICKET
        atomic {
            flush_mine();
            BUCKET_ACQ;
            waiters = waiters | PARKED
        }
        atomic {
            if
            :: state == 0 -> state = LOCKED | (me << 1); r = R_TOOK; BUCKET_REL
            :: else -> r = R_OK; NOTE_QUEUED; q[qn] = me; qn++; pw[me] = 1; BUCKET_REL
            fi
        }
    :: else ->
        /* park_validate: lock the bucket; the first load, of the lock word */
        BUCKET_TICKET
        atomic {
            flush_mine();
            BUCKET_ACQ;
            if
            :: (state & LOCKED) == 0 -> r = R_AGAIN; BUCKET_REL
            :: else -> r = R_OK
            fi
        }
        if
        :: r == R_OK ->
            /* the second load, of the waiter word; enqueue; the bucket
             * lock is released once the task is parked */
            atomic {
                if
                :: (waiters & PARKED) == 0 -> r = R_AGAIN; BUCKET_REL
                :: else -> NOTE_QUEUED; q[qn] = me; qn++; pw[me] = 1; BUCKET_REL
                fi
            }
        :: else -> skip
        fi
    fi;
    if
    :: r == R_OK ->
        /* a deadline may be far off: its timer fires or never does */
        if
        :: dl -> fire = 1
        :: fire = 0
        fi;
        atomic {
            if
            :: pw[me] == 2 -> pw[me] = 0; fire = 0
            :: fire && pw[me] == 1 -> pw[me] = 3; fire = 0     /* deadline or cancel */
            fi
        }
        if
        :: pw[me] == 3 ->
            /* leave the queue under the bucket lock; mutex_timed_out(was_last) */
            BUCKET_TICKET
            atomic {
                flush_mine();
                BUCKET_ACQ;
                i = 0;
                do
                :: q[i] == me -> break
                :: else -> i++; assert(i < qn)
                od;
                do
                :: i + 1 < qn -> q[i] = q[i + 1]; i++
                :: else -> break
                od;
                qn--; q[qn] = 0; i = 0
            }
            atomic {
                if
                :: qn == 0 -> waiters = waiters & ~PARKED; hs = 0
                :: else -> hs = HS_UNK
                fi;
                BUCKET_REL
            }
            atomic { pw[me] = 0; r = R_TIMEDOUT }
        :: else -> skip
        fi
    :: else -> skip
    fi
}

/* pz__async_mutex_lock_slow; ok says whether the lock was taken. */
inline lock_slow() {
    if
    :: (waiters & CONTENDED) == 0 -> atomic { flush_mine(); waiters = waiters | CONTENDED }
    :: else -> skip
    fi;
    spins = 0; woken = 0; first = 0; lw = 0;
    do
    :: atomic {
           s = state;
           if
           :: sb_pend && sb_who == me -> s = 0   /* store forwarding */
           :: else -> skip
           fi;
#ifdef RACE_WON
           /* the progress check's assumption before the lost CAS counted
            * (mutex.md, "The barging race"): task 3's load of a free word
            * and its CAS are one step */
           if
           :: me == 3 && s == 0 -> take()
           :: else -> skip
           fi
#endif
       }
#ifdef STALE
       /* the relaxed load may be stale: a free lock word may be read
        * as still held (read as free when held, the take CAS fails) */
       if
       :: s == 0 -> s = LOCKED
       :: true -> skip
       fi;
#endif
       if
       :: s == 0 ->
           /* the load that saw 0 and the CAS: a CAS that fails only
            * loops, so they are one step */
#ifdef RACE_WON
           atomic {
               if
               :: !took -> take()
               :: else -> skip   /* taken with the load */
               fi
           };
#else
           take();
#endif
           if
           :: took ->
               if
               :: woken -> atomic { flush_mine(); waiters = waiters & ~WOKEN }
               :: else -> skip
               fi;
               ok = 1; break
#if LOST_CAS_COUNTS
           /* a lost race for the free word is a spin round; with the
            * rounds spent (or long-waiting) the waiter goes on to
            * announce_parked below, so that its wait begins */
           :: else -> if :: spins < SPINS && !lw -> spins++ :: else -> skip fi
#else
           :: else -> skip
#endif
           fi
       :: else -> skip
       fi;
       if
#if LOST_CAS_COUNTS
       :: s != 0 || spins >= SPINS || lw ->
#else
       :: s != 0 ->
#endif
           /* the load of the waiter word and the CAS that follows it (a
            * CAS that fails only loops): spin while the holder may run
            * (a holder id is set), taking WOKEN if a waiter is parked;
            * or announce_parked (with s == 0: the rounds are spent on
            * lost races, and a free word has no holder to spin on) */
           atomic {
               flush_mine();
               f = waiters;
               if
               :: !lw && spins < SPINS && (s >> 1) != 0 ->
                   if
                   :: !woken && (f & PARKED) && (f & WOKEN) == 0 ->
                       waiters = f | WOKEN; woken = 1
                   :: else -> skip
                   fi;
                   spins++; cas = 0; FORGET(f)
               :: true ->
                   /* long-waiting once FAIR_NS have passed since its
                    * first announce (sticky) */
                   if
                   :: first && MAY_OLD(me) -> lw = 1
                   :: !(first && MUST_OLD(me)) -> skip
                   fi;
                   waiters = (f | PARKED | CONTENDED) & ~(woken -> WOKEN : 0);
                   /* the wait begins at the first announce */
                   if
                   :: !first -> TRY_BEGIN
                   :: else -> skip
                   fi;
                   cas = 1
               fi;
               FORGET(s)
           }
           if
           :: cas ->
#ifndef BAD_NO_FENCE
               if
               :: FENCES && (f & FENCED) == 0 ->
                   heavy_fence();
                   atomic { flush_mine(); waiters = waiters | FENCED }
               :: else -> skip
               fi;
#endif
               atomic { woken = 0; first = 1; plw = lw; cas = 0; FORGET(f); FORGET(spins) }
               park();
               if
               :: r == R_OK && tok[me] == TOKEN_HANDOFF ->
                   tok[me] = 0;
                   assert(state == LOCKED);
                   state = LOCKED | (me << 1);
                   ok = 1; break
               :: r == R_TOOK -> ok = 1; break
               :: r == R_OK && tok[me] != TOKEN_HANDOFF -> woken = 1
               :: r == R_TIMEDOUT -> ok = 0; break
               :: r == R_AGAIN && dl ->
                   assert(!plw);   /* a long-waiting validate never refuses */
                   /* the deadline has passed: give up */
#if GIVEUP_FIX
                   f = waiters;
                   if
                   :: (f & PARKED) == PARKED -> unpark_one(1)
                   :: else -> skip
                   fi;
#endif
                   ok = 0; break
               :: r == R_AGAIN -> assert(!plw)
               fi;
               atomic { spins = 0; r = 0; f = 0; plw = 0 }
           :: else -> skip
           fi
       :: else -> skip
       fi
    od;
    atomic { plw = 0; lw = 0 }
}

/* pz_async_mutex_unlock and pz__async_mutex_unlock_slow */
inline unlock() {
    /* the inline check: holder word, waiter word (the holder word is
     * written only by holders, so the two loads are one step) */
    atomic { h = holder; f = waiters }
    if
    :: FENCES && h == me && f == 0 ->
        /* the plain-store release: the store of 0 waits in the buffer */
        atomic { holder = 0; sb_pend = 1; sb_who = me; FORGET(h) }
        f = waiters;   /* may be served before the store is visible */
        if
        :: f != 0 -> unpark_one(1)
        :: else -> skip
        fi
    :: else ->
        atomic {
            if
            :: h != 0 -> holder = 0
            :: else -> skip
            fi;
            f = waiters;
            FORGET(h)
        }
        should_serve();
        if
        :: sv -> atomic { sv = 0; ws = ((f & WOKEN) != 0) }; unpark_one(0)
        :: else ->
            atomic { flush_mine(); state = 0 }
            f = waiters;
            should_serve();
            if
            :: sv -> atomic { sv = 0; ws = ((f & WOKEN) != 0) }; unpark_one(1)
            :: else -> skip
            fi
        fi
    fi
}

proctype task(byte me; byte rounds; bit dl)
{
    byte s, f, h, spins, i, chosen, t, r, op, stopped;
    bit kept, plw, lw, fire, woken, first, cas, took, ok, unparked, have_more, fair, handoff, cold, looked, st, sv, ws;
    byte n = 0;
    do
    :: rounds == 0 || n < rounds ->
        take();
        if
        :: took -> ok = 1
        :: else -> lock_slow(); TRY_END
        fi;
        if
        :: ok ->
            atomic { s = 0; f = 0; spins = 0; woken = 0; first = 0; cas = 0; took = 0; r = 0 }
#ifdef PROGRESS
            /* the critical section touches nothing of the mutex: one step
             * (the states inside it are those just before it, but for
             * in_cs, which mutual exclusion checks and progress does not
             * read); only task 3's entry is recorded */
            atomic {
                in_cs++;
                assert(in_cs == 1);
                if
                :: me == 3 -> got[3] = 1
                :: else -> skip
                fi;
progress_cs:
                in_cs--
            }
#else
            in_cs++;
            assert(in_cs == 1);
            in_cs--;
#endif
            unlock()
        :: else -> atomic { s = 0; f = 0; spins = 0; woken = 0; first = 0; cas = 0; took = 0; r = 0 }
        fi;
        atomic { n = (rounds == 0 -> 0 : n + 1); ok = 0; h = 0; f = 0 }
    :: rounds != 0 && n >= rounds -> break
    od
}

/* The store buffer drains on its own, at any moment. */
#define DRAIN_LOOP do :: atomic { sb_pend -> state = 0; sb_pend = 0; FORGET(sb_who) } od

#ifdef PROGRESS
/* Task 3's clock (the others have none: see old[]). */
proctype clock()
{
end_clock:
    do
    :: atomic { trying[3] && !old[3] -> old[3] = 1 }
    od
}

/* init starts the tasks and then drains the store buffer: one process
 * fewer than a separate drain process (weak fairness treats every
 * process alike, and each one multiplies the states it must track). */
init {
    atomic {
        run task(1, 0, 0);
        run task(2, 0, 0);
        run task(3, 1, 0);
        run clock()
    }
end_drain:
    DRAIN_LOOP
}
#else
active proctype drain()
{
end_drain:
    DRAIN_LOOP
}

init {
    atomic {
        run task(1, R1, D1);
        run task(2, R2, D2);
        run task(3, R3, D3);
    }
}
#endif

#if defined(PROGRESS) && !defined(NP)
ltl p3_gets_lock { <> (got[3] > 0) }
#endif
