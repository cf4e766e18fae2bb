/*
 * The parking lot: pz_park, pz_unpark_one, pz_unpark_all, timeouts and
 * cancellation (src/park/park.c, include/plaza/park.h), with the task
 * park word they rely on (pz__park_prepare, pz__park_commit, park_after,
 * pz__task_claim, pz_cancel in src/runtime/task.c).
 * models/park.md maps every variable and step to the C code.
 *
 * One address, one bucket.  Waiters: two tasks and a thread.  Task 1 may
 * be cancelled, task 2 has a deadline whose timer may fire, the thread has
 * a deadline.  The client is an event: a waiter parks only while flag is 0
 * (validate); one unparker calls pz_unpark_one, whose callback returns
 * token 1; another sets flag and calls pz_unpark_all with token 2.  So
 * every waiter must return: with a token, -EAGAIN, or by its deadline or
 * cancel, and a waiter left parked is a lost wake-up (an invalid end
 * state).  Checked: no waiter both gets a token and times out; a token
 * goes to the waiter the unpark counted, once; a task is made runnable
 * once per park; the queue holds each waiter at most once, and a task
 * whose timer or cancel won its park is still queued.
 *
 * Memory: sequentially consistent.  In the C code everything the queue
 * holds is guarded by the bucket lock; the park word's accesses are
 * seq_cst or acq_rel read-modify-writes; the futex word is a release
 * store read by an acquire load (see park.md).
 *
 * Known-bad switches (each must fail):
 *   BAD_EARLY_RELEASE  a task releases the bucket lock before its park
 *                      word says PARKED (release before switch).
 *   BAD_VALIDATE_UNLOCKED  validate runs before the bucket lock is taken.
 *   BAD_THREAD_TIMEOUT a thread whose deadline passed returns -ETIMEDOUT
 *                      without checking that it was still queued.
 */

/* park word states (PZ__PS_*) */
#define RUNNING 0
#define PARKING 1
#define PARKED 2
#define WOKEN 3
/* wake reasons (PZ__WAKE_*) */
#define W_UNPARK 0
#define W_TIMEOUT 1
#define W_CANCEL 2
/* pz__task_claim results */
#define LOST 0
#define WON 1
#define WON_READY 2
/* pz_park results */
#define R_NONE 9
#define R_OK 0
#define R_AGAIN 1
#define R_TIMEDOUT 2
#define R_CANCELED 3

byte flag;          /* the client's event word */
byte blk;           /* bucket lock: 0 or the holder's waiter/unparker id */
byte q[3];          /* queue of waiter ids 1..3, FIFO */
byte qn;

/* per waiter id 1..3 (0 unused) */
byte ps[4];         /* task park word: state */
byte rsn[4];        /* task park word: reason */
bit armed[4];       /* task timer armed (pz__park_commit) */
bit cancelled[4];   /* task->cancelled */
bit runnable[4];    /* pz__task_ready was called for this park */
bit released[4];    /* w.released */
byte futex[4];      /* thread waiter's futex word */
byte tok[4];        /* w.unpark_token */
byte result[4];     /* what pz_park returned */
bit timed_out_ran[4];

byte one_unparked;  /* pz_unpark_one's res.unparked */
byte all_n;         /* pz_unpark_all's return */
byte finished;      /* processes done */

inline lock_bucket(who) {
    atomic { blk == 0 -> blk = who }
}

inline unlock_bucket() {
    blk = 0
}

/* pz__task_claim(t, gen, reason): one read-modify-write of the park word */
inline claim(t, reason, c) {
    atomic {
        if
        :: ps[t] == PARKING || ps[t] == PARKED ->
            c = (ps[t] == PARKED -> WON_READY : WON);
            ps[t] = WOKEN; rsn[t] = reason
        :: else -> c = LOST
        fi
    }
}

/* pz__task_ready: the task runs again; never twice for one park */
inline ready(t) {
    atomic { assert(!runnable[t]); runnable[t] = 1 }
}

inline enqueue(w) {
    atomic {
        i = 0;
        do
        :: i < qn -> assert(q[i] != w); i++
        :: else -> break
        od;
        q[qn] = w; qn++; i = 0
    }
}

/* remove_waiter: found says whether w was still queued (w->queued) */
inline remove_waiter(w, found) {
    atomic {
        i = 0; found = 0;
        do
        :: i < qn && q[i] == w -> found = 1; break
        :: i < qn && q[i] != w -> i++
        :: i >= qn -> break
        od;
        if
        :: found ->
            do
            :: i + 1 < qn -> q[i] = q[i + 1]; i++
            :: else -> break
            od;
            qn--; q[qn] = 0
        :: else -> skip
        fi;
        i = 0
    }
}

/* timed_out(ctx, was_last): runs under the bucket lock, once per waiter */
inline timed_out(w) {
    assert(blk == w && !timed_out_ran[w]);
    timed_out_ran[w] = 1
}

proctype task_waiter(byte me)
{
    byte i, c;
    bit claimed_early, found;
    result[me] = R_NONE;
#ifdef BAD_VALIDATE_UNLOCKED
    if
    :: flag != 0 -> result[me] = R_AGAIN; goto done
    :: else -> skip
    fi;
    lock_bucket(me);
#else
    /* lock the bucket; validate(ctx) under it */
    atomic {
        blk == 0 -> blk = me;
        if
        :: flag != 0 -> unlock_bucket(); result[me] = R_AGAIN
        :: else -> skip
        fi
    }
    if
    :: result[me] == R_AGAIN -> goto done
    :: else -> skip
    fi;
#endif
    /* pz__park_prepare (seq_cst store), enqueue (under the bucket lock,
     * so unseen until it is released) */
    atomic { ps[me] = PARKING; enqueue(me) }
    /* pz__park_commit: arm the timer, then look at cancelled (a Dekker
     * pair with pz_cancel: both seq_cst) */
    atomic {
        armed[me] = 1;
        if
        :: cancelled[me] -> claim(me, W_CANCEL, c)
        :: else -> skip
        fi;
        c = 0
    }
#ifdef BAD_EARLY_RELEASE
    unlock_bucket();
    released[me] = 1;
#endif
    /* pz__suspend: park_after runs on the worker once the task is off
     * its stack: PARKING -> PARKED unless already claimed */
    atomic {
        if
        :: ps[me] == WOKEN -> claimed_early = 1
        :: else -> ps[me] = PARKED
        fi
    }
#ifndef BAD_EARLY_RELEASE
    /* release_after_switch */
    unlock_bucket();
    released[me] = 1;
#endif
    if
    :: claimed_early -> ready(me)
    :: else -> skip
    fi;
    /* the task runs again only once made runnable */
    /* the task runs again only once made runnable, and returns only
     * once its park callback is done */
    atomic { runnable[me] && released[me] -> c = rsn[me]; armed[me] = 0; ps[me] = RUNNING; claimed_early = 0 }
    if
    :: c == W_UNPARK -> result[me] = R_OK
    :: else ->
        /* deadline or cancel won the claim: no unparker took us */
        atomic {
            blk == 0 -> blk = me;
            remove_waiter(me, found);
            assert(found);
            timed_out(me);
            unlock_bucket();
            result[me] = (c == W_TIMEOUT -> R_TIMEDOUT : R_CANCELED)
        }
    fi;
done:
    atomic { finished++; c = 0; found = 0 }
}

proctype thread_waiter(byte me)
{
    byte i;
    bit found, fires;
    result[me] = R_NONE;
    /* whether the deadline passes while it waits (it may be far off) */
    if
    :: fires = 1
    :: fires = 0
    fi;
    /* lock the bucket, validate, enqueue, unlock */
    atomic {
        blk == 0 -> blk = me;
        if
        :: flag != 0 -> result[me] = R_AGAIN
        :: else -> futex[me] = 1; enqueue(me)
        fi;
        unlock_bucket()
    }
    if
    :: result[me] == R_AGAIN -> goto done
    :: else -> skip
    fi;
    do
    :: futex[me] == 0 -> result[me] = R_OK; break
    :: fires && futex[me] != 0 ->
        /* the deadline passed (futex_wait returned -ETIMEDOUT) */
        atomic {
            blk == 0 -> blk = me;
            remove_waiter(me, found);
#ifdef BAD_THREAD_TIMEOUT
            found = 1;
#endif
            if
            :: found -> timed_out(me); result[me] = R_TIMEDOUT
            :: else -> skip  /* unlinked by an unparker: its wake is on the way */
            fi;
            unlock_bucket()
        }
        if
        :: found -> break
        :: else -> futex[me] == 0; result[me] = R_OK; break
        fi
    od;
done:
    atomic { finished++; found = 0; fires = 0 }
}

/* wake_list for one waiter, after the bucket lock is released */
inline wake(w) {
    if
    :: w != 3 -> ready(w)
    :: else -> futex[w] = 0    /* then futex_wake; the node is not touched after */
    fi
}

/* claim(): a thread waiter is always claimable */
inline claim_waiter(w, ok) {
    if
    :: w == 3 -> ok = 1
    :: else ->
        claim(w, W_UNPARK, c);
        /* a claim under the bucket lock always finds the task PARKED
         * (or lost): release after switch */
        assert(c != WON);
        ok = (c != LOST)
    fi
}

proctype unparker_one()
{
    byte i, c, chosen, x;
    bit ok, have_more;
    /* the whole bucket-lock section is one step: what it touches besides
     * the queue is the park words, by single read-modify-writes */
    atomic {
    blk == 0 -> blk = 4;
    chosen = 0; i = 0;
    do
    :: i < qn ->
        x = q[i];
        claim_waiter(x, ok);
        if
        :: ok -> chosen = x; break
        :: else -> i++
        fi
    :: else -> break
    od;
    if
    :: chosen != 0 ->
        /* unlink_after */
        do
        :: i + 1 < qn -> q[i] = q[i + 1]; i++
        :: else -> break
        od;
        qn--; q[qn] = 0;
        one_unparked = 1
    :: else -> skip
    fi;
    have_more = (qn > 0);
    /* callback(res): the token for the chosen waiter; grant */
    if
    :: chosen != 0 -> tok[chosen] = 1
    :: else -> skip
    fi;
    unlock_bucket();
    i = 0; c = 0; x = 0
    }
    atomic {
        if
        :: chosen != 0 -> wake(chosen)
        :: else -> skip
        fi;
        finished++; chosen = 0; ok = 0; have_more = 0
    }
}

proctype unparker_all()
{
    byte i, c, x, n, k;
    bit ok;
    byte woken[3];
    flag = 1;
    atomic {
    blk == 0 -> blk = 5;
    i = 0; n = 0;
    do
    :: i < qn ->
        x = q[i];
        claim_waiter(x, ok);
        if
        :: ok ->
            k = i;
            do
            :: k + 1 < qn -> q[k] = q[k + 1]; k++
            :: else -> break
            od;
            qn--; q[qn] = 0;
            tok[x] = 2;
            woken[n] = x; n++
        :: else -> i++
        fi
    :: else -> break
    od;
    all_n = n;
    unlock_bucket();
    i = 0; c = 0; x = 0; k = 0
    }
    do
    :: i < n -> atomic { wake(woken[i]); woken[i] = 0; i++ }
    :: else -> break
    od;
    atomic { finished++; i = 0; n = 0; ok = 0 }
}

/* task 2's deadline: its timer may fire while it is parked */
proctype timer(byte t)
{
    byte c;
    if
    :: skip         /* the deadline is far off: it never fires */
    :: armed[t] && (ps[t] == PARKING || ps[t] == PARKED) ->
        claim(t, W_TIMEOUT, c);
        atomic {
            if
            :: c == WON_READY -> ready(t)
            :: else -> skip
            fi;
            c = 0
        }
    fi
}

/* pz_cancel(task 1), at any moment, or never */
proctype canceller(byte t)
{
    byte c, s;
    if
    :: skip         /* nobody cancels */
    :: cancelled[t] = 1;
        s = ps[t];
        if
        :: s == PARKING || s == PARKED ->
            claim(t, W_CANCEL, c);
            atomic {
                if
                :: c == WON_READY -> ready(t)
                :: else -> skip
                fi;
                c = 0; s = 0
            }
        :: else -> s = 0
        fi
    fi
}

/* Once every waiter and unparker is done: the tokens and the counts agree. */
proctype checker()
{
    byte w, ones, alls;
    finished == 5;
    w = 1;
    do
    :: w <= 3 ->
        assert(result[w] != R_NONE);
        /* a token, or a timeout, never both */
        assert((result[w] == R_OK) == (tok[w] != 0));
        assert((result[w] == R_TIMEDOUT || result[w] == R_CANCELED) == timed_out_ran[w]);
        if
        :: tok[w] == 1 -> ones++
        :: tok[w] == 2 -> alls++
        :: else -> skip
        fi;
        w++
    :: else -> break
    od;
    assert(ones == one_unparked && alls == all_n);
    assert(qn == 0)
}

init {
    atomic {
        run task_waiter(1);
        run task_waiter(2);
        run thread_waiter(3);
        run unparker_one();
        run unparker_all();
        run timer(2);
        run canceller(1);
        run checker()
    }
}
