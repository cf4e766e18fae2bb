// peer-go: the plaza peer workloads on the Go runtime (goroutines, sync.Mutex,
// sync.RWMutex, channels). Standard library only.
//
// Usage: peer-go <workload|all|list> [key=value ...]
// Prints `system,workload,param,metric,value` CSV lines on stdout; diagnostics on stderr.
// Exits non-zero if a workload's own check (counter total, checksum) fails.
//
// Go has no OS-thread API: rows that other peers run on `threads` OS threads run here
// as `threads` goroutines with GOMAXPROCS=2 (the machine's core count in the figures).
package main

import (
	"encoding/binary"
	"fmt"
	"io"
	"math/bits"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// ---------------------------------------------------------------- helpers

func fail(msg string) {
	fmt.Fprintf(os.Stderr, "peer-go: CHECK FAILED: %s\n", msg)
	os.Exit(2)
}

func emit(workload, param, metric string, value float64) {
	fmt.Printf("go,%s,%s,%s,%.2f\n", workload, param, metric, value)
}

type params map[string]string

func (p params) u(key string, def uint64) uint64 {
	v, ok := p[key]
	if !ok {
		return def
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		fmt.Fprintf(os.Stderr, "peer-go: %s=%s is not a non-negative integer\n", key, v)
		os.Exit(64)
	}
	return n
}

func maxu(a, b uint64) uint64 {
	if a > b {
		return a
	}
	return b
}

// itersFor: iterations per goroutine: iters= if given, else total ops split over n.
func itersFor(p params, total, n uint64) uint64 {
	return p.u("iters", maxu(total/maxu(n, 1), 1))
}

// sink keeps busy-loop results alive.
var sink uint64

// spinWork is the busy loop run outside the lock: `work` steps of xorshift64 (13, 7, 17),
// the same loop in every peer; the `work` workload calibrates its cost.
func spinWork(work, seed uint64) uint64 {
	x := seed | 1
	for i := uint64(0); i < work; i++ {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
	}
	return x
}

// lcg is the per-goroutine stream that picks reads vs writes (same LCG in every peer).
type lcg uint64

func (l *lcg) pct() uint64 {
	*l = lcg(uint64(*l)*6364136223846793005 + 1442695040888963407)
	return (uint64(*l) >> 33) % 100
}

func rssBytes() uint64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		fail("read /proc/self/statm")
	}
	f := strings.Fields(string(b))
	pages, _ := strconv.ParseUint(f[1], 10, 64)
	return pages * uint64(os.Getpagesize())
}

func nsPer(d time.Duration, ops uint64) float64 {
	return float64(d.Nanoseconds()) / float64(maxu(ops, 1))
}

// timedGoroutines starts n goroutines running f(i); they wait on a gate that opens when
// all have started. The clock runs from opening the gate to the last one finishing.
func timedGoroutines(n uint64, f func(i uint64)) time.Duration {
	var ready, done sync.WaitGroup
	gate := make(chan struct{})
	ready.Add(int(n))
	done.Add(int(n))
	for i := uint64(0); i < n; i++ {
		go func(i uint64) {
			defer done.Done()
			ready.Done()
			<-gate
			f(i)
		}(i)
	}
	ready.Wait()
	t0 := time.Now()
	close(gate)
	done.Wait()
	return time.Since(t0)
}

// ---------------------------------------------------------------- runtime workloads

func wWork(p params) {
	runtime.GOMAXPROCS(1)
	work := p.u("work", 100)
	iters := maxu(p.u("iters", 1000000), 1)
	s := uint64(1)
	t0 := time.Now()
	for i := uint64(0); i < iters; i++ {
		s ^= spinWork(work, s+i)
	}
	d := time.Since(t0)
	sink += s
	emit("work", fmt.Sprintf("work=%d", work), "ns_per_op", nsPer(d, iters))
}

func wSpawnJoin(p params) {
	n := p.u("n", 100000)
	workers := p.u("workers", 2)
	runtime.GOMAXPROCS(int(workers))
	// Go has no join handle: each goroutine writes its result to its slot and signals one
	// WaitGroup; the results are then checked in order.
	t0 := time.Now()
	res := make([]uint64, n)
	var wg sync.WaitGroup
	wg.Add(int(n))
	for i := uint64(0); i < n; i++ {
		go func(i uint64) {
			res[i] = i + 1
			wg.Done()
		}(i)
	}
	wg.Wait()
	for i := uint64(0); i < n; i++ {
		if res[i] != i+1 {
			fail("spawn_join: wrong result")
		}
	}
	d := time.Since(t0)
	emit("spawn_join", fmt.Sprintf("n=%d workers=%d", n, workers), "ns_per_task", nsPer(d, n))
}

// spawn_burst: bursts of goroutines that each yield once (runtime.Gosched) before they
// store their result, so that a burst holds its stacks at once; each burst is waited for
// before the next starts.
func wSpawnBurst(p params) {
	burst := p.u("burst", 1000)
	rounds := p.u("rounds", 100)
	workers := p.u("workers", 2)
	runtime.GOMAXPROCS(int(workers))
	res := make([]uint64, burst)
	t0 := time.Now()
	for r := uint64(0); r < rounds; r++ {
		var wg sync.WaitGroup
		wg.Add(int(burst))
		for i := uint64(0); i < burst; i++ {
			go func(i uint64) {
				runtime.Gosched()
				res[i] = i + 1 + r
				wg.Done()
			}(i)
		}
		wg.Wait()
		for i := uint64(0); i < burst; i++ {
			if res[i] != i+1+r {
				fail("spawn_burst: wrong result")
			}
		}
	}
	d := time.Since(t0)
	emit("spawn_burst", fmt.Sprintf("burst=%d rounds=%d workers=%d", burst, rounds, workers), "ns_per_task",
		nsPer(d, burst*rounds))
}

func wYield(p params) {
	tasks := p.u("tasks", 2)
	workers := p.u("workers", 1)
	iters := p.u("iters", 1000000)
	runtime.GOMAXPROCS(int(workers))
	var count uint64
	d := timedGoroutines(tasks, func(uint64) {
		for i := uint64(0); i < iters; i++ {
			runtime.Gosched()
		}
		atomic.AddUint64(&count, iters)
	})
	if count != tasks*iters {
		fail("yield: count mismatch")
	}
	emit("yield", fmt.Sprintf("tasks=%d workers=%d", tasks, workers), "ns_per_yield", nsPer(d, tasks*iters))
}

// wSleep: one goroutine sleeps `us` µs n times; each actual duration goes into the
// latency histogram (percentiles) and into an exact sum (mean).
func wSleep(p params) {
	n := maxu(p.u("n", 2000), 1)
	us := p.u("us", 100)
	runtime.GOMAXPROCS(1)
	h := newHist()
	var sum uint64
	done := make(chan struct{})
	go func() {
		for i := uint64(0); i < n; i++ {
			t0 := time.Now()
			time.Sleep(time.Duration(us) * time.Microsecond)
			d := uint64(time.Since(t0).Nanoseconds())
			h.add(d)
			sum += d
		}
		close(done)
	}()
	<-done
	if h.count() != n {
		fail("sleep: sample count mismatch")
	}
	param := fmt.Sprintf("n=%d us=%d", n, us)
	emit("sleep", param, "p50_us", h.permille(500)/1000)
	emit("sleep", param, "p99_us", h.permille(990)/1000)
	emit("sleep", param, "p999_us", h.permille(999)/1000)
	emit("sleep", param, "mean_us", float64(sum)/float64(n)/1000)
}

func wIdleRss(p params) {
	n := maxu(p.u("n", 100000), 1)
	workers := p.u("workers", 2)
	runtime.GOMAXPROCS(int(workers))
	// Every goroutine blocks receiving from one channel; closing it releases them all.
	release := make(chan struct{})
	res := make([]uint64, n)
	var parked int64
	var wg sync.WaitGroup
	runtime.GC()
	time.Sleep(20 * time.Millisecond)
	before := rssBytes()
	wg.Add(int(n))
	for i := uint64(0); i < n; i++ {
		go func(i uint64) {
			atomic.AddInt64(&parked, 1)
			<-release
			res[i] = i + 1
			wg.Done()
		}(i)
	}
	for atomic.LoadInt64(&parked) < int64(n) {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond)
	after := rssBytes()
	close(release)
	wg.Wait()
	for i := uint64(0); i < n; i++ {
		if res[i] != i+1 {
			fail("idle_rss: wrong result")
		}
	}
	emit("idle_rss", fmt.Sprintf("n=%d workers=%d", n, workers), "bytes_per_task",
		(float64(after)-float64(before))/float64(n))
}

// ---------------------------------------------------------------- mutex workloads

// lockLoop: lock, counter++, unlock, then `work` busy steps outside the lock; every 64th
// acquisition is timed. Returns the longest timed wait in ns.
func lockLoop(m *sync.Mutex, counter *uint64, iters, work, seed uint64) uint64 {
	s := seed
	var maxWait uint64
	for i := uint64(0); i < iters; i++ {
		if i&63 == 0 {
			t0 := time.Now()
			m.Lock()
			w := uint64(time.Since(t0).Nanoseconds())
			*counter++
			m.Unlock()
			if w > maxWait {
				maxWait = w
			}
		} else {
			m.Lock()
			*counter++
			m.Unlock()
		}
		if work != 0 {
			s ^= spinWork(work, s+i)
		}
	}
	atomic.AddUint64(&sink, s)
	return maxWait
}

func atomicMax(a *uint64, v uint64) {
	for {
		old := atomic.LoadUint64(a)
		if v <= old || atomic.CompareAndSwapUint64(a, old, v) {
			return
		}
	}
}

// mutexRun runs n goroutines of lockLoop on GOMAXPROCS=procs; returns ns/op and max wait.
func mutexRun(n, procs, iters, work uint64) (float64, float64) {
	runtime.GOMAXPROCS(int(procs))
	var m sync.Mutex
	var counter, maxWait uint64
	d := timedGoroutines(n, func(i uint64) {
		atomicMax(&maxWait, lockLoop(&m, &counter, iters, work, i+1))
	})
	m.Lock()
	c := counter
	m.Unlock()
	if c != n*iters {
		fail("mutex: counter mismatch")
	}
	return nsPer(d, n*iters), float64(maxWait) / 1000.0
}

// procsNote names GOMAXPROCS in a `threads` row's param when it is not the default 2.
func procsNote(procs uint64) string {
	if procs == 2 {
		return ""
	}
	return fmt.Sprintf(" procs=%d", procs)
}

func wUncontended(p params) {
	iters := p.u("iters", 10000000)
	runtime.GOMAXPROCS(1)
	var m sync.Mutex
	var counter uint64
	t0 := time.Now()
	for i := uint64(0); i < iters; i++ {
		m.Lock()
		counter++
		m.Unlock()
	}
	d := time.Since(t0)
	if counter != iters {
		fail("uncontended: counter mismatch")
	}
	emit("uncontended", "threads=1", "ns_per_op", nsPer(d, iters))
}

func wContended(p params) {
	threads := maxu(p.u("threads", 2), 1)
	work := p.u("work", 0)
	procs := p.u("procs", 2)
	iters := itersFor(p, 4000000, threads)
	ns, mw := mutexRun(threads, procs, iters, work)
	param := fmt.Sprintf("threads=%d work=%d", threads, work) + procsNote(procs)
	emit("contended", param, "ns_per_op", ns)
	emit("contended", param, "max_wait_us", mw)
}

func wTasksContended(p params) {
	tasks := maxu(p.u("tasks", 64), 1)
	workers := p.u("workers", 2)
	work := p.u("work", 0)
	iters := itersFor(p, 4000000, tasks)
	ns, mw := mutexRun(tasks, workers, iters, work)
	param := fmt.Sprintf("tasks=%d workers=%d work=%d", tasks, workers, work)
	emit("tasks_contended", param, "ns_per_op", ns)
	emit("tasks_contended", param, "max_wait_us", mw)
}

type quad struct{ a, b, c, d uint64 }

func (q *quad) bump()            { q.a++; q.b++; q.c++; q.d++ }
func (q *quad) consistent() bool { return q.a == q.b && q.b == q.c && q.c == q.d }

// rwRun: n goroutines on GOMAXPROCS=procs, each iters ops on one RWMutex; an op is a
// write with probability write_pct%.
func rwRun(n, procs, iters, writePct uint64) float64 {
	runtime.GOMAXPROCS(int(procs))
	var l sync.RWMutex
	var data quad
	var writes uint64
	d := timedGoroutines(n, func(t uint64) {
		rng := lcg(t + 1)
		var nw, s uint64
		for i := uint64(0); i < iters; i++ {
			if rng.pct() < writePct {
				l.Lock()
				data.bump()
				l.Unlock()
				nw++
			} else {
				l.RLock()
				q := data
				l.RUnlock()
				if !q.consistent() {
					fail("rwlock: torn read")
				}
				s += q.a
			}
		}
		atomic.AddUint64(&writes, nw)
		atomic.AddUint64(&sink, s)
	})
	l.RLock()
	q := data
	l.RUnlock()
	if !q.consistent() || q.a != writes {
		fail("rwlock: write count mismatch")
	}
	return nsPer(d, n*iters)
}

func wRwlockReadMostly(p params) {
	threads := maxu(p.u("threads", 8), 1)
	writePct := p.u("write_pct", 1)
	procs := p.u("procs", 2)
	iters := itersFor(p, 4000000, threads)
	ns := rwRun(threads, procs, iters, writePct)
	emit("rwlock_read_mostly", fmt.Sprintf("threads=%d write_pct=%d", threads, writePct)+procsNote(procs), "ns_per_op", ns)
}

// ---------------------------------------------------------------- "async" workloads
// Go has one kind of lock: sync.Mutex parks the goroutine (after spinning), so the
// async rows use the same primitives as the sync rows.

func wAsyncUncontended(p params) {
	iters := p.u("iters", 5000000)
	runtime.GOMAXPROCS(1)
	var ns float64
	done := make(chan struct{})
	go func() {
		var m sync.Mutex
		var counter uint64
		t0 := time.Now()
		for i := uint64(0); i < iters; i++ {
			m.Lock()
			counter++
			m.Unlock()
		}
		ns = nsPer(time.Since(t0), iters)
		if counter != iters {
			fail("async_uncontended: counter mismatch")
		}
		close(done)
	}()
	<-done
	emit("async_uncontended", "tasks=1", "ns_per_op", ns)
}

func wAsyncContended(p params) {
	tasks := maxu(p.u("tasks", 64), 1)
	workers := p.u("workers", 2)
	work := p.u("work", 0)
	iters := itersFor(p, 2000000, tasks)
	ns, mw := mutexRun(tasks, workers, iters, work)
	param := fmt.Sprintf("tasks=%d workers=%d work=%d", tasks, workers, work)
	emit("async_contended", param, "ns_per_op", ns)
	emit("async_contended", param, "max_wait_us", mw)
}

func wAsyncRwlock(p params) {
	tasks := maxu(p.u("tasks", 64), 1)
	workers := p.u("workers", 2)
	writePct := p.u("write_pct", 10)
	iters := itersFor(p, 2000000, tasks)
	ns := rwRun(tasks, workers, iters, writePct)
	emit("async_rwlock", fmt.Sprintf("tasks=%d workers=%d write_pct=%d", tasks, workers, writePct), "ns_per_op", ns)
}

func wSemaphore(p params) {
	tasks := maxu(p.u("tasks", 64), 1)
	workers := p.u("workers", 2)
	permits := maxu(p.u("permits", 4), 1)
	iters := itersFor(p, 2000000, tasks)
	runtime.GOMAXPROCS(int(workers))
	// A buffered channel of capacity `permits` is the semaphore: send acquires, receive
	// releases.
	sem := make(chan struct{}, permits)
	var total uint64
	d := timedGoroutines(tasks, func(uint64) {
		var n uint64
		for i := uint64(0); i < iters; i++ {
			sem <- struct{}{}
			n++
			<-sem
		}
		atomic.AddUint64(&total, n)
	})
	if total != tasks*iters || len(sem) != 0 {
		fail("semaphore: acquisition count or final permits mismatch")
	}
	emit("semaphore", fmt.Sprintf("tasks=%d workers=%d permits=%d", tasks, workers, permits), "ns_per_op", nsPer(d, tasks*iters))
}

func wChanPingpong(p params) {
	iters := maxu(p.u("iters", 300000), 1)
	workers := p.u("workers", 1)
	runtime.GOMAXPROCS(int(workers))
	a := make(chan uint64, 1)
	b := make(chan uint64, 1)
	echoDone := make(chan struct{})
	go func() {
		for v := range a {
			b <- v + 1
		}
		close(echoDone)
	}()
	var d time.Duration
	done := make(chan struct{})
	go func() {
		t0 := time.Now()
		for i := uint64(0); i < iters; i++ {
			a <- i
			if <-b != i+1 {
				fail("chan_pingpong: wrong reply")
			}
		}
		d = time.Since(t0)
		close(done)
	}()
	<-done
	close(a)
	<-echoDone
	emit("chan_pingpong", fmt.Sprintf("workers=%d", workers), "ns_per_roundtrip", nsPer(d, iters))
}

func wChanMpmc(p params) {
	producers := maxu(p.u("producers", 4), 1)
	consumers := maxu(p.u("consumers", 4), 1)
	workers := p.u("workers", 2)
	capacity := p.u("cap", 1024)
	items := p.u("items", 1000000)
	runtime.GOMAXPROCS(int(workers))
	ch := make(chan uint64, capacity)
	var sum, count uint64
	var prod, cons sync.WaitGroup
	t0 := time.Now()
	cons.Add(int(consumers))
	for c := uint64(0); c < consumers; c++ {
		go func() {
			var s, n uint64
			for v := range ch {
				s += v
				n++
			}
			atomic.AddUint64(&sum, s)
			atomic.AddUint64(&count, n)
			cons.Done()
		}()
	}
	prod.Add(int(producers))
	for pi := uint64(0); pi < producers; pi++ {
		go func(pi uint64) {
			for i := pi; i < items; i += producers {
				ch <- i + 1
			}
			prod.Done()
		}(pi)
	}
	prod.Wait()
	close(ch)
	cons.Wait()
	d := time.Since(t0)
	if count != items || sum != items*(items+1)/2 {
		fail("chan_mpmc: checksum mismatch")
	}
	emit("chan_mpmc", fmt.Sprintf("producers=%d consumers=%d workers=%d cap=%d", producers, consumers, workers, capacity),
		"ns_per_item", nsPer(d, items))
}

// ---------------------------------------------------------------- main

// ---------------------------------------------------------------- echo server

// wEchoServer: `echo_server port=N workers=2 seconds=S`, a TCP echo server on
// 127.0.0.1:port for S seconds with GOMAXPROCS=workers, one goroutine per connection
// (read, then write what was read, 4 KiB buffer). bench-plaza's `echo` client drives it;
// this side only reports how many connections it accepted. Without `port` (as in `all`)
// there is no client: skipped.
func wEchoServer(p params) {
	if _, ok := p["port"]; !ok {
		fmt.Fprintln(os.Stderr, "peer-go: echo_server needs port=N (0: any free port); skipped")
		return
	}
	port := p.u("port", 0)
	workers := maxu(p.u("workers", 2), 1)
	seconds := p.u("seconds", 10)
	if port > 65535 {
		fmt.Fprintf(os.Stderr, "peer-go: port=%d is not a TCP port\n", port)
		os.Exit(64)
	}
	prev := runtime.GOMAXPROCS(int(workers))
	defer runtime.GOMAXPROCS(prev)
	ln, err := net.Listen("tcp4", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		fmt.Fprintf(os.Stderr, "peer-go: echo_server: %v\n", err)
		os.Exit(2)
	}
	fmt.Fprintf(os.Stderr, "peer-go: echo_server: listening on %s for %d s\n", ln.Addr(), seconds)
	// Closing the listener at the deadline ends the accept loop; connections still open
	// then end with the process.
	timer := time.AfterFunc(time.Duration(seconds)*time.Second, func() { ln.Close() })
	defer timer.Stop()
	var accepted uint64
	for {
		c, err := ln.Accept()
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				continue
			}
			break // the listener was closed at the deadline
		}
		// net sets TCP_NODELAY on every TCP connection by default, as plaza's and
		// tokio's servers do explicitly.
		accepted++
		go func(c net.Conn) {
			defer c.Close()
			buf := make([]byte, 4096)
			for {
				n, err := c.Read(buf)
				if n > 0 {
					if _, werr := c.Write(buf[:n]); werr != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		}(c)
	}
	emit("echo_server", fmt.Sprintf("workers=%d", workers), "connections", float64(accepted))
}

// ---------------------------------------------------------------- logic sections

// The logic-section workloads talk to bin/dbserver (bench/dbserver.c): a 16-byte request,
// the same 16 bytes back after the server's delay. They need db_port=N; without it (as in
// `all`) they are skipped. Go has one mutex, which parks the goroutine (its async lock),
// and its net.Conn parks the goroutine too, so there is no "sync lock around blocking
// I/O" variant: `bystanders lock=sync` is skipped, and there is no `wrong_lock`.

const dbMsg = 16

func dbPort(p params, workload string) (int, bool) {
	if _, ok := p["db_port"]; !ok {
		fmt.Fprintf(os.Stderr, "peer-go: %s needs db_port=N (a running bin/dbserver); skipped\n", workload)
		return 0, false
	}
	port := p.u("db_port", 0)
	if port == 0 || port > 65535 {
		fmt.Fprintf(os.Stderr, "peer-go: db_port=%d is not a TCP port\n", port)
		os.Exit(64)
	}
	return int(port), true
}

func dbConnect(port int) net.Conn {
	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		fail(fmt.Sprintf("connect 127.0.0.1:%d: %v", port, err))
	}
	return c // net sets TCP_NODELAY by default
}

// dbTrip is one round trip; the reply must echo the request.
func dbTrip(c net.Conn, seq uint64) {
	var req, resp [dbMsg]byte
	binary.LittleEndian.PutUint64(req[:8], seq)
	if _, err := c.Write(req[:]); err != nil {
		fail("db write: " + err.Error())
	}
	if _, err := io.ReadFull(c, resp[:]); err != nil || resp != req {
		fail("db round trip failed or reply mismatch")
	}
}

// dbProbeRtt: mean time of one unlocked round trip (one goroutine alone, after 10
// warm-up trips, at most 500 trips or 200 ms).
func dbProbeRtt(port int) time.Duration {
	c := dbConnect(port)
	defer c.Close()
	for i := uint64(0); i < 10; i++ {
		dbTrip(c, i)
	}
	t0 := time.Now()
	n := uint64(0)
	for n < 500 && time.Since(t0) < 200*time.Millisecond {
		dbTrip(c, n)
		n++
	}
	return time.Since(t0) / time.Duration(n)
}

// hist is the latency histogram of every peer and of plaza's own benchmarks (the same
// layout in each language): log-linear over nanoseconds, one bucket per value below 256,
// then every power-of-two range [2^k, 2^(k+1)) split into 128 equal buckets, so a bucket
// is at most 1/128 of its lower bound wide and its midpoint, the value reported, is
// within 0.4% of any value in it. Values from 2^40 ns (18 minutes) up share the last
// bucket.
type hist []uint64

const (
	histSubBits = 7
	histSub     = 1 << histSubBits
	histMaxBits = 40
	histBuckets = 2*histSub + (histMaxBits-histSubBits-1)*histSub
)

func newHist() hist { return make(hist, histBuckets) }

func histIndex(v uint64) int {
	if v >= 1<<histMaxBits {
		v = 1<<histMaxBits - 1
	}
	if v < 2*histSub {
		return int(v)
	}
	shift := uint64(63-bits.LeadingZeros64(v)) - histSubBits // >= 1 here
	mant := v >> shift                                       // in [histSub, 2*histSub)
	return int(2*histSub + (shift-1)*histSub + (mant - histSub))
}

// histValue is the midpoint of bucket i, the inverse of histIndex.
func histValue(i int) float64 {
	if i < 2*histSub {
		return float64(i)
	}
	k := uint64(i - 2*histSub)
	shift, mant := k/histSub+1, k%histSub+histSub
	return float64(mant<<shift) + float64(uint64(1)<<shift)/2
}

func (h hist) add(v uint64) { h[histIndex(v)]++ }

func (h hist) merge(o hist) {
	for i, c := range o {
		h[i] += c
	}
}

func (h hist) count() uint64 {
	n := uint64(0)
	for _, c := range h {
		n += c
	}
	return n
}

// permille: with n values, the one at sorted index min(n-1, n*permille/1000), reported
// as its bucket's midpoint (ns); 0 for an empty histogram. The rule of every peer.
func (h hist) permille(pm uint64) float64 {
	n := h.count()
	if n == 0 {
		return 0
	}
	rank := n * pm / 1000
	if rank > n-1 {
		rank = n - 1
	}
	seen := uint64(0)
	for i, c := range h {
		seen += c
		if seen > rank {
			return histValue(i)
		}
	}
	return histValue(len(h) - 1)
}

// logicSections runs `tasks` goroutines, each with its own connection, that do
// lock; one round trip; unlock until the deadline. It returns the section count.
func logicSections(tasks uint64, deadline time.Time, conns []net.Conn) uint64 {
	var m sync.Mutex
	var held, total uint64
	var wg sync.WaitGroup
	for i := uint64(0); i < tasks; i++ {
		wg.Add(1)
		go func(c net.Conn) {
			defer wg.Done()
			n := uint64(0)
			for time.Now().Before(deadline) {
				m.Lock()
				dbTrip(c, held)
				held++
				m.Unlock()
				n++
			}
			atomic.AddUint64(&total, n)
		}(conns[i])
	}
	wg.Wait()
	if total != held {
		fail("logic: section count mismatch")
	}
	return total
}

func dbConns(port int, n uint64) []net.Conn {
	conns := make([]net.Conn, n)
	for i := range conns {
		conns[i] = dbConnect(port)
	}
	return conns
}

func closeAll(conns []net.Conn) {
	for _, c := range conns {
		c.Close()
	}
}

func wLogic(p params) {
	port, ok := dbPort(p, "logic")
	if !ok {
		return
	}
	tasks := maxu(p.u("tasks", 64), 1)
	workers := maxu(p.u("workers", 2), 1)
	delayUs := p.u("delay_us", 0)
	seconds := maxu(p.u("seconds", 2), 1)
	runtime.GOMAXPROCS(int(workers))
	rtt := dbProbeRtt(port)
	conns := dbConns(port, tasks)
	t0 := time.Now()
	total := logicSections(tasks, t0.Add(time.Duration(seconds)*time.Second), conns)
	d := time.Since(t0)
	closeAll(conns)
	sps := float64(total) / d.Seconds()
	param := fmt.Sprintf("tasks=%d workers=%d delay_us=%d", tasks, workers, delayUs)
	emit("logic", param, "sections_per_s", sps)
	emit("logic", param, "utilisation", sps*rtt.Seconds())
	emit("logic", param, "rtt_us", float64(rtt.Nanoseconds())/1000)
}

// wBystanders: the logic sections of `logic` while `bystanders` goroutines loop
// { work(100); Gosched } and record each iteration's latency, counted from the end of
// the previous one (the first from the start), so waiting for a thread is in the figure.
func wBystanders(p params) {
	lock := "async"
	if v, ok := p["lock"]; ok {
		lock = v
	}
	if lock == "sync" {
		fmt.Fprintln(os.Stderr, "peer-go: bystanders lock=sync: Go has no thread-blocking lock "+
			"(sync.Mutex and net.Conn park the goroutine); skipped")
		return
	}
	if lock != "async" {
		fmt.Fprintf(os.Stderr, "peer-go: lock=%s: expected sync or async\n", lock)
		os.Exit(64)
	}
	port, ok := dbPort(p, "bystanders")
	if !ok {
		return
	}
	tasks := maxu(p.u("tasks", 64), 1)
	bystanders := maxu(p.u("bystanders", 64), 1)
	workers := maxu(p.u("workers", 2), 1)
	delayUs := p.u("delay_us", 1000)
	seconds := maxu(p.u("seconds", 2), 1)
	runtime.GOMAXPROCS(int(workers))
	conns := dbConns(port, tasks)
	t0 := time.Now()
	deadline := t0.Add(time.Duration(seconds) * time.Second)
	hists := make([]hist, bystanders)
	ops := make([]uint64, bystanders)
	var bwg sync.WaitGroup
	for b := uint64(0); b < bystanders; b++ {
		bwg.Add(1)
		go func(b uint64) {
			defer bwg.Done()
			h := newHist()
			prev, n, s := t0, uint64(0), b+1
			for {
				s ^= spinWork(100, s+n)
				runtime.Gosched()
				now := time.Now()
				h.add(uint64(now.Sub(prev).Nanoseconds()))
				prev = now
				n++
				if !now.Before(deadline) {
					break
				}
			}
			atomic.AddUint64(&sink, s)
			hists[b], ops[b] = h, n
		}(b)
	}
	sections := logicSections(tasks, deadline, conns)
	bwg.Wait()
	d := time.Since(t0)
	closeAll(conns)
	all, total := newHist(), uint64(0)
	for b := range hists {
		all.merge(hists[b])
		total += ops[b]
	}
	if all.count() != total {
		fail("bystanders: iteration count mismatch")
	}
	param := fmt.Sprintf("lock=async tasks=%d bystanders=%d workers=%d delay_us=%d", tasks, bystanders, workers, delayUs)
	emit("bystanders", param, "bystander_ops_per_s", float64(total)/d.Seconds())
	emit("bystanders", param, "bystander_p50_us", all.permille(500)/1000)
	emit("bystanders", param, "bystander_p99_us", all.permille(990)/1000)
	emit("bystanders", param, "bystander_p999_us", all.permille(999)/1000)
	emit("bystanders", param, "sections_per_s", float64(sections)/d.Seconds())
}

// ---------------------------------------------------------------- scheduling under overload

// spawnBusy starts n goroutines that run `work` xorshift steps and Gosched until stop is
// set, adding their iterations to ops; wg counts them.
func spawnBusy(n, work uint64, stop *atomic.Bool, ops *uint64, wg *sync.WaitGroup) {
	for i := uint64(0); i < n; i++ {
		wg.Add(1)
		go func(i uint64) {
			defer wg.Done()
			x, k := i+1, uint64(0)
			for !stop.Load() {
				x ^= spinWork(work, x+k)
				runtime.Gosched()
				k++
			}
			atomic.AddUint64(&sink, x)
			atomic.AddUint64(ops, k)
		}(i)
	}
}

// wTicker: one goroutine sleeps until an absolute deadline every period_us beside `tasks`
// computing and yielding goroutines; lateness = when it runs - its deadline.
func wTicker(p params) {
	tasks := p.u("tasks", 1000)
	workers := maxu(p.u("workers", 2), 1)
	work := p.u("work", 1000)
	period := time.Duration(maxu(p.u("period_us", 2000), 1)) * time.Microsecond
	seconds := maxu(p.u("seconds", 2), 1)
	runtime.GOMAXPROCS(int(workers))
	var stop atomic.Bool
	var ops uint64
	var wg sync.WaitGroup
	spawnBusy(tasks, work, &stop, &ops, &wg)
	t0 := time.Now()
	h := newHist()
	done := make(chan struct{})
	go func() {
		start := time.Now()
		end := start.Add(time.Duration(seconds) * time.Second)
		for deadline := start.Add(period); !deadline.After(end); deadline = deadline.Add(period) {
			time.Sleep(time.Until(deadline))
			now := time.Now()
			if now.Before(deadline) {
				fail("ticker: woke before its deadline")
			}
			h.add(uint64(now.Sub(deadline).Nanoseconds()))
		}
		close(done)
	}()
	<-done
	stop.Store(true)
	wg.Wait()
	opsPerS := float64(ops) / time.Since(t0).Seconds()
	if h.count() == 0 {
		fail("ticker: no ticks")
	}
	param := fmt.Sprintf("tasks=%d workers=%d work=%d period_us=%d", tasks, workers, work, period.Microseconds())
	emit("ticker", param, "late_p50_us", h.permille(500)/1000)
	emit("ticker", param, "late_p99_us", h.permille(990)/1000)
	emit("ticker", param, "late_max_us", h.permille(1000)/1000)
	emit("ticker", param, "busy_ops_per_s", opsPerS)
}

// wBlockingSection: `holders` goroutines take one sync.Mutex in turn and hold it across a
// blocking nanosleep system call of block_ms (the goroutine blocks its thread; the
// runtime hands its P to another thread meanwhile), beside `clients` computing and
// yielding goroutines.
func wBlockingSection(p params) {
	clients := p.u("clients", 1000)
	holders := maxu(p.u("holders", 4), 1)
	workers := maxu(p.u("workers", 2), 1)
	work := p.u("work", 1000)
	block := time.Duration(maxu(p.u("block_ms", 20), 1)) * time.Millisecond
	seconds := maxu(p.u("seconds", 2), 1)
	runtime.GOMAXPROCS(int(workers))
	var stop atomic.Bool
	var ops uint64
	var bwg sync.WaitGroup
	spawnBusy(clients, work, &stop, &ops, &bwg)
	t0 := time.Now()
	deadline := t0.Add(time.Duration(seconds) * time.Second)
	var m sync.Mutex
	holds := newHist()  // under m
	var sections uint64 // under m
	var wg sync.WaitGroup
	for i := uint64(0); i < holders; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				m.Lock()
				got := time.Now()
				ts := syscall.NsecToTimespec(block.Nanoseconds())
				for syscall.Nanosleep(&ts, &ts) != nil {
				}
				held := time.Since(got)
				if held < block {
					fail("blocking_section: held less than the blocking call")
				}
				holds.add(uint64(held.Nanoseconds()))
				sections++
				m.Unlock()
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(t0).Seconds()
	stop.Store(true)
	bwg.Wait()
	opsPerS := float64(ops) / time.Since(t0).Seconds()
	if sections == 0 || holds.count() != sections {
		fail("blocking_section: section count")
	}
	param := fmt.Sprintf("clients=%d holders=%d workers=%d work=%d block_ms=%d", clients, holders, workers, work,
		block.Milliseconds())
	emit("blocking_section", param, "hold_p50_us", holds.permille(500)/1000)
	emit("blocking_section", param, "hold_p99_us", holds.permille(990)/1000)
	emit("blocking_section", param, "hold_max_us", holds.permille(1000)/1000)
	emit("blocking_section", param, "sections_per_s", float64(sections)/elapsed)
	emit("blocking_section", param, "client_ops_per_s", opsPerS)
}

type workload struct {
	name string
	fn   func(params)
	keys []string
}

var workloads = []workload{
	{"work", wWork, []string{"work", "iters"}},
	{"spawn_join", wSpawnJoin, []string{"n", "workers"}},
	{"spawn_burst", wSpawnBurst, []string{"burst", "rounds", "workers"}},
	{"yield", wYield, []string{"tasks", "workers", "iters"}},
	{"sleep", wSleep, []string{"n", "us"}},
	{"idle_rss", wIdleRss, []string{"n", "workers"}},
	{"uncontended", wUncontended, []string{"iters"}},
	{"contended", wContended, []string{"threads", "iters", "work", "procs"}},
	{"tasks_contended", wTasksContended, []string{"tasks", "workers", "iters", "work"}},
	{"rwlock_read_mostly", wRwlockReadMostly, []string{"threads", "iters", "write_pct", "procs"}},
	{"async_uncontended", wAsyncUncontended, []string{"iters"}},
	{"async_contended", wAsyncContended, []string{"tasks", "workers", "iters", "work"}},
	{"async_rwlock", wAsyncRwlock, []string{"tasks", "workers", "iters", "write_pct"}},
	{"semaphore", wSemaphore, []string{"tasks", "workers", "permits", "iters"}},
	{"chan_pingpong", wChanPingpong, []string{"iters", "workers"}},
	{"chan_mpmc", wChanMpmc, []string{"producers", "consumers", "workers", "cap", "items"}},
	{"echo_server", wEchoServer, []string{"port", "workers", "seconds"}},
	{"logic", wLogic, []string{"db_port", "tasks", "workers", "delay_us", "seconds"}},
	{"bystanders", wBystanders, []string{"db_port", "lock", "tasks", "bystanders", "workers", "delay_us", "seconds"}},
	// Not in `all`: bench/run.py runs them with their parameters.
	{"ticker", wTicker, []string{"tasks", "workers", "work", "period_us", "seconds"}},
	{"blocking_section", wBlockingSection, []string{"clients", "holders", "workers", "work", "block_ms", "seconds"}},
}

// allRuns is what `all` runs: each workload once with defaults, plus the rows the spec
// lists (contended threads=2|8|64 x work=0|100; tasks_contended and async_contended
// tasks=2|64|1024 x work=0|100, the same total of operations per row), plus chan_mpmc
// with consumers=1 to match tokio's single-receiver row.
var allRuns = [][]string{
	{"work"},
	{"spawn_join"},
	{"spawn_burst"},
	{"yield"},
	{"sleep"},
	{"idle_rss"},
	{"uncontended"},
	{"contended", "threads=2", "work=0"},
	{"contended", "threads=2", "work=100"},
	{"contended", "threads=8", "work=0"},
	{"contended", "threads=8", "work=100"},
	{"contended", "threads=64", "work=0"},
	{"contended", "threads=64", "work=100"},
	{"tasks_contended", "tasks=2", "work=0"},
	{"tasks_contended", "tasks=2", "work=100"},
	{"tasks_contended", "tasks=64", "work=0"},
	{"tasks_contended", "tasks=64", "work=100"},
	{"tasks_contended", "tasks=1024", "work=0"},
	{"tasks_contended", "tasks=1024", "work=100"},
	{"rwlock_read_mostly"},
	{"async_uncontended"},
	{"async_contended", "tasks=2", "work=0"},
	{"async_contended", "tasks=2", "work=100"},
	{"async_contended", "tasks=64", "work=0"},
	{"async_contended", "tasks=64", "work=100"},
	{"async_contended", "tasks=1024", "work=0"},
	{"async_contended", "tasks=1024", "work=100"},
	{"async_rwlock"},
	{"semaphore"},
	{"chan_pingpong"},
	{"chan_mpmc"},
	{"chan_mpmc", "consumers=1"},
	// Need db_port=N, which `all` never has: they print a note and are skipped
	// (bench/run.py runs them against bin/dbserver).
	{"logic"},
	{"bystanders"},
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: peer-go <workload|all|list> [key=value ...]")
	fmt.Fprintln(os.Stderr, "workloads:")
	for _, w := range workloads {
		ks := make([]string, len(w.keys))
		for i, k := range w.keys {
			ks[i] = "[" + k + "=N]"
		}
		fmt.Fprintf(os.Stderr, "  %s %s\n", w.name, strings.Join(ks, " "))
	}
	os.Exit(64)
}

func run(args []string) {
	var w *workload
	for i := range workloads {
		if workloads[i].name == args[0] {
			w = &workloads[i]
		}
	}
	if w == nil {
		fmt.Fprintf(os.Stderr, "peer-go: unknown workload '%s'\n", args[0])
		usage()
	}
	p := params{}
	for _, a := range args[1:] {
		k, v, ok := strings.Cut(a, "=")
		if !ok {
			fmt.Fprintf(os.Stderr, "peer-go: argument '%s' is not key=value\n", a)
			os.Exit(64)
		}
		known := false
		for _, kk := range w.keys {
			known = known || kk == k
		}
		if !known {
			fmt.Fprintf(os.Stderr, "peer-go: workload %s has no parameter '%s'\n", w.name, k)
			os.Exit(64)
		}
		p[k] = v
	}
	w.fn(p)
}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	switch os.Args[1] {
	case "list":
		for _, w := range workloads {
			fmt.Println(w.name)
		}
	case "all":
		if len(os.Args) > 2 {
			fmt.Fprintln(os.Stderr, "peer-go: 'all' takes no parameters")
			os.Exit(64)
		}
		for _, r := range allRuns {
			fmt.Fprintf(os.Stderr, "peer-go: %s\n", strings.Join(r, " "))
			run(r)
		}
	default:
		run(os.Args[1:])
	}
}
