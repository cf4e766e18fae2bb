# plaza's gdb helper: lists a plaza program's tasks and prints the stack
# of a suspended task from the registers its context switch saved.
#
#   (gdb) source /usr/local/share/plaza/plaza-gdb.py
#   (gdb) plaza-tasks            every live task: id, name, state, wait
#   (gdb) plaza-bt 12            the stack of task 12 (suspended tasks; a live
#                                process, see below for core files)
#
# It reads plaza's own structures (src/runtime/internal.h): the registry of
# live tasks (the registry lists in task.c), each task's wait record and park
# word, and the saved stack pointer, whose frame layout is that of
# src/arch/x86_64/switch.S: [sp+8..48] r15 r14 r13 r12 rbx rbp, [sp+56] the
# return address; the task's stack pointer after the switch is sp+64.  The
# stack is printed by loading those registers into the selected thread for
# the length of one "backtrace" (its own are put back after): on a live
# process.  In a core file registers cannot be written; plaza-tasks works
# there, and plaza-bt names the task's innermost function.
import gdb

PARK_STATES = {0: "running/runnable", 1: "parking", 2: "parked", 3: "woken"}


def _registry():
    # task.c keeps the live tasks in an array of lists (registry[i].head,
    # linked by reg_next); a task that has ended but is not yet freed is
    # still linked, with reg_hidden set, and reports skip it.
    sym = gdb.lookup_static_symbol("registry")
    if sym is None:
        raise gdb.GdbError("plaza: no task registry: is this a plaza program with debug information?")
    shards = sym.value()
    lo, hi = shards.type.range()
    for i in range(lo, hi + 1):
        t = shards[i]["head"]
        while int(t) != 0:
            task = t.dereference()
            if not int(task["reg_hidden"]):
                yield task
            t = task["reg_next"]


def _running_ids():
    ids = {}
    try:
        rt = gdb.parse_and_eval("pz__rt")
        if int(rt) == 0:
            return ids
        rt = rt.dereference()
        for i in range(int(rt["nworkers"])):
            rid = int(rt["workers"][i]["running_id"])
            if rid:
                ids[rid] = i
    except gdb.error:
        pass
    return ids


def _kind_name(k):
    try:
        return str(gdb.Value(k).cast(gdb.lookup_type("enum pz__wait_kind"))).replace("PZ__WAIT_", "").lower()
    except gdb.error:
        return str(k)


class PlazaTasks(gdb.Command):
    """List plaza's live tasks: id, name, state, what each waits on."""

    def __init__(self):
        super().__init__("plaza-tasks", gdb.COMMAND_DATA)

    def invoke(self, arg, from_tty):
        running = _running_ids()
        n = 0
        for t in _registry():
            n += 1
            tid = int(t["id"])
            name = t["name"].string() or "unnamed"
            kind = int(t["wait"]["kind"])
            park = int(t["park_state"]) & 3
            if tid in running:
                state = "running on worker %d" % running[tid]
            elif kind:
                obj = int(t["wait"]["obj"])
                what = _kind_name(kind)
                state = "waiting in %s %s" % (what, ("fd %d" % obj) if what.startswith("fd") else hex(obj))
                if bool(t["wait_blocks_thread"]):
                    state = "blocked (its thread) in " + state[len("waiting in "):]
            else:
                state = PARK_STATES.get(park, "?")
            print("task %d (%s) %s" % (tid, name, state))
        print("plaza: %d task(s)" % n)


class PlazaBt(gdb.Command):
    """plaza-bt ID: the stack of the suspended task ID, from its saved context."""

    def __init__(self):
        super().__init__("plaza-bt", gdb.COMMAND_STACK)

    def invoke(self, arg, from_tty):
        if not arg.strip():
            raise gdb.GdbError("usage: plaza-bt TASK-ID")
        want = int(arg.split()[0], 0)
        task = None
        for t in _registry():
            if int(t["id"]) == want:
                task = t
                break
        if task is None:
            raise gdb.GdbError("plaza: no live task %d" % want)
        if want in _running_ids():
            raise gdb.GdbError("plaza: task %d is running: its stack is that of its worker thread" % want)
        sp = int(task["ctx"]["sp"])
        inf = gdb.selected_inferior()
        pc = int.from_bytes(bytes(inf.read_memory(sp + 56, 8)), "little")
        words = [int.from_bytes(bytes(inf.read_memory(sp + 8 * k, 8)), "little") for k in range(8)]
        regs = {"r15": words[1], "r14": words[2], "r13": words[3], "r12": words[4], "rbx": words[5],
                "rbp": words[6], "rip": pc, "rsp": sp + 64}
        # Load the saved registers into the selected thread, print its stack,
        # and put its own registers back (a live process: a core file's
        # registers cannot be written, and then the task's frames are shown
        # from the saved pc alone).
        gdb.execute("frame 0", to_string=True)
        saved = {r: int(gdb.parse_and_eval("$" + r)) for r in regs}
        try:
            for r, v in regs.items():
                gdb.execute("set $%s = 0x%x" % (r, v), to_string=True)
            print(gdb.execute("backtrace 64", to_string=True), end="")
        except gdb.error as e:
            print("plaza: cannot load the task's registers (%s); its innermost frame:" % e)
            print(gdb.execute("info symbol 0x%x" % pc, to_string=True), end="")
        finally:
            for r, v in saved.items():
                try:
                    gdb.execute("set $%s = 0x%x" % (r, v), to_string=True)
                except gdb.error:
                    pass


PlazaTasks()
PlazaBt()
