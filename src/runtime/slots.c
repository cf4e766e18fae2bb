/*
 * Object slots: a cache line of words per worker that an object of an upper
 * layer may fill with its address (a pz_async_rwlock keeps read holds
 * there, src/async/rwlock.c).  What a slot means is the object's business;
 * the runtime only owns the lines and lets an object walk them, so no
 * upper layer reads the runtime's worker array.  The lines live as long as
 * the runtime: pz__slots_each pins it for a walk from a plain thread.
 */
#include "internal.h"

bool pz__slots_each(bool (*fn)(_Atomic uintptr_t *line, void *ctx), void *ctx)
{
    pz__runtime *rt = pz__rt_pin();
    bool done = false;
    for (int i = 0; rt && i < rt->nworkers && !done; i++)
        done = fn(rt->workers[i].slots, ctx);
    pz__rt_unpin(rt);
    return done;
}
