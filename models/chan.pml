/*
 * pz_chan's buffered ring and its waiter bits (src/async/chan.c: ring_push,
 * ring_pop, ring_transfer, ring_send, serve, wait_node).
 * models/chan.md maps every variable and step to the C code.
 *
 * Two senders (items 1 and 2) and two receivers, one operation each, on
 * a ring of CAP cells.  Checked: every item is received at most once, and
 * every item sent is received or still in the ring; when nothing can move
 * any more, no receiver is queued beside an item and no sender beside a
 * free cell; without timeouts every operation completes.
 *
 * Memory: sequentially consistent.  In the C code the CASes of head and
 * tail, the read-modify-write that sets a waiting bit, the last try's load
 * of head or tail and the load of the waiting word after a transfer are
 * seq_cst (the Dekker pairs); the stamps are release stores read by
 * acquire loads (they publish the item, which the model folds into the
 * stamp store); see chan.md for the relaxed loads.
 *
 * Switches:
 *   CAP           ring capacity, 1 (default) or 2.
 *   TIMED_RX      receiver 2 has a deadline that may pass while it waits
 *                 (or a cancel come); TIMED_TX the same for sender 2.
 *   NO_STALE      the first try sees the ring as it is (no stale loads).
 *   BAD_NO_LAST_TRY  a waiter parks right after setting its bit, without
 *                 the one more try (must fail: lost wake-up).
 *   BAD_ONE_SIDE  serving looks only at the queue whose bit was seen
 *                 (must fail: a sender left beside a free cell).
 */

#ifndef CAP
#define CAP 1
#endif
#if CAP == 1
#define ONE_LAP 2
#else
#define ONE_LAP 4
#endif

#define SENDERS_WAIT 1
#define RECEIVERS_WAIT 2
#define AGAIN 1
#define PENDING 2

/* index of a position, and the position after it */
#define IDX(p) ((p) & (ONE_LAP - 1))
#define NEXT(p) (IDX(p) + 1 < CAP -> (p) + 1 : ((p) & ~(ONE_LAP - 1)) + ONE_LAP)

byte tail, head;            /* ch->tail, ch->head (positions) */
byte stamp[CAP];            /* each cell's stamp */
byte cell[CAP];             /* each cell's item */
byte waiting;               /* ch->waiting */
bit lk;                     /* ch->lock */

/* waiter queues (FIFO of process ids 1..4) */
byte txq[2], txn;           /* ch->senders */
byte rxq[2], rxn;           /* ch->receivers */
/* per process id 1..4: the node */
byte item[5];               /* a sender's item, a receiver's destination */
byte res[5];                /* node result: PENDING, 0 */
byte pclaim[5];             /* the task park: 0 parked, 1 claimed by a
                             * completer, 2 claimed by its deadline */
bit woke[5];                /* made runnable (pz__task_ready) */

byte recvd[3];              /* times each item was received */
byte sent_ok;               /* sends that returned 0 */
byte ops_done;                  /* operations finished */

inline lock() {
    atomic { lk == 0 -> lk = 1 }
}

inline unlock() {
    lk = 0
}

/* ring_push(ch, item, exact): r = 0 or AGAIN.  Loads of the stamp and of
 * tail, and the CAS that follows a stamp that says "empty for t", are one
 * step (a CAS that fails only loops). */
inline ring_push(v, r) {
    do
    :: atomic {
           t = tail; st = stamp[IDX(t)];
           if
           :: st == t -> tail = NEXT(t); cas = 1
           :: else -> cas = 0
           fi
       }
       if
       :: cas ->
           /* copy the item in, publish it */
           atomic { cell[IDX(t)] = v; stamp[IDX(t)] = t + 1; r = 0; cas = 0; t = 0; st = 0 }
           break
       :: else ->
           if
           :: st + ONE_LAP == t + 1 ->
               /* the previous lap's item: full unless a receiver is
                * copying it out */
               if
               :: head + ONE_LAP == t -> atomic { r = AGAIN; t = 0; st = 0 }; break
               :: else -> skip   /* spin */
               fi
           :: else -> skip       /* a sender is copying into it: spin */
           fi
       fi
    od
}

/* ring_pop(ch, dest, exact): r = 0 or AGAIN; the item in got */
inline ring_pop(got, r) {
    do
    :: atomic {
           h = head; st = stamp[IDX(h)];
           if
           :: st == h + 1 -> head = NEXT(h); cas = 1
           :: else -> cas = 0
           fi
       }
       if
       :: cas ->
           atomic { got = cell[IDX(h)]; cell[IDX(h)] = 0; stamp[IDX(h)] = h + ONE_LAP; r = 0; cas = 0; h = 0; st = 0 }
           break
       :: else ->
           if
           :: st == h ->
               /* not filled this lap: empty unless a sender is copying */
               if
               :: tail == h -> atomic { r = AGAIN; h = 0; st = 0 }; break
               :: else -> skip
               fi
           :: else -> skip
           fi
       fi
    od
}

/* the two queues (push_back, unlink of the first node, unlink_node) */
inline tx_push(w) { txq[txn] = w; txn++ }
inline rx_push(w) { rxq[rxn] = w; rxn++ }
inline tx_pop_front() { txq[0] = txq[1]; txq[1] = 0; txn-- }
inline rx_pop_front() { rxq[0] = rxq[1]; rxq[1] = 0; rxn-- }
inline tx_unlink(w) {
    if
    :: txq[0] == w -> tx_pop_front()
    :: else -> assert(txq[1] == w); txq[1] = 0; txn--
    fi
}
inline rx_unlink(w) {
    if
    :: rxq[0] == w -> rx_pop_front()
    :: else -> assert(rxq[1] == w); rxq[1] = 0; rxn--
    fi
}

/* complete(w, result) under the lock: the result, then the claim; a won
 * claim is made runnable after the lock is released (cl) */
inline complete(w, r) {
    res[w] = r;
    if
    :: pclaim[w] == 0 -> pclaim[w] = 1; cl = cl | (1 << w)
    :: else -> skip
    fi
}

/* ready_all: after the lock is released */
inline ready_all() {
    atomic {
        k = 1;
        do
        :: k <= 4 ->
            if
            :: cl & (1 << k) -> assert(!woke[k]); woke[k] = 1
            :: else -> skip
            fi;
            k++
        :: else -> break
        od;
        cl = 0; k = 0
    }
}

inline clear_bit_if_empty(n, b) {
    if
    :: n == 0 && (waiting & b) -> waiting = waiting & ~b
    :: else -> skip
    fi
}

inline received(v) {
    atomic { assert(v >= 1 && v <= 2); recvd[v]++; assert(recvd[v] == 1) }
}

/* serve(ch) */
inline serve() {
    lock();
    rx_seen = (rxn != 0); tx_seen = (txn != 0);
    moved = 1;
    do
    :: moved ->
        moved = 0;
#ifdef BAD_ONE_SIDE
        if
        :: send ->
#endif
        if
        :: rxn != 0 ->
            ring_pop(item[rxq[0]], r2);
            if
            :: r2 != AGAIN ->
                atomic { w = rxq[0]; rx_pop_front(); complete(w, r2); w = 0 }
                moved = 1
            :: else -> skip
            fi
        :: else -> skip
        fi;
#ifdef BAD_ONE_SIDE
        :: else -> skip
        fi;
        if
        :: !send ->
#endif
        if
        :: txn != 0 ->
            ring_push(item[txq[0]], r2);
            if
            :: r2 != AGAIN ->
                atomic { w = txq[0]; tx_pop_front(); complete(w, r2); w = 0 }
                moved = 1
            :: else -> skip
            fi
        :: else -> skip
        fi
#ifdef BAD_ONE_SIDE
        :: else -> skip
        fi
#endif
    :: else -> break
    od;
    if
    :: !rx_seen -> clear_bit_if_empty(rxn, RECEIVERS_WAIT)
    :: else -> skip
    fi;
    if
    :: !tx_seen -> clear_bit_if_empty(txn, SENDERS_WAIT)
    :: else -> skip
    fi;
    atomic { unlock(); r2 = 0; rx_seen = 0; tx_seen = 0 }
    ready_all()
}

/* wait_node: parked with the lock held (released once off the stack) */
inline wait_node() {
    unlock();
end_wait:
    if
    :: atomic { woke[me] -> r = res[me] }
    :: atomic { timed && pclaim[me] == 0 -> pclaim[me] = 2 }
        /* the deadline passed: look at the node under the lock */
        lock();
        if
        :: res[me] == PENDING ->
            if
            :: send -> tx_unlink(me); clear_bit_if_empty(txn, SENDERS_WAIT)
            :: else -> rx_unlink(me); clear_bit_if_empty(rxn, RECEIVERS_WAIT)
            fi;
            r = AGAIN   /* -ETIMEDOUT */
        :: else -> r = res[me]   /* completed at the same instant: keep it */
        fi;
        unlock()
    fi
}

/* one send (send = 1, of item v) or receive, as ring_send / ring_recv */
proctype op(byte me; bit send; byte v; bit timed)
{
    byte t, h, st, r, r2, k, w, got, cl;
    bit cas, moved, rx_seen, tx_seen;
    byte mine = (send -> SENDERS_WAIT : RECEIVERS_WAIT);
    byte theirs = (send -> RECEIVERS_WAIT : SENDERS_WAIT);
    res[me] = PENDING;
    item[me] = v;
    r = AGAIN;
    /* the relaxed load of the waiting word may be stale either way: the
     * hand-over is tried whatever the receivers' bit says, or not */
    if
    :: send ->
        /* receivers wait: hand the item to the first one if the ring is
         * empty */
        lock();
        if
        :: rxn == 0 -> clear_bit_if_empty(rxn, RECEIVERS_WAIT)
        :: rxn != 0 && tail == head ->
            atomic { w = rxq[0]; rx_pop_front(); item[w] = v; complete(w, 0); w = 0 }
            r = 0
        :: else -> skip
        fi;
        unlock();
        ready_all()
    :: else -> skip
    fi;
    if
    :: r == 0 -> goto finish   /* handed over */
    :: else -> skip
    fi;
    /* ring_transfer: the first try, whose relaxed loads of head or tail
     * may be stale, so that it may fail whatever the ring holds */
    if
    :: send -> ring_push(v, r)
    :: !send -> ring_pop(got, r)
#ifndef NO_STALE
    :: r = AGAIN
#endif
    fi;
    if
    :: r == AGAIN ->
        lock();
        waiting = waiting | mine;       /* seq_cst read-modify-write */
#ifndef BAD_NO_LAST_TRY
        /* one more try */
        if
        :: send -> ring_push(v, r)
        :: else -> ring_pop(got, r)
        fi;
#endif
        if
        :: r == AGAIN ->
            if
            :: send -> tx_push(me)
            :: else -> rx_push(me)
            fi;
            wait_node();
            if
            :: r == 0 && !send -> got = item[me]
            :: else -> skip
            fi;
            goto finish
        :: else ->
            if
            :: send -> clear_bit_if_empty(txn, SENDERS_WAIT)
            :: else -> clear_bit_if_empty(rxn, RECEIVERS_WAIT)
            fi;
            unlock()
        fi
    :: else -> skip
    fi;
    if
    :: r == 0 && (waiting & theirs) -> serve()
    :: else -> skip
    fi;
finish:
    atomic {
        if
        :: r == 0 && send -> sent_ok++
        :: r == 0 && !send -> received(got)
        :: else -> skip
        fi;
        ops_done++
    }
}

/* Once nothing can move: nobody queued beside an item or a free cell,
 * and every item sent is received or still in the ring. */
proctype checker()
{
    byte n, k, inring;
end_check:
    timeout ->
    n = ((tail & ~(ONE_LAP - 1)) - (head & ~(ONE_LAP - 1))) / ONE_LAP * CAP + IDX(tail) - IDX(head);
    assert(!(rxn != 0 && n != 0));
    assert(!(txn != 0 && n < CAP));
    k = 0;
    do
    :: k < CAP -> inring = inring + (cell[k] != 0); k++
    :: else -> break
    od;
    assert(inring == n);
    assert(sent_ok == recvd[1] + recvd[2] + n);
#if !defined(TIMED_RX) && !defined(TIMED_TX)
    assert(ops_done == 4)
#endif
}

init {
    byte k = 0;
    do
    :: k < CAP -> stamp[k] = k; k++
    :: else -> break
    od;
    atomic {
        run op(1, 1, 1, 0);
#ifdef TIMED_TX
        run op(2, 1, 2, 1);
#else
        run op(2, 1, 2, 0);
#endif
        run op(3, 0, 0, 0);
#ifdef TIMED_RX
        run op(4, 0, 0, 1);
#else
        run op(4, 0, 0, 0);
#endif
        run checker()
    }
}
