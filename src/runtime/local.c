/*
 * Task-local values and task names by id.
 *
 * A key is a small integer handed out by pz_local_key (with its
 * destructor), up to PZ__LOCAL_KEYS per process; keys are never given
 * back.  A task's values live in a list of its own (t->locals) that only
 * the task itself reads and writes, so no lock guards it; the key table is
 * written once per key, before the key is returned, and read-only after.
 * At the task's end (pz__task_end), every non-NULL value gets its key's
 * destructor, in reverse order of first set; a destructor may set values
 * again (they get another round, at most four rounds, as with pthread
 * keys).
 */
#define _GNU_SOURCE
#include "internal.h"
#include "kit.h"
#include "plaza/task.h"

#include <stdlib.h>
#include <string.h>

#define PZ__LOCAL_KEYS 256
#define PZ__LOCAL_ROUNDS 4

struct pz__local {
    struct pz__local *next;
    pz_local_key_t key;
    void *value;
};

static pz__spin keys_lock;
static unsigned nkeys;
static void (*destructors[PZ__LOCAL_KEYS])(void *);

int pz_local_key(pz_local_key_t *key, void (*destructor)(void *value))
{
    pz__spin_lock(&keys_lock);
    if (nkeys >= PZ__LOCAL_KEYS) {
        pz__spin_unlock(&keys_lock);
        pz__report("pz_local_key: all %d keys are taken", PZ__LOCAL_KEYS);
        return -ENOSPC;
    }
    unsigned k = nkeys;
    destructors[k] = destructor;
    atomic_thread_fence(memory_order_release);
    nkeys = k + 1;
    pz__spin_unlock(&keys_lock);
    *key = k + 1; /* 0 is never a key: a zeroed key variable is invalid */
    return 0;
}

static struct pz__local *find(pz_task_t *t, pz_local_key_t key)
{
    for (struct pz__local *l = t->locals; l; l = l->next)
        if (l->key == key)
            return l;
    return NULL;
}

static bool key_ok(pz_local_key_t key)
{
    pz__spin_lock(&keys_lock);
    bool ok = key >= 1 && key <= nkeys;
    pz__spin_unlock(&keys_lock);
    return ok;
}

int pz_local_set(pz_local_key_t key, void *value)
{
    pz_task_t *t = pz__current_task();
    if (!t)
        return -EPERM;
    if (!key_ok(key))
        return -EINVAL;
    struct pz__local *l = find(t, key);
    if (!l) {
        if (!value)
            return 0;
        l = malloc(sizeof *l);
        if (!l)
            return -ENOMEM;
        l->key = key;
        l->next = t->locals;
        t->locals = l;
    }
    l->value = value;
    return 0;
}

void *pz_local_get(pz_local_key_t key)
{
    pz_task_t *t = pz__current_task();
    if (!t)
        return NULL;
    struct pz__local *l = find(t, key);
    return l ? l->value : NULL;
}

void pz__locals_destroy(pz_task_t *t)
{
    for (int round = 0; round < PZ__LOCAL_ROUNDS && t->locals; round++) {
        struct pz__local *list = t->locals;
        t->locals = NULL; /* a destructor that sets a value starts a new list */
        while (list) {
            struct pz__local *l = list;
            list = l->next;
            void *v = l->value;
            void (*d)(void *) = destructors[l->key - 1];
            free(l);
            if (v && d)
                d(v);
        }
    }
    while (t->locals) { /* still setting values after four rounds: dropped */
        struct pz__local *l = t->locals;
        t->locals = l->next;
        free(l);
    }
}

/* ---- names by id ---- */

/* Names by id: a registry of the live tasks that have a name (open
 * addressing by id, tombstones for the removed; a spawn beyond its 4096
 * entries is not registered, and its name cannot be found by id).  Only
 * named spawns pay for it. */
static pz__spin names_lock;
struct named {
    uint64_t id;
    char name[32];
};
#define PZ__NAMES 4096
static struct named names[PZ__NAMES]; /* open addressing by id; id 0 is empty */

void pz__task_name_register(pz_task_t *t)
{
    if (!t->name[0])
        return;
    pz__spin_lock(&names_lock);
    size_t i = (size_t)(t->id * 0x9E3779B97F4A7C15ull >> 52) % PZ__NAMES;
    for (size_t n = 0; n < PZ__NAMES; n++, i = (i + 1) % PZ__NAMES) {
        if (names[i].id == 0 || names[i].id == UINT64_MAX) {
            names[i].id = t->id;
            memcpy(names[i].name, t->name, sizeof names[i].name);
            break;
        }
    }
    pz__spin_unlock(&names_lock);
}

void pz__task_name_forget(pz_task_t *t)
{
    if (!t->name[0])
        return;
    pz__spin_lock(&names_lock);
    size_t i = (size_t)(t->id * 0x9E3779B97F4A7C15ull >> 52) % PZ__NAMES;
    for (size_t n = 0; n < PZ__NAMES && names[i].id != 0; n++, i = (i + 1) % PZ__NAMES) {
        if (names[i].id == t->id) {
            names[i].id = UINT64_MAX; /* a tombstone keeps later probes going */
            break;
        }
    }
    pz__spin_unlock(&names_lock);
}

int pz_task_name_of(uint64_t id, char *out, size_t cap)
{
    if (!out || cap == 0 || id == 0 || id == UINT64_MAX)
        return -EINVAL;
    int r = -ESRCH;
    pz__spin_lock(&names_lock);
    size_t i = (size_t)(id * 0x9E3779B97F4A7C15ull >> 52) % PZ__NAMES;
    for (size_t n = 0; n < PZ__NAMES && names[i].id != 0; n++, i = (i + 1) % PZ__NAMES) {
        if (names[i].id == id) {
            size_t len = strnlen(names[i].name, sizeof names[i].name);
            if (len >= cap)
                len = cap - 1;
            memcpy(out, names[i].name, len);
            out[len] = '\0';
            r = 0;
            break;
        }
    }
    pz__spin_unlock(&names_lock);
    return r;
}
