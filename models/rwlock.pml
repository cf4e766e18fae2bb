/*
 * rwlock.pml: pz_async_rwlock's waiting protocol in normal mode
 * (src/async/rwlock.c): barging entry, waiting writers (WW), PARKED,
 * WOKEN, the parked-writer count and the dispatch that uses it, deadlines.
 * STARVING, the read slots and the upgradable reader are left out; the
 * mapping to the C and what the checks mean are in models/rwlock.md.
 *
 * Process ids 1..NR are readers, NR+1..NR+NW writers.  Every word
 * operation is one atomic step (the C uses read-modify-writes on the
 * word; nothing here rests on a weaker order).
 */

#ifndef NR
#define NR 2
#endif
#ifndef NW
#define NW 2
#endif
#define N (NR + NW)
#ifndef SP
#define SP 1 /* spin rounds before parking */
#endif
/* deadlines: which processes may give up (bit id-1) */
#ifndef DL
#define DL 10 /* reader 2 and writer 4 */
#endif
#ifndef ROUNDS
#define ROUNDS 1
#endif

#define ISW(id) ((id) > NR)
#define HASDL(id) (((DL) >> ((id) - 1)) & 1)

/* the word */
bit writer;      /* WRITER */
byte readers;    /* READERS(s) */
byte ww;         /* WW(s) */
bit parked;      /* PARKED */
bit woken;       /* WOKEN */
/* the lock's parked_writers and the lot's bucket */
byte pwc;
bit blk;
byte q[N];
byte qn;
/* per waiter: 0 running, 1 parked, 4 claimed by a dispatch, 2 woken,
 * 3 claimed by its deadline */
byte pk[N + 1];
bit incnt[N + 1]; /* struct rw_wait's in_count */

byte in_r, in_w; /* tasks inside the critical section */
byte done;

inline lock_bucket() { atomic { blk == 0 -> blk = 1 } }

/* enter(kind, s, counted), as one CAS that succeeds */
#define CAN_READ (!writer && ww == 0)
#define CAN_WRITE(counted) (!writer && readers == 0 && ((counted) || ww == 0))

inline uncount(x)
{
    if
    :: incnt[x] -> incnt[x] = 0; assert(pwc > 0); pwc--
    :: else
    fi
}

inline dequeue_at(k)
{
    j = k;
    do
    :: j + 1 < qn -> q[j] = q[j + 1]; j++
    :: else -> break
    od;
    qn--;
    q[qn] = 0
}

/* pz_unpark_filter(l, rw_filter, rw_dispatch_done): under the bucket
 * lock, walk and claim (a waiter claimed by its deadline is lost: left in
 * the queue, the walk goes on); then the CAS of the word; then the wakes. */
inline dispatch()
{
    lock_bucket();
    atomic {
        k = 0; u = 0; stop = 0; started = 0; wwait = 0; wr = 0;
        do
        :: k < qn && !stop ->
            x = q[k];
            if
            :: !started -> started = 1; wwait = (ww > 0)
            :: else
            fi;
            pick = 0;
            if
            :: wwait ->
                if
                :: pwc == 0 -> stop = 1
                :: else ->
                    if
                    :: !ISW(x) -> k++
                    :: else -> stop = 1; uncount(x); pick = 1
                    fi
                fi
            :: else ->
                if
                :: ISW(x) && wr -> stop = 1
                :: ISW(x) && !wr -> stop = 1; uncount(x); pick = 1
                :: !ISW(x) -> wr = 1; pick = 1
                fi
            fi;
            if
            :: pick && pk[x] == 1 -> pk[x] = 4; dequeue_at(k); u++
            :: pick && pk[x] != 1 -> k++ /* claim lost: it leaves on its own */
            :: else
            fi
        :: else -> break
        od;
        x = 0
    }
    atomic {
        if
        :: u > 0 -> woken = 1
        :: else
        fi;
        parked = (qn > 0);
        k = 1;
        do
        :: k <= N -> if :: pk[k] == 4 -> pk[k] = 2 :: else fi; k++
        :: else -> break
        od;
        /* locals back to 0: they say nothing after the step */
        k = 0; u = 0; j = 0; stop = 0; started = 0; wwait = 0; wr = 0; pick = 0;
        blk = 0
    }
}

proctype task(byte id)
{
    bit counted, wkn, giveup;
    byte spins, round, k, j, u, x;
    bit stop, started, wwait, wr, pick;
    round = 0;
next:
    counted = 0; wkn = 0; spins = 0; giveup = 0;
    /* the fast path */
    atomic {
        if
        :: !ISW(id) && CAN_READ -> readers++; goto inside
        :: ISW(id) && CAN_WRITE(0) -> writer = 1; goto inside
        :: else
        fi
    }
loop:
    /* acquire_slow's loop: one load and the CAS that follows it */
    atomic {
        if
        :: !ISW(id) && CAN_READ -> readers++; if :: wkn -> woken = 0 :: else fi; goto inside
        :: ISW(id) && CAN_WRITE(counted) -> writer = 1; if :: counted -> ww-- :: else fi;
           if :: wkn -> woken = 0 :: else fi; goto inside
        :: else
        fi;
        if
        :: ISW(id) && !counted && readers > 0 -> ww++; counted = 1; goto loop
        :: else
        fi;
        if
        :: spins < SP ->
            /* spin: take WOKEN if waiters are parked and nobody has it */
            if
            :: !wkn && parked && !woken -> woken = 1; wkn = 1
            :: else
            fi;
            spins++;
            goto loop
        :: true ->
            /* announce: PARKED, giving WOKEN up */
            parked = 1;
            if :: wkn -> woken = 0 :: else fi;
            wkn = 0
        fi
    }
    /* pz_park with rw_validate */
    lock_bucket();
    atomic {
        if
        :: !ISW(id) && CAN_READ -> readers++; blk = 0; goto inside
        :: ISW(id) && CAN_WRITE(counted) -> writer = 1; if :: counted -> ww-- :: else fi; blk = 0; goto inside
        :: else
        fi;
        if
#ifndef BAD_PARK_ALWAYS
        :: !writer && readers == 0 && pwc > 0 -> blk = 0; goto free_closed
#endif
        :: else
        fi;
        parked = 1;
#ifndef BAD_NO_INCOUNT
        if :: ISW(id) -> incnt[id] = 1; pwc++ :: else fi;
#endif
        q[qn] = id; qn++;
        pk[id] = 1;
        blk = 0
    }
    /* asleep: woken by a dispatch, or claimed by the deadline */
    if
    :: pk[id] == 2 -> pk[id] = 0; wkn = 1; spins = 0; goto loop
    :: atomic { HASDL(id) && pk[id] == 1 -> pk[id] = 3 };
        lock_bucket();
        atomic {
            k = 0;
            do
            :: q[k] == id -> dequeue_at(k); break
            :: else -> k++
            od;
#ifndef BAD_TIMEOUT_KEEPS_COUNT
            uncount(id); /* rw_timed_out */
#else
            incnt[id] = 0;
#endif
            if :: qn == 0 -> parked = 0 :: else fi;
            pk[id] = 0;
            k = 0; j = 0;
            blk = 0
        };
        goto give_up
    fi;
free_closed:
    /* free but closed to us, a writer parked: dispatch, yield, and
     * perhaps the deadline has passed */
    dispatch();
    if
    :: HASDL(id) -> goto give_up
    :: true -> spins = SP; goto loop
    fi;
give_up:
    /* writer_gives_up */
    atomic {
        if :: counted -> ww--; counted = 0 :: else fi;
        giveup = parked
    };
    if :: giveup -> dispatch() :: else fi;
    goto finish;
inside:
    assert(pk[id] == 0 && !incnt[id]);
    if
    :: ISW(id) -> in_w++; assert(in_w == 1 && in_r == 0 && readers == 0); in_w--
    :: else -> in_r++; assert(in_w == 0 && !writer); in_r--
    fi;
    /* unlock, then released(): dispatch if PARKED and not WOKEN */
    atomic {
        if
        :: ISW(id) -> writer = 0
        :: else -> readers--
        fi;
        giveup = parked && !woken && (ISW(id) || readers == 0)
    };
    if :: giveup -> dispatch() :: else fi;
finish:
    round++;
    if
    :: round < ROUNDS -> goto next
    :: else
    fi;
    atomic { done++ }
}

/* At the end: nobody left parked, no count left behind. */
active proctype check()
{
    done == N;
    assert(qn == 0 && pwc == 0 && ww == 0 && readers == 0 && !writer);
}

init
{
    atomic {
        byte i = 1;
        do
        :: i <= N -> run task(i); i++
        :: else -> break
        od
    }
}
